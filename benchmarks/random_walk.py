"""Benchmark: sparse random walk (wsss.refine.random_walk.random_walk), time and peak memory.

    python benchmarks/random_walk.py [--sizes 128 256 512] [--n-steps 256] [--radius 5] [--classes 3] [--threads 1]

Each size runs in a fresh subprocess so that its peak RSS (resource.getrusage ru_maxrss) is its own; the
baseline RSS after ``import torch`` is subtracted. tracemalloc would miss torch's C++ allocations.
Prints build time of the CSR transition matrix, walk time, nnz and peak memory. Random affinities in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _one(size: int, n_steps: int, radius: int, classes: int, threads: int) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "src"))
    from wsss.refine.affinity import neighbour_offsets
    from wsss.refine.random_walk import random_walk, transition_matrix

    torch.set_num_threads(threads)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    g = torch.Generator().manual_seed(0)
    offs = neighbour_offsets(radius)
    aff = torch.rand(len(offs), size, size, generator=g)
    cam = torch.rand(classes + 1, size, size, generator=g)
    t0 = time.perf_counter()
    t = transition_matrix(aff, offs, 8.0)
    build = time.perf_counter() - t0
    nnz = t._nnz()
    del t
    t0 = time.perf_counter()
    out = random_walk(cam, aff, offs, beta=8.0, n_steps=n_steps)
    total = time.perf_counter() - t0
    assert out.shape == cam.shape
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "size": size,
        "offsets": len(offs),
        "planes": classes + 1,
        "n_steps": n_steps,
        "threads": threads,
        "nnz": nnz,
        "build_s": round(build, 3),
        "random_walk_s": round(total, 3),
        "ms_per_step": round(1000 * (total - build) / max(n_steps, 1), 2),
        "peak_rss_mib": round((peak - base) / 1024, 1),
        "dense_fp32_gib": round((size * size) ** 2 * 4 / 2**30, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--n-steps", type=int, default=256)
    ap.add_argument("--radius", type=int, default=5)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON list on the last line")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.sizes[0], a.n_steps, a.radius, a.classes, a.threads)))
        return
    rows = []
    for s in a.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--sizes",
            str(s),
            "--n-steps",
            str(a.n_steps),
            "--radius",
            str(a.radius),
            "--classes",
            str(a.classes),
            "--threads",
            str(a.threads),
        ]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append({"size": s, **r})
        print(
            f"{s}x{s}: P={r['offsets']} planes={r['planes']} steps={r['n_steps']} threads={r['threads']} "
            f"nnz={r['nnz']:,} build {r['build_s']} s, random_walk {r['random_walk_s']} s "
            f"({r['ms_per_step']} ms/step), peak RSS +{r['peak_rss_mib']} MiB "
            f"(dense fp32 HWxHW would be {r['dense_fp32_gib']} GiB)",
            flush=True,
        )
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
