"""Real VOC 2012 + SBD path: fetch → extract → convert SBD → prepare_voc, on tiny archives in the real layouts."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat

import numpy as np
import pytest
import scipy.io
from test_download import (
    OBJECTS,
    SBD_ONLY,
    SBD_TRAIN,
    SBD_VAL,
    TRAIN_AUG,
    VOC_TRAIN,
    VOC_VAL,
    make_mask,
    xml_classes,
)

from wsss.data import download as dl
from wsss.data.datasets import ClassificationDataset
from wsss.data.sbd import convert_sbd, load_sbd_mask, read_sbd_split
from wsss.data.voc import labels_from_mask, load_labels, read_split
from wsss.data.voc_prepare import EXPECTED_COUNTS, from_existing, prepare_voc, read_xml_classes
from wsss.io import WsssInputError, read_label_png


@pytest.fixture(scope="module")
def extracted(archives, tmp_path_factory):
    root = tmp_path_factory.mktemp("extracted")
    voc = dl.extract(archives["voc_tar"], root / "voc") / "VOCdevkit" / "VOC2012"
    sbd = dl.extract(archives["sbd_tgz"], root / "sbd") / "benchmark_RELEASE"
    return voc, sbd


def test_whole_path_fetch_extract_convert_prepare(archives, server, tmp_path):
    raw = tmp_path / "raw"
    voc_tar = dl.fetch(
        "voc2012_trainval",
        raw,
        urls=[f"{server.base}/drop/{archives['voc_tar'].name}"],
        md5=archives["voc_md5"],
        timeout=5,
    )
    sbd_tgz = dl.fetch("sbd", raw, urls=[f"{server.base}/range/benchmark.tgz"], md5=archives["sbd_md5"], timeout=5)
    voc = dl.extract(voc_tar, tmp_path / "ext" / "voc") / dl.ARCHIVES["voc2012_trainval"]["root"]
    sbd = dl.extract(sbd_tgz, tmp_path / "ext" / "sbd") / dl.ARCHIVES["sbd"]["root"]

    # SBD .mat -> PNG equals the .mat contents
    n = convert_sbd(sbd, tmp_path / "sbd_png")
    assert n == len(set(SBD_TRAIN) | set(SBD_VAL))
    for image_id, seg in archives["sbd_masks"].items():
        assert np.array_equal(read_label_png(tmp_path / "sbd_png" / f"{image_id}.png"), seg)
        mat = scipy.io.loadmat(sbd / "dataset" / "cls" / f"{image_id}.mat", struct_as_record=False, squeeze_me=True)
        assert np.array_equal(mat["GTcls"].Segmentation, seg)

    out = tmp_path / "data" / "VOC2012"
    report = prepare_voc(voc, sbd, out)

    # splits and the train_aug arithmetic
    assert read_split(out, "train") == VOC_TRAIN and read_split(out, "val") == VOC_VAL
    assert read_split(out, "train_aug") == TRAIN_AUG and len(TRAIN_AUG) == 6
    assert not set(TRAIN_AUG) & set(VOC_VAL)
    assert report["counts"] == {
        "train": 3,
        "val": 3,
        "train_aug": 6,
        "sbd_train": 4,
        "sbd_val": 3,
        "labelled_images": 9,
    }

    # labels.json = the XML classes (difficult included, person parts ignored), for train_aug ∪ val ∪ train only
    labels = load_labels(out)
    assert set(labels) == set(TRAIN_AUG) | set(VOC_VAL) | set(VOC_TRAIN)
    assert all(labels[i] == xml_classes(i) for i in labels)
    assert labels["2010_000100"] == [9, 18] and labels["2007_000033"] == [15]
    assert report["difficult_only_image_classes"] == 1 and report["unknown_object_names"] == {}
    assert "difficult" in report["label_convention"]

    # the XML/mask disagreement is reported, not dropped
    dis = json.loads((out / "label_disagreements.json").read_text())
    assert dis == [
        {
            "id": "2007_000032",
            "xml": [8, 12],
            "mask": [8],
            "mask_source": "SegmentationClass",
            "xml_only": [12],
            "mask_only": [],
        }
    ]
    assert report["cross_check"]["disagreements"] == 1 and report["cross_check"]["images_checked"] == 9

    # layout: links to the VOC folders; SegmentationClassAug = SBD PNGs with VOC taking precedence
    for d in ("JPEGImages", "SegmentationClass"):
        assert (out / d).is_symlink() and (out / d / os.listdir(voc / d)[0]).is_file()
    aug = out / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN + VOC_VAL))
    for i in SBD_ONLY:
        assert np.array_equal(read_label_png(aug / f"{i}.png"), archives["sbd_masks"][i])
    for i in set(VOC_TRAIN + VOC_VAL) & (set(SBD_TRAIN) | set(SBD_VAL)):  # in both: the VOC mask (255 border)
        assert np.array_equal(read_label_png(aug / f"{i}.png"), make_mask(i, border=True))
    assert report["segmentation_class_aug"] == {"from_sbd": 7, "from_voc": 6, "files": 9}
    assert "VOC takes precedence" in report["mask_precedence"]
    assert json.loads((out / "prepare_report.json").read_text())["counts"]["train_aug"] == 6

    # the folder serves the existing datasets
    ds = ClassificationDataset(out, "train_aug", crop=8, train=False)
    assert len(ds) == 6 and ds[0]["image"].shape[1:] == (16, 20)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_sbd_split_reader_and_mask_loader(extracted):
    _, sbd = extracted
    assert read_sbd_split(sbd, "train") == SBD_TRAIN and read_sbd_split(sbd / "dataset", "val") == SBD_VAL
    with pytest.raises(WsssInputError, match="unknown"):
        read_sbd_split(sbd, "test")
    with pytest.raises(WsssInputError, match="benchmark_RELEASE"):
        read_sbd_split(sbd.parent.parent, "train")


def test_corrupt_mat_is_named(tmp_path):
    bad = tmp_path / "dataset" / "cls" / "2010_000100.mat"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"MATLAB 5.0 MAT-file garbage")
    with pytest.raises(WsssInputError, match="2010_000100.mat"):
        load_sbd_mask(bad)
    with pytest.raises(WsssInputError, match="2010_000100.mat"):
        convert_sbd(tmp_path, tmp_path / "png")
    assert not (tmp_path / "png").exists()


def test_read_xml_classes_conventions(extracted):
    voc, _ = extracted
    info = read_xml_classes(voc / "Annotations" / "2010_000100.xml")
    assert info == {"classes": [9, 18], "difficult_only": [9], "unknown": []}
    assert read_xml_classes(voc / "Annotations" / "2007_000033.xml")["classes"] == [15]  # parts are not objects


def test_from_existing_accepts_any_level_and_validates(extracted, tmp_path):
    voc, _ = extracted
    assert from_existing(voc) == voc
    assert from_existing(voc.parent) == voc and from_existing(voc.parent.parent) == voc
    with pytest.raises(WsssInputError, match="VOCdevkit/VOC2012"):
        from_existing(tmp_path)
    broken = tmp_path / "VOC2012"
    shutil.copytree(voc, broken, ignore=shutil.ignore_patterns("SegmentationClass"))
    with pytest.raises(WsssInputError, match="SegmentationClass"):
        from_existing(broken)
    shutil.rmtree(broken)
    shutil.copytree(voc, broken, ignore=shutil.ignore_patterns("Annotations"))
    assert from_existing(broken) == broken  # no Annotations/: the labels come from the masks
    shutil.rmtree(broken)
    shutil.copytree(voc, broken)
    (broken / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(WsssInputError, match="val.txt"):
        from_existing(broken)


def test_expect_counts_gives_a_clear_error(extracted, tmp_path):
    voc, sbd = extracted
    with pytest.raises(WsssInputError) as e:
        prepare_voc(voc, sbd, tmp_path / "out", expect_counts=True)
    msg = str(e.value)
    assert "train_aug: 6 ids, expected 10582" in msg and "md5" in msg
    assert not (tmp_path / "out").exists()
    assert EXPECTED_COUNTS == {"train": 1464, "val": 1449, "train_aug": 10582}


def test_voc_only_with_copies(extracted, tmp_path):
    voc, _ = extracted
    out = tmp_path / "out"
    report = prepare_voc(voc, None, out, link_mode="copy", cross_check=False)
    assert report["link_mode"] == {"JPEGImages": "copy", "SegmentationClass": "copy"}
    assert not (out / "JPEGImages").is_symlink() and len(list((out / "JPEGImages").iterdir())) == len(OBJECTS)
    assert not (out / "SegmentationClassAug").exists() and not (out / "ImageSets/Segmentation/train_aug.txt").exists()
    assert set(load_labels(out)) == set(VOC_TRAIN + VOC_VAL)
    assert report["cross_check"]["done"] is False


def test_missing_jpeg_for_an_sbd_id_is_reported(extracted, tmp_path):
    voc, sbd = extracted
    voc2 = tmp_path / "VOC2012"
    shutil.copytree(voc, voc2)
    (voc2 / "JPEGImages" / "2011_000102.jpg").unlink()
    with pytest.raises(WsssInputError, match="2011_000102.jpg"):
        prepare_voc(voc2, sbd, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ issue 15


def test_without_annotations_the_labels_come_from_the_masks(extracted, tmp_path, caplog):
    """A VOCdevkit without Annotations/ (e.g. a subset holding images and masks only) is prepared with the image
    labels of its masks (SegmentationClass, else SBD's), said in the log and in the report."""
    voc, sbd = extracted
    bare = tmp_path / "VOC2012"
    shutil.copytree(voc, bare, ignore=shutil.ignore_patterns("Annotations"))
    with caplog.at_level(logging.INFO, logger="wsss"):
        report = prepare_voc(bare, None, tmp_path / "out")
    labels = load_labels(tmp_path / "out")
    assert labels == {i: labels_from_mask(make_mask(i, border=True)) for i in VOC_TRAIN + VOC_VAL}
    assert labels["2007_000032"] == [8]  # the mask's cat; the XML's dog is not there to disagree
    assert report["label_source"] == "mask" and "SegmentationClass" in report["label_convention"]
    assert report["cross_check"]["done"] is False and report["difficult_only_image_classes"] is None
    assert "no Annotations/" in caplog.text and "from the segmentation masks" in caplog.text
    assert json.loads((tmp_path / "out" / "prepare_report.json").read_text())["label_source"] == "mask"

    with_sbd = prepare_voc(bare, sbd, tmp_path / "out_sbd")  # SBD-only ids: the labels of their SBD masks
    labels = load_labels(tmp_path / "out_sbd")
    assert set(labels) == set(TRAIN_AUG) | set(VOC_VAL) | set(VOC_TRAIN)
    assert all(labels[i] == labels_from_mask(archives_mask) for i, archives_mask in _sbd_masks(sbd).items())
    assert with_sbd["label_source"] == "mask" and "SegmentationClassAug" in with_sbd["label_convention"]
    assert prepare_voc(voc, None, tmp_path / "out_xml")["label_source"] == "xml"  # Annotations/ present: the XML


def _sbd_masks(sbd) -> dict:
    return {i: load_sbd_mask(sbd / "dataset" / "cls" / f"{i}.mat") for i in SBD_ONLY}


def test_copies_get_the_modes_of_the_umask_not_of_the_source(extracted, tmp_path):
    """A private (0600) or read-only (0444) source file is copied as a file others can read (0644 under 022)."""
    voc, _ = extracted
    src = tmp_path / "VOC2012"
    shutil.copytree(voc, src)
    os.chmod(src / "JPEGImages" / "2007_000032.jpg", 0o600)
    os.chmod(src / "SegmentationClass" / "2007_000032.png", 0o444)
    old = os.umask(0o022)
    try:
        prepare_voc(src, None, tmp_path / "out", link_mode="copy")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    wrong = {
        str(p): oct(stat.S_IMODE(p.stat().st_mode))
        for p in [out, *out.rglob("*")]
        if stat.S_IMODE(p.stat().st_mode) != (0o755 if p.is_dir() else 0o644)
    }
    assert wrong == {}


def _test_images(root, ids, jpeg):
    """A VOC2012test.tar layout under ``root``: JPEGImages/<id>.jpg (copies of ``jpeg``), ImageSets/Segmentation/test.txt."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for i in ids:
        if not (root / "JPEGImages" / f"{i}.jpg").exists():
            shutil.copy(jpeg, root / "JPEGImages" / f"{i}.jpg")
    (root / "ImageSets" / "Segmentation" / "test.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def test_the_test_split_is_prepared_when_its_images_are_given(extracted, tmp_path):
    voc, _ = extracted
    jpeg = voc / "JPEGImages" / "2011_000200.jpg"  # in JPEGImages, in no list
    # both archives extracted into one VOCdevkit (the usual way): the one JPEGImages link serves the test ids too
    merged = tmp_path / "merged" / "VOC2012"
    shutil.copytree(voc, merged)
    _test_images(merged, ["2011_000200"], jpeg)
    report = prepare_voc(merged, None, tmp_path / "out", test_root=merged)
    out = tmp_path / "out"
    assert read_split(out, "test") == ["2011_000200"] and report["counts"]["test"] == 1
    assert "2011_000200" not in load_labels(out)  # the test split has no labels (and no masks)
    assert (out / "JPEGImages").is_symlink()
    # a separate VOC2012test folder: JPEGImages gathers both folders' images, one link per file
    test = _test_images(tmp_path / "test" / "VOCdevkit" / "VOC2012", ["2012_900001", "2012_900002"], jpeg)
    report = prepare_voc(voc, None, tmp_path / "out2", test_root=test.parent.parent)
    out2 = tmp_path / "out2"
    assert read_split(out2, "test") == ["2012_900001", "2012_900002"]
    assert not (out2 / "JPEGImages").is_symlink()
    names = {p.name for p in (out2 / "JPEGImages").iterdir()}
    assert names == {p.name for p in (voc / "JPEGImages").iterdir()} | {"2012_900001.jpg", "2012_900002.jpg"}
    assert (out2 / "JPEGImages" / "2012_900001.jpg").read_bytes() == jpeg.read_bytes()
    assert report["link_mode"]["JPEGImages"] == "symlink"
    # a test id without its image, or one of the trainval lists, is refused naming the file
    (test / "JPEGImages" / "2012_900002.jpg").unlink()
    with pytest.raises(WsssInputError, match="2012_900002.jpg"):
        prepare_voc(voc, None, tmp_path / "out3", test_root=test)
    _test_images(test, ["2012_900001", VOC_VAL[0]], jpeg)
    with pytest.raises(WsssInputError, match=rf"test\.txt.*{VOC_VAL[0]}"):
        prepare_voc(voc, None, tmp_path / "out3", test_root=test)
    assert not (tmp_path / "out3").exists()


def test_the_stage_gets_the_test_images_from_the_config(extracted, tmp_path):
    """data.voc.test_extracted_root is prepare_voc's optional input voc_test (rule and CLI), given only when set."""
    import yaml

    from wsss import cli, config, registry

    voc, _ = extracted
    test = _test_images(tmp_path / "VOC2012test", ["2012_900001"], voc / "JPEGImages" / "2011_000200.jpg")
    raw = {
        "data": {"source": "voc", "voc": {"extracted_root": str(voc), "expect_counts": False}},
        "segment": {"export_split": "val"},
    }
    stage = registry.STAGES["prepare_voc"]
    assert "voc_test" not in registry.input_paths(stage, config.validate(raw), {})
    raw["data"]["voc"]["test_extracted_root"] = str(test)
    raw["segment"]["export_split"] = "test"
    assert registry.input_paths(stage, config.validate(raw), {})["voc_test"] == str(test)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out, metrics = tmp_path / "data" / "VOC2012", tmp_path / "data.json"
    argv = ["prepare_voc", "--config", str(tmp_path / "c.yaml"), "--voc", str(voc), "--data", str(out)]
    assert cli.main([*argv, "--metrics", str(metrics), registry.option("voc_test"), str(test)]) == 0
    assert read_split(out, "test") == ["2012_900001"]
    assert json.loads(metrics.read_text())["counts"]["test"] == 1


def test_real_voc_photographs_without_annotations_get_irns_labels(tmp_path):
    """The 817 real VOC 2012 images of ../shared (no Annotations/, no SBD): prepared with the masks' labels, which
    equal IRN's cls_labels.npy for every id (the folder's image_labels_irn.json), in folders others can read."""
    from pathlib import Path

    from wsss.data.voc import VOC_CLASSES

    repo = Path(__file__).resolve().parents[1]
    root = Path(os.environ.get("WSSS_VOC_MINI", repo.parent / "shared/data/voc2012-mini")) / "VOC2012"
    if not (root / "image_labels_irn.json").is_file():
        pytest.skip(f"real VOC subset not found at {root} (set WSSS_VOC_MINI to the voc2012-mini folder)")
    old = os.umask(0o022)
    try:
        report = prepare_voc(root, None, tmp_path / "VOC2012")
    finally:
        os.umask(old)
    assert report["label_source"] == "mask" and report["counts"] == {"train": 546, "val": 271, "labelled_images": 817}
    irn = json.loads((root / "image_labels_irn.json").read_text())
    labels = load_labels(tmp_path / "VOC2012")
    assert {i: sorted(VOC_CLASSES[c] for c in cs) for i, cs in labels.items()} == {i: sorted(n) for i, n in irn.items()}
    assert stat.S_IMODE((tmp_path / "VOC2012").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "VOC2012" / "labels.json").stat().st_mode) == 0o644


