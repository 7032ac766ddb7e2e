"""Plain NumPy references: every kernel, and Teague's TIE as common scripts write it.

Written independently of the CUDA arithmetic (``kernels/flowtie_ops.cuh``) and
of its Numba twin (:mod:`flowtie_fast._numba_kernels`), with whole-array
operations (``np.roll``, slicing) instead of per-pixel index logic, so that the
tests that hold the three equal check something. Signatures match the backend
kernels: outputs are returned, never written in place (except where the kernel
itself is in-place, where a new array is returned all the same).

Conventions: images are (ny, nx), axis 0 = y, axis 1 = x; ``pixel_size`` is
(h0, h1) in Å; vector fields are (2, ny, nx) with component 0 along axis 0.
"""

from __future__ import annotations

import numpy as np

from .physics import wavenumber


def focal_derivative3(minus, zero, plus, weights):
    """Weighted sum of three planes, ``w0*minus + w1*zero + w2*plus``."""
    w = weights
    return w[0] * minus + w[1] * zero + w[2] * plus


def focal_derivative_n(stack, weights):
    """Weighted sum over the planes of a stack (n, ny, nx)."""
    return np.tensordot(np.asarray(weights), stack, axes=(0, 0))


def _forward(u, axis, h, mirror):
    d = (np.roll(u, -1, axis=axis) - u) / h
    if mirror:
        idx = [slice(None)] * u.ndim
        idx[axis] = -1
        d[tuple(idx)] = 0
    return d


def _backward(g, axis, h, mirror):
    if mirror:
        g = g.copy()
        idx = [slice(None)] * g.ndim
        idx[axis] = -1
        g[tuple(idx)] = 0  # the last face carries no flux
        prev = np.roll(g, 1, axis=axis)
        idx[axis] = 0
        prev[tuple(idx)] = 0
    else:
        prev = np.roll(g, 1, axis=axis)
    return (g - prev) / h


def fd_gradient(u, pixel_size, mirror, centred=False):
    """Forward-difference (or central-difference) gradient, (2, ny, nx)."""
    h0, h1 = pixel_size
    if centred:
        if mirror:
            pad = np.pad(u, 1, mode="edge")  # even reflection about the edge face
            gy = (pad[2:, 1:-1] - pad[:-2, 1:-1]) / (2 * h0)
            gx = (pad[1:-1, 2:] - pad[1:-1, :-2]) / (2 * h1)
        else:
            gy = (np.roll(u, -1, 0) - np.roll(u, 1, 0)) / (2 * h0)
            gx = (np.roll(u, -1, 1) - np.roll(u, 1, 1)) / (2 * h1)
        return np.stack([gy, gx])
    return np.stack([_forward(u, 0, h0, mirror), _forward(u, 1, h1, mirror)])


def fd_divergence(g, pixel_size, mirror):
    """Backward-difference divergence of a (2, ny, nx) field."""
    h0, h1 = pixel_size
    return _backward(g[0], 0, h0, mirror) + _backward(g[1], 1, h1, mirror)


def _face_weights(w, axis, floor, divide):
    face = 0.5 * (w + np.roll(w, -1, axis=axis))
    if divide:
        return 1.0 / np.maximum(face, floor)
    return face


def weighted_divergence(u, w, pixel_size, floor, mirror, divide):
    """``div(W grad u)``, W the mean intensity on each face, or its inverse
    bounded by ``floor`` when ``divide``."""
    h0, h1 = pixel_size
    fy = _forward(u, 0, h0, mirror) * _face_weights(w, 0, floor, divide)
    fx = _forward(u, 1, h1, mirror) * _face_weights(w, 1, floor, divide)
    return _backward(fy, 0, h0, mirror) + _backward(fx, 1, h1, mirror)


def vector_scale(g, w, floor, divide):
    """``g * w`` or ``g / max(w, floor)`` for a (2, ny, nx) field."""
    s = 1.0 / np.maximum(w, floor) if divide else w
    return g * s[None]


