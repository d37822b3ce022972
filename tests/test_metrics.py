"""Hand-computed and property tests for wsss.metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wsss.metrics import (
    ConfusionMatrix,
    ContextShare,
    RegionRecall,
    ThresholdSweep,
    average_precision,
    cam_to_label,
    confusion_matrix,
    context_background_share,
    iou_from_confusion,
    region_recall,
)

# ------------------------------------------------------------------ confusion / IoU


def test_confusion_hand_case_with_ignored_gt():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 1, 2]], np.uint8)
    m = confusion_matrix(pred, gt, num_classes=3)
    expected = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    np.testing.assert_array_equal(m, expected)
    assert m.dtype == np.int64
    miou, iou = iou_from_confusion(m)
    # class 0: tp 1, union 1+1+1=3; class 1: tp 2, union 3; class 2: tp 1, union 2
    np.testing.assert_allclose(iou, [1 / 3, 2 / 3, 1 / 2])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_pred_ignore_policies():
    gt = np.array([0, 1, 1, 1, 255])
    pred = np.array([0, 1, 255, 255, 255])
    skip = confusion_matrix(pred, gt, num_classes=2, pred_ignore="skip")
    np.testing.assert_array_equal(skip, [[1, 0], [0, 1]])
    bg = confusion_matrix(pred, gt, num_classes=2, pred_ignore="background")
    np.testing.assert_array_equal(bg, [[1, 0], [2, 1]])
    assert iou_from_confusion(skip)[0] == 1.0
    assert iou_from_confusion(bg)[0] == pytest.approx((1 / 3 + 1 / 3) / 2)
    cm = ConfusionMatrix(2).update(pred, gt)
    assert cm.pred_ignored == 2
    assert cm.compute()["pred_ignored_share"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        confusion_matrix(pred, gt, num_classes=2, pred_ignore="nope")


def test_absent_class_excluded_from_mean():
    gt = np.array([0, 0, 2, 2])
    pred = np.array([0, 0, 2, 0])
    cm = ConfusionMatrix(num_classes=4).update(pred, gt)
    res = cm.compute()
    assert res["per_class_iou"][1] is None and res["per_class_iou"][3] is None
    assert res["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_perfect_prediction_and_metrics():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 21, size=(17, 13)).astype(np.uint8)
    gt[0, :5] = 255
    res = ConfusionMatrix().update(gt.copy(), gt).compute()
    assert res["miou"] == 1.0 and res["pixel_accuracy"] == 1.0 and res["mean_accuracy"] == 1.0
    assert res["fp_rate"] == 0.0 and res["fn_rate"] == 0.0
    assert res["fg_fp_rate"] == 0.0 and res["fg_fn_rate"] == 0.0


def test_fg_rates_and_accuracy():
    gt = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 1, 1, 0, 0, 1])
    res = ConfusionMatrix(2).update(pred, gt).compute()
    assert res["fg_fp_rate"] == pytest.approx(0.5)
    assert res["fg_fn_rate"] == pytest.approx(0.5)
    assert res["pixel_accuracy"] == pytest.approx(3 / 6)
    assert res["mean_accuracy"] == pytest.approx((0.5 + 0.5) / 2)


def test_out_of_range_values_raise():
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0, 7]), num_classes=3)
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1]), np.array([0, 1, 1]), num_classes=3)


def test_json_round_trip_and_merge():
    rng = np.random.default_rng(1)
    a = ConfusionMatrix(5, pred_ignore="skip")
    a.update(rng.integers(0, 5, 100), rng.integers(0, 5, 100))
    a.update(np.full(10, 255), np.zeros(10, int))
    b = ConfusionMatrix.from_dict(json.loads(json.dumps(a.to_dict())))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert b.pred_ignored == 10 and b.compute() == a.compute()
    json.dumps(a.compute())  # JSON-ready
    c = ConfusionMatrix(5).merge(a).merge(b)
    np.testing.assert_array_equal(c.matrix, 2 * a.matrix)
    with pytest.raises(ValueError):
        c.merge(ConfusionMatrix(5, pred_ignore="background"))
    assert a.all_reduce() is a  # no process group: no-op


def test_empty_confusion():
    res = ConfusionMatrix(3).compute()
    assert res["miou"] is None and res["pixel_accuracy"] is None
    assert math.isnan(iou_from_confusion(np.zeros((3, 3)))[0])


# ------------------------------------------------------------------ hypothesis properties

labels_pair = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        hnp.arrays(np.uint8, n, elements=st.sampled_from([0, 1, 2, 3, 255])),
        hnp.arrays(np.uint8, n, elements=st.sampled_from([0, 1, 2, 3, 255])),
    )
)


@settings(max_examples=60, deadline=None)
@given(labels_pair, st.sampled_from(["skip", "background"]), st.randoms())
def test_properties(pair, policy, rnd):
    pred, gt = pair
    cm = ConfusionMatrix(4, pred_ignore=policy).update(pred, gt)
    # total == number of counted pixels
    valid = gt != 255
    if policy == "skip":
        valid &= pred != 255
    assert cm.total == int(valid.sum())
    res = cm.compute()
    if res["miou"] is not None:
        assert 0.0 <= res["miou"] <= 1.0
    # permutation invariance
    perm = np.array(rnd.sample(range(len(gt)), len(gt)), dtype=int)
    cm_p = ConfusionMatrix(4, pred_ignore=policy).update(pred[perm], gt[perm])
    np.testing.assert_array_equal(cm.matrix, cm_p.matrix)
    # merge of two halves == whole
    k = len(gt) // 2
    h1 = ConfusionMatrix(4, pred_ignore=policy).update(pred[:k], gt[:k])
    h2 = ConfusionMatrix(4, pred_ignore=policy).update(pred[k:], gt[k:])
    h1.merge(h2)
    np.testing.assert_array_equal(h1.matrix, cm.matrix)
    assert h1.pred_ignored == cm.pred_ignored


# ------------------------------------------------------------------ CAM protocol


def test_cam_to_label_hand_case():
    cam = np.array([[[0.9, 0.1, 0.3, 0.15]], [[0.2, 0.6, 0.35, 0.0]]], np.float32)  # [2,1,4]
    keys = [5, 12]
    np.testing.assert_array_equal(cam_to_label(cam, keys, 0.15), [[5, 12, 12, 0]])  # tie 0.15 → background
    np.testing.assert_array_equal(cam_to_label(cam, keys, 0.5), [[5, 12, 0, 0]])
    np.testing.assert_array_equal(cam_to_label(np.zeros((0, 2, 2)), [], 0.1), np.zeros((2, 2)))
    assert cam_to_label(cam, keys, 0.1).dtype == np.uint8


def test_threshold_sweep_matches_separate_evaluation():
    rng = np.random.default_rng(3)
    thresholds = [0.4, 0.05, 0.15, 0.15, 0.25, 0.9, 0.5]  # unsorted, with a duplicate
    sweep = ThresholdSweep(thresholds)
    per_t = [ConfusionMatrix() for _ in thresholds]
    for _i in range(6):
        k = int(rng.integers(0, 4))
        keys = np.sort(rng.choice(np.arange(1, 21), size=k, replace=False))
        cam = rng.random((k, 9, 11)).astype(np.float16)
        cam[:, 0, :3] = 0.25  # exact ties with a threshold (0.25 is representable)
        gt = rng.choice(np.r_[0, keys, 255], size=(9, 11)).astype(np.uint8)
        sweep.update(cam, keys, gt)
        for t, cm in zip(thresholds, per_t):
            cm.update(cam_to_label(cam, keys, t), gt)
    for j, cm in enumerate(per_t):
        np.testing.assert_array_equal(sweep.matrices[j], cm.matrix)
    curve = sweep.curve()
    assert [c["threshold"] for c in curve] == thresholds
    best_t, best_cm = sweep.best()
    mious = [cm.compute()["miou"] for cm in per_t]
    assert best_t == thresholds[int(np.argmax(mious))]
    assert best_cm.compute()["miou"] == pytest.approx(max(mious))
    other = ThresholdSweep(thresholds)
    other.merge(sweep)
    np.testing.assert_array_equal(other.matrices, sweep.matrices)


# ------------------------------------------------------------------ region recall / context share


def test_region_recall_hand_case():
    gt = np.array([[3, 3, 3, 3], [0, 0, 255, 3]])
    part = np.array([[1, 1, 2, 2], [0, 0, 1, 2]])
    pred = np.array([[3, 0, 3, 255], [3, 3, 3, 4]])
    r = region_recall(pred, gt, part)
    # part: (0,0) hit, (0,1) miss; (1,2) has gt 255 → skipped → 1/2 ; body: (0,2) hit, (0,3) miss, (1,3) miss → 1/3
    assert r["part_recall"] == pytest.approx(1 / 2)
    assert r["body_recall"] == pytest.approx(1 / 3)
    acc = RegionRecall().update(pred, gt, part).update(pred, gt, part)
    assert acc.compute()["part_recall"] == pytest.approx(1 / 2) and acc.compute()["body_pixels"] == 6
    assert region_recall(pred, np.zeros_like(gt), part)["part_recall"] is None


def test_context_share_hand_case():
    ctx = {7}
    # image A contains context class 7: 4 bg pixels, 2 claimed by 7, 1 by class 2 (other), 1 stays bg
    gt_a = np.array([[0, 0, 0, 0, 7, 255]])
    pred_a = np.array([[7, 7, 2, 0, 7, 7]])
    # image B contains only class 2 (other): 3 bg pixels, 1 claimed by 2, 1 by context class 7, 1 is 255
    gt_b = np.array([[0, 0, 0, 2]])
    pred_b = np.array([[2, 7, 255, 2]])
    a = context_background_share(pred_a, gt_a, ctx)
    assert a["context_bg_share"] == pytest.approx(2 / 4) and a["other_bg_share"] is None
    acc = ContextShare(ctx).update(pred_a, gt_a).update(pred_b, gt_b)
    res = acc.compute()
    assert res["context_bg_share"] == pytest.approx(2 / 4)
    assert res["other_bg_share"] == pytest.approx(1 / 3)
    assert res["context_images"] == 1 and res["other_images"] == 1
    # image-level labels given explicitly: A also holds class 2 → counts in both groups
    both = ContextShare(ctx).update(pred_a, gt_a, image_classes=[2, 7]).compute()
    assert both["context_bg_share"] == pytest.approx(2 / 4) and both["other_bg_share"] == pytest.approx(1 / 4)
    # background-only image contributes nothing
    assert ContextShare(ctx).update(pred_b, np.zeros_like(gt_b)).compute()["context_bg_share"] is None


# ------------------------------------------------------------------ average precision


def test_average_precision_hand_case():
    scores = np.array([[0.9, 0.1], [0.8, 0.4], [0.7, 0.35], [0.6, 0.8]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 1]])
    m, ap = average_precision(scores, labels)
    assert ap[0] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert ap[1] == pytest.approx(1.0)
    assert m == pytest.approx((ap[0] + ap[1]) / 2)


def test_average_precision_ties_and_absent_class():
    scores = np.array([[0.5, 0.2], [0.5, 0.3], [0.1, 0.9]])
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    m, ap = average_precision(scores, labels)
    # tied pair first: recall 1/2 at precision 1/2; then recall 1 at precision 2/3 (sklearn semantics)
    assert ap[0] == pytest.approx(0.5 * 0.5 + 0.5 * (2 / 3))
    assert math.isnan(ap[1]) and m == pytest.approx(ap[0])
