"""Rescaling-invariant CAM measures (issue 14): geometry of the rings and the trimap, the matched-rate threshold,
and the negative control: CAM^γ and other strictly increasing maps leave every invariant number unchanged, while
the threshold-swept numbers beside them do move."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_stage
from scipy import ndimage

from wsss import cam_measures, config
from wsss.data import synthetic, voc
from wsss.io import read_label_png, save_npz

# strictly increasing maps of [0, 1] CAM values (float64, applied before the float32 cast)
MONOTONE = {
    "gamma 0.5": lambda x: x**0.5,
    "gamma 2": lambda x: x**2,
    "gamma 3": lambda x: x**3,
    "log": lambda x: np.log(x + 1e-3),
    "affine": lambda x: 7.0 * x - 2.0,
    "logistic": lambda x: 1.0 / (1.0 + np.exp(-12.0 * (x - 0.4))),
}


def test_rings_are_the_background_at_the_stated_distance():
    gt = np.zeros((21, 21), np.uint8)
    gt[10, 10] = 3
    inner = cam_measures.ring_mask(gt, (1, 2))
    outer = cam_measures.ring_mask(gt, (3, 4))
    # distances 1, sqrt 2, 2 (4 pixels each); then sqrt 5 (8), sqrt 8 (4), 3 (4), sqrt 10 (8), sqrt 13 (8), 4 (4)
    assert inner.sum() == 12 and outer.sum() == 36
    assert not (inner & outer).any() and not inner[10, 10]
    # a 255 border counts as labelled: the ring starts outside it
    gt[9:12, 9:12] = 255
    gt[10, 10] = 3
    assert not cam_measures.ring_mask(gt, (1, 2))[9:12, 9:12].any()
    assert cam_measures.ring_mask(gt, (1, 2))[8, 10] and not cam_measures.ring_mask(gt, (1, 2))[6, 10]
    # no labelled pixel: no ring
    assert not cam_measures.ring_mask(np.zeros((5, 5), np.uint8), (1, 2)).any()


def test_trimap_band_follows_the_label_boundary():
    gt = np.zeros((20, 20), np.uint8)
    gt[:, 10:] = 1
    band = cam_measures.trimap_band(gt, 2)
    cols = np.nonzero(band.any(0))[0]
    assert band.all(0)[cols].all() and list(cols) == [7, 8, 9, 10, 11, 12]
    assert not cam_measures.trimap_band(np.zeros((4, 4), np.uint8), 3).any()


def test_matched_threshold_gives_the_rate_and_ties_stay_out():
    s = np.arange(1, 11, dtype=np.float32) / 10
    t = cam_measures.matched_threshold(s, 0.3)
    assert np.count_nonzero(s > t) == 3
    assert np.count_nonzero(s > cam_measures.matched_threshold(s, 0.99)) == 10
    assert np.count_nonzero(s > cam_measures.matched_threshold(s, 0.01)) == 0
    assert np.count_nonzero(np.zeros(8, np.float32) > cam_measures.matched_threshold(np.zeros(8), 0.5)) == 0
    with pytest.raises(ValueError, match="no ring pixel"):
        cam_measures.matched_threshold(np.zeros(0), 0.5)


def _scene(rng: np.random.Generator, n: int = 6, size: int = 48):
    """Images with one disc-shaped object each (class 1 + i % 3), its discriminative part a small disc near one
    end, a 1 px 255 border; a context fill in the top rows of every other image."""
    out = []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(18, 30), rng.integers(18, 30), rng.integers(9, 14)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        c = 1 + i % 3
        gt = np.where(inside, c, 0).astype(np.uint8)
        border = ndimage.binary_dilation(inside) & ~inside
        gt[border] = 255
        py, px = cy, cx - r + 3
        part_disc = ((yy - py) ** 2 + (xx - px) ** 2 <= 9) & inside
        part = np.where(inside, 2, 0).astype(np.uint8)
        part[part_disc] = 1
        part[border] = 255
        out.append((c, gt, part, [0, 10] if i % 2 else None, np.hypot(yy - py, xx - px)))
    return out


def _cams(scene, rng, spread: float, fill: float = 0.0):
    """A part-biased CAM per image: exp(-distance to the part / spread), plus ``fill`` on the object's own pixels
    (an expansion no rescaling can make), plus noise, max-normalised."""
    cams = []
    for c, gt, _, _, dist in scene:
        cam = np.exp(-dist / spread) + fill * (gt == c) + 0.15 * rng.random(gt.shape)
        cams.append((np.array([c]), (cam / cam.max())[None]))
    return cams


def _measures(scene, cams, f=None, rate=0.3):
    m = cam_measures.MatchedRate(rate, [(1, 2), (3, 4)], distance_bins=(4, 8), trimap_width=3)
    for (_, gt, part, rows, _), (keys, cam) in zip(scene, cams):
        m.add((cam if f is None else f(cam.astype(np.float64))).astype(np.float32), keys, gt, part, rows)
    return m.compute()


def test_every_measure_is_unchanged_by_a_monotone_map_of_the_cam():
    rng = np.random.default_rng(0)
    scene = _scene(rng)
    # float16-quantised CAM values: a map cannot merge two distinct values into one float32
    cams = [(k, c.astype(np.float16).astype(np.float64)) for k, c in _cams(scene, rng, spread=6.0)]
    ref = _measures(scene, cams)
    r12 = ref["rings"]["1-2"]
    assert 0.25 < r12["achieved_rate"] <= 0.3
    assert r12["part_recall"] > r12["body_recall"]  # the CAM is part-biased
    for key in ("fg_recall", "body_recall", "context_fp", "bg_fp", "boundary_miou"):
        assert 0 < r12[key] < 1, key
    for name, f in MONOTONE.items():
        assert _measures(scene, cams, f) == ref, name


def test_a_cam_that_fills_the_object_raises_matched_body_recall_far_from_the_part():
    rng = np.random.default_rng(1)
    scene = _scene(rng)
    narrow = _measures(scene, _cams(scene, rng, 3.0))
    wide = _measures(scene, _cams(scene, rng, 3.0, fill=0.4))
    # a slower decay from the part is only a rescaling of the distance: it ranks the ring near the part above the
    # far body just the same, so it cannot buy body recall far from the part at a matched ring rate
    slow = _measures(scene, _cams(scene, rng, 12.0))
    n, w, s = narrow["rings"]["1-2"], wide["rings"]["1-2"], slow["rings"]["1-2"]
    assert w["body_recall"] > n["body_recall"] + 0.2
    assert w["body_recall_by_distance"][">8"] > n["body_recall_by_distance"][">8"] + 0.3
    assert s["body_recall_by_distance"][">8"] < n["body_recall_by_distance"][">8"] + 0.1
    assert w["boundary_miou"] > n["boundary_miou"]
    assert list(w["body_recall_by_distance"]) == ["0-4", "4-8", ">8"]


def test_a_perfect_cam_scores_a_perfect_boundary_and_no_ring_pixel():
    rng = np.random.default_rng(2)
    scene = _scene(rng, n=3)
    cams = [(np.array([c]), (gt == c).astype(np.float64)[None]) for c, gt, *_ in scene]
    r = _measures(scene, cams)["rings"]["1-2"]
    # all ring scores tie at 0: none is above the threshold, whatever the rate
    assert r["achieved_rate"] == 0 and r["bg_fp"] == 0
    assert r["fg_recall"] == 1 and r["body_recall"] == 1 and r["boundary_miou"] == 1


# ---------------------------------------------------------------------------------------------- the stage

TINY = {
    "name": "tiny",
    "data": {"synthetic": {"n_train": 8, "n_val": 2, "size_min": 64, "size_max": 72, "context_prob": 0.8}},
    "cams": {"thresholds": [0.1, 0.2, 0.3, 0.4, 0.5], "fixed_threshold": 0.2, "matched": {"fp_rate": 0.3}},
}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    cfg = config.validate(json.loads(json.dumps(TINY)))
    root = tmp_path_factory.mktemp("measures") / "VOC2012"
    synthetic.generate(root, cfg["data"]["synthetic"])
    return cfg, root


def _write_cams(root, folder, f):
    """Part-biased CAMs from the synthetic part masks (decaying with the distance to the disc, plus noise),
    float16-quantised, mapped by ``f``."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for image_id in voc.read_split(root, "train"):
        gt = read_label_png(voc.mask_path(root, image_id))
        part = read_label_png(root / "PartMasks" / f"{image_id}.png", num_classes=3)
        keys = np.array(sorted(set(np.unique(gt).tolist()) - {0, 255}))
        planes = []
        for c in keys:
            disc = (part == 1) & (gt == c)
            d = ndimage.distance_transform_edt(~disc) if disc.any() else np.full(gt.shape, 30.0)
            planes.append(np.exp(-d / 5.0) + 0.1 * rng.random(gt.shape))
        cam = np.stack(planes) / max(p.max() for p in planes)
        cam = f(cam.astype(np.float16).astype(np.float64)).astype(np.float32)
        save_npz(folder / f"{image_id}.npz", keys=keys, cam=cam)


