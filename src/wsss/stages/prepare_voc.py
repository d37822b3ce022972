"""Stage prepare_voc: the VOC dataset folder (:func:`wsss.data.voc_prepare.prepare_voc`): splits (train, val,
train_aug; test when data.voc.test_extracted_root gives the test images), image labels from the XML annotations
cross-checked against the masks (from the masks where there is no Annotations/), SBD masks converted to
SegmentationClassAug; with data.voc.max_ids_per_split, only the first N ids of each split list."""

from __future__ import annotations

from pathlib import Path

from wsss.data import voc_prepare
from wsss.io import write_json


def run(
    cfg,
    *,
    voc: Path,
    data: Path,
    metrics: Path,
    sbd: Path | None = None,
    voc_test: Path | None = None,
    threads: int = 1,
) -> None:
    vcfg = cfg["data"]["voc"]
    report = voc_prepare.prepare_voc(
        voc,
        sbd,
        data,
        test_root=voc_test,
        expect_counts=vcfg["expect_counts"],
        cross_check=vcfg["cross_check"],
        link_mode=vcfg["link_mode"],
        max_ids_per_split=vcfg["max_ids_per_split"],
    )
    write_json(metrics, {**report, "data_source": cfg["data"]["source"]})
