"""The CPU kernels as whole-array NumPy operations, for work that starts cold.

Same names, signatures and arithmetic as the Numba twins
(:mod:`flowtie_fast._numba_kernels`): caller-supplied outputs, scalars in the
array dtype, float32 work kept in float32. They need no compilation and no
load of Numba's on-disk cache, which costs a new process about 0.5-0.8 s
(Numba's import and its typing registries) before the first kernel runs,
while a small triplet's whole solve takes a few milliseconds; per call they
are slower than the twins (temporaries, one thread) and are meant for
one-shot work, :class:`~flowtie_fast.backend.Backend` ``kernels="numpy"``.

Held equal to the twins and to the independent references
(:mod:`flowtie_fast.testing`) by ``tests/test_kernels.py``.
"""

from __future__ import annotations

import numpy as np


def focal_derivative3(minus, zero, plus, out, wm, wz, wp):
    """``out = wm*minus + wz*zero + wp*plus``."""
    np.multiply(minus, wm, out=out)
    out += wz * zero
    out += wp * plus


def focal_derivative_n(stack, w, out):
    """``out = sum_k w[k] * stack[k]``, added in plane order."""
    out[...] = 0
    for k in range(stack.shape[0]):
        out += w[k] * stack[k]


def _forward(u, axis, mirror):
    """``u[next] - u`` along ``axis``: periodic wrap, or 0 on the last face (mirror)."""
    d = np.roll(u, -1, axis=axis) - u
    if mirror:
        (d[-1] if axis == 0 else d[:, -1])[...] = 0
    return d


def fd_gradient(u, gy, gx, inv_h0, inv_h1, mirror, centred):
    """Forward differences (or central ones) of ``u`` into ``gy``, ``gx``."""
    if not centred:
        np.multiply(_forward(u, 0, mirror), inv_h0, out=gy)
        np.multiply(_forward(u, 1, mirror), inv_h1, out=gx)
        return
    ny, nx = u.shape
    half = u.dtype.type(0.5)
    for axis, n, g, inv_h in ((0, ny, gy, inv_h0), (1, nx, gx, inv_h1)):
        i = np.arange(n)
        up = np.where(i + 1 < n, i + 1, i if mirror else 0)
        dn = np.where(i > 0, i - 1, 0 if mirror else n - 1)
        diff = np.take(u, up, axis=axis) - np.take(u, dn, axis=axis)
        np.multiply(diff, half * inv_h, out=g)


def fd_divergence(gy, gx, out, inv_h0, inv_h1, mirror):
    """Backward-difference divergence of the face fluxes ``gy``, ``gx``."""
    fy, fx = gy, gx
    if mirror:  # the last faces carry no flux
        fy, fx = gy.copy(), gx.copy()
        fy[-1] = 0
        fx[:, -1] = 0
    _backward_sum(fy, fx, out, inv_h0, inv_h1)


def _backward_sum(fy, fx, out, inv_h0, inv_h1):
    """``out = (fy - fy[prev]) inv_h0 + (fx - fx[prev]) inv_h1``, periodic
    neighbours (a mirror edge's zeroed last face makes the first one zero)."""
    dy = (fy - np.roll(fy, 1, axis=0)) * inv_h0
    np.multiply(fx - np.roll(fx, 1, axis=1), inv_h1, out=out)
    np.add(dy, out, out=out)


def _face_weight(w, axis, floor, divide):
    """Mean intensity on each face, or its inverse bounded below by ``floor``."""
    m = w.dtype.type(0.5) * (w + np.roll(w, -1, axis=axis))
    if divide:  # a NaN face takes the floor, as the kernels' comparison does
        m = w.dtype.type(1) / np.where(m > floor, m, w.dtype.type(floor))
    return m


def weighted_divergence(u, w, out, inv_h0, inv_h1, floor, mirror, divide):
    """``div(W grad u)``, W the mean of ``w`` on each face (or its inverse)."""
    fy = _forward(u, 0, False) * inv_h0 * _face_weight(w, 0, floor, divide)
    fx = _forward(u, 1, False) * inv_h1 * _face_weight(w, 1, floor, divide)
    if mirror:
        fy[-1] = 0
        fx[:, -1] = 0
    _backward_sum(fy, fx, out, inv_h0, inv_h1)


def vector_scale(gy, gx, w, floor, divide):
    """``g *= w``, or ``g /= max(w, floor)`` when ``divide``, in place."""
    s = w
    if divide:
        s = w.dtype.type(1) / np.where(w > floor, w, w.dtype.type(floor))
    gy *= s
    gx *= s


