"""Focal series and triplets: the measured intensities at known defocus.

A :class:`FocalSeries` holds N >= 2 intensity images recorded at propagation
distances ``z`` (Å) around the plane of interest ``z0``; the focal derivative
and the in-focus intensity at ``z0`` are least-squares polynomial
(Savitzky-Golay) combinations of the planes. A :class:`FocalTriplet` is the
common case ``I(z0 - dz), I(z0), I(z0 + dz)``.

Both are containers: they check what they are given (:mod:`flowtie_fast.planes`)
and hold it. ``FocalTriplet.from_4dstem`` and ``from_reductions`` build one
from 4D-STEM data by the steps of :mod:`flowtie_fast.stem.focal` (reduction,
beam current, registration, rotation); ``register=`` undoes drift by
:mod:`flowtie_fast.stem.registration`. The rotation calibration's TIE phase
is the one :func:`flowtie_fast.solvers.reconstruct` gives.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .backend import array_stats, get_backend, host_available_memory, is_cupy
from .errors import (RANGES, InputError, TrustWarning, check_choice, check_count, check_positive,
                     check_real, first_line, user_stacklevel)
from .noise import Noise, central, check_noise, counts_check, planes_noise, wiener_gain
from .physics import wavelength, wavenumber
from .planes import (check_gradient, check_gradient_peak, check_image, check_intensity_stats,
                     check_not_masked, check_positions, focal_weights, screen_planes)
from .solvers import reconstruct
from .trust import SIGNED_IMAGES, checked_orientation, orientation_warnings, plain_tie_gradient
from .stem.descan import check_descan, check_descan_mode, descan_plane
from .stem.detector import DISK_FILLS_COM, VIRTUAL_IMAGES, image_saturation
from .stem.focal import (apply_registration, check_com_extent, check_normalize, check_register,
                         check_rotation, com_poisson_noise, orient, prepare_planes, reduce_triplet,
                         register_planes, repair_com, saturation_record, scaled,
                         virtual_image_noise)

__all__ = ["FocalSeries", "FocalTriplet"]


def _checks_backend():
    """The backend of the triplet's own checks (the TIE phase that tells a
    detector rotation from its half turn): the CPU with the NumPy kernels,
    which a one-shot start does not compile."""
    return get_backend("cpu", kernels="numpy")


def _bright_field(reductions, registration, register, flux, dz):
    """The reductions' "bf" images, scaled and registered as the planes were,
    or None where one of them has none."""
    images = [r.virtual.get("bf") for r in reductions]
    if any(i is None for i in images):
        return None
    if flux["applied"]:
        images = scaled(images, flux["scale"])
    return apply_registration(images, registration, register, dz)


def _counts_noise(planes, stats):
    """The noise of planes given without one: Poisson (counts in electrons
    assumed: images hold no band limit to measure a gain against, and
    detector units of a gain under 10 pass this check) where every plane is
    of an integer dtype and its noise, estimated from the image, is within a
    factor 10 of the Poisson variance, or where they hold under one count a
    pixel (sparse counts, mostly zeros, whose noise the image estimate
    cannot measure); the estimate, with a TrustWarning, where integer planes
    are not counts (an 8-bit export, detector units of another gain); None,
    with a TrustWarning for mixed dtypes, otherwise."""
    integer = [p.dtype.kind in "iu" for p in planes]
    if not any(integer):
        return None
    if not all(integer):
        warnings.warn("planes: some are integers (counts?) and some floating point; their "
                      "noise is unknown and nothing is regularised (pass noise=)",
                      TrustWarning, stacklevel=user_stacklevel())
        return None
    poisson, estimated, why = counts_check(planes, stats[:, 1])
    if why is None:
        return poisson
    warnings.warn(f"{why}: taken as measured, not as counts (pass noise= to state it)",
                  TrustWarning, stacklevel=user_stacklevel())
    return estimated


#: The share of the phase's power the finite defocus steps put off the
#: TIE's linear transport (``planes_checks``) beyond which a triplet warns:
#: on Fresnel-propagated Gaussian bumps the TIE NMSE was 0.31 at 0.041 and
#: 0.57-0.60 at 0.05-0.27; of 279 noise-free and 279 1e4 e/Å² simulated test,
#: validation and corpus triplets, 37 and 32 lie above 0.05, of which 4 and
#: 1 had a TIE NMSE under 0.5. Textured and uneven-step objects whose TIE
#: phase was right (NMSE under 0.04) stayed under it. Chosen on these same
#: cases: not an independent score.
DEFOCUS_ERROR_LIMIT = 0.05


#: The share of the phase's power beyond which the noise an unregularised
#: solve carries into it is warned of, for planes of unknown noise
#: (:func:`planes_checks`). Chosen on the first 336 triplets of half the
#: corpus series (even ones; the test, validation and corpus files as
#: floats, noise-free and at 1e3-1e5 e/Å²) before the other half was scored:
#: of its 475 triplets that the check of no signal passed, 205 were flagged
#: (6 with a TIE NMSE under 0.5, 69 under 1), among them 98 of the 107 whose
#: NMSE exceeded 1.5; 10 of 156 noise-free ones were flagged. The estimate
#: runs high: about twice the NMSE measured where one mode carries the phase.
NOISE_DOMINANCE_LIMIT = 0.3


def _noise_dominance(power, noise_power, inverse) -> float:
    """The noise's share of an unregularised TIE phase's power: the
    derivative's white noise (``noise_power`` a mode) over the power above it,
    both weighted by the inverse Laplacian's ``1/q⁴`` (the zero mode left
    out: ``inverse`` holds ``1/q⁴``, 0 at the zero mode); inf where nothing
    lies above the noise."""
    signal = float((np.maximum(power - noise_power, 0.0) * inverse).sum())
    noise = float(noise_power * inverse.sum())
    return noise / signal if signal > 0 else math.inf


def planes_checks(planes, derivative_weights, z, pixel_size, energy, noise,
                  record_name) -> tuple:
    """Two checks of the focal derivative, made as a triplet is (and by a
    :class:`~flowtie_fast.plan.Plan` now and then), each a
    :class:`TrustWarning` and its text where it fails (else None), on the
    :func:`~flowtie_fast.noise.central` window of the planes:

    - where the noise is unknown (``noise`` None: floating-point planes given
      without ``noise=``), whether the derivative holds anything above the
      noise the planes' own pixel-to-pixel scatter suggests
      (:func:`~flowtie_fast.noise.planes_noise`, read for this check only:
      the smaller of the in-focus plane's estimate and the outer planes'
      difference's, where structure all planes share cancels). Planes of
      pure noise came back from every TIE method as a phase of about 2 rad
      without a word. Over the simulated test, validation and corpus
      triplets given as floats, nothing lay above the estimate on 1 of 256
      noise-free ones, and on 38, 74 and 176 at 1e5, 1e4 and 1e3 e/Å², where
      the TIE phase was worse than flat on 25, 57 and 174 of those (with the
      in-focus estimate alone); and, where something does, whether that
      noise, carried whole into the phase by a solve that does not
      regularise, outweighs :data:`NOISE_DOMINANCE_LIMIT` of the phase's
      power (:func:`_noise_dominance`: one mode above the noise had kept the
      first form of the check silent on phases worse than flat);
    - whether the defocus steps are small enough for the TIE: a weak phase's
      mode ``q`` puts ``sin(π λ z q²) φ(q)`` into the plane at ``z``, and
      the derivative's weights return ``r(q) = Σ w_i sin(a z_i) / a`` of its
      slope ``a = π λ q²``; the share of the phase's power that this puts
      off the TIE, ``Σ |φ|² (1 - r)² / Σ |φ|²`` with ``|φ(q)|²`` taken as the
      noise-filtered derivative's power over ``q⁴``
      (:func:`~flowtie_fast.noise.wiener_gain`), at most
      :data:`DEFOCUS_ERROR_LIMIT`. Uneven steps are weighed as the
      derivative takes them. A Fresnel phase object with a 1.4 Å bump gave
      NMSE 0.09 at dz 500 Å and 1.03 at 1 µm, every parameter in range,
      without a word; the share reads 0.016 and 1.2 there, 0.05 where the
      NMSE reached 0.6 (it counts the first-order error alone, about a
      tenth of the phase error measured). A mode at a zero of
      ``sin(π λ dz q²)`` leaves no power to weigh and is not seen.

    Parameters
    ----------
    planes : sequence of arrays (Ny, Nx)
        The intensities (CuPy planes and planes under 8 px a side are not
        checked: None, None).
    derivative_weights : sequence of float
        The focal derivative's weights of the planes, 1/Å.
    z : sequence of float
        The planes' defoci from the in-focus plane, Å.
    pixel_size : (float, float)
        Å per pixel.
    energy : float
        eV.
    noise : Noise or None
        The planes' noise, or None where it is unknown (the noise check runs
        only then).
    record_name : str or None
        How the advice names the series whose ``noise`` is None
        (``"triplet"``), or None (a plan's bare arrays).

    Returns
    -------
    (noise_check, defocus_check) : str or None each
    """
    if is_cupy(planes[0]) or min(planes[0].shape) < 8:
        return None, None
    # scaled to a mean of 1 (neither check depends on it): planes of a scale
    # beyond float64's squares are refused by the solve, naming them
    scale = float(np.mean(central(planes[len(planes) // 2]), dtype=np.float64))
    if not (math.isfinite(scale) and scale > 0):
        return None, None
    unknown = noise is None
    with np.errstate(over="ignore", invalid="ignore"):
        host = [np.asarray(central(p), np.float64) / scale for p in planes]
        if not all(np.isfinite(p).all() for p in host):
            return None, None
        if unknown:  # one estimate for all (a series' planes share a level)
            noise = Noise((planes_noise(host),) * len(host), "estimated")
        else:
            noise = Noise(tuple(v / scale ** 2 for v in noise.variance), noise.source)
        d = sum(w * p for w, p in zip(derivative_weights, host))
        if not np.ptp(d) > 0:  # no focal derivative (identical planes): nothing to judge
            return None, None
        spec = np.fft.rfft2(d)
        power = spec.real ** 2 + spec.imag ** 2
        h, w = d.shape
        q2 = (np.fft.fftfreq(h, pixel_size[0])[:, None] ** 2
              + np.fft.rfftfreq(w, pixel_size[1])[None, :] ** 2)
        inverse = np.zeros_like(q2)  # the inverse Laplacian's 1/q⁴, 0 at the mean
        np.divide(1.0, q2 ** 2, out=inverse, where=q2 > 0)
        level = noise.combined(derivative_weights)
        dominance = _noise_dominance(power, level * d.size, inverse) if unknown else 0.0
        # the modes denoise keeps, and their filtered power
        power *= wiener_gain(power, d.size, level) ** 2
        kept = bool(power.any())
    noise_check = defocus_check = None
    advice = ("give noise= (the planes' variance) to regularise it, or counts as integers"
              + (f" ({record_name}.noise is None)" if record_name else ""))
    if not kept and unknown:
        noise_check = (
            "planes: their noise is unknown (floating-point planes, no noise= given) and "
            "their focal derivative holds nothing above the noise their pixel-to-pixel "
            f"scatter suggests: the phase may be noise; {advice}")
    elif dominance > NOISE_DOMINANCE_LIMIT:
        noise_check = (
            "planes: their noise is unknown (floating-point planes, no noise= given), and "
            "the noise their pixel-to-pixel scatter suggests, carried whole into the phase by "
            f"a solve that does not regularise, amounts to an estimated {dominance:.2g} times "
            f"the phase's power (limit {NOISE_DOMINANCE_LIMIT:g}): the phase may be mostly "
            f"noise; {advice}")
    if noise_check is not None:
        warnings.warn(noise_check, TrustWarning, stacklevel=user_stacklevel())
    if kept:
        # A weak phase's mode q puts sin(π λ z q²) φ(q) into the plane at z: the
        # derivative's weights return r(q) = Σ w_i sin(a z_i) / a of its slope a.
        a = math.pi * wavelength(energy) * q2
        zs = np.asarray(z, float)
        with np.errstate(divide="ignore", invalid="ignore"):
            response = sum(float(wi) * np.sin(a * zi) for wi, zi in zip(derivative_weights, zs))
            response = np.where(a > 0, response / a, 1.0)
            phase_power = power * inverse  # |φ(q)|² ∝ P_d / q⁴
        total = float(phase_power.sum())
        error = float((phase_power * (1.0 - response) ** 2).sum()) / total if total > 0 else 0.0
        if error > DEFOCUS_ERROR_LIMIT:
            step = float(np.max(np.abs(zs)))
            defocus_check = (
                f"dz: a defocus of up to {step:.4g} Å is large for the TIE at the spatial "
                f"frequencies that carry the phase: the derivative of the planes is off the "
                f"TIE's by {error:.2g} of the phase's power (a weak phase's sin(π λ dz q²) "
                f"against its linear term, weighted by the phase's spectrum; limit "
                f"{DEFOCUS_ERROR_LIMIT:g}); a smaller defocus step, or a larger pixel")
            warnings.warn(defocus_check, TrustWarning, stacklevel=user_stacklevel())
    return noise_check, defocus_check


def _solvable(planes) -> bool:
    """Whether a solve of ``planes`` could fit in the host's memory: their
    float32 copies, which every solve holds, within what is available now
    (CuPy planes: always). Planes larger (a memory map, a broadcast view) are
    not screened for defects when the triplet is made: the solve refuses
    them first."""
    if is_cupy(planes[0]):
        return True
    available = host_available_memory()
    return available is None or 4 * sum(p.size for p in planes) <= available


class HDF5ReadError(InputError):
    """HDF5 data that could not be read while a triplet was made from them (a
    damaged chunk, a truncated file, a file closed meanwhile); ``reason`` is
    HDF5's own message."""

    def __init__(self, message, reason=""):
        super().__init__(message)
        self.reason = reason


def _raised_by_h5py(exc) -> bool:
    """Whether ``exc`` was raised inside h5py (HDF5's errors carry no errno)."""
    tb = exc.__traceback__
    while tb is not None:
        if "h5py" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _h5_closed(d) -> bool:
    """Whether ``d`` is an h5py dataset whose file is closed."""
    if not type(d).__module__.startswith("h5py"):
        return False
    try:
        return not bool(d.id.valid)
    except Exception:  # noqa: BLE001  an identifier that cannot say is unusable
        return True


class FocalSeries:
    """Intensity images at N >= 2 propagation distances.

    Parameters
    ----------
    planes : sequence of 2-D arrays
        Intensities (any real dtype, NumPy or CuPy), each (Ny, Nx).
    z : sequence of float
        Propagation distance of each plane in Å (docs/conventions.md: a probe defocus
        Δf in abTEM's convention records the plane ``z = -Δf``).
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    energy : float
        Electron energy in eV.
    z0 : float
        Plane where the phase is wanted, in Å (default 0).
    degree : int, optional
        Degree of the least-squares fit (default ``min(2, N - 1)``).
    gradient : array (2, Ny, Nx), optional
        A measured phase gradient in rad/Å (e.g. 4D-STEM centre of mass),
        used by ``method="icom"``.
    noise : Noise, float or sequence of float, optional
        White-noise variance of the planes (intensity², one number or one per
        plane), from which the classical methods set their regularisation
        (:mod:`flowtie_fast.noise`). Default: Poisson statistics where the
        planes are counts (an integer dtype: electrons, not detector units
        of a gain, whose noise would be underestimated by the gain),
        otherwise unknown (None: no regularisation).
    virtual : {"bf", "bf-full", "abf", "df", "whole"} or None, optional
        The 4D-STEM virtual image the planes are (default None: unknown,
        planes given directly); see the attribute.

    Attributes
    ----------
    noise : Noise or None
        The noise in use (``noise.source`` says where it came from).
    defocus_check : str or None
        Where the defocus steps are large for the TIE at the spatial
        frequencies that carry the phase (more than
        :data:`DEFOCUS_ERROR_LIMIT` of its power put off the TIE's linear
        transport): the :class:`TrustWarning`'s text (the TIE methods'
        ``rec.info["trust"]`` repeats it); else None.
    noise_check : str or None
        Where the noise is unknown (floating-point planes, no ``noise=``) and
        the focal derivative holds nothing above the noise the planes' own
        pixel-to-pixel scatter suggests: the :class:`TrustWarning`'s text
        (the TIE methods' ``rec.info["trust"]`` repeats it); else None.
    gradient_orientation : dict or None
        With a measured gradient: its curl check
        (:func:`flowtie_fast.trust.gradient_orientation`; ``suspect`` and,
        where suspect, ``why``). A gradient with curl beyond its noise is
        taken in the wrong orientation (a detector rotation or flip given
        wrong, swapped components), one that points against the gradient of
        the planes' TIE phase beyond its noise as half a turn off
        (``tie_correlation``, :func:`flowtie_fast.trust.sign_check`), one
        whose magnitude is beyond 3 times or under a third of that
        gradient's as misscaled (``tie_scale``, ``misscaled``): a
        :class:`TrustWarning` says so here, and the solves do not lean on it
        (``icom`` says so again, the other methods neither check against it
        nor fall back to it).
    virtual : str or None
        The 4D-STEM virtual image the planes are (``"bf"``, ``"abf"``, ...:
        given, or set by :meth:`FocalTriplet.from_4dstem` and
        :meth:`FocalTriplet.from_reductions`); None where unknown. The
        shipped flow models read ``"bf"`` images: ``flowtie`` does not trust
        them on others, and the TIE methods warn that their phase of them is
        not the specimen's. A measured gradient given with planes of another
        image is checked for curl but not for its sign (the TIE phase of such
        images does not follow the specimen's).
    plane_defects : dict or None
        Isolated pixels of one plane far from their neighbours (cosmic rays,
        hot or dead pixels) found when the planes were given
        (:func:`~flowtie_fast.planes.screen_planes`): per plane name, the
        pixels as ``[row, column, value, median of its 8 neighbours]``
        (``"pixels"``), whether they were replaced by that median in the
        planes held (``"repaired"``) and the :class:`TrustWarning`'s message
        (``"why"``); None where none were found. A row, column or block of
        one plane that is exactly zero where another holds signal is refused
        (:class:`InputError`). Of a 4D-STEM triplet, ``"pixels"`` may also
        name ``"gradient"``: the in-focus patterns hit by a transient whose
        centre of mass was replaced, ``[row, column, |∇φ| before, |∇φ|
        after]`` (:func:`~flowtie_fast.stem.focal.repair_com`).
    flux : dict or None
        Of a 4D-STEM triplet (:meth:`FocalTriplet.from_4dstem`,
        :meth:`FocalTriplet.from_reductions`): the scans' mean whole-detector
        sums (``"per_pattern"``, without isolated outlying patterns, counted
        in ``"excluded"``), the factors that bring the ±dz planes to the
        in-focus scan's beam current (``"scale"``), whether they were applied
        (``"applied"``) and why not (``"why"``;
        :func:`~flowtie_fast.stem.focal.flux_record`), and for counts whose
        noise is measured above the band limit too, ``"gain"``: the two
        noise estimates and the gain their ratio implies
        (:func:`~flowtie_fast.stem.focal.gain_record`; None otherwise); None
        for planes given directly.
    saturation : dict or None
        Of a 4D-STEM triplet made from the datasets (:meth:`FocalTriplet.
        from_4dstem`): whether patterns sampled across each scan pile up at a
        top value or reach their integer dtype's full scale (a detector
        saturated, counts clipped or wrapped around). ``"saturated"`` (bool:
        any scan), ``"why"`` (the messages of the scans that do, or None)
        and ``"scans"`` (``"minus"``, ``"zero"``, ``"plus"``: each
        :func:`~flowtie_fast.stem.detector.saturation`'s record). Of planes
        given directly of an integer dtype (a camera's images, counts):
        whether more than 4 pixels of a plane read its dtype's full scale
        (clipped or wrapped), with ``"planes"`` (each plane's ``"value"``,
        its maximum, ``"pixels"`` at the full scale, ``"full_scale"``,
        ``"saturated"``) instead of ``"scans"`` and a :class:`TrustWarning`
        where one saturated. Where saturated,
        every solve's ``rec.info["trust"]`` says so (and ``flowtie``'s
        ``rec.info["trusted"]`` is False). None where not checked
        (floating-point planes given directly, reductions made elsewhere); a
        triplet saved and loaded keeps it (:func:`~flowtie_fast.io.save`).
    descan : dict or None
        Of a 4D-STEM triplet: the least-squares plane of the centre of mass
        (uncorrected descan, and the specimen's own plane), how far it
        moves the centre of mass across the scan (``"across_mrad"``,
        ``"across_px"``), whether it was removed from ``gradient``
        (``"applied"``) and whether it was large enough to warn of
        (``"large"``; :func:`~flowtie_fast.stem.descan.descan_plane`); None
        for planes given directly.
    """

    def __init__(self, planes, z, pixel_size, energy, z0: float = 0.0, degree=None,
                 gradient=None, noise=None, virtual=None):
        if isinstance(planes, (list, tuple)):
            planes = list(planes)
        elif planes is not None and getattr(planes, "ndim", 0) == 3:
            planes = [planes[i] for i in range(planes.shape[0])]
        else:
            raise InputError("planes: expected a sequence of 2-D arrays or a 3-D stack")
        if len(planes) < 2:
            raise InputError(f"planes: expected at least 2 planes, got {len(planes)}")
        z = check_positions("z", z, len(planes))
        if not np.all(np.isfinite(z)):
            raise InputError(f"z: expected {len(planes)} finite positions in Å, got {z.tolist()}")
        z0 = check_real("z0", z0)
        lo, hi = RANGES["dz"][:2]
        gaps = np.diff(np.sort(z))
        gaps = gaps[gaps > 0]  # repeated planes are refused by focal_weights
        span = float(z.max() - z.min())
        if (gaps.size and gaps.min() < lo) or np.abs(z - z0).max() > hi:
            raise InputError(f"z: expected planes {lo:g} to {hi:g} Å apart and from z0, got "
                             f"{z.tolist()} with z0 = {z0:g}")
        if not z.min() - span <= z0 <= z.max() + span:
            raise InputError(f"z0: expected a plane within one span ({span:g} Å) of the "
                             f"measured ones {z.tolist()}, got {z0:g}")
        if degree is not None:
            degree = check_count("degree", degree, 1, len(planes) - 1)
        names = self._plane_names(len(planes))
        first = check_image(names[0], planes[0])
        self.planes = [first] + [check_image(nm, p, first.shape)
                                 for nm, p in zip(names[1:], planes[1:])]
        stats = array_stats(self.planes)
        check_intensity_stats(names, stats, self.planes)
        self.plane_defects = None
        solvable = _solvable(self.planes)  # the host's free memory: read once
        if solvable:  # else the solve refuses them (and screens what it solves)
            self.planes, self.plane_defects = screen_planes(
                names, self.planes, where=f"{self._record_name}.plane_defects")
        if self.plane_defects is not None and self.plane_defects["repaired"]:
            stats = array_stats(self.planes)
        self.noise = check_noise(noise, len(self.planes))
        if self.noise is None:
            self.noise = _counts_noise(self.planes, stats)
        self.z = z
        self.z0 = float(z0)
        self.pixel_size = check_positive("pixel_size", pixel_size, pair=True)
        self.energy = check_positive("energy", energy)
        self.intensity_weights, self.derivative_weights = focal_weights(z, self.z0, degree)
        self.noise_check = self.defocus_check = None
        mixed = len({p.dtype.kind in "iu" for p in self.planes}) > 1  # noise unknown: warned
        if solvable and not mixed:
            self.noise_check, self.defocus_check = planes_checks(
                self.planes, self.derivative_weights, self.z - self.z0, self.pixel_size,
                self.energy, self.noise if isinstance(self.noise, Noise) else None,
                self._record_name)
        self.gradient = None
        self.gradient_noise = None  # Noise of the gradient's two components, (rad/Å)²
        self.gradient_orientation = None
        self.virtual = None if virtual is None else check_choice("virtual", virtual,
                                                                 VIRTUAL_IMAGES)
        self.flux = None  # a 4D-STEM triplet's electrons per pattern and scale (from_reductions)
        # integer planes' pile-up check (a 4D-STEM triplet's: from_reductions)
        self.saturation = image_saturation(names, self.planes)
        self.descan = None  # a 4D-STEM triplet's descan plane (from_reductions)
        if gradient is not None:
            self.gradient = self._check_gradient(gradient)
            self._check_orientation(sign=self.virtual in (None,) + SIGNED_IMAGES)

    _record_name = "series"

    @staticmethod
    def _plane_names(n):
        return [f"planes[{i}]" for i in range(n)]

    @property
    def plane_names(self) -> list:
        """How messages name the planes: ``planes[i]``, or minus, zero, plus."""
        return self._plane_names(len(self.planes))

    def _check_gradient(self, g):
        """A measured gradient checked (:func:`~flowtie_fast.planes.check_gradient`)
        and within the deflection any centre of mass reaches at this energy
        (:func:`~flowtie_fast.planes.gradient_limit`)."""
        g = check_gradient(g, self.shape)
        check_gradient_peak(g, self.wavenumber)
        return g

    def _check_orientation(self, rotation=None, flip=None, sign=False, reference=None):
        """The measured gradient's curl check (:func:`flowtie_fast.trust.
        gradient_orientation`) into ``gradient_orientation``, with a
        TrustWarning where its orientation looks wrong; with ``sign``, where
        it passes, also its sign and scale against the TIE gradient of the
        planes, or of the ``reference`` planes
        (:func:`flowtie_fast.trust.sign_check`: a turn by 180° has no curl),
        with a TrustWarning where they disagree in scale."""
        check = checked_orientation(
            self.gradient, self.pixel_size,
            (lambda: self._plain_tie_gradient(reference)) if sign else None,
            rotation=rotation, flip=flip)
        self.gradient_orientation = check
        for why in orientation_warnings(check):
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())

    def _plain_tie_gradient(self, planes=None):
        """The gradient (rad/Å) of the uniform-intensity TIE phase of the
        planes alone (or of ``planes`` at their positions):
        :func:`flowtie_fast.trust.plain_tie_gradient`."""
        return plain_tie_gradient(planes or self.planes, self.derivative_weights,
                                  self.intensity_weights, self.wavenumber, self.pixel_size)

    @property
    def shape(self) -> tuple:
        """Image shape (Ny, Nx)."""
        return tuple(self.planes[0].shape)

    @property
    def wavenumber(self) -> float:
        """``k = 2π/λ`` in rad/Å."""
        return wavenumber(self.energy)

    @property
    def on_gpu(self) -> bool:
        """True when the planes are CuPy arrays."""
        return is_cupy(self.planes[0])

    def __repr__(self) -> str:
        z = ", ".join(f"{float(v):.4g}" for v in self.z)
        px = ", ".join(f"{float(v):.4g}" for v in self.pixel_size)
        extra = ", with gradient" if self.gradient is not None else ""
        return (f"{type(self).__name__}(shape={self.shape}, z=[{z}] Å, pixel_size=({px}) Å, "
                f"energy={self.energy:g} eV{extra})")


