"""The one backend object: NumPy + Numba + pyFFTW on the CPU, CuPy + CUDA + cuFFT on the GPU.

Solvers are written once against :class:`Backend`: its ``xp`` (the array
module), its kernels (the Numba twins or the CUDA kernels, same signatures) and
its transform plans (:class:`RealFFTPlan`, :class:`DCTPlan`), which own their
buffers so that repeated transforms of one shape allocate nothing new on the
CPU.

Transforms are unnormalised: a forward-inverse pair multiplies by
``1 / plan.roundtrip_scale``; the solvers fold ``roundtrip_scale`` into the
Fourier multipliers instead of spending a pass on it.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import threading
import warnings

import numpy as np

from .errors import BackendError, InputError, check_count, first_line

__all__ = ["Backend", "array_module", "get_backend", "gpu_available", "is_cupy", "load_wisdom",
           "save_wisdom"]

_FFTW_FLAGS = ("FFTW_MEASURE",)


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    """True when CuPy imports, sees a device, and a small computation on it succeeds."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False
        x = cupy.arange(8, dtype=cupy.float32)
        return float((x * 2).sum()) == 56.0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def _have_pyfftw() -> bool:
    try:
        import pyfftw  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_no_pyfftw() -> None:
    warnings.warn(
        "pyFFTW is not installed: the CPU backend uses scipy.fft, which is slower; "
        "install pyFFTW (pip install pyfftw) for planned FFTs",
        RuntimeWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- plans


class _FFTWPair:
    """Forward and inverse FFTW plans over the last two axes of a buffer pair
    (one batched plan for a leading axis: 15-20 % faster than a plan per slice
    at 256²-2048² on 2 cores). ``src``/``dst`` arrays of the same layout and
    alignment are transformed in place of the buffers (no copy); others go
    through a copy."""

    def __init__(self, real, spec, threads, forward_kind, inverse_kind):
        import pyfftw

        self.real, self.spec = real, spec
        axes = (-2, -1)
        fwd_kw = {"direction": forward_kind} if forward_kind else {}
        self.fwd = pyfftw.FFTW(real, spec, axes=axes, flags=_FFTW_FLAGS, threads=threads,
                               **fwd_kw)
        self.inv = pyfftw.FFTW(spec, real, axes=axes, direction=inverse_kind,
                               flags=_FFTW_FLAGS + ("FFTW_DESTROY_INPUT",), threads=threads)

    @staticmethod
    def _fits(a, like, alignment):
        return (a.shape == like.shape and a.dtype == like.dtype and a.flags.c_contiguous
                # not a.ctypes.data: it leaves cyclic garbage on every call
                and a.__array_interface__["data"][0] % alignment == 0)

    @staticmethod
    def _run(plan, src, dst, own_src, own_dst):
        """Execute ``plan`` on (src, dst) instead of its own arrays, then restore them."""
        plan.update_arrays(src, dst)
        try:
            plan.execute()
        finally:
            plan.update_arrays(own_src, own_dst)

    def forward(self, src):
        """``spec = T(src)``; forward r2c and r2r plans preserve their input."""
        if src is self.real:
            self.fwd.execute()
        elif self._fits(src, self.real, self.fwd.input_alignment):
            self._run(self.fwd, src, self.spec, self.real, self.spec)
        else:
            self.real[...] = src
            self.fwd.execute()

    def inverse(self, dst):
        """``dst = T⁻¹(spec)`` (``real`` when dst is None); destroys ``spec``."""
        if dst is None or dst is self.real:
            self.inv.execute()
            return self.real
        if self._fits(dst, self.real, self.inv.output_alignment):
            self._run(self.inv, self.spec, dst, self.spec, self.real)
        else:
            self.inv.execute()
            dst[...] = self.real
        return dst


class RealFFTPlan:
    """Real-to-complex 2-D FFT over the last two axes of ``batch + (ny, nx)``.

    Attributes ``real`` and ``spec`` are the work buffers; ``forward(src)``
    transforms ``src`` (default ``real``) into ``spec``; ``inverse(dst)``
    transforms ``spec`` into ``dst`` (default ``real``) and may destroy ``spec``.
    """

    def __init__(self, backend: "Backend", shape, dtype):
        self.backend = backend
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.cdtype = np.result_type(self.dtype, np.complex64)
        ny, nx = self.shape[-2:]
        self.spec_shape = self.shape[:-2] + (ny, nx // 2 + 1)
        self.real = backend.zeros(self.shape, self.dtype)
        self.spec = backend.zeros(self.spec_shape, self.cdtype)
        self._fftw = None
        if backend.fft_library == "pyfftw":
            with backend.fftw_lock:
                self._fftw = _FFTWPair(self.real, self.spec, backend.threads, None,
                                       "FFTW_BACKWARD")
            self.roundtrip_scale = 1.0 / (ny * nx)  # FFTW does not normalise
        else:
            self.roundtrip_scale = 1.0  # scipy's and CuPy's inverse normalise

    def forward(self, src=None):
        """``spec = rfft2(src)``; ``src`` defaults to ``real``."""
        src = self.real if src is None else src
        if self._fftw is not None:
            self._fftw.forward(src)
            return self.spec
        if self.backend.is_gpu:
            out = self.backend.xp.fft.rfft2(src.astype(self.dtype, copy=False))
        else:
            import scipy.fft

            out = scipy.fft.rfft2(src, workers=self.backend.threads)
        return _keep(self, "spec", out)

    def inverse(self, dst=None):
        """``dst = irfft2(spec)`` (unnormalised with pyFFTW); ``spec`` may be destroyed."""
        if self._fftw is not None:
            return self._fftw.inverse(dst)
        ny, nx = self.shape[-2:]
        if self.backend.is_gpu:
            out = self.backend.xp.fft.irfft2(self.spec, s=(ny, nx))
        else:
            import scipy.fft

            out = scipy.fft.irfft2(self.spec, s=(ny, nx), workers=self.backend.threads)
        return _keep(self, "real", out, dst)


def _keep(plan, name, out, dst=None):
    """Put a transform computed by CuPy or scipy into ``dst``, or make it the
    plan's ``name`` buffer: adopted on the GPU when C-contiguous (CuPy allocates
    from its pool; the CUDA kernels take C-ordered arrays), else copied into the
    fixed buffer."""
    if dst is not None:
        dst[...] = out
        return dst
    if plan.backend.is_gpu and out.flags.c_contiguous:
        setattr(plan, name, out)  # cuFFT's output is C-ordered; cupyx's DCT may not be
    else:
        getattr(plan, name)[...] = out
    return getattr(plan, name)


class DCTPlan:
    """DCT-II (forward) and DCT-III (inverse) over the last two axes: the
    even-extension (homogeneous Neumann, "mirror") transform, without padding.

    Same interface as :class:`RealFFTPlan`; ``spec`` is real.
    """

    def __init__(self, backend: "Backend", shape, dtype):
        self.backend = backend
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        ny, nx = self.shape[-2:]
        self.spec_shape = self.shape
        # Unnormalised DCT-II followed by DCT-III multiplies by 2N per axis.
        self.roundtrip_scale = 1.0 / (4.0 * ny * nx)
        self.real = backend.zeros(self.shape, self.dtype)
        self.spec = backend.zeros(self.shape, self.dtype)
        self._fftw = None
        if backend.fft_library == "pyfftw":
            with backend.fftw_lock:
                self._fftw = _FFTWPair(self.real, self.spec, backend.threads,
                                       ["FFTW_REDFT10"] * 2, ["FFTW_REDFT01"] * 2)

    def _module(self):
        if self.backend.is_gpu:
            import cupyx.scipy.fft as module
        else:
            import scipy.fft as module
        return module

    def _kw(self):
        return {} if self.backend.is_gpu else {"workers": self.backend.threads}

    def forward(self, src=None):
        """``spec = DCT-II(src)`` (unnormalised)."""
        src = self.real if src is None else src
        if self._fftw is not None:
            self._fftw.forward(src)
            return self.spec
        out = self._module().dctn(src.astype(self.dtype, copy=False), type=2, axes=(-2, -1),
                                  **self._kw())
        return _keep(self, "spec", out)

    def inverse(self, dst=None):
        """``dst = DCT-III(spec)`` (unnormalised)."""
        if self._fftw is not None:
            return self._fftw.inverse(dst)
        out = self._module().dctn(self.spec, type=3, axes=(-2, -1), **self._kw())
        return _keep(self, "real", out, dst)


# --------------------------------------------------------------------------- backend


class Backend:
    """CPU or GPU execution: array module, kernels and transform plans.

    Parameters
    ----------
    name : {"cpu", "gpu"}
        Where to compute.
    threads : int, optional
        CPU threads for Numba kernels and FFTW plans (default: all cores the
        process may use). Ignored on the GPU.

    Attributes
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    kernels : object
        The Numba twins (CPU) or the CUDA kernels (GPU), same signatures.
    fft_library : str
        ``"pyfftw"``, ``"scipy"`` or ``"cufft"``.
    """

    def __init__(self, name: str = "cpu", threads: int | None = None):
        if name not in ("cpu", "gpu"):
            raise BackendError(f"backend: expected 'auto', 'cpu' or 'gpu', got {name!r}")
        self.name = name
        self.is_gpu = name == "gpu"
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        self.threads = check_count("threads", threads, 1, 4096)
        self.fftw_lock = threading.Lock()
        if self.is_gpu:
            if not gpu_available():
                raise BackendError(
                    "backend='gpu': no CUDA device answers (CuPy missing, no driver or no "
                    "device); use backend='cpu' or 'auto'"
                )
            import cupy

            from ._cuda import CudaKernels, load_module

            load_module()  # compile once, now, so the first solve does not pay for it
            self.xp = cupy
            self.kernels = CudaKernels()
            self.fft_library = "cufft"
        else:
            # Numba's OpenMP workers spin after each parallel region and starve FFTW's
            # threads on few cores (a 256² TIE took 30 ms instead of 1.5 ms on 2 cores).
            # Passive waiting fixes it; it must be set before Numba starts its thread
            # pool, and a user's own setting wins.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            try:
                _import_numba()
                from . import _numba_kernels
            except (ValueError, ImportError) as exc:  # e.g. NUMBA_NUM_THREADS=0
                if isinstance(exc, BackendError):
                    raise
                raise _numba_error(exc) from exc

            self.xp = np
            self.kernels = _numba_kernels
            if not _prefer_threadsafe_layer():
                # Numba's workqueue layer aborts the process when two threads enter
                # parallel kernels at once: serialise every kernel call instead.
                self.kernels = _SerialKernels(_numba_kernels)
            _start_numba_threads()
            self.fft_library = "pyfftw" if _have_pyfftw() else "scipy"
            if self.fft_library == "scipy":
                _warn_no_pyfftw()

    def __repr__(self) -> str:
        extra = f", threads={self.threads}" if not self.is_gpu else ""
        return f"Backend({self.name!r}{extra}, fft={self.fft_library})"

    # ------------------------------------------------------------------ arrays

    def asarray(self, x, dtype=None):
        """``x`` on this backend (a copy only where device or dtype change)."""
        if self.is_gpu:
            return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))
        if is_cupy(x):
            x = x.get()
        if dtype is not None and getattr(x, "dtype", None) != dtype:
            with np.errstate(over="ignore"):  # an overflowing cast is refused by the checks
                return np.ascontiguousarray(x, dtype=dtype)
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x):
        """``x`` as a NumPy array."""
        return x.get() if is_cupy(x) else np.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on the CPU); used around timings."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def prepare(self) -> None:
        """Set per-thread state before running kernels (Numba's thread count)."""
        if not self.is_gpu:
            self.kernels.set_threads(min(self.threads, _numba_max_threads()))

    def plane_stats(self, planes, scratch=None, out=None):
        """The number of negative values and the sum of each plane, as a NumPy
        (N, 2) float64 array.

        One pass over each plane (a Numba kernel on the CPU for float32 and
        float64 arrays; on the GPU the N x 2 values are gathered and copied to
        the host once). A plane is finite exactly when its float64 sum is.
        ``scratch`` (a ``(2, Ny)`` float64 work array) and ``out`` (``(N, 2)``
        float64) let repeated calls allocate nothing.
        """
        if self.is_gpu:
            return array_stats(planes)
        if out is None or out.shape != (len(planes), 2):
            out = np.empty((len(planes), 2))
        for i, p in enumerate(planes):
            if p.dtype in (np.float32, np.float64) and p.ndim == 2:
                if scratch is None or scratch.shape != (2, p.shape[0]):
                    scratch = np.empty((2, p.shape[0]))
                self.kernels.plane_stats(p, scratch, out, i)
            else:
                out[i] = array_stats([p])[0]
        return out

    def available_memory(self) -> int | None:
        """Bytes that can still be allocated: free device memory (plus CuPy's pool)
        on the GPU, the kernel's MemAvailable on Linux, free physical pages
        elsewhere; None where nothing tells."""
        if self.is_gpu:
            free, _ = self.xp.cuda.runtime.memGetInfo()
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())
        return host_available_memory()

    def check_memory(self, name, value, nbytes: int, what: str) -> None:
        """Refuse, before allocating, work that needs more memory than is available:
        :class:`InputError` naming ``name`` (=``value``) with both figures."""
        _refuse_beyond(name, value, nbytes, what, self.available_memory(), self.name)

    def check_output(self, name, a, shape, dtype, inputs=(), input_names=()):
        """Validate a caller-supplied output array before any work is done.

        It must be an array of this backend (NumPy on the CPU, CuPy on the
        GPU) of exactly ``shape`` and ``dtype``, C-contiguous, aligned,
        writeable, and share no memory with any of ``inputs`` (arrays or None,
        named by ``input_names`` in the message); otherwise
        :class:`InputError` naming ``name``. Returns ``a``.
        """
        want = "CuPy" if self.is_gpu else "NumPy"
        if self.is_gpu != is_cupy(a) or not (is_cupy(a) or isinstance(a, np.ndarray)):
            raise InputError(f"{name}: expected a writeable {want} array for this {self.name} "
                             f"backend, got {type(a).__name__}")
        dtype = np.dtype(dtype)
        if a.dtype != dtype or tuple(a.shape) != tuple(shape):
            raise InputError(f"{name}: expected a {dtype} array of shape {tuple(shape)}, got "
                             f"{a.dtype} {tuple(a.shape)}")
        flags = a.flags
        if not flags.c_contiguous:
            raise InputError(f"{name}: expected a C-contiguous array (e.g. np.empty{shape}), "
                             "got a strided view")
        if not self.is_gpu:
            if not flags.writeable:
                raise InputError(f"{name}: the array is read-only (a read-only memory map, a "
                                 "view of bytes, or writeable=False); pass a writeable array")
            if not flags.aligned:
                raise InputError(f"{name}: the array is not aligned to its {dtype} items; "
                                 "pass an array allocated by NumPy")
        for i, other in enumerate(inputs):
            if other is not None and xp_may_share_memory(a, other):
                raise InputError(f"{name}: shares memory with {input_names[i]}; pass a "
                                 "separate output array")
        return a

    def empty(self, shape, dtype):
        """An uninitialised array, SIMD-aligned for FFTW on the CPU (so that
        transforms can write into it directly)."""
        if self.fft_library == "pyfftw":
            import pyfftw

            return pyfftw.empty_aligned(shape, dtype)
        return self.xp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """A zeroed work array, SIMD-aligned for FFTW on the CPU."""
        if self.fft_library == "pyfftw":
            import pyfftw

            return pyfftw.zeros_aligned(shape, dtype)
        return self.xp.zeros(shape, dtype)

    # ------------------------------------------------------------------ plans

    def rfft_plan(self, shape, dtype) -> RealFFTPlan:
        """A real FFT plan owning its buffers for arrays of ``shape`` (…, ny, nx)."""
        return RealFFTPlan(self, shape, dtype)

    def dct_plan(self, shape, dtype) -> DCTPlan:
        """A DCT-II / DCT-III plan owning its buffers."""
        return DCTPlan(self, shape, dtype)


