"""The one config schema: complete, strict, shared by Snakemake and the CLI."""

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss import config
from wsss.io import WsssInputError

REPO = Path(__file__).resolve().parents[1]


def _walk(schema, root, path="config"):
    schema = config._resolve_ref(schema, root)
    for key, sub in schema.get("properties", {}).items():
        sub = config._resolve_ref(sub, root)
        yield f"{path}.{key}", sub
        yield from _walk(sub, root, f"{path}.{key}")


def test_every_key_has_a_description_and_a_default():
    schema = config.load_schema()
    keys = list(_walk(schema, schema))
    assert len(keys) > 80
    missing = [k for k, s in keys if not s.get("description") or "default" not in s]
    assert missing == []


def test_every_object_rejects_unknown_keys():
    """Sections forbid unknown keys; maps (e.g. data.voc.urls) restrict their key names."""
    schema = config.load_schema()
    objects = [(k, config._resolve_ref(s, schema)) for k, s in _walk(schema, schema) if s.get("type") == "object"]
    loose = [
        k
        for k, s in objects
        if not (
            s.get("additionalProperties") is False
            or (isinstance(s.get("additionalProperties"), dict) and "propertyNames" in s)
        )
    ]
    assert len(objects) > 10 and loose == []
    with pytest.raises(WsssInputError, match="data.voc.urls"):
        config.validate({"data": {"voc": {"urls": {"voc2013": ["http://x"]}}}})


SHIPPED = sorted(p.name for p in (REPO / "config").glob("*.yaml"))


def test_the_shipped_configs_are_the_ones_we_know():
    known = {"config.yaml", "smoke.yaml", "voc12.yaml", "voc-cpu.yaml", "ablation.yaml", "ablation-v2.yaml"}
    assert known <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_valid(name):
    cfg = config.load(REPO / "config" / name)
    assert cfg["mainnet"]["final_variant"] in cfg["mainnet"]["variants"]


def test_defaults_fill_nested_sections():
    cfg = config.validate({})
    assert cfg["mainnet"]["rcm"]["temperature"] == 0.1
    assert cfg["segment"]["train"]["epochs"] >= 1
    assert cfg["data"]["synthetic"]["n_train"] > 0


def test_the_schema_ships_inside_the_package(tmp_path):
    """An installed wheel finds it: the schema is package data next to wsss/config.py, and the wheel holds it."""
    import subprocess
    import sys
    import zipfile

    assert config.SCHEMA_PATH == Path(config.__file__).resolve().with_name("config.schema.yaml")
    assert config.SCHEMA_PATH.is_file()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("wsss-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsss/config.schema.yaml" in names and "wsss/registry.py" in names


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"supportnet": {"trian": {}}}, "supportnet.trian"),
        ({"mainnet": {"rcm": {"temperature": "hot"}}}, "mainnet.rcm.temperature"),
        ({"segment": {"train": {"lr": -0.1}}}, "segment.train.lr"),
        ({"cams": {"scales": []}}, "cams.scales"),
        ({"mainnet": {"variants": ["baseline"], "final_variant": "rcm_mam"}}, "mainnet.final_variant"),
        (
            {
                "refine": {"crf_nets": ["mainnet_rcm"]},
                "mainnet": {"variants": ["baseline"], "final_variant": "baseline"},
            },
            "refine.crf_nets",
        ),
    ],
)
def test_bad_values_fail_naming_the_key(bad, key):
    with pytest.raises(WsssInputError, match=key.replace(".", r"\.")):
        config.validate(bad, source="x.yaml")


def test_load_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seeds: [-1]\n")
    with pytest.raises(WsssInputError, match=r"c\.yaml.*seed"):
        config.load(p)
    with pytest.raises(WsssInputError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_snakemake_validate_uses_the_same_schema():
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    schema_path = str(config.SCHEMA_PATH)
    good = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    validate(copy.deepcopy(good), schema_path)
    bad = copy.deepcopy(good)
    bad["supportnet"]["train"]["lr"] = -1
    with pytest.raises(WorkflowError):
        validate(bad, schema_path)


@settings(max_examples=40, deadline=None)
@given(
    lr=st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
    epochs=st.integers(min_value=-3, max_value=50),
)
def test_validation_accepts_exactly_the_legal_values(lr, epochs):
    raw = {"supportnet": {"train": {"lr": lr, "epochs": epochs}}}
    legal = lr > 0 and epochs >= 1
    if legal:
        assert config.validate(raw)["supportnet"]["train"]["lr"] == lr
    else:
        with pytest.raises(WsssInputError, match="supportnet.train"):
            config.validate(raw)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"refine": {"random_walk": {"nets": ["mainnet_rcm"]}}}, "mainnet_rcm.*not in refine.crf_nets"),
        (
            {
                "mainnet": {"variants": ["baseline"], "final_variant": "baseline"},
                "refine": {"crf_nets": ["mainnet_baseline"], "random_walk": {"nets": ["mainnet_mam"]}},
            },
            "random_walk.nets names 'mainnet_mam', which is not trained",
        ),
        ({"segment": {"pseudo_labels": "rw"}}, "segment.pseudo_labels is rw.*not in refine.random_walk.nets"),
    ],
)
def test_random_walk_consistency(bad, key):
    with pytest.raises(WsssInputError, match=key):
        config.validate(bad, source="x.yaml")


