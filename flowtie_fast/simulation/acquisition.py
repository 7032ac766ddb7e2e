"""Effects of a real acquisition, applied to noise-free simulated data.

Training and evaluation use noise-free abTEM simulations; a real acquisition
adds effects that this module applies to them when samples are loaded, all as
pure functions of the data and a seeded :class:`numpy.random.Generator`:

- :func:`counts`: detector counts at a dose in e⁻/Å² (Poisson statistics),
  per-electron gain noise and a fixed per-pixel gain map (flat-field error);
- :func:`drift`: the specimen drifting between scans, a sub-pixel translation
  of the scan axes (periodic, or cropped from a margin of extra scan positions);
- :func:`source_blur`: partial spatial coherence, an incoherent Gaussian
  source demagnified onto the specimen (a convolution over the scan axes);
- :func:`apply`: all of them on the three scans of a focal triplet in the
  physical order (source blur, drift, counts), with a record of what was done;
- :func:`random_conditions`: one random set of conditions from ranges.

Data are either 4D-STEM scans ``(Sy, Sx, Ky, Kx)`` (scan positions by
detector pixels) or images ``(Ny, Nx)``. The scan axes are the first two axes
of a 4D array and both axes of an image; drift and source blur act on them
only, the same for every detector pixel. For images, ``scan_step`` is the
pixel size and each pixel plays the part of a pattern.

Conventions
-----------
Shifts are ``(dy, dx)`` in scan pixels, axis 0 then axis 1; a positive ``dy``
moves features to larger row indices: ``out[i] = data[i - dy]`` (the sign of
:func:`numpy.roll`).

Periodic data (scans of whole unit cells) are shifted and blurred in Fourier
space. Non-periodic data are extended by their mirror image (half-sample
symmetric, ``d c b a | a b c d``; scipy.ndimage's ``"reflect"``) before the
Fourier operation, which keeps the extension continuous and conserves the
total intensity of a blur.

The data are intensities (counts or sums of counts), and they stay
non-negative: a Fourier shift or blur rings next to sharp features (a
sub-pixel shift of sparse counts gives values down to almost -1 count), and
everything below zero after it is set to zero (a negative input value too,
once interpolated). The clip changes the result only where the ringing went
below zero: there a shift is no longer undone exactly by the opposite shift,
nor is the total intensity of a blur conserved exactly. Whole-pixel shifts
and crops are exact moves of the values and are never clipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from ..errors import InputError, check_count, check_positive, check_real

__all__ = ["counts", "drift", "crop_margin", "source_blur", "apply", "random_conditions",
           "FWHM_PER_SIGMA", "CONDITIONS"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548: FWHM of a Gaussian over σ

CONDITIONS = ("dose", "gain_noise", "gain_map", "drift", "source_fwhm")

# Largest mean count per pixel that numpy's Poisson sampler takes with room to spare.
_MAX_LAM = 1e15
#: Largest relative spread of one electron's signal (``gain_noise``) and of the
#: pixel gains (``gain_map``): the gamma draws of a larger one underflow to
#: zero (a gain noise of 1e3 gave counts of zero everywhere; 1e200 an
#: OverflowError), and no detector spreads its gain beyond these.
GAIN_NOISE_MAX = 10.0
GAIN_MAP_MAX = 1.0


# -- argument checks ----------------------------------------------------------


def _data(name: str, data) -> np.ndarray:
    """``data`` as a finite real array of 2 (image) or 4 (4D-STEM) dimensions;
    float32 and float64 keep their dtype, other real types become float64."""
    try:
        a = np.asarray(data)
    except Exception as exc:  # noqa: BLE001 - any failure to convert is the caller's input
        raise InputError(f"{name}: expected an array, got {type(data).__name__}") from exc
    if a.dtype.kind not in "fiu":
        raise InputError(f"{name}: expected real numbers, got an array of dtype {a.dtype}")
    if a.ndim not in (2, 4):
        raise InputError(f"{name}: expected an image (Ny, Nx) or 4D-STEM data (Sy, Sx, Ky, Kx), "
                         f"got an array of shape {a.shape}")
    if a.size == 0:
        raise InputError(f"{name}: expected a non-empty array, got shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{name}: expected finite values, got NaN or Inf "
                         f"(in {int((~np.isfinite(a)).sum())} of {a.size} elements)")
    return a


def _rng(rng) -> np.random.Generator:
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng: expected a numpy.random.Generator "
                         f"(numpy.random.default_rng(seed)), got {rng!r}")
    return rng


def _bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _shift(name: str, value) -> tuple:
    """``value`` as a pair of finite floats (scan pixels)."""
    try:
        s = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: expected (dy, dx) in scan pixels, got {value!r}") from exc
    if s.shape != (2,):
        raise InputError(f"{name}: expected (dy, dx) in scan pixels, got {value!r}")
    if not np.isfinite(s).all():
        raise InputError(f"{name}: expected finite (dy, dx) in scan pixels, got {value!r}")
    return float(s[0]), float(s[1])


def _margin(margin, periodic: bool, shape: tuple) -> int:
    m = check_count("margin", margin, 0)
    if m and periodic:
        raise InputError(f"margin: expected 0 with periodic=True (periodic data carry no margin), "
                         f"got {margin!r}; pass periodic=False for data with a margin")
    if 2 * m >= min(shape[:2]):
        raise InputError(f"margin: expected fewer than half the scan positions "
                         f"({shape[0]} x {shape[1]}), got {margin!r}")
    return m


def _drift_rows(value) -> np.ndarray:
    """``drift`` of :func:`apply` as a (3, 2) float array, the in-focus row zero."""
    if value is None:
        return np.zeros((3, 2))
    try:
        d = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"drift: expected a (3, 2) array of shifts in scan pixels, "
                         f"got {value!r}") from exc
    if d.shape != (3, 2):
        raise InputError(f"drift: expected a (3, 2) array of (dy, dx) shifts in scan pixels "
                         f"(minus, zero, plus), got shape {d.shape}")
    if not np.isfinite(d).all():
        raise InputError(f"drift: expected finite shifts in scan pixels, got {d.tolist()!r}")
    if np.any(d[1] != 0):
        raise InputError(f"drift: expected (0, 0) for the in-focus scan (row 1: the ground truth "
                         f"is registered to it), got {d[1].tolist()!r}")
    return d


def _counts_dtype(value) -> np.dtype:
    try:
        dt = np.dtype(value)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.kind not in "fiu" or (dt.kind == "f" and dt not in (np.float32,
                                                                          np.float64)):
        raise InputError(f"dtype: expected float32, float64 or an integer dtype, got {value!r}")
    return dt


# -- Fourier operations along one axis ----------------------------------------


def _filter_axis(a: np.ndarray, axis: int, response, mirror: bool) -> np.ndarray:
    """``a`` filtered along ``axis`` by ``response(q)``, the multiplier of the
    real-to-complex spectrum at ``q`` cycles per sample (``rfftfreq``).

    ``mirror``: the axis is first extended by its mirror image (period twice
    its length), for non-periodic data. On an even length the Nyquist
    coefficient keeps the real part of its product with the response (the
    real band-limited reading of that component)."""
    n = a.shape[axis]
    if mirror:
        a = np.concatenate([a, np.flip(a, axis)], axis=axis)
    size = a.shape[axis]
    spec = np.fft.rfft(a, axis=axis)
    h = np.asarray(response(np.fft.rfftfreq(size)))
    shape = [1] * a.ndim
    shape[axis] = h.size
    spec *= h.reshape(shape).astype(spec.dtype, copy=False)
    out = np.fft.irfft(spec, n=size, axis=axis)
    if mirror:
        out = out[(slice(None),) * axis + (slice(0, n),)]
    return out


def _shift_axis(a: np.ndarray, axis: int, d: float, mirror: bool) -> np.ndarray:
    return _filter_axis(a, axis, lambda q: np.exp(-2j * np.pi * q * d), mirror)


# -- public functions ----------------------------------------------------------


def crop_margin(data, margin) -> np.ndarray:
    """The nominal window of data that carry ``margin`` extra scan positions on
    each side.

    Parameters
    ----------
    data : ndarray (Sy + 2 margin, Sx + 2 margin, Ky, Kx) or (Ny + 2 margin, Nx + 2 margin)
    margin : int
        Extra scan positions (pixels for images) on each side, >= 0.

    Returns
    -------
    ndarray (Sy, Sx, Ky, Kx) or (Ny, Nx), a copy (float32 and float64 keep
    their dtype, other real types become float64).
    """
    a = _data("data", data)
    m = _margin(margin, False, a.shape)
    return a[m:a.shape[0] - m, m:a.shape[1] - m].copy()


def drift(data, shift, *, periodic=True, margin=0) -> np.ndarray:
    """Translate the scan axes by a sub-pixel shift, as a specimen drifting
    between scans.

    Parameters
    ----------
    data : ndarray (Sy, Sx, Ky, Kx) or (Ny, Nx)
        4D-STEM data (the scan axes 0 and 1 move, every detector pixel alike)
        or an image. Non-periodic data carry ``margin`` extra scan positions on
        each side of the nominal window.
    shift : (float, float)
        ``(dy, dx)`` in scan pixels; a positive ``dy`` moves features to larger
        row indices (``out[i] = data[i - dy]``, as :func:`numpy.roll`).
    periodic : bool
        The scan covers whole periods (unit cells): the shift wraps around.
        The integer part is an exact :func:`numpy.roll`, the fractional part
        (in [-0.5, 0.5]) a Fourier shift, exact for band-limited data; on an
        even length the Nyquist component is multiplied by ``cos(π d)``, so
        shifting back undoes a shift exactly only for data without it (and
        only where the shift's ringing stayed above zero: values below are
        clipped, see Returns).
    margin : int
        Non-periodic only (refused with ``periodic=True``): the output is the
        nominal window, ``data[margin:-margin, margin:-margin]`` shifted;
        ``|dy|`` and ``|dx|`` may not exceed it. The nearest integer shift is
        cropped from the margin (exact); the rest, in [-0.5, 0.5], is a
        Fourier shift of the whole array extended by its mirror image. Its
        error grows toward the array's border, which the window reaches when
        the shift uses up the margin: for a field of 5 or more samples per
        period, about 1e-3 of its amplitude 8 pixels from the border, 3e-3 at
        4, 1e-2 at 2 and a few % within 1; a margin of the largest shift plus
        4 keeps the whole window in the accurate part.

    Returns
    -------
    ndarray
        The shape of ``data`` (periodic) or of the nominal window; float32 and
        float64 keep their dtype, other real types become float64. A zero
        shift returns a copy of the input (of its window), a whole-pixel shift
        the input's values moved; a sub-pixel shift is clipped at zero after
        the interpolation (intensities stay non-negative; the ringing of a
        Fourier shift next to sharp features would go below zero).

    Raises
    ------
    InputError
        Data not 2-D or 4-D or not finite, a shift that is not two finite
        numbers, a bad margin, or ``|dy|`` or ``|dx|`` beyond the margin.
    """
    a = _data("data", data)
    dy, dx = _shift("shift", shift)
    periodic = _bool("periodic", periodic)
    m = _margin(margin, periodic, a.shape)
    return _transform(a, 0.0, (1.0, 1.0), (dy, dx), periodic, m)


def _transform(a: np.ndarray, fwhm: float, step: tuple, shift: tuple, periodic: bool,
               m: int) -> np.ndarray:
    """Source blur then drift then crop, in one Fourier filter per scan axis
    (both are linear and shift-invariant; the blur acts before the crop)."""
    if not periodic and (abs(shift[0]) > m or abs(shift[1]) > m):
        raise InputError(f"shift: expected |dy| and |dx| within the margin of {m} scan pixels "
                         f"(non-periodic data), got {shift!r}")
    whole = [int(round(d)) for d in shift]
    frac = [d - w for d, w in zip(shift, whole)]
    out = np.roll(a, whole, axis=(0, 1)) if periodic and any(whole) else a
    filtered = False
    for axis in (0, 1):
        s = fwhm / FWHM_PER_SIGMA / step[axis]  # σ in samples along this axis
        f = frac[axis]
        if s > 0 or f != 0:
            def response(q, s=s, f=f):
                return np.exp(-2.0 * (np.pi * s * q) ** 2 - 2j * np.pi * q * f)

            out = _filter_axis(out, axis, response, mirror=not periodic)
            filtered = True
    if not periodic:
        ny, nx = a.shape[0] - 2 * m, a.shape[1] - 2 * m
        y0, x0 = m - whole[0], m - whole[1]
        out = out[y0:y0 + ny, x0:x0 + nx]
    if np.may_share_memory(out, a):
        out = out.copy()
    out = out.astype(a.dtype, copy=False)
    if filtered:
        # Intensities: the ringing of the Fourier interpolation below zero (next
        # to sharp features of counts) is clipped; exact moves (whole pixels,
        # crops) are left as they are.
        np.maximum(out, 0, out=out)
    return out


def source_blur(data, source_fwhm, scan_step, *, periodic=True) -> np.ndarray:
    """Partial spatial coherence: the scan-plane convolution with the image of
    an incoherent Gaussian source.

    Each detector pixel's scan image is convolved with a Gaussian of standard
    deviation ``σ = source_fwhm / 2.3548`` (the same for all of them): the
    4D intensities averaged over probe positions displaced by the source
    distribution. A cosine of spatial frequency ``f`` (1/Å) keeps its mean and
    has its amplitude multiplied by ``exp(-(2π f σ)² / 2)``.

    Parameters
    ----------
    data : ndarray (Sy, Sx, Ky, Kx) or (Ny, Nx)
        4D-STEM data (convolved over the scan axes 0 and 1) or an image.
    source_fwhm : float
        FWHM of the source's image on the specimen, Å (>= 0; 0 returns a copy
        of the input).
    scan_step : float or (float, float)
        Scan step (the pixel size for images), Å, along axis 0 and axis 1.
    periodic : bool
        True: a circular convolution (a product in Fourier space; conserves the
        total intensity). False: the data are extended by their mirror image
        (half-sample symmetric, i.e. reflect padding) before the product, which
        conserves the total intensity too.

    Returns
    -------
    ndarray
        The shape of ``data``; float32 and float64 keep their dtype, other real
        types become float64. Non-negative where a blur was applied: values
        below zero after it (the product's ringing next to sharp features, or
        a negative input value) are set to zero, and only there is the total
        intensity no longer conserved exactly.
    """
    a = _data("data", data)
    fwhm = check_real("source_fwhm", source_fwhm, low=0.0)
    step = check_positive("scan_step", scan_step, pair=True)
    periodic = _bool("periodic", periodic)
    return _transform(a, fwhm, step, (0.0, 0.0), periodic, 0)


def _gain_map_draw(rng: np.random.Generator, std: float, shape: tuple) -> np.ndarray:
    """A fixed gain per detector pixel: gamma-distributed, mean 1, relative
    standard deviation ``std`` (all ones when 0)."""
    if _drawn_spread(std) == 0:
        return np.ones(shape)
    k = 1.0 / std**2
    return rng.gamma(k, 1.0 / k, size=shape)


def _check_gain_map(value, shape: tuple):
    """``gain_map`` as None, a relative standard deviation (float >= 0) or a
    map of ``shape`` (finite, >= 0)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim > 0:
        g = value
        if g.dtype.kind not in "fiu" or g.shape != shape:
            raise InputError(f"gain_map: expected a relative standard deviation or a real map of "
                             f"shape {shape}, got an array of shape {g.shape} and dtype {g.dtype}")
        g = g.astype(np.float64)
        if not (np.isfinite(g).all() and (g >= 0).all()):
            raise InputError("gain_map: expected finite gains >= 0, got NaN, Inf or negative "
                             "values")
        return g
    return _spread("gain_map", value, GAIN_MAP_MAX)