# ------------------------------------------------------------------------------ issue 15: a subset named by a rule


def _reordered(voc, dst):
    """A copy of the extracted VOC whose split lists are in reverse order (the rule keeps a list's own order)."""
    shutil.copytree(voc, dst)
    lists = dst / "ImageSets" / "Segmentation"
    for split, ids in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        (lists / f"{split}.txt").write_text("".join(f"{i}\n" for i in reversed(ids)))
    return dst


def test_max_ids_per_split_keeps_the_first_ids_of_each_list(extracted, tmp_path):
    """The first N ids of train and val in their lists' order; train_aug holds the kept train (+ the first other
    ids, sorted) and no val id; labels, SBD masks and required files only for the kept ids; the rule and the counts
    before and after in prepare_report.json; N >= every list gives the uncut folder."""
    voc, sbd = extracted
    src = _reordered(voc, tmp_path / "VOC2012")
    out = tmp_path / "out2"
    report = prepare_voc(src, sbd, out, max_ids_per_split=2)
    train, val = VOC_TRAIN[::-1][:2], VOC_VAL[::-1][:2]
    assert read_split(out, "train") == train and read_split(out, "val") == val
    assert read_split(out, "train_aug") == sorted(train)  # N = 2: the kept train ids alone
    assert set(load_labels(out)) == set(train) | set(val)
    assert report["counts"] == {
        "train": 2,
        "val": 2,
        "train_aug": 2,
        "sbd_train": 4,
        "sbd_val": 3,
        "labelled_images": 4,
    }
    assert report["subset"]["max_ids_per_split"] == 2 and "first N ids" in report["subset"]["rule"]
    assert report["subset"]["source_counts"] == {"train": 3, "val": 3, "train_aug": 6}
    assert json.loads((out / "prepare_report.json").read_text())["subset"] == report["subset"]

    report = prepare_voc(src, sbd, tmp_path / "out4", max_ids_per_split=4)
    aug = read_split(tmp_path / "out4", "train_aug")
    assert aug == sorted(VOC_TRAIN + ["2010_000100"])  # all 3 train ids + the first SBD-only id (sorted order)
    assert not set(aug) & set(VOC_VAL) and set(read_split(tmp_path / "out4", "train")) <= set(aug)
    assert report["segmentation_class_aug"]["from_sbd"] == 3  # 2007_000033, 2007_000039, 2010_000100 only
    assert set(load_labels(tmp_path / "out4")) == set(aug) | set(VOC_VAL)

    whole = prepare_voc(voc, sbd, tmp_path / "all", max_ids_per_split=100)
    assert {s: read_split(tmp_path / "all", s) for s in ("train", "val", "train_aug")} == {
        "train": VOC_TRAIN,
        "val": VOC_VAL,
        "train_aug": TRAIN_AUG,
    }
    assert whole["counts"] == {**whole["subset"]["source_counts"], "sbd_train": 4, "sbd_val": 3, "labelled_images": 9}
    assert prepare_voc(voc, sbd, tmp_path / "uncut")["subset"] is None


