"""Transform plans: real FFT and DCT over the last two axes, planned once per shape.

:class:`RealFFTPlan` (periodic boundary) and :class:`DCTPlan` (mirror
boundary) own their buffers, so that repeated transforms of one shape
allocate nothing new on the CPU: pyFFTW plans (FFTW_MEASURE; FFTW_ESTIMATE
below 64 x 64 pixels) where pyFFTW is installed, scipy.fft otherwise, cuFFT through CuPy on the GPU
(:attr:`~flowtie_fast.backend.Backend.fft_library`). FFTW's measured plans
can be kept between processes in a wisdom file (:func:`save_wisdom`,
:func:`load_wisdom`).

Transforms are unnormalised: a forward-inverse pair multiplies by
``1 / plan.roundtrip_scale``; the solvers fold ``roundtrip_scale`` into the
Fourier multipliers instead of spending a pass on it.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

import numpy as np

from .files import _create_tmp, _tmp_stem, as_path, atomic_path, check_input_file, check_target
from .backend import _have_pyfftw
from .errors import BackendError, InputError, first_line, user_stacklevel

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["DCTPlan", "RealFFTPlan", "load_wisdom", "save_wisdom"]

# FFTW measures candidate algorithms when it plans a transform (FFTW_MEASURE): worth
# it for the sizes a Plan repeats, not below 64 x 64 pixels an image, where the
# measuring (~0.16 s for 32², most of a small one-shot reconstruction's start)
# costs more than it can save: FFTW's estimate is used there.
_FFTW_MEASURE_FROM = 64 * 64

#: Seconds FFTW may spend measuring candidate algorithms for one transform
#: before it takes the best found so far (a solver makes two to four plans).
#: The four of a 256² solver take ~0.5 s in all; sizes of large prime factors
#: took far longer to measure than to use, in C where Ctrl-C is not seen (a
#: solver of 2 x 4099 px: 37 s, of 1021² px: 39 s, of 2 x 1048573 px: over 5
#: minutes; with the limit at most about 20 s).
PLANNING_SECONDS = 5.0


def _fftw_flags(real) -> tuple:
    """FFTW planner flags for transforms over the last two axes of ``real``."""
    small = real.shape[-1] * real.shape[-2] < _FFTW_MEASURE_FROM
    return ("FFTW_ESTIMATE",) if small else ("FFTW_MEASURE",)


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
        flags = _fftw_flags(real)
        self.fwd = pyfftw.FFTW(real, spec, axes=axes, flags=flags, threads=threads,
                               planning_timelimit=PLANNING_SECONDS, **fwd_kw)
        self.inv = pyfftw.FFTW(spec, real, axes=axes, direction=inverse_kind,
                               flags=flags + ("FFTW_DESTROY_INPUT",), threads=threads,
                               planning_timelimit=PLANNING_SECONDS)

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

    Parameters
    ----------
    backend : Backend
        Where the buffers live and which library transforms
        (:attr:`~flowtie_fast.backend.Backend.fft_library`: pyFFTW, planned
        here, scipy.fft or cuFFT).
    shape : sequence of int
        ``batch + (ny, nx)``: the shape of the real arrays, in pixels.
    dtype : dtype
        The real dtype, float32 or float64; ``spec`` is complex64 or
        complex128 of shape ``batch + (ny, nx // 2 + 1)``.
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
                self._fftw = _FFTWPair(self.real, self.spec, backend.fft_threads, None,
                                       "FFTW_BACKWARD")
            self.roundtrip_scale = 1.0 / (ny * nx)  # FFTW does not normalise
        else:
            self.roundtrip_scale = 1.0  # scipy's and CuPy's inverse normalise

    def forward(self, src=None):
        """``spec = rfft2(src)``; ``src`` defaults to ``real``.

        Parameters
        ----------
        src : array, optional
            Real input of the plan's shape, on its backend; not modified,
            though the ``real`` buffer may receive a copy of it (default
            None: the ``real`` buffer).

        Returns
        -------
        array
            The ``spec`` buffer holding the transform (on the GPU, the array
            cuFFT wrote when C-ordered, which becomes ``spec``).
        """
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
        """``dst = irfft2(spec)`` (unnormalised with pyFFTW); ``spec`` may be destroyed.

        Parameters
        ----------
        dst : array, optional
            Real output of the plan's shape and dtype, on its backend
            (default None: the ``real`` buffer).

        Returns
        -------
        array
            ``dst``, or the ``real`` buffer (on the GPU, the array cuFFT
            wrote when C-ordered, which becomes ``real``). With pyFFTW it
            is ``ny * nx`` times the normalised inverse
            (``roundtrip_scale``).
        """
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

    Parameters
    ----------
    backend : Backend
        Where the buffers live and which library transforms (pyFFTW,
        planned here, scipy.fft or cupyx.scipy.fft).
    shape : sequence of int
        ``batch + (ny, nx)``: the shape of the real arrays and of ``spec``,
        in pixels.
    dtype : dtype
        The real dtype of both buffers, float32 or float64.
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
                self._fftw = _FFTWPair(self.real, self.spec, backend.fft_threads,
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
        """``spec = DCT-II(src)`` (unnormalised).

        Parameters
        ----------
        src : array, optional
            Real input of the plan's shape, on its backend; not modified,
            though the ``real`` buffer may receive a copy of it (default
            None: the ``real`` buffer).

        Returns
        -------
        array
            The ``spec`` buffer holding the transform (on the GPU, the array
            cupyx wrote when C-ordered, which becomes ``spec``).
        """
        src = self.real if src is None else src
        if self._fftw is not None:
            self._fftw.forward(src)
            return self.spec
        out = self._module().dctn(src.astype(self.dtype, copy=False), type=2, axes=(-2, -1),
                                  **self._kw())
        return _keep(self, "spec", out)

    def inverse(self, dst=None):
        """``dst = DCT-III(spec)`` (unnormalised); ``spec`` may be destroyed.

        Parameters
        ----------
        dst : array, optional
            Real output of the plan's shape and dtype, on its backend
            (default None: the ``real`` buffer).

        Returns
        -------
        array
            ``dst``, or the ``real`` buffer (on the GPU, the array cupyx
            wrote when C-ordered, which becomes ``real``); a forward-inverse
            pair multiplies by ``4 * ny * nx`` (``1 / roundtrip_scale``).
        """
        if self._fftw is not None:
            return self._fftw.inverse(dst)
        out = self._module().dctn(self.spec, type=3, axes=(-2, -1), **self._kw())
        return _keep(self, "real", out, dst)


# --------------------------------------------------------------------------- wisdom


WISDOM_FORMAT = "flowtie_fast/fftw-wisdom/1"


def _wisdom_path(path, *, creatable: bool = False) -> str:
    """``path`` as a file path for wisdom; :class:`InputError` naming ``wisdom``.

    The path must be one the system takes (no NUL, names within the file
    system's limits), not a folder, and its parent folders not files; where
    it exists, a regular file (a FIFO or a device is refused, not read). With
    ``creatable`` a path that does not exist yet must be creatable: its
    folder (or the nearest existing one) writable, tried by creating and
    removing a temporary there, so that a plan refuses it before planning
    rather than after (the wisdom is written there when planning ends)."""
    if isinstance(path, str) and not path:
        raise InputError("wisdom: expected a file path, got ''")
    target = as_path("wisdom", path)
    path = os.fspath(target)
    try:
        if os.path.isdir(path):
            raise InputError(f"wisdom: {path!r} is a folder, expected a file path")
    except OSError as exc:
        raise InputError(f"wisdom: {path!r} cannot be used ({exc.strerror})") from exc
    if os.path.exists(path):  # read as wisdom: a FIFO would block, a device never end
        check_input_file("wisdom", target)
    if creatable and not os.path.lexists(path):
        check_target("wisdom", target, True, "")
        folder = target.parent
        if not folder.is_dir():
            raise InputError(f"wisdom: {path!r} cannot be created: its folder "
                             f"{str(folder)!r} does not exist; create it or give a path in an "
                             "existing folder")
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
            expected = ["format", "w0", "w1", "w2"]  # double, single, long double
            if sorted(f.files) != expected:
                raise ValueError(f"entries {sorted(f.files)}, expected {expected}")
            pieces = []
            for k in expected[1:]:
                w = f[k]
                if w.dtype != np.uint8 or w.ndim != 1:
                    raise ValueError(f"'{k}' holds {w.dtype} of shape {w.shape}, expected "
                                     "the bytes of FFTW wisdom (uint8, 1-D)")
                pieces.append(w.tobytes())
            return tuple(pieces)
    except Exception as exc:  # noqa: BLE001  every failure to read is the file's
        reason = "no 'format' entry" if isinstance(exc, KeyError) else \
            first_line(exc).split(". ")[0]
        raise BackendError(f"wisdom: {path!r} is not an FFTW wisdom file written by "
                           f"flowtie_fast ({reason}); give another path (it is never "
                           "replaced)") from exc


def save_wisdom(path) -> None:
    """Write FFTW's accumulated wisdom (the measured plans) to ``path`` atomically.

    Planning a solver's transforms with FFTW_MEASURE takes about 0.5 s at
    256² on 2 cores; with the wisdom read back (:func:`load_wisdom`) a later
    process plans them in ~7 ms (docs/performance.md). An existing file
    is replaced only if it is a wisdom file itself (:class:`BackendError`
    otherwise: someone's data is never overwritten). Nothing is written
    where pyFFTW is not installed.

    Parameters
    ----------
    path : str or os.PathLike
        The wisdom file, created or replaced.
    """
    path = _wisdom_path(path)
    if not _have_pyfftw():
        return
    import pyfftw

    wisdom = pyfftw.export_wisdom()
    if os.path.lexists(path) and _read_wisdom(path) == tuple(wisdom):  # refuses another kind
        return  # nothing new to write (the file may be shared and read-only)
    pieces = {f"w{i}": np.frombuffer(w, np.uint8) for i, w in enumerate(wisdom)}
    with atomic_path(path, name="wisdom") as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(WISDOM_FORMAT), **pieces)


def load_wisdom(path) -> bool:
    """Read FFTW wisdom written by :func:`save_wisdom`.

    A file of another kind, or one whose entries are not the three pieces
    :func:`save_wisdom` writes, raises :class:`BackendError` naming
    ``wisdom`` and the file. Wisdom FFTW rejects (written by another FFTW
    build, or damaged) gives a ``RuntimeWarning`` and False: plans are then
    measured afresh. A path that does not
    exist must be one :func:`save_wisdom` can create (its folder writable):
    :class:`InputError` naming ``wisdom`` otherwise, so that
    ``Plan(wisdom=...)`` refuses it before planning.

    Parameters
    ----------
    path : str or os.PathLike
        The wisdom file.

    Returns
    -------
    bool
        True when wisdom was read; False when ``path`` does not exist yet,
        FFTW rejected its wisdom, or pyFFTW is not installed.
    """
    path = _wisdom_path(path, creatable=True)
    if not _have_pyfftw() or not os.path.exists(path):
        return False
    import pyfftw

    accepted = pyfftw.import_wisdom(_read_wisdom(path))
    if not all(accepted):
        precisions = [p for p, ok in zip(("double", "single", "long double"), accepted)
                      if not ok]
        warnings.warn(f"wisdom: FFTW rejected the {', '.join(precisions)} wisdom in {path!r} "
                      "(written by another FFTW build, or damaged); plans are measured "
                      "afresh", RuntimeWarning, stacklevel=user_stacklevel())
        return False
    return True


