"""Shared set-up of the asv suite: inputs, backends, GPU synchronisation.

A parameter this machine cannot run (``backend="gpu"`` without a device)
raises ``NotImplementedError`` in ``setup``, which asv records as skipped.
"""

import os

import numpy as np

import flowtie_fast as ft

SIZES = [256, 1024, 2048]
# FLOWTIE_ASV_BACKENDS="gpu" runs the GPU rows only (where device time is short).
BACKENDS = os.environ.get("FLOWTIE_ASV_BACKENDS", "cpu gpu").split()
PIXEL = 0.2
ENERGY = 300e3
DZ = 20.0


def require(backend):
    """The backend object, or NotImplementedError (asv: skipped) where it cannot run."""
    if backend == "gpu" and not ft.gpu_available():
        raise NotImplementedError("no CUDA device answers on this machine")
    return ft.get_backend(backend)


def triplet_arrays(n, seed=0):
    """A focal triplet of an n x n weak phase object with absorption (float32)."""
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import propagate

    phase, amplitude = phase_object(n, PIXEL, seed)
    wave = amplitude * np.exp(1j * phase)
    return [(np.abs(propagate(wave, z, PIXEL, ENERGY)) ** 2).astype(np.float32)
            for z in (-DZ, 0.0, DZ)]


def triplet(n, backend):
    be = require(backend)
    planes = [be.asarray(p) for p in triplet_arrays(n)]
    return ft.FocalTriplet(*planes, dz=DZ, pixel_size=PIXEL, energy=ENERGY)
