"""Render report tables as Markdown and as one self-contained HTML page (figures inlined as data: URIs)."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.report.tables import Table

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}td.t{text-align:left}
caption{caption-side:top;text-align:left;font-size:12px;color:#555;padding:4px 0;max-width:1000px}
pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}
img{max-width:100%}.note{color:#a40}
"""


# ------------------------------------------------------------------------------------------ Markdown
def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def frame_to_md(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(_md_cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def tables_markdown(title: str, tables: list[Table], notes: list[str]) -> str:
    parts = [f"# {title}", ""]
    parts += [f"> {n}" for n in notes]
    for t in tables:
        parts += ["", f"## {t.title}", "", t.caption, ""]
        parts.append(frame_to_md(t.formatted()) if len(t.frame) else "_(no rows in this run)_")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------ HTML
def table_html(t: Table) -> str:
    if not len(t.frame):
        return f"<p><em>{escape(t.title)}: no rows in this run.</em></p>"
    df = t.formatted()
    head = "".join(f"<th>{escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for c, v in zip(df.columns, row):
            cls = "" if c in t.formats else ' class="t"'
            cells.append(f"<td{cls}>{escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{escape(t.name)}"><caption>{escape(t.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def img_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def yamlish(obj: Any) -> str:
    try:
        import yaml

        return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
    except Exception:  # pyyaml missing or an object it cannot dump
        return json.dumps(obj, indent=2, default=str)


def headline_sentences(t: Table) -> list[str]:
    out = []
    for r, f in zip(t.frame.to_dict("records"), t.formatted().to_dict("records")):
        if f["a_value"] == "—" or f["b_value"] == "—":
            out.append(f"{r['comparison']}: not available in this run.")
        else:
            out.append(f"{r['comparison']}: {r['a']} {f['a_value']} vs {r['b']} {f['b_value']} ({f['delta']} points).")
    return out


def page_html(
    *,
    title: str,
    tables: list[Table],
    figures: dict[str, Path],
    skipped_figures: dict[str, str],
    notes: list[str],
    config: dict,
    dataset_info: dict | None,
) -> str:
    by_name = {t.name: t for t in tables}
    h = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    h += [f'<p class="note">{escape(n)}</p>' for n in notes]
    if "headline" in by_name:
        h.append("<h2>Headline</h2><ul>")
        h += [f"<li>{escape(s)}</li>" for s in headline_sentences(by_name["headline"])]
        h.append("</ul>")
    h.append("<h2>Tables</h2>")
    for t in tables:
        if t.name != "protocol":
            h += [f"<h3>{escape(t.title)}</h3>", table_html(t)]
    h.append("<h2>Figures</h2>")
    for name, path in figures.items():
        h.append(
            f'<figure><img alt="{escape(name)}" src="{img_data_uri(path)}">'
            f"<figcaption>{escape(name)}</figcaption></figure>"
        )
    h += [f"<p><em>{escape(n)}: not drawn ({escape(r)}).</em></p>" for n, r in skipped_figures.items()]
    if "protocol" in by_name:
        h += ["<h2>Protocol</h2>", table_html(by_name["protocol"])]
    if dataset_info is not None:
        h += ["<h2>Dataset (synthetic.json)</h2>", f"<pre>{escape(json.dumps(dataset_info, indent=2))}</pre>"]
    h += ["<h2>Config</h2>", f"<pre>{escape(yamlish(config))}</pre>", "</body></html>"]
    return "\n".join(h) + "\n"
