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

import numpy as np

from .backend import array_module, is_cupy
from .errors import RANGES, InputError, check_real, is_number

__all__ = ["check_gradient", "check_image", "check_intensity_stats", "check_not_masked",
           "check_positions", "focal_weights"]


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
    """The variance of an image's values (NumPy or CuPy), in float64."""
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
        except (TypeError, ValueError) as exc:
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
