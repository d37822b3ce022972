"""Benchmarks: print figures and write results/benchmarks/*.json (never timed tests).

    python benchmarks/run_all.py [--config config/config.yaml] [--only rerun,crf,miou]

- rerun: wall time of `snakemake --cores 2` with nothing to do (target <= 10 s); needs a finished run of the
  config (it reports "no finished run" otherwise).
- crf: dense-CRF pseudo labels, images per second with 1 process and with every core (target >= 1.8x on 2).
- miou: confusion-matrix mIoU evaluation throughput (megapixels per second).
- cam: CAM extraction (the stage, with I/O) versus the bare forward passes it needs (target overhead <= 1.5x);
  needs results/default/seed0/models/supportnet/checkpoint.pt.
- e2e_smoke: the smoke config end to end from scratch in a temporary copy, and its no-change re-run.
- e2e_default (opt-in, ~20 min): the embedded default end to end from scratch (target <= 20 min on 2 cores).
- e2e_ablation_v2 (opt-in, ~1 hour): issue 14's five-seed ablation on benchmark v2 (config/ablation-v2.yaml).
- e2e_ablation_v2_noctx (opt-in, ~1.5 hours): the same without co-occurring context (config/ablation-v2-noctx.yaml).
- e2e_ablation_v3 (opt-in, ~2.5 hours): issue 14's third setting (config/ablation-v3.yaml).
- e2e_authors (opt-in, ~3.5 hours): issue 16's authors' formulation beside ours (config/authors.yaml).
  Runs this long are usually made in resumed parts and recorded with `--from-log NAME LOG...`.
- e2e_select_aa (opt-in, ~90 min): issue 16's held-out choice of the AA weight (config/select-aa.yaml).
- rw: the sparse random walk at 128², 256², 512² (benchmarks/random_walk.py; target 512² within 4 GB).
`--doc` renders docs/performance.md from the JSON files (figures against targets).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.io import write_json  # noqa: E402

OUT = REPO / "results" / "benchmarks"


def bench_rerun(configfile: str) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    dry = subprocess.run(
        ["snakemake", "-n", "--cores", "2", "--configfile", configfile],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if "Nothing to be done" not in dry.stdout + dry.stderr:
        return {"config": configfile, "status": "no finished run of this config (run it first)"}
    t0 = time.perf_counter()
    subprocess.run(
        ["snakemake", "--cores", "2", "--configfile", configfile], cwd=REPO, env=env, check=True, capture_output=True
    )
    secs = time.perf_counter() - t0
    return {"config": configfile, "no_change_rerun_s": round(secs, 2), "target_s": 10, "met": secs <= 10}


def _crf_item(i: int):
    from wsss.refine.crf import cam_to_pseudo_label

    rng = np.random.default_rng(i)
    img = (rng.random((128, 128, 3)) * 40 + 100).astype(np.uint8)
    img[32:96, 32:96] = [200, 60, 60]
    cam = np.zeros((2, 128, 128), np.float32)
    cam[0, 40:90, 40:90] = 1.0
    cam[1, 5:30, 5:30] = 0.8
    return cam_to_pseudo_label(img, cam, [3, 7], bg_alpha=2.0).sum()


def _spin(i: int) -> int:
    """Pure-Python integer work (no memory traffic, no library threads): the machine's own scaling ceiling."""
    acc = i
    for k in range(3_000_000):
        acc = (acc * 31 + k) & 0xFFFFFFFF
    return acc


def _rates(fn, n: int, repeats: int = 3) -> dict[int, float]:
    """Items per second of ``imap_ordered(fn, range(n))`` with 1 worker and with every core: the best of
    ``repeats`` interleaved runs (as ``timeit``: other load on a shared VM only ever slows a run down)."""
    from wsss.parallel import available_cores, imap_ordered

    list(imap_ordered(fn, range(2), workers=1, progress=False))  # warm-up: first-call costs out of the timing
    res: dict[int, float] = {}
    for _ in range(repeats):
        for workers in sorted({1, available_cores()}):
            t0 = time.perf_counter()
            list(imap_ordered(fn, range(n), workers=workers, progress=False))
            res[workers] = max(res.get(workers, 0.0), n / (time.perf_counter() - t0))
    return res


