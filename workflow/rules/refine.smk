# Stage 3: refinement of CAMs into pseudo labels (dense CRF) on train_split, and their mIoU on cam_split.


rule crf:
    input:
        data=DATA,
        cams=R("cams/{net}"),
    output:
        pseudo=directory(R("pseudo/{net}_crf")),
        metrics=R("metrics/pseudo_{net}_crf.json"),
    params:
        cfg=P("data.train_split", "data.cam_split", "refine"),
        split=CFG["data"]["train_split"],
        eval_split=CFG["data"]["cam_split"],
    log:
        R("logs/crf_{net}.log"),
    threads: ALL_CORES
    shell:
        WSSS("crf") + " --net {wildcards.net} --cams {input.cams} --data {input.data} --split {params.split}"
        " --eval-split {params.eval_split} --out {output.pseudo} --metrics {output.metrics}"
