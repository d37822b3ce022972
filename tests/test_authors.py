"""The formulation read from the authors' compiled code (issue 16): mean teacher, multi-scale region masks,
leave-one-out prototypes, the (2 - cos)-weighted MAM, the BatchNorm treatment of extra-scale passes, and the
stage that trains them (two views, resumable companions)."""

import pytest
import torch
import torch.nn.functional as F

from wsss import config
from wsss.data import synthetic
from wsss.data.datasets import ClassificationDataset
from wsss.engine.ema import ema_update
from wsss.engine.trainer import TrainState
from wsss.io import WsssInputError
from wsss.losses import mam, rcm
from wsss.methods.mainnet import MainNetObjective, bn_mode
from wsss.models.cam_net import build_cam_net
from wsss.variants import MAINNET_VARIANTS

AUTHORS = ["authors", "authors_rcm", "authors_mam", "authors_frozen"]
TINY = {
    "data": {"synthetic": {"n_train": 16, "n_val": 4, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 1, "batch_size": 8, "crop": 48}},
    "mainnet": {
        "variants": ["baseline", "rcm_mam", *AUTHORS],
        "train": {"epochs": 1, "batch_size": 8, "crop": 48},
        "authors_rcm": {"support_scales": [0.5, 1.0]},
        "authors_mam": {"support_scales": [0.5, 1.0], "main_scales": [0.5, 1.0]},
    },
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("authors") / "VOC2012"
    cfg = config.validate(TINY)
    synthetic.generate(root, cfg["data"]["synthetic"])
    return cfg, root


def _nets(cfg, seed=0):
    torch.manual_seed(seed)
    support = build_cam_net(cfg["supportnet"]["backbone"]).eval()
    for p in support.parameters():
        p.requires_grad_(False)
    main = build_cam_net(cfg["supportnet"]["backbone"])
    main.load_state_dict(support.state_dict())
    return main, support


# ------------------------------------------------------------------------------------------------ mean teacher


def test_ema_update_is_the_moving_average_and_copies_integer_buffers():
    torch.manual_seed(0)
    t, s = (
        torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)),
        torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)),
    )
    s[1].running_mean.fill_(4.0)
    s[1].num_batches_tracked.fill_(7)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    ema_update(t, s, 0.75)
    for k, v in t.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.75 * before[k] + 0.25 * s.state_dict()[k])
        else:
            assert torch.equal(v, s.state_dict()[k])
    assert float(t[1].running_mean[0]) == pytest.approx(0.75 * 0.0 + 0.25 * 4.0)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(t, s, 1.5)


def test_the_teacher_needs_both_nets_from_one_checkpoint(tiny):
    cfg, _ = tiny
    main, support = _nets(cfg)
    m = dict(cfg["mainnet"], init_from_supportnet=False)
    with pytest.raises(WsssInputError, match="init_from_supportnet"):
        MainNetObjective(main, support, "authors", m)
    MainNetObjective(main, support, "authors_frozen", m)  # no teacher: allowed


def test_after_step_moves_only_the_teacher_variants_supportnet(tiny):
    cfg, _ = tiny
    for variant, moves in [("authors", True), ("authors_frozen", False)]:
        main, support = _nets(cfg)
        with torch.no_grad():
            for p in main.parameters():
                p.add_(1.0)
        before = {k: v.clone() for k, v in support.state_dict().items()}
        obj = MainNetObjective(main, support, variant, cfg["mainnet"])
        obj.after_step()
        w = "classifier.weight" if "classifier.weight" in before else next(k for k in before if k.endswith("weight"))
        delta = support.state_dict()[w] - before[w]
        if moves:
            torch.testing.assert_close(delta, torch.full_like(delta, 1 - 0.996))
            assert "teacher" in obj.companions()
        else:
            assert torch.equal(delta, torch.zeros_like(delta))
            assert "teacher" not in obj.companions()


def test_the_teacher_alone_trains_exactly_the_baseline(tiny):
    """Nothing reads the teacher without the authors' losses: MainNet's steps are bit-identical with it."""
    cfg, _ = tiny
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[1.0, 0.0] + [0.0] * 18] * 4)
    finals = []
    for with_teacher in (False, True):
        main, support = _nets(cfg)
        obj = MainNetObjective(main, support, "baseline", cfg["mainnet"])
        opt = torch.optim.SGD(main.parameters(), lr=0.1)
        for _ in range(3):
            loss = obj(x, y)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            if with_teacher:
                ema_update(support, main, 0.996)
        finals.append({k: v.clone() for k, v in main.state_dict().items()})
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


# ------------------------------------------------------------------------------------------------ RCM pieces


