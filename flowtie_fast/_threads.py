"""The CPU backend's OpenMP runtimes, chosen before Numba and pyFFTW load theirs.

Numba's ``omp`` threading layer and pyFFTW's threaded FFTW call GNU OpenMP
(``GOMP_parallel``). The dynamic linker binds those calls to the first
OpenMP runtime in the process's *global* symbol scope when there is one, not
to the runtime each library ships with. PyTorch puts its own ``libgomp`` there
when it is imported (``RTLD_GLOBAL``), and a runtime reads ``OMP_WAIT_POLICY``
once, when it is loaded. So with PyTorch imported first, Numba's kernels and
FFTW's transforms run on PyTorch's runtime, whose idle workers spin (it was
loaded before the CPU backend could ask for passive waiting); on cores shared
with other busy programs a spinning worker holds a core that a preempted one
needs, and a 256² ``tie`` becomes up to tens of times slower per solve
(``scripts/busy_host.py`` measures it).

:func:`prepare` is called by the CPU backend before it imports Numba's kernels
and pyFFTW. It asks for passive waiting (``OMP_WAIT_POLICY=PASSIVE`` unless
the user set a policy) and, when another OpenMP runtime is already in the
global scope, loads Numba's ``omppool`` and pyFFTW's ``libfftw3*_omp``
libraries with ``RTLD_DEEPBIND``: their OpenMP calls then bind to their own
runtimes, loaded now and therefore passive, exactly as when flowtie_fast is
imported first. Where that cannot be done (the runtime they would use was
initialised before, or pyFFTW was loaded before), the fallback runs the
backend's Numba kernels and FFTW on one thread each (no idle workers to
spin). Numba's threading layer is never changed: it is the process's, and
the host's own parallel Numba code may depend on it.

With ``LD_PRELOAD`` set (a preloaded allocator would be bypassed by a
library loaded with ``RTLD_DEEPBIND``) the fallback is taken directly.

Nothing is changed when the user set ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
(their runtime, their choice: the shared runtime is then configured as they
asked), and ``FLOWTIE_OMP_GUARD=0`` (or false/no/off, any case) turns the
guard off; 1/true/yes/on keep it on; any other value raises
:class:`~flowtie_fast.BackendError` naming the variable when the CPU backend
is made.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import sys
import threading

from .errors import BackendError

__all__ = ["Decision", "check_thread_count", "describe", "prepare"]

_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_LOCK = threading.Lock()
_DECISION = None


class Decision:
    """What :func:`prepare` found and chose.

    Each parameter is kept as the attribute of the same name.

    Parameters
    ----------
    foreign : str or None, optional
        The OpenMP runtime in the global symbol scope before the backend
        loaded its own (PyTorch's libgomp, ...), or None (the default).
    isolated : dict, optional
        ``{"numba": runtime, "fftw": runtime}``: the runtimes the libraries
        loaded with RTLD_DEEPBIND bind to (default None: kept as ``{}``, a
        copy of a dict given).
    numba_threads : int or None, optional
        A cap on the threads of the backend's Numba kernels (1) when Numba's
        OpenMP calls go to a runtime that spins; None (the default): no cap.
    fftw_threads : int or None, optional
        A cap on FFTW's threads (1) when FFTW's OpenMP calls go to a runtime
        that spins; None (the default): no cap.
    reason : str, optional
        One line for reports and tests (default "").
    """

    def __init__(self, foreign=None, isolated=None, numba_threads=None, fftw_threads=None,
                 reason=""):
        self.foreign = foreign
        self.isolated = dict(isolated or {})
        self.numba_threads = numba_threads
        self.fftw_threads = fftw_threads
        self.reason = reason

    def __repr__(self) -> str:
        return (f"Decision(foreign={self.foreign!r}, isolated={self.isolated!r}, "
                f"numba_threads={self.numba_threads}, fftw_threads={self.fftw_threads}, "
                f"reason={self.reason!r})")


def prepare() -> Decision:
    """Choose the OpenMP runtimes of the CPU backend, once per process (later
    calls return the first decision). Call before Numba's threading layer and
    pyFFTW are loaded.

    Returns
    -------
    Decision
        The decision of the first call, shared by every later one.

    Raises
    ------
    BackendError
        Where ``FLOWTIE_OMP_GUARD`` holds a value that is neither on nor off,
        ``OMP_NUM_THREADS`` one the runtimes cannot take
        (:func:`check_thread_count`), or ``OMP_WAIT_POLICY`` or
        ``GOMP_SPINCOUNT`` one they would ignore (:func:`check_wait_policy`).
    """
    global _DECISION
    with _LOCK:
        if _DECISION is None:
            check_thread_count()  # before an OpenMP runtime reads them
            check_wait_policy()
            _DECISION = _decide()
        return _DECISION


def check_thread_count() -> None:
    """Refuse an ``OMP_NUM_THREADS`` the OpenMP runtimes of Numba and FFTW would
    crash on (thread creation fails, or the process dies inside a transform)
    or silently ignore: each comma-separated level must be an integer from 1
    to 4096 (the backend's own ``threads`` limit).

    Raises
    ------
    BackendError
        Naming the variable and its value.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return
    levels = [v.strip() for v in value.split(",")]
    if not all(v.isascii() and v.isdigit() and 1 <= int(v) <= 4096 for v in levels):
        raise BackendError(f"backend: OMP_NUM_THREADS={value!r}: expected a thread count from 1 "
                           "to 4096 (or a comma-separated list of them, one per nesting "
                           "level); fix or unset OMP_NUM_THREADS")


def check_wait_policy() -> None:
    """Refuse an ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` the OpenMP runtimes
    would ignore with a message of their own (libgomp prints "Invalid value
    for environment variable" and spins by its default): the policy must be
    ``ACTIVE`` or ``PASSIVE`` (any case), the spin count a non-negative
    integer below 2**64, optionally with a k, M, G or T suffix (either case),
    or ``INFINITE`` / ``INFINITY``.

    Raises
    ------
    BackendError
        Naming the variable and its value.
    """
    policy = os.environ.get("OMP_WAIT_POLICY", "").strip()
    if policy and policy.upper() not in ("ACTIVE", "PASSIVE"):
        raise BackendError(f"backend: OMP_WAIT_POLICY={policy[:80]!r}: expected ACTIVE or "
                           "PASSIVE; fix or unset OMP_WAIT_POLICY")
    spin = os.environ.get("GOMP_SPINCOUNT", "").strip()
    if not spin or spin.upper() in ("INFINITE", "INFINITY"):
        return
    # libgomp's own reading: a decimal count (a + sign allowed) below 2**64, spaces,
    # then a suffix in either case
    count = re.fullmatch(r"\+?0*([0-9]{1,20})[ \t\n\v\f\r]*[kKmMgGtT]?", spin)
    if count is None or int(count.group(1)) >= 2 ** 64:
        raise BackendError(f"backend: GOMP_SPINCOUNT={spin[:80]!r}: expected a non-negative "
                           "integer (optionally with a k, M, G or T suffix) or INFINITE; fix "
                           "or unset GOMP_SPINCOUNT")


def describe() -> str:
    """The decision in one line (empty before :func:`prepare`).

    Returns
    -------
    str
        The ``reason`` of the decision, or "" before :func:`prepare`.
    """
    return "" if _DECISION is None else _DECISION.reason


_GUARD_OFF = ("0", "false", "no", "off")
_GUARD_ON = ("", "1", "true", "yes", "on")


def _guard_on() -> bool:
    """``FLOWTIE_OMP_GUARD`` read: 0/false/no/off turn the guard off, 1/true/
    yes/on (or unset) keep it on, case-insensitive; anything else is refused
    with :class:`BackendError` naming the variable (not silently ignored)."""
    raw = os.environ.get("FLOWTIE_OMP_GUARD", "")
    value = raw.strip().lower()
    if value in _GUARD_OFF:
        return False
    if value in _GUARD_ON:
        return True
    raise BackendError(f"FLOWTIE_OMP_GUARD: expected one of 0/false/no/off (guard off) or "
                       f"1/true/yes/on (guard on), got {raw[:80]!r}; fix or unset the "
                       "environment variable")


def _decide() -> Decision:
    guard = _guard_on()  # a bad value is refused before the environment is touched
    user_policy = [k for k in _POLICY_VARS if os.environ.get(k, "").strip()]
    # Numba's OpenMP workers spin after each parallel region and starve FFTW's threads on
    # few cores (a 256² TIE many times slower on 2 cores): passive waiting,
    # read by each runtime when it is loaded. A user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not guard:
        return Decision(reason="guard off (FLOWTIE_OMP_GUARD="
                               f"{os.environ['FLOWTIE_OMP_GUARD'].strip()})")
    if not sys.platform.startswith("linux"):
        return Decision(reason="not Linux: nothing checked")
    foreign = _global_runtime()
    if foreign is None:
        return Decision(reason="no OpenMP runtime loaded before: each library loads its own, "
                               "passive")
    if user_policy:
        return Decision(foreign=foreign, reason=f"{foreign} shared as configured by "
                                                f"{', '.join(user_policy)}")
    if os.environ.get("LD_PRELOAD", "").strip():
        # a preloaded allocator (jemalloc, tcmalloc, ASan) would be bypassed by libraries
        # loaded with RTLD_DEEPBIND: no isolation, one thread each instead
        numba_cap = 1 if _numba_omppool() is not None and not _already_launched() else None
        return Decision(foreign=foreign, numba_threads=numba_cap,
                        fftw_threads=1 if _fftw_omp_libs() else None,
                        reason=f"{os.path.basename(foreign)} loaded before and LD_PRELOAD set: "
                               "Numba's kernels and FFTW on 1 thread")
    before = _mapped()
    isolated, numba_threads, fftw_threads, notes = {}, None, None, []
    numba_lib = _numba_omppool()
    if numba_lib is None:
        notes.append("Numba's omp layer absent")
    elif _already_launched():
        notes.append("Numba's threads were started before: left as they are")
    else:
        runtime = _deepbind(numba_lib)
        if runtime is None or _same_file(runtime, foreign) or runtime in before:
            numba_threads = 1
            notes.append(f"Numba: 1 thread (its OpenMP runtime {runtime} was loaded before)")
        else:
            isolated["numba"] = runtime
    fftw_libs = _fftw_omp_libs()
    if fftw_libs and any(os.path.realpath(f) in before for f in fftw_libs):
        fftw_threads = 1
        notes.append("FFTW: 1 thread (pyFFTW was loaded before, on the shared runtime)")
    elif fftw_libs:
        # the wrappers' own dependencies (FFTW, the wheel's libgomp) are found through
        # pyFFTW's RPATH: load them first, by path, so that the wrappers find them by name
        for dep in _fftw_deps(fftw_libs):
            try:
                ctypes.CDLL(dep, mode=os.RTLD_NOW | os.RTLD_LOCAL)
            except OSError:
                pass
        runtimes = {_deepbind(f) for f in fftw_libs}
        runtime = next(iter(runtimes)) if len(runtimes) == 1 else None
        if runtime is None or _same_file(runtime, foreign) or runtime in before:
            fftw_threads = 1
            notes.append(f"FFTW: 1 thread (its OpenMP runtime {runtime} was loaded before)")
        else:
            isolated["fftw"] = runtime
    reason = (f"{os.path.basename(foreign)} loaded before: "
              + "; ".join([f"{k} on its own passive {os.path.basename(v)}"
                           for k, v in isolated.items()] + notes))
    return Decision(foreign, isolated, numba_threads, fftw_threads, reason)


# --------------------------------------------------------------------------- helpers


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _file_of(func) -> str | None:
    """The shared object that defines a ctypes function pointer."""
    try:
        dladdr = ctypes.CDLL(None).dladdr
    except (AttributeError, OSError):
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    info = _DlInfo()
    if not dladdr(ctypes.cast(func, ctypes.c_void_p), ctypes.byref(info)) or not info.dli_fname:
        return None
    return os.path.realpath(os.fsdecode(info.dli_fname))


def _global_runtime() -> str | None:
    """The file of the OpenMP runtime that a library loaded now would bind
    ``GOMP_parallel`` to through the global scope (dlsym on dlopen(NULL))."""
    try:
        func = ctypes.CDLL(None).GOMP_parallel
    except (AttributeError, OSError):
        return None
    return _file_of(func)


def _mapped() -> set:
    """Real paths of the shared objects mapped into this process."""
    found = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].startswith("/"):
                    found.add(os.path.realpath(parts[5].strip()))
    except OSError:
        pass
    return found


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a == b


def _deepbind(path) -> str | None:
    """Load ``path`` with RTLD_DEEPBIND (its own dependencies before the global
    scope) and return the runtime its ``GOMP_parallel`` now binds to. Python's
    later import of the same file reuses this handle and its bindings."""
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL | os.RTLD_DEEPBIND)
        return _file_of(lib.GOMP_parallel)  # the handle's scope: its own dependencies
    except (AttributeError, OSError):
        return None


def _package_dir(name) -> str | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _numba_omppool() -> str | None:
    folder = _package_dir("numba")
    if folder is None:
        return None
    found = sorted(glob.glob(os.path.join(folder, "np", "ufunc", "omppool*.so")))
    return found[0] if found else None


def _already_launched() -> bool:
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))


def _fftw_deps(omp_libs) -> list:
    """The other shared objects of the folder of FFTW's OpenMP wrappers (FFTW
    itself, the bundled OpenMP runtime), the runtime first."""
    folder = os.path.dirname(omp_libs[0])
    others = [f for f in glob.glob(os.path.join(folder, "*.so*")) if f not in omp_libs]
    return sorted(others, key=lambda f: (not _is_runtime(f), f))


def _is_runtime(path) -> bool:
    name = os.path.basename(path)
    return name.startswith(("libgomp", "libiomp", "libomp"))


def _fftw_omp_libs() -> list:
    """pyFFTW's FFTW OpenMP wrappers (the wheel's ``pyfftw.libs``), when they exist."""
    folder = _package_dir("pyfftw")
    if folder is None:
        return []
    libs = os.path.join(os.path.dirname(folder), "pyfftw.libs")
    return sorted(glob.glob(os.path.join(libs, "libfftw3*_omp*.so*")))
