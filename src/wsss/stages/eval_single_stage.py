"""Stage eval_single_stage: a single-stage (AA&LR) variant on ``val_split`` with and without CRF
(:func:`wsss.methods.single_stage_inference.predict`), and its masks scored on ``cam_split`` (the 1-stage "train" numbers:
its pseudo-mask quality).

On ``cam_split`` (``single_stage.pseudo_eval``): the same multi-scale masks, cleaned with the GT image labels instead
of the score cut (1-stage's ``USE_GT_LABELS`` for its train-set numbers), with and without CRF; and the PAMR pseudo
GT the model trains on (single scale, the training code path), scored with its 255 pixels skipped and their share
reported (as the two-stage pseudo labels of stage ``crf``). Images run on all cores (``threads`` worker processes).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from wsss import metrics as metrics_
from wsss.data import voc
from wsss.data.datasets import multi_hot
from wsss.evaluation import held_out, per_class_dict, score_predictions, scores_with_crf
from wsss.io import atomic_dir, read_image, read_label_png, write_json
from wsss.methods.single_stage import SingleStageObjective
from wsss.methods.single_stage_inference import ScoreRecorder, pamr_pseudo_label, predict, predict_image
from wsss.models.single_stage import load_single_stage
from wsss.parallel import imap_ordered


def _pseudo_one(
    image_id: str, *, rec: ScoreRecorder, objective: SingleStageObjective, data: Path, tcfg: dict, labels: dict
):
    img = read_image(voc.image_path(data, image_id))
    y = multi_hot(labels[image_id]).numpy()
    pred, pred_crf = predict(rec, img, tcfg, labels=y)
    return image_id, pred, pred_crf, pamr_pseudo_label(rec.net, objective, img, y)


def _pseudo_scores(
    rec: ScoreRecorder,
    objective: SingleStageObjective,
    variant: str,
    data: Path,
    split: str,
    calibration_fraction: float,
    tcfg: dict,
    threads: int,
) -> dict:
    ids = voc.read_split(data, split)
    # nothing is chosen here, but these numbers sit beside the two-stage ones: the same scored ids
    calib, ids = held_out(ids, calibration_fraction, split)
    if tcfg["pseudo_eval"]["max_images"]:
        ids = ids[: tcfg["pseudo_eval"]["max_images"]]
    voc.check_ids(data, ids, need_masks=True, split=split)
    cm, cm_crf = metrics_.ConfusionMatrix(), metrics_.ConfusionMatrix()
    cm_pgt = metrics_.ConfusionMatrix(pred_ignore="skip")
    fn = partial(_pseudo_one, rec=rec, objective=objective, data=data, tcfg=tcfg, labels=voc.image_labels(data, ids))
    for image_id, pred, pred_crf, pgt in imap_ordered(fn, ids, workers=threads, desc=f"pseudo single_stage_{variant}"):
        gt = read_label_png(voc.mask_path(data, image_id))
        cm.update(pred, gt)
        cm_crf.update(pred_crf, gt)
        cm_pgt.update(pgt, gt)
    res, res_crf, res_pgt = cm.compute(), cm_crf.compute(), cm_pgt.compute()
    return {
        "split": split,
        "images": len(ids),
        "ids": f"the first {len(ids)} ids of {split} after its {len(calib)} calibration ids",
        "masks": {
            "protocol": "multi-scale + flip masks as on val, classes cut by the GT image labels (1-stage USE_GT_LABELS)",
            **scores_with_crf(res, res_crf),
        },
        "pamr_pseudo_gt": {
            "protocol": (
                "single-scale masks -> PAMR -> pseudo_gt on the label grid (the training targets), "
                "nearest-upsampled; pseudo-label 255 pixels skipped"
            ),
            "miou": res_pgt["miou"],
            "ignore_fraction": res_pgt["pred_ignored_share"],
            "per_class_iou": per_class_dict(res_pgt["per_class_iou"]),
        },
    }


def run(cfg, *, seed: int, variant: str, data: Path, ckpt: Path, metrics: Path, pred: Path, threads: int = 1) -> None:
    net, checkpoint = load_single_stage(ckpt)
    trained = checkpoint["config"]["single_stage"]  # the model's own architecture and losses ...
    tcfg = cfg["single_stage"].to_dict()  # ... and this config's test-time settings
    rec = ScoreRecorder(net, trained["focal"]).eval()
    split = cfg["data"]["val_split"]
    ids = voc.read_split(data, split)
    voc.check_ids(data, ids, need_masks=True, split=split)
    with atomic_dir(pred) as tmp:
        fn = partial(predict_image, rec=rec, data=data, tcfg=tcfg)
        res, res_crf = score_predictions(
            fn,
            ids,
            data_root=data,
            save_dir=tmp,
            n_saved=tcfg["n_saved_predictions"],
            threads=threads,
            desc=f"eval single_stage_{variant}",
        )
        pseudo = None
        if tcfg["pseudo_eval"]["enabled"]:
            objective = SingleStageObjective(net, variant, trained)
            objective.epoch = trained["warmup_epochs"]  # past the warm-up: the code path that makes the pseudo GT
            pseudo = _pseudo_scores(
                rec,
                objective,
                variant,
                data,
                cfg["data"]["cam_split"],
                cfg["data"]["calibration_fraction"],
                tcfg,
                threads,
            )
    write_json(
        metrics,
        {
            "source": f"single_stage_{variant}",
            "variant": variant,
            "protocol": {
                "split": split,
                "images": len(ids),
                "scales": list(tcfg["scales"]),
                "flip": tcfg["flip"],
                "fp_cut_score": tcfg["fp_cut_score"],
                "bg_pow": tcfg["bg_pow"],
                "crf": tcfg["crf"],
                "model": "single-stage (1-stage-wseg structure) over " + trained["backbone"]["name"],
                "ignore": "255 in GT ignored",
                "image_labels_at_test": "not used (classes cut by the model's own class scores, 1-stage FP_CUT_SCORE)",
            },
            **scores_with_crf(res, res_crf),
            "pseudo_labels": pseudo,
            "train_final": {k: v for k, v in checkpoint["history"][-1].items() if k not in ("epoch", "seconds")},
        },
    )
