"""Stage: train the single-stage model of AA&LR (one ablation variant: baseline, aa, lr, aa_lr).

Step (variant flags ``aa`` and ``lr``; config section ``single_stage``; docs/methods.md says what is whose)::

    logits, seg_logits, emb = Net(x)                          (stride 8; channel 0 = background; seg_logits =
                                                              logits unless single_stage.seg_head = separate)
    L = MLSM(nGWP(logits) + focal(softmax(logits)), y)        classification (1-stage-wseg)
      + [epoch >= warmup_epochs]
          pgt = pseudo_gt(PAMR(x, softmax(logits).detach()))  on the label grid (input stride label_stride)
          w_mask * CE(seg_logits -> grid, pgt)                class-balanced as 1-stage, or plain
        + [aa] w_aa * AA(seg_logits, pgt -> logit grid)       adaptive affinity (wsss.losses.adaptive_affinity)
        + [lr] w_lr * LR(emb -> grid, reassign(pgt))          label reassign (wsss.losses.label_reassign)

Before ``warmup_epochs`` only the classification term trains (1-stage's TRAIN.PRETRAIN). PAMR and the pseudo
ground truth carry no gradient.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.config import seed_of
from wsss.data.voc import ClassificationDataset
from wsss.engine.trainer import load_checkpoint, seed_everything, train
from wsss.io import WsssInputError, write_json
from wsss.losses import classification
from wsss.losses.adaptive_affinity import adaptive_affinity_loss
from wsss.losses.label_reassign import class_centres, label_reassign_loss, reassign
from wsss.losses.single_stage import IGNORE_INDEX, class_scores, pseudo_gt
from wsss.models.single_stage import SingleStageNet
from wsss.refine.pamr import pamr

log = logging.getLogger("wsss")

VARIANTS = ("baseline", "aa", "lr", "aa_lr")
VARIANT_FLAGS = {"baseline": (False, False), "aa": (True, False), "lr": (False, True), "aa_lr": (True, True)}


def build_net(scfg: dict) -> SingleStageNet:
    """The single-stage net of a ``single_stage`` config section."""
    return SingleStageNet(
        scfg["backbone"], num_classes=20, head_channels=scfg["head_channels"], atrous_rates=scfg["atrous_rates"],
        embedding_dim=scfg["embedding_dim"], sg_psi=scfg["sg_psi"], background=scfg["background"],
        background_logit=scfg["background_logit"], freeze_backbone_bn=scfg["freeze_backbone_bn"],
        seg_head=scfg.get("seg_head", "shared"),  # checkpoints written before the option existed
    )


def load_net(path: Path) -> tuple[SingleStageNet, dict]:
    ckpt = load_checkpoint(path)
    net = build_net(ckpt["config"]["single_stage"])
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt


def init_from_supportnet(net: SingleStageNet, support_ckpt: Path) -> int:
    """Copy SupportNet's backbone into the net's backbone (same backbone config needed); returns tensors copied."""
    sd = load_checkpoint(support_ckpt)["model"]
    src = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    try:
        net.backbone.load_state_dict(src, strict=True)
    except RuntimeError as e:
        raise WsssInputError(
            f"{support_ckpt}: SupportNet's backbone does not match single_stage.backbone ({str(e).splitlines()[0]}); "
            "use the same backbone config as supportnet.backbone or set single_stage.init_from_supportnet: false"
        ) from e
    return len(src)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, *, balanced: bool,
              require_all_classes: bool) -> torch.Tensor:
    """Segmentation CE of ``logits`` [B,C,H,W] against the pseudo GT ``target`` [B,H,W] (255 ignored).

    ``balanced`` (1-stage ``balanced_mask_loss_ce``): pixel of class c weighted by (N - N_c) / (1 + N), N = labelled
    pixels of the image, averaged over all of the image's pixels; else the plain mean over labelled pixels.
    ``require_all_classes`` (1-stage): an image counts only if its pseudo GT holds every image-label class + bg.
    """
    B, C = logits.shape[:2]
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none").flatten(1)  # 0 at ignore
    valid = (target != IGNORE_INDEX).flatten(1)
    safe = torch.where(valid, target.flatten(1), torch.zeros_like(target.flatten(1)))
    counts = F.one_hot(safe, C).mul(valid[..., None]).sum(1).to(ce.dtype)  # [B,C]
    if balanced:
        n_tot = counts.sum(1, keepdim=True)
        w = ((n_tot - counts) / (1.0 + n_tot)).gather(1, safe) * valid
        per_image = (w * ce).mean(1)
    else:
        per_image = (ce * valid).sum(1) / valid.sum(1).clamp_min(1)
    if require_all_classes:
        want = labels.sum(1).to(ce.dtype) + 1.0
        have = (counts > 0).sum(1).to(ce.dtype)
        per_image = per_image * (want == have).to(ce.dtype)
    return per_image.mean()


@torch.no_grad()
def pamr_present(image: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    """:func:`wsss.refine.pamr.pamr` of the background and the image-label classes only; the other planes are 0.

    PAMR acts on each plane separately, and :func:`pseudo_gt` zeroes the planes of absent classes, so the pseudo GT
    is the same as with every plane refined (1-stage refines all 21), at a fraction of the cost.
    """
    B, C = masks.shape[:2]
    present = torch.cat([torch.ones_like(labels[:, :1]), labels], dim=1) > 0  # [B,C]
    k = int(present.sum(1).max())
    # indices of the present planes, padded with the background plane (refined again, then discarded)
    order = torch.sort(present.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    idx = torch.where(torch.gather(present, 1, order), order, torch.zeros_like(order))
    sub = pamr(image, torch.gather(masks, 1, idx[:, :, None, None].expand(-1, -1, *masks.shape[-2:])), **kw)
    out = sub.new_zeros(B, C, *sub.shape[-2:])
    return out.scatter(1, idx[:, :, None, None].expand(-1, -1, *sub.shape[-2:]), sub)


class SingleStageObjective:
    """Loss of one variant. ``epoch`` (set by the training loop) decides whether the warm-up is over."""

    def __init__(self, net: SingleStageNet, variant: str, scfg: dict):
        if variant not in VARIANT_FLAGS:
            raise WsssInputError(f"unknown single-stage variant {variant!r}; choose from {list(VARIANTS)}")
        self.net, self.scfg = net, scfg
        self.use_aa, self.use_lr = VARIANT_FLAGS[variant]
        self.epoch = 0

    def pseudo_labels(self, x: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor):
        """(pseudo GT [B,h,w] on the label grid, PAMR-refined masks [B,C,h,w]); no gradient."""
        s = self.scfg
        H, W = x.shape[-2:]
        size = (max(1, H // s["label_stride"]), max(1, W // s["label_stride"]))
        with torch.no_grad():
            img = F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).contiguous()
            masks = torch.softmax(logits.detach().float(), dim=1)
            refined = pamr_present(img, masks, labels, dilations=s["pamr"]["dilations"], n_iter=s["pamr"]["iterations"])
            pgt = pseudo_gt(refined, labels, **s["pseudo_gt"])
        return pgt, refined

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.scfg
        warm = self.epoch < s["warmup_epochs"]
        out = self.net(x, with_embedding=self.use_lr and not warm)
        logits = out["logits"]
        losses = {"loss_cls": classification.multilabel_loss(class_scores(logits, **s["focal"]), labels)}
        zero = logits.new_zeros(())
        extra = {"loss_seg": zero, "pseudo_ignored": zero}
        if self.use_aa:
            extra["loss_aa"] = zero
        if self.use_lr:
            extra.update(loss_lr=zero, lr_reassigned=zero)
        if not warm:
            pgt, refined = self.pseudo_labels(x, logits, labels)
            grid = pgt.shape[-2:]
            seg_logits = out["seg_logits"]
            up = F.interpolate(seg_logits, size=grid, mode="bilinear", align_corners=True)
            seg_target = pgt
            extra["pseudo_ignored"] = (pgt == IGNORE_INDEX).float().mean()
            if self.use_lr:
                c = s["lr"]
                emb = F.normalize(F.interpolate(out["embedding"], size=grid, mode="bilinear", align_corners=True), dim=1)
                centres, present = class_centres(emb, pgt, num_classes=logits.shape[1], detach=c["detach_centres"])
                new = reassign(emb, pgt, centres, present, margin=c["margin"], mode=c["mode"])
                extra["lr_reassigned"] = ((new != pgt) & (pgt != IGNORE_INDEX)).float().mean()
                extra["loss_lr"] = c["weight"] * label_reassign_loss(emb, new, centres, present, c["temperature"])
                if c["relabel_segmentation"]:
                    seg_target = new
            m = s["mask_loss"]
            extra["loss_seg"] = m["weight"] * mask_loss(up, seg_target, labels, balanced=m["balanced"],
                                                        require_all_classes=m["require_all_classes"])
            if self.use_aa:
                c = s["aa"]
                aa_logits, aa_target, conf = up, seg_target, refined.amax(1)
                if c["grid"] == "logits":  # AAF: labels shrunk (nearest) to the network output's size
                    aa_logits = seg_logits
                    aa_target = F.interpolate(seg_target[:, None].float(), size=seg_logits.shape[-2:], mode="nearest")[:, 0].long()
                    conf = F.interpolate(conf[:, None], size=seg_logits.shape[-2:], mode="nearest")[:, 0]
                extra["loss_aa"] = c["weight"] * adaptive_affinity_loss(
                    aa_logits, aa_target, dilations=c["dilations"], margin=c["margin"], weighting=c["weighting"],
                    confidence=conf)
        losses.update(extra)
        losses["loss"] = sum(v for k, v in losses.items() if k.startswith("loss_"))
        return losses


class _EpochAware(torch.utils.data.Dataset):
    """Forwards items of ``ds``; the trainer sets ``dataset.seed = run_seed * 1000 + epoch`` before every epoch
    (``wsss.engine.trainer.train``), from which this wrapper tells the objective the epoch (also after a resume)."""

    def __init__(self, ds, run_seed: int, objective: SingleStageObjective):
        self.ds, self.run_seed, self.objective = ds, int(run_seed), objective

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        return self.ds[i]

    @property
    def seed(self) -> int:
        return self.ds.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.ds.seed = value
        self.objective.epoch = int(value) - self.run_seed * 1000


def run(cfg: dict, *, variant: str, data_root: Path, out: Path, metrics_out: Path, plot_out: Path,
        state_path: Path, support_ckpt: Path | None = None) -> None:
    scfg = cfg["single_stage"]
    tcfg = scfg["train"]
    if variant not in scfg["variants"]:
        raise WsssInputError(f"single-stage variant {variant!r} is not among single_stage.variants {scfg['variants']}")
    seed = seed_of(cfg)
    seed_everything(seed)
    net = build_net(scfg)
    if scfg["init_from_supportnet"]:
        if support_ckpt is None:
            raise WsssInputError("single_stage.init_from_supportnet is true: pass the SupportNet checkpoint (--support)")
        log.info("single-stage backbone initialised from %s (%d tensors)", support_ckpt,
                 init_from_supportnet(net, support_ckpt))
    objective = SingleStageObjective(net, variant, scfg)
    aug = scfg["augment"]
    ds = ClassificationDataset(data_root, cfg["data"]["train_split"], crop=tcfg["crop"], train=True, seed=seed,
                               scale_range=tuple(aug["scale_range"]), jitter=aug["jitter"])
    history = train(
        net, _EpochAware(ds, seed, objective), tcfg, seed=seed, state_path=state_path, out=out,
        desc=f"single_stage_{variant}",
        resolved={"single_stage": scfg, "variant": variant, "seed": seed, "data": cfg["data"]},
        objective=lambda x, batch: objective(x, batch["label"]),
        extra={"variant": variant},
    )
    write_json(metrics_out, {"variant": variant, "history": history,
                             "final": {"epochs": tcfg["epochs"], "warmup_epochs": scfg["warmup_epochs"],
                                       **{k: v for k, v in history[-1].items() if k != "epoch"}}})
    write_json(plot_out, history)
