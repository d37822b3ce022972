"""The torch side of the VOC layout (:mod:`wsss.data.voc`): multi-hot labels, ImageNet normalisation, the joint
training augmentation and the Datasets of the classifiers, the segmentation networks and inference.

Randomness: training augmentation draws from a per-sample numpy generator seeded with
``(seed, index, one 62-bit draw from torch's RNG)``. The torch draw makes each epoch different and is
reproducible under ``torch.manual_seed`` (main process) or a ``DataLoader(generator=...)`` (workers are seeded
from it); ``seed`` separates datasets that would otherwise share draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from wsss.data.voc import (
    IGNORE_INDEX,
    NUM_FG,
    PathLike,
    check_ids,
    image_labels,
    image_path,
    mask_path,
    read_split,
)
from wsss.io import WsssInputError, read_image, read_label_png

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD = np.array(IMAGENET_STD, dtype=np.float32)


def multi_hot(classes: Sequence[int]) -> torch.Tensor:
    """Float [20] vector; entry ``c - 1`` is 1 for each VOC class id ``c`` in ``classes``."""
    vec = torch.zeros(NUM_FG, dtype=torch.float32)
    for c in classes:
        vec[c - 1] = 1.0
    return vec


# ------------------------------------------------------------------------------------- normalisation


def normalize(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 RGB → float32 [3,H,W] tensor normalised with the ImageNet mean/std."""
    return torch.from_numpy(_normalize_hwc(img).transpose(2, 0, 1).copy())


