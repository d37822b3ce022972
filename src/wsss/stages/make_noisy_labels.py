"""Stage make_noisy_labels: one label setting of the AA&LR controlled-noise experiment (issue 16): every
``train_split`` ground-truth mask corrupted by one kind at one rate (:mod:`wsss.data.label_noise`), or copied
unchanged (``clean``), and the achieved noise against the truth.

The corruption of an image is a function of (seed, kind, rate, image id) only: the labels do not depend on the
order or the number of worker processes.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from wsss.data import label_noise, voc
from wsss.data.synthetic import load_metadata
from wsss.io import WsssInputError, atomic_dir, read_label_png, write_json, write_label_png
from wsss.variants import NOISE_KINDS, parse_noise


def image_generator(seed: int, kind: str, rate: float, image_id: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), NOISE_KINDS.index(kind), round(100 * rate), zlib.crc32(image_id.encode())])


def run(cfg, *, seed: int, noise: str, data: Path, labels: Path, metrics: Path, threads: int = 1) -> None:
    kind, rate = parse_noise(noise)
    split = cfg["data"]["train_split"]
    ids = voc.read_split(data, split)
    voc.check_ids(data, ids, need_masks=True, split=split)
    rows = {}
    if kind == "context_bleed":
        if not (data / "synthetic.json").is_file():
            raise WsssInputError(
                f"{data}: no synthetic.json, so no context rows for context_bleed; drop it from "
                "single_stage.noise_experiment.kinds"
            )
        rows = {i: m["context_rows"] for i, m in load_metadata(data)["images"].items()}
    totals = {"object": 0, "wrong": 0, "fg_to_bg": 0, "bg_to_fg": 0, "fg_to_fg": 0}
    with atomic_dir(labels) as tmp:
        for image_id in ids:
            gt = read_label_png(voc.mask_path(data, image_id))
            if kind == "clean":
                noisy = gt
            else:
                r = rows.get(image_id)
                noisy = label_noise.corrupt(
                    gt, kind, rate, image_generator(seed, kind, rate, image_id), context_rows=tuple(r) if r else None
                )
            for k, v in label_noise.noise_stats(gt, noisy).items():
                totals[k] += v
            write_label_png(tmp / f"{image_id}.png", noisy)
    write_json(
        metrics,
        {
            "noise": noise,
            "kind": kind,
            "rate": rate,
            "split": split,
            "images": len(ids),
            "pixels": totals,
            "achieved_rate": totals["wrong"] / max(totals["object"], 1),
        },
    )
