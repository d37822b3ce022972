"""Training plumbing shared by every training stage: seeding, optimiser and schedule, resumable checkpoints.

Under ``torchrun`` (docs/architecture.md, "Multi-GPU") every process runs the same loop on its slice of each
global batch with DDP; only rank 0 writes the state file and the checkpoint, and results do not depend on the
number of processes (tests/test_distributed.py).

A training stage writes two things:
- ``state_path`` (outside the Snakemake/DVC outputs, e.g. ``results/<exp>/seed<k>/state/<net>.pt``): the full
  resumable state after every epoch — model, optimizer, scheduler, epoch, RNG states, history and the resume key.
  The key covers everything the result depends on: the resolved config the stage passed, the code (every ``wsss``
  source file) and the content of the input files (:func:`wsss.io.path_digest`). A killed job re-run with the same
  key resumes from it (and logs what it matched); any change starts afresh. The state is deleted once the final
  checkpoint is written, so a later run can never pick up a finished training.
- ``checkpoint.pt`` (the stage's output): the same dict, written atomically once training has finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from wsss.engine import distributed as dist
from wsss.engine.checkpoint import save_checkpoint
from wsss.io import path_digest, plain

log = logging.getLogger("wsss")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def code_digest() -> str:
    """Digest of the wsss package's source: a resumable state written by other code is not resumed."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def config_digest(obj: Any) -> str:
    """Digest of a training's resolved config and of the code that runs it (what a resume must match)."""
    payload = json.dumps(obj, sort_keys=True, default=str) + code_digest()
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def param_groups(net: torch.nn.Module, optim_cfg: dict) -> list[dict]:
    """The optimiser's parameter groups: ``net.backbone``'s trainable parameters at ``lr`` and every other trainable
    parameter (the layers a stage adds: CAM classifier, projection head, ASPP / decoder, affinity and single-stage
    heads) at ``lr * new_layer_lr_mult`` (IRN trains its new classifier at 10x the backbone's rate). A net without a
    ``backbone`` is one group at ``lr``. Frozen parameters (``requires_grad`` False) are left out."""
    lr, mult = optim_cfg["lr"], optim_cfg.get("new_layer_lr_mult", 1.0)
    backbone = getattr(net, "backbone", None)
    in_backbone = {id(p) for p in backbone.parameters()} if isinstance(backbone, torch.nn.Module) else set()
    trainable = [p for p in net.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) in in_backbone], "lr": lr},
        {"params": [p for p in trainable if id(p) not in in_backbone], "lr": lr * mult},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(params: Iterable, optim_cfg: dict) -> torch.optim.Optimizer:
    if optim_cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=optim_cfg["lr"], weight_decay=optim_cfg["weight_decay"])
    return torch.optim.SGD(
        params, lr=optim_cfg["lr"], momentum=optim_cfg["momentum"], weight_decay=optim_cfg["weight_decay"]
    )


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: dict, total_steps: int):
    total_steps = max(1, total_steps)
    kind = optim_cfg["schedule"]
    if kind == "onecycle":
        # one cycle (Smith 2018) as a LambdaLR, robust to tiny step counts: linear warm-up from lr/25 to lr over
        # warmup_fraction of the steps, then cosine annealing towards 0.
        warm = max(1, round(optim_cfg["warmup_fraction"] * total_steps))

        def one_cycle(s: int) -> float:
            if s < warm:
                return 0.04 + 0.96 * s / warm
            t = min(1.0, (s - warm) / max(1, total_steps - warm))
            return 0.5 * (1 + math.cos(math.pi * t))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)
    if kind == "poly":
        power = optim_cfg["poly_power"]
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (1 - min(s, total_steps - 1) / total_steps) ** power
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)


