"""LiberTEM: the one-pass 4D-STEM reduction as a UDF, for files and live streams.

LiberTEM runs user-defined functions (UDFs) over the partitions of a dataset
(a file, a memory array, or a detector stream through LiberTEM-live) on its
executors. :class:`ReductionUDF` computes, per scan position, the weighted
sums of :func:`flowtie_fast.stem.detector.detector_weights` (virtual-detector bins and
centre-of-mass moments) with the project's ``reduce_patterns`` kernel: the
Numba twin on CPU workers (LiberTEM's NumPy backend), the CUDA kernel on CUDA
workers (its CuPy backend), where the partition, the weights and the result
buffer stay on the worker's device; :func:`reduce_with_libertem` turns its result into a
:class:`~flowtie_fast.stem.reduction.Reduction`, and :func:`triplet_with_libertem` runs
it over the three datasets of a focal triplet and hands the
:class:`~flowtie_fast.triplet.FocalTriplet` to the solvers.

Needs the optional extra ``live`` (``pip install 'flowtie_fast[live]'``).

Examples
--------
>>> from libertem.api import Context
>>> ctx = Context.make_with("inline")
>>> datasets = [ctx.load("npy", path=p) for p in ("m.npy", "0.npy", "p.npy")]
>>> t = triplet_with_libertem(ctx, datasets, dz=20, scan_step=0.2,
...                           k_sampling=0.05, energy=300e3)
>>> rec = ft.reconstruct(t, method="icom")
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping, Set

import numpy as np

try:
    from libertem.io.dataset.base import DataSet
    from libertem.udf import UDF
    from libertem.udf.sum import SumUDF
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("flowtie_fast.stem.live needs LiberTEM: pip install 'flowtie_fast[live]'"
                      ) from exc

from .._cuda import MAX_WEIGHTS
from ..backend import get_backend, gpu_available
from ..errors import BackendError, InputError, check_positive
from ..triplet import FocalTriplet
from .detector import (VIRTUAL_IMAGES, check_com_radius, check_detector, check_disk,
                       check_region, check_regions, detector_weights, disk_filled,
                       triplet_geometry, weight_ranges)
from .descan import check_descan_mode
from .focal import check_normalize, check_register, holds_counts
from .reduction import (_native, check_float32_range, check_pixel_ranges, finish_reduction,
                        reduce_frames)

__all__ = ["ReductionUDF", "reduce_with_libertem", "triplet_with_libertem"]


class ReductionUDF(UDF):
    """Weighted sums of each frame: ``sums[p, q] = Σ_k W[q, k] frame_p[k]``.

    Its result is ``sums``: a navigation buffer of Q float32 values per scan
    position (the patterns' unit, e.g. counts, times the weights').

    It declares LiberTEM's NumPy and CuPy backends: a CPU worker reduces each
    partition with the Numba kernel, a CUDA worker (its device current, CuPy
    installed) with the CUDA kernel of the GPU :class:`~flowtie_fast.Backend`
    on the partition as LiberTEM hands it (a CuPy array), the weights copied
    to the device once per partition and the sums written into a result
    buffer on the device; LiberTEM copies each partition's sums to the host
    and merges them there. Patterns arrive in the dataset's own dtype
    (uint8/16/32, int32, float32 and float64 are read as they are, others
    converted). Both kernels sum in float32 (in a different order): the
    backends agree to float32 rounding, a relative ~1e-6 for sums of
    non-negative counts. A run restricted to ``backends=("cupy",)`` needs a
    CUDA worker (see :func:`reduce_with_libertem`).

    Parameters
    ----------
    weights : ndarray (Q, Ky*Kx) float32
        Weight rows (:func:`flowtie_fast.stem.detector_weights`).
    lo, hi : ndarray (Q,), optional
        Pixel range of each row's non-zero weights (default: found; LiberTEM
        passes them back when it copies the UDF to its workers): both or
        neither, each range holding its row's non-zero weights.
    """

    def __init__(self, weights, lo=None, hi=None):
        weights = _check_weights(weights)
        if (lo is None) != (hi is None):
            raise InputError(f"lo, hi: expected both or neither, got "
                             f"{'lo' if hi is None else 'hi'} only")
        if lo is None:
            lo, hi = weight_ranges(weights)
        else:
            lo, hi = _check_range(lo, hi, weights)
        super().__init__(weights=weights, lo=lo, hi=hi)

    def _check_detector(self):
        """The weights' pixel count against the dataset's detector, when the
        UDF runs: :class:`InputError` naming ``weights`` with both shapes."""
        sig = tuple(int(n) for n in self.meta.dataset_shape.sig)
        w = self.params.weights
        if int(np.prod(sig)) != w.shape[1]:
            raise InputError(f"weights: shape {tuple(w.shape)} has {w.shape[1]} detector "
                             f"pixels per row, but the dataset's detector is {sig} "
                             f"({int(np.prod(sig))} pixels); expected weights of shape "
                             f"({w.shape[0]}, {int(np.prod(sig))})")

    def preprocess(self):
        """Check the weights against the dataset's detector (LiberTEM's
        interface, before any partition is processed)."""
        self._check_detector()

    def get_backends(self):
        """The array backends the UDF runs on (LiberTEM's interface).

        Returns
        -------
        tuple of str
            ``("numpy", "cupy")``: NumPy arrays on CPU workers, CuPy arrays on
            CUDA workers. LiberTEM's ``cuda`` backend (NumPy arrays on a CUDA
            worker) and the sparse ones are not declared: the kernels read
            dense patterns, and a dataset's sparse tiles are made dense.
        """
        return (self.BACKEND_NUMPY, self.BACKEND_CUPY)

    def get_preferred_input_dtype(self):
        """The dtype LiberTEM hands the patterns in (LiberTEM's interface).

        Returns
        -------
        type
            ``USE_NATIVE_DTYPE``: the dataset's own dtype, which the kernels
            read without a float32 copy (a uint16 partition moves to the
            device in half the bytes).
        """
        return self.USE_NATIVE_DTYPE

    def get_task_data(self):
        """Per-partition data (LiberTEM's interface): on the CuPy backend,
        the weights and their pixel ranges on the worker's device.

        Returns
        -------
        dict
            ``{"W", "lo", "hi"}`` as device arrays on the CuPy backend, empty
            on the NumPy backend (the kernel reads ``self.params``).
        """
        be = _device_backend(self.meta.array_backend)
        if be is None:
            return {}
        p = self.params
        return {"W": be.asarray(p.weights), "lo": be.asarray(p.lo), "hi": be.asarray(p.hi)}

    def get_result_buffers(self):
        """The UDF's result buffers (LiberTEM's interface).

        Returns
        -------
        dict
            ``{"sums": buffer}``: one float32 vector of Q sums per scan
            position, on the device of a CuPy worker (LiberTEM copies each
            partition's buffer to the host before merging).
        """
        self._check_detector()
        q = self.params.weights.shape[0]
        return {"sums": self.buffer(kind="nav", extra_shape=(q,), dtype=np.float32,
                                    where="device")}

    def process_partition(self, partition):
        """All frames of a partition through the reduction kernel.

        Parameters
        ----------
        partition : ndarray or cupy.ndarray (n, Ky, Kx)
            The partition's frames, as LiberTEM passes them (a CuPy array on
            the CuPy backend); the sums go to ``self.results.sums``.
        """
        be = _device_backend(self.meta.array_backend)
        if be is None:
            self.results.sums[:] = reduce_frames(partition, self.params.weights,
                                                 self.params.lo, self.params.hi)
        else:
            t = self.task_data
            _device_sums(be, partition, t.W, t.lo, t.hi, self.results.sums)


def _device_backend(array_backend):
    """The library's GPU backend where LiberTEM hands the UDF CuPy arrays
    (``array_backend`` "cupy": a CUDA worker, its device current), else None
    (the NumPy backend: the CPU kernel)."""
    if array_backend == UDF.BACKEND_CUPY:
        return get_backend("gpu")
    return None


def _device_sums(be, frames, W, lo, hi, out):
    """The weighted sums of a partition's patterns by the backend's kernel.

    Parameters
    ----------
    be : Backend
        The GPU backend (its ``xp``, ``asarray``, ``to_numpy`` and
        ``kernels.reduce_patterns``).
    frames : array (n, Ky, Kx)
        The patterns, any real dtype (moved to the device where they are not
        there; read as they are where the kernel takes their dtype).
    W : array (Q, Ky*Kx) float32
        Weight rows, on the device.
    lo, hi : array (Q,) int64
        The pixel range of each row's non-zero weights, on the device.
    out : array (n, Q) float32
        Where the sums go: written by the kernel where it is a contiguous
        float32 device array and Q fits one launch (``MAX_WEIGHTS`` rows),
        else copied in from launches of at most ``MAX_WEIGHTS`` rows.
    """
    xp = be.xp
    n, (q, k) = int(frames.shape[0]), W.shape
    flat = _native(be.asarray(frames), xp).reshape(n, k)
    on_device = isinstance(out, xp.ndarray)
    whole = on_device and out.dtype == np.float32 and out.flags.c_contiguous
    for q0 in range(0, q, MAX_WEIGHTS):
        q1 = min(q, q0 + MAX_WEIGHTS)
        dst = out if whole and q1 - q0 == q else xp.empty((n, q1 - q0), np.float32)
        be.kernels.reduce_patterns(flat, W[q0:q1], lo[q0:q1], hi[q0:q1], dst)
        if dst is not out:
            out[:, q0:q1] = dst if on_device else be.to_numpy(dst)


def _check_weights(weights):
    """``weights`` as a C-contiguous float32 (Q, Ky*Kx) array of finite real
    numbers; :class:`InputError` naming ``weights`` otherwise."""
    try:
        arr = np.asarray(weights)
    except Exception as exc:  # noqa: BLE001  ragged lists and the like
        raise InputError(f"weights: expected a 2-D array (rows, detector pixels), got "
                         f"{type(weights).__name__}") from exc
    if arr.dtype.kind not in "iuf":
        raise InputError(f"weights: expected a 2-D array of real numbers (rows, detector "
                         f"pixels), got {type(weights).__name__} of dtype {arr.dtype}")
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"weights: expected a non-empty 2-D array (rows, detector pixels: "
                         f"Ky*Kx), got shape {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise InputError(f"weights: expected finite numbers, got "
                         f"{int(np.count_nonzero(~np.isfinite(arr)))} NaN or Inf (or beyond "
                         "float32)")
    return arr


def _check_range(lo, hi, weights):
    """``lo``, ``hi`` as int64 (Q,) pixel ranges with 0 <= lo <= hi <= Ky*Kx,
    each holding its row's non-zero weights."""
    q, k = weights.shape
    out = []
    for name, v in (("lo", lo), ("hi", hi)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu" or a.shape != (q,):
            raise InputError(f"{name}: expected {q} integers (one per weight row), got "
                             f"{a.dtype} of shape {a.shape}")
        out.append(a.astype(np.int64))
    lo, hi = out
    check_pixel_ranges(lo, hi, k)
    need_lo, need_hi = weight_ranges(weights)  # the kernel reads only [lo, hi)
    short = (need_hi > need_lo) & ((lo > need_lo) | (hi < need_hi))
    if short.any():
        i = int(np.argmax(short))
        raise InputError(f"lo, hi: row {i} has non-zero weights outside pixels "
                         f"[{int(lo[i])}, {int(hi[i])}), which the kernel would leave out; "
                         f"expected a range holding [{int(need_lo[i])}, {int(need_hi[i])})")
    return lo, hi


_UDF_BACKENDS = ("numpy", "cupy")


def _check_backends(ctx, backends):
    """``backends`` for ``ctx.run_udf``, refused in one line before any pass
    where :class:`ReductionUDF` cannot run on them here (rather than
    LiberTEM's error from inside a task, or a task that no worker takes).

    Returns
    -------
    tuple of str or None
        The backends (None: LiberTEM's choice, NumPy on CPU workers and CuPy
        on CUDA workers).
    """
    if not callable(getattr(ctx, "run_udf", None)):
        raise InputError(f"ctx: expected a LiberTEM Context (libertem.api.Context."
                         f"make_with(...)), got {type(ctx).__name__}")
    if backends is None:
        return None
    names = (backends,) if isinstance(backends, str) else backends
    try:
        names = tuple(names)
    except TypeError:
        names = None
    if not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"backends: expected None or names of LiberTEM array backends "
                         f"(e.g. ('cupy',)), got {backends!r}")
    if not set(names) & set(_UDF_BACKENDS):
        raise InputError(f"backends: ReductionUDF runs on 'numpy' or 'cupy', got {names!r}")
    if "numpy" in names:
        return names
    problem = _cupy_problem()
    if problem is None and not _has_cuda_worker(ctx):
        problem = ("the context's executor has no CUDA worker (make one with "
                   "Context.make_with('dask', gpus=1), or set LIBERTEM_USE_CUDA=0 for the "
                   "inline executor)")
    if problem is not None:
        raise BackendError(f"backends={names!r}: {problem}; run with backends=None or "
                           "('numpy',) to reduce on the CPU")
    return names


def _cupy_problem():
    """Why this process cannot run CuPy arrays (a phrase), or None."""
    if importlib.util.find_spec("cupy") is None:
        return "CuPy is not installed (pip install 'flowtie_fast[gpu]')"
    if not gpu_available():
        return "CuPy finds no CUDA device that answers (no driver or no device)"
    return None


def _has_cuda_worker(ctx):
    """Whether the context's executor has a worker with a CUDA device (True
    where the executor does not say)."""
    try:
        workers = ctx.executor.get_available_workers()
        return any(w.resources.get("CUDA", 0) for w in workers.workers)
    except (AttributeError, NotImplementedError, TypeError):
        return True


def _check_dataset(dataset, name):
    """A LiberTEM dataset this module's UDF can run over, of real detector
    counts: :class:`InputError` naming ``name`` otherwise, before any pass
    (LiberTEM's own errors there are an ``AttributeError`` for an array, an
    ``AssertionError`` for a ``sync_offset``, a ``NotImplementedError`` for
    big-endian floats)."""
    if not isinstance(dataset, DataSet):
        raise InputError(f"{name}: expected a LiberTEM dataset (ctx.load(...)), got "
                         f"{type(dataset).__name__}; arrays in memory go to "
                         "FocalTriplet.from_4dstem, or through ctx.load('memory', data=...)")
    dtype = np.dtype(getattr(dataset, "dtype", np.float32))
    if dtype.kind not in "iuf":  # as from_4dstem: 1-bit frames are cast to uint8 first
        hint = " (cast 1-bit frames to uint8)" if dtype.kind == "b" else ""
        raise InputError(f"{name}: expected real detector counts, got dtype {dtype}{hint}")
    if dtype.kind == "f" and not dtype.isnative:
        raise InputError(f"{name}: dtype {dtype.str} is big-endian floating point, which "
                         "LiberTEM does not read (no byte swapping of floats); write the file "
                         "little-endian (array.astype('<f4')), or read it with NumPy and use "
                         "FocalTriplet.from_4dstem")
    offset = getattr(dataset, "_sync_offset", 0) or 0
    if offset:
        raise InputError(f"{name}: loaded with sync_offset={offset}, which the reduction "
                         "cannot run over (LiberTEM hands it partitions in pieces); load it "
                         "without sync_offset, or read the frames with NumPy, drop the "
                         "first ones and use FocalTriplet.from_4dstem")


def _nav_sig(dataset, name="dataset"):
    shape = tuple(dataset.shape)
    if len(shape) != 4:
        raise InputError(f"{name}: expected a 4-D dataset (Sy, Sx, Ky, Kx), got shape {shape}")
    if min(shape) < 2:  # as from_4dstem (check_4d): no disk, no centre of mass on 1 px
        raise InputError(f"{name}: expected at least 2 along every axis, got {shape}")
    return shape[:2], shape[2:]


def reduce_with_libertem(ctx, dataset, detector, regions, *, com_radius_mrad=None,
                         name="dataset", backends=None):
    """Virtual images and centre of mass of a LiberTEM dataset in one UDF pass.

    Parameters
    ----------
    ctx : libertem.api.Context
        The LiberTEM context that runs the UDF.
    dataset : LiberTEM DataSet (Sy, Sx, Ky, Kx)
        The 4D-STEM dataset (a file, a memory array or a live stream).
    detector : Detector
        Geometry (centre included).
    regions : dict of name -> (inner_mrad, outer_mrad)
        Virtual detectors: annuli in mrad.
    com_radius_mrad : float, optional
        Limit of the centre of mass in mrad (default: whole detector).
    name : str
        How messages name the dataset (default "dataset").
    backends : None, str or tuple of str
        LiberTEM's ``backends`` of ``ctx.run_udf`` (default None: NumPy on
        CPU workers, CuPy on CUDA workers); ``("cupy",)`` reduces on CUDA
        workers only and raises :class:`~flowtie_fast.BackendError` before
        the pass where CuPy or a CUDA worker is missing.

    Returns
    -------
    Reduction
        Equal to :func:`flowtie_fast.stem.reduce_4dstem` of the same data
        (to float32 rounding).
    """
    backends = _check_backends(ctx, backends)
    (sy, sx), sig = _nav_sig(dataset, name)
    _check_dataset(dataset, name)
    check_detector(detector)
    check_regions(regions)
    if com_radius_mrad is not None:  # as reduce_4dstem: a negative one gave a zero COM
        com_radius_mrad = check_disk("com_radius", com_radius_mrad, detector)
    if tuple(sig) != tuple(detector.shape):
        raise InputError(f"{name}: detector shape {tuple(sig)} differs from {detector.shape}")
    W, combine = detector_weights(detector, regions, com_radius_mrad)
    result = ctx.run_udf(dataset=dataset, udf=ReductionUDF(W), backends=backends)
    sums = np.asarray(result["sums"].data, np.float32).reshape(sy, sx, -1)
    try:
        return finish_reduction(sums, combine, detector, regions, name)
    except InputError as exc:
        dtype = np.dtype(getattr(dataset, "dtype", np.float32))
        if dtype.kind != "f" or dtype.itemsize <= 4:
            raise
        # a wider dtype's finite values can overflow the float32 sums as well
        raise InputError(str(exc).replace(
            "contains NaN or Inf", f"contains NaN or Inf, or {dtype} values whose sums "
            "exceed float32's range (the reduction sums in float32: rescale the data)"))


def triplet_with_libertem(ctx, datasets, dz, scan_step, k_sampling, energy, *, center=None,
                          virtual="bf", bf_radius=None, com_radius=None, rotation=0.0,
                          flip=False, register=True, normalize=True, descan="plane",
                          backends=None):
    """:meth:`FocalTriplet.from_4dstem` with the passes run by LiberTEM.

    One more pass (LiberTEM's SumUDF over the in-focus dataset) gives the
    mean pattern that the bright-field radius, and the centre unless given,
    are found from. The parameters are those of
    :meth:`~flowtie_fast.triplet.FocalTriplet.from_4dstem`.

    Parameters
    ----------
    ctx : libertem.api.Context
        The LiberTEM context that runs the passes.
    datasets : sequence of three LiberTEM DataSets
        At the planes ``-dz, 0, +dz`` in this order (docs/conventions.md), of
        equal shape (Sy, Sx, Ky, Kx); a set or a dict (no order) is refused.
    dz : float or (float, float)
        Defocus step in Å.
    scan_step : float or (float, float)
        Scan step in Å (the pixel size of the triplet).
    k_sampling : float or (float, float)
        Detector sampling in 1/Å per pixel.
    energy : float
        Electron energy in eV.
    center : (float, float), optional
        Detector centre in pixels (default: found from the mean pattern).
    virtual : {"bf", "bf-full", "abf", "df", "whole"}
        Which virtual image forms the planes (default "bf").
    bf_radius : float, optional
        Radius of the "bf" disk in mrad (default a quarter of the measured
        bright-field disk).
    com_radius : float, optional
        Limit of the centre of mass in mrad (default: whole detector).
    rotation : float or "auto"
        Detector-to-scan rotation in degrees (default 0).
    flip : bool
        Transpose the detector axes before rotating (default False).
    register : bool or "periodic"
        Undo the drift between the three scans (default True; False to
        skip, for scans known to be aligned; as in :meth:`from_4dstem`).
    normalize : bool
        Bring the ±dz planes to the in-focus scan's beam current (default
        True; as in :meth:`from_4dstem`).
    descan : {"plane", "none"}
        Remove the centre of mass's least-squares plane (default "plane"), or
        only its mean; as in :meth:`from_4dstem`.
    backends : None, str or tuple of str
        LiberTEM's ``backends`` for every pass (see
        :func:`reduce_with_libertem`; default None).

    Returns
    -------
    FocalTriplet
        With ``gradient`` (rad/Å, the in-focus centre of mass) and
        ``reductions``, ready for :func:`~flowtie_fast.solvers.reconstruct`.
    """
    if isinstance(datasets, (str, bytes)) or not hasattr(datasets, "__iter__"):
        raise InputError(f"datasets: expected three LiberTEM datasets (minus, zero, plus), "
                         f"got {type(datasets).__name__}")
    if isinstance(datasets, (Set, Mapping)):  # no order: minus and plus could swap
        raise InputError(f"datasets: expected three LiberTEM datasets in order (minus, zero, "
                         f"plus), got {type(datasets).__name__}, which has no order (pass a "
                         "list)")
    datasets = list(datasets)
    if len(datasets) != 3:
        raise InputError(f"datasets: expected three (minus, zero, plus), got {len(datasets)}")
    for n, d in zip(("minus", "zero", "plus"), datasets):
        if not isinstance(d, DataSet):
            raise InputError(f"datasets: the {n} entry is {type(d).__name__}, expected a "
                             "LiberTEM dataset (ctx.load(...)); arrays in memory go to "
                             "FocalTriplet.from_4dstem")
    if not isinstance(virtual, str) or virtual not in VIRTUAL_IMAGES:
        raise InputError(f"virtual: expected one of {VIRTUAL_IMAGES}, got {virtual!r}")
    backends = _check_backends(ctx, backends)
    check_register(register)  # before any pass
    check_normalize(normalize)
    check_descan_mode(descan)
    check_positive("dz", dz, pair=True)
    check_positive("scan_step", scan_step, pair=True)
    shapes = [tuple(d.shape) for d in datasets]
    if len(set(shapes)) != 1:
        raise InputError(f"datasets: expected equal shapes, got {shapes}")
    (sy, sx), _ = _nav_sig(datasets[1], "zero")
    for n, d in zip(("minus", "zero", "plus"), datasets):
        _check_dataset(d, n)
    k_sampling = check_positive("k_sampling", k_sampling, pair=True)
    energy = check_positive("energy", energy)
    total = ctx.run_udf(dataset=datasets[1], udf=SumUDF(), backends=backends)["intensity"]
    mean = np.asarray(total.data, np.float64) / (sy * sx)
    if not np.isfinite(mean).all():  # else named "the mean pattern is empty" (center)
        raise InputError("zero: the patterns contain NaN or Inf")
    detector, regions = triplet_geometry(mean, k_sampling, energy, center, bf_radius,
                                         virtual=virtual)
    dtype = np.dtype(getattr(datasets[1], "dtype", np.float32))
    if (dtype.kind == "f" and dtype.itemsize > 4
            and 0 < float(np.abs(mean).max()) < float(np.finfo(np.float32).tiny)):
        # as from_4dstem: values float32 sums as subnormals or zero (an overflow of
        # the sums is named by the reduction)
        check_float32_range("zero", mean[None], detector)
    if virtual not in regions:
        raise InputError(f"virtual: expected one of {tuple(regions)}, got {virtual!r}")
    check_region(virtual, regions, detector, bf_radius is not None)  # as from_4dstem
    check_com_radius(com_radius, regions, detector)
    fills = disk_filled(regions)
    reductions = [dataclasses.replace(
        reduce_with_libertem(ctx, d, detector, regions, com_radius_mrad=com_radius, name=n,
                             backends=backends), disk_fills=fills)
                  for n, d in zip(("minus", "zero", "plus"), datasets)]
    # counts give the noise where it cannot be measured, as in from_4dstem
    return FocalTriplet.from_reductions(reductions, dz, scan_step, virtual=virtual,
                                        rotation=rotation, flip=flip,
                                        counts=holds_counts(datasets),
                                        register=register, normalize=normalize,
                                        descan=descan)
