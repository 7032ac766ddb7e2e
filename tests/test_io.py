"""Files: one layout in .npz and HDF5, atomic writes, clear errors."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_stem import E, _counted_disks, _disk_data

import flowtie_fast as ft
import flowtie_fast.files as ft_files
import flowtie_fast.io  # noqa: F401  (ft.io is an attribute once the submodule is imported)
from flowtie_fast import records, stem, trust


@pytest.fixture
def dataset(rng):
    shape = (6, 5, 12, 12)
    planes = [rng.integers(0, 300, size=shape, dtype=np.uint16) for _ in range(3)]
    return ft.Dataset(*planes, dz=(20.0, 20.0), scan_step=(0.2, 0.25), energy=300e3,
                      k_sampling=(0.05, 0.05), phase_gt=rng.random(shape[:2]),
                      gradient_gt=rng.random((2,) + shape[:2]),
                      meta={"material": "GaAs", "thickness": 11.3, "semiangle": 20.0})


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_round_trip_4dstem(tmp_path, dataset, suffix):
    path = ft.save(tmp_path / f"case{suffix}", dataset)
    with ft.load(path) as back:
        assert back.kind == "4dstem"
        for k in ("minus", "zero", "plus"):
            np.testing.assert_array_equal(np.asarray(getattr(back, k)), getattr(dataset, k))
            assert np.asarray(getattr(back, k)).dtype == np.uint16
        np.testing.assert_array_equal(back.phase_gt, dataset.phase_gt)
        np.testing.assert_array_equal(back.gradient_gt, dataset.gradient_gt)
        assert back.dz == (20.0, 20.0) and back.scan_step == (0.2, 0.25)
        assert back.k_sampling == (0.05, 0.05) and back.energy == 300e3
        assert back.meta == {"material": "GaAs", "thickness": 11.3, "semiangle": 20.0}
        t = back.triplet(center=(6, 6), backend="cpu")
        assert t.shape == (6, 5) and t.gradient.shape == (2, 6, 5)
    assert [p.name for p in tmp_path.iterdir()] == [f"case{suffix}"]  # no temporary left


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_round_trip_triplet(tmp_path, rng, suffix):
    planes = [1 + rng.random((16, 12)) for _ in range(3)]
    t = ft.FocalTriplet(*planes, dz=(15.0, 25.0), pixel_size=0.3, energy=200e3)
    back = ft.load(ft.save(tmp_path / f"t{suffix}", t)).triplet()
    assert back.dz == (15.0, 25.0) and back.pixel_size == (0.3, 0.3)
    np.testing.assert_array_equal(back.plus, planes[2])
    a = ft.reconstruct(t, backend="cpu").phase
    b = ft.reconstruct(back, backend="cpu").phase
    np.testing.assert_array_equal(a, b)


def test_missing_keys_and_wrong_shapes(tmp_path, rng):
    np.savez(tmp_path / "a.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)))
    with pytest.raises(ft.InputError, match=r"a.npz: missing key\(s\) \['plus', 'dz', "):
        ft.load(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)),
             plus=np.ones((4, 5)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0)
    with pytest.raises(ft.InputError, match=r"'plus' has shape \(4, 5\), expected \(4, 4\)"):
        ft.load(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", minus=np.ones((2, 2, 4, 4)), zero=np.ones((2, 2, 4, 4)),
             plus=np.ones((2, 2, 4, 4)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0)
    with pytest.raises(ft.InputError, match="missing key 'k_sampling'"):
        ft.load(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)),
             plus=np.ones((4, 4)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0,
             phase_gt=np.ones((3, 3)))
    with pytest.raises(ft.InputError, match=r"'phase_gt' has shape \(3, 3\), expected"):
        ft.load(tmp_path / "d.npz")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_truncated_and_garbage_files(tmp_path, dataset, suffix):
    path = ft.save(tmp_path / f"full{suffix}", dataset)
    raw = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ft.InputError, match=f"cut{suffix}"):
        ds = ft.load(cut)
        ds.triplet(center=(6, 6), backend="cpu")  # lazy HDF5 reads fail here, if not before
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not a file of this kind" * 10)
    with pytest.raises(ft.InputError, match=f"junk{suffix} is not a readable"):
        ft.load(junk)


def test_paths(tmp_path, dataset):
    with pytest.raises(ft.InputError, match="path: no such file"):
        ft.load(tmp_path / "none.npz")
    with pytest.raises(ft.InputError, match="path: expected a .npz, .h5 or .hdf5 file"):
        ft.save(tmp_path / "x.tiff", dataset)
    with pytest.raises(ft.InputError, match="obj: expected a Dataset"):
        ft.save(tmp_path / "x.npz", {"minus": 1})


def test_failed_write_leaves_nothing(tmp_path, dataset):
    class Exploding:
        shape = (6, 5)

        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    broken = ft.Dataset(dataset.minus, dataset.zero, dataset.plus, (20.0, 20.0), (0.2, 0.2),
                        300e3, (0.05, 0.05), phase_gt=Exploding())
    with pytest.raises(RuntimeError, match="disk full"):
        ft.save(tmp_path / "x.npz", broken)
    assert list(tmp_path.iterdir()) == []


def test_raw_detector_files_through_rosettasciio(tmp_path, rng):
    emd = pytest.importorskip("rsciio.emd")
    data = rng.random((6, 5, 10, 12)).astype(np.float32)
    paths = []
    for name in ("m", "z", "p"):
        sig = {"data": data, "axes": [
            {"name": "y", "size": 6, "scale": 0.02, "units": "nm", "navigate": True, "offset": 0},
            {"name": "x", "size": 5, "scale": 0.025, "units": "nm", "navigate": True, "offset": 0},
            {"name": "ky", "size": 10, "scale": 0.5, "units": "1/nm", "navigate": False,
             "offset": 0},
            {"name": "kx", "size": 12, "scale": 0.5, "units": "1/nm", "navigate": False,
             "offset": 0}],
            "metadata": {"General": {"title": name}, "Signal": {"signal_type": ""}},
            "original_metadata": {}}
        paths.append(tmp_path / f"{name}.emd")
        emd.file_writer(str(paths[-1]), sig)
    with pytest.raises(ft.InputError, match="energy: z.emd does not record the beam energy"):
        ft.io.read_raw(paths[1])
    ds = ft.io.load_raw_triplet(*paths, dz=20.0, energy=300e3)
    assert ds.scan_step == pytest.approx((0.2, 0.25)) and ds.k_sampling == pytest.approx((0.05,
                                                                                          0.05))
    t = ds.triplet(center=(5, 6), backend="cpu")
    assert t.shape == (6, 5) and t.pixel_size == pytest.approx((0.2, 0.25))
    with pytest.raises(ft.InputError, match="expected one of"):
        ft.io.read_raw(tmp_path / "x.tiff")


def test_evaluate_a_triplet_file_with_ground_truth(tmp_path):
    """Image triplets (not 4D data) with a ground truth go through evaluate too."""
    from fields import periodic_field, triplet_from

    from flowtie_fast.evaluation.evaluate import evaluate

    phi, intensity, didz, grad = periodic_field(shape=(32, 30), contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), 300e3)
    ft.save(tmp_path / "t.npz", ft.Dataset(*t.planes, dz=(10.0, 10.0), scan_step=(0.2, 0.25),
                                           energy=300e3, phase_gt=phi, gradient_gt=grad))
    (row,) = evaluate(tmp_path, methods=("tie-exact",), repeats=1)
    assert row["nmse"] < 1e-6
    with pytest.raises(ft.InputError, match=r"options: \['virtual'\] apply to 4D-STEM"):
        ft.load(tmp_path / "t.npz").triplet(virtual="bf")


def test_evaluate_keeps_every_case_of_one_material_and_thickness(tmp_path):
    """Two files of GaAs 10 Å (one noisy, one noise-free) were one row of the table."""
    from fields import periodic_field, triplet_from

    from flowtie_fast.evaluation.evaluate import evaluate, format_table

    phi, intensity, didz, grad = periodic_field(shape=(32, 30), contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), 300e3)
    noisy = [p * (1 + 0.01 * np.random.default_rng(i).random(p.shape))
             for i, p in enumerate(t.planes)]
    meta = {"material": "GaAs", "thickness": 10.0}
    for name, planes in (("clean.npz", t.planes), ("noisy.npz", noisy)):
        ft.save(tmp_path / name, ft.Dataset(*planes, dz=(10.0, 10.0), scan_step=(0.2, 0.25),
                                            energy=300e3, phase_gt=phi, meta=meta))
    rows = evaluate(tmp_path, methods=("tie",), repeats=1)
    assert [r["case"] for r in rows] == ["clean.npz", "noisy.npz"]
    assert rows[0]["mse"] != rows[1]["mse"]
    lines = [x for x in format_table(rows).splitlines() if "GaAs" in x]
    assert len(lines) == 2 and "clean.npz" in lines[0] and "noisy.npz" in lines[1]


# --------------------------------------------------------------------------- atomic writes

_CHILD_WRITER = """\
import sys, time
from flowtie_fast.files import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 4096)
    print(tmp.name, flush=True)
    time.sleep(120)
