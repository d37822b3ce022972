"""Stage: evaluate the segmentation network on ``val_split`` — with and without CRF post-processing.

Test-time: softmax averaged over ``segment.scales`` (and flips); CRF post-processing with ``segment.crf``.
Images are processed on all cores (``threads`` worker processes, one torch thread each).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss import metrics
from wsss.data import voc
from wsss.io import atomic_dir, read_image, read_label_png, write_json, write_label_png
from wsss.parallel import imap_ordered
from wsss.refine.crf import crf_postprocess
from wsss.stages.eval_cams import scores_with_crf
from wsss.stages.train_seg import load_net


@torch.no_grad()
def predict_probs(net, img: np.ndarray, scales, flip: bool) -> np.ndarray:
    """Softmax [21,H,W] averaged over scales (and flips) for one uint8 HxWx3 image."""
    x = voc.normalize(img)[None]
    h, w = img.shape[:2]
    acc = torch.zeros(1, 21, h, w)
    n = 0
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(8, round(h * s)), max(8, round(w * s))),
                                               mode="bilinear", align_corners=False)
        batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
        logits = F.interpolate(net(batch), size=(h, w), mode="bilinear", align_corners=False)
        probs = logits.softmax(1)
        acc += probs[:1] + (probs[1:].flip(-1) if flip else 0)
        n += 2 if flip else 1
    return (acc / n)[0].numpy()


def _one(image_id: str, *, net, data_root: Path, scfg: dict) -> tuple[str, np.ndarray, np.ndarray]:
    img = read_image(voc.image_path(data_root, image_id))
    probs = predict_probs(net, img, scfg["scales"], scfg["flip"])
    pred = probs.argmax(0).astype(np.uint8)
    pred_crf = crf_postprocess(img, probs, from_logits=False, **scfg["crf"])
    return image_id, pred, pred_crf


def score_predictions(fn, ids: list[str], *, data_root: Path, save_dir: Path, n_saved: int, threads: int,
                      desc: str) -> tuple[dict, dict]:
    """Run ``fn(image_id) -> (id, pred, pred_crf)`` over ``ids`` on ``threads`` workers; return the confusion-matrix
    results without and with CRF against the GT masks, saving the first ``n_saved`` predictions into ``save_dir``."""
    cm, cm_crf = metrics.ConfusionMatrix(), metrics.ConfusionMatrix()
    keep = set(ids[:n_saved])
    for image_id, pred, pred_crf in imap_ordered(fn, ids, workers=threads, desc=desc):
        gt = read_label_png(voc.mask_path(data_root, image_id))
        cm.update(pred, gt)
        cm_crf.update(pred_crf, gt)
        if image_id in keep:
            write_label_png(save_dir / f"{image_id}.png", pred)
    return cm.compute(), cm_crf.compute()


def run(cfg: dict, *, source: str, checkpoint: Path, data_root: Path, split: str, out: Path, pred_dir: Path,
        threads: int = 1) -> None:
    scfg = cfg["segment"]
    net, ckpt = load_net(checkpoint)
    ids = voc.read_split(data_root, split)
    with atomic_dir(pred_dir) as tmp:
        fn = partial(_one, net=net, data_root=data_root, scfg=scfg)
        res, res_crf = score_predictions(fn, ids, data_root=data_root, save_dir=tmp,
                                         n_saved=scfg["n_saved_predictions"], threads=threads,
                                         desc=f"eval seg {source}")
    write_json(out, {
        "source": source,
        "protocol": {
            "split": split,
            "images": len(ids),
            "scales": list(scfg["scales"]),
            "flip": scfg["flip"],
            "crf": scfg["crf"],
            "model": scfg["model"],
            "train_labels": ckpt["config"]["labels"],
            "ignore": "255 in GT ignored",
            "image_labels_at_test": "not used (no GT-label cleaning)",
        },
        **scores_with_crf(res, res_crf),
        "train_labels": ckpt["config"]["labels"],
    })
