"""Exceptions of flowtie_fast, and the scalar checks that raise them.

Every error about the caller's input is a :class:`InputError`, a subclass of
``ValueError`` whose message names the argument and what was expected.
"""

import math
import os
import sys
from numbers import Real

import numpy as np

# The public names; the check_* helpers below are the package's own.
__all__ = ["BackendError", "InputError", "ResultError", "TrustWarning"]


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn`, called by the caller of this
    function, that names the first frame outside flowtie_fast: the user's
    line, however many of the library's functions lie between (an entry point
    calling another, as ``from_4dstem`` calls ``from_reductions``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


class InputError(ValueError):
    """Bad input: the message names the argument and what was expected."""


class ResultError(InputError):
    """A computed result holds NaN or Inf, or a phase gradient no phase has:
    refused rather than returned; the message names the stage that produced it."""


class BackendError(ValueError):
    """A requested backend cannot be used (no GPU answers, CuPy missing, ...)."""


class TrustWarning(UserWarning):
    """A result was returned but should not be trusted as it stands (the data
    hold no signal above their noise, the input lies outside what a model
    knows, a registration is unreliable); ``rec.info`` carries the same flag."""


# Plausible ranges of the physical parameters, in the library's units. A value
# outside is almost always a unit slip (a pixel size in metres, an energy in keV)
# or a typo, and would give NaN or a meaningless phase; it is refused with the
# unit expected. Each entry: (lowest, highest, unit, example).
RANGES = {
    "dz": (1e-3, 1e8, "Å", "20.0 for 2 nm"),
    "pixel_size": (1e-4, 1e7, "Å", "0.18 for 18 pm"),
    "scan_step": (1e-4, 1e7, "Å", "0.18 for 18 pm"),
    "energy": (1e3, 1e7, "eV", "300e3 for 300 keV"),
    "k_sampling": (1e-7, 1e2, "1/Å", "0.059 for 0.59 1/nm"),
    "bf_radius": (1e-3, 1e4, "mrad", "5.0"),
    "com_radius": (1e-3, 1e4, "mrad", "40.0"),
}


def is_number(value) -> bool:
    """Whether ``value`` is a real number scalar: a Python or NumPy integer or
    float, not a bool and not a ``np.timedelta64`` or ``np.datetime64`` (a
    ``timedelta64`` subclasses ``np.signedinteger`` but is a duration, and
    ``float()`` refuses it)."""
    return (isinstance(value, (Real, np.floating, np.integer))
            and not isinstance(value, (bool, np.bool_, np.timedelta64, np.datetime64)))


def is_integer(value) -> bool:
    """Whether ``value`` is a Python or NumPy integer, not a bool and not a
    ``np.timedelta64``."""
    return isinstance(value, (int, np.integer)) and is_number(value)


def check_positive(name: str, value, pair: bool = False):
    """``value`` as a positive finite float (or a pair of them when ``pair``: a
    scalar is used for both); :class:`InputError` naming ``name`` otherwise.

    Names listed in :data:`RANGES` are also held to their plausible range, and
    the message gives the unit expected."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    values = value if (pair and isinstance(value, (tuple, list, np.ndarray))) else (value,)
    if pair and (np.ndim(values) != 1 or len(values) not in (1, 2)):
        raise InputError(f"{name}: expected a positive number or a pair of them, got {value!r}")
    out = []
    for v in values:
        if not is_number(v):
            raise InputError(f"{name}: expected a positive number, got {v!r}")
        try:
            v = float(v)
        except OverflowError:
            v = math.inf
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"{name}: expected a positive finite number, got {v!r}")
        if name in RANGES:
            lo, hi, unit, example = RANGES[name]
            if not lo <= v <= hi:
                raise InputError(f"{name}: expected {lo:g} to {hi:g} {unit} (e.g. {example}), "
                                 f"got {v!r}")
        out.append(v)
    if pair:
        return (out[0], out[-1])
    return out[0]


def check_count(name: str, value, low: int = 1, high: int | None = None) -> int:
    """``value`` as an integer in ``[low, high]``; :class:`InputError` naming
    ``name`` otherwise (bools and non-integral floats are refused)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    ok = is_integer(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        ok, value = True, int(value)
    if not ok or value < low or (high is not None and value > high):
        if high is not None:
            what = f"an integer in [{low}, {high}]"
        else:
            what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise InputError(f"{name}: expected {what}, got {value!r}")
    return int(value)


def check_finite_result(stage: str, *arrays) -> None:
    """Raise :class:`ResultError` naming ``stage`` when an output array holds NaN
    or Inf (one reduction per array: a sum is non-finite exactly when some
    element is, or when the finite elements overflow, which is refused too)."""
    for a in arrays:
        if a is not None and not math.isfinite(float(a.sum())):
            raise ResultError(f"{stage}: the result contains NaN or Inf (refused rather than "
                              "returned); check the input's scale and the physical parameters")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty),
    for one-line errors that wrap another library's."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out: a ``MemoryError``, or the
    ``RuntimeError`` of an allocation PyTorch could not make (its
    ``OutOfMemoryError`` on a GPU, "can't allocate memory" on the CPU)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (type(exc).__name__ == "OutOfMemoryError"
                                              or "can't allocate memory" in text
                                              or "out of memory" in text.lower())


def check_real(name: str, value, *, low=None, low_open=False, default=None) -> float:
    """``value`` as a finite float of at least ``low`` (above it when
    ``low_open``); :class:`InputError` naming ``name`` otherwise. ``None`` gives
    ``default`` when one is set."""
    if value is None and default is not None:
        return default
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not is_number(value):
        raise InputError(f"{name}: expected a real number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or (low is not None and (v <= low if low_open else v < low)):
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise InputError(f"{name}: expected a finite number{bound}, got {value!r}")
    return v


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``; :class:`InputError`
    naming ``name`` otherwise (also for unhashable or non-string values)."""
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_float_dtype(name: str, value) -> np.dtype:
    """``value`` as the working dtype, float32 or float64; :class:`InputError`
    naming ``name`` otherwise."""
    try:
        dtype = None if value is None else np.dtype(value)
    except (TypeError, ValueError):
        dtype = None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"{name}: expected 'float32' or 'float64', got {value!r}")
    return dtype