def _spread(name: str, value, top: float) -> float:
    """A relative spread ``value`` in ``[0, top]``; InputError naming ``name``."""
    v = check_real(name, value, low=0.0)
    if v > top:
        raise InputError(f"{name}: expected a relative spread in [0, {top:g}], got {value!r}")
    return v


def _drawn_spread(v: float) -> float:
    """The relative spread ``v`` as drawn: 0 where its variance does not add to
    1 in float64 (``1 + v**2 == 1``, below about 1.5e-8): the gamma draw of
    shape ``1 / v**2`` would then equal its mean to float64's precision, and
    its shape overflows (1e-300 divided by zero)."""
    return v if 1.0 + v * v > 1.0 else 0.0


def counts(patterns, dose, scan_step, rng, *, gain_noise=0.0, gain_map=None,
           dtype=np.float32) -> np.ndarray:
    """Detector counts at a dose: Poisson statistics, then gain noise.

    The intensities are scaled so that the mean pattern holds
    ``dose * scan_step[0] * scan_step[1]`` electrons (as
    :func:`flowtie_fast.simulation.simulate.poisson_counts`); electron numbers are Poisson
    draws; each electron's recorded signal is a gain of mean 1 and relative
    standard deviation ``gain_noise``, gamma-distributed so that the signal
    stays non-negative (the sum of ``n`` gains is ``Gamma(n k, θ)`` with
    ``k = 1 / gain_noise²``, ``θ = gain_noise²``: mean ``n``, and a variance over
    mean of ``1 + gain_noise²`` in all); finally the signal of each detector
    pixel is multiplied by a fixed gain map (flat-field error).

    Parameters
    ----------
    patterns : ndarray (Sy, Sx, Ky, Kx) or (Ny, Nx)
        Noise-free intensities, any scale. 4D-STEM: the mean over scan
        positions of the pattern totals is the reference. Image: each pixel is
        a "pattern", and the mean pixel holds ``dose`` times the pixel area.
        Negative values (ringing of an interpolation) count as zero.
    dose : float
        Electrons per Å² (> 0).
    scan_step : float or (float, float)
        Scan step in Å (the pixel size for images): the area per pattern is
        their product.
    rng : numpy.random.Generator
    gain_noise : float
        Relative standard deviation of one electron's recorded signal (0 to
        :data:`GAIN_NOISE_MAX`; 0: counts are the electron numbers). One below
        about 1.5e-8, whose variance ``gain_noise**2`` does not change
        ``1 + gain_noise**2`` in float64, is drawn as 0: its effect lies below
        the precision of the counts.
    gain_map : None, float or ndarray (Ky, Kx) / (Ny, Nx)
        None: no flat-field error. A float: the relative standard deviation of
        a map drawn here after the electrons (gamma-distributed per pixel, mean
        1; 0 to :data:`GAIN_MAP_MAX`; 0, or below about 1.5e-8 as for
        ``gain_noise``, draws nothing). An array: the map itself (finite,
        >= 0). Either way the same for every scan position.
    dtype : dtype
        Of the result: float32 (default) or float64, in electrons (the mean
        gain is 1); an integer dtype rounds to the nearest count.

    Returns
    -------
    ndarray of the shape of ``patterns``, non-negative.

    Raises
    ------
    InputError
        Naming the argument: data not 2-D or 4-D, not finite or with no
        positive intensity, a dose that is not positive and finite (or so high
        that the counts overflow the sampler), a bad scan step, gain noise or
        gain map, an ``rng`` that is not a Generator, counts beyond an integer
        dtype's range.
    """
    p = _data("patterns", patterns)
    dose = check_positive("dose", dose)
    step = check_positive("scan_step", scan_step, pair=True)
    rng = _rng(rng)
    gain_noise = _spread("gain_noise", gain_noise, GAIN_NOISE_MAX)
    gmap = _check_gain_map(gain_map, p.shape[-2:])
    dt = _counts_dtype(dtype)
    return _counts(p, dose, step, rng, gain_noise, gmap, dt)


