"""The controlled-noise experiment's corruptions (wsss.data.label_noise): each changes the stated share of every
object's pixels, in the stated order, and nothing else."""

import numpy as np
import pytest
from scipy import ndimage

from wsss.data import label_noise as ln


def _square_scene():
    gt = np.zeros((40, 40), np.uint8)
    gt[10:20, 10:20] = 3  # 100 px
    gt[25:35, 22:37] = 7  # 150 px
    gt[0, :] = 255  # an ignored row
    return gt


@pytest.mark.parametrize("kind", ["dilate", "erode", "body_to_background"])
@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_each_kind_changes_the_stated_share_of_every_object(kind, rate):
    gt = _square_scene()
    noisy = ln.corrupt(gt, kind, rate, np.random.default_rng(0))
    for c, area in ((3, 100), (7, 150)):
        if kind == "dilate":
            changed = int(((noisy == c) & (gt == 0)).sum())
        else:
            changed = int(((gt == c) & (noisy == 0)).sum())
        assert changed == round(rate * area), (kind, c)
    assert np.array_equal(noisy[0], gt[0])  # ignored pixels stay ignored
    st = ln.noise_stats(gt, noisy)
    assert st["wrong"] / st["object"] == pytest.approx(rate, abs=0.01)
    assert st["fg_to_fg"] == 0


def test_dilation_takes_the_nearest_background_and_erosion_the_boundary():
    gt = _square_scene()
    d = ln.corrupt(gt, "dilate", 0.1, np.random.default_rng(1))
    grown = (d == 3) & (gt == 0)
    assert ndimage.distance_transform_edt(gt != 3)[grown].max() == 1.0  # 10 px fit in the first ring (40 px)
    e = ln.corrupt(gt, "erode", 0.1, np.random.default_rng(1))
    lost = (gt == 3) & (e == 0)
    assert ndimage.distance_transform_edt(gt == 3)[lost].max() == 1.0  # the outermost pixels only


def test_bodies_lose_their_far_end_and_keep_one_connected_piece():
    gt = np.zeros((5, 60), np.uint8)
    gt[2, 5:55] = 4  # a 50-px bar
    for seed in range(5):
        noisy = ln.corrupt(gt, "body_to_background", 0.4, np.random.default_rng(seed))
        kept = np.flatnonzero(noisy[2] == 4)
        assert kept.size == 30
        assert np.all(np.diff(kept) == 1)  # the pixels within a radius of the anchor: one interval


def test_context_bleed_stays_in_the_context_rows_and_needs_them():
    gt = _square_scene()
    noisy = ln.corrupt(gt, "context_bleed", 0.2, np.random.default_rng(0), context_rows=(30, 40))
    changed = np.argwhere(noisy != gt)
    assert changed.size and changed[:, 0].min() >= 30
    assert np.array_equal(ln.corrupt(gt, "context_bleed", 0.2, np.random.default_rng(0)), gt)


def test_corruption_is_a_function_of_the_generator_and_refuses_bad_input():
    gt = _square_scene()
    a = ln.corrupt(gt, "erode", 0.2, np.random.default_rng(5))
    assert np.array_equal(a, ln.corrupt(gt, "erode", 0.2, np.random.default_rng(5)))
    assert np.array_equal(ln.corrupt(gt, "dilate", 0.0, np.random.default_rng(5)), gt)
    with pytest.raises(ValueError, match="kind"):
        ln.corrupt(gt, "blur", 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="rate"):
        ln.corrupt(gt, "erode", 1.5, np.random.default_rng(0))
