"""Detector geometry of 4D-STEM data: centre, bright-field disk, virtual detectors.

The geometry of a triplet is measured once, on patterns sampled across the
in-focus scan (:func:`sample_patterns`, :func:`mean_pattern`): the detector
centre (:func:`find_center`), the bright-field disk's radius
(:func:`bf_radius_mrad`) and from them the regions of the virtual images
(:func:`triplet_geometry`: ``bf``, ``bf-full``, ``abf``, ``df``, ``whole``),
turned into weight rows for the one-pass reduction (:func:`detector_weights`).
Angles are in mrad, detector sampling in 1/Å per pixel.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .._cuda import MAX_WEIGHTS  # weight rows one pass computes (the CUDA tile)
from ..backend import array_module, is_cupy, to_host
from ..errors import (InputError, TrustWarning, check_count, check_positive, first_line,
                      is_integer, is_number, user_stacklevel)
from ..physics import wavelength

__all__ = ["Detector", "DetectorWarning", "VIRTUAL_IMAGES", "find_center", "image_saturation",
           "triplet_geometry"]

#: The virtual images of a triplet's reductions (:func:`triplet_geometry`'s
#: regions), the names ``virtual=`` takes.
VIRTUAL_IMAGES = ("bf", "bf-full", "abf", "df", "whole")


class DetectorWarning(UserWarning):
    """The detector does not record what the triplet's geometry measures: the
    bright-field disk fills it, with no dark field around it, or a centre
    given lies off the disk's measured centre (:func:`triplet_geometry`)."""



#: Why the centre of mass of a detector the bright-field disk fills is not
#: a phase gradient (``triplet.gradient_orientation["why"]``: no method leans
#: on it; a simulated 8 x 8 px detector inside a 20 px disk gave an ``icom``
#: phase a thousandth of the right one, a 24 x 24 px one 0.56 of its NMSE).
DISK_FILLS_COM = ("the bright-field disk fills the detector: a centre of mass that does not "
                  "record the disk's edge misses most of the beam's deflection (its phase "
                  "is attenuated, to nothing where the detector lies well inside the "
                  "disk); the TIE methods read the planes alone")


@dataclass
class Detector:
    """Pixelated detector geometry.

    Parameters
    ----------
    shape : (int, int)
        Detector pixels (Ky, Kx).
    k_sampling : float or (float, float)
        Reciprocal-space sampling in 1/Å per pixel.
    energy : float
        Electron energy in eV.
    center : (float, float)
        Position of the undeflected beam in pixels (fractional allowed).

    Raises
    ------
    InputError
        Where a field is not of this form (checked when the detector is made:
        a scalar sampling is taken for both axes, a centre of NaN is refused).
    """

    shape: tuple
    k_sampling: tuple
    energy: float
    center: tuple

    def __post_init__(self):
        shape = self.shape
        if (not isinstance(shape, (tuple, list, np.ndarray)) or len(shape) != 2
                or not all(is_integer(n) and n >= 1 for n in shape)):
            raise InputError(f"detector: expected a shape (Ky, Kx) of two positive integers, "
                             f"got {_shown(shape)}")
        self.shape = tuple(int(n) for n in shape)
        self.k_sampling = check_positive("k_sampling", self.k_sampling, pair=True)
        self.energy = check_positive("energy", self.energy)
        center = check_center(self.center)
        if not all(math.isfinite(c) for c in center):
            raise InputError(f"center: expected (row, column) in detector pixels, finite, got "
                             f"{_shown(self.center)}")
        self.center = center

    def k(self):
        """Reciprocal coordinates of the detector pixels relative to the centre.

        Returns
        -------
        ky : ndarray (Ky, Kx)
            Along detector axis 0, in 1/Å.
        kx : ndarray (Ky, Kx)
            Along detector axis 1, in 1/Å.
        """
        iy = (np.arange(self.shape[0]) - self.center[0]) * self.k_sampling[0]
        ix = (np.arange(self.shape[1]) - self.center[1]) * self.k_sampling[1]
        return np.meshgrid(iy, ix, indexing="ij")

    def angle_mrad(self):
        """Scattering angle of each detector pixel.

        Returns
        -------
        ndarray (Ky, Kx)
            The angle in mrad, in the small-angle approximation ``λ·|k|``
            (λ in Å, k in 1/Å).
        """
        ky, kx = self.k()
        return np.hypot(ky, kx) * wavelength(self.energy) * 1e3



def mean_pattern(patterns):
    """The mean (Ky, Kx) of one pattern or a stack of them, float64, as a NumPy
    array (a CuPy stack is averaged on the device; only the mean comes back).

    Parameters
    ----------
    patterns : array (..., Ky, Kx)
        One pattern or a stack of them (NumPy, CuPy or anything
        ``np.asarray`` reads; any real dtype), in counts.

    Returns
    -------
    ndarray (Ky, Kx) of float64
        The mean over every leading axis, a NumPy array.

    Raises
    ------
    InputError
        Where ``patterns`` is not a real array of at least two axes, or holds
        no pattern (a leading axis of length 0) or no pixel.
    """
    if not is_cupy(patterns):
        try:
            patterns = np.asarray(patterns)
        except (TypeError, ValueError) as exc:
            raise InputError(f"patterns: expected a real array (..., Ky, Kx), got "
                             f"{_shown(patterns)}") from exc
        except Exception as exc:  # an array-like whose read fails (a lazy file dataset)
            raise InputError(f"patterns: could not be read as an array ({exc})") from exc
    shape = tuple(patterns.shape)
    if patterns.dtype.kind not in "iuf" or len(shape) < 2:
        raise InputError(f"patterns: expected a real array (..., Ky, Kx) of patterns, got "
                         f"{patterns.dtype} of shape {shape}")
    if 0 in shape:
        raise InputError(f"patterns: expected at least one pattern of at least one pixel, "
                         f"got shape {shape}")
    m = patterns.astype(np.float64, copy=False).reshape(-1, *shape[-2:]).mean(axis=0)
    return m.get() if is_cupy(m) else m



def _bright_field(m):
    """Pixels of a mean pattern brighter than half its brightest: the disk."""
    return m >= 0.5 * m.max()



def find_center(patterns) -> tuple:
    """Centre of the bright-field disk of a mean pattern, in pixels.

    The centre of mass of the pixels brighter than half the brightest one: the
    disk, without the dark-field tails that would pull a plain centre of mass.

    Parameters
    ----------
    patterns : array (..., Ky, Kx)
        One mean pattern or a stack to average (NumPy or CuPy, any real
        dtype).

    Returns
    -------
    (float, float)
        The centre (along Ky, along Kx) in detector pixels, fractional.

    Raises
    ------
    InputError
        Where the mean pattern is empty.
    """
    m = mean_pattern(patterns)
    w = np.where(_bright_field(m), m, 0.0)
    total = w.sum()
    if not total > 0:
        raise InputError("center: the mean pattern is empty; give the detector centre")
    iy, ix = np.indices(m.shape)
    return float((w * iy).sum() / total), float((w * ix).sum() / total)



