"""Affinity pairs, labels, PSA affinity and loss (wsss.refine.affinity), AffinityNet shapes."""

import numpy as np
import pytest
import torch

from wsss.refine.affinity import (
    affinity_labels,
    affinity_loss,
    confident_labels,
    neighbour_offsets,
    pairwise_affinity,
)


def test_neighbour_offsets_half_neighbourhood():
    offs = neighbour_offsets(5)
    assert len(offs) == 34  # PSA get_indices_of_pairs(radius=5)
    assert offs[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    s = set(offs)
    assert len(s) == len(offs)
    for dy, dx in offs:
        assert dy * dy + dx * dx < 25 and (dy, dx) != (0, 0)
        assert (-dy, -dx) not in s  # each unordered pair once
    # together with the mirrors: the full disc minus the centre
    full = {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5) if 0 < dy * dy + dx * dx < 25}
    assert s | {(-dy, -dx) for dy, dx in s} == full
    assert neighbour_offsets(2) == [(0, 1), (1, -1), (1, 0), (1, 1)]


def test_affinity_labels_hand_checked():
    # label (1 image, 2x3):  0 0 1
    #                        255 1 1
    lab = torch.tensor([[[0, 0, 1], [255, 1, 1]]])
    offs = [(0, 1), (1, 0), (1, -1)]
    pos_bg, pos_fg, neg = affinity_labels(lab, offs)
    assert pos_bg.shape == (1, 3, 2, 3)
    # offset (0,1): pairs (0,0)-(0,1) bg; (0,1)-(0,2) neg; (0,2) leaves; (1,0)-(1,1) touches 255; (1,1)-(1,2) fg
    assert pos_bg[0, 0].tolist() == [[True, False, False], [False, False, False]]
    assert neg[0, 0].tolist() == [[False, True, False], [False, False, False]]
    assert pos_fg[0, 0].tolist() == [[False, False, False], [False, True, False]]
    # offset (1,0): (0,0)-(1,0) touches 255; (0,1)-(1,1) neg; (0,2)-(1,2) fg; row 1 leaves the image
    assert neg[0, 1].tolist() == [[False, True, False], [False, False, False]]
    assert pos_fg[0, 1].tolist() == [[False, False, True], [False, False, False]]
    assert not pos_bg[0, 1].any()
    # offset (1,-1): (0,0) leaves; (0,1)-(1,0) touches 255; (0,2)-(1,1) fg
    assert pos_fg[0, 2].tolist() == [[False, False, True], [False, False, False]]
    assert not neg[0, 2].any() and not pos_bg[0, 2].any()
    # the three groups are disjoint; nothing on the bottom row for dy = 1 (every target leaves the image)
    total = pos_bg.int() + pos_fg.int() + neg.int()
    assert total.max() <= 1 and total[0, 1:, 1, :].sum() == 0


def test_confident_labels_irn_thresholds():
    cam = np.zeros((2, 1, 5), np.float32)
    cam[0, 0] = [0.9, 0.30, 0.2, 0.05, 0.0]
    cam[1, 0] = [0.1, 0.1, 0.1, 0.01, 0.5]
    lab = confident_labels(cam, [7, 12], fg_threshold=0.30, bg_threshold=0.05)
    assert lab.dtype == np.uint8
    assert lab[0].tolist() == [7, 255, 255, 0, 12]
    assert confident_labels(np.zeros((0, 2, 2)), []).tolist() == [[0, 0], [0, 0]]


def test_pairwise_affinity_psa_form():
    f = torch.zeros(1, 2, 2, 3)
    f[0, :, 0, 1] = torch.tensor([1.0, 3.0])  # |f_i - f_j|_1 mean = 2 with its zero neighbours
    offs = [(0, 1), (1, 0)]
    aff = pairwise_affinity(f, offs)
    assert aff.shape == (1, 2, 2, 3)
    assert torch.allclose(aff[0, 0, 0, 0], torch.exp(torch.tensor(-2.0)))  # (0,0)-(0,1)
    assert torch.allclose(aff[0, 0, 0, 1], torch.exp(torch.tensor(-2.0)))  # (0,1)-(0,2)
    assert aff[0, 0, 1, 0] == 1.0  # identical features
    assert aff[0, 0, :, 2].eq(0).all() and aff[0, 1, 1].eq(0).all()  # pairs leaving the image


def test_affinity_loss_perfect_and_negative_violation():
    lab = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    offs = neighbour_offsets(3)
    pos_bg, pos_fg, neg = affinity_labels(lab, offs)
    assert pos_bg.any() and pos_fg.any() and neg.any()
    perfect = (pos_bg | pos_fg).float()
    l0 = affinity_loss(perfect, pos_bg, pos_fg, neg)
    assert float(l0) < 1e-4
    bad = perfect.clone()
    bad[neg.nonzero()[0].unbind()] = 0.99  # one negative pair gets a high affinity
    l1 = affinity_loss(bad, pos_bg, pos_fg, neg)
    assert float(l1) > float(l0) + 0.05
    # each group is averaged separately and weighted 1/4, 1/4, 1/2
    half = torch.full_like(perfect, 0.5)
    l_half = affinity_loss(half, pos_bg, pos_fg, neg)
    expect = -(0.25 + 0.25) * np.log(0.5 + 1e-5) - 0.5 * np.log(0.5 + 1e-5)
    assert float(l_half) == pytest.approx(expect, rel=1e-5)
    # gradient pushes the negative pair's affinity down
    a = bad.clone().requires_grad_(True)
    affinity_loss(a, pos_bg, pos_fg, neg).backward()
    assert a.grad[neg.nonzero()[0].unbind()] > 0


def test_affinity_net_embedding_stride8():
    from wsss.models.affinity_net import AffinityNet

    torch.manual_seed(0)
    net = AffinityNet({"name": "resnet_small", "widths": (8, 8, 16, 16)}, embed_dim=32).eval()
    with torch.no_grad():
        e = net(torch.rand(1, 3, 64, 48))
    assert e.shape == (1, 32, 8, 6)
    aff = pairwise_affinity(e, neighbour_offsets(3))
    assert aff.shape == (1, 12, 8, 6) and float(aff.max()) <= 1.0 and float(aff.min()) >= 0.0


def test_affinity_net_embedding_stride4_uses_layer1():
    from wsss.models.affinity_net import AffinityNet

    torch.manual_seed(0)
    net = AffinityNet({"name": "resnet_small", "widths": (8, 8, 16, 16)}, embed_dim=16, stride=4).eval()
    x = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        e = net(x)
        assert e.shape == (1, 16, 16, 12)
        net.proj[0].weight.zero_()  # the layer1 projection feeds the embedding
        assert not torch.allclose(net(x), e)
    with pytest.raises(ValueError, match="stride"):
        AffinityNet({"name": "resnet_small"}, stride=16)