def bench_crf(n: int = 256) -> dict:
    """CRF images/s with 1 process and with every core, beside the same ratio for pure-Python integer work: on a
    VM whose vCPUs share physical cores (or under other load) that ceiling is below the core count, and no
    process pool can beat it."""
    import wsss.refine.crf  # noqa: F401  (loaded before the fork, as in the CRF stage)

    ceiling = _rates(_spin, 32)
    res = _rates(_crf_item, n)
    return {
        "images": n,
        "size": "128x128, 2 classes, 10 iterations",
        "images_per_s": {str(k): round(v, 1) for k, v in res.items()},
        "speedup": round(res[max(res)] / res[1], 2),
        "target_speedup_on_2_cores": 1.8,
        "cpu_ceiling_speedup": round(ceiling[max(ceiling)] / ceiling[1], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def bench_miou(n: int = 200) -> dict:
    from wsss.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 21, (375, 500), dtype=np.uint8) for _ in range(8)]
    cm = ConfusionMatrix()
    t0 = time.perf_counter()
    for i in range(n):
        cm.update(gts[i % 8], gts[(i + 1) % 8])
    secs = time.perf_counter() - t0
    return {"images": n, "size": "375x500", "megapixels_per_s": round(n * 375 * 500 / secs / 1e6, 1)}


def bench_cam(n: int = 100) -> dict:
    import tempfile

    import torch

    from wsss import config, registry
    from wsss.data.datasets import ImageDataset
    from wsss.models.cam_net import load_cam_net, multiscale_cam
    from wsss.stages import extract_cams

    ckpt = REPO / "results/default/seed0/models/supportnet/checkpoint.pt"
    data = REPO / "results/default/data/VOC2012"
    if not ckpt.is_file():
        return {"status": "no results/default run (make run first)"}
    cfg = config.load(REPO / "config/config.yaml")
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "VOC2012"
        (root / "ImageSets/Segmentation").mkdir(parents=True)
        ids = (data / "ImageSets/Segmentation/train.txt").read_text().split()[:n]
        (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(ids) + "\n")
        for sub in ("JPEGImages", "labels.json"):
            (root / sub).symlink_to(data / sub)
        t0 = time.perf_counter()
        view = config.stage_view(cfg, registry.STAGES["extract_cams"], {})
        extract_cams.run(view, seed=0, net="supportnet", ckpt=ckpt, data=root, cams=Path(tmp) / "cams")
        stage = time.perf_counter() - t0
        net, _ = load_cam_net(ckpt)
        ds = ImageDataset(root, "train")
        images = [ds[i]["image"][None] for i in range(len(ds))]
        t0 = time.perf_counter()
        with torch.no_grad():
            for x in images:
                multiscale_cam(net, x, scales=cfg["cams"]["scales"], flip=cfg["cams"]["flip"])
        bare = time.perf_counter() - t0
    return {
        "images": n,
        "stage_s": round(stage, 2),
        "bare_forward_s": round(bare, 2),
        "overhead_ratio": round(stage / bare, 2),
        "target_ratio": 1.5,
        "met": stage / bare <= 1.5,
    }


def _timed_snakemake(cwd: Path, configfile: str, overrides: tuple[str, ...] = ()) -> tuple[float, str]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if (cwd / "src" / "wsss").is_dir():  # the copy's own package, not the checkout's editable install
        env["PYTHONPATH"] = os.pathsep.join([str(cwd / "src"), *filter(None, [env.get("PYTHONPATH")])])
    t0 = time.perf_counter()
    p = subprocess.run(
        ["snakemake", "--cores", "2", "--configfile", configfile, *(["--config", *overrides] if overrides else [])],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - t0, p.stdout + p.stderr


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?rule (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+)")


def job_times(log: str) -> list[dict]:
    """Per-job wall times from a Snakemake log: each job's start stamp (the ``[date]`` line before its
    ``rule X:`` block) to the stamp before its ``Finished jobid: N``. Jobs overlap when cores allow, so their
    sum can exceed the run's wall time."""
    from datetime import datetime

    stamp, rule, started = None, None, {}
    jobs = []
    for line in log.splitlines():
        if m := _STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            rule = m.group(1)
        elif (m := _JOBID.match(line)) and rule and stamp:
            started[m.group(1)] = {"rule": rule, "start": stamp, "wildcards": ""}
        elif (m := _WILDCARDS.match(line)) and started:
            list(started.values())[-1]["wildcards"] = m.group(1)
        elif (m := _FINISHED.match(line)) and m.group(1) in started and stamp:
            job = started.pop(m.group(1))
            jobs.append(
                {"rule": job["rule"], "wildcards": job["wildcards"], "seconds": (stamp - job["start"]).total_seconds()}
            )
    return jobs


def per_rule(jobs: list[dict]) -> dict:
    """Jobs grouped by rule: count and summed seconds, slowest rule first."""
    out: dict[str, dict] = {}
    for j in jobs:
        r = out.setdefault(j["rule"], {"jobs": 0, "seconds": 0.0})
        r["jobs"] += 1
        r["seconds"] += j["seconds"]
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["seconds"]))


