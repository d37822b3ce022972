"""Stage: train the final segmentation network (DeepLab) on pseudo labels, or on the GT masks (upper bound)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.data.voc import SegmentationDataset
from wsss.engine.trainer import load_checkpoint, seed_everything, train
from wsss.io import write_json
from wsss.models.deeplab import build_segmenter


def build_net(scfg: dict):
    bcfg = dict(scfg["backbone"])
    pretrained = bcfg.pop("pretrained")
    return build_segmenter(scfg["model"], num_classes=21, backbone_cfg=bcfg, pretrained=pretrained)


def load_net(path: Path):
    ckpt = load_checkpoint(path)
    net = build_net(ckpt["config"]["segment"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def init_from_supportnet(net, support_ckpt: Path) -> int:
    """Copy SupportNet's backbone weights into the segmenter's backbone; returns the number of tensors copied."""
    sd = load_checkpoint(support_ckpt)["model"]
    src = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    body = net.net.backbone.body
    missing, unexpected = body.load_state_dict(src, strict=False)
    if unexpected or len(missing) == len(body.state_dict()):
        raise ValueError("SupportNet's backbone does not match the segmentation backbone; "
                         "set segment.init_from_supportnet: false or use the same backbone config")
    return len(src) - len(unexpected)


def run(cfg: dict, *, source: str, data_root: Path, label_dir: Path | None, out: Path, metrics_out: Path,
        plot_out: Path, state_path: Path, support_ckpt: Path | None = None) -> None:
    scfg = cfg["segment"]
    tcfg = scfg["train"]
    seed_everything(cfg["seed"])
    net = build_net(scfg)
    if scfg["init_from_supportnet"] and scfg["model"] == "deeplabv3_small":
        init_from_supportnet(net, support_ckpt)
    if label_dir is None and (data_root / "SegmentationClassAug").is_dir():
        label_dir = data_root / "SegmentationClassAug"  # GT of train_aug (VOC masks, else SBD's)
    ds = SegmentationDataset(data_root, cfg["data"]["train_split"], crop=tcfg["crop"], train=True,
                             label_dir=label_dir, seed=cfg["seed"])
    labels = str(label_dir) if source == "pseudo" else f"ground truth ({(label_dir or Path('SegmentationClass')).name})"

    def objective(x: torch.Tensor, batch: dict) -> dict:
        return {"loss": F.cross_entropy(net(x), batch["label"], ignore_index=255)}

    history = train(
        net, ds, tcfg, seed=cfg["seed"], state_path=state_path, out=out, desc=f"deeplab_{source}",
        resolved={"segment": scfg, "source": source, "seed": cfg["seed"], "data": cfg["data"], "labels": labels},
        objective=objective,
    )
    write_json(metrics_out, {"source": source, "history": history, "train_labels": labels})
    write_json(plot_out, history)
