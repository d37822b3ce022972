"""Real VOC 2012 + SBD path: fetch → extract → convert SBD → prepare_voc, on tiny archives in the real layouts."""

from __future__ import annotations

import json
import os
import shutil

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
from wsss.data.voc import load_labels, read_split
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
    shutil.copytree(voc, broken, ignore=shutil.ignore_patterns("Annotations"))
    with pytest.raises(WsssInputError, match="Annotations"):
        from_existing(broken)
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
