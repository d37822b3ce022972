"""Stage train_affinity: the affinity network (AffinityNet, PSA) trained on confident pseudo labels of one CAM
network.

Labels: the net's CRF pseudo labels (``refine.random_walk.label_source: crf``; 255 where the CRF was unsure) or
confident CAM regions (``cams``: :func:`wsss.refine.affinity.confident_labels`, written into the stage's scratch
folder ``confident``). Each training crop (resized by ``image_scale``) gives a stride-8 (or 4) embedding; its label
is sampled at the embedding's grid (nearest), and pairs within ``radius`` are trained with PSA's balanced loss
(:func:`wsss.refine.affinity.affinity_loss`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.data.datasets import SegmentationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import seed_everything, train
from wsss.io import WsssInputError, write_json
from wsss.models.affinity_net import affinity_net_from_config
from wsss.models.backbones import init_from_supportnet
from wsss.refine.affinity import (
    affinity_labels,
    affinity_loss,
    grid_label,
    neighbour_offsets,
    pairwise_affinity,
    write_confident_labels,
)

log = logging.getLogger("wsss")


def run(
    cfg,
    *,
    seed: int,
    net: str,
    data: Path,
    ckpt: Path,
    metrics: Path,
    plot: Path,
    state: Path,
    confident: Path,
    labels: Path | None = None,
    cams: Path | None = None,
    support: Path | None = None,
    threads: int = 1,
) -> None:
    rw = cfg["refine"]["random_walk"]
    tcfg = rw["train"]
    seed_everything(seed)
    split = cfg["data"]["train_split"]
    if rw["label_source"] == "cams":
        if cams is None:
            raise WsssInputError("refine.random_walk.label_source is cams: pass --cams (the net's CAM folder)")
        if dist.is_main():
            write_confident_labels(cams, data, split, confident, rw["fg_threshold"], rw["bg_threshold"])
        dist.barrier()
        labels = confident
    elif labels is None:
        raise WsssInputError("refine.random_walk.label_source is crf: pass --labels (the net's CRF pseudo labels)")
    model = affinity_net_from_config(rw)
    if rw["init_from_supportnet"]:
        if support is None:
            raise WsssInputError("refine.random_walk.init_from_supportnet needs --support (SupportNet checkpoint)")
        init_from_supportnet(model.backbone, support, key="refine.random_walk.init_from_supportnet")
    ds = SegmentationDataset(data, split, crop=tcfg["crop"], train=True, label_dir=labels, seed=seed)
    offsets = neighbour_offsets(rw["radius"])
    scale = rw["image_scale"]

    def objective(x: torch.Tensor, batch: dict) -> dict:
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        emb = model(x)
        lab = grid_label(batch["label"].to(x.device), emb.shape[-2:])
        pos_bg, pos_fg, neg = affinity_labels(lab, offsets)
        aff = pairwise_affinity(emb, offsets)
        loss = affinity_loss(aff, pos_bg, pos_fg, neg)
        # PSA's loss averages each pair group over this process's pairs; under DDP that is a mean of per-process
        # means (documented in docs/architecture.md, like the other pair-count-normalised losses)
        return {"loss": loss, "pairs_pos_fg": pos_fg.float().mean(), "pairs_neg": neg.float().mean()}

    history = train(
        model,
        ds,
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc=f"affinity_{net}",
        resolved={"random_walk": rw, "net": net, "seed": seed, "data": cfg["data"], "labels": rw["label_source"]},
        inputs={"data": data, "labels": labels, "support": support},
        objective=objective,
        section="refine.random_walk",
    )
    if not dist.is_main():
        return
    write_json(metrics, {"net": f"affinity_{net}", "labels": rw["label_source"], "history": history})
    write_json(plot, history)
    log.info("affinity net for %s trained on %d images", net, len(ds))
