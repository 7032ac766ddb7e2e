"""Exceptions of flowtie_fast, and the scalar checks that raise them.

Every error about the caller's input is a :class:`InputError`, a subclass of
``ValueError`` whose message names the argument and what was expected.
"""

import math
from numbers import Real

import numpy as np


class InputError(ValueError):
    """Bad input: the message names the argument and what was expected."""


class ResultError(InputError):
    """A computed result holds NaN or Inf: refused rather than returned; the
    message names the stage that produced it."""


class BackendError(ValueError):
    """A requested backend cannot be used (no GPU answers, CuPy missing, ...)."""


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


def check_positive(name: str, value, pair: bool = False):
    """``value`` as a positive finite float (or a pair of them when ``pair``: a
    scalar is used for both); :class:`InputError` naming ``name`` otherwise.

    Names listed in :data:`RANGES` are also held to their plausible range, and
    the message gives the unit expected."""
    values = value if (pair and isinstance(value, (tuple, list, np.ndarray))) else (value,)
    if pair and len(values) not in (1, 2):
        raise InputError(f"{name}: expected a positive number or a pair of them, got {value!r}")
    out = []
    for v in values:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (Real, np.floating, np.integer)):
            raise InputError(f"{name}: expected a positive number, got {v!r}")
        v = float(v)
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
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        ok, value = True, int(value)
    if not ok or value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name}: expected an integer {bound}, got {value!r}")
    return int(value)


def check_finite_result(stage: str, *arrays) -> None:
    """Raise :class:`ResultError` naming ``stage`` when an output array holds NaN
    or Inf (one reduction per array: a sum is non-finite exactly when some
    element is, or when the finite elements overflow, which is refused too)."""
    for a in arrays:
        if a is not None and not math.isfinite(float(a.sum())):
            raise ResultError(f"{stage}: the result contains NaN or Inf (refused rather than "
                              "returned); check the input's scale and the physical parameters")
