"""Image-level classification loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["multilabel_loss"]


def multilabel_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss (= ``torch.nn.MultiLabelSoftMarginLoss``, mean reduction).

    L = -1/(B K) sum_{b,k} [ y_bk log sigmoid(z_bk) + (1 - y_bk) log sigmoid(-z_bk) ]

    ``logits`` [B,K] (GAP of the raw CAM), ``labels`` [B,K] in {0,1} (any dtype).
    """
    return F.multilabel_soft_margin_loss(logits, labels.to(logits.dtype))
