"""The process group of a ``torchrun`` launch, and the few collectives the stages need.

One process per GPU (or per CPU slot): ``torchrun --standalone --nproc_per_node N -m wsss.cli <stage> ...`` sets
``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init` (called by ``wsss.cli.main``)
joins the group: backend ``nccl`` when the process runs on a GPU, ``gloo`` on CPU. Without torchrun (no
``WORLD_SIZE``, or 1) everything here is a no-op and every helper answers as for a single process, so a stage is
written once for both cases.

What makes results independent of the process count (docs/architecture.md, "Multi-GPU"):

* the config's ``batch_size`` is the GLOBAL batch; each process takes its slice of every global batch of the one
  (seed, epoch) permutation (:func:`local_batch_size`, ``wsss.engine.trainer.train``);
* gradients are averaged over processes (DDP), so a loss that is a mean over an equal-size local batch gives the
  gradient of the global mean; a loss normalised by a data-dependent count (valid pixels, present classes) goes
  through :func:`global_mean`;
* BatchNorm is synchronised (:func:`convert_sync_batchnorm`) or frozen, never per process;
* inference shards the image list (:func:`shard`) and each image is computed exactly as a single process would.

Device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; ``WSSS_DEVICE=cpu`` forces the CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as td
from torch import nn

T = TypeVar("T")

log = logging.getLogger("wsss")

__all__ = [
    "init",
    "cleanup",
    "is_initialized",
    "rank",
    "world_size",
    "is_main",
    "device",
    "barrier",
    "shard",
    "all_gather_object",
    "broadcast_object",
    "all_reduce_sum",
    "global_mean",
    "local_batch_size",
    "convert_sync_batchnorm",
    "CPUSyncBatchNorm",
]


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def is_initialized() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if is_initialized() else 0


def world_size() -> int:
    return td.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """``cuda:LOCAL_RANK`` if CUDA is available (and ``WSSS_DEVICE`` is not ``cpu``), else the CPU."""
    want = os.environ.get("WSSS_DEVICE", "auto").lower()
    if want not in ("auto", "cpu", "cuda"):
        raise ValueError(f"WSSS_DEVICE must be auto, cpu or cuda, got {want!r}")
    if want == "cpu" or (want == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("WSSS_DEVICE=cuda but CUDA is not available")
    return torch.device("cuda", _env_int("LOCAL_RANK", 0))


def init(timeout_s: float = 1800.0) -> bool:
    """Join the process group described by torchrun's environment; returns whether one is active.

    No-op (False) without ``WORLD_SIZE`` or with ``WORLD_SIZE=1``. Backend ``nccl`` when this process runs on a
    GPU (:func:`device`), ``gloo`` otherwise. Ranks other than 0 log warnings and errors only.
    """
    if is_initialized():
        return True
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    dev = device()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cudnn.benchmark = False  # the same algorithms on every rank and every run
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    td.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    if rank() != 0:
        logging.getLogger("wsss").setLevel(logging.WARNING)
    log.info("process group: %s, %d processes", backend, world_size())
    return True


def cleanup() -> None:
    """Leave the process group (no-op if none)."""
    if is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        if td.get_backend() == "nccl":
            td.barrier(device_ids=[torch.cuda.current_device()])
        else:
            td.barrier()


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This process's share of ``items``: every ``world``-th item starting at ``rank`` (strided, deterministic).

    Strided rather than contiguous so that ranks get a similar mix of image sizes; the union over ranks is
    ``items`` and shards are disjoint.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(items)[r::w]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` for a single process)."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=src)
    return box[0]


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over processes: the gradient of each input is the sum of the outputs' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        td.all_reduce(out, op=td.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        td.all_reduce(grad, op=td.ReduceOp.SUM)
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over the processes, as a new tensor on ``tensor``'s device (``tensor`` itself if alone).

    Differentiable when ``tensor`` requires grad (the backward sums the gradients over processes, as DDP expects).
    """
    if not is_initialized() or world_size() == 1:
        return tensor
    dev = tensor.device
    comm = tensor
    if td.get_backend() == "nccl" and dev.type != "cuda":
        comm = tensor.to(torch.device("cuda", torch.cuda.current_device()))
    if comm.requires_grad:
        out = _AllReduceSum.apply(comm)
    else:
        out = comm.detach().clone(memory_format=torch.contiguous_format)
        td.all_reduce(out, op=td.ReduceOp.SUM)
    return out.to(dev)


