"""Load, validate and complete a wsss config with the one JSON schema, and hand each stage its slice.

The schema ships with the package (``src/wsss/config.schema.yaml``, :data:`SCHEMA_PATH`); Snakemake validates
against the same file (``workflow/rules/common.smk``). Validation happens before any work starts and names the
offending key. A stage sees its config through a :class:`ConfigView`, which holds only the keys its declaration
(:mod:`wsss.registry`) lists and raises on any other.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wsss.io import WsssInputError, plain

SCHEMA_PATH = Path(__file__).resolve().with_name("config.schema.yaml")  # package data (pyproject.toml)


def load_schema() -> dict:
    """The schema as a fresh dict (callers may change it); the file is parsed once per file content."""
    return copy.deepcopy(_parsed_schema(SCHEMA_PATH.read_bytes()))


@functools.lru_cache(maxsize=2)
def _parsed_schema(text: bytes) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when PyYAML has it: ~10x faster
    return yaml.load(text, Loader=loader)  # a safe loader either way


def _resolve_ref(schema: dict, root: dict) -> dict:
    if "$ref" not in schema:
        return schema
    ref = schema["$ref"]
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref supported, got {ref}")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    merged = dict(node)
    merged.update({k: v for k, v in schema.items() if k != "$ref"})
    return merged


def apply_defaults(instance: Any, schema: dict, root: dict | None = None) -> Any:
    """Return a copy of ``instance`` with every missing key filled from the schema's defaults, recursively.

    Missing objects are created from their ``default`` (``{}``) and then filled in turn, so a config may name
    only what it changes.
    """
    root = root or schema
    schema = _resolve_ref(schema, root)
    if schema.get("type") != "object" or not isinstance(instance, dict):
        return copy.deepcopy(instance)
    out = copy.deepcopy(instance)
    for key, sub in schema.get("properties", {}).items():
        sub_r = _resolve_ref(sub, root)
        if key not in out and "default" in sub_r:
            out[key] = copy.deepcopy(sub_r["default"])
        if key in out:
            out[key] = apply_defaults(out[key], sub_r, root)
    return out


def _error_message(err: jsonschema.ValidationError, source: str) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        where = f"{key}." if key != "<top level>" else ""
        allowed = ", ".join(sorted(err.schema.get("properties", {})))
        return (
            f"{source}: unknown config key {', '.join(where + e for e in extra)}; "
            f"allowed keys here: {allowed} (see src/wsss/config.schema.yaml)"
        )
    desc = err.schema.get("description", "") if isinstance(err.schema, dict) else ""
    hint = f" ({desc.strip()})" if desc else ""
    return f"{source}: config key '{key}': {err.message}{hint}"


def validate(config: dict, source: str = "config") -> dict:
    """Validate ``config`` against the schema and return it completed with defaults.

    Raises :class:`WsssInputError` naming the first offending key.
    """
    schema = load_schema()
    if not isinstance(config, dict):
        raise WsssInputError(f"{source}: the config must be a YAML mapping, got {type(config).__name__}")
    full = apply_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(full), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise WsssInputError(_error_message(errors[0], source))
    _check_consistency(full, source)
    return full


# the splits with masks and labels that each data.source's data stage writes (make_data; prepare_voc, with SBD's
# train_aug for voc_sbd); prepare_voc adds test (images only) when data.voc.test_extracted_root is given
_SPLITS = {"synthetic": ("train", "val"), "voc": ("train", "val"), "voc_sbd": ("train", "val", "train_aug")}
_SPLIT_FALLBACK = {"train_split": "train", "cam_split": "train", "val_split": "val"}
# splits that lie within another (VOC: train_aug holds train): CAMs and pseudo labels are made on train_split
_WITHIN = {"train_aug": {"train"}}
_TRAIN_SECTIONS = ("supportnet", "mainnet", "refine.random_walk", "segment", "single_stage")


def _non_finite(node, path=()):
    """Dotted keys of NaN / inf numbers (JSON-schema bounds do not catch NaN: every comparison with it is false)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, path + (str(i),))
    elif isinstance(node, float) and node != node or node in (float("inf"), float("-inf")):
        yield ".".join(path)