"""


def _child_env():
    import os
    from pathlib import Path

    return {**os.environ, "PYTHONPATH": str(Path(ft.__file__).resolve().parents[1])}


def _dead_pid():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_temporary_is_named_after_the_file_host_and_process(tmp_path):
    import os
    import re

    with ft_files.atomic_path(tmp_path / "r.npz") as tmp:
        assert tmp.parent == tmp_path
        assert re.fullmatch(rf"\.r\.npz\.flowtie-tmp\.{re.escape(ft_files._HOST)}\.{os.getpid()}"
                            r"\.[0-9a-f]{8}", tmp.name)
        tmp.write_bytes(b"data")
    assert _names(tmp_path) == ["r.npz"] and (tmp_path / "r.npz").read_bytes() == b"data"


def test_host_tag_is_safe_in_a_file_name(monkeypatch):
    import re
    import socket

    tags = set()
    for host in ("node1.cluster.example.org", "node1-cluster-example-org", "a" * 60, "", "ü/x"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        tag = ft_files._host_tag()
        assert re.fullmatch(r"[A-Za-z0-9-]{1,40}", tag)
        tags.add(tag)
    assert len(tags) == 5
    assert "node1-cluster-example-org" in tags  # a plain name is kept as it is


def test_killed_writer_leftover_is_removed_by_the_next_write(tmp_path):
    """A writer killed with SIGKILL inside atomic_path leaves its temporary; the
    next write of the same file removes it, but never while the writer lives."""
    import os
    import signal
    import subprocess
    import sys

    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL (POSIX)")
    target = tmp_path / "out.npz"
    child = subprocess.Popen([sys.executable, "-c", _CHILD_WRITER, str(target)],
                             stdout=subprocess.PIPE, text=True, env=_child_env())
    try:
        tmp_name = child.stdout.readline().strip()
        assert tmp_name.startswith(".out.npz.flowtie-tmp.") and f".{child.pid}." in tmp_name
        ft.io.write_fields(target, {"a": np.arange(3)})  # the writer still runs: kept
        assert _names(tmp_path) == sorted([tmp_name, "out.npz"])
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)  # reaped: no zombie answers os.kill(pid, 0)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert _names(tmp_path) == sorted([tmp_name, "out.npz"])
    ft.io.write_fields(target, {"a": np.arange(4)})
    assert _names(tmp_path) == ["out.npz"]
    with np.load(target) as z:
        np.testing.assert_array_equal(z["a"], np.arange(4))


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    import os
    import time

    host, dead, me = ft_files._HOST, _dead_pid(), os.getpid()
    two_days_ago = time.time() - 2 * 86400
    precious = tmp_path / "precious.txt"
    precious.write_text("keep")
    removed = [f".r.npz.flowtie-tmp.{host}.{dead}.0123abcd",         # this host, dead writer
               f".r.npz.flowtie-tmp.elsewhere.{me}.0123abcd"]         # another host, old
    kept = [f".r.npz.flowtie-tmp.{host}.{me}.0123abcd",              # a live writer, even old
            f".r.npz.flowtie-tmp.elsewhere.{dead}.4567abcd",         # another host, recent
            f".s.npz.flowtie-tmp.{host}.{dead}.0123abcd",            # another file's
            ".r.npz.ab12cd34.tmp",                                   # not this pattern
            f".r.npz.flowtie-tmp.{host}.{dead}.0123abcd.bak",
            f".r.npz.flowtie-tmp.{host}.{dead}.0123ABCD",
            f".r.npz.flowtie-tmp.{host}.0{dead}.0123abcd",
            f"r.npz.flowtie-tmp.{host}.{dead}.0123abcd"]
    for name in removed + kept:
        (tmp_path / name).write_bytes(b"left over")
    for name in (removed[1], kept[0]):
        os.utime(tmp_path / name, (two_days_ago, two_days_ago))
    folder = tmp_path / f".r.npz.flowtie-tmp.{host}.{dead}.fedcba98"  # not a regular file
    folder.mkdir()
    link = tmp_path / f".r.npz.flowtie-tmp.{host}.{dead}.98fedcba"
    link.symlink_to(precious)
    ft.io.write_fields(tmp_path / "r.npz", {"a": np.arange(3)})
    assert _names(tmp_path) == sorted(kept + [folder.name, link.name, "precious.txt", "r.npz"])
    assert precious.read_text() == "keep"


def test_long_file_names_get_a_short_temporary(tmp_path):
    name = "a" * 246 + ".npz"  # 250 characters: the file system allows 255
    path = ft.io.write_fields(tmp_path / name, {"a": np.arange(3)})
    assert _names(tmp_path) == [name] and path.name == name


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_write_is_flushed_before_and_after_the_rename(tmp_path, monkeypatch, suffix):
    import os
    import stat

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync dir" if stat.S_ISDIR(st.st_mode) else "fsync file", st.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = ft.io.write_fields(tmp_path / f"r{suffix}", {"a": np.arange(3)}, arrays=("a",))
    ino = path.stat().st_ino
    assert events == [("fsync file", ino), ("replace", ino),
                      ("fsync dir", tmp_path.stat().st_ino)]


def test_fsync_unsupported_is_skipped_and_io_errors_raise(tmp_path, monkeypatch):
    import errno
    import os

    def no_fsync(fd):
        raise OSError(errno.EINVAL, "fsync not supported")

    monkeypatch.setattr(os, "fsync", no_fsync)
    path = ft.io.write_fields(tmp_path / "r.npz", {"a": np.arange(3)})
    with np.load(path) as z:
        np.testing.assert_array_equal(z["a"], np.arange(3))

    def failing_disk(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "fsync", failing_disk)
    with pytest.raises(OSError) as info:
        ft.io.write_fields(tmp_path / "s.npz", {"a": np.arange(3)})
    assert info.value.errno == errno.EIO
    assert _names(tmp_path) == ["r.npz"]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_get_the_permissions_of_the_umask(tmp_path, mask, mode):
    import os
    import stat

    if os.name == "nt":
        pytest.skip("POSIX permissions")
    old = os.umask(mask)
    try:
        paths = [ft.io.write_fields(tmp_path / "a.npz", {"x": np.arange(3)}),
                 ft.io.write_fields(tmp_path / "b.h5", {"x": np.arange(3)}, arrays=("x",))]
        with ft_files.atomic_path(tmp_path / "c.md") as tmp:
            tmp.write_text("| table |")
        paths.append(tmp_path / "c.md")
    finally:
        os.umask(old)
    assert [oct(stat.S_IMODE(p.stat().st_mode)) for p in paths] == [oct(mode)] * 3


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_write_errors_propagate_and_leave_nothing(tmp_path, monkeypatch, code, suffix):
    import errno
    import os

    import h5py

    number = getattr(errno, code)
    target = ft.io.write_fields(tmp_path / f"r{suffix}", {"a": np.arange(3)}, arrays=("a",))
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(np, "savez", fail)
    monkeypatch.setattr(h5py, "File", fail)
    with pytest.raises(OSError) as info:
        ft.io.write_fields(target, {"a": np.arange(5)}, arrays=("a",))
    assert info.value.errno == number and not isinstance(info.value, ft.InputError)
    assert _names(tmp_path) == [target.name] and target.read_bytes() == before


# --------------------------------------------------------------------------- output checks

@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.npz").write_bytes(b"input")
    return tmp_path


def test_check_output_accepts_a_new_or_replaceable_file(workdir):
    check = ft_files.check_output
    out = check("new/deeper/r.npz", inputs=["raw.npz", None])
    assert out == ft_files.Path("new/deeper/r.npz") and not (workdir / "new").exists()
    assert check("raw.h5", inputs="raw.npz") == ft_files.Path("raw.h5")
    (workdir / "old.hdf5").write_bytes(b"")
    assert check("old.hdf5", overwrite=True) == ft_files.Path("old.hdf5")
    assert check("figure.PNG", suffixes=(".png",)) == ft_files.Path("figure.PNG")
    assert check("table.md", suffixes=(".md", ".txt"), inputs=[workdir]) == \
        ft_files.Path("table.md")


def _symlink(workdir):
    (workdir / "link.npz").symlink_to(workdir / "raw.npz")
    return "link.npz"


def _hardlink(workdir):
    import os

    os.link(workdir / "raw.npz", workdir / "hard.npz")
    return "hard.npz"


def _fifo(workdir):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(workdir / "pipe.npz")
    return "pipe.npz"


def _parent_file(workdir):
    (workdir / "notes").write_text("a file")
    return "notes/a/b/r.npz"


def _existing(workdir):
    (workdir / "x.npz").write_bytes(b"")
    return "x.npz"


def _folder(workdir):
    (workdir / "d.npz").mkdir()
    return "d.npz"


@pytest.mark.parametrize("make, options, message", [
    (lambda w: "raw.npz", {}, r"^output: 'raw.npz' is the input file; choose another output "
                              r"path$"),
    (lambda w: "raw.npz", {"overwrite": True}, "'raw.npz' is the input file"),
    (lambda w: "sub/../raw.npz", {}, r"^output: 'sub/../raw.npz' is the input file 'raw.npz'; "),
    (lambda w: str(w / "raw.npz"), {}, "raw.npz' is the input file 'raw.npz'"),
    (_symlink, {"overwrite": True}, r"^output: 'link.npz' is the input file 'raw.npz'"),
    (_hardlink, {"overwrite": True}, r"^output: 'hard.npz' is the input file 'raw.npz'"),
    (_existing, {},
     r"^output: 'x.npz' exists; pass --overwrite to replace it$"),
    (_folder, {"overwrite": True}, r"^output: 'd.npz' is a directory; expected the path of a "),
    (_fifo, {"overwrite": True}, r"^output: 'pipe.npz' exists and is not a regular file"),
    (lambda w: "x.tiff", {}, r"^output: expected a .npz, .h5 or .hdf5 file, got 'x.tiff'$"),
    (lambda w: "x.npz", {"suffixes": (".png",), "name": "--png"},
     r"^--png: expected a .png file, got 'x.npz'$"),
    (_parent_file, {}, r"^output: 'notes/a/b/r.npz' cannot be created: '.*notes' is not a "
                       r"folder$"),
])
def test_check_output_refuses(workdir, make, options, message):
    out = make(workdir)
    with pytest.raises(ft.InputError, match=message):
        ft_files.check_output(out, inputs=["raw.npz"], **options)


def test_check_output_needs_a_writable_folder(workdir, monkeypatch):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if os.path.samefile(
        p, workdir) else real_access(p, mode, **k))
    with pytest.raises(ft.InputError, match=r"^output: 'new/r.npz' cannot be written: no "
                                            r"permission to write in '.*'"):
        ft_files.check_output("new/r.npz")


def test_check_output_in_a_read_only_folder(workdir):
    import os

    if os.name == "nt" or os.geteuid() == 0:
        pytest.skip("permissions do not bind root (or Windows)")
    (workdir / "ro").mkdir(mode=0o500)
    try:
        with pytest.raises(ft.InputError, match="'ro/r.npz' cannot be written"):
            ft_files.check_output("ro/r.npz")
    finally:
        (workdir / "ro").chmod(0o700)


def _save_under_a_file(w):
    (w / "reg").write_text("a file")
    return "reg/x.npz"


@pytest.mark.parametrize("make, message", [
    (_folder, r"^path: 'd.npz' is a directory; expected the path of a file$"),
    (_save_under_a_file, r"^path: 'reg/x.npz' cannot be created: '.*reg' is not a folder$"),
    (lambda w: None, r"^path: expected a file path \(str or pathlib.Path\), got NoneType$"),
    (lambda w: b"x.npz", r"^path: expected a file path .*got bytes$"),
    (lambda w: "", r"^path: expected a file path, got an empty string$"),
    (lambda w: "a" * 300 + ".npz", r"^path: the name 'a{40}'... has 304 bytes; the file "
                                   r"system allows \d+$"),
    (lambda w: "a\0b.npz", r"^path: expected a file path without NUL characters"),
    (lambda w: "/".join(["abcdefgh"] * 600) + ".npz", r"^path: the path .* has \d+ bytes; "
                                                      r"the system takes paths of fewer than"),
])
def test_save_refuses_paths_that_cannot_be_files(workdir, make, message):
    """save raised IsADirectoryError, FileExistsError, TypeError, OSError 36 and a
    plain ValueError for these."""
    a = np.ones((8, 8))
    t = ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2, energy=300e3)
    target = make(workdir)
    before = _names(workdir)
    with pytest.raises(ft.InputError, match=message):
        ft.save(target, t)
    assert _names(workdir) == before  # nothing created, no temporary


def test_save_into_an_unwritable_place_names_the_path_not_the_temporary(tmp_path,
                                                                         monkeypatch):
    """/proc/x.npz: FileNotFoundError naming '/proc/.x.npz.flowtie-tmp...'."""
    import errno
    import os

    a = np.ones((8, 8))
    t = ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2, energy=300e3)
    if os.path.isdir("/proc"):
        with pytest.raises((ft.InputError, OSError)) as info:
            ft.save("/proc/x.npz", t)
        assert "'/proc/x.npz'" in str(info.value) and "flowtie-tmp" not in str(info.value)
    real_open = os.open

    def refuse(path, *args, **kwargs):  # a folder that takes no new files
        if "flowtie-tmp" in str(path):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(FileNotFoundError) as info:
        ft.save(tmp_path / "x.npz", t)
    text = str(info.value)
    assert text.startswith("[Errno 2] path: ") and "x.npz' cannot be written (No such file" in text
    assert "flowtie-tmp" not in text and "\n" not in text and _names(tmp_path) == []


def test_save_keeps_an_existing_file_unless_overwrite_is_true(workdir, monkeypatch):
    """overwrite=False said 'created meanwhile by another writer ... pass --overwrite'
    (a CLI flag) after writing a temporary; overwrite="no" replaced the file."""
    a = np.ones((8, 8))
    t = ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2, energy=300e3)
    (workdir / "ow.npz").write_bytes(b"keep")
    created, real_create_tmp = [], ft_files._create_tmp
    monkeypatch.setattr(ft_files, "_create_tmp", lambda *a: created.append(a))
    with pytest.raises(ft.InputError, match=r"^path: 'ow.npz' exists; pass overwrite=True to "
                                            r"replace it$"):
        ft.save("ow.npz", t, overwrite=False)
    for bad in ("no", 0, None, np.array([True])):
        with pytest.raises(ft.InputError, match=r"^overwrite: expected True or False, got "):
            ft.save("ow.npz", t, overwrite=bad)
    assert (workdir / "ow.npz").read_bytes() == b"keep" and created == []
    monkeypatch.setattr(ft_files, "_create_tmp", real_create_tmp)
    for call in (lambda: ft.io.write_fields("w.npz", {"a": np.ones(2)}, overwrite="no"),
                 lambda: ft_files.check_output("w.npz", overwrite="yes"),
                 lambda: ft_files.atomic_path("w.npz", "no").__enter__()):
        with pytest.raises(ft.InputError, match="^overwrite: expected True or False"):
            call()
    assert not (workdir / "w.npz").exists()
    ft.save("ow.npz", t, overwrite=np.bool_(True))
    assert ft.load(workdir / "ow.npz").triplet().shape == (8, 8)


@pytest.mark.parametrize("case, says", [
    ("never", r"'/plus' of shape \(16, 16\) was never written \(HDF5 holds no storage for "
              r"it; it would read as its fill value 1000\); expected recorded data$"),
    ("never_chunked", r"'/plus' of shape \(16, 16\) was never written"),
    ("part", r"'/plus' of shape \(16, 16\) holds 1 of 2 chunks: partly written \(the "
             r"missing ones would read as its fill value 0\); expected a complete dataset$"),
])
def test_hdf5_planes_never_or_partly_written_are_refused(tmp_path, case, says):
    """HDF5 read what was never written as the fill value: the phase was 15 to
    90 times too strong, without a word."""
    h5py = pytest.importorskip("h5py")
    a = 1 + 0.1 * np.random.default_rng(0).random((16, 16))
    path = tmp_path / f"{case}.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update(dz=[20.0, 20.0], scan_step=[0.2, 0.2], energy=300e3)
        f["minus"], f["zero"] = a, a
        if case == "never":
            f.create_dataset("plus", shape=(16, 16), dtype="f4", fillvalue=1000.0)
        elif case == "never_chunked":
            f.create_dataset("plus", shape=(16, 16), dtype="f4", chunks=(8, 16))
        else:
            f.create_dataset("plus", shape=(16, 16), dtype="f4", chunks=(8, 16))[:8] = a[:8]
    with pytest.raises(ft.InputError, match=f"^{case}.h5: the HDF5 dataset {says}"):
        ft.load(path)
    with h5py.File(path, "a") as f:
        f["plus"][...] = a  # written in full, it loads
    with ft.load(path) as ds:
        np.testing.assert_allclose(ds.triplet().planes[2], a, rtol=1e-6)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_by_default_keeps_an_existing_file_even_the_input(tmp_path, suffix):
    """The default was overwrite=True: saving onto the input replaced it silently."""
    a = np.ones((8, 8))
    path = tmp_path / f"in{suffix}"
    ft.save(path, ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2, energy=300e3))
    before = path.read_bytes()
    with ft.load(path) as ds:
        t = ds.triplet()
    changed = ft.FocalTriplet(*t.planes, dz=10.0, pixel_size=1.0, energy=200e3)
    with pytest.raises(ft.InputError, match=r"^path: '.*in\.(npz|h5)' exists; pass "
                                            r"overwrite=True to replace it$"):
        ft.save(path, changed)
    assert path.read_bytes() == before and _names(tmp_path) == [path.name]
    ft.save(path, changed, overwrite=True)
    with ft.load(path) as ds:
        assert ds.triplet().dz == (10.0, 10.0)


def test_saving_a_closed_hdf5_dataset_is_refused(tmp_path):
    """save raised h5py's RuntimeError for a Dataset whose file was closed."""
    a = np.ones((8, 8))
    ft.save(tmp_path / "g.h5", ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2,
                                               energy=300e3))
    ds = ft.load(tmp_path / "g.h5")
    ds.close()
    with pytest.raises(ft.InputError, match="^obj: its HDF5 file is closed; load it again"):
        ft.save(tmp_path / "c.npz", ds)
    other = ft.load(tmp_path / "g.h5")
    other._handle.close()  # closed through h5py, not Dataset.close
    for call, name in ((lambda: ft.save(tmp_path / "c.npz", other), "obj"),
                       (other.triplet, "dataset")):
        with pytest.raises(ft.InputError, match=f"^{name}: its HDF5 file is closed"):
            call()
    assert _names(tmp_path) == ["g.h5"]


