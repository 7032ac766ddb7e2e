"""Loading and launching the CUDA kernels of ``kernels/`` through CuPy.

The module is compiled once per process (NVRTC through ``cupy.RawModule``)
and cached; a ``#line`` directive makes compiler errors point at the real
file. Every launcher checks dtype and contiguity and passes scalars with the
exact C type the kernel expects.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import BackendError

_BLOCK = 256
_MAX_BLOCKS = 65535


def kernel_dir() -> Path:
    """Directory holding ``flowtie_kernels.cu`` and ``flowtie_ops.cuh``.

    The sources are shipped inside the wheel as ``flowtie_fast/kernels`` and
    sit at the repository root (``kernels/``) in a source or editable checkout.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "kernels", here.parent / "kernels"):
        if (candidate / "flowtie_kernels.cu").is_file():
            return candidate
    raise BackendError(
        "backend: the CUDA sources flowtie_kernels.cu were not found next to the package "
        f"({here / 'kernels'}) nor in the source tree ({here.parent / 'kernels'})"
    )


@functools.lru_cache(maxsize=None)
def load_module():
    """Compile ``flowtie_kernels.cu`` once and return the ``cupy.RawModule``."""
    import cupy

    directory = kernel_dir()
    path = directory / "flowtie_kernels.cu"
    code = f'#line 1 "{path}"\n' + path.read_text()
    return cupy.RawModule(code=code, options=("-std=c++14", f"-I{directory}"))


_REDUCE_SUFFIX = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16",
                  np.dtype(np.uint32): "u32", np.dtype(np.int32): "i32",
                  np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}
REDUCE_DTYPES = tuple(_REDUCE_SUFFIX)
_REDUCE_BLOCK = 256  # FT_REDUCE_BLOCK of kernels/flowtie_kernels.cu
_REDUCE_LANES = 8  # FT_REDUCE_LANES of kernels/flowtie_ops.cuh: lanes a pattern
MAX_WEIGHTS = 8  # FT_MAX_WEIGHTS of kernels/flowtie_ops.cuh: weight rows of one pass


def reduce_kernel(dtype, count: int, address: int) -> str:
    """Name of the reduction kernel for rows of ``count`` pixels of ``dtype``
    from byte ``address`` on: the one reading 16-byte runs where every row
    starts 16-byte aligned, else the one reading a pixel at a time."""
    aligned = (count * np.dtype(dtype).itemsize) % 16 == 0 and address % 16 == 0
    return f"reduce_patterns_{_REDUCE_SUFFIX[np.dtype(dtype)]}" + ("" if aligned else "_1")


def _suffix(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.complex64):
        return "f32"
    if dtype in (np.float64, np.complex128):
        return "f64"
    raise TypeError(f"CUDA kernels take float32/float64 (or complex64/128), not {dtype}")


def _real_dtype(dtype):
    return np.float32 if _suffix(dtype) == "f32" else np.float64


def _check(*arrays):
    for a in arrays:
        if not a.flags.c_contiguous:
            raise ValueError("CUDA kernels need C-contiguous arrays")


