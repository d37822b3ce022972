"""Checkpoint files: atomic writes, and reads that say what is wrong with a file and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wsss.io import WsssInputError, atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save`` into a temporary file, renamed onto ``path`` when complete. Through a Python file object, so
    that a full disk raises ``OSError(ENOSPC)`` (naming ``path``; the CLI turns it into a clear message), not torch's
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, *, kind: str = "checkpoint", need: tuple[str, ...] = ()) -> dict:
    """The dict a training stage saved. ``kind`` names what the caller expects (e.g. "CAM network checkpoint")
    and ``need`` the keys such a checkpoint holds; a file without them is refused with a message naming it."""
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: {kind} not found; run the training stage that writes it first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise WsssInputError(
            f"{path}: not a readable {kind} ({type(e).__name__}: {str(e)[:200]}); check the path, "
            "or re-run the training stage that writes it"
        ) from e
    missing = [k for k in ("model", *need) if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise WsssInputError(
            f"{path}: not a {kind} (it lacks {missing}); pass the file the matching training stage wrote"
        )
    return ckpt


def load_model(path: str | os.PathLike, *, section: str, build, kind: str):
    """(``build(config[section])`` with the checkpoint's weights, in eval mode; the checkpoint dict) of a training
    stage's checkpoint, which stores the config section the network was built from; ``kind`` names that
    checkpoint (e.g. "segmentation checkpoint (train_seg)") in the error for any other file."""
    ckpt = load_checkpoint(path, kind=kind, need=("config",))
    if not isinstance(ckpt["config"], dict) or section not in ckpt["config"]:
        raise WsssInputError(f"{path}: not a {kind}; pass the checkpoint that stage writes")
    net = build(ckpt["config"][section])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt
