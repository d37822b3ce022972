"""Exact re-runs, checked with the real tools on the smoke DAG without training anything: the config slices are
written for real (rule `config`), every other output is a placeholder marked up to date (`snakemake --touch`,
`dvc commit`). Then a config key from every section, and a library module, are changed, and real `snakemake -n`
and `dvc status` must name exactly the jobs that read the key or import the module (and, for Snakemake, what
depends on their outputs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import BIN, copy_workflow, run

from wsss import config, dvcgen, registry

SMOKE = "config/smoke.yaml"
# one key per config section (and the keys issue 12 found undeclared), with a new value
SAMPLE = {
    "data.synthetic.part_bias": 0.5,
    "supportnet.train.lr": 0.001,
    "mainnet.mam.weight": 0.5,
    "cams.thresholds": [0.1, 0.2],
    "refine.crf.n_iter": 3,
    "refine.random_walk.beta": 6.0,
    "segment.class_weights": "none",
    "segment.aspp_channels": 32,
    "single_stage.seg_head": "separate",
    "report.title": "another title",
}
# the keys whose change is also followed through DVC (dvc status before and after its config stage re-runs)
DVC_SAMPLE = {"supportnet.train.lr", "refine.crf.n_iter"}


def _job_name(job) -> str:
    return dvcgen.stage_name(job, {"seeds": [0]})


@pytest.fixture(scope="module")
def faked(tmp_path_factory):
    """A copy of the workflow whose smoke DAG is up to date for Snakemake and DVC, with placeholder outputs."""
    work = copy_workflow(tmp_path_factory.mktemp("reruns"))
    cfg = config.load(work / SMOKE)
    slices = [registry.params_path(cfg, s) for s in registry.all_slices(cfg)]
    run([BIN / "snakemake", *slices, "--cores", "1", "--configfile", SMOKE], cwd=work)
    jobs = dvcgen.dag_jobs(work / "Snakefile", work / SMOKE, work)
    for job in jobs:
        if job.rule.name in ("config", "all"):
            continue
        for out in job.output:
            p = work / str(out)
            if job.rule.name == "report" or registry.STAGES[job.rule.name].outputs[_out_name(job, out)].kind == "dir":
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("placeholder\n")
    run([BIN / "snakemake", "--cores", "1", "--configfile", SMOKE, "--touch"], cwd=work)
    assert "Nothing to be done" in _dry_text(work)
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "ci@example.org"],
        ["git", "config", "user.name", "ci"],
        [BIN / "dvc", "init", "-q"],
        [BIN / "wsss-dvc-yaml", "--configfile", SMOKE, "--out", "dvc.yaml"],
        [BIN / "dvc", "commit", "-f", "-q"],
        # DVC rewrote the outputs (new file times): mark them up to date for Snakemake again (dvc#8602)
        [BIN / "snakemake", "--cores", "1", "--configfile", SMOKE, "--touch"],
    ):
        run(cmd, cwd=work)
    assert _dvc_changed(work) == set()
    edges = {}  # job name -> the job names it reads outputs of
    producer = {str(o): _job_name(j) for j in jobs for o in j.output}
    for j in jobs:
        edges[_job_name(j)] = {producer[str(i)] for i in j.input if str(i) in producer}
    return work, cfg, jobs, edges


def _out_name(job, out) -> str:
    return next(k for k, v in job.output.items() if str(v) == str(out))


def _dry_text(work: Path) -> str:
    p = run([BIN / "snakemake", "-n", "--cores", "2", "--configfile", SMOKE], cwd=work)
    return p.stdout + p.stderr


def _dry_jobs(work: Path) -> set[str]:
    """The jobs `snakemake -n` would run, as DVC stage names (rule + wildcard values)."""
    text = _dry_text(work)
    names = set()
    for block in re.split(r"\n(?=\[|rule )", text):
        m = re.search(r"^(?:localrule|rule) (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"wildcards: (.*)", block)
        values = dict(kv.split("=", 1) for kv in wc.group(1).split(", ")) if wc else {}
        values.pop("seed", None)
        if m.group(1) == "config":
            names.add(f"config:{values['slice']}")
        else:
            names.add(m.group(1) + "".join(f"_{v}" for v in values.values()))
    return names


def _dvc_changed(work: Path) -> set[str]:
    out = run([BIN / "dvc", "status", "--json"], cwd=work).stdout
    return set(yaml.safe_load(out) or {})


def _closure(direct: set[str], edges: dict) -> set[str]:
    out, grew = set(direct), True
    while grew:
        grew = False
        for job, ups in edges.items():
            if job not in out and ups & out:
                out.add(job)
                grew = True
    return out - {"all"}


def _readers(cfg: dict, jobs, key: str) -> set[str]:
    names = set()
    for j in jobs:
        if j.rule.name in ("config", "all"):
            continue
        stage = registry.STAGES[j.rule.name]
        wc = {k: (int(v) if k == "seed" else v) for k, v in j.wildcards_dict.items()}
        if any(key.split(".")[: len(k.split("."))] == k.split(".") for k in stage.keys(cfg, wc)):
            names.add(_job_name(j))
    return names


def _set_key(path: Path, key: str, value) -> None:
    raw = yaml.safe_load(path.read_text())
    node = raw
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.mark.parametrize("key", sorted(SAMPLE))
def test_a_changed_key_reruns_exactly_its_readers(faked, key):
    work, cfg, jobs, edges = faked
    cfg_path = work / SMOKE
    original = cfg_path.read_text()
    readers = _readers(cfg, jobs, key)
    assert readers, key
    try:
        _set_key(cfg_path, key, SAMPLE[key])
        readers |= _readers(config.load(cfg_path), jobs, key)
        slices = {
            f"config:{registry.STAGES[j.rule.name].slice_id(dict(j.wildcards_dict))}"
            for j in jobs
            if _job_name(j) in readers
        }
        # Snakemake: the rewritten slices, the jobs that read them, and everything downstream of those
        assert _dry_jobs(work) == slices | _closure(readers, edges), key
        if key in DVC_SAMPLE:
            # DVC: the config stage, and the stages whose params (their declared keys that dvc.yaml lists: those
            # the file wrote when it was generated) hold the key; once `config` has re-run, exactly the stages whose
            # slice file changed (DVC compares content: downstream re-runs only if an output changes)
            listed = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]
            tracked = {
                n
                for n in readers
                for k in listed[n].get("params", [{}])[0].get(SMOKE, [])
                if key.split(".")[: len(k.split("."))] == k.split(".")
            }
            assert _dvc_changed(work) == {"config"} | tracked, key
            run([BIN / "dvc", "repro", "--single-item", "config"], cwd=work)
            assert _dvc_changed(work) == readers, key
    finally:
        cfg_path.write_text(original)
        if key in DVC_SAMPLE:
            _dvc_config_and_touch(work)


def _dvc_config_and_touch(work: Path) -> None:
    """Re-run DVC's config stage, then re-stamp the outputs DVC rewrote for Snakemake (dvc#8602)."""
    run([BIN / "dvc", "repro", "--single-item", "config"], cwd=work)
    run([BIN / "snakemake", "--cores", "1", "--configfile", SMOKE, "--touch"], cwd=work)


