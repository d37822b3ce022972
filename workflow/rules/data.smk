# Stage 0: the dataset in VOC layout — the embedded synthetic benchmark (make_data, generated deterministically), or
# real PASCAL VOC 2012 (+ SBD): download (resume, mirrors, checksums) -> extract -> prepare_voc (splits, labels,
# SBD masks). Declarations: src/wsss/registry.py.

if CFG["data"]["source"] == "synthetic":
    stage_rule("make_data")
else:
    stage_rule("download")
    stage_rule("prepare_voc")
