"""Dense CRF (Krähenbühl & Koltun 2011) through ``pydensecrf`` (PyPI ``pydensecrf2``), for pseudo labels and for the
final segmentation's post-processing.

Kernel parameters and where they come from (``shared/research/peers.md`` §2.1, §2.4, §2.5):

==================  ======  ==========  ===========  ========  =========  ==========
source              n_iter  gauss_sxy   gauss_compat bi_sxy    bi_srgb    bi_compat
==================  ======  ==========  ===========  ========  =========  ==========
IRN (our default)   10      3           3            50        5          10
PSA / SEAM          10      3           3            80        13         10
AFA (afa#6)         10      3           3            64        5          4
deeplab-pytorch     10      1           3            67        3          4
==================  ======  ==========  ===========  ========  =========  ==========

IRN: ``misc/imutils.crf_inference_label``; PSA/SEAM: ``tool/imutils.crf_inference`` (with ``scale_factor = 1``);
deeplab-pytorch: ``configs/voc12.yaml`` CRF (ITER_MAX 10, POS_XY_STD 1, POS_W 3, BI_XY_STD 67, BI_RGB_STD 3, BI_W 4).
The defaults of :func:`dense_crf` / :func:`cam_to_pseudo_label` are IRN's, which ``shared/DESIGN.md`` measured on the
synthetic data: background ``(1 − max CAM)^α`` with α = 2 gave 0.557 pseudo-label mIoU (α 1: 0.52, 4: 0.45, 8: 0.31;
a constant background of 0.5: 0.47). :func:`crf_postprocess` defaults to deeplab-pytorch's values, the usual
post-processing of the final DeepLab in AdvCAM/ReCAM/IRN-derived work.

As in PSA/SEAM, the unary is ``−log(clip(score, 1e-5, 1))`` of the *unnormalised* scores (a per-pixel constant does not
change the mean-field posterior, so normalising is unnecessary; only the clipping differs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: IRN ``crf_inference_label`` kernel (our default for pseudo labels).
IRN_CRF: dict[str, float] = dict(n_iter=10, gauss_sxy=3, gauss_compat=3, bi_sxy=50, bi_srgb=5, bi_compat=10)
#: PSA / SEAM ``crf_inference`` kernel (``scale_factor`` 1).
PSA_CRF: dict[str, float] = dict(n_iter=10, gauss_sxy=3, gauss_compat=3, bi_sxy=80, bi_srgb=13, bi_compat=10)
#: AFA test-time CRF (rulixiang/afa#6).
AFA_CRF: dict[str, float] = dict(n_iter=10, gauss_sxy=3, gauss_compat=3, bi_sxy=64, bi_srgb=5, bi_compat=4)
#: kazuto1011/deeplab-pytorch ``configs/voc12.yaml`` (final segmentation post-processing).
DEEPLAB_CRF: dict[str, float] = dict(n_iter=10, gauss_sxy=1, gauss_compat=3, bi_sxy=67, bi_srgb=3, bi_compat=4)

BG_MODES = ("power", "constant")


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _check_image(image: Any, hw: tuple[int, int]) -> np.ndarray:
    image = _np(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [H,W,3] RGB, got shape {image.shape}")
    if image.shape[:2] != tuple(hw):
        raise ValueError(f"image size {image.shape[:2]} differs from score map size {tuple(hw)}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    return np.ascontiguousarray(image)


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    *,
    n_iter: int = 10,
    gauss_sxy: float = 3,
    gauss_compat: float = 3,
    bi_sxy: float = 50,
    bi_srgb: float = 5,
    bi_compat: float = 10,
    clip: float = 1e-5,
) -> np.ndarray:
    """Mean-field dense CRF; returns the posterior ``float32 [C,H,W]`` (sums to 1 per pixel).

    ``image`` uint8 ``[H,W,3]`` RGB; ``probs`` non-negative scores ``[C,H,W]`` (need not sum to 1); unary =
    ``−log(clip(probs, clip, 1))``. Kernel defaults are IRN's (see the module docstring for the alternatives).
    """
    import pydensecrf.densecrf as dcrf

    probs = _np(probs)
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs must be [C,H,W], got shape {probs.shape}")
    c, h, w = probs.shape
    image = _check_image(image, (h, w))
    unary = -np.log(np.clip(probs.astype(np.float32, copy=False), clip, 1.0))
    unary = np.ascontiguousarray(unary.reshape(c, -1), dtype=np.float32)
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(unary)
    d.addPairwiseGaussian(sxy=gauss_sxy, compat=gauss_compat)
    d.addPairwiseBilateral(sxy=bi_sxy, srgb=bi_srgb, rgbim=image, compat=bi_compat)
    q = d.inference(int(n_iter))
    return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def background_score(
    cam: np.ndarray, *, bg_mode: str = "power", bg_alpha: float = 2.0, bg_constant: float = 0.5
) -> np.ndarray:
    """Background plane ``[H,W]`` for CAMs ``[K,H,W]`` in [0,1].

    ``'power'``: ``(1 − max_k cam)^bg_alpha`` (PSA/SEAM ``_crf_with_alpha``; larger α → less background; SEAM uses
    α 4/24, PSA 4/32, 1-stage-wseg BG_POW 3). ``'constant'``: ``bg_constant`` everywhere (the threshold protocol of IRN,
    ``cam_eval_thres``/``sem_seg_bg_thres``).
    """
    cam = np.clip(_np(cam).astype(np.float32, copy=False), 0.0, 1.0)
    hw = cam.shape[1:]
    if bg_mode == "power":
        if cam.shape[0] == 0:
            return np.ones(hw, dtype=np.float32)
        return np.power(1.0 - cam.max(0), np.float32(bg_alpha)).astype(np.float32)
    if bg_mode == "constant":
        return np.full(hw, bg_constant, dtype=np.float32)
    raise ValueError(f"bg_mode must be one of {BG_MODES}, got {bg_mode!r}")


def cam_to_pseudo_label(
    image: np.ndarray,
    cam: np.ndarray,
    keys: Sequence[int],
    *,
    bg_alpha: float = 2.0,
    bg_mode: str = "power",
    bg_constant: float = 0.5,
    ignore_confidence: float = 0.0,
    **crf_kwargs: Any,
) -> np.ndarray:
    """CAMs → CRF-refined pseudo label, uint8 ``[H,W]`` with values in ``{0} ∪ keys ∪ {255}``.

    ``cam`` ``[K,H,W]`` (plane ``k`` is VOC class ``keys[k]``, max-normalised to [0,1]); the background plane is
    :func:`background_score`; the stacked ``[bg, cam]`` scores go through :func:`dense_crf` (``crf_kwargs``:
    ``n_iter, gauss_sxy, gauss_compat, bi_sxy, bi_srgb, bi_compat, clip``) and the argmax is mapped to
    ``[0, *keys]``. Pixels whose posterior maximum is below ``ignore_confidence`` become 255 (0 disables it; cf. the
    ``crf_threshold`` of CLIP-ES-style seeds). An image with no class (``K = 0``) is all background, without a CRF.
    """
    cam = _np(cam).astype(np.float32, copy=False)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cam.ndim != 3 or cam.shape[0] != keys.size:
        raise ValueError(f"cam must be [K,H,W] with K = len(keys) = {keys.size}, got shape {cam.shape}")
    if keys.size and (keys.min() < 1 or keys.max() > 254):
        raise ValueError(f"keys must be foreground class ids (1..254), got {keys.tolist()}")
    h, w = cam.shape[1:]
    if keys.size == 0:
        _check_image(image, (h, w))
        return np.zeros((h, w), dtype=np.uint8)
    bg = background_score(cam, bg_mode=bg_mode, bg_alpha=bg_alpha, bg_constant=bg_constant)
    scores = np.concatenate([bg[None], np.clip(cam, 0.0, 1.0)], axis=0)
    post = dense_crf(image, scores, **crf_kwargs)
    lut = np.concatenate([[0], keys]).astype(np.uint8)
    label = lut[post.argmax(0)]
    if ignore_confidence > 0:
        label[post.max(0) < ignore_confidence] = 255
    return label


def crf_postprocess(
    image: np.ndarray,
    logits_or_probs: np.ndarray,
    *,
    from_logits: bool = True,
    n_iter: int = 10,
    gauss_sxy: float = 1,
    gauss_compat: float = 3,
    bi_sxy: float = 67,
    bi_srgb: float = 3,
    bi_compat: float = 4,
    return_posterior: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """CRF post-processing of a segmentation output ``[C,H,W]`` (all C = 21 classes kept) at image size.

    ``from_logits=True`` applies a softmax over the class axis first; otherwise the input is taken as probabilities.
    Kernel defaults are deeplab-pytorch's ``configs/voc12.yaml`` (pass :data:`IRN_CRF` values to match the pseudo-label
    CRF). Returns the uint8 label map (argmax of the posterior), or ``(label, posterior)`` if ``return_posterior``.
    """
    x = _np(logits_or_probs).astype(np.float32, copy=False)
    if x.ndim != 3:
        raise ValueError(f"segmentation output must be [C,H,W], got shape {x.shape}")
    if from_logits:
        x = x - x.max(0, keepdims=True)
        np.exp(x, out=x)
        x /= x.sum(0, keepdims=True)
    post = dense_crf(
        image,
        x,
        n_iter=n_iter,
        gauss_sxy=gauss_sxy,
        gauss_compat=gauss_compat,
        bi_sxy=bi_sxy,
        bi_srgb=bi_srgb,
        bi_compat=bi_compat,
    )
    label = post.argmax(0).astype(np.uint8)
    return (label, post) if return_posterior else label


__all__ = [
    "IRN_CRF",
    "PSA_CRF",
    "AFA_CRF",
    "DEEPLAB_CRF",
    "BG_MODES",
    "dense_crf",
    "background_score",
    "cam_to_pseudo_label",
    "crf_postprocess",
]
