"""Every kernel: Numba twin, CUDA arithmetic (host-compiled, and on a device
where one answers) against the plain NumPy reference, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest

from flowtie_fast import testing as ref
from flowtie_fast.poisson import _fd_symbol, _wavenumbers

DTYPES = [np.float32, np.float64]
# Odd and even sizes, non-square: boundary and Nyquist handling both exercised.
SHAPES = [(12, 9), (16, 20)]
PIXEL = (0.17, 0.23)


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


def close(impl, got, want, dtype, scale=1.0):
    got = impl.to_host(got)
    t = tol(dtype)
    np.testing.assert_allclose(got, want, rtol=t["rtol"], atol=t["atol"] * scale)


def test_reference_detects_a_wrong_kernel(rng):
    """The comparison can fail: a backward difference is not the forward one."""
    u = rng.random((8, 8))
    fwd = ref.fd_gradient(u, (1.0, 1.0), mirror=False)
    bwd = np.stack([u - np.roll(u, 1, 0), u - np.roll(u, 1, 1)])
    assert np.abs(fwd - bwd).max() > 0.1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_focal_derivative3(impl, dtype, shape, rng):
    a, b, c = (rng.random(shape).astype(dtype) for _ in range(3))
    w = (-0.025, 0.004, 0.021)
    out = impl.empty(shape, dtype)
    impl.kernels.focal_derivative3(impl.to_dev(a), impl.to_dev(b), impl.to_dev(c), out,
                                   *(dtype(x) for x in w))
    close(impl, out, ref.focal_derivative3(a, b, c, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("planes", [2, 5])
def test_focal_derivative_n(impl, dtype, planes, rng):
    stack = rng.random((planes, 11, 7)).astype(dtype)
    w = rng.normal(size=planes).astype(dtype)
    out = impl.empty((11, 7), dtype)
    impl.kernels.focal_derivative_n(impl.to_dev(stack), impl.to_dev(w), out)
    close(impl, out, ref.focal_derivative_n(stack, w), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("centred", [False, True])
def test_fd_gradient(impl, dtype, shape, mirror, centred, rng):
    u = rng.random(shape).astype(dtype)
    gy, gx = impl.empty(shape, dtype), impl.empty(shape, dtype)
    impl.kernels.fd_gradient(impl.to_dev(u), gy, gx, dtype(1 / PIXEL[0]), dtype(1 / PIXEL[1]),
                             mirror, centred)
    want = ref.fd_gradient(u, PIXEL, mirror, centred)
    close(impl, gy, want[0], dtype, scale=10)
    close(impl, gx, want[1], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mirror", [False, True])
def test_fd_divergence(impl, dtype, shape, mirror, rng):
    g = rng.random((2,) + shape).astype(dtype)
    out = impl.empty(shape, dtype)
    impl.kernels.fd_divergence(impl.to_dev(g[0]), impl.to_dev(g[1]), out, dtype(1 / PIXEL[0]),
                               dtype(1 / PIXEL[1]), mirror)
    close(impl, out, ref.fd_divergence(g, PIXEL, mirror), dtype, scale=10)


@pytest.mark.parametrize("mirror", [False, True])
def test_fd_divergence_is_minus_adjoint_of_gradient(mirror, rng):
    """<div g, u> = -<g, grad u>: the pair is one consistent scheme."""
    u, g = rng.random((9, 14)), rng.random((2, 9, 14))
    lhs = np.vdot(ref.fd_divergence(g, PIXEL, mirror), u)
    rhs = -np.vdot(g, ref.fd_gradient(u, PIXEL, mirror))
    assert lhs == pytest.approx(rhs, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mirror", [False, True])
@pytest.mark.parametrize("divide", [False, True])
def test_weighted_divergence(impl, dtype, shape, mirror, divide, rng):
    u = rng.random(shape).astype(dtype)
    w = (0.05 + rng.random(shape)).astype(dtype)
    w[0, 0] = 0.001  # below the floor: the floor must act
    floor = dtype(0.02)
    out = impl.empty(shape, dtype)
    impl.kernels.weighted_divergence(impl.to_dev(u), impl.to_dev(w), out, dtype(1 / PIXEL[0]),
                                     dtype(1 / PIXEL[1]), floor, mirror, divide)
    want = ref.weighted_divergence(u, w, PIXEL, floor, mirror, divide)
    close(impl, out, want, dtype, scale=np.abs(want).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("divide", [False, True])
def test_vector_scale(impl, dtype, divide, rng):
    g = rng.normal(size=(2, 10, 13)).astype(dtype)
    w = rng.random((10, 13)).astype(dtype)
    gy, gx = impl.to_dev(g[0].copy()), impl.to_dev(g[1].copy())  # scaled in place
    impl.kernels.vector_scale(gy, gx, impl.to_dev(w), dtype(0.1), divide)
    want = ref.vector_scale(g, w, 0.1, divide)
    close(impl, gy, want[0], dtype, scale=10)
    close(impl, gx, want[1], dtype, scale=10)


def _symbols(shape, dtype, kind):
    ny, nx = shape
    if kind == "spectral":
        ky, kx = _wavenumbers(ny, PIXEL[0], False), _wavenumbers(nx, PIXEL[1], True)
        return ky**2, kx**2
    if kind == "fd-periodic":
        return _fd_symbol(ny, PIXEL[0], ny, False), _fd_symbol(nx, PIXEL[1], nx // 2 + 1, False)
    return _fd_symbol(ny, PIXEL[0], ny, True), _fd_symbol(nx, PIXEL[1], nx, True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["spectral", "fd-periodic", "mirror-dct"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_inverse_laplacian(impl, dtype, shape, kind, alpha, rng):
    sy, sx = (s.astype(dtype) for s in _symbols(shape, dtype, kind))
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    if kind == "mirror-dct":
        data = rng.normal(size=(shape[0], sx.size)).astype(dtype)
    else:
        data = (rng.normal(size=(shape[0], sx.size))
                + 1j * rng.normal(size=(shape[0], sx.size))).astype(cdtype)
    dev = impl.to_dev(data.copy())  # scaled in place
    impl.kernels.inverse_laplacian(dev, impl.to_dev(sy), impl.to_dev(sx), dtype(alpha),
                                   dtype(-3.0))
    want = ref.inverse_laplacian(data.astype(np.complex128 if kind != "mirror-dct" else float),
                                 sy.astype(float), sx.astype(float), alpha, -3.0)
    close(impl, dev, want, dtype)
    assert impl.to_host(dev).flat[0] == 0  # the mean of the solution is zero


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("poisson", [False, True])
def test_spectral_gradient(impl, dtype, shape, poisson, rng):
    ky = _wavenumbers(shape[0], PIXEL[0], False).astype(dtype)
    kx = _wavenumbers(shape[1], PIXEL[1], True).astype(dtype)
    sy, sx = (ky**2).astype(dtype), (kx**2).astype(dtype)
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    F = (rng.normal(size=(shape[0], kx.size)) + 1j * rng.normal(size=(shape[0], kx.size)))
    F = F.astype(cdtype)
    Gy, Gx = impl.empty(F.shape, cdtype), impl.empty(F.shape, cdtype)
    impl.kernels.spectral_gradient(impl.to_dev(F), Gy, Gx, impl.to_dev(ky), impl.to_dev(kx),
                                   impl.to_dev(sy), impl.to_dev(sx), dtype(0.1), dtype(0.5),
                                   int(poisson))
    want = ref.spectral_gradient(F, ky, kx, sy, sx, 0.1, 0.5, poisson)
    close(impl, Gy, want[0], dtype, scale=10)
    close(impl, Gx, want[1], dtype, scale=10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("poisson", [False, True])
@pytest.mark.parametrize("alias", [False, True])
def test_spectral_divergence(impl, dtype, shape, poisson, alias, rng):
    ky = _wavenumbers(shape[0], PIXEL[0], False).astype(dtype)
    kx = _wavenumbers(shape[1], PIXEL[1], True).astype(dtype)
    sy, sx = (ky**2).astype(dtype), (kx**2).astype(dtype)
    cdtype = np.complex64 if dtype == np.float32 else np.complex128
    G = (rng.normal(size=(2, shape[0], kx.size))
         + 1j * rng.normal(size=(2, shape[0], kx.size))).astype(cdtype)
    gy, gx = impl.to_dev(G[0].copy()), impl.to_dev(G[1].copy())
    out = gy if alias else impl.empty(G[0].shape, cdtype)  # in place is allowed
    impl.kernels.spectral_divergence(gy, gx, out, impl.to_dev(ky), impl.to_dev(kx),
                                     impl.to_dev(sy), impl.to_dev(sx), dtype(0.0), dtype(2.0),
                                     int(poisson))
    want = ref.spectral_divergence(G, ky, kx, sy, sx, 0.0, 2.0, poisson)
    close(impl, out, want, dtype, scale=100)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("nq", [1, 5, 8])
# fewer patterns than a CUDA block takes (32) and fewer pixels than a warp has
# lanes; 37 patterns (not a multiple of 32) of one weight tile; several tiles
# (FT_REDUCE_CHUNK = 512 pixels), the last one partial
@pytest.mark.parametrize("npat,count", [(5, 20), (37, 19 * 23), (37, 48 * 47)])
def test_reduce_patterns(impl, dtype, nq, npat, count, rng):
    """Virtual detectors and centre-of-mass moments of many patterns in one pass."""
    hi = 250 if np.dtype(dtype).kind in "ui" else 1.0
    data = (rng.random((npat, count)) * hi).astype(dtype)
    W = rng.normal(size=(nq, count)).astype(np.float32)
    # Row ranges: full, a middle slice, and empty; row 5 reaches outside the
    # pattern on both sides (clipped to it: nothing is read outside).
    lo = np.minimum(np.array([0, 40, 0, 7, 100, 0, 3, 9][:nq], np.int64), count)
    hi = np.minimum(np.array([count, 300, 0, count, 101, count, 250, 333][:nq], np.int64),
                    count)
    if nq > 5:
        lo[5], hi[5] = -5, count + 7
    out = impl.empty((npat, nq), np.float32)
    impl.kernels.reduce_patterns(impl.to_dev(data), impl.to_dev(W), impl.to_dev(lo),
                                 impl.to_dev(hi), out)
    want = ref.reduce_patterns(data, W, lo, hi)
    close(impl, out, want, np.float32, scale=np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_reduce_patterns_unaligned_rows_and_nan_outside_a_range(impl, dtype, offset, rng):
    """Rows that start 16-byte aligned (offset 0: the kernel reading 16-byte
    runs) or not (one element into a buffer: the pixel-at-a-time kernel) give
    the same sums; a NaN outside a row's range (a dead pixel outside the
    bright-field disk) stays out of its sum, also where a 16-byte run
    straddles the range edge (pixels 33..40)."""
    from flowtie_fast._cuda import reduce_kernel

    npat, count = 37, 48 * 48
    assert reduce_kernel(dtype, count, offset * np.dtype(dtype).itemsize).endswith(
        "_1") == bool(offset)
    flat = (rng.random(npat * count + offset) * 200).astype(dtype)
    W = rng.normal(size=(3, count)).astype(np.float32)
    lo, hi = np.array([0, 33, 100], np.int64), np.array([count, 41, 2000], np.int64)
    if np.dtype(dtype).kind == "f":
        flat[offset + 5 * count + 32] = np.nan  # pattern 5, pixel 32: outside rows 1 and 2
        flat[offset + 6 * count + 41] = np.nan  # pattern 6, pixel 41: outside row 1
    data = flat[offset:].reshape(npat, count)
    want = ref.reduce_patterns(data, W, lo, hi)
    out = impl.empty((npat, 3), np.float32)
    dev = impl.to_dev(flat)[offset:].reshape(npat, count)  # on the device
    impl.kernels.reduce_patterns(dev, impl.to_dev(W), impl.to_dev(lo), impl.to_dev(hi), out)
    got = impl.to_host(out)
    finite = np.isfinite(want)
    if np.dtype(dtype).kind == "f":
        assert finite[5, 1:].all() and finite[6, 1] and not finite[5, 0]
    assert np.array_equal(np.isfinite(got), finite)
    close(impl, impl.to_dev(np.where(finite, got, 0)), np.where(finite, want, 0), np.float32,
          scale=np.abs(want[finite]).max())


def test_weight_ranges_cover_every_non_zero_weight(rng):
    from flowtie_fast.stem import weight_ranges

    W = np.zeros((3, 50), np.float32)
    W[0, 5:9] = 1
    W[1, [2, 40]] = 2
    lo, hi = weight_ranges(W)
    assert lo.tolist() == [5, 2, 0] and hi.tolist() == [9, 41, 0]


def test_the_weight_row_limit_is_the_kernels():
    """The Python limit on weight rows is FT_MAX_WEIGHTS, the rows of the CUDA
    kernel's shared-memory tile (more would write past it)."""
    import re
    from pathlib import Path

    from flowtie_fast._cuda import MAX_WEIGHTS

    kernels = Path(__file__).resolve().parent.parent / "kernels"
    header = (kernels / "flowtie_ops.cuh").read_text()
    assert int(re.search(r"#define FT_MAX_WEIGHTS (\d+)", header).group(1)) == MAX_WEIGHTS
    # The launch matches the kernel: its block (the weight tile is filled by
    # FT_REDUCE_BLOCK threads) and its lanes a pattern (patterns a block).
    from flowtie_fast._cuda import _REDUCE_BLOCK, _REDUCE_LANES

    source = (kernels / "flowtie_kernels.cu").read_text()
    assert int(re.search(r"#define FT_REDUCE_BLOCK (\d+)", source).group(1)) == _REDUCE_BLOCK
    assert int(re.search(r"#define FT_REDUCE_LANES (\d+)", header).group(1)) == _REDUCE_LANES
    from flowtie_fast._cuda import CudaKernels

    # Checked before any launch (so also where no GPU answers): nine rows would
    # overflow the tile, a float64 W would be read as float32.
    data, out = np.zeros((4, 16), np.float32), np.zeros((4, 9), np.float32)
    lo, hi = np.zeros(9, np.int64), np.full(9, 16, np.int64)
    with pytest.raises(ValueError, match="W: expected 1 to 8 weight rows, got 9"):
        CudaKernels.reduce_patterns(data, np.zeros((9, 16), np.float32), lo, hi, out)
    with pytest.raises(ValueError, match="W float32"):
        CudaKernels.reduce_patterns(data, np.zeros((2, 16)), lo[:2], hi[:2], out[:, :2].copy())


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.int32, np.float32,
                                   np.float64])
def test_pattern_extremes_numba_equals_numpy(dtype):
    """The CPU kernel of each pattern's largest and smallest pixel equals
    NumPy's max and min, into a strided view of the output as the reduction
    passes it (its GPU counterpart is CuPy's own max and min)."""
    from flowtie_fast import _numba_kernels, _numpy_kernels

    rng = np.random.default_rng(0)
    low = 0.0 if np.dtype(dtype).kind == "u" else 0.3
    data = ((rng.random((37, 130)) - low) * 200).astype(dtype)
    data[5, 129] = 7 if np.dtype(dtype).kind == "u" else -1000  # at the row's end
    data[6, 0] = 250  # at its start
    want = np.empty((2, 37), np.float32)
    _numpy_kernels.pattern_extremes(data, want)
    whole = np.zeros((2, 50), np.float32)
    _numba_kernels.pattern_extremes(data, whole[:, 10:47])
    np.testing.assert_array_equal(whole[:, 10:47], want)
    assert not whole[:, :10].any() and not whole[:, 47:].any()