def _counts(p, dose, step, rng, gain_noise, gmap, dt) -> np.ndarray:
    p = np.clip(p.astype(np.float64), 0, None)
    n_patterns = p.shape[0] * p.shape[1] if p.ndim == 4 else p.size
    norm = p.sum() / n_patterns
    if not norm > 0:
        raise InputError("patterns: expected some positive intensity, got none")
    electrons = dose * step[0] * step[1]
    lam = p * (electrons / norm)
    if lam.max() > _MAX_LAM:
        raise InputError(f"dose: {dose!r} e⁻/Å² gives up to {lam.max():.3g} electrons in a "
                         f"pixel, more than the {_MAX_LAM:g} the sampler takes")
    n = rng.poisson(lam)
    if _drawn_spread(gain_noise) > 0:
        signal = np.zeros(n.shape)
        hit = n > 0
        k = 1.0 / gain_noise**2
        signal[hit] = rng.gamma(n[hit] * k, 1.0 / k)
    else:
        signal = n.astype(np.float64)
    if isinstance(gmap, float):
        gmap = _gain_map_draw(rng, gmap, p.shape[-2:]) if gmap > 0 else None
    if gmap is not None:
        signal *= gmap
    if dt.kind in "iu":
        signal = np.rint(signal)
        top = np.iinfo(dt).max
        if signal.size and signal.max() > top:
            raise InputError(f"dtype: counts up to {signal.max():.0f} exceed the range of {dt} "
                             f"(at most {top}); use a wider dtype")
    return signal.astype(dt)


