"""Records (wsss.records): seeds kept with their provenance add up to the report the DAG would have written."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from wsss import records
from wsss.io import WsssInputError


def _tables(md: str) -> str:
    """tables.md from its first table on (the notes under the title differ by the records' provenance)."""
    return md[md.index("\n## ") :]


def test_recorded_seeds_reproduce_the_dags_tables(smoke_run, tmp_path, monkeypatch):
    monkeypatch.chdir(smoke_run)
    written = records.record("results/smoke", [0], tmp_path / "rec", config_file="config/smoke.yaml")
    manifest = json.loads((written[0] / records.MANIFEST).read_text())
    # what the report stage gathers for seed 0, each with its digest, and the run's config slices and stage code
    assert "seed0/metrics/cam_supportnet.json" in manifest["files"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in manifest["files"].values())
    assert "train_supportnet" in manifest["slices"] and "report" not in manifest["slices"]
    assert manifest["code"]["extract_cams"] and "report" not in manifest["code"] and manifest["seed"] == 0
    umask = os.umask(0)
    os.umask(umask)  # a plain file's mode under the umask in force (0644 under 022), as every output of wsss
    assert os.stat(written[0] / "metrics" / "cam_supportnet.json").st_mode & 0o777 == 0o666 & ~umask

    summary = records.report_records(tmp_path / "rec", tmp_path / "assembled")
    got = (tmp_path / "assembled" / "smoke" / "report" / "tables.md").read_text()
    want = (smoke_run / "results" / "smoke" / "report" / "tables.md").read_text()
    assert _tables(got) == _tables(want)
    assert "Assembled from records (seed 0:" in got and summary["tables_md"].endswith("tables.md")

    # a recorded number edited by hand is caught before any table is made
    cam = written[0] / "metrics" / "cam_supportnet.json"
    cam.write_text(cam.read_text().replace('"miou": 0.', '"miou": 0.9', 1))
    with pytest.raises(WsssInputError, match="cam_supportnet.json: missing or changed since it was recorded"):
        records.report_records(tmp_path / "rec", tmp_path / "again")


def test_a_seed_whose_run_is_unfinished_or_stale_is_not_recorded(smoke_run, tmp_path, monkeypatch):
    monkeypatch.chdir(smoke_run)
    with pytest.raises(WsssInputError, match=r"not among the run's seeds \[0\]"):
        records.record("results/smoke", [3], tmp_path / "rec")
    # a config whose slices differ from the run's: Snakemake would re-run jobs, so the digests would lie
    stale = tmp_path / "stale.yaml"
    cfg = yaml.safe_load((smoke_run / "config/smoke.yaml").read_text())
    cfg["cams"]["fixed_threshold"] = cfg["cams"].get("fixed_threshold", 0.15) + 0.05
    stale.write_text(yaml.safe_dump(cfg))
    with pytest.raises(WsssInputError, match="the run is not current"):
        records.record("results/smoke", [0], tmp_path / "rec", config_file=str(stale))
    assert not (tmp_path / "rec").exists()


def _manifest(**over):
    return {"seed": 0, "recorded_utc": "t", "git_commit": "abc", "slices": {"train_supportnet": "1"},
            "code": {"train_supportnet": "x", "extract_cams": "r"}, **over}  # fmt: skip


def test_seeds_of_different_configs_or_code_never_share_a_table():
    code = {"train_supportnet": "x", "extract_cams": "r"}
    notes = records.check_consistent({0: _manifest(), 1: _manifest(seed=1)}, code, allow_code_change=False)
    assert "same config slices and stage code" in notes[0] and len(notes) == 1
    with pytest.raises(WsssInputError, match="differ in the config slice 'train_supportnet'"):
        records.check_consistent({0: _manifest(), 1: _manifest(slices={"train_supportnet": "2"})}, code, False)
    with pytest.raises(WsssInputError, match="differ in the code of stage 'extract_cams'"):
        records.check_consistent({0: _manifest(), 1: _manifest(code={**code, "extract_cams": "s"})}, code, False)
    today = {**code, "train_supportnet": "y"}
    with pytest.raises(WsssInputError, match="code of stages train_supportnet changed since the records were made"):
        records.check_consistent({0: _manifest()}, today, allow_code_change=False)
    notes = records.check_consistent({0: _manifest()}, today, allow_code_change=True)
    assert notes[-1].endswith("train_supportnet")


def test_a_seeds_targets_are_the_report_inputs_of_that_seed_only():
    from wsss import config

    cfg = config.validate({"name": "x", "seeds": [0, 1], "mainnet": {"variants": ["baseline", "rcm_mam"]}})
    files = records.seed_files(cfg, 1)
    assert files and all(f.startswith("seed1/metrics/") for f in files)
    assert {"seed1/metrics/cam_mainnet_rcm_mam.json", "seed1/metrics/train_mainnet_baseline.json"} <= set(files)
    noisy = config.validate({**cfg, "single_stage": {"noise_experiment": {"enabled": True, "kinds": ["erode"]}}})
    assert "seed1/metrics/seg_noisy_erode20_aa_lr.json" in records.seed_files(noisy, 1)


def test_seed_targets_name_the_seeds_files_and_the_slice_record_reads(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\nseeds: [0, 1]\n")
    assert records.main(["seed-targets", "--config", str(cfg), "--seed", "1"]) == 0
    targets = capsys.readouterr().out.split()
    assert targets[0] == "results/x/params/report.json"
    assert "results/x/seed1/metrics/cam_supportnet.json" in targets
    assert not [t for t in targets if "/seed0/" in t]
    assert records.main(["seed-targets", "--config", str(cfg), "--seed", "5"]) == 2
    assert "--seed 5: not among" in capsys.readouterr().err
