import pytest
import torch
import torch.nn.functional as F

from wsss.losses.classification import multilabel_loss
from wsss.losses.mam import attentive_weight, fuse_multiscale, mam_loss
from wsss.losses.rcm import IGNORE_INDEX, PrototypeMemory, class_prototypes, pixel_prototype_contrast, region_labels


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------- classification


def test_multilabel_loss_matches_torch():
    logits = torch.randn(5, 20)
    labels = (torch.rand(5, 20) > 0.7).long()
    ref = torch.nn.MultiLabelSoftMarginLoss()(logits, labels.float())
    assert torch.allclose(multilabel_loss(logits, labels), ref)


# ---------------------------------------------------------------- RCM


def test_region_labels_hand_checked():
    # 1 image, 3 classes, 1x5 pixels; class 1 absent (its high values must be ignored)
    cam = torch.tensor(
        [
            [
                [[0.9, 0.1, 0.3, 0.6, 0.05]],  # class 0
                [[0.0, 0.0, 0.0, 0.9, 0.99]],  # class 1 (absent)
                [[0.2, 0.15, 0.1, 0.7, 0.0]],
            ]
        ]  # class 2
    )
    labels = torch.tensor([[1, 0, 1]])
    r = region_labels(cam, labels, fg_threshold=0.5, bg_threshold=0.2)
    # px0: max 0.9 (cls0) -> 1; px1: max 0.15 < 0.2 -> bg 0; px2: 0.3 in [0.2,0.5) -> 255;
    # px3: cls2 0.7 beats cls0 0.6 (cls1 0.9 absent) -> 3; px4: 0.05 -> bg 0
    assert r.dtype == torch.long
    assert r.tolist() == [[[1, 0, 255, 3, 0]]]
    # boundary values: >= fg is fg, == bg is uncertain
    cam2 = torch.tensor([[[[0.5, 0.2]]]])
    assert region_labels(cam2, torch.tensor([[1]]), 0.5, 0.2).tolist() == [[[1, 255]]]
    # no present class -> all background
    assert (region_labels(cam, torch.zeros(1, 3), 0.5, 0.2) == 0).all()
    with pytest.raises(ValueError):
        region_labels(cam, labels, fg_threshold=0.2, bg_threshold=0.5)


def test_class_prototypes_equal_hand_means():
    feats = torch.randn(2, 4, 2, 3)
    region = torch.tensor([[[0, 1, 1], [255, 0, 2]], [[1, 255, 255], [0, 0, 0]]])
    protos, present = class_prototypes(feats, region, num_classes=4)
    fn = F.normalize(feats, dim=1)
    for k in range(4):
        sel = [fn[b, :, i, j] for b in range(2) for i in range(2) for j in range(3) if region[b, i, j] == k]
        if not sel:
            assert not present[k] and torch.all(protos[k] == 0)
            continue
        ref = F.normalize(torch.stack(sel).mean(0), dim=0)
        assert present[k]
        assert torch.allclose(protos[k], ref, atol=1e-6)
    assert present.tolist() == [True, True, True, False]
    # per-image scope
    p_img, pres_img = class_prototypes(feats, region, num_classes=4, scope="image")
    assert p_img.shape == (2, 4, 4) and pres_img.tolist() == [[True, True, True, False], [True, True, False, False]]
    ref = F.normalize(fn[1, :, 0, 0], dim=0)
    assert torch.allclose(p_img[1, 1], ref, atol=1e-6)
    # weighted (PPC-style CAM-weighted) prototypes
    w = torch.rand(2, 2, 3)
    p_w, _ = class_prototypes(feats, region, num_classes=4, weights=w)
    num = w[0, 0, 1] * fn[0, :, 0, 1] + w[0, 0, 2] * fn[0, :, 0, 2] + w[1, 0, 0] * fn[1, :, 0, 0]
    assert torch.allclose(p_w[1], F.normalize(num, dim=0), atol=1e-6)


def _orthonormal_protos(k, d):
    q, _ = torch.linalg.qr(torch.randn(d, d))
    return q[:k].contiguous()


