"""Build the pipeline's dataset folder from an extracted PASCAL VOC 2012 (and optionally SBD).

Output ``out_root`` (read by every later stage, like the synthetic dataset):

* ``JPEGImages``, ``SegmentationClass``: links to the extracted VOC folders (symlink; per-file hard links or
  copies where symlinks fail);
* ``SegmentationClassAug/<id>.png``: SBD ``cls/*.mat`` converted to VOC palette PNGs, then the VOC
  ``SegmentationClass`` masks copied over them: **VOC takes precedence** where both exist (VOC masks carry the
  255 border, SBD's do not);
* ``ImageSets/Segmentation/{train,val,train_aug}.txt`` with
  ``train_aug = (SBD train ∪ SBD val ∪ VOC train) − VOC val`` (10,582 ids in the real data; train 1,464,
  val 1,449; irn:voc12/*.txt, peers.md §1.3), and ``test.txt`` when the test images (``VOC2012test.tar``) are
  given: images only, for the evaluation server's export (VOCtrainval holds no test split);
* ``labels.json`` = {id: [VOC class ids 1..20]} from the XML annotations (``<object><name>``, ``difficult`` and
  ``truncated`` objects included: irn:voc12/make_cls_labels.py), for train_aug ∪ val ∪ train; a VOC folder
  without ``Annotations/`` gets the classes of each image's mask instead (``label_source`` "mask", logged);
* ``label_disagreements.json``: ids whose XML classes differ from the classes in their mask, never dropped;
* ``prepare_report.json``: counts, conventions (where the labels come from), sources, and the subset rule.

``max_ids_per_split`` (config ``data.voc.max_ids_per_split``) names a subset by a rule rather than by a file list:
only the first N ids of each split list are written, in the list's own order (:data:`SUBSET_RULE`), so the same
config gives the same subset on a full VOC 2012 download and on a folder that holds part of it. The checks of the
source lists (train/val overlap, ``expect_counts``, test ids within trainval) run before the cut; the images,
masks and labels are those of the kept ids only.

The folder is written atomically (temporary sibling renamed into place). Copies (``link_mode`` copy, or where
links fail) get the modes of the umask, not those of the source; hard links and symlinks show the source's.
"""

from __future__ import annotations

import logging
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from wsss.data.sbd import convert_into, read_sbd_split, sbd_dataset_dir
from wsss.data.voc import NUM_FG, VOC_CLASSES, labels_from_mask, read_id_list
from wsss.io import WsssInputError, atomic_dir, read_label_png, write_json, write_text

PathLike = str | os.PathLike
log = logging.getLogger("wsss")

EXPECTED_COUNTS = {"train": 1464, "val": 1449, "train_aug": 10582}
CLASS_TO_ID = {name: i for i, name in enumerate(VOC_CLASSES) if i > 0}
LABEL_CONVENTION = (
    "XML <object><name> of Annotations/<id>.xml mapped to VOC ids 1..20; objects marked difficult or truncated "
    "are included (as irn:voc12/make_cls_labels.py builds cls_labels.npy)"
)
MASK_LABEL_CONVENTION = (
    "no Annotations/: the foreground classes (1..20) present in each image's segmentation mask (SegmentationClass, "
    "else SBD's SegmentationClassAug); 255 and background skipped"
)
MASK_PRECEDENCE = (
    "SegmentationClassAug holds SBD GTcls.Segmentation converted to PNG, overwritten by VOC SegmentationClass "
    "where VOC has a mask (VOC takes precedence)"
)
_VOC_DIRS = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")  # Annotations/ is optional
SUBSET_RULE = (
    "the first N ids of each split list in its own order (VOC ImageSets/Segmentation train.txt, val.txt; test.txt "
    "when given); train_aug = the kept train ids and the first of its other ids in sorted order, N in all, listed "
    "sorted like the full train_aug (so the kept train lies within it and no VOC val id enters it); the source "
    "lists are checked before the cut"
)


# --------------------------------------------------------------------------------------- VOC root


