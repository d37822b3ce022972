"""Stage: train a CAM classifier — SupportNet, or MainNet (a variant of the RCM/MAM ablation) from SupportNet.

MainNet step (variant flags ``rcm`` and ``mam``)::

    L = L_cls(MainNet(x), y)
      + [rcm] w_rcm * L_rcm(MainNet pixel embeddings, regions and prototypes from frozen SupportNet)
      + [mam] w_mam * L_mam(MainNet CAMs at scales S, fused SupportNet CAMs at scales S)

SupportNet is frozen (eval mode, no gradient) while MainNet trains; ``tests/test_stages.py`` proves that no
gradient reaches it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss import metrics
from wsss.data.voc import ClassificationDataset
from wsss.config import seed_of
from wsss.engine import distributed as dist
from wsss.engine.trainer import load_checkpoint, seed_everything, train
from wsss.io import write_json
from wsss.losses import classification, mam, rcm
from wsss.models.cam_net import CAMNet, cams_at_scales, normalize_cam

log = logging.getLogger("wsss")

VARIANT_FLAGS = {"baseline": (False, False), "rcm": (True, False), "mam": (False, True), "rcm_mam": (True, True)}


def build_cam_net(backbone_cfg: dict) -> CAMNet:
    net = CAMNet(backbone_cfg, num_classes=20)
    # projection head maps onto the backbone's feature space, where SupportNet's prototypes live (RCM)
    c = net.backbone.out_channels
    net.proj = torch.nn.Sequential(torch.nn.Conv2d(c, c, 1), torch.nn.ReLU(inplace=True), torch.nn.Conv2d(c, c, 1))
    return net


def load_cam_net(checkpoint_path: str | Path) -> tuple[CAMNet, dict]:
    ckpt = load_checkpoint(checkpoint_path)
    net = build_cam_net(ckpt["backbone"])
    net.load_state_dict(ckpt["model"])
    net.eval()
    return net, ckpt


@torch.no_grad()
def evaluate_map(net: CAMNet, data_root: Path, split: str, max_images: int | None = None) -> float:
    """Mean average precision of the classifier on full images of ``split``."""
    net.eval()
    dev = next(net.parameters()).device
    ds = ClassificationDataset(data_root, split, crop=0, train=False)
    scores, labels = [], []
    for i in range(len(ds) if max_images is None else min(len(ds), max_images)):
        item = ds[i]
        scores.append(net(item["image"][None].to(dev))["logits"][0].cpu().numpy())
        labels.append(item["label"].numpy())
    return float(metrics.average_precision(np.stack(scores), np.stack(labels))[0])


class MainNetObjective:
    """Loss of one MainNet variant given a frozen SupportNet (``support=None`` for SupportNet itself)."""

    def __init__(self, net: CAMNet, support: CAMNet | None, variant: str, cfg: dict):
        self.net, self.support = net, support
        self.use_rcm, self.use_mam = VARIANT_FLAGS[variant]
        self.rcm_cfg, self.mam_cfg = cfg["mainnet"]["rcm"], cfg["mainnet"]["mam"]
        self.memory = None
        if self.use_rcm and self.rcm_cfg["memory_momentum"] > 0:
            self.memory = rcm.PrototypeMemory(21, net.backbone.out_channels, self.rcm_cfg["memory_momentum"])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        want_proj = self.use_rcm and self.rcm_cfg["embedding"] == "projection"
        out = self.net(x, with_proj=want_proj)
        losses = {"loss_cls": classification.multilabel_loss(out["logits"], y)}
        if self.use_rcm or self.use_mam:
            with torch.no_grad():
                s_out = self.support(x)
        if self.use_rcm:
            losses["loss_rcm"] = self.rcm_cfg["weight"] * self._rcm(out, s_out, y, want_proj)
        if self.use_mam:
            losses["loss_mam"] = self.mam_cfg["weight"] * self._mam(x, out, y)
        losses["loss"] = sum(losses.values())
        return losses

    def _rcm(self, out: dict, s_out: dict, y: torch.Tensor, want_proj: bool) -> torch.Tensor:
        c = self.rcm_cfg
        s_cam = normalize_cam(F.relu(s_out["cam"]))
        region = rcm.region_labels(s_cam, y, c["fg_threshold"], c["bg_threshold"])
        # batch prototypes pool over the global batch under DDP (all-reduced), as with one process
        protos, present = rcm.class_prototypes(s_out["features"], region, num_classes=21, scope=c["prototype_scope"],
                                               reduce=dist.all_reduce_sum)
        if self.memory is not None:
            self.memory.update(protos, present)
            protos, present = self.memory.get()
        emb = out["proj"] if want_proj else F.normalize(out["features"], dim=1)
        loss, count = rcm.pixel_prototype_contrast(emb, region, protos, present, c["temperature"], return_count=True)
        return dist.global_mean(loss, count)  # mean over the labelled pixels of the global batch

    def _mam(self, x: torch.Tensor, out: dict, y: torch.Tensor) -> torch.Tensor:
        c = self.mam_cfg
        size = out["cam"].shape[-2:]
        with torch.no_grad():
            s_cams = [normalize_cam(a) for a in cams_at_scales(self.support, x, c["scales"], flip=False, size=size)]
            target = mam.fuse_multiscale(s_cams, mode=c["fusion"])
        # MainNet's raw (signed) CAMs, normalised by a detached max: a ReLU would give no gradient exactly where
        # the body is still negative, and a live max would let MainNet "expand" by lowering its own peak.
        m_cams = []
        for s in c["scales"]:
            cam = out["cam"] if s == 1.0 else cams_at_scales(self.net, x, [s], size=size, activation="none")[0]
            # floored at -1 so that a class whose peak is still ~0 cannot blow the loss up
            m_cams.append(normalize_cam(cam, detach_max=True).clamp(min=-1.0))
        loss = mam.mam_loss(
            m_cams,
            target,
            y,
            measure=c["measure"],
            gamma=c["gamma"],
            gate_threshold=c["gate_threshold"],
            one_sided=c["one_sided"],
            suppress_below=c["suppress_below"],
        )
        # mam_loss divides by (present classes x pixels) of the batch: make that the global batch's under DDP
        return dist.global_mean(loss, y.sum() * size[0] * size[1])


def run(
    cfg: dict,
    *,
    net_name: str,
    data_root: Path,
    out: Path,
    metrics_out: Path,
    plot_out: Path,
    state_path: Path,
    support_ckpt: Path | None = None,
) -> None:
    is_main = net_name.startswith("mainnet_")
    section = cfg["mainnet"] if is_main else cfg["supportnet"]
    tcfg = section["train"]
    backbone_cfg = cfg["supportnet"]["backbone"]
    seed = seed_of(cfg)
    seed_everything(seed)
    net = build_cam_net(backbone_cfg)
    support = None
    if is_main:
        variant = net_name[len("mainnet_"):]
        support, _ = load_cam_net(support_ckpt)
        for p in support.parameters():
            p.requires_grad_(False)
        if section["init_from_supportnet"]:
            net.load_state_dict(support.state_dict())
    else:
        variant = "baseline"
    objective = MainNetObjective(net, support, variant, cfg)
    if objective.memory is not None:
        objective.memory.to(dist.device())
    if support is not None:
        support.to(dist.device())  # train() moves MainNet there
        if tcfg["channels_last"]:
            support.to(memory_format=torch.channels_last)
    ds = ClassificationDataset(data_root, cfg["data"]["train_split"], crop=tcfg["crop"], train=True, seed=seed)
    eval_every = max(2, tcfg["epochs"] // 3)  # val mAP a few times per run (and at the end)

    def end_of_epoch(epoch: int) -> dict:
        if (epoch + 1) % eval_every == 0 or epoch + 1 == tcfg["epochs"]:
            return {"val_map": evaluate_map(net, data_root, cfg["data"]["val_split"])}
        return {}

    history = train(
        net, ds, tcfg, seed=seed, state_path=state_path, out=out, desc=net_name,
        section="mainnet" if is_main else "supportnet",
        resolved={"net": net_name, "section": section, "backbone": backbone_cfg, "seed": seed,
                  "data": cfg["data"]},
        objective=lambda x, batch: objective(x, batch["label"]),
        end_of_epoch=end_of_epoch, extra={"backbone": backbone_cfg},
    )
    if not dist.is_main():  # every rank holds the same history; rank 0 writes
        return
    last_map = next((h["val_map"] for h in reversed(history) if "val_map" in h), None)
    write_json(metrics_out, {"net": net_name, "variant": variant, "history": history,
                             "final": {"val_map": last_map, "epochs": tcfg["epochs"]}})
    write_json(plot_out, history)
