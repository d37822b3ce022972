# Stage 2: multi-scale + flip CAMs of every network on train_split (which holds cam_split), and their quality on
# cam_split against the ground truth (threshold sweep).


rule extract_cams:
    input:
        data=DATA,
        ckpt=R("models/{net}/checkpoint.pt"),
    output:
        cams=directory(R("cams/{net}")),
    params:
        cfg=P("data.train_split", "cams.scales", "cams.flip"),
        split=CFG["data"]["train_split"],  # pseudo labels are needed for every image DeepLab trains on
    log:
        R("logs/extract_cams_{net}.log"),
    threads: 2
    shell:
        WSSS("extract-cams") + " --checkpoint {input.ckpt} --data {input.data} --split {params.split}"
        " --out {output.cams}"


rule eval_cams:
    input:
        data=DATA,
        cams=R("cams/{net}"),
    output:
        metrics=R("metrics/cam_{net}.json"),
        curve=R("plots/cam_curve_{net}.json"),
    params:
        cfg=P("data.cam_split", "cams"),
        split=CFG["data"]["cam_split"],
    log:
        R("logs/eval_cams_{net}.log"),
    threads: 1
    shell:
        WSSS("eval-cams") + " --net {wildcards.net} --cams {input.cams} --data {input.data} --split {params.split}"
        " --out {output.metrics} --curve {output.curve}"
