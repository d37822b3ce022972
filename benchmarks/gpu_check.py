"""A prepared GPU check (issue 15, item 5): config/voc12.yaml's networks on real photographs at VOC resolution for a
bounded number of steps, with throughput (images/s) and peak memory per stage.

    python benchmarks/gpu_check.py                      # on a GPU machine (benchmarks/gpu_check.sh: <= 5 min)
    python benchmarks/gpu_check.py --steps 1 --batch 2 --crop 96 --image-scale 0.25 --images 1   # CPU, a test

Stages, each with voc12.yaml's network, loss and (unless overridden) batch size and crop:
  supportnet_train   SupportNet (ResNet-50, output stride 16) classification steps on random crops
  mainnet_train      MainNet rcm_mam steps (RCM + MAM against the frozen SupportNet)
  extract_cams       multi-scale + flip CAMs (voc12's cams.scales) of whole images
  random_walk        AffinityNet embedding + the random walk (voc12's radius, beta, n_steps) of whole images
  deeplab_train      DeepLab-v2 ResNet-101 steps on the GT masks
The networks start from random weights (``pretrained`` is switched off: the GPU machine cannot download
torchvision's ImageNet weights, and throughput and memory do not depend on the values). The photographs are
read from ``--voc-root`` (default ../shared/data/voc2012-mini/VOC2012; third-party data, used where it lies).
Writes ``results/benchmarks/gpu_check.json`` (run_all.py --doc shows it in docs/performance.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from wsss import config as wconfig  # noqa: E402
from wsss.data.datasets import ClassificationDataset, SegmentationDataset, normalize  # noqa: E402
from wsss.data.voc import image_path, read_split  # noqa: E402
from wsss.io import read_image, write_json  # noqa: E402
from wsss.losses.classification import multilabel_loss  # noqa: E402
from wsss.losses.segmentation import segmentation_ce  # noqa: E402
from wsss.methods.mainnet import MainNetObjective  # noqa: E402
from wsss.models.affinity_net import affinity_net_from_config  # noqa: E402
from wsss.models.cam_net import build_cam_net, multiscale_cam, normalize_cam  # noqa: E402
from wsss.models.deeplab import segmenter_from_config  # noqa: E402
from wsss.refine.random_walk import walked_scores  # noqa: E402

VOC_MINI = (REPO.parent / "shared" / "data" / "voc2012-mini" / "VOC2012").resolve()
OUT = REPO / "results" / "benchmarks" / "gpu_check.json"
STAGES = ("supportnet_train", "mainnet_train", "extract_cams", "random_walk", "deeplab_train")


def _no_pretrained(section: dict) -> dict:
    section = copy.deepcopy(section)
    section["backbone"]["pretrained"] = False
    return section


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


class _Meter:
    """Wall time of the measured steps (the first, warm-up step excluded when there are more than one) and peak
    memory: GPU bytes allocated (reset per stage) on CUDA, the process's peak resident set so far on CPU."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

    def run(self, step, n_steps: int, images_per_step: int) -> dict:
        times = []
        for _ in range(n_steps):
            _sync(self.dev)
            t0 = time.perf_counter()
            step()
            _sync(self.dev)
            times.append(time.perf_counter() - t0)
        measured = times[1:] if len(times) > 1 else times
        if self.dev.type == "cuda":
            peak_mib = torch.cuda.max_memory_allocated(self.dev) / 2**20
        else:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return {
            "steps": n_steps,
            "images_per_step": images_per_step,
            "seconds_per_step": round(float(np.mean(measured)), 4),
            "images_per_s": round(images_per_step / float(np.mean(measured)), 3),
            "peak_memory_mib": round(peak_mib, 1),
            "memory_kind": "cuda max_memory_allocated" if self.dev.type == "cuda" else "process peak RSS so far",
        }