def test_a_triplet_keeps_its_measured_gradient_through_save_and_load(tmp_path):
    """save dropped a FocalTriplet's gradient: icom was impossible after reload."""
    rng = np.random.default_rng(3)
    planes = [1 + 0.1 * rng.random((16, 12)) for _ in range(3)]
    gradient = 0.01 * rng.standard_normal((2, 16, 12))
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3, gradient=gradient)
    expected = ft.reconstruct(t, method="icom", backend="cpu").phase
    for suffix in (".npz", ".h5"):
        with ft.load(ft.save(tmp_path / f"g{suffix}", t)) as ds:
            np.testing.assert_array_equal(ds.gradient, gradient)
            back = ds.triplet()
        np.testing.assert_array_equal(back.gradient, gradient)
        np.testing.assert_array_equal(ft.reconstruct(back, method="icom", backend="cpu").phase,
                                      expected)
    stack = [np.ones((2, 2, 4, 4))] * 3
    with pytest.raises(ft.InputError, match="^obj: 'gradient' is for a "
                                            "triplet of images only"):
        ft.save(tmp_path / "s.npz", ft.Dataset(*stack, dz=(20.0, 20.0), scan_step=(0.2, 0.2),
                                               energy=300e3, k_sampling=(0.1, 0.1),
                                               gradient=np.zeros((2, 2, 2))))


@pytest.fixture(scope="module")
def dark_field_triplet():
    """A 4D-STEM triplet of annular dark-field ('df') images, with the noise
    of its planes and of its centre of mass measured above the band limit."""
    data, k = _disk_data()
    return ft.FocalTriplet.from_4dstem(*data, dz=20.0, scan_step=0.2, k_sampling=k, energy=E,
                                       virtual="df", backend="cpu")


