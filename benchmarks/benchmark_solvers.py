"""Poisson solves and every solver at 256², 1024², 2048² float32, CPU and GPU,
beside the FFTs they perform and a plain NumPy reference Teague TIE."""

import numpy as np

import flowtie_fast as ft
from flowtie_fast.testing import teague_tie

from .common import BACKENDS, DZ, ENERGY, PIXEL, SIZES, require, triplet, triplet_arrays


class Poisson:
    params = (BACKENDS, SIZES, ["periodic", "mirror"])
    param_names = ["backend", "size", "boundary"]

    def setup(self, backend, size, boundary):
        self.be = require(backend)
        self.p = ft.PoissonSolver((size, size), PIXEL, boundary=boundary, backend=self.be)
        self.f = self.be.asarray(np.random.default_rng(0).random((size, size), np.float32))
        self.out = self.be.xp.empty_like(self.f)
        self.time_solve(backend, size, boundary)

    def time_solve(self, backend, size, boundary):
        self.p.solve(self.f, out=self.out)
        self.be.synchronize()

    def time_transform_pair(self, backend, size, boundary):
        """The two transforms of one solve: the bound of ``time_solve``."""
        self.p.scalar.forward(self.f)
        self.p.scalar.inverse()
        self.be.synchronize()


class Solvers:
    """Every solver method but flowtie (below), through ``TIESolver.solve``."""

    params = (BACKENDS, SIZES, ["tie-uniform", "tie", "tie-exact", "gd", "icom"])
    param_names = ["backend", "size", "method"]
    timeout = 600

    def setup(self, backend, size, method):
        self.be = require(backend)
        self.t = triplet(size, backend)
        # A measured gradient, as 4D-STEM triplets carry (icom integrates it).
        self.t.gradient = self.be.xp.full((2, size, size), 0.01, np.float32)
        self.solver = ft.TIESolver((size, size), PIXEL, backend=self.be)
        self.solver.solve(self.t, method=method)

    def time_solve(self, backend, size, method):
        self.solver.solve(self.t, method=method)
        self.be.synchronize()


class TIEFFTBound:
    """The real FFTs that ``method="tie"`` performs (spectral scheme, 8 real
    transforms: 1 + 2 forward, 1 + 2 + 2 inverse), on the solver's own plans:
    the bound that the ``tie`` timing is held against."""

    params = (BACKENDS, SIZES)
    param_names = ["backend", "size"]

    def setup(self, backend, size):
        self.be = require(backend)
        self.p = ft.TIESolver((size, size), PIXEL, backend=self.be).poisson
        self.p.scalar.real[...] = 1
        self.p.vector.real[...] = 1
        self.time_ffts(backend, size)

    def time_ffts(self, backend, size):
        p = self.p
        p.scalar.forward()
        p.vector.inverse()
        p.vector.forward()
        p.scalar.inverse()
        p.vector.inverse()
        self.be.synchronize()


class NumpyReference:
    """Teague's TIE as common scripts write it (complex128 np.fft.fft2)."""

    params = [SIZES]
    param_names = ["size"]
    timeout = 300

    def setup(self, size):
        self.planes = triplet_arrays(size)

    def time_teague_numpy(self, size):
        teague_tie(*self.planes, DZ, PIXEL, ENERGY)


class FlowTIE:
    """Network inference plus Poisson integration (``method="flowtie"``, shipped
    default model in float32 or bfloat16 weights; the triplet carries a
    centre-of-mass field as 4D-STEM triplets do)."""

    params = (BACKENDS, SIZES, ["float32", "bfloat16"])
    param_names = ["backend", "size", "precision"]
    timeout = 300

    def setup(self, backend, size, precision):
        try:
            from flowtie_fast.flow import FlowModel
        except ImportError:
            raise NotImplementedError("PyTorch is not installed")
        self.be = require(backend)
        planes = triplet(size, backend).planes
        gradient = self.be.xp.zeros((2, size, size), np.float32)
        self.t = ft.FocalTriplet(*planes, dz=DZ, pixel_size=PIXEL, energy=ENERGY,
                                 gradient=gradient)
        self.model = FlowModel("default", "cuda" if self.be.is_gpu else "cpu", precision)
        self.solver = ft.TIESolver((size, size), PIXEL, backend=self.be)
        self.solver.solve(self.t, method="flowtie", model=self.model)

    def time_flowtie(self, backend, size, precision):
        self.solver.solve(self.t, method="flowtie", model=self.model)
        self.be.synchronize()
