# Stage 1: SupportNet (CAM classifier), then MainNet variants trained from the frozen SupportNet (RCM / MAM).


rule train_supportnet:
    input:
        data=DATA,
    output:
        ckpt=ckpt("supportnet"),
        metrics=S("metrics/train_supportnet.json"),
        plot=S("plots/train_supportnet.json"),
    params:
        launch=launcher,
        cfg=P("data.train_split", "data.val_split", "supportnet"),
        state=S("state/supportnet.pt"),
    log:
        S("logs/train_supportnet.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("train-cam", gpu=True) + " --net supportnet --data {input.data} --out {output.ckpt}"
        " --metrics {output.metrics} --plot {output.plot} --state {params.state}"


rule train_mainnet:
    input:
        data=DATA,
        support=ckpt("supportnet"),
    output:
        ckpt=S("models/mainnet_{variant}/checkpoint.pt"),
        metrics=S("metrics/train_mainnet_{variant}.json"),
        plot=S("plots/train_mainnet_{variant}.json"),
    params:
        launch=launcher,
        cfg=P("data.train_split", "data.val_split", "supportnet.backbone", "mainnet"),
        state=S("state/mainnet_{variant}.pt"),
    log:
        S("logs/train_mainnet_{variant}.log"),
    resources:
        **GPU_JOB,
    threads: 2
    shell:
        WSSS("train-cam", gpu=True) + " --net mainnet_{wildcards.variant} --data {input.data} --support {input.support}"
        " --out {output.ckpt} --metrics {output.metrics} --plot {output.plot} --state {params.state}"
