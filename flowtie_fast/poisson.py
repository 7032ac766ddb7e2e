"""Poisson solves and the differential operators of one discretisation.

:class:`PoissonSolver` owns the transform plans, the symbol vectors and the
work buffers for one image shape, dtype, pixel size, boundary and scheme, and
offers every operator the TIE solvers need, each consistent with the others:

========================  ====================================================
scheme                    operators
========================  ====================================================
``"spectral"``            gradient ``i q``, divergence ``i q ·`` and Laplacian
(periodic only)           ``-(ky² + kx²)`` with the Nyquist wavenumber set to
                          zero in all three, so that ``div ∘ grad`` equals the
                          Laplacian exactly. Exact for band-limited fields.
``"fd"``                  forward-difference gradient, backward-difference
                          divergence (its negative adjoint) and their product,
                          the compact 5-point Laplacian with symbol
                          ``(4/h²) sin²(π m / N)`` (periodic, FFT) or
                          ``(4/h²) sin²(π m / 2N)`` (mirror, DCT-II: the
                          homogeneous Neumann problem, no padding). Second-order.
========================  ====================================================

``scheme="auto"`` is spectral for periodic boundaries and fd for mirror ones.
The reported gradient of a phase is the spectral one or, for fd, central
differences on the pixel. Tikhonov regularisation replaces the inverse
Laplacian symbol ``-1/s`` by ``-s / (s² + alpha)`` (``alpha`` in Å⁻⁴).
"""

from __future__ import annotations

import numpy as np

from .backend import get_backend, is_cupy
from .errors import InputError, check_choice, check_float_dtype, check_positive, check_real
from .fft import DCTPlan, RealFFTPlan

__all__ = ["PoissonSolver"]

BOUNDARIES = ("periodic", "mirror")
SCHEMES = ("auto", "spectral", "fd")


WORK_IMAGES = 12  # images of the working dtype a PoissonSolver holds, rounded up


def resolve_scheme(boundary: str, scheme: str) -> str:
    """The concrete scheme for a boundary; raise :class:`InputError` on bad names."""
    check_choice("boundary", boundary, BOUNDARIES)
    check_choice("scheme", scheme, SCHEMES)
    if scheme == "auto":
        return "spectral" if boundary == "periodic" else "fd"
    if scheme == "spectral" and boundary == "mirror":
        raise InputError("scheme: 'spectral' needs boundary='periodic'; the mirror boundary "
                         "uses the 'fd' scheme (DCT-II Neumann solve)")
    return scheme


