"""Stage export_seg: predictions of a split (e.g. VOC test, which has no public masks) in the PASCAL VOC
evaluation server's format, packed for upload.

The server expects a tar archive holding ``results/VOC2012/Segmentation/comp6_test_cls/<image id>.png``: one
indexed PNG per image, the VOC palette, class ids 0..20 (no 255), the image's own size (VOC devkit
``VOCevalseg``; "comp6" = segmentation trained with data beyond VOC, which covers ImageNet initialisation).
Predictions use the evaluation's test-time setting (``segment.scales``, ``segment.flip``) and, with
``segment.crf_export``, its CRF post-processing. The archive is byte-reproducible (no names or times of this run).
"""

from __future__ import annotations

import gzip
import io
import tarfile
from functools import partial
from pathlib import Path

import numpy as np

from wsss.data import voc
from wsss.evaluation import predict_probs
from wsss.io import atomic_path, png_bytes, read_image, write_json
from wsss.models.deeplab import load_segmenter
from wsss.parallel import imap_ordered
from wsss.refine.crf import crf_postprocess

COMP = "comp6"
ARCHIVE_DIR = f"results/VOC2012/Segmentation/{COMP}_test_cls"


def _one(image_id: str, *, model, data: Path, scfg) -> tuple[str, np.ndarray]:
    img = read_image(voc.image_path(data, image_id))
    probs = predict_probs(model, img, scfg["scales"], scfg["flip"])
    pred = crf_postprocess(img, probs, from_logits=False, **scfg["crf"]) if scfg["crf_export"] else probs.argmax(0)
    return image_id, np.asarray(pred, np.uint8)


def run(cfg, *, seed: int, split: str, data: Path, ckpt: Path, archive: Path, metrics: Path, threads: int = 1) -> None:
    scfg = cfg["segment"].to_dict()
    model, checkpoint = load_segmenter(ckpt)
    ids = voc.read_split(data, split)
    voc.check_ids(data, ids, need_masks=False, split=split)
    counts = np.zeros(voc.NUM_CLASSES, np.int64)
    # gzip without a file name or time, tar entries with mtime 0: byte-identical archives
    with (
        atomic_path(archive) as tmp,
        open(tmp, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w") as tar,
    ):
        fn = partial(_one, model=model, data=data, scfg=scfg)
        for image_id, pred in imap_ordered(fn, ids, workers=threads, desc=f"export {split}"):
            payload = png_bytes(pred)
            info = tarfile.TarInfo(f"{ARCHIVE_DIR}/{image_id}.png")
            info.size, info.mtime, info.mode = len(payload), 0, 0o644
            tar.addfile(info, io.BytesIO(payload))
            counts += np.bincount(pred.ravel(), minlength=voc.NUM_CLASSES)[: voc.NUM_CLASSES]
    write_json(
        metrics,
        {
            "split": split,
            "images": len(ids),
            "archive": str(archive),
            "format": f"{ARCHIVE_DIR}/<id>.png (VOC palette, ids 0..20)",
            "crf": scfg["crf_export"],
            "scales": list(scfg["scales"]),
            "flip": scfg["flip"],
            "predicted_pixel_share": {
                n: round(float(c) / max(1, counts.sum()), 6) for n, c in zip(voc.VOC_CLASSES, counts)
            },
            "train_labels": checkpoint["config"]["labels"],
        },
    )