def _solved(t, method, **kw):
    """The phase of ``t`` by ``method`` on the CPU, its info and the messages of
    the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec = ft.reconstruct(t, method=method, backend="cpu", **kw)
    return rec.phase, rec.info, [str(w.message) for w in caught
                                 if issubclass(w.category, ft.TrustWarning)]


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_keeps_its_virtual_image_and_noise_through_save_and_load(
        tmp_path, dark_field_triplet, suffix):
    """save dropped triplet.virtual and triplet.noise: reloaded 'df' planes
    were taken for planes of unknown image (the TIE methods said nothing of
    them) and of unknown noise (nothing regularised). The reloaded triplet
    solves as the original, warnings included."""
    t = dark_field_triplet
    assert t.noise.source == "band" and t.gradient_noise is not None
    with ft.load(ft.save(tmp_path / f"df{suffix}", t)) as ds:
        assert ds.virtual == "df" and ds.noise == t.noise
        back = ds.triplet()
    assert back.virtual == "df"
    assert back.noise == t.noise and back.gradient_noise == t.gradient_noise
    for method in ("tie", "icom"):
        phase, info, said = _solved(back, method)
        expected, info_expected, said_expected = _solved(t, method)
        np.testing.assert_array_equal(phase, expected)
        assert info.get("trust") == info_expected.get("trust") and said == said_expected
    assert any(m.startswith("tie: the planes are 'df' images") for m in _solved(back, "tie")[2])


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_keeps_its_registration_record_through_save_and_load(tmp_path, suffix):
    """A triplet whose drift could not be measured is judged so by every
    method (a TrustWarning, flowtie not trusted); save dropped the record,
    and the reloaded triplet's phase came back without the word. The
    record, shifts included, survives the round trip, and so does the
    verdict."""
    rng = np.random.default_rng(2)
    base = rng.random((6, 6)) + 1
    planes = [base * (1 + 0.01 * i) for i in (-1, 0, 1)]
    with pytest.warns(UserWarning, match="too small to measure a drift"):
        t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3, register=True)
    assert t.registration["reliable"] is False
    with ft.load(ft.save(tmp_path / f"small{suffix}", t)) as ds:
        back = ds.triplet()
    assert set(back.registration) == set(t.registration)
    np.testing.assert_array_equal(back.registration["shifts"], t.registration["shifts"])
    assert {k: v for k, v in back.registration.items() if k != "shifts"} == \
        {k: v for k, v in t.registration.items() if k != "shifts"}
    for triplet in (t, back):
        with pytest.warns(ft.TrustWarning, match="drift between the scans could not be "
                                                 "measured"):
            rec = ft.reconstruct(triplet, method="tie-uniform", backend="cpu")
        assert rec.info["trust"] == "the drift between the scans could not be measured"


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_keeps_the_verdict_of_its_gradient_s_orientation(tmp_path, suffix):
    """A triplet of 'df' planes had its centre of mass checked against the
    bright-field images of its 4D-STEM data, which a file does not hold: the
    reloaded triplet checked it for curl only, and a half turn found when it
    was made came back as the negative icom phase without a word. The
    verdict is stored; the reloaded triplet says it again and every method
    reads it."""
    rng = np.random.default_rng(4)
    planes = [1 + 0.05 * rng.random((16, 16)) for _ in range(3)]
    gradient = 0.01 * rng.standard_normal((2, 16, 16))
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3, gradient=gradient,
                        virtual="df")
    why = "gradient: points against the bright-field TIE gradient (half a turn off?)"
    t.gradient_orientation = {**t.gradient_orientation, "suspect": True, "why": why}
    with ft.load(ft.save(tmp_path / f"turned{suffix}", t)) as ds:
        assert ds.orientation == {"suspect": True, "why": why}
        with pytest.warns(ft.TrustWarning, match=r"^gradient: points against"):
            back = ds.triplet()
    assert back.gradient_orientation["suspect"] is True
    assert back.gradient_orientation["why"] == why
    for triplet in (t, back):
        with pytest.warns(ft.TrustWarning, match="icom: gradient: points against"):
            rec = ft.reconstruct(triplet, method="icom", backend="cpu")
        assert rec.info["trust"] == why
    # a triplet whose check found nothing stores no verdict
    t.gradient_orientation = {**t.gradient_orientation, "suspect": False}
    with ft.load(ft.save(tmp_path / f"right{suffix}", t)) as ds:
        assert ds.orientation is None



@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_keeps_the_scale_verdict_of_its_gradient(tmp_path, suffix):
    """The scale disagreement of a gradient and its planes is no longer an
    orientation suspicion, and the file stored suspicions only: a 'df'
    triplet whose centre of mass was found 10 times off the bright-field
    images of its 4D-STEM data (not in the file) came back without it, and
    icom's phase 10 times off without a word. The verdict is stored; the
    reloaded triplet warns as the original and every method reads it."""
    rng = np.random.default_rng(4)
    planes = [1 + 0.05 * rng.random((16, 16)) for _ in range(3)]
    gradient = 0.01 * rng.standard_normal((2, 16, 16))
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3, gradient=gradient,
                        virtual="df")
    t.gradient_orientation = {**t.gradient_orientation, "tie_correlation": 0.9,
                              "tie_scale": (9.5, 10.5), "misscaled": 10.0}
    why = trust.scale_warning(t.gradient_orientation)
    with ft.load(ft.save(tmp_path / f"scaled{suffix}", t)) as ds:
        with pytest.warns(ft.TrustWarning) as caught:
            back = ds.triplet()
    # (these random planes are noise alone, said too: triplet.noise_check)
    assert [str(w.message) for w in caught if str(w.message) != back.noise_check] == [why]
    assert trust.scale_warning(back.gradient_orientation) == why
    assert back.gradient_orientation["suspect"] is False
    for method in ("icom", "tie"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            rec = ft.reconstruct(back, method=method, backend="cpu")
        assert rec.info["trust"].startswith(why), method
    with pytest.raises(ft.InputError, match="orientation must be a verdict"):
        ft.save(tmp_path / f"bad{suffix}", ft.Dataset(
            *planes, dz=20.0, scan_step=0.2, energy=300e3, gradient=gradient,
            orientation={"suspect": False, "why": None, "misscaled": 10.0}))

@pytest.fixture(scope="module")
def saturated_triplet():
    """A 4D-STEM triplet of counts whose +dz scan is clipped at a top value
    (a saturated detector), with its descan plane, flux factors and gain."""
    counted, _, kw = _counted_disks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the saturation and the registration, as tested
        return ft.FocalTriplet.from_4dstem(counted[0], counted[1],
                                           np.minimum(counted[2], 190), **kw)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_saturated_triplet_keeps_its_verdict_through_save_and_load(
        tmp_path, saturated_triplet, suffix):
    """A triplet whose detector saturated is distrusted by every solve
    (info["trust"], flowtie's "trusted" False); save dropped its saturation
    record, and the reloaded triplet's phase came back trusted. The record
    survives the round trip, the reloaded triplet warns again, and every
    method gives the original's verdict and fallback."""
    t = saturated_triplet
    assert t.saturation["saturated"]
    with ft.load(ft.save(tmp_path / f"sat{suffix}", t)) as ds:
        assert ds.saturation == t.saturation
        with pytest.warns(stem.DetectorWarning, match=r"^plus: .* read exactly 190"):
            back = ds.triplet()
    assert back.saturation == t.saturation
    methods = ["tie", "icom"] + (["flowtie"] if importlib.util.find_spec("torch") else [])
    for method in methods:
        _, info, said = _solved(back, method)
        _, info_expected, said_expected = _solved(t, method)
        assert info["trust"].startswith("the detector saturated (triplet.saturation): plus: ")
        assert info["trust"] == info_expected["trust"] and said == said_expected
        assert info.get("fallback") == info_expected.get("fallback")
        assert info.get("trusted") == info_expected.get("trusted")
        if method == "flowtie":
            assert info["trusted"] is False


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_integer_images_at_full_scale_keep_their_verdict_through_save_and_load(
        tmp_path, suffix):
    """Integer planes given directly carry a saturation record of the planes
    (not of scans): it is saved, read back and checked like the scans' one
    (a record of the planes was refused by save), for saturated planes and
    for planes below their full scale alike."""
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_series

    phase, amp = phase_object(48, 0.5)
    s = defocus_series(phase, (-20.0, 0.0, 20.0), 0.5, 300e3, amp)
    kw = dict(dz=20.0, pixel_size=0.5, energy=300e3)
    over = 65535 / float(np.percentile(np.asarray(s.planes[0]), 99))
    for scale, saturated in ((over, True), (1000.0, False)):
        planes = [np.minimum(np.round(np.asarray(p) * scale), 65535).astype(np.uint16)
                  for p in s.planes]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            t = ft.FocalTriplet(*planes, **kw)
        assert t.saturation["saturated"] is saturated and "planes" in t.saturation
        with ft.load(ft.save(tmp_path / f"{saturated}{suffix}", t)) as ds:
            assert ds.saturation == t.saturation
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                back = ds.triplet()
        assert back.saturation == t.saturation
        if saturated:
            _, info, _ = _solved(back, "tie")
            assert info["trust"] == _solved(t, "tie")[1]["trust"]
            assert info["trust"].startswith("the detector saturated (triplet.saturation): minus")
    bad = {**t.saturation, "scans": {"minus": None, "zero": None, "plus": None}}
    t.saturation = bad
    with pytest.raises(ft.InputError, match="its saturation must be a saturation record"):
        ft.save(tmp_path / f"both{suffix}", t)


def test_integer_images_at_full_scale_of_a_dataset_without_the_record_stay_distrusted():
    """A dataset of integer planes that holds no saturation record (a
    flowtie_fast/1 file, a Dataset made in memory) gives a triplet whose own
    full-scale check stands: the record the triplet found in its planes is
    not replaced by the dataset's absent one."""
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_series

    phase, amp = phase_object(48, 0.5)
    s = defocus_series(phase, (-20.0, 0.0, 20.0), 0.5, 300e3, amp)
    over = 65535 / float(np.percentile(np.asarray(s.planes[0]), 99))
    planes = [np.minimum(np.round(np.asarray(p) * over), 65535).astype(np.uint16)
              for p in s.planes]
    ds = ft.io.Dataset(*planes, (20.0, 20.0), (0.5, 0.5), 300e3)
    assert ds.saturation is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = ds.triplet()
    assert t.saturation is not None and t.saturation["saturated"]
    assert sum("full scale of uint16" in str(w.message) for w in caught) == 1
    _, info, _ = _solved(t, "tie")
    assert info["trust"].startswith("the detector saturated (triplet.saturation): minus")


def test_flowtie_reconstruct_of_a_saved_saturated_triplet_says_it_saturated(
        tmp_path, saturated_triplet, capsys):
    """`flowtie reconstruct` of a saved triplet reads it through load: the
    saturation is warned again and the scans' beam currents reported, as of
    the 4D-STEM file it was made from (neither was said before)."""
    from flowtie_fast.cli import main

    path = ft.save(tmp_path / "sat.npz", saturated_triplet)
    assert main(["reconstruct", str(path), "-o", str(tmp_path / "out.npz"), "--method",
                 "icom", "--backend", "cpu"]) == 0
    said = capsys.readouterr()
    assert re.search(r"^flowtie reconstruct: warning: plus: .* read exactly 190, its maximum",
                     said.err, re.M)
    assert "beam: the -dz and +dz scans hold " in said.out


@pytest.mark.parametrize("method, suffix", [("tie", ".npz"), ("icom", ".h5"),
                                           ("flowtie", ".npz")])
def test_flowtie_reconstruct_writes_the_verdict_of_a_saturated_triplet(
        tmp_path, saturated_triplet, method, suffix):
    """The output of `flowtie reconstruct` held the phase and, for flowtie, the
    fallback, but not the verdict: a phase flagged (a saturated detector,
    flowtie's flow not trusted) read later from the file looked like any
    other. The file holds ``verdict``, JSON text of the solve's trust
    entries, equal to reconstruct's for the same triplet."""
    from flowtie_fast.cli import main
    from flowtie_fast.trust import verdict_entries

    if method == "flowtie" and importlib.util.find_spec("torch") is None:
        pytest.skip("flowtie needs PyTorch")
    path = ft.save(tmp_path / "sat.npz", saturated_triplet)
    with ft.load(path) as ds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = verdict_entries(ft.reconstruct(ds.triplet(), method=method,
                                                  backend="cpu").info)
    assert want["trust"].startswith("the detector saturated (triplet.saturation): plus: ")
    out = tmp_path / f"out{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["reconstruct", str(path), "-o", str(out), "--method", method,
                     "--backend", "cpu"]) == 0
    if suffix == ".npz":
        with np.load(out) as f:
            text, keys = str(f["verdict"]), set(f.files)
    else:
        import h5py

        with h5py.File(out, "r") as f:
            text, keys = f.attrs["verdict"], set(f.attrs) | set(f)
            text = text.decode() if isinstance(text, bytes) else str(text)
    verdict = json.loads(text)
    assert verdict == want
    if method == "flowtie":
        assert verdict["trusted"] is False
    assert ("fallback" in keys) == ("fallback" in want)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_4dstem_triplet_keeps_its_descan_and_flux_records_through_save_and_load(
        tmp_path, saturated_triplet, suffix):
    """The descan plane removed from a 4D-STEM triplet's gradient and the
    beam-current factors of its scans (with the gain of its counts) were
    dropped by save; they come back equal, types included."""
    t = saturated_triplet
    assert t.descan["applied"] and t.flux["applied"] and t.flux["gain"] is not None
    path = ft.save(tmp_path / f"records{suffix}", t)
    with ft.load(path) as ds:
        with pytest.warns(stem.DetectorWarning):
            back = ds.triplet()
    assert back.descan == t.descan and back.flux == t.flux
    assert isinstance(back.flux["scale"], tuple) and isinstance(back.descan["slopes"], list)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_keeps_the_record_of_its_replaced_pixels_through_save_and_load(
        tmp_path, suffix):
    """A triplet whose isolated pixels were replaced stores the repaired
    planes, in which nothing is found again: save dropped
    triplet.plane_defects, and the reloaded triplet's solves no longer said
    the planes had been repaired. The record comes back equal, with its
    TrustWarning, and every solve reports it as for the original. Pixels
    too many to be replaced are not stored: the planes stored still hold
    them, and the reloaded triplet finds them again."""
    rng = np.random.default_rng(8)
    y, x = np.mgrid[:32, :32]
    base = 100 * (1 + 0.2 * np.sin(x / 3.0) * np.cos(y / 4.0))
    planes = [base * (1 + 0.01 * i) + rng.normal(0, 0.1, base.shape) for i in (-1, 0, 1)]
    planes[2][20, 11] *= 20  # a cosmic ray
    with pytest.warns(ft.TrustWarning, match=r"^plus: 1 isolated pixel .* replaced"):
        t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3)
    assert t.plane_defects["repaired"]
    with ft.load(ft.save(tmp_path / f"ray{suffix}", t)) as ds:
        assert ds.plane_defects == t.plane_defects
        with pytest.warns(ft.TrustWarning, match=r"^plus: 1 isolated pixel"):
            back = ds.triplet()
    assert back.plane_defects == t.plane_defects
    for method in ("tie", "tie-uniform"):
        _, info, said = _solved(back, method)
        _, info_expected, said_expected = _solved(t, method)
        assert info["plane_defects"] == info_expected["plane_defects"] == t.plane_defects
        assert info["trust"] == info_expected["trust"] == t.plane_defects["why"]
    # more than the screen replaces: reported, not replaced, found again when loaded
    many = [p.copy() for p in planes]
    for i in range(20):
        many[2][1 + (i // 5) * 6, 2 + (i % 5) * 6] *= 20
    with pytest.warns(ft.TrustWarning, match=r"^plus: 21 isolated pixels .* not replaced"):
        t = ft.FocalTriplet(*many, dz=20.0, pixel_size=0.2, energy=300e3)
    assert not t.plane_defects["repaired"]
    with ft.load(ft.save(tmp_path / f"rays{suffix}", t)) as ds:
        assert ds.plane_defects is None
        with pytest.warns(ft.TrustWarning, match=r"^plus: 21 isolated pixels"):
            back = ds.triplet()
    assert back.plane_defects == t.plane_defects


def test_a_reloaded_dark_field_triplet_is_not_trusted_by_the_flow_models(tmp_path,
                                                                          dark_field_triplet):
    """A reloaded triplet of 'df' planes was judged as bright-field planes by
    flowtie's trust check (the shipped models read 'bf' images): it keeps the
    original's verdict, reason, warning and fallback phase."""
    pytest.importorskip("torch")
    t = dark_field_triplet
    with ft.load(ft.save(tmp_path / "df.h5", t)) as ds:
        back = ds.triplet()
    phase, info, said = _solved(back, "flowtie")
    expected, info_expected, said_expected = _solved(t, "flowtie")
    assert info["trusted"] is False and info["fallback"] == info_expected["fallback"] == "icom"
    assert said == said_expected
    assert any("the planes are 'df' images and the shipped models read bright-field" in m
               for m in said)
    np.testing.assert_array_equal(phase, expected)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_triplet_file_without_virtual_or_noise_loads_as_before(tmp_path, suffix):
    """Files of the layout written before virtual and noise were stored load
    as they did: virtual None, the noise estimated when the triplet is made
    (Poisson for counts, else unknown), the gradient's noise unknown."""
    rng = np.random.default_rng(5)
    gradient = 0.01 * rng.standard_normal((2, 16, 12))
    for dtype, source in ((np.float64, None), (np.uint16, "poisson")):
        planes = [rng.integers(90, 110, (16, 12)).astype(dtype) for _ in range(3)]
        path = tmp_path / f"old_{np.dtype(dtype).name}{suffix}"
        ft.io.write_fields(path, {"format": "flowtie_fast/1", "kind": "triplet", "minus": planes[0],
                                  "zero": planes[1], "plus": planes[2],
                                  "dz": np.array([20.0, 20.0]), "scan_step": np.array([0.2, 0.2]),
                                  "energy": 300e3, "gradient": gradient},
                           arrays=ft.io._ARRAYS)
        with ft.load(path) as ds:
            assert ds.virtual is ds.noise is ds.gradient_noise is None
            t = ds.triplet()
        assert t.virtual is None and t.gradient_noise is None
        assert (t.noise is None) if source is None else (t.noise.source == source)
        np.testing.assert_array_equal(t.gradient, gradient)


def test_a_noise_that_is_no_noise_is_not_saved(tmp_path):
    """A Dataset's noise must be a Noise (as a triplet holds) to be written."""
    planes = [np.ones((4, 4))] * 3
    ds = ft.Dataset(*planes, dz=(20.0, 20.0), scan_step=(0.2, 0.2), energy=300e3, noise=0.5)
    with pytest.raises(ft.InputError, match=r"^obj: expected its noise to be a Noise or None, "
                                            r"got 0.5$"):
        ft.save(tmp_path / "n.npz", ds)
    bad = ft.Dataset(*planes, dz=(20.0, 20.0), scan_step=(0.2, 0.2), energy=300e3,
                     noise=ft.noise.Noise((1.0, -1.0, 1.0), "given"))
    with pytest.raises(ft.InputError, match=r"^obj: 'noise' must be 3 finite non-negative "
                                            r"variances \(intensity², one per plane\), got "
                                            r"\[1.0, -1.0, 1.0\]$"):
        ft.save(tmp_path / "n.npz", bad)
    assert not (tmp_path / "n.npz").exists()


# --------------------------------------------------------------------------- hostile files

def _base_triplet():
    return {"minus": np.ones((4, 4)), "zero": np.ones((4, 4)), "plus": np.ones((4, 4)),
            "dz": np.array([10.0, 10.0]), "scan_step": np.array([0.5, 0.5]),
            "energy": 300e3}


def _base_4d():
    return {"minus": np.ones((2, 2, 3, 3)), "zero": np.ones((2, 2, 3, 3)),
            "plus": np.ones((2, 2, 3, 3)), "dz": 10.0, "scan_step": 0.5, "energy": 300e3,
            "k_sampling": np.array([0.1, 0.1])}


def _write_case(path, fields):
    """``.npz``: every key as saved by np.savez (object arrays pickled);
    HDF5: arrays as datasets, the rest as root attributes, or ``value(file, key)``
    for a crafted HDF5 object."""
    if path.suffix == ".npz":
        np.savez(path, **fields)
        return
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            if isinstance(v, np.ndarray) and v.dtype.kind == "U":
                v = v.astype("S")  # HDF5 holds byte strings
            if callable(v):
                v(f, k)
            elif k in ft.io._ARRAYS:
                f.create_dataset(k, data=v)
            else:
                f.attrs[k] = v


_OBJECTS = np.array([["a", 1], [None, 2.0]] * 2, dtype=object)

#: A registration record as save writes it: the drift could not be measured.
_REG = ('{"shifts": [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]], "reliable": false, '
        '"applied": false, "signal": null, "why": "images under 8 px a side"}')

#: A saturation record as save writes it: the +dz scan clipped at 190.
_SAT = ('{"saturated": true, "why": "plus: x. y", "scans": {"minus": null, "zero": null, '
        '"plus": {"value": 190.0, "pixels": 180, "share": 0.1, "next": 3, "full_scale": false, '
        '"detector_pixels": 40, "saturated": true, "why": "plus: x"}}}')
#: A descan record as save writes it.
_DESCAN = ('{"mode": "plane", "applied": true, "slopes": [[0.0, 1e-05], [2e-05, 0.0]], '
           '"across_px": 0.25, "across_mrad": 0.4, "large": false}')
#: A flux record as save writes it.
_FLUX = ('{"per_pattern": [98.0, 100.0, 102.0], "scale": [1.02, 1.0, 0.98], "applied": true, '
         '"why": null, "gain": null}')
#: A record of one replaced pixel of the +dz plane (4 x 4 planes).
_DEFECTS = '{"pixels": {"plus": [[2.0, 1.0, 40.0, 2.0]]}, "repaired": true, "why": "plus: 1"}'

_HOSTILE = [  # (base, changes, key, what the message says after the key)
    ("3", {"dz": "abc"}, "dz", r"must be a positive finite number or a pair of them \(Å\), "
                               r"got .?'abc'"),
    ("3", {"dz": [1.0, 2.0, 3.0]}, "dz", r"must be .*, got 3 values of shape \(3,\)$"),
    ("3", {"dz": [[1.0, 2.0]]}, "dz", r"got 2 values of shape \(1, 2\)"),
    ("3", {"dz": np.array([], float)}, "dz", r"got 0 values of shape \(0,\)"),
    ("3", {"dz": [-1.0, 1.0]}, "dz", r"got \[-1.0, 1.0\]"),
    ("3", {"dz": np.nan}, "dz", r"got \[nan\]"),
    ("3", {"dz": True}, "dz", "got True"),
    ("3", {"dz": np.array([True, False])}, "dz", "dtype bool"),
    ("3", {"dz": 1 + 2j}, "dz", r"got \(1\+2j\)"),
    ("3", {"energy": np.ones(5)}, "energy", r"must be a positive finite number \(eV\), got "
                                            r"5 values of shape \(5,\)$"),
    ("3", {"energy": 0.0}, "energy", r"got \[0.0\]"),
    ("3", {"energy": -np.inf}, "energy", r"got \[-inf\]"),
    ("3", {"energy": "300 keV"}, "energy", "300 keV"),
    ("3", {"scan_step": np.ones(3)}, "scan_step", r"got 3 values of shape \(3,\)"),
    ("3", {"scan_step": "0.5"}, "scan_step", "got .?'0.5'"),
    ("3", {"minus": np.ones(4)}, "minus", r"has shape \(4,\), expected \(4, 4\) like 'zero'"),
    ("3", {"zero": np.float64(1.0)}, "zero", r"must be 2-D \(triplet\) or 4-D \(4D-STEM\), "
                                             r"got shape \(\)"),
    ("3", {"zero": np.ones((4, 4, 4))}, "zero", r"got shape \(4, 4, 4\)"),
    ("3", {"minus": np.ones((4, 4), bool)}, "minus", "has dtype bool; expected real numbers"),
    ("3", {"plus": np.ones((4, 4), complex)}, "plus", "has dtype complex128"),
    ("3", {"zero": np.full((4, 4), "a")}, "zero", "has dtype"),
    ("3", {"minus": np.zeros((0, 4)), "zero": np.zeros((0, 4)), "plus": np.zeros((0, 4))},
     "zero", r"is empty \(shape \(0, 4\)\)"),
    # The empty plane is named, not the full one compared with it.
    ("3", {"zero": np.zeros((0, 0))}, "zero", r"is empty \(shape \(0, 0\)\)$"),
    ("3", {"zero": np.zeros((4, 0))}, "zero", r"is empty \(shape \(4, 0\)\)$"),
    ("3", {"plus": np.zeros((0, 4))}, "plus", r"is empty \(shape \(0, 4\)\)$"),
    ("4", {"zero": np.zeros((2, 2, 0, 3))}, "zero", r"is empty \(shape \(2, 2, 0, 3\)\)$"),
    ("4", {"minus": np.zeros((0, 2, 3, 3))}, "minus", r"is empty \(shape \(0, 2, 3, 3\)\)$"),
    ("3", {"phase_gt": np.ones((4, 4), complex)}, "phase_gt", "has dtype complex128"),
    ("3", {"gradient_gt": np.ones((4, 4))}, "gradient_gt", r"has shape \(4, 4\), expected "
                                                           r"\(2, 4, 4\)"),
    ("3", {"material": 5}, "material", "must be a string, got 5"),
    ("3", {"material": np.ones(3)}, "material", "must be a string, got an array"),
    ("3", {"material": np.bytes_(b"\xff\xfe")}, "material", "is not UTF-8 text"),
    ("3", {"thickness": "thick"}, "thickness", r"must be a positive finite number \(Å\)"),
    ("3", {"semiangle": -1.0}, "semiangle", r"\(mrad\), got \[-1.0\]"),
    ("4", {"k_sampling": "abc"}, "k_sampling", r"must be .* \(1/Å\)"),
    ("4", {"k_sampling": np.ones(3)}, "k_sampling", r"got 3 values of shape \(3,\)"),
    ("4", {"k_sampling": [0.0, 0.1]}, "k_sampling", r"got \[0.0, 0.1\]"),
    ("4", {"minus": np.ones((2, 2, 3, 4))}, "minus", r"has shape \(2, 2, 3, 4\)"),
    # The declared format and kind were ignored: a newer file loaded as this layout.
    ("3", {"format": "flowtie_fast/9"}, "format", r"is 'flowtie_fast/9': written by a newer "
                                                  r"flowtie_fast \(this version reads up to "
                                                  r"'flowtie_fast/2'\)"),
    ("3", {"format": "h5py/1"}, "format", r"must be 'flowtie_fast/1' or 'flowtie_fast/2', "
                                          r"got 'h5py/1'$"),
    ("3", {"format": "flowtie_fast/0"}, "format", r"must be 'flowtie_fast/1' or "
                                                  r"'flowtie_fast/2', got 'flowtie_fast/0'$"),
    ("3", {"format": 1.0}, "format", "must be a string, got 1.0"),
    ("3", {"kind": "4dstem"}, "kind", r"is '4dstem' but 'zero' has shape \(4, 4\) \(2-D "
                                      r"images \(a triplet\)\); expected kind 'triplet'$"),
    ("4", {"kind": "triplet"}, "kind", r"is 'triplet' but 'zero' has shape \(2, 2, 3, 3\)"),
    ("3", {"kind": "movie"}, "kind", r"must be '4dstem' or 'triplet', got 'movie'$"),
    ("3", {"gradient": np.ones((4, 4))}, "gradient", r"has shape \(4, 4\), expected "
                                                     r"\(2, 4, 4\)"),
    ("3", {"gradient": np.full((2, 4, 4), np.inf)}, "gradient", "contains NaN or Inf; a "
                                                                "measured gradient must be"),
    ("4", {"gradient": np.zeros((2, 2, 2))}, "gradient", "is for a triplet of images"),
    # The virtual image and the noise of a triplet's planes steer its solves.
    ("3", {"virtual": "dark"}, "virtual", r"must be one of \('bf', 'bf-full', 'abf', 'df', "
                                          r"'whole'\) \(the 4D-STEM virtual image the planes "
                                          r"are\), got 'dark'$"),
    ("3", {"virtual": 2.0}, "virtual", "must be a string, got 2.0"),
    ("4", {"virtual": "df"}, "virtual", "is for a triplet of images only"),
    ("3", {"noise": np.ones(2)}, "noise", r"must be 3 finite non-negative variances "
                                          r"\(intensity², one per plane\), got 2 values of "
                                          r"shape \(2,\)$"),
    ("3", {"noise": np.ones((3, 1))}, "noise", r"got 3 values of shape \(3, 1\)$"),
    ("3", {"noise": np.array([1.0, -2.0, 1.0])}, "noise", r"got \[1.0, -2.0, 1.0\]$"),
    ("3", {"noise": np.array([1.0, np.nan, 1.0])}, "noise", r"got \[1.0, nan, 1.0\]$"),
    ("3", {"noise": np.array([True, True, True])}, "noise", "dtype bool"),
    ("3", {"noise": np.ones(3), "noise_source": "guessed"}, "noise_source",
     r"must be one of \('poisson', 'band', 'given', 'estimated'\), got 'guessed'$"),
    ("3", {"noise_source": "band"}, "noise_source", "without 'noise'; expected both or neither"),
    ("4", {"noise": np.ones(3)}, "noise", "is for a triplet of images only"),
    ("3", {"gradient_noise": np.ones(2)}, "gradient_noise", "without 'gradient'"),
    ("3", {"gradient": np.zeros((2, 4, 4)), "gradient_noise": np.ones(3)}, "gradient_noise",
     r"must be 2 finite non-negative variances \(\(rad/Å\)², one per component\), got 3 "),
    # The registration record: JSON data, never code; every field checked.
    ("3", {"registration": "{not json"}, "registration", "must be JSON text of the "
                                                         "registration record"),
    ("3", {"registration": "[1, 2]"}, "registration", r"must be a registration record"),
    ("3", {"registration": _REG.replace('"applied": false', '"applied": true')},
     "registration", r"applied only where reliable"),
    ("3", {"registration": _REG.replace("[0.0, 0.0], [0.0, 0.0]", "[0.0, 0.0]")},
     "registration", "must be a registration record"),
    ("3", {"registration": _REG.replace("[0.0, 0.0], [0.0, 0.0]", "[0.0, NaN], [0.0, 0.0]")},
     "registration", "must be a registration record"),
    ("3", {"registration": _REG.replace("[0.0, 0.0], [0.0, 0.0]", "[0.0, true], [0.0, 0.0]")},
     "registration", "must be a registration record"),
    # a shift beyond the planes (printed by the CLI as applied, 300 digits)
    ("3", {"registration": _REG.replace("[0.0, 0.0], [0.0, 0.0]", "[0.0, 1e300], [0.0, 0.0]")},
     "registration", r"with shifts within the planes' extent"),
    ("3", {"registration": _REG.replace('"why"', '"code"')}, "registration",
     "must be a registration record"),
    ("3", {"registration": _REG.replace('"reliable": false', '"reliable": 0')},
     "registration", "must be a registration record"),
    ("4", {"registration": _REG}, "registration", "is for a triplet of images only"),
    # The verdict of the gradient's own orientation check: data, never code.
    ("3", {"gradient": np.zeros((2, 4, 4)), "orientation": '{"suspect": false, "why": "x"}'},
     "orientation", r"must be a verdict \{\"suspect\": true, \"why\": text\}"),
    ("3", {"gradient": np.zeros((2, 4, 4)), "orientation": '{"suspect": true}'},
     "orientation", "must be a verdict"),
    ("3", {"gradient": np.zeros((2, 4, 4)),
           "orientation": '{"suspect": true, "why": "a", "why": "b"}'},
     "orientation", "given twice"),
    ("3", {"orientation": '{"suspect": true, "why": "x"}'}, "orientation",
     "without 'gradient'"),
    # A parser's limits are the file's: deep nesting, integers beyond float, repeated keys.
    ("3", {"registration": "[" * 5000 + "]" * 5000}, "registration",
     r"must be JSON text of the registration record, got .* \(nested too deeply\)$"),
    ("3", {"registration": _REG.replace("[0.0, 0.0], [0.0, 0.0]", "[0.0, 1" + "0" * 400 +
                                        "], [0.0, 0.0]")},
     "registration", "must be a registration record"),
    ("3", {"registration": _REG.replace('"applied": false', '"applied": true, "applied": false')
           .replace('"reliable": false', '"reliable": true')},
     "registration", r"must be JSON text .*key 'applied' given twice"),
    # Texts the command line prints: JSON escapes of control characters (terminal
    # escapes, newlines) or lone surrogates (a UnicodeEncodeError naming nothing).
    ("3", {"registration": _REG.replace("images under", "\\ud800 images")}, "registration",
     r"must be a registration record .*holds '\\ud800', a lone surrogate"),
    ("3", {"registration": _REG.replace("images under", "\\u001b[2J images")}, "registration",
     r"must be a registration record .*holds '\\x1b', a control character; expected "
     "printable text"),
    ("3", {"registration": _REG.replace("images under", "\\nflowtie: error: x")},
     "registration", r"holds '\\n', a control character"),
    ("3", {"gradient": np.zeros((2, 4, 4)),
           "orientation": '{"suspect": true, "why": "\\u009b31m"}'},
     "orientation", r"must be a verdict .*holds '\\x9b', a control character"),
    ("3", {"registration": _REG.replace('"images under 8 px a side"', '"' + "x" * 70000 + '"')},
     "registration", r"must be JSON text of the registration record \(a few hundred "
                     r"characters\), got 70\d\d\d characters$"),
    # The records of a 4D-STEM triplet: data, never code; every field checked.
    ("3", {"saturation": "[true]"}, "saturation", r"must be a saturation record .*: the "
                                                  r"record must be an object"),
    ("3", {"saturation": _SAT.replace('"value": 190.0', '"value": NaN')}, "saturation",
     r"must be a saturation record .*: scans\.plus\.value must be a number \(finite\)"),
    ("3", {"saturation": _SAT.replace('"value": 190.0', '"value": "190"')}, "saturation",
     r"scans\.plus\.value must be a number"),
    ("3", {"saturation": _SAT.replace('"pixels": 180', '"pixels": 1' + "0" * 400)},
     "saturation", r"scans\.plus\.pixels must be a whole number"),
    ("3", {"saturation": _SAT.replace('"saturated": true, "why": "plus: x. y"',
                                      '"saturated": false, "why": null')},
     "saturation", r"saturated must be true where a scan saturated"),
    ("3", {"saturation": _SAT.replace('"why": "plus: x. y"', '"why": "' + "x" * 70000 + '"')},
     "saturation", r"must be JSON text of the saturation record \(a few hundred characters\), "
                   r"got 70\d\d\d characters$"),
    ("3", {"saturation": _SAT.replace('"minus": null', '"minus": null, "minus": null')},
     "saturation", "key 'minus' given twice"),
    ("4", {"saturation": _SAT}, "saturation", "is for a triplet of images only"),
    ("3", {"saturation": _SAT.replace('"why": "plus: x. y"', '"why": "plus: \\u001b[2J"')},
     "saturation", r"why must be printable text or null"),
    ("3", {"saturation": _SAT.replace('"why": "plus: x. y"', '"why": "plus: \\ud800"')},
     "saturation", r"why must be printable text or null"),
    ("3", {"gradient": np.zeros((2, 4, 4)), "descan": _DESCAN.replace("0.25", "Infinity")},
     "descan", r"must be a descan record .*: across_px must be a number of at least 0 "
               r"\(finite\)"),
    ("3", {"gradient": np.zeros((2, 4, 4)), "descan": _DESCAN.replace('"plane"', '"none"')},
     "descan", r"applied must be true where mode is 'plane'"),
    ("3", {"gradient": np.zeros((2, 4, 4)), "descan": _DESCAN.replace(', "large": false', "")},
     "descan", r"the record must be an object \{mode, applied"),
    ("3", {"descan": _DESCAN}, "descan", "without 'gradient'"),
    ("3", {"flux": _FLUX.replace("1.02", "NaN")}, "flux",
     r"must be a flux record .*: scale\[0\] must be a number above 0 \(finite\)"),
    ("3", {"flux": _FLUX.replace("[1.02, 1.0, 0.98]", "[1.02, 1.0]")}, "flux",
     r"scale must be a list of 3"),
    ("3", {"flux": _FLUX.replace('"gain": null', '"gain": {"ratio": 1}')}, "flux",
     r"gain must be an object \{poisson, band, ratio, why\}"),
    ("3", {"flux": _FLUX.replace('"why": null', '"why": 5')}, "flux", "why must be printable text or null"),
    ("3", {"plane_defects": _DEFECTS.replace("true", "false")}, "plane_defects",
     r"repaired must be true \(a record is stored only where its pixels were replaced\)"),
    ("3", {"plane_defects": _DEFECTS.replace("[2.0, 1.0,", "[4.0, 1.0,")}, "plane_defects",
     r"pixels\.plus\[0\]\[0\] must be a whole number of at least 0 and at most 3"),
    ("3", {"plane_defects": _DEFECTS.replace("40.0, 2.0", "NaN, 2.0")}, "plane_defects",
     r"pixels\.plus\[0\]\[2\] must be a number \(finite\)"),
    ("3", {"plane_defects": _DEFECTS.replace('"plus"', '"planes[2]"')}, "plane_defects",
     r"pixels must be an object of some of \('minus', 'zero', 'plus', 'gradient'\)"),
    ("3", {"plane_defects": _DEFECTS.replace("[[2.0, 1.0, 40.0, 2.0]]",
                                             ", ".join(["[2.0, 1.0, 40.0, 2.0]"] * 33)
                                             .join("[]"))},
     "plane_defects", r"pixels\.plus must be a list of 1 to 32 pixels"),
    ("3", {"plane_defects": _DEFECTS.replace('"why": "plus: 1"', '"why": "' + "x" * 80000 + '"')},
     "plane_defects", r"must be JSON text of the plane_defects record \(at most 77824 "
                      r"characters for planes of \(4, 4\) px\), got 80\d\d\d characters$"),
]


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("base, changes, key, says", _HOSTILE)
def test_hostile_files_raise_input_errors(tmp_path, suffix, base, changes, key, says):
    fields = {**(_base_triplet() if base == "3" else _base_4d()), **changes}
    path = tmp_path / f"bad{suffix}"
    _write_case(path, fields)
    with pytest.raises(ft.InputError, match=rf"^bad{suffix}: '{key}' .*{says}"):
        ft.load(path).close()


def _leaves(v, at=()):
    """The paths to the leaves (numbers, text, flags, null) of a JSON value."""
    if isinstance(v, dict):
        return [p for k, x in v.items() for p in _leaves(x, at + (k,))] or [at]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _leaves(x, at + (i,))] or [at]
    return [at]


def _replaced(v, at, new):
    if not at:
        return new
    v = json.loads(json.dumps(v))
    inner = v
    for k in at[:-1]:
        inner = inner[k]
    inner[at[-1]] = new
    return v


@pytest.mark.parametrize("key, text", [("saturation", _SAT), ("descan", _DESCAN),
                                       ("flux", _FLUX.replace('"gain": null', '"gain": {'
                                                              '"poisson": [1.0, 1.0, 1.0], '
                                                              '"band": [2.0, 2.0, 2.0], '
                                                              '"ratio": 2.0, "why": null}')),
                                       ("plane_defects", _DEFECTS)])
def test_every_field_of_a_stored_record_is_checked(key, text):
    """Each leaf of a record replaced by a value of another kind (null, text,
    a flag, NaN, ±Infinity, an integer beyond float, a list, an object) is
    either taken (where the record allows it) or refused with an InputError
    naming the file and the key; never another exception, and what is taken
    is written back as JSON within the limit."""
    record = json.loads(text)
    check = records.RECORD_CHECKS[key]
    assert check(record, "f.npz: 'x'", (4, 4)) is not None
    hostile = [None, "x", True, math.nan, math.inf, -math.inf, 10 ** 400, -1, [], {}, [1.0]]
    for at in _leaves(record):
        for value in hostile:
            text = json.dumps(_replaced(record, at, value))
            fields = {"rec": text}
            try:
                got = check(ft.io._json_field(fields, "rec", Path("f.npz"), (4, 4)),
                            f"f.npz: '{key}'", (4, 4))
            except ft.InputError as exc:
                assert str(exc).startswith(f"f.npz: '{key}' must be"), str(exc)
                continue
            records.json_text(key, got, (4, 4))  # what is taken can be written


def test_object_arrays_in_npz_are_never_unpickled(tmp_path):
    _write_case(tmp_path / "bad.npz", {**_base_triplet(), "minus": _OBJECTS})
    with pytest.raises(ft.InputError, match=r"^bad.npz: 'minus' cannot be read \(pickled "
                                            r"Python objects.*nothing pickled is ever loaded"):
        ft.load(tmp_path / "bad.npz")
    # keys outside the layout are not read at all
    _write_case(tmp_path / "extra.npz", {**_base_triplet(), "note": _OBJECTS})
    assert ft.load(tmp_path / "extra.npz").dz == (10.0, 10.0)


def _h5_group(f, k):
    f.create_group(k)


def _h5_external_link(f, k):
    import h5py

    f[k] = h5py.ExternalLink("/etc/other.h5", "/data")


def _h5_dangling(f, k):
    import h5py

    f[k] = h5py.SoftLink("/nowhere")


def _h5_strings(f, k):
    import h5py

    f.create_dataset(k, data=np.array([["a"] * 4] * 4, dtype=object), dtype=h5py.string_dtype())


def _h5_empty_dataset(f, k):
    import h5py

    f.create_dataset(k, data=h5py.Empty("f8"))


def _h5_empty_attr(f, k):
    import h5py

    f.attrs[k] = h5py.Empty("f8")


def _h5_reference_attr(f, k):
    f.create_dataset("target", data=np.ones(2))
    f.attrs[k] = f["target"].ref


def _h5_compound_attr(f, k):
    f.attrs[k] = np.array((1.0, 2.0), dtype=[("a", "f8"), ("b", "f8")])


def _h5_string_dataset(f, k):
    f.create_dataset(k, data="abc")


def _h5_virtual(f, k):
    import h5py

    layout = h5py.VirtualLayout(shape=(4, 4), dtype="f8")
    layout[:] = h5py.VirtualSource("/etc/other.h5", "zero", shape=(4, 4))
    f.create_virtual_dataset(k, layout)


def _h5_external_storage(f, k):
    f.create_dataset(k, shape=(4, 4), dtype="f8", external=[("/etc/hostname", 0, 128)])


def _h5_reference_dataset(f, k):
    import h5py

    f.create_dataset("target", data=np.ones(2))
    refs = np.empty((4, 4), dtype=h5py.ref_dtype)
    refs[...] = f["target"].ref
    f.create_dataset(k, data=refs)


@pytest.mark.parametrize("key, make, says", [
    ("zero", _h5_group, "is an HDF5 Group, expected a dataset"),
    ("plus", _h5_external_link, "is a link to another file"),
    ("plus", _h5_dangling, "cannot be read"),
    ("minus", _h5_strings, "has dtype object; expected real numbers"),
    ("minus", _h5_reference_dataset, "has dtype object"),
    ("zero", _h5_empty_dataset, "is an empty HDF5 dataset"),
    ("energy", _h5_empty_attr, "must be a positive finite number"),
    ("dz", _h5_reference_attr, "must be a positive finite number or a pair of them"),
    ("dz", _h5_compound_attr, "must be a positive finite number or a pair"),
    ("scan_step", _h5_string_dataset, "got b?'abc'"),
    ("material", _h5_empty_attr, "must be a string"),
    ("material", _h5_reference_attr, "must be a string"),
    ("zero", _h5_virtual, "is a virtual or external dataset"),
    ("minus", _h5_external_storage, "is a virtual or external dataset"),
])
def test_hostile_hdf5_objects_raise_input_errors(tmp_path, key, make, says):
    path = tmp_path / "bad.h5"
    _write_case(path, {**_base_triplet(), key: make})
    with pytest.raises(ft.InputError, match=rf"^bad.h5: '{key}' .*{says}"):
        ft.load(path).close()


def _h5_enum(f, k):
    """An HDF5 enumeration whose members are labels (h5py reads them as integers)."""
    import h5py

    kind = h5py.enum_dtype({"LOW": 0, "HIGH": 1000}, basetype="i2")
    if k in ft.io._ARRAYS:
        f.create_dataset(k, data=np.full((4, 4), 1000, "i2"), dtype=kind)
    else:
        f.attrs.create(k, 1000, dtype=kind)


@pytest.mark.parametrize("key, as_dataset", [("zero", True), ("plus", True), ("dz", False),
                                             ("energy", True), ("material", False)])
def test_hdf5_enumerations_are_refused_naming_the_key_and_the_dtype(tmp_path, key, as_dataset):
    """An enumeration's integers are labels, not measurements: they were read as
    intensities (or a defocus) without a word."""
    h5py = pytest.importorskip("h5py", reason="h5py is needed to write an HDF5 enumeration")
    path = tmp_path / "enum.h5"
    fields = {**_base_triplet(), key: _h5_enum}
    if as_dataset and key not in ft.io._ARRAYS:  # a scalar key as a dataset
        kind = h5py.enum_dtype({"LOW": 0, "HIGH": 1000}, basetype="i2")
        fields[key] = lambda f, k: f.create_dataset(k, data=np.array(1000, "i2"), dtype=kind)
    _write_case(path, fields)
    want = "a string" if key == "material" else r"real numbers \(integers or floats\)"
    with pytest.raises(ft.InputError, match=rf"^enum.h5: '{key}' has dtype int16, an HDF5 "
                                            rf"enumeration \(LOW=0, HIGH=1000\); expected "
                                            rf"{want}, not labels$"):
        ft.load(path).close()


def test_load_says_what_a_path_that_is_not_a_file_is(tmp_path):
    """A directory, a FIFO or a loop of links was 'no such file'; a name over
    the file system's limit raised OSError 36 from Path.is_file."""
    import os

    (tmp_path / "d.npz").mkdir()
    os.symlink("loop.npz", tmp_path / "loop.npz")
    os.symlink("gone.npz", tmp_path / "dangling.npz")
    (tmp_path / "reg").write_text("a file")
    cases = [("d.npz", r"'.*d.npz' is a directory, not a file$"),
             ("loop.npz", r"'.*loop.npz' is a symbolic-link loop; expected a file$"),
             ("dangling.npz", r"'.*dangling.npz' is a symbolic link to 'gone.npz', which "
                              r"does not exist$"),
             ("reg/x.npz", r"no such file '.*reg/x.npz' \(one of its folders is a file\)$"),
             ("a" * 300 + ".npz", r"the name 'a{40}'... has 304 bytes; the file system allows"),
             ("/".join(["abcdefgh"] * 600) + ".npz", r"the path .* has \d+ bytes; the system "
                                                     r"takes paths of fewer than \d+$")]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.npz")
        cases.append(("pipe.npz", r"'.*pipe.npz' is a FIFO \(named pipe\), not a regular "
                                  "file$"))
    for name, says in cases:
        with pytest.raises(ft.InputError, match=f"^path: {says}"):
            ft.load(tmp_path / name)


def _allocated(f, key, shape, dtype, chunks=None):
    """A dataset whose storage is allocated but never filled: a sparse file, and
    what HDF5 reports is that of a written one (which is what it may be)."""
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks is not None:
        dcpl.set_chunk(chunks)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    h5py.h5d.create(f.id, key.encode(), dtype, h5py.h5s.create_simple(shape), dcpl)


def test_hdf5_planes_too_large_for_memory_are_refused_before_reading(tmp_path):
    """Planes that claim 200000² float64 gave MemoryError from .triplet()."""
    import h5py

    with h5py.File(tmp_path / "huge.h5", "w") as f:  # allocated, not filled: a sparse file
        for k in ("minus", "zero", "plus"):
            _allocated(f, k, (200000, 200000), h5py.h5t.IEEE_F64LE)
        f.attrs.update(dz=[20.0, 20.0], scan_step=[0.2, 0.2], energy=300e3)
    with ft.load(tmp_path / "huge.h5") as ds:
        with pytest.raises(ft.InputError, match=r"^huge.h5: its planes of shape \(200000, "
                                                r"200000\) \(float64\) need about 894 GiB to "
                                                r"be read, more than the .* GiB of memory "
                                                r"available"):
            ds.triplet()
    with h5py.File(tmp_path / "huge4.h5", "w") as f:  # patterns of 100000² pixels
        for k in ("minus", "zero", "plus"):
            _allocated(f, k, (4, 4, 100000, 100000), h5py.h5t.IEEE_F32LE,
                       chunks=(1, 1, 1000, 1000))
        f.attrs.update(dz=[20.0, 20.0], scan_step=[0.2, 0.2], energy=300e3,
                       k_sampling=[0.05, 0.05])
    with ft.load(tmp_path / "huge4.h5") as ds:
        with pytest.raises(ft.InputError, match=r"^minus: a \(4, 4, 100000, 100000\) dataset "
                                                r"\(float32\) needs about .* GiB for its "
                                                r"reduction"):
            ds.triplet(backend="cpu")


@pytest.mark.parametrize("compress", [False, True])
def test_npz_arrays_too_large_for_memory_are_refused_before_reading(tmp_path, monkeypatch,
                                                                    compress):
    """An .npz was read in full (a compressed one expands without bound) with
    no memory check: the sizes its .npy headers declare are checked first."""
    import flowtie_fast.io as fio

    save = np.savez_compressed if compress else np.savez
    save(tmp_path / "big.npz", minus=np.ones((128, 128)), zero=np.ones((128, 128)),
         plus=np.ones((128, 128)), dz=[20.0, 20.0], scan_step=[0.2, 0.2], energy=300e3)
    read = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__",
                        lambda self, k, real=np.lib.npyio.NpzFile.__getitem__:
                        read.append(k) or real(self, k))
    monkeypatch.setattr(fio, "host_available_memory", lambda: 100_000)
    with pytest.raises(ft.InputError, match=r"^big.npz: its arrays need about .* GiB to be "
                                            r"read \(largest: 'minus' of shape \(128, 128\) "
                                            r"\(float64\)\), more than the .* GiB of memory "
                                            r"available"):
        ft.load(tmp_path / "big.npz")
    assert read == []
    monkeypatch.setattr(fio, "host_available_memory", lambda: 10**9)
    assert ft.load(tmp_path / "big.npz").zero.shape == (128, 128)


