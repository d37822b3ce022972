"""dvc.yaml is generated from the Snakemake DAG, never drifts, and DVC records, re-runs and compares the pipeline."""

import json
import re
import shutil

import pytest
import yaml
from conftest import BIN, REPO, copy_workflow, run


def test_committed_dvc_yaml_matches_the_snakemake_dag():
    p = run(
        [BIN / "wsss-dvc-yaml", "--configfile", "config/config.yaml", "--out", "dvc.yaml", "--check"],
        cwd=REPO,
        check=False,
    )
    assert p.returncode == 0, p.stderr


def test_generated_stages_mirror_snakemake_jobs():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = doc["stages"]
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    variants = cfg["mainnet"]["variants"]
    assert {f"train_mainnet_{v}" for v in variants} <= set(stages)
    assert {"config", "make_data", "train_supportnet", "report", "train_seg_pseudo", "train_seg_gt"} <= set(stages)
    crf = stages["crf_supportnet"]
    assert crf["cmd"].startswith("wsss crf --params results/default/params/crf.json --threads 0 ")
    params = crf["params"][0]["config/config.yaml"]
    assert "refine.crf" in params and "refine.calibrate_background" in params and "refine.random_walk" not in params
    assert {
        "results/default/seed0/cams/supportnet",
        "results/default/params/crf.json",
        "src/wsss/refine/crf.py",
        "src/wsss/stages/crf.py",
    } <= set(crf["deps"])
    assert "src/wsss/engine/trainer.py" not in crf["deps"]  # the CRF stage does not import the training loop
    assert crf["metrics"] == ["results/default/seed0/metrics/pseudo_supportnet_crf.json"]  # cached: DVC compares
    # the config stage validates and writes every slice, first; its outputs persist through a failed validation
    first = stages["config"]
    assert first["cmd"] == "wsss config --config config/config.yaml --out results/default/params"
    assert "config/config.yaml" in first["deps"]
    assert all(next(iter(o.values())) == {"persist": True} for o in first["outs"])
    slices = {next(iter(o)) for o in first["outs"]}
    assert all(any(d in slices for d in s["deps"]) for n, s in stages.items() if n != "config")
    # no out is declared twice and none lies inside another (DVC rejects overlapping outs)
    outs = [
        o if isinstance(o, str) else next(iter(o))
        for s in stages.values()
        for k in ("outs", "metrics", "plots")
        for o in s.get(k, [])
    ]
    assert len(outs) == len(set(outs))
    assert not [(a, b) for a in outs for b in outs if a != b and b.startswith(a + "/")]


def _git(work, *args):
    return run(["git", *args], cwd=work)


@pytest.mark.e2e
def test_dvc_records_the_run_and_compares_experiments(tmp_path, smoke_run):
    """The smoke run's outputs recorded by DVC (`dvc commit`: recomputing would test nothing more), two
    experiments (`dvc exp run -S`), then `dvc exp show` / `dvc metrics diff` load real values for every revision,
    and the outputs round-trip through a local DVC remote."""
    work = copy_workflow(tmp_path / "repo")
    shutil.copytree(smoke_run / "results", work / "results")
    _git(work, "init", "-q")
    _git(work, "config", "user.email", "ci@example.org")
    _git(work, "config", "user.name", "ci")
    run([BIN / "dvc", "init", "-q"], cwd=work)
    run([BIN / "wsss-dvc-yaml", "--configfile", "config/smoke.yaml", "--out", "dvc.yaml"], cwd=work)
    run([BIN / "dvc", "commit", "-f", "-q"], cwd=work)
    assert "up to date" in run([BIN / "dvc", "status"], cwd=work).stdout
    _git(work, "add", "-A")
    _git(work, "commit", "-qm", "smoke")
    before = json.loads((work / "results/smoke/seed0/metrics/train_supportnet.json").read_text())

    # an experiment on the CAM evaluation's fixed threshold: it re-runs exactly the stages that read it
    p = run(
        [BIN / "dvc", "exp", "run", "-n", "thr", "-S", "config/smoke.yaml:cams.fixed_threshold=0.2"],
        cwd=work,
        timeout=1200,
    )
    nets = ["supportnet", "mainnet_baseline", "mainnet_rcm_mam", "mainnet_puzzle"]
    assert set(re.findall(r"Running stage '([\w]+)'", p.stdout + p.stderr)) == {
        "config",
        "report",
        *(f"eval_cams_{n}" for n in nets),
    }
    assert json.loads((work / "results/smoke/seed0/metrics/train_supportnet.json").read_text()) == before
    p = run(
        [BIN / "dvc", "exp", "run", "-n", "title", "-S", "config/smoke.yaml:report.title=other"], cwd=work, timeout=600
    )
    assert set(re.findall(r"Running stage '([\w]+)'", p.stdout + p.stderr)) == {"config", "report"}

    shown = json.loads(run([BIN / "dvc", "exp", "show", "--json"], cwd=work).stdout)
    found = {}
    for rev in shown:  # the workspace, the baseline commit and its experiments
        for e in [rev] + [r for x in rev.get("experiments") or [] for r in x.get("revs", [])]:
            metrics = (e.get("data") or {}).get("metrics") or {}
            found[e.get("name") or e.get("rev")] = {path: m.get("data") for path, m in metrics.items()}
    assert {"thr", "title"} <= set(found) and len(found) == 4, found.keys()
    cam, pseudo = (
        "results/smoke/seed0/metrics/cam_supportnet.json",
        "results/smoke/seed0/metrics/pseudo_supportnet_crf.json",
    )
    for name, metrics in found.items():  # real values for every revision and experiment
        assert isinstance(metrics[cam]["miou_fixed_threshold"], float), name
        assert isinstance(metrics[pseudo]["miou"], float), name
    base = next(m for n, m in found.items() if n not in ("thr", "title", "workspace"))  # the smoke commit
    assert found["thr"][cam]["fixed_threshold"] == 0.2 and base[cam]["fixed_threshold"] == 0.15
    assert found["thr"][cam]["miou_fixed_threshold"] != base[cam]["miou_fixed_threshold"]  # what it changed ...
    assert found["thr"][cam]["miou"] == base[cam]["miou"] and found["thr"][pseudo] == base[pseudo]  # ... and not

    diff = json.loads(run([BIN / "dvc", "metrics", "diff", "HEAD", "thr", "--json"], cwd=work).stdout)
    assert "failed" not in json.dumps(diff).lower()
    moved = diff[cam]["miou_fixed_threshold"]
    assert isinstance(moved["old"], float) and isinstance(moved["new"], float) and moved["old"] != moved["new"]
    params = run([BIN / "dvc", "params", "diff", "HEAD", "thr", "--json"], cwd=work).stdout
    assert "fixed_threshold" in params

    # checkpoints, CAMs and metrics round-trip through a (local directory) DVC remote
    store = tmp_path / "store"
    run([BIN / "dvc", "remote", "add", "-d", "-f", "local", str(store)], cwd=work)
    run([BIN / "dvc", "push"], cwd=work)
    ckpt = work / "results/smoke/seed0/models/supportnet/checkpoint.pt"
    digest = ckpt.read_bytes()
    shutil.rmtree(work / "results/smoke/seed0/models")
    shutil.rmtree(work / ".dvc/cache")
    run([BIN / "dvc", "pull"], cwd=work)
    assert ckpt.read_bytes() == digest
    assert "up to date" in run([BIN / "dvc", "status"], cwd=work).stdout
