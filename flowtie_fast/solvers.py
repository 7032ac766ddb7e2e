"""Phase retrieval from a focal series: TIE, exact TIE, gradient descent, iCOM.

The TIE (docs/conventions.md) reads ``k ∂I/∂z = -∇·(I ∇φ)``. Every method here is
written once against :class:`~flowtie_fast.poisson.PoissonSolver`, whose
operators (gradient, divergence, transport, Teague step, Poisson solve) share
one discretisation, and so against one backend.

Methods
-------
``tie-uniform``
    ``∇²φ = -k ∂I/∂z / Ī``: one Poisson solve with the mean in-focus intensity.
``tie``
    Teague's solution: ``∇²ψ = -k ∂I/∂z``, ``∇φ = ∇ψ / max(I, floor)``,
    ``φ = ∇⁻² ∇·(∇ψ / max(I, floor))``. Exact only where ``I ∇φ`` is curl-free.
``tie-exact``
    The TIE with the measured positive intensity solved exactly: conjugate
    gradients on ``-∇·(I ∇φ) = k ∂I/∂z`` preconditioned by Teague's solution
    (symmetric positive definite), started from Teague's answer. This is Zuo
    et al.'s idea of iterating Teague's solution on the TIE residual, with
    conjugate directions instead of plain fixed-point steps so that it
    converges for any positive intensity. Stops when
    ``‖residual‖ ≤ tol ‖k ∂I/∂z‖`` (default tol 1e-5 in float32, 1e-10 in
    float64) or after ``max_iter`` iterations (default 100).
``gd``
    The gradient-descent baseline: minimise
    ``J(φ) = ½ ‖k ∂I/∂z + ∇·(I ∇φ)‖²`` over φ from φ = 0 by steepest descent
    with exact line search (J is quadratic). The descent direction is the
    gradient of J preconditioned by the inverse bi-Laplacian scaled by
    ``1 / Ī²`` (``preconditioner="biharmonic"``, default; a Sobolev
    gradient) or the plain gradient (``preconditioner="none"``). Stops when
    one step lowers J by less than ``tol`` times J (default 1e-6), or after
    ``max_iter`` steps (default 200).
``icom``
    Integrates a measured phase gradient (``series.gradient``, e.g. 4D-STEM
    centre of mass) by ``φ = ∇⁻² ∇·g``.
``flowtie``
    A trained network predicts the flow ``v ≈ ∇φ`` from the triplet (and the
    centre of mass); ``φ = ∇⁻² ∇·v``. Its residual map is the continuity
    residual of the predicted flow, ``(k ∂I/∂z + ∇·(I v)) / Ī``: where the
    flow disagrees with the measured transport (:mod:`flowtie_fast.flow`).

Every :class:`Reconstruction` carries the phase (mean zero, rad), its gradient
(rad/Å) and the TIE residual map ``(k ∂I/∂z + ∇·(I ∇φ)) / Ī`` (1/Å²).
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import trust
from .backend import Backend, array_module, get_backend
from .errors import (InputError, ResultError, TrustWarning, check_choice, check_count,
                     check_finite_result, check_float_dtype, check_real, first_line,
                     out_of_memory, user_stacklevel)
from .flow.infer import ENSEMBLES, SHIPPED, FlowEnsemble, FlowModel, load_model
from .flow.infer import _shipped_name as _shipped_file
from .noise import (ALPHA_MAX, COUNTS, check_noise, denoise, denoise_gradient,
                    gradient_noise_warning,
                    denoise_gradient_bytes,
                    discrepancy_alpha, poisson_noise, teague_floor, FLOOR_MIN,
                    TEAGUE_FLOOR_MIN)
from .poisson import PoissonSolver, resolve_scheme
from .planes import (GRADIENT_LIMIT, MAX_DEFLECTION, check_gradient, check_gradient_peak,
                     check_intensity_stats, gradient_limit, screen_planes, screen_stats)

__all__ = ["METHODS", "Reconstruction", "SolveOptions", "TIESolver", "reconstruct"]

METHODS = ("tie-uniform", "tie", "tie-exact", "gd", "icom", "flowtie")

SOLVER_IMAGES = 14  # images of the working dtype a TIESolver adds to its Poisson solver


class ImplausibleResult(ResultError):
    """A result whose phase gradient exceeds
    :func:`~flowtie_fast.planes.gradient_limit` (:data:`GRADIENT_LIMIT`, or
    the wavenumber where the energy is known): refused (a
    :class:`ResultError`) naming the stage."""


@dataclass
class Reconstruction:
    """Result of a phase retrieval.

    The solvers build it; each parameter is kept as the attribute of the same
    name. The property :attr:`residual` (Ny, Nx), in 1/Å² and computed on
    first access, is the TIE residual map of the phase; for ``flowtie`` the
    continuity residual of the predicted flow, for ``icom`` the curl-free
    misfit of the measured gradient (rad/Å).

    Parameters
    ----------
    phase : array (Ny, Nx)
        Phase in rad, mean zero.
    gradient : array (2, Ny, Nx)
        Phase gradient in rad/Å, (d/d axis 0, d/d axis 1).
    method : str
        The method that produced it, one of ``tie-uniform``, ``tie``,
        ``tie-exact``, ``gd``, ``icom``, ``flowtie``.
    info : dict, optional
        Solver details. Every method: ``backend`` and ``time`` (s, of the
        solve). The methods that solve from the planes: ``scheme``,
        ``boundary``; the TIE methods and ``gd`` also ``noise`` (its source or
        None), ``alpha`` (Å⁻⁴), ``floor`` and, where the noise is known,
        ``denoise`` (Fourier modes kept). ``tie-exact``: ``iterations``,
        ``converged``, ``tol``, ``relative_residual`` (history). ``gd``:
        ``iterations``, ``converged``, ``tol``, ``objective`` (history),
        ``preconditioner`` and, where ``max_iter`` stopped it, ``distance``
        (the estimated distance from the solution over the phase's norm).
        The TIE methods and ``gd`` given a measured gradient:
        ``icom_disagreement``, their phase's disagreement with the ``icom``
        phase (:func:`flowtie_fast.trust.disagreement`, 0 where they agree, 1
        for a flat phase; None where the gradient's orientation looks wrong,
        ``triplet.gradient_orientation``). ``icom``: ``noise`` and ``denoise``
        where the gradient's noise is known; ``trust`` where the gradient's
        orientation looks wrong. ``flowtie``: ``model`` (its file) and
        ``precision``; with ``uncertainty``, the trust check (``trusted``,
        ``rel_spread``, ``snr``, ``icom_ratio``, ``why``) and, where the flow
        was not trusted, ``fallback``: the classical method (``icom`` or
        ``tie``; ``tie`` where the gradient's orientation looks wrong) whose
        phase was returned. The methods that solve from the planes:
        ``plane_defects`` where isolated pixels of one plane were found far
        from their neighbours (``triplet.plane_defects``,
        :func:`~flowtie_fast.planes.screen_planes`: replaced by the median of
        their neighbours, or not where too many), with ``trust``. ``trust``:
        why a classical phase may be wrong, where a :class:`TrustWarning` said
        so.
    uncertainty : array (Ny, Nx) or None, optional
        ``flowtie``: the standard deviation of the phase at each pixel in rad
        (float32), the spread of the shipped models' phases times a factor
        calibrated on validation simulations (:mod:`flowtie_fast.trust`); None
        (default) for the classical methods, a fallback, a flow kept but not
        trusted because the detector saturated or the gradient and the
        planes disagree in scale (``info["uncertainty"]`` says why), or
        ``uncertainty=False``.
    _residual, _residual_fn : optional
        Internal (set by the solvers): the residual map (1/Å²), or the function
        that computes it on first access of :attr:`residual`.
    """

    phase: object
    gradient: object
    method: str
    info: dict = field(default_factory=dict)
    uncertainty: object = None
    _residual: object = field(default=None, repr=False)
    _residual_fn: object = field(default=None, repr=False)

    @property
    def residual(self):
        """TIE residual ``(k ∂I/∂z + ∇·(I ∇φ)) / Ī`` in 1/Å², (Ny, Nx).

        Zero where the phase explains the measured transport of intensity.
        Computed on first access (it costs one transport operator) from the
        planes of the series that was solved: modify those arrays in between
        and it describes the modified data.
        """
        if self._residual is None and self._residual_fn is not None:
            self._residual = self._residual_fn()
            self._residual_fn = None
        return self._residual

    def __repr__(self) -> str:
        """One line: method, shape and dtype, where the arrays live, the time and
        the trust outcome; never the arrays (nor computes the residual)."""
        info = self.info or {}
        shape = tuple(int(n) for n in getattr(self.phase, "shape", ()))
        parts = [f"method={self.method!r}", f"phase={shape} {getattr(self.phase, 'dtype', '?')}"
                 " rad", "gradient rad/Å"]
        if "backend" in info:
            parts.append(f"backend={info['backend']!r}")
        if isinstance(info.get("time"), (int, float)):
            ms = info["time"] * 1e3
            parts.append(f"time={ms:.3g} ms" if ms < 100 else f"time={ms:.0f} ms")
        for key in ("iterations", "converged", "trusted", "fallback"):
            if info.get(key) is not None:
                parts.append(f"{key}={info[key]!r}")
        parts.append("uncertainty=" + ("None" if self.uncertainty is None else f"{shape} rad"))
        return "Reconstruction(" + ", ".join(parts) + ")"


def check_options(method, tol=None, max_iter=None, preconditioner="biharmonic", model=None,
                  uncertainty=None):
    """Validate a method name and the stopping rule of the iterative methods;
    refuse options the method would ignore (a typo or a wrong method is likelier
    than an intent)."""
    check_choice("method", method, METHODS)
    if uncertainty is not None:
        _check_bool("uncertainty", uncertainty)
        if method != "flowtie":
            raise InputError(f"uncertainty: applies to method 'flowtie' only, got method "
                             f"{method!r}")
    check_choice("preconditioner", preconditioner, ("biharmonic", "none"))
    if tol is not None and check_real("tol", tol, low=0.0, low_open=True) >= 1.0:
        raise InputError(f"tol: expected a relative residual below 1 (e.g. 1e-5), got {tol!r}: "
                         "a stop at or above 1 accepts a phase that fits the data no better "
                         "than a flat one")
    if max_iter is not None:
        check_count("max_iter", max_iter, 1, 10**7)
    if model is not None and method != "flowtie":
        raise InputError(f"model: applies to method 'flowtie' only, got method {method!r}")
    if model is not None:
        check_model(model)
    for name, value in (("tol", tol), ("max_iter", max_iter)):
        if value is not None and method not in ("tie-exact", "gd"):
            raise InputError(f"{name}: applies to methods 'tie-exact' and 'gd' only, got "
                             f"method {method!r}")
    if preconditioner != "biharmonic" and method != "gd":
        raise InputError(f"preconditioner: applies to method 'gd' only, got method {method!r}")


def check_model(model):
    """``model`` checked: a shipped name, a file path (str or os.PathLike), a
    FlowModel or a FlowEnsemble; :class:`InputError` naming what is expected
    otherwise (a number, bytes or a list is not read as a file name)."""
    if isinstance(model, (FlowModel, FlowEnsemble)):
        return model
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if isinstance(path, str) and path:
            return model
    names = ", ".join([*SHIPPED, *ENSEMBLES])
    shown = repr(model)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise InputError(f"model: expected a shipped name ({names}), a TorchScript file path, "
                     f"a FlowModel or FlowEnsemble, got {shown}")


# Mean intensities each working dtype holds with its full precision through
# the solves (squares and spectra included): below, values are subnormal and
# lose bits; above, the iterative methods' norms overflow.
_INTENSITY_SCALE = {np.float32: (1e-12, 1e12), np.float64: (1e-140, 1e140)}


def _check_floor(floor):
    """Teague's intensity floor, a fraction of the mean intensity in (0, 1], or "auto"."""
    if isinstance(floor, str) and floor == "auto":
        return floor
    floor = check_real("floor", floor, low=0.0, low_open=True)
    if floor > 1:
        raise InputError(f"floor: expected a fraction of the mean intensity in (0, 1], "
                         f"got {floor!r}")
    return floor


def check_regularisation(method, alpha, floor) -> None:
    """Refuse an intensity floor the method would ignore (the default, "auto",
    passes for every method; ``alpha`` regularises every Poisson solve,
    integrations included)."""
    if not (isinstance(floor, str) and floor == "auto") and method not in ("tie", "tie-exact"):
        raise InputError(f"floor: applies to methods 'tie' and 'tie-exact' only, got method "
                         f"{method!r}")


def _check_bool(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _check_alpha(alpha):
    """The Tikhonov parameter in Å⁻⁴ (0 to 1e12) or "auto"."""
    if isinstance(alpha, str) and alpha == "auto":
        return alpha
    alpha = check_real("alpha", alpha, low=0.0)
    if alpha > ALPHA_MAX:
        raise InputError(f"alpha: expected a Tikhonov parameter of at most {ALPHA_MAX:g} Å⁻⁴, "
                         f"or 'auto', got {alpha!r}")
    return alpha


#: What the solvers read of a focal series (:class:`~flowtie_fast.triplet.FocalSeries`).
SERIES_ATTRIBUTES = ("planes", "plane_names", "shape", "pixel_size", "wavenumber",
                     "derivative_weights", "intensity_weights", "gradient", "on_gpu")


def _check_is_series(series) -> None:
    """Refuse anything but a focal series (a FocalTriplet or FocalSeries, or an
    object with their attributes): :class:`InputError` naming ``triplet``."""
    if not all(hasattr(series, a) for a in SERIES_ATTRIBUTES):
        raise InputError(f"triplet: expected a FocalTriplet or FocalSeries, "
                         f"got {type(series).__name__}")


def _is_in_focus_row(w) -> bool:
    """Whether three intensity weights pick the middle plane, ``(0, 1, 0)``
    (scalar arithmetic: this runs on every solve)."""
    return abs(w[0]) < 1e-12 and abs(w[1] - 1) < 1e-12 and abs(w[2]) < 1e-12


def _dot(xp, a, b) -> float:
    return float(xp.vdot(a.ravel(), b.ravel()))


#: Relative distance (estimated) from the solution below which ``gd`` stopped
#: by ``max_iter`` is returned without a warning.
GD_DISTANCE_LIMIT = 0.01


def _remaining_distance(updates, norm) -> float:
    """How far an iteration stopped early still is from its limit, relative to
    ``norm`` (the iterate's size): the steps still to come, summed as a
    geometric series at the rate the last ten steps shrank by (inf where they
    did not shrink)."""
    if norm <= 0 or len(updates) < 11:
        return math.inf
    rate = (updates[-1] / updates[-11]) ** 0.1 if updates[-11] > 0 else 0.0
    if not rate < 1:
        return math.inf
    return updates[-1] * rate / (1 - rate) / norm


@dataclass(frozen=True)
class SolveOptions:
    """How one solve of :meth:`TIESolver.solve_planes` runs (the options a
    :class:`~flowtie_fast.plan.Plan` fixes once, and what a focal series
    carries besides its planes).

    Parameters
    ----------
    tol, max_iter : optional
        Stopping rule of ``tie-exact`` and ``gd`` (see :class:`TIESolver`).
    preconditioner : {"biharmonic", "none"}
        Descent direction of ``gd``.
    model : path, str, FlowModel or FlowEnsemble, optional
        The flow model of ``flowtie`` (default: the shipped default).
    uncertainty : bool
        ``flowtie``: the trust check, its fallback and the uncertainty map.
    residual : bool
        Compute the residual map where a method can (a Plan returns the phase
        only and says False).
    noise : Noise, "counts" or None
        The planes' noise (:mod:`flowtie_fast.noise`); ``"counts"``: Poisson
        statistics of the planes solved.
    gradient_noise : Noise or None
        The noise of a measured gradient ((rad/Å)², per component).
    registration : dict or None
        The record of the scans' registration (``triplet.registration``).
    saturation : dict or None
        The pile-up check of a 4D-STEM triplet's patterns
        (``triplet.saturation``): where ``"saturated"``, every method's
        ``info["trust"]`` starts with its ``"why"`` and ``flowtie``'s
        ``info["trusted"]`` is False.
    plane_defects : dict or None
        The isolated pixels replaced in the planes before they were given
        (``triplet.plane_defects``): reported as ``info["plane_defects"]``,
        and its ``"why"`` as ``info["trust"]`` where nothing else is.
    gradient_suspect : str or None
        Why the measured gradient's orientation looks wrong (its curl check,
        ``triplet.gradient_orientation["why"]``): then ``icom`` says so and
        nothing else leans on the gradient (no check against it, no fallback
        to it).
    gradient_misscaled : str or None
        Why the measured gradient and the planes' TIE gradient disagree in
        scale (:func:`flowtie_fast.trust.scale_warning`; a unit or
        calibration of one of them is wrong, which the data cannot tell):
        every method's ``info["trust"]`` starts with it; ``flowtie``'s
        ``info["trusted"]`` is False, with its own phase where the trust
        check passed it (no classical phase is a safer fallback), else the
        weaker (RMS) of the ``icom`` and TIE phases: the one scaled wrong is
        off by at most about its own size where it is the weaker, by many
        times the phase where it is the stronger.
    planes_image : str or None
        The 4D-STEM virtual image the planes are (``series.virtual``: "bf",
        "abf", ...; None where unknown): ``flowtie``'s shipped models read
        "bf" images and are not trusted on others.
    names : sequence of str, optional
        How messages name the planes (default minus, zero, plus).
    cuda_graphs : bool
        ``flowtie`` on the GPU: replay the flow network through the model's
        CUDA graphs (default True; False launches it eagerly).
    """

    tol: float | None = None
    max_iter: int | None = None
    preconditioner: str = "biharmonic"
    model: object = None
    uncertainty: bool = False
    residual: bool = True
    noise: object = None
    gradient_noise: object = None
    registration: dict | None = None
    saturation: dict | None = None
    plane_defects: dict | None = None
    gradient_suspect: str | None = None
    gradient_misscaled: str | None = None
    planes_image: str | None = None
    names: tuple | None = None
    cuda_graphs: bool = True


@functools.lru_cache(maxsize=64)
def _shipped_path(path: str) -> bool:
    """Whether ``path`` is a shipped model file (resolved once a path: about
    0.3 ms, at each solve otherwise)."""
    return _shipped_file(Path(path)) is not None


def image_verdict(method, image, model=None, network_alone=False):
    """Why a phase of ``image`` planes is not the specimen's, or None.

    The contrast of 4D-STEM virtual images other than the bright field
    ``"bf"`` does not follow the TIE (on 60 noise-free corpus files ``tie``
    reached NMSE 0.79 at best on ``"bf-full"``, ``"abf"``, ``"df"`` and
    ``"whole"`` planes), and the shipped flow models were trained on
    ``"bf"`` images. ``icom`` does not read the planes; ``flowtie`` with its
    trust check judges them there (and falls back); the network alone
    (``network_alone``) of a shipped ``model`` (None: the default, a
    shipped name, or a shipped file given by its path) is told here. None
    for an unknown ``image`` and for a model of your own.
    """
    if method == "icom" or image is None or image in trust.SIGNED_IMAGES:
        return None
    if method == "flowtie":
        shipped = model is None or trust.is_shipped(model) or (
            isinstance(model, str) and (model in SHIPPED or model in ENSEMBLES)) or (
            # a shipped file given by its path is a shipped model (trust.is_shipped)
            isinstance(model, (str, os.PathLike)) and _shipped_path(os.fspath(model)))
        if not (network_alone and shipped):
            return None
        return (f"the planes are {image!r} images and the shipped models read bright-field "
                "'bf' ones: this flow's phase is not the specimen's")
    return (f"the planes are {image!r} images, whose contrast does not follow the TIE "
            "(bright-field 'bf' images do): this phase is not the specimen's")


def _suspect(series):
    """Why a series' measured gradient looks wrongly oriented, or None."""
    return trust.suspicion(getattr(series, "gradient_orientation", None))


def _misscaled(series):
    """Why a series' measured gradient and planes disagree in scale, or None."""
    return trust.scale_warning(getattr(series, "gradient_orientation", None))


#: Why a measured gradient that is the same at every pixel gives no phase.
_CONSTANT_GRADIENT = ("the measured gradient is constant (the same at every pixel: zero once "
                      "its mean is removed), so it holds no phase and its icom phase is zero; "
                      "a centre-of-mass channel left unfilled or a gradient of the wrong array?")


def _check_network_planes(series, order) -> None:
    """Refuse a series the flow network cannot read: it reads three planes,
    below, at and above the in-focus plane (trained on ``-dz, 0, +dz``)."""
    z = np.asarray(series.z, float)[order]
    z0 = float(getattr(series, "z0", 0.0))
    # at z0 within rounding (a z0 computed as the middle of two planes)
    at = len(z) == 3 and abs(z[1] - z0) <= 1e-9 * max(z[2] - z[0], abs(z0), 1.0)
    if not (at and z[0] < z[1] < z[2]):
        raise InputError(f"method: 'flowtie' reads three planes, one at z0 ({z0!r} Å) and one "
                         f"on either side of it (the network's -dz, 0, +dz); this series has "
                         f"{len(z)} at z = {[float(v) for v in z]} Å: give three such planes "
                         f"(a FocalTriplet, or a FocalSeries of them), or use a TIE method")


#: How a triplet's gradient is given its noise, where it holds none.
_GIVE_GRADIENT_NOISE = ("make the triplet with FocalTriplet.from_4dstem, which measures it, or "
                        "set triplet.gradient_noise = flowtie_fast.noise.Noise((var_y, var_x), "
                        "'given') in (rad/Å)²")

#: Why an ``icom`` phase filtered by its gradient's noise is zero.
_NO_GRADIENT_PHASE = ("icom: the measured gradient holds no phase above its noise ({} noise): "
                      "the phase is zero; a larger dose may carry it")


def _constant_gradient(gradient) -> bool:
    """Whether each component of a measured gradient is one value throughout."""
    xp = array_module(gradient)
    return all(float(xp.max(c)) == float(xp.min(c)) for c in gradient)


#: Conjugate gradients stop where the residual has grown beyond this many
#: times the least it reached (diverged) ...
PCG_DIVERGENCE = 1e3
#: ... or has not taken that least down by a tenth for this many iterations
#: (stalled): the working precision's floor, reached before a ``tol`` below it.
PCG_STALL = 50
#: The relative residual a conjugate-gradient solve reaches in each working
#: dtype (its default ``tol``): a solve stopped at or below it is as good as
#: the precision allows, whatever lower ``tol`` was asked for.
PCG_PRECISION = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def _pcg_verdict(info, dtype):
    """Why a ``tie-exact`` solve's phase is not to be trusted, from its
    record (``_pcg``), or None: stopped short of its ``tol`` above the
    working precision's floor (:data:`PCG_PRECISION`). The phase returned is
    the iterate of least residual."""
    if info["converged"] or info["least_residual"] <= PCG_PRECISION[np.dtype(dtype)]:
        return None
    how = {"max_iter": f"after {info['iterations']} iterations (max_iter)",
           "stalled": f"after {info['iterations']} iterations, the last {PCG_STALL} "
                      "without a residual a tenth lower",
           "diverged": f"after {info['iterations']} iterations, its residual growing "
                       f"beyond {PCG_DIVERGENCE:g} times its least",
           "breakdown": f"after {info['iterations']} iterations (its products reached "
                        "zero or lost positivity at the working precision)"}[info["stopped"]]
    advice = "a larger max_iter, or dtype='float64'" if info["stopped"] == "max_iter" else \
        "dtype='float64', or a larger tol"
    return (f"tie-exact: stopped {how}, at a least relative residual of "
            f"{info['least_residual']:.3g}, above its tolerance {info['tol']:.3g}: the phase "
            f"is the iterate of that residual ({advice})")


def lead_trust(info, why) -> None:
    """``why`` put first in ``info["trust"]``, any reason already there
    after it (``"; also: ..."``): the verdicts that bias every method's input
    (saturation, a scale disagreement) lead the reasons a solve found."""
    other = info.get("trust")
    info["trust"] = why + (f"; also: {other}" if other and other != why else "")


def _mark_misscaled(method, why, info) -> None:
    """Where the measured gradient and the planes disagree in scale (``why``,
    warned when the triplet or the plan checked them), ``info["trust"]``
    says so first, for every method (one of the two is scaled wrong and
    every phase leans on one of them); ``flowtie``'s ``info["trusted"]`` is
    False."""
    if not why:
        return
    lead_trust(info, why)
    if method == "flowtie":
        _untrusted_flow(info, "the measured gradient and the planes disagree in scale")


def _warn_unregistered(method, registration, info):
    """Where the drift between the scans could not be measured (``registration``,
    ``triplet.registration``, says it is not reliable), a phase of ``method``
    may be wrong: ``info["trust"]`` and a :class:`TrustWarning`, at the
    caller's line (:func:`~flowtie_fast.errors.user_stacklevel`), say so. Not
    for ``icom`` (the in-focus scan alone) nor ``flowtie`` (its trust check
    weighs the record itself)."""
    if method in ("icom", "flowtie") or not registration or registration.get("reliable", True):
        return
    # first: a drift left in the planes explains a disagreement found before
    lead_trust(info, "the drift between the scans could not be measured")
    warnings.warn(f"{method}: the drift between the scans could not be measured "
                  "(triplet.registration); if they drifted, this phase is wrong. "
                  "method='icom' uses the in-focus scan alone", TrustWarning,
                  stacklevel=user_stacklevel())


def check_verdict_records(saturation=None, plane_defects=None, prefix="") -> None:
    """The records a solve's verdict reads, checked where given: a
    ``saturation`` record (a dict whose ``"saturated"`` is True or False,
    with its ``"why"`` text where True) and a ``plane_defects`` record (a
    dict of ``"pixels"`` per plane minus, zero, plus, ``"repaired"`` True or
    False and its ``"why"``); only the fields the verdict reads.

    Parameters
    ----------
    saturation, plane_defects : dict or None
        The records (a triplet's, or :meth:`Plan.solve
        <flowtie_fast.plan.Plan.solve>`'s arguments).
    prefix : str
        Put before the names in messages (e.g. ``"triplet."``).

    Raises
    ------
    InputError
        Naming the record (``saturation: expected ...``).
    """
    if saturation is not None and not (
            isinstance(saturation, dict)
            and isinstance(saturation.get("saturated"), (bool, np.bool_))
            and (not saturation["saturated"] or _is_text(saturation.get("why")))):
        raise InputError(f"{prefix}saturation: expected a saturation record (a triplet's "
                         f"saturation: a dict whose 'saturated' is True or False, with its "
                         f"'why' where True) or None, got {_brief_record(saturation)}")
    if plane_defects is not None and not (
            isinstance(plane_defects, dict)
            and isinstance(plane_defects.get("repaired"), (bool, np.bool_))
            and _is_text(plane_defects.get("why"))
            and isinstance(plane_defects.get("pixels"), dict)
            and set(plane_defects["pixels"]) <= {"minus", "zero", "plus", "gradient"}):
        raise InputError(f"{prefix}plane_defects: expected a record of replaced pixels (a "
                         f"triplet's plane_defects: a dict of 'pixels' per plane minus, zero, "
                         f"plus or gradient, 'repaired' True or False and its 'why') or None, got "
                         f"{_brief_record(plane_defects)}")


def _is_text(value) -> bool:
    """Whether ``value`` is text that says something (a record's ``why``)."""
    return isinstance(value, str) and bool(value.strip())


def _brief_record(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _planes_defects(defects):
    """A ``plane_defects`` record without its ``"gradient"`` entry (the
    patterns whose centre of mass was replaced), for the methods that read
    the planes alone; None where nothing else is left."""
    if defects is None or "gradient" not in defects["pixels"]:
        return defects
    pixels = {k: v for k, v in defects["pixels"].items() if k != "gradient"}
    if not pixels:
        return None
    # the centre of mass's text follows the planes' (FocalTriplet.from_reductions)
    head, sep, _ = defects["why"].rpartition("; gradient: ")
    return {**defects, "pixels": pixels, "why": head if sep else defects["why"]}


def _record_defects(defects, info) -> None:
    """The isolated pixels replaced in the planes, and the patterns whose
    centre of mass was replaced (``defects``: a record of
    :func:`~flowtie_fast.planes.screen_planes` and
    :func:`~flowtie_fast.stem.focal.repair_com`, warned where it was made, or
    None) into ``info["plane_defects"]``, and its ``"why"`` as
    ``info["trust"]`` where nothing else is."""
    if defects is not None:
        info["plane_defects"] = defects
        info.setdefault("trust", defects["why"])


def _mark_saturated(method, record, info) -> None:
    """Where a triplet's patterns saturated (``record``: its ``saturation``,
    warned when it was made; None where unknown), ``info["trust"]`` says so
    first, for every method (another reason the solve found follows it): the
    centre of mass and the planes are both biased, so saturation itself
    makes no fallback, and ``flowtie``'s ``info["trusted"]`` is False (its
    own phase where its trust check passed it, else that check's
    fallback)."""
    if not isinstance(record, dict) or not record.get("saturated"):
        return
    lead_trust(info, f"the detector saturated (triplet.saturation): {record['why']}")
    if method == "flowtie":
        _untrusted_flow(info, "the detector saturated")


def _untrusted_flow(info, cause) -> None:
    """``flowtie``'s phase kept but not trusted for ``cause``, which biases
    the input every model reads: ``info["trusted"]`` False and no
    uncertainty map (the models' spread was calibrated on clean data and
    does not see the bias; ``rec.uncertainty`` None, a plan's
    ``uncertainty_out`` :data:`~flowtie_fast.trust.NO_UNCERTAINTY`)."""
    info["trusted"] = False
    if info.pop("uncertainty_map", None) is not None:
        info["uncertainty"] = (f"none: {cause}; the spread of the models, calibrated on "
                               "clean data, does not measure the bias it brings")


def _beyond_memory(count: int, shape, exc) -> InputError:
    """The refusal of ``count`` triplets of ``shape`` px whose flow pass ran
    out of memory (``exc``): the input's size, not the network, is at fault."""
    return InputError(f"planes: {count} triplet(s) of {tuple(shape)} px need more memory than "
                      f"is available for one pass of the flow network ({first_line(exc)}); "
                      "solve fewer or smaller images at a time")


class TIESolver:
    """Reusable solver for one image shape: plans, buffers and kernels made once.

    Parameters
    ----------
    shape : (int, int)
        Image shape (Ny, Nx).
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    boundary : {"periodic", "mirror"}
        Boundary condition of the Poisson solves.
    scheme : {"auto", "spectral", "fd"}
        Discretisation (see :mod:`flowtie_fast.poisson`).
    alpha : float or "auto"
        Tikhonov parameter in Å⁻⁴ of the classical methods' Poisson solves
        (default 0); "auto": from the noise of the series by Morozov's
        discrepancy principle (0 where the noise is unknown).
    floor : float or "auto"
        Intensity floor as a fraction of the mean in-focus intensity; Teague's
        division uses ``max(I, floor * Ī)``. "auto" (default): twice the
        noise's standard deviation over the mean, at least 0.1 for ``tie``
        (Teague's division) and 1e-3 for ``tie-exact`` (its clip of the
        intensity, which keeps the weights positive); the rule:
        :mod:`flowtie_fast.noise`.
    denoise : bool
        Filter the focal derivative by its spectrum and the series' noise
        before the classical methods solve (default True; nothing happens
        where the noise is unknown). The rules: :mod:`flowtie_fast.noise`.
    dtype : {"float32", "float64"}
        Working precision.
    backend : {"auto", "cpu", "gpu"} or Backend
        Where to compute.
    threads : int, optional
        CPU threads.

    Notes
    -----
    Calls on one solver are serialised by a lock (it owns work buffers); use
    one solver per thread to solve in parallel.

    Examples
    --------
    >>> solver = TIESolver((256, 256), pixel_size=0.18)
    >>> for t in triplets:
    ...     rec = solver.solve(t, method="tie")
    """

    def __init__(self, shape, pixel_size, *, boundary="periodic", scheme="auto", alpha=0.0,
                 floor="auto", denoise=True, dtype="float32", backend="auto", threads=None):
        self.floor = _check_floor(floor)
        self.alpha = _check_alpha(alpha)
        self.denoise = _check_bool("denoise", denoise)
        self.poisson = PoissonSolver(shape, pixel_size, boundary=boundary, scheme=scheme,
                                     alpha=0.0 if alpha == "auto" else alpha, dtype=dtype,
                                     backend=backend, threads=threads)
        self.backend: Backend = self.poisson.backend
        self.shape = self.poisson.shape
        self.pixel_size = self.poisson.pixel_size
        self.dtype = self.poisson.dtype
        be = self.backend
        # Beyond the Poisson solver's: ∂I/∂z, the intensity, the iterative methods'
        # work arrays, the outputs and the planes cast to the working dtype.
        be.check_memory("shape", self.shape, SOLVER_IMAGES * self.poisson.work_bytes,
                        "a TIE solver's buffers")
        self._didz = be.zeros(self.shape, self.dtype)
        self._intensity_buffer = be.zeros(self.shape, self.dtype)
        self._intensity = self._intensity_buffer  # the in-focus intensity in use
        # Minimum and sum of each plane (validation and mean intensity), made once.
        self._stats_scratch = None if be.is_gpu else np.empty((6, self.shape[0]))
        self._stats = np.empty((3, 2))
        # The screen of the planes for defects of one plane (planes.screen_planes).
        self._screen_scratch = np.empty((9, self.shape[0]))
        self._screen_out = np.empty((3, 3))
        self._defects = None  # what the latest screen found (under the lock)
        self._buffers: dict = {}  # work arrays of the iterative methods, made once
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        p = self.poisson
        return (f"TIESolver(shape={self.shape}, pixel_size={self.pixel_size}, "
                f"boundary={p.boundary!r}, scheme={p.scheme!r}, dtype={self.dtype}, "
                f"backend={self.backend!r})")

    # ------------------------------------------------------------------ inputs

    def _check_series(self, series):
        _check_is_series(series)
        if series.shape != self.shape:
            raise InputError(f"triplet: expected images of shape {self.shape} for this solver, "
                             f"got {series.shape}")
        if not np.allclose(series.pixel_size, self.pixel_size, rtol=1e-6, atol=0):
            raise InputError(f"triplet: pixel_size {series.pixel_size} Å differs from the "
                             f"solver's {self.pixel_size} Å")
        # Attributes a caller may have set since the series checked them.
        check_noise(getattr(series, "noise", None), len(series.planes))
        if series.gradient is not None:
            check_gradient_peak(check_gradient(series.gradient, self.shape), series.wavenumber)

    def _derivative_and_intensity(self, planes, derivative_weights, intensity_weights,
                                  names=None):
        """Validate the planes, fill the focal derivative (1/Å, intensity units)
        and the in-focus intensity; return the mean intensity and the planes in
        the working dtype.

        Every entry point (a FocalSeries, a Plan's bare arrays, a batch) goes
        through the same check, one fused pass over each plane
        (:func:`~flowtie_fast.planes.check_intensity_stats`): NaN or Inf, a
        negative intensity or an all-zero plane raises :class:`InputError`
        naming the plane (``names``, default minus/zero/plus or planes[i])."""
        # Planes on this backend in the working dtype (float16 and integers are cast).
        given, planes = planes, [self.backend.asarray(p, self.dtype) for p in planes]
        if names is None:
            names = ("minus", "zero", "plus") if len(planes) == 3 else \
                [f"planes[{i}]" for i in range(len(planes))]
        kern = self.backend.kernels
        t = self.dtype.type
        dw, iw = derivative_weights, intensity_weights
        in_focus = len(planes) == 3 and _is_in_focus_row(iw)
        fused = len(planes) == 3 and not self.backend.is_gpu
        if fused:  # the derivative and the planes' statistics in one pass
            stats = self._stats
            with np.errstate(over="ignore", invalid="ignore"):  # Inf or NaN: refused below
                kern.focal_derivative3_stats(*planes, self._didz, *(t(w) for w in dw),
                                             self._stats_scratch, stats)
        else:
            scratch = None if self._stats_scratch is None else self._stats_scratch[:2]
            stats = self.backend.plane_stats(planes, scratch, self._stats)
        mean = self._check_planes(names, given, planes, stats,
                                  (0.0, 1.0, 0.0) if in_focus else iw)
        planes, self._defects = screen_planes(names, planes, self._screen(planes),
                                              where="info['plane_defects']")
        if self._defects is not None and self._defects["repaired"]:  # rare: again, repaired
            fused = False
            stats = self.backend.plane_stats(planes)
            mean = self._check_planes(names, given, planes, stats,
                                      (0.0, 1.0, 0.0) if in_focus else iw)
        if len(planes) == 3:
            if not fused:
                kern.focal_derivative3(*planes, self._didz, *(t(w) for w in dw))
            if in_focus:
                self._intensity = planes[1]  # read only: no copy
            else:
                self._intensity = self._intensity_buffer
                kern.focal_derivative3(*planes, self._intensity, *(t(w) for w in iw))
        else:
            stack = self.backend.xp.stack(planes)
            kern.focal_derivative_n(stack, self.backend.asarray(dw, self.dtype), self._didz)
            self._intensity = self._intensity_buffer
            kern.focal_derivative_n(stack, self.backend.asarray(iw, self.dtype),
                                    self._intensity)
        return mean, planes

    def validate_planes(self, planes, intensity_weights, names, screen=True):
        """Check planes as a solve would, without solving.

        A batch is checked whole this way before any item is written.

        Parameters
        ----------
        planes : sequence of arrays (Ny, Nx)
            Intensities (any real dtype, any backend's arrays).
        intensity_weights : sequence of float
            The row of :func:`~flowtie_fast.planes.focal_weights` that forms the
            in-focus intensity from the planes (dimensionless).
        names : sequence of str
            How messages name the planes.
        screen : bool
            Also refuse the defects of one plane that make a phase from the
            planes wrong (:func:`~flowtie_fast.planes.screen_planes`; default
            True). False where no phase is made from them (``icom``), or
            where the solve that follows screens them.

        Returns
        -------
        float
            The mean in-focus intensity ``Σ w_i mean(plane_i)`` (the planes'
            unit, e.g. counts).

        Raises
        ------
        InputError
            Naming the plane that fails a check.
        """
        given, planes = planes, [self.backend.asarray(p, self.dtype) for p in planes]
        iw = intensity_weights
        if len(planes) == 3 and _is_in_focus_row(iw):
            iw = (0.0, 1.0, 0.0)
        mean = self._check_planes(names, given, planes, self.backend.plane_stats(planes), iw)
        if screen:
            screen_planes(names, planes, self._screen(planes), repair=False)  # refusals only
        return mean

    def _screen(self, planes) -> np.ndarray:
        """Per plane, the figures of :func:`~flowtie_fast.planes.screen_stats`
        (N x 3, float64): one pass of a kernel over three planes on the CPU, the
        array module's operations on the GPU."""
        if len(planes) == 3 and not self.backend.is_gpu:
            self.backend.kernels.planes_screen3(*planes, self._screen_scratch, self._screen_out)
            return self._screen_out
        return np.array([screen_stats(p) for p in planes], dtype=np.float64).reshape(-1, 3)

    def _check_planes(self, names, given, planes, stats, iw):
        """The checks of the planes' statistics (``given``: the planes as passed,
        ``planes``: in the working dtype); returns the mean in-focus intensity,
        ``Σ w_i mean(plane_i)``."""
        try:
            check_intensity_stats(names, stats, planes)
        except InputError as exc:
            with np.errstate(all="ignore"):  # the values it explains overflow on the way
                self._explain_overflow(names, given, planes, exc)
            raise
        mean = 0.0
        for i, w in enumerate(iw):
            mean += float(w) * stats.item(i, 1)
        mean /= self.shape[0] * self.shape[1]
        if not mean > 0:
            raise InputError(f"triplet: the in-focus intensity must have a positive mean, "
                             f"got {mean:g}")
        lo, hi = _INTENSITY_SCALE[self.dtype.type]
        if not lo <= mean <= hi:
            advice = " or use dtype='float64'" if self.dtype == np.float32 else ""
            raise InputError(f"triplet: a mean in-focus intensity of {mean:g} is outside what "
                             f"{self.dtype} holds precisely ({lo:g} to {hi:g}); rescale the "
                             f"intensities (e.g. divide by their mean){advice}")
        return mean

    def _explain_overflow(self, names, given, planes, exc):
        """Where a plane was refused only because casting it to the working
        dtype overflowed or underflowed, say so instead (the rare path of a
        refusal): only the plane the refusal names, and only a float plane
        that was cast."""
        refused = [(name, a, cast) for name, a, cast in zip(names, given, planes)
                   if str(exc).startswith(f"{name}:") and cast is not a
                   and getattr(a, "dtype", np.dtype(object)).kind == "f"]
        if not refused:
            return
        name, a, cast = refused[0]
        xp = self.backend.xp
        a = xp.asarray(a)
        if "zero everywhere" in str(exc):
            peak = float(abs(a).max())
            if peak > 0:
                raise InputError(
                    f"{name}: values up to {peak:g} underflow to zero in {self.dtype}; "
                    f"rescale the intensities (e.g. divide by their mean) or use "
                    "dtype='float64'") from exc
        elif "NaN or Inf" in str(exc):
            if bool(xp.isfinite(a).all()) and not bool(xp.isfinite(cast).all()):
                raise InputError(f"{name}: values up to {float(abs(a).max()):g} "
                                 f"exceed the range of {self.dtype}; rescale the intensities "
                                 "or use dtype='float64'") from exc
            if bool(xp.isfinite(cast).all()):  # finite values whose float64 sum overflows
                raise InputError(f"{name}: values up to {float(abs(cast).max()):g} are too "
                                 "large to sum; rescale the intensities") from exc

    # ------------------------------------------------------------------ public

    def solve(self, series, method="tie", *, tol=None, max_iter=None,
              preconditioner="biharmonic", model=None, uncertainty=None, out=None,
              gradient_out=None):
        """Retrieve the phase of a focal series.

        Parameters
        ----------
        series : FocalTriplet or FocalSeries
            The measured intensities (shape and pixel size of this solver).
        method : {"tie", "tie-uniform", "tie-exact", "gd", "icom", "flowtie"}
            See the module docstring (default "tie").
        tol : float, optional
            Stopping rule of ``tie-exact`` and ``gd``: the relative residual
            (dimensionless) at which they stop. Default: ``tie-exact`` stops at
            the noise's level, at least 1e-5 (float32) or 1e-10 (float64);
            ``gd`` at 1e-6 or the noise's level.
        max_iter : int, optional
            Stopping rule of ``tie-exact`` and ``gd``: most iterations (default
            100 for ``tie-exact``, 200 for ``gd``).
        preconditioner : {"biharmonic", "none"}
            Descent direction of ``gd`` (default "biharmonic").
        model : path, "default", "fast", "ensemble", FlowModel or FlowEnsemble, optional
            The flow model of ``flowtie``: a TorchScript file or a shipped model
            (default "default"; "fast" takes about half the time, less accurate).
        uncertainty : bool, optional
            ``flowtie``: run the shipped models beside the chosen one for the
            per-pixel uncertainty and the trust check, and fall back to the
            classical phase where the flow is not trusted (default True; four
            network passes instead of one: ``False`` for speed, with neither).
            See :mod:`flowtie_fast.trust`.
        out, gradient_out : arrays, optional
            Caller-owned outputs (backend arrays of the working dtype): the
            phase (Ny, Nx) in rad and the gradient (2, Ny, Nx) in rad/Å.

        Returns
        -------
        Reconstruction
            The phase (rad), its gradient (rad/Å), the residual map (1/Å², on
            first access), the solve's ``info`` (its keys:
            :class:`Reconstruction`) and, for ``flowtie``, the uncertainty map
            (rad).
        """
        check_options(method, tol, max_iter, preconditioner, model, uncertainty)
        self._check_series(series)
        check_verdict_records(getattr(series, "saturation", None),
                              getattr(series, "plane_defects", None), prefix="triplet.")
        if method == "icom" and series.gradient is None:
            raise InputError("method: 'icom' needs a measured phase gradient "
                             "(FocalSeries(..., gradient=...))")
        names = series.plane_names
        options = SolveOptions(tol=tol, max_iter=max_iter, preconditioner=preconditioner,
                               model=model, names=tuple(names),
                               noise=getattr(series, "noise", None),
                               gradient_noise=getattr(series, "gradient_noise", None),
                               registration=getattr(series, "registration", None),
                               saturation=getattr(series, "saturation", None),
                               plane_defects=getattr(series, "plane_defects", None),
                               gradient_suspect=_suspect(series),
                               gradient_misscaled=_misscaled(series),
                               planes_image=getattr(series, "virtual", None),
                               uncertainty=method == "flowtie" and uncertainty is not False)
        inputs = (*series.planes, series.gradient, out)
        input_names = (*names, "gradient", "out")
        be = self.backend
        if out is not None:
            be.check_output("out", out, self.shape, self.dtype, inputs[:-1], input_names)
        if gradient_out is not None:
            be.check_output("gradient_out", gradient_out, (2,) + self.shape, self.dtype,
                            inputs, input_names)
        with self._lock:
            self.backend.prepare()
            start = time.perf_counter()
            self.poisson.alpha = 0.0 if self.alpha == "auto" else self.alpha
            if method == "icom":
                noise = getattr(series, "gradient_noise", None)
                g, kept = self._denoised_gradient(series.gradient, noise)
                rec = self.integrate(g, out=out, gradient_out=gradient_out, _locked=True)
                self._icom_verdict(rec.phase, series.gradient, noise, kept, options, rec.info)
                defects = options.plane_defects
                if defects is not None and "gradient" in defects["pixels"]:
                    # patterns whose centre of mass was replaced (warned when made)
                    _record_defects(defects, rec.info)
                _mark_misscaled(method, options.gradient_misscaled, rec.info)
                _mark_saturated(method, options.saturation, rec.info)
                rec.info["time"] = time.perf_counter() - start
                return rec
            phase = self.poisson.output(out)
            grad = self.poisson.output(gradient_out, (2,) + self.shape)
            info = {"backend": self.backend.name, "scheme": self.poisson.scheme,
                    "boundary": self.poisson.boundary}
            planes, dweights, iweights = (series.planes, series.derivative_weights,
                                          series.intensity_weights)
            order = np.argsort(np.asarray(series.z, float), kind="stable")
            if method == "flowtie":
                _check_network_planes(series, order)
                if order.tolist() != [0, 1, 2]:
                    # the network reads its planes as (-dz, 0, +dz): a series listed in
                    # another order had its planes read swapped (NMSE 1.1, unflagged)
                    planes = [planes[i] for i in order]
                    dweights = np.asarray(dweights)[order]
                    iweights = np.asarray(iweights)[order]
                    if options.names:
                        options = replace(options,
                                          names=tuple(options.names[i] for i in order))
            mean, residual = self._solve_planes(
                planes, dweights, iweights, series.wavenumber, series.gradient, method, phase,
                grad, info, options)
            self._check_result(method, phase, grad, series.wavenumber)
            if info.get("fallback") == "icom" and not (self.denoise and options.gradient_noise):
                why = self._unfiltered_gradient(series.gradient)  # the icom phase returned
                if why is not None:
                    info.setdefault("trust", why)
            # found (and warned) when the series was made: the planes' (not the
            # centre of mass's, which these methods do not read)
            _record_defects(_planes_defects(options.plane_defects), info)
            noise_check = getattr(series, "noise_check", None)
            if noise_check is not None and options.noise is None and method != "flowtie":
                lead_trust(info, noise_check)  # planes of noise alone: the cause of the rest
            defocus_check = getattr(series, "defocus_check", None)
            if defocus_check is not None and method != "flowtie":
                info.setdefault("trust", defocus_check)  # beyond the TIE's linear transport
            _warn_unregistered(method, options.registration, info)
            why = image_verdict(method, options.planes_image, options.model,
                                not options.uncertainty)
            if why is not None:
                info.setdefault("trust", why)
                warnings.warn(f"{method}: {why}; make the planes bright-field images "
                              "(virtual='bf'), or use method='icom'", TrustWarning,
                              stacklevel=user_stacklevel())
            _mark_misscaled(method, options.gradient_misscaled, info)
            _mark_saturated(method, options.saturation, info)
            info["time"] = time.perf_counter() - start
            rec = Reconstruction(phase, grad, method, info, info.pop("uncertainty_map", None))
            if residual is not None:
                rec._residual = residual / mean
            else:
                rec._residual_fn = lambda: self._residual(series, phase)
            return rec

    def _solve_planes(self, planes, derivative_weights, intensity_weights, k, gradient,
                      method, phase, grad, info, options):
        """The solve itself, on validated arrays and under the lock: fills ``phase``
        and ``grad``; returns the mean intensity and the unnormalised residual map
        where the method computes it anyway (else None)."""
        if gradient is not None:  # before anything is written
            if method == "flowtie":  # read as given by the network; its icom fallback too
                check_gradient_peak(check_gradient(gradient, self.shape), k)
            else:
                gradient = self._check_gradient(gradient, k)
        mean, planes = self._derivative_and_intensity(planes, derivative_weights,
                                                      intensity_weights, options.names)
        defects = self._defects  # warned by the screen; recorded once solved
        tol, max_iter = options.tol, options.max_iter
        want = options.residual
        residual = None
        self.poisson.alpha = 0.0 if self.alpha == "auto" else self.alpha
        floor, noise_norm = self.floor, 0.0
        if method != "flowtie":
            floor, noise_norm = self._regularise(options.noise, mean, k,
                                                 derivative_weights, intensity_weights, info,
                                                 teague=method == "tie")
        if method == "flowtie":
            residual = self._flow(planes, gradient, k, options.model, phase, grad, info,
                                  want, options.cuda_graphs)
            if options.uncertainty:
                residual = self._trust(planes, gradient, k, options, mean, derivative_weights,
                                       intensity_weights, phase, grad, info, residual)
            elif options.gradient_suspect:
                # the network alone has no check to fall back by: the orientation
                # verdict is its reason, as the batched pass says it (a swapped
                # -dz and +dz reads as a half turn: the flow's phase is turned)
                info.setdefault("trust", options.gradient_suspect)
        elif method == "tie-uniform":
            self.poisson.solve(self._didz, scale=-k / mean, out=phase, grad_out=grad)
        elif method == "tie":
            self.poisson.teague(self._didz, self._intensity, floor * mean, scale=-k,
                                out=phase, grad_out=grad)
        elif method == "tie-exact":
            residual = self._pcg(k, mean, phase, grad, info, tol, max_iter, want, floor,
                                 noise_norm)
            why = _pcg_verdict(info, self.dtype)
            if why is not None:
                info["trust"] = why
                warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
        elif method == "gd":
            residual = self._gradient_descent(k, mean, phase, grad, info, tol, max_iter,
                                              options.preconditioner or "biharmonic",
                                              want, noise_norm)
        else:
            raise InputError(f"method: {method!r} does not solve from planes")
        if gradient is not None and method != "flowtie":
            if options.gradient_suspect:  # its orientation looks wrong: no reference
                info["icom_disagreement"] = None
                if trust.HALF_TURN in options.gradient_suspect:
                    # the same evidence reads as -dz and +dz swapped, which turns this phase
                    info.setdefault("trust", (
                        f"{method}: the measured gradient points against this phase's: either "
                        f"the detector rotation is half a turn wrong (icom's phase is then the "
                        f"negative one) or the -dz and +dz scans are swapped (this one is); "
                        f"the data cannot tell which"))
            else:
                self._check_against_gradient(method, gradient, options.gradient_noise, phase,
                                             info)
        _record_defects(defects, info)
        self.backend.synchronize()
        return mean, residual

    def _check_against_gradient(self, method, gradient, gradient_noise, phase, info):
        """Compare a classical focal-derivative phase with the phase of the
        measured gradient (integrated as ``icom`` would): the disagreement
        into ``info["icom_disagreement"]``, and a :class:`TrustWarning` with
        ``info["trust"]`` where it exceeds the calibrated limit
        (:func:`flowtie_fast.trust.classical_verdict`)."""
        alpha = self.poisson.alpha
        self.poisson.alpha = 0.0 if self.alpha == "auto" else self.alpha  # as icom solves
        try:
            g, _ = self._denoised_gradient(gradient, gradient_noise)
            icom = self.poisson.integrate(g, out=self._buf("icom_phase"))
        finally:
            self.poisson.alpha = alpha
        value = trust.disagreement(phase, icom, scratch=self._buf("tmp"))
        info["icom_disagreement"] = value
        why = trust.classical_verdict(method, value)
        if why is not None and "trust" not in info:  # one warning a solve
            info["trust"] = why
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())

    def _denoised_gradient(self, gradient, noise):
        """A measured gradient in the working dtype, filtered by its noise where
        that is known and ``denoise`` is on (a copy: the caller keeps its own;
        :func:`~flowtie_fast.noise.denoise_gradient`, for this solver's
        boundary); and the Fourier modes kept (None: not filtered)."""
        g = self.backend.asarray(gradient, self.dtype)
        if not (self.denoise and noise is not None):
            return g, None
        self.backend.check_memory("gradient", f"a measured gradient of {self.shape}",
                                  denoise_gradient_bytes(self.shape, self.poisson.mirror)
                                  + g.nbytes, "the filter of the gradient's noise")
        g = g.copy()
        return g, denoise_gradient(g, noise.variance, mirror=self.poisson.mirror,
                                   pixel_size=self.pixel_size)

    def _regularise(self, noise, mean, k, derivative_weights, intensity_weights, info,
                    quiet=False, teague=False):
        """Set this solve's Tikhonov parameter and return the intensity floor
        (fraction of the mean: Teague's division's where ``teague``, else
        the exact TIE's clip) and the norm the noise gives the TIE residual,
        ``k √N σ_D`` (0 without noise), from the series' noise
        (:mod:`flowtie_fast.noise`) where ``alpha`` / ``floor`` are "auto";
        ``quiet``: no warning (a phase the caller does not receive)."""
        least = TEAGUE_FLOOR_MIN if teague else FLOOR_MIN
        if noise == COUNTS:
            noise = poisson_noise(self._stats[:, 1] / (self.shape[0] * self.shape[1]))
        info["noise"] = None if noise is None else noise.source
        if noise is None:
            floor = least if self.floor == "auto" else self.floor
            info.update(alpha=self.poisson.alpha, floor=floor)
            return floor, 0.0
        var_d = noise.combined(derivative_weights)  # of ∂I/∂z, intensity²/Å²
        var_i = noise.combined(intensity_weights)
        if self.denoise:
            info["denoise"] = denoise(self._didz, var_d)
            if info["denoise"] == 0 and not quiet:
                info["trust"] = "no signal above the noise"
                warnings.warn("the focal derivative holds no signal above the noise of the "
                              f"planes ({noise.source} noise): the phase is zero; a "
                              "larger dose or defocus step, or the measured gradient "
                              "(method='icom'), may carry it", TrustWarning,
                              stacklevel=user_stacklevel())
        if self.alpha == "auto":
            # The filter is linear: α of the source -k ∂I/∂z / Ī is that of ∂I/∂z.
            self.poisson.alpha = discrepancy_alpha(self._didz, self.pixel_size, var_d)
        floor = teague_floor(var_i, mean, least) if self.floor == "auto" else self.floor
        info.update(alpha=self.poisson.alpha, floor=floor)
        if self.denoise:  # the filtered derivative is fitted exactly
            return floor, 0.0
        return floor, k * (self.shape[0] * self.shape[1] * var_d) ** 0.5

    def solve_planes(self, planes, derivative_weights, intensity_weights, wavenumber, method, *,
                     gradient=None, out, gradient_out=None, uncertainty_out=None,
                     options: SolveOptions = SolveOptions()) -> dict:
        """Solve bare planes into caller-owned outputs: the entry point of a
        :class:`~flowtie_fast.plan.Plan`.

        Parameters
        ----------
        planes : sequence of arrays (Ny, Nx)
            Intensities on this solver's backend (any real dtype), unchecked:
            they are checked here as every solve checks them.
        derivative_weights, intensity_weights : sequence of float
            Rows of :func:`~flowtie_fast.planes.focal_weights` (1/Å and 1).
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        method : str
            One of :data:`METHODS`.
        gradient : array (2, Ny, Nx), optional
            Measured phase gradient in rad/Å (``icom``, and flow models that
            read it).
        out : array (Ny, Nx)
            The phase (rad), working dtype.
        gradient_out : array (2, Ny, Nx), optional
            The phase gradient (rad/Å); not computed without it.
        uncertainty_out : array (Ny, Nx), optional
            ``flowtie`` with ``options.uncertainty``: the phase's standard
            deviation (rad) where the flow is trusted and the models give a
            spread; else every pixel set to
            :data:`~flowtie_fast.trust.NO_UNCERTAINTY` (-1).
        options : SolveOptions, optional
            How the solve runs (default: ``SolveOptions()``).

        Returns
        -------
        dict
            The solve's information (for ``flowtie``: the trust verdict and
            any fallback).
        """
        info: dict = {}
        with self._lock:
            try:
                spread = self._solve_into(planes, derivative_weights, intensity_weights,
                                          wavenumber, gradient, method, out, gradient_out,
                                          info, options)
            except BaseException:
                if uncertainty_out is not None:  # never the previous solve's map
                    uncertainty_out[...] = trust.NO_UNCERTAINTY
                raise
            if uncertainty_out is not None:
                # No map (a fallback, a single model of your own): a value no map holds.
                uncertainty_out[...] = trust.NO_UNCERTAINTY if spread is None else spread
        return info

    def _solve_into(self, planes, derivative_weights, intensity_weights, wavenumber, gradient,
                    method, out, gradient_out, info, options):
        """The body of :meth:`solve_planes` under its lock: the phase into ``out``
        (and the gradient), the verdict into ``info``; returns the uncertainty
        map or None."""
        self.backend.prepare()
        self.poisson.alpha = 0.0 if self.alpha == "auto" else self.alpha
        if method == "icom":
            # The planes are not used, but checked as every solve checks them
            # (not for defects of one plane: no phase here is made from them).
            self.validate_planes(planes, intensity_weights,
                                 options.names or ("minus", "zero", "plus"), screen=False)
            # Checked before anything is written; filtered by its noise where given.
            g, kept = self._denoised_gradient(self._check_gradient(gradient, wavenumber),
                                              options.gradient_noise)
            self.poisson.integrate(g, out=out, grad_out=gradient_out)
            # the plan warned its own checks of the gradient (orientation, noise)
            self._icom_verdict(out, gradient, options.gradient_noise, kept, options, info,
                               plan=True)
        else:
            self._solve_planes(planes, derivative_weights, intensity_weights, wavenumber,
                               gradient, method, out, gradient_out, info, options)
            # the records given, read as solve reads a triplet's, in its order
            _record_defects(options.plane_defects, info)
            _warn_unregistered(method, options.registration, info)
            why = image_verdict(method, options.planes_image, options.model,
                                not options.uncertainty)  # the plan warned once
            if why is not None:
                info.setdefault("trust", why)
        _mark_misscaled(method, options.gradient_misscaled, info)
        _mark_saturated(method, options.saturation, info)
        self._check_result(method, out, gradient_out, wavenumber)
        return info.pop("uncertainty_map", None)

    def flow_batch(self, stack, derivative_weights, intensity_weights, wavenumber, *,
                   gradient=None, out, gradient_out=None, model=None, names=None,
                   cuda_graphs=True, defects=None):
        """``flowtie`` over a batch, without the trust check: one network call,
        then one Poisson integration per item.

        Parameters
        ----------
        stack : array (B, 3, Ny, Nx)
            Triplets on this solver's backend, unchecked (checked here).
        derivative_weights, intensity_weights : sequence of float
            As in :meth:`solve_planes` (1/Å and 1).
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        gradient : array (B, 2, Ny, Nx), optional
            Measured phase gradients (rad/Å).
        out : array (B, Ny, Nx)
            The phases (rad), working dtype, written in place.
        gradient_out : array (B, 2, Ny, Nx), optional
            The phase gradients (rad/Å), written in place; not computed
            without it.
        model : path, str, FlowModel or FlowEnsemble, optional
            As in :class:`SolveOptions` (default: the shipped default).
        names : sequence of str, optional
            How messages name the three planes (each after ``stack[i]:``;
            default ``("minus", "zero", "plus")``).
        cuda_graphs : bool
            As in :class:`SolveOptions` (default True).
        defects : dict, optional
            Filled with ``item -> record`` for the items whose planes had
            isolated pixels replaced (:func:`~flowtie_fast.planes.screen_planes`,
            warned): the network reads the repaired planes, in a copy of
            ``stack`` (default None: not reported).

        Returns
        -------
        array (B, Ny, Nx)
            ``out``, holding the phases in rad.
        """
        names = names or ("minus", "zero", "plus")
        model = self._flow_model(model)
        b = stack.shape[0]
        try:
            return self._flow_batch(stack, derivative_weights, intensity_weights, wavenumber,
                                    gradient, out, gradient_out, model, names, cuda_graphs,
                                    defects)
        except MemoryError as exc:  # the whole batch's planes and network inputs at once
            raise _beyond_memory(b, self.shape, exc) from exc

    def _flow_batch(self, stack, derivative_weights, intensity_weights, wavenumber, gradient,
                    out, gradient_out, model, names, cuda_graphs, defects=None):
        """The body of :meth:`flow_batch`, its arguments checked."""
        be = self.backend
        xp = be.xp
        b = stack.shape[0]
        planes = be.asarray(stack, self.dtype)
        didz = xp.empty((b,) + self.shape, self.dtype)
        copied = False  # the caller's stack (or a view of it) is never written
        with self._lock:
            be.prepare()
            for i in range(b):
                _, fixed = self._derivative_and_intensity(list(planes[i]), derivative_weights,
                                                          intensity_weights,
                                                          [f"stack[{i}]: {n}" for n in names])
                didz[i] = self._didz
                if self._defects is not None and self._defects["repaired"]:
                    # the network reads the repaired planes too, never the caller's
                    if not copied:
                        planes, copied = planes.copy(), True
                    for j in range(3):
                        planes[i, j] = fixed[j]
                    if defects is not None:
                        defects[i] = self._defects
            v = self._predict_flow(model, planes, didz, wavenumber, gradient, cuda_graphs)
            for i in range(b):
                grad = None if gradient_out is None else gradient_out[i]
                self.poisson.integrate(v[i], out=out[i], grad_out=grad)
            for i in range(b):
                self._check_result("flowtie", out[i],
                                   None if gradient_out is None else gradient_out[i], wavenumber)
            be.synchronize()
        return out

    def integrate(self, gradient, *, out=None, gradient_out=None, _locked=False):
        """``icom``: integrate a phase gradient (2, Ny, Nx) in rad/Å to a phase.

        The result is the least-squares potential ``∇⁻² ∇·g``; its residual
        map is the curl-free misfit ``|g - ∇φ|`` per pixel (rad/Å).

        Parameters
        ----------
        gradient : array (2, Ny, Nx)
            Measured phase gradient in rad/Å, (d/d axis 0, d/d axis 1).
        out : array (Ny, Nx), optional
            Caller-owned output for the phase (rad), working dtype.
        gradient_out : array (2, Ny, Nx), optional
            Caller-owned output for the integrated (curl-free) gradient, rad/Å.
        _locked : bool, optional
            Internal: True when the caller already holds the solver's lock
            (default False).

        Returns
        -------
        Reconstruction
            Method ``icom``: the phase (rad), the curl-free gradient (rad/Å)
            and the misfit as its residual.
        """
        if not _locked:
            with self._lock:
                self.backend.prepare()
                return self.integrate(gradient, out=out, gradient_out=gradient_out,
                                      _locked=True)
        g = self._check_gradient(gradient)
        be = self.backend
        if out is not None:
            be.check_output("out", out, self.shape, self.dtype, (gradient,), ("gradient",))
        if gradient_out is not None:
            be.check_output("gradient_out", gradient_out, (2,) + self.shape, self.dtype,
                            (gradient, out), ("gradient", "out"))
        phase = self.poisson.output(out)
        grad = self.poisson.output(gradient_out, (2,) + self.shape)
        self.poisson.integrate(g, out=phase, grad_out=grad)
        check_finite_result("icom", phase, grad)
        misfit = self.backend.xp.hypot(g[0] - grad[0], g[1] - grad[1])
        check_finite_result("icom: the misfit |g - ∇φ|", misfit)
        return Reconstruction(phase, grad, "icom", {"backend": self.backend.name},
                              _residual=misfit)

    # ------------------------------------------------------------------ internals

    def _check_result(self, stage, phase, grad=None, wavenumber=None):
        """The result checked finite and plausible, one sum of squares per array:
        :class:`ResultError` naming ``stage`` where it holds NaN or Inf, or where
        its phase gradient provably exceeds :func:`~flowtie_fast.planes.
        gradient_limit` of ``wavenumber`` (rad/Å; None: :data:`GRADIENT_LIMIT`):
        the planes and the physical parameters then describe no transport of
        intensity (a millimetre pixel with a 1e-3 Å defocus step gave 1e19 rad;
        a defocus step 2e4 times too small, a deflection of 5.7 rad). Lower bounds,
        so that nothing plausible is refused: ``max |∇φ| >= rms(∇φ)``; and without
        the gradient, some pair of neighbouring pixels differs by at least
        ``√2 rms(φ) / L`` rad/Å, ``L`` the longer side in Å (the smallest
        non-zero eigenvalue of the difference Laplacian, either boundary, is at
        least ``(2 / L)²``; the phase's mean is zero)."""
        xp = self.backend.xp
        ny, nx = self.shape
        side = max(ny * self.pixel_size[0], nx * self.pixel_size[1])
        peak = 0.0
        for a, scale in ((phase, side / math.sqrt(2.0)), (grad, 1.0)):
            if a is None:
                continue
            squares = float(xp.vdot(a, a))
            if not math.isfinite(squares):
                if not bool(xp.isfinite(a).all()):
                    check_finite_result(stage, a)  # raises, naming the stage
                # finite values whose squares overflow the working dtype
                squares = float(xp.linalg.norm(a.astype(xp.float64))) ** 2
            peak = max(peak, math.sqrt(squares / a.size) / scale)
        limit = gradient_limit(wavenumber)
        if peak > limit:
            why = (f"the {GRADIENT_LIMIT:g} rad/Å any phase gradient has (2π × a centre of "
                   f"mass within the detector)" if limit == GRADIENT_LIMIT else
                   f"{limit:.4g} rad/Å, a deflection of {MAX_DEFLECTION:g} rad at k = "
                   f"{float(wavenumber):.4g} rad/Å (this one deflects the electron by at "
                   f"least {peak / float(wavenumber):.3g} rad)")
            raise ImplausibleResult(
                f"{stage}: the result's phase gradient reaches at least {peak:.3g} rad/Å, "
                f"beyond {why}: refused rather than returned; check the "
                f"physical parameters (pixel_size {self.pixel_size[0]:g} x "
                f"{self.pixel_size[1]:g} Å, dz, energy) and the planes' units")

    def _check_gradient(self, gradient, wavenumber=None):
        """A measured phase gradient (2, Ny, Nx), rad/Å, checked
        (:func:`~flowtie_fast.planes.check_gradient`) and within
        :func:`~flowtie_fast.planes.gradient_limit` of the wavenumber (rad/Å)
        where it is known, in the working dtype."""
        g = check_gradient(gradient, self.shape)
        check_gradient_peak(g, wavenumber)
        return self.backend.asarray(g, self.dtype)

    def _flow_model(self, model):
        """The flow model of ``model`` (None, a shipped name or ensemble, a path,
        or a FlowModel / FlowEnsemble, returned as given) on this backend's device."""
        if isinstance(model, (FlowModel, FlowEnsemble)):
            return model
        return load_model(None if model is None else os.fspath(check_model(model)),
                          "cuda" if self.backend.is_gpu else "cpu")

    def _predict_flow(self, model, planes, didz, k, gradient, graphs=True):
        """Flows (B, 2, Ny, Nx) in rad/Å, on this backend in the working dtype, of
        planes (B, 3, Ny, Nx) and ∂I/∂z (B, Ny, Nx), with the measured gradients
        (B, 2, Ny, Nx, rad/Å) or None: one network call."""
        be = self.backend
        try:
            com = None if gradient is None else be.asarray(gradient, self.dtype) / (2 * np.pi)
            extra = {} if graphs else {"graphs": False}  # the model's default: its graphs
            v = model.predict_batch(planes, didz, k, self.pixel_size, com, **extra)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001  the network itself failed on this input
            if out_of_memory(exc):  # the input's size, not the network, is at fault
                raise _beyond_memory(planes.shape[0], planes.shape[-2:], exc) from exc
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = lines[-1] if lines else first_line(exc)  # TorchScript puts the cause last
            raise InputError(f"model: the flow network {model.path} failed on this input "
                             f"({why})") from exc
        want = (planes.shape[0], 2) + tuple(planes.shape[-2:])
        if tuple(v.shape) != want:
            raise InputError(f"model: the flow network {model.path} returned shape "
                             f"{tuple(v.shape)} for this input, expected {want}")
        v = be.xp.from_dlpack(v) if be.is_gpu else v.cpu().numpy()  # no copy on the GPU
        return v.astype(self.dtype, copy=False)

    def _flow(self, planes, gradient, k, model, phase, grad, info, want_residual=True,
              graphs=True):
        """``flowtie``: the network's flow, integrated by the Poisson solver; returns
        the continuity residual of the predicted flow, ``k ∂I/∂z + ∇·(I v)``."""
        model = self._flow_model(model)
        xp = self.backend.xp
        v = self._predict_flow(model, xp.stack(planes)[None], self._didz[None], k,
                               None if gradient is None else gradient[None], graphs)[0]
        self.poisson.integrate(v, out=phase, grad_out=grad)
        info["model"], info["precision"] = str(model.path), model.precision
        if not want_residual:
            return None
        residual = self.poisson.divergence(self._intensity[None] * v)
        residual += k * self._didz
        return residual

    def _trust(self, planes, gradient, k, options, mean, derivative_weights, intensity_weights,
               phase, grad, info, residual):
        """The uncertainty map and trust check of a ``flowtie`` solve, and the
        fallback to the classical phase where the flow is not trusted
        (:mod:`flowtie_fast.trust`); returns the residual to report."""
        xp = self.backend.xp
        model = self._flow_model(options.model)
        members = trust.members(model)
        phases = [phase - phase.mean()]
        scratch = self._buf("member_phase")
        for m in members or ():
            v = self._predict_flow(m, xp.stack(planes)[None], self._didz[None], k,
                                   None if gradient is None else gradient[None],
                                   options.cuda_graphs)[0]
            self.poisson.integrate(v, out=scratch)
            phases.append(scratch - scratch.mean())
        spread = xp.stack(phases).std(axis=0) if members else None
        if members is None:
            info["uncertainty"] = ("unavailable for a single model of your own (give a "
                                   "FlowEnsemble of two or more different models)")
        scale = trust.calibration()["scale"] if trust.is_shipped(model) else 1.0
        snr = trust.derivative_snr(self._didz, options.noise, derivative_weights,
                                   self._stats, self.shape)
        icom = None
        empty = ""  # where the measured gradient holds no phase above its noise
        misscaled = bool(options.gradient_misscaled)
        if gradient is not None and not options.gradient_suspect:
            # the classical phase of the measured gradient (zero where it holds no
            # phase above its noise: then the flow's scale against it is infinite)
            g, kept = self._denoised_gradient(gradient, options.gradient_noise)
            icom = self.poisson.integrate(g, out=scratch)
            if kept == 0:
                empty = ("; the measured gradient holds no phase above its noise "
                         f"({options.gradient_noise.source} noise)")
            elif _constant_gradient(gradient):
                empty = "; the measured gradient is constant: it holds no phase"
        with np.errstate(over="ignore", invalid="ignore"):
            # a flow beyond float32's squares (a broken model) is refused after the
            # verdict, by the result's check, not by NumPy's overflow warning here
            verdict = trust.verdict(
                None if spread is None else float(xp.sqrt((spread ** 2).mean())),
                float(phases[0].std()), snr,
                None if icom is None or misscaled else float(icom.std()),
                options.registration)
        if options.gradient_suspect and getattr(model, "in_channels", 4) == 6:
            # a network that reads the centre of mass reads it misoriented too
            verdict.update(trusted=False, why="the measured gradient it reads is suspect: "
                           + options.gradient_suspect)
        # the TIE phase is a reference only where it is the specimen's
        tie_is_reference = image_verdict("tie", options.planes_image) is None
        # trained on bright-field images: the contrast of the others does not
        # follow the phase (a 'df' triplet's flow was 100x off in NMSE); the
        # reason the network alone is told, here the trust check's
        why = image_verdict("flowtie", options.planes_image, model, network_alone=True)
        if why is not None:
            verdict.update(trusted=False, why=why)
        info.update(verdict)
        if verdict["trusted"]:
            if spread is not None:
                info["uncertainty_map"] = (spread * scale).astype(self.dtype)
            return residual
        # Not trusted: the classical phase instead, from the measured gradient
        # where there is one (it does not go through the focal derivative); the
        # TIE's where that gradient holds no phase above its noise and the TIE
        # phase is the specimen's (bright-field planes), else the zero phase.
        use_icom = icom is not None and not (empty and tie_is_reference)
        also, tie_in_phase = "", False
        if use_icom and misscaled and tie_is_reference:  # else the only phase of the specimen
            tie_in_phase = True
            use_icom, also = self._weaker_phase(icom, options, mean, k, derivative_weights,
                                                intensity_weights, phase, grad, info)
        fallback = "icom" if use_icom else "tie"
        info["uncertainty"] = (f"none: the flow was not trusted; the {fallback} phase "
                               "returned has no calibrated uncertainty")
        if use_icom:
            info["fallback"] = "icom"
            phase[...] = icom
            if grad is not None:
                self.poisson.gradient(phase, out=grad)
        if use_icom and not (empty or misscaled):
            # The TIE phase as a second opinion on it (a gradient of the wrong
            # sign or scale has no curl and passes the orientation check).
            floor, _ = self._regularise(options.noise, mean, k, derivative_weights,
                                        intensity_weights, {}, quiet=True, teague=True)
            tie = self.poisson.teague(self._didz, self._intensity, floor * mean, scale=-k,
                                      out=self._buf("tie_check"))
            value = trust.disagreement(tie, phase, scratch=self._buf("tmp"))
            info["icom_disagreement"] = value
            limit = trust.calibration()["classical_disagreement_limit"]
            if value > limit and tie_is_reference:
                also = (f", which the tie phase contradicts (mean squared difference "
                        f"{value:.3g} times its variance, limit {limit:g}): it may be wrong "
                        f"as well (a measured gradient of the wrong sign, scale or "
                        f"orientation)")
        elif not use_icom:
            info["fallback"] = "tie"
            if not tie_in_phase:
                floor, _ = self._regularise(options.noise, mean, k, derivative_weights,
                                            intensity_weights, info, teague=True)
                self.poisson.teague(self._didz, self._intensity, floor * mean, scale=-k,
                                    out=phase, grad_out=grad)
        warnings.warn(f"flowtie: the flow is not trusted on this input ({verdict['why']}); "
                      f"returned the {info['fallback']} phase instead{also}{empty}",
                      TrustWarning, stacklevel=user_stacklevel())
        return None

    def _weaker_phase(self, icom, options, mean, k, derivative_weights, intensity_weights,
                      phase, grad, info):
        """Of the ``icom`` phase and the TIE phase, which disagree in scale
        (``options.gradient_misscaled``: a unit or calibration of one of them
        is wrong, or the TIE transfers the specimen's frequencies weakly),
        whether the ``icom`` one is the weaker (RMS), and the sentence that
        says so; the TIE phase is left in ``phase`` (and its gradient in
        ``grad``) where it is the weaker.

        The data cannot tell which is scaled right. The weaker phase is wrong
        by at most about its own size where it is the one scaled wrong (a
        phase c < 1 times the right one has an NMSE of ``(1 - c)²``); the
        stronger, scaled wrong, by many times the phase (``(c - 1)²``: 81 at
        a factor 10)."""
        regularisation = {}
        floor, _ = self._regularise(options.noise, mean, k, derivative_weights,
                                    intensity_weights, regularisation, quiet=True, teague=True)
        self.poisson.teague(self._didz, self._intensity, floor * mean, scale=-k, out=phase,
                            grad_out=grad)
        icom_rms, tie_rms = float(icom.std()), float(phase.std())
        # a TIE phase of nothing above the noise is no candidate: the weaker only
        # by having no phase
        use_icom = icom_rms <= tie_rms or regularisation.get("denoise") == 0
        if not use_icom:  # the TIE phase returned: its regularisation reported
            info.update(regularisation)
        return use_icom, (f", the weaker of the icom and tie phases, which disagree in "
                          f"scale (RMS {icom_rms:.3g} and {tie_rms:.3g} rad): where it is "
                          f"the one scaled wrong, it is wrong by at most about its size")

    def _icom_verdict(self, phase, gradient, noise, kept, options, info, plan=False):
        """What an ``icom`` phase integrated from ``gradient`` is, into
        ``info``: its noise filter's record (``kept`` modes of ``noise``; None:
        not filtered) and, first found, why it may be wrong: the gradient's
        orientation verdict (a misoriented gradient is the cause of what
        follows from it: a turned gradient is mostly curl, which the filter
        drops), a constant gradient, nothing above its noise, or, unfiltered,
        the noise its own scatter suggests. Warned, but for a ``plan``'s
        solve, whose plan warns its orientation and noise checks itself."""
        if kept is not None:
            info.update(noise=noise.source, denoise=kept)
        why = None
        if options.gradient_suspect:
            info["trust"] = options.gradient_suspect
            if not plan:
                warnings.warn(f"icom: {options.gradient_suspect}", TrustWarning,
                              stacklevel=user_stacklevel())
        elif _constant_gradient(gradient):
            why = f"icom: {_CONSTANT_GRADIENT}"
        elif kept is not None and not int(self.backend.xp.count_nonzero(phase)):
            why = _NO_GRADIENT_PHASE.format(noise.source)
        elif kept is None and not plan:
            self._unfiltered_gradient(gradient, info)
        if why is not None:
            info["trust"] = why
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())

    def _unfiltered_gradient(self, gradient, info=None):
        """Where the noise an unfiltered measured gradient's own scatter
        suggests would dominate its ``icom`` phase
        (:func:`~flowtie_fast.noise.gradient_noise_warning`), why, warned
        (and ``info["trust"]``, given ``info``); else None."""
        why = gradient_noise_warning(gradient, self.pixel_size, _GIVE_GRADIENT_NOISE)
        if why is not None:
            if info is not None:
                info["trust"] = why
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
        return why

    def _residual(self, series, phase):
        """``(k ∂I/∂z + ∇·(I ∇φ)) / Ī`` from the series' planes."""
        with self._lock:
            self.backend.prepare()
            mean, _ = self._derivative_and_intensity(
                series.planes, series.derivative_weights, series.intensity_weights)
            r = self.poisson.transport(phase, self._intensity)
            r += series.wavenumber * self._didz
            r /= mean
            check_finite_result("residual", r)
        return r

    def _buf(self, name):
        """A work array of the image shape, made on first use and kept."""
        b = self._buffers.get(name)
        if b is None:
            b = self._buffers[name] = self.backend.zeros(self.shape, self.dtype)
        return b

    def _solvable_rhs(self, k):
        """``k ∂I/∂z`` projected onto the range of the transport operator: on a
        periodic or Neumann domain the transport term integrates to zero, so the
        mean of ∂I/∂z (a change of dose between planes, not phase) and, for the
        spectral scheme, the Nyquist checkerboards cannot be matched."""
        b = self.backend.xp.multiply(self._didz, k, out=self._buf("rhs"))
        return self.poisson.remove_null_space(b)

    def _apply_a(self, x, out):
        """``A x = -∇·(I ∇x)``: symmetric positive (semi)definite."""
        self.poisson.transport(x, self._intensity, out=out)
        out *= -1
        return out

    def _pcg(self, k, mean, x, grad, info, tol, max_iter, want_residual=True, floor=1e-3,
             noise_norm=0.0):
        """Teague-preconditioned conjugate gradients for ``A φ = k ∂I/∂z``; without
        a given ``tol``, they stop at the noise's residual ``noise_norm``."""
        xp = self.backend.xp
        P = self.poisson
        floor = floor * mean
        max_iter = 100 if max_iter is None else int(max_iter)
        # The exact TIE needs positive weights: clip the intensity at the floor.
        self._intensity = xp.maximum(self._intensity, floor, out=self._intensity_buffer)
        b = self._solvable_rhs(k)
        b_norm = float(xp.linalg.norm(b)) or 1.0
        if tol is None:
            tol = max(PCG_PRECISION[np.dtype(self.dtype)], noise_norm / b_norm)

        def precondition(r, out):
            P.teague(r, self._intensity, floor, scale=-1.0, out=out)
            return out

        precondition(b, x)  # Teague's answer as the starting point
        ax = self._apply_a(x, self._buf("ap"))
        r = xp.subtract(b, ax, out=self._buf("r"))
        z = precondition(r, self._buf("z"))
        p = self._buf("p")
        p[...] = z
        tmp = self._buf("tmp")  # in-place updates: no temporaries per iteration
        best = self._buf("best")  # the iterate of least residual so far
        best[...] = x
        rz = _dot(xp, r, z)
        history = [float(xp.linalg.norm(r)) / b_norm]
        least, at = history[0], 0
        gained, mark = 0, least  # the last iteration that took it a tenth below mark
        stopped = "max_iter"
        it = 0
        while history[-1] > tol and it < max_iter:
            ap = self._apply_a(p, ax)
            pap = _dot(xp, p, ap)
            if not pap > 0:
                stopped = "breakdown"
                break
            a = rz / pap
            x += xp.multiply(p, a, out=tmp)
            r -= xp.multiply(ap, a, out=tmp)
            history.append(float(xp.linalg.norm(r)) / b_norm)
            it += 1
            if history[-1] < least:
                if history[-1] < 0.9 * mark:
                    gained, mark = it, history[-1]
                least, at = history[-1], it
                best[...] = x
            if history[-1] <= tol:
                break
            # Past the working precision's floor the recursion loses conjugacy:
            # the residual stalls, then grows without bound (a float32 solve
            # asked for tol 1e-8 went from NMSE 3e-9 to 5e8 in 50 iterations)
            if not history[-1] <= PCG_DIVERGENCE * least:
                stopped = "diverged"
                break
            if it - gained >= PCG_STALL:
                stopped = "stalled"
                break
            precondition(r, z)
            rz_new = _dot(xp, r, z)
            if not (rz > 0 and rz_new > 0):  # the residual at the precision's zero
                stopped = "breakdown"
                break
            p *= rz_new / rz
            p += z
            rz = rz_new
        if history[-1] <= tol:
            stopped = "converged"
        elif at != it:  # the least residual's iterate, not the last
            x[...] = best
        x -= x.mean()
        if grad is not None:  # a Plan without gradient_out skips it
            P.gradient(x, out=grad)
        info.update(iterations=it, converged=stopped == "converged", tol=tol,
                    relative_residual=history, stopped=stopped, least_residual=least)
        return self._true_residual(x, k) if want_residual else None

    def _gradient_descent(self, k, mean, x, grad, info, tol, max_iter, preconditioner,
                          want_residual=True, noise_norm=0.0):
        """Steepest descent with exact line search on ``J = ½ ‖A φ - b‖²``; stops
        once J is down to the noise's ``½ noise_norm²``."""
        xp = self.backend.xp
        P = self.poisson
        if tol is None:
            tol = 1e-6
        max_iter = 200 if max_iter is None else int(max_iter)
        b = self._solvable_rhs(k)
        x[...] = 0
        r = self._buf("r")  # r = b - A x
        r[...] = b
        ar, d, ad, tmp = (self._buf(n) for n in ("ar", "d", "ad", "tmp"))
        objective = [0.5 * _dot(xp, r, r)]
        if not np.isfinite(objective[0]):  # |k ∂I/∂z|² overflows the working dtype
            raise ResultError("gd: the objective overflows the working precision for "
                              "intensities of this scale; rescale them (e.g. divide by their "
                              "mean) or use dtype='float64'")
        target = 0.5 * noise_norm ** 2
        it = 0
        updates = []  # the size of each step taken
        while it < max_iter and objective[-1] > target:
            # dJ/dx = A (A x - b) = -A r; descent direction d = M A r.
            self._apply_a(r, ar)
            if preconditioner == "biharmonic":
                P.solve(ar, scale=1.0 / mean**2, out=d, power=2)
            else:
                d[...] = ar
            self._apply_a(d, ad)
            ad_norm2 = _dot(xp, ad, ad)
            if not ad_norm2 > 0:
                if it == 0 and self.dtype == np.float32:  # |A d|² underflowed
                    # rescaling helps only planes far from a mean of 1; else the
                    # derivative has too little lateral structure for float32
                    advice = ("rescale them (e.g. divide by their mean) or use "
                              "dtype='float64'" if not 1e-3 <= mean <= 1e3 else
                              "their mean is already of order 1: use dtype='float64' or "
                              "method='tie'")
                    raise ResultError(f"gd: the descent step underflows float32 for these "
                                      f"planes (mean intensity {mean:.3g}); {advice}")
                if it == 0:  # float64: the operator sees nothing of this residual
                    raise ResultError(f"gd: the first descent step is zero in float64 on this "
                                      f"{self.shape[0]} x {self.shape[1]} image (the operator "
                                      "sees no component of the focal derivative); use "
                                      "method='tie'")
                break
            step = _dot(xp, r, ad) / ad_norm2
            x += xp.multiply(d, step, out=tmp)
            updates.append(abs(step) * _dot(xp, d, d) ** 0.5)
            r -= xp.multiply(ad, step, out=tmp)
            objective.append(0.5 * _dot(xp, r, r))
            it += 1
            if objective[-2] - objective[-1] <= tol * objective[-2]:
                break
        if len(objective) > 1 and not objective[1] < objective[0]:
            # An exact line search always lowers a positive quadratic: no progress at
            # all means the working precision cannot resolve the step.
            raise ResultError("gd: the first step did not lower the objective (the working "
                              "precision cannot resolve these intensities' contrast); use "
                              "dtype='float64' or method='tie-exact'")
        x -= x.mean()
        if grad is not None:  # a Plan without gradient_out skips it
            P.gradient(x, out=grad)
        info.update(iterations=it, objective=objective, tol=tol, preconditioner=preconditioner,
                    converged=it < max_iter or objective[-1] <= target)
        if not info["converged"]:
            info["distance"] = _remaining_distance(updates, math.sqrt(_dot(xp, x, x)))
        if not info["converged"] and not info["distance"] <= GD_DISTANCE_LIMIT:
            far = ("at a distance from the solution its steps do not tell"
                   if math.isinf(info["distance"]) else
                   f"an estimated {info['distance']:.2g} of the phase away from the solution")
            info["trust"] = (f"gd: stopped after {it} iterations (max_iter) before its "
                             f"stopping rule was met (tol {tol:.3g}), {far}: the phase is "
                             "the last iterate (a larger max_iter, the 'biharmonic' "
                             "preconditioner, or method='tie-exact')")
            warnings.warn(info["trust"], TrustWarning, stacklevel=user_stacklevel())
        return self._true_residual(x, k) if want_residual else None

    def _true_residual(self, x, k):
        """``k ∂I/∂z + ∇·(I ∇φ)`` recomputed from x (the recursively updated
        residual of the iterations drifts in float32)."""
        r = self.poisson.transport(x, self._intensity)
        r += k * self._didz
        return r


_SOLVE_OPTIONS = {"tol", "max_iter", "preconditioner", "model", "uncertainty", "out",
                  "gradient_out"}
_SOLVER_CACHE: "OrderedDict[tuple, TIESolver]" = OrderedDict()
_SOLVER_CACHE_SIZE = 8
_SOLVER_CACHE_LOCK = threading.Lock()


def _cached_solver(shape, pixel_size, backend, threads, **options) -> TIESolver:
    key = (shape, tuple(pixel_size), backend.name, backend.threads, backend.kernel_set,
           tuple(sorted(options.items())))
    with _SOLVER_CACHE_LOCK:
        solver = _SOLVER_CACHE.pop(key, None)
        if solver is None:
            solver = TIESolver(shape, pixel_size, backend=backend, threads=threads, **options)
        _SOLVER_CACHE[key] = solver
        while len(_SOLVER_CACHE) > _SOLVER_CACHE_SIZE:
            _SOLVER_CACHE.popitem(last=False)
    return solver


def reconstruct(triplet, method="tie", *, backend="auto", threads=None, boundary="periodic",
                scheme="auto", alpha=0.0, floor="auto", denoise=True, dtype="float32",
                **options):
    """Phase and phase gradient of a focal triplet (or series).

    Parameters
    ----------
    triplet : FocalTriplet or FocalSeries
        The measured intensities.
    method : {"tie", "tie-uniform", "tie-exact", "gd", "icom", "flowtie"}
        See :mod:`flowtie_fast.solvers` (default "tie"). ``icom`` needs the
        measured phase gradient (``FocalTriplet.from_4dstem``, or
        ``gradient=``); ``flowtie`` needs PyTorch (extra ``flow``) and, with
        the shipped models, the measured gradient too.
    backend : {"auto", "cpu", "gpu"}
        ``auto`` takes the GPU when the input is a CuPy array or a device
        answers; ``gpu`` without a device raises.
    threads : int, optional
        CPU threads.
    boundary : {"periodic", "mirror"}
        Boundary condition of the Poisson solves (default "periodic"; see
        :class:`TIESolver`).
    scheme : {"auto", "spectral", "fd"}
        Discretisation (default "auto").
    alpha : float or "auto"
        Tikhonov parameter in Å⁻⁴ (default 0).
    floor : float or "auto"
        Intensity floor as a fraction of the mean in-focus intensity (default
        "auto").
    denoise : bool
        Filter the focal derivative by the series' noise (default True).
    dtype : {"float32", "float64"}
        Working precision (default "float32").
    **options
        Those of :meth:`TIESolver.solve`: ``tol``, ``max_iter`` (``tie-exact``
        and ``gd``), ``preconditioner`` (``gd``); ``model`` (``flowtie``: a
        shipped name "default", "fast", "seed0", "seed2", "seed3",
        "ensemble", a TorchScript file, or a loaded model; default
        "default") and ``uncertainty`` (``flowtie``: the uncertainty map,
        the trust check and the fallback to the classical phase; default
        True); ``out``, ``gradient_out``. An option the method would ignore
        raises :class:`InputError`.

    Returns
    -------
    Reconstruction
        With ``phase`` (Ny, Nx) rad, ``gradient`` (2, Ny, Nx) rad/Å,
        ``residual`` (Ny, Nx) 1/Å², ``uncertainty`` (``flowtie``: (Ny, Nx)
        rad, else None) and ``info`` (the keys: :class:`Reconstruction`);
        the arrays live where the input lived (NumPy or CuPy) unless
        ``backend`` names a device explicitly.

    Notes
    -----
    Solvers (and their FFT plans) are cached per shape and options, so calling
    this in a loop plans once; :class:`TIESolver` gives explicit control.
    """
    _check_is_series(triplet)
    unknown = set(options) - _SOLVE_OPTIONS
    if unknown:
        known = sorted(_SOLVE_OPTIONS | {"backend", "threads", "boundary", "scheme", "alpha",
                                         "floor", "denoise", "dtype"})
        raise InputError(f"options: unknown {sorted(unknown)}; expected some of {known}")
    check_regularisation(method, alpha, floor)
    explicit = isinstance(backend, Backend) or (isinstance(backend, str)
                                                 and backend in ("cpu", "gpu"))
    be = get_backend(backend, threads, like=triplet.planes[0])
    # Checked here, not only by the solver: they form the solver cache's key.
    resolve_scheme(boundary, scheme)
    solver = _cached_solver(triplet.shape, triplet.pixel_size, be, threads, boundary=boundary,
                            scheme=scheme, alpha=_check_alpha(alpha),
                            floor=_check_floor(floor), denoise=_check_bool("denoise", denoise),
                            dtype=str(check_float_dtype("dtype", dtype)))
    rec = solver.solve(triplet, method=method, **options)
    if be.is_gpu and not explicit and not triplet.on_gpu:
        rec.phase = be.to_numpy(rec.phase)
        rec.gradient = be.to_numpy(rec.gradient)
        if rec._residual is not None:
            rec._residual = be.to_numpy(rec._residual)
        elif rec._residual_fn is not None:
            fn = rec._residual_fn
            rec._residual_fn = lambda: be.to_numpy(fn())
    return rec
