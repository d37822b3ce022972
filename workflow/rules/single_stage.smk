# The second method (issue 5): AA&LR's single-stage model, trained end to end from image labels, one job per
# ablation variant (baseline, aa, lr, aa_lr) over the one `single_stage` config section; then multi-scale + flip
# inference on val with and without CRF, and its masks / PAMR pseudo GT scored on cam_split.

SS_VARIANTS = CFG["single_stage"]["variants"] if CFG["single_stage"]["enabled"] else []


def single_stage_metrics():
    """Every seed's evaluation metrics of every configured single-stage variant (report inputs)."""
    return per_seed("metrics/seg_single_stage_{variant}.json", variant=SS_VARIANTS)


def single_stage_support(wildcards):
    return {"support": ckpt("supportnet").format(seed=wildcards.seed)} if CFG["single_stage"]["init_from_supportnet"] else {}


def single_stage_support_arg(wildcards, input):
    return f"--support {input.support}" if CFG["single_stage"]["init_from_supportnet"] else ""


rule train_single_stage:
    input:
        unpack(single_stage_support),
        data=DATA,
    output:
        ckpt=S("models/single_stage_{variant}/checkpoint.pt"),
        metrics=S("metrics/train_single_stage_{variant}.json"),
        plot=S("plots/train_single_stage_{variant}.json"),
    params:
        cfg=P("data.train_split", "single_stage.variants", "single_stage.backbone", "single_stage.init_from_supportnet",
              "single_stage.freeze_backbone_bn", "single_stage.head_channels", "single_stage.atrous_rates",
              "single_stage.embedding_dim", "single_stage.sg_psi", "single_stage.background",
              "single_stage.background_logit", "single_stage.train", "single_stage.augment",
              "single_stage.warmup_epochs", "single_stage.focal", "single_stage.label_stride", "single_stage.pamr",
              "single_stage.pseudo_gt", "single_stage.mask_loss", "single_stage.aa", "single_stage.lr"),
        support=single_stage_support_arg,
        state=S("state/single_stage_{variant}.pt"),
        launch=launcher,
    wildcard_constraints:
        variant="baseline|aa|lr|aa_lr",
    log:
        S("logs/train_single_stage_{variant}.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("train-single-stage", gpu=True) + " --variant {wildcards.variant} --data {input.data} {params.support}"
        " --out {output.ckpt} --metrics {output.metrics} --plot {output.plot} --state {params.state}"


rule eval_single_stage:
    input:
        data=DATA,
        ckpt=S("models/single_stage_{variant}/checkpoint.pt"),
    output:
        metrics=S("metrics/seg_single_stage_{variant}.json"),
        pred=directory(S("seg/single_stage_{variant}/val")),
    params:
        cfg=P("data.val_split", "data.cam_split", "single_stage.scales", "single_stage.flip",
              "single_stage.fp_cut_score", "single_stage.bg_pow", "single_stage.crf",
              "single_stage.n_saved_predictions", "single_stage.pseudo_eval"),
        split=CFG["data"]["val_split"],
        cam_split=CFG["data"]["cam_split"],
    wildcard_constraints:
        variant="baseline|aa|lr|aa_lr",
    log:
        S("logs/eval_single_stage_{variant}.log"),
    resources:
        **CPU_JOB,
    threads: ALL_CORES
    shell:
        WSSS("eval-single-stage") + " --variant {wildcards.variant} --checkpoint {input.ckpt} --data {input.data}"
        " --split {params.split} --cam-split {params.cam_split} --out {output.metrics} --pred-dir {output.pred}"
