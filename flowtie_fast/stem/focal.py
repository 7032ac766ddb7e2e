"""The triplet from 4D-STEM data: three reductions, their planes, drift and rotation.

The steps of :meth:`FocalTriplet.from_4dstem <flowtie_fast.triplet.FocalTriplet.from_4dstem>`
that need no triplet:

- :func:`reduce_triplet`: the three datasets checked, the detector geometry
  measured once on the in-focus scan, the patterns sampled from each scan
  checked for a saturated detector (:func:`check_saturation`), and each
  dataset reduced in one pass to its virtual images and centre of mass;
- :func:`prepare_planes`: the chosen virtual images as planes, brought to
  the in-focus scan's beam current (:func:`flux_record`, from the electrons
  each scan's patterns hold), their noise measured above the band limit,
  and the drift of the ±dz scans undone (:func:`register_planes`, from the
  dark field);
- :func:`orient`: the centre of mass rotated from detector to scan axes.

The triplet itself is built by :class:`~flowtie_fast.triplet.FocalTriplet`,
which calls these in turn.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from ..backend import array_module, is_cupy, to_host
from ..errors import (InputError, TrustWarning, check_choice, check_count, check_positive,
                      check_real, user_stacklevel)
from ..noise import Noise, band_noise, central, poisson_noise
from ..physics import wavelength
from ..planes import neighbours, outlying_pixels, repair_limit, screen_planes
from .detector import (SATURATION_EFFECT, Detector, DetectorWarning, check_com_radius,
                       check_region, disk_filled, mean_pattern, sample_patterns,
                       sampled_positions, saturation, triplet_geometry)
from .reduction import (Reduction, _is_dask, check_4d, check_float32_range,
                        check_reduction_memory, reduce_4dstem)
from .registration import RegistrationWarning, apply_shift, register_triplet
from .rotation import calibrate_rotation, rotate_com

__all__ = ["flux_record", "holds_counts", "orient", "prepare_planes", "reduce_triplet",
           "register_planes", "repair_com"]

#: px: smaller shifts are reported, not applied (the estimate's accuracy; the
#: dark field of thick crystals shifts by a few hundredths of a pixel with
#: defocus alone).
REGISTRATION_THRESHOLD = 0.1
#: px: the side of the central window the drift is measured on (a drift moves
#: the whole field; a larger window costs time: 0.14-0.16 s for a 256 px
#: triplet, 0.3-0.75 s for 1024-2048 px ones measured on this window, 14 s
#: for 2048 px over the whole field; two CPU cores beside a busy neighbour).
REGISTRATION_WINDOW = 512


def _nonfinite_position(sample, data) -> str:
    """`` (at scan position (r, c), ...)`` of the first sampled pattern of
    ``data`` that holds NaN or Inf (:func:`sample_patterns`' stack
    ``sample``), or "" where none does (a mean beyond float range)."""
    xp = array_module(sample)
    bad = ~xp.isfinite(sample.reshape(len(sample), -1)).all(axis=1)
    if not bool(bad.any()):
        return ""
    first = int(xp.argmax(bad))
    rows, cols = sampled_positions(data.shape[:2])
    return (f" (at scan position ({int(rows[first // len(cols)])}, "
            f"{int(cols[first % len(cols)])}), one of the patterns sampled for the "
            "detector's geometry)")


def reduce_triplet(minus, zero, plus, k_sampling, energy, *, center=None, virtual="bf",
                   bf_radius=None, com_radius=None, backend="auto", chunk_bytes=64 << 20):
    """The three reductions of a 4D-STEM triplet, in one pass over each dataset.

    Every parameter is as in :meth:`FocalTriplet.from_4dstem
    <flowtie_fast.triplet.FocalTriplet.from_4dstem>`.

    Parameters
    ----------
    minus, zero, plus : array-like (Sy, Sx, Ky, Kx)
        Patterns recorded at the planes ``-dz, 0, +dz``, of one shape, any
        real dtype; NumPy, CuPy, memory maps, HDF5 datasets or dask arrays.
    k_sampling : float or (float, float)
        Detector sampling in 1/Å per pixel.
    energy : float
        Electron energy in eV.
    center : (float, float), optional
        Detector centre (row, column) in pixels (default None: found from the
        bright-field disk of patterns sampled across the in-focus scan); one
        given is checked against that disk: a
        :class:`~flowtie_fast.stem.detector.DetectorWarning` where it lies off
        it (:func:`~flowtie_fast.stem.detector.check_center_given`).
    virtual : {"bf", "bf-full", "abf", "df", "whole"}, optional
        The virtual image that will form the planes (default "bf"): checked
        to be among the regions measured and to hold detector pixels. Every
        region is reduced, whichever is named.
    bf_radius : float, optional
        Radius of the "bf" disk in mrad (default None: a quarter of the
        measured bright-field disk).
    com_radius : float, optional
        Limit of the centre of mass in mrad (default None: the whole
        detector).
    backend : {"auto", "cpu", "gpu"} or Backend, optional
        Where the reductions run (default "auto").
    chunk_bytes : int, optional
        Upper bound of the raw data read or copied at once, in bytes (default
        64 MiB).

    Returns
    -------
    reductions : list of three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``, before any rotation.
    counts : bool
        Whether every dataset holds counts (an integer dtype).

    Raises
    ------
    InputError
        Where a dataset, its shape or an argument is refused (the geometry
        is checked on the in-focus dataset before any pass over the data).
    """
    names = ("minus", "zero", "plus")
    data = [check_4d(n, d) for n, d in zip(names, (minus, zero, plus))]
    for n, d in zip(names, data):
        if tuple(d.shape) != tuple(data[1].shape):
            raise InputError(f"{n}: expected shape {tuple(data[1].shape)} like zero, "
                             f"got {tuple(d.shape)}")
    k_sampling = check_positive("k_sampling", k_sampling, pair=True)
    energy = check_positive("energy", energy)
    chunk_bytes = check_count("chunk_bytes", chunk_bytes, 1)
    for n, d in zip(names, data):
        if not (is_cupy(d) or _is_dask(d)):  # host memory, before reading
            check_reduction_memory(n, d, chunk_bytes)
    sample = sample_patterns(data[1], name="zero")
    mean = mean_pattern(sample)
    if not np.isfinite(mean).all():
        raise InputError(f"zero: contains NaN or Inf{_nonfinite_position(sample, data[1])}")
    detector, regions = triplet_geometry(mean, k_sampling, energy, center, bf_radius,
                                         sample=sample, virtual=virtual)
    check_choice("virtual", virtual, tuple(regions))
    check_region(virtual, regions, detector, bf_radius is not None)
    check_com_radius(com_radius, regions, detector)
    samples = [sample if n == "zero" else sample_patterns(d, name=n) for n, d in zip(names, data)]
    for n, d, s in zip(names, data, samples):  # sums beyond float32 (data of a wider dtype)
        if np.dtype(d.dtype).kind == "f" and np.dtype(d.dtype).itemsize > 4:
            check_float32_range(n, s, detector)
    records = check_saturation(samples, [d.dtype for d in data])
    # the in-focus patterns' extreme pixels: the transients repair_com screens
    reductions = [reduce_4dstem(d, detector, regions, com_radius_mrad=com_radius,
                                backend=backend, chunk_bytes=chunk_bytes, name=n,
                                peaks=n == "zero")
                  for n, d in zip(names, data)]
    fills = disk_filled(regions)
    reductions = [dataclasses.replace(r, saturation=rec, disk_fills=fills)
                  for r, rec in zip(reductions, records)]
    return reductions, holds_counts(data)


def check_saturation(samples, dtypes) -> list:
    """The saturation records of the three scans' sampled patterns
    (:func:`~flowtie_fast.stem.detector.saturation`), with one
    :class:`~flowtie_fast.stem.detector.DetectorWarning` naming every scan
    whose patterns pile up at a top value or reach the full scale of their
    integer dtype.

    Parameters
    ----------
    samples : three arrays (N, Ky, Kx)
        Patterns sampled across the scans at ``-dz, 0, +dz``
        (:func:`~flowtie_fast.stem.detector.sample_patterns`).
    dtypes : three dtypes
        The datasets' dtypes.

    Returns
    -------
    list of three dict
        The records, in the order minus, zero, plus (one warning names
        every scan that saturated).
    """
    records = [saturation(s, n, np.dtype(dt))
               for n, s, dt in zip(("minus", "zero", "plus"), samples, dtypes)]
    why = saturation_why(records)
    if why is not None:
        warnings.warn(why, DetectorWarning, stacklevel=user_stacklevel())
    return records


def saturation_why(records):
    """One message for the scans whose saturation ``records`` say they
    saturated (what each showed, then what it does and what to do:
    :data:`~flowtie_fast.stem.detector.SATURATION_EFFECT`), or None."""
    seen = [r["why"] for r in records if r is not None and r.get("saturated")]
    return "; ".join(seen) + ". " + SATURATION_EFFECT if seen else None


def holds_counts(datasets) -> bool:
    """Whether every dataset holds electron counts (an integer dtype): their
    noise is then Poisson where it cannot be measured.

    Parameters
    ----------
    datasets : sequence of array-like
        The three datasets (NumPy, CuPy, dask, HDF5 or LiberTEM DataSets);
        one without a ``dtype`` is taken as float32.

    Returns
    -------
    bool
        True where every ``dtype`` is of an integer kind.
    """
    return all(np.dtype(getattr(d, "dtype", np.float32)).kind in "iu" for d in datasets)


def prepare_planes(reductions, scan_step, *, virtual="bf", counts=False, register=True,
                   normalize=True, dz=(1.0, 1.0)):
    """The planes of a triplet from its three reductions: the chosen virtual
    images, brought to one beam current, their noise, and the drift of the
    ±dz scans undone.

    The parameters are as in :meth:`FocalTriplet.from_reductions
    <flowtie_fast.triplet.FocalTriplet.from_reductions>`.

    Parameters
    ----------
    reductions : three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz`` (not modified).
    scan_step : float or (float, float)
        Scan step in Å (the pixel size of the planes).
    virtual : {"bf", "bf-full", "abf", "df", "whole"}, optional
        Which virtual image forms the planes (default "bf"); one the
        in-focus reduction holds.
    counts : bool, optional
        Whether the patterns were electron counts (default False): then,
        where the noise cannot be measured above the band limit, it is taken
        as Poisson from the planes' means.
    register : bool or "periodic", optional
        Undo the drift of the ±dz scans (default True), measured on the
        "df" images; ``"periodic"`` applies the shifts periodically; False
        skips it.
    normalize : bool, optional
        Scale the ±dz planes by :func:`flux_record`'s factors (default
        True), so that a beam current (or dwell time, or detector gain)
        that changed between the scans does not enter the focal derivative;
        False uses the planes as recorded.
    dz : (float, float), optional
        The defocus steps ``(dz_minus, dz_plus)`` in Å (default even): the
        ratio by which a registration extrapolates the rows and columns a
        shift leaves unrecorded (:func:`apply_registration`).

    Returns
    -------
    reductions : list
        The three reductions given, unchanged.
    planes : list of three arrays (Sy, Sx)
        The chosen virtual images at ``-dz, 0, +dz``, the ±dz ones scaled
        where ``normalize`` and shifted where a registration was applied.
    scan_step : (float, float)
        Checked, Å.
    energy : float
        Electron energy in eV, of the in-focus reduction's detector.
    noise : Noise or None
        Measured above the band limit; where ``counts``, the larger, plane by
        plane, of that and the Poisson noise of the planes' means (Poisson
        alone where nothing can be measured, :func:`larger_noise`); else None
        (unknown).
    registration : dict or None
        The record of the registration (see ``FocalTriplet.registration``);
        None for ``register=False``.
    flux : dict
        :func:`flux_record`'s record; where ``normalize`` is False,
        ``"applied"`` False and ``"why"`` ``"normalize=False"`` (the factors
        measured are kept). With ``"gain"``: :func:`gain_record`'s record
        where the planes are counts whose noise is measured above the band
        limit too (a :class:`TrustWarning` where the two differ by more than
        :data:`GAIN_FACTOR`), else None.

    Raises
    ------
    InputError
        Where ``reductions``, ``virtual``, ``scan_step``, ``register`` or
        ``normalize`` is refused, or ``counts`` is True of images that are
        not sums of counts (:func:`check_counts`).
    """
    dz = check_positive("dz", dz, pair=True)
    reductions = list(reductions)
    if len(reductions) != 3 or not all(isinstance(r, Reduction) for r in reductions):
        raise InputError("reductions: expected three flowtie_fast.stem.Reduction "
                         "(minus, zero, plus)")
    check_choice("virtual", virtual, tuple(reductions[1].virtual))
    scan_step = check_positive("scan_step", scan_step, pair=True)
    normalize = check_normalize(normalize)
    check_reductions(reductions, virtual)
    if counts:
        check_counts(reductions, virtual)
    planes = [r.virtual[virtual] for r in reductions]
    for n, p, r in zip(("minus", "zero", "plus"), planes, reductions):
        whole = r.virtual.get("whole")
        if (virtual != "whole" and whole is not None and not float(abs(p).max()) > 0
                and float(abs(whole).max()) > 0):
            raise InputError(f"virtual: the {virtual!r} image of {n} is zero everywhere while "
                             f"its patterns hold counts outside the {virtual!r} region; expected "
                             "a region the beam reaches: check center and bf_radius, or choose "
                             "another virtual image (e.g. 'whole')")
    for n, r in zip(("minus", "zero", "plus"), reductions):
        check_missing_frames(n, r.virtual.get("whole"))
    # A row, column or block exactly zero in one plane (dropped frames) is
    # refused as recorded: a sub-pixel shift would smear it into small values
    # that pass the triplet's check, and the flux factors would count it.
    screen_planes(("minus", "zero", "plus"), planes, repair=False)
    flux = flux_record(reductions)
    check_flux(flux, normalize)
    if normalize and flux["applied"]:
        planes = scaled(planes, flux["scale"])
    elif flux["applied"]:  # measured, not applied: the factors stay, as the reason why
        flux = {**flux, "applied": False, "why": "normalize=False"}
    energy = reductions[1].detector.energy
    # The noise first: an interpolating shift smooths it.
    noise = virtual_image_noise(planes, scan_step, energy, reductions[1].regions, virtual)
    gain = None
    if counts:  # a count's variance is the count: c² n = c (c n) scaled
        scale = flux["scale"] if flux["applied"] else (1.0, 1.0, 1.0)
        poisson = poisson_noise([c * float(p.mean()) for c, p in zip(scale, planes)])
        if noise is not None:
            gain = gain_record(poisson, noise, virtual)
            if gain["why"] is not None:
                warnings.warn(gain["why"], TrustWarning, stacklevel=user_stacklevel())
        noise = larger_noise(noise, poisson)
    flux = {**flux, "gain": gain}
    registration = None
    if check_register(register):
        signals = [r.virtual.get("df") for r in reductions]
        if any(x is None for x in signals):  # no dark field on this detector
            warnings.warn("register: the detector records no dark field to measure the "
                          "drift on; not applied: the planes are used as recorded",
                          RegistrationWarning, stacklevel=user_stacklevel())
            registration = {"shifts": np.zeros((3, 2)), "reliable": False,
                            "applied": False, "signal": None,
                            "why": "no dark field on the detector"}
        else:
            planes, registration = register_planes(planes, signals, register, dz)
    return reductions, planes, scan_step, energy, noise, registration, flux



#: Counts: how far from a whole number a value of a virtual image of counts
#: may lie (its sums of whole counts are whole numbers in float32 and float64).
COUNTS_TOLERANCE = 1e-3


def check_counts(reductions, virtual) -> None:
    """``counts=True`` checked against the reductions it is said of.

    A virtual image of counts sums whole counts over whole pixels (a
    detector region weighs a pixel 0 or 1), so each of its values is a whole
    number; one that is not was reduced from patterns that are not counts
    (gain-corrected, dark-subtracted or normalised floating-point data),
    whose Poisson noise taken from their means would be in the wrong units.

    Parameters
    ----------
    reductions : list of three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``, checked by :func:`check_reductions`.
    virtual : str
        The virtual image that forms the planes.

    Raises
    ------
    InputError
        Naming ``counts``, the first reduction whose ``virtual`` image holds a
        value farther than :data:`COUNTS_TOLERANCE` from a whole number, that
        value and the image's dtype.
    """
    for n, r in zip(("minus", "zero", "plus"), reductions):
        image = r.virtual[virtual]
        xp = array_module(image)
        off = xp.abs(image - xp.rint(image)).ravel()
        worst = int(xp.argmax(off))
        if float(off[worst]) > COUNTS_TOLERANCE:
            raise InputError(f"counts: True, but the {virtual!r} image of {n} holds "
                             f"{float(image.ravel()[worst]):.6g} (dtype {image.dtype}), not a "
                             "whole number of counts; expected reductions of integer "
                             "electron counts (patterns of an integer dtype), or counts=False "
                             "for patterns that are not counts (gain-corrected, "
                             "dark-subtracted, normalised floating point)")

#: A scan whose patterns hold more than this factor more or fewer electrons
#: than the in-focus scan's is warned: more than a drift of the beam current.
FLUX_WARN_FACTOR = 1.5


def flux_record(reductions) -> dict:
    """The electrons each scan's patterns hold, and the factors that bring
    the ±dz scans to the in-focus scan's.

    The whole detector's sum of a pattern counts the electrons of the probe
    at that scan position: the beam current times the dwell time (times the
    detector's gain), whatever the probe's defocus. Only electrons scattered
    beyond the detector's edge escape it, and averaged over a scan they
    hardly depend on the defocus (on abTEM simulations, 0.0006 % in the
    median and 0.24 % at most between the three scans, where the "bf" images'
    means differ by up to 3 %). A difference between the scans' means is
    then a change of the beam current (a cold field emitter's decays by
    several percent in minutes), of the dwell time or of the gain; it would
    enter the focal derivative as if the specimen had made it (5 % on a weak
    object took the TIE's phase to an NMSE of 1.6).

    A pattern that holds far more or fewer electrons than every one of its 8
    neighbours, in one scan alone (a cosmic ray or an X-ray on the detector,
    a frame dropped or read twice: an isolated outlying pixel of the
    whole-detector image, :func:`~flowtie_fast.planes.outlying_pixels`), is
    no measure of the beam current and is left out of its scan's mean: one
    pattern of 4096 hit by 1e5 counts had moved the mean by 1.2 %, which
    the factors put into every pixel of the focal derivative (a weak phase's
    TIE NMSE from 1.4e-5 to 3.8, without a word where it lay outside the
    bright field).

    Parameters
    ----------
    reductions : three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``.

    Returns
    -------
    dict
        ``"per_pattern"``: the mean whole-detector sum of each scan's
        patterns (the data's units: electrons for counts), or None;
        ``"excluded"``: per scan, the patterns left out of its mean as
        isolated outliers;
        ``"scale"``: the factors ``(m0 / m-, 1, m0 / m+)`` that bring each
        scan's planes to the in-focus scan's flux; ``"applied"``: whether
        they are usable (the scale is ``(1, 1, 1)`` otherwise);
        ``"why"``: why not, or None.
    """
    wholes = [r.virtual.get("whole") for r in reductions]
    if any(w is None for w in wholes):
        return {"per_pattern": None, "excluded": None, "scale": (1.0, 1.0, 1.0),
                "applied": False, "why": "no whole-detector image"}
    hosts = [to_host(w) for w in wholes]  # no float64 copies: a scan's image can be large
    outliers = ([(np.zeros(0, np.intp),) * 2] * 3 if not all(np.isfinite(h).all() for h in hosts)
                or len({h.shape for h in hosts}) > 1 else outlying_pixels(hosts))
    means, excluded = [], []
    for h, (rows, cols) in zip(hosts, outliers):
        if rows.size and rows.size < h.size:
            keep = np.ones(h.shape, bool)
            keep[rows, cols] = False
            means.append(float(np.mean(h, dtype=np.float64, where=keep)))
        else:
            means.append(float(h.mean(dtype=np.float64)))
        excluded.append(int(rows.size))
    means = tuple(means)
    if not all(m > 0 and math.isfinite(m) for m in means):
        return {"per_pattern": means, "excluded": excluded, "scale": (1.0, 1.0, 1.0),
                "applied": False, "why": "a scan's patterns hold no electrons on average"}
    scale = (means[1] / means[0], 1.0, means[1] / means[2])
    return {"per_pattern": means, "excluded": excluded, "scale": scale, "applied": True,
            "why": None}


def _ranked_neighbours(image):
    """Each pixel's 8 neighbours in ascending order, (Sy, Sx, 8) float64, NaN
    (beyond the edge) last, and how many each has, (Sy, Sx): slices of the
    padded image, sorted (``np.nanmedian`` over them took ten times as long
    on a 256² scan)."""
    sy, sx = image.shape
    padded = np.pad(np.asarray(image, np.float64), 1, constant_values=np.nan)
    around = np.sort(np.stack([padded[1 + dy:1 + dy + sy, 1 + dx:1 + dx + sx]
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx],
                              axis=-1), axis=-1)
    return around, np.isfinite(around).sum(axis=-1)


def _ranked(around, index):
    """The entries ``index`` (Sy, Sx) of the ranked neighbours."""
    return np.take_along_axis(around, index[..., None], axis=-1)[..., 0]


def _neighbours_medians(image):
    """The median of each pixel's (up to 8) neighbours, (Sy, Sx) float64."""
    around, count = _ranked_neighbours(image)
    return 0.5 * (_ranked(around, (count - 1) // 2) + _ranked(around, count // 2))


def _second_highest(image):
    """Each pixel's second highest neighbour (of up to 8; the highest where it
    has one), (Sy, Sx) float64: what the specimen puts beside a pattern, one
    neighbour hit too left out."""
    around, count = _ranked_neighbours(image)
    return _ranked(around, np.maximum(count - 2, 0))


#: A pattern's largest pixel beyond the second highest of its 8 neighbours'
#: largest (the smallest below the second lowest of their smallest) by more
#: than this many times that value's size (at least the scan's median largest
#: pixel, and one count for counts; plus :data:`PEAK_COUNTS_SIGMAS` of its
#: Poisson scatter for counts) is a transient's (:func:`peak_outliers`). The
#: second highest, not the median: at a crystal's corner on vacuum, 3 of the 8
#: neighbours are crystal, whose channelled disk is up to 5 times brighter.
#: Chosen on 840 clean simulated in-focus scans against the median of the
#: neighbours (the largest share there 0.51 noise-free, 3.0 at 1e3 e/Å² read
#: as floats: 4 counts against 1, which the scatter's term is for); on 2088,
#: 1.78 noise-free (a thick Al [110] crystal) and 1.54 where the centre of
#: mass also stood out (:data:`PEAK_COM_FACTOR`). The second highest is at
#: least the median: these shares are upper bounds of the rule's.
PEAK_FACTOR = 2.5

#: The Poisson scatter of counts' largest pixel allowed beyond
#: :data:`PEAK_FACTOR`, in standard deviations of the neighbours' median.
PEAK_COUNTS_SIGMAS = 5.0

#: ... and the centre of mass it leaves is further from its neighbours' median
#: than this many times the scan's median such distance: a transient where
#: the centre of mass does not read it (the disk's centre, beyond
#: ``com_radius``) is left alone.
PEAK_COM_FACTOR = 3.0


def peak_outliers(peaks, com, counts=False):
    """The patterns one of whose detector pixels a transient hit, found from
    each pattern's largest and smallest pixel (``Reduction.peaks``).

    A cosmic ray or an X-ray puts its counts into a few detector pixels: the
    pattern's largest pixel stands far above its neighbours' largest, even
    where the pattern's sum does not stand out (a 4000-count track on a
    pattern of 2e4 electrons). A dark frame subtracted wrong leaves a pixel
    far below zero. The specimen changes a pattern's largest pixel with the
    probe's position by a factor of a few at most (the scale of
    :data:`PEAK_FACTOR`), and every pattern's centre of mass by much more
    (:data:`PEAK_COM_FACTOR` screens only the patterns a pixel singled out).

    Parameters
    ----------
    peaks : array (2, Sy, Sx)
        Each pattern's largest and smallest pixel value.
    com : array (2, Sy, Sx)
        The centre of mass of the same scan.
    counts : bool, optional
        Whether the patterns are electron counts (default False): their
        largest pixel's Poisson scatter is allowed for.

    Returns
    -------
    rows, cols : ndarray of intp
        The scan positions found (empty where none, or the scan is under 3
        positions a side, or the values are not finite).
    why : list of str
        Per position, what stands out (``"a detector pixel at 4.1e+03, where 7
        of its 8 neighbours' patterns reach at most 31"``).
    below : ndarray of bool
        Per position, whether it is a pixel far below the neighbours' (a dark
        frame subtracted wrong) rather than far above (a transient).
    """
    none = (np.zeros(0, np.intp), np.zeros(0, np.intp), [], np.zeros(0, bool))
    top, bottom = (np.asarray(to_host(p), np.float64) for p in peaks)
    if min(top.shape) < 3 or not (np.isfinite(top).all() and np.isfinite(bottom).all()):
        return none
    # the size a pixel is judged against: at least the scan's median largest
    # pixel and, for counts, one electron (sparse counts: most patterns empty)
    floor = max(float(np.median(np.abs(top))), 1.0 if counts else 0.0)
    if not floor > 0:  # most patterns hold nothing: no size to judge by
        return none

    def allowed(near):
        size = np.maximum(np.abs(near), floor)
        return PEAK_FACTOR * size + (PEAK_COUNTS_SIGMAS * np.sqrt(size) if counts else 0.0)

    top8 = _second_highest(top)
    high = top - top8 > allowed(top8)
    if bottom.min() >= 0 and bottom.max() <= PEAK_FACTOR * floor:
        # none can fall below its neighbours' smallest (at most bottom.max())
        # by more than allowed (at least PEAK_FACTOR * floor): no pass needed
        low = np.zeros(bottom.shape, bool)
        bottom8 = None
    else:
        bottom8 = -_second_highest(-bottom)
        low = bottom8 - bottom > allowed(bottom8)
    if not (high.any() or low.any()):
        return none
    c = np.asarray(to_host(com), np.float64)
    jump = np.hypot(c[0] - _neighbours_medians(c[0]), c[1] - _neighbours_medians(c[1]))
    typical = float(np.median(jump))
    rows, cols = np.nonzero((high | low) & (jump > PEAK_COM_FACTOR * typical))
    why = [f"a detector pixel at {top[r, c]:.3g}, where 7 of its 8 neighbours' patterns reach "
           f"at most {top8[r, c]:.3g}" if high[r, c] else
           f"a detector pixel at {bottom[r, c]:.3g}, where 7 of its 8 neighbours' patterns "
           f"stay at {bottom8[r, c]:.3g} or above" for r, c in zip(rows.tolist(), cols.tolist())]
    return rows, cols, why, ~high[rows, cols]


_TRANSIENT = "cosmic rays or X-rays on the detector"
_DARK_SLIP = "a dark frame subtracted wrong"


def repair_com(reductions, name="zero", counts=False):
    """The centre of mass of the patterns hit by a transient (a cosmic ray or
    an X-ray on the detector) replaced by the median of its neighbours'.

    A hit adds its counts far from the disk's centre, where the centre of
    mass weighs them most: one pixel of one pattern in 1024 (2000 counts on a
    pattern of about 2000) took an ``icom`` phase's NMSE from 0.16 to 0.55,
    65535 counts to 1.9, without a word. Two screens find such patterns in
    the in-focus scan:

    - the whole-detector images: a pattern with far more electrons than each
      of its 8 neighbours (or a negative sum), an isolated outlying pixel
      screened over the three scans as :func:`flux_record` screens them for
      the beam current (:func:`~flowtie_fast.planes.outlying_pixels`: a
      feature of the specimen shows in every scan). Fewer electrons than the
      neighbours is the specimen scattering beyond the detector, not a hit,
      and is kept;
    - where the reduction measured each pattern's extreme pixels
      (``Reduction.peaks``, as :func:`reduce_triplet` does), one detector
      pixel far beyond its neighbours' patterns' (or far below zero: a dark
      frame subtracted wrong) that moved the centre of mass
      (:func:`peak_outliers`): a hit too weak to stand out of the pattern's
      electron count.

    The hit pattern's centre of mass is no measure of the specimen: each
    component becomes the median of its 8 neighbours' (the other hits left
    out). More hits than :func:`~flowtie_fast.planes.repair_limit` are warned
    of, not replaced.

    Parameters
    ----------
    reductions : three Reduction
        The scans at ``-dz, 0, +dz``; the in-focus one's centre of mass is
        repaired (a copy: none is modified), the others' whole-detector
        images take part in the screen.
    name : str
        How the message names the scan (default ``"zero"``).
    counts : bool
        Whether the patterns are electron counts (default False;
        :func:`peak_outliers`).

    Returns
    -------
    reduction : Reduction
        ``reduction`` itself where nothing was found (or neither screen could
        run), else a copy with the repaired centre of mass.
    pixels : list or None
        Per repaired pattern ``[row, column, |∇φ| before, |∇φ| after]`` (scan
        px, rad/Å), or None.
    why : str or None
        The warning's text (warned here), or None.
    """
    reduction = reductions[1]
    found = {}  # (row, column) -> what stands out, and its likely cause
    wholes = [r.virtual.get("whole") for r in reductions]
    hosts = None if any(w is None for w in wholes) else [to_host(w) for w in wholes]
    if (hosts is not None and min(hosts[1].shape) >= 3 and len({h.shape for h in hosts}) == 1
            and all(np.isfinite(h).all() for h in hosts)):
        host = hosts[1]
        # the screen of the planes over the three scans, as the beam current's: a
        # feature of the specimen shows in every scan, and the other scans' images
        # keep the threshold where several hits would raise one image's own
        rows, cols = outlying_pixels(hosts)[1]
        host = np.asarray(host, np.float64)
        near = np.nanmedian(neighbours(host, rows, cols), axis=1) if rows.size else ()
        for r, c, m in zip(rows.tolist(), cols.tolist(), list(near)):
            # a hit adds electrons: an excess, or a negative value (a dark frame's
            # slip); fewer electrons than the neighbours is the specimen scattering
            # beyond the detector
            if host[r, c] > m or host[r, c] < 0:
                found[(r, c)] = (f"{host[r, c]:.4g} electrons in the whole detector",
                                 _TRANSIENT if host[r, c] >= 0 else _DARK_SLIP)
    if reduction.peaks is not None:
        rows, cols, why, below = peak_outliers(reduction.peaks, reduction.com, counts)
        for r, c, w, b in zip(rows.tolist(), cols.tolist(), why, below.tolist()):
            found.setdefault((r, c), (w, _DARK_SLIP if b else _TRANSIENT))
    if not found:
        return reduction, None, None
    shape = tuple(reduction.com.shape[1:])
    if len(found) > repair_limit(shape):  # beyond planes.MAX_REPAIR: not transients
        warnings.warn(f"gradient: {len(found)} patterns of {name} stand out of their 8 "
                      "neighbours (far more electrons, or a detector pixel far beyond "
                      "theirs), too many to be isolated transients: their centre of mass is "
                      "used as measured; check the camera's frames",
                      TrustWarning, stacklevel=user_stacklevel())
        return reduction, None, None
    rows, cols = (np.array(a, np.intp) for a in zip(*sorted(found)))
    xp = array_module(reduction.com)
    com = np.array(to_host(reduction.com), dtype=np.float64)
    bad = np.zeros(shape, bool)
    bad[rows, cols] = True
    ny, nx = shape
    before = 2 * np.pi * np.hypot(com[0, rows, cols], com[1, rows, cols])
    for r, c in zip(rows.tolist(), cols.tolist()):
        r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, ny), max(c - 1, 0), min(c + 2, nx)
        keep = ~bad[r0:r1, c0:c1]
        if keep.any():
            com[:, r, c] = np.median(com[:, r0:r1, c0:c1][:, keep], axis=1)
    after = 2 * np.pi * np.hypot(com[0, rows, cols], com[1, rows, cols])
    pixels = [[int(r), int(c), float(b), float(a)]
              for r, c, b, a in zip(rows, cols, before, after)]
    w = int(np.argmax(np.abs(before - after)))
    n = rows.size
    why = (f"gradient: {n} pattern{'s' if n > 1 else ''} of {name} "
           f"stand{'' if n > 1 else 's'} out of {'their' if n > 1 else 'its'} 8 neighbours "
           f"(the worst at scan row {rows[w]}, column {cols[w]}: "
           f"{found[(int(rows[w]), int(cols[w]))][0]}): "
           f"{found[(int(rows[w]), int(cols[w]))][1]}? "
           f"{'their' if n > 1 else 'its'} centre of mass, |∇φ| {before[w]:.3g} rad/Å at the "
           f"worst, replaced by the median of the neighbours' ({after[w]:.3g}) "
           "(triplet.plane_defects['pixels']['gradient']); check the camera's frames if "
           "they recur")
    warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
    com = xp.asarray(com.astype(np.dtype(reduction.com.dtype), copy=False))
    return dataclasses.replace(reduction, com=com), pixels, why


#: Band-limit and Poisson noise of counts that differ by more than this factor
#: either way are warned: the counts are not electrons (detector units of a
#: gain, counts scaled, noise-free intensities rounded). On right counts of
#: corpus files the band estimate reached 2.7 times the Poisson one at 1e6
#: e/Å² (signal above the band limit, growing with the dose: the median of
#: the power there rises with it), hence 3 rather than 2: a gain of 2 is not
#: always told, and needs not be (the larger estimate, the measured one, is
#: used whatever the warning; docs/reliability.md has the figures).
GAIN_FACTOR = 3.0


def gain_record(poisson, band, virtual: str = "bf") -> dict:
    """The two noise estimates of the planes of counts, and the gain their
    ratio implies.

    Counts of electrons have the variance of their mean (Poisson); the
    power above the band limit measures the variance whatever the unit. A
    detector that records ``g`` units per electron (ADU) gives ``g²`` times
    the variance of ``g`` times the mean: the band estimate is ``g`` times
    the Poisson one. The larger of the two is the noise used
    (:func:`larger_noise`): taken as electrons, counts of a gain of 2 to 9
    kept 100 to 450 noise modes in the TIE's filter.

    Parameters
    ----------
    poisson, band : Noise
        The planes' noise as Poisson from their means and as measured above
        the band limit (intensity², one per plane).
    virtual : str, optional
        The virtual image the planes are, for the message (default "bf").

    Returns
    -------
    dict
        ``"poisson"``, ``"band"``: the variances (tuples); ``"ratio"``: the
        band's sum over the Poisson's (the gain in units per electron; inf
        where the Poisson sum is 0); ``"why"``: a message where the ratio
        lies beyond :data:`GAIN_FACTOR` either way, else None.
    """
    total = float(sum(poisson.variance))
    ratio = float(sum(band.variance)) / total if total > 0 else math.inf
    why = None
    if not 1 / GAIN_FACTOR <= ratio <= GAIN_FACTOR:
        if ratio > 1:
            what = (f"{ratio:.3g} times the variance of electron counts of their mean: the "
                    f"counts are not electrons but detector units of a gain of about "
                    f"{ratio:.3g} per electron (ADU), or hold more noise than the electrons' "
                    "(read noise, a noisy gain); the measured noise is used")
        else:
            what = (f"{ratio:.3g} times the variance of electron counts of their mean: the "
                    "counts hold less noise than electrons would (noise-free intensities "
                    "rounded, counts scaled down, detector units of a gain of about "
                    f"{ratio:.3g} per electron); the Poisson noise of their mean, the larger, "
                    "is used")
        why = (f"noise: the {virtual!r} planes' noise measured above the band limit is "
               f"{what}. Convert the data to electrons (divide by the gain) for a noise "
               "known from the counts, or pass the planes with noise= stated")
    return {"poisson": tuple(poisson.variance), "band": tuple(band.variance), "ratio": ratio,
            "why": why}


def larger_noise(measured, poisson):
    """The larger, plane by plane, of a noise
    measured above the band limit and the Poisson noise of counts, so that
    neither a gain in the counts (detector units) nor a measurement that
    falls short underestimates it.

    Parameters
    ----------
    measured, poisson : Noise or None
        Variances of the same planes or gradient components; either may be
        None (unknown).

    Returns
    -------
    Noise or None
        The other where one is None; else the larger variance of each, with
        the source of the larger sum.
    """
    if measured is None or poisson is None:
        return poisson if measured is None else measured
    source = measured.source if sum(measured.variance) >= sum(poisson.variance) \
        else poisson.source
    return Noise(tuple(max(float(a), float(b))
                       for a, b in zip(measured.variance, poisson.variance)), source)


def saturation_record(reductions):
    """A triplet's saturation record (``FocalTriplet.saturation``) from its
    reductions' own (:func:`reduce_triplet` sets them), or None where none
    was checked.

    Parameters
    ----------
    reductions : three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``.

    Returns
    -------
    dict or None
        ``"saturated"`` (whether any scan is), ``"why"`` (the messages of
        those that are, or None) and ``"scans"`` (each scan's record, or None
        for a scan not checked).
    """
    scans = {n: getattr(r, "saturation", None) for n, r in zip(("minus", "zero", "plus"),
                                                               reductions)}
    if all(rec is None for rec in scans.values()):
        return None
    why = saturation_why(list(scans.values()))
    return {"saturated": why is not None, "why": why, "scans": scans}


def check_flux(flux: dict, normalize: bool) -> None:
    """Warn where :func:`flux_record`'s factors lie beyond
    :data:`FLUX_WARN_FACTOR` either way: a scan of another dwell time, a beam
    partly blanked or a detector setting changed between the scans is then
    more likely than a drift of the current. The warning (a
    :class:`TrustWarning`) says whether the planes are scaled
    (``normalize``) or used as recorded.

    Where a scan's patterns sum to no positive number of electrons on
    average (a dark level subtracted beyond the dark field's), or reductions
    made elsewhere hold no whole-detector image, the beam currents cannot be
    compared and the planes are used as recorded: with
    ``normalize`` a :class:`TrustWarning` names the scan (the scaling asked
    for is not done)."""
    m = flux["per_pattern"]
    if normalize and not flux["applied"]:
        if m is None:
            what = ("the reductions hold no whole-detector image ('whole' in "
                    "Reduction.virtual)")
        else:
            bad = [f"{n}'s {v:.4g}" for n, v in zip(("minus", "zero", "plus"), m)
                   if not (v > 0 and math.isfinite(v))]
            what = (f"the whole-detector sums of the patterns average {', '.join(bad)}, no "
                    "positive number of electrons (a dark level subtracted?)")
        warnings.warn(f"normalize: {what}: the scans' beam currents cannot be compared and the "
                      "planes are used as recorded, not scaled", TrustWarning,
                      stacklevel=user_stacklevel())
    if not flux["applied"]:
        return
    far = [(n, c) for n, c in zip(("minus", "plus"), flux["scale"][::2])
           if not 1 / FLUX_WARN_FACTOR <= c <= FLUX_WARN_FACTOR]
    if not far:
        return
    told = "; ".join(f"{n} holds {1 / c:.3g} times the in-focus scan's electrons per pattern"
                     for n, c in far)
    done = ("the planes are scaled to the in-focus scan's flux (normalize=False uses them as "
            "recorded)" if normalize else "the planes are used as recorded (normalize=False)")
    m = flux["per_pattern"]
    warnings.warn(f"{told} (whole-detector sums {m[0]:.4g}, {m[1]:.4g}, {m[2]:.4g}): more than "
                  f"a drift of the beam current; {done}; check that the three scans share the "
                  "dwell time, the detector's settings and the beam", TrustWarning,
                  stacklevel=user_stacklevel())


def scaled(planes, scale) -> list:
    """The planes times their factors (a plane whose factor is 1 is kept,
    not copied), in their dtype."""
    return [p if c == 1.0 else (p * c).astype(p.dtype, copy=False)
            for p, c in zip(planes, scale)]


#: A scan whose patterns hold this many counts on average has no empty pattern
#: by chance (Poisson: e⁻²⁰); where some are empty, frames are missing.
MISSING_FRAME_MEAN = 20.0


def check_missing_frames(name, whole) -> None:
    """Warn where some scan positions' patterns are empty and the others are not.

    A pattern with no signal on the whole detector is no specimen's (vacuum
    passes the whole beam): a frame dropped by the camera, or a file whose
    unwritten frames read as zeros. Its pixel is wrong in every image and in
    the centre of mass.

    Parameters
    ----------
    name : str
        The dataset, for the message (``minus``, ``zero``, ``plus``).
    whole : array (Sy, Sx) or None
        The whole-detector sum of each pattern (nothing is checked for None).

    Warns
    -----
    TrustWarning
        Where positions sum to exactly zero while the patterns average more
        than :data:`MISSING_FRAME_MEAN`.
    """
    if whole is None:
        return
    w = to_host(whole)
    empty = w == 0
    count = int(empty.sum())
    if not count or not float(w.mean()) > MISSING_FRAME_MEAN:
        return
    first = tuple(int(i) for i in np.argwhere(empty)[0])
    warnings.warn(f"{name}: {count} of {w.size} scan positions hold an empty pattern (the "
                  f"first at {first}) while the patterns average {float(w.mean()):.4g}: "
                  "frames missing (dropped, or unwritten in the file and read as zeros)? "
                  "Those positions are wrong in every image and in the centre of mass",
                  TrustWarning, stacklevel=user_stacklevel())


def check_reductions(reductions, virtual) -> None:
    """Three reductions checked to form one triplet: each of a
    :class:`~flowtie_fast.stem.detector.Detector` at the in-focus one's
    energy, with the ``virtual`` image of the in-focus one's scan shape,
    finite, over the in-focus one's region (in mrad; the centres may differ:
    a descan that moves the disk with defocus).

    Parameters
    ----------
    reductions : list of three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``.
    virtual : str
        The virtual image that forms the planes (one the in-focus reduction
        holds).

    Raises
    ------
    InputError
        Naming the reduction (``minus``, ``zero``, ``plus``) and what differs.
    """
    names = ("minus", "zero", "plus")
    for n, r in zip(names, reductions):
        if not isinstance(r.detector, Detector):
            raise InputError(f"reductions: the detector of {n} is {type(r.detector).__name__}, "
                             "expected a Detector (flowtie_fast.stem.Detector)")
        if not isinstance(r.virtual, dict) or virtual not in r.virtual:
            held = tuple(r.virtual) if isinstance(r.virtual, dict) else r.virtual
            raise InputError(f"virtual: {virtual!r} is not among the virtual images of {n} "
                             f"{held!r}; expected reductions of the same regions")
    zero = reductions[1]
    shape = tuple(getattr(zero.virtual[virtual], "shape", ()))
    for n, r in zip(names, reductions):
        image = r.virtual[virtual]
        got = tuple(getattr(image, "shape", ()))
        if len(got) != 2 or got != shape:
            raise InputError(f"{n}: the {virtual!r} image of shape {got} differs from zero's "
                             f"{shape}; expected the reductions of three scans of one shape")
        if getattr(image, "dtype", np.dtype(object)).kind not in "uif" \
                or not bool(array_module(image).isfinite(image).all()):
            raise InputError(f"{n}: the {virtual!r} image contains NaN or Inf, or is not an "
                             "array of real numbers")
        if r.detector.energy != zero.detector.energy:
            raise InputError(f"{n}: reduced at {r.detector.energy:g} eV, zero's "
                             f"{zero.detector.energy:g} eV; expected the three scans at one "
                             "energy")
        span, want = r.regions.get(virtual), zero.regions.get(virtual)
        if span is not None and want is not None and tuple(span) != tuple(want):
            raise InputError(f"{n}: its {virtual!r} region ({span[0]:g}, {span[1]:g}) mrad "
                             f"differs from zero's ({want[0]:g}, {want[1]:g}) mrad; expected "
                             "the three scans reduced over one region")


def orient(reductions, rotation, flip, tie_gradient):
    """The reductions with their centre of mass rotated from detector to scan axes.

    The reductions given are left unchanged: the rotated ones are new
    :class:`~flowtie_fast.stem.reduction.Reduction` objects (new ``com``
    arrays, the other arrays shared). ``rotation`` and ``flip`` are always
    from the detector axes: reductions that record a rotation already
    applied (a triplet's own ``reductions``) are turned back to detector
    axes first, so they give the same centre of mass as the unrotated ones.

    Parameters
    ----------
    reductions : three :class:`~flowtie_fast.stem.reduction.Reduction`
        Of the datasets at ``-dz, 0, +dz``, each with the rotation and flip
        it records as applied.
    rotation : float or "auto"
        Degrees, within ±360; "auto" finds it and ``flip``
        (:func:`calibrate_rotation`), with ``tie_gradient()`` (rad/Å, the
        planes' TIE phase gradient) telling θ from θ + 180°.
    flip : bool
        Transpose the detector axes before rotating (ignored for "auto",
        which finds it).
    tie_gradient : callable
        No arguments, returns the phase gradient (2, Sy, Sx) in rad/Å;
        called only for ``rotation="auto"``.

    Returns
    -------
    reductions : list of three :class:`~flowtie_fast.stem.reduction.Reduction`
        New objects, their centre of mass in scan axes.
    rotation, flip : float, bool
        As applied.
    """
    if not isinstance(flip, (bool, np.bool_)):
        raise InputError(f"flip: expected True or False, got {flip!r}")
    if not (isinstance(rotation, str) and rotation == "auto"):
        rotation = check_rotation(rotation)
    raw = [detector_com(r) for r in reductions]
    if isinstance(rotation, str):
        rotation, flip = calibrate_rotation(raw[1], tie_gradient())
    flip = bool(flip)
    out = [dataclasses.replace(r, com=rotate_com(c, rotation, flip), rotation=rotation,
                               flip=flip)
           for r, c in zip(reductions, raw)]
    return out, rotation, flip


def check_rotation(rotation):
    """``rotation`` checked: finite degrees within ±360, or "auto";
    :class:`InputError` otherwise."""
    if isinstance(rotation, str):
        if rotation != "auto":
            raise InputError(f"rotation: expected degrees or 'auto', got {rotation!r}")
        return rotation
    try:
        value = check_real("rotation", rotation)
    except InputError:
        raise InputError("rotation: expected finite degrees (within ±360) or 'auto', "
                         f"got {rotation!r}") from None
    if abs(value) > 360:
        raise InputError(f"rotation: expected degrees within ±360 or 'auto', got {rotation!r}")
    return value


def detector_com(reduction):
    """A reduction's centre of mass in detector axes: the rotation and flip it
    records as applied undone (a copy when there is one to undo)."""
    rotation, flip = reduction.rotation, reduction.flip
    if not isinstance(flip, (bool, np.bool_)):
        raise InputError(f"reductions: expected flip True or False, got {flip!r}")
    rotation = check_real("reductions: rotation", rotation)
    com = reduction.com
    if rotation == 0 and not flip:
        return com
    com = rotate_com(com, -rotation, False)
    return com[::-1] if flip else com


def check_register(register):
    """``register`` checked: True, False or "periodic"; :class:`InputError` otherwise."""
    if isinstance(register, (bool, np.bool_)):  # a NumPy bool as the other flags
        return bool(register)
    if isinstance(register, str) and register == "periodic":
        return register
    raise InputError(f"register: expected True, False or 'periodic', got {register!r}")


def check_normalize(normalize) -> bool:
    """``normalize`` checked: True or False; :class:`InputError` otherwise."""
    if isinstance(normalize, (bool, np.bool_)):
        return bool(normalize)
    raise InputError(f"normalize: expected True or False, got {normalize!r}")


def register_planes(planes, signals, register, dz=(1.0, 1.0)):
    """The planes with the drift of the ±dz ones undone (shifts from
    ``signals`` when given, else from the planes), and the record of it.

    The shifts are estimated as for a non-periodic field of view (tapered
    edges: a crystal repeating within a periodic scan gives equal correlation
    peaks a period apart, which the taper tells apart) and applied
    periodically for ``register="periodic"`` (scans of whole periods), by
    mirror extension otherwise (:mod:`flowtie_fast.stem.registration`).
    Shifts under 0.1 px, and an estimate that is not reliable, are recorded
    and not applied. Larger images are measured on their central
    :data:`REGISTRATION_WINDOW` px (a drift moves the whole field).

    Parameters
    ----------
    planes : list of three arrays (Sy, Sx)
        The images at ``-dz, 0, +dz`` (NumPy or CuPy); the in-focus one is
        the reference.
    signals : list of three arrays (Sy, Sx) or None
        Images of the same scans to measure the shifts on (the dark field,
        which does not change with defocus); None: the planes themselves.
    register : True or "periodic"
        How the shifts are applied: ``"periodic"`` wraps around, anything
        else extends by mirroring (:func:`apply_registration`).
    dz : (float, float)
        The defocus steps ``(dz_minus, dz_plus)`` in Å (default even).

    Returns
    -------
    planes : list of three arrays (Sy, Sx)
        The planes given, the ±dz ones replaced by shifted copies where a
        shift was applied (on the plane's device, clipped at 0, its floating
        dtype kept, float64 for counts).
    record : dict
        ``shifts`` ((3, 2) in px, row 1 zero), ``reliable``, ``applied``,
        ``signal`` (``"planes"`` or ``"df"``) and, where nothing could be
        measured, ``why``.

    Warns
    -----
    RegistrationWarning
        Where the images are under 8 px a side: nothing is measured.
    """
    dz = check_positive("dz", dz, pair=True)
    record = {"shifts": np.zeros((3, 2)), "reliable": False, "applied": False,
              "signal": "planes" if signals is None else "df"}
    if min(planes[0].shape) < 8:
        warnings.warn(f"register: images of {tuple(planes[0].shape)} px are too small to "
                      "measure a drift (at least 8 px a side); the planes are used as "
                      "recorded", RegistrationWarning, stacklevel=user_stacklevel())
        return planes, {**record, "why": "images under 8 px a side"}
    host = [central(to_host(p), REGISTRATION_WINDOW) for p in planes]
    source = None if signals is None else [central(to_host(s), REGISTRATION_WINDOW)
                                           for s in signals]
    _, shifts, reliable = register_triplet(host, signals=source, periodic=False,
                                           apply_unreliable=False, threshold=1e9, dz=dz)
    record.update(shifts=shifts, reliable=bool(reliable))
    if not reliable:
        return planes, record
    record["applied"] = any(math.hypot(*shifts[i]) >= REGISTRATION_THRESHOLD for i in (0, 2))
    if record["applied"] and register != "periodic":
        minus, plus = _bands(planes[1].shape, record)
        neither = int(np.count_nonzero(minus & plus))
        if neither > UNRECORDED_SHARE * minus.size:  # more than a corner
            warnings.warn(
                f"register: after the shifts, {neither} px ({neither / minus.size:.1%} of the "
                "field, at its edges) are recorded by neither ±dz scan (both drifted the "
                "same way): the focal derivative there is taken as zero, and the TIE "
                "phase there is only the continuation of its surroundings",
                RegistrationWarning, stacklevel=user_stacklevel())
    return apply_registration(planes, record, register, dz), record


#: The share of the field that neither ±dz scan records after the shifts
#: (both drifted the same way) beyond which a registration warns.
UNRECORDED_SHARE = 0.01


def _unrecorded(shape, shift) -> np.ndarray:
    """The pixels a non-periodic shift fills by mirroring: the
    ``ceil(|dy|)`` rows and ``ceil(|dx|)`` columns at the edges the content
    moves away from (:func:`~flowtie_fast.stem.registration.apply_shift`)."""
    band = np.zeros(shape, bool)
    for axis, d in enumerate(float(v) for v in shift):
        n = min(math.ceil(abs(d)), shape[axis])
        edge = slice(0, n) if d > 0 else slice(shape[axis] - n, shape[axis])
        if n:
            band[(edge, slice(None)) if axis == 0 else (slice(None), edge)] = True
    return band


def _bands(shape, record) -> list:
    """The pixels each applied shift of the ±dz planes leaves unrecorded
    (:func:`_unrecorded`; none for a shift under the threshold)."""
    return [_unrecorded(shape, record["shifts"][i])
            if math.hypot(*record["shifts"][i]) >= REGISTRATION_THRESHOLD
            else np.zeros(shape, bool) for i in (0, 2)]


def _fill_unrecorded(planes, record, dz) -> None:
    """Where a shifted ±dz plane holds no recorded pixel (the band its shift
    filled by mirroring: another place's intensity, whose difference with
    the other planes is the specimen's contrast, not the defocus'), that
    plane extrapolated linearly in z from the two recorded ones; where
    neither ±dz plane is recorded, both set to the in-focus plane (no focal
    derivative there). In place, on the host planes (float64) given."""
    dm, dp = dz
    minus, zero, plus = planes
    bands = _bands(zero.shape, record)
    both = bands[0] & bands[1]
    only = [b & ~both for b in bands]
    minus[only[0]] = zero[only[0]] - dm / dp * (plus[only[0]] - zero[only[0]])
    plus[only[1]] = zero[only[1]] + dp / dm * (zero[only[1]] - minus[only[1]])
    minus[both] = plus[both] = zero[both]


def apply_registration(planes, record, register, dz=(1.0, 1.0)):
    """The ±dz planes shifted as a registration's record says (nothing where
    it was not applied, nor for a shift under ``REGISTRATION_THRESHOLD``).

    Parameters
    ----------
    planes : list of three arrays (Sy, Sx)
        Images at ``-dz, 0, +dz`` of the registered scans (NumPy or CuPy).
    record : dict or None
        What :func:`register_planes` returned (``shifts`` in px, ``applied``).
    register : True or "periodic"
        How the shifts are applied: ``"periodic"`` wraps around, anything
        else extends by mirroring, and the rows and columns so filled are
        replaced by the linear extrapolation in z of the recorded planes
        (both ±dz planes by the in-focus one where neither is recorded).
    dz : (float, float)
        The defocus steps ``(dz_minus, dz_plus)`` in Å of that
        extrapolation (default even).

    Returns
    -------
    list of three arrays (Sy, Sx)
        The planes given, the shifted ones replaced by copies (on the
        plane's device, clipped at 0, its floating dtype kept, float64 for
        counts).
    """
    out = list(planes)
    if not record or not record.get("applied"):
        return out
    periodic = register == "periodic"
    host = [to_host(p).astype(np.float64) for p in planes]
    moved = []
    for i in (0, 2):
        shift = record["shifts"][i]
        if math.hypot(*shift) >= REGISTRATION_THRESHOLD:
            host[i] = apply_shift(host[i], shift, periodic=periodic)
            moved.append(i)
    if not periodic:
        _fill_unrecorded(host, record, dz)
        moved = [0, 2]  # either can be filled from the other
    for i in moved:
        # Intensities: the interpolation's ringing below zero is clipped; the
        # plane keeps its device and floating dtype (counts become float64).
        xp = array_module(planes[i])
        out[i] = xp.asarray(np.maximum(host[i], 0),
                            dtype=planes[i].dtype if planes[i].dtype.kind == "f" else np.float64)
    return out


def check_com_extent(reduction: Reduction, name):
    """A reduction's centre of mass checked to lie on its detector.

    The centre of mass of patterns of non-negative counts lies within the
    detector; one beyond it comes from patterns whose sums are near zero
    (negative values, a dark level subtracted) and would integrate to a phase
    of no meaning. :class:`InputError` naming ``name`` where it lies beyond.
    """
    ky, kx = reduction.detector.k()
    limit = float(np.sqrt(ky ** 2 + kx ** 2).max())
    com = reduction.com
    peak = float(abs(com).max()) if com.size else 0.0
    if math.isfinite(peak) and peak > limit * (1 + 1e-3):  # NaN, Inf: named by the gradient
        raise InputError(f"{name}: a centre of mass of up to {peak:.3g} 1/Å lies beyond the "
                         f"detector (at most {limit:.3g} 1/Å from its centre): patterns whose "
                         "sums are near zero or negative (a dark level subtracted?); expected "
                         "patterns of non-negative intensity")


def com_poisson_noise(reduction: Reduction):
    """Poisson noise of the phase gradient ``2π COM`` of counted patterns.

    The centre of mass of a pattern of N counts scatters by ``<k_i²> / N`` per
    component (``<k_i²>`` the second moment of the pattern about its centre of
    mass, 1/Å²). Here the pattern is taken as uniform within the bright-field
    disk and outside it (the counts of the ``bf-full`` and ``whole`` virtual
    images give the weights; the detector's pixels the moments), the
    components as alike (their mean), and the variance of the field is the
    mean over the scan positions that hold counts. For a thin specimen the
    bright field dominates and the estimate is close; counts outside the disk
    that fall off with angle make it an overestimate (the filter then
    removes more). A centre of mass limited to a smaller disk
    (``com_radius``) has a smaller variance than this.

    Parameters
    ----------
    reduction : Reduction
        Of the in-focus scan, from counts (electrons per pixel), with the
        ``bf-full`` and ``whole`` virtual images.

    Returns
    -------
    Noise or None
        The variance per pixel of each gradient component, (rad/Å)², source
        ``"poisson"``; None where the virtual images or the disk are missing,
        no pattern holds counts, or the estimate is not finite.
    """
    virtual, regions = reduction.virtual, reduction.regions
    if "whole" not in virtual or "bf-full" not in virtual or "bf-full" not in regions:
        return None
    radius = regions["bf-full"][1] * 1e-3 / wavelength(reduction.detector.energy)  # 1/Å
    ky, kx = reduction.detector.k()
    k2 = 0.5 * (ky ** 2 + kx ** 2)  # per component, the two taken alike
    inside = ky ** 2 + kx ** 2 <= radius ** 2
    if not inside.any():
        return None
    k2_in = float(k2[inside].mean())
    k2_out = float(k2[~inside].mean()) if (~inside).any() else k2_in
    whole = np.asarray(to_host(virtual["whole"]), np.float64)
    bf = np.clip(np.asarray(to_host(virtual["bf-full"]), np.float64), 0, None)
    counted = whole > 0
    if not counted.any():
        return None
    n = whole[counted]
    n_in = np.minimum(bf[counted], n)
    variance = float(np.mean((n_in * k2_in + (n - n_in) * k2_out) / n ** 2))
    variance *= (2 * np.pi) ** 2  # of 2π COM, (rad/Å)²
    if not math.isfinite(variance):  # virtual images of non-finite or sub-count sums
        return None
    return Noise((variance, variance), "poisson")


def virtual_image_noise(planes, scan_step, energy, regions, virtual):
    """Noise of 4D-STEM virtual images measured above their band limit, or
    None (no room above it, or the regions unknown)."""
    disk = regions.get("bf-full", (0.0, 0.0))[1]
    if not disk > 0:
        return None
    band = 2 * disk * 1e-3 / wavelength(energy)
    return band_noise(planes, scan_step, band)