def test_eval_cams_invariant_section_is_a_negative_control(tiny_data, tmp_path):
    cfg, root = tiny_data
    out = {}
    for name, f in {
        "identity": lambda x: x,
        "gamma 0.5": MONOTONE["gamma 0.5"],
        "gamma 2": MONOTONE["gamma 2"],
    }.items():
        cams = tmp_path / name.replace(" ", "_")
        _write_cams(root, cams, f)
        metrics = tmp_path / f"{cams.name}.json"
        run_stage(
            "eval_cams", cfg, seed=0, net="supportnet", data=root, cams=cams, metrics=metrics, curve=tmp_path / "c.json"
        )
        out[name] = json.loads(metrics.read_text())
    ref = out["identity"]["matched_rate"]
    assert ref["rate"] == 0.3 and set(ref["rings"]) == {"1-2", "3-4"}
    assert ref["rings"]["1-2"]["body_recall"] is not None and ref["rings"]["1-2"]["context_fp"] is not None
    for name in ("gamma 0.5", "gamma 2"):
        assert out[name]["matched_rate"] == ref, name
    # the threshold-swept numbers beside them are not invariant: the control would catch a measure that moved
    fixed = [out[n]["miou_fixed_threshold"] for n in out]
    assert len(set(fixed)) == 3, fixed


