"""Measured planes: the checks every entry point applies, and the focal weights.

Intensities reach the solvers from a :class:`~flowtie_fast.triplet.FocalSeries`,
a :class:`~flowtie_fast.plan.Plan`'s bare arrays or a batch; each goes
through the same checks here (:func:`check_image`,
:func:`check_intensity_stats`, :func:`check_gradient`). :func:`focal_weights`
gives the least-squares rows that turn planes at positions ``z`` (Å) into the
intensity and its focal derivative at ``z0``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import _numpy_kernels
from .backend import array_module, is_cupy, to_host
from .errors import RANGES, InputError, TrustWarning, check_real, is_number, user_stacklevel

__all__ = ["check_gradient", "check_image", "check_intensity_stats", "check_not_masked",
           "check_positions", "focal_weights", "screen_planes"]


def check_image(name: str, a, shape=None):
    """Validate one real 2-D image and return it as an array (NumPy or CuPy, no copy
    where possible); raise :class:`InputError` naming ``name`` otherwise.

    Parameters
    ----------
    name : str
        How messages name the image.
    a : array-like (Ny, Nx)
        The image: a CuPy array, or anything ``np.asarray`` reads (not a
        masked array), of a real dtype (integer or floating), at least 2
        pixels along each axis. Its values are not checked here.
    shape : (int, int), optional
        The shape it must have (default None: any).

    Returns
    -------
    array (Ny, Nx)
        ``a`` as a NumPy array (``np.asarray``), or the CuPy array itself.

    Raises
    ------
    InputError
        Where ``a`` is None, masked, unreadable, complex or not numeric, not
        2-D, under 2 pixels along an axis, or not of ``shape``.
    """
    if a is None:
        raise InputError(f"{name}: expected a 2-D real array, got None")
    check_not_masked(name, a)
    if not is_cupy(a):
        try:
            a = np.asarray(a)
        except Exception as exc:  # unreadable array-likes
            raise InputError(f"{name}: could not be read as an array ({exc})") from exc
    kind = a.dtype.kind
    if kind == "c":
        raise InputError(f"{name}: expected real intensities, got complex dtype {a.dtype}")
    if kind not in "uif":
        raise InputError(f"{name}: expected a real numeric dtype, got {a.dtype}")
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (Ny, Nx), got shape {tuple(a.shape)}")
    if min(a.shape) < 2:
        raise InputError(f"{name}: expected at least 2 pixels along each axis, got {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)} like the other planes, "
                         f"got {tuple(a.shape)}")
    return a



def check_not_masked(name: str, a) -> None:
    """Refuse a NumPy masked array: the solvers would read the values under its
    mask as data.

    Parameters
    ----------
    name : str
        How the message names the array.
    a : object
        The array given.

    Raises
    ------
    InputError
        Where ``a`` is a :class:`numpy.ma.MaskedArray`.
    """
    if isinstance(a, np.ma.MaskedArray):
        raise InputError(f"{name}: masked arrays are not supported (the mask would be "
                         "ignored); fill the masked pixels, e.g. a.filled(a.mean())")



#: The largest ratio of two planes' mean intensities in one focal series
#: beyond which, where the difference is also beyond their noise
#: (:data:`FLUX_SIGMAS`), the planes are refused. Propagation conserves the
#: flux: the planes of a series share one mean but for the drift of the beam
#: current between exposures and their noise (4D-STEM bright fields of the
#: simulated corpus at 1e3 e/Å² differ by up to a factor 1.7, at 1e2 e/Å² by
#: more than 2, from counting noise alone); beyond both, a plane is in other
#: units or of another exposure, and the focal derivative would take the
#: difference of scales for a transport of intensity.
FLUX_RATIO = 2.0
#: The difference of two planes' sums, in standard deviations of it that the
#: planes' own pixel variance allows (``√(N (var₁ + var₂))``: an upper bound
#: of their noise, image structure included), beyond which it is not noise.
FLUX_SIGMAS = 5.0


def check_intensity_stats(names, stats, planes) -> None:
    """The one validation of measured intensities, for every entry point.

    ``stats`` holds each plane's number of negative values and its sum (N x 2,
    from :meth:`~flowtie_fast.backend.Backend.plane_stats`). Refused, with
    :class:`InputError` naming the plane: NaN or Inf, a negative value (an
    intensity is a count or a sum of counts; the TIE and its solvers need
    ``I >= 0``), a plane that is zero everywhere (a dropped frame), and
    planes whose mean intensities differ by more than :data:`FLUX_RATIO`
    and by more than :data:`FLUX_SIGMAS` times what their pixel variance
    allows (one in other units, or of another exposure; sparse counts may
    differ by more from noise alone).

    Parameters
    ----------
    names : sequence of str
        How messages name the planes, one per plane.
    stats : ndarray (N, 2) of float64
        Per plane, the number of negative values and the sum.
    planes : sequence of N arrays (Ny, Nx)
        The planes; read only to report the lowest value of a plane with
        negative values, and for the variance of two planes whose means
        differ by more than :data:`FLUX_RATIO`.

    Raises
    ------
    InputError
        Where a plane holds NaN or Inf, a negative value, or is zero
        everywhere, or two planes' means differ beyond
        :data:`FLUX_RATIO` and their noise.
    """
    for i, name in enumerate(names):
        negatives, total = stats.item(i, 0), stats.item(i, 1)
        if not math.isfinite(total):
            raise InputError(f"{name}: contains NaN or Inf")
        if negatives:
            low = float(planes[i].min())
            raise InputError(f"{name}: expected non-negative intensities, got {negatives:.0f} "
                             f"negative values, the lowest {low:g} (subtract less background, "
                             "or clip at 0)")
        if total == 0:
            raise InputError(f"{name}: intensity is zero everywhere (a dropped frame?)")
    totals = stats[:, 1].tolist()
    if max(totals) > FLUX_RATIO * min(totals):  # rare: the variances only then
        hi, lo = totals.index(max(totals)), totals.index(min(totals))
        size = planes[hi].size
        spread = math.sqrt(size * (_variance(planes[hi]) + _variance(planes[lo])))
        if totals[hi] - totals[lo] > FLUX_SIGMAS * spread:
            other = names[lo].rsplit(": ", 1)[-1]  # "stack[i]: minus" is named once
            raise InputError(f"{names[hi]}: a mean intensity {totals[hi] / totals[lo]:.3g} "
                             f"times that of {other} ({totals[hi] / size:.4g} against "
                             f"{totals[lo] / size:.4g}), far beyond their noise; propagation "
                             "conserves the flux, so the planes of one focal series share "
                             "about one mean: is one in other units, or of another exposure? "
                             "Scale them to one (e.g. divide each by its mean)")


def _variance(a) -> float:
    """The variance of an image's values (NumPy or CuPy), in float64 (inf
    where its squares pass float64's range, without NumPy's warning)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return float(array_module(a).var(a, dtype=np.float64))




