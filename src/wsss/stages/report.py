"""Stage report: tables (MD/CSV/HTML) and figures, regenerated from the metric files only."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from wsss.report import build_report
from wsss.variants import (
    nets,
    noise_settings,
    noise_variants,
    seg_sources,
    selection_variants,
    selection_weights,
    single_stage_variants,
)

log = logging.getLogger("wsss")


def run(cfg, *, data: Path, out: Path, exp: str, threads: int = 1) -> None:
    write(cfg.to_dict(), data=data, out=out, exp=exp)  # the report reads (and prints) the whole config


def write(full: dict, *, data: Path, out: Path, exp: str, notes: Sequence[str] = ()) -> dict:
    """Write the report of the run at ``exp`` under the complete config ``full``; ``notes`` go under the title
    (wsss.records adds its provenance). Returns the report's summary."""
    summary = build_report(
        Path(exp),
        out,
        nets=nets(full),
        crf_nets=full["refine"]["crf_nets"],
        seg_sources=seg_sources(full),
        title=full["report"]["title"],
        config=full,
        n_qualitative=full["report"]["n_qualitative"],
        final_net=f"mainnet_{full['mainnet']['final_variant']}",
        seeds=full["seeds"],
        rw_nets=full["refine"]["random_walk"]["nets"],
        ss_variants=single_stage_variants(full),
        noise=noise_settings(full),
        noise_variants=noise_variants(full),
        select_variants=selection_variants(full),
        select_weights=selection_weights(full),
        select_on=full["single_stage"]["selection"]["select_on"],
        notes=notes,
    )
    for row in summary.get("headline", []):
        log.info("headline: %s", row)
    print(f"report: {Path(out) / 'index.html'}")
    return summary
