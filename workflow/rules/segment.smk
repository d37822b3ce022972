# Stage 4: the final segmentation network, trained on the pseudo labels (and on GT: the upper bound).


def seg_labels(wildcards):
    kind = CFG["segment"]["pseudo_labels"]  # crf | rw
    return {"labels": S(f"pseudo/{FINAL_NET}_{kind}").format(seed=wildcards.seed)} if wildcards.source == "pseudo" else {}


def seg_labels_arg(wildcards, input):
    return f"--labels {input.labels}" if wildcards.source == "pseudo" else ""


rule train_seg:
    input:
        unpack(seg_labels),
        data=DATA,
        support=ckpt("supportnet"),
    output:
        ckpt=S("models/deeplab_{source}/checkpoint.pt"),
        metrics=S("metrics/train_seg_{source}.json"),
        plot=S("plots/train_seg_{source}.json"),
    params:
        launch=launcher,
        cfg=P("data.train_split", "segment.pseudo_labels", "segment.model", "segment.backbone", "segment.train",
              "segment.init_from_supportnet"),
        labels=seg_labels_arg,
        state=S("state/deeplab_{source}.pt"),
    log:
        S("logs/train_seg_{source}.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("train-seg", gpu=True) + " --source {wildcards.source} --data {input.data} {params.labels}"
        " --support {input.support} --out {output.ckpt} --metrics {output.metrics} --plot {output.plot} --state {params.state}"


rule eval_seg:
    input:
        data=DATA,
        ckpt=S("models/deeplab_{source}/checkpoint.pt"),
    output:
        metrics=S("metrics/seg_{source}.json"),
        pred=directory(S("seg/{source}/val")),
    params:
        cfg=P("data.val_split", "segment.scales", "segment.flip", "segment.crf", "segment.n_saved_predictions"),
        split=CFG["data"]["val_split"],
    log:
        S("logs/eval_seg_{source}.log"),
    resources:
        **CPU_JOB,
    threads: ALL_CORES
    shell:
        WSSS("eval-seg") + " --source {wildcards.source} --checkpoint {input.ckpt} --data {input.data}"
        " --split {params.split} --out {output.metrics} --pred-dir {output.pred}"


# Predictions of segment.export_split (VOC: test) in the evaluation server's format, for upload.
rule export_seg:
    input:
        data=DATA,
        ckpt=S("models/deeplab_pseudo/checkpoint.pt"),
    output:
        archive=S("export/voc_{split}_comp6.tar.gz"),
        metrics=S("metrics/export_{split}.json"),
    params:
        cfg=P("segment.scales", "segment.flip", "segment.crf", "segment.crf_export"),
    log:
        S("logs/export_{split}.log"),
    resources:
        **CPU_JOB,
    threads: ALL_CORES
    shell:
        WSSS("export-seg") + " --checkpoint {input.ckpt} --data {input.data} --split {wildcards.split}"
        " --out {output.archive} --metrics {output.metrics}"
