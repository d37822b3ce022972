"""Stage: train the final segmentation network (DeepLab) on pseudo labels, or on the GT masks (upper bound)."""

from __future__ import annotations

from pathlib import Path

import torch

from wsss.config import seed_of
from wsss.data import voc
from wsss.data.voc import SegmentationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import load_checkpoint, seed_everything, train
from wsss.io import read_label_png, write_json
from wsss.losses.segmentation import class_weights, label_counts, segmentation_ce
from wsss.models.deeplab import build_segmenter


def build_net(scfg: dict):
    bcfg = dict(scfg["backbone"])
    pretrained = bcfg.pop("pretrained")
    return build_segmenter(scfg["model"], num_classes=21, backbone_cfg=bcfg, pretrained=pretrained,
                           aspp_channels=scfg.get("aspp_channels", 64),
                           atrous_rates=tuple(scfg.get("atrous_rates", (2, 4, 6))))


def load_net(path: Path):
    ckpt = load_checkpoint(path)
    net = build_net(ckpt["config"]["segment"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def init_from_supportnet(net, support_ckpt: Path) -> int:
    """Copy SupportNet's backbone weights into the segmenter's backbone; returns the number of tensors copied."""
    sd = load_checkpoint(support_ckpt)["model"]
    src = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    body = net.backbone
    missing, unexpected = body.load_state_dict(src, strict=False)
    if unexpected or len(missing) == len(body.state_dict()):
        raise ValueError("SupportNet's backbone does not match the segmentation backbone; "
                         "set segment.init_from_supportnet: false or use the same backbone config")
    return len(src) - len(unexpected)


def run(cfg: dict, *, source: str, data_root: Path, label_dir: Path | None, out: Path, metrics_out: Path,
        plot_out: Path, state_path: Path, support_ckpt: Path | None = None) -> None:
    scfg = cfg["segment"]
    tcfg = scfg["train"]
    seed = seed_of(cfg)
    seed_everything(seed)
    net = build_net(scfg)
    if scfg["init_from_supportnet"] and scfg["model"].endswith("_small"):
        init_from_supportnet(net, support_ckpt)
    if label_dir is None and (data_root / "SegmentationClassAug").is_dir():
        label_dir = data_root / "SegmentationClassAug"  # GT of train_aug (VOC masks, else SBD's)
    ds = SegmentationDataset(data_root, cfg["data"]["train_split"], crop=tcfg["crop"], train=True,
                             label_dir=label_dir, seed=seed)
    labels = str(label_dir) if source == "pseudo" else f"ground truth ({(label_dir or Path('SegmentationClass')).name})"

    counts = label_counts(read_label_png(voc.mask_path(data_root, i, label_dir)) for i in ds.ids)
    weights = class_weights(counts, scfg["class_weights"])

    def objective(x: torch.Tensor, batch: dict) -> dict:
        label = batch["label"].to(x.device)
        w = None if weights is None else weights.to(x.device)
        loss = segmentation_ce(net(x), label, w)
        # CE averages over this process's labelled (weighted) pixels: make it the global batch's mean under DDP
        count = (label != 255).sum() if w is None else w[label[label != 255]].sum()
        return {"loss": dist.global_mean(loss, count)}

    history = train(
        net, ds, tcfg, seed=seed, state_path=state_path, out=out, desc=f"deeplab_{source}",
        resolved={"segment": scfg, "source": source, "seed": seed, "data": cfg["data"], "labels": labels},
        objective=objective, section="segment",
    )
    if not dist.is_main():
        return
    write_json(metrics_out, {
        "source": source, "history": history, "train_labels": labels,
        "label_pixel_counts": {name: int(c) for name, c in zip(voc.VOC_CLASSES, counts)},
        "class_weights": None if weights is None else {n: round(float(w), 6) for n, w in zip(voc.VOC_CLASSES, weights)},
    })
    write_json(plot_out, history)
