"""Many devices: a dask cluster with one worker per GPU, and batches of triplets solved on it.

:func:`local_cluster` starts a ``dask.distributed`` cluster on this machine
and returns its client: one worker process per GPU, each of which sees its
own device alone (``CUDA_VISIBLE_DEVICES`` set for the worker process
before it starts; dask-cuda's ``LocalCUDACluster`` does the same where it is
installed), or CPU workers where no GPU answers. :func:`reconstruct_many`
splits a stack of triplets (B, 3, Ny, Nx) into batches, solves each batch on
a worker with :meth:`Plan.solve_batch <flowtie_fast.plan.Plan.solve_batch>`
and returns the phases in input order. Each worker keeps one
:class:`~flowtie_fast.plan.Plan` per shape, method, geometry, options and
device (its backend: one per worker process, so one per device), made at the
first batch that needs it and reused by every later batch and call
(:func:`cached_plans` lists them, :func:`release_plans` frees them).

4D-STEM data held as dask arrays are reduced on the workers of the active
client: ``FocalTriplet.from_4dstem(minus, zero, plus, ..., backend="cpu")``
with a client running sends one task per chunk of scan positions to the
workers (the CPU reduction kernel), and only the sums travel
(:mod:`flowtie_fast.stem.reduction`). With ``backend="auto"`` on a machine
with a GPU the chunks are instead gathered and reduced by this process's GPU.

Results equal those of one ``Plan`` in one process with the same backend,
dtype and threads: bit for bit for images under 64² pixels (planned with
FFTW_ESTIMATE) and on the GPU; above, FFTW_MEASURE may pick another
algorithm in each worker process (the phases then agree to float rounding),
unless the workers share FFTW wisdom (``wisdom=``).

Needs ``dask.distributed`` (extra ``cluster``; dask-cuda optional). Docs:
docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from .backend import get_backend, gpu_available, is_cupy, to_host
from .errors import (BackendError, InputError, ResultError, TrustWarning, check_choice,
                     check_count, check_float_dtype, check_positive, first_line,
                     is_integer)
from .noise import check_noise
from .plan import Plan, _check_records, triplet_records
from .planes import FLUX_RATIO, check_intensity_stats
from .poisson import resolve_scheme
from .solvers import (_check_alpha, _check_bool, _check_floor, check_options,
                      check_regularisation)
from .stem.detector import VIRTUAL_IMAGES
from .triplet import FocalTriplet
from .trust import VERDICT_KEYS as _VERDICT_KEYS, verdict_entries

__all__ = ["cached_plans", "local_cluster", "reconstruct_many", "release_plans",
           "visible_devices", "worker_environments", "worker_specs"]

#: Plan options that :func:`reconstruct_many` passes to each worker's Plan.
PLAN_OPTIONS = ("boundary", "scheme", "alpha", "floor", "denoise", "model", "uncertainty",
                "tol", "max_iter", "preconditioner", "wisdom", "virtual")

#: The library's exceptions that travel back from a worker as themselves.
_ERRORS = {cls.__name__: cls for cls in (InputError, ResultError, BackendError)}


# --------------------------------------------------------------------------- devices


def visible_devices(devices="auto", environ=None, count=None) -> list:
    """The GPUs a cluster gives one worker each, as ``CUDA_VISIBLE_DEVICES`` names them.

    Parameters
    ----------
    devices : "auto", "cpu", "gpu" or sequence of int or str
        ``"auto"``: every GPU this process may use where one answers, else
        none (CPU workers); ``"gpu"``: the same, but
        :class:`~flowtie_fast.errors.BackendError` where none answers;
        ``"cpu"``: none; a sequence: those devices (indices or UUIDs, as
        ``CUDA_VISIBLE_DEVICES`` takes them).
    environ : mapping, optional
        The environment to read ``CUDA_VISIBLE_DEVICES`` from (default
        ``os.environ``): where it is set, "auto" and "gpu" take its entries.
    count : int, optional
        The number of devices that answer (default: asked of CuPy, 0 where no
        GPU answers).

    Returns
    -------
    list of str
        One entry per GPU worker; empty for CPU workers.
    """
    if isinstance(devices, str):
        check_choice("devices", devices, ("auto", "cpu", "gpu"))
        if devices == "cpu":
            return []
        if count is None:
            count = _device_count()
        if count < 1:
            if devices == "gpu":
                raise BackendError("devices='gpu': no CUDA device answers (CuPy missing, no "
                                   "driver or no device); use devices='cpu' or 'auto'")
            return []
        environ = os.environ if environ is None else environ
        listed = [d.strip() for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",")]
        listed = [d for d in listed if d]
        return listed[:count] if listed else [str(i) for i in range(count)]
    if not isinstance(devices, (list, tuple, range)) or not devices:
        raise InputError(f"devices: expected 'auto', 'cpu', 'gpu' or a non-empty list of GPU "
                         f"indices or UUIDs, got {devices!r}")
    out = []
    for d in devices:
        if is_integer(d) and d >= 0:
            out.append(str(int(d)))
        elif isinstance(d, str) and d.strip() and "," not in d and \
                not d.strip().lstrip("+-").isdigit():
            out.append(d.strip())  # a UUID (GPU-..., MIG-...)
        elif isinstance(d, str) and d.strip().isdigit():
            out.append(str(int(d)))
        else:
            raise InputError(f"devices: expected GPU indices (int >= 0) or UUIDs (str), got "
                             f"{d!r} in {devices!r}")
    if len(set(out)) != len(out):
        raise InputError(f"devices: expected each GPU once, got {devices!r}")
    return out


def _device_count() -> int:
    if not gpu_available():
        return 0
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def worker_environments(devices) -> list:
    """The environment of each GPU worker process: its device alone.

    Parameters
    ----------
    devices : sequence of str
        As :func:`visible_devices` returns them.

    Returns
    -------
    list of dict
        Per worker, ``{"CUDA_VISIBLE_DEVICES": device}``: the process sees
        its GPU as device 0 and no other, so its one backend
        (:func:`~flowtie_fast.backend.get_backend`) computes on that GPU.
    """
    return [{"CUDA_VISIBLE_DEVICES": str(d)} for d in devices]


def worker_specs(devices, threads_per_worker: int = 1) -> dict:
    """``SpecCluster`` worker specifications: one Nanny (worker process) per GPU.

    Parameters
    ----------
    devices : sequence of str
        The GPUs, one worker each (as :func:`worker_environments` takes them).
    threads_per_worker : int
        Task threads of each worker, 1 to 4096 (default 1; a worker without
        a thread would never run a task).

    Returns
    -------
    dict
        ``{"gpu-<device>": {"cls": Nanny, "options": {...}}}``: each worker named
        ``gpu-<device>``, on 127.0.0.1, with the environment of
        :func:`worker_environments`.
    """
    threads = check_count("threads_per_worker", threads_per_worker, 1, 4096)
    from distributed import Nanny

    return {f"gpu-{d}": {"cls": Nanny,
                         "options": {"nthreads": threads, "env": env,
                                     "host": "127.0.0.1", "name": f"gpu-{d}"}}
            for d, env in zip(devices, worker_environments(devices))}


@functools.lru_cache(maxsize=None)
def _client_class():
    """A ``distributed.Client`` that closes its cluster when it closes."""
    from distributed import Client

    class ClusterClient(Client):
        """A client that owns its local cluster: ``close()`` (and leaving a
        ``with`` block) closes the cluster too."""

        def close(self, *args, **kwargs):
            cluster = self.cluster
            try:
                return super().close(*args, **kwargs)
            finally:
                if cluster is not None:
                    cluster.close()

    return ClusterClient


def local_cluster(devices="auto", *, n_workers=None, threads_per_worker: int = 1,
                  processes: bool = True, dask_cuda: bool = True):
    """A dask cluster on this machine: one worker per GPU, or CPU workers.

    Parameters
    ----------
    devices : "auto", "cpu", "gpu" or sequence of int or str
        Which GPUs get a worker (:func:`visible_devices`; default "auto":
        every GPU that answers, CPU workers where none does).
    n_workers : int, optional
        CPU workers: how many (default: the cores this process may use over
        ``threads_per_worker``, at least 1). With GPUs: one per device, and
        any other number is refused.
    threads_per_worker : int
        Task threads of each worker (default 1). A worker's Plan runs one
        solve at a time; on the CPU its kernels use this many threads.
    processes : bool
        Workers in processes (default True); False runs CPU workers as
        threads of this process (tests, small jobs). GPU workers need
        processes.
    dask_cuda : bool
        With GPUs, use dask-cuda's ``LocalCUDACluster`` where it imports
        (default True); otherwise, or where it is missing, a
        ``distributed.SpecCluster`` of worker processes pinned by
        :func:`worker_environments`.

    Returns
    -------
    distributed.Client
        Connected to the new cluster (``client.cluster``), and the default
        client of this process until closed; ``close()`` or the end of a
        ``with`` block closes the cluster too.

    Examples
    --------
    >>> with local_cluster("cpu", n_workers=2) as client:
    ...     phases = reconstruct_many(stack, pixel_size=0.2, dz=20.0, energy=300e3)
    """
    from distributed import LocalCluster, Scheduler, SpecCluster

    devices = visible_devices(devices)
    threads = check_count("threads_per_worker", threads_per_worker, 1, 4096)
    if not isinstance(processes, (bool, np.bool_)):
        raise InputError(f"processes: expected True or False, got {processes!r}")
    if not isinstance(dask_cuda, (bool, np.bool_)):
        raise InputError(f"dask_cuda: expected True or False, got {dask_cuda!r}")
    quiet = logging.WARNING
    # no dashboard; the scheduler's HTTP endpoints on a free port
    http = {"dashboard": False, "dashboard_address": ":0"}
    if not devices:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        if n_workers is None:
            n_workers = max(1, cores // threads)
        # each worker process holds its own Python, NumPy and plans: far more
        # processes than cores only exhaust memory
        n_workers = check_count("n_workers", n_workers, 1, 4 * cores)
        return _start(lambda: LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                                           processes=bool(processes), dashboard_address=None,
                                           scheduler_kwargs=http, silence_logs=quiet))
    if n_workers is not None and check_count("n_workers", n_workers, 1) != len(devices):
        raise InputError(f"n_workers: one worker per GPU, {len(devices)} for devices "
                         f"{devices}; got {n_workers!r}")
    if not processes:
        raise InputError("processes: GPU workers each need a process of their own (their "
                         "device is set before it starts); got False")
    cuda_cluster = None
    if dask_cuda:
        try:
            from dask_cuda import LocalCUDACluster as cuda_cluster
        except ImportError:
            cuda_cluster = None
    if cuda_cluster is not None:
        return _start(lambda: cuda_cluster(CUDA_VISIBLE_DEVICES=devices,
                                           threads_per_worker=threads, dashboard_address=None,
                                           scheduler_kwargs=http, silence_logs=quiet))
    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", **http}}
    return _start(lambda: SpecCluster(workers=worker_specs(devices, threads),
                                      scheduler=scheduler, silence_logs=quiet,
                                      name="flowtie-gpu"))


def _start(make_cluster):
    """The client of a cluster made by ``make_cluster()``; a cluster or client
    that fails to start is a :class:`BackendError` (the workers' processes,
    the scheduler's port), and a cluster whose client fails is closed."""
    try:
        cluster = make_cluster()
    except Exception as exc:  # noqa: BLE001  distributed raises RuntimeError, OSError, ...
        raise BackendError(f"local_cluster: the cluster did not start "
                           f"({type(exc).__name__}: {first_line(exc)})") from exc
    try:
        return _client_class()(cluster)
    except Exception as exc:  # noqa: BLE001
        cluster.close()
        raise BackendError(f"local_cluster: no client for the cluster "
                           f"({type(exc).__name__}: {first_line(exc)})") from exc


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class _Spec:
    """What a worker needs to make (or find) its Plan: everything but the data."""

    shape: tuple
    pixel_size: tuple
    dz: float
    energy: float
    method: str
    backend: str
    threads: int | None
    dtype: str
    options: tuple  # sorted (name, value) pairs of PLAN_OPTIONS given


# (worker id, device, spec) -> [Plan, batches solved, lock], oldest use first; the
# lock holds a batch on the plan (its orientation check, solves and verdicts) together
# where the worker's threads share the plan.
_PLANS: dict = {}
#: Plans a worker keeps (per process): an acquisition that changes dz, pixel size
#: or shape from run to run must not hold every earlier Plan's buffers.
MAX_PLANS = 8
_PLANS_LOCK = threading.Lock()


def _current_worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _device_label(backend) -> str:
    """``cpu``, or ``gpu:<device>`` as this process's CUDA_VISIBLE_DEVICES names it."""
    if not backend.is_gpu:
        return "cpu"
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first:
        return f"gpu:{first}"
    return f"gpu:{backend.xp.cuda.runtime.getDevice()}"


def _worker_plan(spec: _Spec):
    """This worker's Plan for ``spec`` (made on first use) and its cache entry."""
    worker = _current_worker()
    threads = spec.threads
    if threads is None and worker is not None:
        threads = getattr(worker.state, "nthreads", None) if hasattr(worker, "state") else None
        threads = threads or getattr(worker, "nthreads", None)
    backend = get_backend(spec.backend, threads)
    key = (getattr(worker, "id", "local"), _device_label(backend), threads, spec)
    with _PLANS_LOCK:
        entry = _PLANS.pop(key, None)
        if entry is None:
            plan = Plan(spec.shape, spec.pixel_size, spec.dz, spec.energy, spec.method,
                        backend=backend, threads=threads, dtype=spec.dtype,
                        **dict(spec.options))
            entry = [plan, 0, threading.Lock()]
        _PLANS[key] = entry  # the most recently used last
        mine = [k for k in _PLANS if k[0] == key[0]]
        for k in mine[:max(0, len(mine) - MAX_PLANS)]:
            del _PLANS[k]
    return entry


#: The entries of a solve's ``info`` that say whether to trust its phase,
#: carried back from the workers per item (:func:`reconstruct_many`;
#: :data:`flowtie_fast.trust.VERDICT_KEYS`).
VERDICT_KEYS = _VERDICT_KEYS


def _solve_batch(stack, gradient, noise, spec: _Spec, start: int, return_gradient: bool,
                 records=None):
    """One batch on a worker: ``("ok", phase, gradient or None, verdicts)``,
    the arrays NumPy and ``verdicts`` one dict per item
    (:func:`~flowtie_fast.trust.verdict_entries`),
    or ``("error", exception name, message)`` for the library's own errors,
    with the items numbered as in the whole stack. The solves' warnings are
    shown on the worker; the verdicts carry what they say to the caller.
    ``records``: per item of triplets, the records :meth:`Plan.solve
    <flowtie_fast.plan.Plan.solve>` takes as the triplet keeps them
    (:func:`~flowtie_fast.plan.triplet_records`, checked by
    :func:`_from_triplets`), with ``noise`` per item."""
    try:
        entry = _worker_plan(spec)
        plan = entry[0]
        be = plan.backend
        stack = be.asarray(_canonical(stack))
        gradient = None if gradient is None else be.asarray(_canonical(gradient))
        b = stack.shape[0]
        grad_out = be.empty((b, 2) + plan.shape, plan.dtype) if return_gradient else None
        with entry[2]:  # one batch at a time on a plan: its orientation check and verdicts
            plan.reset_orientation()  # a cached plan: this call's data may be another set-up's
            if isinstance(noise, list):  # one per item (triplets): solved one at a time
                out = be.empty((b,) + plan.shape, plan.dtype)
                verdicts = []
                records = records or [{}] * b
                for i in range(b):
                    try:
                        plan.solve(stack[i, 0], stack[i, 1], stack[i, 2],
                                   gradient=None if gradient is None else gradient[i],
                                   out=out[i], noise=noise[i],
                                   gradient_out=None if grad_out is None else grad_out[i],
                                   **records[i])
                    except InputError as exc:
                        raise type(exc)(f"stack[{i}]: {exc}") from exc
                    verdicts.append(verdict_entries(plan.info))
            else:
                out = plan.solve_batch(stack, gradient=gradient, noise=noise,
                                       gradient_out=grad_out)
                # a batched flow (flowtie without the trust check) has one
                # verdict for the whole batch, no per-item ones: each item's
                items = plan.info.get("items") or [plan.info] * b
                verdicts = [verdict_entries(it) for it in items]
        with _PLANS_LOCK:
            entry[1] += 1
        return ("ok", be.to_numpy(out), None if grad_out is None else be.to_numpy(grad_out),
                verdicts)
    except tuple(_ERRORS.values()) as exc:
        message = re.sub(r"^stack\[(\d+)\]", lambda m: f"stack[{start + int(m[1])}]", str(exc))
        # the most specific of the three (a ResultError's subclass is a ResultError)
        name = next(n for n in ("ResultError", "BackendError", "InputError")
                    if isinstance(exc, _ERRORS[n]))
        return ("error", name, message)


def _canonical(a):
    """``a`` (a NumPy array received by a worker) viewed with NumPy's own
    instance of its dtype: an unpickled array carries a copy of the dtype
    object, and a cast to the same dtype then makes a new view where the
    solvers' checks expect the array itself."""
    if isinstance(a, np.ndarray):
        dtype = np.dtype(a.dtype.str)
        if a.dtype is not dtype:
            return a.view(dtype)
    return a


def _plan_report(dask_worker=None):
    wid = getattr(dask_worker, "id", "local")
    with _PLANS_LOCK:
        return [{"shape": spec.shape, "method": spec.method, "device": device,
                 "dtype": spec.dtype, "batches": n}
                for (w, device, _, spec), (_, n, _) in _PLANS.items() if w == wid]


def _plan_release(dask_worker=None):
    wid = getattr(dask_worker, "id", "local")
    with _PLANS_LOCK:
        gone = [k for k in _PLANS if k[0] == wid]
        for k in gone:
            del _PLANS[k]
    return len(gone)


def cached_plans(client=None) -> dict:
    """The Plans each worker keeps.

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the active client.

    Returns
    -------
    dict of str -> list of dict
        Per worker address, one entry per Plan: ``shape``, ``method``,
        ``device`` ("cpu" or "gpu:<device>"), ``dtype`` and ``batches`` (how
        many batches it solved).
    """
    return _client(client).run(_plan_report)


def release_plans(client=None) -> dict:
    """Drop every worker's Plans (their buffers and FFT plans are freed).

    Parameters
    ----------
    client : distributed.Client, optional
        Default: the active client.

    Returns
    -------
    dict of str -> int
        Per worker address, how many Plans were dropped.
    """
    return _client(client).run(_plan_release)


# --------------------------------------------------------------------------- client


def _client(client):
    if client is not None:
        if not all(hasattr(client, a) for a in ("scatter", "submit", "compute", "run")):
            raise InputError(f"client: expected a dask.distributed Client, got "
                             f"{type(client).__name__}")
        status = getattr(client, "status", "running")
        if status in ("closing", "closed"):
            raise InputError(f"client: expected a running dask.distributed Client, got one whose "
                             f"status is {status!r}; start one, e.g. "
                             "flowtie_fast.cluster.local_cluster()")
        return client
    try:
        from distributed import default_client
    except ImportError as exc:
        raise InputError("client: dask.distributed is not installed (pip install "
                         "distributed)") from exc
    try:
        return default_client()
    except ValueError as exc:
        raise InputError("client: no dask.distributed client is active; pass client= or "
                         "start one, e.g. flowtie_fast.cluster.local_cluster()") from exc


def _is_dask(a) -> bool:
    return type(a).__module__.split(".")[0] == "dask" and hasattr(a, "to_delayed")


def _check_plan_options(method, backend, threads, dtype, options) -> tuple:
    """The options a worker's Plan takes, checked here before anything is sent."""
    unknown = sorted(set(options) - set(PLAN_OPTIONS))
    if unknown:
        raise InputError(f"options: unknown {unknown}; expected some of "
                         f"{sorted(PLAN_OPTIONS + ('backend', 'threads', 'dtype'))}")
    check_options(method, options.get("tol"), options.get("max_iter"),
                  options.get("preconditioner", "biharmonic"), options.get("model"),
                  options.get("uncertainty"))
    alpha, floor = options.get("alpha", 0.0), options.get("floor", "auto")
    check_regularisation(method, alpha, floor)
    _check_alpha(alpha)  # the checks of the worker's TIESolver
    _check_floor(floor)
    _check_bool("denoise", options.get("denoise", True))
    check_choice("virtual", options.get("virtual", "bf"), VIRTUAL_IMAGES)
    resolve_scheme(options.get("boundary", "periodic"), options.get("scheme", "auto"))
    model = options.get("model")
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model: on a cluster, expected a shipped name or a file path each "
                         f"worker loads, got {type(model).__name__}")
    if not isinstance(backend, str) or backend not in ("auto", "cpu", "gpu"):
        raise InputError(f"backend: each worker makes its own; expected 'auto', 'cpu' or "
                         f"'gpu', got {backend!r}")
    if threads is not None:
        threads = check_count("threads", threads, 1, 4096)
    dtype = str(check_float_dtype("dtype", dtype))
    items = tuple(sorted((k, os.fspath(v) if isinstance(v, os.PathLike) else v)
                         for k, v in options.items()))
    return threads, dtype, items


