"""Stage train_mainnet: one MainNet variant (the RCM / MAM ablation; ``baseline`` is the fair control, ``puzzle``
and ``hide_and_seek`` the positive controls), trained from the frozen SupportNet
(:class:`wsss.methods.mainnet.MainNetObjective`; the authors_* variants: the formulation read from the authors'
compiled code, with SupportNet as MainNet's mean teacher where the variant has ``teacher``). MainNet has SupportNet's architecture (the backbone config is
read from SupportNet's checkpoint) and, with ``mainnet.init_from_supportnet``, its weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from wsss.data.datasets import ClassificationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import DTYPES, EpochAware, seed_everything, train
from wsss.evaluation import classifier_metrics, periodic_map
from wsss.io import write_json
from wsss.methods.mainnet import MainNetObjective
from wsss.models.cam_net import build_cam_net, load_cam_net


def run(
    cfg,
    *,
    seed: int,
    variant: str,
    data: Path,
    support: Path,
    ckpt: Path,
    metrics: Path,
    plot: Path,
    state: Path,
    threads: int = 1,
) -> None:
    section = cfg["mainnet"]
    tcfg = section["train"]
    name = f"mainnet_{variant}"
    seed_everything(seed)
    frozen, sup_ckpt = load_cam_net(support)
    backbone = sup_ckpt["backbone"]
    net = build_cam_net(backbone)
    for p in frozen.parameters():
        p.requires_grad_(False)
    if section["init_from_supportnet"]:
        net.load_state_dict(frozen.state_dict())
    objective = MainNetObjective(net, frozen, variant, section, epochs=tcfg["epochs"], seed=seed)
    ds = ClassificationDataset(
        data, cfg["data"]["train_split"], crop=tcfg["crop"], train=True, seed=seed, two_views=objective.two_views
    )
    objective.steps_per_epoch = max(1, len(ds) // tcfg["batch_size"])
    dtype = DTYPES[tcfg["dtype"]]
    for m in (objective.memory, objective.queue):
        if m is not None:
            m.to(dist.device(), dtype=dtype)
    frozen.to(dist.device(), dtype=dtype)  # train() moves MainNet there
    if tcfg["channels_last"]:
        frozen.to(memory_format=torch.channels_last)
    history = train(
        net,
        EpochAware(ds, seed, objective),
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc=name,
        section="mainnet",
        resolved={"net": name, "section": section, "backbone": backbone, "seed": seed, "data": cfg["data"]},
        inputs={"data": data, "support": support},
        objective=lambda x, batch: objective(x, batch["label"], batch["id"], batch.get("image_p")),
        companions=objective.companions(),
        post_step=objective.after_step,
        end_of_epoch=periodic_map(net, data, cfg["data"]["val_split"], tcfg["epochs"]),
        extra={"backbone": backbone},
    )
    if not dist.is_main():  # every rank holds the same history; rank 0 writes
        return
    write_json(metrics, classifier_metrics(name, variant, history, tcfg["epochs"]))
    write_json(plot, history)
