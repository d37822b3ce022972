# Stage 0: the dataset in VOC layout (the embedded synthetic benchmark, generated deterministically).


rule make_data:
    output:
        data=directory(DATA),
        metrics=R("metrics/data.json"),
    params:
        cfg=P("data"),
    log:
        R("logs/make_data.log"),
    threads: 1
    shell:
        WSSS("make-data") + " --out {output.data} --metrics {output.metrics}"
