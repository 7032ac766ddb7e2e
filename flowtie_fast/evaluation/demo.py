"""The demonstration: every method on a case with a known phase, timed.

Two cases: a Fresnel-propagated phase object (:func:`fresnel_case`, no
abTEM needed) and a GaAs [001] 4D-STEM triplet simulated by abTEM
(:func:`gaas_case`, extra ``sim``). :func:`method_rows` solves a case by
each method on each backend and yields the phase errors and warm times as
they come; ``flowtie demo`` prints them, and :func:`figure` draws the GaAs
case's phases and gradients against the truth.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass

import numpy as np

from ..backend import get_backend, gpu_available
from ..simulation.optics import defocus_triplet
from ..simulation.simulate import simulate_series
from ..triplet import FocalTriplet
from .evaluate import phase_errors, timed_reconstruct
from .phantom import phase_object

__all__ = ["DemoRow", "REPEATS", "backends", "conditions", "figure", "fresnel_case",
           "gaas_case", "have_abtem", "method_rows", "methods"]

#: The methods of the Fresnel case (it has no measured gradient).
FRESNEL_METHODS = ("tie-uniform", "tie", "tie-exact", "gd")

#: Timed runs per method after the warm-up run; the best is reported.
REPEATS = 5

#: How the figure names the methods.
LABELS = {"tie-uniform": "TIE, uniform I", "tie": "TIE (Teague)", "tie-exact": "TIE, exact",
          "gd": "gradient descent", "icom": "iCOM", "flowtie": "FlowTIE"}


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


def method_rows(triplet, truth, method_names, backend_names, repeats=REPEATS):
    """Solve ``triplet`` by each method on each backend against the phase
    ``truth`` (rad); yields a :class:`DemoRow` as each is done. Its time is the
    best of ``repeats`` runs after a warm-up run that pays for planning,
    compilation and model loading."""
    for method in method_names:
        for backend in backend_names:
            rec, best = timed_reconstruct(triplet, method, backend, repeats)
            be = get_backend(backend)
            phase = be.to_numpy(rec.phase)
            mse, nmse = phase_errors(phase, truth)
            yield DemoRow(method, backend, mse, nmse, best, phase, be.to_numpy(rec.gradient))


def conditions(case) -> str:
    """One line on a simulated case: specimen, thickness, energy, convergence,
    defoci, scan and dose."""
    dz = np.ravel(case.dz)
    dz = f"±{dz[0]:g}" if np.ptp(dz) == 0 else f"-{dz[0]:g}/+{dz[-1]:g}"
    sy, sx = case.zero.shape[:2]
    step = case.scan_step[0]
    dose = (case.meta or {}).get("dose")
    return (f"{case.material} [001], {case.thickness:.1f} Å thick; "
            f"{case.energy / 1e3:g} keV, {case.semiangle:g} mrad; defocus {dz} Å; "
            f"{sy}×{sx} scan, {step:.2f} Å/px; "
            + ("noise-free (infinite dose)" if dose is None else f"dose {dose:g} e/Å²"))


def _bar_length(field: float) -> float:
    """A round scale-bar length (1, 2 or 5 × 10^k Å) of about a quarter of
    ``field`` (Å)."""
    target = field / 4
    power = 10.0 ** np.floor(np.log10(target))
    return max(m * power for m in (1, 2, 5) if m * power <= target)


def figure(case, rows):
    """The GaAs demo at a glance: a matplotlib Figure.

    Every phase (the truth and each method's, means removed, rad) on one
    colour scale, so that a method that underestimates the phase looks paler;
    a line profile through the truth's maximum; both gradient components
    (rad/Å) of the truth and of FlowTIE (else Teague's TIE) on a second
    scale; a scale bar in Å on each image and the conditions in the title.

    Parameters
    ----------
    case : SimulationCase
        The case of :func:`gaas_case`.
    rows : sequence of DemoRow
        The results of :func:`method_rows` (one backend's are drawn: the first
        row of each method).

    Returns
    -------
    matplotlib.figure.Figure
        Not attached to pyplot: save it with ``fig.savefig(path)``.
    """
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.patches import Rectangle

    results = {}
    for r in rows:
        results.setdefault(r.method, r)
    truth = np.asarray(case.phase, float) - float(np.mean(case.phase))
    phases = [("ground truth", truth)] + [
        (f"{LABELS.get(m, m)}\nNMSE {r.nmse:.3f}", r.phase) for m, r in results.items()]
    lo = min(float(np.min(p)) for _, p in phases)
    hi = max(float(np.max(p)) for _, p in phases)
    ref = "flowtie" if "flowtie" in results else "tie"
    gradients = [(f"ground truth ∂φ/∂{a}", np.asarray(case.gradient[i]))
                 for a, i in (("x", 1), ("y", 0))]
    if ref in results:
        gradients += [(f"{LABELS[ref]} ∂φ/∂{a}", results[ref].gradient[i])
                      for a, i in (("x", 1), ("y", 0))]
    glim = max(float(np.max(np.abs(g))) for _, g in gradients)

    step_y, step_x = (float(s) for s in case.scan_step)
    ny, nx = truth.shape
    bar = _bar_length(nx * step_x)
    cols = 4
    phase_rows = -(-(len(phases) + 1) // cols)
    fig = Figure(figsize=(3.0 * cols, 2.9 * (phase_rows + 1) + 0.6), layout="constrained")
    axes = fig.subplots(phase_rows + 1, cols, squeeze=False)

    def show(ax, title, image, colour="white", **style):
        im = ax.imshow(image, interpolation="nearest", aspect=step_y / step_x, **style)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        # The scale bar, lower left (rows run down the image).
        height, left, bottom = ny / 40, -0.5 + nx / 25, ny - 0.5 - ny / 25
        ax.add_patch(Rectangle((left, bottom - height), bar / step_x, height, color=colour))
        ax.text(left + bar / step_x / 2, bottom - 1.5 * height, f"{bar:g} Å", color=colour,
                ha="center", va="bottom", fontsize=8)
        return im

    flat = list(axes[:phase_rows].flat)
    im = None
    for ax, (title, image) in zip(flat, phases):
        im = show(ax, title, image, cmap="viridis", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=flat, shrink=0.8, label="phase (rad), one scale for all")

    # A line profile through the truth's maximum: the methods' amplitudes side by side.
    prof = flat[len(phases)]
    row = int(np.unravel_index(np.argmax(truth), truth.shape)[0])
    x = np.arange(nx) * step_x
    prof.plot(x, truth[row], "k-", lw=2, label="truth")
    for m in ("tie", "icom", "flowtie"):
        if m in results:
            prof.plot(x, results[m].phase[row], lw=1.2, label=LABELS[m])
    prof.set_title(f"profile along row {row}", fontsize=9)
    prof.set_xlabel("x (Å)", fontsize=8)
    prof.set_ylabel("phase (rad)", fontsize=8)
    prof.tick_params(labelsize=7)
    prof.legend(fontsize=7, frameon=False)
    for ax in flat[len(phases) + 1:]:
        ax.axis("off")

    grads = list(axes[phase_rows])
    for ax, (title, image) in zip(grads, gradients):
        im = show(ax, title, image, "black", cmap="RdBu_r", vmin=-glim, vmax=glim)
    for ax in grads[len(gradients):]:
        ax.axis("off")
    fig.colorbar(im, ax=grads, shrink=0.8, label="phase gradient (rad/Å), one scale")
    fig.suptitle(conditions(case) + "\nphases with their means removed; x: axis 1 "
                 "(columns), y: axis 0 (rows)", fontsize=10)
    return fig
