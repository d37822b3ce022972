"""Stage train_supportnet: SupportNet, the multi-label CAM classifier (classification loss only)."""

from __future__ import annotations

from pathlib import Path

from wsss.data.datasets import ClassificationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import seed_everything, train
from wsss.evaluation import classifier_metrics, periodic_map
from wsss.io import write_json
from wsss.losses.classification import multilabel_loss
from wsss.models.cam_net import build_cam_net


def run(cfg, *, seed: int, data: Path, ckpt: Path, metrics: Path, plot: Path, state: Path, threads: int = 1) -> None:
    section = cfg["supportnet"]
    tcfg, backbone = section["train"], section["backbone"]
    seed_everything(seed)
    net = build_cam_net(backbone)
    ds = ClassificationDataset(data, cfg["data"]["train_split"], crop=tcfg["crop"], train=True, seed=seed)

    def objective(x, batch) -> dict:
        loss = multilabel_loss(net(x)["logits"], batch["label"])
        return {"loss_cls": loss, "loss": loss}

    history = train(
        net,
        ds,
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc="supportnet",
        section="supportnet",
        resolved={"net": "supportnet", "section": section, "backbone": backbone, "seed": seed, "data": cfg["data"]},
        inputs={"data": data},
        objective=objective,
        extra={"backbone": backbone},
        end_of_epoch=periodic_map(net, data, cfg["data"]["val_split"], tcfg["epochs"]),
    )
    if not dist.is_main():  # every rank holds the same history; rank 0 writes
        return
    write_json(metrics, classifier_metrics("supportnet", "baseline", history, tcfg["epochs"]))
    write_json(plot, history)
