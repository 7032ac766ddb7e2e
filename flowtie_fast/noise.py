"""The noise of measured intensities, and the regularisation it sets.

The focal derivative is a difference of nearly equal planes divided by the
defocus step; at a low dose it is mostly noise, and the inverse Laplacian of
the TIE amplifies that noise at low spatial frequencies without bound. Where
the noise of the planes is known, the classical methods set their
regularisation from it:

Noise of a plane
    The variance σ² (intensity²) of a white noise per pixel, one per plane:

    - ``"poisson"``: electron counts (planes of an integer dtype, or 4D-STEM
      data recorded as counts) have the variance of their mean, σ² = Ī
      (Poisson statistics; a pixel's variance is its count, and the
      white-noise equivalent is the mean);
    - ``"band"``: an image that cannot hold spatial frequencies above a limit
      q_max holds only noise above it; the mean power there (a median,
      robust to leakage from the edges of a non-periodic field of view) is
      σ², whatever the detector's gain. A scanned image of a probe of
      aperture α has ``q_max = 2α / λ`` whatever the specimen (the scan
      position enters only through the incident wave, a sum of plane waves
      within the aperture, and the intensity pairs two of them);
    - ``"given"``: variances the caller states.

Denoising the focal derivative (``denoise=True``, the default)
    ∂I/∂z is filtered by its own spectrum (:func:`denoise`): a Fourier mode
    keeps the Wiener gain ``1 - N σ_D² / P(q)`` where its power P(q) exceeds
    the universal threshold ``2 ln(M) N σ_D²`` and is removed otherwise,
    with ``σ_D² = Σ_i w_i² σ_i²`` for the derivative weights ``w_i``. A
    crystal's transport sits in a few strong modes, which pass; the noise's
    modes at low spatial frequencies, which the inverse Laplacian would
    amplify most, do not. Where nothing passes, the phase is zero (the data
    hold none above their noise) and ``info["denoise"]`` says 0 modes.

Teague's floor (``floor="auto"``, the default)
    ``max(0.1, min(1, 2 σ_0 / Ī))`` as a fraction of the mean for the
    division of ``tie``: it skips pixels within two standard deviations of
    zero, and divides by no less than a tenth of the mean. The division
    turns the curl of ``I ∇φ`` that Teague's method drops into phase
    gradient amplified by ``Ī / I``: a near-opaque patch (1 % of the mean
    intensity or less in a Fresnel phase object whose phase error is 5e-7
    of its variance without it) took that error to 3-37 at a floor of 1e-3,
    0.02-0.15 at 0.1;
    on the 18 simulated test and validation crystals (noise-free and 1e4
    e/Å²) no phase was worse at 0.1 than at 1e-3. ``tie-exact`` solves the
    exact equation and only clips the intensity at ``max(1e-3, ...)`` to
    keep its weights positive.

Tikhonov α (``alpha="auto"``, not the default)
    Morozov's discrepancy principle: the α (Å⁻⁴) at which the regularised
    fit of ∂I/∂z leaves a residual as large as the noise,
    ``Σ_q |(1 - F_α(q)) D̂(q)|² = N (N - 1) σ_D²`` with
    ``F_α = s² / (s² + α)``, ``s = |2π q|²``. One α for every frequency
    smooths the Bragg peaks of a crystal with the noise; on simulated
    crystals it lost to the filter above at every dose from 1e3 to 1e6 e/Å²
    (docs/evaluation.md).

Measured gradient (``icom``, :func:`denoise_gradient`)
    The 4D-STEM centre of mass is band-limited like the images; its noise is
    measured above the band. A phase gradient has no curl, so only the
    curl-free (longitudinal) part of the measured field, ``L(q) = q̂ · Ĝ(q)``,
    carries phase: it holds all the signal and half the noise. That part is
    filtered in two stages. Detection: unless some mode passes the level
    pure noise reaches in one field of M in M (``2 ln M`` in units of the
    noise power), the gradient holds no phase above its noise and the phase
    is zero. Then every mode above the level pure noise passes about once a
    field (``ln M``) keeps the Wiener gain ``1 - N σ_L² / P(q)``. For the
    mirror boundary the modes are those of the field extended by reflection,
    as the mirror Poisson solve extends it: the sine and cosine transforms of
    each component (no field four times the size is formed), and the levels
    are those of their real (χ² with one degree of freedom) mode powers.

Iterative methods
    Without the filter (``denoise=False``), ``tie-exact`` and ``gd`` stop once
    the TIE residual ``‖k ∂I/∂z + ∇·(I ∇φ)‖`` is down to the noise's
    ``k √N σ_D`` (iterating further fits the noise).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from .backend import array_module, to_host
from .errors import InputError, check_count, check_positive, check_real
from .planes import check_not_masked

__all__ = ["Noise", "COUNTS", "central", "check_noise", "counts_check", "estimate_noise",
           "planes_noise", "gradient_noise_share", "gradient_noise_warning",
           "GRADIENT_NOISE_LIMIT",
           "wiener_gain",
           "poisson_noise",
           "band_noise", "denoise", "denoise_gradient", "denoise_gradient_bytes",
           "gradient_levels",
           "discrepancy_alpha", "teague_floor", "ALPHA_MAX"]

COUNTS = "counts"  # a solve's noise: Poisson statistics of the planes it is given
ALPHA_MAX = 1e12  # Å⁻⁴: the largest Tikhonov parameter a solver accepts
FLOOR_MIN = 1e-3  # the exact TIE's intensity clip without noise, fraction of the mean
TEAGUE_FLOOR_MIN = 0.1  # Teague's division without noise, fraction of the mean
BAND_MARGIN = 1.1  # frequencies above 1.1 x the band limit are taken as noise only
BAND_MIN_FRACTION = 0.05  # of the modes, for a band estimate


@dataclass(frozen=True)
class Noise:
    """White-noise variances of the planes of a focal series.

    Each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    variance : tuple of float
        Per plane, in intensity² (the planes' units squared).
    source : str
        ``"poisson"``, ``"band"`` or ``"given"`` (module docstring).
    """

    variance: tuple
    source: str

    def combined(self, weights) -> float:
        """Variance of the weighted sum ``Σ w_i I_i`` of the planes.

        Parameters
        ----------
        weights : sequence of float
            One weight per plane (e.g. a row of
            :func:`~flowtie_fast.planes.focal_weights`: 1, or 1/Å).

        Returns
        -------
        float
            The variance: intensity² times the weights' unit squared.
        """
        return float(sum(float(w) ** 2 * v for w, v in zip(weights, self.variance)))

    def __repr__(self) -> str:
        try:
            v = "(" + ", ".join(f"{x:.3g}" for x in self.variance) + ")"
        except (TypeError, ValueError):  # not checked yet: shown as given (checked when used)
            v = _short(self.variance)
        return f"Noise(variance={v}, source={self.source!r})"


SOURCES = ("poisson", "band", "given", "estimated")
#: What :func:`check_noise` expects, by what the variances are of: the
#: planes' noise, or a measured gradient's (one variance per component).
_EXPECTED = {
    "plane": ("the variance of the planes' noise (intensity², one real number or one per "
              "plane)", "intensity²"),
    "component": ("the variance of the measured gradient's noise ((rad/Å)², one real number "
                  "or one per component; a triplet's gradient_noise)", "(rad/Å)²")}


def _short(value) -> str:
    """A value for a message: short reprs as they are, arrays by shape."""
    shape = getattr(value, "shape", None)
    if shape is not None and getattr(value, "size", 0) > 8:
        return f"an array of shape {tuple(shape)}"
    text = " ".join(repr(value).split())  # one line (an array's repr wraps)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_image(name: str, a):
    """``a`` as a 2-D array of real numbers (NumPy or CuPy; a nested list is
    read as NumPy; not a masked array, whose mask would be ignored):
    :class:`InputError` naming ``name`` otherwise."""
    check_not_masked(name, a)
    if not hasattr(a, "shape"):
        try:
            a = np.asarray(a)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name}: expected a 2-D array of real numbers, got "
                             f"{type(a).__name__}") from exc
    if len(a.shape) != 2:
        raise InputError(f"{name}: expected a 2-D array, got shape {tuple(a.shape)}")
    dtype = np.dtype(getattr(a, "dtype", object))
    if dtype.kind not in "iuf":
        raise InputError(f"{name}: expected real numbers, got dtype {dtype}")
    return a


def _not_finite(name: str) -> InputError:
    return InputError(f"{name}: contains NaN or Inf, or values whose squares or sums "
                      "overflow float64; expected finite intensities of a usual scale")


def _holds_bool_or_text(values) -> bool:
    """Whether a (nested) list or tuple holds a bool, a NumPy bool or a string."""
    if isinstance(values, (bool, np.bool_, str, bytes)):
        return True
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "O":
            return any(_holds_bool_or_text(x) for x in values.ravel())
        return values.dtype.kind in "bSU"
    if isinstance(values, (list, tuple)):
        return any(_holds_bool_or_text(x) for x in values)
    return False


def check_noise(noise, n_planes: int, name: str = "noise", each: str = "plane"):
    """``noise`` as given to a series or a solve: None (unknown), a
    :class:`Noise`, or the variance (one number or one per plane, intensity²).
    Returns a Noise or None; :class:`InputError` naming ``noise`` otherwise.

    Parameters
    ----------
    noise : Noise, float, sequence of float or None
        The noise given: a Noise (its source one of ``"poisson"``,
        ``"band"``, ``"given"``, ``"estimated"``), a variance for every plane
        or one per plane (real numbers, not bools or strings), in
        intensity², or None.
    n_planes : int
        The number of planes of the series or solve (of components, for a
        measured gradient's noise).
    name : str, optional
        How messages name the argument (default "noise").
    each : {"plane", "component"}, optional
        What each variance is of: a plane (intensity², the default) or a
        component of a measured gradient ((rad/Å)²).

    Returns
    -------
    Noise or None
        None for None; else a Noise with ``n_planes`` float variances (one
        number repeated for every plane) and the source given (``"given"``
        for bare variances).

    Raises
    ------
    InputError
        Where the source is unknown, or the variances are not real numbers,
        not 1 or ``n_planes`` of them, nested (a list of lists or an array of
        more than one dimension), not finite or negative.
    """
    if noise is None:
        return None
    expected, unit = _EXPECTED[each]
    if isinstance(noise, Noise):
        if noise.source not in SOURCES:
            raise InputError(f"{name}: expected a source among {SOURCES}, got "
                             f"{noise.source!r}")
        values = noise.variance
        source = noise.source
    else:
        values, source = noise, "given"
    if isinstance(values, (str, bytes, bool, np.bool_)) or isinstance(values, np.ma.MaskedArray):
        raise InputError(f"{name}: expected {expected}, got {_short(values)}")
    if _holds_bool_or_text(values):  # np.asarray would read [1.0, True] as [1.0, 1.0]
        raise InputError(f"{name}: expected {expected}, got {_short(values)}")
    try:
        raw = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: expected {expected}, got {_short(values)}") from exc
    if raw.dtype.kind not in "iuf" or any(isinstance(x, (bool, np.bool_, str, bytes))
                                          for x in np.atleast_1d(raw).tolist()):
        raise InputError(f"{name}: expected {expected}, got {_short(values)}")
    if raw.ndim > 1:  # flattened, [[1, 2, 3]] would pass for three plane variances
        shown = _short(values)  # an array of more than 8 values is shown by its shape
        if not shown.startswith("an array of shape"):
            shown += f" of shape {raw.shape}"
        raise InputError(f"{name}: expected 1 or {n_planes} variances, one per {each} "
                         f"({unit}, a number or a flat list), got {shown}")
    v = raw.astype(np.float64).reshape(-1)
    if v.size == 1:
        v = np.repeat(v, n_planes)
    if v.size != n_planes or not np.all(np.isfinite(v)) or np.any(v < 0):
        raise InputError(f"{name}: expected 1 or {n_planes} finite non-negative variances "
                         f"({unit}), got {_short(values)}")
    return Noise(tuple(float(x) for x in v), source)


def estimate_noise(plane) -> float:
    """A white-noise variance estimated from one image: the mean absolute
    response to a filter that cancels planes and smooth curvature
    (Immerkær 1996), ``σ = √(π/2) Σ|I * N| / (6 (W-2)(H-2))`` with
    ``N = [[1,-2,1],[-2,4,-2],[1,-2,1]]``; image structure adds to it, so it
    is an upper bound where the image is not smooth on the pixel scale.

    Parameters
    ----------
    plane : 2-D array (NumPy or CuPy)
        One image (intensity).

    Returns
    -------
    float
        The variance per pixel, intensity²; 0 for an image under 3 pixels on
        a side.
    """
    a = to_host(_check_image("plane", plane)).astype(np.float64, copy=False)
    if min(a.shape) < 3:
        return 0.0
    # the kernel is the outer product of [1, -2, 1] with itself: two passes
    rows = a[:-2] - 2 * a[1:-1] + a[2:]
    r = rows[:, :-2] - 2 * rows[:, 1:-1] + rows[:, 2:]
    sigma = math.sqrt(math.pi / 2) * float(np.abs(r).sum()) / (6 * r.size)
    if not math.isfinite(sigma * sigma):  # NaN in, or differences beyond float64
        raise _not_finite("plane")
    return sigma * sigma


#: The share of a measured gradient's power under which the noise estimated
#: from its pixel scatter is not read as noise (:func:`gradient_noise_share`).
CLEAN_GRADIENT = 0.01


def gradient_noise_share(gradient, pixel_size) -> tuple:
    """How much of the phase integrated from a measured gradient of unknown
    noise its own pixel-to-pixel scatter suggests is noise.

    The white-noise variance of each component is estimated from the
    gradient itself (:func:`estimate_noise`, the mean of the two; an upper
    bound where the gradient has structure on the pixel scale). On 649
    simulated 4D-STEM scans at 1e2-1e4 e/Å² it was 0.97 times the noise
    measured above the band limit in the median, 0.91-1.05 times on the
    middle half and 0.75-1.29 on nine in ten (2026-12-06). Its curl-free part, the only part a
    phase integrates, puts ``N σ²`` into each Fourier mode of the gradient's
    component along ``q`` and ``1/(2π q)²`` of that into the phase's mode;
    the share is that noise's power in the phase over the power above it
    (both weighted so, the zero mode left out), inf where nothing lies
    above it; 0 where the noise estimated is under :data:`CLEAN_GRADIENT` of
    the gradient's power (a clean gradient whose curl-free part is weak,
    such as one turned by 90°, holds little phase, but not noise).

    Parameters
    ----------
    gradient : array (2, Ny, Nx)
        The measured gradient, rad/Å (NumPy or CuPy; its central
        :data:`CHECK_WINDOW` px are read, on the host).
    pixel_size : (float, float)
        Å along (axis 0, axis 1).

    Returns
    -------
    (float, float)
        The share (0 where the estimate is zero) and the variance estimated,
        (rad/Å)² per component.
    """
    g = np.stack([central(to_host(c), CHECK_WINDOW) for c in gradient]).astype(np.float64)
    variance = float(np.mean([estimate_noise(c) for c in g]))
    g -= g.mean(axis=(1, 2), keepdims=True)
    if not variance > CLEAN_GRADIENT * float(np.mean(g * g)):
        return 0.0, variance
    ny, nx = g.shape[1:]
    qy = np.fft.fftfreq(ny, float(pixel_size[0]))[:, None]
    qx = np.fft.fftfreq(nx, float(pixel_size[1]))[None, :]
    q2 = qy * qy + qx * qx
    q2[0, 0] = 1.0
    spectrum = np.fft.fft2(g)
    power = np.abs(qy * spectrum[0] + qx * spectrum[1]) ** 2 / q2  # the part along q
    inverse = 1.0 / q2
    inverse[0, 0] = 0.0
    noise = ny * nx * variance
    signal = float((np.maximum(power - noise, 0.0) * inverse).sum())
    share = noise * float(inverse.sum())
    return (share / signal if signal > 0 else math.inf), variance


#: The share of the ``icom`` phase's power above which the noise a measured
#: gradient of unknown noise suggests by its own pixel scatter
#: (:func:`gradient_noise_share`) is warned of: chosen on the validation
#: crystals and the even corpus series (the limit with the fewest plan
#: ``icom`` phases flagged at NMSE < 0.5 plus phases worse than flat not
#: flagged, the middle of a tie; 1 and 4 of 401 rows), scored on the test
#: crystals and the odd series: of 412 rows (noise-free, 1e4, 1e3, 300 and
#: 100 e/Å², 2026-12-06) 108 were worse than flat, 91 of them flagged (5 of
#: the 17 missed noise-free, their error not noise); none flagged below NMSE
#: 0.5, 75 between 0.5 and 1.
GRADIENT_NOISE_LIMIT = 0.7


def gradient_noise_warning(gradient, pixel_size, advice: str):
    """Why the ``icom`` phase of a measured gradient of unknown noise may be
    mostly noise (:func:`gradient_noise_share` above
    :data:`GRADIENT_NOISE_LIMIT`), or None.

    Parameters
    ----------
    gradient : array (2, Ny, Nx)
        The measured gradient, rad/Å (NumPy or CuPy).
    pixel_size : (float, float)
        Å.
    advice : str
        How the caller can give the noise (ends the sentence).

    Returns
    -------
    str or None
        One sentence for a :class:`~flowtie_fast.errors.TrustWarning` and
        ``info["trust"]``.
    """
    share, variance = gradient_noise_share(gradient, pixel_size)
    if not share > GRADIENT_NOISE_LIMIT:
        return None
    told = "more than" if math.isinf(share) else f"{share:.2g} times"
    return (f"icom: the measured gradient's phase may be mostly noise: the noise its own "
            f"pixel-to-pixel scatter suggests ({math.sqrt(variance):.2g} rad/Å a component) "
            f"would carry {told} the power of the phase above it (limit "
            f"{GRADIENT_NOISE_LIMIT:g}), and a gradient of unknown noise is not filtered: "
            f"{advice}, or record a larger dose")


#: px: the checks of a triplet's and a plan's planes read at most this central
#: window of each plane (the statistics they measure are the whole field's; a
#: 2048² field's would cost a second).
CHECK_WINDOW = 512
def central(a, side: int = None):
    """The central window of an image, at most ``side`` px a side.

    Parameters
    ----------
    a : array (..., Ny, Nx)
        The image (NumPy or CuPy); its last two axes are cut.
    side : int, optional
        The window's largest side in px (default :data:`CHECK_WINDOW`).

    Returns
    -------
    array
        A view of ``a``: the whole of an axis no longer than ``side``.
    """
    side = CHECK_WINDOW if side is None else side
    cuts = tuple(slice(max(0, (n - side) // 2), max(0, (n - side) // 2) + min(n, side))
                 for n in a.shape[-2:])
    return a[(Ellipsis,) + cuts]


#: Estimated over Poisson variance beyond which (either way) integer planes
#: are not electron counts (an 8-bit export, detector units of a gain).
COUNTS_MISMATCH = 10.0
#: Integer planes of fewer counts a pixel than this, mostly zeros, are counts:
#: the image estimate of a Gaussian noise reads about 11 λ² for λ counts a
#: pixel there, 0.1 of the Poisson variance λ at λ = 0.01, and cannot tell
#: them from another unit.
SPARSE_COUNTS = 1.0


def planes_noise(planes) -> float:
    """One white-noise variance per pixel for a focal series' planes: the
    smaller of :func:`estimate_noise` of the middle plane and of the outer
    planes' difference over √2. Structure that every plane shares (a lattice,
    a camera's fixed gain pattern, a specimen's fine texture) cancels in the
    difference and is read as noise in one plane; the difference keeps the
    defocus contrast, which is smooth on the pixel scale.

    Parameters
    ----------
    planes : sequence of 2-D arrays (NumPy), two at least
        The planes, ordered by defocus.

    Returns
    -------
    float
        The variance per pixel, intensity².
    """
    first = np.asarray(planes[0], np.float64)
    last = np.asarray(planes[-1], np.float64)
    return min(estimate_noise(planes[len(planes) // 2]),
               estimate_noise((last - first) / math.sqrt(2.0)))


def counts_check(planes, sums) -> tuple:
    """Whether integer planes are electron counts: their noise estimated from
    the images (:func:`planes_noise`, on their :func:`central` window) within
    :data:`COUNTS_MISMATCH` of the Poisson noise of that window's means
    (detector units of a gain under 10 pass);
    planes under 8 px a side, or of under :data:`SPARSE_COUNTS` counts a
    pixel, are taken as counts unchecked.

    Parameters
    ----------
    planes : sequence of 2-D arrays
        The integer planes (NumPy or CuPy).
    sums : sequence of float
        Each plane's sum (the Poisson noise returned is of the whole planes).

    Returns
    -------
    poisson : Noise
        The Poisson noise of the planes' means.
    estimated : Noise or None
        The images' own estimate (:func:`planes_noise` for every plane,
        source ``"estimated"``), where measured.
    why : str or None
        Where they are not counts, why (the two noises' ratio); else None.
    """
    size = planes[0].shape[0] * planes[0].shape[1]
    sums = np.asarray(sums, dtype=np.float64)
    poisson = poisson_noise(sums / size)
    if min(planes[0].shape) < 8 or float(sums.max()) < SPARSE_COUNTS * size:
        return poisson, None, None
    # the structure-free estimate decides (a lattice read as noise in one plane
    # made right counts at 2e5 per pixel look 20 times too noisy)
    windows = [to_host(central(p)) for p in planes]
    level = planes_noise(windows)
    estimated = Noise((level,) * len(planes), "estimated")
    means = sum(float(np.mean(w, dtype=np.float64)) for w in windows)
    ratio = sum(estimated.variance) / max(means, 1e-300)
    if 1 / COUNTS_MISMATCH <= ratio <= COUNTS_MISMATCH:
        return poisson, estimated, None
    return poisson, estimated, (
        f"planes: integer planes whose noise ({level:.3g}, estimated "
        f"from the images) is {ratio:.2g} times that of electron counts of their mean")


def poisson_noise(means) -> Noise:
    """Noise of counts: each plane's variance is its mean count.

    Parameters
    ----------
    means : sequence of float
        Each plane's mean, in counts (electrons) per pixel.

    Returns
    -------
    Noise
        Variances equal to the means (counts²), source ``"poisson"``.

    Raises
    ------
    InputError
        Where ``means`` is not a sequence of finite non-negative numbers.
    """
    if isinstance(means, (str, bytes)) or not hasattr(means, "__iter__"):
        raise InputError(f"means: expected a sequence of mean counts, one per plane, got "
                         f"{_short(means)}")
    return Noise(tuple(check_real(f"means[{i}]", m, low=0.0) for i, m in enumerate(means)),
                 "poisson")


def band_noise(planes, pixel_size, band_limit):
    """Noise variances from the power above a band limit.

    Parameters
    ----------
    planes : sequence of 2-D arrays (NumPy or CuPy)
        The images (intensity), all of one shape.
    pixel_size : (float, float)
        Sampling along (axis 0, axis 1) in Å.
    band_limit : float
        Highest spatial frequency the images can carry, 1/Å (cycles).

    Returns
    -------
    Noise or None
        Per plane, the variance per pixel (intensity²), source ``"band"``;
        None where too few frequencies lie above the band limit (under 5 %
        of the modes, or under 16).

    Raises
    ------
    InputError
        Where the planes are not 2-D real arrays of one shape or hold NaN or
        Inf, or ``pixel_size`` or ``band_limit`` is not a positive number.
    """
    pixel_size = check_positive("pixel_size", pixel_size, pair=True)
    band_limit = check_real("band_limit", band_limit, low=0.0, low_open=True)
    if isinstance(planes, (str, bytes)) or not hasattr(planes, "__len__") or not len(planes):
        raise InputError(f"planes: expected a sequence of 2-D arrays, got {_short(planes)}")
    planes = [_check_image(f"planes[{i}]", p) for i, p in enumerate(planes)]
    shape = tuple(planes[0].shape)
    for i, p in enumerate(planes):
        if tuple(p.shape) != shape:
            raise InputError(f"planes[{i}]: expected shape {shape} like planes[0], got "
                             f"{tuple(p.shape)}")
    qy = np.fft.fftfreq(shape[0], pixel_size[0])[:, None]
    qx = np.fft.rfftfreq(shape[1], pixel_size[1])[None, :]
    above = (qy ** 2 + qx ** 2) > (BAND_MARGIN * band_limit) ** 2
    if above.sum() < BAND_MIN_FRACTION * above.size or above.sum() < 16:
        return None
    n = shape[0] * shape[1]
    variance = []
    for p in planes:
        a = to_host(p).astype(np.float64)
        power = np.abs(np.fft.rfft2(a - a.mean())[above]) ** 2 / n
        # A periodogram ordinate of white noise is exponential: median = ln 2 x mean.
        variance.append(float(np.median(power)) / math.log(2))
        if not math.isfinite(variance[-1]):
            raise _not_finite(f"planes[{len(variance) - 1}]")
    return Noise(tuple(variance), "band")


def _symbols(shape, pixel_size):
    """``s = |2π q|²`` (1/Å²) on the rfft half plane and each mode's multiplicity."""
    qy = np.fft.fftfreq(shape[0], pixel_size[0])[:, None]
    qx = np.fft.rfftfreq(shape[1], pixel_size[1])[None, :]
    s = (2 * np.pi) ** 2 * (qy ** 2 + qx ** 2)
    mult = np.full(s.shape, 2.0)
    mult[:, 0] = 1.0
    if shape[1] % 2 == 0:
        mult[:, -1] = 1.0
    return s, mult


def discrepancy_alpha(source, pixel_size, variance: float, *, bins: int = 400) -> float:
    """Morozov's Tikhonov parameter (Å⁻⁴) for an inverse Laplacian of ``source``.

    Parameters
    ----------
    source : 2-D array (NumPy or CuPy)
        The right-hand side ``f`` of ``∇²φ = f`` (1/Å²).
    pixel_size : (float, float)
        Å.
    variance : float
        Variance of the white noise of ``source`` per pixel (1/Å⁴).
    bins : int, optional
        Logarithmic bins of the spectrum the residual is evaluated on
        (default 400).

    Returns
    -------
    float
        0 when the variance is 0; :data:`ALPHA_MAX` when the noise accounts
        for all the power of ``source``.

    Raises
    ------
    InputError
        Where ``source`` is not a finite real 2-D array, ``variance`` not a
        finite non-negative number, ``pixel_size`` not positive or ``bins``
        not a positive integer.
    """
    variance = check_real("variance", variance, low=0.0)
    pixel_size = check_positive("pixel_size", pixel_size, pair=True)
    bins = check_count("bins", bins)
    source = _check_image("source", source)
    if not variance > 0:
        return 0.0
    f = to_host(source).astype(np.float64)
    shape = f.shape
    n = f.size
    spec = np.fft.rfft2(f)
    s, mult = _symbols(shape, pixel_size)
    power = (mult * (spec.real ** 2 + spec.imag ** 2)).ravel()[1:]  # without q = 0
    s = s.ravel()[1:]
    if not math.isfinite(float(power.sum())):
        raise _not_finite("source")
    target = n * (n - 1) * float(variance)
    if power.sum() <= target:
        return ALPHA_MAX
    # Log bins of s: R(α) on a few hundred numbers instead of every mode.
    edges = np.geomspace(s.min() * (1 - 1e-9), s.max() * (1 + 1e-9), bins + 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    p = np.bincount(idx, power, bins)
    s2 = (np.bincount(idx, s * power, bins) / np.where(p > 0, p, 1.0)) ** 2
    keep = p > 0
    p, s2 = p[keep], s2[keep]

    def residual(alpha):
        return float(np.sum(p * (alpha / (s2 + alpha)) ** 2))

    lo, hi = math.log(s2.min() * 1e-12), math.log(min(ALPHA_MAX, s2.max() * 1e6))
    if residual(math.exp(hi)) <= target:
        return min(ALPHA_MAX, math.exp(hi))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if residual(math.exp(mid)) > target:
            hi = mid
        else:
            lo = mid
    return math.exp(0.5 * (lo + hi))


def teague_floor(variance: float, mean: float, least: float = FLOOR_MIN) -> float:
    """Teague's intensity floor for a noise variance of the in-focus intensity.

    Parameters
    ----------
    variance : float
        Noise variance of the in-focus intensity per pixel (intensity²).
    mean : float
        Mean in-focus intensity ``Ī`` (intensity).
    least : float
        The floor without noise, a fraction of the mean (default
        :data:`FLOOR_MIN`, 1e-3, the exact TIE's clip; Teague's division
        uses :data:`TEAGUE_FLOOR_MIN`, 0.1).

    Returns
    -------
    float
        The floor as a fraction of the mean, ``max(least, min(1, 2 σ / Ī))``;
        ``least`` where the variance or the mean is not positive.

    Raises
    ------
    InputError
        Where ``variance`` or ``mean`` is not a finite real number.
    """
    variance, mean = check_real("variance", variance), check_real("mean", mean)
    least = check_real("least", least, low=0.0)
    if least > 1:
        raise InputError(f"least: expected a fraction of the mean in [0, 1], got {least!r}")
    if not variance > 0 or not mean > 0:
        return least
    return max(least, min(1.0, 2.0 * math.sqrt(variance) / mean))



def wiener_gain(power, size: int, variance: float, threshold: float | None = None):
    """The gain :func:`denoise` applies to each mode of a real image's
    half-plane spectrum: ``1 - N σ² / P(q)`` where the power ``P(q)`` exceeds
    ``threshold`` (default ``2 ln M``) times ``N σ²``, else 0; 0 for the mean.

    Parameters
    ----------
    power : 2-D array
        ``|rfft2(a)|²`` of an image ``a`` of ``size`` pixels (NumPy or CuPy).
    size : int
        The image's number of pixels ``N``.
    variance : float
        The white noise's variance per pixel ``σ²`` (the image's units²).
    threshold : float, optional
        In units of the noise power ``N σ²`` (default ``2 ln M``, ``M`` the
        modes of ``power``).

    Returns
    -------
    array
        The gain per mode, in [0, 1), of ``power``'s shape and module.
    """
    xp = array_module(power)
    noise = size * float(variance)
    if threshold is None:
        threshold = 2.0 * math.log(power.size)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        gain = xp.where(power > threshold * noise,
                        1.0 - noise / xp.maximum(power, 1e-300), 0.0)
    gain[0, 0] = 0.0
    return gain


def denoise(a, variance: float, threshold: float | None = None) -> int:
    """Filter ``a`` in place by its own spectrum and a known white noise.

    A mode whose power ``P(q) = |â(q)|²`` exceeds the universal threshold
    ``2 ln(M) N σ²`` (M modes of the half plane, N pixels: pure noise passes
    it with probability about 1/M² per mode, so about one noise mode in M
    images) keeps the Wiener gain ``1 - N σ² / P(q)``; every other mode is
    removed. Where no mode but the mean passes, ``a`` becomes zero: the data
    hold no signal above their noise.

    Parameters
    ----------
    a : 2-D array (NumPy or CuPy), real
        Overwritten.
    variance : float
        Variance of the white noise of ``a`` per pixel (``a``'s units²).
    threshold : float, optional
        In units of the noise power ``N σ²`` (default ``2 ln M``).

    Returns
    -------
    int
        The number of Fourier modes kept (besides the mean, which is
        removed).

    Raises
    ------
    InputError
        Where ``a`` is not a writeable floating-point 2-D array or holds NaN
        or Inf, ``variance`` is not a finite non-negative number, or
        ``threshold`` is below 1 (the Wiener gain would turn negative) or not
        finite.
    """
    variance = check_real("variance", variance, low=0.0)
    if threshold is not None:
        threshold = check_real("threshold", threshold, low=1.0)
    if not hasattr(a, "shape"):
        raise InputError(f"a: expected a 2-D array (filtered in place), got "
                         f"{type(a).__name__}")
    _check_image("a", a)
    if a.dtype.kind != "f":  # the filtered values would be truncated to integers
        raise InputError(f"a: expected a floating-point array (filtered in place), got "
                         f"dtype {a.dtype}")
    if isinstance(a, np.ndarray) and not a.flags.writeable:
        raise InputError("a: the array is read-only; expected a writeable array (it is "
                         "filtered in place)")
    xp = array_module(a)
    spec = xp.fft.rfft2(a.astype(xp.float64))
    if not math.isfinite(float(spec[0, 0].real)):  # the sum: NaN or Inf anywhere
        raise _not_finite("a")
    gain = wiener_gain(spec.real ** 2 + spec.imag ** 2, a.size, variance, threshold)
    kept = int(xp.count_nonzero(gain))
    if kept == 0:
        a[...] = 0
        return 0
    gain[0, 0] = 1.0
    a[...] = xp.fft.irfft2(spec * gain, s=a.shape)
    return kept


def _chi2_1_level(p: float) -> float:
    """The level ``t`` that a χ² variable of one degree of freedom (mean 1)
    exceeds with probability ``p``: ``erfc(√(t/2)) = p``, by bisection."""
    lo, hi = 0.0, 400.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if math.erfc(math.sqrt(0.5 * mid)) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def gradient_levels(shape, mirror: bool = False) -> tuple:
    """The detection and the keeping level of :func:`denoise_gradient`, in
    units of the noise power of a mode.

    Parameters
    ----------
    shape : tuple of int
        ``(Ny, Nx)`` of the gradient's components.
    mirror : bool
        Levels for the field extended by reflection (the mirror boundary).

    Returns
    -------
    (float, float)
        ``(detect, keep)``: pure noise passes ``detect`` somewhere in about
        one field of M (M independent modes) and ``keep`` about once a
        field. Periodic: exponential mode powers, ``2 ln M`` and ``ln M``
        with ``M = Ny (Nx // 2 + 1)``; mirror: real mode powers (χ² with
        one degree of freedom), ``M = Ny Nx``.
    """
    return _levels(int(shape[0]), int(shape[1]), bool(mirror))


@functools.lru_cache(maxsize=64)
def _levels(ny: int, nx: int, mirror: bool) -> tuple:
    """:func:`gradient_levels` of one shape, made once (the bisections)."""
    if mirror:
        m = ny * nx
        return _chi2_1_level(1.0 / m ** 2), _chi2_1_level(1.0 / m)
    m = ny * (nx // 2 + 1)
    return 2.0 * math.log(m), math.log(m)


#: Bytes per pixel of a component that :func:`denoise_gradient` allocates at
#: most (periodic, mirror): its float64 modes, directions, noise shares and
#: gains, measured with tracemalloc at 1024² and 2048² (45 and 81), rounded up.
GRADIENT_FILTER_BYTES = (48, 88)


def denoise_gradient_bytes(shape, mirror: bool = False) -> int:
    """Memory :func:`denoise_gradient` allocates for its own working arrays.

    Parameters
    ----------
    shape : tuple of int
        ``(Ny, Nx)`` of the gradient's components, in pixels.
    mirror : bool
        For the mirror boundary's filter (default: the periodic one).

    Returns
    -------
    int
        Bytes, at most (not counting the gradient itself).
    """
    return GRADIENT_FILTER_BYTES[bool(mirror)] * int(shape[0]) * int(shape[1])


def denoise_gradient(g, variance, mirror: bool = False, pixel_size=(1.0, 1.0)) -> int:
    """Filter a measured phase gradient in place: its curl-free part, by its
    own spectrum and a known white noise (module docstring).

    The curl-free part ``L(q) = q̂ · Ĝ(q)`` of the two components is all a
    phase integrates; it carries the whole signal and noise of power
    ``N (q̂_y² σ_y² + q̂_x² σ_x²)`` per mode. Unless one of its modes passes
    the detection level of :func:`gradient_levels`, ``g`` becomes zero (it
    holds no phase above its noise). Otherwise each mode above the keeping
    level keeps the Wiener gain ``1 - noise / P(q)`` and the others are
    removed, and ``g`` becomes the gradient of the filtered part (curl-free,
    mean zero: neither the curl nor the mean is a phase's, and the periodic
    spectral Poisson solve integrates the same phase from ``g`` without
    them; the mirror solve's finite differences see a slightly different
    curl-free part, which moved a noise-free phase band-limited below 0.2
    and 0.45 cycles per pixel by 0.2 % and 4 %).

    Parameters
    ----------
    g : array (2, Ny, Nx), real (NumPy or CuPy)
        ``(∂φ/∂y, ∂φ/∂x)`` in rad/Å (any units: those of ``variance``'s
        square root); overwritten.
    variance : (float, float)
        Variance of the white noise of each component per pixel (``g``'s
        units²).
    mirror : bool
        Filter the field extended by reflection (``∂φ/∂y`` odd in y, even
        in x; ``∂φ/∂x`` the reverse), as a mirror-boundary Poisson solve
        sees it, instead of the periodic one: in the sine and cosine modes
        of each component, which hold that field's Fourier modes (a mode's
        power and filter are the same; each component keeps the modes of its
        own symmetry).
    pixel_size : (float, float)
        ``(hy, hx)``, any unit (only their ratio sets the direction of a
        mode, ``q̂``; default square pixels).

    Returns
    -------
    int
        The number of Fourier modes of the (extended) field kept, 0 where
        ``g`` became zero.
    """
    xp = array_module(g)
    ny, nx = g.shape[1:]
    if mirror:
        longitudinal, (uy, ux), (fy, fx), size = _mirror_longitudinal(g, pixel_size)
    else:
        longitudinal, (uy, ux), (fy, fx), size = _periodic_longitudinal(g, pixel_size)
    noise = size * (fy * float(variance[0]) + fx * float(variance[1]))
    if mirror:
        power = longitudinal * longitudinal
    else:
        power = longitudinal.real ** 2 + longitudinal.imag ** 2
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # a mode without noise (a component stated noise-free) passes whole; a
        # mode that no pixel reaches (fy + fx == 0: the mean, a reflection's
        # corner) holds nothing but rounding
        ratio = xp.where(noise > 0, power / xp.where(noise > 0, noise, 1.0),
                         xp.where((power > 0) & (fy + fx > 0), xp.inf, 0.0))
    del noise, power
    ratio[0, 0] = 0.0  # the mean: no phase
    detect, keep = gradient_levels((ny, nx), mirror)
    if not bool((ratio > detect).any()):
        g[...] = 0
        return 0
    with np.errstate(divide="ignore"):
        gain = xp.where(ratio > keep, 1.0 - 1.0 / xp.maximum(ratio, 1e-300), 0.0)
    del ratio
    kept = gain != 0
    if mirror:  # a mode 0 < ky < Ny stands for two of the reflected field's rfft
        kept = int(xp.count_nonzero(kept)) + int(xp.count_nonzero(kept[1:ny]))
    else:
        kept = int(xp.count_nonzero(kept))
    longitudinal *= gain
    del gain
    if mirror:
        fft = _real_transforms(xp)
        g[0] = fft.idct(fft.idst(uy[1:, :nx] * longitudinal[1:, :nx], type=2, axis=0),
                        type=2, axis=1)
        g[1] = fft.idst(fft.idct(ux[:ny, 1:] * longitudinal[:ny, 1:], type=2, axis=0),
                        type=2, axis=1)
    else:
        g[0] = xp.fft.irfft2(uy * longitudinal, s=(ny, nx))
        g[1] = xp.fft.irfft2(ux * longitudinal, s=(ny, nx))
    return kept


def _real_transforms(xp):
    """scipy.fft, or cupyx.scipy.fft for CuPy arrays (the DCT and DST)."""
    if xp is np:
        import scipy.fft as module
    else:
        import cupyx.scipy.fft as module
    return module


def _directions(qy, qx):
    """The unit vector ``q̂ = (qy, qx) / |q|`` of each mode (0 at q = 0)."""
    q = (qy * qy + qx * qx) ** 0.5
    q[q == 0] = 1.0
    return qy / q, qx / q


def _periodic_longitudinal(g, pixel_size):
    """:func:`denoise_gradient`'s curl-free part of a periodic field: its rfft
    modes ``L = q̂ · Ĝ`` (complex, Ny x (Nx // 2 + 1)), ``q̂``, each
    component's share of a mode's noise, and the noise power's scale, N."""
    xp = array_module(g)
    ny, nx = g.shape[1:]
    qy = xp.fft.fftfreq(ny, float(pixel_size[0]))[:, None]
    qx = xp.fft.rfftfreq(nx, float(pixel_size[1]))[None, :]
    # no derivative on the Nyquist lines (the spectral solve's)
    if ny % 2 == 0:
        qy[ny // 2] = 0.0
    if nx % 2 == 0:
        qx[:, -1] = 0.0
    uy, ux = _directions(qy, qx)
    longitudinal = uy * xp.fft.rfft2(g[0].astype(xp.float64)) \
        + ux * xp.fft.rfft2(g[1].astype(xp.float64))
    return longitudinal, (uy, ux), (uy * uy, ux * ux), ny * nx


def _mirror_longitudinal(g, pixel_size):
    """:func:`denoise_gradient`'s curl-free part of the field extended by
    reflection to (2 Ny, 2 Nx), without forming it: ``∂φ/∂y`` is odd in y and
    even in x, so its modes are the sine transform (DST-II) along y of the
    cosine transform (DCT-II) along x, and ``∂φ/∂x`` the reverse; both share
    the phase factor of the half-pixel shift, which drops out. The modes
    ``0 <= ky <= Ny``, ``0 <= kx <= Nx`` (real, (Ny + 1) x (Nx + 1)) hold the
    same powers as the reflected field's rfft; the sine modes run from 1 to
    N and the cosine modes from 0 to N - 1. Returns them with ``q̂``, each
    component's share of a mode's noise and the noise power's scale,
    ``2 Ny 2 Nx``."""
    xp = array_module(g)
    fft = _real_transforms(xp)
    ny, nx = g.shape[1:]
    ky = xp.arange(ny + 1, dtype=xp.float64)[:, None]
    kx = xp.arange(nx + 1, dtype=xp.float64)[None, :]
    uy, ux = _directions(ky / (2.0 * ny * float(pixel_size[0])),
                         kx / (2.0 * nx * float(pixel_size[1])))
    longitudinal = xp.zeros((ny + 1, nx + 1))
    longitudinal[1:, :nx] = fft.dst(fft.dct(g[0].astype(xp.float64), type=2, axis=1),
                                    type=2, axis=0)
    longitudinal[1:, :nx] *= uy[1:, :nx]
    longitudinal[:ny, 1:] += ux[:ny, 1:] * fft.dct(
        fft.dst(g[1].astype(xp.float64), type=2, axis=1), type=2, axis=0)
    # A cosine mode's noise is twice the rest's at k = 0 and none at k = N; a
    # sine mode's none at k = 0 and twice at k = N.
    even_y = xp.where(ky == 0, 2.0, xp.where(ky == ny, 0.0, 1.0))
    odd_y = xp.where(ky == 0, 0.0, xp.where(ky == ny, 2.0, 1.0))
    even_x = xp.where(kx == 0, 2.0, xp.where(kx == nx, 0.0, 1.0))
    odd_x = xp.where(kx == 0, 0.0, xp.where(kx == nx, 2.0, 1.0))
    shares = (uy * uy * odd_y * even_x, ux * ux * even_y * odd_x)
    return longitudinal, (uy, ux), shares, 4 * ny * nx
