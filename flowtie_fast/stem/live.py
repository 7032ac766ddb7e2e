"""LiberTEM: the one-pass 4D-STEM reduction as a UDF, for files and live streams.

LiberTEM runs user-defined functions (UDFs) over the partitions of a dataset
(a file, a memory array, or a detector stream through LiberTEM-live) on its
executors. :class:`ReductionUDF` computes, per scan position, the weighted
sums of :func:`flowtie_fast.stem.detector.detector_weights` (virtual-detector bins and
centre-of-mass moments) with the project's ``reduce_patterns`` kernel (the
Numba twin on the CPU); :func:`reduce_with_libertem` turns its result into a
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

import numpy as np

try:
    from libertem.udf import UDF
    from libertem.udf.sum import SumUDF
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("flowtie_fast.stem.live needs LiberTEM: pip install 'flowtie_fast[live]'"
                      ) from exc

from ..errors import InputError, check_positive
from ..triplet import FocalTriplet
from .detector import detector_weights, triplet_geometry, weight_ranges
from .reduction import finish_reduction, reduce_frames

__all__ = ["ReductionUDF", "reduce_with_libertem", "triplet_with_libertem"]

_VIRTUAL = ("bf", "bf-full", "abf", "df", "whole")


class ReductionUDF(UDF):
    """Weighted sums of each frame: ``sums[p, q] = Σ_k W[q, k] frame_p[k]``.

    Its result is ``sums``: a navigation buffer of Q float32 values per scan
    position (the patterns' unit, e.g. counts, times the weights').

    Parameters
    ----------
    weights : ndarray (Q, Ky*Kx) float32
        Weight rows (:func:`flowtie_fast.stem.detector_weights`).
    lo, hi : ndarray (Q,), optional
        Pixel range of each row's non-zero weights (default: found; LiberTEM
        passes them back when it copies the UDF to its workers).
    """

    def __init__(self, weights, lo=None, hi=None):
        weights = _check_weights(weights)
        if lo is None or hi is None:
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

    def get_result_buffers(self):
        """The UDF's result buffers (LiberTEM's interface).

        Returns
        -------
        dict
            ``{"sums": buffer}``: one float32 vector of Q sums per scan
            position.
        """
        self._check_detector()
        q = self.params.weights.shape[0]
        return {"sums": self.buffer(kind="nav", extra_shape=(q,), dtype=np.float32)}

    def process_partition(self, partition):
        """All frames of a partition through the reduction kernel.

        Parameters
        ----------
        partition : ndarray (n, Ky, Kx)
            The partition's frames, as LiberTEM passes them; the sums go to
            ``self.results.sums``.
        """
        self.results.sums[:] = reduce_frames(partition, self.params.weights, self.params.lo,
                                             self.params.hi)


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
    """``lo``, ``hi`` as int64 (Q,) pixel ranges with 0 <= lo <= hi <= Ky*Kx."""
    q, k = weights.shape
    out = []
    for name, v in (("lo", lo), ("hi", hi)):
        a = np.asarray(v)
        if a.dtype.kind not in "iu" or a.shape != (q,):
            raise InputError(f"{name}: expected {q} integers (one per weight row), got "
                             f"{a.dtype} of shape {a.shape}")
        out.append(a.astype(np.int64))
    lo, hi = out
    bad = (lo < 0) | (hi > k) | (lo > hi)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"lo, hi: expected 0 <= lo <= hi <= {k} (the detector pixels of "
                         f"the weights), got lo={int(lo[i])}, hi={int(hi[i])} for row {i}")
    return lo, hi


def _nav_sig(dataset):
    shape = tuple(dataset.shape)
    if len(shape) != 4:
        raise InputError(f"dataset: expected a 4-D dataset (Sy, Sx, Ky, Kx), got shape {shape}")
    return shape[:2], shape[2:]


def reduce_with_libertem(ctx, dataset, detector, regions, *, com_radius_mrad=None,
                         name="dataset"):
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

    Returns
    -------
    Reduction
        Equal to :func:`flowtie_fast.stem.reduce_4dstem` of the same data.
    """
    (sy, sx), sig = _nav_sig(dataset)
    if tuple(sig) != tuple(detector.shape):
        raise InputError(f"{name}: detector shape {tuple(sig)} differs from {detector.shape}")
    W, combine = detector_weights(detector, regions, com_radius_mrad)
    result = ctx.run_udf(dataset=dataset, udf=ReductionUDF(W))
    sums = np.asarray(result["sums"].data, np.float32).reshape(sy, sx, -1)
    return finish_reduction(sums, combine, detector, regions, name)


def triplet_with_libertem(ctx, datasets, dz, scan_step, k_sampling, energy, *, center=None,
                          virtual="bf", bf_radius=None, com_radius=None, rotation=0.0,
                          flip=False):
    """:meth:`FocalTriplet.from_4dstem` with the passes run by LiberTEM.

    One more pass (LiberTEM's SumUDF over the in-focus dataset) gives the
    mean pattern that the bright-field radius, and the centre unless given,
    are found from. The parameters are those of
    :meth:`~flowtie_fast.triplet.FocalTriplet.from_4dstem`.

    Parameters
    ----------
    ctx : libertem.api.Context
        The LiberTEM context that runs the passes.
    datasets : three LiberTEM DataSets
        At the planes ``-dz, 0, +dz`` (docs/conventions.md), of equal shape
        (Sy, Sx, Ky, Kx).
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

    Returns
    -------
    FocalTriplet
        With ``gradient`` (rad/Å, the in-focus centre of mass) and
        ``reductions``, ready for :func:`~flowtie_fast.solvers.reconstruct`.
    """
    if isinstance(datasets, (str, bytes)) or not hasattr(datasets, "__iter__"):
        raise InputError(f"datasets: expected three LiberTEM datasets (minus, zero, plus), "
                         f"got {type(datasets).__name__}")
    datasets = list(datasets)
    if len(datasets) != 3:
        raise InputError(f"datasets: expected three (minus, zero, plus), got {len(datasets)}")
    for n, d in zip(("minus", "zero", "plus"), datasets):
        if not hasattr(d, "shape"):
            raise InputError(f"datasets: the {n} entry is {type(d).__name__}, expected a "
                             "LiberTEM dataset (ctx.load(...))")
    if not isinstance(virtual, str) or virtual not in _VIRTUAL:
        raise InputError(f"virtual: expected one of {_VIRTUAL}, got {virtual!r}")
    check_positive("dz", dz, pair=True)
    check_positive("scan_step", scan_step, pair=True)
    shapes = [tuple(d.shape) for d in datasets]
    if len(set(shapes)) != 1:
        raise InputError(f"datasets: expected equal shapes, got {shapes}")
    (sy, sx), _ = _nav_sig(datasets[1])
    k_sampling = check_positive("k_sampling", k_sampling, pair=True)
    energy = check_positive("energy", energy)
    mean = np.asarray(ctx.run_udf(dataset=datasets[1], udf=SumUDF())["intensity"].data,
                      np.float64) / (sy * sx)
    detector, regions = triplet_geometry(mean, k_sampling, energy, center, bf_radius)
    if virtual not in regions:
        raise InputError(f"virtual: expected one of {tuple(regions)}, got {virtual!r}")
    reductions = [reduce_with_libertem(ctx, d, detector, regions, com_radius_mrad=com_radius,
                                       name=n)
                  for n, d in zip(("minus", "zero", "plus"), datasets)]
    return FocalTriplet.from_reductions(reductions, dz, scan_step, virtual=virtual,
                                        rotation=rotation, flip=flip)
