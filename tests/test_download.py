"""wsss.data.download: fetch with resume / mirrors / checksums from a local HTTP server, offline fallbacks, extract.

The module also holds the builders shared with test_voc_prepare.py: tiny archives in the exact real layouts
(``VOCtrainval_11-May-2012.tar`` → ``VOCdevkit/VOC2012/...``; ``benchmark.tgz`` → ``benchmark_RELEASE/dataset/...``
with ``.mat`` files in SBD's ``GTcls`` struct format) and a 127.0.0.1 HTTP server with Range support and
misbehaving modes.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.data import download as dl
from wsss.data.voc import VOC_CLASSES
from wsss.io import WsssInputError, write_label_png

# ------------------------------------------------------------------------------------ tiny VOC + SBD

CID = {name: i for i, name in enumerate(VOC_CLASSES)}
H, W = 16, 20

# id -> XML objects (name, difficult); mask classes drawn from these unless MASK_OVERRIDE says otherwise
OBJECTS = {
    "2007_000032": [("cat", 0), ("dog", 0)],  # the XML lists a dog that its mask lacks -> disagreement
    "2007_000033": [("person", 0)],  # person with <part> entries (head, hand) that are not objects
    "2007_000039": [("car", 0), ("bus", 0)],
    "2008_000001": [("aeroplane", 0)],
    "2008_000002": [("bird", 0)],
    "2009_000003": [("boat", 0), ("bottle", 0)],
    "2010_000100": [("chair", 1), ("sofa", 0)],  # a difficult object (included in the labels)
    "2010_000101": [("horse", 0)],
    "2011_000102": [("train", 0)],
    "2011_000200": [("tvmonitor", 0)],  # in JPEGImages only (no split): must not be labelled
}
MASK_OVERRIDE = {"2007_000032": ["cat"]}
VOC_TRAIN = ["2007_000032", "2007_000033", "2007_000039"]
VOC_VAL = ["2008_000001", "2008_000002", "2009_000003"]
SBD_TRAIN = ["2007_000033", "2008_000001", "2010_000100", "2010_000101"]
SBD_VAL = ["2007_000039", "2011_000102", "2008_000002"]
SBD_ONLY = ["2010_000100", "2010_000101", "2011_000102"]
TRAIN_AUG = sorted((set(SBD_TRAIN) | set(SBD_VAL) | set(VOC_TRAIN)) - set(VOC_VAL))  # 6 ids


def xml_classes(image_id: str) -> list[int]:
    return sorted({CID[n] for n, _ in OBJECTS[image_id]})


def make_mask(image_id: str, border: bool) -> np.ndarray:
    """One block per class; VOC masks get a 255 band around each object, SBD masks do not."""
    names = MASK_OVERRIDE.get(image_id, [n for n, _ in OBJECTS[image_id]])
    m = np.zeros((H, W), np.uint8)
    for k, name in enumerate(names):
        y0, x0 = 2 + 6 * (k % 2), 2 + 8 * (k // 2)
        if border:
            m[y0 - 1 : y0 + 6, x0 - 1 : x0 + 7] = 255
        m[y0 : y0 + 5, x0 : x0 + 6] = CID[name]
    return m


def make_xml(image_id: str) -> str:
    objs = []
    for name, difficult in OBJECTS[image_id]:
        parts = (
            "<part><name>head</name><bndbox><xmin>3</xmin><ymin>3</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></part>"
            "<part><name>hand</name><bndbox><xmin>2</xmin><ymin>6</ymin><xmax>3</xmax><ymax>7</ymax></bndbox></part>"
            if name == "person"
            else ""
        )
        objs.append(
            f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
            f"\t\t<difficult>{difficult}</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>2</xmin>\n\t\t\t<ymin>2</ymin>\n"
            f"\t\t\t<xmax>8</xmax>\n\t\t\t<ymax>7</ymax>\n\t\t</bndbox>\n\t\t{parts}\n\t</object>\n"
        )
    return (
        f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{image_id}.jpg</filename>\n"
        "\t<source>\n\t\t<database>The VOC2007 Database</database>\n\t\t<annotation>PASCAL VOC2007</annotation>\n"
        "\t\t<image>flickr</image>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{W}</width>\n\t\t<height>{H}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
        "\t<segmented>1</segmented>\n" + "".join(objs) + "</annotation>\n"
    )


def write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """An SBD ``cls/<id>.mat``: struct GTcls with Segmentation, Boundaries (20 sparse maps), CategoriesPresent."""
    import scipy.io
    import scipy.sparse

    bounds = np.empty((20, 1), dtype=object)
    for c in range(20):
        bounds[c, 0] = scipy.sparse.csc_matrix(np.zeros(seg.shape, dtype=bool))
    cats = np.array([[c] for c in np.unique(seg) if 1 <= c <= 20], dtype=np.uint8)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": seg, "Boundaries": bounds, "CategoriesPresent": cats}})


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def build_archives(root: Path) -> dict:
    """Stage and pack both archives under ``root``; returns their paths, md5s and what they contain."""
    rng = np.random.default_rng(0)
    voc = root / "stage_voc" / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for image_id in OBJECTS:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "Annotations" / f"{image_id}.xml").write_text(make_xml(image_id))
    for image_id in VOC_TRAIN + VOC_VAL:
        write_label_png(voc / "SegmentationClass" / f"{image_id}.png", make_mask(image_id, border=True))
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in VOC_VAL))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in VOC_TRAIN + VOC_VAL))

    sbd = root / "stage_sbd" / "benchmark_RELEASE" / "dataset"
    for d in ("img", "cls"):
        (sbd / d).mkdir(parents=True)
    sbd_masks = {}
    for image_id in sorted(set(SBD_TRAIN) | set(SBD_VAL)):
        seg = make_mask(image_id, border=False)
        sbd_masks[image_id] = seg
        write_sbd_mat(sbd / "cls" / f"{image_id}.mat", seg)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(sbd / "img" / f"{image_id}.jpg")
    (sbd / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (sbd / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))

    voc_tar = root / "archives" / "VOCtrainval_11-May-2012.tar"
    sbd_tgz = root / "archives" / "benchmark.tgz"
    voc_tar.parent.mkdir(parents=True)
    with tarfile.open(voc_tar, "w") as tar:
        tar.add(root / "stage_voc" / "VOCdevkit", arcname="VOCdevkit")
    with tarfile.open(sbd_tgz, "w:gz") as tar:
        tar.add(root / "stage_sbd" / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    return {
        "voc_tar": voc_tar,
        "voc_md5": md5_of(voc_tar),
        "sbd_tgz": sbd_tgz,
        "sbd_md5": md5_of(sbd_tgz),
        "sbd_masks": sbd_masks,
    }


@pytest.fixture(scope="session")
def archives(tmp_path_factory) -> dict:
    return build_archives(tmp_path_factory.mktemp("voc_archives"))


# ------------------------------------------------------------------------------------ HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET /<mode>/<name>: mode range | norange | drop (first request cut at half) | corrupt | missing."""

    protocol_version = "HTTP/1.1"
    timeout = 5

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Range")))
            n_req = len(srv.requests)
        parts = self.path.strip("/").split("/", 1)
        mode, name = (parts + [""])[:2]
        data = srv.files.get(name)
        if data is None or mode == "missing" or n_req > srv.max_requests:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if mode == "corrupt":
            data = data[:100] + bytes(b ^ 0xFF for b in data[100:200]) + data[200:]
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange" and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "none" if mode == "norange" else "bytes")
        self.end_headers()
        first_drop = mode == "drop" and not srv.dropped.get(name)
        if first_drop:
            srv.dropped[name] = True
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server(archives):
    """A 127.0.0.1 server (port 0) serving both archives; shut down after the test."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files = {p.name: p.read_bytes() for p in (archives["voc_tar"], archives["sbd_tgz"])}
    srv.requests, srv.dropped, srv.lock, srv.max_requests = [], {}, threading.Lock(), 50
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def closed_port_url(name: str) -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/{name}"


VOC_NAME = "VOCtrainval_11-May-2012.tar"


def voc_spec(archives) -> dict:
    return {"filename": VOC_NAME, "md5": archives["voc_md5"], "urls": []}


# ------------------------------------------------------------------------------------------ tests


def test_archive_table_is_complete():
    for name, spec in dl.ARCHIVES.items():
        assert spec["filename"] and spec["urls"] and len(spec["md5"]) == 32, name
        assert all(u.endswith(spec["filename"]) for u in spec["urls"]), name
    assert dl.ARCHIVES["voc2012_trainval"]["md5"] == "6cd6e144f989b92b3379bac3b3de84fd"
    assert dl.ARCHIVES["sbd"]["md5"] == "82b4d87ceb2ed10f6038a1cba92111cb"


def test_fetch_downloads_and_verifies(archives, server, tmp_path):
    out = dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/range/{VOC_NAME}"], timeout=5)
    assert out == tmp_path / VOC_NAME and md5_of(out) == archives["voc_md5"]
    assert not (tmp_path / f"{VOC_NAME}.part").exists()
    # a second call finds the verified file and makes no request
    n = len(server.requests)
    assert dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/range/{VOC_NAME}"]) == out
    assert len(server.requests) == n


def test_fetch_resumes_after_dropped_connection(archives, server, tmp_path):
    out = dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/drop/{VOC_NAME}"], timeout=5)
    assert md5_of(out) == archives["voc_md5"]
    size = archives["voc_tar"].stat().st_size
    assert [r for _, r in server.requests] == [None, f"bytes={size // 2}-"]


def test_fetch_resumes_existing_part_with_range(archives, server, tmp_path):
    data = archives["voc_tar"].read_bytes()
    (tmp_path / f"{VOC_NAME}.part").write_bytes(data[:1000])
    out = dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/range/{VOC_NAME}"], timeout=5)
    assert out.read_bytes() == data
    assert server.requests == [(f"/range/{VOC_NAME}", "bytes=1000-")]


def test_fetch_restarts_when_server_ignores_range(archives, server, tmp_path):
    data = archives["voc_tar"].read_bytes()
    (tmp_path / f"{VOC_NAME}.part").write_bytes(b"x" * 1000)  # a stale, wrong partial
    out = dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/norange/{VOC_NAME}"], timeout=5)
    assert out.read_bytes() == data and len(server.requests) == 1


def test_bad_resumed_part_gets_one_fresh_download(archives, server, tmp_path):
    data = archives["voc_tar"].read_bytes()
    (tmp_path / f"{VOC_NAME}.part").write_bytes(b"x" * 1000)  # stale garbage: resuming from it cannot verify
    out = dl.fetch(voc_spec(archives), tmp_path, urls=[f"{server.base}/range/{VOC_NAME}"], timeout=5)
    assert out.read_bytes() == data
    assert [r for _, r in server.requests] == ["bytes=1000-", None]


def test_corrupt_mirror_falls_through_to_next(archives, server, tmp_path):
    urls = [f"{server.base}/corrupt/{VOC_NAME}", f"{server.base}/range/{VOC_NAME}"]
    out = dl.fetch(voc_spec(archives), tmp_path, urls=urls, timeout=5)
    assert md5_of(out) == archives["voc_md5"]
    assert [p for p, _ in server.requests] == [f"/corrupt/{VOC_NAME}", f"/range/{VOC_NAME}"]
    assert server.requests[1][1] is None  # the bad body was deleted, not resumed from


def test_corrupt_only_source_raises_and_leaves_nothing(archives, server, tmp_path):
    url = f"{server.base}/corrupt/{VOC_NAME}"
    with pytest.raises(WsssInputError) as e:
        dl.fetch(voc_spec(archives), tmp_path, urls=[url], timeout=5)
    msg = str(e.value)
    assert VOC_NAME in msg and "md5 mismatch" in msg and url in msg and archives["voc_md5"] in msg
    assert list(tmp_path.iterdir()) == []


def test_configured_archive_is_used_without_any_request(archives, server, tmp_path):
    out = dl.fetch(
        voc_spec(archives),
        tmp_path / "dl",
        urls=[f"{server.base}/range/{VOC_NAME}"],
        archive_path=archives["voc_tar"],
        timeout=5,
    )
    assert out == archives["voc_tar"]
    assert server.requests == []
    assert not (tmp_path / "dl").exists()


def test_nothing_reachable_names_urls_md5_and_where_to_put_it(archives, server, tmp_path):
    urls = [closed_port_url(VOC_NAME), f"{server.base}/missing/{VOC_NAME}"]
    manual = tmp_path / "manual" / VOC_NAME
    with pytest.raises(WsssInputError) as e:
        dl.fetch(voc_spec(archives), tmp_path / "dl", urls=urls, archive_path=manual, timeout=2)
    msg = str(e.value)
    for u in urls:
        assert u in msg
    assert "HTTP 404" in msg and archives["voc_md5"] in msg and str(manual) in msg
    assert str(tmp_path / "dl" / VOC_NAME) in msg
    assert not (tmp_path / "dl" / VOC_NAME).exists()


def test_named_spec_and_md5_override(archives, server, tmp_path):
    out = dl.fetch("sbd", tmp_path, urls=[f"{server.base}/range/benchmark.tgz"], md5=archives["sbd_md5"], timeout=5)
    assert out.name == "benchmark.tgz" and md5_of(out) == archives["sbd_md5"]
    with pytest.raises(WsssInputError, match="unknown archive"):
        dl.fetch("voc2099", tmp_path)


def test_extract_real_layout(archives, tmp_path):
    root = dl.extract(archives["voc_tar"], tmp_path / "voc")
    assert (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").is_file()
    sbd = dl.extract(archives["sbd_tgz"], tmp_path / "sbd")
    assert (sbd / "benchmark_RELEASE" / "dataset" / "cls" / "2010_000100.mat").is_file()


def test_extract_corrupt_archive_leaves_no_output(archives, tmp_path):
    bad = tmp_path / "benchmark.tgz"
    bad.write_bytes(archives["sbd_tgz"].read_bytes()[: archives["sbd_tgz"].stat().st_size // 2])
    dest = tmp_path / "out" / "sbd"
    with pytest.raises(WsssInputError) as e:
        dl.extract(bad, dest)
    assert str(bad) in str(e.value)
    assert not dest.exists() and list((tmp_path / "out").iterdir()) == []
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not an archive at all" * 10)
    with pytest.raises(WsssInputError, match="junk.tar"):
        dl.extract(junk, tmp_path / "out" / "junk")
    assert list((tmp_path / "out").iterdir()) == []


def test_no_sbd_says_that_source_voc_runs_without_it(tmp_path):
    """Issue 15: a user without SBD is told the way to run without it, not only where benchmark.tgz goes."""
    with pytest.raises(WsssInputError) as e:
        dl.fetch("sbd", tmp_path / "dl", urls=[closed_port_url("benchmark.tgz")], timeout=2)
    msg = str(e.value)
    assert "benchmark.tgz" in msg and "data.source: voc" in msg and "data.train_split: train" in msg
    with pytest.raises(WsssInputError) as e:  # the VOC archive has no such alternative
        dl.fetch(voc_spec({"voc_md5": "0" * 32}), tmp_path / "dl", urls=[closed_port_url(VOC_NAME)], timeout=2)
    assert "data.source" not in str(e.value)
    from wsss.data.sbd import sbd_dataset_dir  # prepare, given an SBD root that holds no SBD: the same way out

    with pytest.raises(WsssInputError, match=r"benchmark_RELEASE.*data\.source: voc and data\.train_split: train"):
        sbd_dataset_dir(tmp_path)
