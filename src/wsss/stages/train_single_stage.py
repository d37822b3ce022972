"""Stage train_single_stage: one variant of AA&LR's single-stage model (baseline, aa, lr, aa_lr), trained end to
end from image labels (:class:`wsss.methods.single_stage.SingleStageObjective`)."""

from __future__ import annotations

from pathlib import Path

from wsss.data.datasets import ClassificationDataset
from wsss.engine.trainer import EpochAware, seed_everything, train
from wsss.io import write_json
from wsss.methods.single_stage import build_objective


def run(
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
    threads: int = 1,
) -> None:
    scfg = cfg["single_stage"]
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
        desc=f"single_stage_{variant}",
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
            "history": history,
            "final": {
                "epochs": tcfg["epochs"],
                "warmup_epochs": scfg["warmup_epochs"],
                **{k: v for k, v in history[-1].items() if k != "epoch"},
            },
        },
    )
    write_json(plot, history)
