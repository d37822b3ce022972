"""Stage: train the affinity network (AffinityNet, PSA) on confident pseudo labels of one CAM network.

Labels: the net's CRF pseudo labels (``refine.random_walk.label_source: crf``; 255 where the CRF was unsure) or
confident CAM regions (``cams``: :func:`wsss.refine.affinity.confident_labels`, written once into the stage's
label folder). Each training crop (resized by ``image_scale``) gives a stride-8 embedding; its label is sampled
at the embedding's grid (nearest), and pairs within ``radius`` are trained with PSA's balanced loss
(:func:`wsss.refine.affinity.affinity_loss`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from wsss.config import seed_of
from wsss.data import voc
from wsss.data.voc import SegmentationDataset
from wsss.engine import distributed as dist
from wsss.engine.trainer import load_checkpoint, seed_everything, train
from wsss.io import WsssInputError, atomic_dir, load_npz, write_json, write_label_png
from wsss.models.affinity_net import AffinityNet
from wsss.refine.affinity import affinity_labels, affinity_loss, confident_labels, neighbour_offsets, pairwise_affinity

log = logging.getLogger("wsss")


def build_net(rw: dict) -> AffinityNet:
    return AffinityNet(dict(rw["backbone"]), embed_dim=rw["embed_dim"], stride=rw.get("stride", 8))


def load_net(path: Path) -> tuple[AffinityNet, dict]:
    ckpt = load_checkpoint(path)
    net = build_net(ckpt["config"]["random_walk"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def init_from_supportnet(net: AffinityNet, support_ckpt: Path) -> int:
    """Copy SupportNet's backbone into the affinity backbone; returns the number of tensors copied."""
    sd = load_checkpoint(support_ckpt)["model"]
    src = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    missing, unexpected = net.backbone.load_state_dict(src, strict=False)
    if unexpected or len(missing) == len(net.backbone.state_dict()):
        raise WsssInputError(f"{support_ckpt}: SupportNet's backbone does not match refine.random_walk.backbone; "
                             "use the same backbone config or set refine.random_walk.init_from_supportnet: false")
    return len(src)


def write_confident_labels(cams_dir: Path, data_root: Path, split: str, out_dir: Path, rw: dict) -> None:
    """label_source cams: IRN's confident regions of each CAM as a palette PNG (255 = unsure)."""
    with atomic_dir(out_dir) as tmp:
        for image_id in tqdm(voc.read_split(data_root, split), desc="affinity labels", mininterval=5, disable=None):
            z = load_npz(cams_dir / f"{image_id}.npz")
            write_label_png(tmp / f"{image_id}.png", confident_labels(z["cam"], z["keys"], rw["fg_threshold"],
                                                                       rw["bg_threshold"]))


def grid_label(label: torch.Tensor, size) -> torch.Tensor:
    """Nearest sampling of a label map [B,H,W] onto the embedding grid (PSA samples labels at crop/8)."""
    return F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0].long()


def run(cfg: dict, *, net_name: str, data_root: Path, labels: Path, cams_dir: Path | None, out: Path,
        metrics_out: Path, plot_out: Path, state_path: Path, support_ckpt: Path | None = None) -> None:
    rw = cfg["refine"]["random_walk"]
    tcfg = rw["train"]
    seed = seed_of(cfg)
    seed_everything(seed)
    split = cfg["data"]["train_split"]
    if rw["label_source"] == "cams":
        if cams_dir is None:
            raise WsssInputError("refine.random_walk.label_source is cams: pass --cams (the net's CAM folder)")
        if dist.is_main():
            write_confident_labels(cams_dir, data_root, split, labels, rw)
        dist.barrier()
    net = build_net(rw)
    if rw["init_from_supportnet"]:
        if support_ckpt is None:
            raise WsssInputError("refine.random_walk.init_from_supportnet needs --support (SupportNet checkpoint)")
        init_from_supportnet(net, support_ckpt)
    ds = SegmentationDataset(data_root, split, crop=tcfg["crop"], train=True, label_dir=labels, seed=seed)
    offsets = neighbour_offsets(rw["radius"])
    scale = rw["image_scale"]

    def objective(x: torch.Tensor, batch: dict) -> dict:
        if scale != 1.0:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        emb = net(x)
        lab = grid_label(batch["label"].to(x.device), emb.shape[-2:])
        pos_bg, pos_fg, neg = affinity_labels(lab, offsets)
        aff = pairwise_affinity(emb, offsets)
        loss = affinity_loss(aff, pos_bg, pos_fg, neg)
        # PSA's loss averages each pair group over this process's pairs; under DDP that is a mean of per-process
        # means (documented in docs/architecture.md, like the other pair-count-normalised losses)
        return {"loss": loss, "pairs_pos_fg": pos_fg.float().mean(), "pairs_neg": neg.float().mean()}

    history = train(
        net, ds, tcfg, seed=seed, state_path=state_path, out=out, desc=f"affinity_{net_name}",
        resolved={"random_walk": rw, "net": net_name, "seed": seed, "data": cfg["data"], "labels": str(labels)},
        objective=objective, section="refine.random_walk",
    )
    if not dist.is_main():
        return
    write_json(metrics_out, {"net": f"affinity_{net_name}", "labels": rw["label_source"], "history": history})
    write_json(plot_out, history)
    log.info("affinity net for %s trained on %d images", net_name, len(ds))