def _emb_from_protos(protos, region):
    # embedding of each pixel = prototype of its region class (ignored pixels: random)
    B, h, w = region.shape
    emb = torch.randn(B, protos.shape[1], h, w)
    for k in range(protos.shape[0]):
        emb = torch.where((region == k)[:, None], protos[k][None, :, None, None], emb)
    return F.normalize(emb, dim=1)


def test_contrast_minimal_at_prototypes_and_grows_with_confusion():
    protos = _orthonormal_protos(3, 8)
    present = torch.tensor([True, True, True])
    region = torch.tensor([[[0, 1, 2, 1], [2, 2, 0, IGNORE_INDEX]]])
    emb = _emb_from_protos(protos, region)
    tau = 0.1
    l0 = pixel_prototype_contrast(emb, region, protos, present, temperature=tau)
    # hand value: each labelled pixel has logit 1/tau on its class, 0 on the two others
    hand = -torch.log(torch.exp(torch.tensor(1 / tau)) / (torch.exp(torch.tensor(1 / tau)) + 2))
    assert torch.allclose(l0, hand, atol=1e-5)
    prev = l0
    for a in (0.25, 0.5, 0.75, 1.0):
        # move every class-1 pixel toward prototype 2
        mixed = F.normalize((1 - a) * protos[1] + a * protos[2], dim=0)
        e = torch.where((region == 1)[:, None], mixed[None, :, None, None], emb)
        la = pixel_prototype_contrast(e, region, protos, present, temperature=tau)
        assert la > prev + 1e-4
        prev = la
    # gradient at a confused pixel points back to its own prototype
    e = emb.clone().requires_grad_(True)
    pixel_prototype_contrast(e, region, protos, present, temperature=tau).backward()
    g = e.grad[0, :, 0, 1]  # a class-1 pixel
    assert torch.dot(-g, protos[1]) > 0 and torch.dot(-g, protos[0]) <= 1e-7


def test_contrast_ignores_255_and_absent_prototypes():
    protos = _orthonormal_protos(3, 8)
    present = torch.tensor([True, True, True])
    region = torch.tensor([[[0, 1, IGNORE_INDEX, IGNORE_INDEX]]])
    emb = F.normalize(torch.randn(1, 8, 1, 4), dim=1).requires_grad_(True)
    loss = pixel_prototype_contrast(emb, region, protos, present)
    loss.backward()
    assert torch.all(emb.grad[0, :, 0, 2:] == 0)
    # changing ignored pixels does not change the loss
    emb2 = emb.detach().clone()
    emb2[0, :, 0, 2:] = F.normalize(torch.randn(8, 2), dim=0)
    assert torch.allclose(pixel_prototype_contrast(emb2, region, protos, present), loss)
    # absent prototype 2: excluded from the softmax even if it is the nearest one
    region = torch.tensor([[[0, 1]]])
    near2 = protos[2][None, :, None, None].expand(1, 8, 1, 2).contiguous()
    with_abs = pixel_prototype_contrast(near2, region, protos, torch.tensor([True, True, False]))
    with_pres = pixel_prototype_contrast(near2, region, protos, present)
    # without prototype 2, the logits are 0 vs 0 -> log 2
    assert torch.allclose(with_abs, torch.log(torch.tensor(2.0)), atol=1e-6)
    assert with_pres > with_abs + 1.0
    # pixels whose class prototype is absent are dropped, not NaN
    only_absent = pixel_prototype_contrast(near2, torch.tensor([[[2, 2]]]), protos, torch.tensor([True, True, False]))
    assert only_absent.item() == 0.0
    # all ignored -> 0 with a graph
    e = torch.randn(1, 8, 1, 2, requires_grad=True)
    z = pixel_prototype_contrast(e, torch.full((1, 1, 2), IGNORE_INDEX), protos, present)
    z.backward()
    assert z.item() == 0.0


