import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

torch.set_num_threads(1)

# The VOC/SBD archive builders and the 127.0.0.1 archive server live in test_download.py; registering its two
# fixtures here makes them available to every test module that needs them (test_voc_prepare, test_voc_pipeline).
from test_download import archives, server  # noqa: E402,F401


def env_with_venv() -> dict:
    """Environment whose PATH finds the venv's `wsss`, `snakemake` and `dvc` first."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def copy_workflow(dst: Path) -> Path:
    """A throw-away copy of what a pipeline run needs (Snakefile, workflow/, config/, src/stages for DVC deps)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dst / "Snakefile")
    shutil.copy(REPO / ".dvcignore", dst / ".dvcignore")
    shutil.copy(REPO / "environment.yml", dst / "environment.yml")  # the rules' `conda:` (Snakemake records it)
    for d in ("workflow", "config"):
        shutil.copytree(REPO / d, dst / d)
    shutil.copytree(REPO / "src", dst / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def tiny_cams(work: Path, cfg: dict) -> dict:
    """Under ``work``: a tiny synthetic dataset of ``cfg`` (a config dict), its config file, a SupportNet
    checkpoint and that net's CAMs, all made by the real CLI; ``{"work", "root", "cfg", "ck", "cams"}``."""
    import yaml

    from wsss import cli, config
    from wsss.data import synthetic

    root, ck, cams = work / "VOC2012", work / "models" / "checkpoint.pt", work / "cams"
    synthetic.generate(root, config.validate(cfg)["data"]["synthetic"])
    path = work / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    common = ["--config", str(path), "--threads", "1", "--data", str(root)]
    out = {"metrics": work / "m.json", "plot": work / "p.json", "state": work / "state.pt"}
    train = ["train_supportnet", *common, "--ckpt", str(ck), *(a for k, v in out.items() for a in (f"--{k}", str(v)))]
    assert cli.main(train) == 0
    assert cli.main(["extract_cams", *common, "--net", "supportnet", "--ckpt", str(ck), "--cams", str(cams)]) == 0
    return {"work": work, "root": root, "cfg": path, "ck": ck, "cams": cams}


def run(cmd, cwd, check=True, timeout=900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=env_with_venv(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
        )
    return p


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The smoke DAG run once by Snakemake in a temporary copy of the workflow; shared by the e2e tests."""
    work = copy_workflow(tmp_path_factory.mktemp("smoke"))
    run([BIN / "snakemake", "--cores", "2", "--configfile", "config/smoke.yaml"], cwd=work)
    return work


def run_stage(name: str, cfg: dict, **kwargs):
    """Run stage ``name`` in this process as the CLI does: its module's ``run`` with the stage's slice of the
    complete config ``cfg`` (undeclared keys raise) and the given files, wildcards and threads."""
    import importlib

    from wsss import config, registry

    stage = registry.STAGES[name]
    view = config.stage_view(cfg, stage, {w: kwargs[w] for w in stage.wildcards if w in kwargs})
    return importlib.import_module(stage.module).run(view, **kwargs)
