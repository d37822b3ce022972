"""Atomic writers leave either the complete file/folder or nothing; readers name the bad file."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from wsss import io


def test_atomic_path_keeps_nothing_on_failure(tmp_path):
    target = tmp_path / "m.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    io.write_json(target, {"a": 1})
    assert io.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_later_writer_sweeps_the_temp_file_a_sigkilled_writer_left(tmp_path):
    target = tmp_path / "m.json"
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import os, signal, sys; from wsss import io\n"
                f"with io.atomic_path({str(target)!r}) as tmp:\n"
                "    tmp.write_text('half')\n"
                "    os.kill(os.getpid(), signal.SIGKILL)\n"
            ),
        ]
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".m.json.") and leftovers[0].endswith(".tmp.json")
    live = tmp_path / ".m.json.live.tmp.json"  # a concurrent writer's file (newer than the next process): kept
    live.write_text("x")
    future = time.time() + 3600
    os.utime(live, (future, future))
    other = tmp_path / ".n.json.abc.tmp.json"  # another target's temp file: not ours to delete
    other.write_text("y")
    os.utime(other, (1, 1))
    subprocess.run(
        [sys.executable, "-c", f"from wsss import io; io.write_json({str(target)!r}, {{'a': 1}})"], check=True
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.json", live.name, other.name])
    # in this process (one scan per folder, cached): an old leftover of a PNG target goes on its first write
    sub = tmp_path / "labels"
    sub.mkdir()
    old = sub / ".a.png.x1y2z3.tmp.png"
    old.write_bytes(b"half")
    os.utime(old, (1, 1))
    io.write_label_png(sub / "b.png", np.zeros((2, 2), np.uint8))
    assert old.exists()  # another target's leftover stays
    io.write_label_png(sub / "a.png", np.zeros((2, 2), np.uint8))
    assert sorted(p.name for p in sub.iterdir()) == ["a.png", "b.png"]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    out = tmp_path / "cams"
    with io.atomic_dir(out) as tmp:
        (tmp / "a.npz").write_text("1")
    assert [p.name for p in out.iterdir()] == ["a.npz"]
    with pytest.raises(ValueError):
        with io.atomic_dir(out) as tmp:
            (tmp / "b.npz").write_text("2")
            raise ValueError("killed")
    assert [p.name for p in out.iterdir()] == ["a.npz"]  # the old complete folder survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cams"]


def test_label_png_round_trip_and_palette(tmp_path):
    lab = np.array([[0, 1, 255], [20, 3, 0]], dtype=np.uint8)
    io.write_label_png(tmp_path / "x.png", lab)
    im = Image.open(tmp_path / "x.png")
    assert im.mode == "P" and im.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
    assert np.array_equal(io.read_label_png(tmp_path / "x.png"), lab)


def test_bad_inputs_name_the_file(tmp_path):
    io.write_label_png(tmp_path / "bad.png", np.array([[0, 21]], dtype=np.uint8))
    with pytest.raises(io.WsssInputError, match=r"bad\.png.*21"):
        io.read_label_png(tmp_path / "bad.png")
    (tmp_path / "c.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(io.WsssInputError, match=r"c\.jpg.*corrupt"):
        io.read_image(tmp_path / "c.jpg")
    (tmp_path / "z.npz").write_bytes(b"PK garbage")
    with pytest.raises(io.WsssInputError, match=r"z\.npz"):
        io.load_npz(tmp_path / "z.npz")


def test_atomic_dir_sweeps_the_leftovers_of_a_killed_attempt(tmp_path):
    stale = tmp_path / ".cams.tmp-abc123"
    stale.mkdir()
    (stale / "half.npz").write_text("x")
    other = tmp_path / ".other.tmp-zzz"
    other.mkdir()
    with io.atomic_dir(tmp_path / "cams") as tmp:
        (tmp / "a.npz").write_text("1")
    assert not stale.exists() and other.exists()  # only this output's leftovers


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077], ids=oct)
def test_outputs_get_the_modes_of_the_umask_at_write_time(tmp_path, umask):
    """Issue 15: what the atomic writers leave has the modes a plain mkdir() / open() gives under the umask in
    force when it is written (0755 / 0644 under 022), not mkdtemp's 0700 / mkstemp's 0600, nor the modes of the
    umask of the process's start."""
    import stat

    old = os.umask(umask)
    try:
        with io.atomic_dir(tmp_path / "out") as tmp:
            io.write_json(tmp / "a.json", {"a": 1})
            io.save_npz(tmp / "b.npz", x=np.zeros(2))
            (tmp / "sub").mkdir()
            (tmp / "sub" / "c.txt").write_text("c")
        io.write_text(tmp_path / "d.txt", "d")
    finally:
        os.umask(old)
    out = tmp_path / "out"
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *tmp_path.rglob("*")]}
    want = {
        "out": 0o777 & ~umask,
        "out/sub": 0o777 & ~umask,
        **{f: 0o666 & ~umask for f in ("out/a.json", "out/b.npz", "out/sub/c.txt", "d.txt")},
    }
    assert {k: oct(v) for k, v in modes.items()} == {k: oct(v) for k, v in want.items()}