def _prefer_threadsafe_layer() -> bool:
    """Ask Numba for a threading layer that parallel kernels may enter from many
    threads at once (omp or tbb; the fallback workqueue layer aborts the process
    on concurrent calls), where one is installed and the user chose none.

    Returns whether the layer in use is thread-safe: False when the user chose
    ``workqueue`` (NUMBA_THREADING_LAYER) or neither omp nor tbb is installed.
    """
    import importlib

    import numba

    chosen = os.environ.get("NUMBA_THREADING_LAYER", "").strip().lower()
    if chosen:
        return chosen in ("omp", "tbb", "threadsafe", "safe")
    if str(numba.config.THREADING_LAYER).lower() in ("omp", "tbb", "threadsafe", "safe"):
        return True
    for layer in ("omppool", "tbbpool"):
        try:
            importlib.import_module(f"numba.np.ufunc.{layer}")
        except ImportError:
            continue
        numba.config.THREADING_LAYER = "threadsafe"
        return True
    return False


def _start_numba_threads() -> None:
    """Start Numba's thread pool now, so that a bad NUMBA_THREADING_LAYER or
    NUMBA_NUM_THREADS is a :class:`BackendError` naming them, here, rather
    than Numba's error at the first kernel call."""
    import numba

    try:
        count = os.environ.get("NUMBA_NUM_THREADS", "").strip()
        if count and not count.isdigit():  # Numba would warn and ignore it
            raise ValueError(f"NUMBA_NUM_THREADS must be a positive integer, got {count!r}")
        numba.get_num_threads()  # launches the pool with the configured layer
    except (ValueError, ImportError, RuntimeError) as exc:
        raise _numba_error(exc) from exc


