"""Process-pool map with a progress bar, for CPU-bound per-image stages (CRF, metrics).

``imap_ordered`` yields results in input order. It uses the ``fork`` start method where the platform has it (Linux), so
``fn`` may be a closure or lambda: it reaches the workers by inheritance, not by pickling (items and results are still
pickled). Each worker keeps torch (and BLAS/OpenMP) to one thread, so ``workers`` processes use ``workers`` cores.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_WORKER_FN: Callable[[Any], Any] | None = None

_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        return os.cpu_count() or 1


def launched_rank() -> int:
    """This process's rank under torchrun (its ``RANK`` variable), 0 otherwise; for the stages that run without
    torch and must still leave the work to rank 0 when launched on several processes."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _init_worker(fn: Callable[[Any], Any]) -> None:
    global _WORKER_FN
    _WORKER_FN = fn
    for k in _THREAD_ENV:
        os.environ[k] = "1"
    torch = sys.modules.get("torch")  # only if the parent loaded it: importing torch costs a worker ~1 s, and a
    if torch is not None:  # later import reads the OMP/MKL variables set above
        torch.set_num_threads(1)


def _call(item: Any) -> Any:
    assert _WORKER_FN is not None, "worker not initialised"
    return _WORKER_FN(item)


def _context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def imap_ordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    desc: str = "",
    *,
    chunksize: int | None = None,
    progress: bool = True,
) -> Iterator[R]:
    """Yield ``fn(item)`` for each item, in order, computed by ``workers`` processes.

    ``workers <= 1`` (or a single item) runs a plain loop in this process. ``chunksize=None`` picks
    ``ceil(n / (4 * workers))`` like ``Pool.map``. A worker's exception is re-raised here. ``progress`` shows a tqdm
    bar labelled ``desc`` (on stderr). The pool is closed when the iterator is exhausted or closed.
    """
    items = list(items)
    n = len(items)
    workers = max(1, min(int(workers), n))
    from tqdm.auto import tqdm

    bar = tqdm(total=n, desc=desc, disable=not progress, dynamic_ncols=True, mininterval=1.0)
    try:
        if workers <= 1:
            for it in items:
                r = fn(it)
                bar.update(1)
                yield r
            return
        if chunksize is None:
            chunksize = max(1, -(-n // (4 * workers)))
        with _context().Pool(workers, initializer=_init_worker, initargs=(fn,)) as pool:
            for r in pool.imap(_call, items, chunksize=chunksize):
                bar.update(1)
                yield r
    finally:
        bar.close()


__all__ = ["available_cores", "imap_ordered"]
