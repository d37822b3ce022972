"""MainNet's objective: classification, plus RCM and MAM from a frozen SupportNet (pixel-level self-supervision),
or one of the positive controls (Puzzle-CAM's puzzle module, Hide-and-Seek).

MainNet step (the variant's mechanisms, :data:`wsss.variants.MAINNET_VARIANTS`)::

    L = L_cls(MainNet(x), y)            ([hide_and_seek]: x -> x with random patches hidden, wsss.data.hide_and_seek)
      + [rcm] w_rcm * L_rcm(MainNet pixel embeddings, regions and prototypes from frozen SupportNet)
      + [mam] w_mam * L_mam(MainNet CAMs at scales S, fused SupportNet CAMs at scales S)
      + [puzzle] L_p-cls(GAP(merged tile CAMs), y) + alpha(t) * L_re(CAM, merged tile CAMs)   (wsss.losses.puzzle)
      + [authors_rcm] W1 * CE(T * cos(MainNet features(x_a), leave-one-out prototypes of SupportNet(x_p)),
                              multi-scale region masks of SupportNet(x_a))
      + [authors_mam] W2 * sum_k L1(MainNet CAM at scale k, (2 - cos)-weighted SupportNet multi-scale CAMs)
    [teacher] after every optimiser step: SupportNet <- m SupportNet + (1 - m) MainNet   (wsss.engine.ema)

The authors_* terms are the formulation read from the authors' compiled code (issue 16; docs/methods.md). Without
[teacher] SupportNet is frozen (eval mode, no gradient) while MainNet trains; ``tests/test_stages.py`` proves that
no gradient reaches it; with it, SupportNet still takes no gradient (an average of MainNet's weights).
``support=None`` gives SupportNet's own objective (classification only).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from wsss.data import hide_and_seek
from wsss.engine import distributed as dist
from wsss.engine.ema import ema_update
from wsss.io import WsssInputError
from wsss.losses import classification, mam, puzzle, rcm
from wsss.models.cam_net import CAMNet, cams_at_scales, normalize_cam, rescale
from wsss.variants import MAINNET_VARIANTS


class MainNetObjective:
    """Loss of one MainNet variant given a frozen SupportNet; ``mcfg`` is the ``mainnet`` config section (only
    the parts of the variant's mechanisms are read).

    ``epoch`` (set by the training loop through :class:`wsss.engine.trainer.EpochAware`) and ``steps_per_epoch``
    / ``epochs`` give the training progress that ramps the puzzle weight; the step within the epoch is counted
    here (a resume starts at an epoch boundary, so the count restarts with it)."""

    def __init__(
        self,
        net: CAMNet,
        support: CAMNet | None,
        variant: str,
        mcfg=None,
        *,
        steps_per_epoch: int = 1,
        epochs: int = 1,
        seed: int = 0,
    ):
        if variant not in MAINNET_VARIANTS:
            raise ValueError(f"unknown MainNet variant {variant!r}; choose from {list(MAINNET_VARIANTS)}")
        self.net, self.support = net, support
        mechanisms = MAINNET_VARIANTS[variant]
        self.use_rcm, self.use_mam, self.use_puzzle = ("rcm" in mechanisms, "mam" in mechanisms, "puzzle" in mechanisms)
        self.rcm_cfg = mcfg["rcm"] if self.use_rcm else None
        self.mam_cfg = mcfg["mam"] if self.use_mam else None
        self.puzzle_cfg = mcfg["puzzle"] if self.use_puzzle else None
        self.hide_cfg = mcfg["hide_and_seek"] if "hide_and_seek" in mechanisms else None
        self.teacher_cfg = mcfg["teacher"] if "teacher" in mechanisms else None
        self.arcm_cfg = mcfg["authors_rcm"] if "authors_rcm" in mechanisms else None
        self.amam_cfg = mcfg["authors_mam"] if "authors_mam" in mechanisms else None
        if self.teacher_cfg is not None and not mcfg["init_from_supportnet"]:
            raise WsssInputError(
                f"MainNet variant {variant!r}: the mean teacher (mainnet.teacher) averages MainNet into SupportNet, "
                "so both must start from one checkpoint: set mainnet.init_from_supportnet to true"
            )
        self.seed = int(seed)
        self.steps_per_epoch, self.epochs = max(1, int(steps_per_epoch)), max(1, int(epochs))
        self.epoch, self._counted = 0, (None, 0)
        self.memory = None
        if self.use_rcm and self.rcm_cfg["memory_momentum"] > 0:
            self.memory = rcm.PrototypeMemory(21, net.backbone.out_channels, self.rcm_cfg["memory_momentum"])
        self.queue = None
        if self.arcm_cfg is not None and self.arcm_cfg["memory_size"] > 0:
            self.queue = rcm.PrototypeQueue(21, net.backbone.out_channels, self.arcm_cfg["memory_size"])

    @property
    def two_views(self) -> bool:
        """Whether the batches must carry a second view ``image_p`` (the authors' RCM prototypes)."""
        return self.arcm_cfg is not None and self.arcm_cfg["two_views"]

    def companions(self) -> dict[str, torch.nn.Module]:
        """The modules besides MainNet whose state a resumed training must restore (wsss.engine.trainer.train)."""
        out = {}
        if self.teacher_cfg is not None:
            out["teacher"] = self.support
        if self.memory is not None:
            out["memory"] = self.memory
        if self.queue is not None:
            out["queue"] = self.queue
        return out

    def after_step(self) -> None:
        """After each optimiser step: the mean teacher follows MainNet (nothing without ``teacher``)."""
        if self.teacher_cfg is not None:
            ema_update(self.support, self.net, self.teacher_cfg["momentum"])

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ids=None, x_p=None) -> dict[str, torch.Tensor]:
        """The losses of one batch (``ids``: the images' ids, which the hide-and-seek masks are drawn from;
        ``x_p``: the second view, for the authors' RCM with ``two_views``)."""
        if self.hide_cfg is not None:
            x = self._hide(x, ids)
        want_proj = self.use_rcm and self.rcm_cfg["embedding"] == "projection"
        out = self.net(x, with_proj=want_proj)
        losses = {"loss_cls": classification.multilabel_loss(out["logits"], y)}
        if self.use_rcm or self.use_mam:
            with torch.no_grad():
                s_out = self.support(x)
        if self.use_rcm:
            losses["loss_rcm"] = self.rcm_cfg["weight"] * self._rcm(out, s_out, y, want_proj)
        if self.use_mam:
            losses["loss_mam"] = self.mam_cfg["weight"] * self._mam(x, out, y)
        if self.use_puzzle:
            losses.update(self._puzzle(x, out, y))
        if self.arcm_cfg is not None or self.amam_cfg is not None:
            losses.update(self._authors(x, x_p, out, y))
        losses["loss"] = sum(losses.values())
        return losses

    def _support_multiscale(self, x: torch.Tensor, scales, size) -> tuple[list[torch.Tensor], torch.Tensor]:
        """SupportNet (no gradient) at each scale: (ReLU'd CAMs resized to ``size``, the scale-1 features)."""
        cams, feats = [], None
        with torch.no_grad():
            for s in scales:
                o = self.support(rescale(x, s))
                cams.append(F.interpolate(F.relu(o["cam"]), size=size, mode="bilinear", align_corners=False))
                if s == 1.0:
                    feats = o["features"]
            if feats is None:
                feats = self.support(x)["features"]
        return cams, feats

    def _authors(self, x: torch.Tensor, x_p, out: dict, y: torch.Tensor) -> dict[str, torch.Tensor]:
        size = out["cam"].shape[-2:]
        losses, cache = {}, {}

        def support_pass(scales):  # (CAMs, scale-1 features) of view a, computed once per scale set
            key = tuple(scales)
            if key not in cache:
                cache[key] = self._support_multiscale(x, scales, size)
            return cache[key]

        if self.arcm_cfg is not None:
            c = self.arcm_cfg
            with torch.no_grad():
                a_cams, a_feats = support_pass(c["support_scales"])
                region = rcm.multiscale_region_masks(a_cams, y, c["threshold"])
                if c["two_views"]:
                    if x_p is None or x_p.shape != x.shape:
                        raise ValueError("mainnet.authors_rcm.two_views needs the second view of every image (image_p)")
                    p_cams, p_feats = self._support_multiscale(x_p, c["support_scales"], size)
                    region_p = rcm.multiscale_region_masks(p_cams, y, c["threshold"])
                else:  # the prototypes from the same view as MainNet's
                    p_feats, region_p = a_feats, region
                memory, count = self.queue.get() if self.queue is not None else (None, None)
                protos, present, q = rcm.leave_one_out_prototypes(
                    p_feats, region_p, 21, memory, count, reduce=dist.all_reduce_sum
                )
                if self.queue is not None:  # this batch's class means join the memory for the next batches
                    has = (q.norm(dim=-1) > 0).to(q.dtype)
                    sums, n = dist.all_reduce_sum(q.sum(0)), dist.all_reduce_sum(has.sum(0))
                    self.queue.push(F.normalize(sums / n.clamp_min(1.0).unsqueeze(-1), dim=-1), n > 0)
            emb = F.normalize(out["features"], dim=1)
            loss, n_pix = rcm.pixel_prototype_contrast(
                emb, region, protos, present, temperature=1.0 / c["scale"], return_count=True
            )
            losses["loss_rcm"] = c["weight"] * dist.global_mean(loss, n_pix)
        if self.amam_cfg is not None:
            c = self.amam_cfg
            n = max(1, round(x.shape[0] * c["batch_fraction"]))
            s_cams = [a[:n] for a in support_pass(c["support_scales"])[0]]
            yn = y[:n]
            keep = yn.to(out["cam"].dtype)[:, :, None, None]
            m_cams = []
            for s in c["main_scales"]:
                if s == 1.0:
                    cam = out["cam"][:n]
                else:
                    with bn_mode(self.net, c["extra_pass_bn"]):
                        cam = cams_at_scales(self.net, x[:n], [s], size=size, activation="none")[0]
                m_cams.append((F.relu(cam) if c["main_activation"] == "relu" else cam) * keep)
            loss = mam.dissimilarity_mam_loss(m_cams, [a * keep for a in s_cams], yn)
            losses["loss_mam"] = c["weight"] * dist.global_mean(loss, yn.sum() * size[0] * size[1])
        return losses

    def progress(self) -> float:
        """Training progress t / T in [0, 1) of the current step (counted per call within ``epoch``)."""
        epoch, step = self._counted
        step = step + 1 if epoch == self.epoch else 0
        self._counted = (self.epoch, step)
        return (self.epoch + min(step, self.steps_per_epoch - 1) / self.steps_per_epoch) / self.epochs

    def _hide(self, x: torch.Tensor, ids) -> torch.Tensor:
        c = self.hide_cfg
        if ids is None or len(ids) != x.shape[0]:
            raise ValueError("hide-and-seek needs the batch's image ids (one per image) to draw its masks from")
        h, w = x.shape[-2:]
        masks = [
            hide_and_seek.hide_mask(
                h, w, c["patch_sizes"], c["hide_prob"], hide_and_seek.image_generator(self.seed, self.epoch, i)
            )
            for i in ids
        ]
        return hide_and_seek.hide(x, torch.stack(masks))

    def _puzzle(self, x: torch.Tensor, out: dict, y: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.puzzle_cfg
        n = c["tiles"]
        merged = puzzle.merge(self.net(puzzle.tile(x, n))["cam"], n)
        if merged.shape != out["cam"].shape:
            raise ValueError(
                f"the {n}x{n} puzzle tiles give a {tuple(merged.shape[-2:])} map against the full image's "
                f"{tuple(out['cam'].shape[-2:])}: use a crop that is a multiple of {n} x the backbone's stride"
            )
        alpha = puzzle.alpha_at(self.progress(), c["weight"], c["ramp"])
        return {
            "loss_pcls": classification.multilabel_loss(merged.mean(dim=(2, 3)), y),
            "loss_re": alpha * puzzle.reconstruction_loss(out["cam"], merged, y),
        }

    def _rcm(self, out: dict, s_out: dict, y: torch.Tensor, want_proj: bool) -> torch.Tensor:
        c = self.rcm_cfg
        s_cam = normalize_cam(F.relu(s_out["cam"]))
        region = rcm.region_labels(s_cam, y, c["fg_threshold"], c["bg_threshold"])
        # batch prototypes pool over the global batch under DDP (all-reduced), as with one process
        protos, present = rcm.class_prototypes(
            s_out["features"], region, num_classes=21, scope=c["prototype_scope"], reduce=dist.all_reduce_sum
        )
        if self.memory is not None:
            self.memory.update(protos, present)
            protos, present = self.memory.get()
        emb = out["proj"] if want_proj else F.normalize(out["features"], dim=1)
        loss, count = rcm.pixel_prototype_contrast(emb, region, protos, present, c["temperature"], return_count=True)
        return dist.global_mean(loss, count)  # mean over the labelled pixels of the global batch

    def _mam(self, x: torch.Tensor, out: dict, y: torch.Tensor) -> torch.Tensor:
        c = self.mam_cfg
        size = out["cam"].shape[-2:]
        with torch.no_grad():
            s_cams = [normalize_cam(a) for a in cams_at_scales(self.support, x, c["scales"], flip=False, size=size)]
            target = mam.fuse_multiscale(s_cams, mode=c["fusion"])
        # MainNet's raw (signed) CAMs, normalised by a detached max: a ReLU would give no gradient exactly where
        # the body is still negative, and a live max would let MainNet "expand" by lowering its own peak.
        m_cams = []
        for s in c["scales"]:
            if s == 1.0:
                cam = out["cam"]
            else:
                with bn_mode(self.net, c["extra_pass_bn"]):
                    cam = cams_at_scales(self.net, x, [s], size=size, activation="none")[0]
            # floored at -1 so that a class whose peak is still ~0 cannot blow the loss up
            m_cams.append(normalize_cam(cam, detach_max=True).clamp(min=-1.0))
        loss = mam.mam_loss(
            m_cams,
            target,
            y,
            measure=c["measure"],
            gamma=c["gamma"],
            gate_threshold=c["gate_threshold"],
            one_sided=c["one_sided"],
            suppress_below=c["suppress_below"],
        )
        # mam_loss divides by (present classes x pixels) of the batch: make that the global batch's under DDP
        return dist.global_mean(loss, y.sum() * size[0] * size[1])


@contextlib.contextmanager
def bn_mode(net: torch.nn.Module, mode: str):
    """``mode='eval'``: ``net``'s BatchNorm layers that are training use (and leave unchanged) their running
    statistics inside the block, gradients still flowing; ``'train'``: nothing changes (issue 16's BN treatment
    of MainNet's extra-scale passes)."""
    if mode not in ("train", "eval"):
        raise ValueError(f"BatchNorm mode must be 'train' or 'eval', got {mode!r}")
    if mode == "train":
        yield
        return
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m in bns:
            m.train()
