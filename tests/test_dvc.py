"""dvc.yaml is generated from the Snakemake DAG, never drifts, and `dvc repro` runs the same pipeline."""

import json
import re
import shutil

import pytest
import yaml

from conftest import BIN, REPO, copy_workflow, run


def test_committed_dvc_yaml_matches_the_snakemake_dag():
    p = run([BIN / "wsss-dvc-yaml", "--configfile", "config/config.yaml", "--out", "dvc.yaml", "--check"],
            cwd=REPO, check=False)
    assert p.returncode == 0, p.stderr


def test_generated_stages_mirror_snakemake_jobs():
    doc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = doc["stages"]
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    variants = cfg["mainnet"]["variants"]
    assert {f"train_mainnet_{v}" for v in variants} <= set(stages)
    assert {"make_data", "train_supportnet", "report", "train_seg_pseudo", "train_seg_gt"} <= set(stages)
    crf = stages["crf_supportnet"]
    assert crf["cmd"].startswith("wsss crf --config config/config.yaml --threads 0")
    params = crf["params"][0]["config/config.yaml"]
    assert "refine.crf" in params and "refine.calibrate_background" in params
    assert "results/default/seed0/cams/supportnet" in crf["deps"]
    assert crf["metrics"] == [{"results/default/seed0/metrics/pseudo_supportnet_crf.json": {"cache": False}}]
    # no out is declared twice and none lies inside another (DVC rejects overlapping outs)
    outs = [o if isinstance(o, str) else next(iter(o)) for s in stages.values()
            for k in ("outs", "metrics", "plots") for o in s.get(k, [])]
    assert len(outs) == len(set(outs))
    assert not [(a, b) for a in outs for b in outs if a != b and b.startswith(a + "/")]


@pytest.mark.e2e
def test_dvc_repro_runs_the_smoke_pipeline(tmp_path, smoke_run):
    work = copy_workflow(tmp_path / "repo")
    run(["git", "init", "-q"], cwd=work)
    run(["git", "config", "user.email", "ci@example.org"], cwd=work)
    run(["git", "config", "user.name", "ci"], cwd=work)
    run([BIN / "dvc", "init", "-q"], cwd=work)
    run([BIN / "wsss-dvc-yaml", "--configfile", "config/smoke.yaml", "--out", "dvc.yaml"], cwd=work)
    run([BIN / "dvc", "repro"], cwd=work, timeout=1200)
    status = run([BIN / "dvc", "status"], cwd=work).stdout
    assert "up to date" in status
    shown = json.loads(run([BIN / "dvc", "metrics", "show", "--json"], cwd=work).stdout)
    assert "cam_supportnet.json" in json.dumps(shown)
    # the same pipeline: DVC's metric files equal the Snakemake run's (same config, same seed, CPU)
    # (two independent runs of the smoke DAG, same seed: every metric file is identical)
    names = sorted(p.name for p in (smoke_run / "results/smoke/seed0/metrics").glob("*.json"))
    # train_* (5 CAM nets, affinity, 2 DeepLab, 4 single-stage), cam_* 5, pseudo_* (3 CRF + 1 walk), seg_* (2 + 4),
    # export_val
    assert len(names) == 12 + 5 + 4 + 6 + 1, names
    for name in names:
        a = (work / "results/smoke/seed0/metrics" / name).read_text()
        b = (smoke_run / "results/smoke/seed0/metrics" / name).read_text()
        assert a == b, name
    # the config is DVC params: `dvc exp run -S` changes a value and re-runs only the stages that read it
    run(["git", "add", "-A"], cwd=work)
    run(["git", "commit", "-qm", "smoke"], cwd=work)
    before = json.loads((work / "results/smoke/seed0/metrics/train_supportnet.json").read_text())
    p = run([BIN / "dvc", "exp", "run", "-S", "config/smoke.yaml:refine.crf.n_iter=3"], cwd=work, timeout=1200)
    ran = set(re.findall(r"Running stage '([\w]+)'", p.stdout + p.stderr))
    # the CRF labels feed the affinity net and the walk (smoke: label_source crf); DeepLab re-runs only if the
    # walk's labels changed (DVC compares content, not times)
    assert {"crf_supportnet", "crf_mainnet_baseline", "crf_mainnet_rcm_mam", "train_affinity_mainnet_rcm_mam",
            "random_walk_mainnet_rcm_mam", "report"} <= ran
    assert not any(s.startswith(("train_mainnet", "extract_cams", "train_supportnet", "train_seg_gt")) for s in ran)
    assert json.loads((work / "results/smoke/seed0/metrics/train_supportnet.json").read_text()) == before
    diff = run([BIN / "dvc", "params", "diff", "--json"], cwd=work).stdout
    assert "n_iter" in diff
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