def _batches(ds, batch: int, seed: int = 0):
    """Endless batches of ``ds`` (a wsss dataset of equal-size training crops), each pass in a new seeded order."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(ds))
        for start in range(0, len(ds) - batch + 1, batch):
            items = [ds[int(i)] for i in order[start : start + batch]]
            yield {
                k: (torch.stack([it[k] for it in items]) if k != "id" else [it[k] for it in items]) for k in items[0]
            }


def _train_step(net, loss_fn, batches, dev, opt, channels_last: bool):
    def step() -> None:
        b = next(batches)
        x = b["image"].to(dev)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = loss_fn(x, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return image
    from PIL import Image

    h, w = image.shape[:2]
    size = (max(16, round(w * scale)), max(16, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def check(
    cfg: dict,
    voc_root: Path,
    *,
    steps: int,
    batch: int | None,
    crop: int | None,
    images: int,
    image_scale: float,
    device: str,
    stages=STAGES,
) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    out = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "config": cfg["name"],
        "voc_root": str(voc_root),
        "image_scale": image_scale,
        "torch": torch.__version__,
        "stages": {},
    }
    split = "train" if (voc_root / "ImageSets" / "Segmentation" / "train.txt").is_file() else cfg["data"]["train_split"]
    ids = read_split(voc_root, split)

    sn = _no_pretrained(cfg["supportnet"])
    support = build_cam_net(sn["backbone"]).to(dev)
    # ---- SupportNet
    if "supportnet_train" in stages or "mainnet_train" in stages:
        t = sn["train"]
        bs, cr = batch or t["batch_size"], crop or t["crop"]
        ds = ClassificationDataset(voc_root, split, crop=cr, train=True, seed=0)
        if t["channels_last"]:
            support = support.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(support.parameters(), lr=1e-3, momentum=0.9)  # rate irrelevant to speed
        support.train()
        step = _train_step(
            support,
            lambda x, b: multilabel_loss(support(x)["logits"], b["label"].to(dev)),
            _batches(ds, bs),
            dev,
            opt,
            t["channels_last"],
        )
        if "supportnet_train" in stages:
            out["stages"]["supportnet_train"] = {"crop": cr, **_Meter(dev).run(step, steps, bs)}
        del opt
    # ---- MainNet (rcm_mam against the frozen SupportNet)
    if "mainnet_train" in stages:
        mcfg = cfg["mainnet"]
        t = mcfg["train"]
        bs, cr = batch or t["batch_size"], crop or t["crop"]
        net = build_cam_net(sn["backbone"]).to(dev)
        support.eval()
        for p in support.parameters():
            p.requires_grad_(False)
        variant = mcfg["final_variant"]
        objective = MainNetObjective(net, support, variant, mcfg, steps_per_epoch=steps, epochs=1, seed=0)
        if objective.memory is not None:
            objective.memory.to(dev)
        ds = ClassificationDataset(voc_root, split, crop=cr, train=True, seed=1)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        net.train()
        step = _train_step(
            net,
            lambda x, b: objective(x, b["label"].to(dev), b["id"])["loss"],
            _batches(ds, bs),
            dev,
            opt,
            t["channels_last"],
        )
        out["stages"]["mainnet_train"] = {"variant": variant, "crop": cr, **_Meter(dev).run(step, steps, bs)}
        del net, opt, objective
    # ---- CAM extraction (whole images, multi-scale + flip)
    sizes = []
    if "extract_cams" in stages:
        support.eval()

        def cam_step() -> None:
            raw = _scaled(_raw(voc_root, ids, len(sizes)), image_scale)
            sizes.append(raw.shape[:2])
            with torch.no_grad():
                x = normalize(raw)[None].to(dev)
                normalize_cam(multiscale_cam(support, x, cfg["cams"]["scales"], cfg["cams"]["flip"]))

        out["stages"]["extract_cams"] = {
            "scales": cfg["cams"]["scales"],
            "flip": cfg["cams"]["flip"],
            **_Meter(dev).run(cam_step, images, 1),
        }
    # ---- random walk at full resolution
    if "random_walk" in stages:
        rw = copy.deepcopy(cfg["refine"]["random_walk"])
        rw["backbone"]["pretrained"] = False
        aff = affinity_net_from_config(rw).to(dev).eval()
        k = [0]

        def rw_step() -> None:
            raw = _scaled(_raw(voc_root, ids, k[0]), image_scale)
            k[0] += 1
            cam = np.random.default_rng(k[0]).random((2, *raw.shape[:2])).astype(np.float32)
            walked_scores(_OnDevice(aff, dev), raw, cam, np.array([1, 15]), rw)

        out["stages"]["random_walk"] = {
            "radius": rw["radius"],
            "n_steps": rw["n_steps"],
            **_Meter(dev).run(rw_step, images, 1),
        }
        del aff
    support = None  # free its memory before DeepLab
    # ---- DeepLab-v2 on the GT masks
    if "deeplab_train" in stages:
        sc = _no_pretrained(cfg["segment"])
        t = sc["train"]
        bs, cr = batch or t["batch_size"], crop or t["crop"]
        seg = segmenter_from_config(sc).to(dev)
        if t["channels_last"]:
            seg = seg.to(memory_format=torch.channels_last)
        ds = SegmentationDataset(voc_root, split, crop=cr, train=True, seed=0)
        opt = torch.optim.SGD(seg.parameters(), lr=1e-3, momentum=0.9)
        seg.train()
        step = _train_step(
            seg,
            lambda x, b: segmentation_ce(seg(x), b["label"].to(dev)),
            _batches(ds, bs),
            dev,
            opt,
            t["channels_last"],
        )
        out["stages"]["deeplab_train"] = {"model": sc["model"], "crop": cr, **_Meter(dev).run(step, steps, bs)}
    if sizes:
        out["cam_image_sizes"] = [list(s) for s in sizes]
    return out


def _raw(voc_root: Path, ids: list[str], i: int) -> np.ndarray:
    return read_image(image_path(voc_root, ids[i % len(ids)]))


class _OnDevice(torch.nn.Module):
    """Moves the (CPU) input of :func:`walked_scores` to the net's device and the embedding back to the CPU, where
    the walk's sparse transition runs in that function."""

    def __init__(self, net: torch.nn.Module, dev: torch.device):
        super().__init__()
        self.net, self.dev = net, dev

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(self.dev)).cpu()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "config" / "voc12.yaml"))
    p.add_argument("--voc-root", default=str(VOC_MINI), help="a VOC2012 folder with real photographs and masks")
    p.add_argument("--steps", type=int, default=None, help="training steps per stage (default: 20 on CUDA, 2 on CPU)")
    p.add_argument("--images", type=int, default=None, help="whole images for CAMs and the walk (20 CUDA / 2 CPU)")
    p.add_argument("--batch", type=int, default=None, help="override every stage's batch size (default: the config's)")
    p.add_argument("--crop", type=int, default=None, help="override every stage's crop (default: the config's)")
    p.add_argument("--image-scale", type=float, default=1.0, help="whole-image scale for CAMs / walk (1 = VOC size)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    voc_root = Path(a.voc_root)
    if not (voc_root / "JPEGImages").is_dir():
        raise SystemExit(f"{voc_root}: no JPEGImages/ here; pass --voc-root a VOC2012 folder (real photographs)")
    cuda = a.device.startswith("cuda")
    stages = tuple(s for s in a.stages.split(",") if s)
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"--stages: unknown {sorted(unknown)}; choose from {list(STAGES)}")
    result = check(
        wconfig.load(a.config),
        voc_root,
        steps=a.steps or (20 if cuda else 2),
        batch=a.batch,
        crop=a.crop,
        images=a.images or (20 if cuda else 2),
        image_scale=a.image_scale,
        device=a.device,
        stages=stages,
    )
    write_json(Path(a.out), result)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
