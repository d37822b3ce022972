# Stage 5: the report — tables (MD/CSV/HTML) and figures regenerated from the metric files.


rule report:
    input:
        data=DATA,
        train=expand(R("metrics/train_{net}.json"), net=NETS),
        cam_metrics=expand(R("metrics/cam_{net}.json"), net=NETS),
        cams=expand(R("cams/{net}"), net=NETS),
        pseudo_metrics=expand(R("metrics/pseudo_{net}_crf.json"), net=CRF_NETS),
        pseudo=expand(R("pseudo/{net}_crf"), net=CRF_NETS),
        train_seg=expand(R("metrics/train_seg_{source}.json"), source=SEG_SOURCES),
        seg_metrics=expand(R("metrics/seg_{source}.json"), source=SEG_SOURCES),
        pred=expand(R("seg/{source}/val"), source=SEG_SOURCES),
    output:
        report(directory(R("report")), caption="../report/report.rst", htmlindex="index.html", category="wsss report"),
    params:
        cfg=P("name", "mainnet.variants", "mainnet.final_variant", "refine.crf_nets", "segment.upper_bound",
              "report"),
        exp=EXP,
    log:
        R("logs/report.log"),
    threads: 1
    shell:
        WSSS("report") + " --exp {params.exp} --out {output}"
