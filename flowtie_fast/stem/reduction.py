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

import numpy as np

from .._cuda import MAX_WEIGHTS
from ..backend import Backend, array_module, check_host_memory, get_backend, is_cupy
from ..errors import InputError, check_count
from ..files import check_hdf5_written
from .detector import (Detector, _to_numpy, check_detector, check_disk, check_read_shape,
                       check_regions, detector_weights, weight_ranges)

__all__ = ["Reduction", "finish_reduction", "reduce_4dstem"]

_NATIVE = (np.uint8, np.uint16, np.uint32, np.int32, np.float32, np.float64)


@dataclass
class Reduction:
    """What one pass over a 4D-STEM dataset gives.

    :func:`reduce_4dstem` makes it; each parameter is kept as the attribute
    of the same name.

    Parameters
    ----------
    virtual : dict of str -> array (Sy, Sx)
        Virtual images (counts summed over each detector region).
    com : array (2, Sy, Sx)
        Centre of mass relative to the detector centre, 1/Å, in scan axes.
    detector : Detector
        The geometry used (with the centre found or given).
    rotation : float, optional
        Detector-to-scan rotation applied, in degrees (default 0).
    flip : bool, optional
        Whether the detector axes were transposed before rotating (default
        False).
    regions : dict of str -> (float, float), optional
        The virtual detectors, ``name -> (inner, outer)`` in mrad (default
        empty).
    saturation : dict or None, optional
        Whether the dataset's sampled patterns pile up at a top value
        (:func:`~flowtie_fast.stem.detector.saturation`'s record), as
        :func:`~flowtie_fast.stem.focal.reduce_triplet` sets it; None where
        not checked (default: reductions made elsewhere).
    peaks : array (2, Sy, Sx) of float32, optional
        Each pattern's largest and smallest pixel value, in the data's units,
        as ``reduce_4dstem(..., peaks=True)`` measures them (default None:
        not measured).
    disk_fills : bool, optional
        Whether the bright-field disk fills the detector, no dark field
        around it (:func:`~flowtie_fast.stem.detector.disk_fills_detector`,
        as :func:`~flowtie_fast.stem.focal.reduce_triplet` sets it; default
        False: reductions made elsewhere): then the centre of mass does not
        measure the beam's deflection.
    """

    virtual: dict
    com: object
    detector: Detector
    rotation: float = 0.0
    flip: bool = False
    regions: dict = field(default_factory=dict)
    saturation: dict | None = None
    peaks: object = None
    disk_fills: bool = False

    @property
    def gradient(self):
        """Phase gradient ``2π · COM`` in rad/Å, (2, Sy, Sx)."""
        return 2 * np.pi * self.com


_WEIGHT_CACHE: dict = {}
_WEIGHT_CACHE_SIZE = 8
_WEIGHT_LOCK = threading.Lock()


