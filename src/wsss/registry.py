"""The pipeline's stages, each declared once.

A :class:`Stage` names a stage (its name is the Snakemake rule, the ``wsss`` CLI verb and the module
``wsss.stages.<name>``), the files it reads and writes, its wildcards, the config keys it reads and how it runs
(threads, GPU). Everything else is derived from these declarations:

* the Snakemake rules (``workflow/rules/*.smk`` call ``stage_rule(name)`` of ``workflow/rules/common.smk``): input,
  output, log, wildcard constraints, resources and the shell command;
* the CLI parser (:mod:`wsss.cli`): one sub-command per stage, one option per file and wildcard;
* ``dvc.yaml`` (:mod:`wsss.dvcgen`), generated from the Snakemake DAG of those rules.

What a job computes is a function of its **config slice** (the values of the keys its stage declared, defaults
filled in), its input files and its code. The slice is written once per run into ``results/<name>/params/``
(one JSON file per distinct slice; rule ``config``, DVC stage ``config``) and is an input of the job: a key's change
rewrites exactly the slices that hold it, so exactly the stages that declared it (and what depends on their
outputs) re-run, under Snakemake (its input trigger) and DVC (the file's hash) alike. The stage then reads its slice
from that file, never the config file, so a run uses one snapshot of the config, and through
:class:`wsss.config.ConfigView`, which raises on any key the declaration does not list: the declaration cannot
drift from the code. A job's code is the ``wsss`` modules its stage module imports, transitively
(:func:`code_modules`, computed from the sources, not typed): their digest is a Snakemake param, their files are
DVC deps, so editing a library module re-runs exactly the stages that import it.

This module imports neither torch nor Snakemake (it runs at every Snakemake start).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from wsss.variants import (
    AA_WEIGHT_PATTERN,
    MAINNET_VARIANTS,
    NOISE_PATTERN,
    SINGLE_STAGE_VARIANTS,
    nets,
    noise_settings,
    noise_variants,
    seg_sources,
    selection_variants,
    selection_weights,
    single_stage_variants,
)

PACKAGE_DIR = Path(__file__).resolve().parent

# ------------------------------------------------------------------------------------------------ declarations

Cond = Callable[[dict, dict], bool]  # (full config, wildcards) -> whether an optional file is used


@dataclass(frozen=True)
class File:
    """A path template of a stage's input or output.

    ``{exp}`` (results/<name>), ``{seed_dir}`` (results/<name>/seed{seed}), ``{data}`` (the dataset folder) and the
    config-derived tokens of :func:`tokens` are filled in when the rule is made; the other ``{...}`` are wildcards.
    ``kind``: file, dir (a folder written as a whole), metrics / plot (small JSON, DVC metrics / plots), report.
    ``when``: an optional input, used only where ``when(config, wildcards)`` holds (the option is then omitted).
    """

    path: str
    kind: str = "file"
    when: Cond | None = None


@dataclass(frozen=True)
class Gather:
    """An input that gathers one file per combination of wildcard values (e.g. every seed's metric file).

    ``over(config)`` lists the combinations. Gathered files order the DAG only (the stage finds them by path
    under its ``exp`` value), so they are not passed on the command line."""

    path: str
    over: Callable[[dict], list[dict]]
    kind: str = "file"


@dataclass(frozen=True)
class Stage:
    name: str
    group: str  # the rule file: workflow/rules/<group>.smk
    doc: str
    keys: Callable[[dict, dict], list[str]]  # (full config, wildcards) -> dotted keys the stage reads
    inputs: dict[str, File | Gather] = field(default_factory=dict)
    outputs: dict[str, File] = field(default_factory=dict)
    wildcards: dict[str, str] = field(default_factory=dict)  # name -> regex; "seed" makes it a per-seed stage
    slice_by: tuple[str, ...] = ()  # the wildcards its keys depend on (one config slice per value) ...
    slices: Callable[[dict], list[dict]] | None = None  # ... and their values under a config
    scratch: dict[str, str] = field(default_factory=dict)  # paths kept outside the outputs (resume state)
    values: dict[str, Callable[[dict], str]] = field(default_factory=dict)  # DAG-time strings (e.g. exp)
    threads: int | str = 1  # "all": every core Snakemake was given
    gpu: bool = False  # a GPU-capable stage: resources gpu, launched under torchrun for gpu > 1
    mem_mb: int = 4000
    runtime: int = 60  # minutes (cluster schedulers)

    @property
    def module(self) -> str:
        return f"wsss.stages.{self.name}"

    @property
    def per_seed(self) -> bool:
        return "seed" in self.wildcards

    def slice_id(self, wildcards: dict) -> str:
        """The name of this job's config slice: the stage, plus the values of the wildcards its keys depend on."""
        return "_".join([self.name, *(str(wildcards[w]) for w in self.slice_by)])


def _static(*keys: str) -> Callable[[dict, dict], list[str]]:
    return lambda cfg, wc: list(keys)


SEED = r"\d+"
NET = r"supportnet|mainnet_[a-z_]+"


def _mainnet_keys(cfg: dict, wc: dict) -> list[str]:
    return ["data.train_split", "data.val_split", "mainnet.train", "mainnet.init_from_supportnet"] + [
        f"mainnet.{m}" for m in MAINNET_VARIANTS[wc["variant"]]
    ]


def _crf_keys(cfg: dict, wc: dict) -> list[str]:
    r = cfg["refine"]
    keys = [
        "data.train_split",
        "data.cam_split",
        "data.calibration_fraction",
        "refine.bg_mode",
        "refine.ignore_confidence",
        "refine.crf",
        "refine.calibrate_background",
        "refine.bg_constant" if r["bg_mode"] == "constant" else "refine.bg_alpha",
    ]
    if r["calibrate_background"] == "crf_sweep":
        keys += [
            "refine.calibration_images",
            "refine.calibration_gammas",
            "refine.calibration_constants" if r["bg_mode"] == "constant" else "refine.calibration_alphas",
        ]
    return keys


def _affinity_keys(cfg: dict, wc: dict) -> list[str]:
    rw = cfg["refine"]["random_walk"]
    keys = ["data.train_split"] + [
        f"refine.random_walk.{k}"
        for k in (
            "label_source",
            "radius",
            "embed_dim",
            "stride",
            "image_scale",
            "backbone",
            "init_from_supportnet",
            "train",
        )
    ]
    if rw["label_source"] == "cams":
        keys += ["refine.random_walk.fg_threshold", "refine.random_walk.bg_threshold"]
    return keys


def _walk_keys(cfg: dict, wc: dict) -> list[str]:
    rw = cfg["refine"]["random_walk"]
    keys = ["data.train_split", "data.cam_split", "data.calibration_fraction"] + [
        f"refine.random_walk.{k}" for k in ("radius", "beta", "n_steps", "bg_mode", "image_scale", "crf")
    ]
    keys.append("refine.random_walk.bg_power" if rw["bg_mode"] == "psa" else "refine.random_walk.bg_score")
    keys.append("refine.random_walk.calibration_values")
    if rw["calibration_values"]:
        keys.append("refine.calibration_images")
    if rw["crf"]:
        keys += ["refine.crf", "refine.ignore_confidence"]
    return keys


def _seg_init(cfg: dict, wc: dict) -> bool:
    s = cfg["segment"]
    return s["init_from_supportnet"] and s["model"].endswith("_small")


def _train_seg_keys(cfg: dict, wc: dict) -> list[str]:
    keys = ["data.train_split"] + [
        f"segment.{k}" for k in ("model", "backbone", "train", "class_weights", "aspp_channels", "atrous_rates")
    ]
    if cfg["segment"]["model"].endswith("_small"):
        keys.append("segment.init_from_supportnet")
    return keys


def _export_keys(cfg: dict, wc: dict) -> list[str]:
    keys = ["segment.scales", "segment.flip", "segment.crf_export"]
    return keys + (["segment.crf"] if cfg["segment"]["crf_export"] else [])


def _single_stage_keys(cfg: dict, wc: dict) -> list[str]:
    aa, lr = SINGLE_STAGE_VARIANTS[wc["variant"]]
    return ["data.train_split"] + [
        f"single_stage.{k}"
        for k in (
            "backbone",
            "init_from_supportnet",
            "freeze_backbone_bn",
            "head_channels",
            "atrous_rates",
            "seg_head",
            "embedding_dim",
            "sg_psi",
            "background",
            "background_logit",
            "train",
            "augment",
            "warmup_epochs",
            "focal",
            "label_stride",
            "pamr",
            "pseudo_gt",
            "mask_loss",
        )
        + (("aa",) if aa else ())
        + (("lr",) if lr else ())
    ]


def _select_keys(cfg: dict, wc: dict) -> list[str]:
    """A selection job's keys: the single-stage training's, except single_stage.aa.weight (the job's wildcard
    replaces it, so a change of it re-runs the main variants only)."""
    keys = [k for k in _single_stage_keys(cfg, wc) if k != "single_stage.aa"]
    return keys + [f"single_stage.aa.{k}" for k in cfg["single_stage"]["aa"] if k != "weight"]


def _eval_single_stage_keys(cfg: dict, wc: dict) -> list[str]:
    keys = ["data.val_split"] + [
        f"single_stage.{k}"
        for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf", "n_saved_predictions", "pseudo_eval")
    ]
    return keys + (
        ["data.cam_split", "data.calibration_fraction"] if cfg["single_stage"]["pseudo_eval"]["enabled"] else []
    )


def _report_keys(cfg: dict, wc: dict) -> list[str]:
    # the report prints the whole config (its "Config" section), so every key is one of its inputs
    return sorted(cfg)


# Path templates: the one place that builds every path (docs/architecture.md, "File contracts").
DATA = "{data}"
CKPT = "{seed_dir}/models/{net}/checkpoint.pt"
SUPPORT = File("{seed_dir}/models/supportnet/checkpoint.pt")
GPU_STAGE = dict(threads=2, gpu=True, mem_mb=8000, runtime=240)


def _trained(model: str, name: str) -> dict[str, File]:
    """A training stage's outputs: the checkpoint, the training metrics and the loss curve (a DVC plot)."""
    return {
        "ckpt": File(f"{{seed_dir}}/models/{model}/checkpoint.pt"),
        "metrics": File(f"{{seed_dir}}/metrics/{name}.json", "metrics"),
        "plot": File(f"{{seed_dir}}/plots/{name}.json", "plot"),
    }


def _seeds(cfg: dict, **more: list) -> list[dict]:
    combos = [{"seed": s} for s in cfg["seeds"]]
    for name, values in more.items():
        combos = [{**c, name: v} for c in combos for v in values]
    return combos


def _first_seed(cfg: dict, **more: list) -> list[dict]:
    return [c for c in _seeds(cfg, **more) if c["seed"] == cfg["seeds"][0]]


STAGES: dict[str, Stage] = {}


def _declare(*stages: Stage) -> None:
    for s in stages:
        if s.name in STAGES:
            raise ValueError(f"stage {s.name} declared twice")
        STAGES[s.name] = s


_declare(
    # ---------------------------------------------------------------------------------------------- data
    Stage(
        "make_data",
        "data",
        "generate the embedded synthetic VOC benchmark (deterministic from its seed)",
        keys=_static("data.synthetic"),
        outputs={"data": File(DATA, "dir"), "metrics": File("{exp}/metrics/data.json", "metrics")},
    ),
    Stage(
        "download",
        "data",
        "fetch (resume, mirrors, checksum) and extract a VOC 2012 or SBD archive",
        keys=lambda cfg, wc: [
            f"data.voc.{k}"
            for k in (
                "sbd_archive" if wc["archive"] == "sbd" else "archive",
                "urls",
                "md5",
                "download_dir",
                "timeout_s",
            )
        ],
        wildcards={"archive": "voc2012_trainval|sbd"},
        slice_by=("archive",),
        slices=lambda c: (
            [{"archive": "voc2012_trainval"}] + ([{"archive": "sbd"}] if c["data"]["source"] == "voc_sbd" else [])
        ),
        outputs={"out": File("{extract_dir}/{archive}", "dir")},
    ),
    Stage(
        "prepare_voc",
        "data",
        "VOC 2012 (+ SBD, + the test images) in the dataset layout: splits, image labels, SBD masks",
        keys=_static(
            "data.source",
            "data.voc.expect_counts",
            "data.voc.cross_check",
            "data.voc.link_mode",
            "data.voc.max_ids_per_split",
        ),
        inputs={
            "voc": File("{voc_root}"),
            "sbd": File("{sbd_root}", when=lambda c, w: c["data"]["source"] == "voc_sbd"),
            "voc_test": File("{voc_test_root}", when=lambda c, w: c["data"]["voc"]["test_extracted_root"] is not None),
        },
        outputs={"data": File(DATA, "dir"), "metrics": File("{exp}/metrics/data.json", "metrics")},
    ),
    # -------------------------------------------------------------------------------------------- classify
    Stage(
        "train_supportnet",
        "classify",
        "train SupportNet, the CAM classifier",
        keys=_static("data.train_split", "data.val_split", "supportnet"),
        inputs={"data": File(DATA)},
        outputs=_trained("supportnet", "train_supportnet"),
        wildcards={"seed": SEED},
        scratch={"state": "{seed_dir}/state/supportnet.pt"},
        **GPU_STAGE,
    ),
    Stage(
        "train_mainnet",
        "classify",
        "train a MainNet variant from the frozen SupportNet (RCM / MAM ablation)",
        keys=_mainnet_keys,
        inputs={"data": File(DATA), "support": SUPPORT},
        outputs=_trained("mainnet_{variant}", "train_mainnet_{variant}"),
        wildcards={"seed": SEED, "variant": "|".join(MAINNET_VARIANTS)},
        slice_by=("variant",),
        slices=lambda c: [{"variant": v} for v in c["mainnet"]["variants"]],
        scratch={"state": "{seed_dir}/state/mainnet_{variant}.pt"},
        **GPU_STAGE,
    ),
    # ------------------------------------------------------------------------------------------------ cams
    Stage(
        "extract_cams",
        "cams",
        "multi-scale + flip CAMs of train_split, one .npz per image",
        keys=_static("data.train_split", "cams.scales", "cams.flip"),
        inputs={"data": File(DATA), "ckpt": File(CKPT)},
        outputs={"cams": File("{seed_dir}/cams/{net}", "dir")},
        wildcards={"seed": SEED, "net": NET},
        **GPU_STAGE,
    ),
    Stage(
        "eval_cams",
        "cams",
        "CAM mIoU on cam_split with a background-threshold sweep, and rescaling-invariant measures",
        keys=_static(
            "data.cam_split",
            "data.calibration_fraction",
            "cams.scales",
            "cams.flip",
            "cams.thresholds",
            "cams.fixed_threshold",
            "cams.matched",
            "cams.oracle_fill",
        ),
        inputs={"data": File(DATA), "cams": File("{seed_dir}/cams/{net}")},
        outputs={
            "metrics": File("{seed_dir}/metrics/cam_{net}.json", "metrics"),
            "curve": File("{seed_dir}/plots/cam_curve_{net}.json", "plot"),
        },
        wildcards={"seed": SEED, "net": NET},
    ),
    # ---------------------------------------------------------------------------------------------- refine
    Stage(
        "crf",
        "refine",
        "dense-CRF pseudo labels of train_split and their mIoU on cam_split",
        keys=_crf_keys,
        inputs={
            "data": File(DATA),
            "cams": File("{seed_dir}/cams/{net}"),
            "cam_metrics": File(
                "{seed_dir}/metrics/cam_{net}.json",
                when=lambda c, w: c["refine"]["calibrate_background"] == "cam_threshold",
            ),
        },
        outputs={
            "pseudo": File("{seed_dir}/pseudo/{net}_crf", "dir"),
            "metrics": File("{seed_dir}/metrics/pseudo_{net}_crf.json", "metrics"),
        },
        wildcards={"seed": SEED, "net": NET},
        threads="all",
    ),
    Stage(
        "train_affinity",
        "refine",
        "train the affinity network on one net's confident pseudo labels",
        keys=_affinity_keys,
        inputs={
            "data": File(DATA),
            "labels": File(
                "{seed_dir}/pseudo/{net}_crf", when=lambda c, w: c["refine"]["random_walk"]["label_source"] == "crf"
            ),
            "cams": File(
                "{seed_dir}/cams/{net}", when=lambda c, w: c["refine"]["random_walk"]["label_source"] == "cams"
            ),
            "support": File(SUPPORT.path, when=lambda c, w: c["refine"]["random_walk"]["init_from_supportnet"]),
        },
        outputs=_trained("affinity_{net}", "train_affinity_{net}"),
        wildcards={"seed": SEED, "net": NET},
        scratch={"state": "{seed_dir}/state/affinity_{net}.pt", "confident": "{seed_dir}/state/affinity_{net}_labels"},
        **GPU_STAGE,
    ),
    Stage(
        "random_walk",
        "refine",
        "random-walk pseudo labels over learned affinities, and their mIoU",
        keys=_walk_keys,
        inputs={
            "data": File(DATA),
            "cams": File("{seed_dir}/cams/{net}"),
            "ckpt": File("{seed_dir}/models/affinity_{net}/checkpoint.pt"),
        },
        outputs={
            "pseudo": File("{seed_dir}/pseudo/{net}_rw", "dir"),
            "metrics": File("{seed_dir}/metrics/pseudo_{net}_rw.json", "metrics"),
        },
        wildcards={"seed": SEED, "net": NET},
        threads=2,
    ),
    # --------------------------------------------------------------------------------------------- segment
    Stage(
        "train_seg",
        "segment",
        "train the segmentation network on pseudo labels or on the GT (upper bound)",
        keys=_train_seg_keys,
        inputs={
            "data": File(DATA),
            "labels": File("{seed_dir}/pseudo/{final_net}_{pseudo_kind}", when=lambda c, w: w["source"] == "pseudo"),
            "support": File(SUPPORT.path, when=_seg_init),
        },
        outputs=_trained("deeplab_{source}", "train_seg_{source}"),
        wildcards={"seed": SEED, "source": "pseudo|gt"},
        scratch={"state": "{seed_dir}/state/deeplab_{source}.pt"},
        **GPU_STAGE,
    ),
    Stage(
        "eval_seg",
        "segment",
        "val mIoU of the segmentation network, with and without CRF",
        keys=_static("data.val_split", "segment.scales", "segment.flip", "segment.crf", "segment.n_saved_predictions"),
        inputs={"data": File(DATA), "ckpt": File("{seed_dir}/models/deeplab_{source}/checkpoint.pt")},
        outputs={
            "metrics": File("{seed_dir}/metrics/seg_{source}.json", "metrics"),
            "pred": File("{seed_dir}/seg/{source}/val", "dir"),
        },
        wildcards={"seed": SEED, "source": "pseudo|gt"},
        threads="all",
    ),
    Stage(
        "export_seg",
        "segment",
        "predictions of a split packed in the VOC evaluation server's format",
        keys=_export_keys,
        inputs={"data": File(DATA), "ckpt": File("{seed_dir}/models/deeplab_pseudo/checkpoint.pt")},
        outputs={
            "archive": File("{seed_dir}/export/voc_{split}_comp6.tar.gz"),
            "metrics": File("{seed_dir}/metrics/export_{split}.json", "metrics"),
        },
        wildcards={"seed": SEED, "split": "[A-Za-z0-9_]+"},
        threads="all",
    ),
    # ---------------------------------------------------------------------------------------- single stage
    Stage(
        "train_single_stage",
        "single_stage",
        "train a single-stage (AA&LR) variant end to end from image labels",
        keys=_single_stage_keys,
        inputs={
            "data": File(DATA),
            "support": File(SUPPORT.path, when=lambda c, w: c["single_stage"]["init_from_supportnet"]),
        },
        outputs=_trained("single_stage_{variant}", "train_single_stage_{variant}"),
        wildcards={"seed": SEED, "variant": "|".join(SINGLE_STAGE_VARIANTS)},
        slice_by=("variant",),
        slices=lambda c: [{"variant": v} for v in single_stage_variants(c)],
        scratch={"state": "{seed_dir}/state/single_stage_{variant}.pt"},
        **GPU_STAGE,
    ),
    Stage(
        "eval_single_stage",
        "single_stage",
        "single-stage val mIoU with and without CRF, and its masks / pseudo GT scored on cam_split",
        keys=_eval_single_stage_keys,
        inputs={"data": File(DATA), "ckpt": File("{seed_dir}/models/single_stage_{variant}/checkpoint.pt")},
        outputs={
            "metrics": File("{seed_dir}/metrics/seg_single_stage_{variant}.json", "metrics"),
            "pred": File("{seed_dir}/seg/single_stage_{variant}/val", "dir"),
        },
        wildcards={"seed": SEED, "variant": "|".join(SINGLE_STAGE_VARIANTS)},
        threads="all",
    ),
    # ------------------------------------------------------------------------------------------------ noise
    Stage(
        "make_noisy_labels",
        "noise",
        "the controlled-noise experiment's labels: train_split's GT masks corrupted by one kind at one rate",
        keys=_static("data.train_split"),
        inputs={"data": File(DATA)},
        outputs={
            "labels": File("{seed_dir}/noisy/{noise}", "dir"),
            "metrics": File("{seed_dir}/metrics/noisy_{noise}.json", "metrics"),
        },
        wildcards={"seed": SEED, "noise": NOISE_PATTERN},
    ),
    Stage(
        "train_noisy",
        "noise",
        "train a single-stage variant on one noise setting's fixed labels, tracking LR's flips against the truth",
        keys=_single_stage_keys,
        inputs={
            "data": File(DATA),
            "labels": File("{seed_dir}/noisy/{noise}"),
            "support": File(SUPPORT.path, when=lambda c, w: c["single_stage"]["init_from_supportnet"]),
        },
        outputs=_trained("noisy_{noise}_{variant}", "train_noisy_{noise}_{variant}"),
        wildcards={"seed": SEED, "noise": NOISE_PATTERN, "variant": "|".join(SINGLE_STAGE_VARIANTS)},
        slice_by=("variant",),
        slices=lambda c: [{"variant": v} for v in noise_variants(c)],
        scratch={"state": "{seed_dir}/state/noisy_{noise}_{variant}.pt"},
        **GPU_STAGE,
    ),
    Stage(
        "eval_noisy",
        "noise",
        "val mIoU (with and without CRF) of a model of the controlled-noise experiment",
        keys=_static(
            "data.val_split",
            *(f"single_stage.{k}" for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf")),
        ),
        inputs={"data": File(DATA), "ckpt": File("{seed_dir}/models/noisy_{noise}_{variant}/checkpoint.pt")},
        outputs={"metrics": File("{seed_dir}/metrics/seg_noisy_{noise}_{variant}.json", "metrics")},
        wildcards={"seed": SEED, "noise": NOISE_PATTERN, "variant": "|".join(SINGLE_STAGE_VARIANTS)},
        threads="all",
    ),
    # ------------------------------------------------------------------------------------------- selection
    Stage(
        "train_select",
        "selection",
        "train a single-stage variant at one AA weight of the held-out selection (single_stage.selection)",
        keys=_select_keys,
        inputs={
            "data": File(DATA),
            "support": File(SUPPORT.path, when=lambda c, w: c["single_stage"]["init_from_supportnet"]),
        },
        outputs=_trained("select_{variant}_aa{aaw}", "train_select_{variant}_aa{aaw}"),
        wildcards={"seed": SEED, "variant": "|".join(SINGLE_STAGE_VARIANTS), "aaw": AA_WEIGHT_PATTERN},
        slice_by=("variant",),
        slices=lambda c: [{"variant": v} for v in selection_variants(c)],
        scratch={"state": "{seed_dir}/state/select_{variant}_aa{aaw}.pt"},
        **GPU_STAGE,
    ),
    Stage(
        "eval_select",
        "selection",
        "a selection model's mIoU on the calibration subset of cam_split (chosen on) and on val (reported)",
        keys=_static(
            "data.cam_split",
            "data.calibration_fraction",
            "data.val_split",
            *(f"single_stage.{k}" for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf")),
        ),
        inputs={"data": File(DATA), "ckpt": File("{seed_dir}/models/select_{variant}_aa{aaw}/checkpoint.pt")},
        outputs={"metrics": File("{seed_dir}/metrics/select_{variant}_aa{aaw}.json", "metrics")},
        wildcards={"seed": SEED, "variant": "|".join(SINGLE_STAGE_VARIANTS), "aaw": AA_WEIGHT_PATTERN},
        threads="all",
    ),
    # ---------------------------------------------------------------------------------------------- report
    Stage(
        "report",
        "report",
        "tables (MD/CSV/HTML) and figures regenerated from the metric files",
        keys=_report_keys,
        inputs={
            "data": File(DATA),
            "train": Gather("{exp}/seed{seed}/metrics/train_{net}.json", lambda c: _seeds(c, net=nets(c))),
            "cam_metrics": Gather("{exp}/seed{seed}/metrics/cam_{net}.json", lambda c: _seeds(c, net=nets(c))),
            "cams": Gather("{exp}/seed{seed}/cams/{net}", lambda c: _first_seed(c, net=nets(c))),
            "pseudo_metrics": Gather(
                "{exp}/seed{seed}/metrics/pseudo_{net}_crf.json", lambda c: _seeds(c, net=c["refine"]["crf_nets"])
            ),
            "pseudo": Gather(
                "{exp}/seed{seed}/pseudo/{net}_crf", lambda c: _first_seed(c, net=c["refine"]["crf_nets"])
            ),
            "rw_metrics": Gather(
                "{exp}/seed{seed}/metrics/pseudo_{net}_rw.json",
                lambda c: _seeds(c, net=c["refine"]["random_walk"]["nets"]),
            ),
            "rw": Gather(
                "{exp}/seed{seed}/pseudo/{net}_rw", lambda c: _first_seed(c, net=c["refine"]["random_walk"]["nets"])
            ),
            "affinity": Gather(
                "{exp}/seed{seed}/metrics/train_affinity_{net}.json",
                lambda c: _seeds(c, net=c["refine"]["random_walk"]["nets"]),
            ),
            "single_stage": Gather(
                "{exp}/seed{seed}/metrics/seg_single_stage_{variant}.json",
                lambda c: _seeds(c, variant=single_stage_variants(c)),
            ),
            "noisy_labels": Gather(
                "{exp}/seed{seed}/metrics/noisy_{noise}.json", lambda c: _seeds(c, noise=noise_settings(c))
            ),
            "noisy_train": Gather(
                "{exp}/seed{seed}/metrics/train_noisy_{noise}_{variant}.json",
                lambda c: _seeds(c, noise=noise_settings(c), variant=noise_variants(c)),
            ),
            "noisy_seg": Gather(
                "{exp}/seed{seed}/metrics/seg_noisy_{noise}_{variant}.json",
                lambda c: _seeds(c, noise=noise_settings(c), variant=noise_variants(c)),
            ),
            "select": Gather(
                "{exp}/seed{seed}/metrics/select_{variant}_aa{aaw}.json",
                lambda c: _seeds(c, variant=selection_variants(c), aaw=selection_weights(c)),
            ),
            "train_seg": Gather(
                "{exp}/seed{seed}/metrics/train_seg_{source}.json", lambda c: _seeds(c, source=seg_sources(c))
            ),
            "seg_metrics": Gather(
                "{exp}/seed{seed}/metrics/seg_{source}.json", lambda c: _seeds(c, source=seg_sources(c))
            ),
            "pred": Gather("{exp}/seed{seed}/seg/{source}/val", lambda c: _first_seed(c, source=seg_sources(c))),
        },
        outputs={"out": File("{exp}/report", "report")},
        values={"exp": lambda cfg: exp_dir(cfg)},
    ),
)


# -------------------------------------------------------------------------------------------------- paths


def exp_dir(cfg: dict) -> str:
    return f"results/{cfg['name']}"


def tokens(cfg: dict) -> dict[str, str]:
    """The config-derived parts of the path templates."""
    exp = exp_dir(cfg)
    voc = cfg["data"]["voc"]
    return {
        "exp": exp,
        "seed_dir": exp + "/seed{seed}",
        "data": f"{exp}/data/VOC2012",
        "extract_dir": voc["extract_dir"],
        "voc_root": voc["extracted_root"] or f"{voc['extract_dir']}/voc2012_trainval",
        "sbd_root": voc["sbd_extracted_root"] or f"{voc['extract_dir']}/sbd",
        "voc_test_root": voc["test_extracted_root"] or "",  # used only when given (prepare_voc's voc_test)
        "final_net": f"mainnet_{cfg['mainnet']['final_variant']}",
        "pseudo_kind": cfg["segment"]["pseudo_labels"],
    }


_TOKEN = re.compile(r"\{(\w+)\}")


def fill(template: str, values: dict) -> str:
    """``template`` with the ``{name}`` fields found in ``values`` replaced (repeatedly: a token may hold
    others); the other fields (the wildcards) are left as they are."""
    for _ in range(3):
        template = _TOKEN.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)
    return template


def log_path(stage: Stage, cfg: dict) -> str:
    """results/<name>/[seed<k>/]logs/<stage>[_<wildcard values>].log"""
    base = "{seed_dir}" if stage.per_seed else "{exp}"
    suffix = "".join(f"_{{{w}}}" for w in stage.wildcards if w != "seed")
    return fill(f"{base}/logs/{stage.name}{suffix}.log", tokens(cfg))


def params_path(cfg: dict, slice_id: str = "{slice}") -> str:
    """The config slice file of a job (written by the ``config`` rule / DVC stage)."""
    return f"{exp_dir(cfg)}/params/{slice_id}.json"


def data_stage(cfg: dict) -> str:
    return "make_data" if cfg["data"]["source"] == "synthetic" else "prepare_voc"


def active_stages(cfg: dict) -> list[Stage]:
    """The stages whose rules the DAG of ``cfg`` defines (the data path depends on ``data.source``)."""
    skip = (
        {"make_data", "download", "prepare_voc"}
        - {data_stage(cfg)}
        - ({"download"} if cfg["data"]["source"] != "synthetic" else set())
    )
    return [s for s in STAGES.values() if s.name not in skip]


def final_targets(cfg: dict) -> list[str]:
    """The report, and (with segment.export_split) each seed's archive for the VOC evaluation server."""
    split = cfg["segment"]["export_split"] if cfg["segment"]["enabled"] else None
    out = [fill("{exp}/report", tokens(cfg))]
    if split:
        out += [fill(f"{{exp}}/seed{s}/export/voc_{split}_comp6.tar.gz", tokens(cfg)) for s in cfg["seeds"]]
    return out


def input_paths(stage: Stage, cfg: dict, wildcards: dict) -> dict[str, str | list[str]]:
    """The input files of one job (optional inputs only where used), with the job's config slice as ``params``."""
    tok = {**tokens(cfg), **{k: str(v) for k, v in wildcards.items()}}
    tok["seed_dir"] = fill(tok["seed_dir"], tok)
    out: dict[str, str | list[str]] = {}
    for name, f in stage.inputs.items():
        if isinstance(f, Gather):
            out[name] = [fill(f.path, {**tok, **{k: str(v) for k, v in combo.items()}}) for combo in f.over(cfg)]
        elif f.when is None or f.when(cfg, wildcards):
            out[name] = fill(f.path, tok)
    out["params"] = params_path(cfg, stage.slice_id(wildcards))
    return out


def output_templates(stage: Stage, cfg: dict) -> dict[str, str]:
    return {name: fill(f.path, tokens(cfg)) for name, f in stage.outputs.items()}


def scratch_templates(stage: Stage, cfg: dict) -> dict[str, str]:
    return {name: fill(p, tokens(cfg)) for name, p in stage.scratch.items()}


def option(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_args(stage: Stage, wildcards: dict, inputs: dict, outputs: dict, scratch: dict, values: dict) -> str:
    """The stage's command-line options of one job, quoted for the shell (paths may hold spaces)."""
    parts: list[str] = []
    for w in stage.wildcards:
        parts += [option(w), str(wildcards[w])]
    for name, f in stage.inputs.items():
        if isinstance(f, File) and name in inputs:
            parts += [option(name), str(inputs[name])]
    for name in stage.outputs:
        parts += [option(name), str(outputs[name])]
    for name in stage.scratch:
        parts += [option(name), fill(str(scratch[name]), {k: str(v) for k, v in wildcards.items()})]
    for name in stage.values:
        parts += [option(name), str(values[name])]
    return " ".join(shlex.quote(p) for p in parts)


def launch_prefix(nproc: int) -> str:
    """Command prefix of a job running a ``wsss`` stage on ``nproc`` processes (GPUs).

    ``torchrun --standalone --nproc_per_node N -m wsss.cli --`` for N > 1 (a single-node group on a free port, so
    several jobs may run side by side), else ``wsss``. The trailing ``--`` keeps torchrun's own parser off the
    stage's options: without it torchrun reads ``--log`` as an ambiguous abbreviation of its ``--log-dir`` /
    ``--logs-specs`` and refuses to start (torchrun drops the ``--``).
    """
    n = int(nproc)
    if n < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    return "wsss" if n == 1 else f"torchrun --standalone --nproc_per_node {n} -m wsss.cli --"


# ---------------------------------------------------------------------------------------------- config slices


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def slice_values(cfg: dict, keys: list[str]) -> dict:
    """The nested sub-config holding exactly ``keys`` (dotted) of the complete config ``cfg``."""
    out: dict = {}
    for key in sorted(set(keys)):
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = get(cfg, key)
    return out


def slice_text(stage: Stage, cfg: dict, wildcards: dict) -> str:
    """The content of a job's config slice file: the stage, its declared keys and their values (canonical JSON,
    so reordering or reformatting the config file changes nothing)."""
    keys = sorted(set(stage.keys(cfg, wildcards)))
    doc = {"stage": stage.name, "slice": stage.slice_id(wildcards), "keys": keys, "config": slice_values(cfg, keys)}
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


def slice_combos(stage: Stage, cfg: dict) -> list[dict]:
    """One wildcard assignment per distinct slice of ``stage`` under ``cfg`` (values of ``slice_by``)."""
    return stage.slices(cfg) if stage.slices else [{}]


def all_slices(cfg: dict) -> dict[str, str]:
    """slice id -> slice file content, for every stage the DAG of ``cfg`` holds."""
    out = {}
    for stage in active_stages(cfg):
        for wc in slice_combos(stage, cfg):
            out[stage.slice_id(wc)] = slice_text(stage, cfg, wc)
    return out


# -------------------------------------------------------------------------------------------- code dependencies


def _module_file(module: str) -> Path | None:
    rel = module.split(".")[1:]
    base = PACKAGE_DIR.joinpath(*rel)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _imports(module: str, path: Path) -> set[str]:
    """The ``wsss`` modules a source file imports (anywhere in it, also inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "wsss"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "wsss":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}") is not None}
    return found


@cache
def code_modules(module: str) -> tuple[str, ...]:
    """``module`` and every ``wsss`` module it imports, transitively (with the packages whose ``__init__`` an
    import executes), sorted."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ first
            m = ".".join(parts[:i])
            if m in seen:
                continue
            path = _module_file(m)
            if path is None:
                continue
            seen.add(m)
            todo.extend(_imports(m, path))
    return tuple(sorted(seen))


def code_files(module: str) -> list[Path]:
    return [p for p in (_module_file(m) for m in code_modules(module)) if p is not None]


def code_digest(module: str) -> str:
    """Digest of the source of ``module`` and of every ``wsss`` module it imports."""
    h = hashlib.sha256()
    for path in code_files(module):
        h.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
