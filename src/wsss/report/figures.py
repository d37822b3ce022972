"""Report figures (matplotlib Agg, no pyplot state). Each function saves one PNG atomically.

Functions return the written path, or ``None`` with nothing written when the inputs for the figure are
absent (the reason is returned by :func:`make_figures`).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from wsss.io import atomic_path, load_npz, read_image, read_label_png, voc_palette  # noqa: E402
from wsss.report.inputs import Experiment, cam_npz, net_label, pred_png, pseudo_png, rw_dir, rw_png, split_ids  # noqa: E402

DPI = 100
TILE = 2.0  # inches per image tile
_PAL = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)
_PART_CMAP = ListedColormap(["black", "tab:red", "tab:blue", "white"])  # none, part, body, ignore


def save(fig: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def colorize(label: np.ndarray) -> np.ndarray:
    """Class-id map -> RGB with the VOC palette (255 = ignore gets the palette's ignore colour)."""
    return _PAL[np.asarray(label, dtype=np.uint8)]


def cam_heatmap(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Max over the classes of a CAM file, resized to ``shape`` (H, W) if needed."""
    z = load_npz(path)
    cam = np.asarray(z["cam"], dtype=np.float32)
    heat = cam.max(axis=0) if cam.ndim == 3 and cam.shape[0] else np.zeros(shape, np.float32)
    if heat.shape != shape:
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((shape[1], shape[0]), Image.BILINEAR))
    return np.clip(heat, 0.0, 1.0)


# ------------------------------------------------------------------------------------------ curves
def threshold_curves(exp: Experiment, path: Path) -> Path | None:
    curves = {n: d.get("curve") or [] for n, d in exp.cam.items()}
    curves = {n: c for n, c in curves.items() if c}
    if not curves:
        return None
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for n, curve in curves.items():
        t = [float(p["threshold"]) for p in curve]
        m = [100 * float(p["miou"]) for p in curve]
        (line,) = ax.plot(t, m, marker=".", label=net_label(n))
        best = exp.cam[n].get("best_threshold")
        if best is not None and exp.cam[n].get("miou") is not None:
            ax.plot([best], [100 * float(exp.cam[n]["miou"])], marker="*", ms=12, color=line.get_color())
    ax.set(xlabel="background threshold", ylabel="CAM mIoU (%)", title="CAM mIoU vs threshold (* = best)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def training_curves(exp: Experiment, path: Path) -> Path | None:
    runs = {n: d.get("history") or [] for n, d in exp.train.items()}
    runs = {n: h for n, h in runs.items() if h}
    if not runs:
        return None
    fig = Figure(figsize=(9, 2.4 * len(runs)))
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for (n, hist), (ax_l, ax_m) in zip(runs.items(), axes):
        ep = [h["epoch"] for h in hist]
        for key in ("loss", "loss_cls", "loss_rcm", "loss_mam"):
            if any(key in h for h in hist):
                ax_l.plot(ep, [h.get(key, np.nan) for h in hist], label=key, ls="-" if key == "loss" else "--")
        ax_l.set(title=f"{net_label(n)}: training loss", xlabel="epoch")
        ax_l.legend(fontsize=7)
        if any("val_map" in h for h in hist):
            ax_m.plot(ep, [100 * h["val_map"] if h.get("val_map") is not None else np.nan for h in hist], marker=".")
        ax_m.set(title=f"{net_label(n)}: val mAP (%)", xlabel="epoch")
        for ax in (ax_l, ax_m):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save(fig, path)


def noise_curves(exps: list[Experiment], path: Path) -> Path:
    """Val mIoU against the noise rate, one panel per corruption kind, one line per single-stage variant (mean over
    the seeds, error bars 1 sd); the clean setting is every curve's rate-0 point."""
    from wsss.report.tables import SS_LABELS

    labels = exps[0].noisy_labels
    kinds = list(dict.fromkeys(d["kind"] for d in labels.values() if d["kind"] != "clean"))
    variants = list(dict.fromkeys(v for (_, v) in exps[0].noisy_seg))
    fig = Figure(figsize=(3.6 * max(1, len(kinds)), 3.2))
    axes = fig.subplots(1, max(1, len(kinds)), squeeze=False)[0]
    for ax, kind in zip(axes, kinds or ["clean"]):
        settings = sorted(
            (z for z, d in labels.items() if d["kind"] in (kind, "clean")), key=lambda z: float(labels[z]["rate"])
        )
        for v in variants:
            vals = np.array([[100 * float(e.noisy_seg[(z, v)]["miou"]) for z in settings] for e in exps])
            x = [100 * float(labels[z]["rate"]) for z in settings]
            sd = vals.std(0, ddof=1) if len(exps) > 1 else np.zeros(len(settings))
            ax.errorbar(x, vals.mean(0), yerr=sd, marker="o", capsize=3, label=SS_LABELS.get(v, v))
        ax.set(title=kind, xlabel="noise rate (% of object pixels)", ylabel="val mIoU (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


# ------------------------------------------------------------------------------------------ image grids
def _grid(rows: list[list[tuple[str, np.ndarray, dict]]], path: Path, title: str) -> Path:
    """rows of (column title, image, imshow overlay kwargs or {}); an overlay is drawn over the previous tile."""
    ncol = max(len([c for c in r if c[0]]) for r in rows)
    fig = Figure(figsize=(TILE * ncol, TILE * len(rows) * 0.8 + 0.6))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for i, row in enumerate(rows):
        j = -1
        for name, img, kw in row:
            if name:  # new tile; an empty name overlays on the current one
                j += 1
                if i == 0:
                    axes[i][j].set_title(textwrap.fill(name, 22), fontsize=8)
            axes[i][j].imshow(img, **kw)
        for ax in axes[i]:
            ax.set_axis_off()
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _ids_with(ids: list[str], paths_of) -> list[str]:
    return [i for i in ids if all(p.is_file() for p in paths_of(i))]


def qualitative_train(exp: Experiment, path: Path, n: int) -> Path | None:
    voc = exp.data_root
    cam_nets = [x for x in ("supportnet", exp.main_net()) if x and x in exp.cam]
    pnet = exp.pseudo_net()
    rnet = pnet if pnet in exp.rw else next(iter(exp.rw), None)
    rnet = rnet if rnet and rw_dir(exp, rnet).is_dir() else None  # its labels, where the DAG gave them

    def needs(i: str) -> list[Path]:
        p = [voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png"]
        p += [cam_npz(exp, c, i) for c in cam_nets]
        return p + ([pseudo_png(exp, pnet, i)] if pnet else []) + ([rw_png(exp, rnet, i)] if rnet else [])

    ids = _ids_with(split_ids(exp, "train"), needs)[:n]
    if not ids:
        return None
    rows = []
    for i in ids:
        img = read_image(voc / "JPEGImages" / f"{i}.jpg")
        row = [("image", img, {}), ("GT", colorize(read_label_png(voc / "SegmentationClass" / f"{i}.png")), {})]
        for c in cam_nets:
            heat = cam_heatmap(cam_npz(exp, c, i), img.shape[:2])
            row += [(f"{net_label(c)} CAM", img, {}), ("", heat, {"cmap": "jet", "alpha": 0.5, "vmin": 0, "vmax": 1})]
        if pnet:
            row.append((f"pseudo ({net_label(pnet)}+CRF)", colorize(read_label_png(pseudo_png(exp, pnet, i))), {}))
        if rnet:
            row.append((f"pseudo ({net_label(rnet)}+walk)", colorize(read_label_png(rw_png(exp, rnet, i))), {}))
        rows.append(row)
    what = "CRF and random-walk pseudo labels" if rnet else "CRF pseudo labels"
    return _grid(rows, path, f"Train images: CAMs (max over classes) and {what}")


def qualitative_val(exp: Experiment, path: Path, n: int) -> Path | None:
    voc = exp.data_root
    sources = list(exp.seg)
    if not sources:
        return None

    def needs(i: str) -> list[Path]:
        return [
            voc / "JPEGImages" / f"{i}.jpg",
            voc / "SegmentationClass" / f"{i}.png",
            *(pred_png(exp, s, i) for s in sources),
        ]

    ids = _ids_with(split_ids(exp, "val"), needs)[:n]
    if not ids:
        return None
    names = {"pseudo": "prediction (pseudo-trained)", "gt": "prediction (GT-trained)"}
    rows = []
    for i in ids:
        row = [
            ("image", read_image(voc / "JPEGImages" / f"{i}.jpg"), {}),
            ("GT", colorize(read_label_png(voc / "SegmentationClass" / f"{i}.png")), {}),
        ]
        row += [(names.get(s, f"prediction ({s})"), colorize(read_label_png(pred_png(exp, s, i))), {}) for s in sources]
        rows.append(row)
    return _grid(rows, path, "Val images: DeepLab predictions (no CRF)")


def synthetic_samples(exp: Experiment, path: Path, n: int) -> Path | None:
    voc = exp.data_root
    part_dir = voc / "PartMasks"
    if not part_dir.is_dir():
        return None
    ids = sorted(p.stem for p in part_dir.glob("*.png"))
    ids = _ids_with(ids, lambda i: [voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png"])[:n]
    if not ids:
        return None
    rows = []
    for i in ids:
        part = read_label_png(part_dir / f"{i}.png", num_classes=3).astype(np.int16)
        part[part == 255] = 3
        rows.append(
            [
                ("image", read_image(voc / "JPEGImages" / f"{i}.jpg"), {}),
                ("mask", colorize(read_label_png(voc / "SegmentationClass" / f"{i}.png")), {}),
                (
                    "part mask (red part, blue body)",
                    part,
                    {"cmap": _PART_CMAP, "vmin": 0, "vmax": 3, "interpolation": "nearest"},
                ),
            ]
        )
    return _grid(rows, path, "Synthetic samples: image, class mask, part mask")


def make_figures(exp: Experiment, fig_dir: Path, n_qualitative: int = 4) -> tuple[dict[str, Path], dict[str, str]]:
    """Write every figure that has inputs. Returns ({name: path}, {name: reason skipped})."""
    specs = {
        "threshold_curves": (lambda p: threshold_curves(exp, p), "no CAM metric file has a 'curve'"),
        "training_curves": (lambda p: training_curves(exp, p), "no training history"),
        "qualitative_train": (
            lambda p: qualitative_train(exp, p, n_qualitative),
            "no train id has image, GT, CAMs and pseudo label",
        ),
        "qualitative_val": (
            lambda p: qualitative_val(exp, p, n_qualitative),
            "no val id has image, GT and all predictions",
        ),
        "synthetic_samples": (lambda p: synthetic_samples(exp, p, n_qualitative), "no PartMasks/ in the dataset"),
    }
    made, skipped = {}, {}
    for name, (fn, reason) in specs.items():
        out = fn(fig_dir / f"{name}.png")
        if out is None:
            skipped[name] = reason
            (fig_dir / f"{name}.png").unlink(missing_ok=True)  # no stale figure from an earlier run
        else:
            made[name] = out
    return made, skipped