def test_max_ids_per_split_may_name_each_split(extracted, tmp_path):
    """A mapping {split: N}: each named split keeps its own first N ids, a split it leaves out keeps all of them
    (train_aug here, which still holds every kept train id); the mapping is recorded as given; N < 1 is refused."""
    voc, sbd = extracted
    src = _reordered(voc, tmp_path / "VOC2012")
    out = tmp_path / "out"
    report = prepare_voc(src, sbd, out, max_ids_per_split={"train": 1, "val": 2})
    assert read_split(out, "train") == VOC_TRAIN[::-1][:1] and read_split(out, "val") == VOC_VAL[::-1][:2]
    assert read_split(out, "train_aug") == TRAIN_AUG  # not named: uncut
    assert report["counts"]["train"] == 1 and report["counts"]["val"] == 2 and report["counts"]["train_aug"] == 6
    assert report["subset"]["max_ids_per_split"] == {"train": 1, "val": 2}
    report = prepare_voc(src, sbd, tmp_path / "aug", max_ids_per_split={"train": 2, "train_aug": 3})
    aug = read_split(tmp_path / "aug", "train_aug")
    assert len(aug) == 3 and set(VOC_TRAIN[::-1][:2]) <= set(aug) and not set(aug) & set(VOC_VAL)
    assert read_split(tmp_path / "aug", "val") == VOC_VAL[::-1]
    with pytest.raises(WsssInputError, match=r"keep at least one id of val"):
        prepare_voc(src, sbd, tmp_path / "bad", max_ids_per_split={"val": 0})


