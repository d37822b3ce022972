"""Pixel affinities for random-walk refinement (AffinityNet, Ahn & Kwak CVPR'18 = PSA; IRN, Ahn et al. CVPR'19).

Pairs. A pixel i = (y, x) is paired with j = (y + dy, x + dx) for every offset of the *half* neighbourhood returned
by :func:`neighbour_offsets`, so each unordered pair within the radius is counted once (PSA
``tool/pyutils.get_indices_of_pairs``; IRN ``misc/indexing.PathIndex`` uses the same search pattern). Maps
indexed by offset are laid out ``[B, P, H, W]``: entry ``[b, p, y, x]`` is about the pair
((y, x), (y + dy_p, x + dx_p)); pairs whose second pixel leaves the image are invalid (PSA instead crops the
"from" window so that every "to" pixel is inside; a validity mask is the same thing without the crop).

Affinity (:func:`pairwise_affinity`): PSA's form ``a_ij = exp(−mean_c |f_i,c − f_j,c|)`` of a per-pixel embedding
(psa ``net/resnet38_aff.py`` ``forward``: ``torch.exp(-torch.mean(torch.abs(ft - ff), dim=1))``). IRN derives
affinities from a boundary map instead (``1 − max boundary on the segment i→j``); we chose PSA's form because it
needs no boundary branch and no path index, and its training loss is the short balanced cross-entropy below.

Loss (:func:`affinity_loss`, psa ``train_aff.py``)::

    L = 1/4 · mean_{(i,j)∈P⁺_bg} −log(a_ij + ε) + 1/4 · mean_{(i,j)∈P⁺_fg} −log(a_ij + ε)
      + 1/2 · mean_{(i,j)∈P⁻} −log(1 − a_ij + ε),      ε = 1e-5

Affinity labels come from confident CAM regions (:func:`confident_labels`, IRN ``step/cam_to_ir_label.py``
without its CRF: fg where max CAM > ``fg_threshold`` (0.30), bg where max CAM ≤ ``bg_threshold`` (0.05),
255 in between).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.data import voc
from wsss.io import atomic_dir, load_npz, write_label_png

__all__ = [
    "neighbour_offsets",
    "shift_valid_mask",
    "shifted",
    "confident_labels",
    "affinity_labels",
    "pairwise_affinity",
    "affinity_loss",
    "write_confident_labels",
    "grid_label",
]

IGNORE = 255


def neighbour_offsets(radius: int) -> list[tuple[int, int]]:
    """Half neighbourhood ``[(dy, dx)]`` with dy² + dx² < radius², each unordered pair once.

    Same order and set as PSA ``get_indices_of_pairs``: ``(0, 1..radius-1)`` then, for ``dy`` in
    ``1..radius-1``, ``dx`` in ``-(radius-1)..radius-1`` with ``dx² + dy² < radius²``. Radius 5 gives 34 offsets.
    """
    if radius < 2:
        raise ValueError(f"radius must be >= 2, got {radius}")
    offs = [(0, dx) for dx in range(1, radius)]
    offs += [
        (dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dx * dx + dy * dy < radius * radius
    ]
    return offs


def shift_valid_mask(h: int, w: int, offsets: Sequence[tuple[int, int]], device=None) -> torch.Tensor:
    """Bool ``[P, h, w]``: True where (y + dy, x + dx) lies inside the image."""
    ys = torch.arange(h, device=device).view(1, h, 1)
    xs = torch.arange(w, device=device).view(1, 1, w)
    off = torch.as_tensor(offsets, device=device).view(-1, 2)
    dy = off[:, 0].view(-1, 1, 1)
    dx = off[:, 1].view(-1, 1, 1)
    return (ys + dy >= 0) & (ys + dy < h) & (xs + dx >= 0) & (xs + dx < w)


def shifted(t: torch.Tensor, dy: int, dx: int, fill=0) -> torch.Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]`` (``fill`` outside the image)."""
    h, w = t.shape[-2:]
    out = torch.full_like(t, fill)
    ys, ye = max(0, -dy), min(h, h - dy)
    xs, xe = max(0, -dx), min(w, w - dx)
    if ys < ye and xs < xe:
        out[..., ys:ye, xs:xe] = t[..., ys + dy : ye + dy, xs + dx : xe + dx]
    return out


