"""Descan: a centre of mass that changes linearly across the scan.

Uncorrected descan moves the bright-field disk on the detector linearly with
the probe's position: the centre of mass gains a plane (a constant and two
slopes in each component) that no specimen made. Its curl-free part is the
gradient of a quadratic phase, which the curl check cannot see and ``icom``
integrates into the phase (a disk moved by 1 detector px across the scan took
a MoS2 trilayer's ``icom`` NMSE from 0.13 to 1.2).

:func:`descan_plane` fits the least-squares plane of each component and
removes it (or only measures it). A specimen's phase has a plane part too (a
random amorphous film over a small field of view, the gradient of a periodic
phase over a finite scan): removing it costs right data a little (3 % of
``icom`` NMSE in the median, 1.5 times at worst on 63 corpus files), where
leaving a descan of 0.5 to 2 px costs up to 5 to 45 times. Measurements:
docs/acquisitions.md, "Descan".
"""

from __future__ import annotations

import warnings

import numpy as np

from ..backend import array_module, to_host
from ..errors import InputError, TrustWarning, check_positive, user_stacklevel
from ..physics import wavelength
from .rotation import check_field

__all__ = ["DESCAN_MODES", "DESCAN_WARN_PX", "check_descan", "check_descan_mode",
           "descan_plane", "fit_plane"]

DESCAN_MODES = ("plane", "none")

# A fitted plane that moves the centre of mass by more than this many detector
# px between the scan's farthest corners is warned of (whether removed or kept).
# Chosen on the even-numbered corpus series (3 % of right data above it, all
# 2 px descans), scored on the odd ones (6 %, all): docs/acquisitions.md.
DESCAN_WARN_PX = 0.9


def check_descan_mode(descan) -> str:
    """``descan`` checked: one of :data:`DESCAN_MODES`.

    Parameters
    ----------
    descan : str
        The mode asked for.

    Returns
    -------
    str
        ``descan``.

    Raises
    ------
    InputError
        Naming ``descan`` where it is not one of the modes.
    """
    if not isinstance(descan, str) or descan not in DESCAN_MODES:
        raise InputError(f"descan: expected one of {', '.join(map(repr, DESCAN_MODES))}, "
                         f"got {descan!r}")
    return descan


def fit_plane(field):
    """Least-squares plane of each component of a vector field.

    Parameters
    ----------
    field : array (2, Ny, Nx)
        Any units.

    Returns
    -------
    plane : ndarray (2, Ny, Nx), float64
        The fitted planes, in the units of ``field``.
    slopes : ndarray (2, 2), float64
        ``slopes[c, a]``: the change of component ``c`` per pixel along axis
        ``a`` (units of ``field`` per px).

    Raises
    ------
    InputError
        Where ``field`` is not a finite real array (2, Ny, Nx).
    """
    if not hasattr(field, "shape"):  # a nested list
        try:
            field = np.asarray(field)
        except (TypeError, ValueError) as exc:
            raise InputError(f"field: expected an array (2, Ny, Nx) of real numbers, got "
                             f"{type(field).__name__}") from exc
    check_field("field", field)
    field = np.asarray(field, np.float64)
    ny, nx = field.shape[1:]
    y = np.arange(ny, dtype=np.float64) - (ny - 1) / 2
    x = np.arange(nx, dtype=np.float64) - (nx - 1) / 2
    # the three basis functions are orthogonal on the grid: each coefficient alone
    const = field.mean(axis=(1, 2))
    sy, sx = np.zeros(2), np.zeros(2)
    if ny > 1:
        sy = (field * y[None, :, None]).sum(axis=(1, 2)) / (nx * (y ** 2).sum())
    if nx > 1:
        sx = (field * x[None, None, :]).sum(axis=(1, 2)) / (ny * (x ** 2).sum())
    plane = (const[:, None, None] + sy[:, None, None] * y[None, :, None]
             + sx[:, None, None] * x[None, None, :])
    return plane, np.stack([sy, sx], axis=1)