class FocalTriplet(FocalSeries):
    """Three intensities ``I(z0 - dz), I(z0), I(z0 + dz)`` ordered by z.

    Parameters
    ----------
    minus, zero, plus : 2-D arrays
        Intensities at ``z0 - dz_minus``, ``z0`` and ``z0 + dz_plus`` (any real
        dtype, NumPy or CuPy, same shape).
    dz : float or (float, float)
        Defocus step in Å; a pair ``(dz_minus, dz_plus)`` for uneven spacing.
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    energy : float
        Electron energy in eV.
    gradient : array (2, Ny, Nx), optional
        A measured phase gradient in rad/Å for ``method="icom"``.
    noise : Noise, float or sequence of float, optional
        White-noise variance of the planes (see :class:`FocalSeries`).
    register : bool or "periodic"
        Undo a drift of the ±dz images against the in-focus one, estimated
        from the images themselves (default False: from images alone, the
        mean lateral transport of the image by the specimen's phase gradient
        cannot be told from drift; :meth:`from_4dstem` registers by default,
        from the dark field). Either way costs where it is wrong: on a
        Fresnel phase object, a drift of 0.2 px left in takes the TIE's
        phase error to 0.6-6 times the phase's variance (registered: 0.005),
        while on a field of strong intensity contrast (40 %) spanning a few
        periods the estimate reads the defocus change as a 0.4 px shift and
        applying it takes an exact phase to 4 times its rms. Shifts under
        0.1 px and unreliable estimates are recorded, not applied; images
        over 512 px a side are measured on their central 512 px.
        ``"periodic"`` for images of whole periods. The record is in
        ``triplet.registration``.
    virtual : {"bf", "bf-full", "abf", "df", "whole"} or None, optional
        The 4D-STEM virtual image the planes are (default None: unknown; see
        :class:`FocalSeries`).

    Examples
    --------
    >>> t = FocalTriplet(minus, zero, plus, dz=20.0, pixel_size=0.18, energy=300e3)
    """

    def __init__(self, minus, zero, plus, dz, pixel_size, energy, gradient=None, noise=None,
                 register=False, virtual=None):
        dz_minus, dz_plus = check_positive("dz", dz, pair=True)
        self.dz = (dz_minus, dz_plus)
        check_register(register)
        # registered: the gradient is checked against the TIE phase of the
        # registered planes, not of the drifted ones
        super().__init__([minus, zero, plus], [-dz_minus, 0.0, dz_plus], pixel_size, energy,
                         z0=0.0, degree=2, gradient=None if register else gradient,
                         noise=noise, virtual=virtual)
        self.registration = None
        if register:
            if gradient is not None:
                self.gradient = self._check_gradient(gradient)
            self.planes, self.registration = register_planes(self.planes, None, register,
                                                             self.dz)
            if self.gradient is not None:  # the sign only of planes known to be aligned
                self._check_orientation(sign=self.virtual in (None,) + SIGNED_IMAGES
                                        and bool(self.registration.get("reliable")))

    _record_name = "triplet"

    @staticmethod
    def _plane_names(n):
        return ["minus", "zero", "plus"]

    @classmethod
    def from_4dstem(cls, minus, zero, plus, dz, scan_step, k_sampling, energy, *, center=None,
                    virtual="bf", bf_radius=None, com_radius=None, rotation=0.0, flip=False,
                    register=True, normalize=True, descan="plane", backend="auto",
                    chunk_bytes=64 << 20):
        """Focal triplet from 4D-STEM data recorded at three probe defoci.

        Each dataset is reduced in one pass (chunked, bounded memory) to the
        virtual images and the centre of mass; the triplet's planes are the
        chosen virtual image and its ``gradient`` is ``2π ×`` the centre of
        mass of the in-focus dataset (rad/Å, for ``method="icom"``), its
        mean over the scan and its descan plane removed (see
        :meth:`from_reductions`).

        Parameters
        ----------
        minus, zero, plus : array-like (Sy, Sx, Ky, Kx)
            Patterns recorded at the planes ``-dz, 0, +dz`` (abTEM defoci
            ``+dz, 0, -dz``: docs/conventions.md), any real dtype; NumPy, CuPy, memory
            maps, HDF5 datasets or dask arrays.
        dz : float or (float, float)
            Defocus step in Å.
        scan_step : float or (float, float)
            Scan step in Å (the pixel size of the triplet).
        k_sampling : float or (float, float)
            Detector sampling in 1/Å per pixel.
        energy : float
            Electron energy in eV.
        center : (float, float), optional
            Detector centre (row, column) in pixels; default: found from the
            bright-field disk of patterns sampled across the in-focus scan. A
            centre given is used as given, with a
            :class:`~flowtie_fast.stem.detector.DetectorWarning` where it lies
            more than 0.08 disk radii and 5 standard errors from the disk's
            measured centre (:func:`~flowtie_fast.stem.detector.check_center_given`).
        virtual : {"bf", "bf-full", "abf", "df", "whole"}
            Which virtual image forms the planes: a small bright-field disk
            (radius ``bf_radius``: coherent bright field, the image the TIE
            needs), the whole bright-field disk, its outer half (annular
            bright field), the annulus outside it, or the whole detector.
        bf_radius : float, optional
            Radius of the "bf" disk in mrad; default a quarter of the
            bright-field disk measured on the mean pattern (on GaAs
            simulations at 20 mrad this gave the lowest TIE phase error:
            docs/evaluation.md).
        com_radius : float, optional
            Limit of the centre of mass in mrad (default: whole detector).
        rotation : float or "auto"
            Detector-to-scan rotation in degrees within ±360 (default 0);
            "auto" finds it (and ``flip``) by minimising the curl of the
            centre of mass.
        flip : bool
            Transpose the detector axes before rotating (default False).
        register : bool or "periodic"
            Undo the drift between the three scans (default True): the
            sub-pixel shifts of the ±dz scans against the in-focus one are
            estimated from their annular dark-field images (which do not
            change with defocus) and applied to the planes before any solve;
            ``"periodic"`` for scans of whole periods (simulations), where
            the shift wraps around; False to skip. The estimate and whether
            it was applied are in ``triplet.registration`` (shifts in px
            that align each plane, row 1 zero); shifts under 0.1 px are
            reported, not applied, and an unreliable estimate is not applied,
            with a :class:`~flowtie_fast.stem.registration.RegistrationWarning`.
        normalize : bool
            Bring the ±dz planes to the in-focus scan's beam current (default
            True): each is scaled by the ratio of the electrons the in-focus
            scan's patterns hold on the whole detector to those its own
            hold (the same whatever the defocus, to 0.24 % on simulations),
            so that a current, dwell time or gain that changed between the
            scans does not enter the focal derivative. The electrons per
            pattern and the factors are in ``triplet.flux``
            (:func:`~flowtie_fast.stem.focal.flux_record`); a factor beyond
            1.5 either way is applied with a :class:`TrustWarning`. False
            uses the planes as recorded.
        descan : {"plane", "none"}
            Remove from the gradient its least-squares plane (a constant and
            two slopes per component): uncorrected descan, which moves the
            disk linearly across the scan (default "plane"); "none" removes
            only the mean. Either way the plane is measured and recorded in
            ``triplet.descan`` (:func:`~flowtie_fast.stem.descan.descan_plane`),
            with a :class:`TrustWarning` where it moves the centre of mass by
            more than 0.9 detector px across the scan.
        backend : {"auto", "cpu", "gpu"}
            Where the reduction runs (default "auto": the GPU where one
            answers).
        chunk_bytes : int
            Upper bound of raw data read at once, in bytes (default 64 MiB).

        Returns
        -------
        FocalTriplet
            With ``reductions``: the three :class:`~flowtie_fast.stem.reduction.Reduction`.
        """
        check_rotation(rotation)  # before the pass over the data
        if not isinstance(flip, (bool, np.bool_)):
            raise InputError(f"flip: expected True or False, got {flip!r}")
        check_register(register)
        check_normalize(normalize)
        check_descan_mode(descan)
        data = {"minus": minus, "zero": zero, "plus": plus}
        for name, d in data.items():
            check_not_masked(name, d)
        try:
            reductions, counts = reduce_triplet(
                minus, zero, plus, k_sampling, energy, center=center, virtual=virtual,
                bf_radius=bf_radius, com_radius=com_radius, backend=backend,
                chunk_bytes=chunk_bytes)
        except OSError as exc:
            if exc.errno is not None or not _raised_by_h5py(exc):
                raise
            closed = [name for name, d in data.items() if _h5_closed(d)]
            names = ", ".join(closed or data)
            raise HDF5ReadError(f"{names}: HDF5 data cannot be read ({first_line(exc)}); the "
                                "file is damaged or truncated, or was closed or changed while "
                                "it was read", reason=first_line(exc)) from exc
        return cls.from_reductions(reductions, dz, scan_step, virtual=virtual,
                                   rotation=rotation, flip=flip, counts=counts,
                                   register=register, normalize=normalize, descan=descan)

    @classmethod
    def from_reductions(cls, reductions, dz, scan_step, *, virtual="bf", rotation=0.0,
                        flip=False, counts=False, register=True, normalize=True,
                        descan="plane"):
        """Focal triplet from the three reductions of a 4D-STEM triplet.

        The second half of :meth:`from_4dstem`, for reductions made elsewhere
        (a LiberTEM UDF on a file or a live stream: :mod:`flowtie_fast.stem.live`).

        Parameters
        ----------
        reductions : three :class:`~flowtie_fast.stem.reduction.Reduction`
            Of the datasets at ``-dz, 0, +dz``. They are not modified: the
            triplet keeps rotated copies. Reductions that record a rotation
            already applied (another triplet's ``reductions``) are turned
            back to detector axes first: ``rotation`` and ``flip`` are always
            from the detector axes.
        dz : float or (float, float)
            Defocus step in Å.
        scan_step : float or (float, float)
            Scan step in Å (the pixel size of the triplet).
        virtual : {"bf", "bf-full", "abf", "df", "whole"}
            Which virtual image forms the planes (default "bf"; as in
            :meth:`from_4dstem`).
        rotation : float or "auto"
            Detector-to-scan rotation in degrees within ±360 (default 0);
            "auto" finds it.
        flip : bool
            Transpose the detector axes before rotating (default False).
        counts : bool
            Whether the patterns were electron counts (an integer dtype;
            default False). True of reductions whose planes hold values that
            are not whole numbers (floating-point patterns) is refused.
        register : bool or "periodic"
            Undo the drift between the three scans (default True; as in
            :meth:`from_4dstem`).
        normalize : bool
            Bring the ±dz planes to the in-focus scan's beam current, from
            the reductions' ``"whole"`` images (default True; as in
            :meth:`from_4dstem`).
        descan : {"plane", "none"}
            Remove the descan plane from the gradient (default "plane"), or
            only its mean ("none"); as in :meth:`from_4dstem`.

        Returns
        -------
        FocalTriplet
            With ``reductions``: copies of the three reductions it was made
            from, their centre of mass rotated to scan axes (``rotation`` and
            ``flip`` recorded).

        Notes
        -----
        The triplet's ``gradient`` is ``2π ×`` the in-focus centre of mass
        with its mean over the scan removed: a centre of mass that is the same
        at every scan position comes from the detector centre (estimated from
        the patterns: a fraction of a pixel off at a few tens of electrons a
        pattern), descan or beam tilt, not from the specimen's phase, and
        integrated over a non-periodic field of view it would become a phase
        ramp many times the phase itself. With ``descan="plane"`` its two
        slopes per component go too: a disk moved linearly across the scan by
        uncorrected descan, whose curl-free part ``icom`` would integrate into
        a quadratic phase (a MoS2 trilayer's ``icom`` NMSE went from 0.13 to
        1.2 with 1 detector px across the scan; with the plane removed, 0.19
        either way). The price is the specimen's own plane: on 63 corpus files
        the ``icom`` NMSE of right data rose by 3 % in the median and 1.5
        times at worst (docs/acquisitions.md, "Descan"). ``triplet.descan`` records the plane
        (:func:`~flowtie_fast.stem.descan.descan_plane`). The reductions keep
        the centre of mass as measured.

        The triplet's ``noise`` is measured where the virtual images leave
        room above their band limit (a probe of aperture α, the measured
        bright-field disk, puts no spatial frequency above ``2α / λ`` into
        any scanned image, whatever the specimen), else taken as Poisson where the patterns
        were counts, else unknown (:mod:`flowtie_fast.noise`).
        """
        check_rotation(rotation)
        check_descan_mode(descan)
        if not isinstance(counts, (bool, np.bool_)):
            raise InputError(f"counts: expected True or False, got {counts!r}")
        steps = check_positive("dz", dz, pair=True)  # the registration extrapolates by it
        reductions, planes, scan_step, energy, noise, registration, flux = prepare_planes(
            reductions, scan_step, virtual=virtual, counts=counts, register=register,
            normalize=normalize, dz=steps)
        reductions[1], hit, why = repair_com(reductions, counts=counts)
        check_com_extent(reductions[1], "zero")
        t = cls(*planes, dz=dz, pixel_size=scan_step, energy=energy, noise=noise,
                virtual=virtual)
        if hit is not None:  # one record of the pixels replaced, planes' and gradient's
            found = t.plane_defects or {"pixels": {}, "repaired": True, "why": None}
            t.plane_defects = {**found, "pixels": {**found["pixels"], "gradient": hit},
                               "why": why if found["why"] is None else f"{found['why']}; {why}"}
        # The half turn is told by the TIE phase of bright-field images, whose
        # contrast follows the phase (that of "abf" and "df" images does not).
        bright = virtual in SIGNED_IMAGES
        reference = None if bright else _bright_field(reductions, registration, register, flux,
                                                      steps)
        given = not isinstance(rotation, str)  # "auto" resolves 180° with the TIE phase
        reductions, rotation, flip = orient(
            reductions, rotation, flip,
            t._tie_gradient if bright else lambda: t._plain_tie_gradient(reference))
        t.registration = registration
        t.flux = flux
        t.saturation = saturation_record(reductions)
        gradient = t._check_gradient(reductions[1].gradient)
        detector = reductions[1].detector
        t.gradient, t.descan = descan_plane(gradient, energy, detector.k_sampling, descan)
        check_descan(t.descan)
        # The TIE phase is a reference for the sign only of planes known to be
        # aligned: of scans whose drift could not be measured it is not the
        # specimen's (a right centre of mass was read as half a turn wrong).
        aligned = registration is None or bool(registration.get("reliable"))
        if not reductions[1].disk_fills:
            t._check_orientation(rotation, flip, sign=given and aligned and (
                bright or reference is not None), reference=reference)
        else:  # the disk fills the detector (stem.triplet_geometry warned)
            t.gradient_orientation = {"testable": False, "suspect": True, "why": DISK_FILLS_COM}
        t.gradient_noise = virtual_image_noise(list(t.gradient), scan_step, energy,
                                                reductions[1].regions, virtual)
        if t.gradient_noise is None and counts:  # no room above the band: the counts'
            t.gradient_noise = com_poisson_noise(reductions[1])
        t.reductions = reductions
        return t

    def _tie_gradient(self):
        """Phase gradient of Teague's TIE on these planes (rad/Å)."""
        return reconstruct(self, method="tie", backend=_checks_backend()).gradient

    @property
    def minus(self):
        """Intensity at ``z0 - dz``."""
        return self.planes[0]

    @property
    def zero(self):
        """Intensity at ``z0``."""
        return self.planes[1]

    @property
    def plus(self):
        """Intensity at ``z0 + dz``."""
        return self.planes[2]