def test_npz_header_too_large_is_named(tmp_path):
    """A header over NumPy's max_header_size was reported as pickled objects."""
    import io
    import zipfile

    d = ("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }" + " " * 200000 +
         "\n").encode()
    fields = dict(minus=np.ones((4, 4)), zero=np.ones((4, 4)), plus=np.ones((4, 4)),
                  dz=np.array([20.0, 20.0]), scan_step=np.array([0.2, 0.2]),
                  energy=np.array(300e3))
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        for k, v in fields.items():
            b = io.BytesIO()
            np.save(b, v)
            z.writestr(k + ".npy", b.getvalue())
        z.writestr("phase_gt.npy", b"\x93NUMPY\x02\x00" + len(d).to_bytes(4, "little") + d +
                   bytes(4 * 4 * 8))
    with pytest.raises(ft.InputError, match=r"'phase_gt' cannot be read \(its \.npy header "
                                            r"is too large") as info:
        ft.load(tmp_path / "h.npz")
    assert "pickle" not in str(info.value)


def test_read_raw_names_a_directory_and_a_kev_energy_first(tmp_path):
    """A folder was called 'no such file'; energy=300 (keV) was hidden behind
    the detector-unit error."""
    emd = pytest.importorskip("rsciio.emd")
    (tmp_path / "d.blo").mkdir()
    with pytest.raises(ft.InputError, match=r"^path: .*d\.blo' is a directory, not a file"):
        ft.io.read_raw(tmp_path / "d.blo")
    ax = {"navigate": True, "offset": 0, "scale": 0.02, "units": "nm", "size": 3}
    sig = {"data": np.ones((3, 3, 4, 4), np.float32),
           "axes": [dict(ax, name="y"), dict(ax, name="x"),
                    dict(ax, name="ky", navigate=False, units="cm", size=4),
                    dict(ax, name="kx", navigate=False, units="cm", size=4)],
           "metadata": {"General": {"title": "z"}, "Signal": {"signal_type": ""}},
           "original_metadata": {}}
    emd.file_writer(str(tmp_path / "z.emd"), sig)
    with pytest.raises(ft.InputError, match=r"^energy: expected 1000 to 1e\+07 eV .*got 300"):
        ft.io.read_raw(tmp_path / "z.emd", energy=300)
    with pytest.raises(ft.InputError, match=r"^k_sampling: cannot convert detector units"):
        ft.io.read_raw(tmp_path / "z.emd", energy=300e3)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_loose_but_valid_files_load(tmp_path, suffix):
    """Scalars for pairs, integers, one-element arrays and bytes are accepted."""
    fields = {"minus": np.ones((4, 4), np.uint8), "zero": np.ones((4, 4), np.int16),
              "plus": np.ones((4, 4), np.float32), "dz": 12, "scan_step": np.array([0.5]),
              "energy": np.array([200e3]), "material": np.bytes_(b"Si"), "thickness": 40,
              "semiangle": np.float32(20.0)}
    _write_case(tmp_path / f"ok{suffix}", fields)
    with ft.load(tmp_path / f"ok{suffix}") as ds:
        assert ds.dz == (12.0, 12.0) and ds.scan_step == (0.5, 0.5) and ds.energy == 200e3
        assert ds.meta == {"material": "Si", "thickness": 40.0, "semiangle": 20.0}
        assert all(type(v) is float for v in ds.dz + ds.scan_step + (ds.energy,))
    if suffix == ".h5":  # a string dataset is read as text too
        import h5py

        with h5py.File(tmp_path / "ok.h5", "a") as f:
            del f.attrs["material"]
            f.create_dataset("material", data="GaAs")
        with ft.load(tmp_path / "ok.h5") as ds:
            assert ds.meta["material"] == "GaAs"


