"""Fetch and extract the real PASCAL VOC 2012 and SBD archives: verified, resumable, offline-friendly.

* :data:`ARCHIVES` names every archive with its published checksums and the URLs it is known at (each URL
  carries the public source that cites it; none is guessed), and for an optional one (SBD) how to run without it.
* :func:`fetch` uses a configured local copy when it verifies, else downloads with resume (HTTP ``Range``
  into ``<dest>/<file>.part``), verifies md5 (and sha256 when known) and only then renames ``.part`` to the
  final name. When nothing works it raises :class:`~wsss.io.WsssInputError` listing every URL tried with its
  error, the expected md5 and where to put a hand-downloaded copy.
* :func:`extract` unpacks into a temporary folder beside the destination and renames it into place, so a
  corrupt archive or a killed job leaves no folder that looks complete.

The VOC server is unstable and often blocked (pytorch/vision#9269, #9271, #4243; peers.md §3.2), hence the
mirrors, the resume and the manual fallback.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import tarfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torchvision.datasets.utils import calculate_md5, extract_archive

from wsss.io import WsssInputError, atomic_dir

PathLike = str | os.PathLike

USER_AGENT = "wsss-fetch/1.0"
_CHUNK = 1 << 20
_ATTEMPTS_PER_URL = 3  # retries of one URL, only while each attempt makes progress (a dropped connection)

ARCHIVES: dict[str, dict[str, Any]] = {
    "voc2012_trainval": {
        "filename": "VOCtrainval_11-May-2012.tar",
        "urls": [
            # Primary (the VOC host). Cited by torchvision <= 0.11 torchvision/datasets/voc.py (pytorch/vision
            # commit 00654a1) and by many READMEs.
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            # torchvision >= 0.12 torchvision/datasets/voc.py (DATASET_YEAR_DICT["2012"], read in 0.29.1).
            "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            # tensorflow/datasets tensorflow_datasets/url_checksums/voc.txt and the darknet/YOLO docs; reported
            # dead in 2025 (amdegroot/ssd.pytorch#516), kept as a last resort.
            "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
        ],
        # torchvision/datasets/voc.py (all versions read): md5 of the 2012 trainval tar.
        "md5": "6cd6e144f989b92b3379bac3b3de84fd",
        # tensorflow/datasets tensorflow_datasets/url_checksums/voc.txt (commit 333639b): size and sha256.
        "sha256": "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb",
        "size_bytes": 1999639040,
        "root": "VOCdevkit/VOC2012",  # folder of interest inside the extracted archive
    },
    "sbd": {
        "filename": "benchmark.tgz",
        "urls": [
            # Primary: torchvision <= 0.11 torchvision/datasets/sbd.py (pytorch/vision commit 0a82d54), the
            # SBD project page and many READMEs (mmsegmentation docs, DeepLab forks).
            "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
            # torchvision >= 0.12 torchvision/datasets/sbd.py (SBDataset.url, read in 0.29.1).
            "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        ],
        # torchvision/datasets/sbd.py (all versions read).
        "md5": "82b4d87ceb2ed10f6038a1cba92111cb",
        "sha256": None,  # no public source found
        "size_bytes": None,
        "root": "benchmark_RELEASE",
        # said when it cannot be obtained: the pipeline runs without it
        "without": (
            "SBD is optional: to run without it (VOC 2012 train/val only, no train_aug), set data.source: voc "
            "and data.train_split: train"
        ),
    },
}


# ------------------------------------------------------------------------------------------ checksums


def sha256sum(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: PathLike, md5: str, sha256: str | None = None, size_bytes: int | None = None) -> str | None:
    """``None`` when ``path`` matches (size, md5, sha256 when given), else a one-line reason."""
    path = Path(path)
    if not path.is_file():
        return "not found"
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        return f"size {size} bytes, expected {size_bytes}"
    got = calculate_md5(path)
    if got != md5.lower():
        return f"md5 mismatch: got {got}, expected {md5}"
    if sha256 is not None:
        got = sha256sum(path)
        if got != sha256.lower():
            return f"sha256 mismatch: got {got}, expected {sha256}"
    return None


# -------------------------------------------------------------------------------------------- fetch


def _spec(name_or_spec: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(name_or_spec, str):
        if name_or_spec not in ARCHIVES:
            raise WsssInputError(f"unknown archive {name_or_spec!r}; known: {sorted(ARCHIVES)}")
        return dict(ARCHIVES[name_or_spec])
    spec = dict(name_or_spec)
    if "filename" not in spec:
        raise WsssInputError(f"archive spec {spec!r} lacks 'filename'")
    return spec


def _download(url: str, part: Path, timeout: float, size_bytes: int | None) -> None:
    """Download ``url`` into ``part``, resuming from its current size with an HTTP Range request.

    A server that ignores Range (status 200) restarts the file from zero; 416 (range not satisfiable) means
    ``part`` already holds the whole file. Raises on network errors and on a short body.
    """
    have = part.stat().st_size if part.exists() else 0
    if size_bytes is not None and have >= size_bytes:
        return  # complete as far as the size goes; the checksum decides
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            return
        raise
    with resp:
        status = getattr(resp, "status", 200)
        mode = "ab"
        if status == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                raise OSError(f"server resumed at byte {start}, asked for {have}")
        elif status == 200:
            mode, have = "wb", 0  # no Range support (or a fresh start): rewrite from zero
        else:
            raise OSError(f"unexpected HTTP status {status}")
        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None and length.isdigit() else None
        got = 0
        with open(part, mode) as f:
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                got += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        if expected is not None and got < expected:
            raise OSError(f"connection closed after {got} of {expected} bytes (partial file kept for resume)")


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"unreachable ({e.reason})"
    return f"{type(e).__name__}: {e}"


_NET_ERRORS = (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError)


def _download_with_retries(url: str, part: Path, timeout: float, size_bytes: int | None) -> str | None:
    """:func:`_download`, retried (with resume) while each attempt makes progress; the last error or None."""
    error = None
    for _ in range(_ATTEMPTS_PER_URL):
        before = part.stat().st_size if part.exists() else 0
        try:
            _download(url, part, timeout, size_bytes)
            return None
        except _NET_ERRORS as e:
            error = _describe(e)
            after = part.stat().st_size if part.exists() else 0
            if after <= before:  # no progress: this URL is not going to work now
                break
    return error


def fetch(
    name_or_spec: str | Mapping[str, Any],
    dest_dir: PathLike,
    *,
    urls: list[str] | None = None,
    md5: str | None = None,
    sha256: str | None = None,
    archive_path: PathLike | None = None,
    timeout: float = 60,
) -> Path:
    """Return a verified local copy of an archive, downloading it only when needed.

    ``name_or_spec`` is a key of :data:`ARCHIVES` or a dict of the same shape. ``urls`` / ``md5`` override the
    spec's (``sha256`` and ``size_bytes`` of a named spec are then dropped unless ``sha256`` is given too).
    Order: ``archive_path`` if it verifies (used in place, nothing downloaded), ``dest_dir/<filename>`` if it
    verifies, then each URL with resume. Raises :class:`WsssInputError` when no source yields the file.
    """
    spec = _spec(name_or_spec)
    filename = spec["filename"]
    if md5 is not None:
        spec["md5"], spec["sha256"], spec["size_bytes"] = md5, sha256, None
    elif sha256 is not None:
        spec["sha256"] = sha256
    md5_, sha_, size_ = spec.get("md5"), spec.get("sha256"), spec.get("size_bytes")
    if not md5_:
        raise WsssInputError(f"{filename}: no md5 given; an archive is only used once its checksum is known")
    url_list = list(urls) if urls is not None else list(spec.get("urls") or [])
    dest_dir = Path(dest_dir)
    final = dest_dir / filename
    part = dest_dir / f"{filename}.part"
    tried: list[str] = []

    if archive_path is not None:
        ap = Path(archive_path)
        why = verify(ap, md5_, sha_, size_)
        if why is None:
            return ap
        tried.append(f"configured archive {ap}: {why}")
    if final.exists():
        why = verify(final, md5_, sha_, size_)
        if why is None:
            return final
        tried.append(f"existing {final}: {why} (deleted)")
        final.unlink()

    dest_dir.mkdir(parents=True, exist_ok=True)
    for url in url_list:
        for _pass in range(2):
            resumed = part.exists() and part.stat().st_size > 0
            error = _download_with_retries(url, part, timeout, size_)
            if error is not None:
                tried.append(f"{url}: {error}")
                break
            why = verify(part, md5_, sha_, size_)
            if why is None:
                os.replace(part, final)
                return final
            part.unlink(missing_ok=True)  # a bad body is never resumed from
            tried.append(f"{url}: downloaded {filename} but {why} (bad file deleted)")
            if not resumed:
                break  # a fresh download from this URL was bad: next URL; a resumed one gets one fresh try

    where = Path(archive_path) if archive_path is not None else final
    listing = "\n  ".join(tried) if tried else "(no URL configured)"
    raise WsssInputError(
        f"could not obtain {filename} (expected md5 {md5_}"
        + (f", sha256 {sha_}" if sha_ else "")
        + f"). Tried:\n  {listing}\n"
        f"Download {filename} by hand (from a URL above or any copy with that md5) and put it at {where}"
        + (f" (or at {final})" if where != final else "")
        + "; it is then used without any download. A partial download is kept at "
        f"{part} and resumed on the next run." + (f" {spec['without']}." if spec.get("without") else "")
    )


# ------------------------------------------------------------------------------------------ extract


def extract(archive: PathLike, dest_root: PathLike) -> Path:
    """Unpack ``archive`` so that ``dest_root`` holds its top-level entries; return ``dest_root``.

    Extraction goes into a temporary folder beside ``dest_root`` that replaces it only when complete
    (``dest_root`` is therefore owned by this call: anything in it before is replaced). Tar members that
    would escape the folder are refused (tarfile's ``data`` filter). A corrupt or truncated archive raises
    :class:`WsssInputError` naming the file and leaves no ``dest_root``.
    """
    archive, dest_root = Path(archive), Path(dest_root)
    if not archive.is_file():
        raise WsssInputError(f"{archive}: archive not found; fetch it first")
    try:
        with atomic_dir(dest_root) as tmp:
            if tarfile.is_tarfile(archive):
                with tarfile.open(archive, "r:*") as tar:
                    if hasattr(tarfile, "data_filter"):
                        tar.extractall(tmp, filter="data")
                    else:  # Python < 3.11.4
                        tar.extractall(tmp)  # noqa: S202
            else:
                extract_archive(str(archive), str(tmp))
            if not any(tmp.iterdir()):
                raise WsssInputError(f"{archive}: archive is empty")
    except WsssInputError:
        raise
    except (tarfile.TarError, EOFError, OSError, RuntimeError, ValueError) as e:
        raise WsssInputError(
            f"{archive}: corrupt or truncated archive ({type(e).__name__}: {e}); delete it and fetch it again"
        ) from e
    return dest_root


__all__ = ["ARCHIVES", "fetch", "extract", "verify", "sha256sum"]