def _inv_lap(sy, sx, alpha):
    """``-s / (s**2 + alpha)`` of ``s = sy + sx`` for s > 0, else ``s * 0``."""
    s = sy[:, None] + sx[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -s / (s * s + alpha)
    return np.where(s > 0, f, s * 0)


def inverse_laplacian(data, sy, sx, alpha, scale):
    """``data *= scale * inverse Laplacian symbol``, in place."""
    data *= scale * _inv_lap(sy, sx, alpha)


def spectral_gradient(F, Gy, Gx, ky, kx, sy, sx, alpha, scale, poisson):
    """Half spectra ``i k f F`` with ``f = scale`` (times the inverse Laplacian)."""
    f = scale * _inv_lap(sy, sx, alpha) if poisson else scale
    np.multiply(F, 1j * (ky[:, None] * f), out=Gy)
    np.multiply(F, 1j * (kx[None, :] * f), out=Gx)


def spectral_divergence(Gy, Gx, out, ky, kx, sy, sx, alpha, scale, poisson):
    """``out = i f (ky Gy + kx Gx)``; ``out`` may be ``Gy`` or ``Gx``."""
    f = scale * _inv_lap(sy, sx, alpha) if poisson else scale
    total = ky[:, None] * Gy + kx[None, :] * Gx  # before ``out`` (maybe an input) is written
    np.multiply(total, 1j * f, out=out)


def plane_stats(a, scratch, out, k):
    """``out[k] = (negatives, float64 sum)`` of the 2-D array ``a``
    (``scratch`` is unused: the signature of the twin)."""
    out[k, 0] = np.count_nonzero(a < 0)
    out[k, 1] = a.sum(dtype=np.float64)


def focal_derivative3_stats(minus, zero, plus, out, wm, wz, wp, scratch, stats):
    """:func:`focal_derivative3` and :func:`plane_stats` of the three planes."""
    focal_derivative3(minus, zero, plus, out, wm, wz, wp)
    for k, plane in enumerate((minus, zero, plus)):
        plane_stats(plane, scratch, stats, k)


def screen_stats(a) -> tuple:
    """``(zeros, sum of squares, sum of fourth powers)`` of the 2-D array ``a``
    (NumPy, or CuPy: its own operations), at least 2 columns wide, as float64:
    the number of values at or below zero, and the sums of the squared
    differences of neighbours along axis 1 and of their fourth powers. The
    screen of :func:`flowtie_fast.planes.screen_planes`, vectorised, in
    blocks of rows of about 4 M values (a memory map or a broadcast view
    larger than memory is read, not copied whole)."""
    zeros = s2 = s4 = 0.0
    step = max(1, (1 << 22) // a.shape[1])
    for start in range(0, a.shape[0], step):
        block = a[start:start + step]
        with np.errstate(over="ignore", invalid="ignore"):  # inf: the caller examines the plane
            d = block[:, 1:].astype(np.float64) - block[:, :-1]
            d *= d
            zeros += float((block <= 0).sum())
            s2 += float(d.sum())
            d *= d
            s4 += float(d.sum())
    return zeros, s2, s4


def planes_screen3(minus, zero, plus, scratch, out):
    """``out[k] = (zeros, sum of squares, sum of fourth powers)`` of each of
    the three 2-D arrays (the twin of the Numba kernel; ``scratch`` is
    unused): :func:`screen_stats`."""
    for k, a in enumerate((minus, zero, plus)):
        out[k] = screen_stats(a)


def set_threads(n: int) -> None:
    """No thread pool to size: NumPy's element-wise operations run on one thread."""


def pattern_extremes(data, out):
    """``out[0]``, ``out[1]``: each pattern's (row's) largest and smallest
    value, as float32."""
    out[0] = data.max(axis=1)
    out[1] = data.min(axis=1)


def reduce_patterns(data, W, lo, hi, out):
    """``out[p, q] = sum_k W[q, k] * data[p, k]`` over ``k`` in ``[lo[q], hi[q])``
    clipped to the pattern, in float32: one matrix product of a float32 copy of
    the pixels some row's range covers with the weights zeroed outside each
    row's range, or, where that copy holds a NaN or an infinity (which must
    not enter a row whose range excludes it), one matrix-vector product a row."""
    npix = data.shape[1]
    spans = [(min(max(int(a), 0), npix), 0) for a in lo]
    spans = [(a, min(max(int(b), a), npix)) for (a, _), b in zip(spans, hi)]
    start = min((a for a, b in spans if b > a), default=0)
    stop = max((b for a, b in spans if b > a), default=0)
    block = np.asarray(data[:, start:stop], dtype=np.float32)
    if data.dtype.kind in "biu" or np.isfinite(block).all():
        weights = np.zeros((len(spans), stop - start), np.float32)
        for q, (a, b) in enumerate(spans):
            weights[q, a - start:b - start] = W[q, a:b]
        np.matmul(block, weights.T, out=out)
        return
    for q, (a, b) in enumerate(spans):
        if b > a:
            out[:, q] = block[:, a - start:b - start] @ W[q, a:b].astype(np.float32, copy=False)
        else:
            out[:, q] = 0
