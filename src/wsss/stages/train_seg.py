"""Stage: train the final segmentation network (DeepLab) on pseudo labels, or on the GT masks (upper bound)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wsss.data.voc import SegmentationDataset
from wsss.engine.trainer import (
    TrainState,
    build_optimizer,
    build_scheduler,
    epoch_generator,
    fit,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
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
    if tcfg["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    ds = SegmentationDataset(data_root, cfg["data"]["train_split"], crop=tcfg["crop"], train=True,
                             label_dir=label_dir, seed=cfg["seed"])
    steps = max(1, len(ds) // tcfg["batch_size"]) * tcfg["epochs"]
    optimizer = build_optimizer(net.parameters(), tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps)
    resolved = {"segment": scfg, "source": source, "seed": cfg["seed"], "data": cfg["data"],
                "labels": str(label_dir) if label_dir else "ground truth"}
    state = TrainState(net, optimizer, scheduler, resolved)

    def make_loader(epoch: int):
        ds.seed = cfg["seed"] * 1000 + epoch
        return DataLoader(ds, batch_size=tcfg["batch_size"], shuffle=True, drop_last=True,
                          generator=epoch_generator(cfg["seed"], epoch), num_workers=0)

    def step(batch: dict) -> dict:
        x = batch["image"]
        if tcfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), batch["label"], ignore_index=255)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        return {"loss": float(loss.detach())}

    fit(state, epochs=tcfg["epochs"], make_loader=make_loader, step=step, state_path=state_path,
        desc=f"deeplab_{source}")
    final = state.to_dict()
    final["model"] = net.to(memory_format=torch.contiguous_format).state_dict()
    save_checkpoint(out, final)
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]
    write_json(metrics_out, {"source": source, "history": history, "train_labels": resolved["labels"]})
    write_json(plot_out, history)