def launch(name: str, count: int, dtype, *args) -> None:
    """Launch kernel ``name`` for ``dtype`` over ``count`` elements (grid-stride)."""
    fn = load_module().get_function(f"{name}_{_suffix(dtype)}")
    blocks = max(1, min(_MAX_BLOCKS, (int(count) + _BLOCK - 1) // _BLOCK))
    fn((blocks,), (_BLOCK,), args)


class CudaKernels:
    """The kernels of ``flowtie_kernels.cu`` with the signatures of the Numba twins."""

    @staticmethod
    def focal_derivative3(minus, zero, plus, out, wm, wz, wp):
        _check(minus, zero, plus, out)
        T = _real_dtype(out.dtype)
        launch("focal_derivative3", out.size, out.dtype, minus, zero, plus, out,
               np.int64(out.size), T(wm), T(wz), T(wp))

    @staticmethod
    def focal_derivative_n(stack, w, out):
        _check(stack, w, out)
        launch("focal_derivative_n", out.size, out.dtype, stack, w, out,
               np.int64(out.size), np.int32(stack.shape[0]))

    @staticmethod
    def fd_gradient(u, gy, gx, inv_h0, inv_h1, mirror, centred):
        _check(u, gy, gx)
        T = _real_dtype(u.dtype)
        ny, nx = u.shape
        launch("fd_gradient", u.size, u.dtype, u, gy, gx, np.int32(ny), np.int32(nx),
               T(inv_h0), T(inv_h1), np.int32(mirror), np.int32(centred))

    @staticmethod
    def fd_divergence(gy, gx, out, inv_h0, inv_h1, mirror):
        _check(gy, gx, out)
        T = _real_dtype(out.dtype)
        ny, nx = out.shape
        launch("fd_divergence", out.size, out.dtype, gy, gx, out, np.int32(ny), np.int32(nx),
               T(inv_h0), T(inv_h1), np.int32(mirror))

    @staticmethod
    def weighted_divergence(u, w, out, inv_h0, inv_h1, floor, mirror, divide):
        _check(u, w, out)
        T = _real_dtype(out.dtype)
        ny, nx = out.shape
        launch("weighted_divergence", out.size, out.dtype, u, w, out, np.int32(ny),
               np.int32(nx), T(inv_h0), T(inv_h1), T(floor), np.int32(mirror),
               np.int32(divide))

    @staticmethod
    def vector_scale(gy, gx, w, floor, divide):
        _check(gy, gx, w)
        T = _real_dtype(w.dtype)
        launch("vector_scale", w.size, w.dtype, gy, gx, w, np.int64(w.size), T(floor),
               np.int32(divide))

    @staticmethod
    def inverse_laplacian(data, sy, sx, alpha, scale):
        _check(data, sy, sx)
        T = _real_dtype(data.dtype)
        comps = 2 if data.dtype.kind == "c" else 1
        ny, nxs = data.shape
        launch("inverse_laplacian", data.size, data.dtype, data, np.int32(ny), np.int32(nxs),
               np.int32(comps), sy, sx, T(alpha), T(scale))

    @staticmethod
    def spectral_gradient(F, Gy, Gx, ky, kx, sy, sx, alpha, scale, poisson):
        _check(F, Gy, Gx, ky, kx, sy, sx)
        T = _real_dtype(F.dtype)
        ny, nxh = F.shape
        launch("spectral_gradient", F.size, F.dtype, F, Gy, Gx, np.int32(ny), np.int32(nxh),
               ky, kx, sy, sx, T(alpha), T(scale), np.int32(poisson))

    @staticmethod
    def spectral_divergence(Gy, Gx, out, ky, kx, sy, sx, alpha, scale, poisson):
        _check(Gy, Gx, out, ky, kx, sy, sx)
        T = _real_dtype(out.dtype)
        ny, nxh = out.shape
        launch("spectral_divergence", out.size, out.dtype, Gy, Gx, out, np.int32(ny),
               np.int32(nxh), ky, kx, sy, sx, T(alpha), T(scale), np.int32(poisson))

    @staticmethod
    def reduce_patterns(data, W, lo, hi, out):
        """out (P, Q) float32 = data (P, K) @ W.T, row q of W read over [lo[q], hi[q])."""
        _check(data, W, lo, hi, out)
        suffix = _REDUCE_SUFFIX.get(np.dtype(data.dtype))
        if suffix is None:
            raise TypeError(f"reduce_patterns takes {REDUCE_DTYPES}, not {data.dtype}")
        npat, count = data.shape
        nq = W.shape[0]
        if not 1 <= nq <= MAX_WEIGHTS:  # the kernel's shared-memory tile holds this many rows
            raise ValueError(f"W: expected 1 to {MAX_WEIGHTS} weight rows, got {nq}")
        if (W.dtype != np.float32 or lo.dtype != np.int64 or hi.dtype != np.int64
                or out.dtype != np.float32 or W.shape[1] != count
                or lo.shape != (nq,) or hi.shape != (nq,) or out.shape != (npat, nq)):
            raise ValueError("reduce_patterns: expected W float32 (Q, K), lo and hi int64 (Q,), "
                             "out float32 (P, Q) for data (P, K)")
        fn = load_module().get_function(reduce_kernel(data.dtype, count, data.data.ptr))
        group = _REDUCE_BLOCK // _REDUCE_LANES  # patterns a block
        blocks = max(1, min(_MAX_BLOCKS, -(-npat // group)))
        fn((blocks,), (_REDUCE_BLOCK,), (data, np.int64(npat), np.int64(count), W,
                                          np.int32(nq), lo, hi, out))