#: rad/Å: the largest measured phase gradient taken at any energy. 2π × a
#: centre of mass of the electron's whole wavenumber (1/λ, 50 1/Å at 300 kV)
#: is a few hundred.
GRADIENT_LIMIT = 1e4
#: rad: the largest deflection ``|∇φ| / k`` a measured phase gradient may
#: imply (``k = 2π/λ``): a centre of mass at a radian is beyond any probe's
#: convergence and any pixelated detector's reach (one sparse pattern's centre
#: of mass can sit at the detector's edge, some hundreds of mrad out; a
#: bright-field disk beyond 500 mrad is refused as well). A gradient in other
#: units (1/Å without the 2π, per nm, ...) or scaled by a slip of 1000 reaches
#: it first.
MAX_DEFLECTION = 1.0


def gradient_limit(wavenumber=None) -> float:
    """The largest measured phase gradient taken, rad/Å: :data:`GRADIENT_LIMIT`,
    or at the wavenumber ``k`` (rad/Å) the smaller :data:`MAX_DEFLECTION` ×
    ``k`` (319 rad/Å at 300 keV, 129 at 60 keV)."""
    return GRADIENT_LIMIT if wavenumber is None else min(GRADIENT_LIMIT,
                                                        MAX_DEFLECTION * float(wavenumber))