def test_contrast_image_labels_and_image_scope():
    protos = _orthonormal_protos(3, 8)
    present = torch.tensor([True, True, True])
    region = torch.tensor([[[1, 1]]])
    emb = F.normalize(protos[1] + protos[2], dim=0)[None, :, None, None].expand(1, 8, 1, 2).contiguous()
    # image has only class index 0 (= region 1): class 2 prototype excluded as a negative
    restricted = pixel_prototype_contrast(emb, region, protos, present, labels=torch.tensor([[1, 0]]))
    full = pixel_prototype_contrast(emb, region, protos, present)
    assert restricted < full
    # per-image prototypes [B,K,D] give the same result as batch prototypes when identical
    per_img = pixel_prototype_contrast(emb, region, protos[None], present[None])
    assert torch.allclose(per_img, full)


def test_prototype_memory():
    mem = PrototypeMemory(num_classes=3, dim=4, momentum=0.5)
    p1 = F.normalize(torch.randn(3, 4), dim=1)
    mem.update(p1, torch.tensor([True, False, True]))
    protos, seen = mem.get()
    assert seen.tolist() == [True, False, True]
    assert torch.allclose(protos[0], p1[0]) and torch.all(protos[1] == 0)
    p2 = F.normalize(torch.randn(3, 4), dim=1)
    mem.update(p2, torch.tensor([True, True, False]))
    protos, seen = mem.get()
    assert torch.allclose(protos[0], F.normalize(0.5 * p1[0] + 0.5 * p2[0], dim=0), atol=1e-6)
    assert torch.allclose(protos[1], p2[1]) and torch.allclose(protos[2], p1[2])
    assert "protos" in mem.state_dict()


# ---------------------------------------------------------------- MAM


def test_fuse_multiscale_hand_checked():
    a = torch.tensor([[[[0.2, 1.0], [0.0, 0.5]]]])
    b = torch.tensor([[[[0.6, 0.4], [0.0, 1.0]]]])
    assert torch.allclose(fuse_multiscale([a, b], "mean"), torch.tensor([[[[0.4, 0.7], [0.0, 0.75]]]]))
    assert torch.allclose(fuse_multiscale([a, b], "max"), torch.tensor([[[[0.6, 1.0], [0.0, 1.0]]]]))
    r = fuse_multiscale([a, b], "mean", renormalize=True)
    assert torch.allclose(r, torch.tensor([[[[0.4, 0.7], [0.0, 0.75]]]]) / (0.75 + 1e-5))
    with pytest.raises(ValueError):
        fuse_multiscale([a], "median")


def test_attentive_weight():
    t = torch.tensor([[[[0.9, 0.9, 0.2, 0.9]], [[1.0, 1.0, 1.0, 1.0]]]])
    m = torch.tensor([[[[0.1, 0.8, 0.0, 1.0]], [[0.0, 0.0, 0.0, 0.0]]]])
    w = attentive_weight(t, m, gamma=2.0, labels=torch.tensor([[1, 0]]), gate_threshold=0.3)
    ref = torch.tensor([[[[0.81 * 0.9, 0.81 * 0.2, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.0]]]])
    assert torch.allclose(w, ref, atol=1e-6)
    assert not w.requires_grad


@pytest.mark.parametrize("measure", ["l1", "l2", "kl"])
def test_mam_zero_when_equal(measure):
    t = torch.rand(2, 3, 4, 4)
    labels = torch.tensor([[1, 0, 1], [0, 1, 1]])
    m = t.clone().requires_grad_(True)
    loss = mam_loss([m, m], t, labels, measure=measure, gate_threshold=0.0)
    assert abs(loss.item()) < 1e-6
    loss2 = mam_loss([m], t, labels, measure=measure, gate_threshold=0.0, one_sided=False)
    assert abs(loss2.item()) < 1e-6