@dataclass
class TrainState:
    """What a training loop needs to resume exactly where it stopped."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    config: dict
    epoch: int = 0
    history: list = field(default_factory=list)
    # modules besides the model whose state a resume must restore (an EMA teacher, a prototype memory)
    companions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "companions": {k: m.state_dict() for k, m in self.companions.items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "history": self.history,
            "rng": rng_state(),
            "config": self.config,
            "config_digest": config_digest(self.config),
        }

    def try_resume(self, state_path: Path) -> bool:
        if not state_path.is_file():
            return False
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=False)
        except Exception as e:  # a state file cut short by a crash: start afresh
            log.info("ignoring %s: unreadable (%s)", state_path, e)
            return False
        if state.get("config_digest") != config_digest(self.config):
            log.info("ignoring %s: it was written under another config, code version or input files", state_path)
            return False
        self.model.load_state_dict(state["model"])
        for k, m in self.companions.items():
            m.load_state_dict(state["companions"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]
        self.history = state["history"]
        set_rng_state(state["rng"])
        inputs = self.config.get("inputs", {})
        log.info(
            "resumed from %s at epoch %d: it matched the config, the code (%s) and the inputs %s",
            state_path,
            self.epoch,
            code_digest(),
            ", ".join(f"{k}={v}" for k, v in sorted(inputs.items())) or "(none)",
        )
        return True


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Data order of an epoch depends only on (seed, epoch): resuming replays the same order."""
    g = torch.Generator()
    g.manual_seed(seed * 100003 + epoch)
    return g


def fit(
    state: TrainState,
    *,
    epochs: int,
    make_loader: Callable[[int], Iterable],
    step: Callable[[dict], dict],
    state_path: Path,
    end_of_epoch: Callable[[int], dict] | None = None,
    desc: str = "train",
) -> TrainState:
    """The flat training loop: for each remaining epoch, run ``step`` on each batch, then checkpoint.

    ``step(batch)`` does forward, backward and optimizer/scheduler step and returns scalar losses (floats).
    ``end_of_epoch(epoch)`` may return extra scalars (e.g. val mAP) for the history.
    """
    state.try_resume(state_path)  # every rank loads the same state
    state.model.train()
    main = dist.is_main()
    for epoch in range(state.epoch, epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        n = 0
        loader = make_loader(epoch)
        bar = tqdm(
            loader,
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            leave=False,
            mininterval=5,
            disable=None if main else True,
        )
        for batch in bar:
            losses = step(batch)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            if not math.isfinite(losses.get("loss", 0.0)):
                raise FloatingPointError(
                    f"{desc}: loss became {losses['loss']} at epoch {epoch + 1}; lower the learning rate"
                )
        if dist.world_size() > 1:  # the epoch's mean losses over every process (the same record on each rank)
            keys = sorted(sums)
            tot = dist.all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
            sums = {k: float(v) / dist.world_size() for k, v in zip(keys, tot)}  # n (steps) is the same on all ranks
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}, "seconds": time.time() - t0}
        if end_of_epoch is not None:
            record.update(end_of_epoch(epoch))
            state.model.train()
        state.history.append(record)
        state.epoch = epoch + 1
        log.info("%s %s", desc, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}))
        if main:
            save_checkpoint(state_path, state.to_dict())
        dist.barrier()  # no rank runs ahead of the state file
    return state


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of sample ``index``'s augmentation in ``epoch``: a function of (seed, epoch, index) only."""
    return int(np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(1, np.uint64)[0])


class EpochSeededDataset(torch.utils.data.Dataset):
    """``dataset[index]`` with torch's CPU RNG seeded from (seed, epoch, index) for the call (and restored after).

    The datasets draw their per-sample augmentation from torch's global RNG (``wsss.data.voc.sample_rng``), which
    would make a sample's augmentation depend on how many samples its process drew before it, i.e. on the process
    count and rank. Seeding per sample makes it depend on (seed, epoch, index) only.
    """

    def __init__(self, dataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, int(seed), int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, self.epoch, index))
            return self.dataset[index]


class EpochAware(torch.utils.data.Dataset):
    """Forwards items of ``ds``; :func:`train` sets ``dataset.seed = run_seed * 1000 + epoch`` before every epoch,
    from which this wrapper sets ``objective.epoch`` (also after a resume): for objectives whose terms depend on
    the training progress (the single-stage warm-up, the puzzle weight's ramp)."""

    def __init__(self, ds, run_seed: int, objective):
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