def check_gradient_peak(g, wavenumber=None) -> None:
    """:class:`InputError` naming ``gradient`` where a checked gradient
    (:func:`check_gradient`) exceeds :func:`gradient_limit` anywhere (one pass
    for its maximum, one for its minimum)."""
    peak = max(abs(float(g.max())), abs(float(g.min())))
    limit = gradient_limit(wavenumber)
    if peak <= limit:
        return
    if wavenumber is None or limit == GRADIENT_LIMIT:
        why = "a phase gradient is a few rad/Å: 2π × a centre of mass within the detector"
    else:
        why = (f"it would deflect the electron by {peak / float(wavenumber):.3g} rad "
               f"(|∇φ| / k, k = {float(wavenumber):.4g} rad/Å), beyond the "
               f"{MAX_DEFLECTION:g} rad any centre of mass reaches")
    raise InputError(f"gradient: values up to {peak:.3g} rad/Å, expected at most {limit:.4g} "
                     f"({why}); check its units (rad/Å: 2π × the centre of mass in 1/Å), or "
                     "rescale it")


def check_gradient(g, shape):
    """A measured phase gradient (2, Ny, Nx) in rad/Å: a real, finite array of
    images of ``shape`` (NumPy or CuPy, returned without a copy where possible);
    :class:`InputError` naming ``gradient`` otherwise. Finiteness is one sum in
    the array's own dtype (no temporary: a Plan calls this on every icom solve),
    confirmed element by element only where the sum is not finite (it may
    merely have overflowed).

    Parameters
    ----------
    g : array-like (2, Ny, Nx)
        The gradient in rad/Å, ``(d/d axis 0, d/d axis 1)``: a CuPy array or
        anything ``np.asarray`` reads (not a masked array), of a real dtype.
    shape : (int, int)
        The shape (Ny, Nx) of the images.

    Returns
    -------
    array (2, Ny, Nx)
        ``g`` as a NumPy array (``np.asarray``), or the CuPy array itself.

    Raises
    ------
    InputError
        Where ``g`` is masked, unreadable, not real, not of shape
        ``(2,) + shape``, holds NaN or Inf, or (a floating dtype wider than
        float32) holds values beyond float32's range.
    """
    want = (2,) + tuple(shape)
    check_not_masked("gradient", g)
    if not is_cupy(g):
        try:
            g = np.asarray(g)
        except Exception as exc:  # unreadable array-likes (a lazy file's read error)
            raise InputError(f"gradient: could not be read as an array ({exc})") from exc
    if g.dtype.kind not in "uif" or tuple(g.shape) != want:
        raise InputError(f"gradient: expected a real array of shape {want} (rad/Å), got "
                         f"{g.dtype} {tuple(g.shape)}")
    if not math.isfinite(float(g.sum())) and not bool(array_module(g).isfinite(g).all()):
        raise InputError("gradient: contains NaN or Inf")
    if g.dtype.kind == "f" and g.dtype.itemsize > 4:
        # Finite values beyond float32 become Inf in a float32 solve (said to be
        # NaN or Inf there); no phase gradient in rad/Å comes near them.
        peak = max(abs(float(g.max())), abs(float(g.min())))
        if peak > _FLOAT32_MAX:
            raise InputError(f"gradient: values up to {peak:g} exceed the range of float32 "
                             f"({_FLOAT32_MAX:.3g}); a phase gradient is a few rad/Å: check "
                             "its units, or rescale it")
    return g



_FLOAT32_MAX = float(np.finfo(np.float32).max)



def check_positions(name: str, z, count=None) -> np.ndarray:
    """Plane positions in Å: a sequence (or 1-D array) of real numbers, not
    bools or strings (``np.asarray`` would read ``False`` as 0 and ``"-40"`` as
    -40); ``count`` of them when given. Returned as float64;
    :class:`InputError` naming ``name`` otherwise (finiteness and spacing are
    checked by the callers).

    Parameters
    ----------
    name : str
        How messages name the positions.
    z : sequence of float or ndarray
        The positions in Å: a list, tuple or range of real numbers (NumPy
        scalars and 0-d arrays included), or a NumPy array of an integer or
        floating dtype (flattened).
    count : int, optional
        How many there must be (default None: any number).

    Returns
    -------
    ndarray (N,) of float64
        The positions in Å.

    Raises
    ------
    InputError
        Where ``z`` is of another type, holds a bool, a string or another
        non-real item, or does not hold ``count`` values.
    """
    want = f"{count} " if count is not None else ""
    bad = InputError(f"{name}: expected {want}plane positions in Å (real numbers), got "
                     f"{_shown(z)}")
    if isinstance(z, np.ndarray):
        if z.dtype.kind not in "iuf":
            raise bad
        values = z
    elif isinstance(z, (list, tuple, range)):
        for v in z:
            if isinstance(v, np.ndarray) and v.ndim == 0:
                v = v[()]
            if not is_number(v):
                raise bad
        values = z
    else:
        raise bad
    try:
        z = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad from exc
    if count is not None and z.size != count:
        raise bad
    return z



