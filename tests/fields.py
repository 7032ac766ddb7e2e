"""Analytic test fields with closed-form derivatives, and the tests' shared
measuring helpers.

Each field returns the phase φ (rad), the in-focus intensity I, and the exact
``∂I/∂z = -(1/k) ∇·(I ∇φ)`` from the TIE, written out by hand from the
closed-form derivatives (independent of the library's operators).
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np

import flowtie_fast as ft


def grid(shape, pixel, centred=False):
    """Coordinates (Å) of the pixel grid; ``centred`` puts samples at (i + ½) h."""
    off = 0.5 if centred else 0.0
    y = (np.arange(shape[0]) + off)[:, None] * pixel[0]
    x = (np.arange(shape[1]) + off)[None, :] * pixel[1]
    return y, x


def periodic_field(shape=(96, 80), pixel=(0.2, 0.25), energy=300e3, contrast=0.4):
    """Smooth periodic φ and positive non-uniform I (uniform when contrast = 0)."""
    y, x = grid(shape, pixel)
    ay = 2 * np.pi / (shape[0] * pixel[0])
    ax = 2 * np.pi / (shape[1] * pixel[1])
    # φ = A sin(3 ay y) cos(2 ax x) + B cos(ax x + 2 ay y)
    A, B = 0.4, 0.25
    s1, c1 = np.sin(3 * ay * y), np.cos(3 * ay * y)
    s2, c2 = np.sin(2 * ax * x), np.cos(2 * ax * x)
    arg = ax * x + 2 * ay * y
    phi = A * s1 * c2 + B * np.cos(arg)
    phi_y = A * 3 * ay * c1 * c2 - B * 2 * ay * np.sin(arg)
    phi_x = -A * 2 * ax * s1 * s2 - B * ax * np.sin(arg)
    lap = -A * ((3 * ay) ** 2 + (2 * ax) ** 2) * s1 * c2 - B * (ax**2 + (2 * ay) ** 2) * np.cos(arg)
    # I = 1 + c cos(2 ay y + 1) sin(ax x)
    cy, sy = np.cos(2 * ay * y + 1), np.sin(2 * ay * y + 1)
    sx, cx = np.sin(ax * x), np.cos(ax * x)
    intensity = 1 + contrast * cy * sx
    i_y = -contrast * 2 * ay * sy * sx
    i_x = contrast * ax * cy * cx
    transport = i_y * phi_y + i_x * phi_x + intensity * lap
    k = ft.wavenumber(energy)
    return phi, intensity, -transport / k, np.stack([phi_y, phi_x])


def neumann_field(shape=(96, 80), pixel=(0.2, 0.25), energy=300e3, contrast=0.3):
    """A non-periodic φ with zero normal derivative on the edges of the pixel
    box (cosines of half periods on the pixel-centred grid) and a positive I."""
    y, x = grid(shape, pixel, centred=True)
    ly, lx = shape[0] * pixel[0], shape[1] * pixel[1]
    by, bx = np.pi / ly, np.pi / lx
    # φ = A cos(by y) + B cos(2 bx x) cos(3 by y) + C cos(bx x)
    A, B, C = 0.5, 0.2, 0.3
    phi = A * np.cos(by * y) + B * np.cos(2 * bx * x) * np.cos(3 * by * y) + C * np.cos(bx * x)
    phi_y = -A * by * np.sin(by * y) - B * 3 * by * np.cos(2 * bx * x) * np.sin(3 * by * y)
    phi_x = -B * 2 * bx * np.sin(2 * bx * x) * np.cos(3 * by * y) - C * bx * np.sin(bx * x)
    lap = (-A * by**2 * np.cos(by * y)
           - B * ((2 * bx) ** 2 + (3 * by) ** 2) * np.cos(2 * bx * x) * np.cos(3 * by * y)
           - C * bx**2 * np.cos(bx * x))
    # I = 1 + c cos(2 by y) cos(bx x): smooth, positive
    intensity = 1 + contrast * np.cos(2 * by * y) * np.cos(bx * x)
    i_y = -contrast * 2 * by * np.sin(2 * by * y) * np.cos(bx * x)
    i_x = -contrast * bx * np.cos(2 * by * y) * np.sin(bx * x)
    transport = i_y * phi_y + i_x * phi_x + intensity * lap
    k = ft.wavenumber(energy)
    return phi, intensity, -transport / k, np.stack([phi_y, phi_x])


def triplet_from(intensity, didz, dz, pixel, energy, dtype=np.float64):
    """A triplet whose central difference is exactly ``didz`` (I linear in z)."""
    planes = [(intensity + s * dz * didz).astype(dtype) for s in (-1, 0, 1)]
    return ft.FocalTriplet(*planes, dz=dz, pixel_size=pixel, energy=energy)


def rel_rms(phase, truth):
    """Relative RMS error after removing both means."""
    phase = np.asarray(phase, dtype=np.float64)
    d = (phase - phase.mean()) - (truth - truth.mean())
    return float(np.sqrt(np.mean(d**2) / np.mean((truth - truth.mean()) ** 2)))


def least_peak_bytes(call, repeats=3) -> int:
    """The least, over ``repeats`` calls of ``call()``, of the peak bytes the
    allocation tracker (NumPy's buffers included) sees during one call, with
    the garbage collector off: the tracker sees every thread and the
    collector's finalizers, so an allocation of the call itself shows in all
    of them and a stray one in a single call does not count."""
    peaks = []
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(repeats):
            tracemalloc.reset_peak()
            call()
            peaks.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
        gc.enable()
    return min(peaks)