def bench_e2e(configfile: str, target_s: float | None, keep: bool = False, overrides: tuple[str, ...] = ()) -> dict:
    """The config end to end from scratch in a temporary copy of the workflow, then a no-change re-run.

    ``overrides``: ``--config`` items (where the data lies, the only keys it may set: wsss.config.LOCATION_KEYS).

    ``keep``: copy the run's ``results/<name>`` back into this checkout afterwards (replacing it), so that the
    timed run is also the run whose report one reads.
    """
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # src too: the jobs import the copy's package (PYTHONPATH, _timed_snakemake), so editing the checkout
        # during a long run cannot change the code the run executes (it did once: results/benchmarks/e2e_voc_cpu.json,
        # no_change_rerun_note)
        for item in ("Snakefile", "workflow", "config", "profiles", "environment.yml", "src"):
            src = REPO / item
            (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
        first, log = _timed_snakemake(work, configfile, overrides)
        again, _ = _timed_snakemake(work, configfile, overrides)
        if keep:
            import yaml

            name = yaml.safe_load((REPO / configfile).read_text())["name"]
            dest = REPO / "results" / name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(work / "results" / name, dest)
    jobs = job_times(log)
    out = {
        "config": configfile,
        "from_scratch_s": round(first, 1),
        "no_change_rerun_s": round(again, 2),
        "rerun_target_s": 10,
        "rerun_met": again <= 10,
        "per_rule_s": {r: {"jobs": v["jobs"], "seconds": round(v["seconds"], 1)} for r, v in per_rule(jobs).items()},
        "jobs": [{**j, "seconds": round(j["seconds"], 1)} for j in jobs],
    }
    if target_s:
        out.update(target_s=target_s, met=first <= target_s)
    return out


def from_log(configfile: str, *log_paths: str) -> dict:
    """The figures of a from-scratch run already made with ``snakemake --cores 2 --configfile ...`` (its Snakemake
    log, from the first job's stamp to the last one's; e.g. a run too long to repeat under this script), in the
    format of :func:`bench_e2e` without the no-change re-run. A run stopped and resumed (``--rerun-incomplete``)
    gives one log per part: the wall time is the sum of the parts' spans (the pauses between them not counted),
    and only the last part must end the run."""
    from datetime import datetime

    if not log_paths:
        raise SystemExit("from_log: give at least one Snakemake log")
    total, jobs = 0.0, []
    for i, log_path in enumerate(log_paths):
        log = Path(log_path).read_text(encoding="utf-8", errors="replace")
        stamps = [
            datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y") for m in map(_STAMP.match, log.splitlines()) if m
        ]
        last = i == len(log_paths) - 1
        if (
            "Nothing to be done" in log
            or len(stamps) < 2
            or (last and not re.search(r"\d+ of \d+ steps \(100%\) done", log))
        ):
            what = "a completed snakemake run" if last else "a part of a snakemake run"
            raise SystemExit(f"{log_path}: not the log of {what}")
        total += (stamps[-1] - stamps[0]).total_seconds()
        jobs += job_times(log)
    names = ", ".join(Path(q).name for q in log_paths)
    span = "first to last job stamp" + (", summed over the parts" if len(log_paths) > 1 else "")
    return {
        "config": configfile,
        "from_scratch_s": round(total, 1),
        "measured_from": f"Snakemake log{'s' if len(log_paths) > 1 else ''} {names} ({span})",
        "per_rule_s": {r: {"jobs": v["jobs"], "seconds": round(v["seconds"], 1)} for r, v in per_rule(jobs).items()},
        "jobs": [{**j, "seconds": round(j["seconds"], 1)} for j in jobs],
    }


def bench_rw() -> dict:
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/random_walk.py"), "--json"], capture_output=True, text=True, check=True
    )
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    return {"rows": rows, "target": "512x512 within 4 GiB"}


#: the real photographs of issue 15 (third-party data, used from ../shared, never copied)
VOC_MINI = (REPO.parent / "shared" / "data" / "voc2012-mini" / "VOC2012").resolve()