def test_multiscale_region_masks_sum_scales_normalise_and_never_ignore():
    # one image, classes 0 and 1 present, class 2 absent (strongest everywhere: must never win)
    a = torch.zeros(1, 3, 1, 4)
    a[0, 0] = torch.tensor([4.0, 1.0, 0.0, 0.0])
    a[0, 1] = torch.tensor([0.0, 0.0, 2.0, 0.1])
    a[0, 2] = 9.0
    b = a.clone()
    b[0, 1, 0, 3] = -5.0  # a negative CAM value is ReLU'd away, not subtracted
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    r = rcm.multiscale_region_masks([a, b], labels, threshold=0.2)
    # class 0 normalised: [1, .25, 0, 0]; class 1: [0, 0, 1, .05 (0.1 only at scale a, / 4)]
    assert r.tolist() == [[[1, 1, 2, 0]]]
    assert int(r.max()) <= 3 and rcm.IGNORE_INDEX not in r
    with pytest.raises(ValueError):
        rcm.multiscale_region_masks([], labels, 0.2)
    # TH 0.3 turns class 0's second pixel (0.25) into background
    assert rcm.multiscale_region_masks([a, b], labels, threshold=0.3).tolist() == [[[1, 0, 2, 0]]]


def test_leave_one_out_prototypes_contrast_each_image_with_the_others():
    torch.manual_seed(0)
    f = torch.randn(3, 5, 2, 2)
    region = torch.tensor([[[1, 1], [0, 0]], [[1, 2], [0, 0]], [[2, 2], [0, 0]]])
    protos, present, q = rcm.leave_one_out_prototypes(f, region, num_classes=3)
    fn = F.normalize(f, dim=1).flatten(2)  # [B,D,4]

    def own(b, k):
        m = (region[b].flatten() == k).float()
        return F.normalize((fn[b] * m).sum(-1), dim=0) if m.sum() > 0 else torch.zeros(5)

    for b in range(3):
        for k in range(3):
            others = [own(o, k) for o in range(3) if o != b and (region[o] == k).any()]
            assert bool(present[b, k]) == bool(others)
            if others:
                torch.testing.assert_close(protos[b, k], F.normalize(torch.stack(others).mean(0), dim=0))
            torch.testing.assert_close(q[b, k], own(b, k))
    assert bool(present[0, 0])  # the background is a prototype of its own
    # class 1 lives in images 0 and 1: image 0 sees image 1's, and image 2 sees the mean of both
    torch.testing.assert_close(protos[0, 1], own(1, 1))
    # a memory entry joins every image's mean, so a class of one image only is present for it too
    mem = torch.zeros(3, 2, 5)
    mem[2, 1] = F.normalize(torch.ones(5), dim=0)
    protos_m, present_m, _ = rcm.leave_one_out_prototypes(f, region, 3, mem, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(protos_m[2, 2], F.normalize(own(1, 2) + mem[2, 1], dim=0))


def test_a_class_only_one_image_holds_has_no_prototype_for_it_unless_the_memory_has_one():
    f = torch.randn(2, 4, 1, 2)
    region = torch.tensor([[[1, 0]], [[0, 0]]])
    _, present, _ = rcm.leave_one_out_prototypes(f, region, num_classes=2)
    assert present.tolist() == [[True, False], [True, True]]
    mem = torch.zeros(2, 1, 4)
    mem[1, 0] = F.normalize(torch.ones(4), dim=0)
    protos, present, _ = rcm.leave_one_out_prototypes(f, region, 2, mem, torch.tensor([0, 1]))
    assert present.tolist() == [[True, True], [True, True]]
    torch.testing.assert_close(protos[0, 1], mem[1, 0])


def test_the_prototype_queue_keeps_the_last_entries_per_class():
    qu = rcm.PrototypeQueue(num_classes=2, dim=1, size=2)
    for v in (1.0, 2.0, 3.0):
        qu.push(torch.tensor([[v], [10 * v]]), torch.tensor([True, v == 1.0]))
    entries, count = qu.get()
    assert count.tolist() == [2, 1]
    assert entries[0, :, 0].tolist() == [2.0, 3.0]
    assert entries[1, :, 0].tolist() == [0.0, 10.0]


# ------------------------------------------------------------------------------------------------ MAM pieces


def test_the_dissimilarity_weight_is_two_minus_the_cosine():
    m = torch.zeros(1, 1, 1, 2)
    m[..., 0] = 1.0
    same, orth = m.clone(), torch.zeros_like(m)
    orth[..., 1] = 3.0
    t = mam.dissimilarity_target(m, [same, orth])
    # weight 1 for the identical map, 2 for the orthogonal one; mean over the two scales
    torch.testing.assert_close(t, (1.0 * same + 2.0 * orth) / 2)


def test_the_authors_mam_pulls_mainnet_to_a_detached_target_on_image_classes_only():
    main = torch.tensor([[[[0.0, 1.0]], [[5.0, 5.0]]]], requires_grad=True)  # class 1 absent
    s = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])
    labels = torch.tensor([[1.0, 0.0]])
    loss = mam.dissimilarity_mam_loss([main], [s], labels)
    cos = 1 / (2**0.5)
    target = (2 - cos) * 1.0
    assert float(loss.detach()) == pytest.approx((abs(target - 0.0) + abs(target - 1.0)) / 2)
    loss.backward()
    assert main.grad[0, 1].abs().sum() == 0  # the absent class gets nothing
    assert main.grad[0, 0].abs().sum() > 0


