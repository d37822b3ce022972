"""The synthetic VOC-format benchmark: layout, determinism, mask semantics, atomic writing, spec checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsss import config
from wsss.data import synthetic as syn
from wsss.data.voc import labels_from_mask, load_labels, read_split
from wsss.io import WsssInputError, voc_palette

TINY = {"seed": 3, "n_train": 10, "n_val": 4, "size_min": 64, "size_max": 96}


def spec(section: dict) -> dict:
    """A complete ``data.synthetic`` section: the config schema holds the defaults and the checks."""
    return config.validate({"data": {"synthetic": section}})["data"]["synthetic"]


def _gen(base: Path, **over) -> Path:
    root = base / "VOC2012"
    syn.generate(root, spec({**TINY, **over}))
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return _gen(tmp_path_factory.mktemp("tiny"))


def _ids(root: Path) -> list[str]:
    return read_split(root, "train") + read_split(root, "val")


def _mask(root: Path, folder: str, iid: str) -> np.ndarray:
    return np.array(Image.open(root / folder / f"{iid}.png"))


def test_the_generator_reads_exactly_the_schema_keys(tmp_path: Path):
    """The config schema is the generator's only spec: it reads every data.synthetic key and no other."""
    props = config.load_schema()["properties"]["data"]["properties"]["synthetic"]["properties"]
    read = set()

    class Recording(dict):
        def __getitem__(self, k):
            read.add(k)
            return super().__getitem__(k)

    syn.generate(tmp_path / "VOC2012", Recording(spec({**TINY, "n_train": 3, "n_val": 1})))
    assert read == set(props)


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"n_trian": 3}, "n_trian"),
        ({"n_train": 2.5}, "n_train"),
        ({"occlusion": 1}, "occlusion"),
        ({"max_classes": 5, "max_objects": 4}, "max_classes"),
        ({"size_min": 200}, "size_min"),
        ({"scale_min": 0.7, "scale_max": 0.6}, "scale_min"),
        ({"context_kinds": ["lava"]}, "context_kinds"),
        ({"part_bias": 1.5}, "part_bias"),
        ({"n_groups": 9}, "n_groups"),
    ],
)
def test_spec_errors_name_the_key(bad, key):
    with pytest.raises(WsssInputError, match=key):
        spec(bad)