def test_only_the_kept_ids_need_their_files(extracted, tmp_path):
    """A folder missing the image (and XML) of an id the rule drops is prepared; without the rule it is refused."""
    voc, _ = extracted
    src = tmp_path / "VOC2012"
    shutil.copytree(voc, src)
    dropped = VOC_TRAIN[-1]
    (src / "JPEGImages" / f"{dropped}.jpg").unlink()
    (src / "Annotations" / f"{dropped}.xml").unlink()
    report = prepare_voc(src, None, tmp_path / "out", max_ids_per_split=2)
    assert read_split(tmp_path / "out", "train") == VOC_TRAIN[:2] and report["counts"]["labelled_images"] == 4
    with pytest.raises(WsssInputError, match=f"{dropped}.jpg"):
        prepare_voc(src, None, tmp_path / "out_all")


def test_expect_counts_checks_the_source_lists_before_the_cut(extracted, tmp_path):
    """expect_counts verifies the lists as downloaded, not the cut ones; the message names both keys."""
    voc, sbd = extracted
    with pytest.raises(WsssInputError) as e:
        prepare_voc(voc, sbd, tmp_path / "out", expect_counts=True, max_ids_per_split=2)
    msg = str(e.value)
    assert "train: 3 ids, expected 1464" in msg  # the source count, not the kept 2
    assert "data.voc.max_ids_per_split = 2" in msg and "data.voc.expect_counts: false" in msg
    assert not (tmp_path / "out").exists()