def bf_radius_mrad(patterns, detector: Detector) -> float:
    """Bright-field disk radius (mrad) from a mean pattern: the radius of a disk
    with the area of the pixels brighter than half the brightest.

    Parameters
    ----------
    patterns : array (..., Ky, Kx)
        One mean pattern or a stack to average (:func:`mean_pattern`).
    detector : Detector
        The geometry: its ``k_sampling`` (1/Å per pixel, the geometric mean of
        the two axes is used) and ``energy`` (eV) convert pixels to mrad.

    Returns
    -------
    float
        The radius in mrad.
    """
    area = np.count_nonzero(_bright_field(mean_pattern(patterns)))
    mrad_per_px = math.sqrt(detector.k_sampling[0] * detector.k_sampling[1]) * \
        wavelength(detector.energy) * 1e3
    return math.sqrt(area / math.pi) * mrad_per_px



def sampled_positions(scan, count: int = 256):
    """The scan rows and columns :func:`sample_patterns` reads: pattern ``i``
    of its stack is at ``(rows[i // len(cols)], cols[i % len(cols)])``.

    Parameters
    ----------
    scan : (int, int)
        ``(Sy, Sx)``, positions of the scan.
    count : int, optional
        The most patterns to take (default 256).

    Returns
    -------
    (array of int, array of int)
        The rows and the columns, increasing.
    """
    sy, sx = int(scan[0]), int(scan[1])
    rows = np.unique(np.linspace(0, sy - 1, min(sy, 16)).astype(int))
    per_row = max(1, count // len(rows))
    cols = np.unique(np.linspace(0, sx - 1, min(sx, per_row)).astype(int))
    return rows, cols


def sample_patterns(data, count: int = 256, name: str = "data"):
    """Up to ``count`` patterns spread evenly over the scan (cheap: no full pass).

    Up to 16 evenly spaced scan rows, and in each the same evenly spaced scan
    columns, ``count // rows`` of them (at least one, at most ``Sx``): fewer
    than ``count`` patterns where the scan is small or the division leaves a
    remainder, one per sampled row (more than ``count``) where ``count`` is
    below the number of rows.

    Parameters
    ----------
    data : array-like (Sy, Sx, Ky, Kx)
        The 4D-STEM dataset: NumPy, CuPy, ``np.memmap``, ``h5py.Dataset`` or
        dask (only the sampled patterns are read).
    count : int, optional
        The most patterns to take (default 256).
    name : str, optional
        How messages name ``data`` (default "data").

    Returns
    -------
    array (N, Ky, Kx)
        A NumPy stack, or for CuPy data a CuPy stack gathered in one indexing
        call on the device (:func:`mean_pattern` takes either); the dtype of
        ``data``.

    Raises
    ------
    InputError
        Where ``data`` is not 4-D, ``count`` not a positive integer, or the
        scan holds no position.
    """
    count = check_count("count", count)
    shape = tuple(getattr(data, "shape", ()))
    if len(shape) != 4:
        raise InputError(f"{name}: expected a 4D-STEM dataset (Sy, Sx, Ky, Kx), got "
                         f"{'shape ' + str(shape) if shape else type(data).__name__}")
    sy, sx = shape[:2]
    if sy < 1 or sx < 1:
        raise InputError(f"{name}: expected a scan of at least one position, got shape "
                         f"{tuple(data.shape)}")
    rows, cols = sampled_positions((sy, sx), count)
    if is_cupy(data):
        xp = array_module(data)
        picked = data[xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]
        return picked.reshape(-1, *data.shape[2:])
    # Read only the sampled patterns (a whole scan row of a large dataset is big).
    want = (len(cols),) + tuple(int(n) for n in data.shape[2:])
    picked = []
    for r in rows:
        try:
            block = _to_numpy(data[int(r), cols])
        except (IndexError, KeyError, TypeError, ValueError) as exc:  # an array-like's own
            raise InputError(f"{name}: reading scan row {int(r)} of a {type(data).__name__} "
                             f"of shape {tuple(data.shape)} failed ({type(exc).__name__}: "
                             f"{first_line(exc)}): its shape does not describe its "
                             "data") from exc
        check_read_shape(name, data, block, want, f"scan row {int(r)}")
        picked.append(block)
    return np.concatenate(picked, axis=0)


def check_read_shape(name, data, block, want, where) -> None:
    """Refuse a block read from ``data`` whose shape is not the ``want`` that
    ``data.shape`` promised (an array-like whose ``shape`` does not describe
    its data): the reduction would take other pixels for these.

    Parameters
    ----------
    name : str
        How the message names ``data``.
    data : array-like
        The dataset read.
    block : array
        What reading ``where`` gave.
    want : tuple of int
        The shape it should have.
    where : str
        What was read, for the message (e.g. "scan rows 0:4").

    Raises
    ------
    InputError
        Where the shapes differ.
    """
    if tuple(block.shape) != tuple(want):
        raise InputError(f"{name}: reading {where} of a {type(data).__name__} of shape "
                         f"{tuple(data.shape)} gave shape {tuple(block.shape)}, expected "
                         f"{tuple(want)}: its shape does not describe its data")



def _to_numpy(x):
    if is_cupy(x):
        return x.get()
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):
        x = x.compute()
    return np.asarray(x)



def detector_weights(detector: Detector, regions: dict, com_radius_mrad=None):
    """Weight rows of the one-pass reduction, and how to combine their sums.

    The regions are cut into disjoint annular bins at every radius any of them
    (or the centre-of-mass limit) uses; the kernel sums each bin once, and each
    virtual image is a sum of bins. With the two centre-of-mass moments that
    makes fewer rows than one per region (6 instead of 8 for the defaults of
    ``from_4dstem``): the reduction's cost is proportional to the rows.

    Parameters
    ----------
    detector : Detector
        The geometry (centre included) that gives each pixel's angle (mrad)
        and reciprocal coordinates (1/Å).
    regions : dict of name -> (inner_mrad, outer_mrad)
        Annular regions (inner 0: a disk; outer ``inf``: to the edge).
    com_radius_mrad : float, optional
        Limit the centre of mass to this radius in mrad (default None: the
        whole detector).

    Returns
    -------
    W : float32 array (Q, Ky*Kx)
        Rows: the bins, then ``mask·ky`` and ``mask·kx`` of the centre of mass.
    combine : float64 array (len(regions) + 3, Q)
        Row sums to outputs: the regions, then the COM total, ky and kx moments.

    Raises
    ------
    InputError
        Where a region does not have ``0 <= inner < outer``, or the regions
        need more bins than one pass computes.
    """
    check_detector(detector)
    check_regions(regions)
    for name, (inner, outer) in regions.items():
        if not (0 <= inner < outer):
            raise InputError(f"virtual: region {name!r} needs 0 <= inner < outer mrad, "
                             f"got ({inner}, {outer})")
    com_outer = np.inf if com_radius_mrad is None else float(com_radius_mrad)
    spans = list(regions.values()) + [(0.0, com_outer)]
    edges = sorted({float(e) for span in spans for e in span})
    bins = [(a, b) for a, b in zip(edges[:-1], edges[1:])
            if any(lo <= a and b <= hi for lo, hi in spans)]
    if len(bins) + 2 > MAX_WEIGHTS:
        raise InputError(f"virtual: these regions need {len(bins)} detector bins; at most "
                         f"{MAX_WEIGHTS - 2} fit in one pass")
    theta = detector.angle_mrad()
    rows = [(theta >= a) & (theta < b) for a, b in bins]
    com_mask = theta < com_outer
    ky, kx = detector.k()
    rows += [com_mask * ky, com_mask * kx]
    W = np.stack([np.asarray(r, np.float64).ravel() for r in rows]).astype(np.float32)
    combine = np.zeros((len(regions) + 3, len(rows)))
    for i, (lo, hi) in enumerate(spans):  # the regions, then the COM total
        for j, (a, b) in enumerate(bins):
            combine[i, j] = float(lo <= a and b <= hi)
    combine[-2, -2] = combine[-1, -1] = 1.0
    return W, combine



