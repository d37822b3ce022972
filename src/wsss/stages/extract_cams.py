"""Stage: multi-scale + flip CAM extraction, one ``.npz`` per image (contract in docs/architecture.md).

Only the image's own classes (its image-level labels, which WSSS is given) are kept, each max-normalised, as
IRN's make_cam does. The output folder is written as a whole: into a temporary sibling, renamed at the end.

Under torchrun each process computes the CAMs of its shard of the images (``distributed.shard``) into the one
temporary folder rank 0 created; rank 0 renames it once every rank has finished (a barrier). An image's CAM is
computed exactly as a single process would, so the files do not depend on the process count.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wsss.data.voc import ImageDataset
from wsss.engine import distributed as dist
from wsss.io import atomic_dir, save_npz
from wsss.models.cam_net import multiscale_cam, normalize_cam
from wsss.stages.train_cam import load_cam_net

log = logging.getLogger("wsss")


@torch.no_grad()
def image_cam(net, image: torch.Tensor, label: torch.Tensor, scales, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """(keys [K] VOC ids, cam float16 [K,H,W] in [0,1]) for one normalised image [3,H,W]."""
    keys = torch.nonzero(label).flatten()
    dev = next(net.parameters()).device
    cam = multiscale_cam(net, image[None].to(dev), scales=scales, flip=flip)[0]
    keys = keys.to(dev)
    cam = normalize_cam(cam[keys][None])[0] if len(keys) else cam[:0]
    return (keys + 1).cpu().numpy().astype(np.int64), cam.cpu().numpy().astype(np.float16)


def run(cfg: dict, *, checkpoint: Path, data_root: Path, split: str, out_dir: Path) -> None:
    net, _ = load_cam_net(checkpoint)
    net.to(dist.device())
    ds = ImageDataset(data_root, split)
    ccfg = cfg["cams"]
    mine = dist.shard(range(len(ds)))
    with contextlib.ExitStack() as stack:
        # rank 0 owns the atomic output folder (it clears stale temporaries, then renames); the others write into it
        tmp = stack.enter_context(atomic_dir(out_dir)) if dist.is_main() else None
        tmp = dist.broadcast_object(tmp)
        for i in tqdm(mine, desc=f"CAMs {out_dir.name}", mininterval=5, disable=None if dist.is_main() else True):
            item = ds[i]
            keys, cam = image_cam(net, item["image"], item["label"], ccfg["scales"], ccfg["flip"])
            save_npz(tmp / f"{item['id']}.npz", keys=keys, cam=cam)
        dist.barrier()  # every shard is written before rank 0 renames the folder
    log.info("wrote %d CAMs to %s", len(ds), out_dir)
