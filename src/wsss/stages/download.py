"""Stage download: fetch a VOC 2012 or SBD archive (the configured local file, then each URL with resume and
checksum: :func:`wsss.data.download.fetch`) and extract it into one folder (:func:`wsss.data.download.extract`)."""

from __future__ import annotations

from pathlib import Path

from wsss.data import download


def run(cfg, *, archive: str, out: Path, threads: int = 1) -> None:
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
    download.extract(path, out)