def _wavenumbers(n: int, h: float, half: bool) -> np.ndarray:
    """Angular wavenumbers (rad/Å) of an FFT axis, Nyquist set to zero."""
    q = 2 * np.pi * (np.fft.rfftfreq(n, h) if half else np.fft.fftfreq(n, h))
    if n % 2 == 0:
        q[n // 2] = 0.0
    return q


def _fd_symbol(n: int, h: float, length: int, mirror: bool) -> np.ndarray:
    """Symbol of minus the 1-D compact second difference (1/Å²)."""
    m = np.arange(length)
    denom = 2 * n if mirror else n
    return (4.0 / h**2) * np.sin(np.pi * m / denom) ** 2


class PoissonSolver:
    """Solve ``∇²u = f`` and apply the gradient, divergence and transport operators.

    Parameters
    ----------
    shape : (int, int)
        Image shape (Ny, Nx).
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    boundary : {"periodic", "mirror"}
        Periodic (real FFT) or mirror (even extension, DCT-II, Neumann).
    scheme : {"auto", "spectral", "fd"}
        Discretisation (module docstring).
    alpha : float
        Tikhonov parameter in Å⁻⁴ (0: none).
    dtype : {float32, float64}
        Working precision.
    backend : {"auto", "cpu", "gpu"} or Backend
        Where to compute.
    threads : int, optional
        CPU threads.

    Notes
    -----
    All methods take and return arrays of this backend with this dtype and
    shape. Plans and work buffers are made once here; on the CPU repeated calls
    of one solver allocate only their outputs (none when ``out`` is given).
    A solver is not safe to call from several threads at once.
    """

    def __init__(self, shape, pixel_size, *, boundary="periodic", scheme="auto", alpha=0.0,
                 dtype=np.float32, backend="auto", threads=None):
        try:
            ok = len(shape) == 2 and all(int(n) == n and n >= 2 for n in shape)
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok or any(isinstance(n, (bool, np.bool_)) for n in shape):
            raise InputError(f"shape: expected (Ny, Nx), integers of at least 2 pixels each, "
                             f"got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.pixel_size = check_positive("pixel_size", pixel_size, pair=True)
        self.dtype = check_float_dtype("dtype", dtype)
        self.alpha = check_real("alpha", alpha, low=0.0)  # Tikhonov parameter, Å⁻⁴
        if self.alpha > 1e12:  # |q|⁴ of any sampled frequency is far below: a zero phase
            raise InputError(f"alpha: expected a Tikhonov parameter of at most 1e12 Å⁻⁴, "
                             f"got {alpha!r}")
        self.boundary = boundary
        self.scheme = resolve_scheme(boundary, scheme)
        self.mirror = boundary == "mirror"
        self.backend = be = get_backend(backend, threads)
        ny, nx = self.shape
        # Plans, spectra and work arrays, checked before anything is allocated (a
        # spectral TIESolver holds 12 images once built and 17-23 at the peak of a
        # solve, measured at 512² float32: this bound and SOLVER_IMAGES cover both).
        self.work_bytes = ny * nx * self.dtype.itemsize  # one image of the working dtype
        be.check_memory("shape", self.shape, WORK_IMAGES * self.work_bytes,
                        "a Poisson solver's plans and buffers")
        h0, h1 = self.pixel_size
        self.inv_h = (1.0 / h0, 1.0 / h1)
        dt = self.dtype.type

        if self.scheme == "spectral":
            ky = _wavenumbers(ny, h0, half=False)
            kx = _wavenumbers(nx, h1, half=True)
            self.ky, self.kx = be.asarray(ky, self.dtype), be.asarray(kx, self.dtype)
            sy, sx = ky**2, kx**2
        elif self.mirror:
            sy, sx = _fd_symbol(ny, h0, ny, True), _fd_symbol(nx, h1, nx, True)
        else:
            sy, sx = _fd_symbol(ny, h0, ny, False), _fd_symbol(nx, h1, nx // 2 + 1, False)
        self.sy, self.sx = be.asarray(sy, self.dtype), be.asarray(sx, self.dtype)

        if self.mirror:
            self.scalar = DCTPlan(be, self.shape, self.dtype)
        else:
            self.scalar = RealFFTPlan(be, self.shape, self.dtype)
        self.rt = dt(self.scalar.roundtrip_scale)
        # The Nyquist checkerboards the spectral gradient annihilates (even axes).
        self._checkerboards = []
        if self.scheme == "spectral":
            self.vector = RealFFTPlan(be, (2,) + self.shape, self.dtype)
            signs = [(1 - 2 * (np.arange(n) % 2)).astype(self.dtype) if n % 2 == 0 else None
                     for n in self.shape]
            ones = [np.ones(n, self.dtype) for n in self.shape]
            # Stored whole: NumPy buffers broadcast operands in a temporary, and a
            # plan must not allocate.
            if signs[0] is not None:
                self._checkerboards.append(be.asarray(np.outer(signs[0], ones[1])))
            if signs[1] is not None:
                self._checkerboards.append(be.asarray(np.outer(ones[0], signs[1])))
            if signs[0] is not None and signs[1] is not None:
                self._checkerboards.append(be.asarray(np.outer(signs[0], signs[1])))
            if self._checkerboards:
                self._null_scratch = be.empty(self.shape, self.dtype)
        else:
            self.work = be.zeros(self.shape, self.dtype)
            self.vector = None

    # ------------------------------------------------------------------ helpers

    def _in(self, name, a, shape=None):
        """An operand of this solver's backend and shape (the kernels index it
        without bounds checks); :class:`InputError` naming ``name`` otherwise."""
        shape = self.shape if shape is None else shape
        if (is_cupy(a) != self.backend.is_gpu or not hasattr(a, "shape")
                or getattr(getattr(a, "dtype", None), "kind", "") not in "uif"
                or tuple(a.shape) != tuple(shape)):
            where = "CuPy" if self.backend.is_gpu else "NumPy"
            raise InputError(f"{name}: expected a real {where} array of shape {tuple(shape)}, "
                             f"got {type(a).__name__} {getattr(a, 'dtype', '')} "
                             f"{tuple(getattr(a, 'shape', ()))}")
        return a

    def _outs(self, out, grad_out):
        """Validated (or new) phase output and validated gradient output (or None)."""
        if grad_out is not None:
            self.output(grad_out, (2,) + self.shape, "grad_out")
        return self.output(out), grad_out

    def output(self, out, shape=None, name="out"):
        """An output array of this solver's dtype.

        Parameters
        ----------
        out : array or None
            A caller-owned output, checked (shape, dtype, backend, C order);
            None for a new array.
        shape : tuple of int, optional
            Its shape (default: the image shape (Ny, Nx)).
        name : str, optional
            How messages name ``out`` (default "out").

        Returns
        -------
        array
            ``out``, or a new uninitialised array of ``shape``.

        Raises
        ------
        InputError
            Naming ``name``, where ``out`` does not fit.
        """
        shape = self.shape if shape is None else shape
        if out is None:
            return self.backend.empty(shape, self.dtype)
        return self.backend.check_output(name, out, shape, self.dtype)

    def _multiply_inverse_laplacian(self, spec, scale, power=1):
        for _ in range(power):
            self.backend.kernels.inverse_laplacian(spec, self.sy, self.sx,
                                                   self.dtype.type(self.alpha),
                                                   self.dtype.type(scale))
            scale = 1.0

    def _spectral_gradient_to_vector(self, scale, poisson=False):
        """``vector.spec = i k scalar.spec * scale`` (times the inverse Laplacian)."""
        v = self.vector
        t = self.dtype.type
        self.backend.kernels.spectral_gradient(self.scalar.spec, v.spec[0], v.spec[1],
                                               self.ky, self.kx, self.sy, self.sx,
                                               t(self.alpha), t(scale), int(poisson))

    def _spectral_divergence_to_scalar(self, scale, poisson):
        """``scalar.spec = i k · vector.spec * scale`` (times the inverse Laplacian)."""
        v = self.vector
        self.backend.kernels.spectral_divergence(
            v.spec[0], v.spec[1], self.scalar.spec, self.ky, self.kx, self.sy, self.sx,
            self.dtype.type(self.alpha), self.dtype.type(scale), int(poisson))

    def _finish(self, out, grad_out):
        """Transform the phase spectrum held in ``scalar`` into ``out`` and
        optionally its gradient into ``grad_out``."""
        if self.scheme == "spectral":
            if grad_out is not None:
                self._spectral_gradient_to_vector(1.0)
            self.scalar.inverse(out)
            if grad_out is not None:
                self.vector.inverse(grad_out)
        else:
            self.scalar.inverse(out)
            if grad_out is not None:
                self.gradient(out, grad_out)
        return out

    def remove_null_space(self, f):
        """Project ``f`` in place onto the range of the divergence.

        The gradient of this scheme annihilates the constant and, for the
        spectral scheme on even axes, the Nyquist checkerboards (their
        wavenumbers are zeroed); a right-hand side ``∇·(w ∇φ) = f`` is solvable
        only without them.

        Parameters
        ----------
        f : array (Ny, Nx)
            A right-hand side of this solver's dtype and backend, modified in
            place.

        Returns
        -------
        array (Ny, Nx)
            ``f``, projected.
        """
        xp = self.backend.xp
        f -= f.mean()
        for pattern in self._checkerboards:  # no temporaries: a plan solves allocation-free
            scratch = xp.multiply(f, pattern, out=self._null_scratch)
            xp.multiply(pattern, scratch.mean(), out=scratch)
            f -= scratch
        return f

    # ------------------------------------------------------------------ operators

    def solve(self, f, scale=1.0, out=None, grad_out=None, power=1):
        """``u`` with ``∇²u = scale * f`` (``power=2``: ``∇⁴u = scale * f``), mean zero.

        Parameters
        ----------
        f : array (Ny, Nx)
            Right-hand side (e.g. rad/Å² for a phase's Laplacian).
        scale : float
            Factor applied to ``f`` inside the Fourier multiplier (no extra
            pass; default 1).
        out, grad_out : arrays, optional
            Where to write ``u`` (Ny, Nx) and its gradient (2, Ny, Nx).
        power : {1, 2}
            1 (default): invert the Laplacian; 2: invert it twice (the
            biharmonic operator).

        Returns
        -------
        array (Ny, Nx)
            ``u`` (``out`` where given), mean zero; in rad when ``f`` is a
            phase's Laplacian in rad/Å².
        """
        self._in("f", f)
        check_real("scale", scale)
        out, grad_out = self._outs(out, grad_out)
        self.scalar.forward(f)
        self._multiply_inverse_laplacian(self.scalar.spec, scale * self.rt, power)
        return self._finish(out, grad_out)

    def gradient(self, u, out=None):
        """Gradient (2, Ny, Nx) of ``u`` at the pixel centres.

        Parameters
        ----------
        u : array (Ny, Nx)
            A scalar field (e.g. a phase in rad).
        out : array (2, Ny, Nx), optional
            Where to write the gradient.

        Returns
        -------
        array (2, Ny, Nx)
            (d/d axis 0, d/d axis 1) of ``u`` per Å (rad/Å for a phase).
        """
        self._in("u", u)
        out = self.output(out, (2,) + self.shape)
        if self.scheme == "spectral":
            self.scalar.forward(u)
            self._spectral_gradient_to_vector(self.rt)
            self.vector.inverse(out)
        else:
            self.backend.kernels.fd_gradient(u, out[0], out[1], *self._inv_h(), self.mirror,
                                             True)
        return out

    def _inv_h(self):
        t = self.dtype.type
        return t(self.inv_h[0]), t(self.inv_h[1])

    def _fd_divergence_of_centred(self, g, out):
        """fd divergence of a field given on the pixel centres (a measured gradient):
        neighbours averaged onto the faces first (second order; the mirror edge
        faces carry no flux anyway)."""
        xp = self.backend.xp
        faces = getattr(self, "_faces", None)
        if faces is None:  # made on first use and kept: a Plan's solve allocates no image
            faces = self._faces = self.backend.empty((2,) + self.shape, self.dtype)
        # Each centre plus its next neighbour (periodically wrapped), in place; along
        # axis 1 on the flat rows (strided 2-D operands would take NumPy's buffers),
        # the last column then set apart.
        xp.add(g[0, :-1], g[0, 1:], out=faces[0, :-1])
        xp.add(g[0, -1], g[0, 0], out=faces[0, -1])
        g1, f1 = xp.ascontiguousarray(g[1]).reshape(-1), faces[1].reshape(-1)
        xp.add(g1[:-1], g1[1:], out=f1[:-1])
        xp.add(g[1, :, -1], g[1, :, 0], out=faces[1, :, -1])
        faces *= self.dtype.type(0.5)
        self.backend.kernels.fd_divergence(faces[0], faces[1], out, *self._inv_h(), self.mirror)
        return out

    def divergence(self, g, out=None):
        """``∇·g`` of a vector field (2, Ny, Nx) given on the pixel centres.

        Parameters
        ----------
        g : array (2, Ny, Nx)
            The field, (axis 0, axis 1) components (e.g. rad/Å).
        out : array (Ny, Nx), optional
            Where to write the divergence.

        Returns
        -------
        array (Ny, Nx)
            The divergence, ``g``'s unit per Å (rad/Å² for a phase gradient).
        """
        self._in("g", g, (2,) + self.shape)
        out = self.output(out)
        if self.scheme == "spectral":
            self.vector.forward(g)
            self._spectral_divergence_to_scalar(self.rt, poisson=False)
            self.scalar.inverse(out)
            return out
        return self._fd_divergence_of_centred(g, out)

    def integrate(self, g, out=None, grad_out=None):
        """``u = ∇⁻² ∇·g``: the least-squares (curl-free) potential of a vector field.

        Parameters
        ----------
        g : array (2, Ny, Nx)
            The field on the pixel centres (e.g. a phase gradient in rad/Å).
        out : array (Ny, Nx), optional
            Where to write ``u``.
        grad_out : array (2, Ny, Nx), optional
            Where to write ``∇u``, the curl-free part of ``g``; not computed
            without it.

        Returns
        -------
        array (Ny, Nx)
            ``u``, mean zero (rad for a phase gradient in rad/Å).
        """
        self._in("g", g, (2,) + self.shape)
        out, grad_out = self._outs(out, grad_out)
        if self.scheme == "spectral":
            self.vector.forward(g)
            self._spectral_divergence_to_scalar(self.rt, poisson=True)
        else:
            self.scalar.forward(self._fd_divergence_of_centred(g, self.work))
            self._multiply_inverse_laplacian(self.scalar.spec, self.rt)
        return self._finish(out, grad_out)

    def transport(self, phi, w, out=None):
        """The transport term ``∇·(w ∇φ)`` of the TIE.

        Parameters
        ----------
        phi : array (Ny, Nx)
            The phase in rad.
        w : array (Ny, Nx)
            The weight: the in-focus intensity.
        out : array (Ny, Nx), optional
            Where to write the result.

        Returns
        -------
        array (Ny, Nx)
            ``∇·(w ∇φ)``: ``w``'s unit times rad/Å².
        """
        self._in("phi", phi)
        self._in("w", w)
        out = self.output(out)
        k = self.backend.kernels
        if self.scheme == "spectral":
            self.scalar.forward(phi)
            self._spectral_gradient_to_vector(self.rt)
            g = self.vector.inverse()
            k.vector_scale(g[0], g[1], w, self.dtype.type(0), 0)
            self.vector.forward()
            self._spectral_divergence_to_scalar(self.rt, poisson=False)
            self.scalar.inverse(out)
        else:
            k.weighted_divergence(phi, w, out, *self._inv_h(), self.dtype.type(0),
                                  self.mirror, 0)
        return out

    def teague(self, source, w, floor, scale=1.0, out=None, grad_out=None):
        """Teague's approximate solution of ``∇·(w ∇φ) = scale * source``.

        ``∇²ψ = scale * source``, ``∇φ ≈ ∇ψ / max(w, floor)``,
        ``φ = ∇⁻² ∇·(∇ψ / max(w, floor))``: exact when ``w ∇φ`` is curl-free
        (e.g. uniform w).

        Parameters
        ----------
        source : array (Ny, Nx)
            Right-hand side (for the TIE: ``∂I/∂z`` in intensity per Å, with
            ``scale = -k`` in rad/Å).
        w : array (Ny, Nx)
            The weight: the in-focus intensity.
        floor : float
            Lower bound of ``w`` in the division, in ``w``'s unit (absolute,
            not a fraction).
        scale : float
            Factor applied to ``source`` (default 1).
        out : array (Ny, Nx), optional
            Where to write ``φ``.
        grad_out : array (2, Ny, Nx), optional
            Where to write ``∇φ``; not computed without it.

        Returns
        -------
        array (Ny, Nx)
            ``φ`` (``out`` where given), mean zero: rad for the TIE.
        """
        self._in("source", source)
        self._in("w", w)
        out, grad_out = self._outs(out, grad_out)
        k = self.backend.kernels
        t = self.dtype.type
        self.scalar.forward(source)
        if self.scheme == "spectral":
            self._spectral_gradient_to_vector(scale * self.rt, poisson=True)  # ∇ψ, fused
            g = self.vector.inverse()
            k.vector_scale(g[0], g[1], w, t(floor), 1)
            self.vector.forward()
            self._spectral_divergence_to_scalar(self.rt, poisson=True)
        else:
            self._multiply_inverse_laplacian(self.scalar.spec, scale * self.rt)
            psi = self.scalar.inverse()
            k.weighted_divergence(psi, w, self.work, *self._inv_h(), t(floor), self.mirror, 1)
            self.scalar.forward(self.work)
            self._multiply_inverse_laplacian(self.scalar.spec, self.rt)
        return self._finish(out, grad_out)
