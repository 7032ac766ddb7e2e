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
    pixels with ``|phase error| <= uncertainty`` within 0.53-0.83, 68 ± 15 %,
    on the most cases), is ``rec.uncertainty`` (rad).

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
otherwise (the weaker of the two where they disagree in scale:
:func:`sign_check`), ``rec.info["fallback"]`` names it and a
:class:`~flowtie_fast.errors.TrustWarning` says so.
"""

from __future__ import annotations

import functools
import json
import math
from importlib import resources

import numpy as np

from .backend import array_module, to_host
from .errors import InputError, check_positive
from .flow.infer import ENSEMBLES, SHIPPED, FlowEnsemble, load_model
from .noise import COUNTS, denoise, poisson_noise
from .stem.rotation import least_turn

__all__ = ["calibration", "members", "is_shipped", "derivative_snr", "verdict",
           "disagreement", "classical_verdict", "gradient_orientation",
           "checked_orientation", "orientation_warning", "plain_tie_gradient", "sign_check",
           "suspicion", "verdict_entries",
           "MEMBERS", "NO_UNCERTAINTY", "VERDICT_KEYS"]

#: The entries of a solve's ``info`` that say whether to trust its phase
#: (``trusted``, ``fallback`` and ``why`` of ``flowtie``'s trust check;
#: ``trust`` where any solve said its phase is not to be taken as it
#: stands): those :func:`~flowtie_fast.cluster.reconstruct_many` carries back
#: per item and ``flowtie reconstruct`` writes into its output (``verdict``).
VERDICT_KEYS = ("trusted", "fallback", "why", "trust")


def verdict_entries(info) -> dict:
    """The trust entries (:data:`VERDICT_KEYS`) of one solve's ``info``.

    Parameters
    ----------
    info : dict
        A solve's information (``rec.info``, ``plan.info``).

    Returns
    -------
    dict
        Those of its entries that are set, as plain Python values
        (``trusted`` a bool, the others text): empty where the solve said
        nothing against its phase.
    """
    out = {}
    for key in VERDICT_KEYS:
        value = info.get(key)
        if value is not None:
            out[key] = bool(value) if key == "trusted" else str(value)
    return out


MEMBERS = ("default", "seed0", "seed2", "seed3")  # the calibrated set of shipped models
CALIBRATION_FILE = "calibration.json"
#: rad: what a caller's ``uncertainty_out`` holds at every pixel where a solve
#: gives no uncertainty map (the flow not trusted and the classical phase
#: returned, or a single model of your own): a standard deviation cannot be
#: negative, so it cannot be taken for a map.
NO_UNCERTAINTY = -1.0
#: The 4D-STEM virtual images whose contrast follows the TIE: their TIE phase
#: is the specimen's, sign included (the reference that tells a detector
#: rotation from its half turn, and against which another phase is checked);
#: the full disk's images carry little phase contrast, annular ones the
#: opposite sign. Planes of unknown image (None) are taken as these.
SIGNED_IMAGES = ("bf",)


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


#: A flow phase weaker than this share of the measured centre of mass's is
#: taken as flat (a model that predicts no flow; a network trained for two
#: steps read 0.02, a model scaled by 1e-6 1e-6, both trusted before). The
#: shipped flow read 0.40 at least, over 226 rows of the test, validation and
#: a sixth of the corpus files, noise-free and at 1e3 and 1e4 e/Å².
FLAT_FLOW_RATIO = 0.05


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
               "compares the ±dz planes pixel by pixel; register=False where the scans "
               "are known to be aligned)")
    elif ratio is not None and ratio < FLAT_FLOW_RATIO:
        why = ("the flow's phase is flat where the measured centre of mass gives a phase "
               f"({ratio:.2g} of its strength: a model that predicts no flow)")
    elif (ratio is not None and ratio > cal["icom_ratio_limit"]
            and snr < cal["icom_ratio_snr_limit"]):
        why = (f"the phase is {ratio:.3g} times as strong as the one the measured centre "
               f"of mass gives")
    elif rel == math.inf:  # a zero phase: no relative spread to give
        why = ("the models disagree on a flat phase (the flow's phase is zero where the "
               "other models' are not)" if rms_spread > 0 else
               "every model's phase is flat: there is no flow to check")
    elif rel is not None and rel > cal["spread_limit"]:
        why = f"the models disagree by {rel:.0%} of the phase"
    elif rel is not None and snr == 0 and rel > cal["spread_limit_no_signal"]:
        why = (f"no signal above the noise in the focal derivative and the models "
               f"disagree by {rel:.0%} of the phase")
    elif rel is None and snr == 0:
        why = ("no signal above the noise in the focal derivative, and a single model "
               "gives no spread to check its flow against")
    return {"trusted": not why, "rel_spread": rel, "snr": snr, "icom_ratio": ratio,
            "why": why or None}


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


#: px: the shortest side of a field the curl check reads (central differences
#: over one or two interior rows carry more curl of their own than a phase
#: gradient's sharp features leave out).
MIN_SIDE = 5


def _unit(scale) -> float:
    """What :func:`_unit_scaled` divides by for a largest magnitude
    ``scale``: the scale itself where it lies beyond 1e±100, else 1."""
    return scale if 0 < scale < math.inf and not 1e-100 < scale < 1e100 else 1.0


def _unit_scaled(a, scale):
    """``a`` divided by ``scale`` (its largest magnitude) where that lies
    beyond 1e±100: in float64 the squares of values beyond 1e154 overflow and
    below 1e-154 lose their digits, and what is summed here is scale-free.
    ``a`` is a float64 work array, divided in place."""
    unit = _unit(scale)
    if unit != 1.0:
        a /= unit  # (divided: 1/scale overflows for subnormal scales)
    return a


def _curl_forms(g, step, scale=1.0):
    """The curl and divergence sums of a gradient field and of its transpose:
    ``(Σc², Σcd, Σd²)`` per orientation (as given, components swapped), from
    central differences on the interior pixels, in float64; at the full
    sampling, and of the curl and divergence summed over 2 x 2 blocks of
    interior pixels (None where there are fewer than 3 x 3 blocks). Returns
    the two (2, 3) arrays and the pixel and block counts."""
    xp = array_module(g)
    # The fractions depend on neither the scale of the field nor that of the
    # steps: both are taken to about 1 (``scale``: the largest magnitude), as
    # in float64 squares of values beyond 1e154 overflow and below 1e-154 lose
    # their digits.
    sy, sx = step[0] / max(step), step[1] / max(step)
    a = _unit_scaled(g[0].astype(xp.float64), scale)
    b = _unit_scaled(g[1].astype(xp.float64), scale)
    a0 = (a[2:, 1:-1] - a[:-2, 1:-1]) / (2 * sy)
    a1 = (a[1:-1, 2:] - a[1:-1, :-2]) / (2 * sx)
    b0 = (b[2:, 1:-1] - b[:-2, 1:-1]) / (2 * sy)
    b1 = (b[1:-1, 2:] - b[1:-1, :-2]) / (2 * sx)
    ny, nx = a0.shape
    by, bx = ny // 2, nx // 2
    full, blocks = [], []
    # curl and divergence as given (c = ∂0 g1 - ∂1 g0, d = ∂0 g0 + ∂1 g1) and swapped
    for c, d in ((b0 - a1, a0 + b1), (a0 - b1, b0 + a1)):
        full += [xp.sum(c * c), xp.sum(c * d), xp.sum(d * d)]
        if by >= 3 and bx >= 3:  # binned after differencing: a gradient stays curl-free
            c = c[:2 * by, :2 * bx].reshape(by, 2, bx, 2).sum(axis=(1, 3))
            d = d[:2 * by, :2 * bx].reshape(by, 2, bx, 2).sum(axis=(1, 3))
            blocks += [xp.sum(c * c), xp.sum(c * d), xp.sum(d * d)]
    sums = np.asarray(to_host(xp.stack(full + blocks)), dtype=np.float64).reshape(-1, 2, 3)
    return sums[0], (sums[1] if blocks else None), ny * nx, by * bx


def _orientation(forms, n):
    """:func:`gradient_orientation`'s numbers from one set of sums over ``n``
    values, or None where they hold no variation."""
    total = forms[0, 0] + forms[0, 2]
    if not total > 0 or not math.isfinite(total):
        return None
    (lo, hi, theta), (flo, fhi, ftheta) = least_turn(*forms[0]), least_turn(*forms[1])
    flip = flo < lo
    least, top, theta = (flo, fhi, ftheta) if flip else (lo, hi, theta)
    excess = max(forms[0, 0] - least, 0.0)
    share = min(excess / (top - least), 1.0) if top > least else 0.0
    most = max(hi, fhi)  # a turn by 90° of the least-curl orientation, or a flip
    # A given orientation that only a transpose makes curl-free is no turn of the
    # right one: its icom phase is another phase altogether, as harmful as a
    # quarter turn's (the angle of the turns' formula means nothing there).
    return {"contrast": float((most - least) / total * math.sqrt(n)),
            "curl_fraction": float(forms[0, 0] / total),
            "least_curl_fraction": float(least / total),
            "significance": float(excess / total * math.sqrt(n)),
            "misorientation": 90.0 if flip else math.degrees(math.asin(math.sqrt(share))),
            "correction": (float(theta), bool(flip))}


def _orientations(g, step):
    """:func:`_orientation` at the full sampling and over 2 x 2 blocks (the
    ones that exist): empty where the field is flat or not finite."""
    scale = max(abs(float(g.max())), abs(float(g.min())))
    if not 0 < scale < math.inf:  # flat, or not finite
        return []
    full, blocks, n, nb = _curl_forms(g, step, scale)
    found = [_orientation(full, n)]
    if blocks is not None:
        found.append(_orientation(blocks, nb))
    return [f for f in found if f is not None]


#: A gradient whose rotational share exceeds that of its least-curl
#: orientation by more than this many times the latter is suspect (where a
#: turn would stand out and the misorientation is beyond the limit), whatever
#: ``significance`` says: that measures the excess against white noise, whose
#: spread a field of little noise does not have (a transposed scan of a smooth
#: specimen, noise-free: 13 % rotational against 0.005 %, significance 3.9,
#: icom NMSE 1.38 without a word). Over 905 file x dose rows of the test,
#: validation and odd corpus series (noise-free, 1e3-1e5 e/Å²), no right
#: orientation exceeded 0.05 where its least-curl one lay beyond the limit;
#: the rule flags 4 of the 121 harmful transposes the significance missed
#: there (the others' least-curl share is the specimen's own, as large).
CURL_EXCESS_RATIO = 5.0


def gradient_orientation(gradient, pixel_size) -> dict:
    """Whether a measured phase gradient is taken in the right orientation.

    A phase gradient has no curl. A centre of mass read with the wrong
    detector rotation or flip, or a gradient whose two components are
    swapped, has: rotated by θ, a share ``sin²θ`` of its power turns
    rotational (all of it at 90°), and ``icom`` then returns ``cos θ`` times
    the phase (the negative phase at 180°, which no curl reveals) or, for a
    flip, another phase altogether. The rotational share is measured as
    given and at the least-curl orientation (rotation, and transpose or not,
    in closed form: the curl of the rotated field is ``cos θ curl g + sin θ
    div g``), by central differences over the interior pixels, and again
    with the curl and divergence summed over 2 x 2 blocks (where noise hides
    a smooth field's curl at the full sampling). White noise adds the same
    curl at every orientation; its spread sets the ``significance`` (over
    ``n`` values, a share times ``√n``).

    Parameters
    ----------
    gradient : array (2, Ny, Nx)
        Phase gradient in rad/Å (d/d axis 0, d/d axis 1), NumPy or CuPy, finite.
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.

    Returns
    -------
    dict
        ``curl_fraction``: the rotational share of the gradient's power as
        given; ``least_curl_fraction``: at its least-curl orientation;
        ``misorientation``: the angle (degrees, 0-90; 180 from
        :func:`sign_check`) the given orientation lies from the least-curl
        one, ``asin √((given - least) / (most - least))``, and 90 where the
        least-curl orientation is a transpose of the given one (a flip is no
        turn: its ``icom`` phase is another phase); ``correction``:
        ``(degrees, transpose)``, the rotation of
        :func:`~flowtie_fast.stem.rotation.rotate_com` (after swapping the
        components where ``transpose``) that makes the gradient curl-free, up
        to 180°; ``significance``: the excess of the rotational share over
        the least, over its noise spread (white noise alone: below 4.4 in
        9300 draws of 8² to 128² px); ``testable``: whether a turn by 90° would stand
        out of the noise (the spread between least and most curl, over its
        noise spread, above ``orientation_significance``; False for a flat,
        noisy or small field, sides under :data:`MIN_SIDE`); ``suspect``:
        True where it is testable, the misorientation exceeds
        ``orientation_limit_degrees`` and the significance
        ``orientation_significance`` (``data/calibration.json``) or the
        rotational share that of the least-curl orientation by
        :data:`CURL_EXCESS_RATIO` times the latter, at either sampling. The numbers are those of the sampling that flags the
        gradient, else of the one with the larger significance. Only
        ``testable`` and ``suspect`` where the field is flat, not finite or
        too small.

    Raises
    ------
    InputError
        Where ``gradient`` is not a real array (2, Ny, Nx) or ``pixel_size``
        not a positive pixel size (a scalar is used for both axes).
    """
    cal = calibration()
    step = check_positive("pixel_size", pixel_size, pair=True)
    xp = array_module(gradient)
    if xp is np:
        gradient = np.asarray(gradient)
    shape, kind = getattr(gradient, "shape", ()), getattr(gradient, "dtype", np.dtype(object)).kind
    if len(shape) != 3 or shape[0] != 2 or kind not in "iuf":
        raise InputError(f"gradient: expected a real array (2, Ny, Nx), got "
                         f"{getattr(gradient, 'dtype', type(gradient).__name__)} {tuple(shape)}")
    found = _orientations(gradient, step) if min(shape[1:]) >= MIN_SIDE else []
    if not found:
        return {"testable": False, "suspect": False}
    limit = cal["orientation_significance"]
    for f in found:
        f["testable"] = f.pop("contrast") > limit
        excess = f["curl_fraction"] - f["least_curl_fraction"]
        f["suspect"] = (f["testable"] and f["misorientation"] > cal["orientation_limit_degrees"]
                        and (f["significance"] > limit
                             or excess > CURL_EXCESS_RATIO * f["least_curl_fraction"]))
    # the sampling that flags it, else the one that tells most
    return max(found, key=lambda f: (f["suspect"], f["testable"], f["significance"]))


#: The factor beyond which a measured gradient and the TIE gradient of its
#: planes disagree in scale: on the 21 test and validation crystals (Si, MgO,
#: GaAs, SrTiO3, Cu, CeO2; 3.6-148 Å; noise-free and 1e4 e/Å²) the bracket of
#: the TIE gradient's scale lay within 0.63-1.97 times the centre of mass's
#: where they were compared (noise-free 0.98-1.43 on the thin ones; 2.2-18 on
#: 14 nm GaAs, r 0.35, not compared); a unit given wrong is a factor 10
#: (rad/nm), 2π (cycles) or 1000 (mrad).
SCALE_LIMIT = 3.0
#: The least correlation of the two gradients at which their scales are
#: compared: the bracket of the scale spans a factor ``1/r²`` (4 at 0.5),
#: and the TIE gradient of noisy planes carries its noise amplified at low
#: spatial frequencies, few independent values, which a significance test
#: of white noise does not see: a weak phase (0.05 rad) at 10 % plane noise
#: gave brackets of 3.2-191 (r about 0.13) on right gradients. The test and
#: validation crystals gave 0.64-0.92 where they were compared at 1e4 e/Å²
#: and noise-free (0.48 once).
SCALE_CORRELATION = 0.5


def sign_check(check, gradient, tie_gradient) -> None:
    """The sign and scale of a curl-free measured gradient against the TIE gradient.

    A gradient turned by 180° (a detector rotation given half a turn wrong)
    has no curl; its ``icom`` phase is the negative phase. The TIE phase of
    the planes does not go through the detector. Their gradients' correlation
    ``r`` (components' means removed) is checked against its noise: with
    white noise in the measured gradient (independent patterns) ``r √n``
    over ``n`` scan positions is a standard normal where the two share
    nothing. Where ``r √n`` lies below ``-orientation_significance`` and
    ``r`` below ``orientation_sign_limit`` (``data/calibration.json``: noise
    alone, and the disagreement of the two where the centre of mass no
    longer follows the phase, stayed above both on the simulations scored)
    the gradient is suspect, its correction the half turn.

    Where they correlate significantly (``r √n`` above the same limit, and
    ``r`` at least :data:`SCALE_CORRELATION`), the
    TIE gradient is ``c`` times the measured one with ``c`` within
    ``[Σab/Σaa, Σbb/Σab]`` whatever the noise in either (each least-squares
    slope is biased towards its own end only). Where that whole bracket
    lies beyond :data:`SCALE_LIMIT` or below its inverse, the two disagree
    in scale: a unit or calibration of one of them is wrong (the gradient's
    unit, ``k_sampling``; the planes' ``dz``, energy; ``scan_step`` scales
    the TIE gradient) and the data cannot tell which: ``misscaled`` is the
    geometric mean ``√(Σbb/Σaa)``, and the gradient is not judged suspect
    (:func:`scale_warning`; every method's phase says so instead).

    Parameters
    ----------
    check : dict
        What :func:`gradient_orientation` returned, updated in place:
        ``tie_correlation`` ``r``, ``tie_scale`` (the bracket of ``c``, or
        None where ``r`` is not significantly positive or under
        :data:`SCALE_CORRELATION`), ``misscaled``
        where the two disagree in scale and, where suspect, ``suspect`` with
        ``misorientation`` 180 and ``correction`` ``(180.0, False)``.
    gradient, tie_gradient : arrays (2, Ny, Nx)
        The measured gradient and the gradient of the TIE phase of the
        planes, rad/Å (NumPy or CuPy, finite).
    """
    xp = array_module(gradient)
    a = gradient.astype(xp.float64)
    b = xp.asarray(tie_gradient).astype(xp.float64)
    if a.ndim != 3 or a.shape[0] != 2 or b.shape != a.shape:
        raise InputError(f"tie_gradient: expected the shape of gradient (2, Ny, Nx), got "
                         f"{tuple(b.shape)} and {tuple(a.shape)}")
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    units = []
    for c in (a, b):  # r is scale-free; the bracket takes the units back
        top = float(xp.abs(c).max()) if c.size else 0.0
        _unit_scaled(c, top)
        units.append(_unit(top))
    sums = np.asarray(to_host(xp.stack([xp.sum(a * b), xp.sum(a * a), xp.sum(b * b)])))
    ab, aa, bb = (float(v) for v in sums)
    norm = math.sqrt(aa * bb)
    r = ab / norm if norm > 0 and math.isfinite(norm) else 0.0
    check["tie_correlation"] = r
    cal = calibration()
    n = gradient.shape[1] * gradient.shape[2]
    significant = cal["orientation_significance"]
    check["tie_scale"] = None
    if r < cal["orientation_sign_limit"] and r * math.sqrt(n) < -significant:
        check.update(suspect=True, misorientation=180.0, correction=(180.0, False))
    elif r * math.sqrt(n) > significant and r >= SCALE_CORRELATION:
        ratio = units[1] / units[0]
        low, high = sorted((ab / aa * ratio, bb / ab * ratio))  # equal but for rounding
        check["tie_scale"] = (low, high)
        if low > SCALE_LIMIT or high < 1 / SCALE_LIMIT:
            check["misscaled"] = math.sqrt(bb / aa) * ratio


def scale_warning(check) -> str | None:
    """Where a measured gradient and the TIE gradient of its planes disagree
    in scale (:func:`sign_check`'s ``misscaled``), why; else None.

    Parameters
    ----------
    check : dict or None
        A triplet's or a plan's ``gradient_orientation``, or None.

    Returns
    -------
    str or None
        One sentence for a :class:`~flowtie_fast.errors.TrustWarning` and
        every solve's ``info["trust"]``.
    """
    if not check or check.get("misscaled") is None:
        return None
    factor, (low, high) = check["misscaled"], check["tie_scale"]
    times = (f"{factor:.3g}" if factor < 100 else f"{factor:.0f}" if factor < 1e15
             else f"{factor:.2g}" if math.isfinite(factor) else "more than 1e308")
    return (f"gradient and planes disagree in scale: the bright-field TIE phase of the "
            f"planes has a gradient {times} times the measured one, with the same pattern "
            f"(correlation {check['tie_correlation']:.2f}; between {low:.3g} and {high:.3g} "
            f"times whatever the noise, where thin crystals give 1.0-1.4): a unit or "
            f"calibration of one of them is wrong, the gradient's (rad/Å expected: rad/nm is "
            f"10 times, cycles 2π; k_sampling) or the planes' (dz, energy), or scan_step; "
            f"or the ±dz planes drifted against the in-focus one (images are not registered "
            f"by default: register=True); icom's phase is scaled wrong in the first case, "
            f"the TIE methods' in the others")


def suspicion(check) -> str | None:
    """Why an orientation check found the measured gradient misoriented.

    Parameters
    ----------
    check : dict or None
        A triplet's ``gradient_orientation`` (:func:`checked_orientation`),
        or None (no check).

    Returns
    -------
    str or None
        Its ``why`` (a generic sentence where it has none) where ``suspect``
        is True, else None.
    """
    if not check or not check.get("suspect"):
        return None
    return str(check.get("why") or "the measured gradient looks wrongly oriented "
               "(triplet.gradient_orientation)")


def checked_orientation(gradient, pixel_size, tie_gradient=None, *, rotation=None,
                        flip=None, testable_only=False) -> dict:
    """:func:`gradient_orientation`, then, where the gradient passes it,
    :func:`sign_check` against a TIE gradient, and the message where either
    finds it suspect: the check of a triplet's and of a plan's gradient.

    Parameters
    ----------
    gradient : array (2, Ny, Nx)
        The measured gradient, rad/Å.
    pixel_size : float or (float, float)
        Å.
    tie_gradient : callable, optional
        No arguments, returns the reference gradient (:func:`plain_tie_gradient`
        of bright-field planes); an :class:`InputError` from it (no TIE phase
        of those planes) leaves ``tie_correlation`` None. None: no sign check.
    rotation, flip : float and bool, optional
        As in :func:`orientation_warning`.
    testable_only : bool
        Compare the sign only where the curl check could tell (a plan, which
        checks again while none could, keeps a stable verdict so).

    Returns
    -------
    dict
        What :func:`gradient_orientation` returned, with ``tie_correlation``
        where the sign was compared and ``why`` (:func:`orientation_warning`)
        where suspect.
    """
    check = gradient_orientation(gradient, pixel_size)
    if (tie_gradient is not None and not check["suspect"]
            and (check["testable"] or not testable_only)):
        try:
            tie = tie_gradient()
        except InputError:  # no TIE phase of these planes: no sign to compare
            check["tie_correlation"] = None
        else:
            sign_check(check, gradient, tie)
    if check["suspect"]:
        check["why"] = orientation_warning(check, rotation, flip)
    return check


def orientation_warnings(check) -> list:
    """The warnings a gradient's check gives: its orientation's (where
    suspect) and its scale's (:func:`scale_warning`)."""
    return [w for w in (check["why"] if check.get("suspect") else None,
                        scale_warning(check)) if w]


def plain_tie_gradient(planes, derivative_weights, intensity_weights, wavenumber,
                       pixel_size) -> np.ndarray:
    """The gradient of the uniform-intensity TIE phase of focal planes alone:
    the reference of :func:`sign_check`.

    ``φ = ∇⁻²(-k ∂I/∂z) / Ī`` by NumPy FFTs on the host in float64
    (periodic), with no solver to plan, no noise model and no warning.

    Parameters
    ----------
    planes : sequence of arrays (Ny, Nx)
        Intensities (NumPy or CuPy; copied to the host).
    derivative_weights, intensity_weights : sequences of float
        Per plane: ``∂I/∂z = Σ w_i I_i`` (1/Å) and the in-focus intensity
        ``Σ v_i I_i``.
    wavenumber : float
        ``k = 2π/λ`` in rad/Å.
    pixel_size : (float, float)
        Å along (axis 0, axis 1).

    Returns
    -------
    ndarray (2, Ny, Nx)
        The gradient in rad/Å, float64.

    Raises
    ------
    InputError
        Naming ``planes`` where the in-focus intensity has no positive mean.
    """
    planes = [np.asarray(to_host(p), np.float64) for p in planes]
    didz = sum(w * p for w, p in zip(derivative_weights, planes))
    mean = float(sum(w * p for w, p in zip(intensity_weights, planes)).mean())
    if not mean > 0:
        raise InputError("planes: no positive in-focus intensity to take a TIE phase of")
    qy = np.fft.fftfreq(didz.shape[0], pixel_size[0])[:, None]
    qx = np.fft.fftfreq(didz.shape[1], pixel_size[1])[None, :]
    q2 = 4 * np.pi ** 2 * (qy ** 2 + qx ** 2)
    q2[0, 0] = np.inf  # the mean phase is free
    phase = wavenumber * np.fft.fft2(didz) / (mean * q2)
    return np.stack([np.fft.ifft2(2j * np.pi * qy * phase).real,
                     np.fft.ifft2(2j * np.pi * qx * phase).real])


#: How :func:`orientation_warning` says a gradient points half a turn off
#: (the solves read it to add the other reading: the ±dz scans swapped).
HALF_TURN = "it points against the gradient of the bright-field TIE phase"


def orientation_warning(check, rotation=None, flip=None) -> str:
    """The message of a suspect :func:`gradient_orientation`.

    Parameters
    ----------
    check : dict
        What :func:`gradient_orientation` returned (``suspect`` True).
    rotation, flip : float and bool, optional
        The detector rotation (degrees) and flip the centre of mass was
        oriented with, where the gradient comes from 4D-STEM data: the
        message then names the rotation and flip that make it curl-free.

    Returns
    -------
    str
        One sentence for a :class:`~flowtie_fast.errors.TrustWarning` and
        ``info["trust"]``.
    """
    if check.get("misorientation") == 180.0:
        fix = ("turn it by 180°" if rotation is None else
               f"rotation={round(rotation + 180) % 360:d} with flip={bool(flip)}, or "
               f"rotation='auto'")
        return (f"gradient: {HALF_TURN} "
                f"(correlation {check['tie_correlation']:.2f}): the detector rotation looks "
                f"half a turn wrong, and an icom phase from it is the negative phase; {fix} "
                f"(unless the -dz and +dz scans are swapped, which turns the TIE phase, or "
                f"a drift between them is left in the planes or misestimated, or "
                f"the specimen is thick or heavy (a few nm of gold at a defocus step of "
                f"80 Å), where the bright-field TIE phase or the centre of mass no longer "
                f"follows the phase: check on a thin region)")
    theta, transpose = check["correction"]
    if rotation is None:
        turn = f"rotating it by {round(theta) % 180:d}°" + (
            " after swapping its two components" if transpose else "")
        fix = "check the order of its components (d/d axis 0 first) and the detector rotation"
    else:
        right = (theta - rotation) if transpose else (theta + rotation)
        turn = "the rotation and flip named below"
        fix = (f"rotation={round(right) % 180:d} (or {round(right) % 180 + 180:d}) with "
               f"flip={bool(flip) != transpose}, or rotation='auto', would make it curl-free")
    return (f"gradient: {check['curl_fraction']:.0%} of its power is curl, which no phase "
            f"gradient has ({check['least_curl_fraction']:.0%} after {turn}): its "
            f"orientation looks wrong by about {check['misorientation']:.0f}° (a detector "
            f"rotation or flip given wrong, swapped components, the scan's axes given as "
            f"(x, y), or a descan across the scan), "
            f"and an icom phase from it is wrong; {fix}")
