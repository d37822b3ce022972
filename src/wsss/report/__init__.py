"""Report stage: tables, figures and one self-contained HTML page from an experiment's metric files."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from wsss.io import read_json, write_text
from wsss.report.figures import make_figures, noise_curves
from wsss.report.html import page_html, tables_markdown
from wsss.report.inputs import load_experiment
from wsss.report.tables import (
    Table,
    aa_selection,
    ablation_over_seeds,
    build_tables,
    mechanism_contrasts,
    noise_experiment,
    noise_memorisation,
    seed_spread,
    stacked_csv_frame,
)

__all__ = ["build_report", "Table"]


def _aa_weight(config: dict) -> float | None:
    try:
        return float(config["single_stage"]["aa"]["weight"])
    except (KeyError, TypeError):
        return None


def build_report(
    exp_dir: str | Path,
    out_dir: str | Path,
    *,
    nets: Sequence[str],
    crf_nets: Sequence[str],
    seg_sources: Sequence[str],
    title: str,
    config: dict,
    n_qualitative: int = 4,
    optional: Collection[str] = (),
    final_net: str | None = None,
    seeds: Sequence[int] | None = None,
    rw_nets: Sequence[str] = (),
    ss_variants: Sequence[str] = (),
    noise: Sequence[str] = (),
    noise_variants: Sequence[str] = (),
    select_variants: Sequence[str] = (),
    select_weights: Sequence[str] = (),
    select_on: str = "miou_crf",
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """Write ``tables.md``, ``tables.csv``, ``index.html`` and ``figures/*.png`` under ``out_dir``.

    Reads ``exp_dir/metrics/{train,cam}_<net>.json`` for ``nets``, ``pseudo_<net>_crf.json`` for ``crf_nets``
    and ``seg_<source>.json`` for ``seg_sources``; a missing one raises WsssInputError unless named in
    ``optional`` (by file stem, file name, or net/source name), in which case its rows are left out.
    Returns a JSON-serialisable summary (paths, tables, figures, headline rows, skipped inputs). ``notes`` are
    added under the title, after the report's own.

    With ``seeds``, the runs are ``exp_dir/seed<k>/`` (data in ``exp_dir/data``): the single-run tables and
    figures show the first seed, and the ``seeds`` table gives mean and spread over all of them.
    """
    kw = dict(
        nets=nets,
        crf_nets=crf_nets,
        seg_sources=seg_sources,
        optional=optional,
        final_net=final_net,
        rw_nets=rw_nets,
        ss_variants=ss_variants,
        noise=noise,
        noise_variants=noise_variants,
        select_variants=select_variants,
        select_weights=select_weights,
    )
    if seeds:
        exps = [
            load_experiment(Path(exp_dir) / f"seed{s}", data_dir=Path(exp_dir) / "data", seed=s, **kw) for s in seeds
        ]
    else:
        exps = [load_experiment(exp_dir, **kw)]
    exp = exps[0]
    out = Path(out_dir)
    tables = build_tables(exp, config) + [ablation_over_seeds(exps), mechanism_contrasts(exps), seed_spread(exps)]
    if noise:
        tables += [noise_experiment(exps), noise_memorisation(exps)]
    if select_variants and select_weights:
        tables.append(aa_selection(exps, select_on, configured_weight=_aa_weight(config)))
    figures, skipped_figs = make_figures(exp, out / "figures", n_qualitative)
    if noise:
        figures["noise_curves"] = noise_curves(exps, out / "figures" / "noise_curves.png")

    extra_notes = list(notes)
    notes = [
        "Numbers are mIoU x100 from this run's metric files. Published peer numbers are real-VOC results "
        "listed for context only and are not comparable with this run's numbers."
    ]
    if seeds:
        notes.append(
            f"Single-run tables and figures show seed {seeds[0]}; the table 'Mean and spread over seeds' "
            f"aggregates seeds {list(seeds)}."
        )
    skipped = [s for e in exps for s in e.skipped]
    if skipped:
        notes.append("Optional inputs missing (rows left out): " + ", ".join(skipped))
    notes += extra_notes
    synth = exp.data_root / "synthetic.json"
    dataset_info = read_json(synth) if synth.is_file() else None

    paths = {"tables_md": out / "tables.md", "tables_csv": out / "tables.csv", "index_html": out / "index.html"}
    write_text(paths["tables_md"], tables_markdown(title, tables, notes))
    write_text(paths["tables_csv"], stacked_csv_frame(tables).to_csv(index=False))
    write_text(
        paths["index_html"],
        page_html(
            title=title,
            tables=tables,
            figures=figures,
            skipped_figures=skipped_figs,
            notes=notes,
            config=config,
            dataset_info=dataset_info,
        ),
    )
    head = next(t for t in tables if t.name == "headline")
    return {
        **{k: str(v) for k, v in paths.items()},
        "out_dir": str(out),
        "tables": [t.name for t in tables],
        "figures": {k: str(v) for k, v in figures.items()},
        "figures_skipped": skipped_figs,
        "inputs_read": sorted(str(p) for e in exps for p in e.paths.values()),
        "inputs_skipped": skipped,
        "headline": [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in head.frame.to_dict("records")
        ],
    }
