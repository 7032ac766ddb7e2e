"""Exceptions of flowtie_fast, and the scalar checks that raise them.

Every error about the caller's input is a :class:`InputError`, a subclass of
``ValueError`` whose message names the argument and what was expected.
"""

import math
from numbers import Real

import numpy as np


class InputError(ValueError):
    """Bad input: the message names the argument and what was expected."""


class BackendError(ValueError):
    """A requested backend cannot be used (no GPU answers, CuPy missing, ...)."""


def check_positive(name: str, value, pair: bool = False):
    """``value`` as a positive finite float (or a pair of them when ``pair``: a
    scalar is used for both); :class:`InputError` naming ``name`` otherwise."""
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
        out.append(v)
    if pair:
        return (out[0], out[-1])
    return out[0]