def global_mean(local_mean: torch.Tensor, local_count: torch.Tensor | float) -> torch.Tensor:
    """Turn a per-process mean over ``local_count`` items into a global-batch mean under DDP's gradient averaging.

    A loss normalised by a data-dependent count (labelled pixels, present classes) differs between processes; DDP
    averages gradients over processes, so ``mean_r (S_r / n_r)`` would be optimised instead of ``sum_r S_r /
    sum_r n_r``. This returns ``S_r * W / sum_r n_r`` (whose average over the W processes is the global mean).
    Returns ``local_mean`` unchanged for a single process.
    """
    if not is_initialized() or world_size() == 1:
        return local_mean
    count = torch.as_tensor(local_count, dtype=local_mean.dtype, device=local_mean.device).detach()
    total = all_reduce_sum(count.reshape(1))[0]
    if float(total) <= 0:
        return local_mean * 0.0
    return local_mean * (count * world_size() / total)


def local_batch_size(global_batch: int, world: int | None = None, key: str = "train.batch_size") -> int:
    """Per-process batch = ``global_batch // world``; a clear error if the global batch does not divide."""
    w = world_size() if world is None else world
    if global_batch % w:
        from wsss.io import WsssInputError

        raise WsssInputError(
            f"{key} = {global_batch} is the GLOBAL batch size and must be divisible by the number of processes "
            f"({w}); set it to a multiple of {w} or launch a number of processes that divides it"
        )
    return global_batch // w


# ----------------------------------------------------------------------------------------------- BatchNorm


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics span every process, for CPU (``gloo``) process groups.

    ``torch.nn.SyncBatchNorm`` only runs on GPUs (torch 2.14 raises "SyncBatchNorm expected input tensor to be on
    GPU" for CPU tensors); this is the same computation with differentiable all-reduces: mean and (biased) variance
    over the global batch, two passes, running statistics updated with the unbiased global variance, gradients
    flowing through the global statistics to every process. Eval mode and single processes behave as
    ``BatchNorm``. Slower than the fused GPU kernel: meant for CPU runs and tests.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_initialized() and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        n = all_reduce_sum(torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64))[0].item()
        if n <= 1:
            raise ValueError(f"expected more than 1 value per channel over all processes when training, got {n}")
        mean = all_reduce_sum(x.sum(dims)) / n
        xc = x - mean.view(shape)
        var = all_reduce_sum((xc * xc).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, on_gpu: bool | None = None) -> nn.Module:
    """Replace every BatchNorm of ``module`` by a synchronised one sharing its parameters and buffers.

    ``torch.nn.SyncBatchNorm`` on GPUs, :class:`CPUSyncBatchNorm` on the CPU. BatchNorms frozen by
    ``wsss.models.backbones.freeze_bn`` stay as they are (eval mode: no batch statistics to synchronise). The
    state dict keys do not change, so checkpoints load into the plain model. Returns the converted module
    (``module`` itself unless it is a BatchNorm).
    """
    if on_gpu is None:
        on_gpu = device().type == "cuda"
    out = module
    if (
        isinstance(module, nn.modules.batchnorm._BatchNorm)
        and not isinstance(module, (CPUSyncBatchNorm, nn.SyncBatchNorm))
        and not getattr(module, "_wsss_frozen", False)
    ):
        cls = nn.SyncBatchNorm if on_gpu else CPUSyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, on_gpu=on_gpu))
    return out
