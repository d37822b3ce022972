"""One declaration per stage (wsss.registry): the CLI, the rules and dvc.yaml derive from it, a stage sees only the
config keys it declared, its code dependencies are computed, and no stage imports another."""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from wsss import cli, config, registry
from wsss.io import WsssInputError

REPO = Path(__file__).resolve().parents[1]
STAGES_DIR = REPO / "src" / "wsss" / "stages"


def smoke() -> dict:
    return config.load(REPO / "config" / "smoke.yaml")


def test_no_stage_imports_another():
    offenders = []
    for path in sorted(STAGES_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("wsss.stages")]
    assert offenders == []


def test_every_stage_module_is_declared_and_named_like_its_rule():
    modules = {p.stem for p in STAGES_DIR.glob("*.py")} - {"__init__"}
    assert modules == set(registry.STAGES)
    for name, stage in registry.STAGES.items():
        assert stage.name == name and stage.module == f"wsss.stages.{name}"
        assert (REPO / "workflow" / "rules" / f"{stage.group}.smk").read_text().count(f'stage_rule("{name}")') == 1


@pytest.mark.parametrize("name", sorted(registry.STAGES))
def test_run_signature_is_the_declaration(name):
    """The CLI passes a stage exactly its declared files and wildcards (plus threads)."""
    stage = registry.STAGES[name]
    params = inspect.signature(importlib.import_module(stage.module).run).parameters
    first, *rest = params
    assert first == "cfg"
    declared = {*stage.wildcards, *stage.outputs, *stage.scratch, *stage.values, "threads"} | {
        k for k, f in stage.inputs.items() if isinstance(f, registry.File)
    }
    assert set(rest) == declared
    for k, f in stage.inputs.items():  # an optional input is an optional argument
        if isinstance(f, registry.File):
            assert (params[k].default is None) == (f.when is not None), k


@pytest.mark.parametrize("name", sorted(registry.STAGES))
def test_cli_options_are_the_declaration(name):
    stage = registry.STAGES[name]
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices[name]
    options = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
    want = {registry.option(k) for k in (*stage.wildcards, *stage.outputs, *stage.scratch, *stage.values)}
    want |= {registry.option(k) for k, f in stage.inputs.items() if isinstance(f, registry.File)}
    assert options - {"--help", "--params", "--config", "--log", "--threads"} == want


def test_a_stage_reading_an_undeclared_key_fails_at_once():
    view = config.stage_view(smoke(), registry.STAGES["crf"], {})
    assert view["refine"]["crf"]["n_iter"] == 2
    with pytest.raises(config.UndeclaredConfigKey, match="stage crf read config key 'refine.random_walk'"):
        view["refine"]["random_walk"]
    with pytest.raises(config.UndeclaredConfigKey, match="'segment'"):
        view.get("segment")
    assert "random_walk" not in view["refine"] and "segment" not in view
    # variant-dependent declarations: the fair control does not read RCM's or MAM's keys
    base = config.stage_view(smoke(), registry.STAGES["train_mainnet"], {"variant": "baseline"})
    with pytest.raises(config.UndeclaredConfigKey):
        base["mainnet"]["mam"]
    full = config.stage_view(smoke(), registry.STAGES["train_mainnet"], {"variant": "rcm_mam"})
    assert full["mainnet"]["mam"]["scales"] == [0.5, 1.0] and full["mainnet"]["rcm"]["weight"] == 0.2


def test_a_view_reports_the_declared_keys_it_did_not_read():
    view = config.stage_view(smoke(), registry.STAGES["eval_seg"], {})
    view["segment"]["scales"]
    assert "segment.scales" not in view.unread() and "segment.flip" in view.unread()
    view.to_dict()
    assert view.unread() == []


def test_a_slice_file_is_a_snapshot_of_the_declared_values(tmp_path):
    cfg = smoke()
    stage = registry.STAGES["crf"]
    text = registry.slice_text(stage, cfg, {})
    path = tmp_path / "crf.json"
    path.write_text(text)
    view = config.load_slice(path, stage, {})
    assert view.to_dict() == config.stage_view(cfg, stage, {}).to_dict()
    with pytest.raises(WsssInputError, match="not of this job"):
        config.load_slice(path, registry.STAGES["train_mainnet"], {"variant": "rcm"})


def test_code_dependencies_are_the_transitive_imports():
    crf = registry.code_modules("wsss.stages.crf")
    assert {"wsss.stages.crf", "wsss.refine.crf", "wsss.refine.calibration", "wsss.evaluation", "wsss.metrics"} <= set(
        crf
    )
    assert "wsss.engine.trainer" not in crf and "wsss.registry" not in crf  # not imported by the CRF stage
    ss = registry.code_modules("wsss.stages.train_single_stage")
    assert "wsss.losses.label_reassign" in ss and "wsss.losses.rcm" not in ss  # package __init__s import nothing
    assert "wsss.refine.crf" in registry.code_modules("wsss.stages.eval_single_stage")
    # the digest follows the files' content
    assert registry.code_digest("wsss.stages.crf") != registry.code_digest("wsss.stages.eval_cams")


