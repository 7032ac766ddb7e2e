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

__all__ = ["calibrate_rotation", "check_field", "least_turn", "rotate_com"]

#: The finest ``step_degrees`` :func:`calibrate_rotation` accepts, in degrees
#: (the step of the search it once ran: 1e-9 asked for 1.3 TiB).
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

    Raises
    ------
    InputError
        Where ``com`` is not a finite real array (2, Sy, Sx), ``degrees``
        not a finite number or ``flip`` not a bool.
    """
    if not isinstance(flip, (bool, np.bool_)):
        raise InputError(f"flip: expected True or False, got {flip!r}")
    degrees = check_real("degrees", degrees)
    check_field("com", com)
    return _rotate(com, degrees, bool(flip))


def _check_com_shape(name, com):
    shape = getattr(com, "shape", None)
    if shape is None or len(shape) != 3 or shape[0] != 2:
        got = f"shape {tuple(shape)}" if shape is not None else type(com).__name__
        raise InputError(f"{name}: expected an array (2, Sy, Sx), got {got}")


def check_field(name: str, field) -> None:
    """Refuse what is not a vector field (2, Sy, Sx) of finite real numbers.

    A NaN would make every value of a rotation or a fitted plane NaN; a
    complex field would be rotated as complex numbers.

    Parameters
    ----------
    name : str
        The argument, for the message.
    field : array (2, Sy, Sx)
        NumPy or CuPy; at least one scan position.

    Raises
    ------
    InputError
        Naming ``name`` where ``field`` is not such a field.
    """
    _check_com_shape(name, field)
    if min(field.shape[1:]) < 1:
        raise InputError(f"{name}: expected at least one scan position, got shape "
                         f"{tuple(field.shape)}")
    dtype = np.dtype(getattr(field, "dtype", object))
    if dtype.kind not in "iuf":
        raise InputError(f"{name}: expected real numbers, got dtype {dtype}")
    if dtype.kind == "f" and not bool(array_module(field).isfinite(field).all()):
        raise InputError(f"{name}: contains NaN or Inf; expected finite values")


def _rotate(com, degrees, flip):
    xp = array_module(com)
    c = com[::-1] if flip else com
    t = math.radians(degrees)
    return xp.stack([math.cos(t) * c[0] - math.sin(t) * c[1],
                     math.sin(t) * c[0] + math.cos(t) * c[1]])



def least_turn(a, b, c):
    """Least and largest of ``E(θ) = a cos²θ + 2b sinθ cosθ + c sin²θ`` and the
    θ of the least, in degrees in [0, 180).

    The curl of a vector field turned by θ is ``cos θ curl + sin θ div`` of
    the field, so its squared sum is such a form (``a = Σ curl²``, ``b = Σ
    curl·div``, ``c = Σ div²``): the turn that leaves the least curl is this
    closed form, not a search.

    Parameters
    ----------
    a, b, c : float
        The form's coefficients.

    Returns
    -------
    least : float
        The least value of ``E``.
    most : float
        Its largest value.
    theta : float
        The θ of the least, degrees (0 where ``E`` is the same at every θ).
    """
    mid, half = (a + c) / 2, math.hypot((a - c) / 2, b)
    if half == 0:
        return mid, mid, 0.0
    theta = 0.5 * (math.degrees(math.atan2(b, (a - c) / 2)) + 180.0)
    return mid - half, mid + half, theta % 180.0


def _periodic_form(com):
    """``(Σ curl², Σ curl·div, Σ div²)`` of a field (2, Sy, Sx) by periodic
    central differences (the form :func:`least_turn` minimises)."""
    g0, g1 = com
    curl = (np.roll(g1, -1, 0) - np.roll(g1, 1, 0)) - (np.roll(g0, -1, 1) - np.roll(g0, 1, 1))
    div = (np.roll(g0, -1, 0) - np.roll(g0, 1, 0)) + (np.roll(g1, -1, 1) - np.roll(g1, 1, 1))
    return float(np.sum(curl * curl)), float(np.sum(curl * div)), float(np.sum(div * div))


def calibrate_rotation(com, reference_gradient=None, step_degrees: float = 1.0):
    """Detector rotation (degrees) and flip that make the COM field curl-free.

    A phase gradient has no curl, so the right rotation minimises the mean
    squared curl (as py4DSTEM and LiberTEM do), by periodic central
    differences; for each handedness that minimum is a closed form
    (:func:`least_turn`), the lower of the two is taken. The curl cannot tell
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
        Accepted for callers of the search this replaced (default 1), and
        checked as then (:data:`MIN_STEP_DEGREES`, 0.01, to 90); the minimum
        is exact at any step.

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
    # The turn and flip do not depend on the field's scale: on a unit scale its
    # squared curl can neither overflow nor underflow.
    peak = float(np.abs(com).max())
    if peak > 0:
        com = com / peak
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
        ref = ref.astype(np.float64)
        peak = float(np.abs(ref).max())
        if peak > 0:  # only the sign of its agreement is read
            ref = ref / peak
    # The least-curl turn of each handedness in closed form (least_turn).
    (lo, _, deg), (flo, _, fdeg) = (least_turn(*_periodic_form(com[::-1] if f else com))
                                    for f in (False, True))
    flip = flo < lo
    deg = fdeg if flip else deg
    if ref is not None:
        if float(np.sum(_rotate(com, deg, flip) * ref)) < 0:
            deg += 180.0
    return deg, flip