#: NUMBA_* variables Numba could not parse when this process imported it:
#: name -> (value, Numba's reason). Numba then ignores the value (its warning
#: carries a traceback); the CPU backend refuses to start instead.
_NUMBA_UNREAD: dict = {}
_NUMBA_WARNING = re.compile(r"Environment variable '(NUMBA_\w+)' is defined but its associated "
                            r"value '(.*?)' could not be parsed", re.S)


def _import_numba() -> None:
    """Import Numba with its warnings about NUMBA_* variables it cannot parse
    caught (each is a multi-line warning with a traceback), and refuse such a
    setting with a one-line :class:`BackendError` naming the variable, its
    value and Numba's reason. Where Numba was imported before (by another
    library), its warnings were shown then and only the settings this module
    checks itself are refused (:func:`_start_numba_threads`)."""
    if "numba" not in sys.modules:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import numba  # noqa: F401
        for w in caught:
            match = _NUMBA_WARNING.match(str(w.message))
            if match is None:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno,
                                       source=w.source)
                continue
            lines = [x.strip() for x in str(w.message).splitlines() if x.strip()]
            _NUMBA_UNREAD[match[1]] = (match[2], lines[-1] if lines else "")
    unread = {k: v for k, v in _NUMBA_UNREAD.items() if os.environ.get(k) == v[0]}
    if unread:
        name, (value, reason) = next(iter(unread.items()))
        reason = reason.split(": ", 1)[-1] if reason.startswith(("ValueError", "TypeError",
                                                                 "KeyError")) else reason
        raise BackendError(f"backend: Numba does not start: it cannot read {name}={value!r} "
                           f"({reason}); correct or unset {name}")


