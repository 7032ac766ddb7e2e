"""The one backend object: NumPy + Numba + pyFFTW on the CPU, CuPy + CUDA + cuFFT on the GPU.

Solvers are written once against :class:`Backend`: its ``xp`` (the array
module), its kernels (the Numba twins or the CUDA kernels, same signatures),
its thread count and the FFT library its transform plans use
(:mod:`flowtie_fast.fft`); arrays it allocates are SIMD-aligned for FFTW.
It also checks arrays and memory against the device before work starts.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import sys
import threading
import warnings

import numpy as np

try:  # POSIX: the address-space limit (host_available_memory)
    import resource
except ImportError:  # pragma: no cover - not POSIX
    resource = None

from . import _numpy_kernels, _threads
from ._cuda import CudaKernels, load_module
from .errors import BackendError, InputError, check_count, first_line, user_stacklevel

__all__ = ["KERNELS", "Backend", "array_module", "get_backend", "gpu_available", "is_cupy",
           "to_host"]

#: The CPU kernel sets of :class:`Backend`.
KERNELS = ("numba", "numpy")


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


#: Modules that pyFFTW's package imports for interfaces flowtie_fast does not
#: use (its dask.fft and scipy.fftpack twins): 0.4 s of a process start on an
#: unloaded 2-core machine, 1.4-1.9 s on a loaded one.
_PYFFTW_UNUSED = ("dask.array.fft", "scipy.fftpack")


def _import_pyfftw():
    """Import pyFFTW without its dask and scipy.fftpack interfaces (they are
    skipped as if dask and scipy were missing; ``pyfftw.interfaces`` then
    lacks them in this process); ImportError where pyFFTW is not installed."""
    if "pyfftw" in sys.modules:
        return sys.modules["pyfftw"]
    skipped = [m for m in _PYFFTW_UNUSED if m not in sys.modules]
    for m in skipped:
        sys.modules[m] = None  # an ImportError for pyFFTW's optional interfaces
    try:
        import pyfftw
    finally:
        for m in skipped:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]
    return pyfftw


def _have_pyfftw() -> bool:
    try:
        _import_pyfftw()
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_no_pyfftw() -> None:
    warnings.warn(
        "pyFFTW is not installed: the CPU backend uses scipy.fft, which is slower; "
        "install pyFFTW (pip install pyfftw) for planned FFTs",
        RuntimeWarning,
        stacklevel=user_stacklevel(),
    )


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
    kernels : {"numba", "numpy"}
        The CPU kernels (default ``"numba"``): the Numba twins of the CUDA
        kernels (parallel, fastest per call; a new process pays about
        0.5-0.8 s to import Numba and load their cached machine code before
        the first call), or the same arithmetic as whole-array NumPy
        operations (no start-up cost, several times slower per call on large
        arrays): for one-shot work in a fresh process, such as one command-line
        reconstruction. Results agree to float32 rounding. Only ``"numba"``
        on the GPU, whose kernels are CUDA.

    Attributes
    ----------
    xp : module
        ``numpy`` or ``cupy``.
    kernels : object
        The Numba twins or the NumPy kernels (CPU) or the CUDA kernels (GPU),
        same signatures.
    kernel_set : {"numba", "numpy", "cuda"}
        Which of them.
    fft_library : str
        ``"pyfftw"``, ``"scipy"`` or ``"cufft"``.
    """

    def __init__(self, name: str = "cpu", threads: int | None = None, kernels: str = "numba"):
        if name not in ("cpu", "gpu"):
            raise BackendError(f"backend: expected 'auto', 'cpu' or 'gpu', got {name!r}")
        if kernels not in KERNELS or (name == "gpu" and kernels != "numba"):
            raise BackendError(f"kernels: expected one of {KERNELS} on the CPU, 'numba' on the "
                               f"GPU (CUDA kernels), got {kernels!r} for backend {name!r}")
        self.name = name
        self.kernel_set = "cuda" if name == "gpu" else kernels
        self.is_gpu = name == "gpu"
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
                os.cpu_count() or 1)
        self.threads = check_count("threads", threads, 1, 4096)
        self.fft_threads = self.threads  # FFTW's (capped by _threads' decision)
        self.fftw_lock = threading.Lock()
        if self.is_gpu:
            if not gpu_available():
                raise BackendError(
                    "backend='gpu': no CUDA device answers (CuPy missing, no driver or no "
                    "device); use backend='cpu' or 'auto'"
                )
            import cupy

            load_module()  # compile once, now, so the first solve does not pay for it
            self.xp = cupy
            self.kernels = CudaKernels()
            self.fft_library = "cufft"
        else:
            # Passive OpenMP runtimes for Numba and FFTW whatever was imported first
            # (PyTorch puts its spinning libgomp in the global scope): decided before
            # Numba starts its thread pool and pyFFTW is loaded; see _threads.
            openmp = _threads.prepare()
            self.xp = np
            self.fft_threads = min(self.threads, openmp.fftw_threads or self.threads)
            self.fft_library = "pyfftw" if _have_pyfftw() else "scipy"
            if self.fft_library == "scipy":
                _warn_no_pyfftw()
            if kernels == "numpy":
                self.kernels = _numpy_kernels
                self.numba_threads = 1
                return
            try:
                _import_numba()
                from . import _numba_kernels
            except (ValueError, ImportError) as exc:  # e.g. NUMBA_NUM_THREADS=0
                if isinstance(exc, BackendError):
                    raise
                raise _numba_error(exc) from exc

            self.kernels = _numba_kernels
            # a cap on the kernels' threads where Numba's OpenMP runtime spins
            self.numba_threads = openmp.numba_threads or self.threads
            if not _prefer_threadsafe_layer():
                # Numba's workqueue layer aborts the process when two threads enter
                # parallel kernels at once: serialise every kernel call instead.
                self.kernels = _SerialKernels(_numba_kernels)
            _start_numba_threads()

    def __repr__(self) -> str:
        extra = f", threads={self.threads}" if not self.is_gpu else ""
        extra += ", kernels='numpy'" if self.kernel_set == "numpy" else ""
        return f"Backend({self.name!r}{extra}, fft={self.fft_library})"

    # ------------------------------------------------------------------ arrays

    def asarray(self, x, dtype=None):
        """``x`` on this backend (a copy only where device or dtype change).

        Parameters
        ----------
        x : array-like
            NumPy, CuPy or anything ``numpy.asarray`` takes.
        dtype : dtype, optional
            The dtype wanted (default: ``x``'s own).

        Returns
        -------
        ndarray or cupy.ndarray
            A C-contiguous array of this backend's module.
        """
        if self.is_gpu:
            return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))
        if is_cupy(x):
            x = x.get()
        if dtype is not None and getattr(x, "dtype", None) != dtype:
            with np.errstate(over="ignore"):  # an overflowing cast is refused by the checks
                return np.ascontiguousarray(x, dtype=dtype)
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x):
        """``x`` as a NumPy array.

        Parameters
        ----------
        x : array-like
            A NumPy or CuPy array (a CuPy array is copied to the host).

        Returns
        -------
        ndarray
            ``x`` on the host (not copied where it already is a NumPy array).
        """
        return x.get() if is_cupy(x) else np.asarray(x)

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on the CPU); used around timings."""
        if self.is_gpu:
            self.xp.cuda.get_current_stream().synchronize()

    def prepare(self) -> None:
        """Set per-thread state before running kernels (Numba's thread count)."""
        if self.kernel_set == "numba":
            self.kernels.set_threads(min(self.threads, self.numba_threads, _numba_max_threads()))

    def plane_stats(self, planes, scratch=None, out=None):
        """The number of negative values and the sum of each plane, as a NumPy
        (N, 2) float64 array.

        One pass over each plane (a Numba kernel on the CPU for float32 and
        float64 arrays; on the GPU the N x 2 values are gathered and copied to
        the host once). A plane is finite exactly when its float64 sum is.

        Parameters
        ----------
        planes : sequence of N arrays (Ny, Nx)
            The planes, on this backend.
        scratch : ndarray (2, Ny) of float64, optional
            Work array, so that repeated calls allocate nothing (made when
            missing or of another shape).
        out : ndarray (N, 2) of float64, optional
            Where to write the result (made when missing or of another shape).

        Returns
        -------
        ndarray (N, 2) of float64
            Per plane: the number of negative values and the sum (the planes'
            unit).
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
        """Bytes that can still be allocated.

        Returns
        -------
        int or None
            Free device memory (plus CuPy's pool) on the GPU, the kernel's
            MemAvailable on Linux, free physical pages elsewhere, in bytes;
            None where nothing tells.
        """
        if self.is_gpu:
            free, _ = self.xp.cuda.runtime.memGetInfo()
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())
        return host_available_memory()

    def check_memory(self, name, value, nbytes: int, what: str) -> None:
        """Refuse, before allocating, work that needs more memory than is available.

        Parameters
        ----------
        name : str
            The argument the message names (e.g. ``"shape"``).
        value : object
            Its value, as the message shows it.
        nbytes : int
            Memory the work needs, in bytes.
        what : str
            What the memory is for, as the message says it.

        Raises
        ------
        InputError
            Naming ``name`` (=``value``), with the memory needed and available.
        """
        _refuse_beyond(name, value, nbytes, what, self.available_memory(), self.name)

    def check_output(self, name, a, shape, dtype, inputs=(), input_names=()):
        """Validate a caller-supplied output array before any work is done.

        It must be an array of this backend (NumPy on the CPU, CuPy on the
        GPU) of exactly ``shape`` and ``dtype``, C-contiguous, aligned,
        writeable, and share no memory with any of ``inputs``.

        Parameters
        ----------
        name : str
            The argument's name, as messages give it.
        a : array
            The output array.
        shape : tuple of int
            The shape it must have.
        dtype : dtype
            The dtype it must have.
        inputs : sequence of arrays or None, optional
            Arrays it must not overlap (default none).
        input_names : sequence of str, optional
            Their names, as messages give them.

        Returns
        -------
        array
            ``a`` itself.

        Raises
        ------
        InputError
            Naming ``name`` and what is wrong.
        """
        want = "CuPy" if self.is_gpu else "NumPy"
        if self.is_gpu != is_cupy(a) or not (is_cupy(a) or isinstance(a, np.ndarray)):
            raise InputError(f"{name}: expected a writeable {want} array for this {self.name} "
                             f"backend, got {type(a).__name__}")
        if isinstance(a, (np.matrix, np.ma.MaskedArray)):  # indexing or a mask of their own
            raise InputError(f"{name}: expected a plain NumPy array, got {type(a).__name__} "
                             f"(pass e.g. np.empty({tuple(shape)}, np.{np.dtype(dtype).name}))")
        dtype = np.dtype(dtype)
        if a.dtype != dtype or tuple(a.shape) != tuple(shape):
            raise InputError(f"{name}: expected a {dtype} array of shape {tuple(shape)}, got "
                             f"{a.dtype} {tuple(a.shape)}")
        flags = a.flags
        if not flags.c_contiguous:
            raise InputError(f"{name}: expected a C-contiguous array (e.g. "
                             f"np.empty({tuple(shape)}, np.{dtype.name})), got a strided view")
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
        transforms can write into it directly).

        Parameters
        ----------
        shape : tuple of int
            The array's shape.
        dtype : dtype
            The array's dtype.

        Returns
        -------
        ndarray or cupy.ndarray
            Of this backend's module, uninitialised.
        """
        if self.fft_library == "pyfftw":
            import pyfftw

            return pyfftw.empty_aligned(shape, dtype)
        return self.xp.empty(shape, dtype)

    def zeros(self, shape, dtype):
        """A zeroed work array, SIMD-aligned for FFTW on the CPU.

        Parameters
        ----------
        shape : tuple of int
            The array's shape.
        dtype : dtype
            The array's dtype.

        Returns
        -------
        ndarray or cupy.ndarray
            Of this backend's module, filled with zeros.
        """
        if self.fft_library == "pyfftw":
            import pyfftw

            return pyfftw.zeros_aligned(shape, dtype)
        return self.xp.zeros(shape, dtype)


def _prefer_threadsafe_layer() -> bool:
    """Ask Numba for a threading layer that parallel kernels may enter from many
    threads at once (omp or tbb; the fallback workqueue layer aborts the process
    on concurrent calls), where one is installed and the user chose none.

    Returns whether the layer in use is thread-safe: False when the user chose
    ``workqueue`` (NUMBA_THREADING_LAYER) or neither omp nor tbb is installed.
    """
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


def _numba_max_threads() -> int:
    import numba

    return numba.config.NUMBA_NUM_THREADS


def is_cupy(x) -> bool:
    """Whether ``x`` is a CuPy array (checked without importing CuPy).

    Parameters
    ----------
    x : object
        Any object.

    Returns
    -------
    bool
        True for objects of CuPy's types.
    """
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
    # The negatives are counted only where there are any: ``p < 0`` is a boolean
    # image of the plane's size, which a memory map or a broadcast view does not hold.
    return np.array([(np.count_nonzero(p < 0) if p.size and p.min() < 0 else 0,
                      p.sum(dtype=np.float64)) for p in planes],
                    dtype=np.float64).reshape(len(planes), 2)


def host_available_memory() -> int | None:
    """Bytes of host memory this process can still allocate: the least of the
    kernel's MemAvailable on Linux (free physical pages elsewhere), what the
    memory limit of the process's control group leaves (a container's or a
    batch job's) and what its address-space limit leaves (``ulimit -v``);
    None where nothing tells. Needs no backend (nothing is imported or
    compiled); reads a few small files (~0.1 ms)."""
    figures = [_meminfo_available(), _cgroup_headroom(), _address_space_headroom()]
    figures = [f for f in figures if f is not None]
    return min(figures) if figures else None


def _meminfo_available() -> int | None:
    """The kernel's MemAvailable (Linux), else free physical pages, in bytes."""
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


#: A control-group limit at or above this many bytes is no limit ("max", or
#: cgroup v1's page-counter maximum).
_NO_LIMIT = 1 << 60


def _cgroup_headroom(root: str = "/sys/fs/cgroup", table: str = "/proc/self/cgroup"):
    """Bytes the memory control groups of this process still allow: the
    least of limit minus usage over its group and the groups above it
    (cgroup v2 ``memory.max``/``memory.current``, v1
    ``memory.limit_in_bytes``/``memory.usage_in_bytes``); None where no limit
    is set or none can be read. ``root`` and ``table`` are the mount and the
    process's membership (for tests)."""
    try:
        with open(table) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":  # v2
            base, limit_file, usage_file = root, "memory.max", "memory.current"
        elif "memory" in parts[1].split(","):  # v1
            base = os.path.join(root, "memory")
            limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
        else:
            continue
        group = parts[2].strip("/")
        while True:  # the group and every group above it, to the mount's root
            folder = os.path.join(base, group) if group else base
            left = _group_left(folder, limit_file, usage_file)
            if left is not None:
                best = left if best is None else min(best, left)
            if not group:
                break
            group = os.path.dirname(group)
    return best


def _group_left(folder: str, limit_file: str, usage_file: str):
    """Limit minus usage of one control group, bytes; None without a limit."""
    try:
        with open(os.path.join(folder, limit_file)) as f:
            limit = f.read().strip()
        if limit == "max" or int(limit) >= _NO_LIMIT:
            return None
        with open(os.path.join(folder, usage_file)) as f:
            usage = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return max(int(limit) - usage, 0)


def _address_space_headroom():
    """Bytes of address space the process may still map under its soft
    ``RLIMIT_AS`` (``ulimit -v``), less what it maps now; None without one."""
    if resource is None:
        return None
    try:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft == resource.RLIM_INFINITY:
            return None
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return max(soft - mapped, 0)


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


def to_host(x):
    """``x`` as a NumPy array.

    Parameters
    ----------
    x : array-like
        A CuPy array (copied to the host) or anything ``numpy.asarray`` takes.

    Returns
    -------
    ndarray
        ``x`` on the host (not copied where it already is a NumPy array).
    """
    return x.get() if is_cupy(x) else np.asarray(x)


def array_module(x):
    """The array module of ``x``.

    Parameters
    ----------
    x : array-like
        A CuPy array, or anything else (NumPy's).

    Returns
    -------
    module
        ``cupy`` for a CuPy array, else ``numpy``.
    """
    if is_cupy(x):
        import cupy

        return cupy
    return np


_BACKENDS: dict = {}
_BACKENDS_LOCK = threading.Lock()


def get_backend(backend="auto", threads: int | None = None, like=None,
                kernels: str = "numba") -> Backend:
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
    kernels : {"numba", "numpy"}
        The CPU kernel set (see :class:`Backend`; default ``"numba"``); a GPU
        (``"gpu"``, or ``"auto"`` finding a device) always runs its CUDA
        kernels and ignores ``"numpy"``.

    Returns
    -------
    Backend
        ``backend`` itself where it is one, else the backend cached for the
        name, thread count and kernel set (made on first use).
    """
    if isinstance(backend, Backend):
        return backend
    if not isinstance(backend, str) or backend not in ("auto", "cpu", "gpu"):
        raise BackendError(f"backend: expected 'auto', 'cpu' or 'gpu', got {backend!r}")
    if backend == "auto":
        backend = "gpu" if (like is not None and is_cupy(like)) or gpu_available() else "cpu"
    if threads is not None:
        threads = check_count("threads", threads, 1, 4096)
    if kernels not in KERNELS:
        raise BackendError(f"kernels: expected one of {KERNELS}, got {kernels!r}")
    if backend == "gpu":
        kernels = "numba"
    key = (backend, threads, kernels)
    with _BACKENDS_LOCK:
        if key not in _BACKENDS:
            _BACKENDS[key] = Backend(backend, threads, kernels)
        return _BACKENDS[key]