def test_a_killed_generation_leaves_nothing_for_long(tmp_path: Path):
    """A SIGKILLed make_data leaves its hidden temporary folder; the next generation removes it."""
    leftover = tmp_path / ".VOC2012.tmp-killed"
    (leftover / "JPEGImages").mkdir(parents=True)
    _gen(tmp_path, n_train=2, n_val=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["VOC2012"]


def test_voc_layout(tiny: Path):
    assert sorted(p.name for p in tiny.iterdir()) == [
        "ImageSets",
        "JPEGImages",
        "PartMasks",
        "SegmentationClass",
        "labels.json",
        "synthetic.json",
    ]
    train, val = read_split(tiny, "train"), read_split(tiny, "val")
    assert train == [f"syn_{i:06d}" for i in range(10)] and val == [f"syn_{i:06d}" for i in range(10, 14)]
    for folder, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("PartMasks", "png")):
        assert sorted(p.name for p in (tiny / folder).iterdir()) == sorted(f"{i}.{ext}" for i in train + val)
    assert sorted(load_labels(tiny)) == sorted(train + val)
    leftovers = [p.name for p in tiny.parent.iterdir() if p.name != "VOC2012"]
    assert leftovers == [], "temporary folders left behind"
    with Image.open(tiny / "JPEGImages" / f"{train[0]}.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and 64 <= min(im.size) <= max(im.size) <= 96


def test_palette_pngs(tiny: Path):
    pal = voc_palette()
    for folder in ("SegmentationClass", "PartMasks"):
        with Image.open(tiny / folder / "syn_000000.png") as im:
            assert im.mode == "P"
            assert im.getpalette()[:768] == pal[:768]


def test_deterministic_given_seed(tiny: Path, tmp_path: Path):
    same = _gen(tmp_path / "a")
    other = _gen(tmp_path / "b", seed=4)
    for folder in ("SegmentationClass", "PartMasks", "JPEGImages"):
        for iid in _ids(tiny):
            name = f"{iid}.{'jpg' if folder == 'JPEGImages' else 'png'}"
            assert (same / folder / name).read_bytes() == (tiny / folder / name).read_bytes()
    assert (same / "labels.json").read_bytes() == (tiny / "labels.json").read_bytes()
    differs = [
        (other / "SegmentationClass" / f"{i}.png").read_bytes()
        != (tiny / "SegmentationClass" / f"{i}.png").read_bytes()
        for i in _ids(tiny)
    ]
    assert all(differs)


def test_labels_agree_with_masks(tiny: Path):
    labels = load_labels(tiny)
    for iid in _ids(tiny):
        mask = _mask(tiny, "SegmentationClass", iid)
        assert set(np.unique(mask).tolist()) <= set(range(21)) | {255}
        assert labels[iid] == labels_from_mask(mask)
        assert 1 <= len(labels[iid]) <= TINY.get("max_classes", 3)
        for c in labels[iid]:
            assert (mask == c).sum() >= 25


def test_ignore_band_on_every_border(tiny: Path):
    for iid in _ids(tiny):
        m = _mask(tiny, "SegmentationClass", iid).astype(int)
        assert (m == 255).any()
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            # two 4-neighbours with different (non-ignored) classes would be an unbanded border
            assert not ((a != b) & (a != 255) & (b != 255)).any()


def test_ignore_band_width():
    inst = np.zeros((9, 12), np.int32)
    inst[:, 6:] = 1
    assert not syn.ignore_band(inst, 0).any()
    for width in (1, 2, 3, 4):
        band = syn.ignore_band(inst, width)
        assert band.sum(axis=1).tolist() == [width] * 9


def test_part_masks_only_inside_objects(tiny: Path):
    for iid in _ids(tiny):
        label = _mask(tiny, "SegmentationClass", iid)
        parts = _mask(tiny, "PartMasks", iid)
        assert set(np.unique(parts).tolist()) <= {0, 1, 2, 255}
        obj = (label >= 1) & (label <= 20)
        assert np.array_equal(parts == 255, label == 255)
        assert np.array_equal((parts == 1) | (parts == 2), obj)
        for c in labels_from_mask(label):
            assert ((label == c) & (parts == 1)).sum() >= 5, "every class keeps a visible part"
        part_share = (parts == 1).sum() / max(obj.sum(), 1)
        assert 0.02 < part_share < 0.6


def test_metadata(tiny: Path):
    meta = syn.load_metadata(tiny)
    assert meta["spec"] == spec(TINY)
    assert "generation_time_s" not in meta  # the dataset folder is a pure function of the spec (no timings)
    groups = meta["class_group"]
    assert sorted(groups) == list(range(1, 21))
    assert sorted(np.bincount(list(groups.values())).tolist()) == [4] * 5
    codes = {(v["hue"], v["pattern"]) for v in meta["class_code"].values()}
    assert len(codes) == 20
    ctx = meta["context_classes"]
    assert ctx == {4: "water", 10: "grass", 1: "sky", 7: "road", 3: "water"}  # boat, cow, aeroplane, car, bird
    assert meta["counts"]["n_images"] == {"train": 10, "val": 4}
    assert set(meta["images"]) == set(_ids(tiny))


def test_context_classes_sit_on_their_context(tmp_path: Path):
    root = _gen(tmp_path, n_train=160, n_val=1, size_min=48, size_max=56, scale_min=0.3)
    meta = syn.load_metadata(root)
    labels = load_labels(root)
    for c, kind in meta["context_classes"].items():
        with_c = [meta["images"][i]["context"] == kind for i, cl in labels.items() if c in cl]
        without = [meta["images"][i]["context"] == kind for i, cl in labels.items() if c not in cl]
        assert with_c and np.mean(with_c) > 0.6 > 0.3 > np.mean(without)
    # the context fill covers the recorded rows: context pixels differ from a neutral background
    some = next(i for i, v in meta["images"].items() if v["context"] == "water")
    y0, y1 = meta["images"][some]["context_rows"]
    img = np.array(Image.open(root / "JPEGImages" / f"{some}.jpg")).astype(int)
    bg = _mask(root, "SegmentationClass", some) == 0
    water = img[y0:y1][bg[y0:y1]]
    assert water[:, 2].mean() > water[:, 0].mean() + 40  # blue


def test_no_occlusion_and_no_part_bias(tmp_path: Path):
    root = _gen(tmp_path, occlusion=False, part_bias=0.0, border_ignore=0, n_train=6, n_val=2)
    for iid in _ids(root):
        mask = _mask(root, "SegmentationClass", iid)
        assert not (mask == 255).any()
        assert load_labels(root)[iid] == labels_from_mask(mask)


def test_replaces_existing_root(tmp_path: Path):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "stale.txt").write_text("old")
    syn.generate(root, spec({**TINY, "n_train": 2, "n_val": 1}))
    assert not (root / "stale.txt").exists()
    assert read_split(root, "val") == ["syn_000002"]
    assert [p.name for p in tmp_path.iterdir()] == ["VOC2012"]


