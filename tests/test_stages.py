"""MainNet's objective: SupportNet stays frozen, and each ablation variant switches exactly its losses.

(Resuming a killed training: tests/test_resume.py.)"""

import pytest
import torch

from wsss import config
from wsss.data import synthetic
from wsss.methods.mainnet import MainNetObjective
from wsss.models.cam_net import build_cam_net

TINY = {
    "data": {"synthetic": {"n_train": 16, "n_val": 4, "size_min": 48, "size_max": 56}},
    "supportnet": {"backbone": {"widths": [8, 8, 16, 16]}, "train": {"epochs": 2, "batch_size": 8, "crop": 48}},
    "mainnet": {"train": {"epochs": 2, "batch_size": 8, "crop": 48}, "mam": {"scales": [0.5, 1.0]}},
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "VOC2012"
    cfg = config.validate(TINY)
    synthetic.generate(root, cfg["data"]["synthetic"])
    return cfg, root


def test_no_gradient_reaches_supportnet(tiny):
    cfg, _ = tiny
    torch.manual_seed(0)
    support = build_cam_net(cfg["supportnet"]["backbone"]).eval()
    for p in support.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in support.state_dict().items()}
    main = build_cam_net(cfg["supportnet"]["backbone"])
    main.load_state_dict(support.state_dict())
    obj = MainNetObjective(main, support, "rcm_mam", cfg["mainnet"])
    opt = torch.optim.SGD(main.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 48, 48), torch.tensor([[1.0] + [0.0] * 19] * 4)
    losses = obj(x, y)
    assert {"loss_cls", "loss_rcm", "loss_mam"} <= set(losses)
    losses["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in support.parameters())
    assert all(torch.equal(before[k], v) for k, v in support.state_dict().items())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in main.parameters())


def test_variants_switch_their_losses(tiny):
    cfg, _ = tiny
    net = build_cam_net(cfg["supportnet"]["backbone"])
    support = build_cam_net(cfg["supportnet"]["backbone"]).eval()
    x, y = torch.randn(2, 3, 48, 48), torch.tensor([[0.0, 1.0] + [0.0] * 18] * 2)
    for variant, expect in [
        ("baseline", set()),
        ("rcm", {"loss_rcm"}),
        ("mam", {"loss_mam"}),
        ("rcm_mam", {"loss_rcm", "loss_mam"}),
    ]:
        keys = set(MainNetObjective(net, support, variant, cfg["mainnet"])(x, y)) - {"loss", "loss_cls"}
        assert keys == expect, variant