def from_existing(voc_root: PathLike) -> Path:
    """Validate an already-extracted VOC 2012 and return its ``VOC2012`` folder (used as is, no download).

    ``voc_root`` may be the ``VOC2012`` folder itself, ``VOCdevkit``, or the folder holding ``VOCdevkit``.
    ``Annotations/`` may be missing: the image labels then come from the masks (:func:`prepare_voc`).
    """
    voc = _voc_folder(voc_root, "VOCtrainval_11-May-2012.tar")
    missing = [d for d in _VOC_DIRS if not (voc / d).is_dir()]
    if missing:
        raise WsssInputError(
            f"{voc}: incomplete VOC 2012, missing folders {missing}; re-extract VOCtrainval_11-May-2012.tar"
        )
    if not any((voc / "JPEGImages").iterdir()):
        raise WsssInputError(f"{voc / 'JPEGImages'}: empty; re-extract VOCtrainval_11-May-2012.tar")
    for split in ("train", "val"):
        _read_list(voc / "ImageSets" / "Segmentation" / f"{split}.txt")
    return voc


def _voc_folder(root: PathLike, archive: str) -> Path:
    root = Path(root)
    cands = [root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"]
    voc = next((c for c in cands if (c / "JPEGImages").is_dir()), None)
    if voc is None:
        raise WsssInputError(
            f"{root}: no VOC 2012 found (looked for JPEGImages/ in {', '.join(str(c) for c in cands)}); set the "
            f"VOC root to the extracted VOCdevkit/VOC2012 of {archive}"
        )
    return voc


def read_test_images(test_root: PathLike) -> tuple[Path, list[str]]:
    """The ``VOC2012`` folder of the extracted test images (``VOC2012test.tar``; any level, as
    :func:`from_existing`) and the ids of its ``ImageSets/Segmentation/test.txt``."""
    voc = _voc_folder(test_root, "VOC2012test.tar (data.voc.test_extracted_root)")
    path = voc / "ImageSets" / "Segmentation" / "test.txt"
    hint = "re-extract VOC2012test.tar there, or set data.voc.test_extracted_root: null (no test split)"
    return voc, read_id_list(path, missing_hint=hint, empty_hint=hint)


def _read_list(path: Path) -> list[str]:
    hint = "re-extract the archive it comes from"
    return read_id_list(path, missing_hint=hint, empty_hint=hint)


# ------------------------------------------------------------------------------------------ labels


def read_xml_classes(path: PathLike) -> dict[str, Any]:
    """Classes of one VOC annotation: ``{"classes": [ids], "difficult_only": [ids], "unknown": [names]}``.

    Only ``<object><name>`` counts (person-layout ``<part><name>`` entries are not objects).
    """
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: annotation not found; re-extract VOCtrainval_11-May-2012.tar")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise WsssInputError(f"{path}: malformed XML ({e}); re-extract VOCtrainval_11-May-2012.tar") from e
    classes: set[int] = set()
    easy: set[int] = set()
    unknown: list[str] = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        cid = CLASS_TO_ID.get(name)
        if cid is None:
            unknown.append(name)
            continue
        classes.add(cid)
        if (obj.findtext("difficult") or "0").strip() != "1":
            easy.add(cid)
    return {"classes": sorted(classes), "difficult_only": sorted(classes - easy), "unknown": unknown}


# ------------------------------------------------------------------------------------------ linking


def _link_tree(src: Path, dst: Path, mode: str) -> str:
    """Make ``dst`` show ``src``: a relative symlink, else per-file hard links, else copies. Returns the mode used."""
    if mode == "symlink":
        try:
            os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst, target_is_directory=True)
            return "symlink"
        except OSError:
            mode = "hardlink"
    return _link_files([(src, None)], dst, mode)


def _link_files(sources: list[tuple[Path, list[str] | None]], dst: Path, mode: str) -> str:
    """Make ``dst`` a folder showing the files of several folders, one link per file (each ``(folder, names)``:
    those names, or every file when None; a name already there is kept). Returns the mode used."""
    dst.mkdir()
    used = mode
    for src, names in sources:
        files = sorted(f for f in src.iterdir() if f.is_file()) if names is None else [src / n for n in names]
        for f in files:
            if not (dst / f.name).exists():
                used = _link_file(f, dst / f.name, used)
    return used


def _link_file(src: Path, dst: Path, mode: str) -> str:
    """Link one file (symlink, else hard link, else copy); returns the mode used. A copy gets the umask's mode
    (shutil.copyfile, not copy2: a private or read-only source must not make the dataset unreadable)."""
    if mode == "symlink":
        try:
            os.symlink(os.path.relpath(src.resolve(), dst.parent.resolve()), dst)
            return "symlink"
        except OSError:
            mode = "hardlink"
    if mode == "hardlink":
        try:
            os.link(src, dst)
            return "hardlink"
        except OSError:
            mode = "copy"
    shutil.copyfile(src, dst)
    return mode


