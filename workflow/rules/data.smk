# Stage 0: the dataset in VOC layout — the embedded synthetic benchmark (generated deterministically), or real
# PASCAL VOC 2012 (+ SBD): download (resume, mirrors, checksums) → extract → prepare (splits, XML labels, SBD masks).

if CFG["data"]["source"] == "synthetic":

    rule make_data:
        output:
            data=directory(DATA),
            metrics=R("metrics/data.json"),
        params:
            cfg=P("data.source", "data.synthetic"),
        log:
            R("logs/make_data.log"),
        threads: 1
        shell:
            WSSS("make-data", seeded=False) + " --out {output.data} --metrics {output.metrics}"

else:
    VOC_CFG = CFG["data"]["voc"]

    def raw_root(archive):
        """An extracted archive: the configured folder if given (used as is), else the download rule's output."""
        given = VOC_CFG["sbd_extracted_root" if archive == "sbd" else "extracted_root"]
        return given or f"{VOC_CFG['extract_dir']}/{archive}"

    def prepare_inputs(wildcards):
        inputs = {"voc": raw_root("voc2012_trainval")}
        if CFG["data"]["source"] == "voc_sbd":
            inputs["sbd"] = raw_root("sbd")
        return inputs

    def sbd_arg(wildcards, input):
        return f"--sbd {input.sbd}" if CFG["data"]["source"] == "voc_sbd" else ""

    rule download:
        output:
            directory(f"{VOC_CFG['extract_dir']}/{{archive}}"),
        wildcard_constraints:
            archive="voc2012_trainval|sbd",
        params:
            cfg=P("data.voc.archive", "data.voc.sbd_archive", "data.voc.urls", "data.voc.md5", "data.voc.download_dir"),
        log:
            R("logs/download_{archive}.log"),
        threads: 1
        shell:
            WSSS("download", seeded=False) + " --archive {wildcards.archive} --out {output}"

    rule make_data:
        input:
            unpack(prepare_inputs),
        output:
            data=directory(DATA),
            metrics=R("metrics/data.json"),
        params:
            cfg=P("data.source", "data.voc.expect_counts", "data.voc.cross_check", "data.voc.link_mode"),
            sbd=sbd_arg,
        log:
            R("logs/make_data.log"),
        threads: 1
        shell:
            WSSS("prepare-voc", seeded=False) + " --voc {input.voc} {params.sbd} --out {output.data} --metrics {output.metrics}"