def test_failed_run_leaves_nothing_complete(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real = syn.write_label_png

    def flaky(path, label):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill")
        real(path, label)

    monkeypatch.setattr(syn, "write_label_png", flaky)
    with pytest.raises(KeyboardInterrupt):
        syn.generate(tmp_path / "VOC2012", spec(TINY))
    assert list(tmp_path.iterdir()) == []


def _tree_digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synthetic.json":  # the metadata names the generator version and spec
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_version_1_images_are_unchanged_by_versions_2_and_3(tmp_path: Path):
    """Benchmark v1 stays reproducible: with part_position anywhere and body_code_strength 1 (the defaults) every
    image, mask, split and label file is byte-identical to what generator version 1 wrote (digest taken from the
    version-1 code)."""
    root = _gen(tmp_path, part_bias=0.6)
    assert _tree_digest(root) == "c76de5cadd23fb3bb7baffce2eecf0042354da82b693d941df28637a393da88d"
    assert syn.load_metadata(root)["generator_version"] == 3


def test_body_code_strength_blends_the_bodies_code_towards_the_group_look(tmp_path: Path):
    """The same objects (the strength draws no random number) with their bodies' class code at strengths 0, 0.3
    and 1: at 0.3 the body pixels lie between the uncoded (0) and the fully coded (1) bodies, and the disc and the
    background do not change."""
    one = {"max_objects": 1, "max_classes": 1, "n_train": 6, "n_val": 1, "part_bias": 0.0}
    roots = {s: _gen(tmp_path / str(s), body_code_strength=s, **one) for s in (0.0, 0.3, 1.0)}
    for iid in _ids(roots[1.0]):
        parts = _mask(roots[1.0], "PartMasks", iid)
        assert all(np.array_equal(parts, _mask(r, "PartMasks", iid)) for r in roots.values())
        img = {s: np.asarray(Image.open(r / "JPEGImages" / f"{iid}.jpg"), np.float64) for s, r in roots.items()}
        body = (parts == 2) & ~ndimage.binary_dilation(parts != 2, iterations=3)  # away from JPEG edge ringing
        disc = (parts == 1) & ~ndimage.binary_dilation(parts != 1, iterations=2)
        far = (parts == 0) & ~ndimage.binary_dilation(parts > 0, iterations=4)

        def gap(a, b, where, img=img):
            return float(np.abs(img[a][where] - img[b][where]).mean())

        assert gap(0.3, 1.0, body) < gap(0.0, 1.0, body) and gap(0.3, 0.0, body) < gap(0.0, 1.0, body)
        assert gap(0.0, 1.0, body) > 10  # the code is visible on the body at full strength
        # the disc and the background keep their pixels (up to JPEG chroma bleeding from the body into a small disc)
        assert gap(0.0, 1.0, disc) < 0.5 * gap(0.0, 1.0, body) and gap(0.0, 1.0, far) < 3


def _part_offsets(root: Path) -> list[float]:
    """Per single-object image: the disc centre's offset from the body's centre along the body's long axis, as a
    share of the body's half-length there (0 = centre, 1 = the end)."""
    out = []
    for iid in _ids(root):
        parts = _mask(root, "PartMasks", iid)
        obj = (parts == 1) | (parts == 2)
        ys, xs = np.nonzero(obj)
        c = np.stack([ys - ys.mean(), xs - xs.mean()])
        axis = np.linalg.eigh(c @ c.T)[1][:, -1]
        along = c[0] * axis[0] + c[1] * axis[1]
        dy, dx = np.nonzero(parts == 1)
        d = (dy.mean() - ys.mean()) * axis[0] + (dx.mean() - xs.mean()) * axis[1]
        out.append(abs(d) / (np.abs(along).max() + 1e-9))
    return out


def test_part_position_end_puts_the_disc_towards_an_end_of_the_object(tmp_path: Path):
    # a small disc (v2's part_fraction) has room to move: measured medians 0.66 (end) and 0.25 (anywhere)
    one = {"max_objects": 1, "max_classes": 1, "n_train": 24, "n_val": 1, "size_min": 96, "size_max": 96}
    end = _part_offsets(_gen(tmp_path / "end", part_position="end", part_fraction=0.06, **one))
    anywhere = _part_offsets(_gen(tmp_path / "any", part_fraction=0.06, **one))
    assert np.median(end) > 0.5 and np.median(anywhere) < 0.35 and min(end) > 0.2