def test_pseudo_label_source_is_checked_only_where_deeplab_trains():
    """segment.pseudo_labels names the labels DeepLab trains on: without DeepLab (segment.enabled false, e.g. the
    ablation configs) a final MainNet without CRF or walk labels is fine; with it, the same config is refused."""
    bare = {"refine": {"crf_nets": [], "random_walk": {"nets": []}}, "segment": {"pseudo_labels": "crf"}}
    assert (
        config.validate({**bare, "segment": {"pseudo_labels": "crf", "enabled": False}})["segment"]["enabled"] is False
    )
    with pytest.raises(WsssInputError, match="segment.pseudo_labels is crf but"):
        config.validate(bare, source="x.yaml")


def test_random_walk_with_cam_labels_needs_no_crf():
    cfg = config.validate({"refine": {"random_walk": {"nets": ["mainnet_rcm"], "label_source": "cams"}}})
    assert cfg["refine"]["random_walk"]["nets"] == ["mainnet_rcm"]


def test_seeds_and_run_seed():
    cfg = config.validate({"seeds": [3, 5]})
    assert config.run_seed(cfg, None) == 3 and config.run_seed(cfg, 5) == 5
    with pytest.raises(WsssInputError, match="seed 4 is not among `seeds`"):
        config.run_seed(cfg, 4, source="c.yaml")
    with pytest.raises(WsssInputError, match="seeds"):
        config.validate({"seeds": [1, 1]})


def test_the_schema_names_exactly_the_mainnet_variants_the_code_trains():
    """variants, final_variant and the net patterns of crf_nets / random_walk.nets list MAINNET_VARIANTS."""
    from wsss.variants import MAINNET_VARIANTS

    props = config.load_schema()["properties"]
    main, refine = props["mainnet"]["properties"], props["refine"]["properties"]
    assert set(main["variants"]["items"]["enum"]) == set(MAINNET_VARIANTS)
    assert set(main["final_variant"]["enum"]) == set(MAINNET_VARIANTS)
    for pattern in (
        refine["crf_nets"]["items"]["pattern"],
        refine["random_walk"]["properties"]["nets"]["items"]["pattern"],
    ):
        inner = pattern.split("mainnet_(")[1].split(")")[0]
        assert set(inner.split("|")) == set(MAINNET_VARIANTS), pattern
        # and every mechanism of a variant is a section of the mainnet config
    assert {m for ms in MAINNET_VARIANTS.values() for m in ms} <= set(main)


# ------------------------------------------------------------------ splits that prepare / make_data write (issue 15)


@pytest.mark.parametrize(
    "raw, message",
    [
        # the synthetic benchmark has train and val only
        ({"segment": {"export_split": "test"}}, r"segment\.export_split 'test'.*data\.source 'synthetic'.*train, val"),
        # VOCtrainval holds no test split: val, or the extracted test images
        (
            {"data": {"source": "voc_sbd", "train_split": "train_aug"}, "segment": {"export_split": "test"}},
            r"segment\.export_split 'test'.*VOCtrainval.*segment\.export_split: val.*data\.voc\.test_extracted_root",
        ),
        ({"data": {"source": "voc"}, "segment": {"export_split": "train_aug"}}, r"segment\.export_split 'train_aug'"),
    ],
)
def test_the_export_split_must_be_one_the_data_stage_writes(raw, message):
    with pytest.raises(WsssInputError, match=message):
        config.validate(raw, source="x.yaml")


def test_the_test_split_is_exported_once_the_test_images_are_configured():
    raw = {"data": {"source": "voc", "voc": {"test_extracted_root": "/data/VOC2012test"}}}
    cfg = config.validate({**raw, "segment": {"export_split": "test"}})
    assert cfg["segment"]["export_split"] == "test"
    with pytest.raises(WsssInputError, match=r"data\.train_split 'test'.*no masks"):  # exported, never trained on
        config.validate({"data": {**raw["data"], "train_split": "test"}})
    config.validate({"segment": {"enabled": False, "export_split": "test"}})  # no segmentation: nothing exported


def test_voc12_exports_a_split_that_prepare_writes():
    cfg = config.load(REPO / "config" / "voc12.yaml")
    assert cfg["segment"]["export_split"] == "val" and cfg["data"]["voc"]["test_extracted_root"] is None


@pytest.mark.parametrize(
    "source, split, ok",
    [
        ("voc", "train_aug", False),
        ("voc_sbd", "train_aug", True),
        ("voc", "train", True),
        ("synthetic", "train_aug", False),
        ("voc", "trainval", False),
    ],
)
def test_the_train_split_must_exist_for_the_data_source(source, split, ok):
    raw = {"data": {"source": source, "train_split": split}}
    if ok:
        assert config.validate(raw)["data"]["train_split"] == split
        return
    with pytest.raises(WsssInputError) as e:
        config.validate(raw, source="x.yaml")
    msg = str(e.value)
    assert msg.startswith("x.yaml: ") and f"data.train_split '{split}'" in msg and f"data.source '{source}'" in msg
    assert "data.train_split: train" in msg
    if split == "train_aug" and source == "voc":
        assert "data.source: voc_sbd" in msg