def test_the_rule_cuts_the_test_split_too(extracted, tmp_path):
    voc, _ = extracted
    test = _test_images(
        tmp_path / "test" / "VOC2012", ["2012_900001", "2012_900002"], voc / "JPEGImages" / "2011_000200.jpg"
    )
    (test / "JPEGImages" / "2012_900002.jpg").unlink()  # dropped by the rule: not needed
    report = prepare_voc(voc, None, tmp_path / "out", test_root=test, max_ids_per_split=1)
    assert read_split(tmp_path / "out", "test") == ["2012_900001"] and report["counts"]["test"] == 1
    assert report["subset"]["source_counts"]["test"] == 2


def test_the_stage_reads_max_ids_per_split_from_its_declaration(extracted, tmp_path):
    """data.voc.max_ids_per_split is a declared key of prepare_voc (its change re-runs exactly that stage and what
    follows, tests/test_registry.py) and reaches prepare_voc through the CLI."""
    import yaml

    from wsss import cli, config, registry

    voc, _ = extracted
    raw = {
        "data": {"source": "voc", "voc": {"extracted_root": str(voc), "expect_counts": False, "max_ids_per_split": 1}}
    }
    cfg = config.validate(raw)
    assert "data.voc.max_ids_per_split" in registry.STAGES["prepare_voc"].keys(cfg, {})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out, metrics = tmp_path / "data" / "VOC2012", tmp_path / "data.json"
    argv = ["prepare_voc", "--config", str(tmp_path / "c.yaml"), "--voc", str(voc), "--data", str(out)]
    assert cli.main([*argv, "--metrics", str(metrics)]) == 0
    assert read_split(out, "train") == VOC_TRAIN[:1] and read_split(out, "val") == VOC_VAL[:1]
    assert json.loads(metrics.read_text())["subset"]["max_ids_per_split"] == 1


