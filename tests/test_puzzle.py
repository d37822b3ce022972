"""Puzzle-CAM's puzzle module (the positive control of issue 14): tiling and merging are inverse, the
reconstruction loss is the masked L1 of its equation, α ramps as in the paper's code, and the MainNet objective
trains the tiles' CAMs with gradients through both maps."""

from __future__ import annotations

import pytest
import torch

from wsss import config
from wsss.losses import puzzle
from wsss.methods.mainnet import MainNetObjective
from wsss.models.cam_net import build_cam_net

ALL = ["baseline", "rcm", "mam", "rcm_mam", "puzzle"]


def test_tile_then_merge_is_the_identity_and_tiles_are_the_image_quarters():
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).reshape(2, 3, 8, 12)
    t = puzzle.tile(x, 2)
    assert t.shape == (8, 3, 4, 6)
    assert torch.equal(t[0:2], x[:, :, :4, :6]) and torch.equal(t[2:4], x[:, :, :4, 6:])
    assert torch.equal(t[6:8], x[:, :, 4:, 6:])
    assert torch.equal(puzzle.merge(t, 2), x)
    assert torch.equal(puzzle.merge(puzzle.tile(x[:, :, :6, :12], 3), 3), x[:, :, :6, :12])
    with pytest.raises(ValueError, match="multiple of the 3x3"):
        puzzle.tile(x, 3)


def test_reconstruction_loss_is_the_masked_mean_l1():
    g = torch.Generator().manual_seed(0)
    cam, merged = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]])
    want = sum((cam[b, k] - merged[b, k]).abs().sum() for b in range(2) for k in range(4) if y[b, k]) / cam.numel()
    assert puzzle.reconstruction_loss(cam, merged, y) == pytest.approx(float(want), rel=1e-6)
    assert puzzle.reconstruction_loss(cam, cam, y) == 0
    with pytest.raises(ValueError, match="differ"):
        puzzle.reconstruction_loss(cam, merged[:, :, :2], y)


def test_alpha_ramps_linearly_over_the_first_part_of_training():
    assert puzzle.alpha_at(0.0, 4.0, 0.5) == 0.0
    assert puzzle.alpha_at(0.25, 4.0, 0.5) == pytest.approx(2.0)
    assert puzzle.alpha_at(0.5, 4.0, 0.5) == puzzle.alpha_at(0.9, 4.0, 0.5) == 4.0
    assert puzzle.alpha_at(0.0, 4.0, 0.0) == 4.0


def test_objective_adds_both_puzzle_terms_and_counts_progress():
    cfg = config.validate({"mainnet": {"variants": ALL, "puzzle": {"weight": 2.0}}})
    torch.manual_seed(0)
    net = build_cam_net({"name": "resnet_small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "output_stride": 8})
    obj = MainNetObjective(net, None, "puzzle", cfg["mainnet"], steps_per_epoch=2, epochs=2)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([[1.0] + [0.0] * 19, [0.0, 1.0] + [0.0] * 18])
    first = obj(x, y)
    assert set(first) == {"loss_cls", "loss_pcls", "loss_re", "loss"}
    assert float(first["loss_re"].detach()) == 0  # α(0) = 0 at the start of the ramp
    obj(x, y)  # step 2 of epoch 0: progress 0.25 -> α = 2 · 0.25 / 0.5 = 1
    obj.epoch = 1
    out = obj(x, y)  # progress 0.5: the full weight
    with torch.no_grad():
        cam = net(x)["cam"]
        merged = puzzle.merge(net(puzzle.tile(x, 2))["cam"], 2)
        want = 2.0 * float(puzzle.reconstruction_loss(cam, merged, y))
        terms = {k: float(v.detach()) for k, v in out.items()}
    assert want > 0 and terms["loss_re"] == pytest.approx(want, rel=1e-5)
    assert terms["loss"] == pytest.approx(terms["loss_cls"] + terms["loss_pcls"] + terms["loss_re"], rel=1e-6)
    out["loss"].backward()
    g = [p.grad for p in net.parameters() if p.grad is not None]
    assert g and all(torch.isfinite(t).all() for t in g) and any(t.abs().sum() > 0 for t in g)
    # the fair control reads no puzzle key and adds no term
    base = MainNetObjective(net, None, "baseline", cfg["mainnet"])
    assert set(base(x, y)) == {"loss_cls", "loss"}


def test_a_crop_the_tiles_cannot_split_evenly_on_the_feature_grid_is_refused():
    cfg = config.validate({"mainnet": {"variants": ALL}})
    net = build_cam_net({"name": "resnet_small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "output_stride": 8})
    obj = MainNetObjective(net, None, "puzzle", cfg["mainnet"])
    with pytest.raises(ValueError, match="multiple of 2 x the backbone's stride"):
        obj(torch.randn(1, 3, 40, 40), torch.zeros(1, 20))