def test_relative_imports_count(tmp_path, monkeypatch):
    pkg = tmp_path / "wsss"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "a.py").write_text("from .b import f\nfrom . import c\n\ndef g():\n    from wsss import d\n")
    (pkg / "sub" / "b.py").write_text("import os\n")
    (pkg / "sub" / "c.py").write_text("")
    (pkg / "d.py").write_text("")
    monkeypatch.setattr(registry, "PACKAGE_DIR", pkg)
    registry.code_modules.cache_clear()
    try:
        assert registry.code_modules("wsss.sub.a") == (
            "wsss",
            "wsss.d",
            "wsss.sub",
            "wsss.sub.a",
            "wsss.sub.b",
            "wsss.sub.c",
        )
    finally:
        registry.code_modules.cache_clear()


# ------------------------------------------------------------------------------------ every key of the schema


def _leaves(schema: dict, root: dict, path=()):
    schema = config._resolve_ref(schema, root)
    props = schema.get("properties")
    if schema.get("type") == "object" and props:
        for k, sub in props.items():
            yield from _leaves(sub, root, path + (k,))
    else:
        yield ".".join(path), schema


def _changed(value, schema: dict):
    """A different value of the same key that the schema accepts."""
    if "anyOf" in schema:  # e.g. an integer, null, or a mapping: change it within the branch the value is in
        if isinstance(value, dict):
            key = next(iter(value))
            return {**value, key: (value[key] or 0) + 1}
        return _changed(value, next(b for b in schema["anyOf"] if b.get("type") not in ("null", None)))
    if "enum" in schema:
        return next(v for v in schema["enum"] if v != value)
    kind = schema.get("type")
    kind = [k for k in kind if k != "null"][0] if isinstance(kind, list) else kind
    if kind == "boolean":
        return not value
    if kind == "integer":
        if value is None:  # a nullable integer at its null default
            return schema.get("minimum", 0) + 1
        hi = schema.get("maximum")
        return value - 1 if hi is not None and value + 1 > hi else value + 1
    if kind == "number":
        if value is None:
            return 0.5
        hi = schema.get("maximum", schema.get("exclusiveMaximum"))
        new = value * 0.9 if value else 0.05
        return new if hi is None or new < hi else value * 0.5
    if kind == "string":
        return (value or "x") + "_changed"
    if kind == "array":
        items = config._resolve_ref(schema.get("items", {}), {})
        if value and items.get("type") in ("number", "integer"):
            return list(value[:-1]) + [value[-1] + 1] if len(value) > 1 else list(value) + [value[-1] + 1]
        return list(value) + list(value[:1]) if value else None
    if kind == "object":
        return {"changed": ["x"]}
    raise AssertionError(f"no change for {schema}")