def _shown(v) -> str:
    """``repr(v)`` on one line (whitespace runs collapsed), at most 80 characters."""
    text = " ".join(repr(v).split())
    return text if len(text) <= 80 else text[:77] + "..."



def focal_weights(z, z0: float = 0.0, degree: int | None = None):
    """Least-squares (Savitzky-Golay) weights for the value and the derivative at ``z0``.

    Fits a polynomial of ``degree`` (default ``min(2, N - 1)``) to N samples at
    ``z`` and returns the rows that map the samples to its value and to its
    first derivative at ``z0``. For three planes at ``(-dz, 0, dz)`` this is
    ``I(0)`` and ``(I+ - I-) / (2 dz)``; for uneven spacing the exact
    three-point derivative of the interpolating parabola.

    Parameters
    ----------
    z : sequence of float
        Plane positions in Å, at least 1e-3 Å apart and within 1e8 Å of
        ``z0`` (as :class:`~flowtie_fast.triplet.FocalSeries` holds them).
    z0 : float
        Where to evaluate, in Å (default 0).
    degree : int, optional
        Polynomial degree, 1 <= degree < N (default ``min(2, N - 1)``).

    Returns
    -------
    value : ndarray
        Weight row of length N that maps the samples to the value at ``z0``
        (dimensionless).
    derivative : ndarray
        Weight row of length N that maps the samples to the derivative at
        ``z0``, in 1/Å.
    """
    z = check_positions("z", z)
    z0 = check_real("z0", z0)
    n = z.size
    if n < 2:  # a derivative needs two planes at least, whatever the degree
        raise InputError(f"z: expected the positions of at least two planes (Å), got "
                         f"{z.tolist()}")
    if degree is None:
        degree = min(2, n - 1)
    if not 1 <= degree < n:
        raise InputError(f"degree: expected 1 <= degree < {n} (number of planes), got {degree}")
    if not (np.all(np.isfinite(z)) and np.isfinite(z0)):
        raise InputError(f"z: expected finite plane positions in Å, got {z.tolist()} "
                         f"(z0 = {z0})")
    if np.unique(z).size != n:
        raise InputError(f"z: expected distinct plane positions, got {z.tolist()}")
    lo, hi = RANGES["dz"][:2]  # as FocalSeries: planes closer than this are one plane
    if np.diff(np.sort(z)).min() < lo or np.abs(z - z0).max() > hi:
        raise InputError(f"z: expected planes {lo:g} to {hi:g} Å apart and from z0, got "
                         f"{z.tolist()} with z0 = {z0:g}")
    scale = np.max(np.abs(z - z0))
    t = (z - z0) / scale
    vander = np.vander(t, degree + 1, increasing=True)
    pinv = np.linalg.pinv(vander)
    return pinv[0], pinv[1] / scale



