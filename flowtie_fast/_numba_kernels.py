"""Numba twins of the CUDA kernels (``kernels/flowtie_ops.cuh``), and one
kernel of the CPU alone (:func:`pattern_extremes`, whose GPU counterpart is
CuPy's own ``max`` and ``min``).

Each function computes exactly what the CUDA kernel of the same name
computes, row-parallel with ``prange``, into caller-supplied outputs; the
backend in :mod:`flowtie_fast.backend` wraps them. Scalars are passed in the
array dtype so that float32 work stays float32. Compiled lazily per dtype and
cached on disk (``cache=True``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

_jit = njit(parallel=True, cache=True, fastmath=False, nogil=True)
_inline = njit(inline="always", cache=True, nogil=True)


@_jit
def focal_derivative3(minus, zero, plus, out, wm, wz, wp):
    ny, nx = out.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nx):
            out[i, j] = wm * minus[i, j] + wz * zero[i, j] + wp * plus[i, j]


@_jit
def focal_derivative_n(stack, w, out):
    n, ny, nx = stack.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nx):
            acc = out.dtype.type(0)
            for k in range(n):
                acc += w[k] * stack[k, i, j]
            out[i, j] = acc


@_inline
def _next(i, n, mirror):
    if i + 1 < n:
        return i + 1
    return -1 if mirror else 0


@_inline
def _prev(i, n, mirror):
    if i > 0:
        return i - 1
    return -1 if mirror else n - 1


@_jit
def fd_gradient(u, gy, gx, inv_h0, inv_h1, mirror, centred):
    ny, nx = u.shape
    half = u.dtype.type(0.5)
    zero = u.dtype.type(0)
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nx):
            if centred:
                up = i + 1 if i + 1 < ny else (i if mirror else 0)
                dn = i - 1 if i > 0 else (0 if mirror else ny - 1)
                rt = j + 1 if j + 1 < nx else (j if mirror else 0)
                lf = j - 1 if j > 0 else (0 if mirror else nx - 1)
                gy[i, j] = (u[up, j] - u[dn, j]) * (half * inv_h0)
                gx[i, j] = (u[i, rt] - u[i, lf]) * (half * inv_h1)
            else:
                up = _next(i, ny, mirror)
                rt = _next(j, nx, mirror)
                gy[i, j] = zero if up < 0 else (u[up, j] - u[i, j]) * inv_h0
                gx[i, j] = zero if rt < 0 else (u[i, rt] - u[i, j]) * inv_h1


@_jit
def fd_divergence(gy, gx, out, inv_h0, inv_h1, mirror):
    ny, nx = out.shape
    zero = out.dtype.type(0)
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        dn = _prev(i, ny, mirror)
        for j in range(nx):
            lf = _prev(j, nx, mirror)
            fy = zero if (mirror and i == ny - 1) else gy[i, j]
            fx = zero if (mirror and j == nx - 1) else gx[i, j]
            fy_prev = zero if dn < 0 else gy[dn, j]
            fx_prev = zero if lf < 0 else gx[i, lf]
            out[i, j] = (fy - fy_prev) * inv_h0 + (fx - fx_prev) * inv_h1


@_inline
def _row_flux_y(u, w, i, q, inv_h0, floor, divide, f):
    """f[j] = flux on the face between rows i and q (q < 0: a mirror edge, no flux)."""
    nx = u.shape[1]
    half = u.dtype.type(0.5)
    one = u.dtype.type(1)
    if q < 0:
        for j in range(nx):
            f[j] = 0
        return
    for j in range(nx):
        m = half * (w[i, j] + w[q, j])
        if divide:
            m = one / (m if m > floor else floor)
        f[j] = (u[q, j] - u[i, j]) * inv_h0 * m


@_inline
def _row_flux_x(u, w, i, inv_h1, floor, mirror, divide, f):
    """f[j] = flux on the face between columns j and j + 1 of row i."""
    nx = u.shape[1]
    half = u.dtype.type(0.5)
    one = u.dtype.type(1)
    for j in range(nx - 1):
        m = half * (w[i, j] + w[i, j + 1])
        if divide:
            m = one / (m if m > floor else floor)
        f[j] = (u[i, j + 1] - u[i, j]) * inv_h1 * m
    if mirror:
        f[nx - 1] = 0
    else:
        m = half * (w[i, nx - 1] + w[i, 0])
        if divide:
            m = one / (m if m > floor else floor)
        f[nx - 1] = (u[i, 0] - u[i, nx - 1]) * inv_h1 * m


@_jit
def weighted_divergence(u, w, out, inv_h0, inv_h1, floor, mirror, divide):
    """div(W grad u) with the face weights of ft::weighted_divergence; the fluxes
    of a row are computed once into scratch rows (branch-free inner loops that
    vectorise; the per-pixel form ran ~10x slower), with the same arithmetic."""
    ny, nx = u.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        fx = np.empty(nx, u.dtype)
        fy = np.empty(nx, u.dtype)
        fy_prev = np.empty(nx, u.dtype)
        _row_flux_x(u, w, i, inv_h1, floor, mirror, divide, fx)
        _row_flux_y(u, w, i, _next(i, ny, mirror), inv_h0, floor, divide, fy)
        dn = _prev(i, ny, mirror)
        _row_flux_y(u, w, dn, _next(dn, ny, mirror) if dn >= 0 else -1, inv_h0, floor, divide,
                    fy_prev)
        fx_last = fx[nx - 1] * 0 if mirror else fx[nx - 1]
        out[i, 0] = (fy[0] - fy_prev[0]) * inv_h0 + (fx[0] - fx_last) * inv_h1
        for j in range(1, nx):
            out[i, j] = (fy[j] - fy_prev[j]) * inv_h0 + (fx[j] - fx[j - 1]) * inv_h1


@_jit
def vector_scale(gy, gx, w, floor, divide):
    ny, nx = w.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nx):
            s = w[i, j]
            if divide:
                s = 1 / (s if s > floor else floor)
            gy[i, j] *= s
            gx[i, j] *= s


@_inline
def _inv_lap(s, alpha):
    if not (s > 0):
        return s * 0
    return -s / (s * s + alpha)


@_jit
def inverse_laplacian(data, sy, sx, alpha, scale):
    ny, nxs = data.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nxs):
            data[i, j] *= scale * _inv_lap(sy[i] + sx[j], alpha)


@_jit
def spectral_gradient(F, Gy, Gx, ky, kx, sy, sx, alpha, scale, poisson):
    ny, nxh = F.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nxh):
            f = scale
            if poisson:
                f = f * _inv_lap(sy[i] + sx[j], alpha)
            a = ky[i] * f
            b = kx[j] * f
            re = F[i, j].real
            im = F[i, j].imag
            Gy[i, j] = complex(-a * im, a * re)
            Gx[i, j] = complex(-b * im, b * re)


@_jit
def spectral_divergence(Gy, Gx, out, ky, kx, sy, sx, alpha, scale, poisson):
    ny, nxh = out.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        for j in range(nxh):
            re = ky[i] * Gy[i, j].real + kx[j] * Gx[i, j].real
            im = ky[i] * Gy[i, j].imag + kx[j] * Gx[i, j].imag
            f = scale
            if poisson:
                f = f * _inv_lap(sy[i] + sx[j], alpha)
            out[i, j] = complex(-im * f, re * f)


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def plane_stats(a, scratch, out, k):
    """``out[k] = (negatives, sum)`` of the 2-D array ``a``: the number of
    negative values and the float64 sum (NaN and ±Inf make it non-finite;
    float64 sums of float32 data cannot overflow). Both reductions vectorise,
    unlike a NaN-aware minimum. ``scratch`` is a (2, Ny) float64 work array."""
    ny, nx = a.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        count = 0
        acc = 0.0
        for j in range(nx):
            v = a[i, j]
            acc += np.float64(v)
            count += v < 0
        scratch[0, i] = count
        scratch[1, i] = acc
    count = 0.0
    acc = 0.0
    for i in range(ny):  # a plain loop: an array .sum() would be another parallel region
        count += scratch[0, i]
        acc += scratch[1, i]
    out[k, 0] = count
    out[k, 1] = acc


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def focal_derivative3_stats(minus, zero, plus, out, wm, wz, wp, scratch, stats):
    """:func:`focal_derivative3` and :func:`plane_stats` of the three planes in
    one pass over them (far cheaper than a second pass for the checks):
    ``stats[k] = (negatives, sum)`` of plane k; ``scratch`` is a
    (6, Ny) float64 work array. Reassociation (which lets the sums vectorise)
    may change the derivative by an ulp against :func:`focal_derivative3`,
    never its zero: identical planes give exactly zero (no contraction)."""
    ny, nx = out.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        n0 = n1 = n2 = 0
        s0 = s1 = s2 = 0.0
        for j in range(nx):
            a, b, c = minus[i, j], zero[i, j], plus[i, j]
            out[i, j] = wm * a + wz * b + wp * c
            s0 += np.float64(a)
            s1 += np.float64(b)
            s2 += np.float64(c)
            n0 += a < 0
            n1 += b < 0
            n2 += c < 0
        scratch[0, i], scratch[1, i], scratch[2, i] = n0, n1, n2
        scratch[3, i], scratch[4, i], scratch[5, i] = s0, s1, s2
    for k in range(3):  # plain loops: an array .sum() would be another parallel region
        count = 0.0
        acc = 0.0
        for i in range(ny):
            count += scratch[k, i]
            acc += scratch[3 + k, i]
        stats[k, 0] = count
        stats[k, 1] = acc


@njit(inline="always", fastmath={"reassoc"})
def _row_screen(a, i, nx):
    """Row ``i`` of ``a``: the values at or below zero, and the sums of the
    squared differences of neighbours and of their fourth powers, in
    ``a``'s dtype (a row's sums: float32 keeps the screen's figures to a few
    parts in 1e5, and vectorises twice as wide as float64)."""
    t = a.dtype.type
    zeros = t(0)  # counted in the dtype too (exact to 2**24 a row): an integer
    s2 = t(0)     # counter halves the vector width (48 -> 33 us for 3 x 256² float32)
    s4 = t(0)
    for j in range(nx - 1):
        v = a[i, j]
        zeros += t(v <= 0)
        g = a[i, j + 1] - v
        g2 = g * g
        s2 += g2
        s4 += g2 * g2
    zeros += t(a[i, nx - 1] <= 0)
    return zeros, s2, s4


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc"})
def planes_screen3(minus, zero, plus, scratch, out):
    """``out[k] = (zeros, sum of squares, sum of fourth powers)`` of each of
    the three 2-D arrays (at least 2 columns), in one parallel pass: the
    number of values at or below zero, and the sums of the squared
    differences of neighbours along axis 1 and of their fourth powers (each
    row's in the arrays' dtype, the rows' in float64; a fourth power beyond
    float32 makes the sum Inf, which the screen reads as an outlier). The
    screen of :func:`flowtie_fast.planes.screen_planes`; ``scratch`` is a
    (9, Ny) float64 work array. One parallel region for the three planes,
    and no running minimum or maximum (which does not vectorise): about one
    pass over the planes, as :func:`focal_derivative3_stats`."""
    ny, nx = minus.shape
    for row in prange(ny):
        i = np.int64(row)  # prange indices may be unsigned: keep index arithmetic signed
        z, q, f = _row_screen(minus, i, nx)
        scratch[0, i], scratch[1, i], scratch[2, i] = z, q, f
        z, q, f = _row_screen(zero, i, nx)
        scratch[3, i], scratch[4, i], scratch[5, i] = z, q, f
        z, q, f = _row_screen(plus, i, nx)
        scratch[6, i], scratch[7, i], scratch[8, i] = z, q, f
    for k in range(3):  # plain loops: an array .sum() would be another parallel region
        for m in range(3):
            acc = 0.0
            for i in range(ny):
                acc += scratch[3 * k + m, i]
            out[k, m] = acc


def set_threads(n: int) -> None:
    """Set Numba's thread count for the calling thread (thread-local in Numba)."""
    numba.set_num_threads(n)


