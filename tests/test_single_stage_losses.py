"""Single-stage pieces for AA&LR: PAMR, nGWP / focal penalty / pseudo GT, AA loss, LR."""

import math

import pytest
import torch
import torch.nn.functional as F

from wsss.losses.adaptive_affinity import (
    KernelWeights,
    adaptive_affinity_loss,
    adversarial_affinity_loss,
    per_class_kernel_losses,
)
from wsss.losses.label_reassign import class_centres, label_reassign_loss, reassign
from wsss.losses.single_stage import class_scores, focal_size_penalty, ngwp_scores, pseudo_gt
from wsss.refine.pamr import local_affinity, pamr


def _two_regions(H=8, W=8):
    y = torch.zeros(1, H, W, dtype=torch.long)
    y[:, :, W // 2 :] = 1
    return y


def _sharp_logits(y, C=3, scale=20.0):
    return F.one_hot(y, C).permute(0, 3, 1, 2).float() * scale


# ---------------------------------------------------------------- AA loss
@pytest.mark.parametrize("weighting", ["balanced", "confidence", "none"])
def test_aa_zero_for_piecewise_constant_sharp_prediction(weighting):
    y = _two_regions()
    loss = adaptive_affinity_loss(_sharp_logits(y), y, margin=3.0, weighting=weighting)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_aa_grows_when_same_region_neighbours_disagree():
    y = _two_regions()
    base = float(adaptive_affinity_loss(_sharp_logits(y), y))
    noisy = _sharp_logits(y)
    noisy[0, :, 2, 1] = torch.tensor([0.0, 0.0, 5.0])  # one pixel in region 0 predicts class 2
    worse = float(adaptive_affinity_loss(noisy, y))
    assert worse > base + 1e-3


def test_aa_negative_pairs_hinge_when_regions_look_alike():
    y = _two_regions()
    flat = torch.zeros(1, 3, 8, 8)  # identical distributions everywhere: KL 0 -> hinge = margin
    loss = adaptive_affinity_loss(flat, y, margin=3.0, weighting="balanced")
    assert float(loss) == pytest.approx(3.0, abs=1e-5)


def test_aa_ignored_pixels_do_not_contribute():
    y = _two_regions()
    logits = _sharp_logits(y)
    logits[0, :, 3, 1] = torch.tensor([0.0, 0.0, 9.0])  # wrong pixel ...
    y_ign = y.clone()
    y_ign[0, 3, 1] = 255  # ... but its label is ignored
    loss = adaptive_affinity_loss(logits, y_ign)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    all_ign = torch.full_like(y, 255)
    g = torch.randn(1, 3, 8, 8, requires_grad=True)
    out = adaptive_affinity_loss(g, all_ign)
    out.backward()
    assert float(out.detach()) == 0.0 and float(g.grad.abs().sum()) == 0.0


def test_aa_confidence_weighting_and_grad():
    y = _two_regions()
    logits = torch.randn(1, 3, 8, 8, requires_grad=True)
    conf = torch.ones(1, 8, 8)
    a = adaptive_affinity_loss(logits, y, weighting="confidence", confidence=conf)
    b = adaptive_affinity_loss(logits, y, weighting="none")
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)  # uniform confidence == plain mean
    a.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        adaptive_affinity_loss(logits, y, weighting="bogus")


# ---------------------------------------------------------------- label reassign
def _planted():
    # 2 classes, D=2: class 0 along e_x, class 1 along e_y; pixel (0,0) labelled 0 sits on e_y.
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[:, 2:] = 1
    emb = torch.zeros(1, 2, 4, 4)
    emb[0, 0][y[0] == 0] = 1.0
    emb[0, 1][y[0] == 1] = 1.0
    emb[0, :, 0, 0] = torch.tensor([0.0, 1.0])
    return emb, y


def test_the_per_class_kernel_losses_add_up_to_the_plain_pair_loss():
    torch.manual_seed(0)
    logits, pseudo = torch.randn(2, 4, 9, 9), torch.randint(0, 4, (2, 9, 9))
    pseudo[0, :2] = 255
    losses, counts = per_class_kernel_losses(logits, pseudo, dilations=(1, 2), margin=3.0)
    assert losses.shape == counts.shape == (2, 4, 2)
    total = (losses * counts).sum() / counts.sum()
    torch.testing.assert_close(total, adaptive_affinity_loss(logits, pseudo, (1, 2), 3.0, weighting="none"))
    with pytest.raises(ValueError, match="adversarial"):
        adaptive_affinity_loss(logits, pseudo, weighting="adversarial")


