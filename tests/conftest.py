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
    env.setdefault("WSSS_SCHEMA", str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
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
