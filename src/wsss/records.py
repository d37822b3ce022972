"""Records: one seed's metric files of a finished run, kept in the repository with their provenance, so that seeds
run in separate sessions (or on separate machines) add up to one multi-seed report.

A five-seed ablation that takes longer than one sitting is run a seed or two at a time
(``snakemake <that seed's targets>``); after each, ``wsss-records record`` copies what the report reads of those seeds
(the metric files the report stage gathers, and the dataset's small description files) to
``records/<name>/seed<k>/`` with a ``manifest.json``: the UTC time, the git commit (and whether the tree was
dirty), the sha256 of every config slice the run used (``results/<name>/params/*.json``, the files Snakemake
re-runs a stage on) and the code digest of every stage (:func:`wsss.registry.code_digest`, the digest Snakemake
re-runs a stage on). ``wsss-records report`` then lays the recorded seeds out as an experiment folder and runs the
report stage's table and figure code on them, after checking that every seed came from the same config slices
and the same stage code: numbers of different configurations or code never share a table. Code that changed
since the records were made is an error too unless ``--allow-code-change`` is given, and then the report says
which stages changed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from wsss import config as wconfig
from wsss import registry
from wsss.io import WsssInputError, read_json, write_json, write_text

#: the dataset files the report reads besides the metrics (split lists, the benchmark's and VOC's descriptions)
DATA_FILES = ("synthetic.json", "prepare_report.json", "labels.json")
#: the slice and stage that do not make a seed's numbers: the report's slice holds the whole config and its seeds,
#: and its code is today's, run by `wsss-records report` itself
UNCOMPARED = ("report",)
MANIFEST = "manifest.json"
CONFIG_FILE = "config.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def run_config(exp: Path) -> dict:
    """The complete config the run at ``exp`` (results/<name>) was made with: its report slice holds all of it."""
    path = exp / "params" / "report.json"
    if not path.is_file():
        raise WsssInputError(f"{path}: not found; run the DAG (at least its `config` rules) for {exp} first")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise WsssInputError(f"{path}: not a config slice; re-run the DAG's `config` rules")
    return wconfig.validate(doc["config"], source=str(path))


def seed_files(cfg: dict, seed: int) -> list[str]:
    """The metric files of ``seed`` that the report stage gathers under ``cfg``, relative to results/<name>."""
    exp = registry.exp_dir(cfg)
    stage = registry.STAGES["report"]
    paths = registry.input_paths(stage, cfg, {})
    out = []
    for name, f in stage.inputs.items():
        if not isinstance(f, registry.Gather) or not f.path.endswith(".json"):
            continue
        for path in paths[name]:
            rel = Path(path).relative_to(exp)
            if rel.parts[0] == f"seed{seed}":
                out.append(rel.as_posix())
    return sorted(set(out))


def code_digests(cfg: dict) -> dict[str, str]:
    """Stage name -> the digest of its code (what Snakemake re-runs it on), for the stages of ``cfg``'s DAG but
    the report."""
    return {s.name: registry.code_digest(s.module) for s in registry.active_stages(cfg) if s.name not in UNCOMPARED}


def slice_digests(exp: Path) -> dict[str, str]:
    """Slice id -> sha256 of its file under ``exp/params``, the report's left out."""
    return {p.stem: _sha256(p) for p in sorted((exp / "params").glob("*.json")) if p.stem not in UNCOMPARED}