def _weights_on(be: Backend, detector: Detector, regions: dict, com_radius_mrad):
    """``detector_weights`` and ``weight_ranges`` on the backend's device, kept
    for the last few geometries: an acquisition loop reduces scan after scan
    with the same detector, and computing them again would cost a noticeable
    part of a GPU pass over the patterns."""
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
    LiberTEM partition (:mod:`flowtie_fast.stem.live`).

    Parameters
    ----------
    frames : array (..., Ky, Kx)
        Patterns in host memory (anything ``np.asarray`` reads), any real
        dtype; the leading axes are flattened to N.
    W : ndarray (Q, Ky*Kx) of float32
        Weight rows (:func:`~flowtie_fast.stem.detector.detector_weights`).
    lo, hi : ndarray (Q,) of int64
        The flat pixel range of each row's non-zero weights
        (:func:`~flowtie_fast.stem.detector.weight_ranges`).

    Returns
    -------
    ndarray (N, Q) of float32
        The sum of each pattern's pixels weighted by each row.

    Raises
    ------
    InputError
        Where the patterns are not real numbers, or not of the weights'
        detector size (``Ky*Kx`` pixels: the kernel would read past them), or
        the weights and ranges are not as described above.
    """
    be = get_backend("cpu")
    be.prepare()
    a = np.asarray(frames)
    _check_frames_weights(a, W, lo, hi)
    flat = _native(a, np).reshape(-1, a.shape[-2] * a.shape[-1])
    out = np.empty((flat.shape[0], W.shape[0]), np.float32)
    be.kernels.reduce_patterns(flat, W, lo, hi, out)
    return out


def _check_frames_weights(a, W, lo, hi) -> None:
    """What the kernel reads without bounds checks: patterns (..., Ky, Kx)
    of ``W``'s ``Ky*Kx`` pixels, ``W`` a C-contiguous float32 (Q, Ky*Kx)
    array, ``lo`` and ``hi`` int64 (Q,) within ``[0, Ky*Kx]``;
    :class:`InputError` naming the argument otherwise. O(Q): no pass over
    the patterns or the weights."""
    if not (isinstance(W, np.ndarray) and W.ndim == 2 and W.dtype == np.float32
            and W.flags.c_contiguous):
        raise InputError(f"W: expected a C-contiguous float32 array (rows, detector pixels) "
                         f"(detector_weights), got {type(W).__name__} "
                         f"{getattr(W, 'dtype', '')} {getattr(W, 'shape', '')}")
    q, k = W.shape
    if a.ndim < 2 or a.shape[-2] * a.shape[-1] != k:
        raise InputError(f"frames: expected patterns (..., Ky, Kx) of {k} pixels (the "
                         f"weights' detector), got shape {a.shape}")
    for name, r in (("lo", lo), ("hi", hi)):
        if not (isinstance(r, np.ndarray) and r.dtype == np.int64 and r.shape == (q,)):
            raise InputError(f"{name}: expected {q} int64 pixel indices (weight_ranges), got "
                             f"{type(r).__name__} {getattr(r, 'dtype', '')} "
                             f"{getattr(r, 'shape', '')}")
    check_pixel_ranges(lo, hi, k)


def check_pixel_ranges(lo, hi, k: int) -> None:
    """Integer pixel ranges ``[lo, hi)`` (Q,) checked to lie within the ``k``
    pixels of a detector, ``0 <= lo <= hi <= k``: the reduction kernel reads
    them without bounds checks. :class:`InputError` naming ``lo, hi`` and the
    first row outside."""
    bad = (lo < 0) | (hi > k) | (lo > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"lo, hi: expected 0 <= lo <= hi <= {k} (the detector pixels of "
                         f"the weights), got lo={int(lo[i])}, hi={int(hi[i])} for row {i}")


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


def check_4d(name, data):
    """Validate a 4D-STEM array-like (NumPy, CuPy, memmap, HDF5, dask)."""
    shape = getattr(data, "shape", None)
    dtype = getattr(data, "dtype", None)
    if shape is None or dtype is None or not hasattr(data, "__getitem__"):
        raise InputError(f"{name}: expected a 4-D array (Sy, Sx, Ky, Kx), got {type(data)}")
    if len(shape) != 4:
        raise InputError(f"{name}: expected a 4-D array (Sy, Sx, Ky, Kx), got shape "
                         f"{tuple(shape)}")
    if any(isinstance(n, float) and not math.isfinite(n) for n in shape):  # dask, NaN sizes
        raise InputError(f"{name}: expected a dask array of known chunk sizes, got shape "
                         f"{tuple(shape)} (call {name}.compute_chunk_sizes() first)")
    if min(shape) < 2:
        raise InputError(f"{name}: expected at least 2 along every axis, got {tuple(shape)}")
    if np.dtype(dtype).kind not in "uif":
        hint = " (cast 1-bit frames to uint8)" if np.dtype(dtype).kind == "b" else ""
        raise InputError(f"{name}: expected real detector counts, got dtype {dtype}{hint}")
    check_hdf5_written(name, data)  # an HDF5 dataset never or partly written
    return data


def reduce_4dstem(data, detector: Detector, regions: dict, *, com_radius_mrad=None,
                  backend="auto", chunk_bytes: int = 64 << 20, name: str = "data",
                  peaks: bool = False):
    """One pass over a 4D-STEM dataset: virtual images and centre of mass.

    Parameters
    ----------
    data : array-like (Sy, Sx, Ky, Kx)
        Any real dtype; NumPy, CuPy, ``np.memmap``, ``h5py.Dataset`` or dask.
    detector : Detector
        Geometry (centre included).
    regions : dict of name -> (inner_mrad, outer_mrad)
        Virtual detectors: annuli in mrad.
    com_radius_mrad : float, optional
        Limit of the centre of mass in mrad (default: whole detector).
    backend : {"auto", "cpu", "gpu"} or Backend
        Where to reduce (default "auto": the GPU for a CuPy array or where a
        device answers).
    chunk_bytes : int
        Upper bound of the raw data read or copied at once, in bytes (default
        64 MiB; whole scan rows, at least one): from a file, to the device, or
        into a type the kernels read. A device array the kernels read as it is
        goes in one launch.
    name : str
        How messages name ``data`` (default "data").
    peaks : bool
        Whether to measure each pattern's largest and smallest pixel value as
        well (``Reduction.peaks``; default False). They are read from the
        chunks already in memory, one more pass over each (the CPU kernel
        ``pattern_extremes``, CuPy's ``max`` and ``min`` on the GPU); not
        measured for dask arrays reduced on the CPU.

    Returns
    -------
    Reduction
        Before any rotation (detector axes).

    Raises
    ------
    InputError
        Naming ``name`` for data that are not a real 4-D array of at least 2
        along every axis, or an ``h5py.Dataset`` never or only partly written
        (HDF5 would read what is missing as its fill value); naming the
        argument for a bad detector, region, radius or ``chunk_bytes``.
    """
    check_4d(name, data)
    chunk_bytes = check_count("chunk_bytes", chunk_bytes, 1)
    sy, sx, ky, kx = (int(s) for s in data.shape)
    check_detector(detector)
    check_regions(regions)
    if com_radius_mrad is not None:
        com_radius_mrad = check_disk("com_radius", com_radius_mrad, detector)
    if (ky, kx) != tuple(detector.shape):
        raise InputError(f"{name}: detector shape {(ky, kx)} differs from {detector.shape}")
    be: Backend = get_backend(backend, like=data)
    be.prepare()
    W, lo, hi, combine = _weights_on(be, detector, regions, com_radius_mrad)
    extremes = None
    if _is_dask(data) and not be.is_gpu:
        sums = _reduce_dask(data, W, lo, hi)  # on the workers, chunk by chunk
    else:
        sums, extremes = _reduce_streamed(data, W, lo, hi, be, chunk_bytes, name, peaks)
    try:
        reduction = finish_reduction(sums, combine, detector, regions, name)
    except InputError as exc:
        _explain_overflow(name, data, sums, exc)
        raise
    if extremes is not None:
        reduction.peaks = extremes
    return reduction


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


def _reduce_streamed(data, W, lo, hi, be: Backend, chunk_bytes, name: str = "data",
                     peaks: bool = False):
    """The weighted sums (Sy, Sx, Q), reading whole scan rows of at most
    ``chunk_bytes`` at a time, and, with ``peaks``, each pattern's largest and
    smallest pixel value (2, Sy, Sx) float32 (else None)."""
    sy, sx, ky, kx = (int(s) for s in data.shape)
    xp = be.xp
    out = xp.empty((sy * sx, W.shape[0]), np.float32)
    extremes = xp.empty((2, sy * sx), np.float32) if peaks else None
    row_bytes = sx * ky * kx * np.dtype(data.dtype).itemsize
    rows = max(1, int(chunk_bytes // max(row_bytes, 1)))
    if is_cupy(data) and np.dtype(data.dtype) in _NATIVE and data.flags.c_contiguous:
        # Nothing to copy: one launch keeps every SM busy (a 64 MB chunk of 128²
        # patterns is 2048 of them, 64 blocks: fewer than an H100 has SMs).
        rows = sy
    for i0 in range(0, sy, rows):
        i1 = min(sy, i0 + rows)
        chunk = data[i0:i1]
        if not is_cupy(chunk):
            chunk = _to_numpy(chunk)  # memory map, HDF5 or dask: read this chunk only
        check_read_shape(name, data, chunk, (i1 - i0, sx, ky, kx), f"scan rows {i0}:{i1}")
        if be.is_gpu:
            chunk = be.asarray(chunk)
        chunk = _native(chunk, xp).reshape((i1 - i0) * sx, ky * kx)
        be.kernels.reduce_patterns(chunk, W, lo, hi, out[i0 * sx:i1 * sx])
        if peaks:
            part = extremes[:, i0 * sx:i1 * sx]
            if be.is_gpu:
                part[0], part[1] = chunk.max(axis=1), chunk.min(axis=1)
            else:  # one pass (two for NumPy's reductions)
                be.kernels.pattern_extremes(chunk, part)
    return out.reshape(sy, sx, -1), None if extremes is None else extremes.reshape(2, sy, sx)


def finish_reduction(sums, combine, detector: Detector, regions: dict, name: str = "data"):
    """Virtual images and centre of mass from the weighted sums of one pass.

    Parameters
    ----------
    sums : array (Sy, Sx, Q) float32
        The sums of the weight rows of :func:`detector_weights` (NumPy or CuPy),
        from ``reduce_4dstem`` or a LiberTEM UDF (:mod:`flowtie_fast.stem.live`).
    combine : ndarray (R + 3, Q)
        The second return value of :func:`detector_weights`.
    detector : Detector
        The geometry given to :func:`detector_weights`.
    regions : dict of str -> (float, float)
        The R regions given to :func:`detector_weights`, ``name -> (inner,
        outer)`` in mrad, in the same order.
    name : str, optional
        How messages name the data (default "data").

    Returns
    -------
    Reduction
        The virtual images (one per region) and the centre of mass (1/Å,
        detector axes; the bare moments where a pattern's centre-of-mass
        total is not positive), float32 for float32 sums, on the device of
        ``sums``.

    Raises
    ------
    InputError
        Where a sum is NaN or Inf (the data held NaN or Inf), naming the
        first scan position.
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


def check_reduction_memory(name: str, data, chunk_bytes: int) -> None:
    """Refuse, before reading, a dataset whose patterns are too large for the
    reduction's least memory: one scan row (or ``chunk_bytes``), the sampled
    patterns for the mean and the detector weights; :class:`InputError`
    naming ``name`` with the figures."""
    sy, sx, ky, kx = (int(s) for s in data.shape)
    itemsize = np.dtype(data.dtype).itemsize
    pixels = ky * kx
    row = sx * pixels * max(itemsize, 4)  # read, then in a type the kernels read
    sample = min(256, sy * sx) * pixels * (itemsize + 8)  # read, then as float64
    weights = pixels * (MAX_WEIGHTS * 4 + 64)  # weight rows, angles, masks, k grids
    need = max(row, min(chunk_bytes, sy * sx * pixels * itemsize)) + sample + weights
    check_host_memory(name, f"a {tuple(data.shape)} dataset ({np.dtype(data.dtype)})", need,
                      "its reduction (one scan row at a time)")


