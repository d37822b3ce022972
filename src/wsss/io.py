"""Atomic file writes and the VOC-format readers every stage shares.

Nothing half-written survives a failure: every writer here writes to a temporary file in the
destination folder, flushes it, then renames it over the target (``os.replace`` is atomic on POSIX). What they
leave has the modes of a plain ``open()`` / ``mkdir()`` under the umask in force (0644 / 0755 under 022).
Readers raise :class:`WsssInputError` naming the file and saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

_STARTED = time.time()  # temp files older than this process cannot be its own


def _new_temp(parent: Path, prefix: str, suffix: str = "", *, folder: bool = False) -> Path:
    """Create a new, uniquely named file (empty) or folder ``parent/<prefix><random><suffix>`` and return its path.

    Unlike ``tempfile.mkstemp`` / ``mkdtemp`` (0600 / 0700 whatever the umask), it is made as a plain ``open()`` or
    ``mkdir()`` makes it: mode 0666 / 0777 less the umask in force now (0644 / 0755 under 022), applied by the
    operating system, so that what is renamed into place is readable by others on a shared file system as far as
    the user's umask allows. The random part holds no dot (:func:`sweep_stale_temp` parses the names)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            if folder:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / f"{prefix}*{suffix}"))


class WsssInputError(RuntimeError):
    """Bad input: the message names the file or key and says what to do."""


def _name_full_disk(e: BaseException, path: Path) -> None:
    """Re-raise a disk-full ``OSError`` that names no file as one naming ``path`` (the CLI reports it)."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC and not e.filename:
        raise OSError(errno.ENOSPC, e.strerror or os.strerror(errno.ENOSPC), str(path)) from e


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    The temporary name keeps the target's suffix so that libraries choosing a format by extension
    (PIL, numpy, torch) behave as they would on the real name. Temporary files for this same target that a
    SIGKILLed earlier process left behind (older than this process) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temp(path)
    tmp_path = _new_temp(path.parent, f".{path.name}.", f".tmp{path.suffix}")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        _name_full_disk(e, path)
        raise


_STALE: dict[Path, dict[str, list[Path]]] = {}  # folder -> target name -> its temp files older than this process


def _stale_in(folder: Path) -> dict[str, list[Path]]:
    """The hidden temp files (``.<name>.<random>.tmp<suffix>``) in ``folder`` older than this process, by target
    name. Listed once per folder and process: files created later are newer than ``_STARTED``, so the list stays
    complete, and a stage writing thousands of files into one folder pays one scan, not one per file."""
    if folder not in _STALE:
        found: dict[str, list[Path]] = {}
        with contextlib.suppress(OSError):
            for e in os.scandir(folder):
                if not (e.name.startswith(".") and ".tmp" in e.name and e.is_file(follow_symlinks=False)):
                    continue
                head, _, suffix = e.name[1:].rpartition(".tmp")
                name = head.rpartition(".")[0]  # drop the random part (_new_temp)
                if name and name.endswith(suffix) and e.stat().st_mtime < _STARTED:
                    found.setdefault(name, []).append(Path(e.path))
        _STALE[folder] = found
    return _STALE[folder]


def sweep_stale_temp(path: Path) -> list[Path]:
    """Delete the hidden temporary files of ``path`` (``.<name>.*.tmp<suffix>``) created before this process.

    Only a killed writer leaves them (a failing one deletes its own); a file newer than this process may be a
    live writer's, so it is kept, and other targets' files are never touched. Returns the deleted paths.
    """
    removed = []
    for stale in _stale_in(path.parent).pop(path.name, []):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success replace ``path`` with it, on failure delete it.

    A killed or failed stage therefore never leaves a folder that Snakemake or DVC could take as complete. The
    hidden temporary folders a SIGKILLed earlier attempt left for this same output are removed first (Snakemake
    runs one job per output at a time, so none of them is in use).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = _new_temp(path.parent, f".{path.name}.tmp-", folder=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # name the stage's output, not the temp folder
            raise OSError(errno.ENOSPC, e.strerror or os.strerror(errno.ENOSPC), str(path)) from e
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (stable diffs for DVC metrics)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Mapping):  # e.g. a config view (wsss.config.ConfigView)
        return dict(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plain(obj: Any) -> Any:
    """``obj`` as plain JSON data: mappings (config views included) become dicts, tuples lists, paths strings."""
    return json.loads(json.dumps(obj, sort_keys=True, default=_json_default))


def path_digest(path: str | os.PathLike) -> str:
    """Content digest of a file, or of a folder (every file's relative path and content, in sorted order; the
    ``.snakemake_timestamp`` markers left out)."""
    path = Path(path)
    h = hashlib.sha256()

    def add(f: Path) -> None:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)

    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            add(f)
            h.update(b"\0")
    elif path.is_file():
        add(path)
    else:
        raise WsssInputError(f"{path}: input not found; run the stage that produces it first")
    return h.hexdigest()[:16]


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: file not found; run the stage that produces it first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise WsssInputError(f"{path}: not valid JSON ({e}); delete it and re-run the stage that writes it") from e


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Atomically write a compressed ``.npz``."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: CAM file not found; run the CAM extraction stage first")
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError ...
        raise WsssInputError(f"{path}: unreadable .npz ({e}); delete it and re-run the stage that wrote it") from e


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 entries, flat RGB list), as in the VOC devkit's ``labelcolormap``."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


_PALETTE = voc_palette()


def write_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a uint8 label map (class ids, 255 = ignore) as a VOC palette PNG, atomically."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"{path}: label map must be 2-D, got shape {label.shape}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def png_bytes(label: np.ndarray) -> bytes:
    """A uint8 label map as the bytes of a VOC palette PNG (for archives)."""
    img = Image.fromarray(np.asarray(label, dtype=np.uint8), mode="P")
    img.putpalette(_PALETTE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def read_label_png(path: str | os.PathLike, num_classes: int = 21) -> np.ndarray:
    """Read a VOC label PNG as uint8 class ids; values must be in ``0..num_classes-1`` or 255."""
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: mask not found; check the dataset root and the split list")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise WsssInputError(
                    f"{path}: mask has mode {im.mode!r}; VOC masks are palette ('P') or grey ('L') PNGs of class ids"
                )
            arr = np.array(im, dtype=np.uint8)
    except WsssInputError:
        raise
    except Exception as e:
        raise WsssInputError(f"{path}: unreadable mask ({e}); replace the file") from e
    bad = (arr >= num_classes) & (arr != 255)
    if bad.any():
        vals = sorted(set(np.unique(arr[bad]).tolist()))[:5]
        raise WsssInputError(
            f"{path}: mask holds values {vals} outside 0..{num_classes - 1} and 255 (ignore); "
            "fix or regenerate this mask"
        )
    return arr


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an RGB image as a uint8 HxWx3 array, with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: image not found; check the dataset root and the split list")
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        raise WsssInputError(
            f"{path}: corrupt or unreadable image ({e}); replace the file or drop its id from the split"
        ) from e


def write_jpeg(path: str | os.PathLike, image: np.ndarray, quality: int = 95) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp, format="JPEG", quality=quality)
