"""Plans for acquisition software: steady solves into caller-owned arrays,
batches, and the first-call costs (planning, JIT, NVRTC, model loading)."""

import numpy as np

import flowtie_fast as ft

from .common import BACKENDS, DZ, ENERGY, PIXEL, require, triplet

PLAN_SIZES = [128, 256, 1024]


class PlanSolve:
    """``Plan.solve(minus, zero, plus, out=)``: the per-frame cost of a loop."""

    params = (BACKENDS, PLAN_SIZES, ["tie-uniform", "tie", "icom", "flowtie"])
    param_names = ["backend", "size", "method"]
    timeout = 300

    def setup(self, backend, size, method):
        self.be = require(backend)
        if method == "flowtie":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise NotImplementedError("PyTorch is not installed")
        self.planes = triplet(size, backend).planes
        self.gradient = self.be.xp.full((2, size, size), 0.01, np.float32)
        self.plan = ft.Plan((size, size), PIXEL, DZ, ENERGY, method=method, backend=self.be)
        self.out = self.be.empty((size, size), np.float32)

    def time_solve(self, backend, size, method):
        self.plan.solve(*self.planes, gradient=self.gradient, out=self.out)
        self.be.synchronize()

    def track_first_call_ms(self, backend, size, method):
        """Setup (FFT planning) plus the warm-up solve (JIT / NVRTC / model load)
        of a fresh plan, in ms (FFTW wisdom of this process already warm)."""
        plan = ft.Plan((size, size), PIXEL, DZ, ENERGY, method=method, backend=self.be)
        return 1e3 * (plan.timings["setup"] + plan.timings["first_solve"])

    track_first_call_ms.unit = "ms"


class PlanBatch:
    """``Plan.solve_batch`` of 16 triplets at 128² (a time series), per batch."""

    params = (BACKENDS, ["tie", "flowtie"])
    param_names = ["backend", "method"]
    timeout = 300

    def setup(self, backend, method):
        self.be = require(backend)
        if method == "flowtie":
            try:
                import torch  # noqa: F401
            except ImportError:
                raise NotImplementedError("PyTorch is not installed")
        xp = self.be.xp
        planes = xp.stack(triplet(128, backend).planes)
        self.stack = xp.ascontiguousarray(xp.broadcast_to(planes, (16, 3, 128, 128)))
        self.gradient = xp.full((16, 2, 128, 128), 0.01, np.float32)
        self.plan = ft.Plan((128, 128), PIXEL, DZ, ENERGY, method=method, backend=self.be)
        self.out = self.be.empty((16, 128, 128), np.float32)

    def time_batch(self, backend, method):
        self.plan.solve_batch(self.stack, gradient=self.gradient, out=self.out)
        self.be.synchronize()