def global_batches(n: int, global_batch: int, generator: torch.Generator, rank: int = 0, world: int = 1) -> list:
    """Index lists of this rank's share of every global batch of an epoch.

    The epoch's permutation is ``torch.randperm(n, generator=generator)``, the same on every rank; global batches
    are its consecutive ``global_batch``-sized chunks (the last, partial one dropped); rank ``r`` takes the
    ``r``-th contiguous slice of each, so the union over ranks of every step's batches is the single-process batch.
    """
    local = global_batch // world
    order = torch.randperm(n, generator=generator).tolist()
    return [
        order[b * global_batch + rank * local : b * global_batch + (rank + 1) * local] for b in range(n // global_batch)
    ]


BATCHNORM_MODES = ("sync", "frozen", "local")


def apply_batchnorm(net: torch.nn.Module, mode: str, world: int) -> torch.nn.Module:
    """Prepare ``net``'s BatchNorms for training on ``world`` processes (config ``train.batchnorm``).

    sync: statistics over the global batch (SyncBatchNorm; a no-op for one process, where BN already sees the
    whole batch); frozen: eval-mode BN with frozen affine parameters on every process (IRN's FixedBatchNorm);
    local: per-process statistics (results depend on the process count).
    """
    from wsss.models.backbones import freeze_bn

    if mode not in BATCHNORM_MODES:
        raise ValueError(f"train.batchnorm must be one of {BATCHNORM_MODES}, got {mode!r}")
    if mode == "frozen":
        return freeze_bn(net)
    if mode == "sync" and world > 1:
        return dist.convert_sync_batchnorm(net)
    return net


def freeze_backbone(net: torch.nn.Module, *, key: str) -> torch.nn.Module:
    """Freeze ``net.backbone`` (config ``train.freeze_backbone``): its parameters stop requiring gradients (so
    :func:`param_groups` leaves them out) and its BatchNorms keep their running statistics for good
    (:func:`wsss.models.backbones.freeze_bn`); the layers the stage adds train as before. Returns ``net``."""
    from wsss.io import WsssInputError
    from wsss.models.backbones import freeze_bn

    backbone = getattr(net, "backbone", None)
    if not isinstance(backbone, torch.nn.Module):
        raise WsssInputError(f"{key}: {type(net).__name__} has no backbone to freeze; set it to false")
    for p in backbone.parameters():
        p.requires_grad_(False)
    freeze_bn(backbone)
    if not any(p.requires_grad for p in net.parameters()):
        raise WsssInputError(f"{key}: nothing left to train once the backbone is frozen; set it to false")
    return net


class _Objective(torch.nn.Module):
    """``net`` plus the stage's objective, so that DDP wraps the whole step's forward (every call of ``net``)."""

    def __init__(self, net: torch.nn.Module, objective: Callable):
        super().__init__()
        self.net = net
        self.objective = objective

    def forward(self, x: torch.Tensor, batch: dict) -> dict:
        return self.objective(x, batch)


def _to_device(batch: dict, device: torch.device, dtype: torch.dtype = torch.float32) -> dict:
    """The batch on ``device``, its floating tensors (images, soft labels) in ``dtype``."""
    if device.type == "cpu" and dtype == torch.float32:
        return batch
    return {
        k: (
            v.to(device, dtype=dtype if v.is_floating_point() else None, non_blocking=True) if torch.is_tensor(v) else v
        )
        for k, v in batch.items()
    }


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def train(
    net: torch.nn.Module,
    dataset,
    tcfg: dict,
    *,
    seed: int,
    resolved: dict,
    state_path: Path,
    out: Path,
    objective: Callable[[torch.Tensor, dict], dict],
    inputs: dict | None = None,
    end_of_epoch: Callable[[int], dict] | None = None,
    extra: dict | None = None,
    desc: str = "train",
    section: str | None = None,
    companions: dict[str, torch.nn.Module] | None = None,
    post_step: Callable[[], None] | None = None,
) -> list[dict]:
    """Train ``net`` on ``dataset`` with the schedule ``tcfg`` (a config ``train`` section), then write the final
    checkpoint to ``out`` and delete the resumable state. ``objective(x, batch)`` returns loss tensors including
    ``loss``. ``resolved`` (the config the result depends on, stored in the checkpoint as ``config``) and the
    digests of the ``inputs`` files ({name: path}) key the resumable state.

    Data order depends only on (seed, epoch) and a sample's augmentation only on (seed, epoch, index), so a
    resumed run replays the same batches and the process count does not matter. ``tcfg["batch_size"]`` is the
    global batch: under torchrun each of the W processes trains on its ``batch_size / W`` slice of every global
    batch, with DDP averaging the gradients (``section`` names the config section in the error when W does not
    divide it). The net is moved to :func:`wsss.engine.distributed.device`; the objective's other modules must
    follow ``net``'s device. Returns the per-epoch history without wall-clock timings (metric files must be
    deterministic).

    ``companions`` ({name: module}): modules the objective keeps besides ``net`` (an EMA teacher, a prototype
    memory), saved in the resumable state and restored with it. ``post_step()`` runs after every optimiser step
    (the EMA teacher's update).
    """
    world, rank = dist.world_size(), dist.rank()
    global_batch = tcfg["batch_size"]
    key = f"{section}.train.batch_size" if section else f"train.batch_size ({desc})"
    dist.local_batch_size(global_batch, world, key=key)  # refuses a global batch the processes do not divide
    if len(dataset) < global_batch:  # every batch is a full one: such a run would take no step at all
        from wsss.io import WsssInputError

        raise WsssInputError(
            f"{key} = {global_batch} is larger than the training split ({len(dataset)} images): "
            "no batch would be trained; lower the batch size or use a larger split"
        )
    device = dist.device()
    dtype = DTYPES[tcfg.get("dtype", "float32")]
    net.to(device, dtype=dtype)
    net = apply_batchnorm(net, tcfg.get("batchnorm", "sync"), world)
    if tcfg.get("freeze_backbone", False):
        freeze_backbone(net, key=f"{section}.train.freeze_backbone" if section else "train.freeze_backbone")
    if tcfg["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    steps_per_epoch = max(1, len(dataset) // global_batch)
    optimizer = build_optimizer(param_groups(net, tcfg), tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps_per_epoch * tcfg["epochs"])
    resolved = plain(resolved)
    resolved["inputs"] = {k: path_digest(p) for k, p in sorted((inputs or {}).items()) if p is not None}
    state = TrainState(net, optimizer, scheduler, resolved, companions=dict(companions or {}))
    forward = objective
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: a stage's net may hold heads its objective does not use (CAMNet.proj)
        # buffers (BN running statistics) start equal (synchronised at construction) and stay equal with
        # batchnorm sync/frozen: no per-forward broadcast
        forward = DistributedDataParallel(
            _Objective(net, objective),
            device_ids=[device] if device.type == "cuda" else None,
            forward_sync_buffers=False,
            find_unused_parameters=True,
        )

    def make_loader(epoch: int):
        dataset.seed = seed * 1000 + epoch  # fresh augmentation each epoch, deterministic
        batches = global_batches(len(dataset), global_batch, epoch_generator(seed, epoch), rank, world)
        return torch.utils.data.DataLoader(
            EpochSeededDataset(dataset, seed, epoch),
            batch_sampler=batches,
            num_workers=0,
            generator=epoch_generator(seed, epoch),
        )

    def step(batch: dict) -> dict:
        batch = _to_device(batch, device, dtype)
        x = batch["image"]
        if tcfg["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = forward(x, batch)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        scheduler.step()
        if post_step is not None:
            post_step()
        return {k: float(v.detach()) for k, v in losses.items()}

    fit(
        state,
        epochs=tcfg["epochs"],
        make_loader=make_loader,
        step=step,
        state_path=state_path,
        end_of_epoch=end_of_epoch,
        desc=desc,
    )
    if dist.is_main():
        final = state.to_dict()
        final.update(extra or {})
        final["model"] = net.to(memory_format=torch.contiguous_format).state_dict()  # (loads into float32 nets too)
        save_checkpoint(out, final)
        state_path.unlink(missing_ok=True)  # finished: nothing for a later run to resume
    dist.barrier()  # the checkpoint exists before any rank returns
    return [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]