# the end-to-end benchmarks: name -> (config, target seconds or None, --config overrides)
E2E = {
    "e2e_smoke": ("config/smoke.yaml", None, ()),
    "e2e_default": ("config/config.yaml", 1200, ()),
    "e2e_ablation_v2": ("config/ablation-v2.yaml", None, ()),
    "e2e_ablation_v2_noctx": ("config/ablation-v2-noctx.yaml", None, ()),
    "e2e_ablation_v3": ("config/ablation-v3.yaml", None, ()),
    "e2e_authors": ("config/authors.yaml", None, ()),
    "e2e_select_aa": ("config/select-aa.yaml", None, ()),
    "e2e_voc_cpu": ("config/voc-cpu.yaml", 2700, (f"data={{voc: {{extracted_root: {VOC_MINI}}}}}",)),
}

TARGETS = [
    ("e2e_default", "embedded default end to end (2 cores)", "from_scratch_s", "<= 1200 s"),
    ("e2e_default", "no-change re-run (default)", "no_change_rerun_s", "<= 10 s"),
    ("e2e_ablation_v2", "five-seed ablation on benchmark v2 end to end (2 cores)", "from_scratch_s", "-"),
    ("e2e_ablation_v2_noctx", "the same without co-occurring context (2 cores)", "from_scratch_s", "-"),
    ("e2e_ablation_v3", "five-seed ablation v3 (sparse bodies, MainNets from scratch; 2 cores)", "from_scratch_s", "-"),
    (
        "e2e_authors",
        "five-seed authors' formulation beside ours, embedded (config/authors.yaml; 2 cores)",
        "from_scratch_s",
        "-",
    ),
    ("e2e_select_aa", "held-out AA-weight selection, 3 seeds (config/select-aa.yaml; 2 cores)", "from_scratch_s", "-"),
    ("e2e_voc_cpu", "real VOC photographs (config/voc-cpu.yaml) end to end (2 cores)", "from_scratch_s", "<= 2700 s"),
    ("e2e_smoke", "smoke config end to end", "from_scratch_s", "-"),
    ("e2e_smoke", "no-change re-run (smoke)", "no_change_rerun_s", "<= 10 s"),
    ("rerun", "no-change re-run of results/default", "no_change_rerun_s", "<= 10 s"),
    ("cam", "CAM extraction / bare forward passes", "overhead_ratio", "<= 1.5"),
    ("crf", "CRF speed-up, all cores vs 1", "speedup", ">= 1.8 on 2 cores"),
    ("crf", "same ratio for pure-Python integer work (the machine's ceiling)", "cpu_ceiling_speedup", "-"),
    ("miou", "mIoU evaluation (MPix/s)", "megapixels_per_s", "-"),
]


def _earlier_figures(doc: Path) -> dict[str, str]:
    """label -> value of the figures table of an existing docs/performance.md (values of this script's own earlier
    output, never typed in), for figures whose JSON this checkout lacks; without a marker of its own."""
    if not doc.is_file():
        return {}
    out = {}
    for line in doc.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1] not in ("value", "---", "not measured"):
            out[cells[0]] = cells[1].split(" (earlier run")[0]
        if line.startswith("Random walk") or line.startswith("Where the time goes"):
            break
    return out


def _earlier_block(doc: Path, head: str) -> list[str]:
    """The block (heading line to the end of its table) of an existing docs/performance.md that starts with
    ``head``, marked as an earlier run's, for a benchmark whose JSON this checkout lacks; [] when there is none."""
    if not doc.is_file():
        return []
    text = doc.read_text().splitlines()
    for i, line in enumerate(text):
        if line.startswith(head):
            j = i + 1
            while j < len(text) and not text[j].strip():  # the blank lines under the heading
                j += 1
            while j < len(text) and text[j].startswith("|"):  # its table
                j += 1
            first = line if "(earlier run" in line else line.rstrip(":") + " (earlier run; no JSON here):"
            return ["", first, *text[i + 1 : j]]
    return []


