"""Bad input (issue 7): each case runs a real `wsss` stage on a tiny synthetic dataset and checks that it
(a) fails with a non-zero exit, (b) names the offending file or config key and says what to do, and
(c) leaves no half-written output (no output file/folder, no `.*.tmp*` leftovers)."""

import copy
import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BIN, copy_workflow, run, tiny_cams
from PIL import Image

from wsss import cli

TINY = {
    "name": "tiny",
    "data": {"synthetic": {"n_train": 6, "n_val": 3, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "batch_size": 4, "crop": 48}},
    "mainnet": {"train": {"epochs": 1, "batch_size": 4, "crop": 48}, "mam": {"scales": [0.5, 1.0]}},
    "cams": {"scales": [1.0], "flip": False, "thresholds": [0.2, 0.3], "fixed_threshold": 0.2},
    "refine": {"crf": {"n_iter": 1}},
}


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def wsss(args, capsys) -> tuple[int, str]:
    """Run `wsss <args>` in-process; (exit code, stderr)."""
    capsys.readouterr()
    argv = [str(a) for a in args]
    if "--threads" not in argv and argv[0] not in ("validate", "config"):
        argv += ["--threads", "1"]
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


def tmp_leftovers(*folders: Path) -> list[Path]:
    return [p for d in folders if d.exists() for p in d.rglob(".*.tmp*")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny dataset, its config file, a SupportNet checkpoint and its CAMs (all made by the real CLI)."""
    return tiny_cams(tmp_path_factory.mktemp("bad_input"), TINY)


@pytest.fixture
def data(base, tmp_path):
    """A private copy of the dataset (and the CAMs) that a test may break."""
    root = tmp_path / "VOC2012"
    shutil.copytree(base["root"], root)
    cams = tmp_path / "cams_in"
    shutil.copytree(base["cams"], cams)
    return root, cams, tmp_path


def first_id(root: Path, split: str = "train") -> str:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]


def extract(base, root, out, capsys):
    return wsss(
        [
            "extract_cams",
            "--config",
            base["cfg"],
            "--net",
            "supportnet",
            "--ckpt",
            base["ck"],
            "--data",
            root,
            "--cams",
            out,
        ],
        capsys,
    )


def eval_cams(base, root, cams, tmp, capsys):
    out, curve = tmp / "metrics" / "cam.json", tmp / "metrics" / "curve.json"
    rc, err = wsss(
        [
            "eval_cams",
            "--config",
            base["cfg"],
            "--net",
            "supportnet",
            "--cams",
            cams,
            "--data",
            root,
            "--metrics",
            out,
            "--curve",
            curve,
        ],
        capsys,
    )
    return rc, err, [out, curve]


def crf(base, root, cams, tmp, capsys, threads=1):
    out, m = tmp / "pseudo", tmp / "metrics" / "crf.json"
    rc, err = wsss(
        [
            "crf",
            "--config",
            base["cfg"],
            "--threads",
            threads,
            "--net",
            "supportnet",
            "--cams",
            cams,
            "--data",
            root,
            "--pseudo",
            out,
            "--metrics",
            m,
        ],
        capsys,
    )
    return rc, err, [out, m]


def assert_clean(outputs, tmp):
    for p in outputs:
        assert not Path(p).exists(), f"half-written output left: {p}"
    assert not tmp_leftovers(tmp), tmp_leftovers(tmp)


# ------------------------------------------------------------------------------------------ 1. corrupt JPEG


def _corrupt(root: Path) -> Path:
    path = root / "JPEGImages" / f"{first_id(root)}.jpg"
    path.write_bytes(b"this is not a jpeg \x00\xff" * 20)
    return path


def test_corrupt_jpeg_extract_cams(base, data, capsys):
    root, _, tmp = data
    bad = _corrupt(root)
    rc, err = extract(base, root, tmp / "cams", capsys)
    assert rc != 0
    assert str(bad) in err and "corrupt" in err and "replace the file" in err
    assert_clean([tmp / "cams"], tmp)


def test_corrupt_jpeg_train_cam(base, data, capsys):
    root, _, tmp = data
    bad = _corrupt(root)
    ck = tmp / "models" / "ck.pt"
    rc, err = wsss(
        [
            "train_supportnet",
            "--config",
            base["cfg"],
            "--data",
            root,
            "--ckpt",
            ck,
            "--metrics",
            tmp / "m.json",
            "--plot",
            tmp / "p.json",
            "--state",
            tmp / "state.pt",
        ],
        capsys,
    )
    assert rc != 0
    assert str(bad) in err and "replace the file" in err
    assert_clean([ck, tmp / "m.json", tmp / "p.json"], tmp)


def test_corrupt_jpeg_in_a_worker_process_reaches_the_user(base, data, capsys):
    root, cams, tmp = data
    bad = _corrupt(root)
    rc, err, outs = crf(base, root, cams, tmp, capsys, threads=2)
    assert rc != 0
    assert str(bad) in err and "replace the file" in err
    assert_clean(outs, tmp)


# ------------------------------------------------------------------------------------------ 2. missing mask


def test_missing_mask_eval_cams(base, data, capsys):
    root, cams, tmp = data
    mask = root / "SegmentationClass" / f"{first_id(root)}.png"
    mask.unlink()
    rc, err, outs = eval_cams(base, root, cams, tmp, capsys)
    assert rc != 0
    assert str(mask) in err and "mask not found" in err and "check the dataset root" in err
    assert_clean(outs, tmp)


def test_missing_mask_crf(base, data, capsys):
    root, cams, tmp = data
    mask = root / "SegmentationClass" / f"{first_id(root)}.png"
    mask.unlink()
    rc, err, outs = crf(base, root, cams, tmp, capsys)
    assert rc != 0
    assert str(mask) in err and "restore the files" in err
    assert_clean(outs, tmp)


# ------------------------------------------------------------------------------------ 3. mask values out of range


def test_mask_value_out_of_range_eval_cams(base, data, capsys):
    root, cams, tmp = data
    mask = root / "SegmentationClass" / f"{first_id(root)}.png"
    arr = np.array(Image.open(mask))
    arr[0, 0] = 42
    Image.fromarray(arr, mode="L").save(mask)
    rc, err, outs = eval_cams(base, root, cams, tmp, capsys)
    assert rc != 0
    assert str(mask) in err and "[42]" in err and "0..20 and 255" in err and "fix or regenerate" in err
    assert_clean(outs, tmp)


# -------------------------------------------------------------------------------------------- 4. empty split


def test_empty_split_extract_cams(base, data, capsys):
    root, _, tmp = data
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text("\n\n")
    rc, err = extract(base, root, tmp / "cams", capsys)
    assert rc != 0
    assert str(split) in err and "empty split list" in err and "one per line" in err
    assert_clean([tmp / "cams"], tmp)


# ------------------------------------------------------------------------------------- 5. id without a file


def test_id_without_image_extract_cams(base, data, capsys):
    root, _, tmp = data
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + "ghost_0001\n")
    rc, err = extract(base, root, tmp / "cams", capsys)
    assert rc != 0
    assert str(root / "JPEGImages" / "ghost_0001.jpg") in err and str(split) in err and "drop those ids" in err
    assert_clean([tmp / "cams"], tmp)


# ------------------------------------------------------------------------------------------ 6-8. bad config


def _bad_cfg(tmp: Path, edit) -> Path:
    cfg = copy.deepcopy(TINY)
    edit(cfg)
    return write_cfg(tmp / "bad.yaml", cfg)


def test_unknown_key_validate(tmp_path, capsys):
    bad = _bad_cfg(tmp_path, lambda c: c["supportnet"]["train"].update(epochz=3))
    rc, err = wsss(["validate", "--config", bad], capsys)
    assert rc != 0
    assert str(bad) in err and "unknown config key supportnet.train.epochz" in err
    assert "allowed keys here" in err and "epochs" in err


def test_unknown_key_snakemake_dry_run(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    cfg = copy.deepcopy(TINY)
    cfg["supportnet"]["train"]["epochz"] = 3
    write_cfg(work / "config" / "bad.yaml", cfg)
    p = run(
        [BIN / "snakemake", "-n", "--cores", "1", "--configfile", "config/bad.yaml"], cwd=work, check=False, timeout=300
    )
    out = p.stdout + p.stderr
    assert p.returncode != 0
    # our validator runs first: the message names the file and the dotted key, and lists the allowed keys
    assert "config/bad.yaml: unknown config key supportnet.train.epochz" in out
    assert "allowed keys here" in out
    assert "rule " not in p.stdout and "Job stats" not in out  # failed before planning any job
    assert not (work / "results").exists()


def test_wrong_type(tmp_path, capsys):
    bad = _bad_cfg(tmp_path, lambda c: c["supportnet"]["train"].update(epochs="ten"))
    rc, err = wsss(["validate", "--config", bad], capsys)
    assert rc != 0
    assert "'supportnet.train.epochs'" in err and "'ten' is not of type 'integer'" in err


def test_negative_learning_rate(tmp_path, capsys):
    bad = _bad_cfg(tmp_path, lambda c: c["supportnet"]["train"].update(lr=-0.01))
    rc, err = wsss(["validate", "--config", bad], capsys)
    assert rc != 0
    assert "'supportnet.train.lr'" in err and "-0.01" in err and "less than or equal to the minimum of 0" in err


# --------------------------------------------------------------------------- 9. pretrained weights offline


def test_missing_pretrained_weights_offline(base, data, capsys, monkeypatch):
    root, _, tmp = data
    torch_home = tmp / "torch_home"
    torch_home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    # no network here; make sure of it, so the test is the same on a machine that has one
    import torch.hub

    def offline(*a, **k):
        raise OSError(errno.ENETUNREACH, "Network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    bad = _bad_cfg(tmp, lambda c: c["supportnet"].update(backbone={"name": "resnet18", "pretrained": True}))
    ck = tmp / "models" / "ck.pt"
    rc, err = wsss(
        [
            "train_supportnet",
            "--config",
            bad,
            "--data",
            root,
            "--ckpt",
            ck,
            "--metrics",
            tmp / "m.json",
            "--plot",
            tmp / "p.json",
            "--state",
            tmp / "state.pt",
        ],
        capsys,
    )
    assert rc != 0
    assert "resnet18-f37072fd.pth" in err and "$TORCH_HOME/hub/checkpoints/" in err
    assert str(torch_home / "hub" / "checkpoints") in err and "pretrained=False" in err
    assert_clean([ck, tmp / "m.json", tmp / "p.json"], tmp)


# ---------------------------------------------------------------------------------- 10. disk full on CAMs


def test_disk_full_while_writing_cams(base, data, capsys, monkeypatch):
    root, _, tmp = data
    real = np.savez_compressed
    calls = {"n": 0}

    def savez_then_full(f, **arrays):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **arrays)

    monkeypatch.setattr(np, "savez_compressed", savez_then_full)
    out = tmp / "cams"
    rc, err = extract(base, root, out, capsys)
    assert calls["n"] == 3
    assert rc != 0
    assert "no space left on device" in err.lower() and str(out) in err
    assert "free space" in err.lower() and "re-run" in err
    assert not out.exists() and not list(tmp.glob(".cams*"))
    assert_clean([out], tmp)
