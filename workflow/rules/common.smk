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


SEEDS = CFG["seeds"]


wildcard_constraints:
    seed=r"\d+",
    net="supportnet|mainnet_[a-z_]+",
    variant="[a-z_]+",
    source="pseudo|gt",
    split="[A-Za-z0-9_]+",


def R(path):
    """A path under this experiment's results folder, shared by every seed (data, report)."""
    return f"{EXP}/{path}"


def S(path):
    """A path of one seed's run: results/<name>/seed<k>/<path>, with the `{seed}` wildcard left open."""
    return f"{EXP}/seed{{seed}}/{path}"


def per_seed(path, **wildcards):
    """``S(path)`` for every configured seed (and the given wildcard values), for rules that gather."""
    return expand(S(path), seed=SEEDS, **wildcards)


def first_seed(path, **wildcards):
    """``S(path)`` for the first configured seed only (what the single-run figures show)."""
    return expand(S(path), seed=SEEDS[:1], **wildcards)


def P(*keys):
    """The config values a stage reads, as a rule param: Snakemake re-runs the job when they change, and the
    dvc.yaml generator lists the same dotted keys as the DVC stage's params. Canonical JSON (sorted keys), so
    reordering or reformatting the config file changes nothing."""
    return json.dumps({k: wconfig.get(CFG, k) for k in keys}, sort_keys=True)


# Jobs that parallelise over images (CRF, evaluation) take every core Snakemake was given (--cores); 1 when
# no core count is known (e.g. `snakemake --report`). Profiles may override with set-threads.
ALL_CORES = workflow._cores or 1


def WSSS(stage, seeded=True, gpu=False):
    """The command prefix of a stage: the CLI with the config file, the job's threads and log, and (for a
    per-seed stage) the run's seed from the `{seed}` wildcard. A ``gpu`` stage starts with ``{params.launch}``:
    ``wsss`` for 0 or 1 GPU, ``torchrun --standalone --nproc_per_node N -m wsss.cli --`` for N > 1 (its rule
    declares ``resources: gpu`` and ``params: launch=launcher``)."""
    seed = " --seed {wildcards.seed}" if seeded else ""
    prog = "{params.launch}" if gpu else "wsss"
    return f"{prog} {stage} --config {CONFIGFILE} --threads {{threads}} --log {{log}}{seed}"


from wsss.engine.distributed import launch_prefix  # noqa: E402


def launcher(wildcards, resources):
    """The program that runs a GPU stage: one process per GPU the job holds (DDP), the plain CLI otherwise."""
    return launch_prefix(max(1, int(resources.gpu)))


# What a GPU-capable job asks for. The local default is the CPU (gpu=0); a profile raises it, e.g.
# profiles/slurm: `set-resources: {train_supportnet: {gpu: 4}}` -> torchrun on 4 GPUs. mem_mb / runtime (minutes)
# are what a cluster scheduler needs; locally Snakemake only uses them to limit concurrent jobs.
GPU_JOB = dict(gpu=0, mem_mb=8000, runtime=240)
CPU_JOB = dict(mem_mb=4000, runtime=60)


def ckpt(net):
    return S(f"models/{net}/checkpoint.pt")


def final_targets():
    """The report, and (with segment.export_split) each seed's archive for the VOC evaluation server."""
    split = CFG["segment"]["export_split"] if CFG["segment"]["enabled"] else None
    return [R("report")] + (per_seed(f"export/voc_{split}_comp6.tar.gz") if split else [])
