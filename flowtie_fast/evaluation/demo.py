"""The demonstration: every method on a case with a known phase, timed.

Two cases: a Fresnel-propagated phase object (:func:`fresnel_case`, no
abTEM needed) and a GaAs [001] 4D-STEM triplet simulated by abTEM
(:func:`gaas_case`, extra ``sim``). :func:`method_rows` solves a case by
each method on each backend and yields the phase errors and times as they
come; ``flowtie demo`` prints them.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

from ..backend import get_backend, gpu_available
from ..simulation.optics import defocus_triplet
from ..simulation.simulate import simulate_series
from ..triplet import FocalTriplet
from .evaluate import phase_errors, timed_reconstruct
from .phantom import phase_object

__all__ = ["DemoRow", "backends", "fresnel_case", "gaas_case", "have_abtem", "method_rows",
           "methods"]

#: The methods of the Fresnel case (it has no measured gradient).
FRESNEL_METHODS = ("tie-uniform", "tie", "tie-exact", "gd")


@dataclass
class DemoRow:
    """One method on one backend: phase errors (rad², and normalised), the best
    time in s (after a warm-up call), and the phase (rad) and its gradient
    (rad/Å) as NumPy arrays."""

    method: str
    backend: str
    mse: float
    nmse: float
    seconds: float
    phase: object
    gradient: object


def have_abtem() -> bool:
    """Whether abTEM is installed (the GaAs case needs it)."""
    return importlib.util.find_spec("abtem") is not None


def backends() -> list:
    """The backends to time: the CPU, and the GPU where a device answers."""
    return ["cpu"] + (["gpu"] if gpu_available() else [])


def methods(gradient: bool = True) -> list:
    """The methods to run: the classical ones, ``icom`` where the case has a
    measured gradient, and ``flowtie`` where PyTorch is installed."""
    out = list(FRESNEL_METHODS)
    if gradient:
        out.append("icom")
        if importlib.util.find_spec("torch") is not None:
            out.append("flowtie")
    return out


def fresnel_case(size: int, pixel_size: float, dz: float, energy: float):
    """The phase object of :mod:`~flowtie_fast.evaluation.phantom` propagated to
    ``-dz, 0, +dz`` (Å) at ``energy`` (eV): its phase (rad) and the triplet."""
    phase, amplitude = phase_object(size, pixel_size)
    return phase, defocus_triplet(phase, dz, pixel_size, energy, amplitude=amplitude)


def gaas_case():
    """GaAs [001], 11.3 Å, 300 keV, 20 mrad, probe defoci ±20 Å on a 16 x 16
    scan, simulated by abTEM: the :class:`~flowtie_fast.simulation.simulate.SimulationCase`,
    its triplet (:meth:`FocalTriplet.from_4dstem`, CPU) and abTEM's time in s."""
    start = time.perf_counter()
    (case,) = simulate_series("GaAs", (11.3,), scan_gpts=(16, 16), supercell=8.0,
                              potential_sampling=0.08, max_angle=40.0)
    seconds = time.perf_counter() - start
    triplet = FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                       scan_step=case.scan_step, k_sampling=case.k_sampling,
                                       energy=case.energy, backend="cpu")
    return case, triplet, seconds


def method_rows(triplet, truth, method_names, backend_names):
    """Solve ``triplet`` by each method on each backend against the phase
    ``truth`` (rad); yields a :class:`DemoRow` as each is done (first call
    plans, then best of 3)."""
    for method in method_names:
        for backend in backend_names:
            rec, best = timed_reconstruct(triplet, method, backend)
            be = get_backend(backend)
            phase = be.to_numpy(rec.phase)
            mse, nmse = phase_errors(phase, truth)
            yield DemoRow(method, backend, mse, nmse, best, phase, be.to_numpy(rec.gradient))
