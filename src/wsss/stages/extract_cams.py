"""Stage extract_cams: multi-scale + flip CAMs of train_split, one ``.npz`` per image (contract in
docs/architecture.md).

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

from tqdm import tqdm

from wsss.data.datasets import ImageDataset
from wsss.engine import distributed as dist
from wsss.io import atomic_dir, save_npz
from wsss.models.cam_net import image_cam, load_cam_net

log = logging.getLogger("wsss")


def run(cfg, *, seed: int, net: str, data: Path, ckpt: Path, cams: Path, threads: int = 1) -> None:
    model, _ = load_cam_net(ckpt)
    model.to(dist.device())
    ds = ImageDataset(data, cfg["data"]["train_split"])
    scales, flip = cfg["cams"]["scales"], cfg["cams"]["flip"]
    mine = dist.shard(range(len(ds)))
    with contextlib.ExitStack() as stack:
        # rank 0 owns the atomic output folder (it clears stale temporaries, then renames); the others write into it
        tmp = stack.enter_context(atomic_dir(cams)) if dist.is_main() else None
        tmp = dist.broadcast_object(tmp)
        for i in tqdm(mine, desc=f"CAMs {net}", mininterval=5, disable=None if dist.is_main() else True):
            item = ds[i]
            keys, cam = image_cam(model, item["image"], item["label"], scales, flip)
            save_npz(tmp / f"{item['id']}.npz", keys=keys, cam=cam)
        dist.barrier()  # every shard is written before rank 0 renames the folder
    log.info("wrote %d CAMs of %s to %s", len(ds), net, cams)