def _check_splits(cfg: dict, source: str) -> None:
    """Every split the config names is one the data stage writes for ``data.source``, so that a run fails here
    (``snakemake -n``, ``wsss validate``) rather than at a stage hours in, on a missing list file."""
    data = cfg["data"]
    kind = data["source"]
    masked = _SPLITS[kind]
    has_test = kind != "synthetic" and data["voc"]["test_extracted_root"] is not None
    written = f"the splits written for data.source '{kind}' ({', '.join(masked)}" + (", test)" if has_test else ")")
    for key, fallback in _SPLIT_FALLBACK.items():
        split = data[key]
        if split in masked:
            continue
        if split == "test" and has_test:
            raise WsssInputError(
                f"{source}: data.{key} 'test': the test split has no masks and no labels (VOC keeps them on its "
                f"evaluation server); it can only be exported (segment.export_split); set data.{key}: {fallback}"
            )
        hint = f"set data.{key}: {fallback}"
        if split == "train_aug" and kind == "voc":
            hint += ", or data.source: voc_sbd (VOC 2012 + SBD, which adds train_aug)"
        raise WsssInputError(f"{source}: data.{key} '{split}' is not among {written}; {hint}")
    export = cfg["segment"]["export_split"]
    if not cfg["segment"]["enabled"] or export is None or export in masked or (export == "test" and has_test):
        return
    if export == "test" and kind != "synthetic":
        raise WsssInputError(
            f"{source}: segment.export_split 'test' is not among {written}: VOC's test split is not in "
            "VOCtrainval_11-May-2012.tar; set segment.export_split: val, or, to export test, set "
            "data.voc.test_extracted_root to the extracted VOC2012test.tar (from the VOC evaluation server)"
        )
    raise WsssInputError(
        f"{source}: segment.export_split '{export}' is not among {written}; set segment.export_split: val "
        "(or null: no export)"
    )


def _check_consistency(cfg: dict, source: str) -> None:
    """Cross-key rules a JSON schema cannot express."""
    bad = list(_non_finite(cfg))
    if bad:
        raise WsssInputError(f"{source}: config key '{bad[0]}' is not a finite number; give a real value")
    _check_splits(cfg, source)
    data = cfg["data"]
    if data["cam_split"] != data["train_split"] and data["cam_split"] not in _WITHIN.get(data["train_split"], ()):
        raise WsssInputError(
            f"{source}: data.cam_split '{data['cam_split']}' is not within data.train_split '{data['train_split']}': "
            "CAMs and pseudo labels are made on train_split and scored on cam_split, so cam_split must be "
            "train_split or a split it holds (train within train_aug)"
        )
    if data["source"] == "synthetic" and data["cam_split"] == "train" and data["synthetic"]["n_train"] < 2:
        raise WsssInputError(
            f"{source}: data.synthetic.n_train = {data['synthetic']['n_train']}: cam_split 'train' needs at least "
            "2 images, one to calibrate on (data.calibration_fraction) and one to score"
        )
    matched = cfg["cams"]["matched"]
    for lo, hi in matched["rings"]:
        if lo > hi:
            raise WsssInputError(f"{source}: cams.matched.rings has [{lo}, {hi}]; a ring is [lo, hi] with lo <= hi")
    bins = matched["distance_bins"]
    if any(b >= c for b, c in zip(bins, bins[1:])):
        raise WsssInputError(f"{source}: cams.matched.distance_bins {bins} must be strictly increasing")
    syn = cfg["data"]["synthetic"]
    for low, high in (
        ("size_min", "size_max"),
        ("min_classes", "max_classes"),
        ("max_classes", "max_objects"),
        ("scale_min", "scale_max"),
    ):
        if syn[low] > syn[high]:
            raise WsssInputError(
                f"{source}: data.synthetic.{low} ({syn[low]}) > {high} ({syn[high]}); {low} must not exceed {high}"
            )
    variants = cfg["mainnet"]["variants"]
    if cfg["mainnet"]["final_variant"] not in variants:
        raise WsssInputError(
            f"{source}: mainnet.final_variant '{cfg['mainnet']['final_variant']}' is not among mainnet.variants {variants}"
        )
    nets = {"supportnet"} | {f"mainnet_{v}" for v in variants}
    for net in cfg["refine"]["crf_nets"]:
        if net not in nets:
            raise WsssInputError(
                f"{source}: refine.crf_nets names '{net}', which is not trained (mainnet.variants = {variants})"
            )
    rw = cfg["refine"]["random_walk"]
    for net in rw["nets"]:
        if net not in nets:
            raise WsssInputError(
                f"{source}: refine.random_walk.nets names '{net}', which is not trained (mainnet.variants = {variants})"
            )
        if rw["label_source"] == "crf" and net not in cfg["refine"]["crf_nets"]:
            raise WsssInputError(
                f"{source}: refine.random_walk.nets names '{net}' with label_source crf, but '{net}' is not in "
                "refine.crf_nets; add it there or set refine.random_walk.label_source: cams"
            )
    noise = cfg["single_stage"]["noise_experiment"]
    for r in noise["rates"]:
        if abs(100 * r - round(100 * r)) > 1e-9:
            raise WsssInputError(
                f"{source}: single_stage.noise_experiment.rates has {r}; give whole percents (0.1, 0.25, ...): "
                "each rate names its jobs (e.g. erode25)"
            )
    if noise["enabled"] and "context_bleed" in noise["kinds"] and data["source"] != "synthetic":
        raise WsssInputError(
            f"{source}: single_stage.noise_experiment.kinds has context_bleed, which needs the synthetic benchmark's "
            f"context rows; data.source is {data['source']!r}: drop context_bleed"
        )
    final = f"mainnet_{cfg['mainnet']['final_variant']}"
    if not cfg["segment"]["enabled"]:  # no DeepLab: nothing reads segment.pseudo_labels
        return
    if cfg["segment"]["pseudo_labels"] == "rw" and final not in rw["nets"]:
        raise WsssInputError(
            f"{source}: segment.pseudo_labels is rw but the final MainNet '{final}' is not in refine.random_walk.nets"
        )
    if cfg["segment"]["pseudo_labels"] == "crf" and final not in cfg["refine"]["crf_nets"]:
        raise WsssInputError(f"{source}: segment.pseudo_labels is crf but '{final}' is not in refine.crf_nets")


