"""SBD (Hariharan et al. 2011, ``benchmark.tgz``): split lists and the ``.mat`` → palette PNG conversion.

``benchmark_RELEASE/dataset/`` holds ``img/<id>.jpg``, ``cls/<id>.mat`` (MATLAB struct ``GTcls`` with fields
``Segmentation`` = uint8 class ids 0..20, ``Boundaries`` = 20 sparse edge maps, ``CategoriesPresent``) and
``train.txt`` / ``val.txt``. The conversion is that of visinf/1-stage-wseg ``tools/convert_sbd.py``
(``GTcls.Segmentation`` saved as a PNG), here with the VOC palette and written atomically at folder level,
instead of the third-party ``SegmentationClassAug.zip`` (peers.md §2.2, §3.2).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.voc import NUM_CLASSES, read_id_list
from wsss.io import WsssInputError, atomic_dir, voc_palette

PathLike = str | os.PathLike

SBD_SPLITS = ("train", "val")
_PALETTE = voc_palette()


def sbd_dataset_dir(sbd_root: PathLike) -> Path:
    """The folder holding ``cls/`` and the split lists: ``sbd_root/dataset`` (``benchmark_RELEASE``) or ``sbd_root``."""
    root = Path(sbd_root)
    for cand in (root / "dataset", root / "benchmark_RELEASE" / "dataset", root):
        if (cand / "cls").is_dir():
            return cand
    raise WsssInputError(
        f"{root}: no SBD 'dataset/cls' folder found; point the SBD root at the extracted benchmark_RELEASE "
        "folder (from benchmark.tgz), or run without SBD (VOC 2012 train/val only, no train_aug): set "
        "data.source: voc and data.train_split: train"
    )


def read_sbd_split(sbd_root: PathLike, split: str) -> list[str]:
    """Image ids of SBD's ``dataset/<split>.txt`` (``train`` 8,498 or ``val`` 2,857 in the real data)."""
    if split not in SBD_SPLITS:
        raise WsssInputError(f"SBD split {split!r} unknown; SBD ships {list(SBD_SPLITS)}")
    hint = "re-extract benchmark.tgz (SBD)"
    return read_id_list(sbd_dataset_dir(sbd_root) / f"{split}.txt", missing_hint=hint, empty_hint=hint)


def load_sbd_mask(path: PathLike) -> np.ndarray:
    """``GTcls.Segmentation`` of one SBD ``.mat`` as a uint8 HxW array of class ids (0..20, 255 allowed)."""
    from scipy.io import loadmat  # scipy is a heavy import; only this path needs it

    path = Path(path)
    try:
        mat = loadmat(path, struct_as_record=False, squeeze_me=True)
        seg = mat["GTcls"].Segmentation
    except (KeyError, AttributeError) as e:
        raise WsssInputError(f"{path}: no GTcls.Segmentation in this .mat ({e}); is this SBD's dataset/cls?") from e
    except Exception as e:  # scipy raises ValueError / MatReadError / OSError on corrupt files
        raise WsssInputError(f"{path}: unreadable .mat ({type(e).__name__}: {e}); re-extract benchmark.tgz") from e
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise WsssInputError(f"{path}: GTcls.Segmentation has shape {seg.shape}; expected a 2-D label map")
    bad = (seg < 0) | ((seg >= NUM_CLASSES) & (seg != 255))
    if bad.any():
        vals = sorted(set(np.unique(seg[bad]).tolist()))[:5]
        raise WsssInputError(f"{path}: class ids {vals} outside 0..{NUM_CLASSES - 1} and 255")
    return seg.astype(np.uint8)


def _save_png(label: np.ndarray, path: Path) -> None:
    img = Image.fromarray(label, mode="P")
    img.putpalette(_PALETTE)
    img.save(path, format="PNG")


def convert_into(sbd_root: PathLike, folder: PathLike, ids: Iterable[str] | None = None) -> int:
    """Write ``folder/<id>.png`` for each SBD ``.mat`` (or each of ``ids``) into an existing folder; no atomicity."""
    cls_dir = sbd_dataset_dir(sbd_root) / "cls"
    folder = Path(folder)
    if ids is None:
        mats = sorted(cls_dir.glob("*.mat"))
    else:
        mats = [cls_dir / f"{i}.mat" for i in ids]
        missing = [str(m) for m in mats if not m.is_file()]
        if missing:
            raise WsssInputError(f"{len(missing)} SBD masks missing, first: {missing[:5]}; re-extract benchmark.tgz")
    if not mats:
        raise WsssInputError(f"{cls_dir}: no .mat files; re-extract benchmark.tgz")
    for mat in mats:
        _save_png(load_sbd_mask(mat), folder / f"{mat.stem}.png")
    return len(mats)


def convert_sbd(sbd_root: PathLike, out_dir: PathLike, ids: Iterable[str] | None = None) -> int:
    """Convert SBD ``dataset/cls/*.mat`` to VOC palette PNGs ``out_dir/<id>.png``; return the count.

    ``out_dir`` is written atomically at folder level (a temporary sibling renamed into place), so an
    interrupted conversion leaves no partial ``out_dir``.
    """
    with atomic_dir(out_dir) as tmp:
        n = convert_into(sbd_root, tmp, ids)
    return n