@pytest.mark.parametrize("where", ["open", "close"])
def test_an_interrupt_while_the_temporary_is_made_leaves_none(tmp_path, monkeypatch, where):
    """Ctrl-C landing as the temporary is created (the file made, its name not
    yet returned) leaves no temporary behind in a process that goes on."""
    real = getattr(ft_files.os, where)

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(ft_files.os, where, interrupted)
    with pytest.raises(KeyboardInterrupt):
        with ft_files.atomic_path(tmp_path / "r.npz"):
            pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_a_file_is_written_in_the_oldest_layout_that_holds_it(tmp_path, suffix):
    """Earlier versions read the keys of layout 1 and drop the rest: a file
    with a virtual image, a noise, a registration record or an orientation
    verdict is written as flowtie_fast/2 (which they refuse rather than judge
    'df' planes as bright-field ones); one without, as flowtie_fast/1."""
    rng = np.random.default_rng(6)
    planes = [1 + 0.05 * rng.random((12, 12)) for _ in range(3)]
    kw = dict(dz=20.0, pixel_size=0.2, energy=300e3)
    plain = ft.FocalTriplet(*planes, **kw)
    labelled = ft.FocalTriplet(*planes, **kw, virtual="df")
    for t, want in ((plain, "flowtie_fast/1"), (labelled, "flowtie_fast/2")):
        path = ft.save(tmp_path / f"{want[-1]}{suffix}", t)
        if suffix == ".npz":
            with np.load(path) as f:
                assert str(f["format"]) == want
        else:
            import h5py

            with h5py.File(path, "r") as f:
                assert f.attrs["format"] == want
        with ft.load(path) as ds:
            assert ds.triplet().virtual == t.virtual


