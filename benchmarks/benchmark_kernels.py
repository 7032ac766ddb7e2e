"""Each kernel on its own, float32, CPU (Numba) and GPU (CUDA)."""

import numpy as np

from .common import BACKENDS, SIZES, require


class Kernels:
    params = (BACKENDS, SIZES)
    param_names = ["backend", "size"]

    def setup(self, backend, size):
        be = self.be = require(backend)
        be.prepare()
        xp, k = be.xp, be.kernels
        self.k = k
        rng = np.random.default_rng(0)
        f32 = np.float32
        self.a = [be.asarray(rng.random((size, size), dtype=f32)) for _ in range(3)]
        self.out = xp.empty((size, size), f32)
        self.g = xp.empty((2, size, size), f32)
        nxh = size // 2 + 1
        self.spec = xp.zeros((size, nxh), np.complex64) + 1
        self.vspec = xp.zeros((2, size, nxh), np.complex64) + 1
        self.sy = be.asarray(np.linspace(0, 4, size, dtype=f32))
        self.sx = be.asarray(np.linspace(0, 4, nxh, dtype=f32))
        self.f = f32
        # Compile / JIT before timing.
        for name in dir(self):
            if name.startswith("time_"):
                getattr(self, name)(backend, size)

    def _sync(self):
        self.be.synchronize()

    def time_focal_derivative3(self, backend, size):
        f = self.f
        self.k.focal_derivative3(*self.a, self.out, f(-0.025), f(0), f(0.025))
        self._sync()

    def time_fd_gradient(self, backend, size):
        self.k.fd_gradient(self.a[0], self.g[0], self.g[1], self.f(5), self.f(5), False, True)
        self._sync()

    def time_fd_divergence(self, backend, size):
        self.k.fd_divergence(self.a[0], self.a[1], self.out, self.f(5), self.f(5), False)
        self._sync()

    def time_teague_middle_step(self, backend, size):
        """Fused div(grad psi / max(I, floor))."""
        self.k.weighted_divergence(self.a[0], self.a[1], self.out, self.f(5), self.f(5),
                                   self.f(1e-3), False, True)
        self._sync()

    def time_vector_scale(self, backend, size):
        self.k.vector_scale(self.a[0], self.a[1], self.a[2], self.f(1e-3), True)
        self._sync()

    def time_inverse_laplacian(self, backend, size):
        self.k.inverse_laplacian(self.spec, self.sy, self.sx, self.f(0), self.f(1))
        self._sync()

    def time_spectral_gradient(self, backend, size):
        self.k.spectral_gradient(self.spec, self.vspec[0], self.vspec[1], self.sy, self.sx,
                                 self.sy, self.sx, self.f(0), self.f(1), 1)
        self._sync()

    def time_spectral_divergence(self, backend, size):
        self.k.spectral_divergence(self.vspec[0], self.vspec[1], self.spec, self.sy, self.sx,
                                   self.sy, self.sx, self.f(0), self.f(1), 1)
        self._sync()
