"""Stage random_walk: random-walk refinement of one net's CAMs over the affinities of its trained affinity network
(:func:`wsss.refine.random_walk.walk_label`), on train_split; pseudo-label mIoU on cam_split as for the CRF labels.
With ``refine.random_walk.calibration_values`` the walk's background (IRN bg_score / PSA bg_power) is chosen on
the calibration subset of cam_split (:func:`wsss.refine.random_walk.walk_sweep`), recorded under
``protocol.background_calibration``, and scored on the other ids.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wsss.data import voc
from wsss.evaluation import check_splits, held_out, pseudo_metrics, score_labels
from wsss.io import atomic_dir, load_npz, read_image, write_json, write_label_png
from wsss.models.affinity_net import load_affinity_net
from wsss.refine.random_walk import walk_label, walk_sweep

log = logging.getLogger("wsss")


def run(
    cfg, *, seed: int, net: str, data: Path, cams: Path, ckpt: Path, pseudo: Path, metrics: Path, threads: int = 1
) -> None:
    rw = cfg["refine"]["random_walk"]
    model, aff_ckpt = load_affinity_net(ckpt)
    split, eval_split = cfg["data"]["train_split"], cfg["data"]["cam_split"]
    ids, eval_ids = check_splits(data, split, eval_split)
    calib_ids, scored_ids = held_out(eval_ids, cfg["data"]["calibration_fraction"], eval_split)
    crf = cfg["refine"] if rw["crf"] else None
    calibration = None
    if rw["calibration_values"]:
        rw, calibration = walk_sweep(
            model,
            rw,
            calib_ids,
            cams_dir=cams,
            data_root=data,
            crf=crf,
            n_images=cfg["refine"]["calibration_images"],
            net_name=net,
        )
    with atomic_dir(pseudo) as tmp:
        for image_id in tqdm(ids, desc=f"random walk {net}", mininterval=5, disable=None):
            z = load_npz(cams / f"{image_id}.npz")
            label = walk_label(
                model, read_image(voc.image_path(data, image_id)), z["cam"].astype(np.float32), z["keys"], rw, crf=crf
            )
            write_label_png(tmp / f"{image_id}.png", label)
        res = score_labels(tmp, data, scored_ids)
    trained = aff_ckpt["config"]["random_walk"]  # how the affinity net was trained (its own stage's keys)
    walk = {k: trained[k] for k in ("label_source", "stride")}
    walk.update({k: rw[k] for k in rw})  # the walk's keys (the background key of its mode only)
    keys = (
        "label_source",
        "radius",
        "stride",
        "beta",
        "n_steps",
        "bg_mode",
        "bg_score",
        "bg_power",
        "image_scale",
        "crf",
    )
    write_json(
        metrics,
        pseudo_metrics(
            net,
            res,
            split=split,
            eval_split=eval_split,
            n_calibration=len(calib_ids),
            n_eval=len(scored_ids),
            protocol={
                "refinement": "affinity random walk",
                "random_walk": {k: walk[k] for k in keys if k in walk},
                "background_calibration": calibration,
            },
        ),
    )
    log.info("random-walk pseudo labels of %s: mIoU %.4f on %s", net, res["miou"], eval_split)
