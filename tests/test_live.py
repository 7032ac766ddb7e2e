"""LiberTEM: the reduction UDF equals reduce_4dstem on memory and npy datasets,
and the triplet it builds reconstructs the encoded phase; its CuPy branch runs
here on a fake device and on a CUDA device where one answers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from fields import rel_rms
from test_stem import E, K_SAMPLING, _phase_and_gradient, gaussian_patterns

import flowtie_fast as ft
from flowtie_fast import stem

pytest.importorskip("libertem")
from libertem.api import Context  # noqa: E402

from flowtie_fast._cuda import MAX_WEIGHTS  # noqa: E402
from flowtie_fast.stem import live  # noqa: E402
from flowtie_fast.stem.live import (  # noqa: E402
    ReductionUDF,
    reduce_with_libertem,
    triplet_with_libertem,
)

CENTER = (16.0, 15.0)


@pytest.fixture(scope="module")
def ctx():
    with Context.make_with("inline") as c:
        yield c


def encoded(step=0.25, scale=1.0):
    phi, grad = _phase_and_gradient()
    return phi, gaussian_patterns(scale * grad / (2 * np.pi) / K_SAMPLING, center=CENTER)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_udf_equals_reduce_4dstem(ctx, dtype, rng):
    data = (rng.random((9, 7, 33, 31)) * 300).astype(dtype)
    det = stem.Detector((33, 31), (K_SAMPLING, K_SAMPLING), E, CENTER)
    regions = {"bf": (0.0, 8.0), "df": (8.0, np.inf), "whole": (0.0, np.inf)}
    want = stem.reduce_4dstem(data, det, regions, backend="cpu")
    got = reduce_with_libertem(ctx, ctx.load("memory", data=data, sig_dims=2), det, regions)
    for name in regions:
        np.testing.assert_allclose(got.virtual[name], want.virtual[name], rtol=1e-6)
    # The COM of random patterns is a small difference of large float32 sums,
    # grouped differently per partition: absolute error ~1e-7 of the k extent.
    np.testing.assert_allclose(got.com, want.com, rtol=1e-6, atol=1e-6 * 16 * K_SAMPLING)


def test_triplet_from_npy_files_reconstructs_the_phase(ctx, tmp_path):
    """Three .npy files through LiberTEM give the triplet of from_4dstem (same
    planes, same centre of mass) and iCOM finds the encoded phase."""
    phi, data = encoded()
    paths = []
    for name, scale in (("minus", 0.98), ("zero", 1.0), ("plus", 1.02)):
        path = tmp_path / f"{name}.npy"
        np.save(path, (data * scale).astype(np.float32))
        paths.append(path)
    datasets = [ctx.load("npy", path=str(p)) for p in paths]
    # Geometry given: from_4dstem finds it from 256 sampled patterns, the
    # LiberTEM path from the mean of all of them (checked separately below).
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=CENTER,
              bf_radius=5.0)
    t = triplet_with_libertem(ctx, datasets, **kw)
    arrays = [np.load(p) for p in paths]
    want = ft.FocalTriplet.from_4dstem(*arrays, **kw, backend="cpu")
    for a, b in zip(t.planes, want.planes):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(t.gradient, want.gradient, rtol=1e-5, atol=1e-9)
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < 1e-3
    found = triplet_with_libertem(ctx, datasets, dz=20.0, scan_step=0.25,
                                  k_sampling=K_SAMPLING, energy=E)
    assert np.allclose(found.reductions[1].detector.center, CENTER, atol=0.05)


def test_bad_datasets_are_named(ctx, rng):
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    ds = ctx.load("memory", data=data, sig_dims=2)
    other = ctx.load("memory", data=data[:, :3], sig_dims=2)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    with pytest.raises(ft.InputError, match="datasets: expected three"):
        triplet_with_libertem(ctx, [ds, ds], **kw)
    with pytest.raises(ft.InputError, match="datasets: expected equal shapes"):
        triplet_with_libertem(ctx, [ds, ds, other], **kw)
    det = stem.Detector((9, 9), (K_SAMPLING, K_SAMPLING), E, (4.0, 4.0))
    with pytest.raises(ft.InputError, match="detector shape"):
        reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)})


def test_what_the_udf_cannot_run_over_is_named(ctx, rng, tmp_path):
    """Arrays instead of datasets, a dataset loaded with sync_offset and a
    big-endian float file escaped as LiberTEM's AttributeError,
    AssertionError and NotImplementedError."""
    data = (rng.random((4, 4, 8, 8)) * 100).astype(np.float32)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    det = stem.Detector((8, 8), (K_SAMPLING, K_SAMPLING), E, (4.0, 4.0))
    regions = {"whole": (0, np.inf)}
    with pytest.raises(ft.InputError, match=r"^datasets: the minus entry is ndarray, expected "
                                            r"a LiberTEM dataset .*FocalTriplet.from_4dstem"):
        triplet_with_libertem(ctx, [data, data, data], **kw)
    with pytest.raises(ft.InputError, match=r"^dataset: expected a LiberTEM dataset .*got "
                                            r"ndarray"):
        reduce_with_libertem(ctx, data, det, regions)
    offset = ctx.load("memory", data=data, sig_dims=2, sync_offset=2)
    with pytest.raises(ft.InputError, match=r"^dataset: loaded with sync_offset=2"):
        reduce_with_libertem(ctx, offset, det, regions)
    with pytest.raises(ft.InputError, match=r"^minus: loaded with sync_offset=2"):
        triplet_with_libertem(ctx, [offset] * 3, **kw)
    path = tmp_path / "big.npy"
    np.save(path, data.astype(">f4"))
    big = ctx.load("npy", path=str(path))
    with pytest.raises(ft.InputError, match=r"^dataset: dtype >f4 is big-endian floating "
                                            r"point, which LiberTEM does not read"):
        reduce_with_libertem(ctx, big, det, regions)
    np.save(path, data.astype(">u2"))  # integers it swaps
    got = reduce_with_libertem(ctx, ctx.load("npy", path=str(path)), det, regions)
    np.testing.assert_allclose(got.virtual["whole"],
                               data.astype(np.uint16).sum(axis=(2, 3)), rtol=1e-6)


def test_a_bf_disk_that_holds_no_detector_pixel_is_named_as_from_4dstem_names_it(ctx):
    """A 4 x 4 px detector: the default 'bf' disk (a quarter of the measured
    one) holds no pixel. From LiberTEM the refusal said the image was zero
    everywhere; from_4dstem names bf_radius and a size that holds one."""
    iy, ix = np.indices((4, 4))
    disk = (np.hypot(iy - 1.5, ix - 1.5) < 1.6).astype(np.float32)
    data = np.broadcast_to(100 * disk, (8, 8, 4, 4)).copy()
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    with pytest.raises(ft.InputError) as direct:
        ft.FocalTriplet.from_4dstem(data, data, data, backend="cpu", **kw)
    ds = ctx.load("memory", data=data, sig_dims=2)
    with pytest.raises(ft.InputError) as live_:
        triplet_with_libertem(ctx, [ds, ds, ds], **kw)
    assert str(live_.value) == str(direct.value)
    assert str(live_.value).startswith("bf_radius: ")


def test_bad_arguments_are_refused_before_any_pass(ctx, rng, monkeypatch):
    """virtual=["bf"] raised TypeError after a full pass; datasets=None a
    TypeError."""
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    ds = ctx.load("memory", data=data, sig_dims=2)
    passes = []
    monkeypatch.setattr(ctx, "run_udf", lambda *a, **k: passes.append(k))
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    for args, extra, says in [
            ((None,), {}, r"^datasets: expected three LiberTEM datasets .*got NoneType"),
            (("abc",), {}, r"^datasets: expected three LiberTEM datasets .*got str"),
            (([ds, None, ds],), {}, r"^datasets: the zero entry is NoneType"),
            (([ds] * 3,), {"virtual": ["bf"]}, r"^virtual: expected one of .*got \['bf'\]"),
            (([ds] * 3,), {"virtual": "dark"}, r"^virtual: expected one of"),
            (([ds] * 3,), {"dz": -1.0}, r"^dz: ")]:
        with pytest.raises(ft.InputError, match=says):
            triplet_with_libertem(ctx, *args, **{**kw, **extra})
    assert passes == []


def test_reduction_udf_refuses_bad_weights(ctx):
    """ReductionUDF("abc") gave ValueError, np.ones(5) AxisError; NaN weights
    and weights of another detector size gave NaN or partial sums."""
    from flowtie_fast.stem.live import ReductionUDF

    for w, says in [("abc", r"^weights: expected a 2-D array of real numbers"),
                    (None, r"^weights: expected a 2-D array of real numbers"),
                    (np.ones(5), r"^weights: expected a non-empty 2-D array .*got shape \(5,\)"),
                    (np.ones((2, 8, 8)), r"^weights: expected a non-empty 2-D array"),
                    (np.full((2, 64), np.nan), r"^weights: expected finite numbers")]:
        with pytest.raises(ft.InputError, match=says):
            ReductionUDF(w)
    with pytest.raises(ft.InputError, match=r"^lo, hi: expected 0 <= lo <= hi <= 64"):
        ReductionUDF(np.ones((2, 64)), lo=np.array([0, 0]), hi=np.array([10**8, 64]))
    with pytest.raises(ft.InputError, match=r"^lo, hi: .*got lo=5, hi=3"):
        ReductionUDF(np.ones((2, 64)), lo=np.array([5, 0]), hi=np.array([3, 64]))
    ds = ctx.load("memory", data=np.ones((4, 4, 16, 16), np.float32), sig_dims=2)
    with pytest.raises(ft.InputError, match=r"^weights: shape \(2, 64\) .* the dataset's "
                                            r"detector is \(16, 16\) \(256 pixels\)"):
        ctx.run_udf(dataset=ds, udf=ReductionUDF(np.ones((2, 64), np.float32)))
    r = ctx.run_udf(dataset=ds, udf=ReductionUDF(np.ones((2, 256), np.float32)))
    assert np.allclose(np.asarray(r["sums"].data), 256.0)


# --------------------------------------------------------------- the CuPy backend


class _Dev(np.ndarray):
    """A NumPy array standing for an array on the fake device."""


class FakeXP:
    """The functions of CuPy that the device branch and LiberTEM's device
    buffers call, returning arrays "on the device"."""

    ndarray = _Dev
    scratch: list = []  # the arrays made by empty()

    @staticmethod
    def ascontiguousarray(a, dtype=None):
        return np.ascontiguousarray(a, dtype).view(_Dev)

    @staticmethod
    def empty(shape, dtype):
        FakeXP.scratch.append(np.empty(shape, dtype).view(_Dev))
        return FakeXP.scratch[-1]

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype).view(_Dev)


class FakeGPU:
    """The GPU Backend's interface with the CPU kernel behind it: records each
    host-to-device copy and each launch, and refuses host arrays and more
    weight rows than one CUDA launch takes, as the CUDA launcher does."""

    is_gpu = True
    xp = FakeXP

    def __init__(self):
        self.moved, self.launches = [], []
        self.kernels = self
        self._cpu = ft.get_backend("cpu")

    def asarray(self, x, dtype=None):
        if not isinstance(x, _Dev):
            self.moved.append(tuple(x.shape))
        return FakeXP.ascontiguousarray(x, dtype)

    def to_numpy(self, x):
        return np.asarray(x).view(np.ndarray)

    def reduce_patterns(self, data, W, lo, hi, out):
        for a in (data, W, lo, hi, out):
            assert isinstance(a, _Dev) and a.flags.c_contiguous, type(a)
        assert 1 <= W.shape[0] <= MAX_WEIGHTS
        into_scratch = any(out is a for a in FakeXP.scratch)
        self.launches.append((data.dtype, data.shape[0], W.shape[0], into_scratch))
        self._cpu.prepare()
        self._cpu.kernels.reduce_patterns(*(a.view(np.ndarray) for a in (data, W, lo, hi, out)))


class DeviceBufferUDF(ReductionUDF):
    """ReductionUDF whose LiberTEM array module is the fake device's, so that
    its ``where="device"`` result buffers are allocated there."""

    @property
    def xp(self):
        return FakeXP


@pytest.mark.parametrize("dtype, kernel_dtype", [(np.uint16, np.uint16), (np.int16, np.int32),
                                                 (np.float64, np.float64), (bool, np.uint16)])
@pytest.mark.parametrize("rows", [5, MAX_WEIGHTS + 3])
@pytest.mark.parametrize("udf_class", [ReductionUDF, DeviceBufferUDF])
def test_cupy_branch_on_a_fake_device_equals_the_numpy_backend(ctx, rng, monkeypatch, dtype,
                                                               kernel_dtype, rows, udf_class):
    """The CuPy branch, with the GPU Backend replaced by a fake one over the
    CPU kernel, run by LiberTEM over three partitions: the weights go to the
    device once per partition, each partition in its own dtype (no float32
    copy where the kernel reads the dtype), the rows in launches of at most
    MAX_WEIGHTS, the sums into the device result buffer or copied to a host
    one; the merged sums equal the NumPy backend's."""
    data = (rng.random((9, 7, 12, 10)) * 300).astype(dtype)
    W = rng.random((rows, 120)).astype(np.float32)
    W[1, :30] = 0  # a row whose range starts inside the pattern
    ds = ctx.load("memory", data=data, sig_dims=2, num_partitions=3)
    want = np.asarray(ctx.run_udf(dataset=ds, udf=ReductionUDF(W))["sums"].data)
    fake = FakeGPU()
    monkeypatch.setattr(live, "_device_backend", lambda backend: fake)
    got = np.asarray(ctx.run_udf(dataset=ds, udf=udf_class(W))["sums"].data)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    launches = 3 * -(-rows // MAX_WEIGHTS)
    assert len(fake.launches) == launches
    assert {d for d, *_ in fake.launches} == {np.dtype(kernel_dtype)}
    assert sum(n for _, n, q, _ in fake.launches if q == min(rows, MAX_WEIGHTS)) == 63
    # weights, ranges and the partition: one copy each per partition
    assert sorted(fake.moved) == sorted([(rows, 120), (rows,), (rows,), (21, 12, 10)] * 3)
    # straight into the device buffer where it is one and one launch takes every row
    direct = udf_class is DeviceBufferUDF and rows <= MAX_WEIGHTS
    assert [scratch for *_, scratch in fake.launches] == [not direct] * launches


def test_forced_cupy_without_cupy_is_one_line_before_any_pass(ctx, rng, monkeypatch):
    """backends=("cupy",) where CuPy is missing, or where the executor has no
    CUDA worker: a BackendError of one line naming the cause and the way out,
    before any pass (LiberTEM itself fails inside the task with "Could not
    find backends", or leaves the task to a worker that never comes)."""
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    ds = ctx.load("memory", data=data, sig_dims=2)
    det = stem.Detector((8, 8), (K_SAMPLING, K_SAMPLING), E, (4.0, 4.0))
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    passes = []
    run_udf = ctx.run_udf
    monkeypatch.setattr(ctx, "run_udf", lambda *a, **k: passes.append(k) or run_udf(*a, **k))
    monkeypatch.setitem(sys.modules, "cupy", None)  # CuPy cannot be imported
    for backends in (("cupy",), "cupy", ["cupy", "cupyx.scipy.sparse.csr_matrix"]):
        with pytest.raises(ft.BackendError) as err:
            reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)}, backends=backends)
        msg = str(err.value)
        assert "\n" not in msg
        assert msg.startswith("backends=('cupy'") and "CuPy is not installed" in msg
        assert "backends=None or ('numpy',)" in msg
    with pytest.raises(ft.BackendError, match=r"^backends=\('cupy',\): CuPy is not installed"):
        triplet_with_libertem(ctx, [ds] * 3, **kw, backends=("cupy",))
    monkeypatch.setattr(live, "_cupy_problem", lambda: None)  # CuPy and a device, but
    monkeypatch.delenv("LIBERTEM_USE_CUDA", raising=False)   # an inline executor on the CPU
    with pytest.raises(ft.BackendError, match=r"^backends=\('cupy',\): the context's executor "
                                              r"has no CUDA worker .*LIBERTEM_USE_CUDA=0"):
        reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)}, backends=("cupy",))
    for backends, says in [(("cuda",), r"^backends: ReductionUDF runs on 'numpy' or 'cupy', "
                                       r"got \('cuda',\)"),
                           ((), r"^backends: expected None or names"),
                           (3, r"^backends: expected None or names .*got 3")]:
        with pytest.raises(ft.InputError, match=says):
            reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)}, backends=backends)
    assert passes == []
    # NumPy among the backends runs as before, whatever CuPy's state
    got = reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)}, backends=("numpy", "cupy"))
    np.testing.assert_allclose(got.virtual["whole"], data.sum(axis=(2, 3)), rtol=1e-6)
    assert [k["backends"] for k in passes] == [("numpy", "cupy")]