def _planes(case_planes) -> list:
    if all(hasattr(case_planes, k) for k in ("minus", "zero", "plus")):
        planes = [case_planes.minus, case_planes.zero, case_planes.plus]
    else:
        try:
            planes = list(case_planes)
        except TypeError as exc:
            raise InputError(f"case_planes: expected three arrays (minus, zero, plus), got "
                             f"{type(case_planes).__name__}") from exc
    if len(planes) != 3:
        raise InputError(f"case_planes: expected three arrays (minus, zero, plus), got "
                         f"{len(planes)}")
    planes = [_data("case_planes", p) for p in planes]
    if len({p.shape for p in planes}) != 1:
        raise InputError(f"case_planes: expected three arrays of one shape, got "
                         f"{[p.shape for p in planes]}")
    return planes


def apply(case_planes, *, rng, dose=None, gain_noise=0.0, gain_map=None, drift=None,
          source_fwhm=0.0, scan_step, periodic=True, margin=0):
    """The effects of an acquisition on the three scans of a focal triplet, in
    the physical order.

    1. Source blur: :func:`source_blur` of each scan, one FWHM for all three.
    2. Drift: :func:`drift` of each scan by its row of ``drift``; the in-focus
       scan stays put (the ground truth is registered to it); non-periodic
       data are cropped to the nominal window here (all three).
    3. Counts: :func:`counts` of each scan, independent draws in the order
       minus, zero, plus; a gain map given as a float is drawn once, before
       them, and shared by the three (it is the detector's).

    Parameters
    ----------
    case_planes : three arrays, or an object with ``minus``, ``zero``, ``plus``
        The scans recorded at ``-dz``, ``0``, ``+dz`` (a
        :class:`~flowtie_fast.simulation.simulate.SimulationCase` will do): 4D-STEM
        ``(Sy, Sx, Ky, Kx)`` or images ``(Ny, Nx)``, one shape, noise-free,
        with ``margin`` extra scan positions on each side when not periodic.
    rng : numpy.random.Generator
        Of the counts (unused without a dose).
    dose : float, optional
        e⁻/Å²; None: no counts, the noise-free intensities are returned
        (``gain_noise`` and ``gain_map`` must then be unset).
    gain_noise : float
        Relative standard deviation of one electron's signal (see :func:`counts`).
    gain_map : None, float or ndarray
        Flat-field error (see :func:`counts`).
    drift : array (3, 2), optional
        ``(dy, dx)`` per scan in scan pixels (minus, zero, plus); row 1 must be
        zero. A positive ``dy`` moves features to larger row indices.
    source_fwhm : float
        FWHM of the source's image on the specimen, Å (0: none).
    scan_step : float or (float, float)
        Å (the pixel size for images).
    periodic : bool
        Scans of whole periods (Fourier operations wrap around) or not (mirror
        extension, and a margin to drift into).
    margin : int
        Extra scan positions on each side (non-periodic only); at least the
        largest ``|drift|``.

    Returns
    -------
    planes : tuple of three ndarrays
        (minus, zero, plus), of the nominal window's shape; float32 and float64
        keep their dtype (counts: float32). Non-negative after a source blur or
        a sub-pixel drift (their interpolation is clipped at zero, as in
        :func:`drift`), so that they are valid intensities of a
        :class:`~flowtie_fast.triplet.FocalTriplet` without a dose too.
    applied : dict
        What was applied, in plain Python types for a manifest: ``order``,
        ``dose`` (e⁻/Å² or None), ``electrons_per_pattern``, ``gain_noise``,
        ``gain_map`` (relative standard deviation, or None), ``drift`` (3 x 2
        list, scan pixels), ``source_fwhm`` (Å), ``scan_step`` (Å),
        ``periodic``, ``margin``, ``shape``.
    """
    planes = _planes(case_planes)
    rng = _rng(rng)
    step = check_positive("scan_step", scan_step, pair=True)
    periodic = _bool("periodic", periodic)
    m = _margin(margin, periodic, planes[0].shape)
    shifts = _drift_rows(drift)
    fwhm = check_real("source_fwhm", source_fwhm, low=0.0)
    gain_noise = _spread("gain_noise", gain_noise, GAIN_NOISE_MAX)
    gmap = _check_gain_map(gain_map, planes[0].shape[-2:])
    if dose is None:
        if gain_noise > 0:
            raise InputError(f"gain_noise: needs a dose (no counts are drawn without one), "
                             f"got {gain_noise!r} with dose=None")
        if gmap is not None:
            raise InputError("gain_map: needs a dose (no counts are drawn without one), "
                             "got a gain map with dose=None")
    else:
        dose = check_positive("dose", dose)
    if not periodic:
        for row in shifts:
            if np.abs(row).max() > m:
                raise InputError(f"drift: expected |dy| and |dx| within the margin of {m} scan "
                                 f"pixels (non-periodic data), got {shifts.tolist()!r}")

    out = [_transform(p, fwhm, step, tuple(row), periodic, m) for p, row in zip(planes, shifts)]
    map_std = None
    if dose is not None:
        if isinstance(gmap, float):
            map_std = gmap
            gmap = _gain_map_draw(rng, gmap, out[0].shape[-2:])
        elif gmap is not None:
            map_std = float(gmap.std() / gmap.mean()) if gmap.mean() > 0 else 0.0
        out = [_counts(p, dose, step, rng, gain_noise, gmap, np.dtype(np.float32)) for p in out]
    applied = {
        "order": ["source_blur", "drift", "counts"],
        "dose": dose,
        "electrons_per_pattern": None if dose is None else dose * step[0] * step[1],
        "gain_noise": gain_noise,
        "gain_map": map_std,
        "drift": shifts.tolist(),
        "source_fwhm": fwhm,
        "scan_step": list(step),
        "periodic": periodic,
        "margin": m,
        "shape": list(out[0].shape),
    }
    return tuple(out), applied


