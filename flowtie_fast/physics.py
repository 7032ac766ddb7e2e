"""Electron-optical constants and unit conventions.

Lengths in Å, energies in eV, reciprocal lengths in 1/Å, phase in rad.
"""

from __future__ import annotations

import math

from .errors import check_positive

__all__ = ["wavelength", "wavenumber"]

PLANCK = 6.62607015e-34  # J s
ELECTRON_MASS = 9.1093837015e-31  # kg
ELEMENTARY_CHARGE = 1.602176634e-19  # C
SPEED_OF_LIGHT = 299792458.0  # m / s


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength.

    Parameters
    ----------
    energy : float
        Kinetic energy of the electrons in eV (e.g. 300e3).

    Returns
    -------
    float
        Wavelength in Å (0.019687 Å at 300 keV).
    """
    e = ELEMENTARY_CHARGE * check_positive("energy", energy)
    m0c2 = ELECTRON_MASS * SPEED_OF_LIGHT**2
    momentum = math.sqrt(2.0 * ELECTRON_MASS * e * (1.0 + e / (2.0 * m0c2)))
    return PLANCK / momentum * 1e10


def wavenumber(energy: float) -> float:
    """Relativistic electron wavenumber ``k = 2π / λ``.

    Parameters
    ----------
    energy : float
        Kinetic energy of the electrons in eV (e.g. 300e3).

    Returns
    -------
    float
        Wavenumber in rad/Å (319.15 rad/Å at 300 keV).
    """
    return 2.0 * math.pi / wavelength(energy)
