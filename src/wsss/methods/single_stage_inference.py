"""Test-time inference of AA&LR's single-stage model, as 1-stage-wseg ``infer_val.py`` /
``utils/inference_tools.py``: softmax averaged over scales and flips (:func:`wsss.evaluation.predict_probs`, shared
with DeepLab's evaluation); foreground classes whose max sigmoid class score over the scales and flips is at or below
``fp_cut_score`` are zeroed; the background probability is raised to ``bg_pow``; argmax, and dense CRF on the same
scores. Also the training-time pseudo GT of a full image (what the model trains on), for scoring.
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss.data import voc
from wsss.data.datasets import normalize
from wsss.evaluation import predict_probs, score_predictions, scores_with_crf
from wsss.io import read_image
from wsss.losses.single_stage import class_scores
from wsss.methods.single_stage import SingleStageObjective
from wsss.refine.crf import crf_postprocess


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


def predict_image(image_id: str, *, rec: ScoreRecorder, data, tcfg):
    """(id, label, CRF label) of one image of the dataset at ``data`` (a worker function of the val evaluations)."""
    pred, pred_crf = predict(rec, read_image(voc.image_path(data, image_id)), tcfg)
    return image_id, pred, pred_crf


def score_ids(rec: ScoreRecorder, ids: list[str], *, data, tcfg, threads: int, desc: str) -> dict:
    """:func:`predict_image` over ``ids`` scored against their GT masks, nothing saved: mIoU and per-class IoU
    without and with CRF (:func:`wsss.evaluation.scores_with_crf`)."""
    with tempfile.TemporaryDirectory() as tmp:  # no prediction is kept (n_saved 0)
        res, res_crf = score_predictions(
            partial(predict_image, rec=rec, data=data, tcfg=tcfg),
            ids,
            data_root=data,
            save_dir=Path(tmp),
            n_saved=0,
            threads=threads,
            desc=desc,
        )
    return scores_with_crf(res, res_crf)


def predict(rec: ScoreRecorder, img: np.ndarray, tcfg, labels: np.ndarray | None = None):
    """(label, CRF label) of one uint8 image under the test-time settings ``tcfg`` (scales, flip, fp_cut_score,
    bg_pow, crf); ``labels`` [20] (GT image labels) replace the score cut if given."""
    rec.reset()
    probs = predict_probs(rec, img, tcfg["scales"], tcfg["flip"])
    keep = labels > 0 if labels is not None else (rec.scores.numpy() > tcfg["fp_cut_score"])
    scores = postprocess(probs, keep, tcfg["bg_pow"])
    pred = scores.argmax(0).astype(np.uint8)
    pred_crf = crf_postprocess(img, scores, from_logits=False, **tcfg["crf"])
    return pred, pred_crf


@torch.no_grad()
def pamr_pseudo_label(
    net: nn.Module, objective: SingleStageObjective, img: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """The training-time pseudo GT of one full image (single scale), nearest-upsampled to the image size."""
    x = normalize(img)[None]
    logits = net(x)["logits"]
    pgt, _ = objective.pseudo_labels(x, logits, torch.as_tensor(labels, dtype=torch.float32)[None])
    pgt = F.interpolate(pgt[:, None].float(), size=img.shape[:2], mode="nearest")[0, 0]
    return pgt.to(torch.uint8).numpy()