# ------------------------------------------------------------------------------------------ prepare


def _check_counts(counts: dict[str, int], max_ids_per_split: int | dict | None = None) -> None:
    bad = [f"{s}: {counts[s]} ids, expected {n}" for s, n in EXPECTED_COUNTS.items() if s in counts and counts[s] != n]
    if bad:
        cut = (
            f" (data.voc.max_ids_per_split = {max_ids_per_split} cuts the lists only after this check, so a folder "
            "that is itself a subset needs data.voc.expect_counts: false)"
            if max_ids_per_split is not None
            else ""
        )
        raise WsssInputError(
            "split sizes differ from the real PASCAL VOC 2012 + SBD ("
            + "; ".join(bad)
            + "). The archives are incomplete or not the published ones: re-fetch VOCtrainval_11-May-2012.tar and "
            "benchmark.tgz (md5-checked), or set expect_counts false for a custom subset" + cut
        )


def split_limit(n: int | dict | None, split: str) -> int | None:
    """How many ids of ``split`` config ``data.voc.max_ids_per_split`` keeps: one number for every split, or a
    mapping {split: number} (a split it does not name keeps all its ids); ``None`` = all."""
    limit = n.get(split) if isinstance(n, dict) else n
    if limit is not None and int(limit) < 1:
        raise WsssInputError(
            f"data.voc.max_ids_per_split = {n}: keep at least one id of {split} (or null: all its ids)"
        )
    return None if limit is None else int(limit)


def subset_splits(splits: dict[str, list[str]], n: int | dict | None) -> dict[str, list[str]]:
    """The split lists cut by :data:`SUBSET_RULE` (:func:`split_limit` ids each; ``None`` = unchanged).

    ``train_aug`` holds the kept ``train`` ids, then the first of its other ids in its own (sorted) order, its limit
    in all, listed sorted as the full list (a limit that keeps every id gives the list unchanged); it only ever
    drops ids, so it stays disjoint from the whole VOC val list.
    """
    out = {}
    for s, ids in splits.items():
        if s != "train_aug":
            limit = split_limit(n, s)
            out[s] = list(ids if limit is None else ids[:limit])
    if "train_aug" in splits:
        limit = split_limit(n, "train_aug")
        if limit is None:
            out["train_aug"] = list(splits["train_aug"])
        else:
            kept = set(out.get("train", []))
            others = [i for i in splits["train_aug"] if i not in kept]
            out["train_aug"] = sorted(kept | set(others[: max(0, limit - len(kept))]))
    return out


def _missing(paths: list[Path], what: str, hint: str) -> None:
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        shown = "\n  ".join(absent[:5])
        raise WsssInputError(f"{len(absent)} {what} missing, first:\n  {shown}\n{hint}")