def check_current(config_file: str, targets: list[str], overrides: list[str] = ()) -> None:
    """Raise unless ``snakemake -n`` (in the working directory, with ``config_file`` and the ``--config``
    ``overrides``) has nothing to do for ``targets``: their outputs then match today's config slices and code, so
    the digests a record states are the ones the numbers were made with."""
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-n", "--cores", "1", *targets]  # targets first
    cmd += ["--configfile", config_file, *(["--config", *overrides] if overrides else [])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = p.stdout + p.stderr
    if p.returncode != 0 or "Nothing to be done" not in out:
        stats = out.split("Job stats:")[1].split("\n\n")[0].strip() if "Job stats:" in out else out[-2000:]
        raise WsssInputError(
            f"{config_file}: the run is not current for the seeds to record (snakemake -n would run jobs); "
            f"run the DAG for them first:\n{stats}"
        )


def record(
    exp: str | Path,
    seeds: list[int],
    to: str | Path | None = None,
    *,
    config_file: str | None = None,
    overrides: list[str] = (),
) -> list[Path]:
    """Copy what the report reads of each seed in ``seeds`` of the run at ``exp`` to ``to``/seed<k> (default
    records/<name>), with a manifest; returns the seed folders written. A seed with a metric file missing is an
    error naming it (finish that seed's run first); an existing record of a seed is replaced. With
    ``config_file``, Snakemake must first find those seeds' files up to date (:func:`check_current`)."""
    exp = Path(exp)
    cfg = run_config(exp)
    name = cfg["name"]
    if exp.name != name:
        raise WsssInputError(f"{exp}: its config's name is {name!r}; record from results/{name}")
    dest = Path(to) if to is not None else Path("records") / name
    unknown = [s for s in seeds if s not in cfg["seeds"]]
    if unknown:
        raise WsssInputError(f"--seeds {unknown}: not among the run's seeds {cfg['seeds']} ({exp}/params/report.json)")
    commit, status = _git("rev-parse", "HEAD"), _git("status", "--porcelain", "--untracked-files=no")
    common = {
        "name": name,
        "recorded_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else None,
        "slices": slice_digests(exp),
        "code": code_digests(cfg),
    }
    if config_file is not None:
        check_current(config_file, [f"{exp}/{rel}" for s in seeds for rel in seed_files(cfg, s)], list(overrides))
    data_root = exp / "data" / "VOC2012"
    written = []
    for seed in seeds:
        files = seed_files(cfg, seed)
        missing = [f for f in files if not (exp / f).is_file()]
        if missing:
            raise WsssInputError(
                f"{exp / missing[0]}: not found ({len(missing)} of seed {seed}'s {len(files)} report inputs "
                f"missing); finish seed {seed}'s run before recording it"
            )
        out = dest / f"seed{seed}"
        tmp = dest / f".seed{seed}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        digests = {}
        for rel in files:
            src = exp / rel
            target = tmp / Path(rel).relative_to(f"seed{seed}")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
            digests[rel] = _sha256(src)
        write_json(tmp / MANIFEST, {**common, "seed": seed, "files": digests})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        written.append(out)
    write_json(dest / CONFIG_FILE, cfg)
    data_dest = dest / "data"
    for rel in [
        *DATA_FILES,
        *(f"ImageSets/Segmentation/{p.name}" for p in (data_root / "ImageSets" / "Segmentation").glob("*.txt")),
    ]:
        if (data_root / rel).is_file():
            (data_dest / rel).parent.mkdir(parents=True, exist_ok=True)
            write_text(data_dest / rel, (data_root / rel).read_text(encoding="utf-8"))
    return written


def load_records(records: str | Path) -> tuple[dict, dict[int, dict]]:
    """The recorded config and seed -> manifest of the records folder ``records``; checks every file's digest."""
    records = Path(records)
    cfg_path = records / CONFIG_FILE
    if not cfg_path.is_file():
        raise WsssInputError(f"{cfg_path}: not found; `wsss-records record` writes it (is {records} a records folder?)")
    cfg = wconfig.validate(read_json(cfg_path), source=str(cfg_path))
    manifests: dict[int, dict] = {}
    for d in sorted(records.glob("seed*")):
        m_path = d / MANIFEST
        if not d.is_dir() or not m_path.is_file():
            continue
        m = read_json(m_path)
        for rel, digest in m.get("files", {}).items():
            path = d / Path(rel).relative_to(f"seed{m['seed']}")
            if not path.is_file() or _sha256(path) != digest:
                raise WsssInputError(f"{path}: missing or changed since it was recorded; re-record seed {m['seed']}")
        manifests[int(m["seed"])] = m
    if not manifests:
        raise WsssInputError(f"{records}: no recorded seed (seed<k>/{MANIFEST}); run `wsss-records record` first")
    return cfg, manifests


def check_consistent(manifests: dict[int, dict], current_code: dict[str, str], allow_code_change: bool) -> list[str]:
    """Raise if the seeds were made with different config slices or stage code; return notes for the report (the
    stages whose code differs from today's, which is an error unless ``allow_code_change``)."""
    seeds = sorted(manifests)
    first = manifests[seeds[0]]
    for s in seeds[1:]:
        for part, what in (("slices", "config slice"), ("code", "code of stage")):
            a, b = first[part], manifests[s][part]
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    raise WsssInputError(
                        f"records of seeds {seeds[0]} and {s} differ in the {what} {key!r}: they are not one "
                        "experiment; re-run and re-record the stale seed"
                    )
    changed = sorted(k for k in set(first["code"]) | set(current_code) if first["code"].get(k) != current_code.get(k))
    if changed and not allow_code_change:
        raise WsssInputError(
            f"the code of stages {', '.join(changed)} changed since the records were made (commit "
            f"{first.get('git_commit')}); re-run those seeds, or pass --allow-code-change to report them anyway"
        )
    commits = sorted({str(manifests[s].get("git_commit")) for s in seeds})
    when = ", ".join(f"seed {s}: {manifests[s]['recorded_utc']}" for s in seeds)
    dirty = " (tree dirty)" if any(manifests[s].get("git_dirty") for s in seeds) else ""
    notes = [
        f"Assembled from records ({when}; commit {', '.join(commits)}{dirty}): every seed has the same config "
        "slices and stage code."
    ]
    if changed:
        notes.append(
            "Stage code changed since the records were made (reported with --allow-code-change): " + ", ".join(changed)
        )
    return notes


def report_records(
    records: str | Path, out: str | Path | None = None, *, allow_code_change: bool = False
) -> dict[str, Any]:
    """Assemble the recorded seeds of ``records`` as the experiment folder ``out``/<name> (default
    results/records/<name>) and write its report there (``report/``); returns the report's summary."""
    from wsss.stages import report as report_stage

    cfg, manifests = load_records(records)
    records = Path(records)
    seeds = sorted(manifests)
    notes = check_consistent(manifests, code_digests(cfg), allow_code_change)
    exp = (Path(out) if out is not None else Path("results") / "records") / cfg["name"]  # the name, as in the DAG
    for s in seeds:
        target = exp / f"seed{s}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(records / f"seed{s}", target)
    data = exp / "data" / "VOC2012"
    if data.exists():
        shutil.rmtree(data)
    if (records / "data").is_dir():
        shutil.copytree(records / "data", data)
    else:
        data.mkdir(parents=True)
    return report_stage.write({**cfg, "seeds": seeds}, data=data, out=exp / "report", exp=str(exp), notes=notes)


def _seed_targets(config_file: str, seed: int) -> list[str]:
    cfg = wconfig.load(config_file)
    if seed not in cfg["seeds"]:
        raise WsssInputError(f"--seed {seed}: not among {config_file}'s seeds {cfg['seeds']}")
    exp = registry.exp_dir(cfg)
    # and the report's slice, which holds the run's whole config that `wsss-records record` reads (run_config)
    return [registry.params_path(cfg, "report"), *(f"{exp}/{rel}" for rel in seed_files(cfg, seed))]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss-records", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser(
        "seed-targets", help="the Snakemake targets that run one seed alone: the metric files the report reads"
    )
    t.add_argument("--config", required=True)
    t.add_argument("--seed", required=True, type=int)
    r = sub.add_parser("record", help="keep seeds of a finished run in records/<name>/seed<k> with their provenance")
    r.add_argument("--exp", required=True, help="the run's folder, results/<name>")
    r.add_argument("--seeds", required=True, type=int, nargs="+", help="the seeds to record (their runs finished)")
    r.add_argument("--to", default=None, help="the records folder (default records/<name>)")
    r.add_argument(
        "--config",
        default=None,
        help="the run's config file: first check with `snakemake -n` that those seeds' outputs are up to date",
    )
    r.add_argument(
        "--snakemake-config",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="the run's `snakemake --config` overrides, for that check",
    )
    rr = sub.add_parser("report", help="the report of the recorded seeds (same config slices and stage code, checked)")
    rr.add_argument("--records", required=True, help="a records folder (records/<name>)")
    rr.add_argument(
        "--out", default=None, help="where to assemble the experiment folder <name> (default results/records)"
    )
    rr.add_argument(
        "--allow-code-change",
        action="store_true",
        help="report records made with stage code that differs from today's (the report lists those stages)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``wsss-records seed-targets | record | report``: a command of its own, so that ``wsss`` (the CLI every
    stage and DVC's ``config`` stage run) does not import the report code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if args.command == "seed-targets":
            print(" ".join(_seed_targets(args.config, args.seed)))
        elif args.command == "record":
            for path in record(args.exp, args.seeds, args.to, config_file=args.config, overrides=args.snakemake_config):
                print(f"recorded {path}")
        else:
            summary = report_records(args.records, args.out, allow_code_change=args.allow_code_change)
            print(json.dumps({k: summary[k] for k in ("tables_md", "index_html") if k in summary}))
    except WsssInputError as e:
        print(f"wsss-records {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