def check_detector(detector) -> None:
    """:class:`InputError` naming ``detector`` where it is not a
    :class:`Detector`."""
    if not isinstance(detector, Detector):
        raise InputError(f"detector: expected a Detector (flowtie_fast.stem.Detector), got "
                         f"{type(detector).__name__}")


def check_regions(regions) -> None:
    """``regions`` as :func:`detector_weights` takes them: a dict of names
    (str) to ``(inner, outer)``, two real numbers in mrad; :class:`InputError`
    naming ``regions`` otherwise (the order of each pair is checked by
    :func:`detector_weights`)."""
    want = "regions: expected a dict of name -> (inner, outer) in mrad"
    if not isinstance(regions, dict):
        raise InputError(f"{want}, got {type(regions).__name__}")
    for name, span in regions.items():
        if not isinstance(name, str):
            raise InputError(f"{want}, names (str), got {name!r}")
        pair = tuple(span) if isinstance(span, (tuple, list)) else None
        if pair is None or len(pair) != 2 or not all(
                is_number(v) for v in pair):
            raise InputError(f"{want}, two real numbers each, got {span!r} for {name!r}")


def weight_ranges(W):
    """For each weight row, the flat pixel range [lo, hi) holding all its
    non-zero weights (int64): the kernel reads only that range.

    Parameters
    ----------
    W : ndarray (Q, Ky*Kx)
        Weight rows (the first return value of :func:`detector_weights`).

    Returns
    -------
    lo : ndarray (Q,) of int64
        The first flat pixel index of each row with a non-zero weight (0 for
        a row of zeros).
    hi : ndarray (Q,) of int64
        One past the last such index (0 for a row of zeros).
    """
    nz = W != 0
    any_nz = nz.any(axis=1)
    lo = np.where(any_nz, nz.argmax(axis=1), 0)
    hi = np.where(any_nz, W.shape[1] - nz[:, ::-1].argmax(axis=1), 0)
    return lo.astype(np.int64), hi.astype(np.int64)



def check_disk(name: str, radius, detector: Detector) -> float:
    """A detector disk's radius in mrad: positive, in range and at least half a
    detector pixel (a smaller disk holds one pixel or none)."""
    radius = check_positive(name, radius)
    pixel_mrad = 1e3 * wavelength(detector.energy) * min(detector.k_sampling)
    if radius < 0.5 * pixel_mrad:
        raise InputError(f"{name}: {radius:g} mrad is smaller than half a detector pixel "
                         f"({pixel_mrad:g} mrad): the disk would hold one pixel or none")
    return radius


def check_com_radius(com_radius, regions: dict, detector: Detector, name: str = "zero") -> None:
    """Warn where the centre of mass is limited to less than the bright-field disk.

    The phase gradient moves the bright-field disk; a centre of mass taken
    within a circle smaller than the disk cuts its moving edge off, and the
    gradient, and ``icom``'s phase, come out too weak (on corpus crystals a
    limit at half the disk's radius gave NMSE 0.78-0.89 against 0.15-0.38
    with the whole detector; at 0.8 of it, 0.46-0.68).

    Parameters
    ----------
    com_radius : float or None
        Limit of the centre of mass in mrad (None: the whole detector, no
        check).
    regions : dict
        The virtual detectors in mrad (:func:`triplet_geometry`); without a
        ``"bf-full"`` disk (one that fills the detector) nothing is checked.
    detector : Detector
        The geometry (``com_radius`` is checked against it first, as by
        :func:`~flowtie_fast.stem.reduction.reduce_4dstem`).
    name : str
        The data the disk was measured on, named in the warning (default
        "zero"; the warning names the caller's line:
        :func:`~flowtie_fast.errors.user_stacklevel`).

    Raises
    ------
    InputError
        Naming ``com_radius`` where :func:`check_disk` refuses it.
    """
    if com_radius is None:
        return
    com_radius = check_disk("com_radius", com_radius, detector)
    disk = regions.get("bf-full", (0.0, 0.0))[1]
    if com_radius < disk:
        # enough digits to tell the two apart, and a limit advised that is not inside
        digits = next((p for p in range(3, 17) if f"{com_radius:.{p}g}" != f"{disk:.{p}g}"), 17)
        step = 10.0 ** (math.floor(math.log10(disk)) - digits + 1)
        least = math.ceil(disk / step) * step
        warnings.warn(
            f"com_radius: the centre of mass is limited to {com_radius:.{digits}g} mrad, inside "
            f"the bright-field disk ({disk:.{digits}g} mrad measured on {name}): the disk's "
            "edge, whose shift carries the phase gradient, is cut off, and the centre of mass "
            f"(icom's phase) comes out too weak; give com_radius={least:.{digits}g} or more, "
            "or None for the whole detector", TrustWarning, stacklevel=user_stacklevel())