def _set(cfg: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return out


def _jobs(cfg: dict) -> set:
    """(stage, wildcard items) of every job of the DAG registry.final_targets(cfg) asks for, enumerated from the
    declarations alone (what Snakemake's DAG holds for these configs: tests/test_dvc.py checks the committed one)."""
    jobs = set()
    for stage in registry.active_stages(cfg):
        for combo in _combos(stage, cfg):
            jobs.add((stage.name, tuple(sorted(combo.items()))))
    return jobs


def _combos(stage, cfg: dict) -> list[dict]:
    seeds = [{"seed": s} for s in cfg["seeds"]] if stage.per_seed else [{}]
    values = {
        "net": {
            "extract_cams": registry.nets(cfg),
            "eval_cams": registry.nets(cfg),
            "crf": cfg["refine"]["crf_nets"],
            "train_affinity": cfg["refine"]["random_walk"]["nets"],
            "random_walk": cfg["refine"]["random_walk"]["nets"],
        }.get(stage.name, []),
        "variant": (
            cfg["mainnet"]["variants"]
            if stage.name == "train_mainnet"
            else registry.noise_variants(cfg)
            if stage.name in ("train_noisy", "eval_noisy")
            else registry.selection_variants(cfg)
            if stage.name in ("train_select", "eval_select")
            else registry.single_stage_variants(cfg)
        ),
        "noise": registry.noise_settings(cfg),
        "aaw": registry.selection_weights(cfg),
        "source": registry.seg_sources(cfg),
        "split": [cfg["segment"]["export_split"]]
        if cfg["segment"]["export_split"] and cfg["segment"]["enabled"]
        else [],
        "archive": ["voc2012_trainval", "sbd"] if cfg["data"]["source"] == "voc_sbd" else ["voc2012_trainval"],
    }
    out = seeds
    for w in stage.wildcards:
        if w != "seed":
            out = [{**c, w: v} for c in out for v in values[w]]
    return out


# keys that shape the DAG (which jobs exist, or where they read and write) rather than what a job computes
STRUCTURAL = {
    "name",
    "seeds",
    "data.source",
    "data.voc.extract_dir",
    "data.voc.extracted_root",
    "data.voc.sbd_extracted_root",
    "data.voc.test_extracted_root",
    "mainnet.variants",
    "mainnet.final_variant",
    "refine.crf_nets",
    "refine.random_walk.nets",
    "segment.enabled",
    "segment.upper_bound",
    "segment.export_split",
    "segment.pseudo_labels",
    "single_stage.enabled",
    "single_stage.variants",
    "single_stage.noise_experiment.enabled",
    "single_stage.noise_experiment.kinds",
    "single_stage.noise_experiment.rates",
    "single_stage.noise_experiment.clean",
    "single_stage.noise_experiment.variants",
    "single_stage.selection.enabled",
    "single_stage.selection.variants",
    "single_stage.selection.aa_weights",
}


def _reads(stage, cfg: dict, combo: dict, key: str) -> bool:
    parts = key.split(".")
    return any(parts[: len(k.split("."))] == k.split(".") for k in stage.keys(cfg, combo))


def test_every_leaf_key_reruns_exactly_the_jobs_that_read_it():
    """For every leaf key of the schema: change it in a copy of the smoke config; the jobs whose config slice
    (the content of rule `config`'s output: what re-runs a job under Snakemake and DVC) changes are exactly the jobs
    whose stage declares the key. A key no job of the smoke DAG reads is one that shapes the DAG itself (its jobs
    change), or one only a data source other than the smoke's uses (checked under that source)."""
    schema = config.load_schema()
    base = smoke()
    raw = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    unread = []
    jobs = sorted(_jobs(base))
    before = {(n, wc): registry.slice_text(registry.STAGES[n], base, dict(wc)) for n, wc in jobs}
    for key, sub in _leaves(schema, schema):
        new = _changed(registry.get(base, key), sub)
        try:
            cfg = config.validate(_set(raw if _has(raw, key) else _set_default(raw, key, base), key, new))
        except WsssInputError:
            continue  # a cross-key rule refuses this particular change (e.g. min > max): covered by other keys
        if key in STRUCTURAL:
            voc_raw = _set_default({**raw, "data": {"source": "voc_sbd"}}, key, base)
            voc = config.validate(voc_raw)
            if _dag_differs(base, cfg) or _dag_differs(voc, config.validate(_set(voc_raw, key, new))):
                continue
            # the noise experiment's and the selection's keys shape their jobs once they are on (the smoke config
            # leaves both off)
            section = next((s for s in ("noise_experiment", "selection") if key.startswith(f"single_stage.{s}.")), None)
            assert section, key
            on = _set(_set_default(raw, key, base), f"single_stage.{section}.enabled", True)
            assert _dag_differs(config.validate(on), config.validate(_set(on, key, new))), key
            continue
        changed, readers = set(), set()
        for name, wc in jobs:
            stage, combo = registry.STAGES[name], dict(wc)
            if before[name, wc] != registry.slice_text(stage, cfg, combo):
                changed.add((name, wc))
            if _reads(stage, base, combo, key) or _reads(stage, cfg, combo, key):
                readers.add((name, wc))
        assert changed == readers, key
        if not readers:
            unread.append(key)
    # what the smoke DAG does not read: the real-VOC data keys (read by download / prepare_voc)
    voc = config.validate({**raw, "data": {"source": "voc_sbd"}})
    for key in unread:
        assert key.startswith("data.voc.") and any(
            _reads(registry.STAGES[n], voc, dict(w), key) for n, w in _jobs(voc)
        ), key


def _dag_differs(a: dict, b: dict) -> bool:
    """Whether two configs give different jobs, targets, or paths of the same jobs."""
    ja, jb = _jobs(a), _jobs(b)
    if ja != jb or registry.final_targets(a) != registry.final_targets(b):
        return True
    return any(
        registry.input_paths(registry.STAGES[s], a, dict(w)) != registry.input_paths(registry.STAGES[s], b, dict(w))
        or registry.output_templates(registry.STAGES[s], a) != registry.output_templates(registry.STAGES[s], b)
        for s, w in ja
    )


def _has(raw: dict, key: str) -> bool:
    node = raw
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def _set_default(raw: dict, key: str, full: dict) -> dict:
    """``raw`` with the section holding ``key`` written out (so the key can be set in the file)."""
    out = copy.deepcopy(raw)
    parts = key.split(".")
    node, src = out, full
    for p in parts[:-1]:
        src = src[p]
        node = node.setdefault(p, {})
    for k, v in src.items():
        node.setdefault(k, copy.deepcopy(v))
    return out


def test_structural_keys_are_not_stage_keys():
    """A key that shapes the DAG changes which jobs exist; no stage reads it (it would re-run for nothing)."""
    cfg = smoke()
    for name, wc in _jobs(cfg):
        stage = registry.STAGES[name]
        if name == "report":
            continue  # the report prints the whole config
        assert not STRUCTURAL & set(stage.keys(cfg, dict(wc))) - {"data.source"}, name


def test_the_enumerated_jobs_are_snakemakes():
    from wsss import dvcgen

    real = {
        (j.rule.name, tuple(sorted((k, int(v) if k == "seed" else v) for k, v in j.wildcards_dict.items())))
        for j in dvcgen.dag_jobs(REPO / "Snakefile", REPO / "config" / "smoke.yaml", REPO)
        if j.rule.name not in ("all", "config")
    }
    assert real == _jobs(smoke())
