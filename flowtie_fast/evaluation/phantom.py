"""The demonstration's phase object: a known weak phase on a non-uniform amplitude.

``flowtie demo --fresnel`` and the asv benchmarks propagate it to a focal
triplet (:func:`flowtie_fast.simulation.optics.defocus_triplet`) and compare
every method's phase with it.
"""

from __future__ import annotations

import numpy as np

from ..simulation.optics import gaussian_bumps


def phase_object(n: int, pixel_size: float, seed: int = 0):
    """A smooth periodic test object: phase (rad) and amplitude, (n, n).

    Parameters
    ----------
    n : int
        Image size in pixels.
    pixel_size : float
        Sampling in Å.
    seed : int
        Seed of the bumps' positions and sizes.

    Returns
    -------
    phase, amplitude : ndarray (n, n)
        Sixteen periodic Gaussian bumps of heights drawn in [-0.3, 0.3] rad
        and widths (σ) in 2-6 % of the field of view; an amplitude of 1 with
        a Gaussian dip of 0.2 (σ 10 % of the field of view) off centre.
    """
    length = n * pixel_size
    phase = gaussian_bumps(n, pixel_size, 16, 0.3, (0.02 * length, 0.06 * length), seed)
    y = np.arange(n)[:, None] * pixel_size
    x = np.arange(n)[None, :] * pixel_size
    amplitude = 1 - 0.2 * np.exp(-((y - length / 3) ** 2 + (x - length / 2) ** 2)
                                 / (2 * (0.1 * length) ** 2))
    return phase, amplitude
