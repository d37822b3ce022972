# Validation, the run's config, and the one factory of stage rules (stage_rule) - each derived from its declaration
# in src/wsss/registry.py (files, wildcards, config keys, code, resources); the rule files only say which stages
# make up their group.
import os
import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from wsss import config as wconfig  # noqa: E402
from wsss import registry  # noqa: E402

# The run's config is one file. `snakemake --configfile A B` reads B as a second config file: most often B was
# meant as a target, so say so before B's keys fail validation.
if len(workflow.configfiles) != 1:
    raise ValueError(
        f"give exactly one config file; got {len(workflow.configfiles)}: {', '.join(map(str, workflow.configfiles))}. "
        "Snakemake reads every argument after --configfile as a config file: put targets before --configfile "
        "(snakemake <targets> --configfile FILE)"
    )
# Our validator first: its message names the key and the file; then Snakemake's, on the same schema file.
wconfig.validate(dict(config), source=str(workflow.configfiles[0]))
validate(config, str(wconfig.SCHEMA_PATH))


report: "../report/workflow.rst"


# Values given with `--config key=value` would bypass the config file (and DVC): refuse them, except the keys that
# say where the data lies on this machine (wsss.config.LOCATION_KEYS, e.g. data.voc.extracted_root), which no
# stage's config slice holds.
CONFIGFILE = os.path.relpath(workflow.configfiles[0])
CFG = wconfig.with_locations(wconfig.load(CONFIGFILE), wconfig.validate(dict(config)), source=CONFIGFILE)
wconfig.check_batches(CFG, source=CONFIGFILE)

# Every stage job reads its config slice from results/<name>/params/<slice>.json, written by rule `config` from
# the values Snakemake read when it built this DAG: one snapshot of the config per run, and a key's change rewrites
# exactly the slices that hold it (and so re-runs exactly the jobs that read it, and their downstream).
SLICES = registry.all_slices(CFG)

# Jobs that parallelise over images (CRF, evaluation) take every core Snakemake was given (--cores); 1 when
# no core count is known (e.g. `snakemake --report`). Profiles may override with set-threads.
ALL_CORES = workflow._cores or 1


def _output(stage):
    """The stage's output templates, flagged for Snakemake (folders, the report)."""
    out = {}
    for name, path in registry.output_templates(stage, CFG).items():
        kind = stage.outputs[name].kind
        if kind == "dir":
            path = directory(path)
        elif kind == "report":
            path = report(
                directory(path), caption="../report/report.rst", htmlindex="index.html", category="wsss report"
            )
        out[name] = path
    return out


def stage_rule(name):
    """Define the rule of stage `name` from its declaration (src/wsss/registry.py)."""
    stage = registry.STAGES[name]
    scratch = registry.scratch_templates(stage, CFG)
    values = {k: fn(CFG) for k, fn in stage.values.items()}
    # what a GPU-capable job asks for: the local default is the CPU (gpu=0); a profile raises it, e.g.
    # `set-resources: {train_supportnet: {gpu: 4}}` -> torchrun on 4 GPUs; mem_mb / runtime (minutes) are for
    # cluster schedulers (locally Snakemake only uses them to limit concurrent jobs)
    resources = {"gpu": 0} if stage.gpu else {}
    resources.update(mem_mb=stage.mem_mb, runtime=stage.runtime)

    def inputs(wildcards):
        return registry.input_paths(stage, CFG, dict(wildcards.items()))

    def args(wildcards, input, output):
        return registry.cli_args(
            stage, dict(wildcards.items()), dict(input.items()), dict(output.items()), scratch, values
        )

    def launch(wildcards, resources):
        # one process per GPU the job holds (DDP under torchrun), the plain CLI otherwise
        return registry.launch_prefix(max(1, int(resources.gpu))) if stage.gpu else "wsss"

    rule:
        name:
            name
        input:
            unpack(inputs),
        output:
            **_output(stage),
        log:
            registry.log_path(stage, CFG),
        wildcard_constraints:
            **stage.wildcards,
        conda:
            "../../environment.yml"
        threads: ALL_CORES if stage.threads == "all" else stage.threads
        resources:
            **resources,
        params:
            code=registry.code_digest(stage.module),  # the stage's modules: editing one re-runs its jobs
            launch=launch,
            args=args,
        shell:
            f"{{params.launch}} {name} --params {{input.params:q}} --threads {{threads}} --log {{log:q}} {{params.args}}"
