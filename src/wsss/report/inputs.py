"""Load the metric files one report reads, with clear errors for missing required ones."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss.io import WsssInputError, read_json

MAIN_VARIANTS = ("rcm_mam", "rcm", "mam", "baseline")  # preference order for "the" MainNet of the pipeline
CONTROL = "mainnet_baseline"
FULL = "mainnet_rcm_mam"

NET_LABELS = {
    "supportnet": "SupportNet",
    "mainnet_baseline": "MainNet baseline (fair control)",
    "mainnet_puzzle": "MainNet +Puzzle-CAM (positive control)",
    "mainnet_hide_and_seek": "MainNet +Hide-and-Seek (positive control)",
    "mainnet_rcm": "MainNet +RCM",
    "mainnet_mam": "MainNet +MAM",
    "mainnet_rcm_mam": "MainNet +RCM+MAM",
    "mainnet_authors_frozen": "MainNet authors' RCM+MAM, frozen SupportNet",
    "mainnet_authors_rcm": "MainNet authors' RCM, mean teacher",
    "mainnet_authors_mam": "MainNet authors' MAM, mean teacher",
    "mainnet_authors": "MainNet authors' RCM+MAM, mean teacher",
}
ABLATION_ORDER = tuple(NET_LABELS)
NET_LABELS.update(
    {
        "deeplab_pseudo": "DeepLab (pseudo labels)",
        "deeplab_gt": "DeepLab (GT, upper bound)",
        "single_stage_baseline": "1-stage baseline",
        "single_stage_aa": "1-stage +AA",
        "single_stage_lr": "1-stage +LR",
        "single_stage_aa_lr": "1-stage +AA+LR",
    }
)


def net_label(net: str) -> str:
    return NET_LABELS.get(net, net)


def num(d: dict, key: str, path: Path | str, *, required: bool = False) -> float:
    """``d[key]`` as a float; NaN if absent or null (WsssInputError if ``required``)."""
    v = d.get(key)
    if v is None:
        if required:
            raise WsssInputError(f"{path}: key {key!r} missing or null; re-run the stage that writes this file")
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise WsssInputError(f"{path}: key {key!r} = {v!r} is not a number; re-run the stage that writes it") from e


@dataclass
class Experiment:
    """Metric JSONs of one experiment, keyed by net (train/cam/pseudo) or by source (seg)."""

    root: Path
    nets: list[str]
    crf_nets: list[str]
    seg_sources: list[str]
    train: dict[str, dict] = field(default_factory=dict)
    cam: dict[str, dict] = field(default_factory=dict)
    pseudo: dict[str, dict] = field(default_factory=dict)
    seg: dict[str, dict] = field(default_factory=dict)
    rw: dict[str, dict] = field(default_factory=dict)  # random-walk pseudo labels, keyed by net
    ss: dict[str, dict] = field(default_factory=dict)  # single-stage (AA&LR) evaluations, keyed by variant
    # the controlled-noise experiment (issue 16): labels keyed by setting, training and val scores by (setting, variant)
    noisy_labels: dict[str, dict] = field(default_factory=dict)
    noisy_train: dict[tuple[str, str], dict] = field(default_factory=dict)
    noisy_seg: dict[tuple[str, str], dict] = field(default_factory=dict)
    # the held-out AA-weight selection (issue 16): eval_select's metrics keyed by (variant, weight wildcard)
    select: dict[tuple[str, str], dict] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)  # file stem -> path of every file read
    skipped: list[str] = field(default_factory=list)  # optional files that were missing
    final_net: str | None = None  # the MainNet whose pseudo labels feed the segmentation (config's final_variant)
    data_dir: Path | None = None  # results/<name>/data when the run is one seed's tree (results/<name>/seed<k>)
    seed: int | None = None

    @property
    def data_root(self) -> Path:
        return (self.data_dir or self.root / "data") / "VOC2012"

    def rel_path(self, path: Path) -> str:
        """``path`` as the report names files: relative to results/<name> (the seed folder's parent), else as is."""
        base = self.root.parent if self.seed is not None else self.root
        try:
            return Path(path).resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            return str(path)

    def rel(self, stem: str) -> str:
        prefix = f"{self.root.name}/" if self.seed is not None else ""
        return f"{prefix}metrics/{stem}.json"

    def main_net(self) -> str | None:
        """The MainNet shown in the pipeline: the configured final one, else the fullest variant with a CAM file."""
        if self.final_net in self.cam:
            return self.final_net
        for v in MAIN_VARIANTS:
            if f"mainnet_{v}" in self.cam:
                return f"mainnet_{v}"
        others = [n for n in self.cam if n != "supportnet"]
        return others[-1] if others else None

    def trained_on(self) -> tuple[str, str] | None:
        """(kind 'crf' | 'rw', net) of the pseudo labels DeepLab trained on, from seg_pseudo's ``train_labels``."""
        told = str(self.seg.get("pseudo", {}).get("train_labels", ""))
        for kind, table in (("rw", self.rw), ("crf", self.pseudo)):
            for n in sorted(table, key=len, reverse=True):
                if f"{n}_{kind}" in told:
                    return kind, n
        return None

    def final_pseudo(self) -> tuple[str, dict, str] | None:
        """(label, metrics, file stem) of the pseudo labels that trained DeepLab: the random walk's when it made
        them, else the CRF's (see :meth:`pseudo_net`)."""
        told = self.trained_on()
        if told and told[0] == "rw":
            n = told[1]
            return f"{net_label(n)} +random-walk pseudo labels", self.rw[n], f"pseudo_{n}_rw"
        n = self.pseudo_net()
        if n is None:
            return None
        return f"{net_label(n)} +CRF pseudo labels", self.pseudo[n], f"pseudo_{n}_crf"

    def pseudo_net(self) -> str | None:
        """The net whose CRF pseudo labels trained DeepLab (read from seg_pseudo's ``train_labels`` if it says)."""
        told = self.trained_on()
        if told and told[1] in self.pseudo:
            return told[1]
        main = self.main_net()
        if main in self.pseudo:
            return main
        return next(reversed(self.pseudo), None) if self.pseudo else None


def _is_optional(stem: str, name: str, optional: Collection[str]) -> bool:
    return stem in optional or name in optional or f"{stem}.json" in optional


def load_experiment(
    exp_dir: str | Path,
    *,
    nets: Sequence[str],
    crf_nets: Sequence[str],
    seg_sources: Sequence[str],
    optional: Collection[str] = (),
    final_net: str | None = None,
    data_dir: str | Path | None = None,
    seed: int | None = None,
    rw_nets: Sequence[str] = (),
    ss_variants: Sequence[str] = (),
    noise: Sequence[str] = (),
    noise_variants: Sequence[str] = (),
    select_variants: Sequence[str] = (),
    select_weights: Sequence[str] = (),
) -> Experiment:
    """Read ``metrics/{train,cam}_<net>.json``, ``pseudo_<net>_crf.json`` and ``seg_<source>.json``.

    A missing file raises :class:`WsssInputError` naming it, unless its stem (``cam_mainnet_mam``), file name
    or net/source name is in ``optional``; then it is recorded in ``skipped`` and its rows are left out.
    """
    exp = Experiment(
        Path(exp_dir),
        list(nets),
        list(crf_nets),
        list(seg_sources),
        final_net=final_net,
        data_dir=Path(data_dir) if data_dir is not None else None,
        seed=seed,
    )
    metrics = exp.root / "metrics"
    wanted = (
        [("train", f"train_{n}", n) for n in nets]
        + [("cam", f"cam_{n}", n) for n in nets]
        + [("pseudo", f"pseudo_{n}_crf", n) for n in crf_nets]
        + [("seg", f"seg_{s}", s) for s in seg_sources]
        + [("rw", f"pseudo_{n}_rw", n) for n in rw_nets]
        + [("ss", f"seg_single_stage_{v}", v) for v in ss_variants]
    )
    for kind, stem, name in wanted:
        path = metrics / f"{stem}.json"
        if not path.is_file():
            if _is_optional(stem, name, optional):
                exp.skipped.append(exp.rel(stem))
                continue
            raise WsssInputError(
                f"{path}: required metric file not found; run the stage that writes it, "
                "or list it as optional for the report"
            )
        d = read_json(path)
        if not isinstance(d, dict):
            raise WsssInputError(f"{path}: expected a JSON object; re-run the stage that writes it")
        if kind != "train":
            num(d, "miou", path, required=True)
        getattr(exp, kind)[name] = d
        exp.paths[stem] = path
    wanted_noise = [("noisy_labels", f"noisy_{z}", z) for z in noise] + [
        (kind, f"{pre}_{z}_{v}", (z, v))
        for z in noise
        for v in noise_variants
        for kind, pre in (("noisy_train", "train_noisy"), ("noisy_seg", "seg_noisy"))
    ]
    for kind, stem, key in wanted_noise:
        path = metrics / f"{stem}.json"
        if not path.is_file():
            raise WsssInputError(f"{path}: required metric file of the noise experiment not found; run its stage")
        d = read_json(path)
        if not isinstance(d, dict):
            raise WsssInputError(f"{path}: expected a JSON object; re-run the stage that writes it")
        if kind == "noisy_seg":
            num(d, "miou", path, required=True)
        getattr(exp, kind)[key] = d
        exp.paths[stem] = path
    for v in select_variants:
        for w in select_weights:
            stem = f"select_{v}_aa{w}"
            path = metrics / f"{stem}.json"
            if not path.is_file():
                raise WsssInputError(
                    f"{path}: required metric file of the AA-weight selection not found; run eval_select"
                )
            d = read_json(path)
            if not isinstance(d, dict) or not all(isinstance(d.get(k), dict) for k in ("heldout", "val")):
                raise WsssInputError(f"{path}: expected eval_select's 'heldout' and 'val' sections; re-run eval_select")
            for part in ("heldout", "val"):
                for k in ("miou", "miou_crf"):
                    num(d[part], k, path, required=True)
            exp.select[(v, w)] = d
            exp.paths[stem] = path
    return exp


def cam_npz(exp: Experiment, net: str, image_id: str) -> Path:
    return exp.root / "cams" / net / f"{image_id}.npz"


def pseudo_png(exp: Experiment, net: str, image_id: str) -> Path:
    return exp.root / "pseudo" / f"{net}_crf" / f"{image_id}.png"


def rw_dir(exp: Experiment, net: str) -> Path:
    return exp.root / "pseudo" / f"{net}_rw"


def rw_png(exp: Experiment, net: str, image_id: str) -> Path:
    return rw_dir(exp, net) / f"{image_id}.png"


def pred_png(exp: Experiment, source: str, image_id: str) -> Path:
    return exp.root / "seg" / source / "val" / f"{image_id}.png"


def split_ids(exp: Experiment, split: str) -> list[str]:
    path = exp.data_root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def protocol_of(d: dict[str, Any]) -> dict[str, Any]:
    p = d.get("protocol")
    return p if isinstance(p, dict) else {}
