import math

import numpy as np
import pytest
import torch

from wsss.losses.segmentation import class_weights, label_counts, segmentation_ce


def test_label_counts_ignore_255():
    a = np.array([[0, 0, 1], [255, 2, 2]], np.uint8)
    c = label_counts([a, a], num_classes=4)
    assert c.tolist() == [4, 2, 4, 0]


def test_median_frequency_weights():
    w = class_weights([60, 30, 10, 0], "median_frequency")
    # f = .6 .3 .1 ; median .3 -> w = .5, 1, 3 ; absent class 0
    assert torch.allclose(w, torch.tensor([0.5, 1.0, 3.0, 0.0]))


def test_inverse_sqrt_weights_mean_one_and_order():
    w = class_weights([64, 16, 4], "inverse_sqrt_frequency")
    assert math.isclose(float(w.mean()), 1.0, rel_tol=1e-6)
    assert w[0] < w[1] < w[2] and math.isclose(float(w[2] / w[1]), 2.0, rel_tol=1e-6)


def test_none_and_unknown():
    assert class_weights([1, 2], "none") is None
    with pytest.raises(ValueError, match="choose from"):
        class_weights([1, 2], "balanced")


def test_weighted_ce_upweights_the_rare_class():
    # two pixels: a frequent class 0 predicted wrong and a rare class 1 predicted right
    logits = torch.tensor([[[[0.0, 0.0]], [[2.0, 2.0]]]])  # [1,2,1,2]: class 1 favoured everywhere
    labels = torch.tensor([[[0, 1]]])
    plain = segmentation_ce(logits, labels)
    weighted = segmentation_ce(logits, labels, torch.tensor([1.0, 9.0]))
    # the correct rare pixel gets weight 9: the weighted mean loss drops below the plain one
    assert weighted < plain
    # and the weighted loss is the weighted mean of the per-pixel losses
    lp = -torch.log_softmax(logits, 1)[0, :, 0]  # [2 classes, 2 pixels]
    expect = (1.0 * lp[0, 0] + 9.0 * lp[1, 1]) / 10.0
    assert torch.isclose(weighted, expect)


def test_ce_ignores_255():
    logits = torch.randn(1, 3, 2, 2)
    labels = torch.tensor([[[0, 255], [255, 255]]])
    assert torch.isclose(segmentation_ce(logits, labels), segmentation_ce(logits[..., :1, :1], labels[..., :1, :1]))
