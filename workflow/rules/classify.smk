# Stage 1: SupportNet (CAM classifier), then MainNet variants trained from the frozen SupportNet (RCM / MAM).


rule train_supportnet:
    input:
        data=DATA,
    output:
        ckpt=ckpt("supportnet"),
        metrics=R("metrics/train_supportnet.json"),
        plot=R("plots/train_supportnet.json"),
    params:
        cfg=P("seed", "data.train_split", "data.val_split", "supportnet"),
        state=R("state/supportnet.pt"),
    log:
        R("logs/train_supportnet.log"),
    threads: 2
    shell:
        WSSS("train-cam") + " --net supportnet --data {input.data} --out {output.ckpt}"
        " --metrics {output.metrics} --plot {output.plot} --state {params.state}"


rule train_mainnet:
    input:
        data=DATA,
        support=ckpt("supportnet"),
    output:
        ckpt=R("models/mainnet_{variant}/checkpoint.pt"),
        metrics=R("metrics/train_mainnet_{variant}.json"),
        plot=R("plots/train_mainnet_{variant}.json"),
    params:
        cfg=P("seed", "data.train_split", "data.val_split", "supportnet.backbone", "mainnet"),
        state=R("state/mainnet_{variant}.pt"),
    log:
        R("logs/train_mainnet_{variant}.log"),
    threads: 2
    shell:
        WSSS("train-cam") + " --net mainnet_{wildcards.variant} --data {input.data} --support {input.support}"
        " --out {output.ckpt} --metrics {output.metrics} --plot {output.plot} --state {params.state}"
