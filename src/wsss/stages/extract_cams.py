"""Stage: multi-scale + flip CAM extraction, one ``.npz`` per image (contract in docs/architecture.md).

Only the image's own classes (its image-level labels, which WSSS is given) are kept, each max-normalised, as
IRN's make_cam does. The output folder is written as a whole: into a temporary sibling, renamed at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wsss.data.voc import ImageDataset
from wsss.io import atomic_dir, save_npz
from wsss.models.cam_net import multiscale_cam, normalize_cam
from wsss.stages.train_cam import load_cam_net

log = logging.getLogger("wsss")


@torch.no_grad()
def image_cam(net, image: torch.Tensor, label: torch.Tensor, scales, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(keys [K] VOC ids, cam float16 [K,H,W] in [0,1]) for one normalised image [3,H,W]."""
    keys = torch.nonzero(label).flatten()
    cam = multiscale_cam(net, image[None], scales=scales, flip=flip)[0]
    cam = normalize_cam(cam[keys][None])[0] if len(keys) else cam[:0]
    return (keys + 1).numpy().astype(np.int64), cam.numpy().astype(np.float16)


def run(cfg: dict, *, checkpoint: Path, data_root: Path, split: str, out_dir: Path) -> None:
    net, _ = load_cam_net(checkpoint)
    ds = ImageDataset(data_root, split)
    ccfg = cfg["cams"]
    with atomic_dir(out_dir) as tmp:
        for i in tqdm(range(len(ds)), desc=f"CAMs {out_dir.name}", mininterval=5, disable=None):
            item = ds[i]
            keys, cam = image_cam(net, item["image"], item["label"], ccfg["scales"], ccfg["flip"])
            save_npz(tmp / f"{item['id']}.npz", keys=keys, cam=cam)
    log.info("wrote %d CAMs to %s", len(ds), out_dir)