def test_the_rule_on_the_real_voc_photographs(tmp_path):
    """../shared's 817 real images under config/voc-cpu.yaml's rule: the first N train ids (of 546) in train.txt's
    order, the first N val ids (of 271), labels for those only, equal to IRN's: the same rule as on a full download."""
    from pathlib import Path

    import yaml

    from wsss.data.voc import VOC_CLASSES

    repo = Path(__file__).resolve().parents[1]
    root = Path(os.environ.get("WSSS_VOC_MINI", repo.parent / "shared/data/voc2012-mini")) / "VOC2012"
    if not (root / "image_labels_irn.json").is_file():
        pytest.skip(f"real VOC subset not found at {root} (set WSSS_VOC_MINI to the voc2012-mini folder)")
    n = yaml.safe_load((repo / "config/voc-cpu.yaml").read_text())["data"]["voc"]["max_ids_per_split"]
    lists = {s: (root / f"ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val")}
    kept = {s: ids[: n[s]] for s, ids in lists.items()}  # the config names N per split
    report = prepare_voc(root, None, tmp_path / "VOC2012", max_ids_per_split=n)
    out = tmp_path / "VOC2012"
    assert {s: read_split(out, s) for s in kept} == kept and len(kept["train"]) == min(n["train"], 546)
    assert report["counts"] == {
        **{s: len(ids) for s, ids in kept.items()},
        "labelled_images": sum(map(len, kept.values())),
    }
    assert report["subset"]["source_counts"] == {"train": 546, "val": 271} and report["label_source"] == "mask"
    labels = load_labels(out)
    irn = json.loads((root / "image_labels_irn.json").read_text())
    assert set(labels) == set(kept["train"]) | set(kept["val"])
    assert {i: sorted(VOC_CLASSES[c] for c in cs) for i, cs in labels.items()} == {i: sorted(irn[i]) for i in labels}
