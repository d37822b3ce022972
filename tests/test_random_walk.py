"""Sparse random walk (wsss.refine.random_walk) against the dense reference, memory bound, propagation."""

import numpy as np
import pytest
import torch

from wsss.refine.affinity import neighbour_offsets
from wsss.refine.random_walk import (
    dense_affinity_matrix,
    random_walk,
    random_walk_dense,
    rw_label,
    transition_matrix,
)


def _stored_entries(h: int, w: int, offsets) -> int:
    """HW self-loops + both directions of every in-image pair."""
    return h * w + 2 * sum(max(0, h - abs(dy)) * max(0, w - abs(dx)) for dy, dx in offsets)


@pytest.mark.parametrize("dtype,n_steps", [(torch.float64, 256), (torch.float32, 256), (torch.float32, 7)])
def test_sparse_walk_equals_dense_reference(dtype, n_steps):
    g = torch.Generator().manual_seed(0)
    offs = neighbour_offsets(5)
    aff = torch.rand(len(offs), 12, 14, generator=g, dtype=dtype)
    cam = torch.rand(4, 12, 14, generator=g, dtype=dtype)  # background + 3 classes
    sparse = random_walk(cam, aff, offs, beta=8, n_steps=n_steps)
    dense = random_walk_dense(cam.double(), aff.double(), offs, beta=8, n_steps=n_steps)
    assert sparse.shape == cam.shape and sparse.dtype == dtype
    assert torch.allclose(sparse.double(), dense, atol=1e-5, rtol=0)
    assert torch.equal(random_walk(cam, aff, offs, n_steps=0), cam)


def test_transition_matrix_stochastic_and_symmetric():
    g = torch.Generator().manual_seed(1)
    offs = neighbour_offsets(3)
    aff = torch.rand(len(offs), 6, 7, generator=g, dtype=torch.float64)
    a = transition_matrix(aff, offs, beta=2.0, normalize=False)
    assert a.layout == torch.sparse_csr
    ad = a.to_dense()
    assert torch.equal(ad, ad.t())  # symmetric before normalisation
    assert torch.equal(ad.diagonal(), torch.ones(42, dtype=torch.float64))  # self-loops
    assert ad[0, 1] == aff[0, 0, 0] ** 2  # offset (0,1) at pixel (0,0)
    assert torch.allclose(ad, dense_affinity_matrix(aff, offs, beta=2.0))
    t = transition_matrix(aff, offs, beta=2.0)
    assert torch.allclose(t.to_dense().sum(dim=1), torch.ones(42, dtype=torch.float64))
    assert torch.allclose(t.to_dense(), ad / ad.sum(dim=1, keepdim=True))
    cols = t.col_indices()
    for r in range(42):  # sorted, unique columns per row (valid CSR)
        c = cols[t.crow_indices()[r] : t.crow_indices()[r + 1]]
        assert torch.all(c[1:] > c[:-1])


def test_memory_bounded_nnz():
    offs = neighbour_offsets(5)
    p = len(offs)
    for h, w in [(12, 14), (40, 33), (3, 50)]:
        t = transition_matrix(torch.rand(p, h, w), offs, beta=8)
        assert t._nnz() == _stored_entries(h, w, offs) <= h * w * (2 * p + 1)
        assert t.col_indices().dtype == torch.int32
    # 512 x 512, radius 5: not built here, counted with the same formula that the sizes above pinned
    n = 512 * 512
    nnz = _stored_entries(512, 512, offs)
    assert nnz <= n * (2 * p + 1) == n * 69
    assert nnz * (4 + 4) + 4 * (n + 1) < 160 * 2**20  # float32 values + int32 indices: < 160 MiB
    assert nnz / n**2 < 3e-4  # vs. a dense HW x HW matrix (256 GiB in float32)


def _two_regions(h=10, w=16, split=8, low=1e-3):
    """Affinity 1 inside each of two vertical halves, ``low`` across the boundary column split-1 | split."""
    offs = neighbour_offsets(3)
    region = torch.zeros(h, w, dtype=torch.long)
    region[:, split:] = 1
    aff = torch.empty(len(offs), h, w)
    for k, (_dy, dx) in enumerate(offs):
        xs = torch.arange(w).clamp(max=w - 1)
        xt = (xs + dx).clamp(0, w - 1)
        same = region[0, xs] == region[0, xt]
        aff[k] = torch.where(same, 1.0, low).expand(h, w)
    return offs, aff, region


