"""Rotation calibration: the detector-to-scan rotation and flip of the centre of mass.

A phase gradient has no curl, so the rotation (and transpose) that makes the
centre-of-mass field curl-free is the one between detector and scan axes
(:func:`calibrate_rotation`); :func:`rotate_com` applies it. Angles are in
degrees.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import array_module
from ..errors import InputError, check_real
from .detector import _to_numpy

__all__ = ["calibrate_rotation", "rotate_com"]

#: The finest coarse-search step of :func:`calibrate_rotation`, in degrees: the
#: search tries 180 / step angles for each handedness (a step of 1e-9 asked for
#: 1.3 TiB), and the golden-section refinement that follows resolves far below it.
MIN_STEP_DEGREES = 0.01


def rotate_com(com, degrees: float, flip: bool):
    """COM vectors from detector axes to scan axes: optional transpose, then rotation.

    Parameters
    ----------
    com : array (2, Sy, Sx)
        Centre of mass (NumPy or CuPy); not modified.
    degrees : float
        Rotation in degrees.
    flip : bool
        Transpose the detector axes before rotating.

    Returns
    -------
    array (2, Sy, Sx)
        A new array.
    """
    if not isinstance(flip, (bool, np.bool_)):
        raise InputError(f"flip: expected True or False, got {flip!r}")
    degrees = check_real("degrees", degrees)
    _check_com_shape("com", com)
    return _rotate(com, degrees, bool(flip))


def _check_com_shape(name, com):
    shape = getattr(com, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] != 2:
        got = f"shape {tuple(shape)}" if shape is not None else type(com).__name__
        raise InputError(f"{name}: expected an array (2, Sy, Sx), got {got}")


def _rotate(com, degrees, flip):
    xp = array_module(com)
    c = com[::-1] if flip else com
    t = math.radians(degrees)
    return xp.stack([math.cos(t) * c[0] - math.sin(t) * c[1],
                     math.sin(t) * c[0] + math.cos(t) * c[1]])



def _curl_energy(com):
    gy, gx = com
    dgx_dy = np.roll(gx, -1, 0) - np.roll(gx, 1, 0)
    dgy_dx = np.roll(gy, -1, 1) - np.roll(gy, 1, 1)
    return float(np.mean((dgx_dy - dgy_dx) ** 2))



def calibrate_rotation(com, reference_gradient=None, step_degrees: float = 1.0):
    """Detector rotation (degrees) and flip that make the COM field curl-free.

    A phase gradient has no curl, so the right rotation minimises the mean
    squared curl (as py4DSTEM and LiberTEM do); a coarse search over 0–180°
    for both handednesses is refined by golden section. The curl cannot tell
    θ from θ + 180°: ``reference_gradient`` (e.g. the gradient of a TIE
    phase, rad/Å) picks the one that agrees with it; without it the answer
    lies in [0, 180).

    Parameters
    ----------
    com : array (2, Sy, Sx)
        Centre of mass in 1/Å, in detector axes (NumPy or CuPy).
    reference_gradient : array (2, Sy, Sx), optional
        A phase gradient in rad/Å in scan axes that resolves the 180°
        ambiguity.
    step_degrees : float
        Step of the coarse search in degrees (default 1), from
        :data:`MIN_STEP_DEGREES` (0.01) to 90.

    Returns
    -------
    rotation : float
        Detector-to-scan rotation in degrees, in [0, 360) with
        ``reference_gradient``, else in [0, 180).
    flip : bool
        Whether the detector axes are to be transposed before rotating.

    Raises
    ------
    InputError
        Where ``com`` is not a finite real array (2, Sy, Sx) of at least 3
        scan positions a side (the curl is a central difference),
        ``step_degrees`` lies outside [0.01, 90], or ``reference_gradient``
        does not match ``com``.
    """
    if hasattr(com, "shape"):
        _check_com_shape("com", com)
    com = _to_numpy(com)
    _check_com_shape("com", com)
    if min(com.shape[1:]) < 3:
        raise InputError(f"com: expected at least 3 scan positions a side (the curl is a "
                         f"central difference), got shape {tuple(com.shape)}")
    if com.dtype.kind not in "iuf":
        raise InputError(f"com: expected real numbers, got dtype {com.dtype}")
    com = com.astype(np.float64)
    if not np.isfinite(com).all():
        raise InputError("com: contains NaN or Inf; expected a finite centre of mass")
    step_degrees = check_real("step_degrees", step_degrees, low=MIN_STEP_DEGREES)
    if step_degrees > 90:
        raise InputError(f"step_degrees: expected at most 90, got {step_degrees!r}")
    ref = None
    if reference_gradient is not None:
        ref = _to_numpy(reference_gradient)
        if ref.shape != com.shape or ref.dtype.kind not in "iuf":
            raise InputError(f"reference_gradient: expected a real array of shape "
                             f"{com.shape} like com, got {ref.dtype} {ref.shape}")
        if not np.isfinite(ref).all():
            raise InputError("reference_gradient: expected finite values, got NaN or Inf")
    best = None
    for flip in (False, True):
        for deg in np.arange(0.0, 180.0, step_degrees):
            e = _curl_energy(_rotate(com, deg, flip))
            if best is None or e < best[0]:
                best = (e, deg, flip)
    _, deg, flip = best
    lo, hi = deg - step_degrees, deg + step_degrees
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _curl_energy(_rotate(com, a, flip)) < _curl_energy(_rotate(com, b, flip)):
            hi = b
        else:
            lo = a
    deg = 0.5 * (lo + hi) % 180.0
    if ref is not None:
        if float(np.sum(_rotate(com, deg, flip) * ref)) < 0:
            deg += 180.0
    return deg, flip
