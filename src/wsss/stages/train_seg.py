"""Stage train_seg: the final segmentation network (DeepLab) trained on the pseudo labels (``source: pseudo``) or
on the GT masks (``gt``: the fully supervised upper bound)."""

from __future__ import annotations

from pathlib import Path

import torch

from wsss.data import voc
from wsss.data.datasets import SegmentationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import seed_everything, train
from wsss.io import read_label_png, write_json
from wsss.losses.segmentation import class_weights, label_counts, segmentation_ce
from wsss.models.backbones import init_from_supportnet
from wsss.models.deeplab import segmenter_from_config


def run(
    cfg,
    *,
    seed: int,
    source: str,
    data: Path,
    ckpt: Path,
    metrics: Path,
    plot: Path,
    state: Path,
    labels: Path | None = None,
    support: Path | None = None,
    threads: int = 1,
) -> None:
    scfg = cfg["segment"]
    tcfg = scfg["train"]
    seed_everything(seed)
    net = segmenter_from_config(scfg)
    if scfg["model"].endswith("_small") and scfg["init_from_supportnet"]:
        init_from_supportnet(net.backbone, support, key="segment.init_from_supportnet")
    label_dir = labels
    if label_dir is None and (data / "SegmentationClassAug").is_dir():
        label_dir = data / "SegmentationClassAug"  # GT of train_aug (VOC masks, else SBD's)
    ds = SegmentationDataset(
        data, cfg["data"]["train_split"], crop=tcfg["crop"], train=True, label_dir=label_dir, seed=seed
    )
    described = str(labels) if source == "pseudo" else f"ground truth ({(label_dir or Path('SegmentationClass')).name})"

    counts = label_counts(read_label_png(voc.mask_path(data, i, label_dir)) for i in ds.ids)
    weights = class_weights(counts, scfg["class_weights"])

    def objective(x: torch.Tensor, batch: dict) -> dict:
        label = batch["label"].to(x.device)
        w = None if weights is None else weights.to(x.device)
        loss = segmentation_ce(net(x), label, w)
        # CE averages over this process's labelled (weighted) pixels: make it the global batch's mean under DDP
        count = (label != 255).sum() if w is None else w[label[label != 255]].sum()
        return {"loss": dist.global_mean(loss, count)}

    history = train(
        net,
        ds,
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc=f"deeplab_{source}",
        resolved={"segment": scfg, "source": source, "seed": seed, "data": cfg["data"], "labels": described},
        inputs={"data": data, "labels": labels, "support": support},
        objective=objective,
        section="segment",
    )
    if not dist.is_main():
        return
    write_json(
        metrics,
        {
            "source": source,
            "history": history,
            "train_labels": described,
            "label_pixel_counts": {name: int(c) for name, c in zip(voc.VOC_CLASSES, counts)},
            "class_weights": None
            if weights is None
            else {n: round(float(w), 6) for n, w in zip(voc.VOC_CLASSES, weights)},
        },
    )
    write_json(plot, history)
