"""Stage eval_seg: the segmentation network on ``val_split``, with and without CRF post-processing.

Test-time: softmax averaged over ``segment.scales`` (and flips), :func:`wsss.evaluation.predict_probs`; CRF
post-processing with ``segment.crf``. Images are processed on all cores (``threads`` worker processes, one torch
thread each).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from wsss.data import voc
from wsss.evaluation import predict_probs, score_predictions, scores_with_crf
from wsss.io import atomic_dir, read_image, write_json
from wsss.models.deeplab import load_segmenter
from wsss.refine.crf import crf_postprocess


def _one(image_id: str, *, model, data: Path, scfg) -> tuple[str, np.ndarray, np.ndarray]:
    img = read_image(voc.image_path(data, image_id))
    probs = predict_probs(model, img, scfg["scales"], scfg["flip"])
    pred = probs.argmax(0).astype(np.uint8)
    pred_crf = crf_postprocess(img, probs, from_logits=False, **scfg["crf"])
    return image_id, pred, pred_crf


def run(cfg, *, seed: int, source: str, data: Path, ckpt: Path, metrics: Path, pred: Path, threads: int = 1) -> None:
    scfg = cfg["segment"].to_dict()
    model, checkpoint = load_segmenter(ckpt)
    split = cfg["data"]["val_split"]
    ids = voc.read_split(data, split)
    with atomic_dir(pred) as tmp:
        fn = partial(_one, model=model, data=data, scfg=scfg)
        res, res_crf = score_predictions(
            fn,
            ids,
            data_root=data,
            save_dir=tmp,
            n_saved=scfg["n_saved_predictions"],
            threads=threads,
            desc=f"eval seg {source}",
        )
    write_json(
        metrics,
        {
            "source": source,
            "protocol": {
                "split": split,
                "images": len(ids),
                "scales": list(scfg["scales"]),
                "flip": scfg["flip"],
                "crf": scfg["crf"],
                "model": checkpoint["config"]["segment"]["model"],
                "train_labels": checkpoint["config"]["labels"],
                "ignore": "255 in GT ignored",
                "image_labels_at_test": "not used (no GT-label cleaning)",
            },
            **scores_with_crf(res, res_crf),
            "train_labels": checkpoint["config"]["labels"],
        },
    )