def inverse_laplacian_factor(s, alpha):
    """``-s / (s**2 + alpha)`` for s > 0 and 0 at s = 0."""
    s = np.asarray(s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = -s / (s * s + alpha)
    return np.where(s > 0, f, 0.0)


def inverse_laplacian(spectrum, sy, sx, alpha, scale):
    """Spectrum (complex half spectrum or real DCT) times the inverse Laplacian."""
    f = inverse_laplacian_factor(sy[:, None] + sx[None, :], alpha)
    return spectrum * (scale * f)


def spectral_gradient(F, ky, kx, sy, sx, alpha, scale, poisson):
    """(2, ny, nxh) half spectra ``scale * i k F``, times the inverse Laplacian if ``poisson``."""
    f = scale
    if poisson:
        f = f * inverse_laplacian_factor(sy[:, None] + sx[None, :], alpha)
    return np.stack([1j * ky[:, None] * F * f, 1j * kx[None, :] * F * f])


def spectral_divergence(G, ky, kx, sy, sx, alpha, scale, poisson):
    """``scale * i (ky Gy + kx Gx)``, times the inverse Laplacian if ``poisson``."""
    d = 1j * (ky[:, None] * G[0] + kx[None, :] * G[1]) * scale
    if poisson:
        d = d * inverse_laplacian_factor(sy[:, None] + sx[None, :], alpha)
    return d


def reduce_patterns(data, W, lo=None, hi=None):
    """Weighted sums of every pattern: (P, K) data times (Q, K) weights -> (P, Q),
    row q of W taken over [lo[q], hi[q]) only (default: all of it), clipped to
    [0, K): pixels outside a row's range do not enter its sum, not even a NaN."""
    W = np.asarray(W, dtype=np.float64)
    data = np.asarray(data, dtype=np.float64)
    nq, count = W.shape
    lo = np.zeros(nq, int) if lo is None else np.asarray(lo)
    hi = np.full(nq, count) if hi is None else np.asarray(hi)
    out = np.zeros((data.shape[0], nq))
    for q in range(nq):
        a = min(max(int(lo[q]), 0), count)
        b = min(max(int(hi[q]), a), count)
        out[:, q] = data[:, a:b] @ W[q, a:b]
    return out


def teague_tie(minus, zero, plus, dz, pixel_size, energy, floor=1e-3):
    """Teague's TIE solution the way common scripts write it: complex128
    ``np.fft.fft2`` throughout, periodic boundaries, no plans, no kernels.

    The baseline of the benchmarks and an independent check of ``method="tie"``.

    Parameters
    ----------
    minus, zero, plus : 2-D arrays
        Intensities at ``-dz``, 0, ``+dz``.
    dz : float
        Defocus step in Å.
    pixel_size : float or (float, float)
        Sampling in Å.
    energy : float
        Electron energy in eV.
    floor : float
        Intensity floor as a fraction of the mean in-focus intensity.

    Returns
    -------
    ndarray (Ny, Nx)
        Phase in rad, mean zero.
    """
    h0, h1 = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size
    k = wavenumber(energy)
    zero = np.asarray(zero, dtype=np.float64)
    didz = (np.asarray(plus, dtype=np.float64) - np.asarray(minus, dtype=np.float64)) / (2 * dz)
    ny, nx = zero.shape
    qy = 2 * np.pi * np.fft.fftfreq(ny, h0)[:, None]
    qx = 2 * np.pi * np.fft.fftfreq(nx, h1)[None, :]
    q2 = qy**2 + qx**2
    inv_q2 = np.zeros_like(q2)
    inv_q2[q2 > 0] = 1.0 / q2[q2 > 0]
    psi_hat = np.fft.fft2(k * didz) * inv_q2  # ∇²ψ = -k dI/dz
    intensity = np.maximum(zero, floor * zero.mean())
    gy = np.real(np.fft.ifft2(1j * qy * psi_hat)) / intensity
    gx = np.real(np.fft.ifft2(1j * qx * psi_hat)) / intensity
    div_hat = 1j * qy * np.fft.fft2(gy) + 1j * qx * np.fft.fft2(gx)
    phase = np.real(np.fft.ifft2(-div_hat * inv_q2))
    return phase - phase.mean()


def smooth_triplets(b, n, seed=0):
    """``b`` smooth, different triplets (b, 3, n, n) float32 of weak phase
    objects (about 1000 counts a pixel), for batch and cluster checks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] * (2 * np.pi / n)
    out = np.empty((b, 3, n, n), np.float32)
    for i in range(b):
        a, c = rng.uniform(0.2, 0.6, 2)
        phi = a * np.sin(y + i) * np.cos(2 * x) + c * np.cos(x - y)
        base = 1000 * (1 + 0.1 * np.cos(x + 0.3 * i))
        for j, s in enumerate((-1, 0, 1)):
            out[i, j] = base * (1 - 0.02 * s * phi)
    return out
