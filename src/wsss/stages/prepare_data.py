"""Stages of the real-data path: download (+ verify + extract) an archive, and prepare the VOC dataset folder.

``download``: :func:`wsss.data.download.fetch` (configured local archive, then each URL with resume and
checksum) and :func:`wsss.data.download.extract`, into one folder per archive.
``prepare``: :func:`wsss.data.voc_prepare.prepare_voc` — splits (train, val, train_aug), image labels from the
XML annotations cross-checked against the masks, SBD masks converted to SegmentationClassAug.
"""

from __future__ import annotations

from pathlib import Path

from wsss.data import download, voc_prepare
from wsss.io import write_json


def run_download(cfg: dict, *, archive: str, out_dir: Path) -> None:
    vcfg = cfg["data"]["voc"]
    local = vcfg["sbd_archive"] if archive == "sbd" else vcfg["archive"]
    path = download.fetch(
        archive,
        Path(vcfg["download_dir"]),
        urls=vcfg["urls"].get(archive),
        md5=vcfg["md5"].get(archive),
        archive_path=Path(local) if local else None,
        timeout=vcfg["timeout_s"],
    )
    download.extract(path, out_dir)


def run_prepare(cfg: dict, *, voc_root: Path, sbd_root: Path | None, out_root: Path, metrics_out: Path) -> None:
    vcfg = cfg["data"]["voc"]
    report = voc_prepare.prepare_voc(
        voc_root,
        sbd_root,
        out_root,
        expect_counts=vcfg["expect_counts"],
        cross_check=vcfg["cross_check"],
        link_mode=vcfg["link_mode"],
    )
    write_json(metrics_out, {**report, "data_source": cfg["data"]["source"]})
