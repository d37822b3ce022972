"""A seeded generator of a synthetic PASCAL-VOC-format benchmark with a built-in discriminative-part bias.

Each of the 20 VOC class ids is drawn as an object whose *body shape* (ellipse, rectangle, ...) only tells
its group of classes (``n_groups`` groups, bodies in muted colours shared by the group) while the *class* is
coded by a small disc inside the body (the discriminative part: one of 10 saturated hues, solid or striped).
A classifier can therefore solve the task from the disc alone, and its CAMs tend to cover the disc rather than
the body: the part bias that WSSS methods try to undo. ``PartMasks`` hold the disc/body split to measure it.
Some classes also sit on a class-specific context background (water, grass, sky, road) most of the time,
and some bodies take the background's colour (weak boundaries), both as in real data.

Everything is a pure function of the spec (the config's ``data.synthetic`` section, whose keys, defaults and
ranges the config schema holds): image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``. The dataset
is written into a temporary sibling folder and renamed onto ``root`` at the end (stage ``make_data``).
"""

from __future__ import annotations

import colorsys
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from wsss.data.voc import NUM_FG, VOC_CLASSES, labels_from_mask
from wsss.io import WsssInputError, atomic_dir, write_jpeg, write_json, write_label_png, write_text

log = logging.getLogger("wsss")

# 2: ``part_position: end`` (the disc towards one end of its object, benchmark v2, issue 14); with the default
# ``anywhere`` every image and mask is byte-identical to version 1's (tests/test_synthetic.py pins them)
# 3: ``body_code_strength`` (how strongly a tinted body carries its class code; 1 = version 2's look, byte-identical)
GENERATOR_VERSION = 3

CONTEXT_KINDS = ("water", "grass", "sky", "road")
SHAPE_NAMES = ("ellipse", "rectangle", "triangle", "hexagon", "cross", "star", "lshape", "arrow")
N_HUES = 10
# Context classes in order of preference (boat, cow, aeroplane, car, bird, horse, bus, sheep, ...), then the rest.
_CONTEXT_ORDER = (4, 10, 1, 7, 3, 13, 6, 17, 19, 14, 2, 12, 8, 5, 9, 11, 15, 16, 18, 20)
_MIN_VISIBLE_PX = 25  # a labelled class must keep this many non-ignored pixels ...
_MIN_PART_PX = 5  # ... and this many pixels of at least one of its discs
_MAX_TRIES = 50


# ------------------------------------------------------------------------------------- class catalogue


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def build_catalogue(spec: dict[str, Any]) -> dict[str, Any]:
    """Fixed (seed-independent) class → group / shape / code / context assignment for a spec."""
    n_groups = spec["n_groups"]
    group = {c: (c - 1) % n_groups for c in range(1, NUM_FG + 1)}
    shape = {g: SHAPE_NAMES[g] for g in range(n_groups)}
    code = {c: {"hue": (c - 1) % N_HUES, "pattern": "solid" if c <= N_HUES else "stripes"} for c in group}
    kinds = spec["context_kinds"]
    context = {c: kinds[i % len(kinds)] for i, c in enumerate(_CONTEXT_ORDER[: spec["context_classes"]])}
    return {"group": group, "shape": shape, "code": code, "context": context}


def _code_rgb(hue: int) -> np.ndarray:
    return _hsv(hue / N_HUES, 0.9, 0.95)


def _group_tones(g: int, n_groups: int) -> list[np.ndarray]:
    """Three muted tones shared by every class in group ``g``."""
    h = g / max(n_groups, 1) + 0.07
    return [_hsv(h, 0.28, v) for v in (0.45, 0.6, 0.75)]


# ------------------------------------------------------------------------------------------------ shapes