def denormalize(t: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`normalize`: [3,H,W] (or [N,3,H,W]) tensor → uint8 HxWx3 (or NxHxWx3) array."""
    x = t.detach().cpu().float().numpy()
    x = np.moveaxis(x, -3, -1) * _STD + _MEAN
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def _normalize_hwc(img: np.ndarray) -> np.ndarray:
    """uint8/float 0..255 HxWx3 → normalised float32 HxWx3 (the pad value 0 then equals the mean colour)."""
    return (np.asarray(img, dtype=np.float32) / 255.0 - _MEAN) / _STD


# ----------------------------------------------------------------------------------------- augmentation


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """Per-sample generator: ``seed`` and ``index`` plus one draw from torch's (seeded) RNG."""
    draw = int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([int(seed), int(index), draw])


def _rescale(img: np.ndarray, mask: np.ndarray | None, s: float):
    """Resize by ``s``: bilinear for the image, nearest for the mask."""
    h, w = img.shape[:2]
    size = (max(1, round(w * s)), max(1, round(h * s)))
    if size == (w, h):
        return img, mask
    img = np.asarray(Image.fromarray(img).resize(size, Image.BILINEAR))
    if mask is not None:
        if mask.ndim == 3:  # several label maps, augmented alike
            mask = np.stack(
                [np.asarray(Image.fromarray(m).resize(size, Image.NEAREST)) for m in mask.transpose(2, 0, 1)], -1
            )
        else:
            mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return img, mask


def _jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Mild brightness / contrast / saturation jitter, factors in ``1 ± strength``; returns float 0..255."""
    x = img.astype(np.float32)
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    x = x * b
    x = (x - x.mean()) * c + x.mean()
    grey = x.mean(axis=2, keepdims=True)
    x = (x - grey) * s + grey
    return np.clip(x, 0, 255)


def _pad_crop(img: np.ndarray, mask: np.ndarray | None, crop: int, rng: np.random.Generator):
    """Pad bottom/right to at least ``crop`` (image with 0 = mean after normalising, mask with 255), then crop."""
    h, w = img.shape[:2]
    ph, pw = max(crop - h, 0), max(crop - w, 0)
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
        if mask is not None:
            mask = np.pad(mask, ((0, ph), (0, pw)) + ((0, 0),) * (mask.ndim - 2), constant_values=IGNORE_INDEX)
    h, w = img.shape[:2]
    y0 = int(rng.integers(0, h - crop + 1))
    x0 = int(rng.integers(0, w - crop + 1))
    img = img[y0 : y0 + crop, x0 : x0 + crop]
    if mask is not None:
        mask = mask[y0 : y0 + crop, x0 : x0 + crop]
    return img, mask


def augment(
    img: np.ndarray,
    mask: np.ndarray | None,
    crop: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.9, 1.1),
    jitter: float = 0.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Joint train augmentation: random scale, colour jitter, normalise, pad + random crop, horizontal flip.

    Returns the normalised float32 HxWx3 image and the uint8 mask (or None), both ``crop`` x ``crop``. ``mask`` may
    be HxWxM: M label maps augmented alike (the noise experiment's corrupted labels and their truth).
    """
    img, mask = _rescale(img, mask, float(rng.uniform(*scale_range)))
    x = _jitter(img, jitter, rng) if jitter > 0 else img
    x, mask = _pad_crop(_normalize_hwc(x), mask, crop, rng)
    if rng.random() < 0.5:
        x = x[:, ::-1]
        mask = mask[:, ::-1] if mask is not None else None
    return x, mask


def _chw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


# --------------------------------------------------------------------------------------------- datasets


def _labelled_ids(root: PathLike, split: str) -> tuple[list[str], dict[str, list[int]]]:
    """The ids of ``split`` (their images checked) and their image-level labels."""
    ids = read_split(root, split)
    check_ids(root, ids, need_masks=False, split=split)
    return ids, image_labels(root, ids)


class ClassificationDataset(Dataset):
    """Image + multi-hot label (float [20]) + id, for CAM classifiers.

    ``train=True``: augmented ``crop`` x ``crop`` crops. ``train=False``: the full normalised image
    (sizes differ, so use batch size 1). ``two_views=True`` (training only) adds ``image_p``, a second augmentation
    of the same image drawn after the first from the same per-sample generator (so ``image`` is the crop a
    one-view dataset gives): the authors' two views a and p (issue 16).
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        crop: int,
        train: bool,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        jitter: float = 0.0,
        two_views: bool = False,
    ):
        self.root, self.crop, self.train, self.seed = Path(root), int(crop), bool(train), int(seed)
        self.scale_range, self.jitter = tuple(scale_range), float(jitter)
        if two_views and not self.train:
            raise ValueError("two_views needs train=True (the views are two augmentations)")
        self.two_views = bool(two_views)
        self.ids, self.labels = _labelled_ids(root, split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        img = read_image(image_path(self.root, image_id))
        if self.train:
            rng = sample_rng(self.seed, index)
            x, _ = augment(img, None, self.crop, rng, self.scale_range, self.jitter)
            image = _chw(x)
            if self.two_views:
                p, _ = augment(img, None, self.crop, rng, self.scale_range, self.jitter)
                return {"image": image, "image_p": _chw(p), "label": multi_hot(self.labels[image_id]), "id": image_id}
        else:
            image = normalize(img)
        return {"image": image, "label": multi_hot(self.labels[image_id]), "id": image_id}


class SegmentationDataset(Dataset):
    """Image + label map (long [H,W], 255 = ignore) + id.

    ``label_dir`` reads masks from ``label_dir/<id>.png`` (e.g. pseudo labels) instead of
    ``SegmentationClass``. ``train=True`` applies the joint augmentation of :func:`augment`. ``with_gt=True`` adds
    ``gt``, the ground-truth mask augmented alike, and ``classes``, the image labels (float [20]): the noise
    experiment's corrupted labels beside their truth.
    """

    def __init__(
        self,
        root: PathLike,
        split: str,
        crop: int,
        train: bool,
        label_dir: PathLike | None = None,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.9, 1.1),
        jitter: float = 0.0,
        with_gt: bool = False,
    ):
        self.root, self.crop, self.train, self.seed = Path(root), int(crop), bool(train), int(seed)
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.scale_range, self.jitter = tuple(scale_range), float(jitter)
        self.with_gt = bool(with_gt)
        self.ids = read_split(root, split)
        check_ids(root, self.ids, need_masks=True, split=split, label_dir=self.label_dir)
        if self.with_gt:
            check_ids(root, self.ids, need_masks=True, split=split)
            self.image_labels = _labelled_ids(root, split)[1]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        ipath, mpath = image_path(self.root, image_id), mask_path(self.root, image_id, self.label_dir)
        img, mask = read_image(ipath), read_label_png(mpath)
        if img.shape[:2] != mask.shape:
            raise WsssInputError(
                f"{mpath}: mask size {mask.shape} differs from image {ipath} size {img.shape[:2]}; regenerate the mask"
            )
        if self.with_gt:  # the ground truth beside the labels, augmented alike
            gpath = mask_path(self.root, image_id)
            gt = read_label_png(gpath)
            if gt.shape != mask.shape:
                raise WsssInputError(
                    f"{mpath}: mask size {mask.shape} differs from the ground truth {gpath} {gt.shape}"
                )
            mask = np.stack([mask, gt], -1)
        if self.train:
            x, mask = augment(img, mask, self.crop, sample_rng(self.seed, index), self.scale_range, self.jitter)
            image = _chw(x)
        else:
            image = normalize(img)
        out = {"image": image, "id": image_id}
        if self.with_gt:
            mask, gt = mask[..., 0], mask[..., 1]
            out["gt"] = torch.from_numpy(np.ascontiguousarray(gt).astype(np.int64))
            out["classes"] = multi_hot(self.image_labels[image_id])
        out["label"] = torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))
        return out


class ImageDataset(Dataset):
    """Full-size images for inference: normalised tensor, raw uint8 HxWx3 array, label vector [20], id."""

    def __init__(self, root: PathLike, split: str):
        self.root = Path(root)
        self.ids, self.labels = _labelled_ids(root, split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        raw = read_image(image_path(self.root, image_id))
        return {"image": normalize(raw), "raw": raw, "label": multi_hot(self.labels[image_id]), "id": image_id}