def test_the_adversarial_kernel_weights_climb_towards_the_worst_size():
    """A class whose labels disagree with the prediction only at 2-px steps: the ascent raises that size's weight,
    while the network's gradient lowers the loss (the minimax of AAF's adaptive affinity fields)."""
    pseudo = torch.zeros(1, 12, 12, dtype=torch.long)
    pseudo[:, :, 6:] = 1
    logits = torch.zeros(1, 2, 12, 12)
    logits[:, 1, :, 5:] = 4.0  # the prediction's edge one column left of the label's: wrong pairs at both sizes
    logits.requires_grad_(True)
    kw = KernelWeights(num_classes=2, num_sizes=2, lr=1.0)
    loss = adversarial_affinity_loss(logits, pseudo, kw.logits, dilations=(1, 3), margin=3.0)
    loss.backward()
    losses, _ = per_class_kernel_losses(logits.detach(), pseudo, (1, 3), 3.0)
    before = torch.softmax(kw.logits.detach(), -1).clone()
    kw.ascend()
    after = torch.softmax(kw.logits.detach(), -1)
    worst = losses.argmax(-1)  # per (sign, class), the size with the larger loss
    moved = torch.gather(after - before, -1, worst[..., None])[..., 0]
    differs = losses[..., 0] != losses[..., 1]
    assert bool(differs.any()) and bool((moved[differs] > 0).all())
    assert kw.logits.grad is None
    stepped = (logits - 0.5 * logits.grad).detach()
    # the network's descent lowers the loss under the weights it was computed with (the ascent raises it)
    zeros = torch.zeros_like(kw.logits)
    assert adversarial_affinity_loss(stepped, pseudo, zeros, (1, 3), 3.0) < loss.detach()
    assert adversarial_affinity_loss(logits.detach(), pseudo, kw.logits.detach(), (1, 3), 3.0) > loss.detach()


def test_reassign_flips_planted_pixel_only():
    emb, y = _planted()
    centres, present = class_centres(emb, y)
    assert present.tolist() == [True, True]
    new = reassign(emb, y, centres, present, margin=0.2)
    assert int(new[0, 0, 0]) == 1
    changed = new != y
    assert int(changed.sum()) == 1
    ign = reassign(emb, y, centres, present, margin=0.2, mode="ignore")
    assert int(ign[0, 0, 0]) == 255 and int((ign != y).sum()) == 1
    # a huge margin leaves everything alone; 255 pixels stay 255
    y2 = y.clone()
    y2[0, 3, 3] = 255
    assert torch.equal(reassign(emb, y2, centres, present, margin=5.0), y2)


def test_reassign_keeps_each_pixel_within_its_own_image_classes():
    """Issue 16: the batch's centres include classes only other images hold. A pixel of image 0 (classes bg, 1)
    that sits on image 1's class-2 centre moves to class 2 without ``allowed`` (the bug reproduced), and stays in
    its own image's classes with it; a pixel of image 1 is still free to move within its own classes."""
    y = torch.zeros(2, 4, 4, dtype=torch.long)
    y[0, 2:] = 1  # image 0: background above, class 1 below
    y[1, 2:] = 2  # image 1: background above, class 2 below
    emb = torch.zeros(2, 3, 4, 4)
    for k in range(3):
        emb[:, k][y == k] = 1.0
    emb[0, :, 2, 0] = torch.tensor([0.0, 0.0, 1.0])  # image 0, class 1, but on the class-2 centre
    emb[1, :, 3, 3] = torch.tensor([1.0, 0.0, 0.0])  # image 1, class 2, but on the background centre
    centres, present = class_centres(emb, y, num_classes=3)
    free = reassign(emb, y, centres, present, margin=0.2)
    assert int(free[0, 2, 0]) == 2 and int(free[1, 3, 3]) == 0  # the first: a class image 0 does not contain
    allowed = torch.tensor([[True, True, False], [True, False, True]])
    own = reassign(emb, y, centres, present, margin=0.2, allowed=allowed)
    assert int(own[0, 2, 0]) == 1 and int(own[1, 3, 3]) == 0
    assert int((own != y).sum()) == 1
    with pytest.raises(ValueError, match="allowed"):
        reassign(emb, y, centres, present, allowed=allowed[:, :2])


def test_lr_loss_lower_at_centres():
    emb, y = _planted()
    centres, present = class_centres(emb, y)
    at_centres = centres[y[0]].permute(2, 0, 1).unsqueeze(0)  # every pixel exactly on its centre
    moved = F.normalize(at_centres + 0.8 * torch.randn_like(at_centres), dim=1)
    assert float(label_reassign_loss(at_centres, y, centres, present)) < float(
        label_reassign_loss(moved, y, centres, present)
    )
    e = emb.clone().requires_grad_(True)
    out = label_reassign_loss(e, reassign(emb, y, centres, present), centres, present)
    out.backward()
    assert torch.isfinite(e.grad).all()


