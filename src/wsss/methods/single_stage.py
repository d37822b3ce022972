"""The training objective of AA&LR's single-stage model (one ablation variant: baseline, aa, lr, aa_lr).

Step (variant flags ``aa`` and ``lr``, :data:`wsss.variants.SINGLE_STAGE_VARIANTS`; config section
``single_stage``; docs/methods.md says what is whose)::

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

The controlled-noise experiment (issue 16, stage ``train_noisy``) passes ``target``: fixed (corrupted) label maps
that replace the PAMR pseudo GT, and ``gt``, the true masks, against which each step records LR's flips (how many
pixels it moved, how many of those moves restore the true label, how many target pixels were wrong) and the
agreement of the segmentation prediction with the target and with the truth (memorisation shows as agreement with
the target rising above agreement with the truth).

Test-time inference: :mod:`wsss.methods.single_stage_inference`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from wsss.engine import distributed as dist
from wsss.io import WsssInputError
from wsss.losses import classification
from wsss.losses.adaptive_affinity import KernelWeights, adaptive_affinity_loss, adversarial_affinity_loss
from wsss.losses.label_reassign import class_centres, label_reassign_loss, reassign
from wsss.losses.single_stage import IGNORE_INDEX, class_scores, mask_loss, pseudo_gt
from wsss.models.backbones import init_from_supportnet
from wsss.models.single_stage import SingleStageNet, single_stage_from_config
from wsss.refine.pamr import pamr_present
from wsss.variants import SINGLE_STAGE_VARIANTS

log = logging.getLogger("wsss")


def build_objective(scfg, variant: str, support: Path | None) -> SingleStageObjective:
    """A training stage's objective: its net from :func:`build_net`, and its own modules (the adversarial kernel
    weights) on the training device. ``objective.net`` is the net to train."""
    objective = SingleStageObjective(build_net(scfg, support), variant, scfg)
    if objective.kernels is not None:
        objective.kernels.to(dist.device())
    return objective


def build_net(scfg, support: Path | None) -> SingleStageNet:
    """The single-stage net of the ``single_stage`` section, its backbone from SupportNet's checkpoint
    ``support`` when ``init_from_supportnet`` asks for it."""
    net = single_stage_from_config(scfg)
    if scfg["init_from_supportnet"]:
        if support is None:
            raise WsssInputError(
                "single_stage.init_from_supportnet is true: pass the SupportNet checkpoint (--support)"
            )
        log.info(
            "single-stage backbone initialised from %s (%d tensors)",
            support,
            init_from_supportnet(net.backbone, support, key="single_stage.init_from_supportnet"),
        )
    return net


class SingleStageObjective:
    """Loss of one variant; ``scfg`` is the ``single_stage`` config section (its ``aa`` / ``lr`` parts are read only
    by the variants that use them). ``epoch`` (set by the training loop) decides whether the warm-up is over."""

    def __init__(self, net: SingleStageNet, variant: str, scfg):
        if variant not in SINGLE_STAGE_VARIANTS:
            raise ValueError(f"unknown single-stage variant {variant!r}; choose from {list(SINGLE_STAGE_VARIANTS)}")
        self.net, self.scfg = net, scfg
        self.use_aa, self.use_lr = SINGLE_STAGE_VARIANTS[variant]
        self.epoch = 0
        self.kernels = None  # AAF's adversarial kernel-size weights (aa.weighting adversarial)
        if self.use_aa and scfg["aa"]["weighting"] == "adversarial":
            self.kernels = KernelWeights(21, len(scfg["aa"]["dilations"]), scfg["aa"]["adversarial_lr"])

    def companions(self) -> dict:
        """Modules besides the net whose state a resumed training restores (wsss.engine.trainer.train)."""
        return {"aa_kernels": self.kernels} if self.kernels is not None else {}

    def after_step(self) -> None:
        """After each optimiser step: the adversarial kernel weights take their ascent step."""
        if self.kernels is not None:
            self.kernels.ascend(dist.all_reduce_sum, dist.world_size())

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

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None = None, gt: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The losses of one batch; ``target`` / ``gt`` ([B,H,W] at the input's size, 255 ignored): the fixed
        segmentation targets of the noise experiment and the truth they were corrupted from (module docstring)."""
        if (target is None) != (gt is None):
            raise ValueError("the noise experiment passes both target and gt (or neither)")
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
        if target is not None:
            extra.update(agree_target=zero, agree_gt=zero)
            if self.use_lr:
                extra.update(lr_flips=zero, lr_flips_correct=zero, target_wrong=zero)
        if not warm:
            if target is None:
                pgt, refined = self.pseudo_labels(x, logits, labels)
            else:  # the noise experiment: the given labels on the label grid (nearest), full confidence
                pgt, gt_grid = (_to_grid(t, x.shape[-2:], s["label_stride"]) for t in (target, gt))
                refined = torch.ones(pgt.shape[0], 1, *pgt.shape[-2:], dtype=logits.dtype, device=logits.device)
            grid = pgt.shape[-2:]
            seg_logits = out["seg_logits"]
            up = F.interpolate(seg_logits, size=grid, mode="bilinear", align_corners=True)
            seg_target = pgt
            extra["pseudo_ignored"] = (pgt == IGNORE_INDEX).float().mean()
            if self.use_lr:
                c = s["lr"]
                emb = F.normalize(
                    F.interpolate(out["embedding"], size=grid, mode="bilinear", align_corners=True), dim=1
                )
                centres, present = class_centres(emb, pgt, num_classes=logits.shape[1], detach=c["detach_centres"])
                if self.epoch >= c["start_epoch"]:
                    own = torch.cat([labels.new_ones(labels.shape[0], 1), labels], 1) > 0.5  # background + labels
                    new = reassign(emb, pgt, centres, present, margin=c["margin"], mode=c["mode"], allowed=own)
                else:  # the centres train first (lr.start_epoch): no pixel moves yet
                    new = pgt
                extra["lr_reassigned"] = ((new != pgt) & (pgt != IGNORE_INDEX)).float().mean()
                if target is not None:
                    extra.update(flip_stats(pgt, new, gt_grid))
                extra["loss_lr"] = c["weight"] * label_reassign_loss(emb, new, centres, present, c["temperature"])
                if c["relabel_segmentation"]:
                    seg_target = new
            m = s["mask_loss"]
            extra["loss_seg"] = m["weight"] * mask_loss(
                up, seg_target, labels, balanced=m["balanced"], require_all_classes=m["require_all_classes"]
            )
            if self.use_aa:
                c = s["aa"]
                aa_logits, aa_target, conf = up, seg_target, refined.amax(1)
                if c["grid"] == "logits":  # AAF: labels shrunk (nearest) to the network output's size
                    aa_logits = seg_logits
                    aa_target = _nearest(seg_target, seg_logits.shape[-2:])
                    conf = F.interpolate(conf[:, None], size=seg_logits.shape[-2:], mode="nearest")[:, 0]
                if self.kernels is not None:
                    extra["loss_aa"] = c["weight"] * adversarial_affinity_loss(
                        aa_logits, aa_target, self.kernels.logits, dilations=c["dilations"], margin=c["margin"]
                    )
                else:
                    extra["loss_aa"] = c["weight"] * adaptive_affinity_loss(
                        aa_logits,
                        aa_target,
                        dilations=c["dilations"],
                        margin=c["margin"],
                        weighting=c["weighting"],
                        confidence=conf,
                    )
            if target is not None:
                with torch.no_grad():
                    pred = up.argmax(1)
                    extra["agree_target"] = _agreement(pred, pgt)
                    extra["agree_gt"] = _agreement(pred, gt_grid)
        losses.update(extra)
        losses["loss"] = sum(v for k, v in losses.items() if k.startswith("loss_"))
        return losses