def check_batches(cfg: dict, source: str = "config") -> None:
    """Refuse a training batch larger than the training split where the config alone tells the split's size (the
    synthetic benchmark): every batch is a full one, so such a training would take no step. Checked where a run is
    planned (Snakemake, ``wsss config`` / ``validate``); the trainer refuses it at the start of a job in any case."""
    data = cfg["data"]
    if data["source"] == "synthetic" and data["train_split"] == "train":
        n = data["synthetic"]["n_train"]
        trained = {
            "supportnet": True,
            "mainnet": True,
            "refine.random_walk": bool(cfg["refine"]["random_walk"]["nets"]),
            "segment": cfg["segment"]["enabled"],
            "single_stage": cfg["single_stage"]["enabled"],
        }
        for section in (s for s in _TRAIN_SECTIONS if trained[s]):
            batch = get(cfg, section)["train"]["batch_size"]
            if batch > n:
                raise WsssInputError(
                    f"{source}: {section}.train.batch_size = {batch} is larger than the training split "
                    f"(data.synthetic.n_train = {n}): no batch would be trained; lower it or raise n_train"
                )


#: The keys that say where the input data lies on this machine: the only ones ``snakemake --config`` may set, e.g.
#: ``--config 'data={voc: {extracted_root: ../shared/data/voc2012-mini/VOC2012}}'``. No stage's config slice holds
#: them (they fill the path templates of the data stage's inputs, :func:`wsss.registry.tokens`; the report, which
#: prints the whole config, shows them), so every job computes from the config file's values and the data itself.
LOCATION_KEYS = ("data.voc.extracted_root", "data.voc.sbd_extracted_root", "data.voc.test_extracted_root")