def prepare_voc(
    voc_root: PathLike,
    sbd_root: PathLike | None,
    out_root: PathLike,
    *,
    test_root: PathLike | None = None,
    expect_counts: bool = False,
    cross_check: bool = True,
    link_mode: str = "symlink",
    max_ids_per_split: int | dict | None = None,
) -> dict[str, Any]:
    """Build ``out_root`` (see the module docstring) and return the report also written to ``prepare_report.json``.

    ``sbd_root`` is the extracted ``benchmark_RELEASE`` (or its ``dataset``); ``None`` gives train/val only
    (no train_aug, no SegmentationClassAug). ``test_root`` is the extracted ``VOC2012test.tar`` (it may be
    ``voc_root`` itself, where both archives were extracted into one VOCdevkit): it adds the test split, images
    only; ``None`` gives none. ``expect_counts`` checks 1,464 / 1,449 / 10,582. ``cross_check`` compares XML
    classes with mask classes. ``link_mode``: symlink | hardlink | copy. Without ``Annotations/`` the image labels
    are the classes of the masks (logged; ``label_source`` "mask" in the report). ``max_ids_per_split`` keeps the
    first N ids of each split (:func:`subset_splits`); ``expect_counts`` checks the lists before that cut.
    """
    if link_mode not in ("symlink", "hardlink", "copy"):
        raise WsssInputError(f"link_mode {link_mode!r}: use symlink, hardlink or copy")
    voc = from_existing(voc_root)
    seg_lists = voc / "ImageSets" / "Segmentation"
    train, val = _read_list(seg_lists / "train.txt"), _read_list(seg_lists / "val.txt")
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise WsssInputError(
            f"{seg_lists}: train and val share {len(overlap)} ids (first {overlap[:5]}); re-extract VOC"
        )
    splits: dict[str, list[str]] = {"train": train, "val": val}
    sbd_counts: dict[str, int] = {}
    sbd_ids: list[str] = []
    if sbd_root is not None:
        sbd_train, sbd_val = read_sbd_split(sbd_root, "train"), read_sbd_split(sbd_root, "val")
        sbd_counts = {"sbd_train": len(set(sbd_train)), "sbd_val": len(set(sbd_val))}
        sbd_ids = sorted(set(sbd_train) | set(sbd_val))
        splits["train_aug"] = sorted((set(sbd_train) | set(sbd_val) | set(train)) - set(val))
    if expect_counts:  # the source lists, before any cut: a full download is verified as published
        _check_counts({s: len(ids) for s, ids in splits.items()}, max_ids_per_split)
    test_voc: Path | None = None
    if test_root is not None:
        test_voc, test_ids = read_test_images(test_root)
        test_list = test_voc / "ImageSets" / "Segmentation" / "test.txt"
        shared = sorted(set(test_ids) & set().union(*splits.values()))
        if shared:
            raise WsssInputError(
                f"{test_list}: {len(shared)} test ids are also in the train/val lists (first {shared[:5]}); "
                "data.voc.test_extracted_root must hold VOC2012test.tar's images and test list"
            )
        splits["test"] = test_ids
    source_counts = {s: len(ids) for s, ids in splits.items()}
    splits = subset_splits(splits, max_ids_per_split)
    train, val = splits["train"], splits["val"]
    counts = {s: len(ids) for s, ids in splits.items()}
    if max_ids_per_split is not None:
        sbd_ids = sorted(set(sbd_ids) & set(splits.get("train_aug", [])))  # convert only the SBD masks kept
        log.info(
            "data.voc.max_ids_per_split = %s: kept %s of the source lists' %s ids",
            max_ids_per_split,
            counts,
            source_counts,
        )

    all_ids = sorted(set().union(*(ids for s, ids in splits.items() if s != "test")))  # the test split has no labels
    _missing([voc / "JPEGImages" / f"{i}.jpg" for i in all_ids], "JPEG images", f"re-extract VOC into {voc}")
    _missing([voc / "SegmentationClass" / f"{i}.png" for i in train + val], "VOC masks", f"re-extract VOC into {voc}")
    if test_voc is not None:
        _missing(
            [test_voc / "JPEGImages" / f"{i}.jpg" for i in splits["test"]],
            "test JPEG images",
            f"re-extract VOC2012test.tar into {test_voc}",
        )

    label_source = "xml" if (voc / "Annotations").is_dir() else "mask"
    labels: dict[str, list[int]] = {}
    unknown: dict[str, list[str]] = {}
    difficult_only = 0
    if label_source == "xml":
        _missing([voc / "Annotations" / f"{i}.xml" for i in all_ids], "XML annotations", f"re-extract VOC into {voc}")
        for i in all_ids:
            info = read_xml_classes(voc / "Annotations" / f"{i}.xml")
            labels[i] = info["classes"]
            difficult_only += len(info["difficult_only"])
            if info["unknown"]:
                unknown[i] = info["unknown"]
    else:
        log.info(
            "%s: no Annotations/ folder: the image labels are taken from the segmentation masks (%s); "
            "prepare_report.json records label_source 'mask'",
            voc,
            "SegmentationClass, else SBD's SegmentationClassAug" if sbd_root is not None else "SegmentationClass",
        )

    out_root = Path(out_root)
    with atomic_dir(out_root) as tmp:
        jpeg_sources = [(voc / "JPEGImages", None)]
        if test_voc is not None and (test_voc / "JPEGImages").resolve() != (voc / "JPEGImages").resolve():
            jpeg_sources.append((test_voc / "JPEGImages", [f"{i}.jpg" for i in splits["test"]]))
        modes = {
            "JPEGImages": (
                _link_tree(voc / "JPEGImages", tmp / "JPEGImages", link_mode)
                if len(jpeg_sources) == 1
                else _link_files(jpeg_sources, tmp / "JPEGImages", link_mode)
            ),
            "SegmentationClass": _link_tree(voc / "SegmentationClass", tmp / "SegmentationClass", link_mode),
        }
        n_sbd = n_voc_aug = 0
        aug = tmp / "SegmentationClassAug"
        if sbd_root is not None:
            aug.mkdir()
            n_sbd = convert_into(sbd_root, aug, sbd_ids)
            file_mode = "copy" if link_mode == "copy" else "hardlink"
            for f in sorted((voc / "SegmentationClass").glob("*.png")):
                (aug / f.name).unlink(missing_ok=True)
                _link_file(f, aug / f.name, file_mode)
                n_voc_aug += 1
            missing_aug = [i for i in splits["train_aug"] if not (aug / f"{i}.png").is_file()]
            if missing_aug:
                raise WsssInputError(
                    f"{len(missing_aug)} train_aug ids have no mask in SBD cls/ nor VOC SegmentationClass "
                    f"(first {missing_aug[:5]}); re-extract benchmark.tgz"
                )

        def mask_of(image_id: str) -> tuple[Path, str]:
            mpath = voc / "SegmentationClass" / f"{image_id}.png"
            return (
                (mpath, "SegmentationClass")
                if mpath.is_file()
                else (aug / f"{image_id}.png", "SegmentationClassAug (SBD)")
            )

        if label_source == "mask":  # every labelled id has a mask: train/val in VOC, train_aug checked above
            labels = {i: labels_from_mask(read_label_png(mask_of(i)[0])) for i in all_ids}
        no_label = sorted(i for i, c in labels.items() if not c)

        disagreements: list[dict[str, Any]] = []
        n_checked = 0
        checking = cross_check and label_source == "xml"  # labels from the masks cannot disagree with them
        for i in all_ids if checking else ():
            mpath, source = mask_of(i)
            if not mpath.is_file():
                continue
            n_checked += 1
            mask_classes = labels_from_mask(read_label_png(mpath))
            if mask_classes != labels[i]:
                xml_set, mask_set = set(labels[i]), set(mask_classes)
                disagreements.append(
                    {
                        "id": i,
                        "xml": labels[i],
                        "mask": mask_classes,
                        "mask_source": source,
                        "xml_only": sorted(xml_set - mask_set),
                        "mask_only": sorted(mask_set - xml_set),
                    }
                )

        for split, ids in splits.items():
            write_text(tmp / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
        write_json(tmp / "labels.json", labels)
        write_json(tmp / "label_disagreements.json", disagreements)
        report: dict[str, Any] = {
            "source": "voc2012" + ("+sbd" if sbd_root is not None else ""),
            "voc_root": str(voc.resolve()),
            "sbd_root": str(sbd_dataset_dir(sbd_root).resolve()) if sbd_root is not None else None,
            "test_root": str(test_voc.resolve()) if test_voc is not None else None,
            "counts": {**counts, **sbd_counts, "labelled_images": len(labels)},
            "expected_counts": dict(EXPECTED_COUNTS),
            "counts_checked": bool(expect_counts),
            "subset": (
                None
                if max_ids_per_split is None
                else {"rule": SUBSET_RULE, "max_ids_per_split": max_ids_per_split, "source_counts": source_counts}
            ),
            "train_aug_rule": "(SBD train ∪ SBD val ∪ VOC train) − VOC val" if sbd_root is not None else None,
            "label_source": label_source,
            "label_convention": LABEL_CONVENTION if label_source == "xml" else MASK_LABEL_CONVENTION,
            "num_classes_fg": NUM_FG,
            "difficult_only_image_classes": difficult_only if label_source == "xml" else None,
            "images_without_labels": no_label,
            "unknown_object_names": unknown,
            "mask_precedence": MASK_PRECEDENCE if sbd_root is not None else None,
            "segmentation_class_aug": {
                "from_sbd": n_sbd,
                "from_voc": n_voc_aug,
                "files": len(list(aug.glob("*.png"))) if aug.is_dir() else 0,
            },
            "link_mode": modes,
            "cross_check": {
                "done": bool(checking),
                "images_checked": n_checked,
                "disagreements": len(disagreements),
                "file": "label_disagreements.json",
                "rule": "sorted foreground classes of the mask (SegmentationClass, else SegmentationClassAug) "
                "vs the XML classes; labels.json keeps the XML classes"
                + ("" if label_source == "xml" else " (not done: no XML, the labels are the masks' classes)"),
            },
        }
        write_json(tmp / "prepare_report.json", report)
    return report
