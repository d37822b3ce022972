"""Stage: the report (tables MD/CSV/HTML + figures), regenerated from the metric files only."""

from __future__ import annotations

import logging
from pathlib import Path

from wsss import config as wconfig
from wsss.report import build_report

log = logging.getLogger("wsss")


def run(cfg: dict, *, exp_dir: Path, out_dir: Path) -> None:
    summary = build_report(
        exp_dir,
        out_dir,
        nets=wconfig.nets(cfg),
        crf_nets=cfg["refine"]["crf_nets"],
        seg_sources=wconfig.seg_sources(cfg),
        title=cfg["report"]["title"],
        config=cfg,
        n_qualitative=cfg["report"]["n_qualitative"],
        final_net=f"mainnet_{cfg['mainnet']['final_variant']}",
        seeds=cfg["seeds"],
        rw_nets=cfg["refine"]["random_walk"]["nets"],
        ss_variants=cfg["single_stage"]["variants"] if cfg["single_stage"]["enabled"] else [],
    )
    for row in summary.get("headline", []):
        log.info("headline: %s", row)
    print(f"report: {Path(out_dir) / 'index.html'}")
