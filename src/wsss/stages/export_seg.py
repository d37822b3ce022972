"""Stage: predictions of a split (e.g. VOC test, which has no public masks) in the PASCAL VOC evaluation server's
format, packed for upload.

The server expects a tar archive holding ``results/VOC2012/Segmentation/comp6_test_cls/<image id>.png``: one
indexed PNG per image, the VOC palette, class ids 0..20 (no 255), the image's own size (VOC devkit
``VOCevalseg``; "comp6" = segmentation trained with data beyond VOC, which covers ImageNet initialisation).
Predictions use the evaluation's test-time setting (``segment.scales``, ``segment.flip``) and, with
``segment.crf_export``, its CRF post-processing.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data import voc
from wsss.io import atomic_path, read_image, voc_palette, write_json
from wsss.parallel import imap_ordered
from wsss.refine.crf import crf_postprocess
from wsss.stages.eval_seg import predict_probs
from wsss.stages.train_seg import load_net

COMP = "comp6"
ARCHIVE_DIR = f"results/VOC2012/Segmentation/{COMP}_test_cls"


def _one(image_id: str, *, net, data_root: Path, scfg: dict) -> tuple[str, np.ndarray]:
    img = read_image(voc.image_path(data_root, image_id))
    probs = predict_probs(net, img, scfg["scales"], scfg["flip"])
    pred = crf_postprocess(img, probs, from_logits=False, **scfg["crf"]) if scfg["crf_export"] else probs.argmax(0)
    return image_id, np.asarray(pred, np.uint8)


def png_bytes(label: np.ndarray) -> bytes:
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def run(cfg: dict, *, checkpoint: Path, data_root: Path, split: str, out: Path, metrics_out: Path,
        threads: int = 1) -> None:
    scfg = cfg["segment"]
    net, ckpt = load_net(checkpoint)
    ids = voc.read_split(data_root, split)
    voc.check_ids(data_root, ids, need_masks=False, split=split)
    counts = np.zeros(voc.NUM_CLASSES, np.int64)
    with atomic_path(out) as tmp, open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w") as tar:  # gzip and tar mtimes 0: byte-identical archives
        fn = partial(_one, net=net, data_root=data_root, scfg=scfg)
        for image_id, pred in imap_ordered(fn, ids, workers=threads, desc=f"export {split}"):
            data = png_bytes(pred)
            info = tarfile.TarInfo(f"{ARCHIVE_DIR}/{image_id}.png")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
            counts += np.bincount(pred.ravel(), minlength=voc.NUM_CLASSES)[: voc.NUM_CLASSES]
    write_json(metrics_out, {
        "split": split,
        "images": len(ids),
        "archive": str(out),
        "format": f"{ARCHIVE_DIR}/<id>.png (VOC palette, ids 0..20)",
        "crf": scfg["crf_export"],
        "scales": list(scfg["scales"]),
        "flip": scfg["flip"],
        "predicted_pixel_share": {n: round(float(c) / max(1, counts.sum()), 6) for n, c in zip(voc.VOC_CLASSES, counts)},
        "train_labels": ckpt["config"]["labels"],
    })
