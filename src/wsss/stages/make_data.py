"""Stage make_data: the embedded synthetic benchmark in VOC layout, generated deterministically from its seed."""

from __future__ import annotations

from pathlib import Path

from wsss.data import synthetic
from wsss.io import write_json


def run(cfg, *, data: Path, metrics: Path, threads: int = 1) -> None:
    stats = synthetic.generate(data, cfg["data"]["synthetic"])
    write_json(metrics, {"source": "synthetic", **stats})