# ---------------------------------------------------------------- PAMR
def test_pamr_constant_image_keeps_constant_onehot_mask():
    img = torch.full((1, 3, 16, 16), 0.5)
    mask = torch.zeros(1, 3, 16, 16)
    mask[:, 1] = 1.0
    out = pamr(img, mask, dilations=(1, 2, 4), n_iter=10)
    assert torch.allclose(out, mask, atol=1e-6)
    aff = local_affinity(img, (1, 2))
    assert torch.allclose(aff, torch.full_like(aff, 1 / 16))  # uniform over 8*2 neighbours


@pytest.mark.parametrize("pixel_noise,min_acc", [(0.0, 1.0), (0.01, 0.98)])
def test_pamr_smooths_noisy_mask_towards_colour_regions(pixel_noise, min_acc):
    # Note: sigma is the local std, so even small pixel noise inside a flat region is
    # amplified (|I_i - I_j| / (0.1 sigma) ~ 10) -> less smoothing than on a clean image.
    torch.manual_seed(0)
    H = W = 48
    region = torch.zeros(H, W, dtype=torch.long)
    region[:, W // 2 :] = 1
    img = torch.stack([region.float(), 1 - region.float(), torch.zeros(H, W)]).unsqueeze(0)
    img = img + pixel_noise * torch.randn_like(img)
    noisy = region.clone()
    flip = torch.rand(H, W) < 0.2
    noisy[flip] = 1 - noisy[flip]
    mask = F.one_hot(noisy, 2).permute(2, 0, 1).float().unsqueeze(0)
    out = pamr(img, mask)  # 1-stage defaults: dilations (1,2,4,8,12,24), 10 iterations
    assert torch.allclose(out.sum(1), torch.ones(1, H, W), atol=1e-5)
    acc_before = float((noisy == region).float().mean())
    acc_after = float((out[0].argmax(0) == region).float().mean())
    assert acc_before < 0.85 and acc_after >= min_acc


def test_pamr_resizes_low_res_masks():
    img = torch.rand(2, 3, 20, 24)
    out = pamr(img, torch.softmax(torch.randn(2, 4, 5, 6), 1), n_iter=2)
    assert out.shape == (2, 4, 20, 24)
    assert torch.allclose(out.sum(1), torch.ones(2, 20, 24), atol=1e-5)


# ---------------------------------------------------------------- nGWP / focal / pseudo GT
def test_ngwp_and_focal_hand_checked():
    # 2 channels, 2 pixels: logits pixel a = (0, ln 3), pixel b = (0, 0)
    y = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])  # [1,2,1,2]
    m1 = torch.tensor([0.75, 0.5])  # softmax prob of channel 1 at a, b
    s1 = (math.log(3) * 0.75 + 0.0 * 0.5) / (1 + 1.25)
    s0 = 0.0
    assert ngwp_scores(y)[0].tolist() == pytest.approx([s0, s1], abs=1e-6)
    m = torch.softmax(y, 1)
    mbar1 = float(m1.mean())
    f1 = (1 - mbar1) ** 3 * math.log(0.01 + mbar1)
    assert float(focal_size_penalty(m)[0, 1]) == pytest.approx(f1, abs=1e-6)
    # empty mask -> strongly negative
    assert float(focal_size_penalty(torch.zeros(1, 1, 2, 2))) == pytest.approx(math.log(0.01))
    assert float(class_scores(y)[0, 0]) == pytest.approx(s1 + f1, abs=1e-6)


def test_pseudo_gt_thresholds_hand_checked():
    # channels bg, c1, c2; 4 pixels in a row
    m = torch.tensor(
        [
            [[1.0, 0.8, 0.1, 0.1]],  # bg: max 1.0 -> t = 0.7
            [[0.0, 0.9, 1.0, 0.1]],  # c1: max 1.0 -> t = 0.6
            [[0.0, 0.1, 0.15, 0.15]],  # c2: max 0.15 -> t = max(0.09, 0.2) = 0.2 -> never
        ]
    ).unsqueeze(0)
    labels = torch.tensor([[1.0, 1.0]])  # fg labels; bg prepended
    gt = pseudo_gt(m, labels)
    # px0: bg only -> 0; px1: bg (0.8>0.7) and c1 (0.9>0.6) -> 255; px2: c1 -> 1; px3: nobody -> 255
    assert gt[0, 0].tolist() == [0, 255, 1, 255]
    # an absent class cannot claim: drop c1 -> px1 is bg, px2 nobody
    gt2 = pseudo_gt(m, torch.tensor([[0.0, 1.0]]))
    assert gt2[0, 0].tolist() == [0, 0, 255, 255]
