# wsss: the one DAG. Stages live in workflow/rules/ (one file per stage); paths and config in common.smk.
# dvc.yaml is generated from this DAG (`wsss dvc-yaml`), and a test fails if the two drift apart.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config file is given with --configfile (the stages read exactly one file).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/single_stage.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_targets(),