def test_the_gt_filled_oracle_is_the_headroom_of_the_cam(tiny_data, tmp_path):
    """eval_cams' gt_filled section: a CAM of zeros filled to 0.5 on its objects is the ground truth itself
    (mIoU 1 at any threshold below 0.5), and filling never scores below the CAM."""
    cfg, root = tiny_data
    scores = {}
    for name, f in {"zeros": lambda x: 0.0 * x, "part": lambda x: x}.items():
        cams = tmp_path / name
        _write_cams(root, cams, f)
        metrics = tmp_path / f"{name}.json"
        run_stage(
            "eval_cams", cfg, seed=0, net="supportnet", data=root, cams=cams, metrics=metrics, curve=tmp_path / "c.json"
        )
        scores[name] = json.loads(metrics.read_text())
    zeros, part = scores["zeros"], scores["part"]
    assert zeros["gt_filled"]["fill"] == 0.5 and zeros["gt_filled"]["miou"] == pytest.approx(1.0)
    assert zeros["miou"] < 0.2  # the CAM itself finds nothing
    assert part["gt_filled"]["miou"] > part["miou"] + 0.05


def test_gt_filled_raises_only_the_ground_truth_pixels_of_each_plane():
    from wsss.metrics import gt_filled

    cam = np.array([[[0.9, 0.1, 0.1]], [[0.2, 0.8, 0.0]]], np.float32)  # planes of classes 3 and 7
    gt = np.array([[3, 7, 255]], np.uint8)
    out = gt_filled(cam, [3, 7], gt, 0.5)
    assert np.allclose(out[0], [[0.9, 0.1, 0.1]]) and np.allclose(out[1], [[0.2, 0.8, 0.0]])  # already >= 0.5
    out = gt_filled(np.zeros_like(cam), [3, 7], gt, 0.5)
    assert np.allclose(out[0], [[0.5, 0.0, 0.0]]) and np.allclose(out[1], [[0.0, 0.5, 0.0]])  # 255 kept
    assert np.allclose(cam, [[[0.9, 0.1, 0.1]], [[0.2, 0.8, 0.0]]])  # the input is not changed
