"""Drift registration of a focal triplet: sub-pixel translations between images.

The three planes of a triplet recorded one after another (4D-STEM scans at
three probe defoci) are shifted against each other by specimen drift. This
module estimates those translations and undoes them, in pixels of the scan.

Conventions
-----------
A shift ``(dy, dx)`` (pixels, axis 0 then axis 1) translates an image's
content by ``+dy`` rows and ``+dx`` columns: ``apply_shift(a, (dy, dx))`` at
pixel ``r`` holds ``a(r - (dy, dx))``. :func:`estimate_shift` returns the
shift that, applied to ``moving``, aligns it to ``reference``: when ``moving``
shows the specimen displaced by ``d`` pixels, the estimate is ``-d``.

Method
------
:func:`estimate_shift` is a weighted phase correlation. With ``A``, ``B`` the
spectra of the mean-free reference and moving images (apodized when the field
of view is not periodic) and ``X = A conj(B)``, the correlation is the inverse
transform of ::

    W = X g_A g_B / (|X| + ε),    ε = 30 mean|X|

``g`` is the estimated signal fraction of an image's power at each frequency,
``1 - N / P̄`` clipped to [0, 1], with ``P̄`` the power averaged over 5 x 5
frequency bins and ``N`` the white-noise power (the median power of the
quietest band of radial frequency, over ln 2): frequencies that hold only
noise, or only rounding error, drop out, which is what keeps low-dose
(Poisson) images usable. The denominator whitens the frequencies whose cross
power stands well above its mean (the strong low-frequency structure,
illumination and thickness changes, that would otherwise set a broad peak)
and leaves the others at their plain-correlation weight, which noisy
frequencies need. The whole-pixel peak is refined by evaluating the same
inverse transform on grids 10 times finer at each stage (matrix-multiply
DFTs), to ``1/upsample`` px. The noise standard error of the shift is the
peak's curvature against the spread of its slope under the images' white
noise (see :func:`estimate_shift`).

:func:`register_triplet` matches the planes pairwise, then refines the
shifts of the ±dz planes together so that the triplet is consistent with the
transport of intensity to first order in dz, ``I(-dz) + I(+dz) = 2 I(0)``
(see its documentation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, check_count, check_positive, check_real, user_stacklevel

__all__ = ["RegistrationWarning", "Shift", "apply_shift", "estimate_shift", "register_triplet"]

# Regularization of the cross-power normalization: ε = _WHITEN * mean |X|.
_WHITEN = 30.0
# Half width (bins) of the box over which power spectra are averaged.
_SMOOTH = 2
# Bins per band of radial frequency used to find a spectrum's noise floor.
_BAND_SAMPLES = 1024
# Fraction of each side tapered by the apodization of a non-periodic field of
# view (raised cosine).
_TAPER = 0.125
# Re-estimations with the moving image's window following its content.
_ITERATIONS = 8
# Smallest image side accepted (px).
_MIN_SIDE = 8
# An image whose standard deviation is below this fraction of its mean level
# carries no structure beyond rounding (e.g. the in-focus plane of a
# simulated pure phase object) and is not correlated.
_FLAT = 1e-6
# Largest disagreement (px) tolerated between estimates of one shift made two
# ways (pairwise loop, refined against correlated).
_CONSISTENCY = 0.5
# Largest closure error (px) of the signals' three pairwise shifts: the loop
# compares two estimates of the relative shift of the ±dz signals (through
# signal 1, and directly), each held to _CONSISTENCY, so their independent
# errors add in quadrature.
_LOOP = _CONSISTENCY * math.sqrt(2)
# Gauss-Newton steps of the joint refinement of a triplet, and the step (px)
# below which it stops.
_GN_STEPS = 20
_GN_TOL = 1e-4
# Largest Gauss-Newton step (px): the fit refines the pairwise estimates, it
# does not search.
_GN_MAX_STEP = 1.0
# Largest noise standard error (px) of the relative shift of the ±dz planes
# accepted as reliable.
_MAX_SIGMA = 0.1
# Largest noise standard error (px) of the match of a ±dz signal with the
# in-focus one accepted as reliable: the 0.5 px tolerance is 2.5 standard
# errors. Chosen on the evaluation grid's choosing half.
_MAX_SIGNAL_SIGMA = 0.2

_NAMES = ("plane 0 (I(-dz))", "plane 1 (I(0))", "plane 2 (I(+dz))")


class RegistrationWarning(UserWarning):
    """A registration estimate is unreliable: low quality, a shift larger than
    allowed, or estimates that disagree."""


@dataclass(frozen=True)
class Shift:
    """A translation estimate.

    :func:`estimate_shift` makes it; each parameter is kept as the attribute
    of the same name.

    Parameters
    ----------
    dy, dx : float
        Translation in pixels along axis 0 and axis 1 that, applied to the
        moving image with :func:`apply_shift`, aligns it to the reference.
    quality : float
        Reliability score in [0, 1], unitless: ``1 - h2 / h1``, with ``h1``
        the height of the correlation peak and ``h2`` the highest correlation
        value away from it (see :func:`estimate_shift`); 0 for featureless
        input.
    sigma : float or None
        Noise standard error of the translation in px, the larger of the
        two axes' (see :func:`estimate_shift`); ``inf`` where the peak's
        curvature does not determine it, None where it was not estimated.
    """

    dy: float
    dx: float
    quality: float
    sigma: float | None = None


# ---------------------------------------------------------------- arguments


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _check_image(name: str, a, shape=None) -> np.ndarray:
    """One real, finite 2-D NumPy image of at least ``_MIN_SIDE`` px a side
    (of ``shape`` when given); :class:`InputError` naming ``name`` otherwise."""
    if a is None:
        raise InputError(f"{name}: expected a 2-D real array, got None")
    if isinstance(a, np.ma.MaskedArray):
        raise InputError(f"{name}: masked arrays are not supported (the mask would be "
                         "ignored); fill the masked pixels, e.g. a.filled(a.mean())")
    try:
        a = np.asarray(a)
    except Exception as exc:  # unreadable array-likes, device arrays
        raise InputError(f"{name}: could not be read as a NumPy array ({exc})") from exc
    if a.dtype.kind == "c":
        raise InputError(f"{name}: expected a real image, got complex dtype {a.dtype}")
    if a.dtype.kind not in "uif":
        raise InputError(f"{name}: expected a real numeric dtype, got {a.dtype}")
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (Ny, Nx), got shape {a.shape}")
    if min(a.shape) < _MIN_SIDE:
        raise InputError(f"{name}: expected at least {_MIN_SIDE} pixels along each axis, "
                         f"got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)} like the other images, "
                         f"got {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or Inf")
    return a


def _check_shift(shift) -> tuple[float, float]:
    """``shift`` (a :class:`Shift` or a pair of finite reals) as (dy, dx)."""
    if isinstance(shift, Shift):
        return float(shift.dy), float(shift.dx)
    try:
        pair = np.asarray(shift)
    except Exception:
        pair = None
    if (pair is None or pair.shape != (2,) or pair.dtype.kind not in "uif"
            or not np.isfinite(pair.astype(np.float64)).all()):
        raise InputError(f"shift: expected a Shift or a pair of finite numbers (dy, dx) in "
                         f"pixels, got {shift!r}")
    return float(pair[0]), float(pair[1])


def _check_triplet(name: str, images, shape=None) -> list:
    if isinstance(images, np.ndarray) and images.ndim == 3 and len(images) == 3:
        images = list(images)
    if not isinstance(images, (list, tuple)) or len(images) != 3:
        if isinstance(images, np.ndarray):
            what = f"an array of shape {images.shape}"
        elif isinstance(images, (list, tuple)):
            what = f"{len(images)} items"
        else:
            what = repr(images)
        raise InputError(f"{name}: expected a sequence of three 2-D arrays "
                         f"(I(-dz), I(0), I(+dz)), got {what}")
    out = []
    for i, a in enumerate(images):
        a = _check_image(f"{name}[{i}]", a, shape)
        shape = a.shape
        out.append(a)
    return out


# ------------------------------------------------------------ spectra


def _window(n: int, margin: float, offset: float) -> np.ndarray:
    """1-D apodization window of length ``n`` following content moved by
    ``-offset`` px: ``w(u + offset)`` at the pixel centres ``u = i + ½``,
    with ``w`` zero within ``margin`` px of the ends of ``[0, n]``, rising by
    a raised cosine over ``_TAPER * n`` px, and 1 in the middle."""
    width = max(2.0, _TAPER * n)
    u = np.arange(n) + 0.5 + offset
    d = np.clip(np.minimum(u, n - u) - margin, 0.0, width)  # depth into the taper
    return 0.5 - 0.5 * np.cos(np.pi * d / width)


def _apodized_spectrum(a: np.ndarray, wy: np.ndarray, wx: np.ndarray) -> np.ndarray:
    """rfft2 of (image less its window-weighted mean) times the window."""
    window = np.outer(wy, wx)
    level = float((a * window).sum() / window.sum())
    return np.fft.rfft2((a - level) * window)


def _flat(a: np.ndarray) -> bool:
    """True for an image without structure beyond rounding (``_FLAT``)."""
    top = float(np.abs(a).max())
    if not top > 0:
        return True
    a = a / top
    return not float(a.std()) > _FLAT * abs(float(a.mean()))


def _column_weights(nx: int) -> np.ndarray:
    """Multiplicity of each rfft column in the full spectrum (interior
    columns stand for a frequency and its negative)."""
    cols = np.full(nx // 2 + 1, 2.0)
    cols[0] = 1.0
    if nx % 2 == 0:
        cols[-1] = 1.0
    return cols


def _box(p: np.ndarray, half: int) -> np.ndarray:
    """Mean of ``p`` (an rfft2 half plane) over (2 half + 1)² bins: circular
    along axis 0, edge values repeated beyond the ends of axis 1."""
    n = 2 * half + 1
    c = np.pad(p, ((half + 1, half), (half + 1, half)), mode="wrap")
    c[:, :half + 1] = c[:, half + 1:half + 2]
    c[:, -half:] = c[:, -half - 1:-half]
    np.cumsum(c, axis=0, out=c)
    np.cumsum(c, axis=1, out=c)
    return (c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]) / (n * n)


@functools.lru_cache(maxsize=8)
def _bands(shape) -> np.ndarray:
    """Flat indices into an rfft2 half plane of ``shape``: one row per band
    of radial frequency 1/16 cycle/px wide (the corners beyond 1/2 cycle/px
    are one band; the band around zero and bands of fewer than 32 bins are
    left out), each row the same number (at most ``_BAND_SAMPLES``) of bins
    spread evenly over the band."""
    f = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :])
    band = np.minimum((f * 16).astype(np.int64), 8).ravel()
    members = [np.flatnonzero(band == b) for b in range(1, 9)]
    members = [m for m in members if m.size >= 32] or [np.arange(1, band.size)]
    size = min(_BAND_SAMPLES, min(m.size for m in members))
    return np.stack([m[np.linspace(0, m.size - 1, size).astype(np.int64)] for m in members])


def _noise_floor(p: np.ndarray, shape) -> float:
    """White-noise power per bin of an rfft2 power spectrum ``p``: the lowest
    median power over the bands of :func:`_bands`, divided by ln 2 (the
    median of an exponential distribution is ln 2 times its mean)."""
    return float(np.median(p.ravel()[_bands(shape)], axis=1).min()) / math.log(2)


def _gain(spectrum: np.ndarray, shape, floor: float | None = None) -> np.ndarray:
    """Estimated signal fraction of an rfft2 spectrum's power at each
    frequency: ``1 - N / P̄`` clipped to [0, 1], ``P̄`` the power averaged
    over (2 _SMOOTH + 1)² bins, ``N`` its white-noise floor (``floor`` when
    given, else measured by :func:`_noise_floor`)."""
    power = spectrum.real**2 + spectrum.imag**2
    smooth = _box(power, _SMOOTH)
    if floor is None:
        floor = _noise_floor(power, shape)
    return np.clip(1 - floor / np.maximum(smooth, 1e-300), 0, 1)


def _dft_real(ey: np.ndarray, w: np.ndarray, ex: np.ndarray) -> np.ndarray:
    """``Re(ey @ w @ ex)`` with real products in NumPy's einsum loop, on the
    calling thread: these products are small, and a threaded BLAS hands them
    to worker threads at a cost of up to hundreds of ms when the machine's
    cores are busy."""
    def mm(a, b):
        return np.einsum("ij,jk->ik", a, b)
    er, ei, wr, wi = ey.real.copy(), ey.imag.copy(), w.real.copy(), w.imag.copy()
    qr = mm(er, wr) - mm(ei, wi)
    qi = mm(er, wi) + mm(ei, wr)
    return mm(qr, ex.real.copy()) - mm(qi, ex.imag.copy())


def _refine(w, shape, ty, tx, upsample):
    """Maximum of the inverse DFT of the half spectrum ``w`` (rfft2 layout of
    a real ``shape`` array, interior columns already doubled) near the whole
    pixel (ty, tx), to ``1/upsample`` px: evaluated by matrix-multiply DFTs on
    grids 10 times finer at each stage (±0.75 px at 1/10 px, then ± one step
    of the previous grid). Returns (dy, dx, value)."""
    ny, nx = shape
    ky = np.fft.fftfreq(ny, 1.0 / ny)
    kx = np.arange(w.shape[1])
    step, span = 1.0 / min(upsample, 10), 0.75
    cy, cx = float(ty), float(tx)
    while True:
        half = math.ceil(span / step - 1e-9)
        j = np.arange(-half, half + 1)
        gy, gx = cy + j * step, cx + j * step
        ey = np.exp((2j * np.pi / ny) * np.outer(gy, ky))
        ex = np.exp((2j * np.pi / nx) * np.outer(kx, gx))
        values = _dft_real(ey, w, ex)
        iy, ix = np.unravel_index(int(np.argmax(values)), values.shape)
        cy, cx, best = float(gy[iy]), float(gx[ix]), float(values[iy, ix])
        if step * upsample <= 1 + 1e-9:
            return cy, cx, best / (ny * nx)
        span, step = step, max(step / 10, 1.0 / upsample)


def _weights(spec_ref, spec_mov, shape):
    """The cross-power spectrum ``X`` of two rfft2 spectra and the weights
    ``c`` of the weighted phase correlation (``W = X c``, see the module's
    documentation), with the rfft columns' multiplicities and the two
    spectra's white-noise floors: (X, c, cols, floors); None where ``X`` is
    zero."""
    ny, nx = shape
    cols = _column_weights(nx)
    x = spec_ref * np.conj(spec_mov)
    mag = np.abs(x)
    eps = _WHITEN * float((mag * cols).sum()) / (ny * nx)
    if not eps > 0:
        return None
    floors = [_noise_floor(f.real**2 + f.imag**2, shape) for f in (spec_ref, spec_mov)]
    c = _gain(spec_ref, shape, floors[0]) * _gain(spec_mov, shape, floors[1]) / (mag + eps)
    c[0, 0] = 0.0
    return x, c, cols, floors


def _correlate(spec_ref, spec_mov, shape, upsample, invert):
    """Peak of the weighted phase correlation of two rfft2 spectra (see the
    module's documentation) and its quality: a :class:`Shift` without its
    ``sigma``, and the correlation's :func:`_weights` (None where the
    spectra have no cross power)."""
    ny, nx = shape
    weights = _weights(spec_ref, spec_mov, shape)
    if weights is None:
        return Shift(0.0, 0.0, 0.0), None
    x, c, cols, _ = weights
    w = x * c
    weight = np.abs(w) * cols
    total = float(weight.sum())
    if not total > 0:
        return Shift(0.0, 0.0, 0.0), None
    corr = np.fft.irfft2(w, s=shape)
    score = np.abs(corr) if invert else corr
    iy, ix = np.unravel_index(int(np.argmax(score)), shape)
    ty = iy - ny if iy > ny // 2 else iy
    tx = ix - nx if ix > nx // 2 else ix
    sign = -1.0 if corr[iy, ix] < 0 else 1.0
    if upsample > 1:
        dy, dx, h1 = _refine(sign * w * cols, shape, ty, tx, upsample)
    else:
        dy, dx, h1 = float(ty), float(tx), float(sign * corr[iy, ix])
    # Away from the peak: beyond 3 standard widths of a peak whose curvature
    # is that of this spectrum (second moment of |W|), and beyond 2 px.
    fy2 = float(weight.sum(axis=1) @ np.fft.fftfreq(ny) ** 2) / total
    fx2 = float(weight.sum(axis=0) @ np.fft.rfftfreq(nx) ** 2) / total
    sigma = 1.0 / (2 * np.pi * math.sqrt(max(min(fy2, fx2), 1e-12)))
    radius = min(max(2.0, 3.0 * sigma), min(shape) / 4)
    r = int(radius)
    rows = np.arange(-r, r + 1)
    centred = np.roll(score, (r - iy, r - ix), axis=(0, 1))
    disc = rows[:, None] ** 2 + rows[None, :] ** 2 <= radius**2
    centred[:2 * r + 1, :2 * r + 1][disc] = -np.inf
    h2 = float(centred.max())
    quality = min(1.0, max(0.0, 1.0 - h2 / h1)) if h1 > 0 else 0.0
    return Shift(dy, dx, quality), weights


def _peak_sigma(spec_ref, spec_mov, weights, shift, shape, windows) -> float:
    """Noise standard error (px, the larger of the two axes') of the extremum
    at ``shift`` of ``f(t) = Σ_k c Re(A conj(B) exp(i k·t))`` (sum over the
    full frequency plane), the weighted phase correlation of rfft2 spectra
    ``A`` of the reference and ``B`` of the moving image, ``weights`` their
    :func:`_weights`, held fixed: ``H⁻¹ V H⁻¹``, with ``H`` the peak's
    curvature and ``V`` the covariance of ``∇f`` under pixel noise of
    uniform variance in each image, of white-noise power per bin of its
    windowed spectrum its :func:`_noise_floor`. ``∇f`` is linear in each
    image's pixels; its pixel sensitivities are computed by FFT, so that the
    windows' correlation of neighbouring frequencies is accounted for.
    ``windows``: the apodization windows (Ny, Nx) of the two images, None
    for none. ``inf`` where ``H`` is not positive definite (no peak)."""
    ny, nx = shape
    x, c, cols, floors = weights
    ky = 2 * np.pi * np.fft.fftfreq(ny)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(nx)[None, :]
    phase = np.exp(1j * (ky * shift[0] + kx * shift[1]))
    peak = cols * c * (x * phase).real
    if float(peak.sum()) < 0:  # a minimum (inverted contrast)
        c, peak = -c, -peak
    k = (ky, kx)
    h = np.array([[float((peak * k[i] * k[j]).sum()) for j in range(2)] for i in range(2)])
    if not np.isfinite(h).all():
        return math.inf
    curvatures = np.linalg.eigvalsh(h)
    if not curvatures.min() > 1e-9 * abs(float(curvatures.max())):
        return math.inf
    # ∂_j f is linear in the pixels of the windowed images a and b:
    # ∂_j f = Σ_p a(p) u_j(p) = Σ_p b(p) v_j(p), with u_j and v_j (up to a
    # common sign) N times the inverse transforms of the anti-Hermitian
    # spectra c k_j conj(B) e^{ik·t} and c k_j A e^{ik·t}.
    v = np.zeros((2, 2))
    for spectrum, i in ((np.conj(spec_mov) * phase, 0), (spec_ref * phase, 1)):
        window = 1.0 if windows is None else windows[i]
        per_pixel = floors[i] / (ny * nx if windows is None else float((window ** 2).sum()))
        sens = [window * np.fft.irfft2(-1j * c * kj * spectrum, s=shape) * (ny * nx)
                for kj in k]
        v += per_pixel * np.array([[float((sens[a] * sens[b]).sum()) for b in range(2)]
                                   for a in range(2)])
    # The product of the two images' noise (second order); the bins of a
    # conjugate pair (interior rfft columns) add equal terms.
    second = (cols * c) ** 2 * (floors[0] * floors[1] / 2)
    v += np.array([[float((second * k[i] * k[j]).sum()) for j in range(2)] for i in range(2)])
    hinv = np.linalg.inv(h)
    return math.sqrt(max(float(np.diag(hinv @ v @ hinv).max()), 0.0))


# ------------------------------------------------------------ public


def estimate_shift(reference, moving, *, periodic=True, upsample=100, invert=False) -> Shift:
    """Sub-pixel translation of ``moving`` against ``reference``.

    Weighted phase correlation (see the module's documentation): whole-pixel
    peak, then refinement by matrix-multiply DFTs to ``1/upsample`` px.

    Parameters
    ----------
    reference, moving : 2-D real arrays (Ny, Nx)
        Images of one shape (any real dtype, at least 8 px a side, finite).
    periodic : bool
        True: the images are periodic (e.g. simulations) and the correlation
        is circular; shifts are found in ``(-N/2, N/2]`` along each axis.
        False: a field of view with edges. Both images are apodized (raised
        cosine over 1/8 of each side), then the estimate is repeated with the
        moving image's window following its content by the current estimate
        (up to 8 times, until it moves less than ``0.5/upsample`` px) and
        zero within ``ceil(|shift|) + 1`` px of the edges of both, so that
        the two windowed images are translates of one another and the fixed
        window does not pull the estimate towards zero. Shifts beyond about
        a quarter of the smaller side are left at the first estimate.
    upsample : int
        Refinement factor in [1, 1000]: the estimate lies on a grid of
        ``1/upsample`` px (1: the whole-pixel peak only).
    invert : bool
        True when the contrast of ``moving`` may be inverted against
        ``reference`` (the -dz and +dz images of a weak phase object): the
        extremum of the correlation is searched, not its maximum.

    Returns
    -------
    Shift
        ``(dy, dx)`` in px, the translation that, applied to ``moving`` with
        :func:`apply_shift`, aligns it to ``reference``; and ``quality`` in
        [0, 1]: ``1 - h2 / h1``, with ``h1`` the sub-pixel peak height of the
        correlation (absolute value when ``invert``) and ``h2`` its highest
        value at whole-pixel lags outside a disc around the peak, of radius
        three standard widths of the peak (from the second moment of the
        weighted spectrum), at least 2 px and at most a quarter of the
        smaller side. A unique, dominant peak scores near 1 (0.9 for
        noise-free translates); unrelated images, pure noise and repetitive
        lattices (several equal peaks) score near 0: white noise rarely
        above 0.3, unrelated smooth images rarely above 0.45 (up to about
        0.6 when only a few features span the field of view); and
        ``sigma``, the noise standard error of ``(dy, dx)`` in px (the
        larger of the two axes'): the curvature of the correlation peak
        against the spread of its slope under white pixel noise of the power
        each image's spectrum shows at its quietest frequencies (the
        correlation's weights held fixed), ``inf`` where the peak has no
        curvature. In simulations of Poisson-noisy translates it matches the
        spread of repeated estimates for periodic images and falls short of
        it by up to a third for apodized ones. It measures noise only, not a
        wrong peak (a lattice vector off) nor an image that changes between
        the scans. Featureless images (standard deviation at most 1e-6 of
        the mean) give ``Shift(0.0, 0.0, 0.0)`` (``sigma`` None).

    Raises
    ------
    InputError
        Naming the argument: not a real 2-D array, fewer than 8 px a side,
        NaN or Inf, shapes that differ, ``upsample`` not an integer in
        [1, 1000], a flag that is not a bool.
    """
    reference = _check_image("reference", reference)
    moving = _check_image("moving", moving, reference.shape)
    periodic = _check_bool("periodic", periodic)
    invert = _check_bool("invert", invert)
    upsample = check_count("upsample", upsample, 1, 1000)
    return _estimate(reference, moving, periodic, upsample, invert, with_sigma=True)


def _estimate(reference, moving, periodic, upsample, invert, *, with_sigma) -> Shift:
    """:func:`estimate_shift` of checked images; the noise standard error is
    computed only ``with_sigma`` (``sigma`` None otherwise: it costs about as
    much as the estimate, and only the matches that place a plane read it)."""
    if _flat(reference) or _flat(moving):
        return Shift(0.0, 0.0, 0.0)
    ref = reference.astype(np.float64)
    mov = moving.astype(np.float64)
    # Scaled to order 1 (the estimate does not depend on either image's scale).
    ref /= float(np.abs(ref).max())
    mov /= float(np.abs(mov).max())
    shape = ref.shape
    if periodic:
        spec_ref, spec_mov = np.fft.rfft2(ref - ref.mean()), np.fft.rfft2(mov - mov.mean())
        est, weights = _correlate(spec_ref, spec_mov, shape, upsample, invert)
        return _with_sigma(est, spec_ref, spec_mov, weights, shape, None) if with_sigma else est
    ny, nx = shape
    wy, wx = _window(ny, 0, 0), _window(nx, 0, 0)
    windows = (np.outer(wy, wx),) * 2
    spec_ref, spec_mov = _apodized_spectrum(ref, wy, wx), _apodized_spectrum(mov, wy, wx)
    est, weights = _correlate(spec_ref, spec_mov, shape, upsample, invert)
    for _ in range(_ITERATIONS):
        margin = math.ceil(max(abs(est.dy), abs(est.dx))) + 1
        if margin >= min(ny, nx) / 4:
            break  # too little of the field of view left inside the windows
        wy, wx = _window(ny, margin, 0), _window(nx, margin, 0)
        my, mx = _window(ny, margin, est.dy), _window(nx, margin, est.dx)
        windows = (np.outer(wy, wx), np.outer(my, mx))
        spec_ref = _apodized_spectrum(ref, wy, wx)
        spec_mov = _apodized_spectrum(mov, my, mx)
        new, weights = _correlate(spec_ref, spec_mov, shape, upsample, invert)
        step = max(abs(new.dy - est.dy), abs(new.dx - est.dx))
        est = new
        if step < 0.5 / upsample:
            break
    return _with_sigma(est, spec_ref, spec_mov, weights, shape, windows) if with_sigma else est


def _with_sigma(est: Shift, spec_ref, spec_mov, weights, shape, windows) -> Shift:
    """``est`` with its noise standard error (:func:`_peak_sigma`) from the
    spectra it was found on and their correlation's ``weights``; unchanged
    (``sigma`` None) where the spectra have no cross power."""
    if weights is None:
        return est
    return dataclasses.replace(est, sigma=_peak_sigma(spec_ref, spec_mov, weights,
                                                      (est.dy, est.dx), shape, windows))


def _shift_axis(a: np.ndarray, d: float, axis: int, periodic: bool) -> np.ndarray:
    """Translate float64 ``a`` by ``d`` px along ``axis`` (Fourier shift of
    the periodic image, or of its even mirror extension when not periodic)."""
    n = a.shape[axis]
    if not periodic:
        ext = np.concatenate([a, np.flip(a, axis=axis)], axis=axis)
        return np.take(_shift_axis(ext, d, axis, True), np.arange(n), axis=axis)
    if d == int(d):
        return np.roll(a, int(d), axis=axis)
    spectrum = np.fft.rfft(a, axis=axis)
    phase = np.exp((-2j * np.pi * d) * np.fft.rfftfreq(n))
    shape = [1, 1]
    shape[axis] = phase.size
    # irfft keeps the real part of the Nyquist bin of an even n: that component
    # is multiplied by cos(pi d), its exact value at the integer samples.
    return np.fft.irfft(spectrum * phase.reshape(shape), n=n, axis=axis)


def apply_shift(image, shift, *, periodic=True) -> np.ndarray:
    """Translate an image by a sub-pixel shift.

    Parameters
    ----------
    image : 2-D real array (Ny, Nx)
        Finite, at least 8 px a side.
    shift : Shift or (float, float)
        ``(dy, dx)`` in pixels: the content moves by ``+dy`` rows and ``+dx``
        columns (the output at ``r`` is the input at ``r - (dy, dx)``).
    periodic : bool
        True (default): Fourier shift of the periodic image, one axis after the other
        (exact for band-limited periodic fields; content leaving one edge
        re-enters at the other). False: Fourier shift of the even mirror
        extension of the image (each axis extended to twice its length by
        its reflection), cropped back: no wrap-around. The ``ceil(|dy|)``
        rows at the edge the content moves away from (the top rows for
        ``dy > 0``, the bottom rows for ``dy < 0``) and likewise the
        ``ceil(|dx|)`` columns are extrapolated, as the mirror image of the
        rows and columns beside them; the few pixels next to that edge are
        less accurate than the interior (the mirror extension has a kink
        there).

    Returns
    -------
    ndarray (Ny, Nx)
        The shifted image, of the input's dtype for floating input (float64
        for integer input: a shifted count is not an integer). A zero shift
        returns a copy with values equal to the input's; whole-pixel shifts
        are exact (a roll, periodic; mirrored rows and columns, not
        periodic).

    Raises
    ------
    InputError
        Naming the argument: ``image`` not a finite real 2-D array of at least
        8 px a side, ``shift`` not a Shift or a pair of finite numbers, a
        ``periodic`` that is not a bool.

    Notes
    -----
    Along an axis of even length, the Nyquist component is multiplied by
    ``cos(π d)`` (the real part of its phase factor: the output stays real),
    so shifting by ``s`` then ``-s`` restores an image exactly only when it
    has no component at the Nyquist frequency (a band-limited image).
    """
    a = _check_image("image", image)
    dy, dx = _check_shift(shift)
    periodic = _check_bool("periodic", periodic)
    dtype = a.dtype if a.dtype.kind == "f" else np.dtype(np.float64)
    if dy == 0 and dx == 0:
        return a.astype(dtype, copy=True)
    out = a.astype(np.float64)
    if dy != 0:
        out = _shift_axis(out, dy, 0, periodic)
    if dx != 0:
        out = _shift_axis(out, dx, 1, periodic)
    return out.astype(dtype, copy=False)


# ------------------------------------------------------------ triplets


def _loop(e01: Shift, e21: Shift, e02: Shift) -> np.ndarray:
    """The closure error (dy, dx) in px of the three pairwise estimates,
    ``e01 - e21 - e02`` (zero where they agree)."""
    return np.array([e01.dy - e21.dy - e02.dy, e01.dx - e21.dx - e02.dx])


def _combine(e01: Shift, e21: Shift, e02: Shift, min_quality: float):
    """Shifts (s0, s2) of planes 0 and 2 from the pairwise estimates that
    reach ``min_quality``: the least-squares solution of ``s0 = e01``,
    ``s2 = e21``, ``s0 - s2 = e02``; with e02 alone, split evenly. Returns
    (s0, s2, loop), ``loop`` the closure error of the three when all take
    part (else None), or None for s0, s2 when neither plane can be placed."""
    v01, v21, v02 = (np.array([e.dy, e.dx]) for e in (e01, e21, e02))
    g01, g21, g02 = (e.quality >= min_quality for e in (e01, e21, e02))
    if g01 and g21 and g02:
        loop = _loop(e01, e21, e02)
        return v01 - loop / 3, v21 + loop / 3, loop
    if g01 and g21:
        return v01, v21, None
    if g02 and g01:
        return v01, v01 - v02, None
    if g02 and g21:
        return v21 + v02, v21, None
    if g02:
        return v02 / 2, -v02 / 2, None
    return None, None, None


def _consistent_shifts(planes, s0, s2, periodic, weights=(1.0, 1.0)):
    """Refine the shifts (s0, s2) of planes 0 and 2 by Gauss-Newton
    (Levenberg-Marquardt damped) on ``Σ_k g(k) |c0 A0 + c2 A2 - 2 P1|²``
    (``weights`` ``(c0, c2)``: 1 and 1 for even defocus steps, :func:`_step_weights`),
    ``Aj`` the spectrum of plane j shifted by sj, ``g`` the product of the
    ±dz planes' signal fractions (as in :func:`_correlate`); apodized, with
    windows following each plane's content, when not periodic.

    Returns (s0, s2, sigma): ``sigma`` the noise standard error (px) of
    ``s0 - s2``, largest over the two axes (sandwich covariance of the
    weighted least squares, with the Jacobian of the Wiener-filtered planes
    and the white-noise floors of the three planes); the input shifts and
    ``sigma = 0`` when the windows would leave too little of the field of
    view.
    """
    shape = planes[0].shape
    ny, nx = shape
    ky = 2 * np.pi * np.fft.fftfreq(ny)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(nx)[None, :]
    cols = _column_weights(nx)[None, :].repeat(ny, axis=0)
    # The mean and the Nyquist bins (no well-defined derivative) are left out.
    cols[0, 0] = 0.0
    if ny % 2 == 0:
        cols[ny // 2, :] = 0.0
    if nx % 2 == 0:
        cols[:, -1] = 0.0
    p = [np.asarray(a, dtype=np.float64) for a in planes]
    scale = max(float(np.abs(a).max()) for a in p)
    if not scale > 0:
        return s0, s2, 0.0
    p = [a / scale for a in p]  # one factor for all: the fit does not change
    if periodic:
        spectra = [np.fft.rfft2(a - a.mean()) for a in p]

        def spectrum(j, sy, sx):
            return spectra[j]
    else:
        margin = math.ceil(max(np.abs(s0).max(), np.abs(s2).max())) + 2
        if margin >= min(shape) / 4:
            return s0, s2, 0.0

        def spectrum(j, sy, sx):
            return _apodized_spectrum(p[j], _window(ny, margin, sy), _window(nx, margin, sx))

    f1 = spectrum(1, 0.0, 0.0)
    outer = [spectrum(0, *s0), spectrum(2, *s2)]
    gain = [_gain(f, shape) for f in outer]
    weight = cols * gain[0] * gain[1]

    def residual(s):
        a0 = spectrum(0, s[0], s[1]) * np.exp(-1j * (ky * s[0] + kx * s[1]))
        a2 = spectrum(2, s[2], s[3]) * np.exp(-1j * (ky * s[2] + kx * s[3]))
        r = c0 * a0 + c2 * a2 - 2 * f1
        return r, a0, a2, float((weight * (r.real**2 + r.imag**2)).sum())

    def gram(vectors, w):
        return np.array([[float((w * (u.real * v.real + u.imag * v.imag)).sum()) for v in vectors]
                         for u in vectors])

    c0, c2 = weights
    s = np.concatenate([s0, s2]).astype(np.float64)
    r, a0, a2, cost = residual(s)
    damping = 1e-3
    for _ in range(_GN_STEPS):
        jac = [-1j * ky * c0 * a0, -1j * kx * c0 * a0, -1j * ky * c2 * a2, -1j * kx * c2 * a2]
        h = gram(jac, weight)
        g = gram(jac + [r], weight)[-1, :4]
        diag = np.where(np.diag(h) > 0, np.diag(h), 1.0)
        while damping < 1e6:
            step = np.linalg.solve(h + damping * np.diag(diag), -g)
            step /= max(1.0, float(np.abs(step).max()) / _GN_MAX_STEP)
            trial = residual(s + step)
            if trial[3] <= cost:
                s = s + step
                r, a0, a2, cost = trial
                damping = max(damping / 10, 1e-6)
                break
            damping *= 10
        else:
            break
        if np.abs(step).max() < _GN_TOL:
            break

    var = sum(_noise_floor(f.real**2 + f.imag**2, shape) * c
              for f, c in ((outer[0], c0 * c0), (outer[1], c2 * c2), (f1, 4)))
    jac = [-1j * ky * c0 * a0 * gain[0], -1j * kx * c0 * a0 * gain[0],
           -1j * ky * c2 * a2 * gain[1], -1j * kx * c2 * a2 * gain[1]]
    hinv = np.linalg.pinv(gram(jac, weight))
    cov = hinv @ (gram(jac, weight**2) * (var / 2)) @ hinv
    diff = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, -1.0]])
    sigma = math.sqrt(max(float(np.diag(diff @ cov @ diff.T).max()), 0.0))
    return s[:2], s[2:], sigma


SYMMETRY_FRACTION = 0.7  # of the signals' self-match quality a match must reach
STRUCTURE_QUALITY = 0.15  # self-match quality below which a signal has no structure
# The loop of the signals' pairwise shifts is also closed when the match of
# signal 0 with signal 2 is below the bar that places a plane, from this
# quality up, unless both placing matches reach CLOSURE_TRUST (a match that
# sharp is trusted over a weak match of the ±dz signals, whose relative shift
# is the largest of the three). Chosen on the evaluation grid's choosing half.
CLOSURE_QUALITY = 0.2
CLOSURE_TRUST = 0.95


def _step_weights(dz) -> tuple:
    """``(c0, c2)`` with ``c0 I(-dm) + c2 I(+dp) = 2 I(0)`` to first order in
    the defocus steps ``dz = (dm, dp)``: ``2 dp / (dm + dp)`` and
    ``2 dm / (dm + dp)`` (1 and 1 for even steps)."""
    dm, dp = (float(v) for v in dz)
    return 2 * dp / (dm + dp), 2 * dm / (dm + dp)


def register_triplet(planes, *, signals=None, periodic=True, max_shift=None, min_quality=0.5,
                     threshold=0.02, apply_unreliable=True, dz=(1.0, 1.0)):
    """Estimate and undo the drift of the -dz and +dz planes against the in-focus one.

    With ``signals`` (a defocus-invariant image of each scan), the shifts of
    planes 0 and 2 are those of their signals against signal 1 (correlation
    maximum), checked against the shift of signal 0 against signal 2: the
    three must close within 0.71 px (0.5 px for each of the two estimates
    of the ±dz signals' relative shift, added in quadrature) when all reach
    the bar, and also when the match of signal 0 with signal 2 reaches
    quality 0.2 while either placing match is below 0.95 (a match one
    lattice vector or a defect off passes the bar lowered for a crystal;
    the third match still sees it). Placing matches of quality 0.95 and
    more are used as found, unchecked by the third. The noise standard
    error of each placing match (:func:`estimate_shift`) must be at most
    0.2 px: at low dose the correlation peak of a small field of view is
    moved by noise, and the three matches can close on a wrong shift.

    From the planes alone, the contrast changes with defocus (for a weak
    phase object ``I(±dz) ≈ I(0) ∓ dz ∇²φ / k``: the ±dz planes are
    contrast-inverted, and the in-focus plane may be flat), so:

    1. Pairwise estimates by correlation extremum (``invert=True``): plane 0
       against plane 1 (e01), plane 2 against plane 1 (e21), plane 0 against
       plane 2 (e02). Those of quality at least ``min_quality`` are combined
       by least squares (``s0 = e01``, ``s2 = e21``, ``s0 - s2 = e02``); when
       only e02 is, it is split evenly, ``s0 = e02 / 2 = -s2``, which is
       plane 1's frame for a drift uniform in time (scans at -dz, 0, +dz in
       that order, evenly spaced) and immaterial when plane 1 is flat.
    2. Joint refinement of both shifts (Gauss-Newton) to the least-squares
       solution of ``shift(I(-dz), s0) + shift(I(+dz), s2) = 2 I(0)``, the
       transport of intensity to first order in dz, which holds whatever
       the mix of amplitude and phase contrast (the pairwise correlations
       of a specimen with both partly cancel). When plane 1 is flat the sum
       of the shifts is left where step 1 put it.
    3. Check: each ±dz plane is correlated (maximum) with its first-order
       prediction from the other two, ``2 I(0) - shift(I(±dz), s)``; the
       quality of that correlation is the plane's quality, and its shift
       must agree with the refined one within 0.5 px. The noise standard
       error of the relative shift of the ±dz planes (from the fit's
       curvature and the planes' white-noise floors) must be at most 0.1
       px: where the ±dz planes differ by little more than noise (low dose,
       weak phase contrast), their alignment is not determined even when
       each matches the in-focus plane.

    The shifts estimated from the planes include the mean lateral transport
    of the image by the specimen's phase gradient (``I(±dz)`` is displaced
    by ``∓dz ∇φ / k`` where ``I(0)`` has structure): it cannot be told from
    drift without a defocus-invariant signal, which is why ``signals`` is
    preferred when there is one. Beyond the linear regime (strong phase,
    large dz) the ±dz planes are no longer mirror images and the estimate
    is biased by a fraction of a pixel.

    Parameters
    ----------
    planes : sequence of three 2-D real arrays (Ny, Nx)
        I(-dz), I(0), I(+dz), finite, at least 8 px a side, one shape.
    signals : sequence of three 2-D real arrays (Ny, Nx), optional
        A defocus-invariant signal from the same three scans on the same
        pixels (e.g. the annular dark-field virtual image), used instead of
        the planes to estimate the shifts.
    periodic : bool
        Whether the images are periodic (see :func:`estimate_shift` and
        :func:`apply_shift`); False for measured fields of view, which
        should then be at least about 32 px a side for sub-pixel accuracy
        (the apodization takes 1/8 of each side).
    max_shift : float, optional
        Largest plausible drift in px (default: a quarter of the smaller
        image side); a larger shift is marked unreliable.
    min_quality : float
        Quality in [0, 1] below which an estimate is not trusted (default
        0.5: noise and unrelated images score below about 0.45, correct
        matches of images with structure above about 0.7; see
        :func:`estimate_shift`). With ``signals``, lowered to 0.7 times the
        lowest quality of a signal matched with itself, where that is lower
        (a crystal's repeating image caps every match's quality).
    threshold : float
        Shifts of magnitude below this (px, default 0.02, about the
        estimator's accuracy) are reported but not applied, so that planes
        without drift come back unchanged.
    apply_unreliable : bool
        Whether shifts are applied when the estimate is unreliable (default
        True); with False the planes come back as given.
    dz : (float, float)
        The defocus steps ``(dz_minus, dz_plus)`` in Å (default even): from
        the planes alone, steps 2 and 3 read ``c0 I(-dz) + c2 I(+dz) = 2
        I(0)`` with ``c0 = 2 dz_plus / (dz_minus + dz_plus)`` and ``c2 = 2
        dz_minus / (dz_minus + dz_plus)`` (steps of (40, 10) Å read as even
        had a drift of 0.3 px found and applied on planes without any). At
        step ratios of 40 and more the first order no longer holds for the
        longer step: 0.09-0.13 px were found on undrifted planes at (200, 5)
        and (300, 3) Å.

    Returns
    -------
    registered : list of three ndarray
        The planes with the shifts applied (:func:`apply_shift`: same dtype
        for floating planes, float64 for integer ones); plane 1 and the
        planes whose shift is below ``threshold`` are the input arrays
        themselves (not copied).
    shifts : ndarray (3, 2) float64
        For each plane, the shift (dy, dx) in px that aligns it to plane 1
        (applied when not below ``threshold``); row 1 is zero.
    reliable : bool
        False when a shift is unreliable: quality below ``min_quality``,
        magnitude above ``max_shift``, estimates that disagree (by more
        than 0.5 px; signals: a loop that misses closing by more than
        0.71 px), a noise standard error above 0.2 px of a signal's match
        with signal 1, or (planes alone) a noise standard error of the
        relative shift of the ±dz planes above 0.1 px. A :class:`RegistrationWarning`
        then says which plane and why; the estimates are applied as found,
        and the registered planes may be wrong.

    Raises
    ------
    InputError
        Naming the argument: not three arrays, an image that is not a finite
        real 2-D array of at least 8 px a side, shapes that differ (also
        between ``signals`` and ``planes``), ``max_shift`` not positive,
        ``min_quality`` outside [0, 1], ``threshold`` negative, a ``periodic``
        that is not a bool.
    """
    planes = _check_triplet("planes", planes)
    shape = planes[0].shape
    if signals is not None:
        signals = _check_triplet("signals", signals, shape)
    periodic = _check_bool("periodic", periodic)
    if max_shift is None:
        max_shift = min(shape) / 4
    else:
        max_shift = check_real("max_shift", max_shift, low=0.0, low_open=True)
    min_quality = check_real("min_quality", min_quality, low=0.0)
    if min_quality > 1:
        raise InputError(f"min_quality: expected a number in [0, 1], got {min_quality!r}")
    threshold = check_real("threshold", threshold, low=0.0)
    weights = _step_weights(check_positive("dz", dz, pair=True))

    images = planes if signals is None else signals
    invert = signals is None
    # The images are checked; the noise standard error is read of the placing
    # matches of the signals only.
    placing = signals is not None
    e01 = _estimate(images[1], images[0], periodic, 100, invert, with_sigma=placing)
    e21 = _estimate(images[1], images[2], periodic, 100, invert, with_sigma=placing)
    e02 = _estimate(images[2], images[0], periodic, 100, invert, with_sigma=False)
    if signals is not None:
        # A crystal's image repeats: its correlation has near-equal peaks a
        # lattice vector apart, which caps the quality of any match, its match
        # with itself included. A match as sharp as the signals' own symmetry
        # allows is as good as it gets (a lattice vector off changes nothing
        # inside a crystal); noise makes the self-match sharp and keeps the bar.
        own = min(_estimate(x, x, periodic, 100, False, with_sigma=False).quality
                  for x in images)
        if own >= STRUCTURE_QUALITY:  # signals without structure keep the bar
            min_quality = min(min_quality, SYMMETRY_FRACTION * own)
    s0, s2, loop = _combine(e01, e21, e02, min_quality)
    if (signals is not None and loop is None and e02.quality >= CLOSURE_QUALITY
            and min(e01.quality, e21.quality) < CLOSURE_TRUST):
        # A wrong match of one ±dz signal with signal 1 (a lattice vector or
        # a defect off) passes a lowered bar; the third match still sees it.
        loop = _loop(e01, e21, e02)
    if signals is not None and min(e01.quality, e21.quality) >= CLOSURE_TRUST:
        # Both placing matches that sharp are trusted over the match of the
        # ±dz signals, whatever its quality: it spans twice the defocus.
        s0, s2, loop = np.array([e01.dy, e01.dx]), np.array([e21.dy, e21.dx]), None
    problems = []
    if signals is not None:
        # Every signal has structure (signal 1 included): each ±dz signal must
        # match signal 1 itself, not only through the other (a split of e02).
        if s0 is None or min(e01.quality, e21.quality) < min_quality:
            s0, s2 = np.array([e01.dy, e01.dx]), np.array([e21.dy, e21.dx])
            for i, e in ((0, e01), (2, e21)):
                if e.quality < min_quality:
                    problems.append(f"the shift of {_NAMES[i]} from the signals, {_fmt(e)} px, "
                                    f"has quality {e.quality:.2f} (signal 0 against signal 2: "
                                    f"{e02.quality:.2f}), below min_quality {min_quality:.2f}")
        elif loop is not None and float(np.hypot(*loop)) > _LOOP:
            problems.append(f"the signals' pairwise shifts disagree: 0 against 1 {_fmt(e01)}, "
                            f"2 against 1 {_fmt(e21)}, 0 against 2 {_fmt(e02)} px miss "
                            f"closing by {np.hypot(*loop):.2f} px")
        for i, e in ((0, e01), (2, e21)):
            # Noise alone may move this match's peak by 0.5 px (low dose,
            # little structure in a small field of view).
            if (e.quality >= min_quality and e.sigma is not None
                    and not e.sigma <= _MAX_SIGNAL_SIGMA):
                problems.append(f"the shift of {_NAMES[i]} from the signals, {_fmt(e)} px, is "
                                f"uncertain by ±{e.sigma:.2f} px (noise standard error, more "
                                f"than {_MAX_SIGNAL_SIGMA} px)")
    else:
        if s0 is None:  # no pair matched: start from the raw estimates, the check decides
            s0, s2 = np.array([e01.dy, e01.dx]), np.array([e21.dy, e21.dx])
        s0, s2, sigma = _consistent_shifts(planes, s0, s2, periodic, weights)
        if sigma > _MAX_SIGMA:
            problems.append(f"the relative shift of plane 0 and plane 2, {_fmt(s0 - s2)} px, is "
                            f"uncertain by ±{sigma:.2f} px (noise standard error, more than "
                            f"{_MAX_SIGMA} px)")
        p = [np.asarray(a, dtype=np.float64) for a in planes]
        c = dict(zip((0, 2), weights))
        for i, j, s, other in ((0, 2, s0, s2), (2, 0, s2, s0)):
            # its first-order prediction from the other two
            target = (2 * p[1] - c[j] * apply_shift(p[j], other, periodic=periodic)) / c[i]
            check = _estimate(target, p[i], periodic, 100, False, with_sigma=False)
            miss = float(np.hypot(check.dy - s[0], check.dx - s[1]))
            if check.quality < min_quality:
                problems.append(f"the shift of {_NAMES[i]}, estimated {_fmt(s)} px, has "
                                f"quality {check.quality:.2f}, below min_quality "
                                f"{min_quality:.2f}")
            elif miss > _CONSISTENCY:
                problems.append(f"the shift of {_NAMES[i]}, estimated {_fmt(s)} px, "
                                f"disagrees with its correlation against its first-order "
                                f"prediction from the other two planes, {_fmt(check)} px, by "
                                f"{miss:.2f} px")
    for i, s in ((0, s0), (2, s2)):
        if float(np.hypot(*s)) > max_shift:
            problems.append(f"the shift of {_NAMES[i]}, estimated {_fmt(s)} px, exceeds "
                            f"max_shift {max_shift:g} px")
    apply_unreliable = _check_bool("apply_unreliable", apply_unreliable)
    consequence = ("the registration may be wrong (register=False, or --register off, "
                   "skips it)"
                   if apply_unreliable else "not applied: the planes are used as recorded")
    for text in problems:
        warnings.warn(f"register_triplet: {text}; {consequence}", RegistrationWarning,
                      stacklevel=user_stacklevel())

    shifts = np.zeros((3, 2))
    shifts[0], shifts[2] = s0, s2
    registered = list(planes)
    if problems and not apply_unreliable:
        return registered, shifts, False
    for i in (0, 2):
        if float(np.hypot(*shifts[i])) >= threshold and shifts[i].any():
            registered[i] = apply_shift(planes[i], shifts[i], periodic=periodic)
    return registered, shifts, not problems


def _fmt(v) -> str:
    if isinstance(v, Shift):
        v = (v.dy, v.dx)
    return f"(dy, dx) = ({float(v[0]):+.2f}, {float(v[1]):+.2f})"
