"""Stage eval_noisy: a model of the controlled-noise experiment (stage ``train_noisy``) on ``val_split``, with and
without CRF, under the single-stage test-time settings (:func:`wsss.methods.single_stage_inference.predict`)."""

from __future__ import annotations

from pathlib import Path

from wsss.data import voc
from wsss.io import write_json
from wsss.methods.single_stage_inference import ScoreRecorder, score_ids
from wsss.models.single_stage import load_single_stage


def run(cfg, *, seed: int, noise: str, variant: str, data: Path, ckpt: Path, metrics: Path, threads: int = 1) -> None:
    net, checkpoint = load_single_stage(ckpt)
    trained = checkpoint["config"]["single_stage"]
    tcfg = {k: cfg["single_stage"][k] for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf")}  # test time
    rec = ScoreRecorder(net, trained["focal"]).eval()
    split = cfg["data"]["val_split"]
    ids = voc.read_split(data, split)
    voc.check_ids(data, ids, need_masks=True, split=split)
    scores = score_ids(rec, ids, data=data, tcfg=tcfg, threads=threads, desc=f"eval noisy_{noise}_{variant}")
    write_json(
        metrics,
        {
            "source": f"noisy_{noise}_{variant}",
            "variant": variant,
            "noise": noise,
            "protocol": {"split": split, "images": len(ids), "ignore": "255 in GT ignored"},
            **scores,
        },
    )
