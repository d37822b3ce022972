"""Stage train_select: one single-stage (AA&LR) variant trained at one AA weight of the held-out selection
(``single_stage.selection``; issue 16): stage ``train_single_stage`` with ``single_stage.aa.weight`` replaced by
the wildcard ``aaw`` (:func:`wsss.methods.single_stage_train.fit`)."""

from __future__ import annotations

from pathlib import Path

from wsss.methods.single_stage_train import fit


def run(
    cfg,
    *,
    seed: int,
    variant: str,
    aaw: str,
    data: Path,
    ckpt: Path,
    metrics: Path,
    plot: Path,
    state: Path,
    support: Path | None = None,
    threads: int = 1,
) -> None:
    fit(
        cfg,
        seed=seed,
        variant=variant,
        data=data,
        ckpt=ckpt,
        metrics=metrics,
        plot=plot,
        state=state,
        support=support,
        aa_weight=float(aaw),
    )
