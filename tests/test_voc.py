"""VOC layout helpers and the torch Datasets: shapes, dtypes, joint augmentation, clear input errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wsss import config
from wsss.data import datasets
from wsss.data import synthetic as syn
from wsss.data.datasets import ClassificationDataset, ImageDataset, SegmentationDataset, denormalize, normalize
from wsss.data.voc import VOC_CLASSES, check_ids, labels_from_mask, load_labels, read_split
from wsss.io import WsssInputError, read_label_png, write_jpeg, write_label_png


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc") / "VOC2012"
    spec = {"seed": 1, "n_train": 6, "n_val": 3, "size_min": 64, "size_max": 96}
    syn.generate(root, config.validate({"data": {"synthetic": spec}})["data"]["synthetic"])
    return root


@pytest.fixture
def copy(tiny: Path, tmp_path: Path) -> Path:
    """A writable copy of the tiny dataset, for tests that break it."""
    dst = tmp_path / "VOC2012"
    shutil.copytree(tiny, dst)
    return dst


def _planted(tmp_path: Path) -> Path:
    """One 20x30 image: left 10 columns red and class 1, the rest dark background (an asymmetric mask)."""
    root = tmp_path / "planted"
    img = np.full((20, 30, 3), 20, np.uint8)
    img[:, :10] = (250, 10, 10)
    mask = np.zeros((20, 30), np.uint8)
    mask[:, :10] = 1
    write_jpeg(root / "JPEGImages" / "a.jpg", img, quality=100)
    write_label_png(root / "SegmentationClass" / "a.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")
    (root / "labels.json").write_text(json.dumps({"a": [1]}))
    return root


# ----------------------------------------------------------------------------------------- basics


def test_classes():
    assert len(VOC_CLASSES) == 21
    assert VOC_CLASSES[0] == "background" and VOC_CLASSES[1] == "aeroplane" and VOC_CLASSES[20] == "tvmonitor"
    assert VOC_CLASSES[15] == "person"


def test_labels_from_mask():
    m = np.array([[0, 3, 255], [20, 3, 0]], np.uint8)
    assert labels_from_mask(m) == [3, 20]
    assert labels_from_mask(np.zeros((4, 4), np.uint8)) == []


def test_normalize_roundtrip():
    img = np.random.default_rng(0).integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    t = normalize(img)
    assert t.shape == (3, 7, 9) and t.dtype == torch.float32
    assert np.array_equal(denormalize(t), img)
    assert np.array_equal(denormalize(t[None])[0], img)
    mean = np.array(datasets.IMAGENET_MEAN) * 255
    assert torch.allclose(normalize(np.broadcast_to(mean, (2, 2, 3))), torch.zeros(3, 2, 2), atol=1e-5)


def test_read_split_and_labels(tiny: Path):
    ids = read_split(tiny, "train")
    assert len(ids) == 6
    labels = load_labels(tiny)
    for i in ids:
        assert labels[i] == labels_from_mask(read_label_png(tiny / "SegmentationClass" / f"{i}.png"))


# ------------------------------------------------------------------------------------------ errors


def test_missing_split(tiny: Path):
    with pytest.raises(WsssInputError, match=r"ImageSets/Segmentation/nope\.txt"):
        read_split(tiny, "nope")


def test_empty_split(copy: Path):
    (copy / "ImageSets" / "Segmentation" / "train.txt").write_text("\n  \n")
    with pytest.raises(WsssInputError, match=r"train\.txt: empty split list"):
        ClassificationDataset(copy, "train", 32, train=True)


def test_missing_image_and_mask(copy: Path):
    (copy / "JPEGImages" / "syn_000002.jpg").unlink()
    with pytest.raises(WsssInputError, match=r"syn_000002\.jpg(.|\n)*split list"):
        ClassificationDataset(copy, "train", 32, train=True)
    (copy / "SegmentationClass" / "syn_000007.png").unlink()
    with pytest.raises(WsssInputError, match=r"syn_000007\.png(.|\n)*val\.txt"):
        SegmentationDataset(copy, "val", 32, train=False)
    check_ids(copy, ["syn_000007"], need_masks=False)  # the image is there


def test_corrupt_jpeg(copy: Path):
    (copy / "JPEGImages" / "syn_000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ClassificationDataset(copy, "train", 32, train=True)
    with pytest.raises(WsssInputError, match=r"syn_000001\.jpg: corrupt"):
        ds[1]


def test_bad_mask_values(copy: Path):
    write_label_png(copy / "SegmentationClass" / "syn_000000.png", np.full((70, 70), 42, np.uint8))
    ds = SegmentationDataset(copy, "train", 32, train=False)
    with pytest.raises(WsssInputError, match=r"syn_000000\.png: mask holds values \[42\]"):
        ds[0]


def test_mask_size_mismatch(copy: Path):
    write_label_png(copy / "SegmentationClass" / "syn_000000.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(WsssInputError, match=r"syn_000000\.png: mask size"):
        SegmentationDataset(copy, "train", 32, train=False)[0]


def test_bad_labels_json(copy: Path):
    (copy / "labels.json").write_text(json.dumps({"syn_000000": [0, 21]}))
    with pytest.raises(WsssInputError, match=r"labels\.json: entry 'syn_000000'"):
        load_labels(copy)
    (copy / "labels.json").write_text(json.dumps({"syn_000000": [3]}))
    with pytest.raises(WsssInputError, match=r"labels\.json: no labels for 5 ids"):
        ClassificationDataset(copy, "train", 32, train=True)


# ----------------------------------------------------------------------------------------- datasets


def test_classification_dataset(tiny: Path):
    labels = load_labels(tiny)
    ds = ClassificationDataset(tiny, "train", 48, train=True, seed=0)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (20,) and item["label"].dtype == torch.float32
    assert (item["label"].nonzero().flatten() + 1).tolist() == labels[item["id"]]
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["label"].shape == (4, 20)
    full = ClassificationDataset(tiny, "val", 48, train=False)[0]
    raw = ImageDataset(tiny, "val")[0]["raw"]
    assert full["image"].shape == (3, *raw.shape[:2])


def test_augmentation_is_reproducible(tiny: Path):
    ds = ClassificationDataset(tiny, "train", 40, train=True, seed=0)
    torch.manual_seed(7)
    a = [ds[i]["image"] for i in range(3)]
    torch.manual_seed(7)
    b = [ds[i]["image"] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = ds[0]["image"]  # next draw: a different augmentation
    assert not torch.equal(a[0], c)
    jittered = ClassificationDataset(tiny, "train", 40, train=True, seed=0, jitter=0.2)
    torch.manual_seed(7)
    assert not torch.equal(jittered[0]["image"], a[0])


def test_segmentation_dataset(tiny: Path):
    ds = SegmentationDataset(tiny, "train", 200, train=True)  # crop larger than any image (<= 96 * 1.1 px)
    for i in range(len(ds)):
        item = ds[i]
        img, lab = item["image"], item["label"]
        assert img.shape == (3, 200, 200) and lab.shape == (200, 200) and lab.dtype == torch.int64
        pad = (img == 0).all(dim=0)
        assert pad.sum() > 0 and (lab[pad] == 255).all()
        assert set(lab.unique().tolist()) <= set(range(21)) | {255}
    ev = SegmentationDataset(tiny, "val", 32, train=False)[0]
    gt = read_label_png(tiny / "SegmentationClass" / f"{ev['id']}.png")
    assert np.array_equal(ev["label"].numpy(), gt) and ev["image"].shape[1:] == gt.shape


def test_flip_and_pad_are_joint(tmp_path: Path):
    root = _planted(tmp_path)
    ds = SegmentationDataset(root, "train", 40, train=True, scale_range=(1.0, 1.0))
    flips = set()
    for s in range(12):
        torch.manual_seed(s)
        item = ds[0]
        lab, red = item["label"].numpy(), denormalize(item["image"])[..., 0].astype(int)
        pad = lab == 255
        assert pad.sum() == 40 * 40 - 20 * 30
        assert (np.abs(denormalize(item["image"])[pad].astype(int) - np.array(datasets.IMAGENET_MEAN) * 255) < 2).all()
        assert (red[lab == 1] > 180).all() and (red[lab == 0] < 100).all()  # JPEG blurs the edge a little
        cols = np.nonzero((lab == 1).any(axis=0))[0]
        flips.add(bool(cols.min() > 0) if cols.size else None)
    assert flips == {True, False}, "both flipped and unflipped crops should occur"


def test_label_dir_override(tiny: Path, tmp_path: Path):
    ids = read_split(tiny, "train")
    pseudo = tmp_path / "pseudo" / "mainnet_baseline_crf"
    for i in ids:
        gt = read_label_png(tiny / "SegmentationClass" / f"{i}.png")
        write_label_png(pseudo / f"{i}.png", np.where(gt == 255, 255, 7).astype(np.uint8))
    item = SegmentationDataset(tiny, "train", 32, train=False, label_dir=pseudo)[0]
    assert set(item["label"].unique().tolist()) <= {7, 255}
    (pseudo / f"{ids[3]}.png").unlink()
    with pytest.raises(WsssInputError, match=rf"{ids[3]}\.png"):
        SegmentationDataset(tiny, "train", 32, train=False, label_dir=pseudo)


def test_image_dataset(tiny: Path):
    ds = ImageDataset(tiny, "val")
    item = ds[0]
    raw = item["raw"]
    assert raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] == 3
    assert torch.equal(item["image"], normalize(raw))
    assert (item["label"].nonzero().flatten() + 1).tolist() == load_labels(tiny)[item["id"]]
    batch = next(iter(DataLoader(ds, batch_size=1)))
    assert batch["raw"].shape == (1, *raw.shape) and batch["id"] == [item["id"]]


# --------------------------------------------------------------------------------- real VOC sample


def _voc_sample() -> Path:
    env = os.environ.get("WSSS_VOC_SAMPLE")
    base = Path(env) if env else Path(__file__).resolve().parents[2] / "shared/data/voc2012-sample"
    root = base / "VOC2012" if (base / "VOC2012").is_dir() else base
    if not (root / "ImageSets" / "Segmentation").is_dir():
        pytest.skip(f"VOC sample not found at {base} (set WSSS_VOC_SAMPLE)")
    return root


@pytest.mark.voc_sample
def test_real_voc_sample():
    root = _voc_sample()
    assert not (root / "labels.json").exists() or load_labels(root)
    ds = SegmentationDataset(root, "train", 321, train=True)
    item = ds[0]
    assert item["image"].shape == (3, 321, 321) and item["label"].shape == (321, 321)
    images = ImageDataset(root, "val")  # labels derived from the masks when labels.json is absent
    for i in range(3):
        gt = SegmentationDataset(root, "val", 321, train=False)[i]
        classes = labels_from_mask(gt["label"].numpy())
        assert classes and all(1 <= c <= 20 for c in classes)
        assert (images[i]["label"].nonzero().flatten() + 1).tolist() == classes
        assert gt["image"].shape[1:] == gt["label"].shape == images[i]["raw"].shape[:2]
        assert (gt["label"] == 255).any(), "real VOC masks carry a 255 border band"
