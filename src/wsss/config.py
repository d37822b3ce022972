"""Load, validate and complete a wsss config with the one JSON schema.

The schema lives in ``workflow/schemas/config.schema.yaml``; Snakemake validates against the same file
(``workflow/rules/common.smk``). Validation happens before any work starts and names the offending key.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wsss.io import WsssInputError


def _find_schema() -> Path:
    env = os.environ.get("WSSS_SCHEMA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "workflow" / "schemas" / "config.schema.yaml"
        if cand.is_file():
            return cand
    raise WsssInputError(
        "workflow/schemas/config.schema.yaml not found above the installed package; "
        "install wsss in editable mode from the repository (pip install -e .) or set WSSS_SCHEMA"
    )


SCHEMA_PATH = _find_schema()


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


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
            f"allowed keys here: {allowed} (see workflow/schemas/config.schema.yaml)"
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


def _check_consistency(cfg: dict, source: str) -> None:
    """Cross-key rules a JSON schema cannot express."""
    syn = cfg["data"]["synthetic"]
    if syn["size_min"] > syn["size_max"]:
        raise WsssInputError(f"{source}: data.synthetic.size_min ({syn['size_min']}) > size_max ({syn['size_max']})")
    if syn["min_classes"] > syn["max_classes"]:
        raise WsssInputError(
            f"{source}: data.synthetic.min_classes ({syn['min_classes']}) > max_classes ({syn['max_classes']})"
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
    final = f"mainnet_{cfg['mainnet']['final_variant']}"
    if cfg["segment"]["pseudo_labels"] == "rw" and final not in rw["nets"]:
        raise WsssInputError(
            f"{source}: segment.pseudo_labels is rw but the final MainNet '{final}' is not in refine.random_walk.nets"
        )
    if cfg["segment"]["pseudo_labels"] == "crf" and final not in cfg["refine"]["crf_nets"]:
        raise WsssInputError(f"{source}: segment.pseudo_labels is crf but '{final}' is not in refine.crf_nets")


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


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def nets(cfg: dict) -> list[str]:
    """All CAM networks the config trains, SupportNet first."""
    return ["supportnet"] + [f"mainnet_{v}" for v in cfg["mainnet"]["variants"]]


def seg_sources(cfg: dict) -> list[str]:
    if not cfg["segment"]["enabled"]:
        return []
    return ["pseudo"] + (["gt"] if cfg["segment"]["upper_bound"] else [])


def run_seed(cfg: dict, seed: int | None, source: str = "config") -> int:
    """The seed one stage runs with: ``seed`` (the Snakemake ``{seed}`` wildcard) if given, else ``seeds[0]``.

    A seed outside ``seeds`` is refused: its results would live in a tree the report never reads."""
    seeds = cfg["seeds"]
    if seed is None:
        return int(seeds[0])
    if seed not in seeds:
        raise WsssInputError(f"{source}: seed {seed} is not among `seeds` {seeds}; add it to `seeds` in that file")
    return int(seed)


def seed_of(cfg: dict) -> int:
    """The seed a stage runs with: the one the CLI resolved (``cfg["seed"]``), else the first of ``seeds``."""
    return int(cfg["seed"]) if "seed" in cfg else int(cfg["seeds"][0])
