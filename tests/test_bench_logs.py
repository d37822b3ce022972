"""benchmarks/run_all.py reads the wall time of a finished run from its Snakemake log, or from the logs of a run
stopped and resumed in parts (their spans summed, the pauses between them not counted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", REPO / "benchmarks" / "run_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _part(path: Path, start: str, jobs: list[tuple[int, str, str, str]], done: bool) -> Path:
    """A Snakemake log: for each job (id, rule, start stamp, end stamp) its block and its Finished line."""
    lines = [f"[{start}]", "Building DAG of jobs..."]
    for jid, rule, t0, t1 in jobs:
        lines += [
            f"[{t0}]",
            f"rule {rule}:",
            f"    jobid: {jid}",
            "    wildcards: seed=0",
            "",
            f"[{t1}]",
            f"Finished jobid: {jid} (Rule: {rule})",
        ]
    lines.append("3 of 3 steps (100%) done" if done else "Will exit after finishing currently running jobs.")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_from_log_sums_the_parts_of_a_resumed_run_without_the_pause(tmp_path: Path) -> None:
    ra = _run_all()
    a = _part(
        tmp_path / "run.log",
        "Thu Dec  3 10:00:00 2026",
        [(1, "train_supportnet", "Thu Dec  3 10:00:00 2026", "Thu Dec  3 10:01:40 2026")],
        done=False,
    )
    # an hour's pause, then the rest
    b = _part(
        tmp_path / "run2.log",
        "Thu Dec  3 11:01:40 2026",
        [
            (2, "extract_cams", "Thu Dec  3 11:01:40 2026", "Thu Dec  3 11:02:20 2026"),
            (3, "eval_cams", "Thu Dec  3 11:02:20 2026", "Thu Dec  3 11:02:25 2026"),
        ],
        done=True,
    )
    one = ra.from_log("config/x.yaml", str(b))
    assert one["from_scratch_s"] == 45.0 and "summed" not in one["measured_from"]
    both = ra.from_log("config/x.yaml", str(a), str(b))
    assert both["from_scratch_s"] == 100.0 + 45.0
    assert "run.log, run2.log" in both["measured_from"] and "summed over the parts" in both["measured_from"]
    assert both["per_rule_s"]["train_supportnet"] == {"jobs": 1, "seconds": 100.0}
    assert [j["rule"] for j in both["jobs"]] == ["train_supportnet", "extract_cams", "eval_cams"]


def test_from_log_refuses_a_run_whose_last_part_did_not_finish(tmp_path: Path) -> None:
    ra = _run_all()
    a = _part(
        tmp_path / "run.log",
        "Thu Dec  3 10:00:00 2026",
        [(1, "train_supportnet", "Thu Dec  3 10:00:00 2026", "Thu Dec  3 10:01:40 2026")],
        done=False,
    )
    with pytest.raises(SystemExit, match="run.log: not the log of a completed snakemake run"):
        ra.from_log("config/x.yaml", str(a))