def test_eval_batchnorm_passes_leave_the_running_statistics_alone():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    bn = net[1]
    before = bn.running_mean.clone()
    with bn_mode(net, "eval"):
        out = net(torch.randn(2, 3, 4, 4) + 3.0)
        assert not bn.training
    assert bn.training and torch.equal(bn.running_mean, before)
    out.sum().backward()
    assert net[0].weight.grad is not None
    with bn_mode(net, "train"):
        net(torch.randn(2, 3, 4, 4) + 3.0)
    assert not torch.equal(bn.running_mean, before)


# ------------------------------------------------------------------------------------------------ the objective


@pytest.mark.parametrize("variant", AUTHORS)
def test_each_authors_variant_switches_its_losses_and_keeps_supportnet_gradient_free(tiny, variant):
    cfg, _ = tiny
    main, support = _nets(cfg)
    obj = MainNetObjective(main, support, variant, cfg["mainnet"])
    torch.manual_seed(1)
    x, x_p = torch.randn(4, 3, 48, 48), torch.randn(4, 3, 48, 48)
    y = torch.tensor([[1.0, 0.0] + [0.0] * 18, [0.0, 1.0] + [0.0] * 18] * 2)
    losses = obj(x, y, x_p=x_p)
    mech = MAINNET_VARIANTS[variant]
    expect = {"loss_cls"} | ({"loss_rcm"} if "authors_rcm" in mech else set())
    expect |= {"loss_mam"} if "authors_mam" in mech else set()
    assert set(losses) - {"loss"} == expect
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(p.grad is None for p in support.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in main.parameters())


def test_the_authors_rcm_refuses_a_batch_without_its_second_view(tiny):
    cfg, _ = tiny
    main, support = _nets(cfg)
    obj = MainNetObjective(main, support, "authors_rcm", cfg["mainnet"])
    assert obj.two_views
    with pytest.raises(ValueError, match="image_p"):
        obj(torch.randn(2, 3, 48, 48), torch.tensor([[1.0] + [0.0] * 19] * 2))


def test_the_second_view_leaves_the_first_as_a_one_view_dataset_draws_it(tiny):
    _, root = tiny
    one = ClassificationDataset(root, "train", crop=48, train=True, seed=3)
    two = ClassificationDataset(root, "train", crop=48, train=True, seed=3, two_views=True)
    torch.manual_seed(5)
    a = one[2]
    torch.manual_seed(5)
    b = two[2]
    assert torch.equal(a["image"], b["image"]) and "image_p" not in a
    assert b["image_p"].shape == b["image"].shape and not torch.equal(b["image_p"], b["image"])


def test_a_resume_restores_the_companions(tmp_path):
    net, teacher = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    state = TrainState(
        net, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {"k": 1}, companions={"teacher": teacher}
    )
    path = tmp_path / "state.pt"
    torch.save(state.to_dict(), path)
    want = teacher.weight.detach().clone()
    with torch.no_grad():
        teacher.weight.add_(1.0)
    assert state.try_resume(path)
    assert torch.equal(teacher.weight, want)


# ------------------------------------------------------------------------------------------------ the stage


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_the_stage_trains_the_authors_variant_with_its_mean_teacher(tiny, tmp_path, momentum):
    """m = 0: the teacher ends as MainNet's final weights; m = 1: it stays SupportNet. Exact either way."""
    from wsss.stages import train_mainnet, train_supportnet

    cfg, root = tiny
    cfg = config.validate({**TINY, "mainnet": {**TINY["mainnet"], "teacher": {"momentum": momentum}}})
    sup = tmp_path / "sup.pt"
    train_supportnet.run(
        cfg,
        seed=0,
        data=root,
        ckpt=sup,
        metrics=tmp_path / "s.json",
        plot=tmp_path / "sp.json",
        state=tmp_path / "s.st",
    )
    out = tmp_path / "main.pt"
    train_mainnet.run(
        cfg,
        seed=0,
        variant="authors",
        data=root,
        support=sup,
        ckpt=out,
        metrics=tmp_path / "m.json",
        plot=tmp_path / "mp.json",
        state=tmp_path / "m.st",
    )
    ck, sk = torch.load(out, weights_only=False), torch.load(sup, weights_only=False)
    teacher = ck["companions"]["teacher"]
    ref = ck["model"] if momentum == 0.0 else sk["model"]
    floats = [k for k, v in teacher.items() if v.is_floating_point()]
    assert all(torch.equal(teacher[k], ref[k]) for k in floats)
    assert not all(torch.equal(ck["model"][k], sk["model"][k]) for k in floats)  # MainNet trained
    assert {"loss_rcm", "loss_mam"} <= set(ck["history"][0])