def gpu_block(path: Path) -> list[str]:
    """docs/performance.md's table of the prepared GPU check (benchmarks/gpu_check.py), when its JSON exists."""
    if not path.is_file():
        return ["", "GPU check (benchmarks/gpu_check.sh): not run yet (no results/benchmarks/gpu_check.json)."]
    g = json.loads(path.read_text())
    lines = [
        "",
        f"GPU check (benchmarks/gpu_check.sh; {g['config']}'s networks on {Path(g['voc_root']).name} photographs, "
        f"image scale {g['image_scale']}, device: {g['device']}, torch {g['torch']}):",
        "",
        "| stage | steps | images/step | s/step | images/s | peak memory MiB | memory measure |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in g["stages"].items():
        lines.append(
            f"| {name} | {r['steps']} | {r['images_per_step']} | {r['seconds_per_step']} | {r['images_per_s']} | "
            f"{r['peak_memory_mib']} | {r['memory_kind']} |"
        )
    return lines


def write_doc() -> Path:
    lines = [
        "# Performance",
        "",
        "Generated by `python benchmarks/run_all.py --doc` from `results/benchmarks/*.json` (never typed in).",
        "Machine: the project's 2-core, 24 GiB CPU machine unless the JSON says otherwise.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
    ]
    earlier = _earlier_figures(REPO / "docs" / "performance.md")
    for name, label, key, target in TARGETS:
        f = OUT / f"{name}.json"
        if f.is_file():
            value = json.loads(f.read_text()).get(key, "—")
        else:  # kept from the doc being replaced, and said so (its JSON predates committed benchmark files)
            value = f"{earlier[label]} (earlier run; no JSON here)" if label in earlier else "not measured"
        lines.append(f"| {label} | {value} | {target} |")
    rw = OUT / "rw.json"
    if not rw.is_file():
        lines += _earlier_block(REPO / "docs" / "performance.md", "Random walk")
    else:
        lines += [
            "",
            "Random walk (radius 5, 256 steps, one thread; target: 512² within 4 GiB):",
            "",
            "| size | walk s (incl. build) | peak RSS MiB | dense fp32 HW×HW would need GiB |",
            "|---|---|---|---|",
        ]
        for r in json.loads(rw.read_text())["rows"]:
            lines.append(f"| {r['size']}² | {r['random_walk_s']} | {r['peak_rss_mib']} | {r['dense_fp32_gib']} |")
    lines += gpu_block(OUT / "gpu_check.json")
    for name in (
        "e2e_default",
        "e2e_voc_cpu",
        "e2e_ablation_v2",
        "e2e_ablation_v2_noctx",
        "e2e_ablation_v3",
        "e2e_select_aa",
        "e2e_smoke",
    ):
        f = OUT / f"{name}.json"
        rules = json.loads(f.read_text()).get("per_rule_s") if f.is_file() else None
        if not f.is_file():
            lines += _earlier_block(REPO / "docs" / "performance.md", f"Where the time goes ({name};")
        if rules:
            lines += [
                "",
                f"Where the time goes ({name}; per rule, summed over its jobs; jobs overlap only where a rule uses fewer "
                "than all cores):",
                "",
                "| rule | jobs | seconds |",
                "|---|---|---|",
            ]
            total = sum(v["seconds"] for v in rules.values())
            lines += [
                f"| {r} | {v['jobs']} | {v['seconds']} |"
                for r, v in sorted(rules.items(), key=lambda kv: -kv[1]["seconds"])
                if r != "all"
            ]
            lines.append(f"| sum of job times | | {round(total, 1)} |")
    path = REPO / "docs" / "performance.md"
    from wsss.io import write_text

    write_text(path, "\n".join(lines) + "\n")
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated benchmarks (default: rerun,crf,miou,cam,e2e_smoke,rw; none with --doc alone)",
    )
    p.add_argument("--doc", action="store_true", help="render docs/performance.md from the JSON files")
    p.add_argument(
        "--keep",
        action="store_true",
        help="e2e_*: copy the timed run's results/<name> back into this checkout (replacing it)",
    )
    p.add_argument(
        "--from-log",
        nargs="+",
        metavar="NAME LOG",
        help=f"record e2e figures NAME ({', '.join(E2E)}) from the Snakemake log of a finished run "
        "(several logs: the parts of a run stopped and resumed, in order)",
    )
    a = p.parse_args()
    if a.only is None:
        a.only = "" if a.doc else "rerun,crf,miou,cam,e2e_smoke,rw"
    if a.from_log:
        if len(a.from_log) < 2:
            p.error("--from-log: NAME and at least one LOG")
        name, *logs = a.from_log
        result = from_log(E2E[name][0], *logs)
        if E2E[name][1]:
            result.update(target_s=E2E[name][1], met=result["from_scratch_s"] <= E2E[name][1])
        write_json(OUT / f"{name}.json", result)
        a.only = ""
    benches = {
        "rerun": lambda: bench_rerun(a.config),
        "crf": bench_crf,
        "miou": bench_miou,
        "cam": bench_cam,
        "rw": bench_rw,
        **{name: (lambda c=c, t=t, o=o: bench_e2e(c, t, a.keep, o)) for name, (c, t, o) in E2E.items()},
    }
    for name in filter(None, a.only.split(",")):
        result = benches[name]()
        write_json(OUT / f"{name}.json", result)
        print(f"{name}: {result}")
    if a.doc:
        print(f"wrote {write_doc()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
