# The run's config slices: one file per distinct slice (src/wsss/registry.py), written from the values Snakemake read
# when it built this DAG. Every stage job reads its slice (never the config file): one snapshot of the config per run,
# and a key's change rewrites exactly the slices that hold it, so exactly the jobs that read it (and their downstream)
# re-run. DVC runs the same step as its first stage, `wsss config`.


rule config:
    output:
        registry.params_path(CFG),
    log:
        registry.fill("{exp}/logs/config_{slice}.log", registry.tokens(CFG)),
    wildcard_constraints:
        slice="|".join(map(re.escape, SLICES)),
    localrule: True
    conda:
        "../../environment.yml"
    params:
        text=lambda wildcards: SLICES[wildcards.slice],
    shell:
        "wsss write_slice --out {output:q} --text {params.text:q} 2> {log:q}"
