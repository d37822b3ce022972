# Stage 5: the report — tables (MD/CSV/HTML) and figures regenerated from the metric files.


# Metric files of every seed (mean and spread); the figures show the first seed's CAMs, labels and predictions.
rule report:
    input:
        data=DATA,
        train=per_seed("metrics/train_{net}.json", net=NETS),
        cam_metrics=per_seed("metrics/cam_{net}.json", net=NETS),
        cams=first_seed("cams/{net}", net=NETS),
        pseudo_metrics=per_seed("metrics/pseudo_{net}_crf.json", net=CRF_NETS),
        pseudo=first_seed("pseudo/{net}_crf", net=CRF_NETS),
        rw_metrics=per_seed("metrics/pseudo_{net}_rw.json", net=RW_NETS),
        affinity=per_seed("metrics/train_affinity_{net}.json", net=RW_NETS),
        single_stage=single_stage_metrics(),
        train_seg=per_seed("metrics/train_seg_{source}.json", source=SEG_SOURCES),
        seg_metrics=per_seed("metrics/seg_{source}.json", source=SEG_SOURCES),
        pred=first_seed("seg/{source}/val", source=SEG_SOURCES),
    output:
        report(directory(R("report")), caption="../report/report.rst", htmlindex="index.html", category="wsss report"),
    params:
        cfg=P("name", "seeds", "mainnet.variants", "mainnet.final_variant", "refine.crf_nets", "refine.random_walk.nets",
              "segment.pseudo_labels", "segment.upper_bound",
              "single_stage.enabled", "single_stage.variants",
              "report"),
        exp=EXP,
    log:
        R("logs/report.log"),
    resources:
        **CPU_JOB,
    threads: 1
    shell:
        WSSS("report", seeded=False) + " --exp {params.exp} --out {output}"
