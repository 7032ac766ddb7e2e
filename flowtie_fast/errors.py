"""Exceptions of flowtie_fast.

Every error about the caller's input is a :class:`InputError`, a subclass of
``ValueError`` whose message names the argument and what was expected.
"""


class InputError(ValueError):
    """Bad input: the message names the argument and what was expected."""


class BackendError(ValueError):
    """A requested backend cannot be used (no GPU answers, CuPy missing, ...)."""
