"""Stage: the dataset in VOC layout. ``synthetic``: the embedded benchmark, generated deterministically."""

from __future__ import annotations

from pathlib import Path

from wsss.data import synthetic
from wsss.io import write_json


def run(cfg: dict, *, out_root: Path, metrics_out: Path) -> None:
    source = cfg["data"]["source"]
    if source != "synthetic":
        raise NotImplementedError(f"data.source = {source!r} has no generator stage")
    stats = synthetic.generate(out_root, cfg["data"]["synthetic"])
    stats = {k: v for k, v in stats.items() if k != "generation_time_s"}  # metrics must be deterministic
    write_json(metrics_out, {"source": source, **stats})