def disk_fills_detector(mean) -> tuple:
    """Whether the bright-field disk of a mean pattern reaches the detector's
    edge along so much of it that there is no dark field around the disk.

    The disk (pixels brighter than half the brightest, as
    :func:`bf_radius_mrad` measures it) fills the detector when at least as
    many of the detector's edge pixels are in it as its radius holds pixels:
    a disk cut along such a chord lies an eighth of its radius or more
    beyond the edge, and the dark field around it is gone or cut short. A
    disk that only touches an edge (a chord shorter than its radius: its
    radius measured within about 1 %, its centre within 3 % of it) is not. A
    flat mean pattern (a detector all bright field, or patterns without a
    disk) fills it too.

    Parameters
    ----------
    mean : array (Ky, Kx)
        The mean pattern (:func:`mean_pattern`), a NumPy array or anything
        ``np.asarray`` reads.

    Returns
    -------
    (bool, int, int)
        Whether it fills the detector, the edge pixels in the disk, and the
        detector's edge pixels.
    """
    m = np.asarray(mean)
    bright = _bright_field(m)
    edge = np.zeros(m.shape, bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    on_edge = int(np.count_nonzero(bright & edge))
    radius_px = math.sqrt(np.count_nonzero(bright) / math.pi)
    return on_edge > 0 and on_edge >= radius_px, on_edge, int(np.count_nonzero(edge))



#: A pixel of the mean pattern this many times brighter than each of its
#: eight neighbours is isolated: a bright-field disk of a few pixels has
#: neighbours of its own brightness, and its edge pixels fall off to a half or
#: a quarter.
HOT_PIXEL_RATIO = 4.0


def check_hot_pixels(mean, name="zero", sample=None) -> None:
    """Refuse a mean pattern whose bright field is made of isolated pixels.

    The detector centre and the bright-field disk are measured on the pixels
    brighter than half the brightest (:func:`find_center`,
    :func:`bf_radius_mrad`). A pixel that reads more than twice the disk in
    every pattern (a hot pixel of the camera) leaves the disk out of that set:
    the centre, every virtual image and the centre of mass would be measured
    on the hot pixel. A hot pixel dimmer than that leaves the disk in the set
    and is taken as part of it.

    Parameters
    ----------
    mean : ndarray (Ky, Kx)
        The mean pattern (:func:`mean_pattern`), in counts.
    name : str, optional
        The data the mean pattern comes from, named in the message (default
        "zero").
    sample : array (N, Ky, Kx), optional
        The patterns ``mean`` averages (:func:`sample_patterns`): where the
        brightest pixel is bright in fewer than half of them, the message
        names transient spikes (X-rays, cosmic rays) instead of hot pixels.

    Raises
    ------
    InputError
        Naming ``name`` and the brightest pixel, where every pixel above half
        the brightest is more than :data:`HOT_PIXEL_RATIO` times each of its
        neighbours (hot pixels; a bright-field disk within one pixel, or
        counts too few to show the disk, are refused the same way: no centre
        or radius can be measured).
    """
    m = np.asarray(mean, np.float64)
    if m.shape[0] < 3 and m.shape[1] < 3:  # every pixel a corner: a disk of one pixel is all
        return
    padded = np.pad(m, 1, constant_values=-np.inf)
    neighbours = np.full(m.shape, -np.inf)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if (dy, dx) != (1, 1):
                neighbours = np.maximum(neighbours, padded[dy:dy + m.shape[0],
                                                           dx:dx + m.shape[1]])
    bright = _bright_field(m)
    isolated = bright & (m > HOT_PIXEL_RATIO * np.maximum(neighbours, 0))
    if bright.any() and np.array_equal(isolated, bright):
        i, j = (int(v) for v in np.unravel_index(np.argmax(m), m.shape))
        than = (f"{m[i, j] / neighbours[i, j]:.3g} times its brightest neighbour"
                if neighbours[i, j] > 0 else "bright where its neighbours are all zero")
        if sample is not None:
            values = np.asarray(to_host(sample[:, i, j]), np.float64)
            typical = float(np.median(values))
            spiked = int(np.count_nonzero(values > HOT_PIXEL_RATIO * max(typical, 1.0)))
            if 0 < spiked < len(values) / 2:
                raise InputError(
                    f"{name}: detector pixel ({i}, {j}) of the mean pattern is {than}, from "
                    f"{spiked} of the {len(values)} patterns sampled across the scan only (up to "
                    f"{values.max():.4g} there, {typical:.3g} in half of them): transient "
                    "spikes (X-rays, cosmic rays) outshine the bright-field disk, and the "
                    "detector centre, the disk and those patterns' centre of mass would be "
                    "measured on them; expected patterns with such isolated pixels removed "
                    "(e.g. each replaced by the median of its neighbours)")
        raise InputError(f"{name}: detector pixel ({i}, {j}) of the mean pattern is "
                         f"{than}, and the pixels above "
                         "half of it are all such isolated pixels (hot pixels, a bright-field "
                         "disk within one pixel, or counts too few to show the disk): the "
                         "detector centre, the bright-field disk and the centre of mass would "
                         "be measured on them; expected patterns with hot pixels set to zero "
                         f"(e.g. data[..., {i}, {j}] = 0)")



#: A given detector centre is warned where it lies farther from the measured
#: disk centre than this many bright-field disk radii ... (chosen on the
#: even-numbered corpus series: the disk's centre re-measured on sampled
#: patterns lies within 0.023 radii of that of the whole noise-free scan,
#: the detector's middle, where the simulated beam falls, within 0.061 on
#: all files but a thick Au crystal, whose mean disk sits 0.15 radii off it;
#: an offset of 0.1 radii can already make the TIE phase several times worse;
#: ``scripts/center_study.py``)
CENTER_TOLERANCE = 0.08
#: ... and than this many standard errors of the measured centre (bootstrap
#: over the sampled patterns: their counting noise and the specimen's shifts
#: of the disk).
CENTER_SIGMAS = 5.0


def center_scatter(patterns, resamples: int = 32, seed: int = 0, mean=None) -> float:
    """Standard error of :func:`find_center` on the mean of ``patterns``, per
    axis, in pixels: the scatter of the centre over bootstrap resamples of the
    patterns (their counting noise and the specimen's shifts of the disk).

    Parameters
    ----------
    patterns : array (N, Ky, Kx)
        The sampled patterns (NumPy or CuPy, any real dtype); with fewer than
        two the scatter is unknown and 0.0 is returned.
    resamples : int, optional
        Bootstrap resamples (default 32).
    seed : int, optional
        Of the resampling (default 0: the same patterns give the same value).
    mean : ndarray (Ky, Kx), optional
        The patterns' mean (:func:`mean_pattern`) where the caller has it
        (default None: taken here), which bounds the disk's box.

    Returns
    -------
    float
        ``sqrt((σy² + σx²) / 2)`` in pixels, σ the standard deviations of the
        two coordinates over the resamples.
    """
    if is_cupy(patterns):
        patterns = patterns.get()
    stack = np.asarray(patterns)
    stack = stack.reshape(-1, *stack.shape[-2:])
    n = stack.shape[0]
    if n < 2:
        return 0.0
    # Only the disk decides its centre: the resamples are made of the box of the
    # mean pattern's bright field, widened by a quarter of its size each way
    # (a few times fewer pixels than a large detector's, the same scatter).
    bright = _bright_field(mean_pattern(stack) if mean is None else np.asarray(mean))
    if bright.any():
        rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
        wy, wx = (max(2, (a[-1] - a[0] + 1) // 4) for a in (rows, cols))
        stack = stack[:, max(rows[0] - wy, 0):rows[-1] + wy + 1,
                      max(cols[0] - wx, 0):cols[-1] + wx + 1]
    shape = stack.shape[-2:]
    stack = stack.reshape(n, shape[0] * shape[1])
    rng = np.random.default_rng(seed)
    picks = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64) / n
    means = np.empty((resamples, stack.shape[1]))
    block = max(1, (1 << 22) // n)  # pixels converted to float64 at once (32 MiB)
    for j in range(0, stack.shape[1], block):
        means[:, j:j + block] = picks @ stack[:, j:j + block].astype(np.float64)
    means = means.reshape(resamples, *shape)
    centres = []
    for m in means:
        try:
            centres.append(find_center(m))
        except InputError:  # an empty resample: no centre
            continue
    if len(centres) < 2:
        return 0.0
    sd = np.std(np.asarray(centres), axis=0, ddof=1)
    return float(math.sqrt((sd[0] ** 2 + sd[1] ** 2) / 2))


def center_offset(center, mean, scatter: float = 0.0) -> dict:
    """How far a given detector centre lies from the bright-field disk's
    centre measured on the mean pattern.

    Parameters
    ----------
    center : (float, float)
        The centre given, (row, column) in detector pixels.
    mean : ndarray (Ky, Kx)
        The mean pattern (:func:`mean_pattern`).
    scatter : float, optional
        Standard error of the measured centre per axis in pixels
        (:func:`center_scatter`; default 0.0).

    Returns
    -------
    dict
        ``measured`` (row, column) in pixels; ``distance`` in pixels;
        ``radius`` the disk's radius in pixels (the radius of a disk of the
        area of the pixels brighter than half the brightest); ``radii`` the
        distance in disk radii; ``limit`` in pixels, the larger of
        :data:`CENTER_TOLERANCE` radii and :data:`CENTER_SIGMAS` times
        ``scatter``; ``warned`` whether ``distance`` exceeds it; ``swapped``
        whether the centre given in (column, row) order lies within the limit
        of the measured one (and the given one does not).
    """
    m = np.asarray(mean, np.float64)
    cy, cx = (float(c) for c in center)
    my, mx = find_center(m)
    radius = math.sqrt(np.count_nonzero(_bright_field(m)) / math.pi)
    distance = math.hypot(cy - my, cx - mx)
    limit = max(CENTER_TOLERANCE * radius, CENTER_SIGMAS * float(scatter))
    warned = distance > limit
    return {"measured": (my, mx), "distance": distance, "radius": radius,
            "radii": distance / radius if radius > 0 else math.inf, "limit": limit,
            "warned": warned,
            "swapped": warned and math.hypot(cx - my, cy - mx) <= limit}


def check_center_given(center, mean, scatter: float = 0.0, name: str = "zero") -> None:
    """Warn where a detector centre given lies off the bright-field disk
    measured on the mean pattern (:func:`center_offset`).

    A centre off by a tenth of the disk's radius or more cuts the virtual
    bright-field disk off-centre (its images then hold a parallax that
    grows with the defocus) and shifts every centre of mass by a constant:
    on the corpus simulations the TIE phase came out up to 9 times worse,
    ``icom`` (which drops the mean of the gradient) up to 1.8 times at 1e4
    e/Å² (docs/reliability.md). The centre the centre of mass needs is the
    unscattered beam's, the disk's, also where a beam tilt puts the disk
    off the optical axis; the centre given is still used (a caller may know
    better), with a :class:`DetectorWarning`.

    Parameters
    ----------
    center, mean, scatter
        As in :func:`center_offset`.
    name : str, optional
        The data the mean pattern comes from (default "zero").
    """
    off = center_offset(center, mean, scatter)
    if not off["warned"]:
        return
    my, mx = off["measured"]
    given = tuple(float(c) for c in center)
    if off["swapped"]:
        fix = (f"it is the measured centre in (column, row) order: give "
               f"center=({given[1]:.4g}, {given[0]:.4g}) (row, column), or omit center= "
               "to use the measured one")
    else:
        fix = ("omit center= to use the measured one, or check the centre's (row, column) "
               "order and that it was measured at this camera length")
    warnings.warn(
        f"center: the detector centre given, ({given[0]:.4g}, {given[1]:.4g}) (row, column) "
        f"px, lies {off['distance']:.3g} px ({off['radii']:.2g} bright-field disk radii of "
        f"{off['radius']:.3g} px) from the disk's centre ({my:.4g}, {mx:.4g}) measured on "
        f"{name}'s mean pattern (limit {off['limit']:.2g} px): the virtual bright-field disk "
        "is cut off-centre and every centre of mass shifted (on simulations, 0.1-0.3 radii "
        f"off made the TIE phase up to 9 times worse); {fix}. The disk's centre is the one "
        "to give also where a beam tilt moves it off the optical axis; an axis measured "
        "without a specimen can lie up to 0.15 radii from it on thick crystals",
        DetectorWarning, stacklevel=user_stacklevel())


def disk_filled(regions) -> bool:
    """Whether :func:`triplet_geometry` found the bright-field disk filling the
    detector: its regions then hold no ``"df"`` annulus (its documented mark).

    Parameters
    ----------
    regions : dict
        What :func:`triplet_geometry` returned with the detector.

    Returns
    -------
    bool
    """
    return "df" not in regions


def triplet_geometry(mean, k_sampling, energy, center=None, bf_radius=None, name="zero",
                     sample=None, virtual="bf"):
    """Detector and virtual-detector regions for a focal triplet from the mean
    in-focus pattern.

    Parameters
    ----------
    mean : ndarray (Ky, Kx)
        Mean pattern (:func:`mean_pattern`).
    k_sampling : (float, float)
        Detector sampling in 1/Å per pixel.
    energy : float
        Electron energy in eV.
    center : (float, float), optional
        Detector centre in pixels (default: :func:`find_center`).
    bf_radius : float, optional
        Radius of the "bf" disk in mrad (default a quarter of the measured
        bright-field disk).
    name : str
        The data the mean pattern comes from, named in the warning (default
        "zero").
    sample : array (N, Ky, Kx), optional
        The patterns ``mean`` averages (:func:`sample_patterns`): a
        ``center`` given is checked against the disk measured on them, within
        the scatter of that measurement over them (:func:`center_scatter`);
        default None: no check.
    virtual : str
        The virtual image that will form the planes (default "bf"): a
        ``bf_radius`` of :data:`BF_RADIUS_SHARE` of the disk or more is
        warned of only where it is "bf".

    Returns
    -------
    detector : Detector
        The geometry, with the centre found or given.
    regions : dict of str -> (float, float)
        "bf", "bf-full", "abf", "df", "whole" as (inner, outer) in mrad (see
        Notes for a detector the bright-field disk fills).

    Notes
    -----
    Where the bright-field disk fills the detector
    (:func:`disk_fills_detector`: a detector cropped to the disk, or a
    camera length too long), its edge is not recorded: its radius is not
    known (the measured one is a lower bound, the detector's own extent),
    and what would be the "df" annulus holds bright field, whose images
    change with defocus. Then only "bf" (by default a quarter of that
    lower bound) and "whole" are returned, with a
    :class:`DetectorWarning`: no "bf-full", "abf" or "df" image, so that
    :meth:`~flowtie_fast.triplet.FocalTriplet.from_4dstem` measures no
    band-limited noise (the band limit comes from the disk's radius) and
    does not register the scans on a "dark field" that is bright field
    (it registers them on the planes, as it does without one). The
    missing ``"df"`` region is the flag a program can read
    (``"df" not in triplet.reductions[1].regions``).

    A ``center`` given is used as given; where ``sample`` is given too, with
    a :class:`DetectorWarning` where it lies farther from the disk's
    measured centre than
    :data:`CENTER_TOLERANCE` disk radii and :data:`CENTER_SIGMAS` standard
    errors of that measurement (:func:`check_center_given`; not where the
    disk fills the detector, whose measured centre is cut by its edges).
    """
    if not float(np.nansum(mean)) > 0 and not np.isnan(mean).any():
        if (mean != 0).any():
            raise InputError(f"{name}: the sampled patterns sum to {float(np.sum(mean)):.4g} on "
                             "average, expected a positive intensity (negative values: a dark "
                             "level subtracted?)")
        raise InputError(f"{name}: every sampled pattern is zero everywhere (a dropped "
                         "frame?)")
    check_hot_pixels(mean, name, sample)
    given = center
    center = find_center(mean) if center is None else check_center(center)
    if not all(math.isfinite(c) and 0 <= c <= n - 1 for c, n in zip(center, mean.shape)):
        raise InputError(f"center: expected (row, column) in detector pixels on the "
                         f"{tuple(mean.shape)} detector, got {center!r}")
    detector = Detector(tuple(mean.shape), k_sampling, energy, center)
    disk = bf_radius_mrad(mean, detector)
    check_disk_angle(disk, detector)
    bf_radius = 0.25 * disk if bf_radius is None else check_disk("bf_radius", bf_radius,
                                                                   detector)
    fills, on_edge, edge = disk_fills_detector(mean)
    if given is not None and sample is not None and not fills:
        check_center_given(center, mean, center_scatter(sample, mean=mean), name)
    if fills:
        mrad_per_px = 1e3 * wavelength(energy) * np.asarray(k_sampling, float)
        reach = min(min(c + 0.5, n - 0.5 - c) * d
                    for c, n, d in zip(center, mean.shape, mrad_per_px))
        warnings.warn(
            f"{name}: the bright-field disk fills the detector ({disk:.3g} mrad measured, "
            f"the detector's nearest edge {reach:.3g} mrad from the centre; {on_edge} of its "
            f"{edge} edge pixels are bright field): no dark field surrounds it, so its radius "
            f"is unknown (at least {disk:.3g} mrad); only the 'bf' (radius {bf_radius:.3g} "
            "mrad) and 'whole' images are made: no 'bf-full', 'abf' or 'df', no noise "
            "measured above the band limit, the scans not registered; record the "
            "whole disk with dark field around it (a shorter camera length, an uncropped "
            "detector), or, where the patterns do hold a disk, give the data's axes as "
            "(scan y, scan x, detector y, detector x): a reader that returns the detector "
            "axes first (an NCEM .emd) needs numpy.moveaxis(data, (0, 1), (2, 3))",
            DetectorWarning, stacklevel=user_stacklevel())
        return detector, {"bf": (0.0, bf_radius), "whole": (0.0, np.inf)}
    regions = {"bf": (0.0, bf_radius), "bf-full": (0.0, disk), "abf": (0.5 * disk, disk),
               "df": (disk, np.inf), "whole": (0.0, np.inf)}
    if isinstance(virtual, str) and virtual == "bf" and bf_radius >= BF_RADIUS_SHARE * disk:
        warnings.warn(
            f"bf_radius: the 'bf' images sum {bf_radius:.3g} mrad, {bf_radius / disk:.2g} of "
            f"the bright-field disk ({disk:.3g} mrad measured on {name}): a detector that "
            "large sums away the defocus contrast the TIE reads (the TIE phase of simulated "
            "crystals went from NMSE 0.3 at a quarter of the disk to 0.55 at 0.75 and 0.94 at "
            "the disk, a weak phase object's to a flat phase); leave bf_radius at its default "
            f"({0.25 * disk:.3g} mrad, a quarter of the disk)", TrustWarning,
            stacklevel=user_stacklevel())
    level, share = dark_level(mean, detector, disk)
    if share > DARK_LEVEL_SHARE:
        warnings.warn(
            f"{name}: the mean pattern's far dark field (beyond {DARK_FIELD_REACH:g} times "
            f"the bright-field disk's {disk:.3g} mrad) lies at {level:.3g} a pixel, below "
            f"zero: a dark level subtracted too far has taken from each pattern {share:.3g} "
            f"times the sum left to it, and the centre of mass (icom's gradient) comes out "
            f"about {1 + share:.3g} times too strong; subtract the detector's measured dark "
            "level, not more", TrustWarning, stacklevel=user_stacklevel())
    return detector, regions


#: mrad: the largest bright-field disk (a probe's convergence semi-angle) taken;
#: the reduction's small-angle geometry (angle = λ|k|) is 5 % off there, and
#: probes converge by a few tens of mrad (the simulations' limit is the same).
MAX_DISK_MRAD = 500.0
#: mrad: the smallest bright-field disk taken (1 µrad, below the convergence
#: of a low-angle Lorentz probe).
MIN_DISK_MRAD = 1e-3


def check_disk_angle(disk: float, detector: Detector) -> None:
    """Refuse a bright-field disk measured beyond :data:`MAX_DISK_MRAD`: the
    detector sampling is then not that of one pixel in 1/Å (the whole
    detector's extent, or 1/nm), and the centre of mass, scaled by it, gives
    an ``icom`` phase as many times too strong without a word; or under
    :data:`MIN_DISK_MRAD` (a sampling in 1/m or 1/µm taken for 1/Å gave an
    ``icom`` phase 6e4 times too weak). :class:`InputError` naming
    ``k_sampling``."""
    ks = tuple(float(f"{k:.4g}") for k in detector.k_sampling)
    if 0 < disk < MIN_DISK_MRAD:
        raise InputError(
            f"k_sampling: the bright-field disk measures {disk:.4g} mrad with {ks} 1/Å per "
            f"pixel at {detector.energy:.4g} eV, under the {MIN_DISK_MRAD:g} mrad (1 µrad) of "
            "any probe's convergence semi-angle; expected the sampling of one detector pixel "
            "in 1/Å (a value in another unit, or of a binned detector, is off by its factor)")
    if disk <= MAX_DISK_MRAD:
        return
    raise InputError(
        f"k_sampling: the bright-field disk measures {disk:.4g} mrad with {ks} 1/Å per pixel "
        f"at {detector.energy:.4g} eV, beyond the {MAX_DISK_MRAD:g} mrad of any probe's "
        "convergence semi-angle; expected the sampling of one detector pixel in 1/Å (the "
        f"whole detector's extent over its {detector.shape} pixels, or a value in 1/nm, is "
        "that many or 10 times too large)")


#: The share of the measured bright-field disk beyond which a given
#: ``bf_radius`` is warned of (the TIE phase of the test crystals: NMSE 0.3 at
#: the default quarter, 0.55 at 0.75, 0.94 at the disk).
BF_RADIUS_SHARE = 0.75
#: Beyond this many bright-field radii the mean pattern holds only the far
#: dark field, whose level is 0 or above for any specimen.
DARK_FIELD_REACH = 1.5
#: A far dark field below zero that takes more than this share of the patterns'
#: sum (the centre of mass then scaled up by more than 1 + share) is warned.
DARK_LEVEL_SHARE = 0.05


def dark_level(mean, detector: Detector, disk: float) -> tuple:
    """A mean pattern's negative dark level, and the share of its sum it takes.

    Scattering puts no negative intensity anywhere: a far dark field whose
    median lies below zero, by more than five times that median's standard
    error (zero-mean read noise left in the mean pattern), is a dark level
    subtracted too far. That level,
    over every detector pixel, is missing from each pattern's sum, which
    divides the centre of mass.

    Parameters
    ----------
    mean : ndarray (Ky, Kx)
        The mean pattern.
    detector : Detector
        Its geometry.
    disk : float
        The bright-field disk's radius in mrad.

    Returns
    -------
    level : float
        The median of the pixels beyond :data:`DARK_FIELD_REACH` disk radii
        (the pattern's unit; 0.0 where fewer than 16 pixels lie there).
    share : float
        ``-level × pixels / sum``: 0.0 where the level is not below zero
        beyond its noise, or the sum is not positive.
    """
    m = np.asarray(mean, np.float64)
    far = m[detector.angle_mrad() > DARK_FIELD_REACH * disk]
    total = float(m.sum())
    if far.size < 16:
        return 0.0, 0.0
    level = float(np.median(far))
    # below zero beyond the median's own noise (read noise left in the mean)
    below = level < -5 * 1.2533 * float(far.std()) / math.sqrt(far.size)
    return level, (-level * m.size / total if below and total > 0 else 0.0)



def check_center(center) -> tuple:
    """A detector centre: a sequence (tuple, list or 1-D array) of two real
    numbers, (row, column) in pixels, as floats; :class:`InputError` naming
    ``center`` otherwise. Strings (``"88"`` would be read digit by digit),
    dicts and sets (their keys, in no set order) and bools are refused."""
    bad = InputError(f"center: expected (row, column) in detector pixels, two real numbers, "
                     f"got {_shown(center)}")
    if isinstance(center, np.ndarray):
        if center.dtype.kind not in "iuf" or center.shape != (2,):
            raise bad
        items = center.tolist()
    elif isinstance(center, (tuple, list)):
        items = list(center)
    else:
        raise bad
    if len(items) != 2:
        raise bad
    out = []
    for c in items:
        if isinstance(c, np.ndarray) and c.ndim == 0:
            c = c[()]
        if not is_number(c):
            raise bad
        try:
            out.append(float(c))
        except (OverflowError, ValueError, TypeError) as exc:
            raise bad from exc
    return tuple(out)



def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."



def check_region(name: str, regions: dict, detector: Detector, bf_given: bool) -> None:
    """Refuse a virtual detector ``name`` of ``regions`` that holds no detector
    pixel (its image would be zero everywhere, which reads as a dropped frame):
    :class:`InputError` naming ``bf_radius`` for the "bf" disk (with a radius
    that holds the nearest pixels), ``virtual`` otherwise."""
    inner, outer = regions[name]
    theta = detector.angle_mrad()
    if np.count_nonzero((theta >= inner) & (theta < outer)):
        return
    if name == "bf":
        nearest = float(theta.min())
        hint = f"{1.05 * nearest:.3g}" if nearest > 0 else "a larger radius"
        disk = regions.get("bf-full", (0.0, 4 * outer))[1]  # none where it fills the detector
        how = "given" if bf_given else \
            f"the default, a quarter of the {disk:.3g} mrad bright-field disk"
        cy, cx = detector.center
        raise InputError(f"bf_radius: the 'bf' disk of {outer:.3g} mrad ({how}) holds no "
                         f"detector pixel around the centre ({cy:.4g}, {cx:.4g}) (the "
                         f"nearest lies at {nearest:.3g} mrad); give a larger one, e.g. "
                         f"bf_radius={hint}")
    raise InputError(f"virtual: the {name!r} region ({inner:.3g} to {outer:.3g} mrad) holds no "
                     "detector pixel; choose another virtual image")


#: A top value that at least this share of the sampled pixels sits at
#: exactly (0.01 %), ...
SATURATION_SHARE = 1e-4
#: ... at least this many pixels (a handful at a maximum is chance: 5 against
#: 2 at the value below was seen on right counts), ...
SATURATION_MIN_PIXELS = 16
#: ... and more pixels than the next lower value holds (times this ratio) is
#: a pile-up: a detector or a conversion that clipped the counts there. The
#: maximum of right counts lies in a tail that falls off, below the value
#: under it: on 40 corpus files at 1e2 to 1e6 e/Å² (1320 samples of 256
#: patterns), a maximum held by 16 pixels or more held at most 0.18 times
#: the pixels at the value under it.
SATURATION_RATIO = 1.0
#: ... by more than this many standard deviations of that value's count (its
#: square root): counts spread evenly up to their maximum (no tail, as
#: uniform random integers) hold about as many at the top as below it.
SATURATION_SIGMAS = 3.0
#: A top value held at this many detector pixels or fewer, whatever the
#: patterns, is theirs (stuck or hot pixels), not a saturated bright field.
STUCK_PIXELS = 4
#: What saturated patterns do, and what to do, for the warning.
SATURATION_EFFECT = (
    "The bright field is cut flat (or, wrapped around, scrambled), so the centre of mass and "
    "the virtual images' intensities are biased and every phase is wrong (a GaAs simulation "
    "clipped at 19 % of its pixels: icom NMSE 0.50 -> 0.76, flowtie 0.19 -> 0.66); lower "
    "the dose, the beam current or the detector's gain, or record in a wider dtype")


def image_saturation(names, planes):
    """The full-scale check of integer planes (a camera's images, counts).

    A camera at its full scale, or counts clipped at it or cast to a
    narrower dtype (which wraps them around), cut the planes flat where they
    are brightest or scramble them: the focal derivative loses its contrast
    there and every method's phase is wrong (1 % of each plane clipped: NMSE
    1.4e-5 -> 0.23 on the tests' phase object; 5 %: 0.9), while every other
    check passes. A pile-up below the full scale (a 12-bit camera in uint16,
    a clip at another value) is not judged here: noise-free integer images
    (rounded simulations) pile up at their maximum too (the in-focus plane
    of a phase object is flat at 1). One maximum per plane (2 us at 256²
    uint16) unless it is the full scale.

    Parameters
    ----------
    names : sequence of str
        How the record and the warning name the planes.
    planes : sequence of arrays (Ny, Nx)
        The planes as given (NumPy or CuPy), any dtype.

    Returns
    -------
    dict or None
        None where no plane is of an integer dtype; else a triplet's
        ``saturation`` record: ``"saturated"`` (whether more than
        :data:`STUCK_PIXELS` pixels of a plane read exactly its dtype's full
        scale, 255 for uint8, 65535 for uint16; then with a
        :class:`TrustWarning`), ``"why"`` (the warning's text, or None) and
        ``"planes"`` (per plane name: ``"value"``, its maximum, ``"pixels"``
        at the full scale, ``"full_scale"``, ``"saturated"``; None for a
        plane of a floating-point dtype).
    """
    if not any(np.dtype(p.dtype).kind in "iu" for p in planes):
        return None
    records, seen = {}, []
    for n, p in zip(names, planes):
        dtype = np.dtype(p.dtype)
        if dtype.kind not in "iu":
            records[n] = None
            continue
        full = int(np.iinfo(dtype).max)
        top = int(p.max())
        pixels = int((p == full).sum()) if top == full else 0
        saturated = pixels > STUCK_PIXELS
        records[n] = {"value": top, "pixels": pixels, "full_scale": top == full,
                      "saturated": saturated}
        if saturated:
            seen.append(f"{n}: {pixels} of its pixels ({pixels / p.size:.3g}) read exactly "
                        f"{full}, the full scale of {dtype}")
    why = None
    if seen:
        why = ("; ".join(seen) + ": values above it were clipped there by a saturated camera "
               "or, cast to it (astype), wrapped around; the planes are cut flat or "
               "scrambled where they are brightest and every phase is wrong there and beyond; "
               "lower the dose or the exposure, or record in a wider dtype")
        warnings.warn(f"planes: {why}", TrustWarning, stacklevel=user_stacklevel())
    return {"saturated": bool(seen), "why": why, "planes": records}


def saturation(sample, name: str = "zero", dtype=None) -> dict:
    """Whether patterns sampled from a 4D-STEM dataset pile up at a top value.

    A detector that saturates (a counter's limit, a full well) or a
    conversion that clips (``np.minimum``, a cast with clipping) puts every
    pixel that would read more at one value: the bright field is cut flat,
    so the centre of mass, which weighs the disk's moving edge, and the
    virtual images' intensities are biased, while every other check passes
    (on a GaAs corpus triplet of 1e6 electrons a pattern clipped at 0.9 of
    the bright field's median, 20 % of the pixels: ``flowtie`` NMSE 0.19 ->
    0.66, ``icom`` 0.50 -> 0.76). Counts that exceed the full scale of an
    integer dtype and are cast to it (``counts.astype(np.uint8)``) wrap
    around instead: their maximum is the dtype's full scale, which is
    flagged whatever the number of pixels there.

    The pile-up is looked for in counts only: an integer dtype, or floating
    point values that are all whole numbers. Noise-free floating-point
    patterns (simulations) can repeat one value exactly (a flat disk in
    vacuum at many scan positions) and are not judged.

    Parameters
    ----------
    sample : array (N, Ky, Kx)
        Patterns sampled across the scan (:func:`sample_patterns`; NumPy or
        CuPy), in the data's units (counts).
    name : str, optional
        The scan the patterns come from, for the message (default "zero").
    dtype : dtype, optional
        The dataset's dtype (default: the sample's); an integer one has a
        full scale (``np.iinfo(dtype).max``: 255 for uint8, 65535 for
        uint16).

    Returns
    -------
    dict
        ``"value"``: the sample's maximum (the data's units); ``"pixels"``:
        the sampled pixels at exactly it; ``"share"``: their share of the
        sampled pixels; ``"next"``: the pixels at the next lower value (0
        where not counted: too few at the top to be a pile-up);
        ``"full_scale"``: whether the maximum is the integer dtype's full
        scale; ``"saturated"``: whether the pixels at the maximum are a
        pile-up (at least :data:`SATURATION_SHARE` of them and
        :data:`SATURATION_MIN_PIXELS`, more than :data:`SATURATION_RATIO`
        times the next lower value's and :data:`SATURATION_SIGMAS` standard
        deviations of it, in counts) or the maximum is the full scale, and
        the pixels at the maximum lie at more than :data:`STUCK_PIXELS`
        detector pixels (``"detector_pixels"``: at fewer, stuck or hot pixels
        of the camera);
        ``"why"``: what was seen, naming ``name`` (:data:`SATURATION_EFFECT`
        says what it does), or None.
    """
    xp = array_module(sample)
    dtype = np.dtype(sample.dtype if dtype is None else dtype)
    size = int(sample.size)
    top = sample.max()
    at_top = int(xp.count_nonzero(sample == top))
    top = float(top)
    share = at_top / size if size else 0.0
    full = dtype.kind in "iu" and top == float(np.iinfo(dtype).max)
    below, lower = 0, None
    piled = False
    if at_top >= SATURATION_MIN_PIXELS and share >= SATURATION_SHARE and (
            dtype.kind in "iu" or bool(xp.all(sample == xp.floor(sample)))):
        under = sample < top
        if not bool(under.any()):
            lower = None  # every pixel at the top: nothing below it
        elif xp is np:  # no float64 copy of the sample
            least = np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf
            lower = float(sample.max(where=under, initial=least))
        else:
            lower = float(xp.where(under, sample.astype(xp.float64), -np.inf).max())
        if lower is not None:
            below = int(xp.count_nonzero(sample == lower))
        piled = at_top > SATURATION_RATIO * below + SATURATION_SIGMAS * math.sqrt(below)
    # At a few detector pixels only, the top value is theirs (stuck or hot
    # pixels of the camera), not a saturated bright field's or wrapped counts'.
    spots = int(xp.count_nonzero((sample == top).any(axis=0))) if sample.ndim == 3 else at_top
    stuck = spots <= STUCK_PIXELS
    record = {"value": top, "pixels": at_top, "share": share, "next": below,
              "full_scale": bool(full), "detector_pixels": spots,
              "saturated": bool((piled or full) and not stuck), "why": None}
    if not record["saturated"]:
        return record
    n = sample.shape[0] if sample.ndim > 2 else 1
    seen = (f"{at_top} of the {size} pixels of {n} patterns sampled across the scan "
            f"({share:.3g} of them) read exactly {top:.6g}, its maximum")
    if piled and lower is None:
        seen += ", every pixel sampled: patterns flat at a top value, a detector saturated"
    elif piled:
        seen += (f", {at_top / max(below, 1):.3g} times as many as the next lower value, "
                 f"{lower:.6g}, holds ({below}): counts that pile up at a top value, a "
                 "detector saturated or counts clipped")
    if full:
        seen += (f"; {top:.6g} is the full scale of {dtype}: counts above it were clipped "
                 "there or, cast to it (astype), wrapped around modulo "
                 f"{int(np.iinfo(dtype).max) + 1}")
    record["why"] = f"{name}: {seen}"
    return record