def _range(name: str, value, *, log: bool):
    """``value`` of ``ranges[name]``: a number (fixed) or a pair ``(lo, hi)``."""
    if isinstance(value, (tuple, list, np.ndarray)):
        if len(value) != 2:
            raise InputError(f"ranges: {name!r} expected a number or a pair (low, high), "
                             f"got {value!r}")
        lo, hi = (check_real(f"ranges[{name!r}]", v, low=0.0, low_open=log) for v in value)
        if lo > hi:
            raise InputError(f"ranges: {name!r} expected low <= high, got {value!r}")
        return lo, hi
    v = check_real(f"ranges[{name!r}]", value, low=0.0, low_open=log)
    return v, v


def random_conditions(rng, ranges) -> dict:
    """One random set of acquisition conditions, as keyword arguments of
    :func:`apply`.

    Parameters
    ----------
    rng : numpy.random.Generator
    ranges : mapping
        Any of these keys (an absent key or None means no such effect):

        - ``"dose"``: ``(low, high)`` e⁻/Å², log-uniform (``exp(U(log low,
          log high))``), or one number;
        - ``"gain_noise"``: ``(low, high)``, uniform, or one number;
        - ``"gain_map"``: ``(low, high)`` relative standard deviation of the
          flat-field map, uniform, or one number;
        - ``"drift"``: the largest ``|shift|`` per axis in scan pixels: the
          minus and plus scans each get ``(dy, dx)`` uniform in
          ``[-max, max]``, independently; the in-focus scan none;
        - ``"source_fwhm"``: ``(low, high)`` Å, uniform, or one number.

        Draws are made in the order of the keys above (none for a fixed
        value), so the same seed and ranges give the same conditions. With
        non-periodic data, :func:`apply` needs a margin of at least the
        largest drift.

    Returns
    -------
    dict
        ``dose`` (float or None), ``gain_noise``, ``gain_map`` (float or None),
        ``drift`` ((3, 2) float array or None), ``source_fwhm``.
    """
    rng = _rng(rng)
    if not isinstance(ranges, Mapping):
        raise InputError(f"ranges: expected a mapping with keys among {CONDITIONS}, "
                         f"got {ranges!r}")
    unknown = [k for k in ranges if k not in CONDITIONS]
    if unknown:
        raise InputError(f"ranges: unknown conditions {unknown!r}; expected keys among "
                         f"{CONDITIONS}")
    out = {"dose": None, "gain_noise": 0.0, "gain_map": None, "drift": None, "source_fwhm": 0.0}
    for name in CONDITIONS:
        value = ranges.get(name)
        if value is None:
            continue
        if name == "drift":
            top = check_real("ranges['drift']", value, low=0.0)
            d = np.zeros((3, 2))
            d[[0, 2]] = rng.uniform(-top, top, size=(2, 2))
            out[name] = d
            continue
        lo, hi = _range(name, value, log=name == "dose")
        if lo == hi:
            out[name] = lo
        elif name == "dose":
            out[name] = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        else:
            out[name] = float(rng.uniform(lo, hi))
    return out
