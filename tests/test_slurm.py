"""The smoke DAG through SLURM: `snakemake --profile profiles/slurm` on a single-node cluster on 127.0.0.1.

tests/slurm/localslurm.sh brings the cluster up (munged, slurmctld, slurmd from Debian's slurm-wlm and munge, all
state in a temporary folder). `make slurm-test` installs the packages and runs this module; in `make test` it
runs only where the daemons are installed and we are root, and skips otherwise.
"""

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import BIN, REPO, copy_workflow, run

SCRIPT = REPO / "tests" / "slurm" / "localslurm.sh"
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")


def skip_reason():
    """Why the SLURM test cannot run here, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [b for b in NEEDED if shutil.which(b, path=path) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): run `make slurm-test`"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs its daemons as root: run `make slurm-test` as root"
    return None


def test_skips_with_a_pointer_to_make_slurm_test_when_slurm_is_absent(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    assert "make slurm-test" in skip_reason()


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A running single-node SLURM. SLURM_CONF, and its client wrappers first on PATH, point sbatch, squeue and
    the srun inside each job at it (see localslurm.sh: the job step drops SLURM_CONF)."""
    state = tmp_path_factory.mktemp("slurm")
    mp = pytest.MonkeyPatch()
    try:
        p = subprocess.run(["bash", str(SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, f"local SLURM did not start:\n{p.stdout}\n{p.stderr}"
        mp.setenv("SLURM_CONF", str(state / "slurm.conf"))
        mp.setenv("PATH", f"{state / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        yield state
    finally:
        mp.undo()
        subprocess.run(["bash", str(SCRIPT), "stop", str(state)], capture_output=True, text=True, timeout=120)


def _metric_files(root: Path) -> dict:
    """Every metric file of the smoke experiment, by path relative to results/smoke (seed<k>/ levels included)."""
    exp = root / "results" / "smoke"
    return {str(p.relative_to(exp)): p.read_bytes() for p in sorted(exp.glob("**/metrics/**/*.json"))}


@pytest.mark.slurm
@pytest.mark.e2e
@pytest.mark.skipif(skip_reason() is not None, reason=str(skip_reason()))
def test_smoke_dag_through_slurm_equals_the_local_run(smoke_run, local_slurm, tmp_path):
    work = copy_workflow(tmp_path / "repo")
    shutil.copytree(REPO / "profiles", work / "profiles")
    t0 = time.monotonic()
    p = run(
        [
            BIN / "snakemake",
            "--profile",
            "profiles/slurm",
            "--executor",
            "slurm",
            "--configfile",
            "config/smoke.yaml",
            "--slurm-status-command",
            "squeue",  # accounting is off: sacct knows no job
            "--slurm-init-seconds-before-status-checks",
            "2",  # poll sooner than the 40 s default: short jobs
            "--slurm-keep-successful-logs",
            "--max-threads",
            str(os.cpu_count()),
        ],  # this node's CPUs (the profile asks 8 for crf)
        cwd=work,
        timeout=3000,
    )
    print(f"SLURM smoke run: {time.monotonic() - t0:.0f} s")
    out = p.stdout + p.stderr

    # every job with a command went through sbatch: one SLURM job id and one kept SLURM log per job
    stats = out.split("Job stats:")[1].split("\n\n")[0]
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    submitted = dict(re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", out))
    assert len(submitted) == counts["total"] - counts.get("all", 0) > 0, out[-3000:]
    for log in submitted.values():
        assert Path(log).is_relative_to(work / ".snakemake" / "slurm_logs"), log
        assert "--executor slurm-jobstep" in Path(log).read_text(), log  # the job ran its step inside SLURM
    # and SLURM ran them to completion (the local cluster's MinJobAge=3600 keeps finished jobs in squeue)
    q = subprocess.run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T"], capture_output=True, text=True, check=True
    ).stdout
    states = dict(line.split("|") for line in q.split())
    assert {j: states.get(j) for j in submitted} == {j: "COMPLETED" for j in submitted}

    # the same pipeline: every metric file is byte-identical to the local `snakemake --cores 2` run's
    local, slurm = _metric_files(smoke_run), _metric_files(work)
    assert local and sorted(slurm) == sorted(local)
    for name in local:
        assert slurm[name] == local[name], name
