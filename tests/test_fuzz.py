"""Property-based fuzzing of the public API and the command line.

The contract checked on every call: it returns a finite result of the
documented shape and dtype, or raises ``flowtie_fast.InputError`` /
``flowtie_fast.BackendError`` (both ``ValueError`` subclasses) whose message
names an argument. No other exception type may escape, and nothing may crash
the process. The command line returns 0, 1 or 2, never raises (argparse's
usage errors aside: ``SystemExit(2)``) and reports a failure on one line of
stderr, ``flowtie CMD: error: ...``.

Everything runs on the CPU backend, with small arrays, reproducibly
(derandomised, no example database).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import flowtie_fast as ft
from flowtie_fast.errors import ResultError

# --------------------------------------------------------------------------- settings


def fuzz(n):
    """Reproducible settings with ``n`` examples (no example database, fixed
    seed; no explain phase, which re-runs failing examples many times)."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck),
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))


# --------------------------------------------------------------------------- contract

ARGUMENT_NAMES = {
    # triplets and series
    "minus", "zero", "plus", "planes", "z", "z0", "degree", "dz", "pixel_size", "energy",
    "gradient",
    # 4D-STEM
    "scan_step", "k_sampling", "center", "virtual", "bf_radius", "com_radius", "rotation",
    "flip", "chunk_bytes", "data", "reductions",
    # solvers and plans
    "triplet", "method", "backend", "threads", "boundary", "scheme", "alpha", "floor",
    "dtype", "tol", "max_iter", "preconditioner", "model", "out", "gradient_out", "shape",
    "stack", "options", "wisdom", "warmup",
    # files
    "path", "obj", "output", "phase_gt", "gradient_gt", "material", "thickness", "semiangle",
    # command line
    "--size", "--png", "--virtual", "--model", "thicknesses", "supercell",
    "potential_sampling", "slice_thickness", "max_angle", "frozen_phonons", "dose", "seed",
    "scan_gpts", "scan_cells", "steps", "batch", "reps", "lr", "width", "depth", "stride",
    "weights", "channels", "doses", "restarts", "distill", "teacher", "checkpoint", "resume",
    "checkpoint_every", "clip", "use_com",
}
# A ResultError names the stage that produced the non-finite result instead.
STAGE_NAMES = set(ft.METHODS) | {"residual", "flowtie: the flow network"}
FILE_SUFFIXES = (".npz", ".h5", ".hdf5")


def _head_name(head: str) -> str:
    """``planes[1]`` -> ``planes``, ``stack[0, 2]`` -> ``stack``."""
    return re.sub(r"\[[^\]]*\]$", "", head.strip())


def names_argument(exc: BaseException) -> bool:
    """Whether an error message begins by naming an argument (``name: ...``),
    a key of a file (``file.npz: 'key' ...``), a batch item (``stack[i]: ...``)
    or, for a ResultError, the stage."""
    msg = str(exc)
    parts = msg.split(": ")
    if len(parts) < 2:
        return False
    head = _head_name(parts[0])
    if head in ARGUMENT_NAMES:
        return True
    if isinstance(exc, ResultError) and any(msg.startswith(s + ":") for s in STAGE_NAMES):
        return True
    if head.lower().endswith(FILE_SUFFIXES):
        m = re.match(r"'([^']+)'", parts[1])
        if m and m.group(1) in ARGUMENT_NAMES:
            return True
        # "file.npz: missing key(s) [...]": the layout's keys are named.
        if "missing key" in parts[1]:
            return True
    return False


def check_error(exc: BaseException) -> None:
    assert isinstance(exc, (ft.InputError, ft.BackendError)), exc
    assert isinstance(exc, ValueError)
    assert names_argument(exc), f"message names no argument: {str(exc)!r}"


@contextlib.contextmanager
def contract():
    """Allow only InputError / BackendError naming an argument; let anything
    else propagate (a contract violation that hypothesis then shrinks)."""
    try:
        yield
    except (ft.InputError, ft.BackendError) as exc:
        check_error(exc)


