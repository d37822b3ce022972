"""Results do not depend on the process count: 1 vs 2 CPU processes (gloo) at the same global batch.

The 2-process runs are real process groups (torch.multiprocessing spawn, MASTER_ADDR=127.0.0.1 on a free port)
running the real stages: SupportNet training (BatchNorm synchronised by the default ``batchnorm: sync``), a
MainNet rcm_mam training (batch prototypes and the MAM/RCM normalisers gathered over processes), and CAM
extraction sharded over the processes; and the command a
Snakemake rule runs (``registry.launch_prefix(2)``, i.e. torchrun) writes the same CAMs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from conftest import env_with_venv, run_stage

from wsss import config, registry
from wsss.data import synthetic
from wsss.engine import distributed as dist
from wsss.engine import trainer
from wsss.io import WsssInputError

# float64 training: the 1- and 2-process runs sum their gradients and BN statistics in different orders, so in
# float32 their weights differ by rounding amplified over the steps (1.9e-7 to 1.6e-5 relative, depending on the
# CPU's kernels); in float64 the same rounding is ~1e-16 per operation and the difference falls to ~1e-13
# (measured, see _TOL), while a real process-count dependence (e.g. per-process BN) moves weights by ~10 %.
TINY = {
    "data": {"synthetic": {"n_train": 16, "n_val": 4, "size_min": 48, "size_max": 56}},
    "supportnet": {
        "backbone": {"widths": [8, 8, 16, 16]},
        "train": {"epochs": 2, "batch_size": 8, "crop": 48, "optimizer": "sgd", "lr": 0.05, "dtype": "float64"},
    },
    "mainnet": {
        "train": {"epochs": 1, "batch_size": 8, "crop": 48, "optimizer": "sgd", "lr": 0.05, "dtype": "float64"},
        "mam": {"scales": [0.5, 1.0]},
    },
    "cams": {"scales": [0.5, 1.0], "flip": True},
}
# The bound: float64's unit roundoff (1.1e-16) times the amplification float32 showed on the worst machine seen
# (1.6e-5 / 6e-8 = 270), times a 10^4 margin for other CPUs' kernels: 3e-10. A 1-process/2-process bug is 10^8 larger.
_TOL = 1.1e-16 * 270 * 1e4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(cfg: dict, root, out, cam_ckpt) -> None:
    """SupportNet, MainNet (rcm_mam) and the CAMs of ``cam_ckpt`` on the train split, into ``out``."""
    for net in ("supportnet", "mainnet_rcm_mam"):
        paths = dict(
            data=root,
            ckpt=out / f"{net}.pt",
            metrics=out / f"{net}.json",
            plot=out / f"{net}.plot.json",
            state=out / "state" / f"{net}.pt",
        )
        if net == "supportnet":
            run_stage("train_supportnet", cfg, seed=0, **paths)
        else:
            run_stage("train_mainnet", cfg, seed=0, variant="rcm_mam", support=out / "supportnet.pt", **paths)
    run_stage("extract_cams", cfg, seed=0, net="supportnet", data=root, ckpt=cam_ckpt, cams=out / "cams")


def _worker(rank: int, world: int, port: int, cfg: dict, root, out, cam_ckpt) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        WSSS_DEVICE="cpu",
    )
    torch.set_num_threads(1)
    assert dist.init()
    try:
        assert dist.world_size() == world
        _pipeline(cfg, root, out, cam_ckpt)
    finally:
        dist.cleanup()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    cfg = config.validate(TINY)
    root = base / "VOC2012"
    synthetic.generate(root, cfg["data"]["synthetic"])
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mpatch:
        mpatch.setenv("WSSS_DEVICE", "cpu")
        _pipeline(cfg, root, base / "p1", base / "p1" / "supportnet.pt")  # one process, no process group
    # both extract CAMs from the same (1-process) checkpoint: the test is about inference
    mp.spawn(
        _worker, args=(2, _free_port(), cfg, root, base / "p2", base / "p1" / "supportnet.pt"), nprocs=2, join=True
    )
    return base / "p1", base / "p2"


def _max_diff(a: dict, b: dict) -> tuple[float, float]:
    """(max abs difference, max abs difference / max abs value) over the floating tensors of two state dicts."""
    assert a.keys() == b.keys()
    diff = scale = 0.0
    for k in a:
        if a[k].is_floating_point():
            diff = max(diff, (a[k] - b[k]).abs().max().item())
            scale = max(scale, a[k].abs().max().item())
    return diff, diff / scale


@pytest.mark.slow  # real process groups: `make test-all`
@pytest.mark.parametrize("net", ["supportnet", "mainnet_rcm_mam"])
def test_weights_do_not_depend_on_the_process_count(runs, net):
    p1, p2 = runs
    a = torch.load(p1 / f"{net}.pt", weights_only=False)
    b = torch.load(p2 / f"{net}.pt", weights_only=False)
    assert a["epoch"] == b["epoch"]
    diff, rel = _max_diff(a["model"], b["model"])
    print(f"{net}: max |w1 - w2| = {diff:.3g} (relative {rel:.3g})")
    assert rel < _TOL, (net, diff, rel)
    h1 = json.loads((p1 / f"{net}.json").read_text())["history"]
    h2 = json.loads((p2 / f"{net}.json").read_text())["history"]
    assert [h.keys() for h in h1] == [h.keys() for h in h2]
    for x, y in zip(h1, h2):  # logged losses are global-batch means on every process count
        for k in x:
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-6), (net, k)


@pytest.mark.slow
def test_cams_do_not_depend_on_the_process_count(runs):
    p1, p2 = runs
    f1 = sorted(p.name for p in (p1 / "cams").iterdir())
    f2 = sorted(p.name for p in (p2 / "cams").iterdir())
    assert f1 == f2 and len(f1) == TINY["data"]["synthetic"]["n_train"]
    assert not [p for p in p2.iterdir() if p.name.startswith(".cams.tmp")]  # the temporary folder was renamed
    for name in f1:
        with np.load(p1 / "cams" / name) as a, np.load(p2 / "cams" / name) as b:
            assert np.array_equal(a["keys"], b["keys"])
            assert np.array_equal(a["cam"], b["cam"]), name


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_same_cams(runs, tmp_path):
    """The command a Snakemake rule runs (``registry.launch_prefix(2)`` + stage + options, ``--log`` included)."""
    p1, _ = runs
    cfg_file = tmp_path / "tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(TINY))
    cmd = registry.launch_prefix(2).split() + [
        "extract_cams",
        "--config",
        str(cfg_file),
        "--seed",
        "0",
        "--net",
        "supportnet",
        "--ckpt",
        str(p1 / "supportnet.pt"),
        "--data",
        str(p1.parent / "VOC2012"),
        "--cams",
        str(tmp_path / "cams"),
        "--log",
        str(tmp_path / "log.txt"),
    ]
    env = env_with_venv()
    env.update(WSSS_DEVICE="cpu", OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "gloo, 2 processes" in (tmp_path / "log.txt").read_text()
    names = sorted(q.name for q in (p1 / "cams").iterdir())
    assert sorted(q.name for q in (tmp_path / "cams").iterdir()) == names
    for name in names:
        with np.load(p1 / "cams" / name) as a, np.load(tmp_path / "cams" / name) as b:
            assert np.array_equal(a["cam"], b["cam"]) and np.array_equal(a["keys"], b["keys"]), name


def test_global_batch_not_divisible_by_the_process_count_is_refused(tmp_path, monkeypatch):
    cfg = config.validate({"supportnet": {"train": {"batch_size": 3}}})
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    net = torch.nn.Conv2d(3, 2, 1)
    with pytest.raises(WsssInputError, match=r"supportnet\.train\.batch_size = 3 .*divisible.* \(2\)"):
        trainer.train(
            net,
            list(range(8)),
            cfg["supportnet"]["train"],
            seed=0,
            resolved={},
            objective=None,
            state_path=tmp_path / "s.pt",
            out=tmp_path / "o.pt",
            section="supportnet",
        )
    assert not (tmp_path / "o.pt").exists()


def test_shard_and_launch_prefix():
    ids = [f"im{i}" for i in range(7)]
    parts = [dist.shard(ids, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and all(parts)
    assert dist.shard(ids) == ids  # one process: everything
    assert registry.launch_prefix(1) == "wsss"
    assert registry.launch_prefix(4) == "torchrun --standalone --nproc_per_node 4 -m wsss.cli --"
    assert dist.local_batch_size(32, 4) == 8