def _numba_error(exc) -> BackendError:
    """Numba refused its configuration: say which variables to check."""
    settings = ", ".join(f"{k}={os.environ[k]!r}" for k in
                         ("NUMBA_THREADING_LAYER", "NUMBA_NUM_THREADS") if k in os.environ)
    return BackendError(f"backend: Numba does not start ({first_line(exc)}); check "
                        f"{settings or 'the NUMBA_* environment variables'} (layers: omp, tbb, "
                        "workqueue; threads: a positive integer)")


_KERNEL_LOCK = threading.Lock()


class _SerialKernels:
    """The Numba kernels behind one process-wide lock, for a threading layer that
    must not be entered by two threads at once (workqueue): solves from several
    threads stay correct and run one kernel at a time."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if not callable(attr) or name == "set_threads":
            return attr

        def serial(*args, **kwargs):
            with _KERNEL_LOCK:
                return attr(*args, **kwargs)

        return serial


WISDOM_FORMAT = "flowtie_fast/fftw-wisdom/1"


def _wisdom_path(path, *, creatable: bool = False) -> str:
    """``path`` as a file path for wisdom; :class:`InputError` naming ``wisdom``.

    The path must be one the system takes (no NUL, names within the file
    system's limits), not a folder, and its parent folders not files. With
    ``creatable`` a path that does not exist yet must be creatable: its
    folder (or the nearest existing one) writable, tried by creating and
    removing a temporary there, so that a plan refuses it before planning
    rather than after (the wisdom is written there when planning ends)."""
    from .io import _create_tmp, _tmp_stem, as_path, check_target

    if isinstance(path, str) and not path:
        raise InputError("wisdom: expected a file path, got ''")
    target = as_path("wisdom", path)
    path = os.fspath(target)
    try:
        if os.path.isdir(path):
            raise InputError(f"wisdom: {path!r} is a folder, expected a file path")
    except OSError as exc:
        raise InputError(f"wisdom: {path!r} cannot be used ({exc.strerror})") from exc
    if creatable and not os.path.lexists(path):
        check_target("wisdom", target, True, "")
        folder = target.parent
        if folder.is_dir():
            try:
                os.unlink(_create_tmp(folder, _tmp_stem(target.name)))
            except OSError as exc:
                raise InputError(f"wisdom: {path!r} cannot be created in {str(folder)!r} "
                                 f"({exc.strerror or first_line(exc)}); give a path in a "
                                 "folder you can write") from exc
    return path


def _read_wisdom(path: str) -> tuple:
    """The wisdom pieces of a file written by :func:`save_wisdom`;
    :class:`BackendError` for any other file (nothing in it is unpickled)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["format"]) != WISDOM_FORMAT:
                raise ValueError(f"format {str(f['format'])!r}")
            return tuple(f[f"w{i}"].tobytes() for i in range(len(f.files) - 1))
    except Exception as exc:  # noqa: BLE001  every failure to read is the file's
        reason = "no 'format' entry" if isinstance(exc, KeyError) else \
            first_line(exc).split(". ")[0]
        raise BackendError(f"wisdom: {path!r} is not an FFTW wisdom file written by "
                           f"flowtie_fast ({reason}); give another path (it is never "
                           "replaced)") from exc


