# wsss: the one DAG. Each stage is declared once (src/wsss/registry.py); workflow/rules/common.smk derives its rule,
# workflow/rules/<group>.smk lists the stages of a group. dvc.yaml is generated from this DAG (`wsss-dvc-yaml`), and
# a test fails if the two drift apart.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config file is given with --configfile (the run reads exactly one file).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/classify.smk"
include: "workflow/rules/cams.smk"
include: "workflow/rules/refine.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/single_stage.smk"
include: "workflow/rules/noise.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        registry.final_targets(CFG),
