"""``wsss <stage> ...``: one sub-command per pipeline stage, derived from the stage declarations (:mod:`wsss.registry`).

Every stage takes its config as a slice file (``--params results/<name>/params/<slice>.json``, what Snakemake and DVC
pass: the snapshot the ``config`` step wrote for the run) or as a config file (``--config FILE.yaml``, validated
against the schema; handy by hand), one option per input and output file and per wildcard of its declaration
(``--seed``, ``--net``, ...), ``--threads`` and ``--log``. The stage module sees only the config keys it declared.

Three more commands: ``wsss config --config FILE --out DIR`` writes every stage's config slice of a config (the DVC
stage ``config``), ``wsss write_slice --text TEXT --out FILE`` one slice as Snakemake's rule ``config`` resolved it
(the snapshot of the run), ``wsss validate --config FILE`` checks a config and exits.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

from wsss import config as wconfig
from wsss import registry
from wsss.io import WsssInputError, write_text


def _setup_logging(log_file: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="a", encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers, force=True
    )


def _threads(n: int) -> int:
    """Set torch's intra-op threads; ``0`` means every core of the machine (the DVC commands use it)."""
    import torch

    n = n if n > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def _stage_parser(sub, stage: registry.Stage) -> None:
    s = sub.add_parser(stage.name, help=stage.doc, description=stage.doc)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--params", help="the job's config slice (results/<name>/params/<slice>.json)")
    src.add_argument("--config", help="a YAML config file (validated against the schema)")
    s.add_argument("--log", help="append the stage's log to this file")
    s.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("WSSS_THREADS", "1")),
        help="CPU threads / worker processes (Snakemake passes {threads}; 0 = all cores)",
    )
    for w, pattern in stage.wildcards.items():
        extra = {"type": int} if w == "seed" else {}
        s.add_argument(
            registry.option(w),
            required=w != "seed",
            dest=w,
            metavar=w.upper(),
            help=f"wildcard: {pattern}" + ("; default: the first of the config's `seeds`" if w == "seed" else ""),
            **extra,
        )
    for name, f in stage.inputs.items():
        if isinstance(f, registry.File):
            s.add_argument(
                registry.option(name),
                dest=name,
                required=f.when is None,
                help=f"input {f.path}" + (" (where the config uses it)" if f.when else ""),
            )
    for name, f in stage.outputs.items():
        s.add_argument(registry.option(name), dest=name, required=True, help=f"output {f.path}")
    for name, path in stage.scratch.items():
        s.add_argument(
            registry.option(name), dest=name, required=True, help=f"scratch (kept outside the outputs) {path}"
        )
    for name in stage.values:
        s.add_argument(registry.option(name), dest=name, required=True)
    s.set_defaults(stage=stage)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for stage in registry.STAGES.values():
        _stage_parser(sub, stage)
    c = sub.add_parser("config", help="write every stage's config slice of a config file (validates it first)")
    c.add_argument("--config", required=True)
    c.add_argument("--out", required=True, help="folder of the slice files (results/<name>/params)")
    v = sub.add_parser("validate", help="validate a config file and exit")
    v.add_argument("--config", required=True)
    w = sub.add_parser("write_slice", help="write one config slice given as text (Snakemake's rule `config`)")
    w.add_argument("--text", required=True, help="the slice file's content (JSON, wsss.registry.slice_text)")
    w.add_argument("--out", required=True)
    return p


def _check_wildcards(stage: registry.Stage, args) -> dict:
    wildcards = {}
    for w, pattern in stage.wildcards.items():
        value = getattr(args, w)
        if value is None:
            continue
        if not re.fullmatch(pattern, str(value)):
            raise WsssInputError(f"{registry.option(w)} {value!r}: must match {pattern}")
        wildcards[w] = value
    return wildcards


def _slice(stage: registry.Stage, args, wildcards: dict):
    if args.params:
        return wconfig.load_slice(args.params, stage, wildcards)
    cfg = wconfig.load(args.config)
    if stage.per_seed:
        wildcards["seed"] = wconfig.run_seed(cfg, wildcards.get("seed"), source=args.config)
    return wconfig.stage_view(cfg, stage, wildcards)


def run_stage(stage: registry.Stage, args) -> None:
    wildcards = _check_wildcards(stage, args)
    if stage.per_seed and "seed" not in wildcards and args.params:
        raise WsssInputError("--seed is required with --params (the slice does not know the run's seeds)")
    view = _slice(stage, args, wildcards)
    kwargs: dict = dict(wildcards)
    for name, f in stage.inputs.items():
        if isinstance(f, registry.File):
            value = getattr(args, name)
            kwargs[name] = Path(value) if value is not None else None
    kwargs.update({name: Path(getattr(args, name)) for name in (*stage.outputs, *stage.scratch)})
    kwargs.update({name: getattr(args, name) for name in stage.values})
    module = importlib.import_module(stage.module)
    if "torch" in sys.modules:  # the stage runs a network: torch's threads, and the process group under torchrun
        args.threads = _threads(args.threads)
        from wsss.engine import distributed

        distributed.init()  # a no-op for one process
    else:  # a stage that only reads and scores files (CAM evaluation, CRF, data): no torch start-up (~2 s)
        args.threads = args.threads if args.threads > 0 else (os.cpu_count() or 1)
    module.run(view, threads=args.threads, **kwargs)
    unread = view.unread()
    if unread:
        logging.getLogger("wsss").warning(
            "stage %s declares config keys it did not read: %s (narrow its keys in src/wsss/registry.py)",
            stage.name,
            ", ".join(unread),
        )


def write_slices(config_file: str, out: str) -> None:
    cfg = wconfig.load(config_file)
    wconfig.check_batches(cfg, source=config_file)
    for slice_id, text in sorted(registry.all_slices(cfg).items()):
        path = Path(out) / f"{slice_id}.json"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "log", None))
    log = logging.getLogger("wsss")
    name = args.command
    try:
        if name == "validate":
            wconfig.check_batches(wconfig.load(args.config), source=args.config)
            print(f"{args.config}: valid")
            return 0
        if name == "config":
            write_slices(args.config, args.out)
            return 0
        if name == "write_slice":
            try:
                doc = json.loads(args.text)
            except json.JSONDecodeError as e:
                raise WsssInputError(f"--text: not a config slice (invalid JSON: {e})") from e
            if not isinstance(doc, dict) or {"stage", "slice", "keys", "config"} - set(doc):
                raise WsssInputError("--text: not a config slice (needs stage, slice, keys and config)")
            write_text(args.out, args.text)
            return 0
        if getattr(args, "threads", 1) < 0:
            raise WsssInputError(f"--threads {args.threads}: must be >= 0 (0 = all cores)")
        t0 = time.time()
        run_stage(args.stage, args)
        log.info("wsss %s done in %.1f s", name, time.time() - t0)
        return 0
    except WsssInputError as e:
        log.error("%s", e)
        print(f"wsss {name}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        where = e.filename or "the output folder"
        msg = (
            f"{where}: no space left on device; nothing was written there (partial output removed). "
            "Free space on that disk and re-run the stage"
        )
        log.error("%s", msg)
        print(f"wsss {name}: error: {msg}", file=sys.stderr)
        return 28
    finally:
        if "torch.distributed" in sys.modules:
            from wsss.engine import distributed

            distributed.cleanup()


if __name__ == "__main__":
    sys.exit(main())