def confident_labels(cam, keys, fg_threshold: float = 0.30, bg_threshold: float = 0.05) -> np.ndarray:
    """uint8 [H,W] label from a normalised CAM ``cam`` [K,H,W] and its VOC ``keys`` [K] (1..20).

    IRN ``cam_to_ir_label`` without the CRF: ``max_k cam > fg_threshold`` → ``keys[argmax]``;
    ``max_k cam ≤ bg_threshold`` → 0; otherwise 255. (IRN pads a constant background plane and takes the
    argmax, so ties go to background: hence the strict/non-strict inequalities.) With K = 0 everything is 0.
    """
    cam = np.asarray(cam, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64)
    if cam.ndim != 3 or cam.shape[0] != keys.shape[0]:
        raise ValueError(f"cam must be [K,H,W] with K = len(keys); got {cam.shape} and {keys.shape}")
    if not 0 <= bg_threshold <= fg_threshold:
        raise ValueError("need 0 <= bg_threshold <= fg_threshold")
    h, w = cam.shape[1:]
    if cam.shape[0] == 0:
        return np.zeros((h, w), np.uint8)
    m = cam.max(axis=0)
    label = np.full((h, w), IGNORE, np.uint8)
    fg = m > fg_threshold
    label[fg] = keys[cam.argmax(axis=0)][fg].astype(np.uint8)
    label[m <= bg_threshold] = 0
    return label


def affinity_labels(label: torch.Tensor, offsets: Sequence[tuple[int, int]]):
    """``(pos_bg, pos_fg, neg)``, bool ``[B,P,H,W]``, for label ``[B,H,W]`` (long, 255 = ignore).

    For pixel i and offset p with j = i + offset_p: ``pos_bg`` = both 0; ``pos_fg`` = same class ≠ 0;
    ``neg`` = different classes. A pair is in none of them when either end is 255 or j is outside the image
    (PSA ``ExtractAffinityLabelInRadius``).
    """
    if label.dim() != 3:
        raise ValueError(f"label must be [B,H,W], got {tuple(label.shape)}")
    label = label.long()
    b, h, w = label.shape
    inside = shift_valid_mask(h, w, offsets, label.device).unsqueeze(0)
    frm = label.unsqueeze(1)
    to = torch.stack([shifted(label, dy, dx, fill=IGNORE) for dy, dx in offsets], dim=1)
    valid = inside & (frm != IGNORE) & (to != IGNORE)
    same = frm == to
    pos_bg = valid & same & (frm == 0)
    pos_fg = valid & same & (frm != 0)
    neg = valid & ~same
    return pos_bg, pos_fg, neg


def pairwise_affinity(features: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> torch.Tensor:
    """``aff [B,P,H,W] = exp(−mean_c |f_i − f_j|)`` (PSA); 0 where j is outside the image.

    Differentiable; memory O(B·P·H·W) plus one shifted copy of the features at a time.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B,C,H,W], got {tuple(features.shape)}")
    h, w = features.shape[-2:]
    affs = []
    for dy, dx in offsets:
        d = (features - shifted(features, dy, dx)).abs().mean(dim=1)
        affs.append(torch.exp(-d))
    aff = torch.stack(affs, dim=1)
    inside = shift_valid_mask(h, w, offsets, features.device).unsqueeze(0)
    return aff * inside.to(aff.dtype)


def affinity_loss(aff, pos_bg, pos_fg, neg, eps: float = 1e-5) -> torch.Tensor:
    """PSA's balanced affinity loss (psa ``train_aff.py``)::

        L = ¼·mean_{P⁺_bg} −log(a + ε) + ¼·mean_{P⁺_fg} −log(a + ε) + ½·mean_{P⁻} −log(1 − a + ε)

    Each group is averaged over its own pairs (an empty group contributes 0; PSA adds 1e-5 to the counts).
    """

    def _mean(x, m):
        m = m.to(x.dtype)
        return (x * m).sum() / m.sum().clamp_min(1.0)

    bg = _mean(-torch.log(aff + eps), pos_bg)
    fg = _mean(-torch.log(aff + eps), pos_fg)
    ng = _mean(-torch.log(1.0 - aff + eps), neg)
    return bg / 4 + fg / 4 + ng / 2


def write_confident_labels(cams_dir, data_root, split: str, out_dir, fg_threshold: float, bg_threshold: float) -> None:
    """IRN's confident regions of every CAM of ``split`` as palette PNGs in ``out_dir`` (255 = unsure), written
    as a whole (:func:`wsss.io.atomic_dir`)."""
    with atomic_dir(out_dir) as tmp:
        for image_id in tqdm(voc.read_split(data_root, split), desc="affinity labels", mininterval=5, disable=None):
            z = load_npz(Path(cams_dir) / f"{image_id}.npz")
            write_label_png(tmp / f"{image_id}.png", confident_labels(z["cam"], z["keys"], fg_threshold, bg_threshold))


def grid_label(label: torch.Tensor, size) -> torch.Tensor:
    """Nearest sampling of a label map [B,H,W] onto the embedding grid (PSA samples labels at crop/8)."""
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()
