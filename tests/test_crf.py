"""Dense CRF on tiny synthetic images (pydensecrf); each test runs in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pydensecrf.densecrf")

from wsss.metrics import cam_to_label  # noqa: E402
from wsss.refine.crf import background_score, cam_to_pseudo_label, crf_postprocess, dense_crf  # noqa: E402

H, W = 32, 40


def _two_region_image():
    img = np.zeros((H, W, 3), np.uint8)
    img[:, : W // 2] = (200, 40, 40)
    img[:, W // 2 :] = (30, 60, 210)
    truth = np.zeros((H, W), np.int64)
    truth[:, W // 2 :] = 1
    return img, truth


def _noisy_probs(truth, rng, flip=0.3):
    p1 = np.where(truth == 1, 0.7, 0.3) + rng.normal(0, 0.25, truth.shape)
    p1 = np.clip(p1, 0.02, 0.98)
    # blur the edge: columns near the boundary are undecided
    p1[:, W // 2 - 4 : W // 2 + 4] = 0.5 + rng.normal(0, 0.2, (H, 8)).clip(-0.45, 0.45)
    return np.stack([1 - p1, p1]).astype(np.float32)


def test_dense_crf_normalised_and_snaps_to_edge():
    rng = np.random.default_rng(0)
    img, truth = _two_region_image()
    probs = _noisy_probs(truth, rng)
    post = dense_crf(img, probs)
    assert post.shape == probs.shape and post.dtype == np.float32
    np.testing.assert_allclose(post.sum(0), 1.0, atol=1e-4)
    err_in = np.mean(probs.argmax(0) != truth)
    err_out = np.mean(post.argmax(0) != truth)
    assert err_in > 0.05
    assert err_out < err_in / 2


def test_dense_crf_rejects_bad_shapes():
    img, _ = _two_region_image()
    with pytest.raises(ValueError):
        dense_crf(img, np.ones((2, H, W + 1), np.float32))
    with pytest.raises(TypeError):
        dense_crf(img.astype(np.float32), np.ones((2, H, W), np.float32))


def _cam(rng):
    """Grey background with a red (class 3) and a blue (class 15) box; CAMs cover only part of each box."""
    img = np.full((H, W, 3), 128, np.uint8)
    img[6:26, 2:18] = (200, 40, 40)
    img[6:26, 22:38] = (30, 60, 210)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    cam = np.zeros((2, H, W), np.float32)
    cam[0, 8:24, 3:16] = 0.9
    cam[1, 8:24, 24:36] = 0.8
    cam[0, 4:8, 4:10] = 0.4  # spill onto the background
    cam += rng.uniform(0, 0.15, cam.shape).astype(np.float32)
    return img, np.clip(cam, 0, 1), [3, 15]


def test_cam_to_pseudo_label_ids_and_ignore():
    rng = np.random.default_rng(1)
    img, cam, keys = _cam(rng)
    lab = cam_to_pseudo_label(img, cam, keys)
    assert lab.dtype == np.uint8 and lab.shape == (H, W)
    assert set(np.unique(lab).tolist()) <= {0, 3, 15, 255}
    assert 3 in lab and 15 in lab
    # the CRF fills each colour box although the CAMs cover only ~65 % of it
    boxes = np.zeros((H, W), np.uint8)
    boxes[6:26, 2:18], boxes[6:26, 22:38] = 3, 15
    assert np.mean(lab != boxes) < np.mean(cam_to_label(cam, keys, 0.5) != boxes) / 2
    n_ign = [np.sum(cam_to_pseudo_label(img, cam, keys, ignore_confidence=c) == 255) for c in (0.0, 0.6, 0.99)]
    assert n_ign[0] == 0
    assert n_ign[0] <= n_ign[1] <= n_ign[2] and n_ign[2] > n_ign[0]
    lab_c = cam_to_pseudo_label(img, cam, keys, bg_mode="constant", bg_constant=0.5, n_iter=5, bi_sxy=30)
    assert set(np.unique(lab_c).tolist()) <= {0, 3, 15}
    with pytest.raises(ValueError):
        cam_to_pseudo_label(img, cam, keys, bg_mode="bogus")
    np.testing.assert_array_equal(cam_to_pseudo_label(img, cam[:0], []), np.zeros((H, W)))


def test_bg_alpha_monotonic():
    rng = np.random.default_rng(2)
    img, cam, keys = _cam(rng)
    cam = cam * np.linspace(0.3, 1.0, W, dtype=np.float32)[None, None, :]  # graded confidence
    bg = [np.sum(cam_to_pseudo_label(img, cam, keys, bg_alpha=a) == 0) for a in (0.5, 1, 2, 4, 8)]
    assert all(x >= y for x, y in zip(bg, bg[1:])), bg
    assert bg[0] > bg[-1]
    s1, s4 = background_score(cam, bg_alpha=1), background_score(cam, bg_alpha=4)
    assert np.all(s4 <= s1 + 1e-7)


def test_crf_postprocess_logits_and_probs():
    rng = np.random.default_rng(3)
    img, truth = _two_region_image()
    probs = _noisy_probs(truth, rng)
    probs21 = np.full((21, H, W), 1e-3, np.float32)
    probs21[0], probs21[7] = probs[0], probs[1]
    lab = crf_postprocess(img, probs21, from_logits=False)
    assert set(np.unique(lab).tolist()) <= {0, 7}
    logits = np.log(probs21)
    lab2, post = crf_postprocess(img, logits, return_posterior=True)
    assert post.shape == (21, H, W)
    np.testing.assert_allclose(post.sum(0), 1.0, atol=1e-4)
    assert np.mean(lab2 != np.where(truth == 1, 7, 0)) < np.mean(probs.argmax(0) != truth)
