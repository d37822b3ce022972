"""The prepared GPU check (benchmarks/gpu_check.py) runs on CPU at a tiny scale on the shared real photographs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
VOC_MINI = REPO.parent / "shared" / "data" / "voc2012-mini" / "VOC2012"


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not (VOC_MINI / "JPEGImages").is_dir(), reason=f"shared real photographs absent: {VOC_MINI}")
def test_gpu_check_runs_every_stage_on_cpu_and_the_doc_shows_it(tmp_path: Path) -> None:
    gc = _module("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    out = tmp_path / "gpu_check.json"
    argv = ["--steps", "2", "--batch", "2", "--crop", "64", "--image-scale", "0.2", "--images", "1"]
    assert gc.main([*argv, "--device", "cpu", "--threads", "1", "--out", str(out)]) == 0
    g = json.loads(out.read_text())
    assert g["device"] == "cpu" and g["config"] == "voc12"
    assert sorted(g["stages"]) == sorted(gc.STAGES)  # write_json sorts keys
    for name, r in g["stages"].items():
        assert r["images_per_s"] > 0 and r["peak_memory_mib"] > 0, name
        assert r["images_per_s"] == pytest.approx(r["images_per_step"] / r["seconds_per_step"], rel=1e-2)
    assert g["stages"]["mainnet_train"]["variant"] == "rcm_mam" and g["stages"]["deeplab_train"]["crop"] == 64
    # CAMs ran on the first train photograph at a fifth of its size
    from wsss.data.voc import image_path, read_split
    from wsss.io import read_image

    h, w = read_image(image_path(VOC_MINI, read_split(VOC_MINI, "train")[0])).shape[:2]
    assert np.allclose(g["cam_image_sizes"][0], [h * 0.2, w * 0.2], atol=1)
    lines = _module("run_all", REPO / "benchmarks" / "run_all.py").gpu_block(out)
    assert any(line.startswith("| deeplab_train | 2 | 2 |") for line in lines)


def test_gpu_check_refuses_an_unknown_stage_and_a_missing_folder(tmp_path: Path) -> None:
    gc = _module("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    with pytest.raises(SystemExit, match="no JPEGImages"):
        gc.main(["--voc-root", str(tmp_path)])
    (tmp_path / "JPEGImages").mkdir()
    with pytest.raises(SystemExit, match="unknown"):
        gc.main(["--voc-root", str(tmp_path), "--stages", "supportnet_train,warp_drive"])
