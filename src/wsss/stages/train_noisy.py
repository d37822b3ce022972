"""Stage train_noisy: one single-stage (AA&LR) variant trained on one setting of the controlled-noise experiment
(issue 16): the segmentation targets are the corrupted masks of ``make_noisy_labels`` (fixed, instead of the
model's PAMR pseudo GT), the classification loss keeps the image labels, and every step records LR's flips against
the truth and the agreement of the predictions with the targets and with the truth
(:class:`wsss.methods.single_stage.SingleStageObjective`, ``target`` / ``gt``).

The metric file's ``per_epoch`` gives, per epoch, agreement with the targets and with the truth on the training
crops (memorisation: the first rising while the second falls) and, for the LR variants, the reassignment precision
(moves that remove a wrong label / all moves) and recall (those moves / all wrong target pixels).
"""

from __future__ import annotations

from pathlib import Path

from wsss.data.datasets import SegmentationDataset
from wsss.engine.trainer import EpochAware, seed_everything, train
from wsss.io import write_json
from wsss.methods.single_stage import build_objective


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def per_epoch(history: list[dict]) -> list[dict]:
    """The experiment's per-epoch figures from the training history (epoch means of the per-step shares)."""
    out = []
    for h in history:
        row = {"epoch": h["epoch"], "agree_target": h.get("agree_target"), "agree_gt": h.get("agree_gt")}
        if "lr_flips" in h:
            row.update(
                lr_flips=h["lr_flips"],
                lr_precision=_ratio(h["lr_flips_correct"], h["lr_flips"]),
                lr_recall=_ratio(h["lr_flips_correct"], h["target_wrong"]),
                target_wrong=h["target_wrong"],
            )
        out.append(row)
    return out


def run(
    cfg,
    *,
    seed: int,
    noise: str,
    variant: str,
    data: Path,
    labels: Path,
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
    ds = SegmentationDataset(
        data,
        cfg["data"]["train_split"],
        crop=tcfg["crop"],
        train=True,
        label_dir=labels,
        seed=seed,
        scale_range=tuple(aug["scale_range"]),
        jitter=aug["jitter"],
        with_gt=True,
    )
    history = train(
        net,
        EpochAware(ds, seed, objective),
        tcfg,
        seed=seed,
        state_path=state,
        out=ckpt,
        desc=f"noisy_{noise}_{variant}",
        section="single_stage",
        resolved={"single_stage": scfg, "variant": variant, "noise": noise, "seed": seed, "data": cfg["data"]},
        inputs={"data": data, "labels": labels, "support": support},
        objective=lambda x, batch: objective(x, batch["classes"], target=batch["label"], gt=batch["gt"]),
        companions=objective.companions(),
        post_step=objective.after_step,
        extra={"variant": variant, "noise": noise},
    )
    write_json(
        metrics,
        {
            "variant": variant,
            "noise": noise,
            "history": history,
            "per_epoch": per_epoch(history),
            "final": {"epochs": tcfg["epochs"], **{k: v for k, v in history[-1].items() if k != "epoch"}},
        },
    )
    write_json(plot, history)