NO_DEVICE = "no CUDA device answers here (CuPy missing, no driver or no device)"


class RecordingUDF(ReductionUDF):
    """ReductionUDF noting the backend and array types each partition ran with."""

    seen: list = []

    def process_partition(self, partition):
        RecordingUDF.seen.append((self.meta.array_backend, type(partition).__module__,
                                  type(self.results.sums).__module__))
        super().process_partition(partition)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_cupy_backend_on_a_device_equals_the_numpy_backend(ctx, rng, monkeypatch, dtype):
    """A LiberTEM context whose inline executor runs on CUDA device 0: the
    UDF runs on the CuPy backend (CuPy partitions and result buffers) and
    gives the NumPy backend's virtual images and centre of mass, and the sums
    of more weight rows than one launch takes."""
    if not ft.gpu_available():
        pytest.skip(NO_DEVICE)
    data = (rng.random((12, 10, 33, 31)) * 300).astype(dtype)
    det = stem.Detector((33, 31), (K_SAMPLING, K_SAMPLING), E, CENTER)
    regions = {"bf": (0.0, 8.0), "df": (8.0, np.inf), "whole": (0.0, np.inf)}
    W = rng.random((MAX_WEIGHTS + 3, 33 * 31)).astype(np.float32)
    host = ctx.load("memory", data=data, sig_dims=2, num_partitions=4)
    want = reduce_with_libertem(ctx, host, det, regions)
    want_sums = np.asarray(ctx.run_udf(dataset=host, udf=ReductionUDF(W))["sums"].data)
    monkeypatch.setenv("LIBERTEM_USE_CUDA", "0")
    monkeypatch.delenv("LIBERTEM_USE_CPU", raising=False)
    RecordingUDF.seen = []
    with Context.make_with("inline") as gctx:
        ds = gctx.load("memory", data=data, sig_dims=2, num_partitions=4)
        got = reduce_with_libertem(gctx, ds, det, regions, backends=("cupy",))
        sums = np.asarray(gctx.run_udf(dataset=ds, udf=RecordingUDF(W))["sums"].data)
    assert RecordingUDF.seen == [("cupy", "cupy", "cupy")] * 4
    for name in regions:
        np.testing.assert_allclose(got.virtual[name], want.virtual[name], rtol=1e-5)
    np.testing.assert_allclose(got.com, want.com, rtol=1e-5, atol=1e-6 * 16 * K_SAMPLING)
    np.testing.assert_allclose(sums, want_sums, rtol=1e-5)
