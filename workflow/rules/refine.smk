# Stage 3: refinement of CAMs into pseudo labels (dense CRF) on train_split, and their mIoU on cam_split.


# what the CRF labels depend on (not refine.random_walk, which only the walk reads)
CRF_KEYS = ["refine.bg_mode", "refine.bg_alpha", "refine.bg_constant", "refine.ignore_confidence", "refine.crf",
            "refine.calibrate_background", "refine.calibration_alphas", "refine.calibration_constants",
            "refine.calibration_images"]


rule crf:
    input:
        data=DATA,
        cams=S("cams/{net}"),
        cam_metrics=S("metrics/cam_{net}.json"),
    output:
        pseudo=directory(S("pseudo/{net}_crf")),
        metrics=S("metrics/pseudo_{net}_crf.json"),
    params:
        cfg=P("data.train_split", "data.cam_split", *CRF_KEYS),
        split=CFG["data"]["train_split"],
        eval_split=CFG["data"]["cam_split"],
    log:
        S("logs/crf_{net}.log"),
    resources:
        **CPU_JOB,
    threads: ALL_CORES
    shell:
        WSSS("crf") + " --net {wildcards.net} --cams {input.cams} --data {input.data} --split {params.split}"
        " --eval-split {params.eval_split} --out {output.pseudo} --metrics {output.metrics}"
        " --cam-metrics {input.cam_metrics}"


# Affinity random walk (after the CRF): an affinity network per net, trained on that net's confident labels,
# then the net's CAMs walked over its affinities. Only for the nets in refine.random_walk.nets.
RW_NETS = CFG["refine"]["random_walk"]["nets"]
RW_LABELS = CFG["refine"]["random_walk"]["label_source"]


def affinity_labels(wildcards):
    """label_source crf: the net's CRF pseudo labels are the input; cams: the stage derives confident labels
    from the CAMs into its state folder (kept outside the outputs, like the resumable training state)."""
    if RW_LABELS == "crf":
        return {"labels": S("pseudo/{net}_crf").format(seed=wildcards.seed, net=wildcards.net)}
    return {}


rule train_affinity:
    input:
        unpack(affinity_labels),
        data=DATA,
        cams=S("cams/{net}"),
        support=ckpt("supportnet"),
    output:
        ckpt=S("models/affinity_{net}/checkpoint.pt"),
        metrics=S("metrics/train_affinity_{net}.json"),
        plot=S("plots/train_affinity_{net}.json"),
    params:
        launch=launcher,
        cfg=P("data.train_split", "refine.random_walk"),
        labels=lambda wc, input: input.labels if RW_LABELS == "crf" else S("state/affinity_{net}_labels").format(**wc),
        state=S("state/affinity_{net}.pt"),
    log:
        S("logs/train_affinity_{net}.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("train-affinity", gpu=True) + " --net {wildcards.net} --data {input.data} --labels {params.labels}"
        " --cams {input.cams} --support {input.support} --out {output.ckpt} --metrics {output.metrics}"
        " --plot {output.plot} --state {params.state}"


rule random_walk:
    input:
        data=DATA,
        cams=S("cams/{net}"),
        ckpt=S("models/affinity_{net}/checkpoint.pt"),
    output:
        pseudo=directory(S("pseudo/{net}_rw")),
        metrics=S("metrics/pseudo_{net}_rw.json"),
    params:
        cfg=P("data.train_split", "data.cam_split", "refine.random_walk", "refine.crf", "refine.ignore_confidence"),
        split=CFG["data"]["train_split"],
        eval_split=CFG["data"]["cam_split"],
    log:
        S("logs/random_walk_{net}.log"),
    resources:
        **CPU_JOB,
    threads: 2
    shell:
        WSSS("random-walk") + " --net {wildcards.net} --checkpoint {input.ckpt} --cams {input.cams}"
        " --data {input.data} --split {params.split} --eval-split {params.eval_split} --out {output.pseudo}"
        " --metrics {output.metrics}"