def test_an_edited_library_module_reruns_exactly_its_importers(faked):
    work, cfg, jobs, edges = faked
    module = work / "src/wsss/refine/crf.py"
    original = module.read_text()
    importers = {
        _job_name(j)
        for j in jobs
        if j.rule.name not in ("config", "all")
        and "wsss.refine.crf" in registry.code_modules(registry.STAGES[j.rule.name].module)
    }
    assert {"crf_supportnet", "random_walk_mainnet_rcm_mam", "eval_seg_pseudo", "eval_single_stage_aa_lr"} <= importers
    assert not any(n.startswith(("train_", "extract_cams", "eval_cams", "make_data")) for n in importers)
    try:
        module.write_text(original + "\n# an edit that changes no behaviour, but the code\n")
        assert _dry_jobs(work) == _closure(importers, edges)
        assert _dvc_changed(work) == importers
    finally:
        module.write_text(original)
    assert _dvc_changed(work) == set() and "Nothing to be done" in _dry_text(work)


def test_every_change_was_undone(faked):
    """(After the tests above:) both tools see the workspace up to date again."""
    work = faked[0]
    assert _dvc_changed(work) == set() and "Nothing to be done" in _dry_text(work)


def test_a_bad_config_is_refused_before_dvc_removes_anything(faked):
    """`dvc repro` validates in its first stage (config): a bad value fails there, every output stays."""
    work, cfg, jobs, _ = faked
    cfg_path = work / SMOKE
    original = cfg_path.read_text()
    ckpt = work / "results/smoke/seed0/models/supportnet/checkpoint.pt"
    try:
        _set_key(cfg_path, "supportnet.train.epochs", 0)
        p = run([BIN / "dvc", "repro"], cwd=work, check=False)
        assert p.returncode != 0
        assert "supportnet.train.epochs" in p.stdout + p.stderr
        assert ckpt.is_file() and all((work / registry.params_path(cfg, s)).is_file() for s in registry.all_slices(cfg))
    finally:
        cfg_path.write_text(original)
    assert _dvc_changed(work) == set()
