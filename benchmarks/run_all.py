"""Benchmarks: print figures and write results/benchmarks/*.json (never timed tests).

    python benchmarks/run_all.py [--config config/config.yaml] [--only rerun,crf,miou]

- rerun: wall time of `snakemake --cores 2` with nothing to do (target <= 10 s); needs a finished run of the
  config (it reports "no finished run" otherwise).
- crf: dense-CRF pseudo labels, images per second with 1 process and with every core (target >= 1.8x on 2).
- miou: confusion-matrix mIoU evaluation throughput (megapixels per second).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss.io import write_json  # noqa: E402

OUT = REPO / "results" / "benchmarks"


def bench_rerun(configfile: str) -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    dry = subprocess.run(["snakemake", "-n", "--cores", "2", "--configfile", configfile], cwd=REPO, env=env,
                         capture_output=True, text=True)
    if "Nothing to be done" not in dry.stdout + dry.stderr:
        return {"config": configfile, "status": "no finished run of this config (run it first)"}
    t0 = time.perf_counter()
    subprocess.run(["snakemake", "--cores", "2", "--configfile", configfile], cwd=REPO, env=env, check=True,
                   capture_output=True)
    secs = time.perf_counter() - t0
    return {"config": configfile, "no_change_rerun_s": round(secs, 2), "target_s": 10, "met": secs <= 10}


def _crf_item(i: int):
    from wsss.refine.crf import cam_to_pseudo_label

    rng = np.random.default_rng(i)
    img = (rng.random((128, 128, 3)) * 40 + 100).astype(np.uint8)
    img[32:96, 32:96] = [200, 60, 60]
    cam = np.zeros((2, 128, 128), np.float32)
    cam[0, 40:90, 40:90] = 1.0
    cam[1, 5:30, 5:30] = 0.8
    return cam_to_pseudo_label(img, cam, [3, 7], bg_alpha=2.0).sum()


def bench_crf(n: int = 64) -> dict:
    from wsss.parallel import available_cores, imap_ordered

    res = {}
    for workers in sorted({1, available_cores()}):
        t0 = time.perf_counter()
        list(imap_ordered(_crf_item, range(n), workers=workers, progress=False))
        res[workers] = n / (time.perf_counter() - t0)
    one, all_ = res[1], res[max(res)]
    return {"images": n, "size": "128x128, 2 classes, 10 iterations",
            "images_per_s": {str(k): round(v, 1) for k, v in res.items()},
            "speedup": round(all_ / one, 2), "target_speedup_on_2_cores": 1.8}


def bench_miou(n: int = 200) -> dict:
    from wsss.metrics import ConfusionMatrix

    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 21, (375, 500), dtype=np.uint8) for _ in range(8)]
    cm = ConfusionMatrix()
    t0 = time.perf_counter()
    for i in range(n):
        cm.update(gts[i % 8], gts[(i + 1) % 8])
    secs = time.perf_counter() - t0
    return {"images": n, "size": "375x500", "megapixels_per_s": round(n * 375 * 500 / secs / 1e6, 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--only", default="rerun,crf,miou")
    a = p.parse_args()
    benches = {"rerun": lambda: bench_rerun(a.config), "crf": bench_crf, "miou": bench_miou}
    for name in a.only.split(","):
        result = benches[name]()
        write_json(OUT / f"{name}.json", result)
        print(f"{name}: {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
