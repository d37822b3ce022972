"""Stage: random-walk refinement of one net's CAMs over the affinities of its trained affinity network.

Per image (train_split): the affinity network embeds the image (resized by ``image_scale``) at stride 8; the
pairwise affinities within ``radius`` give the sparse transition (:mod:`wsss.refine.random_walk`); the CAM is
area-averaged onto that grid, walked ``n_steps`` times with a background plane (IRN constant / PSA power), the
scores are upsampled bilinearly to the image and the argmax is the pseudo label (or, with
``refine.random_walk.crf``, the dense CRF of the walked scores, 255 where unsure). Pseudo-label mIoU on
``cam_split`` as for the CRF labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.data import voc
from wsss.io import atomic_dir, load_npz, read_image, write_json, write_label_png
from wsss.refine.affinity import neighbour_offsets, pairwise_affinity
from wsss.refine.crf import dense_crf
from wsss.refine.random_walk import rw_scores
from wsss.stages.refine_crf import check_splits, pseudo_metrics, score_labels
from wsss.stages.train_affinity import load_net

log = logging.getLogger("wsss")


@torch.no_grad()
def image_label(net, image: np.ndarray, cam: np.ndarray, keys: np.ndarray, rw: dict,
                crf: dict | None = None) -> np.ndarray:
    """uint8 [H,W] random-walk pseudo label of one image (raw uint8 HxWx3) and its normalised CAM [K,H,W]."""
    h, w = image.shape[:2]
    x = voc.normalize(image)[None]
    if rw["image_scale"] != 1.0:
        x = F.interpolate(x, scale_factor=rw["image_scale"], mode="bilinear", align_corners=False)
    offsets = neighbour_offsets(rw["radius"])
    aff = pairwise_affinity(net(x), offsets)[0]
    grid = aff.shape[-2:]
    cam_t = torch.as_tensor(cam, dtype=torch.float32)
    small = F.adaptive_avg_pool2d(cam_t[None], grid)[0] if len(keys) else cam_t.new_zeros((0, *grid))
    bg_power = rw["bg_power"] if rw["bg_mode"] == "psa" else None
    scores = rw_scores(small, aff, offsets, beta=rw["beta"], n_steps=rw["n_steps"], bg_threshold=rw["bg_score"],
                       bg_power=bg_power)
    scores = F.interpolate(scores[None], size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
    lut = np.concatenate([[0], np.asarray(keys, np.int64)]).astype(np.uint8)
    if crf is None or len(keys) == 0:
        return lut[scores.argmax(axis=0)]
    # walked scores as CRF unaries, all planes divided by ONE maximum: the background plane (IRN's constant, or
    # PSA's walked power) keeps its ratio to the classes. Normalising each plane by its own maximum would lift
    # IRN's constant 0.35 to 1.0 and let the background win every pixel.
    scores = scores / max(float(scores.max()), 1e-6)
    post = dense_crf(image, np.clip(scores, 0.0, 1.0), **crf["crf"])
    label = lut[post.argmax(0)]
    if crf["ignore_confidence"] > 0:
        label[post.max(0) < crf["ignore_confidence"]] = 255
    return label


def run(cfg: dict, *, net_name: str, checkpoint: Path, cams_dir: Path, data_root: Path, split: str,
        eval_split: str, out_dir: Path, metrics_out: Path) -> None:
    rw = cfg["refine"]["random_walk"]
    net, _ = load_net(checkpoint)
    ids, eval_ids = check_splits(data_root, split, eval_split)
    with atomic_dir(out_dir) as tmp:
        for image_id in tqdm(ids, desc=f"random walk {net_name}", mininterval=5, disable=None):
            z = load_npz(cams_dir / f"{image_id}.npz")
            label = image_label(net, read_image(voc.image_path(data_root, image_id)), z["cam"].astype(np.float32),
                                z["keys"], rw, crf=cfg["refine"] if rw["crf"] else None)
            write_label_png(tmp / f"{image_id}.png", label)
        res = score_labels(tmp, data_root, eval_ids)
    keys = ("label_source", "radius", "stride", "beta", "n_steps", "bg_mode", "bg_score", "bg_power", "image_scale",
            "crf")
    write_json(metrics_out, pseudo_metrics(net_name, res, split=split, eval_split=eval_split, n_eval=len(eval_ids),
                                           protocol={"refinement": "affinity random walk",
                                                     "random_walk": {k: rw[k] for k in keys}}))
    log.info("random-walk pseudo labels of %s: mIoU %.4f on %s", net_name, res["miou"], eval_split)