def test_a_path_from_home_is_the_home_folder_not_a_folder_named_tilde(workdir, monkeypatch):
    """save('~/x.npz') made a folder named '~' in the working folder (which a
    later 'rm -rf ~' to clean it up would have taken for the home folder)."""
    home = workdir / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    a = np.ones((8, 8))
    t = ft.FocalTriplet(a, a * 1.1, a * 1.2, dz=20.0, pixel_size=0.2, energy=300e3)
    ft.save("~/x.npz", t)
    assert (home / "x.npz").is_file() and not (workdir / "~").exists()
    assert ft.load("~/x.npz").dz == (20.0, 20.0)


@pytest.mark.parametrize("twins, link", [(("minus", "zero"), "hard"), (("plus", "minus"), "hard"),
                                         (("minus", "zero"), "soft")])
def test_one_hdf5_dataset_linked_as_two_planes_is_refused(tmp_path, twins, link):
    """A file whose '-dz' plane was the in-focus dataset linked under a second
    name (a hard or soft link) loaded as a triplet: the phase came back wrong
    by an NMSE of 0.28 (1 for minus and plus), exit status 0, no word."""
    h5py = pytest.importorskip("h5py")
    fields = _base_triplet()
    path = tmp_path / "twins.h5"
    with h5py.File(path, "w") as f:
        for k, v in fields.items():
            if k != twins[0]:
                f[k] = v
        f[twins[0]] = f[twins[1]] if link == "hard" else h5py.SoftLink(f"/{twins[1]}")
    first, second = sorted(twins, key=("minus", "zero", "plus").index)
    with pytest.raises(ft.InputError, match=rf"^twins.h5: '{second}' and '{first}' are one HDF5 "
                                            r"dataset \(linked under both names\); expected "
                                            r"three recorded planes$"):
        ft.load(path)


