"""Shared fixtures: kernel implementations and backends, GPU cases skipped with a reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import host_kernels  # noqa: E402

from flowtie_fast.backend import gpu_available  # noqa: E402

NO_GPU = "no CUDA device answers here (CuPy missing, no driver or no device)"


def _skip_without_gpu():
    if not gpu_available():
        pytest.skip(NO_GPU)


@pytest.fixture(scope="session")
def host_lib(tmp_path_factory):
    if host_kernels.compiler() is None:
        pytest.skip("no C++ compiler to build the host harness of the CUDA arithmetic")
    return host_kernels.build(tmp_path_factory.mktemp("host_kernels"))


class Impl:
    """A kernel implementation with converters to and from its arrays."""

    def __init__(self, name, kernels, to_dev, to_host):
        self.name, self.kernels, self.to_dev, self.to_host = name, kernels, to_dev, to_host

    def empty(self, shape, dtype):
        return self.to_dev(np.zeros(shape, dtype))


@pytest.fixture(params=["numba", "numpy", "cuda-arithmetic-on-host",
                        pytest.param("cuda", marks=pytest.mark.gpu)])
def impl(request):
    """Each implementation of the kernels: the Numba twin, the NumPy kernels of
    cold starts, the CUDA arithmetic compiled for the host, and the CUDA
    kernels on a device."""
    ident = lambda a: np.ascontiguousarray(a)  # noqa: E731
    if request.param == "numba":
        from flowtie_fast import _numba_kernels

        return Impl("numba", _numba_kernels, ident, np.asarray)
    if request.param == "numpy":
        from flowtie_fast import _numpy_kernels

        return Impl("numpy", _numpy_kernels, ident, np.asarray)
    if request.param == "cuda-arithmetic-on-host":
        return Impl("host", request.getfixturevalue("host_lib"), ident, np.asarray)
    _skip_without_gpu()
    import cupy

    from flowtie_fast._cuda import CudaKernels

    return Impl("cuda", CudaKernels(), lambda a: cupy.ascontiguousarray(cupy.asarray(a)),
                cupy.asnumpy)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def backend(request):
    """Backend names; the GPU case skips with a reason where no device answers."""
    if request.param == "gpu":
        _skip_without_gpu()
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