def save_wisdom(path) -> None:
    """Write FFTW's accumulated wisdom (the measured plans) to ``path`` atomically.

    Planning a solver's transforms with FFTW_MEASURE took about 0.5 s at 256²
    on 2 cores; with the wisdom read back (:func:`load_wisdom`) a later
    process planned them in ~7 ms (benchmarks/RESULTS.md). An existing file
    is replaced only if it is a wisdom file itself (:class:`BackendError`
    otherwise: someone's data is never overwritten).
    """
    path = _wisdom_path(path)
    if not _have_pyfftw():
        return
    import pyfftw

    from .io import atomic_path

    wisdom = pyfftw.export_wisdom()
    if os.path.lexists(path) and _read_wisdom(path) == tuple(wisdom):  # refuses another kind
        return  # nothing new to write (the file may be shared and read-only)
    pieces = {f"w{i}": np.frombuffer(w, np.uint8) for i, w in enumerate(wisdom)}
    with atomic_path(path, name="wisdom") as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(WISDOM_FORMAT), **pieces)


def load_wisdom(path) -> bool:
    """Read FFTW wisdom written by :func:`save_wisdom`; False when ``path`` does
    not exist yet. A file of another kind raises :class:`BackendError`.

    A path that does not exist must be one :func:`save_wisdom` can create
    (its folder writable): :class:`InputError` naming ``wisdom`` otherwise,
    so that ``Plan(wisdom=...)`` refuses it before planning."""
    path = _wisdom_path(path, creatable=True)
    if not _have_pyfftw() or not os.path.exists(path):
        return False
    import pyfftw

    pyfftw.import_wisdom(_read_wisdom(path))
    return True


