"""Faults and careless input (issue 13): each case fails loudly, names the key, argument or file and says what to
do, exits 2 (28 for a full disk), and leaves no output. Every test here failed on the code before issue 13."""

from __future__ import annotations

import errno
import io
import json
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import BIN, REPO, copy_workflow, run, tiny_cams
from PIL import Image

from wsss import cli
from wsss.engine import checkpoint

TINY = {
    "name": "tiny",
    "data": {"synthetic": {"n_train": 6, "n_val": 3, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "batch_size": 4, "crop": 48}},
    "mainnet": {"train": {"epochs": 1, "batch_size": 4, "crop": 48}},
    "cams": {"scales": [1.0], "flip": False, "thresholds": [0.2, 0.3], "fixed_threshold": 0.2},
    "refine": {"crf": {"n_iter": 1}},
    "segment": {"enabled": False},
    "single_stage": {"enabled": False},
}


def _cfg(path: Path, **changes) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def wsss(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse: a missing or malformed option
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny dataset, its config, a SupportNet checkpoint and its CAMs (made by the real CLI)."""
    return tiny_cams(tmp_path_factory.mktemp("faults"), TINY)


def _train(cfg, root, out: Path, capsys, *extra) -> tuple[int, str]:
    return wsss(
        [
            "train_supportnet",
            "--config",
            cfg,
            "--data",
            root,
            "--ckpt",
            out / "ck.pt",
            "--metrics",
            out / "m.json",
            "--plot",
            out / "p.json",
            "--state",
            out / "state.pt",
            "--log",
            out / "log.txt",
            *extra,
        ],
        capsys,
    )


# --------------------------------------------------------------------------------------- silent wrong results


def test_a_batch_larger_than_the_split_is_refused_not_trained_for_zero_steps(tiny, tmp_path, capsys):
    """Before: no batch, exit 0, a randomly initialised checkpoint. Now refused at validation (the synthetic split's
    size is in the config) and, for data whose size only the files tell, at the start of the training."""
    bad = _cfg(tmp_path / "big.yaml", **{"supportnet.train.batch_size": 32})
    rc, err = wsss(["validate", "--config", bad], capsys)
    assert rc == 2 and "supportnet.train.batch_size = 32 is larger than the training split" in err
    assert "n_train = 6" in err
    rc, err = _train(bad, tiny["root"], tmp_path, capsys)
    assert rc == 2 and "supportnet.train.batch_size = 32" in err and "(6 images)" in err
    assert not (tmp_path / "ck.pt").exists() and not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("data.cam_split", "val", "data.cam_split 'val' is not within data.train_split 'train'"),
        ("supportnet.train.lr", float("nan"), "'supportnet.train.lr' is not a finite number"),
        ("refine.bg_alpha", float("inf"), "'refine.bg_alpha' is not a finite number"),
    ],
)
def test_validation_refuses_inconsistent_splits_and_non_finite_numbers(tmp_path, capsys, key, value, message):
    rc, err = wsss(["validate", "--config", _cfg(tmp_path / "bad.yaml", **{key: value})], capsys)
    assert rc == 2 and message in err


# ------------------------------------------------------------------------------- crashes, misleading messages


class _FullDisk(io.RawIOBase):
    """A file whose every write fails as on a full disk."""

    def writable(self):
        return True

    def write(self, b):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_a_checkpoint(tiny, tmp_path, capsys, monkeypatch):
    real_open = open
    monkeypatch.setattr(
        checkpoint,
        "open",
        lambda p, mode="r", *a, **k: _FullDisk() if "w" in mode else real_open(p, mode, *a, **k),
        raising=False,
    )
    rc, err = _train(tiny["cfg"], tiny["root"], tmp_path, capsys)
    assert rc == 28, err
    assert "no space left on device" in err and "Free space on that disk and re-run" in err
    assert str(tmp_path / "state.pt") in err or str(tmp_path / "ck.pt") in err
    assert "no space left on device" in (tmp_path / "log.txt").read_text()  # the stage log says it too
    assert not (tmp_path / "ck.pt").exists() and not list(tmp_path.glob(".*.tmp*"))


def test_paths_with_spaces_reach_the_stages(tmp_path):
    """A workflow folder and a config path holding spaces: the jobs' shell commands (and dvc.yaml's) quote them."""
    work = copy_workflow(tmp_path / "my work")
    (work / "my cfgs").mkdir()
    cfg = work / "my cfgs" / "tiny.yaml"
    cfg.write_text((work / "config/smoke.yaml").read_text())
    run(
        [BIN / "snakemake", "results/smoke/data/VOC2012", "--cores", "1", "--configfile", "my cfgs/tiny.yaml"], cwd=work
    )
    assert (work / "results/smoke/data/VOC2012/labels.json").is_file()
    run([BIN / "wsss-dvc-yaml", "--configfile", "my cfgs/tiny.yaml", "--out", "dvc.yaml"], cwd=work)
    stage = yaml.safe_load((work / "dvc.yaml").read_text())["stages"]["config"]
    assert "'my cfgs/tiny.yaml'" in stage["cmd"]
    p = subprocess.run(stage["cmd"], shell=True, cwd=work, env=_env(), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (work / "results/smoke/params/crf.json").is_file()
    assert shlex.split(stage["cmd"])[3] == "my cfgs/tiny.yaml"


def _env():
    from conftest import env_with_venv

    return env_with_venv()


def _fake_checkpoint(path: Path, **content) -> Path:
    torch.save({"model": {}, **content}, path)
    return path


def test_stages_run_by_hand_name_the_bad_argument(tiny, tmp_path, capsys):
    t = tiny
    cases = [
        (["extract_cams", "--net", "bogus"], "--net 'bogus': must match supportnet|mainnet_"),
        (["train_mainnet", "--variant", "foo", "--support", t["ck"]], "--variant 'foo': must match"),
        (["train_mainnet", "--variant", "rcm"], "the following arguments are required: --support"),
        (["extract_cams", "--net", "supportnet", "--threads", "-3"], "--threads -3: must be >= 0"),
    ]
    common = {
        "extract_cams": ["--data", t["root"], "--ckpt", t["ck"], "--cams", tmp_path / "cams"],
        "train_mainnet": [
            "--data",
            t["root"],
            "--ckpt",
            tmp_path / "ck.pt",
            "--metrics",
            tmp_path / "m.json",
            "--plot",
            tmp_path / "p.json",
            "--state",
            tmp_path / "s.pt",
        ],
    }
    for args, message in cases:
        rc, err = wsss([args[0], "--config", t["cfg"], *args[1:], *common[args[0]]], capsys)
        assert rc == 2 and message in err, (args, err)
    assert not (tmp_path / "cams").exists() and not (tmp_path / "ck.pt").exists()


@pytest.mark.parametrize("kind", ["deeplab", "config_file"])
def test_a_wrong_checkpoint_is_named_without_advice_to_delete_it(tiny, tmp_path, capsys, kind):
    t = tiny
    wrong = (
        _fake_checkpoint(tmp_path / "deeplab.pt", config={"segment": {}, "labels": "x"})
        if kind == "deeplab"
        else t["cfg"]
    )
    rc, err = wsss(
        [
            "extract_cams",
            "--config",
            t["cfg"],
            "--net",
            "supportnet",
            "--ckpt",
            wrong,
            "--data",
            t["root"],
            "--cams",
            tmp_path / "cams",
        ],
        capsys,
    )
    assert rc == 2 and str(wrong) in err and "CAM network checkpoint" in err
    assert "delete" not in err
    # and a CAM network's checkpoint given to the segmentation evaluation
    rc, err = wsss(
        [
            "eval_seg",
            "--config",
            t["cfg"],
            "--source",
            "pseudo",
            "--ckpt",
            t["ck"],
            "--data",
            t["root"],
            "--metrics",
            tmp_path / "seg.json",
            "--pred",
            tmp_path / "pred",
        ],
        capsys,
    )
    assert rc == 2 and str(t["ck"]) in err and "not a segmentation checkpoint" in err
    assert not (tmp_path / "cams").exists() and not (tmp_path / "seg.json").exists()


def test_an_image_mask_size_mismatch_names_the_mask(tiny, tmp_path, capsys):
    import shutil

    root = tmp_path / "VOC2012"
    shutil.copytree(tiny["root"], root)
    # the last id: a scored one (the first ids are the calibration subset, which the CRF reads only to calibrate)
    last = (root / "ImageSets/Segmentation/train.txt").read_text().split()[-1]
    mask = root / "SegmentationClass" / f"{last}.png"
    arr = np.array(Image.open(mask))
    Image.fromarray(np.zeros((arr.shape[0] + 3, arr.shape[1]), np.uint8), mode="L").save(mask)
    for stage, outs in (
        ("eval_cams", ["--metrics", tmp_path / "c.json", "--curve", tmp_path / "cv.json"]),
        ("crf", ["--pseudo", tmp_path / "pseudo", "--metrics", tmp_path / "p.json"]),
    ):
        rc, err = wsss(
            [stage, "--config", tiny["cfg"], "--net", "supportnet", "--cams", tiny["cams"], "--data", root, *outs],
            capsys,
        )
        assert rc == 2 and str(mask) in err and "mask size" in err, (stage, err)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".json") or p.name == "pseudo"]


def test_a_target_after_configfile_gets_a_hint(tmp_path):
    work = copy_workflow(tmp_path / "w")
    (work / "target.json").write_text(json.dumps({"best_threshold": 0.3, "miou": 0.5}))
    p = run([BIN / "snakemake", "-n", "--configfile", "config/smoke.yaml", "target.json"], cwd=work, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "put targets before --configfile" in out
    assert "unknown config key" not in out


def test_dvc_yaml_generator_reports_a_bad_config_in_one_line(tmp_path):
    bad = _cfg(tmp_path / "bad.yaml", **{"supportnet.train.epochz": 3})
    p = run([BIN / "wsss-dvc-yaml", "--configfile", bad, "--out", tmp_path / "dvc.yaml"], cwd=REPO, check=False)
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "unknown config key supportnet.train.epochz" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "dvc.yaml").exists()


def test_job_options_are_quoted_for_the_shell():
    """A user's VOC folder (data.voc.extracted_root) may hold spaces: every job option reaches the stage whole."""
    from wsss import registry

    args = registry.cli_args(
        registry.STAGES["prepare_voc"],
        {},
        {"voc": "/data/my voc/VOC2012", "params": "p.json"},
        {"data": "results/x/data/VOC2012", "metrics": "it's.json"},
        {},
        {},
    )
    assert shlex.split(args) == [
        "--voc",
        "/data/my voc/VOC2012",
        "--data",
        "results/x/data/VOC2012",
        "--metrics",
        "it's.json",
    ]