# Detector pixels per block of the reduction: four patterns' blocks and the
# weight rows' blocks (4 x 1 KB + 6 x 1 KB for float32) stay in L1 over all the
# rows; of 128-1024 pixels and no blocking, 256 is the fastest on 64² float32
# patterns, as fast as a NumPy sum of the same array.
REDUCE_BLOCK = 256


@njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
def reduce_patterns(data, W, lo, hi, out):
    """out[p, q] = sum_k W[q, k] * data[p, k] over k in [lo[q], hi[q]) clipped
    to the pattern (every non-zero weight of row q lies there).

    The sums of ft::weighted_run (flowtie_ops.cuh), in another loop order:
    four patterns share each sweep of a weight row (one weight load for four
    multiply-adds, faster than one pattern per sweep), and the
    detector is swept in blocks of REDUCE_BLOCK pixels, every weight row over
    one block before the next, so each pattern comes from memory once and is
    re-read from L1 (faster than whole-row sweeps). Sums are float32 SIMD
    lanes (as the CUDA lanes sum their shares in float32; relative error ~1e-7
    for 4096 pixels).
    Zero-based views: loops that start elsewhere, or float32 blocks added up in
    float64, are several times slower because Numba stops vectorising them."""
    npat, npix = data.shape
    nq = W.shape[0]
    for g in prange((npat + 3) // 4):
        p = 4 * np.int64(g)
        if p + 4 > npat:
            for pp in range(p, npat):
                for q in range(nq):
                    a = min(max(np.int64(lo[q]), 0), npix)
                    b = min(max(np.int64(hi[q]), a), npix)
                    out[pp, q] = _dot(W[q, a:b], data[pp, a:b])
            continue
        acc = np.zeros((nq, 4), np.float32)
        for b0 in range(0, npix, REDUCE_BLOCK):
            for q in range(nq):
                s = max(np.int64(lo[q]), b0)
                e = min(np.int64(hi[q]), b0 + REDUCE_BLOCK)
                if s >= e:
                    continue
                w = W[q, s:e]
                d0 = data[p, s:e]
                d1 = data[p + 1, s:e]
                d2 = data[p + 2, s:e]
                d3 = data[p + 3, s:e]
                a0 = np.float32(0)
                a1 = np.float32(0)
                a2 = np.float32(0)
                a3 = np.float32(0)
                for k in range(w.size):
                    wk = w[k]
                    a0 += wk * np.float32(d0[k])
                    a1 += wk * np.float32(d1[k])
                    a2 += wk * np.float32(d2[k])
                    a3 += wk * np.float32(d3[k])
                acc[q, 0] += a0
                acc[q, 1] += a1
                acc[q, 2] += a2
                acc[q, 3] += a3
        for q in range(nq):
            for j in range(4):
                out[p + j, q] = acc[q, j]


@njit(parallel=True, cache=True, nogil=True)
def pattern_extremes(data, out):
    """``out[0, p]``, ``out[1, p]``: the largest and smallest value of pattern
    ``p`` (a row of ``data``, (N, K), any real dtype; ``out`` (2, N) float32),
    in one pass. Plain comparisons vectorise where ``max``/``min`` do not;
    they differ from NumPy's only for NaN (taken where it is a pattern's
    first pixel, else skipped), data the reduction's sums refuse."""
    npat, npix = data.shape
    for p in prange(npat):
        hi = data[p, 0]
        lo = data[p, 0]
        for k in range(npix):
            v = data[p, k]
            if v > hi:
                hi = v
            if v < lo:
                lo = v
        out[0, p] = hi
        out[1, p] = lo


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
def _dot(w, d):
    a = np.float32(0)
    for k in range(w.size):
        a += w[k] * np.float32(d[k])
    return a