def test_a_loaded_triplet_whose_planes_show_new_outliers_saves_again(tmp_path):
    """A stored record of replaced pixels joins those the loaded triplet's
    screen replaces in the stored planes; the joined record was refused by
    the next save (more pixels than one screen replaces), and a join with
    pixels found and not replaced dropped the stored ones at the next save.
    Both save again now, keeping the pixels replaced."""
    import flowtie_fast.io as fio
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_series

    phase, amp = phase_object(48, 0.5)
    s = defocus_series(phase, (-20.0, 0.0, 20.0), 0.5, 300e3, amp)
    planes = [np.asarray(p, np.float64).copy() for p in s.planes]
    planes[0][10, 12] *= 20  # an outlier the stored record does not hold
    stored = {"pixels": {"minus": [[r, 3, 1.0, 1.0] for r in range(16)]}, "repaired": True,
              "why": "minus: 16 isolated pixels replaced"}
    ds = fio.Dataset(*planes, (20.0, 20.0), (0.5, 0.5), 300e3, plane_defects=stored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ds.triplet()
    assert len(t.plane_defects["pixels"]["minus"]) == 17 and t.plane_defects["repaired"]
    with ft.load(ft.save(tmp_path / "again.npz", t)) as back:
        assert back.plane_defects["pixels"]["minus"][:16] == stored["pixels"]["minus"]
    # pixels found and not replaced stay in the planes: the stored record is kept
    many = [p.copy() for p in planes]
    rng = np.random.default_rng(0)
    rows, cols = rng.choice(np.arange(2, 46), 40), rng.choice(np.arange(2, 46), 40)
    many[0][rows, cols] *= 30
    ds = fio.Dataset(*many, (20.0, 20.0), (0.5, 0.5), 300e3, plane_defects=stored)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ds.triplet()
    assert t.plane_defects["pixels"] == stored["pixels"] and t.plane_defects["repaired"]
    with ft.load(ft.save(tmp_path / "kept.npz", t)) as back:
        assert back.plane_defects["pixels"] == stored["pixels"]


def test_a_dataset_reads_nested_lists_and_refuses_what_is_no_array():
    """Dataset(list, list, list, ...) was taken as given: its kind and triplet
    then raised AttributeError."""
    planes = [(np.ones((8, 8)) * (1 + 0.01 * s)).tolist() for s in (-1, 0, 1)]
    d = ft.Dataset(*planes, 20.0, 0.2, 300e3)
    assert d.kind == "triplet" and d.triplet().shape == (8, 8)
    for bad, says in (("abc", r"^minus: expected a real array .* got str read as <U3"),
                      ([[1.0, 2.0], [3.0]], r"^minus: expected an array of intensities, got list"),
                      ([1.0] * 5,
                       r"^minus: expected a real array .* got list read as float64 \(5,\)")):
        with pytest.raises(ft.InputError, match=says):
            ft.Dataset(bad, *planes[1:], 20.0, 0.2, 300e3)


def test_an_hdf5_file_held_open_for_writing_is_said_so(tmp_path):
    """A file the acquisition still writes (HDF5's file lock) was reported as
    'not a readable .h5 file', bad input, exit 2: it is the environment's
    state, a BlockingIOError (exit 1 on the command line) that says so."""
    import subprocess
    import sys
    import time

    pytest.importorskip("h5py")
    path = ft.save(tmp_path / "busy.h5", ft.Dataset(*[np.ones((8, 8)) * v for v in (1, 1, 1)],
                                                    dz=20.0, scan_step=0.2, energy=300e3))
    writer = subprocess.Popen([sys.executable, "-c", "import h5py, sys, time\n"
                               f"f = h5py.File({str(path)!r}, 'a')\n"
                               "print('open', flush=True)\ntime.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        with pytest.raises(BlockingIOError, match="busy.h5 is held open for writing by "
                                                  "another process"):
            ft.load(path)
    finally:
        writer.kill()
        writer.wait()
    time.sleep(0.1)
    with ft.load(path) as ds:  # closed: read as usual
        assert ds.kind == "triplet"
