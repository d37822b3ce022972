"""Stage train_single_stage: one variant of AA&LR's single-stage model (baseline, aa, lr, aa_lr), trained end to
end from image labels (:func:`wsss.methods.single_stage_train.fit`)."""

from __future__ import annotations

from pathlib import Path

from wsss.methods.single_stage_train import fit


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
    fit(cfg, seed=seed, variant=variant, data=data, ckpt=ckpt, metrics=metrics, plot=plot, state=state, support=support)
