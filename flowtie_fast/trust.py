"""When to trust a flowtie phase: the per-pixel uncertainty, the trust check
and the fallback to the classical phase.

A network answers every input, including those unlike anything it was
trained on (a dose far below the training data's, a specimen of another
kind), and its answer then looks as confident as a good one. Three measured
signals decide:

Uncertainty
    The shipped models (``default`` and the three seeds ``seed0``, ``seed2``,
    ``seed3``: one recipe, different initialisations) each predict a flow;
    each is integrated to a phase (mean removed). The standard deviation of
    these phases at each pixel, times a factor calibrated on held-out
    simulations (``data/calibration.json``: the factor that puts the share of
    pixels with ``|phase error| <= uncertainty`` within 0.5-0.95 on the most
    cases), is ``rec.uncertainty`` (rad).

Relative spread
    The RMS of that spread over the RMS of the phase: where the members
    disagree by a large part of the phase itself, none of them knows the input.

Signal above the noise
    The share of the focal derivative's power that lies above its noise
    (:func:`flowtie_fast.noise.denoise`): 0 where nothing does. 1 where the
    noise is unknown.

Strength against the measured gradient
    The RMS of the flow's phase over that of the phase integrated from the
    measured centre of mass (``icom``, filtered by its noise), where there is
    one: every member can blow up alike on noise it never saw (a small
    spread, a phase ten to 1e4 times too strong), which the centre of mass
    does not. Only where the focal derivative is mostly noise (``snr`` below
    ``icom_ratio_snr_limit``): through a thick crystal the centre of mass
    no longer follows the phase (GaAs 14 nm: 85 times weaker than a correct
    flow phase).

Registration
    A drift between the scans left in the ±dz planes misleads the flow
    (NMSE 3.7 on GaAs 1.1 nm drifted by 2-3 px) while its members agree; the
    centre of mass comes from the in-focus scan alone. Where the triplet's
    scans were registered and the estimate was unreliable (so not applied),
    the flow is not trusted.

The flow is not trusted where the registration was unreliable, where its
phase is flat while the ``icom`` phase is not, where the ratio to ``icom``
exceeds ``icom_ratio_limit`` at a low signal-to-noise ratio, the
relative spread exceeds ``spread_limit``, or it exceeds
``spread_limit_no_signal`` while no signal lies above the noise, or, for a
single model of your own (no spread to measure), wherever no signal lies
above the noise (limits in
``data/calibration.json``, chosen on the validation simulations and scored
on the test ones after: docs/evaluation.md). Then the returned
phase is the classical one, ``icom`` where a measured gradient exists (the
4D-STEM centre of mass does not go through the focal derivative) and ``tie``
otherwise, ``rec.info["fallback"]`` names it and a
:class:`~flowtie_fast.errors.TrustWarning` says so.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

import numpy as np

from .flow.infer import ENSEMBLES, SHIPPED, FlowEnsemble, load_model
from .noise import COUNTS, denoise, poisson_noise

__all__ = ["calibration", "members", "is_shipped", "derivative_snr", "verdict",
           "disagreement", "classical_verdict", "MEMBERS", "NO_UNCERTAINTY"]

MEMBERS = ("default", "seed0", "seed2", "seed3")  # the calibrated set of shipped models
CALIBRATION_FILE = "calibration.json"
#: rad: what a caller's ``uncertainty_out`` holds at every pixel where a solve
#: gives no uncertainty map (the flow not trusted and the classical phase
#: returned, or a single model of your own): a standard deviation cannot be
#: negative, so it cannot be taken for a map.
NO_UNCERTAINTY = -1.0


@functools.lru_cache(maxsize=1)
def calibration() -> dict:
    """The calibration of the shipped set (``scale``, ``spread_limit``,
    ``spread_limit_no_signal`` and how they were measured).

    Returns
    -------
    dict
        ``data/calibration.json`` of the installed package, read once and
        cached: ``members``, ``scale`` (the factor on the members' standard
        deviation), ``spread_limit``, ``spread_limit_no_signal``,
        ``icom_ratio_limit``, ``icom_ratio_snr_limit`` and how they were
        fitted (``fitted_on``, ``date``, ``recipe``).
    """
    path = resources.files("flowtie_fast.data").joinpath(CALIBRATION_FILE)
    return json.loads(path.read_text())


def _shipped_name(model):
    """The shipped name of a FlowModel or FlowEnsemble, or None."""
    name = str(getattr(model, "path", ""))
    if name in ENSEMBLES:
        return name
    # recorded when the file loaded (a shipped file given by any path to it)
    shipped = getattr(model, "shipped", None)
    return shipped if shipped in SHIPPED else None


def is_shipped(model) -> bool:
    """Whether the model is one of the shipped set (its uncertainty is calibrated).

    Parameters
    ----------
    model : FlowModel or FlowEnsemble
        The model: shipped when its ``path`` is a shipped ensemble's name or
        its file loaded as a shipped one (its ``shipped`` name).

    Returns
    -------
    bool
        True for a shipped model or ensemble.
    """
    return _shipped_name(model) is not None


def members(model):
    """The other models whose phases join ``model``'s for the spread: the rest
    of the shipped set for a shipped model, the members of a FlowEnsemble of
    your own, None for a single model of your own.

    Parameters
    ----------
    model : FlowModel or FlowEnsemble
        The model whose spread is measured; shipped members are loaded with
        :func:`~flowtie_fast.flow.infer.load_model`.

    Returns
    -------
    list of FlowModel or None
        For a shipped model, the shipped members of ``MEMBERS`` but its own
        name, loaded on its device and precision (all four for the shipped
        ensemble); for a FlowEnsemble of your own, its distinct members (by
        file path) when there are two or more; None otherwise.
    """
    name = _shipped_name(model)
    if name is None:
        if not isinstance(model, FlowEnsemble):
            return None
        distinct = list({str(m.path): m for m in model.models}.values())
        return distinct if len(distinct) >= 2 else None  # one network has no spread
    return [load_model(m, model.device, model.precision) for m in MEMBERS if m != name]


def derivative_snr(didz, noise, derivative_weights, stats, shape) -> float:
    """The share of the focal derivative's power (mean removed) above its
    noise; 1.0 where the noise is unknown.

    The derivative is filtered by its noise as
    :func:`~flowtie_fast.noise.denoise` does (on a float64 copy), and the
    power kept is divided by the power before.

    Parameters
    ----------
    didz : array (Ny, Nx)
        The focal derivative ∂I/∂z (intensity per Å), NumPy or CuPy; not
        modified.
    noise : Noise, "counts" or None
        The planes' noise; ``"counts"`` (:data:`~flowtie_fast.noise.COUNTS`):
        Poisson, from the planes' means (``stats``); None: unknown.
    derivative_weights : sequence of float
        The row of :func:`~flowtie_fast.planes.focal_weights` that maps the
        planes to the derivative, 1/Å, one weight per plane.
    stats : ndarray (N, 2)
        Per plane, the number of negative values and the sum
        (:meth:`~flowtie_fast.backend.Backend.plane_stats`); the sums are
        read for ``noise="counts"`` only.
    shape : (int, int)
        The planes' shape (Ny, Nx).

    Returns
    -------
    float
        In [0, 1]: 1.0 where ``noise`` is None, 0.0 where the derivative is
        constant or nothing of it lies above the noise.
    """
    if noise is None:
        return 1.0
    if noise == COUNTS:
        noise = poisson_noise(stats[:, 1] / (shape[0] * shape[1]))
    d = didz - didz.mean()
    total = float((d * d).sum())
    if not total > 0:
        return 0.0
    kept = d.astype(np.float64)
    denoise(kept, noise.combined(derivative_weights))
    return float((kept * kept).sum()) / total


def verdict(rms_spread, phase_rms: float, snr: float, icom_rms=None,
            registration=None) -> dict:
    """The trust check: ``trusted``, ``rel_spread``, ``snr``, ``icom_ratio``
    and ``why``. ``registration``: the triplet's record, where its scans were
    registered.

    The limits are those of :func:`calibration`; the rules are in the
    module's docstring.

    Parameters
    ----------
    rms_spread : float or None
        The RMS over the pixels of the members' phase standard deviation, in
        rad; None for a single model (no spread).
    phase_rms : float
        The RMS of the flow phase (mean removed), in rad.
    snr : float
        The share of the focal derivative's power above its noise
        (:func:`derivative_snr`).
    icom_rms : float, optional
        The RMS of the phase integrated from the measured centre of mass
        (mean removed), in rad (default None: no measured gradient).
    registration : dict, optional
        The triplet's registration record (default None: the scans were not
        registered); only its ``reliable`` entry is read.

    Returns
    -------
    dict
        ``trusted`` (bool), ``rel_spread`` (``rms_spread / phase_rms``, inf
        for a zero phase; None without a spread), ``snr`` (as given),
        ``icom_ratio`` (``phase_rms / icom_rms``, inf for a zero ``icom_rms``;
        None without it) and ``why`` (the reason it is not trusted, or None).
    """
    cal = calibration()
    rel = None if rms_spread is None else (rms_spread / phase_rms if phase_rms > 0
                                           else math.inf)
    ratio = None
    if icom_rms is not None:
        ratio = phase_rms / icom_rms if icom_rms > 0 else math.inf
    why = ""
    if registration is not None and not registration.get("reliable", True):
        why = ("the drift between the scans could not be measured reliably (the flow "
               "compares the ±dz planes pixel by pixel)")
    elif ratio == 0:
        why = ("the flow's phase is flat where the measured centre of mass gives a phase "
               "(a model that predicts no flow)")
    elif (ratio is not None and ratio > cal["icom_ratio_limit"]
            and snr < cal["icom_ratio_snr_limit"]):
        why = (f"the phase is {ratio:.3g} times as strong as the one the measured centre "
               f"of mass gives")
    elif rel is not None and rel > cal["spread_limit"]:
        why = f"the models disagree by {_share(rel)}"
    elif rel is not None and snr == 0 and rel > cal["spread_limit_no_signal"]:
        why = (f"no signal above the noise in the focal derivative and the models "
               f"disagree by {_share(rel)}")
    elif rel is None and snr == 0:
        why = ("no signal above the noise in the focal derivative, and a single model "
               "gives no spread to check its flow against")
    return {"trusted": not why, "rel_spread": rel, "snr": snr, "icom_ratio": ratio,
            "why": why or None}


def _share(rel) -> str:
    """``rel``, a spread over the phase's RMS, in words: a percentage, or, for
    a flat phase (``rel`` infinite), the spread with nothing to compare it to."""
    if math.isinf(rel):
        return "more than the phase itself, which is flat"
    return f"{rel:.0%} of the phase"


def disagreement(phase, reference, scratch=None) -> float:
    """How far a phase lies from a reference phase, relative to the reference.

    Parameters
    ----------
    phase, reference : arrays (Ny, Nx)
        Phases in rad (NumPy or CuPy, the same); their means are removed here.
    scratch : array (Ny, Nx), optional
        A work array of their dtype and backend, overwritten (without it one
        is allocated).

    Returns
    -------
    float
        ``mean((φ - mean φ - (ψ - mean ψ))²) / var(ψ)``, dimensionless: 0
        where they agree, 1 for a flat ``phase``; inf where the reference is
        flat and the phase is not, 0 where both are flat.
    """
    # Moments through one work array, not mean-removed copies (a Plan's solve
    # allocates no image; numpy's pairwise sums keep float32 accurate).
    with np.errstate(over="ignore", invalid="ignore"):
        d = phase - reference if scratch is None else np.subtract(phase, reference, out=scratch)
        dm = float(d.mean())
        mse = max(float(np.multiply(d, d, out=d).mean()) - dm * dm, 0.0)
        rm = float(reference.mean())
        var = max(float(np.multiply(reference, reference, out=d).mean())
                  - rm * rm, 0.0)
    if not math.isfinite(mse):  # squares beyond the working precision: no agreement
        return math.inf
    if var > 0:
        return mse / var
    return math.inf if mse > 0 else 0.0


def classical_verdict(method: str, value: float):
    """The check of a classical focal-derivative phase against the phase the
    measured centre of mass gives (``icom``).

    The TIE only sees the divergence of the flux; on a window cut from a
    larger specimen the flux through the window's edge is unknown to it (the
    ``mirror`` boundary assumes none), and there the solution can carry a
    smooth bowl or saddle many times stronger than the phase, which the
    centre of mass, a direct measure of the gradient, does not. Where the two
    disagree by more than ``classical_disagreement_limit`` (``data/
    calibration.json``) the focal-derivative phase is not trusted.

    Parameters
    ----------
    method : str
        The classical method that gave the phase (for the message).
    value : float
        :func:`disagreement` of its phase against the ``icom`` phase.

    Returns
    -------
    str or None
        Why the phase is not trusted, or None where it is.
    """
    limit = calibration()["classical_disagreement_limit"]
    if not value > limit:
        return None
    by = ("that phase is flat where this one is not" if math.isinf(value) else
          f"mean squared difference {value:.3g} times that phase's variance, limit "
          f"{limit:g}")
    return (f"{method}: this phase is far from the one the measured centre of mass "
            f"gives ({by}): the focal derivative does not determine it here (a window "
            f"whose edges carry phase, large or uneven defocus steps); method='icom' or "
            f"'flowtie' may be right")
