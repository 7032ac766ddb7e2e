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
from .detector import _to_numpy

__all__ = ["calibrate_rotation", "rotate_com"]


def rotate_com(com, degrees: float, flip: bool):
    """COM vectors from detector axes to scan axes: optional transpose, then rotation."""
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
        Step of the coarse search in degrees (default 1).

    Returns
    -------
    rotation : float
        Detector-to-scan rotation in degrees, in [0, 360) with
        ``reference_gradient``, else in [0, 180).
    flip : bool
        Whether the detector axes are to be transposed before rotating.
    """
    com = _to_numpy(com).astype(np.float64)
    best = None
    for flip in (False, True):
        for deg in np.arange(0.0, 180.0, step_degrees):
            e = _curl_energy(rotate_com(com, deg, flip))
            if best is None or e < best[0]:
                best = (e, deg, flip)
    _, deg, flip = best
    lo, hi = deg - step_degrees, deg + step_degrees
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _curl_energy(rotate_com(com, a, flip)) < _curl_energy(rotate_com(com, b, flip)):
            hi = b
        else:
            lo = a
    deg = 0.5 * (lo + hi) % 180.0
    if reference_gradient is not None:
        ref = _to_numpy(reference_gradient)
        if float(np.sum(rotate_com(com, deg, flip) * ref)) < 0:
            deg += 180.0
    return deg, flip