def _check_stack(stack, given=None):
    """(B, 3, Ny, Nx): its shape and dtype (the data of a NumPy stack are
    checked by :func:`_check_values`); ``given`` is the type name messages
    use (default: the stack's)."""
    raw = tuple(getattr(stack, "shape", ()))
    if any(isinstance(n, float) and not math.isfinite(n) for n in raw):
        raise InputError(f"stack: expected a dask array of known chunk sizes, got shape {raw} "
                         "(call stack.compute_chunk_sizes() first)")
    shape = tuple(int(n) for n in raw)
    dtype = getattr(stack, "dtype", None)
    if len(shape) != 4 or shape[1] != 3:
        raise InputError(f"stack: expected an array (B, 3, Ny, Nx) or a sequence of "
                         f"FocalTriplet, got {given or type(stack).__name__} of shape {shape}")
    if shape[0] < 1 or min(shape[2:]) < 2:
        raise InputError(f"stack: expected at least 1 triplet of at least 2 x 2 pixels, got "
                         f"shape {shape}")
    if dtype is None or np.dtype(dtype).kind not in "uif":
        raise InputError(f"stack: expected real intensities, got dtype {dtype}")
    return shape


def _check_values(stack, gradient):
    """NumPy data checked as each worker's Plan will: NaN or Inf, negative
    intensities, an all-zero plane, planes of different flux
    (:func:`~flowtie_fast.planes.check_intensity_stats`); a gradient's NaN or
    Inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        negatives = (stack < 0).sum(axis=(2, 3))
        totals = stack.sum(axis=(2, 3), dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN totals are bad already
        flux = totals.max(axis=1) > FLUX_RATIO * totals.min(axis=1)
    bad = ~np.isfinite(totals).all(axis=1) | (negatives > 0).any(axis=1) | \
        (totals == 0).any(axis=1) | flux
    for i in np.flatnonzero(bad):  # the first refused item raises (a flux within noise passes)
        names = [f"stack[{i}]: {n}" for n in ("minus", "zero", "plus")]
        stats = np.stack([negatives[i], totals[i]], axis=1).astype(np.float64)
        check_intensity_stats(names, stats, list(stack[i]))
    if gradient is not None and not np.isfinite(gradient).all():
        first = int(np.flatnonzero(~np.isfinite(gradient).reshape(len(gradient), -1)
                                   .all(axis=1))[0])
        raise InputError(f"gradient[{first}]: contains NaN or Inf")


def _triplets_image(triplets, given) -> dict:
    """``{"virtual": image}`` where the triplets record one virtual image
    (``FocalTriplet.virtual``, from 4D-STEM data), else ``{}``;
    :class:`InputError` where they record several, or ``given`` differs."""
    images = {getattr(t, "virtual", None) for t in triplets} - {None}
    if len(images) > 1:
        raise InputError(f"stack: triplets of different virtual images {sorted(images)}; "
                         "expected one kind of image in a call")
    if not images:
        return {}
    image = images.pop()
    if given is not None and given != image:
        raise InputError(f"virtual: {given!r} given for triplets of {image!r} images; "
                         f"expected {image!r}, or no virtual= (the triplets' own)")
    return {"virtual": image}


def _from_triplets(triplets, pixel_size, dz, energy, gradient, noise):
    """Planes, gradients, per-item noise, geometry and per-item records
    (:func:`~flowtie_fast.plan.triplet_records`: the drift measured between
    the scans, the triplet's own check of its gradient's orientation, the
    pile-up check of its patterns and the pixels replaced in its planes, as
    :meth:`Plan.solve <flowtie_fast.plan.Plan.solve>` takes them, checked as
    it checks them) of a sequence of FocalTriplet."""
    for i, t in enumerate(triplets):
        if not isinstance(t, FocalTriplet):
            raise InputError(f"stack[{i}]: expected a FocalTriplet (a sequence of them), got "
                             f"{type(t).__name__}; pass arrays as one array (B, 3, Ny, Nx)")
    for name, value in (("pixel_size", pixel_size), ("dz", dz), ("energy", energy),
                        ("gradient", gradient), ("noise", noise)):
        if value is not None:
            raise InputError(f"{name}: taken from the triplets; expected None, got {value!r}")
    first = triplets[0]
    for i, t in enumerate(triplets):
        if t.dz[0] != t.dz[1]:
            raise InputError(f"stack[{i}]: expected an even defocus step (dz_minus = dz_plus), "
                             f"got dz={t.dz} Å")
        same = (t.shape == first.shape and t.pixel_size == first.pixel_size
                and t.dz == first.dz and t.energy == first.energy)
        if not same:
            raise InputError(f"stack[{i}]: expected the shape, pixel size, dz and energy of "
                             f"stack[0] ({first!r}), got {t!r}")
        if (t.gradient is None) != (first.gradient is None):
            raise InputError(f"stack[{i}]: expected a gradient in every triplet or in none")
    planes = np.stack([np.stack([to_host(p) for p in t.planes]) for t in triplets])
    grads = None if first.gradient is None else np.stack([to_host(t.gradient) for t in triplets])
    records = [triplet_records(t) for t in triplets]
    for i, r in enumerate(records):  # refused here, before anything is sent
        try:
            _check_records(**r)
        except InputError as exc:
            raise InputError(f"stack[{i}]: {exc}") from exc
    return planes, grads, [t.noise for t in triplets], first.pixel_size, first.dz[0], \
        first.energy, records


def reconstruct_many(stack, method="tie", *, pixel_size=None, dz=None, energy=None,
                     gradient=None, noise=None, client=None, batch_size=None,
                     return_gradient=False, return_info=False, backend="auto", threads=None,
                     dtype="float32", **options):
    """Phases of many triplets, solved in batches on the workers of a dask cluster.

    Each batch goes to a worker, which solves it with its own
    :class:`~flowtie_fast.plan.Plan` (made once per shape, method, geometry,
    options and device, then reused); the phases come back in input order.
    Everything is checked here before anything is sent; a refusal on a
    worker (data of a dask array, memory) is raised here as the library's own
    exception with its message, the item numbered as in ``stack``.

    Parameters
    ----------
    stack : array (B, 3, Ny, Nx) or sequence of FocalTriplet
        Intensities ``(minus, zero, plus)`` at ``-dz, 0, +dz``: NumPy, CuPy
        (copied to the host) or dask (each chunk read on the worker that
        solves it). Triplets must share shape, pixel size, even dz and energy;
        their planes, gradients, the noise of their planes and their records
        (registration, their own orientation checks, the pile-up check of
        their patterns, the pixels replaced in their planes: each item's
        verdict is the one :func:`~flowtie_fast.solvers.reconstruct` gives
        the triplet) are used, not the noise of
        their gradients (``icom`` does not filter the gradient here, as in a
        :class:`~flowtie_fast.plan.Plan`; :func:`~flowtie_fast.solvers.reconstruct`
        does).
    method : str
        One of :data:`~flowtie_fast.solvers.METHODS` (default "tie").
    pixel_size : float or (float, float)
        Sampling in Å (arrays only).
    dz : float or (float, float)
        Defocus step in Å (arrays only; a pair must be even, as a triplet's
        ``dz``).
    energy : float
        Electron energy in eV (arrays only).
    gradient : array (B, 2, Ny, Nx), optional
        Measured phase gradients in rad/Å (``icom``; flow models that read
        it), NumPy or dask, chunked as ``stack`` along axis 0.
    noise : Noise, float or sequence of float, optional
        The planes' noise, the same for every item (as
        :meth:`Plan.solve_batch <flowtie_fast.plan.Plan.solve_batch>`).
    client : distributed.Client, optional
        Default: the active client (:func:`local_cluster` makes one).
    batch_size : int, optional
        Triplets per task (default: enough for two batches per worker).
    return_gradient : bool
        Also return the phase gradients (default False).
    return_info : bool
        Also return each item's verdict (default False). Whatever it is, the
        items whose solve warned on its worker (a ``flowtie`` flow not
        trusted and replaced by the classical phase, a TIE with no signal
        above the noise, ...) are named in one
        :class:`~flowtie_fast.errors.TrustWarning` here.
    backend : {"auto", "cpu", "gpu"}
        Where each worker solves (default "auto": its GPU where one answers).
    threads : int, optional
        CPU threads of each worker's Plan (default: the worker's task threads).
    dtype : {"float32", "float64"}
        Working precision (default "float32").
    **options
        Those of :class:`~flowtie_fast.plan.Plan`: ``boundary``, ``scheme``,
        ``alpha``, ``floor``, ``denoise``, ``model`` (a shipped name or a
        file path), ``uncertainty``, ``tol``, ``max_iter``,
        ``preconditioner``, ``wisdom`` (a file every worker can read),
        ``virtual`` (the planes' image; taken from the triplets where they
        record one).

    Returns
    -------
    phase : ndarray (B, Ny, Nx)
        The phases in rad, NumPy, of the working dtype.
    gradient : ndarray (B, 2, Ny, Nx)
        With ``return_gradient``: the phase gradients in rad/Å.
    info : list of dict
        With ``return_info``: per item, in input order, the entries of its
        solve's ``info`` that say whether to trust it (:data:`VERDICT_KEYS`:
        ``trusted`` and, where not trusted, ``fallback`` and ``why`` for
        ``flowtie`` with the trust check; ``trust`` where a solve warned);
        empty for an item without any.

    Raises
    ------
    InputError
        Before anything is sent, naming the argument; or from a worker, with
        the worker's message (:class:`~flowtie_fast.errors.ResultError`, a
        subclass, where a worker's solve is refused).
    BackendError
        A worker's backend refused to start, a batch was lost with its
        worker or a closed cluster, or a worker failed to write a file.
    """
    if isinstance(stack, (list, tuple)):  # the triplets' virtual image, for the plans
        options = {**options, **_triplets_image(stack, options.get("virtual"))}
    threads, dtype, items = _check_plan_options(method, backend, threads, dtype, options)
    for name, flag in (("return_gradient", return_gradient), ("return_info", return_info)):
        if not isinstance(flag, (bool, np.bool_)):
            raise InputError(f"{name}: expected True or False, got {flag!r}")
    if isinstance(stack, (list, tuple)):
        if not stack:
            raise InputError("stack: expected at least one triplet, got an empty sequence")
        stack, gradient, noise, pixel_size, dz, energy, records = _from_triplets(
            stack, pixel_size, dz, energy, gradient, noise)
    else:
        records = None
        for name, value in (("pixel_size", pixel_size), ("dz", dz), ("energy", energy)):
            if value is None:
                raise InputError(f"{name}: expected a value for an array stack, got None")
        noise = check_noise(noise, 3)
    pixel_size = check_positive("pixel_size", pixel_size, pair=True)
    dz, energy = check_positive("dz", dz, pair=True), check_positive("energy", energy)
    if dz[0] != dz[1]:  # a triplet's pair, as Plan takes it: one step here
        raise InputError(f"dz: expected an even defocus step (one number, or a pair of equal "
                         f"ones as FocalTriplet.dz), got {dz} Å")
    dz = dz[0]
    if is_cupy(stack):
        stack = stack.get()
    lazy = _is_dask(stack)
    given = type(stack).__name__  # what messages name (not the array it gave)
    if not lazy:
        try:
            stack = np.asarray(stack)
        except Exception as exc:  # noqa: BLE001  an __array__ that raises, and the like
            raise InputError(f"stack: could not be read as an array ({given}: "
                             f"{first_line(exc) or type(exc).__name__})") from exc
    b, _, ny, nx = _check_stack(stack, given)
    if gradient is not None:
        if is_cupy(gradient):
            gradient = gradient.get()
        if not _is_dask(gradient):
            gradient = np.asarray(gradient)
        gshape = tuple(int(n) for n in getattr(gradient, "shape", ()))
        if gshape != (b, 2, ny, nx) or np.dtype(gradient.dtype).kind not in "uif":
            raise InputError(f"gradient: expected a real array of shape {(b, 2, ny, nx)} "
                             f"(rad/Å), got {getattr(gradient, 'dtype', None)} {gshape}")
    if method == "icom" and gradient is None:
        raise InputError("gradient: method 'icom' needs the measured phase gradients")
    if batch_size is not None:
        batch_size = min(check_count("batch_size", batch_size, 1), b)
    if not lazy:
        _check_values(stack, None if _is_dask(gradient) else gradient)
    client = _client(client)
    workers = len(client.nthreads())
    if workers < 1:
        raise InputError("client: the cluster has no workers")
    if batch_size is None:
        batch_size = max(1, math.ceil(b / (2 * workers)))
    spec = _Spec((ny, nx), pixel_size, dz, energy, method, backend, threads, dtype, items)
    starts = list(range(0, b, batch_size))
    per_item = isinstance(noise, list)

    def batch_noise(i0):
        return noise[i0:i0 + batch_size] if per_item else noise

    def batch_records(i0):
        return None if records is None else records[i0:i0 + batch_size]

    if lazy or _is_dask(gradient):
        import dask
        import dask.array as da

        stacks = da.asarray(stack).rechunk((batch_size, 3, ny, nx)).to_delayed().ravel()
        grads = [None] * len(starts) if gradient is None else \
            da.asarray(gradient).rechunk((batch_size, 2, ny, nx)).to_delayed().ravel()
        tasks = [dask.delayed(_solve_batch, pure=False)(s, g, batch_noise(i0), spec, i0,
                                                        bool(return_gradient),
                                                        batch_records(i0))
                 for s, g, i0 in zip(stacks, grads, starts)]
        futures = client.compute(tasks)
    else:
        parts = client.scatter([stack[i0:i0 + batch_size] for i0 in starts], hash=False)
        gparts = [None] * len(starts) if gradient is None else client.scatter(
            [gradient[i0:i0 + batch_size] for i0 in starts], hash=False)
        futures = [client.submit(_solve_batch, s, g, batch_noise(i0), spec, i0,
                                 bool(return_gradient), batch_records(i0), pure=False)
                   for s, g, i0 in zip(parts, gparts, starts)]
    phase, grad, verdicts = _gather(client, futures, starts, b)
    _warn_untrusted(verdicts, method)
    out = (phase,) + ((grad,) if return_gradient else ()) + ((verdicts,) if return_info else ())
    return out[0] if len(out) == 1 else out


def _batch_failure(exc, start):
    """A batch that came back as an exception of dask's or of the data's: the
    cluster lost it (a worker died, the cluster closed), the worker failed
    (a file it writes, its host or device memory), or its data could not be
    read on the worker."""
    from distributed import KilledWorker
    from distributed.comm import CommClosedError

    text = f"{type(exc).__name__}: {first_line(exc) or 'no message'}"
    lost = (asyncio.CancelledError, concurrent.futures.CancelledError, KilledWorker,
            CommClosedError, TimeoutError)
    if isinstance(exc, lost):
        return BackendError(f"client: the batch from stack[{start}] was lost on the cluster "
                            f"({text}); a worker died or the cluster closed: check the "
                            "workers' memory and logs, then run again")
    if isinstance(exc, (OSError, MemoryError)):  # a file it writes, its (device) memory
        return BackendError(f"client: a worker failed on the batch from stack[{start}] "
                            f"({text})")
    return InputError(f"stack[{start}]: the batch from this item could not be read or solved "
                      f"on a worker ({text})")


def _gather(client, futures, starts, b):
    """The batches' phases, gradients (or None) and per-item verdicts, in
    input order; the first error cancels the rest."""
    from distributed import as_completed

    index = {f.key: i for i, f in enumerate(futures)}
    phase = grad = None
    verdicts = [{} for _ in range(b)]
    try:
        for future in as_completed(futures):
            try:
                result = future.result()
            except (InputError, BackendError):
                raise
            except (Exception, asyncio.CancelledError) as exc:
                raise _batch_failure(exc, starts[index[future.key]]) from exc
            if result[0] == "error":
                raise _ERRORS.get(result[1], InputError)(result[2])
            _, p, g, v = result
            i0 = starts[index[future.key]]
            verdicts[i0:i0 + len(v)] = v
            if phase is None:
                phase = np.empty((b,) + p.shape[1:], p.dtype)
                grad = np.empty((b,) + g.shape[1:], g.dtype) if g is not None else None
            phase[i0:i0 + len(p)] = p
            if grad is not None:
                grad[i0:i0 + len(g)] = g
    finally:
        client.cancel([f for f in futures if not f.done()])
    return phase, grad, verdicts


def _warn_untrusted(verdicts, method) -> None:
    """One :class:`~flowtie_fast.errors.TrustWarning` in the calling process
    for the items whose solve carried one on its worker."""
    flagged = [(i, v) for i, v in enumerate(verdicts)
               if v.get("trusted") is False or v.get("trust")]
    if not flagged:
        return
    shown = "; ".join(f"stack[{i}]: {v.get('why') or v.get('trust')}"
                      + (f" (returned the {v['fallback']} phase)" if v.get("fallback") else "")
                      for i, v in flagged[:3])
    more = f"; and {len(flagged) - 3} more" if len(flagged) > 3 else ""
    warnings.warn(f"reconstruct_many: {len(flagged)} of {len(verdicts)} {method} phases "
                  f"are not to be trusted as they are: {shown}{more} "
                  "(return_info=True gives every item's verdict)", TrustWarning, stacklevel=3)