#: The least departure from its neighbours, in estimated noise standard
#: deviations, at which a pixel is an outlier (:func:`screen_planes`): the
#: in-focus bright fields of thick crystals of the corpus hold single pixels
#: (atomic columns) up to about 11 σ above all their neighbours that the
#: defocused planes blur (at 8 σ, 5 of 2150 right corpus triplets were
#: flagged).
SPIKE_SIGMAS = 20.0
#: An isolated pixel is flagged where it departs from all its 8 neighbours by
#: more than this times ``√N σ`` (N pixels, σ the plane's noise estimate):
#: a departure δ carries about ``δ²`` of the focal derivative's power, the
#: plane's noise ``N σ²`` (both white), so a flagged pixel holds more than
#: ``SPIKE_SHARE²`` (1 %) of the noise's share of the phase error. On the
#: README's Gaussian a pixel of ``plus`` 20 times too bright took the NMSE from
#: 3e-9 to 55; at 256² px the threshold is 25.6 σ (at least
#: :data:`SPIKE_SIGMAS`, which rules below 200² px).
SPIKE_SHARE = 0.1
#: A plane's noise estimate is taken as at most this times the median of the
#: planes' estimates: outliers inflate their own plane's estimate, and the
#: planes of one series share their noise but for their contrast.
SCALE_SPREAD = 3.0
#: In a plane of sparse counts (:data:`SPARSE_ZEROS`), the least departure in
#: multiples of its smallest positive value (one count, times any scale): a
#: pixel 4 counts above all its neighbours is a Poisson draw of a mean under
#: 0.05 count a pixel at a chance under 3e-9 (the noise estimate of sparse
#: counts is about √(mean), far below one count: 1- and 2-count pixels of
#: 1e2 e/Å² bright fields were flagged without this floor).
SPARSE_QUANTA = 4.0
#: The share of zeros from which a plane is taken as sparse counts (a Poisson
#: mean under 4.6 a pixel); fewer are dead pixels.
SPARSE_ZEROS = 0.01
#: Above this share of a plane's pixels (and 16 pixels), flagged pixels are
#: reported but not replaced: so many are not isolated defects.
MAX_REPAIR = 1e-3
#: Positive values (at most a row's or column's length, of at least
#: :data:`ZERO_LINE_MIN`) another plane must hold along a row or column that is
#: exactly zero in one plane for it to be refused: under Poisson statistics the
#: chance of an empty line of such a mean is below ``exp(-ZERO_POSITIVES / 2)``
#: (means within :data:`FLUX_RATIO`).
ZERO_POSITIVES = 64
ZERO_LINE_MIN = 16
#: Side (px) of the aligned tiles in which an exactly zero block is sought: a
#: tile zero in one plane where another plane's same tile is positive at every
#: pixel (a block of at least ``2 ZERO_TILE - 1`` px a side holds one).
ZERO_TILE = 8


def screen_stats(a) -> tuple:
    """One plane's figures for :func:`screen_planes` (NumPy or CuPy):
    :func:`flowtie_fast._numpy_kernels.screen_stats`."""
    return _numpy_kernels.screen_stats(a)


