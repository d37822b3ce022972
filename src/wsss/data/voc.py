"""PASCAL VOC layout: class names, split lists, image-level labels and file checks (numpy and PIL only).

A dataset root holds ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, 255 = ignore),
``ImageSets/Segmentation/<split>.txt`` and ``labels.json`` = {id: [class ids 1..20]}. The torch Datasets,
normalisation and augmentation are in :mod:`wsss.data.datasets`, so that the stages that only read files and
score (CAM evaluation, CRF, data generation) run without importing torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wsss.io import WsssInputError, read_json, read_label_png

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
NUM_CLASSES = len(VOC_CLASSES)  # 21 including background
NUM_FG = NUM_CLASSES - 1  # 20 classifier outputs; output c is VOC class c + 1
IGNORE_INDEX = 255

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------- paths


def image_path(root: PathLike, image_id: str) -> Path:
    return Path(root) / "JPEGImages" / f"{image_id}.jpg"


def mask_path(root: PathLike, image_id: str, label_dir: PathLike | None = None) -> Path:
    """Ground-truth mask path, or ``label_dir/<id>.png`` when masks come from elsewhere (pseudo labels)."""
    folder = Path(label_dir) if label_dir is not None else Path(root) / "SegmentationClass"
    return folder / f"{image_id}.png"


def split_path(root: PathLike, split: str) -> Path:
    return Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt"


# --------------------------------------------------------------------------------------- split / labels


def read_id_list(path: PathLike, *, missing_hint: str, empty_hint: str) -> list[str]:
    """Ids of a list file (first token per non-blank line); a missing or empty file is an error with a hint."""
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: split list not found; {missing_hint}")
    ids = [line.split()[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not ids:
        raise WsssInputError(f"{path}: empty split list; {empty_hint}")
    return ids


def read_split(root: PathLike, split: str) -> list[str]:
    """Image ids of ``root/ImageSets/Segmentation/<split>.txt``."""
    return read_id_list(
        split_path(root, split),
        missing_hint=f"check the dataset root and the split name {split!r}",
        empty_hint="regenerate the dataset or list image ids one per line",
    )


def load_labels(root: PathLike) -> dict[str, list[int]]:
    """Image-level labels from ``root/labels.json``: {id: sorted VOC class ids in 1..20}."""
    path = Path(root) / "labels.json"
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise WsssInputError(f"{path}: expected a JSON object {{id: [class ids 1..20]}}; regenerate it")
    labels: dict[str, list[int]] = {}
    for image_id, classes in raw.items():
        ok = isinstance(classes, list) and all(isinstance(c, int) and 1 <= c <= NUM_FG for c in classes)
        if not ok:
            raise WsssInputError(
                f"{path}: entry {image_id!r} = {classes!r} is not a list of class ids in 1..{NUM_FG}; fix or regenerate it"
            )
        labels[image_id] = sorted(set(classes))
    return labels


def labels_from_mask(mask: np.ndarray) -> list[int]:
    """Sorted foreground class ids (1..20) present in a label map; background and 255 are skipped."""
    values = np.unique(np.asarray(mask))
    return [int(v) for v in values if 1 <= v <= NUM_FG]


def image_labels(root: PathLike, ids: Sequence[str]) -> dict[str, list[int]]:
    """Labels for ``ids`` from ``labels.json``, or derived from the ground-truth masks when there is none.

    The fallback serves raw VOC folders (which ship masks but no labels.json); it reads every mask once.
    """
    root = Path(root)
    if (root / "labels.json").is_file():
        labels = load_labels(root)
        missing = [i for i in ids if i not in labels]
        if missing:
            raise WsssInputError(
                f"{root / 'labels.json'}: no labels for {len(missing)} ids (first: {missing[:5]}); "
                "regenerate labels.json or fix the split list"
            )
        return {i: labels[i] for i in ids}
    check_ids(root, ids, need_masks=True)
    return {i: labels_from_mask(read_label_png(mask_path(root, i))) for i in ids}


def check_ids(
    root: PathLike,
    ids: Sequence[str],
    need_masks: bool,
    split: str | None = None,
    label_dir: PathLike | None = None,
) -> None:
    """Raise :class:`WsssInputError` listing the first missing JPEGs (and masks if ``need_masks``)."""
    missing: list[str] = []
    n_bad = 0
    for image_id in ids:
        paths = [image_path(root, image_id)]
        if need_masks:
            paths.append(mask_path(root, image_id, label_dir))
        absent = [p for p in paths if not p.is_file()]
        if absent:
            n_bad += 1
            missing.extend(str(p) for p in absent)
    if n_bad:
        where = f" {split_path(root, split)}" if split else ""
        shown = "\n  ".join(missing[:5])
        raise WsssInputError(
            f"{n_bad} of {len(ids)} ids have missing files, first:\n  {shown}\n"
            f"fix the split list{where} (drop those ids) or restore the files"
        )