def test_propagation_spreads_within_region_and_stops_at_boundary():
    offs, aff, region = _two_regions()
    cam = torch.zeros(1, 10, 16)
    cam[0, 4, 2] = 1.0  # a peak in the left region
    out = random_walk(cam, aff, offs, beta=8, n_steps=256)[0]
    left, right = out[region == 0], out[region == 1]
    assert left.min() > 0.5 * left.max() > 0  # spread over the whole region
    assert right.max() < 1e-6 * left.mean()  # 1e-3 ** 8: nothing crosses the boundary
    assert out[4, 2] < 0.5  # the peak itself was flattened
    # uniform affinity lets it cross
    flat = random_walk(cam, torch.ones_like(aff), offs, beta=8, n_steps=256)[0]
    assert flat[region == 1].min() > 0.5 * flat.max()


def test_rw_label_irn_and_psa_background():
    h, w = 8, 15
    offs = neighbour_offsets(3)
    region = (torch.arange(w) // 5).expand(h, w)  # three vertical strips
    aff = torch.empty(len(offs), h, w)
    for k, (_dy, dx) in enumerate(offs):
        xt = (torch.arange(w) + dx).clamp(0, w - 1)
        aff[k] = torch.where(region[0] == region[0, xt], 1.0, 1e-3).expand(h, w)
    cam = np.zeros((2, h, w), np.float32)
    cam[0, 3, 1] = 1.0  # class 7 peak in strip 0
    cam[1, 5, 7] = 0.8  # class 12 peak in strip 1; strip 2 has no CAM
    lab = rw_label(cam, [7, 12], aff, offs, beta=10, n_steps=256, bg_threshold=0.25)
    expect = np.array([7, 12, 0], np.uint8)[region.numpy()]
    assert lab.dtype == np.uint8 and np.array_equal(lab, expect)
    psa = rw_label(cam, [7, 12], aff, offs, beta=8, n_steps=256, bg_power=16)
    assert psa[region.numpy() == 2].tolist() == [0] * 40  # background plane wins where there is no CAM
    assert rw_label(np.zeros((0, h, w)), [], aff, offs).tolist() == np.zeros((h, w)).tolist()


def test_stage_walk_spreads_a_cam_within_its_affinity_region_only():
    """refine.random_walk.walk_label: a CAM peak in the left half of an image whose affinity embedding splits it into
    left/right regions spreads over the whole left half (its region) and never into the right half."""
    from wsss.refine.random_walk import walk_label as image_label

    class TwoRegions(torch.nn.Module):
        def forward(self, x):
            emb = torch.zeros(1, 4, 8, 8)
            emb[:, :, :, 4:] = 5.0  # right half far from the left in embedding space: affinity exp(-5)
            return emb

    rw = {
        "image_scale": 1.0,
        "radius": 3,
        "beta": 8.0,
        "n_steps": 64,
        "bg_mode": "irn",
        "bg_score": 0.25,
        "bg_power": 16.0,
    }
    image = np.zeros((64, 64, 3), np.uint8)
    cam = np.zeros((1, 64, 64), np.float32)
    cam[0, 24:40, 8:24] = 1.0  # a peak inside the left half
    label = image_label(TwoRegions(), image, cam, np.array([7]), rw)
    assert label.shape == (64, 64)
    assert (label[:, :28] == 7).mean() > 0.95  # the left half (up to the upsampling seam) is class 7
    assert (label[:, 36:] == 0).all()  # the walk does not cross into the right half
    # without the walk (0 steps) the class stays near the peak: the walk is what spread it
    rw0 = dict(rw, n_steps=0)
    label0 = image_label(TwoRegions(), image, cam, np.array([7]), rw0)
    assert (label0[:, :28] == 7).mean() < (label[:, :28] == 7).mean()
    # the CRF of the walked scores keeps the walk's decision on a flat image (the background plane keeps its
    # ratio to the class plane: it must not win where the walk put class 7)
    refine = {
        "crf": {"n_iter": 5, "gauss_sxy": 3, "gauss_compat": 3, "bi_sxy": 50, "bi_srgb": 5, "bi_compat": 10},
        "ignore_confidence": 0.0,
    }
    label_crf = image_label(TwoRegions(), image, cam, np.array([7]), rw, crf=refine)
    assert (label_crf[:, :28] == 7).mean() > 0.9
    assert (label_crf[:, 36:] == 0).all()


class _Halves(torch.nn.Module):
    """An affinity 'network' whose embedding splits every 64x64 image into a left and a right half."""

    def forward(self, x):
        emb = torch.zeros(1, 4, 8, 8)
        emb[:, :, :, 4:] = 5.0
        return emb


_RW = {"image_scale": 1.0, "radius": 3, "beta": 8.0, "n_steps": 64, "bg_score": 0.25, "bg_power": 16.0}


@pytest.mark.parametrize("mode,key,values", [("irn", "bg_score", [0.1, 0.3, 0.9]), ("psa", "bg_power", [2.0, 16.0])])
def test_one_walk_serves_every_background_value(mode, key, values):
    """walked_scores with a grid of background values equals one walk per value (the walk is linear per plane)."""
    from wsss.refine.random_walk import walked_scores

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cam = rng.random((2, 64, 64)).astype(np.float32)
    rw = dict(_RW, bg_mode=mode)
    grid = walked_scores(_Halves(), image, cam, np.array([3, 9]), rw, values)
    assert len(grid) == len(values)
    for v, scores in zip(values, grid):
        one = walked_scores(_Halves(), image, cam, np.array([3, 9]), dict(rw, **{key: v}))[0]
        assert scores.shape == (3, 64, 64) and np.allclose(scores, one, atol=1e-6)
    assert not np.allclose(grid[0][0], grid[-1][0])  # the background plane does change with the value


def test_walk_sweep_chooses_the_best_background_on_the_calibration_ids_only(tmp_path, caplog):
    from wsss.io import write_jpeg, write_label_png
    from wsss.refine.random_walk import walk_label, walk_sweep

    root, cams = tmp_path / "VOC2012", tmp_path / "cams"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    cams.mkdir()
    for i in range(3):
        write_jpeg(root / "JPEGImages" / f"c{i}.jpg", np.full((64, 64, 3), 128, np.uint8))
        gt = np.zeros((64, 64), np.uint8)
        gt[:, :32] = 7  # the left half is the object, the right half background
        write_label_png(root / "SegmentationClass" / f"c{i}.png", gt)
        cam = np.zeros((1, 64, 64), np.float32)
        cam[0, 24:40, 8:24] = 1.0
        np.savez(cams / f"c{i}.npz", cam=cam, keys=np.array([7]))
    rw = dict(_RW, bg_mode="irn", calibration_values=[0.999, 0.25, 0.5])
    # "scored" has no files: reading any id beyond the first n_images calibration ids would fail
    chosen, record = walk_sweep(
        _Halves(), rw, ["c0", "c1", "scored"], cams_dir=cams, data_root=root, n_images=2, net_name="net"
    )
    curve = {r["bg_score"]: r["miou"] for r in record["curve"]}
    assert list(curve) == [0.999, 0.25, 0.5] and record["images"] == 2
    assert curve[0.25] > curve[0.999]  # a background of 0.999 beats the walked object almost everywhere
    assert chosen["bg_score"] == record["chosen"]["bg_score"] == max(curve, key=curve.get)
    assert chosen["bg_score"] == 0.5 and record["at_edge"] == [] and "edge" not in caplog.text  # inside the grid
    _, edge = walk_sweep(
        _Halves(),
        dict(rw, calibration_values=[0.25, 0.5]),
        ["c0"],
        cams_dir=cams,
        data_root=root,
        n_images=1,
        net_name="net",
    )
    assert (
        edge["at_edge"] == ["bg_score high"] and "at the edge of refine.random_walk.calibration_values" in caplog.text
    )
    label = walk_label(_Halves(), np.full((64, 64, 3), 128, np.uint8), np.load(cams / "c0.npz")["cam"], [7], chosen)
    assert (label[:, :28] == 7).mean() > 0.95 and (label[:, 36:] == 0).all()