def spike_thresholds(shape, screen) -> np.ndarray:
    """Per plane, the departure from its neighbours beyond which a pixel is an
    outlier, in the planes' unit: ``max(SPIKE_SIGMAS, SPIKE_SHARE √N) σ``, with
    σ the plane's noise estimate (the RMS of its neighbours' differences along
    axis 1 over √2, at most :data:`SCALE_SPREAD` times the planes' median
    where that is positive).

    Parameters
    ----------
    shape : (int, int)
        The planes' shape (Ny, Nx).
    screen : ndarray (N, 3)
        Per plane, :func:`screen_stats`.

    Returns
    -------
    list of N float
        The thresholds (intensity units).
    """
    ny, nx = shape
    # Python floats: a Plan calls this at every solve, and NumPy's calls on
    # three numbers cost more than the arithmetic
    sigma = [math.sqrt(max(v, 0.0) / (2.0 * ny * (nx - 1))) for v in screen[:, 1].tolist()]
    middle = sorted(sigma)[len(sigma) // 2] if len(sigma) % 2 else float(np.median(sigma))
    if middle > 0:
        sigma = [min(v, SCALE_SPREAD * middle) for v in sigma]
    factor = max(SPIKE_SIGMAS, SPIKE_SHARE * math.sqrt(ny * nx))
    return [factor * v for v in sigma]


def screen_planes(names, planes, screen=None, *, repair=True, where="the record"):
    """The check of planes for defects confined to one plane, for every entry
    point: refuse exactly zero rows, columns or blocks of one plane where
    another holds signal, and replace isolated outlying pixels of one plane.

    ``screen`` (one pass over each plane: :func:`screen_stats`, or a
    backend's kernel) says whether a plane holds a value at or below zero,
    and whether its differences of neighbours along axis 1 have a fourth
    moment that a pixel beyond its neighbours by the plane's threshold
    (:func:`spike_thresholds`, T) would give: such a pixel adds at least
    ``2 T⁴`` to the sum of fourth powers, of which ``T⁴`` must remain above
    the ``3 (Σd²)² / M`` of Gaussian differences (M of them). Only then are
    the planes examined further; the common case costs that pass alone.

    - A row or column of one plane that is exactly zero (the planes are
      non-negative: checked before) where another plane holds at least
      :data:`ZERO_POSITIVES` positive values along it (its whole length
      where shorter; lines of :data:`ZERO_LINE_MIN` px or more), or an
      aligned :data:`ZERO_TILE`² tile exactly zero where another plane is
      positive at every pixel of it, is not an intensity (a readout that
      stopped, a dead row, a frame or file cut short): :class:`InputError`.
    - A pixel of one plane above all its 8 neighbours (or below all) by more
      than the plane's threshold (in a plane of sparse counts, at least
      :data:`SPARSE_QUANTA` times its smallest positive value), where no
      other plane departs from the median of its own neighbours there by
      half its threshold (a cosmic ray, a hot or dead pixel, not
      structure), is replaced by the median of its 8 neighbours in a copy
      of the plane (the planes given are not written), with a
      :class:`TrustWarning` naming the plane, the count and the worst pixel;
      more than :data:`MAX_REPAIR` of a plane's pixels are reported and not
      replaced.

    Parameters
    ----------
    names : sequence of str
        How messages name the planes.
    planes : sequence of N arrays (Ny, Nx)
        The planes (NumPy or CuPy), finite and non-negative.
    screen : ndarray (N, 3), optional
        Per plane, :func:`screen_stats` (default: computed here).
    repair : bool
        Whether to look for outlying pixels at all (default True; False: the
        refusals only, for planes no solve reads).
    where : str
        Where the caller keeps the record, for the warning (e.g.
        ``"triplet.plane_defects"``).

    Returns
    -------
    planes : list of arrays
        The planes, a copy of each one with replaced pixels.
    record : dict or None
        None where nothing was found; else ``"pixels"`` (per plane name, the
        flagged pixels as ``[row, column, value, median of its neighbours]``,
        the planes' unit), ``"repaired"`` (whether they were replaced) and
        ``"why"`` (the warning's message).

    Raises
    ------
    InputError
        Where a row, column or block of one plane is exactly zero where
        another plane holds signal.
    """
    planes = list(planes)
    if screen is None or not np.isfinite(screen).all():  # a kernel's float32 sums overflowed
        screen = np.array([screen_stats(p) for p in planes], dtype=np.float64)
    figures = screen.tolist()
    for k, (zeros, _, _) in enumerate(figures):
        if zeros > 0:
            _check_zero_regions(names, planes, k)
    if not repair:
        return planes, None
    limit = spike_thresholds(planes[0].shape, screen)
    spiky = _spiky(planes[0].shape, figures, limit)
    if not spiky:
        return planes, None
    return _repair_spikes(names, planes, limit, spiky, where)


def _spiky(shape, figures, limit) -> list:
    """The planes whose fourth moment of neighbours' differences a pixel
    beyond its neighbours by the plane's threshold would give
    (:func:`screen_planes`): their indices. ``figures``: per plane,
    :func:`screen_stats` (a list of 3 floats); ``limit``: the thresholds."""
    pairs = shape[0] * (shape[1] - 1)
    spiky = []
    for k, (_, s2, s4) in enumerate(figures):
        if not limit[k] > 0:
            continue
        if not (math.isfinite(s2) and math.isfinite(s4)) or limit[k] > _POW4_MAX:
            spiky.append(k)  # sums or powers beyond float64: examined pixel by pixel
        elif not s4 - 3.0 * s2 * s2 / pairs <= limit[k] ** 4:
            spiky.append(k)
    return spiky


#: The largest threshold whose fourth power float64 holds.
_POW4_MAX = 1e76


def _runs(indices) -> str:
    """Sorted indices as runs, ``"3, 40-47"`` (the first four runs)."""
    runs, start = [], None
    for i, v in enumerate(indices):
        if start is None:
            start = v
        if i + 1 == len(indices) or indices[i + 1] != v + 1:
            runs.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")


def _check_zero_regions(names, planes, k) -> None:
    """:class:`InputError` where plane ``k`` is exactly zero along a row, a
    column or an aligned tile where another plane holds signal
    (:func:`screen_planes`). The other planes are read only along the lines
    and tiles that are zero in plane ``k``."""
    mine = to_host(planes[k]) > 0  # no float64 copy: every solve
    others = [(j, planes[j]) for j in range(len(planes)) if j != k]
    ny, nx = mine.shape
    for axis, line, length in ((1, "row", nx), (0, "column", ny)):
        if length < ZERO_LINE_MIN:
            continue
        dead = np.flatnonzero(~mine.any(axis=axis))
        if not dead.size:
            continue
        need = min(ZERO_POSITIVES, length)
        for j, other in others:
            lines = to_host(other[dead] if axis == 1 else other[:, dead]) > 0
            held = lines.sum(axis=axis)
            bad = held >= need
            if bad.any():
                rows = dead[bad]
                raise InputError(
                    f"{names[k]}: {line}{'s' if rows.size > 1 else ''} "
                    f"{_runs(rows.tolist())} ({rows.size} of {ny if axis == 1 else nx}, "
                    f"{100 * rows.size / (ny if axis == 1 else nx):.3g} %) exactly zero where "
                    f"{_short(names[j])} holds signal ({int(held[bad].min())} or more "
                    f"positive values of {length}): a readout that stopped, a dead "
                    f"{line} or a frame or file cut short, not an intensity (the phase "
                    "would be wrong everywhere); check the frame or the file")
    t = ZERO_TILE
    if ny < 2 * t or nx < 2 * t:
        return
    cy, cx = ny // t * t, nx // t * t
    if t == 8:  # a tile's row of 8 bools is one 64-bit word: 25x faster than any(axis=(1, 3))
        words = np.ascontiguousarray(mine[:cy, :cx]).view(np.uint64)
        dead = ~(words.reshape(cy // t, t, cx // t) != 0).any(axis=1)
    else:
        dead = ~mine[:cy, :cx].reshape(cy // t, t, cx // t, t).any(axis=(1, 3))
    if not dead.any():
        return
    ty, tx = np.nonzero(dead)
    for j, other in others:
        tiles = to_host(other)[:cy, :cx].reshape(cy // t, t, cx // t, t)[ty, :, tx, :]
        bad = (tiles > 0).all(axis=(1, 2))
        if bad.any():
            rows, cols = ty[bad], tx[bad]
            r0, r1 = rows.min() * t, rows.max() * t + t - 1
            c0, c1 = cols.min() * t, cols.max() * t + t - 1
            raise InputError(
                f"{names[k]}: {int(bad.sum())} blocks of {t}x{t} px within rows {r0}-{r1}, "
                f"columns {c0}-{c1} ({100 * bad.sum() * t * t / (ny * nx):.3g} % of the "
                f"image) exactly zero where {_short(names[j])} is positive at every pixel: "
                "a frame or file cut short or a dead region of the camera, not an "
                "intensity (the phase would be wrong everywhere); check the frame or the file")


def _short(name: str) -> str:
    """A plane's name without its prefix (``"stack[2]: minus"`` -> ``"minus"``)."""
    return name.rsplit(": ", 1)[-1]


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def neighbours(a, rows, cols) -> np.ndarray:
    """The 8 neighbours (K, 8) of pixels ``(rows, cols)`` of the float64 array
    ``a``, NaN beyond its edges.

    Parameters
    ----------
    a : ndarray (Ny, Nx) of float64
        The image (host memory).
    rows, cols : ndarray of int (K,)
        The pixels.

    Returns
    -------
    ndarray (K, 8) of float64
    """
    ny, nx = a.shape
    out = np.full((rows.size, 8), np.nan)
    for n, (dy, dx) in enumerate(_OFFSETS):
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
        out[inside, n] = a[r[inside], c[inside]]
    return out


def _candidates(a, limit):
    """Pixels of ``a`` beyond their two neighbours along axis 1 by ``limit``
    (both above, or both below; one neighbour at an edge)."""
    d = np.diff(a, axis=1)
    up, down = d > limit, d < -limit  # the right neighbour above, below by the limit
    beyond = np.zeros(a.shape, bool)
    beyond[:, 0] = up[:, 0] | down[:, 0]
    beyond[:, -1] |= up[:, -1] | down[:, -1]
    if a.shape[1] > 2:
        beyond[:, 1:-1] |= (down[:, :-1] & up[:, 1:]) | (up[:, :-1] & down[:, 1:])
    return np.nonzero(beyond)


def repair_limit(shape) -> float:
    """The most isolated pixels of one plane of ``shape`` (Ny, Nx) that
    :func:`screen_planes` replaces: :data:`MAX_REPAIR` of its pixels, and at
    least 16; beyond, they are reported and not replaced."""
    ny, nx = shape
    return max(16, MAX_REPAIR * ny * nx)


def outlying_pixels(planes) -> list:
    """Per plane, the isolated outlying pixels :func:`screen_planes` would
    replace (above all their 8 neighbours, or below all, by more than the
    plane's threshold, in that plane alone), found without a warning or a
    refusal: ``(rows, cols)`` index arrays, empty where there are none.

    For statistics that one such pixel would bias (the mean electrons per
    pattern of :func:`~flowtie_fast.stem.focal.flux_record`: one pattern of
    4096 hit by a cosmic ray moves it by a share that enters the focal
    derivative whole).

    Parameters
    ----------
    planes : sequence of arrays (Ny, Nx)
        Finite images of one shape (NumPy or CuPy), at least 2 px a side.

    Returns
    -------
    list of (ndarray, ndarray)
        One ``(rows, cols)`` per plane.
    """
    planes = list(planes)
    none = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    shape = tuple(planes[0].shape)
    if min(shape) < 2:
        return [none for _ in planes]
    screen = np.array([screen_stats(p) for p in planes], dtype=np.float64)
    limit = spike_thresholds(shape, screen)
    spiky = _spiky(shape, screen.tolist(), limit)
    found = _find_spikes(planes, limit, spiky)[0] if spiky else {}
    return [found[k][:2] if k in found else none for k in range(len(planes))]


def _find_spikes(planes, limit, spiky):
    """The isolated outlying pixels of the planes ``spiky``: per plane index,
    ``(rows, cols, values, medians of their 8 neighbours)``; and the
    thresholds used (raised for sparse counts)."""
    host = [np.asarray(to_host(p), np.float64) for p in planes]
    limit = list(limit)
    for k, a in enumerate(host):  # sparse counts: at least SPARSE_QUANTA counts
        positive = a[a > 0]
        if 0 < positive.size <= (1 - SPARSE_ZEROS) * a.size:
            limit[k] = max(limit[k], SPARSE_QUANTA * float(positive.min()))
    found = {}
    for k in spiky:
        rows, cols = _candidates(host[k], limit[k])
        near = neighbours(host[k], rows, cols)
        value = host[k][rows, cols]
        hot = (value - np.nanmax(near, axis=1) > limit[k]) | (
            np.nanmin(near, axis=1) - value > limit[k])
        for j in range(len(planes)):  # structure shows in the other planes too
            if j != k and hot.any():
                theirs = np.abs(host[j][rows, cols] - np.nanmedian(
                    neighbours(host[j], rows, cols), axis=1))
                hot &= theirs <= limit[j] / 2
        if hot.any():
            median = np.nanmedian(near[hot], axis=1)
            found[k] = (rows[hot], cols[hot], value[hot], median)
    return found, limit


def _repair_spikes(names, planes, limit, spiky, where):
    """Find, replace and report the isolated outlying pixels of the planes
    ``spiky`` (:func:`screen_planes`)."""
    (found, limit), out = _find_spikes(planes, limit, spiky), list(planes)
    if not found:
        return planes, None
    most = repair_limit(planes[0].shape)
    repaired = all(v[0].size <= most for v in found.values())
    parts = []
    for k, (rows, cols, value, median) in found.items():
        w = int(np.argmax(np.abs(value - median)))
        factor = (f"{value[w] / median[w]:.3g} times" if median[w] > 0
                  else "against 0 for")
        parts.append(f"{names[k]}: {rows.size} isolated pixel{'s' if rows.size > 1 else ''} "
                     f"far from {'their' if rows.size > 1 else 'its'} neighbours, in this "
                     f"plane alone (the worst at row {rows[w]}, column {cols[w]}: {value[w]:.4g}"
                     f", {factor} the median of its 8 neighbours, {median[w]:.4g}; "
                     f"the threshold {limit[k]:.3g})")
        if repaired:
            fixed = planes[k].copy()
            kind = np.dtype(fixed.dtype).kind
            for r, c, m in zip(rows.tolist(), cols.tolist(), median.tolist()):
                fixed[r, c] = round(m) if kind in "iu" else m
            out[k] = fixed
    action = ("replaced by the median of their neighbours" if repaired else
              f"not replaced: more than {MAX_REPAIR:.1%} of a plane's pixels are not isolated "
              "defects")
    why = ("; ".join(parts) + f": cosmic rays, hot or dead pixels? {action} ({where}); "
           "check the camera's frames if they recur")
    record = {"pixels": {names[k]: np.stack(v, axis=1).tolist() for k, v in found.items()},
              "repaired": repaired, "why": why}
    warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
    return out, record
