# Stage 4: the final segmentation network, trained on the pseudo labels (and on GT: the upper bound).


def seg_labels(wildcards):
    return {"labels": R(f"pseudo/{FINAL_NET}_crf")} if wildcards.source == "pseudo" else {}


def seg_labels_arg(wildcards, input):
    return f"--labels {input.labels}" if wildcards.source == "pseudo" else ""


rule train_seg:
    input:
        unpack(seg_labels),
        data=DATA,
        support=ckpt("supportnet"),
    output:
        ckpt=R("models/deeplab_{source}/checkpoint.pt"),
        metrics=R("metrics/train_seg_{source}.json"),
        plot=R("plots/train_seg_{source}.json"),
    params:
        cfg=P("seed", "data.train_split", "segment.model", "segment.backbone", "segment.train",
              "segment.init_from_supportnet"),
        labels=seg_labels_arg,
        state=R("state/deeplab_{source}.pt"),
    log:
        R("logs/train_seg_{source}.log"),
    threads: 2
    shell:
        WSSS("train-seg") + " --source {wildcards.source} --data {input.data} {params.labels}"
        " --support {input.support} --out {output.ckpt} --metrics {output.metrics} --plot {output.plot} --state {params.state}"


rule eval_seg:
    input:
        data=DATA,
        ckpt=R("models/deeplab_{source}/checkpoint.pt"),
    output:
        metrics=R("metrics/seg_{source}.json"),
        pred=directory(R("seg/{source}/val")),
    params:
        cfg=P("data.val_split", "segment.scales", "segment.flip", "segment.crf", "segment.n_saved_predictions"),
        split=CFG["data"]["val_split"],
    log:
        R("logs/eval_seg_{source}.log"),
    threads: ALL_CORES
    shell:
        WSSS("eval-seg") + " --source {wildcards.source} --checkpoint {input.ckpt} --data {input.data}"
        " --split {params.split} --out {output.metrics} --pred-dir {output.pred}"
