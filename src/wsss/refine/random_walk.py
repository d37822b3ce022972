"""Random-walk propagation of CAMs over local pixel affinities (PSA ``infer_aff.py``; IRN ``misc/indexing.py``).

Both reference implementations build a *dense* HW×HW transition matrix and square it ``logt``/``exp_times`` times
(T^(2^8) = 256 steps). That needs O((HW)²) memory (ReCAM#13: ~24 GB at full resolution). Here the matrix is a
sparse CSR tensor with at most ``HW·(2P + 1)`` stored entries (P = number of half-neighbourhood offsets; both
directions of each pair plus a self-loop), and the walk is ``n_steps`` sparse mat-vecs, so memory is
O(HW·P + HW·C). Squaring a sparse local matrix fills it in, so we never square.

Transition (PSA): A_ij = a_ij^β for pairs within the radius (both directions), A_ii = 1, 0 elsewhere; A is
symmetric. T = D⁻¹A with D = diag(Σ_j A_ij) (row-stochastic). PSA writes ``cam_vec @ (A / A.sum(0))``, which is
the same walk transposed. One step: s ← T s for every class plane s ∈ R^{HW}.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss import metrics
from wsss.data import voc
from wsss.data.datasets import normalize
from wsss.io import load_npz, read_image, read_label_png

from .affinity import neighbour_offsets, pairwise_affinity, shift_valid_mask, shifted
from .calibration import edges
from .crf import dense_crf

log = logging.getLogger("wsss")

__all__ = [
    "transition_matrix",
    "random_walk",
    "random_walk_dense",
    "rw_label",
    "rw_scores",
    "walk_label",
    "walked_scores",
    "label_from_scores",
    "dense_affinity_matrix",
]


def _check(aff: torch.Tensor, offsets) -> None:
    if aff.dim() != 3 or aff.shape[0] != len(offsets):
        raise ValueError(f"aff must be [P,H,W] with P = len(offsets); got {tuple(aff.shape)}, P = {len(offsets)}")


def transition_matrix(
    aff: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    beta: float = 8.0,
    *,
    normalize: bool = True,
    index_dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """Sparse CSR ``[HW, HW]`` transition matrix from half-neighbourhood affinities ``aff`` [P,H,W].

    Entry (i, j) for j = i + offset_p (and its mirror (j, i)) is ``aff[p, i]**beta``; the diagonal is 1.
    Pairs leaving the image are not stored. ``normalize=False`` returns the symmetric A; otherwise rows are
    divided by their sums (T = D⁻¹A). Never materialises a dense HW×HW matrix: nnz ≤ HW·(2P + 1).
    Column indices within a row are sorted (slots are ordered by linear offset).
    """
    _check(aff, offsets)
    p, h, w = aff.shape
    n = h * w
    if n >= 2**31 and index_dtype == torch.int32:
        index_dtype = torch.int64
    dev = aff.device
    inside = shift_valid_mask(h, w, offsets, dev)  # [P,H,W] valid "forward" pairs
    a = aff.clamp_min(0) ** beta
    deltas, vals, masks = [], [], []
    for k, (dy, dx) in enumerate(offsets):
        d = dy * w + dx
        # forward slot: row i, col i + d
        deltas.append(d)
        vals.append(a[k])
        masks.append(inside[k])
        # backward slot: row j, col j - d (pair started at j - offset)
        deltas.append(-d)
        vals.append(shifted(a[k], -dy, -dx, fill=0))
        masks.append(shifted(inside[k], -dy, -dx, fill=False))
    deltas.append(0)
    vals.append(torch.ones((h, w), dtype=a.dtype, device=dev))
    masks.append(torch.ones((h, w), dtype=torch.bool, device=dev))
    order = sorted(range(len(deltas)), key=deltas.__getitem__)
    del a
    val = torch.stack([vals[s].reshape(n) for s in order], dim=1)  # [HW, S]
    del vals
    mask = torch.stack([masks[s].reshape(n) for s in order], dim=1)
    del masks
    val.mul_(mask)  # forward slots whose pair leaves the image still hold aff values: zero them
    if normalize:
        val.div_(val.sum(dim=1, keepdim=True))
    val = val[mask]
    delta = torch.tensor([deltas[s] for s in order], dtype=index_dtype, device=dev)
    col = torch.arange(n, dtype=index_dtype, device=dev).unsqueeze(1) + delta.unsqueeze(0)
    col = col[mask]
    crow = torch.zeros(n + 1, dtype=index_dtype, device=dev)
    crow[1:] = torch.cumsum(mask.sum(dim=1), 0).to(index_dtype)
    del mask
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, val, size=(n, n), check_invariants=False)


def random_walk(
    cam: torch.Tensor,
    aff: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    *,
    beta: float = 8.0,
    n_steps: int = 256,
) -> torch.Tensor:
    """Propagate ``cam`` [C,H,W] (C = K+1 with the background plane, or any number of planes) ``n_steps``
    times with the sparse transition of :func:`transition_matrix`: returns T^n_steps applied to each plane,
    [C,H,W], in ``cam``'s dtype. Defaults: PSA (β = 8, logt = 8 → 256 steps); IRN uses β = 10, 256 steps.
    """
    _check(aff, offsets)
    c, h, w = cam.shape
    if aff.shape[1:] != (h, w):
        raise ValueError(f"cam {tuple(cam.shape)} and aff {tuple(aff.shape)} differ in size")
    if n_steps < 0:
        raise ValueError("n_steps must be >= 0")
    t = transition_matrix(aff.to(cam.dtype), offsets, beta)
    v = cam.reshape(c, h * w).t().contiguous()
    for _ in range(n_steps):
        v = t @ v
    return v.t().reshape(c, h, w).contiguous()


def dense_affinity_matrix(aff: torch.Tensor, offsets: Sequence[tuple[int, int]], beta: float = 8.0) -> torch.Tensor:
    """Dense symmetric A [HW,HW] (reference only; O((HW)²) memory): pairs, both directions, self-loops 1."""
    _check(aff, offsets)
    p, h, w = aff.shape
    n = h * w
    a = torch.zeros((n, n), dtype=aff.dtype, device=aff.device)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for k, (dy, dx) in enumerate(offsets):
        yt, xt = ys + dy, xs + dx
        ok = (yt >= 0) & (yt < h) & (xt >= 0) & (xt < w)
        i = (ys * w + xs)[ok]
        j = (yt * w + xt)[ok]
        v = aff[k][ok] ** beta
        a[i, j] = v
        a[j, i] = v
    a += torch.eye(n, dtype=aff.dtype, device=aff.device)
    return a


def random_walk_dense(
    cam: torch.Tensor,
    aff: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    *,
    beta: float = 8.0,
    n_steps: int = 256,
    max_pixels: int = 4096,
) -> torch.Tensor:
    """Reference: dense T = A / rowsum, T^n_steps by ``matrix_power`` (PSA squares it), applied to ``cam``."""
    c, h, w = cam.shape
    if h * w > max_pixels:
        raise ValueError(f"random_walk_dense is a reference for small inputs (HW = {h * w} > {max_pixels})")
    a = dense_affinity_matrix(aff.to(cam.dtype), offsets, beta)
    t = a / a.sum(dim=1, keepdim=True)
    tn = torch.linalg.matrix_power(t, n_steps)
    return (tn @ cam.reshape(c, h * w).t()).t().reshape(c, h, w)


def rw_label(
    cam,
    keys,
    aff: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    *,
    beta: float = 10.0,
    n_steps: int = 256,
    bg_threshold: float = 0.25,
    bg_power: float | None = None,
) -> np.ndarray:
    """uint8 [H,W] label from a normalised foreground CAM ``cam`` [K,H,W] with VOC ``keys`` [K].

    ``bg_power=None`` (IRN ``make_sem_seg_labels``, defaults β 10, 2^8 steps, ``sem_seg_bg_thres`` 0.25):
    walk the K foreground planes, divide by their global max, pad a constant background plane
    ``bg_threshold`` in front, argmax (ties → background), map through ``[0, *keys]``.
    ``bg_power=α`` (PSA ``infer_aff.py``, α 16, β 8): background plane (1 − max_k cam)^α walked with the others,
    then argmax; ``bg_threshold`` is unused. Resolution: the caller passes cam and aff at the same size
    (IRN walks at stride 4 and upsamples the result).
    """
    keys = np.asarray(keys, dtype=np.int64)
    scores = rw_scores(cam, aff, offsets, beta=beta, n_steps=n_steps, bg_threshold=bg_threshold, bg_power=bg_power)
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    return lut[scores.argmax(dim=0).numpy()]


def rw_scores(
    cam,
    aff: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    *,
    beta: float = 10.0,
    n_steps: int = 256,
    bg_threshold: float = 0.25,
    bg_power: float | None = None,
) -> torch.Tensor:
    """The ``[K+1,H,W]`` scores (background first) that :func:`rw_label` takes the argmax of; a caller may
    upsample them to the image before the argmax (PSA and IRN both upsample the walked maps)."""
    cam_t = torch.as_tensor(np.asarray(cam), dtype=torch.float32)
    if cam_t.dim() != 3:
        raise ValueError("cam must be [K,H,W]")
    h, w = cam_t.shape[1:]
    if cam_t.shape[0] == 0:
        return torch.ones((1, h, w))
    aff = aff.to(torch.float32)
    if bg_power is None:
        rw = random_walk(cam_t, aff, offsets, beta=beta, n_steps=n_steps)
        rw = rw / rw.max().clamp_min(1e-12)
        return torch.cat([torch.full((1, h, w), float(bg_threshold)), rw], dim=0)
    bg = (1.0 - cam_t.max(dim=0, keepdim=True).values).clamp_min(0) ** bg_power
    return random_walk(torch.cat([bg, cam_t], dim=0), aff, offsets, beta=beta, n_steps=n_steps)


@torch.no_grad()
def walked_scores(net, image: np.ndarray, cam: np.ndarray, keys: np.ndarray, rw, bg_values=None) -> list[np.ndarray]:
    """The ``[K+1,H,W]`` walked scores of one image (raw uint8 HxWx3, normalised CAM [K,H,W]), background first,
    upsampled to the image: one array per background value of ``bg_values`` (IRN ``bg_score`` or PSA
    ``bg_power`` by ``rw["bg_mode"]``; default: the config's one value).

    The affinity network ``net`` embeds the image (resized by ``rw["image_scale"]``); the pairwise affinities
    within ``rw["radius"]`` give the sparse transition; the CAM is area-averaged onto that grid and walked
    ``rw["n_steps"]`` times. A walk moves each plane on its own, so IRN's constants share one walk of the classes
    and PSA's powers one walk of all their background planes beside the classes (the calibration's grid costs
    one walk).
    """
    h, w = image.shape[:2]
    psa = rw["bg_mode"] == "psa"
    values = [rw["bg_power"] if psa else rw["bg_score"]] if bg_values is None else [float(v) for v in bg_values]
    if len(keys) == 0:
        return [np.ones((1, h, w), np.float32) for _ in values]
    x = normalize(image)[None]
    if rw["image_scale"] != 1.0:
        x = F.interpolate(x, scale_factor=rw["image_scale"], mode="bilinear", align_corners=False)
    offsets = neighbour_offsets(rw["radius"])
    aff = pairwise_affinity(net(x), offsets)[0].to(torch.float32)
    cam_t = F.adaptive_avg_pool2d(torch.as_tensor(cam, dtype=torch.float32)[None], aff.shape[-2:])[0]
    m, (gh, gw) = len(values), cam_t.shape[1:]
    if psa:
        peak = cam_t.max(dim=0, keepdim=True).values
        bgs = [(1.0 - peak).clamp_min(0) ** p for p in values]
        walked = random_walk(torch.cat([*bgs, cam_t], dim=0), aff, offsets, beta=rw["beta"], n_steps=rw["n_steps"])
        planes = [torch.cat([walked[j : j + 1], walked[m:]], dim=0) for j in range(m)]
    else:
        fg = random_walk(cam_t, aff, offsets, beta=rw["beta"], n_steps=rw["n_steps"])
        fg = fg / fg.max().clamp_min(1e-12)
        planes = [torch.cat([torch.full((1, gh, gw), v), fg], dim=0) for v in values]
    up = F.interpolate(torch.stack(planes), size=(h, w), mode="bilinear", align_corners=False)
    return list(up.numpy())


def label_from_scores(scores: np.ndarray, image: np.ndarray, keys: np.ndarray, crf=None) -> np.ndarray:
    """uint8 [H,W] label of walked scores (:func:`walked_scores`): their argmax, or with ``crf`` (the ``refine``
    config: its ``crf`` parameters and ``ignore_confidence``) a dense CRF on them, 255 where its posterior is
    below ``ignore_confidence``."""
    lut = np.concatenate([[0], np.asarray(keys, np.int64)]).astype(np.uint8)
    if crf is None or len(keys) == 0:
        return lut[scores.argmax(axis=0)]
    # walked scores as CRF unaries, all planes divided by ONE maximum: the background plane (IRN's constant, or
    # PSA's walked power) keeps its ratio to the classes. Normalising each plane by its own maximum would lift
    # IRN's constant 0.35 to 1.0 and let the background win every pixel.
    scores = scores / max(float(scores.max()), 1e-6)
    post = dense_crf(image, np.clip(scores, 0.0, 1.0), **crf["crf"])
    label = lut[post.argmax(0)]
    if crf["ignore_confidence"] > 0:
        label[post.max(0) < crf["ignore_confidence"]] = 255
    return label


def walk_label(net, image: np.ndarray, cam: np.ndarray, keys: np.ndarray, rw, crf=None) -> np.ndarray:
    """uint8 [H,W] random-walk pseudo label of one image (raw uint8 HxWx3) and its normalised CAM [K,H,W]: the
    walked scores with the config's background (:func:`walked_scores`), then :func:`label_from_scores`."""
    return label_from_scores(walked_scores(net, image, cam, keys, rw)[0], image, keys, crf)


