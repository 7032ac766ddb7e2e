"""Free-space propagation of a complex wave: the angular-spectrum Fresnel propagator.

Used to make defocused intensity series of known phase objects (tests, demo,
benchmarks); multislice simulation of crystals is :mod:`abTEM`'s job.
Sign convention (docs/conventions.md): a wave ``ψ = A exp(iφ)`` propagated by ``z``
obeys the paraxial equation ``∂ψ/∂z = (i / 2k) ∇²ψ``, whose intensity obeys the
TIE ``k ∂I/∂z = -∇·(I ∇φ)``.
"""

from __future__ import annotations

import numpy as np

from ..physics import wavelength
from ..triplet import FocalSeries, FocalTriplet

__all__ = ["propagate", "defocus_series", "defocus_triplet", "gaussian_bumps"]


def propagate(wave, distance: float, pixel_size, energy: float):
    """Propagate a complex wave by ``distance`` (Å) with the Fresnel propagator.

    Parameters
    ----------
    wave : complex array (Ny, Nx)
        Exit wave, periodic.
    distance : float
        Propagation distance z in Å (positive: downstream).
    pixel_size : float or (float, float)
        Sampling in Å.
    energy : float
        Electron energy in eV.

    Returns
    -------
    complex128 array (Ny, Nx)
        ``F⁻¹[F[ψ] exp(-i π λ z |f|²)]``, f the spatial frequency in 1/Å.
    """
    wave = np.asarray(wave, dtype=np.complex128)
    h0, h1 = (pixel_size, pixel_size) if np.isscalar(pixel_size) else pixel_size
    fy = np.fft.fftfreq(wave.shape[0], h0)[:, None]
    fx = np.fft.fftfreq(wave.shape[1], h1)[None, :]
    kernel = np.exp(-1j * np.pi * wavelength(energy) * distance * (fy**2 + fx**2))
    return np.fft.ifft2(np.fft.fft2(wave) * kernel)


def defocus_series(phase, z, pixel_size, energy, amplitude=None) -> FocalSeries:
    """Intensities of ``amplitude * exp(i phase)`` propagated to each ``z`` (Å)."""
    wave = (1.0 if amplitude is None else np.asarray(amplitude)) * np.exp(1j * np.asarray(phase))
    planes = [np.abs(propagate(wave, dz, pixel_size, energy)) ** 2 for dz in z]
    return FocalSeries(planes, z, pixel_size, energy)


def defocus_triplet(phase, dz: float, pixel_size, energy, amplitude=None) -> FocalTriplet:
    """The focal triplet ``I(-dz), I(0), I(+dz)`` of ``amplitude * exp(i phase)``
    (registered by construction: ``register=False``)."""
    s = defocus_series(phase, (-dz, 0.0, dz), pixel_size, energy, amplitude)
    return FocalTriplet(*s.planes, dz=dz, pixel_size=pixel_size, energy=energy, register=False)


def gaussian_bumps(n: int, pixel_size: float, count: int, height: float, widths, seed=0):
    """A smooth periodic phase (rad), (n, n): ``count`` Gaussian bumps of random
    height in ``[-height, height]`` rad and width (σ) in ``widths`` Å, placed at
    random on the periodic box."""
    rng = np.random.default_rng(seed)
    length = n * pixel_size
    y = np.arange(n)[:, None] * pixel_size
    x = np.arange(n)[None, :] * pixel_size
    phase = np.zeros((n, n))
    for _ in range(count):
        cy, cx = rng.uniform(0, length, 2)
        width = rng.uniform(*widths)
        dy = (y - cy + length / 2) % length - length / 2
        dx = (x - cx + length / 2) % length - length / 2
        phase += rng.uniform(-height, height) * np.exp(-(dx**2 + dy**2) / (2 * width**2))
    return phase