def _numba_max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


def is_cupy(x) -> bool:
    """True for CuPy arrays (checked without importing CuPy)."""
    return type(x).__module__.startswith("cupy")


def array_stats(planes) -> np.ndarray:
    """The number of negative values and the float64 sum of each plane (NumPy
    or CuPy arrays), as a NumPy (N, 2) float64 array, by the array module's
    own reductions: no kernel to compile or load (on the GPU, the N x 2 values
    are gathered and copied to the host once)."""
    if planes and is_cupy(planes[0]):
        xp = array_module(planes[0])
        return xp.stack([xp.stack([(p < 0).sum(dtype=xp.float64), p.sum(dtype=xp.float64)])
                         for p in planes]).get()
    return np.array([(np.count_nonzero(p < 0), p.sum(dtype=np.float64)) for p in planes],
                    dtype=np.float64).reshape(len(planes), 2)


def host_available_memory() -> int | None:
    """Bytes of host memory that can still be allocated: the kernel's
    MemAvailable on Linux, free physical pages elsewhere; None where nothing
    tells. Needs no backend (nothing is imported or compiled)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_host_memory(name, value, nbytes: int, what: str) -> None:
    """:meth:`Backend.check_memory` for host memory, without a backend (nothing
    compiled): refuse work that needs more than is available now, with
    :class:`InputError` naming ``name`` (=``value``)."""
    _refuse_beyond(name, value, nbytes, what, host_available_memory(), "cpu")


def _refuse_beyond(name, value, nbytes, what, available, where) -> None:
    if available is not None and nbytes > available:
        raise InputError(f"{name}: {value} needs about {_gib(nbytes)} for {what}, more "
                         f"than the {_gib(available)} available on the {where}; "
                         "use a smaller size or another machine")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def xp_may_share_memory(a, b) -> bool:
    """Whether two arrays of one module may overlap (bounds only: no search);
    arrays of different modules never do."""
    if is_cupy(a) != is_cupy(b):
        return False
    return bool(array_module(a).may_share_memory(a, b))


def array_module(x):
    """``numpy`` or ``cupy``, whichever ``x`` belongs to."""
    if is_cupy(x):
        import cupy

        return cupy
    return np


_BACKENDS: dict = {}
_BACKENDS_LOCK = threading.Lock()


def get_backend(backend="auto", threads: int | None = None, like=None) -> Backend:
    """Return the (cached) backend for a name.

    Parameters
    ----------
    backend : {"auto", "cpu", "gpu"} or Backend
        ``"auto"`` takes the GPU when ``like`` is a CuPy array or when a CUDA
        device answers, else the CPU. ``"gpu"`` without a device raises
        :class:`~flowtie_fast.errors.BackendError` (never a silent fallback).
    threads : int, optional
        CPU thread count (see :class:`Backend`).
    like : array, optional
        An input array; a CuPy array makes ``"auto"`` choose the GPU.
    """
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str) or backend not in ("auto", "cpu", "gpu"):
        raise BackendError(f"backend: expected 'auto', 'cpu' or 'gpu', got {backend!r}")
    if backend == "auto":
        backend = "gpu" if (like is not None and is_cupy(like)) or gpu_available() else "cpu"
    if threads is not None:
        threads = check_count("threads", threads, 1, 4096)
    key = (backend, threads)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = Backend(backend, threads)
        return _BACKENDS[key]
