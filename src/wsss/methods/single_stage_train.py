"""Training of AA&LR's single-stage model, one variant end to end from image labels
(:class:`wsss.methods.single_stage.SingleStageObjective`): shared by the stages ``train_single_stage`` (the
configured AA weight) and ``train_select`` (one weight of the held-out selection)."""

from __future__ import annotations

from pathlib import Path

from wsss.data.datasets import ClassificationDataset
from wsss.engine.trainer import EpochAware, seed_everything, train
from wsss.io import plain, write_json
from wsss.methods.single_stage import build_objective


def fit(
    cfg,
    *,
    seed: int,
    variant: str,
    data: Path,
    ckpt: Path,
    metrics: Path,
    plot: Path,
    state: Path,
    support: Path | None = None,
    aa_weight: float | None = None,
) -> None:
    """Train ``variant`` on ``cfg``'s single_stage section; ``aa_weight`` (stage ``train_select``) replaces
    ``single_stage.aa.weight`` (the checkpoint's config and the metric file record it)."""
    scfg = cfg["single_stage"]
    name = f"single_stage_{variant}"
    if aa_weight is not None:
        scfg = plain(scfg)  # a plain copy (the stage's config view is read-only)
        scfg["aa"]["weight"] = float(aa_weight)
        name += f"_aa{aa_weight:g}"
    tcfg = scfg["train"]
    seed_everything(seed)
    objective = build_objective(scfg, variant, support)
    net = objective.net
    aug = scfg["augment"]
    ds = ClassificationDataset(
        data,
        cfg["data"]["train_split"],
        crop=tcfg["crop"],
        train=True,
        seed=seed,
        scale_range=tuple(aug["scale_range"]),
        jitter=aug["jitter"],
    )
    history = train(
        net,
        EpochAware(ds, seed, objective),
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc=name,
        section="single_stage",
        resolved={"single_stage": scfg, "variant": variant, "seed": seed, "data": cfg["data"]},
        inputs={"data": data, "support": support},
        objective=lambda x, batch: objective(x, batch["label"]),
        companions=objective.companions(),
        post_step=objective.after_step,
        extra={"variant": variant},
    )
    write_json(
        metrics,
        {
            "variant": variant,
            **({} if aa_weight is None else {"aa_weight": float(aa_weight)}),
            "history": history,
            "final": {
                "epochs": tcfg["epochs"],
                "warmup_epochs": scfg["warmup_epochs"],
                **{k: v for k, v in history[-1].items() if k != "epoch"},
            },
        },
    )
    write_json(plot, history)