def _unit_polygon(name: str) -> np.ndarray:
    """Polygon of ``name`` in unit coordinates (x right, y down, extent about [-1, 1])."""

    def ring(n: int, r: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
        t = phase + 2 * np.pi * np.arange(n) / n
        return list(zip(r * np.cos(t), r * np.sin(t)))

    a = 0.36
    polys = {
        "ellipse": ring(28),
        "rectangle": [(-0.95, -0.95), (0.95, -0.95), (0.95, 0.95), (-0.95, 0.95)],
        "triangle": [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)],
        "hexagon": ring(6),
        "cross": [
            (-a, -1),
            (a, -1),
            (a, -a),
            (1, -a),
            (1, a),
            (a, a),
            (a, 1),
            (-a, 1),
            (-a, a),
            (-1, a),
            (-1, -a),
            (-a, -a),
        ],
        "star": [p for o, i in zip(ring(5, 1.0, -np.pi / 2), ring(5, 0.5, -np.pi / 2 + np.pi / 5)) for p in (o, i)],
        "lshape": [(-1, -1), (-0.1, -1), (-0.1, 0.1), (1, 0.1), (1, 1), (-1, 1)],
        "arrow": [(-1, -0.4), (0.15, -0.4), (0.15, -0.95), (1, 0), (0.15, 0.95), (0.15, 0.4), (-1, 0.4)],
    }
    return np.array(polys[name], dtype=np.float64)


_POLYGONS = {name: _unit_polygon(name) for name in SHAPE_NAMES}


def _shape_mask(
    shape: str, h: int, w: int, cx: float, cy: float, half_w: float, half_h: float, angle: float
) -> np.ndarray:
    """Boolean HxW mask of a scaled, rotated polygon centred at (cx, cy)."""
    p = _POLYGONS[shape] * (half_w, half_h)
    c, s = np.cos(angle), np.sin(angle)
    xy = np.stack([p[:, 0] * c - p[:, 1] * s + cx, p[:, 0] * s + p[:, 1] * c + cy], axis=1)
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([tuple(v) for v in xy.tolist()], fill=1)
    return np.asarray(im, dtype=bool)


END_SHARE = 0.15  # part_position "end": the disc's centre among the 15 % of its possible centres furthest out


def _disc_in(body: np.ndarray, fraction: float, rng: np.random.Generator, position: str = "anywhere") -> np.ndarray:
    """A disc of about ``fraction`` of the body's area, placed at a random spot where it fits inside the body:
    anywhere, or (``end``) towards one end of the body's long axis (its principal axis, the end drawn at random),
    among the :data:`END_SHARE` of the possible centres furthest along it."""
    ys, xs = np.nonzero(body)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    dist = ndimage.distance_transform_edt(np.pad(body[y0:y1, x0:x1], 1))[1:-1, 1:-1]
    r = min(np.sqrt(fraction * len(ys) / np.pi), 0.9 * dist.max())
    cand_y, cand_x = np.nonzero(dist >= r)
    if position == "end":
        coords = np.stack([ys - ys.mean(), xs - xs.mean()]).astype(np.float64)
        axis = np.linalg.eigh(coords @ coords.T)[1][:, -1] * (1.0 if rng.random() < 0.5 else -1.0)
        along = (cand_y + y0 - ys.mean()) * axis[0] + (cand_x + x0 - xs.mean()) * axis[1]
        far = along >= np.quantile(along, 1.0 - END_SHARE)
        cand_y, cand_x = cand_y[far], cand_x[far]
    k = int(rng.integers(len(cand_y)))
    cy, cx = cand_y[k] + y0, cand_x[k] + x0
    yy, xx = np.ogrid[: body.shape[0], : body.shape[1]]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r) & body


# ------------------------------------------------------------------------------------------------ painting


def _paint_code(
    canvas: np.ndarray,
    region: np.ndarray,
    rgb: np.ndarray,
    pattern: str,
    period: float,
    rng: np.random.Generator,
    dark: float | np.ndarray = 35.0,
) -> None:
    """Fill ``region`` with ``rgb``, solid or in coarse stripes of colour ``dark`` of the given period (random
    orientation)."""
    ys, xs = np.nonzero(region)
    colour = np.broadcast_to(rgb, (len(ys), 3)).copy()
    if pattern == "stripes":
        a = rng.choice([0.0, 0.25, 0.5, 0.75]) * np.pi
        on = np.floor((xs * np.cos(a) + ys * np.sin(a)) / (period / 2.0)) % 2 == 0
        colour[~on] = dark
    canvas[ys, xs] = colour + rng.normal(0.0, 3.0, size=colour.shape)


def _paint_body(canvas: np.ndarray, body: np.ndarray, rgb: np.ndarray, rng: np.random.Generator) -> None:
    """Fill the body with a colour, a soft linear shading in a random direction and light noise."""
    ys, xs = np.nonzero(body)
    a = rng.uniform(0, 2 * np.pi)
    t = (xs - xs.mean()) * np.cos(a) + (ys - ys.mean()) * np.sin(a)
    t = t / (np.abs(t).max() + 1e-6)
    canvas[ys, xs] = rgb + (10.0 * t)[:, None] + rng.normal(0.0, 4.0, size=(len(ys), 3))


