# Stage 2: multi-scale + flip CAMs of every network on train_split (which holds cam_split), and their quality on
# cam_split against the ground truth (threshold sweep).


rule extract_cams:
    input:
        data=DATA,
        ckpt=S("models/{net}/checkpoint.pt"),
    output:
        cams=directory(S("cams/{net}")),
    params:
        launch=launcher,
        cfg=P("data.train_split", "cams.scales", "cams.flip"),
        split=CFG["data"]["train_split"],  # pseudo labels are needed for every image DeepLab trains on
    log:
        S("logs/extract_cams_{net}.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("extract-cams", gpu=True) + " --checkpoint {input.ckpt} --data {input.data} --split {params.split}"
        " --out {output.cams}"


rule eval_cams:
    input:
        data=DATA,
        cams=S("cams/{net}"),
    output:
        metrics=S("metrics/cam_{net}.json"),
        curve=S("plots/cam_curve_{net}.json"),
    params:
        cfg=P("data.cam_split", "cams"),
        split=CFG["data"]["cam_split"],
    log:
        S("logs/eval_cams_{net}.log"),
    resources:
        **CPU_JOB,
    threads: 1
    shell:
        WSSS("eval-cams") + " --net {wildcards.net} --cams {input.cams} --data {input.data} --split {params.split}"
        " --out {output.metrics} --curve {output.curve}"
