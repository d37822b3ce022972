"""Hide-and-Seek (a positive control of issue 14): masks hide whole grid patches with the configured probability,
are a function of (seed, epoch, image id) only, and the MainNet variant trains on the hidden images."""

from __future__ import annotations

import pytest
import torch

from wsss import config
from wsss.data import hide_and_seek as hs
from wsss.losses import classification
from wsss.methods.mainnet import MainNetObjective
from wsss.models.cam_net import build_cam_net

ALL = ["baseline", "rcm_mam", "hide_and_seek"]
TINY = {"name": "resnet_small", "widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "output_stride": 8}


def test_a_mask_hides_whole_patches_of_the_drawn_size():
    m = hs.hide_mask(50, 70, [16], 0.5, torch.Generator().manual_seed(3))
    assert m.shape == (50, 70) and m.dtype == torch.bool
    cells = [m[r : r + 16, c : c + 16] for r in range(0, 50, 16) for c in range(0, 70, 16)]
    assert all(bool(t.all()) or not bool(t.any()) for t in cells)  # each patch (partial at the edges) all or none
    assert 0 < sum(bool(t.all()) for t in cells) < len(cells)
    assert not hs.hide_mask(50, 70, [0], 1.0).any()  # size 0: nothing hidden
    assert hs.hide_mask(50, 70, [8], 1.0).all() and not hs.hide_mask(50, 70, [8], 0.0).any()


def test_the_hidden_share_follows_hide_prob_and_sizes_are_drawn_per_image():
    g = torch.Generator().manual_seed(0)
    share = torch.stack([hs.hide_mask(64, 64, [4], 0.3, g) for _ in range(50)]).float().mean()
    assert abs(float(share) - 0.3) < 0.02
    g = torch.Generator().manual_seed(0)
    shares = [float(hs.hide_mask(64, 64, [0, 8], 1.0, g).float().mean()) for _ in range(40)]
    assert set(shares) == {0.0, 1.0}  # both sizes drawn: 0 hides nothing, 8 with p 1 everything


def test_masks_depend_on_seed_epoch_and_id_only():
    def mask(seed, epoch, image_id):
        return hs.hide_mask(40, 40, [8, 16], 0.5, hs.image_generator(seed, epoch, image_id))

    assert torch.equal(mask(0, 1, "a"), mask(0, 1, "a"))
    assert not torch.equal(mask(0, 1, "a"), mask(0, 2, "a"))
    assert not torch.equal(mask(0, 1, "a"), mask(1, 1, "a"))
    assert not torch.equal(mask(0, 1, "a"), mask(0, 1, "b"))


def test_hide_sets_the_masked_pixels_to_the_fill_in_every_channel():
    x = torch.randn(2, 3, 4, 5)
    m = torch.zeros(2, 4, 5, dtype=torch.bool)
    m[1, 2:, :3] = True
    before = x.clone()
    out = hs.hide(x, m)
    assert (out[1, :, 2:, :3] == 0).all() and torch.equal(out[0], x[0]) and torch.equal(out[1, :, :2], x[1, :, :2])
    assert torch.equal(x, before) and not torch.equal(out, x)  # a new tensor: the input is left as it was
    with pytest.raises(ValueError, match="does not fit"):
        hs.hide(x, m[:, :3])
    with pytest.raises(ValueError, match="patch sizes"):
        hs.hide_mask(4, 4, [], 0.5)
    with pytest.raises(ValueError, match="hide_prob"):
        hs.hide_mask(4, 4, [2], 1.5)


def test_the_variant_classifies_the_hidden_image_with_masks_independent_of_the_batch():
    cfg = config.validate({"mainnet": {"variants": ALL, "hide_and_seek": {"patch_sizes": [8], "hide_prob": 0.5}}})
    torch.manual_seed(0)
    net = build_cam_net(TINY).eval()  # eval: BatchNorm does not mix the images of a batch
    obj = MainNetObjective(net, None, "hide_and_seek", cfg["mainnet"], seed=7)
    obj.epoch = 2
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([[1.0] + [0.0] * 19, [0.0, 1.0] + [0.0] * 18])
    with torch.no_grad():
        got = float(obj(x, y, ["a", "b"])["loss_cls"])
        masks = torch.stack([hs.hide_mask(32, 32, [8], 0.5, hs.image_generator(7, 2, i)) for i in "ab"])
        assert masks.any() and not masks.all()
        want = float(classification.multilabel_loss(net(hs.hide(x, masks))["logits"], y))
        plain = float(classification.multilabel_loss(net(x)["logits"], y))
        # the same images in the other order: each keeps its own mask
        swapped = float(obj(x.flip(0), y.flip(0), ["b", "a"])["loss_cls"])
    assert got == pytest.approx(want, rel=1e-6) and got != pytest.approx(plain, rel=1e-3)
    assert swapped == pytest.approx(got, rel=1e-5)
    with pytest.raises(ValueError, match="image ids"):
        obj(x, y)
    base = MainNetObjective(net, None, "baseline", cfg["mainnet"])
    with torch.no_grad():
        assert float(base(x, y)["loss_cls"]) == pytest.approx(plain, rel=1e-6)