def attempt(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` under the contract: its result, or None when it
    raised one of the library's errors (checked to name an argument)."""
    try:
        return fn(*args, **kwargs)
    except (ft.InputError, ft.BackendError) as exc:
        check_error(exc)
        return None


def check_reconstruction(rec, shape, dtype, out=None, gradient_out=None):
    assert isinstance(rec, ft.Reconstruction)
    phase, grad = np.asarray(rec.phase), np.asarray(rec.gradient)
    assert phase.shape == tuple(shape), (phase.shape, shape)
    assert grad.shape == (2,) + tuple(shape), (grad.shape, shape)
    assert phase.dtype == np.dtype(dtype), phase.dtype
    assert grad.dtype == np.dtype(dtype), grad.dtype
    assert np.isfinite(phase).all(), "phase holds NaN or Inf"
    assert np.isfinite(grad).all(), "gradient holds NaN or Inf"
    if out is not None:
        assert np.array_equal(out, phase), "out does not hold the phase"
    if gradient_out is not None:
        assert np.array_equal(gradient_out, grad), "gradient_out does not hold the gradient"


def check_residual(rec, shape):
    """The residual map, computed on first access: finite, of the image shape
    (or one of the library's errors)."""
    with contract():
        r = np.asarray(rec.residual)
        assert r.shape == tuple(shape), r.shape
        assert np.isfinite(r).all(), "residual holds NaN or Inf"


# --------------------------------------------------------------------------- strategies

REAL_DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int16, np.int32, np.int64,
               np.uint8, np.uint16, np.uint32, np.uint64, ">f4", ">f8", "<i2"]
OTHER_DTYPES = [np.bool_, np.complex64, np.complex128, object, "U3", "S2", "M8[s]", "m8[s]",
                [("a", "f4"), ("b", "f4")]]
FILLS = ["smooth", "smooth", "smooth", "constant", "sparse", "counts", "zeros", "nan", "inf",
         "-inf", "negative", "huge", "subnormal", "tiny", "max"]
LAYOUTS = ["C", "C", "C", "F", "strided", "readonly", "bytes"]


def _values(shape, fill, seed):
    rng = np.random.default_rng(seed)
    base = 1.0 + 0.1 * rng.random(shape)
    with np.errstate(all="ignore"):
        if fill == "constant":
            return np.full(shape, 3.0)
        if fill == "sparse":
            a = np.zeros(shape)
            if a.size:
                a.flat[rng.integers(a.size)] = 1.0
            return a
        if fill == "counts":
            return rng.poisson(50.0, shape).astype(float)
        if fill == "zeros":
            return np.zeros(shape)
        if fill in ("nan", "inf", "-inf", "negative"):
            value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "negative": -0.5}[fill]
            if base.size:
                base.flat[rng.integers(base.size)] = value
            return base
        if fill == "huge":
            return base * 1e38
        if fill == "subnormal":
            return base * 1e-310
        if fill == "tiny":
            return base * 1e-30
        if fill == "max":
            return np.full(shape, np.finfo(np.float64).max)
        return base


def _layout(a, layout, dtype):
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided" and a.ndim >= 1:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "bytes" and a.dtype != object:
        return np.frombuffer(a.tobytes(), dtype=a.dtype).reshape(a.shape)
    return a


def _make(shape, dtype, fill, layout, seed):
    with np.errstate(all="ignore"):
        v = _values(shape, fill, seed)
        try:
            a = v.astype(dtype)
        except (TypeError, ValueError):
            a = np.zeros(shape, dtype=dtype)
    return _layout(a, layout, dtype)


@st.composite
def image(draw, shape, hostile=True):
    """A 2-D image of ``shape`` (when not hostile: a real dtype and mostly good values)."""
    if hostile:
        dtype = draw(st.sampled_from(REAL_DTYPES + OTHER_DTYPES))
        fill = draw(st.sampled_from(FILLS))
    else:
        dtype = draw(st.sampled_from(REAL_DTYPES))
        fill = draw(st.sampled_from(["smooth", "smooth", "constant", "counts", "tiny",
                                     "subnormal", "huge", "sparse"]))
    layout = draw(st.sampled_from(LAYOUTS))
    return _make(shape, dtype, fill, layout, draw(st.integers(0, 2**16)))


@st.composite
def any_array(draw, like_shape=(8, 8)):
    """Anything that might be passed for an image: arrays of any rank, shape,
    dtype and values, or not an array at all."""
    choice = draw(st.sampled_from(["image", "image", "image", "shape", "nonarray"]))
    if choice == "image":
        return draw(image(like_shape))
    if choice == "shape":
        shape = draw(st.sampled_from([(), (0,), (5,), (1, 8), (8, 1), (0, 8), (2, 2), (3, 8, 8),
                                      (8, 9), (9, 8), (1, 1, 8, 8), (2, 3), (4, 4)]))
        dtype = draw(st.sampled_from(REAL_DTYPES + OTHER_DTYPES))
        return _make(shape, dtype, draw(st.sampled_from(FILLS)), "C", draw(st.integers(0, 99)))
    return draw(st.sampled_from([
        None, "abc", b"\x00\x01", 3.0, 7, True, {}, {"a": 1}, [[1.0, 2.0], [3.0]],
        [[1.0, 2.0], [3.0, 4.0]], [[1, 2, 3]] * 3, [["a", "b"], ["c", "d"]], (1, 2),
        object(), np.float32(2.0), range(4),
    ]))


BAD_SCALARS = st.one_of(
    st.sampled_from([0, 0.0, -1.0, -20.0, math.nan, math.inf, -math.inf, 1e308, 1e-320, 5e-324,
                     "20", "", True, False, None, (), (1.0,), (1.0, 2.0, 3.0),
                     [20.0, math.nan], np.float32(np.nan), np.int64(-3), np.array([1.0, 2.0]),
                     np.array(3.0), np.zeros((2, 2)), complex(1, 1), b"1", object(), 10**400,
                     np.uint8(0), np.float16(65504), [], {"dz": 1.0}, np.array([[20.0]]),
                     np.array(["a", "b"]), np.array([20.0, 20.0], dtype=object)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**6, 10**12))


class Knobs:
    """Draws an example's settings so that none, exactly one or several of them
    are bad: every bad value is met with the others valid, and in company."""

    def __init__(self, data):
        self.data = data
        self.mode = data.draw(st.sampled_from(["valid", "one", "one", "many"]))
        self.target = data.draw(st.integers(0, 11))
        self.count = 0

    def __call__(self, valid, bad=BAD_SCALARS):
        i, self.count = self.count, self.count + 1
        if self.mode == "one":
            is_bad = i == self.target
        elif self.mode == "many":
            is_bad = self.data.draw(st.integers(0, 2)) == 0
        else:
            is_bad = False
        s = bad if is_bad else valid
        if isinstance(s, (list, tuple)):
            s = st.sampled_from(s)
        return self.data.draw(s)


DZ = [20.0, 5.0, (10.0, 30.0), [20.0, 20.0], np.float32(20.0), np.int64(50), 1e-3, 1e8]
PIXEL = [0.2, 0.18, (0.2, 0.3), np.float64(0.5), 1, 1e-4, 1e7]
ENERGY = [300e3, 80e3, np.float32(200e3), 1e3, 1e7, 300000]


def smooth_planes(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.meshgrid(np.arange(ny) / ny, np.arange(nx) / nx, indexing="ij")
    base = 1.0 + 0.05 * np.cos(2 * np.pi * y) * np.sin(2 * np.pi * x)
    return [(base * (1 + 0.01 * s) + 0.01 * rng.random(shape)).astype(dtype)
            for s in (-1, 0, 1)]


shapes2d = st.tuples(st.integers(4, 24), st.integers(4, 24))


# --------------------------------------------------------------------------- buffers

@st.composite
def out_buffer(draw, shape, planes=(), tmp=None, dtype=np.float32, bad=False):
    """A caller-supplied output (of the working ``dtype``): None or a good one,
    or (``bad``) one of the wrong dtype, shape, order, writeability, or an alias
    of an input."""
    if not bad:
        kind = draw(st.sampled_from(["none", "good", "good", "view-of-good", "nan-filled"]))
    else:
        kind = draw(st.sampled_from(["other-float", "dtype", "shape", "fortran", "strided",
                                     "readonly", "bytes", "memmap", "alias", "alias", "list",
                                     "zero-d"]))
    other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
    if kind == "none":
        return None
    if kind == "good":
        return np.zeros(shape, dtype)
    if kind == "nan-filled":
        return np.full(shape, np.nan, dtype)
    if kind == "view-of-good":
        return np.zeros((2,) + tuple(shape), dtype)[1]
    if kind == "other-float":
        return np.zeros(shape, other)
    if kind == "dtype":
        return np.zeros(shape, draw(st.sampled_from([np.float16, np.int32, np.complex64,
                                                     np.uint8, bool, object, ">f4"])))
    if kind == "shape":
        return np.zeros(draw(st.sampled_from([(), (3,), shape[::-1] + (1,), (2,) + shape,
                                              (shape[0] + 1, shape[-1])])), np.float32)
    if kind == "fortran":
        return np.zeros(shape, dtype, order="F")
    if kind == "strided":
        return np.zeros(tuple(shape[:-1]) + (2 * shape[-1],), dtype)[..., ::2]
    if kind == "readonly":
        a = np.zeros(shape, dtype)
        a.flags.writeable = False
        return a
    if kind == "bytes":
        n = np.dtype(dtype).itemsize * int(np.prod(shape))
        return np.frombuffer(bytes(n), dtype).reshape(shape)
    if kind == "memmap" and tmp is not None and int(np.prod(shape)):
        fd, name = tempfile.mkstemp(dir=tmp, suffix=".bin")
        os.close(fd)
        np.zeros(shape, dtype).tofile(name)
        return np.memmap(name, dtype, mode="r", shape=tuple(shape))
    if kind == "alias":
        arrays = [p for p in planes if isinstance(p, np.ndarray) and p.size]
        if arrays:
            p = draw(st.sampled_from(arrays))
            if p.shape == tuple(shape):
                return p  # the very input
            flat = p.reshape(-1)
            n = int(np.prod(shape))
            if flat.size >= n and p.dtype == np.dtype(dtype) and p.flags.c_contiguous:
                return flat[:n].reshape(shape)  # a view of the input
            return p
    if kind == "list":
        return np.zeros(shape).tolist()
    if kind == "zero-d":
        return np.dtype(dtype).type(0)
    return np.zeros(shape, other)


# --------------------------------------------------------------------------- triplets

@fuzz(60)
@given(data=st.data())
def test_focal_triplet_constructor(data):
    shape = data.draw(shapes2d)
    knob = Knobs(data)
    minus, zero, plus = (knob(image(shape, hostile=False), any_array(shape)) for _ in range(3))
    grad = knob(st.sampled_from([None, None, np.zeros((2,) + shape, np.float32)]),
                any_array((2,) + shape))
    dz, px, energy = knob(DZ), knob(PIXEL), knob(ENERGY)
    t = attempt(ft.FocalTriplet, minus, zero, plus, dz, px, energy, gradient=grad)
    if t is None:
        return
    assert len(t.shape) == 2 and min(t.shape) >= 2
    assert all(math.isfinite(v) and v > 0 for v in (*t.dz, *t.pixel_size, t.energy))
    method = "icom" if t.gradient is not None and data.draw(st.booleans()) else "tie"
    rec = attempt(ft.reconstruct, t, method=method, backend="cpu")
    if rec is not None:
        check_reconstruction(rec, t.shape, np.float32)
        check_residual(rec, t.shape)


@fuzz(40)
@given(data=st.data())
def test_focal_series_constructor(data):
    shape = data.draw(shapes2d)
    knob = Knobs(data)
    n = knob(st.integers(2, 5), st.integers(0, 1))
    form = knob(["list", "tuple", "stack"], ["other"])
    planes = [knob(image(shape, hostile=False), image(shape)) for _ in range(n)]
    if form == "tuple":
        planes = tuple(planes)
    elif form == "stack":
        try:
            planes = np.stack(planes) if planes else np.zeros((0,) + shape)
        except (TypeError, ValueError):  # no common dtype (datetime and floats)
            planes = list(planes)
    elif form == "other":
        planes = data.draw(st.sampled_from([None, "abc", 3, np.zeros(shape), iter([]),
                                            {"a": np.zeros(shape)}]))
    z = knob(st.lists(st.floats(-100, 100), min_size=n, max_size=n, unique=True).filter(
                 lambda v: len(v) < 2 or np.ptp(v) > 1e-3),
             st.one_of(
                 st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0,
                          max_size=6),
                 st.sampled_from([None, "abc", [[1.0, 2.0]], [0.0, 0.0, 0.0],
                                  [1e308, -1e308, 0.0], [0.0, 1e-300, 2e-300], 5.0,
                                  [1 + 1j, 2.0, 3.0], [None, 1.0, 2.0], [0.0, 1e-12, 1.0],
                                  np.array([[-1.0], [0.0], [1.0]])])))
    px, energy = knob(PIXEL), knob(ENERGY)
    z0 = knob([0.0, 0.0, 1.0, -5.0], [math.nan, math.inf, "x", None, 1e308, 1e6, (1.0,)])
    degree = knob([None, None, 1], [2, 0, -1, 10, 1.5, "2", True, math.nan, np.int64(1)])
    s = attempt(ft.FocalSeries, planes, z, px, energy, z0=z0, degree=degree)
    if s is None:
        return
    assert len(s.planes) >= 2
    method = data.draw(st.sampled_from(["tie-uniform", "tie", "tie-exact", "gd"]))
    rec = attempt(ft.reconstruct, s, method=method, backend="cpu", max_iter=20)
    if rec is not None:
        check_reconstruction(rec, s.shape, np.float32)


# --------------------------------------------------------------------------- 4D-STEM

def _patterns(shape, seed, center=None, radius=3.0):
    """A bright-field disk centred on a pixel (so that the default "bf" disk,
    a quarter of its radius, holds that pixel), brightness varying over the scan."""
    sy, sx, ky, kx = shape
    rng = np.random.default_rng(seed)
    cy, cx = center if center is not None else (ky // 2, kx // 2)
    iy, ix = np.indices((ky, kx))
    disk = ((iy - cy) ** 2 + (ix - cx) ** 2 <= radius**2).astype(float)
    p = disk[None, None] * (1 + 0.1 * rng.random((sy, sx, 1, 1))) + 0.01 * rng.random(shape)
    return p


@st.composite
def stem_data(draw, shape, good=False):
    kind = "good" if good else draw(st.sampled_from(["dtype", "values", "shape", "nonarray"]))
    seed = draw(st.integers(0, 1000))
    if kind == "nonarray":
        return draw(st.sampled_from([None, "abc", [[1, 2]], 3.0, np.zeros((4, 4)),
                                     np.zeros((4, 4, 8))]))
    if kind == "shape":
        shape = draw(st.sampled_from([(1, 4, 8, 8), (4, 4, 1, 8), (4, 4, 8, 9), (2, 2, 2, 2),
                                      (4, 4, 8, 8, 1), (0, 4, 8, 8)]))
    p = _patterns(shape, seed) if len(shape) == 4 else _values(shape, "smooth", seed)
    dtype = np.float32
    if kind in ("dtype", "good"):
        dtype = draw(st.sampled_from(REAL_DTYPES + [np.bool_] +
                                     ([] if kind == "good" else OTHER_DTYPES)))
        if np.dtype(dtype).kind in "iu":
            p = p * 100
    if kind == "values":
        p = _values(shape, draw(st.sampled_from(FILLS)), seed) * p
    with np.errstate(all="ignore"):
        try:
            a = p.astype(dtype)
        except (TypeError, ValueError):
            a = np.zeros(shape, dtype)
    return _layout(a, draw(st.sampled_from(["C", "C", "F", "strided", "readonly"])), dtype)


@fuzz(40)
@given(data=st.data())
def test_from_4dstem(data):
    shape = (4, 4, 8, 8)
    knob = Knobs(data)
    minus, zero, plus = (knob(stem_data(shape, good=True), stem_data(shape))
                         for _ in range(3))
    dz = knob(DZ)
    scan_step = knob([0.2, (0.2, 0.25), 1.0])
    k_sampling = knob([0.05, 0.1, (0.05, 0.06), 0.5])
    energy = knob(ENERGY)
    center = knob([None, None, (4, 4), (4.2, 3.9), (0, 0), (7.0, 7.0), np.array([4.0, 4.0]),
                   (-8.0, 16.0)],
                  [(100, 100), (math.nan, 3.0), (3.0,), "c", (1, 2, 3), 3.5, ("a", "b"),
                   (1e308, 1e308), None])
    virtual = knob(["bf", "bf", "bf-full", "abf", "df", "whole"],
                   ["BF", "", None, 3, ["bf"], "phase"])
    bf_radius = knob([None, None, 1.0, 5.0, 1e-3, 50.0],
                     [0.0, -1.0, math.nan, 1e9, "5", (1.0, 2.0), 1e-300, 1e4])
    com_radius = knob([None, None, 10.0, 40.0, 1e-3, 1e4],
                      [0.0, -1.0, math.inf, math.nan, "40"])
    rotation = knob([0.0, 0.0, 90.0, -45.0, "auto", "auto", np.float32(30.0), 1e6],
                    [math.nan, math.inf, "ninety", None, (1.0,), 1e300, True, "AUTO", 1j])
    flip = knob([False, True, np.bool_(True)], [0, 1, "yes", None, "no", math.nan])
    chunk_bytes = knob([64 << 20, 64 << 20, 1, 100, 4096], [0, -1, 1.5, None, "1", math.inf])
    t = attempt(ft.FocalTriplet.from_4dstem, minus, zero, plus, dz, scan_step, k_sampling,
                energy, center=center, virtual=virtual, bf_radius=bf_radius,
                com_radius=com_radius, rotation=rotation, flip=flip, backend="cpu",
                chunk_bytes=chunk_bytes)
    if t is None:
        return
    assert t.shape == shape[:2]
    assert t.gradient is not None and t.gradient.shape == (2,) + shape[:2]
    assert np.isfinite(np.asarray(t.gradient)).all()
    for r in t.reductions:
        for v in r.virtual.values():
            assert np.isfinite(np.asarray(v)).all()
        assert np.isfinite(np.asarray(r.com)).all()
    method = data.draw(st.sampled_from(["icom", "tie", "tie-uniform", "tie-exact", "gd"]))
    rec = attempt(ft.reconstruct, t, method=method, backend="cpu", max_iter=20)
    if rec is not None:
        check_reconstruction(rec, t.shape, np.float32)


# --------------------------------------------------------------------------- reconstruct

RECON_METHODS = [m for m in ft.METHODS if m != "flowtie"]


@fuzz(60)
@given(data=st.data())
def test_reconstruct(data):
    shape = data.draw(shapes2d)
    planes = smooth_planes(shape, data.draw(st.integers(0, 99)))
    if data.draw(st.booleans()):
        planes = [data.draw(image(shape, hostile=False)) for _ in range(3)]
    grad = None
    if data.draw(st.booleans()):
        grad = data.draw(st.sampled_from([0.0, 1e-3, 1.0, 1e30]))
        grad = np.full((2,) + shape, grad, np.float32)
        grad[0, 0, 0] += 0.5
    t = attempt(ft.FocalTriplet, *planes, dz=data.draw(st.sampled_from(DZ)),
                pixel_size=data.draw(st.sampled_from(PIXEL)),
                energy=data.draw(st.sampled_from(ENERGY)), gradient=grad)
    if t is None:
        return
    knob = Knobs(data)
    method = knob(RECON_METHODS, ["TIE", "", None, 3, "flow", ["tie"]])
    dtype = knob(["float32", "float32", "float64", np.float64, np.float32, np.dtype("f8")],
                 ["float16", "int32", "complex64", None, "nonsense", object, "float128", 3])
    kwargs = dict(
        backend=knob(["cpu"], ["tpu", None, 0, "CPU", "cuda"]),
        boundary=knob(["periodic", "mirror"], ["dirichlet", None, 1, "Periodic"]),
        scheme=knob(["auto", "auto", "spectral", "fd"], ["fft", None, 2]),
        alpha=knob([0.0, 0.0, 1e-3, 1e3, 1e-300, np.float32(1e-2), 1e30],
                   [-1.0, math.nan, math.inf, "0", None, 1j, (0.0,)]),
        floor=knob([1e-3, 1e-3, 0.5, 1.0, 100.0, 1e-300, 1e300],
                   [0.0, -1.0, math.nan, "x", None, math.inf, (1e-3,)]),
        dtype=dtype,
    )
    for key, good, bad in (
            ("tol", [None, 1e-3, 1e-12, 1e300, 1e-300, 0.5],
             [0.0, -1.0, math.nan, math.inf, "1e-3", 1j, (1e-3,)]),
            ("max_iter", [None, 1, 5, 30, np.int64(3), 4.0],
             [0, -1, 2.5, True, math.nan, "10", math.inf, 10**30, -10**30]),
            ("preconditioner", ["biharmonic", "none"], ["jacobi", None, 0, "None"])):
        if data.draw(st.booleans()):
            kwargs[key] = knob(good, bad)
    if data.draw(st.integers(0, 19)) == 0:
        kwargs["colour"] = "red"
    work = np.dtype(dtype) if dtype in ("float32", "float64", np.float32, np.float64) \
        else np.float32
    with tempfile.TemporaryDirectory() as tmp:
        out = knob(out_buffer(shape, t.planes, tmp, work),
                   out_buffer(shape, t.planes, tmp, work, bad=True))
        ins = t.planes + ([out] if isinstance(out, np.ndarray) else [])
        gout = knob(out_buffer((2,) + shape, ins, tmp, work),
                    out_buffer((2,) + shape, ins, tmp, work, bad=True))
        if out is not None:
            kwargs["out"] = out
        if gout is not None:
            kwargs["gradient_out"] = gout
        rec = attempt(ft.reconstruct, t, method=method, **kwargs)
        if rec is None:
            return
        want = np.dtype(kwargs["dtype"])
        check_reconstruction(rec, shape, want, out=out, gradient_out=gout)
        check_residual(rec, shape)


@fuzz(5)
@given(data=st.data())
def test_reconstruct_flowtie(data):
    pytest.importorskip("torch")
    shape = data.draw(st.sampled_from([(16, 16), (8, 12), (4, 4), (17, 9)]))
    planes = smooth_planes(shape, data.draw(st.integers(0, 99)))
    if data.draw(st.booleans()):
        planes = [data.draw(image(shape, hostile=False)) for _ in range(3)]
    grad = None if data.draw(st.booleans()) else np.zeros((2,) + shape, np.float32)
    t = attempt(ft.FocalTriplet, *planes, dz=20.0, pixel_size=0.2, energy=300e3,
                gradient=grad)
    if t is None:
        return
    dtype = data.draw(st.sampled_from(["float32", "float64"]))
    model = data.draw(st.sampled_from([None, None, "fast", "no-such-model", 3]))
    with tempfile.TemporaryDirectory() as tmp:
        out = data.draw(out_buffer(shape, t.planes, tmp, dtype, bad=data.draw(st.booleans())))
        kwargs = {} if out is None else {"out": out}
        rec = attempt(ft.reconstruct, t, method="flowtie", backend="cpu", dtype=dtype,
                      model=model, **kwargs)
        if rec is not None:
            check_reconstruction(rec, shape, dtype, out=out)


# --------------------------------------------------------------------------- TIESolver

@fuzz(40)
@given(data=st.data())
def test_tiesolver(data):
    knob = Knobs(data)
    shape = knob(st.one_of(shapes2d, st.sampled_from([(np.int64(8), np.uint8(6)), [6, 8],
                                                      (2, 2), (6.0, 8)])),
                 st.sampled_from([(1, 8), (8,), (), (0, 0), (8, 8, 8), (2.5, 8), (True, 8),
                                  ("8", 8), None, (-4, 4), (10**6, 10**6), "88", 8,
                                  (math.nan, 8), (math.inf, 8), (10**30, 8)]))
    px = knob(PIXEL)
    kwargs = dict(
        boundary=knob(["periodic", "mirror"], ["x", None]),
        scheme=knob(["auto", "spectral", "fd"], ["x", None]),
        alpha=knob([0.0, 1e-2], [-1.0, math.nan, "a", None]),
        floor=knob([1e-3, 0.1], [0.0, math.inf, "a", None]),
        dtype=knob(["float32", "float64"], ["float16", "int8", None, "x"]),
        backend="cpu",
        threads=knob([None, None, 1, 2], [0, -1, 1.5, "2", True, 10**6]),
    )
    solver = attempt(ft.TIESolver, shape, px, **kwargs)
    if solver is None:
        return
    shape = solver.shape
    dtype = solver.dtype
    knob = Knobs(data)
    # integrate: a measured gradient, good or bad
    good_g = st.builds(lambda s, seed: (np.full((2,) + shape, s) + np.random.default_rng(
        seed).random((2,) + shape)).astype(dtype), st.sampled_from([0.0, 1.0, 1e-30, 1e30]),
        st.integers(0, 9))
    g = knob(good_g, st.one_of(any_array((2,) + shape), st.builds(
        lambda v: np.full((2,) + shape, v, np.float32),
        st.sampled_from([1e38, -3e38, np.inf, np.nan]))))
    with tempfile.TemporaryDirectory() as tmp:
        ins = [g] if isinstance(g, np.ndarray) else []
        out = knob(out_buffer(shape, ins, tmp, dtype), out_buffer(shape, ins, tmp, dtype, True))
        ins += [out] if isinstance(out, np.ndarray) else []
        gout = knob(out_buffer((2,) + shape, ins, tmp, dtype),
                    out_buffer((2,) + shape, ins, tmp, dtype, True))
        rec = attempt(solver.integrate, g, out=out, gradient_out=gout)
        if rec is not None:
            check_reconstruction(rec, shape, dtype, out=out, gradient_out=gout)
            check_residual(rec, shape)
    # solve: a triplet of this or another shape / pixel size, or not a triplet
    knob = Knobs(data)
    tshape = knob([shape], [(shape[0] + 1, shape[1])])
    tpx = knob([solver.pixel_size], [0.37, (solver.pixel_size[0], 0.37)])
    t = attempt(ft.FocalTriplet, *smooth_planes(tshape), dz=20.0, pixel_size=tpx,
                energy=300e3)
    target = knob([t], [None, "triplet", smooth_planes(shape)])
    method = knob(RECON_METHODS, ["x", None])
    rec = attempt(solver.solve, target, method=method, max_iter=10)
    if rec is not None:
        check_reconstruction(rec, shape, dtype)


# --------------------------------------------------------------------------- Plan

PLAN_METHODS = [m for m in ft.METHODS if m != "flowtie"]


@fuzz(40)
@given(data=st.data())
def test_plan(data):
    knob = Knobs(data)
    shape = knob(shapes2d, st.sampled_from([(1, 8), (8,), (0, 8), None, (4.5, 8), "ab"]))
    method = knob(PLAN_METHODS, ["nope", None, "flowtie2"])
    px = knob(PIXEL)
    dz = knob([20.0, 5.0, 100.0, np.float32(20.0)], st.one_of(BAD_SCALARS, st.just((10., 20.))))
    energy = knob(ENERGY)
    kwargs = dict(
        backend=knob(["cpu"], ["tpu", None, 1]),
        dtype=knob(["float32", "float32", "float64"], ["int8", "float16", None]),
        boundary=knob(["periodic", "mirror"], ["circular", None]),
        scheme=knob(["auto", "auto", "spectral", "fd"], ["fft", None]),
        alpha=knob([0.0, 0.0, 1e-2], [-5.0, math.nan, None]),
        floor=knob([1e-3, 0.2], [0.0, math.nan, None]),
        tol=knob([None, None, 1e-4], [-1.0, math.nan, "1e-3", math.inf]),
        max_iter=knob([None, None, 3], [0, 2.5, -2, math.nan, math.inf, "3", True]),
        preconditioner=knob(["biharmonic", "none"], ["bad", None]),
        warmup=knob([True, False], [None, "yes"]),
    )
    plan = attempt(ft.Plan, shape, px, dz, energy, method, **kwargs)
    if plan is None:
        return
    shape, dtype = plan.shape, plan.dtype
    assert plan.dtype in (np.float32, np.float64)
    good_planes = st.builds(lambda seed: [p.astype(dtype) for p in smooth_planes(shape, seed)],
                            st.integers(0, 9))
    bad_planes = st.one_of(st.lists(image(shape), min_size=3, max_size=3),
                           st.lists(any_array(shape), min_size=3, max_size=3))

    with tempfile.TemporaryDirectory() as tmp:
        knob = Knobs(data)
        minus, zero, plus = knob(good_planes, bad_planes)
        good_grad = np.zeros((2,) + shape, dtype)
        good_grad[0, 0, 0] = 0.01
        gradient = knob([good_grad] if method == "icom" else [None, good_grad],
                        st.one_of(any_array((2,) + shape), st.just(None)))
        ins = [a for a in (minus, zero, plus, gradient) if isinstance(a, np.ndarray)]
        out = knob(out_buffer(shape, ins, tmp, dtype), out_buffer(shape, ins, tmp, dtype, True))
        ins += [out] if isinstance(out, np.ndarray) else []
        gout = knob(out_buffer((2,) + shape, ins, tmp, dtype),
                    out_buffer((2,) + shape, ins, tmp, dtype, True))
        phase = attempt(plan.solve, minus, zero, plus, gradient=gradient, out=out,
                        gradient_out=gout)
        if phase is not None:
            assert isinstance(phase, np.ndarray)
            assert phase.shape == shape and phase.dtype == dtype
            assert np.isfinite(phase).all()
            if out is not None:
                assert phase is out
            if gout is not None:
                assert np.isfinite(gout).all()

        # a batch
        knob = Knobs(data)
        b = knob(st.integers(1, 3), st.just(0))
        stack = np.stack([np.stack(smooth_planes(shape, i)) for i in range(b)]) if b else \
            np.zeros((0, 3) + shape, np.float32)
        stack = stack.astype(dtype)
        kind = knob(["good"], ["zero-frame", "negative", "nan", "inf", "dtype", "shape",
                               "list", "readonly", "fortran", "huge"])
        if b and kind == "zero-frame":
            stack[-1, data.draw(st.integers(0, 2))] = 0
        elif b and kind == "negative":
            stack[-1, 1, 0, 0] = -1
        elif b and kind == "nan":
            stack[0, 2, -1, -1] = np.nan
        elif b and kind == "inf":
            stack[-1, 0, 0, -1] = np.inf
        elif kind == "huge":
            stack = stack * (np.finfo(dtype).max / 4)
        elif kind == "dtype":
            stack = stack.astype(data.draw(st.sampled_from([np.uint16, np.complex64, bool,
                                                            object, np.float16, ">f4"])))
        elif kind == "shape":
            stack = data.draw(st.sampled_from([stack[:, :2], stack[..., :-1], stack[0],
                                               stack.reshape(-1)]))
        elif kind == "list":
            stack = stack.tolist()
        elif kind == "readonly":
            stack.flags.writeable = False
        elif kind == "fortran":
            stack = np.asfortranarray(stack)
        bgrad = None
        if method == "icom" or data.draw(st.booleans()):
            bgrad = np.zeros((b, 2) + shape, dtype)
            if b:
                bgrad[:, 0, 0, 0] = 0.01
        bgrad = knob([bgrad], [None, np.zeros((b + 1, 2) + shape, dtype),
                               np.full((b, 2) + shape, np.nan, dtype)])
        stack_arrays = [a for a in (stack, bgrad) if isinstance(a, np.ndarray)]
        bout = knob(out_buffer((b,) + shape, stack_arrays, tmp, dtype),
                    out_buffer((b,) + shape, stack_arrays, tmp, dtype, True))
        stack_arrays += [bout] if isinstance(bout, np.ndarray) else []
        bgout = knob(out_buffer((b, 2) + shape, stack_arrays, tmp, dtype),
                     out_buffer((b, 2) + shape, stack_arrays, tmp, dtype, True))
        phases = attempt(plan.solve_batch, stack, gradient=bgrad, out=bout, gradient_out=bgout)
        if phases is not None:
            assert isinstance(phases, np.ndarray)
            assert phases.shape == (b,) + shape and phases.dtype == dtype
            assert np.isfinite(phases).all()
            if bout is not None:
                assert phases is bout
            if bgout is not None:
                assert np.isfinite(bgout).all()


# --------------------------------------------------------------------------- files

@fuzz(30)
@given(data=st.data())
def test_save_load_roundtrip(data):
    suffix = data.draw(st.sampled_from([".npz", ".h5", ".hdf5", ".txt", ""]))
    kind = data.draw(st.sampled_from(["triplet", "4dstem", "other"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"case{suffix}"
        if kind == "triplet":
            shape = data.draw(shapes2d)
            dtype = data.draw(st.sampled_from(REAL_DTYPES))
            planes = [(p * 100).astype(dtype) for p in smooth_planes(shape)]
            obj = attempt(ft.FocalTriplet, *planes, dz=data.draw(st.sampled_from(DZ)),
                          pixel_size=data.draw(st.sampled_from(PIXEL)), energy=300e3)
            if obj is None:
                return
        elif kind == "4dstem":
            p = [_patterns((4, 4, 8, 8), i).astype(np.float32) for i in range(3)]
            obj = ft.Dataset(*p, dz=(20.0, 20.0), scan_step=(0.2, 0.2), energy=300e3,
                             k_sampling=(0.05, 0.05))
        else:
            obj = data.draw(st.sampled_from([None, "x", np.zeros((4, 4)), 3, [1, 2, 3]]))
        written = attempt(ft.save, path, obj)
        if written is None:
            return
        ds = attempt(ft.load, written)
        assert ds is not None, "a file written by save cannot be loaded"
        with ds:
            assert ds.kind == ("4dstem" if kind == "4dstem" else "triplet")
            src = obj if kind == "4dstem" else obj
            for name in ("minus", "zero", "plus"):
                np.testing.assert_array_equal(np.asarray(getattr(ds, name)),
                                              np.asarray(getattr(src, name)))
            t = attempt(ds.triplet, backend="cpu") if kind == "4dstem" else \
                attempt(ds.triplet)
            if t is not None:
                rec = attempt(ft.reconstruct, t, method="tie", backend="cpu")
                if rec is not None:
                    check_reconstruction(rec, t.shape, np.float32)


LAYOUT_KEYS = ["minus", "zero", "plus", "dz", "scan_step", "k_sampling", "energy", "phase_gt",
               "gradient_gt", "material", "thickness", "semiangle", "format", "kind"]


@st.composite
def field_value(draw, key):
    img = (6, 6)
    scalar = st.sampled_from([20.0, 0.2, 300e3, (20.0, 20.0), 0.0, -1.0, math.nan, math.inf,
                              (1.0, 2.0, 3.0), "abc", b"\xff\xfe", True, 1 + 2j, 10**20,
                              np.zeros((2, 2)), np.array([], float), ""])
    arrayish = st.builds(lambda d, f, s, sh: _make(sh, d, f, "C", s),
                         st.sampled_from(REAL_DTYPES[:9] + [np.bool_, np.complex64, "U2"]),
                         st.sampled_from(FILLS), st.integers(0, 50),
                         st.sampled_from([img, img, img, (4, 4, 6, 6), (2,) + img, (), (0,),
                                          (5, 6), (0, 6)]))
    if key in ("minus", "zero", "plus", "phase_gt", "gradient_gt"):
        return draw(st.one_of(arrayish, arrayish, scalar))
    return draw(st.one_of(scalar, scalar, arrayish))


@fuzz(50)
@given(data=st.data())
def test_load_hostile_files(data):
    fmt = data.draw(st.sampled_from(["npz", "h5", "garbage", "truncated", "npy"]))
    base = {"minus": np.ones((6, 6), np.float32), "zero": np.ones((6, 6), np.float32) * 1.1,
            "plus": np.ones((6, 6), np.float32) * 1.2, "dz": np.array([20.0, 20.0]),
            "scan_step": np.array([0.2, 0.2]), "energy": 300e3}
    fields = dict(base)
    for key in data.draw(st.lists(st.sampled_from(LAYOUT_KEYS + ["extra", "__proto"]),
                                  max_size=4, unique=True)):
        if data.draw(st.integers(0, 4)) == 0:
            fields.pop(key, None)
        else:
            fields[key] = data.draw(field_value(key))
    with tempfile.TemporaryDirectory() as tmp:
        if fmt in ("npz", "truncated"):
            path = Path(tmp) / "f.npz"
            arrays = {}
            for k, v in fields.items():
                with contextlib.suppress(ValueError, TypeError):
                    arrays[k] = np.asarray(v)
                if k not in arrays:
                    arrays[k] = np.array(v, dtype=object)
            np.savez(path, **arrays)
            if fmt == "truncated":
                raw = path.read_bytes()
                path.write_bytes(raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))])
        elif fmt == "h5":
            h5py = pytest.importorskip("h5py")
            path = Path(tmp) / data.draw(st.sampled_from(["f.h5", "f.hdf5", "F.H5"]))
            with h5py.File(path, "w") as f:
                for k, v in fields.items():
                    as_attr = data.draw(st.booleans())
                    with contextlib.suppress(TypeError, ValueError):
                        if as_attr:
                            f.attrs[k] = v
                        else:
                            f.create_dataset(k, data=v)
                if data.draw(st.integers(0, 5)) == 0 and "zero" in f:
                    f.create_group("zero_group")
                    del f["zero"]
                    f["zero"] = f["zero_group"]
                if data.draw(st.integers(0, 5)) == 0 and "dz" in f:
                    del f["dz"]
                    f["dz"] = h5py.SoftLink("/minus")
        elif fmt == "npy":
            path = Path(tmp) / "f.npz"
            with open(path, "wb") as fh:
                np.save(fh, np.zeros(4))
        else:
            path = Path(tmp) / data.draw(st.sampled_from(["f.npz", "f.h5"]))
            path.write_bytes(data.draw(st.binary(max_size=64)))
        ds = attempt(ft.load, path)
        if ds is None:
            return
        with ds:
            assert ds.kind in ("triplet", "4dstem")
            t = attempt(ds.triplet, backend="cpu") if ds.kind == "4dstem" else \
                attempt(ds.triplet)
            if t is None:
                return
            rec = attempt(ft.reconstruct, t, method="tie", backend="cpu")
            if rec is not None:
                check_reconstruction(rec, t.shape, np.float32)


# --------------------------------------------------------------------------- command line

def run_cli(capsys, argv):
    """``main(argv)`` under the CLI contract; returns (code, stdout, stderr)."""
    from flowtie_fast.cli import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors only
        assert exc.code == 2, f"SystemExit({exc.code!r}) from {argv}"
        return 2, *capsys.readouterr()
    captured = capsys.readouterr()
    assert code in (0, 1, 2), f"main returned {code!r}"
    err = captured.err.strip()
    if code == 0:
        assert "error" not in err.lower(), err
    else:
        lines = err.splitlines()
        assert len(lines) == 1, f"stderr is not one line: {err!r}"
        assert lines[0].startswith(f"flowtie {argv[0]}: error:"), lines[0]
        assert "unexpected" not in lines[0], lines[0]
    return code, captured.out, captured.err


def _number_text():
    return st.one_of(
        st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e400", "-0", "1e-320", "abc", "",
                         "0x10", "1_000", " 5", "1e308"]),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-10**6, 10**6).map(str))


@fuzz(30)
@given(data=st.data())
def test_cli_reconstruct(data, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        planes = smooth_planes((16, 16))
        good = tmp / "good.npz"
        np.savez(good, minus=planes[0], zero=planes[1], plus=planes[2], dz=[20.0, 20.0],
                 scan_step=[0.2, 0.2], energy=300e3)
        stem4 = tmp / "stem.npz"
        p = [_patterns((4, 4, 8, 8), i).astype(np.float32) for i in range(3)]
        np.savez(stem4, minus=p[0], zero=p[1], plus=p[2], dz=[20.0, 20.0], scan_step=[0.2, 0.2],
                 energy=300e3, k_sampling=[0.05, 0.05])
        bad = tmp / "bad.npz"
        np.savez(bad, minus=planes[0], zero=-planes[1], plus=planes[2], dz=[20.0, math.nan],
                 scan_step=[0.2, 0.2], energy=300e3)
        zeros = tmp / "zeros.npz"
        np.savez(zeros, minus=planes[0], zero=np.zeros((16, 16)), plus=planes[2],
                 dz=[20.0, 20.0], scan_step=[0.2, 0.2], energy=300e3)
        junk = tmp / "junk.h5"
        junk.write_bytes(b"not hdf5")
        existing = tmp / "existing.npz"
        existing.write_bytes(b"x")
        (tmp / "adir.npz").mkdir()
        source = data.draw(st.sampled_from([good, good, good, stem4, stem4, bad, zeros, junk,
                                            tmp / "missing.npz", tmp / "f.txt", tmp,
                                            tmp / "adir.npz"]))
        argv = ["reconstruct", source]
        output = data.draw(st.sampled_from([tmp / "o.npz", tmp / "o.h5", tmp / "o.npz",
                                            tmp / "o.txt", existing, source, tmp / "adir.npz",
                                            tmp / "sub" / "o.npz", good, None]))
        if output is not None:
            argv += ["-o", output]
        method = data.draw(st.sampled_from(RECON_METHODS + ["bogus"]))
        argv += ["--method", method]
        extra = data.draw(st.lists(st.sampled_from([
            ("--backend", "cpu"), ("--backend", "auto"), ("--backend", "tpu"),
            ("--boundary", "mirror"), ("--boundary", "periodic"), ("--boundary", "x"),
            ("--virtual", "bf"), ("--virtual", "df"), ("--virtual", "nope"),
            ("--virtual", ""), ("--overwrite",), ("--png", tmp / "f.png"),
            ("--png", tmp / "f.jpg"), ("--png", existing), ("--precision", "bfloat16"),
            ("--debug",), ("--frobnicate",)]), max_size=3))
        for e in extra:
            if e[0] == "--debug":
                continue  # its traceback on stderr is the point of --debug
            argv += list(e)
        code, out, err = run_cli(capsys, argv)
        if code == 0:
            assert output is not None
            phase, grad, residual = _read_result(output)
            assert phase.ndim == 2 and grad.shape == (2,) + phase.shape
            assert residual.shape == phase.shape
            assert phase.dtype == np.float32 and np.isfinite(phase).all()
            assert np.isfinite(grad).all() and np.isfinite(residual).all()


def _read_result(path):
    if Path(path).suffix.lower() == ".npz":
        with np.load(path) as z:
            return z["phase"], z["gradient"], z["residual"]
    import h5py

    with h5py.File(path, "r") as f:
        return f["phase"][()], f["gradient"][()], f["residual"][()]


@fuzz(30)
@given(data=st.data())
def test_cli_demo_fresnel(data, capsys, monkeypatch):
    size = data.draw(st.one_of(st.integers(16, 32).map(str), st.sampled_from(
        ["15", "0", "-16", "4097", "1e3", "abc", "16.5", "99999999999999999999"])))
    dz = data.draw(st.one_of(st.sampled_from(["20", "5", "100", "1e-3"]), _number_text()))
    px = data.draw(st.one_of(st.sampled_from(["0.2", "0.5", "1"]), _number_text()))
    energy = data.draw(st.one_of(st.sampled_from(["300e3", "80000", "1e7"]), _number_text()))
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.chdir(tmp)
        argv = ["demo", "--fresnel", "--size", size, "--dz", dz, "--pixel-size", px,
                "--energy", energy]
        if data.draw(st.integers(0, 4)) == 0:
            argv += ["--png", data.draw(st.sampled_from(["x.txt", "x.png", tmp]))]
        code, out, err = run_cli(capsys, argv)
        if code == 0:
            assert "NMSE" in out
            nmse = [line.split()[2] for line in out.splitlines()
                    if line.split() and line.split()[0] in ft.METHODS]
            assert nmse and all(math.isfinite(float(v)) for v in nmse), out


SIM_BAD = [("--energy", ["0", "-300e3", "nan", "inf", "1e12", "10"]),
           ("--dz", ["0", "-20", "nan", "inf", "1e-9", "1e12"]),
           ("--semiangle", ["0", "-1", "nan", "501", "inf"]),
           ("--supercell", ["0", "-12", "nan", "1e5"]),
           ("--sampling", ["0", "-0.06", "nan", "2"]),
           ("--max-angle", ["0", "-40", "nan", "3000"]),
           ("--frozen-phonons", ["-1", "10001"]),
           ("--dose", ["0", "-5", "nan", "inf"]),
           ("--seed", ["-1"]),
           ("--thickness", ["0", "-5.65", "nan", "inf", "1e6"])]


@fuzz(30)
@given(data=st.data())
def test_cli_simulate_refuses_bad_numbers(data, capsys, monkeypatch):
    import flowtie_fast.simulation.simulate as sim

    def _must_not_run(*a, **k):
        raise AssertionError("simulate_series ran although a setting is invalid")

    monkeypatch.setattr(sim, "simulate_series", _must_not_run)
    picks = data.draw(st.lists(st.sampled_from(range(len(SIM_BAD))), min_size=1, max_size=3,
                               unique=True))
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["simulate", "-o", Path(tmp) / "out"]
        for i in picks:
            flag, values = SIM_BAD[i]
            argv += [flag, data.draw(st.sampled_from(values))]
        if data.draw(st.booleans()):
            argv += ["--scan-gpts", data.draw(st.sampled_from(["1", "0", "-4", "70000"])), "8"]
        start = time.perf_counter()
        code, out, err = run_cli(capsys, argv)
        assert time.perf_counter() - start < 10
        assert code == 2, (argv, out, err)


TRAIN_BAD = [("--steps", ["0", "-1"]), ("--batch", ["0", "-8"]),
             ("--lr", ["0", "-1e-3", "nan", "inf"]), ("--width", ["0", "-24"]),
             ("--depth", ["0", "-3"]), ("--stride", ["0", "-1"]), ("--seed", ["-1"]),
             ("--restarts", ["-1"]), ("--distill", ["-0.5", "1.5", "nan", "0.5"]),
             ("--weights", [["nan", "0", "1"], ["-1", "0", "1"], ["0", "0", "0"],
                            ["inf", "1", "1"]]),
             ("--dose", [["0", "10"], ["-1", "5"], ["nan", "1"], ["10", "5"]]),
             ("--doses", [["0"], ["-1e4"], ["nan"], ["inf", "1e4"]]),
             ("--channels", [["0", "8"], ["-4"]])]


@fuzz(25)
@given(data=st.data())
def test_cli_train_refuses_bad_numbers(data, capsys, monkeypatch):
    pytest.importorskip("torch")
    import flowtie_fast.training.data as fdata
    import flowtie_fast.training.train as ftrain

    def _must_not_run(*a, **k):
        raise AssertionError("training data was read although a setting is invalid")

    monkeypatch.setattr(fdata, "load_samples", _must_not_run)
    monkeypatch.setattr(ftrain, "train", _must_not_run)
    picks = data.draw(st.lists(st.sampled_from(range(len(TRAIN_BAD))), min_size=1, max_size=3,
                               unique=True))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        argv = ["train", tmp / "data", "-o", tmp / "m.pt", "--checkpoint", tmp / "c.ckpt"]
        for i in picks:
            flag, values = TRAIN_BAD[i]
            v = data.draw(st.sampled_from(values))
            argv += [flag] + (v if isinstance(v, list) else [v])
        start = time.perf_counter()
        code, out, err = run_cli(capsys, argv)
        assert time.perf_counter() - start < 20
        assert code == 2, (argv, out, err)


# --------------------------------------------------------------------------- every bad scalar

HOSTILE = [0, 0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324, "20", "", True, None,
           (), (1.0, 2.0, 3.0), [20.0, math.nan], np.int64(-3), np.array(3.0), np.array([]),
           np.zeros((2, 2)), complex(1, 1), b"1", 10**400, -10**400, {"a": 1}, {1.0},
           np.array(["a"]), np.float32(np.inf)]


def _triplet_call(arg, value):
    planes = smooth_planes((8, 8))
    kw = {"dz": 20.0, "pixel_size": 0.2, "energy": 300e3, arg: value}
    return ft.FocalTriplet(*planes, **kw)


def _series_call(arg, value):
    kw = {"z": [-20.0, 0.0, 20.0], "pixel_size": 0.2, "energy": 300e3, arg: value}
    return ft.FocalSeries(smooth_planes((8, 8)), **kw)


_T = None


def _reconstruct_call(arg, value):
    global _T
    if _T is None:
        _T = ft.FocalTriplet(*smooth_planes((8, 8)), 20.0, 0.2, 300e3,
                             gradient=np.zeros((2, 8, 8), np.float32))
    method = "gd" if arg in ("tol", "max_iter", "preconditioner") else "tie"
    kw = {"method": method, "backend": "cpu", arg: value}
    if arg == "max_iter":
        kw["tol"] = 1e-3
    rec = ft.reconstruct(_T, **kw)
    check_reconstruction(rec, (8, 8), rec.phase.dtype)
    assert rec.phase.dtype in (np.float32, np.float64)
    return rec


def _solver_call(arg, value):
    kw = {"shape": (8, 8), "pixel_size": 0.2, "backend": "cpu", arg: value}
    return ft.TIESolver(**kw)


def _plan_call(arg, value):
    kw = {"shape": (8, 8), "pixel_size": 0.2, "dz": 20.0, "energy": 300e3, "method": "gd",
          "backend": "cpu", "warmup": False, arg: value}
    return ft.Plan(**kw)


def _stem_call(arg, value):
    data = [_patterns((4, 4, 8, 8), i).astype(np.float32) for i in range(3)]
    kw = {"dz": 20.0, "scan_step": 0.2, "k_sampling": 0.05, "energy": 300e3,
          "backend": "cpu", arg: value}
    return ft.FocalTriplet.from_4dstem(*data, **kw)


HOSTILE_TARGETS = [
    (_triplet_call, ["dz", "pixel_size", "energy"]),
    (_series_call, ["z", "z0", "degree", "pixel_size", "energy"]),
    (_reconstruct_call, ["method", "boundary", "scheme", "alpha", "floor", "dtype", "tol",
                         "max_iter", "preconditioner"]),
    (_solver_call, ["shape", "pixel_size", "alpha", "floor", "dtype", "boundary", "scheme"]),
    (_plan_call, ["shape", "dz", "energy", "tol", "max_iter", "alpha", "floor", "dtype"]),
    (_stem_call, ["scan_step", "k_sampling", "center", "virtual", "bf_radius", "com_radius",
                  "rotation", "chunk_bytes"]),
]


def _short(value) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


@pytest.mark.parametrize("call,arg", [(c, a) for c, args in HOSTILE_TARGETS for a in args],
                         ids=lambda v: v if isinstance(v, str) else v.__name__.strip("_"))
def test_every_hostile_scalar(call, arg):
    """Each argument given each kind of bad scalar in turn, the others valid: a
    result or an InputError / BackendError naming an argument, never another
    exception. Every failing value is listed."""
    escaped = []
    for value in HOSTILE:
        try:
            call(arg, value)
        except (ft.InputError, ft.BackendError) as exc:
            if not names_argument(exc):
                escaped.append(f"{arg}={_short(value)}: message names no argument: {exc}")
        except Exception as exc:  # noqa: BLE001 - the contract violation being sought
            escaped.append(f"{arg}={_short(value)}: {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped)