@pytest.mark.parametrize("variant", ["mam", "authors_mam"])
def test_eval_bn_extra_passes_leave_mainnet_s_statistics_as_the_control_s(tiny, variant):
    """With extra_pass_bn eval, a MAM step updates MainNet's BN statistics exactly as the fair control's step does
    (only the scale-1 pass); with train, the extra-scale passes move them too."""
    cfg, _ = tiny
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[1.0, 0.0] + [0.0] * 18] * 4)
    section = "mam" if variant == "mam" else "authors_mam"

    def stats_after(v, mode):
        main, support = _nets(cfg)
        m = {**cfg["mainnet"], section: {**cfg["mainnet"][section], "extra_pass_bn": mode}}
        MainNetObjective(main, support, v, m)(x, y)
        return {k: t.clone() for k, t in main.state_dict().items() if "running" in k}

    control = stats_after("baseline", "eval")
    same = stats_after(variant, "eval")
    moved = stats_after(variant, "train")
    assert control and all(torch.allclose(control[k], same[k]) for k in control)
    assert not all(torch.allclose(control[k], moved[k]) for k in control)


def test_one_view_prototypes_equal_two_views_given_the_same_view(tiny):
    """two_views false takes the prototypes from view a: the same loss as two views whose view p is view a."""
    cfg, _ = tiny
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[1.0, 0.0] + [0.0] * 18, [0.0, 1.0] + [0.0] * 18] * 2)
    losses = []
    for two in (False, True):
        main, support = _nets(cfg)
        m = {**cfg["mainnet"], "authors_rcm": {**cfg["mainnet"]["authors_rcm"], "two_views": two}}
        losses.append(MainNetObjective(main, support, "authors_rcm", m)(x, y, x_p=x if two else None)["loss_rcm"])
    torch.testing.assert_close(losses[0], losses[1])


def test_the_authors_variant_trains_on_the_real_photo_backbone_and_switches(tiny, tmp_path):
    """config/authors-voc-cpu.yaml's MainNet: the authors' formulation on EfficientNet-Lite0 (output stride 16),
    frozen BatchNorm, channels-last and the new-layer learning-rate multiplier. Frozen BN: the mean teacher and
    MainNet keep SupportNet's BN statistics; the teacher moves by the moving average of MainNet's weights."""
    from wsss.stages import train_mainnet, train_supportnet

    cfg, root = tiny
    net = {"name": "efficientnet_lite0", "output_stride": 16, "pretrained": False}
    train = {
        "epochs": 1,
        "batch_size": 4,
        "crop": 48,
        "new_layer_lr_mult": 10,
        "batchnorm": "frozen",
        "channels_last": True,
    }
    cfg = config.validate(
        {
            **TINY,
            "data": {"synthetic": {**TINY["data"]["synthetic"], "n_train": 8}},
            "supportnet": {"backbone": net, "train": train},
            "mainnet": {**TINY["mainnet"], "train": train, "teacher": {"momentum": 0.5}},
        }
    )
    sup = tmp_path / "sup.pt"
    train_supportnet.run(
        cfg,
        seed=0,
        data=root,
        ckpt=sup,
        metrics=tmp_path / "s.json",
        plot=tmp_path / "sp.json",
        state=tmp_path / "s.st",
    )
    out = tmp_path / "main.pt"
    train_mainnet.run(
        cfg,
        seed=0,
        variant="authors",
        data=root,
        support=sup,
        ckpt=out,
        metrics=tmp_path / "m.json",
        plot=tmp_path / "mp.json",
        state=tmp_path / "m.st",
    )
    ck, sk = torch.load(out, weights_only=False), torch.load(sup, weights_only=False)
    teacher, main, start = ck["companions"]["teacher"], ck["model"], sk["model"]
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(main[k], start[k]) and torch.equal(teacher[k], start[k]) for k in stats)
    moved = [k for k in start if start[k].is_floating_point() and k not in stats and not torch.equal(main[k], start[k])]
    assert moved  # MainNet trained; where a weight moved, the teacher (m 0.5) is neither its start nor MainNet
    assert all(not torch.equal(teacher[k], start[k]) and not torch.equal(teacher[k], main[k]) for k in moved[:5])
    assert {"loss_rcm", "loss_mam"} <= set(ck["history"][0])
