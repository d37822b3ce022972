"""Segmentation loss of the final network: cross-entropy, optionally class-balanced.

    L = − Σ_i w_{y_i} log p_i(y_i) / Σ_i w_{y_i}        over pixels i with y_i ≠ 255

(PyTorch's weighted ``cross_entropy`` with mean reduction). Class weights from the pixel frequency f_c of class c
in the training labels (255 excluded):

- ``none``: w_c = 1 (PSA, IRN, SEAM train DeepLab with plain CE);
- ``median_frequency``: w_c = median_{c': f_c' > 0}(f_c') / f_c (Eigen & Fergus, ICCV 2015);
- ``inverse_sqrt_frequency``: w_c ∝ 1/√f_c, rescaled to mean 1 over the present classes.

Classes absent from the labels get weight 0 (they contribute no pixel anyway).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLASS_WEIGHTS = ("none", "median_frequency", "inverse_sqrt_frequency")


def label_counts(labels, num_classes: int = 21) -> np.ndarray:
    """Pixel count per class (int64 [num_classes]) of an iterable of uint8 label maps; 255 ignored."""
    counts = np.zeros(num_classes, np.int64)
    for lab in labels:
        lab = np.asarray(lab)
        counts += np.bincount(lab[lab < num_classes].ravel(), minlength=num_classes)[:num_classes]
    return counts


def class_weights(counts, mode: str) -> torch.Tensor | None:
    """Weights [C] (float32) from class pixel counts, or None for ``none``."""
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f"class weights {mode!r}: choose from {CLASS_WEIGHTS}")
    if mode == "none":
        return None
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class weights: the training labels hold no labelled pixel")
    freq = counts / counts.sum()
    w = np.zeros_like(freq)
    if mode == "median_frequency":
        w[present] = np.median(freq[present]) / freq[present]
    else:
        w[present] = 1.0 / np.sqrt(freq[present])
        w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


def segmentation_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(Weighted) pixel cross-entropy, 255 ignored; see the module docstring for the equation."""
    return F.cross_entropy(logits, labels, weight=weights, ignore_index=255)