@pytest.mark.parametrize("measure", ["l1", "l2", "kl"])
def test_mam_gradient_one_sided_and_absent_classes(measure):
    # 1 image, 2 classes (class 1 absent), 1x4 pixels
    t = torch.tensor([[[[0.9, 0.6, 0.4, 0.8]], [[0.9, 0.9, 0.9, 0.9]]]])
    m = torch.tensor([[[[0.1, 0.0, 0.7, 1.0]], [[0.0, 0.0, 0.0, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[1, 0]])
    loss = mam_loss([m], t, labels, measure=measure, gate_threshold=0.3, one_sided=True)
    assert loss.item() > 0
    (g,) = torch.autograd.grad(loss, m)
    g0 = g[0, 0, 0]
    assert g0[0] < 0 and g0[1] < 0  # target higher -> pushed up (also from exactly 0)
    assert g0[2] == 0 and g0[3] == 0  # MainNet already higher -> untouched (one-sided)
    assert torch.all(g[0, 1] == 0)  # absent class -> no gradient
    # two-sided: MainNet higher than the target is pulled down (where the weight is non-zero)
    loss2 = mam_loss([m], t, labels, measure=measure, gate_threshold=0.3, one_sided=False)
    (g2,) = torch.autograd.grad(loss2, m)
    assert g2[0, 0, 0, 2] > 0
    assert torch.all(g2[0, 1] == 0)


def test_mam_gate_gamma_and_scales():
    t = torch.tensor([[[[0.2, 0.9]]]])
    m = torch.zeros(1, 1, 1, 2, requires_grad=True)
    labels = torch.tensor([[1]])
    loss = mam_loss([m], t, labels, gate_threshold=0.3, gamma=1.0)
    # only pixel 1 passes the gate: w = 0.9 * (1 - 0) ; d = 0.9 ; / (1 class * 2 px)
    assert torch.allclose(loss, torch.tensor(0.9 * 0.9 / 2))
    (g,) = torch.autograd.grad(loss, m)
    assert g[0, 0, 0, 0] == 0 and g[0, 0, 0, 1] < 0
    # gamma 2 down-weights weak evidence more than strong evidence
    t2 = torch.tensor([[[[0.4, 0.9]]]])
    w1 = attentive_weight(t2, torch.zeros_like(t2), gamma=1.0)
    w2 = attentive_weight(t2, torch.zeros_like(t2), gamma=2.0)
    assert (w2 / w1)[..., 0] < (w2 / w1)[..., 1]
    # non-attentive plain L1 (SEAM-like) with the gate off
    plain = mam_loss([m], t, labels, gate_threshold=0.0, attentive=False)
    assert torch.allclose(plain, torch.tensor((0.2 + 0.9) / 2))
    # average over scales
    m2 = t.clone()
    both = mam_loss([m, m2], t, labels, gate_threshold=0.0, attentive=False)
    assert torch.allclose(both, plain / 2)


@pytest.mark.parametrize("measure", ["l1", "l2", "kl"])
def test_mam_pushes_raw_negative_cam_up(measure):
    # MainNet's CAM may be raw (signed): the one-sided loss still pushes it up
    t = torch.tensor([[[[0.8, 0.8]]]])
    m = torch.tensor([[[[-0.5, 0.2]]]], requires_grad=True)
    (g,) = torch.autograd.grad(mam_loss([m], t, torch.tensor([[1]]), measure=measure), m)
    assert g[0, 0, 0, 0] < 0 and g[0, 0, 0, 1] < 0


def test_mam_suppress_below_pushes_background_down():
    t = torch.tensor([[[[0.05, 0.9, 0.05]]]])
    m = torch.tensor([[[[0.6, 0.2, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[1]])
    (g0,) = torch.autograd.grad(mam_loss([m], t, labels), m)
    assert g0[0, 0, 0, 0] == 0  # plain one-sided: background left alone
    (g,) = torch.autograd.grad(mam_loss([m], t, labels, suppress_below=0.1), m)
    assert g[0, 0, 0, 0] > 0 and g[0, 0, 0, 1] < 0 and g[0, 0, 0, 2] == 0


def test_mam_rejects_bad_inputs():
    t = torch.rand(1, 2, 4, 4)
    with pytest.raises(ValueError):
        mam_loss([torch.rand(1, 2, 2, 2)], t, torch.ones(1, 2))
    with pytest.raises(ValueError):
        mam_loss([t.clone()], t, torch.ones(1, 2), measure="cosine")
