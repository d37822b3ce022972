# Validation and the one place that builds every path.
import json
import os
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from wsss import config as wconfig  # noqa: E402

# Our validator first: its message names the key and the file; then Snakemake's, on the same schema file.
wconfig.validate(dict(config), source=" ".join(map(str, workflow.configfiles)) or "config")
validate(config, "../schemas/config.schema.yaml")


report: "../report/workflow.rst"

# The stages read the config *file*, so the file Snakemake loaded last is what they get. Values given with
# `--config key=value` would not reach them: refuse those, rather than run a DAG the stages do not follow.
if len(workflow.configfiles) != 1:
    raise ValueError(f"give exactly one config file (got {workflow.configfiles}); the stages read that one file")
CONFIGFILE = os.path.relpath(workflow.configfiles[0])
CFG = wconfig.load(CONFIGFILE)
if wconfig.validate(dict(config)) != CFG:
    raise ValueError(
        f"the config in memory differs from {CONFIGFILE}: overrides given with --config do not reach the stages; "
        "write them in a config file and pass it with --configfile"
    )

EXP = f"results/{CFG['name']}"
DATA = f"{EXP}/data/VOC2012"
NETS = wconfig.nets(CFG)
VARIANTS = CFG["mainnet"]["variants"]
CRF_NETS = CFG["refine"]["crf_nets"]
SEG_SOURCES = wconfig.seg_sources(CFG)
FINAL_NET = f"mainnet_{CFG['mainnet']['final_variant']}"


wildcard_constraints:
    net="supportnet|mainnet_[a-z_]+",
    variant="[a-z_]+",
    source="pseudo|gt",


def R(path):
    """A path under this experiment's results folder."""
    return f"{EXP}/{path}"


def P(*keys):
    """The config values a stage reads, as a rule param: Snakemake re-runs the job when they change, and the
    dvc.yaml generator lists the same dotted keys as the DVC stage's params. Canonical JSON (sorted keys), so
    reordering or reformatting the config file changes nothing."""
    return json.dumps({k: wconfig.get(CFG, k) for k in keys}, sort_keys=True)


# Jobs that parallelise over images (CRF, evaluation) take every core Snakemake was given (--cores); 1 when
# no core count is known (e.g. `snakemake --report`). Profiles may override with set-threads.
ALL_CORES = workflow._cores or 1


def WSSS(stage):
    """The command prefix of a stage: the CLI with the config file, the job's threads and log."""
    return f"wsss {stage} --config {CONFIGFILE} --threads {{threads}} --log {{log}}"


def ckpt(net):
    return R(f"models/{net}/checkpoint.pt")


def final_targets():
    return [R("report")]