def _differences(a: Any, b: Any, path: tuple = ()):
    """Dotted keys whose values differ between two configs (leaves; a key present in one only counts)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                yield ".".join(path + (str(k),))
            else:
                yield from _differences(a[k], b[k], path + (str(k),))
    elif a != b:
        yield ".".join(path)


def with_locations(file_cfg: dict, given: dict, source: str = "config") -> dict:
    """The run's config: ``file_cfg`` (the config file, validated) with the data locations (:data:`LOCATION_KEYS`)
    of ``given`` (the config Snakemake holds after ``--config``, validated). Any other difference is refused: it
    would bypass the config file (and DVC, which reads the file)."""
    other = [k for k in _differences(file_cfg, given) if k not in LOCATION_KEYS]
    if other:
        raise WsssInputError(
            f"the config in memory differs from {source} in {', '.join(other[:5])}: overrides given with --config "
            "do not reach the stages; write them in a config file and pass it with --configfile (--config may set "
            f"only where the data lies: {', '.join(LOCATION_KEYS)})"
        )
    return given


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def load(path: str | os.PathLike) -> dict:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    if not path.is_file():
        raise WsssInputError(f"{path}: config file not found")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise WsssInputError(f"{path}: not valid YAML ({e})") from e
    return validate(raw, source=str(path))


def run_seed(cfg: dict, seed: int | None, source: str = "config") -> int:
    """The seed one stage runs with: ``seed`` (the Snakemake ``{seed}`` wildcard) if given, else ``seeds[0]``.

    A seed outside ``seeds`` is refused: its results would live in a tree the report never reads."""
    seeds = cfg["seeds"]
    if seed is None:
        return int(seeds[0])
    if seed not in seeds:
        raise WsssInputError(f"{source}: seed {seed} is not among `seeds` {seeds}; add it to `seeds` in that file")
    return int(seed)


# ----------------------------------------------------------------------------------------------- config slices


class UndeclaredConfigKey(LookupError):
    """A stage read a config key its declaration (wsss.registry) does not list. Not a KeyError, so that
    ``view.get(key, default)`` raises too instead of silently returning the default."""


def _under(path: tuple, keys: frozenset) -> bool:
    return any(path[: len(k)] == k for k in keys)


def _above(path: tuple, keys: frozenset) -> bool:
    return any(len(k) > len(path) and k[: len(path)] == path for k in keys)


class ConfigView(Mapping):
    """Read-only view of the config keys one stage declared.

    ``view[k]`` gives a deep copy of the value where ``k`` (dotted from the root) is declared or lies under a
    declared key, a narrower view where ``k`` only leads to declared keys, and raises :class:`UndeclaredConfigKey`
    otherwise, so that a stage cannot depend on a key its declaration (and hence the re-run machinery) misses.
    Iteration, ``len`` and ``in`` see the declared part only; :meth:`to_dict` is that part as plain data.
    """

    def __init__(self, data: dict, keys, stage: str, prefix: tuple = (), reads: set | None = None):
        self._data, self._stage, self._prefix = data, stage, tuple(prefix)
        self._keys = frozenset(tuple(k.split(".")) if isinstance(k, str) else tuple(k) for k in keys)
        self._reads = set() if reads is None else reads  # shared with the narrower views

    def _visible(self, key: str) -> str | None:
        path = self._prefix + (key,)
        if _under(path, self._keys):
            return "all"
        if _above(path, self._keys):
            return "part"
        return None

    def __getitem__(self, key: str) -> Any:
        seen = self._visible(key)
        if seen is None:
            dotted = ".".join(self._prefix + (key,))
            raise UndeclaredConfigKey(
                f"stage {self._stage} read config key '{dotted}', which its declaration does not list; add it to "
                f"the stage's keys in src/wsss/registry.py (so that changing it re-runs the stage)"
            )
        value = self._data[key]
        if seen == "all":
            self._reads.add(self._prefix + (key,))
            return copy.deepcopy(value)
        return ConfigView(value, self._keys, self._stage, self._prefix + (key,), self._reads)

    def __iter__(self):
        return (k for k in self._data if self._visible(k) is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._data and self._visible(key) is not None

    def __repr__(self) -> str:
        return f"ConfigView({self._stage}, {self.to_dict()!r})"

    def to_dict(self) -> dict:
        return plain(self)

    def unread(self) -> list[str]:
        """The declared keys nothing has read (yet) through this view or its narrower views: a declaration
        broader than the code re-runs the stage for changes that cannot affect it."""
        return sorted(".".join(k) for k in self._keys if not any(p[: len(k)] == k for p in self._reads))


def stage_view(cfg: dict, stage, wildcards: dict) -> ConfigView:
    """The slice of the complete config ``cfg`` that ``stage`` (a :class:`wsss.registry.Stage`) reads."""
    return ConfigView(cfg, stage.keys(cfg, wildcards), stage.name)


def load_slice(path: str | os.PathLike, stage, wildcards: dict) -> ConfigView:
    """The config slice a stage job reads: the file ``config`` (rule / DVC stage) wrote for it."""
    from wsss.io import read_json

    doc = read_json(path)
    want = stage.slice_id(wildcards)
    if not isinstance(doc, dict) or {"stage", "slice", "keys", "config"} - set(doc):
        raise WsssInputError(f"{path}: not a config slice file (written by `wsss config`); re-run the pipeline")
    if doc["slice"] != want:
        raise WsssInputError(
            f"{path}: the config slice of {doc['slice']!r}, not of this job ({want!r}); pass "
            f"results/<name>/params/{want}.json or --config with the config file"
        )
    return ConfigView(doc["config"], doc["keys"], stage.name)