def descan_plane(gradient, energy, k_sampling, mode="plane"):
    """The least-squares plane of a measured gradient, and the gradient without it.

    Parameters
    ----------
    gradient : array (2, Ny, Nx)
        ``2π ×`` the centre of mass in scan axes, rad/Å (NumPy or CuPy).
    energy : float
        Electron energy in eV.
    k_sampling : float or (float, float)
        Detector sampling in 1/Å per px (their mean converts to detector px).
    mode : {"plane", "none"}
        Remove the plane (``"plane"``), or only measure it and remove the
        gradient's mean over the scan (``"none"``).

    Returns
    -------
    gradient : array (2, Ny, Nx)
        Without the plane (``"plane"``) or without its mean (``"none"``), in
        the dtype and on the device given.
    record : dict
        ``"mode"``; ``"applied"`` (whether the plane was removed);
        ``"slopes"`` (2 x 2 nested list, rad/Å per scan px: component, scan
        axis); ``"across_px"`` and ``"across_mrad"``: how far the plane moves
        the centre of mass between the scan's farthest corners, in detector
        px and in mrad; ``"large"``: whether ``across_px`` exceeds
        :data:`DESCAN_WARN_PX`.

    Raises
    ------
    InputError
        Where ``gradient`` is not a finite real array (2, Ny, Nx), ``mode``
        is not one of :data:`DESCAN_MODES`, or ``energy`` or ``k_sampling`` is not a positive number
        in range.
    """
    check_field("gradient", gradient)
    if not isinstance(mode, str) or mode not in DESCAN_MODES:
        raise InputError(f"mode: expected one of {', '.join(map(repr, DESCAN_MODES))}, "
                         f"got {mode!r}")
    k_sampling = check_positive("k_sampling", k_sampling, pair=True)
    g = gradient
    _, slopes = fit_plane(to_host(g))
    ny, nx = g.shape[1:]
    corners = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], np.float64)
    moved = corners @ slopes.T / (2 * np.pi)  # centre of mass at the corners, 1/Å
    across = max(float(np.linalg.norm(moved[i] - moved[j]))
                 for i in range(4) for j in range(i + 1, 4))
    px = across / float(np.mean(np.asarray(k_sampling, np.float64)))
    applied = mode == "plane"
    out = g - g.mean(axis=(1, 2), keepdims=True)
    if applied:
        y = np.arange(ny, dtype=np.float64)[:, None] - (ny - 1) / 2
        x = np.arange(nx, dtype=np.float64)[None, :] - (nx - 1) / 2
        ramp = slopes[:, 0, None, None] * y + slopes[:, 1, None, None] * x
        out = out - array_module(g).asarray(ramp.astype(g.dtype))
    record = {"mode": mode, "applied": applied, "slopes": slopes.tolist(),
              "across_px": px, "across_mrad": across * wavelength(energy) * 1e3,
              "large": bool(px > DESCAN_WARN_PX)}
    return out, record


def check_descan(record) -> None:
    """A :class:`TrustWarning` where :func:`descan_plane`'s plane is large: it
    says how far the centre of mass moves across the scan, whether the plane
    was removed, and what to do.

    Parameters
    ----------
    record : dict
        The record :func:`descan_plane` returned.
    """
    if not record["large"]:
        return
    seen = (f"the centre of mass moves linearly by {record['across_px']:.2f} detector px "
            f"({record['across_mrad']:.2f} mrad) across the scan (above {DESCAN_WARN_PX:g} "
            "px: more than right data showed; uncorrected descan?)")
    if record["applied"]:
        msg = (f"{seen}; its plane was removed from the gradient (descan='plane'), and with "
               "it any plane of the specimen's own phase (a bent foil, a wedge's curvature). "
               "Correct the descan at the microscope (or fit and subtract it from the "
               "patterns) before trusting the phase's largest scale")
    else:
        msg = (f"{seen}; kept (descan='none'): icom integrates it into a quadratic phase "
               "that is not the specimen's. Pass descan='plane' (the default) or correct "
               "the descan at the microscope")
    warnings.warn(msg, TrustWarning, stacklevel=user_stacklevel())
