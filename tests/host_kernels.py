"""The CUDA arithmetic of kernels/flowtie_ops.cuh compiled for the host.

``build(tmpdir)`` compiles tests/host/host_kernels.cpp with the system C++
compiler and returns :class:`HostKernels`, whose methods have the signatures
of the Numba twins (flowtie_fast/_numba_kernels.py), so one test body checks
the Numba twin, the CUDA arithmetic on the host and, where a device answers,
the CUDA kernels themselves.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests" / "host" / "host_kernels.cpp"
HEADER_DIR = ROOT / "kernels"


def compiler():
    """Path of a C++ compiler, or None."""
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def build(tmpdir: Path) -> "HostKernels":
    """Compile the harness into ``tmpdir`` and load it."""
    out = Path(tmpdir) / "host_kernels.so"
    cmd = [compiler(), "-O2", "-std=c++14", "-shared", "-fPIC", f"-I{HEADER_DIR}",
           "-o", str(out), str(SOURCE)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return HostKernels(ctypes.CDLL(str(out)))


def _ptr(a):
    assert a.flags.c_contiguous
    return ctypes.c_void_p(a.ctypes.data)


class HostKernels:
    def __init__(self, lib):
        self.lib = lib

    def _fn(self, name, dtype):
        suffix = "f32" if np.dtype(dtype) in (np.float32, np.complex64) else "f64"
        return getattr(self.lib, f"{name}_{suffix}")

    @staticmethod
    def _c(dtype):
        return ctypes.c_float if np.dtype(dtype) in (np.float32, np.complex64) else ctypes.c_double

    def focal_derivative3(self, minus, zero, plus, out, wm, wz, wp):
        T = self._c(out.dtype)
        self._fn("focal_derivative3", out.dtype)(_ptr(minus), _ptr(zero), _ptr(plus), _ptr(out),
                                                ctypes.c_long(out.size), T(wm), T(wz), T(wp))

    def focal_derivative_n(self, stack, w, out):
        self._fn("focal_derivative_n", out.dtype)(_ptr(stack), _ptr(w), _ptr(out),
                                                 ctypes.c_long(out.size),
                                                 ctypes.c_int(stack.shape[0]))

    def fd_gradient(self, u, gy, gx, inv_h0, inv_h1, mirror, centred):
        T = self._c(u.dtype)
        self._fn("fd_gradient", u.dtype)(_ptr(u), _ptr(gy), _ptr(gx), ctypes.c_int(u.shape[0]),
                                         ctypes.c_int(u.shape[1]), T(inv_h0), T(inv_h1),
                                         ctypes.c_int(mirror), ctypes.c_int(centred))

    def fd_divergence(self, gy, gx, out, inv_h0, inv_h1, mirror):
        T = self._c(out.dtype)
        self._fn("fd_divergence", out.dtype)(_ptr(gy), _ptr(gx), _ptr(out),
                                             ctypes.c_int(out.shape[0]),
                                             ctypes.c_int(out.shape[1]), T(inv_h0), T(inv_h1),
                                             ctypes.c_int(mirror))

    def weighted_divergence(self, u, w, out, inv_h0, inv_h1, floor, mirror, divide):
        T = self._c(out.dtype)
        self._fn("weighted_divergence", out.dtype)(
            _ptr(u), _ptr(w), _ptr(out), ctypes.c_int(out.shape[0]), ctypes.c_int(out.shape[1]),
            T(inv_h0), T(inv_h1), T(floor), ctypes.c_int(mirror), ctypes.c_int(divide))

    def vector_scale(self, gy, gx, w, floor, divide):
        T = self._c(w.dtype)
        self._fn("vector_scale", w.dtype)(_ptr(gy), _ptr(gx), _ptr(w), ctypes.c_long(w.size),
                                          T(floor), ctypes.c_int(divide))

    def inverse_laplacian(self, data, sy, sx, alpha, scale):
        T = self._c(data.dtype)
        comps = 2 if data.dtype.kind == "c" else 1
        self._fn("inverse_laplacian", data.dtype)(
            _ptr(data), ctypes.c_int(data.shape[0]), ctypes.c_int(data.shape[1]),
            ctypes.c_int(comps), _ptr(sy), _ptr(sx), T(alpha), T(scale))

    def spectral_gradient(self, F, Gy, Gx, ky, kx, sy, sx, alpha, scale, poisson):
        T = self._c(F.dtype)
        self._fn("spectral_gradient", F.dtype)(
            _ptr(F), _ptr(Gy), _ptr(Gx), ctypes.c_int(F.shape[0]), ctypes.c_int(F.shape[1]),
            _ptr(ky), _ptr(kx), _ptr(sy), _ptr(sx), T(alpha), T(scale), ctypes.c_int(poisson))

    def spectral_divergence(self, Gy, Gx, out, ky, kx, sy, sx, alpha, scale, poisson):
        T = self._c(out.dtype)
        self._fn("spectral_divergence", out.dtype)(
            _ptr(Gy), _ptr(Gx), _ptr(out), ctypes.c_int(out.shape[0]), ctypes.c_int(out.shape[1]),
            _ptr(ky), _ptr(kx), _ptr(sy), _ptr(sx), T(alpha), T(scale), ctypes.c_int(poisson))

    def reduce_patterns(self, data, W, lo, hi, out):
        from flowtie_fast._cuda import reduce_kernel  # the variant the device would run

        fn = getattr(self.lib, reduce_kernel(data.dtype, data.shape[1], data.ctypes.data))
        fn(_ptr(data), ctypes.c_long(data.shape[0]), ctypes.c_long(data.shape[1]), _ptr(W),
           ctypes.c_int(W.shape[0]), _ptr(lo), _ptr(hi), _ptr(out))
