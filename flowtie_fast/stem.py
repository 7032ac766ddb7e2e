"""4D-STEM: from (Sy, Sx, Ky, Kx) patterns to virtual images and the centre of mass.

One pass over the data computes every virtual image (bright-field disk,
annulus, whole detector) and the centre-of-mass moments together: each is a
weighted sum of a pattern's pixels, so the pass is one small matrix product
``patterns (P, K) @ weights (Q, K).T`` done by the ``reduce_patterns`` kernel
(CUDA, or its Numba twin). The data stream through in chunks of scan rows, so
memory maps and HDF5 datasets larger than memory need only one chunk in
memory at a time. A dask array is reduced where its chunks live: each chunk
of scan positions becomes its few sums on a dask worker (a
``dask.distributed`` cluster when a client is active), and only those travel.

Conventions (docs/conventions.md): detector axis i is parallel to scan axis i unless a
rotation is given; the centre of mass in 1/Å times 2π is the phase gradient
in rad/Å (thin object, blurred by the probe).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from numbers import Real

import numpy as np

from ._cuda import MAX_WEIGHTS  # weight rows one pass computes (the CUDA tile)
from .backend import Backend, array_module, get_backend, is_cupy
from .errors import InputError, check_count, check_positive
from .physics import wavelength

__all__ = ["Detector", "DetectorWarning", "Reduction", "calibrate_rotation", "find_center",
           "finish_reduction", "reduce_4dstem", "triplet_geometry"]

_NATIVE = (np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64)


class DetectorWarning(UserWarning):
    """The detector does not record what the triplet's geometry measures: the
    bright-field disk fills it, with no dark field around it
    (:func:`triplet_geometry`)."""


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
    """

    shape: tuple
    k_sampling: tuple
    energy: float
    center: tuple

    def k(self):
        """Reciprocal coordinates (ky, kx) in 1/Å relative to the centre, each (Ky, Kx)."""
        iy = (np.arange(self.shape[0]) - self.center[0]) * self.k_sampling[0]
        ix = (np.arange(self.shape[1]) - self.center[1]) * self.k_sampling[1]
        return np.meshgrid(iy, ix, indexing="ij")

    def angle_mrad(self):
        """Scattering angle of each pixel in mrad (small-angle: λ |k|)."""
        ky, kx = self.k()
        return np.hypot(ky, kx) * wavelength(self.energy) * 1e3


def mean_pattern(patterns):
    """The mean (Ky, Kx) of one pattern or a stack of them, float64, as a NumPy
    array (a CuPy stack is averaged on the device; only the mean comes back)."""
    if is_cupy(patterns):
        m = patterns.astype(np.float64, copy=False)
        return m.reshape(-1, *m.shape[-2:]).mean(axis=0).get()
    m = np.asarray(patterns, dtype=np.float64)
    return m.reshape(-1, *m.shape[-2:]).mean(axis=0)


def _bright_field(m):
    """Pixels of a mean pattern brighter than half its brightest: the disk."""
    return m >= 0.5 * m.max()


def find_center(patterns) -> tuple:
    """Centre of the bright-field disk of a mean pattern, in pixels.

    The centre of mass of the pixels brighter than half the brightest one: the
    disk, without the dark-field tails that would pull a plain centre of mass.
    ``patterns``: one mean pattern or a stack to average.
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
    with the area of the pixels brighter than half the brightest."""
    area = np.count_nonzero(_bright_field(mean_pattern(patterns)))
    mrad_per_px = math.sqrt(detector.k_sampling[0] * detector.k_sampling[1]) * \
        wavelength(detector.energy) * 1e3
    return math.sqrt(area / math.pi) * mrad_per_px


