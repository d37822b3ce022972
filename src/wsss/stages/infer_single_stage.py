"""Stage: evaluate a single-stage (AA&LR) variant on ``val_split`` with and without CRF, and score its masks on
``cam_split`` (the 1-stage "train" numbers: its pseudo-mask quality).

Test-time as 1-stage-wseg ``infer_val.py`` / ``utils/inference_tools.py``: softmax averaged over
``single_stage.scales`` and flips (``wsss.stages.eval_seg.predict_probs``, shared with DeepLab's evaluation);
foreground classes whose max sigmoid class score over the scales and flips is at or below ``fp_cut_score`` are
zeroed; the background probability is raised to ``bg_pow``; argmax, and dense CRF on the same scores
(``wsss.refine.crf.crf_postprocess``). Images run on all cores (``threads`` worker processes).

On ``cam_split`` (``pseudo_eval``): the same multi-scale masks, cleaned with the GT image labels instead of the
score cut (1-stage's ``USE_GT_LABELS`` for its train-set numbers), with and without CRF; and the PAMR pseudo GT
the model trains on (single scale, the training code path), scored with its 255 pixels skipped and their share
reported (as the two-stage pseudo labels in ``refine_crf``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss import metrics
from wsss.data import voc
from wsss.io import atomic_dir, read_image, read_label_png, write_json
from wsss.losses.single_stage import class_scores
from wsss.parallel import imap_ordered
from wsss.refine.crf import crf_postprocess
from wsss.stages.eval_cams import per_class_dict, scores_with_crf
from wsss.stages.eval_seg import predict_probs, score_predictions
from wsss.stages.train_single_stage import SingleStageObjective, load_net


class ScoreRecorder(nn.Module):
    """``forward(x)`` = the net's segmentation logits (what ``predict_probs`` calls); also keeps the max over every
    image of every call since :meth:`reset` of the sigmoid class scores [20] of the classification branch (1-stage:
    ``sigmoid(cls).max(0)``)."""

    def __init__(self, net: nn.Module, focal: dict):
        super().__init__()
        self.net, self.focal = net, dict(focal)
        self.scores: torch.Tensor | None = None

    def reset(self) -> None:
        self.scores = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        s = torch.sigmoid(class_scores(out["logits"], **self.focal)).amax(0)
        self.scores = s if self.scores is None else torch.maximum(self.scores, s)
        return out["seg_logits"]


def postprocess(probs: np.ndarray, keep: np.ndarray, bg_pow: float) -> np.ndarray:
    """1-stage ``MergeMultiScale._merge_masks``: zero the foreground planes of classes not kept, background^bg_pow."""
    out = probs.copy()
    out[1:] *= keep.astype(out.dtype)[:, None, None]
    out[0] = np.power(out[0], bg_pow)
    return out


def predict(rec: ScoreRecorder, img: np.ndarray, scfg: dict, labels: np.ndarray | None = None):
    """(label, CRF label) of one uint8 image; ``labels`` [20] (GT image labels) replace the score cut if given."""
    rec.reset()
    probs = predict_probs(rec, img, scfg["scales"], scfg["flip"])
    keep = labels > 0 if labels is not None else (rec.scores.numpy() > scfg["fp_cut_score"])
    scores = postprocess(probs, keep, scfg["bg_pow"])
    pred = scores.argmax(0).astype(np.uint8)
    pred_crf = crf_postprocess(img, scores, from_logits=False, **scfg["crf"])
    return pred, pred_crf


@torch.no_grad()
def pamr_pseudo_label(net: nn.Module, objective: SingleStageObjective, img: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The training-time pseudo GT of one full image (single scale), nearest-upsampled to the image size."""
    x = voc.normalize(img)[None]
    logits = net(x)["logits"]
    pgt, _ = objective.pseudo_labels(x, logits, torch.as_tensor(labels, dtype=torch.float32)[None])
    pgt = F.interpolate(pgt[:, None].float(), size=img.shape[:2], mode="nearest")[0, 0]
    return pgt.to(torch.uint8).numpy()


def _val_one(image_id: str, *, rec: ScoreRecorder, data_root: Path, scfg: dict):
    img = read_image(voc.image_path(data_root, image_id))
    pred, pred_crf = predict(rec, img, scfg)
    return image_id, pred, pred_crf