def _low_freq(h: int, w: int, rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Smooth noise in [-1, 1] (bilinear upsampling of a small random grid)."""
    grid = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))


def _neutral_background(h: int, w: int, tex: float, rng: np.random.Generator) -> np.ndarray:
    base = _hsv(rng.uniform(), rng.uniform(0.0, 0.12), rng.uniform(0.45, 0.85))
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img += (40.0 * tex * _low_freq(h, w, rng))[..., None]
    img += rng.normal(0.0, 10.0 * tex, size=(h, w, 1))
    return img


def _context_fill(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An HxW fill of one context kind with its own colour and texture."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    if kind == "water":
        img[:] = _hsv(0.6 + rng.uniform(-0.02, 0.02), 0.75, 0.65)
        phase = rng.uniform(0, 2 * np.pi)
        img += (22.0 * np.sin(2 * np.pi * yy / 7.0 + 0.8 * np.sin(xx / 6.0 + phase)))[..., None]
    elif kind == "grass":
        img[:] = _hsv(0.3 + rng.uniform(-0.02, 0.02), 0.65, 0.55)
        blades = np.repeat(rng.normal(0, 1, size=(h // 4 + 1, w)), 4, axis=0)[:h]
        img += (20.0 * blades)[..., None] * np.array([0.6, 1.0, 0.4], np.float32)
    elif kind == "sky":
        top, bottom = _hsv(0.58, 0.5, 0.9), _hsv(0.57, 0.18, 0.97)
        t = (yy / max(h - 1, 1))[..., None]
        img[:] = top * (1 - t) + bottom * t
        for _ in range(int(rng.integers(1, 4))):  # clouds
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            ry, rx = rng.uniform(0.05, 0.12) * h, rng.uniform(0.1, 0.25) * w
            cloud = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
            img[cloud] = img[cloud] * 0.3 + 245.0 * 0.7
    else:  # road
        img[:] = _hsv(0.0, 0.03, 0.32)
        img += rng.normal(0, 8.0, size=(h, w, 1))
        mid = rng.uniform(0.72, 0.88) * h  # below any horizon (<= 0.6 h)
        dash = (np.abs(yy - mid) < 1.6) & ((xx // 8) % 2 == 0)
        img[dash] = _hsv(0.14, 0.8, 0.95)
    return img


def _background(kind: str | None, h: int, w: int, tex: float, rng: np.random.Generator):
    """Background image and the [y0, y1) rows covered by the context fill (None for a neutral background)."""
    img = _neutral_background(h, w, tex, rng)
    if kind is None:
        return img, None
    horizon = int(round(h * rng.uniform(0.4, 0.6)))
    rows = (0, horizon) if kind == "sky" else (horizon, h)
    img[rows[0] : rows[1]] = _context_fill(kind, h, w, rng)[rows[0] : rows[1]]
    return img, rows


# ------------------------------------------------------------------------------------------------- masks


def ignore_band(instances: np.ndarray, width: int) -> np.ndarray:
    """Pixels within the ``width``-px band along every border between different instances (and background)."""
    if width <= 0:
        return np.zeros(instances.shape, bool)
    dy = instances[1:, :] != instances[:-1, :]
    dx = instances[:, 1:] != instances[:, :-1]
    band = np.zeros(instances.shape, bool)
    band[1:, :] |= dy
    band[:, 1:] |= dx
    if width % 2 == 0:  # both sides of the border: 2 px, grown by 1 px per side per step
        band[:-1, :] |= dy
        band[:, :-1] |= dx
        steps = width // 2 - 1
    else:  # one side: 1 px, then grown
        steps = width // 2
    if steps:
        band = ndimage.binary_dilation(band, structure=np.ones((3, 3), bool), iterations=steps)
    return band


# -------------------------------------------------------------------------------------------------- image


def _plan_objects(spec: dict[str, Any], cat: dict[str, Any], rng: np.random.Generator):
    """Classes, per-object class list (drawing order) and context kind of one image."""
    k = int(rng.integers(spec["min_classes"], spec["max_classes"] + 1))
    classes = sorted(int(c) for c in rng.choice(np.arange(1, NUM_FG + 1), size=k, replace=False))
    n = int(rng.integers(k, spec["max_objects"] + 1))
    objs = list(classes) + [int(c) for c in rng.choice(classes, size=n - k)]
    objs = [objs[i] for i in rng.permutation(n)]
    ctx = [c for c in classes if c in cat["context"]]
    kind = None
    if ctx and rng.random() < spec["context_prob"]:
        kind = cat["context"][ctx[int(rng.integers(len(ctx)))]]
    return classes, objs, kind


def _place(shape: str, h: int, w: int, spec: dict[str, Any], rows, rng: np.random.Generator) -> np.ndarray:
    """Body mask of one object of random size, aspect and rotation, centred inside ``rows`` if given."""
    side = min(h, w) * rng.uniform(spec["scale_min"], spec["scale_max"])
    half_h = side / 2
    half_w = min(half_h * rng.uniform(0.75, 1.33), w / 2)
    y_lo, y_hi = (half_h, h - half_h) if rows is None else (max(rows[0], 0.3 * half_h), min(rows[1], h - 0.3 * half_h))
    cy = rng.uniform(y_lo, max(y_lo, y_hi))
    cx = rng.uniform(half_w, max(half_w, w - half_w))
    return _shape_mask(shape, h, w, cx, cy, half_w, half_h, rng.uniform(-np.pi / 6, np.pi / 6))


def render_image(spec: dict[str, Any], cat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Draw one image; retries until every class keeps enough visible pixels and a visible part."""
    for _ in range(_MAX_TRIES):
        out = _try_render(spec, cat, rng)
        if out is not None:
            return out
    raise WsssInputError(
        f"synthetic spec: could not place visible objects in {_MAX_TRIES} tries; raise scale_min or size_min"
    )


def _try_render(spec: dict[str, Any], cat: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    h, w = (int(v) for v in rng.integers(spec["size_min"], spec["size_max"] + 1, size=2))
    classes, objs, kind = _plan_objects(spec, cat, rng)
    canvas, rows = _background(kind, h, w, spec["background_texture"], rng)
    label = np.zeros((h, w), np.uint8)
    parts = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.int32)
    taken = np.zeros((h, w), bool)
    for i, c in enumerate(objs, start=1):
        body = _draw_object(canvas, c, h, w, spec, cat, rows if cat["context"].get(c) == kind else None, taken, rng)
        if body is None:
            return None
        body, disc = body
        label[body], parts[body], inst[body] = c, 2, i
        parts[disc] = 1
        taken |= body
    band = ignore_band(inst, spec["border_ignore"])
    label[band], parts[band] = 255, 255
    for c in classes:
        on = label == c
        if on.sum() < _MIN_VISIBLE_PX or (parts[on] == 1).sum() < _MIN_PART_PX:
            return None
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return {
        "image": image,
        "label": label,
        "parts": parts,
        "classes": labels_from_mask(label),
        "context": kind,
        "context_rows": list(rows) if rows else None,
    }


def _draw_object(canvas, c, h, w, spec, cat, rows, taken, rng):
    """Paint one object of class ``c``; returns its (body, disc) masks, or None if it cannot be placed."""
    shape = cat["shape"][cat["group"][c]]
    for _ in range(1 if spec["occlusion"] else 30):
        body = _place(shape, h, w, spec, rows, rng)
        if body.sum() >= 30 and (spec["occlusion"] or not (body & taken).any()):
            break
    else:
        return None
    if body.sum() < 30:
        return None
    code = cat["code"][c]
    hue_rgb = _code_rgb(code["hue"])
    tinted = rng.random() >= spec["part_bias"]
    tones = _group_tones(cat["group"][c], spec["n_groups"])
    colour = tones[int(rng.integers(len(tones)))] + rng.uniform(-8, 8, size=3)
    strength = spec["body_code_strength"]  # 1: the tint and the code at version 2's full strength
    if tinted:
        colour = strength * (0.45 * hue_rgb + 0.55 * 150.0) + (1.0 - strength) * colour
    if rng.random() < spec["weak_boundary_prob"]:
        near_bg = canvas[body].mean(axis=0) + rng.uniform(-14, 14, size=3)
        colour = near_bg if not tinted else 0.5 * near_bg + 0.5 * colour
    _paint_body(canvas, body, colour, rng)
    disc = _disc_in(body, spec["part_fraction"], rng, spec["part_position"])
    radius = np.sqrt(disc.sum() / np.pi)
    period = max(4.0, radius)
    if tinted:  # the body carries the class code too (muted), so the disc is no longer the only evidence
        code_rgb = strength * (0.5 * hue_rgb + 0.5 * colour) + (1.0 - strength) * colour
        dark = 35.0 if strength == 1.0 else strength * 35.0 + (1.0 - strength) * colour
        _paint_code(canvas, body & ~disc, code_rgb, code["pattern"], period, rng, dark)
    _paint_code(canvas, disc, hue_rgb, code["pattern"], period, rng)
    return body, disc


# ---------------------------------------------------------------------------------------------- dataset


def image_id(i: int) -> str:
    return f"syn_{i:06d}"


def generate(root: str | os.PathLike, spec: dict[str, Any]) -> dict[str, Any]:
    """Write the benchmark under ``root`` (a ``.../VOC2012`` folder, replaced if present); return its stats.

    ``spec`` is a complete, validated ``data.synthetic`` config section (the config schema holds the defaults,
    ranges and cross-key rules). The data is written into a temporary sibling folder and renamed onto ``root``
    only when complete (:func:`wsss.io.atomic_dir`, which also sweeps what a killed earlier attempt left).
    """
    with atomic_dir(root) as tmp:
        stats = _write_dataset(tmp, spec)
    return stats


def _write_dataset(out: Path, spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    cat = build_catalogue(spec)
    n = spec["n_train"] + spec["n_val"]
    labels: dict[str, list[int]] = {}
    images: dict[str, dict[str, Any]] = {}
    for i in range(n):
        iid = image_id(i)
        r = render_image(spec, cat, np.random.default_rng([spec["seed"], i]))
        write_jpeg(out / "JPEGImages" / f"{iid}.jpg", r["image"], quality=spec["jpeg_quality"])
        write_label_png(out / "SegmentationClass" / f"{iid}.png", r["label"])
        write_label_png(out / "PartMasks" / f"{iid}.png", r["parts"])
        labels[iid] = r["classes"]
        images[iid] = {"context": r["context"], "context_rows": r["context_rows"]}
    ids = [image_id(i) for i in range(n)]
    splits = {"train": ids[: spec["n_train"]], "val": ids[spec["n_train"] :]}
    for name, split_ids in splits.items():
        write_text(out / "ImageSets" / "Segmentation" / f"{name}.txt", "\n".join(split_ids) + "\n")
    write_json(out / "labels.json", labels)
    stats = _stats(splits, labels, images, cat)
    write_json(out / "synthetic.json", _metadata(spec, cat, stats, images))
    log.info("generated %d images in %.1f s", n, time.perf_counter() - start)  # timings stay out of the data
    return stats


def _stats(splits, labels, images, cat) -> dict[str, Any]:
    """Image counts per split and class, and how often each class sits on its context kind."""
    per_class = {s: {c: sum(c in labels[i] for i in ids) for c in range(1, NUM_FG + 1)} for s, ids in splits.items()}
    on_own_context = {
        c: sum(c in labels[i] and images[i]["context"] == kind for i in labels) for c, kind in cat["context"].items()
    }
    return {
        "n_images": {s: len(ids) for s, ids in splits.items()},
        "images_per_class": per_class,
        "images_with_context": sum(v["context"] is not None for v in images.values()),
        "context_class_on_context": on_own_context,
    }


def _metadata(spec, cat, stats, images) -> dict[str, Any]:
    return {
        "generator_version": GENERATOR_VERSION,
        "spec": spec,
        "classes": list(VOC_CLASSES),
        "class_group": cat["group"],
        "group_shape": cat["shape"],
        "class_code": {
            c: {**v, "rgb": _code_rgb(v["hue"]).round().astype(int).tolist()} for c, v in cat["code"].items()
        },
        "context_classes": cat["context"],
        "part_mask_values": {"0": "not an object", "1": "discriminative part", "2": "body", "255": "ignore border"},
        "images": images,
        "counts": stats,
    }


def load_metadata(root: str | os.PathLike) -> dict[str, Any]:
    """``synthetic.json`` with integer class keys restored (JSON stores them as strings)."""
    from wsss.io import read_json

    meta = read_json(Path(root) / "synthetic.json")
    for key in ("class_group", "class_code", "context_classes"):
        meta[key] = {int(k): v for k, v in meta[key].items()}
    return meta
