"""Stage eval_select: a model of the held-out AA-weight selection (stage ``train_select``) scored with the val-time
inference (:func:`wsss.methods.single_stage_inference.predict`: multi-scale + flip, classes cut by the model's own
scores, with and without CRF) on two disjoint sets: the calibration subset of ``cam_split`` (the first
``data.calibration_fraction`` of its ids), on which the report chooses the weight, and ``val_split``, which the
report shows for the pick and never chooses on."""

from __future__ import annotations

from pathlib import Path

from wsss.data import voc
from wsss.evaluation import held_out
from wsss.io import WsssInputError, write_json
from wsss.methods.single_stage_inference import ScoreRecorder, score_ids
from wsss.models.single_stage import load_single_stage


def run(cfg, *, seed: int, variant: str, aaw: str, data: Path, ckpt: Path, metrics: Path, threads: int = 1) -> None:
    net, checkpoint = load_single_stage(ckpt)
    trained = checkpoint["config"]["single_stage"]
    if float(trained["aa"]["weight"]) != float(aaw):
        raise WsssInputError(
            f"{ckpt}: trained with AA weight {trained['aa']['weight']}, not the job's {aaw}; re-run train_select for it"
        )
    tcfg = {k: cfg["single_stage"][k] for k in ("scales", "flip", "fp_cut_score", "bg_pow", "crf")}  # test time
    rec = ScoreRecorder(net, trained["focal"]).eval()
    cam_split, val_split = cfg["data"]["cam_split"], cfg["data"]["val_split"]
    calib, _ = held_out(voc.read_split(data, cam_split), cfg["data"]["calibration_fraction"], cam_split)
    val = voc.read_split(data, val_split)
    out = {}
    for key, split, ids in (("heldout", cam_split, calib), ("val", val_split, val)):
        voc.check_ids(data, ids, need_masks=True, split=split)
        desc = f"eval select {variant} aa {aaw} {key}"
        scores = score_ids(rec, ids, data=data, tcfg=tcfg, threads=threads, desc=desc)
        out[key] = {"split": split, "images": len(ids), **scores}
    out["heldout"]["ids"] = f"the first {len(calib)} ids of {cam_split} (its calibration subset)"
    write_json(
        metrics,
        {
            "source": f"select_{variant}_aa{aaw}",
            "variant": variant,
            "aa_weight": float(aaw),
            "protocol": {
                "chosen_on": "heldout (GT masks of the calibration subset only)",
                "reported": "val (never chosen on)",
                "ignore": "255 in GT ignored",
            },
            **out,
        },
    )
