"""Crash safety with real processes and real SIGKILLs (tests/test_stages.py simulates the kill in-process).

1. ``wsss train_supportnet`` killed between epochs (on 1 or 2 processes) resumes on one process from its state file
   to the weights and metrics of an uninterrupted run.
2. Snakemake killed (whole process group) while a long job (extract_cams, mid-write) runs leaves nothing that
   looks complete, and ``--rerun-incomplete`` then finishes the DAG.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BIN, copy_workflow, env_with_venv, run

from wsss import config, registry
from wsss.data import synthetic

EPOCHS = 4
# Sized so that one SupportNet epoch takes a few tenths of a second on one CPU thread: the poll below (every
# 0.05 s) sees the state file at epoch 1..3 and kills before training ends.
TINY_CFG = {
    "name": "tiny",
    "seeds": [0],
    "data": {"synthetic": {"n_train": 256, "n_val": 6, "size_min": 96, "size_max": 112}},
    "supportnet": {
        "backbone": {"widths": [8, 8, 16, 16]},
        "train": {"epochs": EPOCHS, "batch_size": 8, "crop": 96, "dtype": "float64"},
    },
}


def _state_epoch(path: Path) -> int | None:
    """The epoch saved in a resumable state file, or None if it does not exist (yet)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except Exception:  # written atomically, so this should not happen; be lenient while polling anyway
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _max_rel_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    diff = scale = 0.0
    for k in a:
        if a[k].is_floating_point():
            diff = max(diff, (a[k].double() - b[k].double()).abs().max().item())
            scale = max(scale, a[k].abs().max().item())
    return diff / scale


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_a_killed_training_resumes_to_the_same_weights(tmp_path, nproc):
    """``wsss train_supportnet`` (on ``nproc`` processes: torchrun for 2) SIGKILLed between epochs, then run again
    on ONE process: it resumes from its state file and ends with the weights and metrics of an uninterrupted
    one-process run: bit for bit after a one-process kill; after a two-process kill to float64 rounding (the two
    processes sum in another order; tests/test_distributed.py explains the bound)."""
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY_CFG))
    data = tmp_path / "data" / "VOC2012"
    synthetic.generate(data, config.validate(TINY_CFG)["data"]["synthetic"])

    def cmd(d: Path, procs: int = 1) -> list:
        return [
            *registry.launch_prefix(procs).split(),
            "train_supportnet",
            "--config",
            cfg_file,
            "--threads",
            "1",
            "--log",
            d / "log.txt",
            "--seed",
            "0",
            "--data",
            data,
            "--ckpt",
            d / "ckpt" / "checkpoint.pt",
            "--metrics",
            d / "metrics.json",
            "--plot",
            d / "plot.json",
            "--state",
            d / "state" / "supportnet.pt",
        ]

    a, b = tmp_path / "a", tmp_path / "b"
    run(cmd(a), cwd=tmp_path)  # uninterrupted reference, one process

    env = env_with_venv()
    env.update(WSSS_DEVICE="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [str(c) for c in cmd(b, nproc)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state_file = b / "state" / "supportnet.pt"
    killed_after = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            epoch = _state_epoch(state_file)
            if epoch is not None and 1 <= epoch < EPOCHS:
                os.killpg(proc.pid, signal.SIGKILL)  # every process of the job (torchrun and its workers)
                killed_after = epoch
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_after is None:
            _kill_group(proc)
    rc = proc.wait(timeout=30)
    assert killed_after is not None, (
        f"the training ended (rc {rc}) before the kill could land between epochs 1 and {EPOCHS - 1}: "
        "make the tiny dataset larger so that an epoch takes longer"
    )
    assert rc == -signal.SIGKILL, f"the training was not killed by SIGKILL (rc {rc}): it finished before the kill"
    assert not (b / "ckpt" / "checkpoint.pt").exists(), "a killed training left a checkpoint output"
    assert not (b / "metrics.json").exists() and not (b / "plot.json").exists()
    saved = torch.load(state_file, map_location="cpu", weights_only=False)
    assert 1 <= saved["epoch"] < EPOCHS

    run(cmd(b), cwd=tmp_path)  # one process, same command: resumes from the state file

    log_b = (b / "log.txt").read_text()
    assert f"at epoch {saved['epoch']}" in log_b and "resumed from" in log_b, "the re-run did not resume"
    assert "inputs data=" in log_b  # the log says what the resumed state matched
    assert not state_file.exists() and not (a / "state" / "supportnet.pt").exists()  # no state survives success
    ck_a = torch.load(a / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=False)
    ck_b = torch.load(b / "ckpt" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ck_a["epoch"] == ck_b["epoch"] == EPOCHS
    # the epochs run before the kill are the killed run's own (their wall-clock timings prove it)
    assert ck_b["history"][: saved["epoch"]] == saved["history"]
    if nproc == 1:
        for k in ck_a["model"]:
            assert torch.equal(ck_a["model"][k], ck_b["model"][k]), f"weights differ after resume: {k}"
        assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
        assert (a / "plot.json").read_bytes() == (b / "plot.json").read_bytes()
    else:
        assert _max_rel_diff(ck_a["model"], ck_b["model"]) < 3e-10
        h_a = json.loads((a / "metrics.json").read_text())["history"]
        h_b = json.loads((b / "metrics.json").read_text())["history"]
        assert [h.keys() for h in h_a] == [h.keys() for h in h_b]
        for x, y in zip(h_a, h_b):
            for k in x:
                assert x[k] == pytest.approx(y[k], rel=1e-9, abs=1e-12), k


SMOKE = ["--cores", "1", "--configfile", "config/smoke.yaml"]


@pytest.mark.slow
def test_interrupted_dag_leaves_nothing_complete_and_rerun_incomplete_finishes(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    res = work / "results" / "smoke" / "seed0"
    out_file = tmp_path / "snakemake-1.out"
    out = open(out_file, "w")
    proc = subprocess.Popen(
        [BIN / "snakemake", *SMOKE],
        cwd=work,
        env=env_with_venv(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    # The victim: an extract_cams job, killed once it is running (its log exists) and half-way through writing
    # its CAM folder (its hidden temporary folder already holds some .npz files).
    net = partial = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            for log in sorted((res / "logs").glob("extract_cams_*.log")):
                name = log.stem[len("extract_cams_") :]
                partial = next((d for d in (res / "cams").glob(f".{name}.tmp-*") if any(d.glob("*.npz"))), None)
                if partial is not None:
                    net = name
                    os.killpg(proc.pid, signal.SIGKILL)  # snakemake and its running job: a crash / power cut
                    break
            if net is not None:
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            _kill_group(proc)
        out.close()
    proc.wait(timeout=30)
    assert net is not None, (
        f"snakemake ended (rc {proc.returncode}) before an extract_cams job was caught "
        f"writing its CAMs:\n{out_file.read_text()[-4000:]}"
    )
    final = res / "cams" / net
    log_text = (res / "logs" / f"extract_cams_{net}.log").read_text()
    assert "done in" not in log_text, f"extract_cams {net} finished before the kill landed"

    # nothing of the killed job looks complete: the final CAM folder is absent, the partial one is hidden
    assert partial.is_dir() and any(partial.glob("*.npz")) and partial.name.startswith(".")
    assert not final.exists(), f"{final} exists after the job writing it was killed"
    for p in res.rglob("*"):
        if ".tmp" in p.name:
            assert p.name.startswith(".") or p.parent.name.startswith("."), f"{p}: a temporary under a visible name"

    run([BIN / "snakemake", *SMOKE, "--unlock"], cwd=work)
    dry = run([BIN / "snakemake", *SMOKE, "-n"], cwd=work)
    assert "extract_cams" in dry.stdout + dry.stderr, "the killed job is not scheduled again"

    run([BIN / "snakemake", *SMOKE, "--rerun-incomplete"], cwd=work, timeout=1500)
    assert final.is_dir() and any(final.glob("*.npz")), final
    dry = run([BIN / "snakemake", *SMOKE, "-n"], cwd=work)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:] + dry.stderr[-3000:]