def walk_sweep(
    net, rw, calibration_ids: list[str], *, cams_dir, data_root, crf=None, n_images: int, net_name: str
) -> tuple[dict, dict]:
    """(the walk config with the chosen background, the record): the best pseudo-label mIoU over
    ``rw["calibration_values"]`` (IRN ``bg_score`` or PSA ``bg_power``, by ``bg_mode``) on the first ``n_images``
    of ``calibration_ids`` (the caller passes ids disjoint from the scored ones); warns when the best value is
    an end of the grid. One walk per image serves the whole grid (:func:`walked_scores`)."""
    key = "bg_power" if rw["bg_mode"] == "psa" else "bg_score"
    values = [float(v) for v in rw["calibration_values"]]
    ids = calibration_ids[:n_images]
    cms = [metrics.ConfusionMatrix(pred_ignore="skip") for _ in values]
    for image_id in tqdm(ids, desc=f"walk calibration {net_name}", mininterval=5, disable=None):
        z = load_npz(cams_dir / f"{image_id}.npz")
        image = read_image(voc.image_path(data_root, image_id))
        gt = read_label_png(voc.mask_path(data_root, image_id))
        for cm, scores in zip(cms, walked_scores(net, image, z["cam"].astype(np.float32), z["keys"], rw, values)):
            cm.update(label_from_scores(scores, image, z["keys"], crf), gt)
    curve = [{key: v, "miou": float(cm.compute()["miou"])} for v, cm in zip(values, cms)]
    best = max(curve, key=lambda r: r["miou"])  # first best on ties: the grid's order decides
    at_edge = edges(best, {key: values})
    if at_edge:
        log.warning(
            "random-walk calibration of %s: the best %s (%g) is at the edge of refine.random_walk."
            "calibration_values (%s); widen it",
            net_name,
            key,
            best[key],
            ", ".join(at_edge),
        )
    record = {"method": "walk_sweep", "parameters": [key], "images": len(ids), "curve": curve}
    return {**rw, key: best[key]}, {**record, "chosen": {key: best[key]}, "at_edge": at_edge}