def _pseudo_one(image_id: str, *, rec: ScoreRecorder, objective: SingleStageObjective, data_root: Path, scfg: dict,
                labels: dict):
    img = read_image(voc.image_path(data_root, image_id))
    y = voc.multi_hot(labels[image_id]).numpy()
    pred, pred_crf = predict(rec, img, scfg, labels=y)
    return image_id, pred, pred_crf, pamr_pseudo_label(rec.net, objective, img, y)


def _pseudo_scores(rec, net, variant, data_root: Path, split: str, scfg: dict, threads: int) -> dict:
    ids = voc.read_split(data_root, split)
    if scfg["pseudo_eval"]["max_images"]:
        ids = ids[: scfg["pseudo_eval"]["max_images"]]
    voc.check_ids(data_root, ids, need_masks=True, split=split)
    objective = SingleStageObjective(net, variant, scfg)
    objective.epoch = scfg["warmup_epochs"]  # past the warm-up: the code path that makes the pseudo GT
    cm, cm_crf, cm_pgt = metrics.ConfusionMatrix(), metrics.ConfusionMatrix(), metrics.ConfusionMatrix(pred_ignore="skip")
    fn = partial(_pseudo_one, rec=rec, objective=objective, data_root=data_root, scfg=scfg,
                 labels=voc.image_labels(data_root, ids))
    for image_id, pred, pred_crf, pgt in imap_ordered(fn, ids, workers=threads, desc=f"pseudo single_stage_{variant}"):
        gt = read_label_png(voc.mask_path(data_root, image_id))
        cm.update(pred, gt)
        cm_crf.update(pred_crf, gt)
        cm_pgt.update(pgt, gt)
    res, res_crf, res_pgt = cm.compute(), cm_crf.compute(), cm_pgt.compute()
    return {
        "split": split,
        "images": len(ids),
        "masks": {
            "protocol": "multi-scale + flip masks as on val, classes cut by the GT image labels (1-stage USE_GT_LABELS)",
            **scores_with_crf(res, res_crf),
        },
        "pamr_pseudo_gt": {
            "protocol": ("single-scale masks -> PAMR -> pseudo_gt on the label grid (the training targets), "
                         "nearest-upsampled; pseudo-label 255 pixels skipped"),
            "miou": res_pgt["miou"],
            "ignore_fraction": res_pgt["pred_ignored_share"],
            "per_class_iou": per_class_dict(res_pgt["per_class_iou"]),
        },
    }


def run(cfg: dict, *, variant: str, checkpoint: Path, data_root: Path, split: str, out: Path, pred_dir: Path,
        cam_split: str | None = None, threads: int = 1) -> None:
    net, ckpt = load_net(checkpoint)
    scfg = dict(ckpt["config"]["single_stage"])  # the model's own architecture and losses ...
    for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf", "n_saved_predictions", "pseudo_eval"):
        scfg[k] = cfg["single_stage"][k]  # ... with this config's test-time settings
    rec = ScoreRecorder(net, scfg["focal"]).eval()
    ids = voc.read_split(data_root, split)
    voc.check_ids(data_root, ids, need_masks=True, split=split)
    with atomic_dir(pred_dir) as tmp:
        fn = partial(_val_one, rec=rec, data_root=data_root, scfg=scfg)
        res, res_crf = score_predictions(fn, ids, data_root=data_root, save_dir=tmp,
                                         n_saved=scfg["n_saved_predictions"], threads=threads,
                                         desc=f"eval single_stage_{variant}")
        pseudo = None
        if scfg["pseudo_eval"]["enabled"] and cam_split:
            pseudo = _pseudo_scores(rec, net, variant, data_root, cam_split, scfg, threads)
    write_json(out, {
        "source": f"single_stage_{variant}",
        "variant": variant,
        "protocol": {
            "split": split,
            "images": len(ids),
            "scales": list(scfg["scales"]),
            "flip": scfg["flip"],
            "fp_cut_score": scfg["fp_cut_score"],
            "bg_pow": scfg["bg_pow"],
            "crf": scfg["crf"],
            "model": "single-stage (1-stage-wseg structure) over " + scfg["backbone"]["name"],
            "ignore": "255 in GT ignored",
            "image_labels_at_test": "not used (classes cut by the model's own class scores, 1-stage FP_CUT_SCORE)",
        },
        **scores_with_crf(res, res_crf),
        "pseudo_labels": pseudo,
        "train_final": {k: v for k, v in ckpt["history"][-1].items() if k not in ("epoch", "seconds")},
    })