def _nearest(labels: torch.Tensor, size) -> torch.Tensor:
    """A [B,H,W] label map resized to ``size`` by nearest neighbour."""
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def _to_grid(t: torch.Tensor, size, stride: int) -> torch.Tensor:
    """A [B,H,W] label map on the label grid (input size // stride), nearest."""
    return _nearest(t, (max(1, size[0] // stride), max(1, size[1] // stride)))


def _agreement(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    valid = ref != IGNORE_INDEX
    return (pred[valid] == ref[valid]).float().mean() if bool(valid.any()) else pred.new_zeros((), dtype=torch.float)


@torch.no_grad()
def flip_stats(target: torch.Tensor, new: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """LR's reassignments against the truth, as shares of the pixels where target and truth are both labelled:

        lr_flips          = [y' != y]                         (pixels LR moved, to a class or to 255)
        lr_flips_correct  = [y' != y] * [y != g] * [y' in {g, 255}]   (a move that removes a wrong label)
        target_wrong      = [y != g]                           (pixels whose target is wrong)

    precision = lr_flips_correct / lr_flips, recall = lr_flips_correct / target_wrong (epoch means divided:
    the per-step denominators are equal, so the ratio of means is the ratio of sums). Moving a wrong label to
    255 (mode ``ignore``) counts as a correction: it stops training on it."""
    valid = (target != IGNORE_INDEX) & (gt != IGNORE_INDEX)
    n = valid.sum().clamp_min(1).float()
    flip = valid & (new != target)
    wrong = valid & (target != gt)
    fixed = flip & wrong & ((new == gt) | (new == IGNORE_INDEX))
    return {"lr_flips": flip.sum() / n, "lr_flips_correct": fixed.sum() / n, "target_wrong": wrong.sum() / n}