def sample_patterns(data, count: int = 256):
    """Up to ``count`` patterns spread evenly over the scan (cheap: no full pass).

    Returns a NumPy stack (N, Ky, Kx), or for CuPy data a CuPy stack gathered in
    one indexing call on the device (:func:`mean_pattern` takes either)."""
    sy, sx = data.shape[:2]
    rows = np.unique(np.linspace(0, sy - 1, min(sy, 16)).astype(int))
    per_row = max(1, count // len(rows))
    cols = np.unique(np.linspace(0, sx - 1, min(sx, per_row)).astype(int))
    if is_cupy(data):
        xp = array_module(data)
        picked = data[xp.asarray(rows)[:, None], xp.asarray(cols)[None, :]]
        return picked.reshape(-1, *data.shape[2:])
    # Read only the sampled patterns (a whole scan row of a large dataset is big).
    return np.concatenate([_to_numpy(data[int(r), cols]) for r in rows], axis=0)


def _to_numpy(x):
    if is_cupy(x):
        return x.get()
    if hasattr(x, "compute") and not isinstance(x, np.ndarray):
        x = x.compute()
    return np.asarray(x)


@dataclass
class Reduction:
    """What one pass over a 4D-STEM dataset gives.

    Attributes
    ----------
    virtual : dict of str -> array (Sy, Sx)
        Virtual images (counts summed over each detector region).
    com : array (2, Sy, Sx)
        Centre of mass relative to the detector centre, 1/Å, in scan axes.
    detector : Detector
        The geometry used (with the centre found or given).
    rotation : float
        Detector-to-scan rotation applied, degrees; ``flip`` the transpose.
    """

    virtual: dict
    com: object
    detector: Detector
    rotation: float = 0.0
    flip: bool = False
    regions: dict = field(default_factory=dict)

    @property
    def gradient(self):
        """Phase gradient ``2π · COM`` in rad/Å, (2, Sy, Sx)."""
        return 2 * np.pi * self.com


def detector_weights(detector: Detector, regions: dict, com_radius_mrad=None):
    """Weight rows of the one-pass reduction, and how to combine their sums.

    The regions are cut into disjoint annular bins at every radius any of them
    (or the centre-of-mass limit) uses; the kernel sums each bin once, and each
    virtual image is a sum of bins. With the two centre-of-mass moments that
    makes fewer rows than one per region (6 instead of 8 for the defaults of
    ``from_4dstem``): the reduction's cost is proportional to the rows.

    Parameters
    ----------
    regions : dict of name -> (inner_mrad, outer_mrad)
        Annular regions (inner 0: a disk; outer ``inf``: to the edge).
    com_radius_mrad : float, optional
        Limit the centre of mass to this radius (default: whole detector).

    Returns
    -------
    W : float32 array (Q, Ky*Kx)
        Rows: the bins, then ``mask·ky`` and ``mask·kx`` of the centre of mass.
    combine : float64 array (len(regions) + 3, Q)
        Row sums to outputs: the regions, then the COM total, ky and kx moments.
    """
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


def weight_ranges(W):
    """For each weight row, the flat pixel range [lo, hi) holding all its
    non-zero weights (int64): the kernel reads only that range."""
    nz = W != 0
    any_nz = nz.any(axis=1)
    lo = np.where(any_nz, nz.argmax(axis=1), 0)
    hi = np.where(any_nz, W.shape[1] - nz[:, ::-1].argmax(axis=1), 0)
    return lo.astype(np.int64), hi.astype(np.int64)


_WEIGHT_CACHE: dict = {}
_WEIGHT_CACHE_SIZE = 8
_WEIGHT_LOCK = threading.Lock()


def _weights_on(be: Backend, detector: Detector, regions: dict, com_radius_mrad):
    """``detector_weights`` and ``weight_ranges`` on the backend's device, kept
    for the last few geometries: an acquisition loop reduces scan after scan
    with the same detector (computing them took 0.34 ms for 128² pixels on the
    2-core VM; a GPU pass of 128² patterns is about 1 ms)."""
    try:
        device = None
        if be.is_gpu:  # one backend object serves every GPU: the arrays live on one
            import cupy

            device = cupy.cuda.Device().id
        key = (be, device, tuple(int(n) for n in detector.shape),
               np.asarray(detector.k_sampling, float).tobytes(), float(detector.energy),
               np.asarray(detector.center, float).tobytes(),
               tuple((n, float(a), float(b)) for n, (a, b) in regions.items()),
               None if com_radius_mrad is None else float(com_radius_mrad))
    except (TypeError, ValueError):  # detector_weights says what is wrong
        key = None
    with _WEIGHT_LOCK:
        hit = _WEIGHT_CACHE.pop(key, None) if key is not None else None
        if hit is not None:
            _WEIGHT_CACHE[key] = hit  # the most recently used goes last
    if hit is None:
        W, combine = detector_weights(detector, regions, com_radius_mrad)
        lo, hi = weight_ranges(W)
        combine.flags.writeable = False  # shared by every call with this geometry
        hit = (be.asarray(W), be.asarray(lo), be.asarray(hi), combine)
        for a in hit[:3]:
            if isinstance(a, np.ndarray):
                a.flags.writeable = False
        if key is not None:
            with _WEIGHT_LOCK:
                if len(_WEIGHT_CACHE) >= _WEIGHT_CACHE_SIZE:
                    _WEIGHT_CACHE.pop(next(iter(_WEIGHT_CACHE)))  # the least recently used
                _WEIGHT_CACHE[key] = hit
    return hit


def _native(chunk, xp):
    """The chunk in a dtype the kernel reads directly (others are converted)."""
    dt = np.dtype(chunk.dtype)
    if dt in _NATIVE:
        return xp.ascontiguousarray(chunk)
    if dt.kind == "b" or (dt.kind == "u" and dt.itemsize < 4):
        return xp.ascontiguousarray(chunk, dtype=np.uint16)
    if dt.kind in "ui":
        return xp.ascontiguousarray(chunk, dtype=np.float64 if dt.itemsize > 4 else np.int32)
    if dt.kind == "f":
        return xp.ascontiguousarray(chunk, dtype=np.float32 if dt.itemsize <= 4 else np.float64)
    raise InputError(f"data: expected real detector counts, got dtype {dt}")


def _is_dask(data) -> bool:
    return type(data).__module__.split(".")[0] == "dask" and hasattr(data, "map_blocks")


def reduce_frames(frames, W, lo, hi):
    """Weighted sums (N, Q) float32 of the N whole patterns of ``frames`` (..., Ky,
    Kx) in host memory, by the CPU kernel: a dask chunk on a worker or a
    LiberTEM partition (:mod:`flowtie_fast.live`)."""
    be = get_backend("cpu")
    be.prepare()
    a = np.asarray(frames)
    flat = _native(a, np).reshape(-1, a.shape[-2] * a.shape[-1])
    out = np.empty((flat.shape[0], W.shape[0]), np.float32)
    be.kernels.reduce_patterns(flat, W, lo, hi, out)
    return out


def _reduce_block(block, W, lo, hi):
    """One dask chunk (sy, sx, Ky, Kx) -> its weighted sums (sy, sx, Q), on a worker."""
    return reduce_frames(block, W, lo, hi).reshape(block.shape[0], block.shape[1], -1)


def _reduce_dask(data, W, lo, hi):
    """The reduction as a dask graph over scan chunks (each chunk holds whole
    patterns); computed by the active scheduler, distributed or local."""
    data = data.rechunk({2: -1, 3: -1})
    sums = data.map_blocks(_reduce_block, W, lo, hi, drop_axis=(2, 3), new_axis=2,
                           chunks=data.chunks[:2] + ((W.shape[0],),), dtype=np.float32)
    return np.asarray(sums.compute())


def check_disk(name: str, radius, detector: Detector) -> float:
    """A detector disk's radius in mrad: positive, in range and at least half a
    detector pixel (a smaller disk holds one pixel or none)."""
    radius = check_positive(name, radius)
    pixel_mrad = 1e3 * wavelength(detector.energy) * min(detector.k_sampling)
    if radius < 0.5 * pixel_mrad:
        raise InputError(f"{name}: {radius:g} mrad is smaller than half a detector pixel "
                         f"({pixel_mrad:g} mrad): the disk would hold one pixel or none")
    return radius


def check_4d(name, data):
    """Validate a 4D-STEM array-like (NumPy, CuPy, memmap, HDF5, dask)."""
    shape = getattr(data, "shape", None)
    dtype = getattr(data, "dtype", None)
    if shape is None or dtype is None:
        raise InputError(f"{name}: expected a 4-D array (Sy, Sx, Ky, Kx), got {type(data)}")
    if len(shape) != 4:
        raise InputError(f"{name}: expected a 4-D array (Sy, Sx, Ky, Kx), got shape "
                         f"{tuple(shape)}")
    if min(shape) < 2:
        raise InputError(f"{name}: expected at least 2 along every axis, got {tuple(shape)}")
    if np.dtype(dtype).kind not in "uif":
        raise InputError(f"{name}: expected real detector counts, got dtype {dtype}")
    return data


def reduce_4dstem(data, detector: Detector, regions: dict, *, com_radius_mrad=None,
                  backend="auto", chunk_bytes: int = 64 << 20, name: str = "data"):
    """One pass over a 4D-STEM dataset: virtual images and centre of mass.

    Parameters
    ----------
    data : array-like (Sy, Sx, Ky, Kx)
        Any real dtype; NumPy, CuPy, ``np.memmap``, ``h5py.Dataset`` or dask.
    detector : Detector
        Geometry (centre included).
    regions : dict of name -> (inner_mrad, outer_mrad)
        Virtual detectors.
    com_radius_mrad : float, optional
        Limit of the centre of mass (default: whole detector).
    backend : {"auto", "cpu", "gpu"} or Backend
    chunk_bytes : int
        Upper bound of the raw data read or copied at once (whole scan rows, at
        least one): from a file, to the device, or into a type the kernels
        read. A device array the kernels read as it is goes in one launch.

    Returns
    -------
    Reduction
        Before any rotation (detector axes).
    """
    check_4d(name, data)
    chunk_bytes = check_count("chunk_bytes", chunk_bytes, 1)
    sy, sx, ky, kx = (int(s) for s in data.shape)
    if com_radius_mrad is not None:
        com_radius_mrad = check_disk("com_radius", com_radius_mrad, detector)
    if (ky, kx) != tuple(detector.shape):
        raise InputError(f"{name}: detector shape {(ky, kx)} differs from {detector.shape}")
    be: Backend = get_backend(backend, like=data)
    be.prepare()
    W, lo, hi, combine = _weights_on(be, detector, regions, com_radius_mrad)
    if _is_dask(data) and not be.is_gpu:
        sums = _reduce_dask(data, W, lo, hi)  # on the workers, chunk by chunk
    else:
        sums = _reduce_streamed(data, W, lo, hi, be, chunk_bytes)
    try:
        return finish_reduction(sums, combine, detector, regions, name)
    except InputError as exc:
        _explain_overflow(name, data, sums, exc)
        raise


def _explain_overflow(name: str, data, sums, exc) -> None:
    """Where the sums of a scan position are NaN or Inf but its pattern is
    finite, the float32 reduction overflowed: say so (the rare path of a
    refusal; one pattern is read)."""
    if "NaN or Inf" not in str(exc):
        return
    xp = array_module(sums)
    sy, sx, q = sums.shape
    bad = ~xp.isfinite(sums.reshape(sy * sx, q)).all(axis=1)
    i, j = divmod(int(xp.argmax(bad)), sx)
    try:
        pattern = _to_numpy(data[i, j])
    except Exception:  # noqa: BLE001  the refusal as it stands is right
        return
    if pattern.dtype.kind == "f" and np.isfinite(pattern).all():
        peak = float(np.abs(pattern.astype(np.float64)).max())
        factor = 10.0 ** -math.ceil(math.log10(max(peak, 1.0) / 1e30))
        raise InputError(f"{name}: values up to {peak:g} (at scan position {(i, j)}) are too "
                         "large for the float32 reduction, whose sums overflow; rescale the "
                         f"data (e.g. multiply by {factor:g})") from exc


def _reduce_streamed(data, W, lo, hi, be: Backend, chunk_bytes):
    """The weighted sums (Sy, Sx, Q), reading whole scan rows of at most
    ``chunk_bytes`` at a time."""
    sy, sx, ky, kx = (int(s) for s in data.shape)
    xp = be.xp
    out = xp.empty((sy * sx, W.shape[0]), np.float32)
    row_bytes = sx * ky * kx * np.dtype(data.dtype).itemsize
    rows = max(1, int(chunk_bytes // max(row_bytes, 1)))
    if is_cupy(data) and np.dtype(data.dtype) in _NATIVE and data.flags.c_contiguous:
        # Nothing to copy: one launch keeps every SM busy (a 64 MB chunk of 128²
        # patterns is 2048 of them, 64 blocks for the H100's 132 SMs).
        rows = sy
    for i0 in range(0, sy, rows):
        i1 = min(sy, i0 + rows)
        chunk = data[i0:i1]
        if not is_cupy(chunk):
            chunk = _to_numpy(chunk)  # memory map, HDF5 or dask: read this chunk only
        if be.is_gpu:
            chunk = be.asarray(chunk)
        chunk = _native(chunk, xp).reshape((i1 - i0) * sx, ky * kx)
        be.kernels.reduce_patterns(chunk, W, lo, hi, out[i0 * sx:i1 * sx])
    return out.reshape(sy, sx, -1)


def finish_reduction(sums, combine, detector: Detector, regions: dict, name: str = "data"):
    """Virtual images and centre of mass from the weighted sums of one pass.

    Parameters
    ----------
    sums : array (Sy, Sx, Q) float32
        The sums of the weight rows of :func:`detector_weights` (NumPy or CuPy),
        from ``reduce_4dstem`` or a LiberTEM UDF (:mod:`flowtie_fast.live`).
    combine : ndarray (R + 3, Q)
        The second return value of :func:`detector_weights`.
    detector, regions
        As given to :func:`detector_weights`.

    Returns
    -------
    Reduction
    """
    xp = array_module(sums)
    sy, sx, q = sums.shape
    # A NaN or Inf in any pixel an output reads (inside its weight row's range)
    # makes that sum NaN (even where its weight is 0: 0 * NaN is NaN), so checking
    # the small output checks the data that matters without a second pass;
    # pixels outside every row's range are not read.
    bad = ~xp.isfinite(sums.reshape(sy * sx, q)).all(axis=1)
    if bool(bad.any()):
        first = int(xp.argmax(bad))
        raise InputError(f"{name}: contains NaN or Inf (first at scan position "
                         f"{divmod(first, sx)})")
    out = sums @ xp.asarray(combine.T.astype(np.float32))  # bins -> regions, COM moments
    virtual = {n: xp.ascontiguousarray(out[..., i]) for i, n in enumerate(regions)}
    total = out[..., -3]
    safe = xp.where(total > 0, total, 1)
    com = xp.stack([out[..., -2] / safe, out[..., -1] / safe]).astype(np.float32)
    return Reduction(virtual, com, detector, regions=dict(regions))


def disk_fills_detector(mean) -> tuple:
    """Whether the bright-field disk of a mean pattern reaches the detector's
    edge along so much of it that there is no dark field around the disk.

    The disk (pixels brighter than half the brightest, as
    :func:`bf_radius_mrad` measures it) fills the detector when at least as
    many of the detector's edge pixels are in it as its radius holds pixels:
    a disk cut along such a chord lies an eighth of its radius or more
    beyond the edge, and the dark field around it is gone or cut short. A
    disk that only touches an edge (a chord shorter than its radius: its
    radius measured within about 1 %, its centre within 3 % of it) is not. A flat mean pattern (a detector all
    bright field, or patterns without a disk) fills it too.

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


def triplet_geometry(mean, k_sampling, energy, center=None, bf_radius=None, name="zero"):
    """Detector and virtual-detector regions for a focal triplet from the mean
    in-focus pattern.

    Parameters
    ----------
    mean : ndarray (Ky, Kx)
        Mean pattern (:func:`mean_pattern`).
    k_sampling : (float, float)
        1/Å per detector pixel.
    energy : float
        eV.
    center : (float, float), optional
        Detector centre in pixels (default: :func:`find_center`).
    bf_radius : float, optional
        Radius of the "bf" disk in mrad (default a quarter of the measured
        bright-field disk).
    name : str
        The data the mean pattern comes from, named in the warning.

    Returns
    -------
    detector : Detector
    regions : dict
        "bf", "bf-full", "abf", "df", "whole" as (inner, outer) mrad.

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
    """
    center = find_center(mean) if center is None else check_center(center)
    if not all(math.isfinite(c) and 0 <= c <= n - 1 for c, n in zip(center, mean.shape)):
        raise InputError(f"center: expected (row, column) in detector pixels on the "
                         f"{tuple(mean.shape)} detector, got {center!r}")
    detector = Detector(tuple(mean.shape), k_sampling, energy, center)
    disk = bf_radius_mrad(mean, detector)
    bf_radius = 0.25 * disk if bf_radius is None else check_disk("bf_radius", bf_radius,
                                                                   detector)
    fills, on_edge, edge = disk_fills_detector(mean)
    if fills:
        import warnings

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
            "detector)", DetectorWarning, stacklevel=3)
        return detector, {"bf": (0.0, bf_radius), "whole": (0.0, np.inf)}
    regions = {"bf": (0.0, bf_radius), "bf-full": (0.0, disk), "abf": (0.5 * disk, disk),
               "df": (disk, np.inf), "whole": (0.0, np.inf)}
    return detector, regions


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
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (Real, np.integer, np.floating)):
            raise bad
        try:
            out.append(float(c))
        except (OverflowError, ValueError, TypeError) as exc:
            raise bad from exc
    return tuple(out)


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


_F32 = np.finfo(np.float32)


def check_float32_range(name: str, patterns, detector: Detector) -> None:
    """Refuse patterns whose values the float32 reduction cannot sum: so large
    that a pattern's sum (or its centre-of-mass moment) overflows, or so small
    (below float32's smallest normal number) that the sums underflow to zero,
    which would read as a dropped frame. ``patterns``: a sample (N, Ky, Kx) of
    the dataset (:func:`sample_patterns`), for data of a wider dtype than
    float32; :class:`InputError` naming ``name`` with the factor to rescale by."""
    a = _to_numpy(patterns)
    if a.dtype.kind != "f" or a.dtype.itemsize <= 4 or a.size == 0:
        return  # float32 and narrower, integers up to 64 bits: within float32's range
    a = np.abs(a.astype(np.float64, copy=False))
    with np.errstate(over="ignore", invalid="ignore"):
        peak = float(a.max())
        if not math.isfinite(peak):
            return  # NaN or Inf: refused by the reduction, naming the scan position
        k_max = max(1.0, float(np.max(np.abs(np.concatenate([np.ravel(k) for k in
                                                                 detector.k()])))))
        sums = float(a.reshape(a.shape[0], -1).sum(axis=1).max()) * k_max
    if sums > 0.5 * float(_F32.max):
        factor = 10.0 ** -math.ceil(math.log10(sums / 1e30))
        raise InputError(f"{name}: pattern values up to {peak:g} (sums up to {sums:g}) are too "
                         "large for the float32 reduction, whose sums would overflow; rescale "
                         f"the data (e.g. multiply by {factor:g})")
    if 0 < peak < float(_F32.tiny):
        factor = 10.0 ** math.ceil(math.log10(1.0 / peak))
        raise InputError(f"{name}: pattern values of at most {peak:g} are too small for the "
                         f"float32 reduction (below {float(_F32.tiny):.3g}, they sum to zero); "
                         f"rescale the data (e.g. multiply by {factor:g})")


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
        raise InputError(f"bf_radius: the 'bf' disk of {outer:.3g} mrad ({how}) holds no "
                         f"detector pixel around the centre {tuple(detector.center)} (the "
                         f"nearest lies at {nearest:.3g} mrad); give a larger one, e.g. "
                         f"bf_radius={hint}")
    raise InputError(f"virtual: the {name!r} region ({inner:.3g} to {outer:.3g} mrad) holds no "
                     "detector pixel; choose another virtual image")


def check_reduction_memory(name: str, data, chunk_bytes: int) -> None:
    """Refuse, before reading, a dataset whose patterns are too large for the
    reduction's least memory: one scan row (or ``chunk_bytes``), the sampled
    patterns for the mean and the detector weights; :class:`InputError`
    naming ``name`` with the figures."""
    from .backend import check_host_memory

    sy, sx, ky, kx = (int(s) for s in data.shape)
    itemsize = np.dtype(data.dtype).itemsize
    pixels = ky * kx
    row = sx * pixels * max(itemsize, 4)  # read, then in a type the kernels read
    sample = min(256, sy * sx) * pixels * (itemsize + 8)  # read, then as float64
    weights = pixels * (MAX_WEIGHTS * 4 + 64)  # weight rows, angles, masks, k grids
    need = max(row, min(chunk_bytes, sy * sx * pixels * itemsize)) + sample + weights
    check_host_memory(name, f"a {tuple(data.shape)} dataset ({np.dtype(data.dtype)})", need,
                      "its reduction (one scan row at a time)")


def rotate_com(com, degrees: float, flip: bool):
    """COM vectors from detector axes to scan axes: optional transpose, then rotation."""
    xp = array_module(com)
    c = com[::-1] if flip else com
    t = math.radians(degrees)
    return xp.stack([math.cos(t) * c[0] - math.sin(t) * c[1],
                     math.sin(t) * c[0] + math.cos(t) * c[1]])


def _curl_energy(com):
    gy, gx = com
    dgx_dy = np.roll(gx, -1, 0) - np.roll(gx, 1, 0)
    dgy_dx = np.roll(gy, -1, 1) - np.roll(gy, 1, 1)
    return float(np.mean((dgx_dy - dgy_dx) ** 2))


def calibrate_rotation(com, reference_gradient=None, step_degrees: float = 1.0):
    """Detector rotation (degrees) and flip that make the COM field curl-free.

    A phase gradient has no curl, so the right rotation minimises the mean
    squared curl (as py4DSTEM and LiberTEM do); a coarse search over 0–180°
    for both handednesses is refined by golden section. The curl cannot tell
    θ from θ + 180°: ``reference_gradient`` (e.g. the gradient of a TIE
    phase, rad/Å) picks the one that agrees with it; without it the answer
    lies in [0, 180).
    """
    com = _to_numpy(com).astype(np.float64)
    best = None
    for flip in (False, True):
        for deg in np.arange(0.0, 180.0, step_degrees):
            e = _curl_energy(rotate_com(com, deg, flip))
            if best is None or e < best[0]:
                best = (e, deg, flip)
    _, deg, flip = best
    lo, hi = deg - step_degrees, deg + step_degrees
    g = (math.sqrt(5) - 1) / 2
    for _ in range(30):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        if _curl_energy(rotate_com(com, a, flip)) < _curl_energy(rotate_com(com, b, flip)):
            hi = b
        else:
            lo = a
    deg = 0.5 * (lo + hi) % 180.0
    if reference_gradient is not None:
        ref = _to_numpy(reference_gradient)
        if float(np.sum(rotate_com(com, deg, flip) * ref)) < 0:
            deg += 180.0
    return deg, flip
