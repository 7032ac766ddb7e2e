"""Backend choice, FFT plans that last, thread safety, packaging of the kernels, CLI."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
from fields import periodic_field, rel_rms, triplet_from

import flowtie_fast as ft
from flowtie_fast import backend as backend_module
from flowtie_fast._cuda import kernel_dir


def test_gpu_request_is_an_error_or_a_gpu():
    if ft.gpu_available():
        assert ft.get_backend("gpu").is_gpu
    else:
        with pytest.raises(ft.BackendError, match="backend='gpu': no CUDA device answers"):
            ft.get_backend("gpu")


def test_auto_takes_the_gpu_only_when_one_answers():
    assert ft.get_backend("auto").is_gpu == ft.gpu_available()


def test_thread_count_is_configurable():
    be = ft.get_backend("cpu", threads=1)
    assert be.threads == 1 and "threads=1" in repr(be)


@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
def test_repeated_solves_allocate_nothing_new(boundary, rng):
    p = ft.PoissonSolver((256, 256), 0.2, boundary=boundary, backend="cpu")
    f = rng.random((256, 256)).astype(np.float32)
    out = np.empty_like(f)
    grad = np.empty((2, 256, 256), np.float32)
    w = np.ones_like(f)
    p.solve(f, out=out, grad_out=grad)
    p.teague(f, w, 1e-3, out=out, grad_out=grad)
    buffers = (p.scalar.real, p.scalar.spec)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for _ in range(5):
        p.solve(f, out=out, grad_out=grad)
        p.teague(f, w, 1e-3, out=out, grad_out=grad)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 16 * 1024, grown  # one 256² float32 image is 256 KiB
    assert (p.scalar.real, p.scalar.spec) == buffers


def test_scipy_fallback_warns_once_and_agrees(monkeypatch):
    phi, intensity, didz, _ = periodic_field(shape=(32, 30), contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), 300e3)
    fftw = ft.TIESolver((32, 30), (0.2, 0.25), backend="cpu", dtype="float64").solve(t)
    monkeypatch.setattr(backend_module, "_have_pyfftw", lambda: False)
    backend_module._warn_no_pyfftw.cache_clear()
    with pytest.warns(RuntimeWarning, match="pyFFTW is not installed"):
        be = backend_module.Backend("cpu")
    assert be.fft_library == "scipy"
    for boundary in ("periodic", "mirror"):
        a = ft.TIESolver((32, 30), (0.2, 0.25), backend=be, dtype="float64",
                         boundary=boundary).solve(t)
        b = ft.TIESolver((32, 30), (0.2, 0.25), backend="cpu", dtype="float64",
                         boundary=boundary).solve(t)
        assert rel_rms(a.phase, b.phase) < 1e-12
    assert rel_rms(fftw.phase, phi) < 0.05


def test_one_solver_shared_by_threads_gives_the_sequential_answers(rng):
    phi, intensity, didz, _ = periodic_field(shape=(64, 64), pixel=(0.2, 0.2), contrast=0.3)
    triplets = [triplet_from(intensity * (1 + 0.1 * i), didz * (1 + 0.1 * i), 10.0, 0.2, 300e3)
                for i in range(8)]
    solver = ft.TIESolver((64, 64), 0.2, backend="cpu")
    sequential = [solver.solve(t, method="tie").phase for t in triplets]
    results = [None] * 8

    def work(i):
        for _ in range(5):
            results[i] = solver.solve(triplets[i], method="tie").phase

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for a, b in zip(sequential, results):
        np.testing.assert_array_equal(a, b)


def test_results_do_not_alias_solver_buffers():
    phi, intensity, didz, _ = periodic_field(shape=(32, 32), pixel=(0.2, 0.2), contrast=0.3)
    solver = ft.TIESolver((32, 32), 0.2, backend="cpu")
    first = solver.solve(triplet_from(intensity, didz, 10.0, 0.2, 300e3))
    kept = first.phase.copy()
    solver.solve(triplet_from(intensity, 2 * didz, 10.0, 0.2, 300e3))
    np.testing.assert_array_equal(first.phase, kept)
    r = first.residual  # computed lazily from the inputs of the first solve
    assert np.isfinite(r).all()


def test_kernel_sources_are_found():
    d = kernel_dir()
    assert (d / "flowtie_kernels.cu").is_file() and (d / "flowtie_ops.cuh").is_file()


def test_cuda_module_compiles_and_launches():
    if not ft.gpu_available():
        pytest.skip("no CUDA device answers here (CuPy missing, no driver or no device)")
    from flowtie_fast._cuda import load_module

    assert load_module() is load_module()  # compiled once per process


def test_fresnel_demo_runs_and_reports_every_method(capsys):
    from flowtie_fast.cli import main

    assert main(["demo", "--fresnel", "--size", "64"]) == 0
    out = capsys.readouterr().out
    for method in ("tie-uniform", "tie", "tie-exact", "gd"):
        assert f"\n{method} " in out


def test_gaas_demo_table_and_figure(capsys, tmp_path):
    pytest.importorskip("abtem")
    from flowtie_fast.cli import main

    png = tmp_path / "demo.png"
    assert main(["demo", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    for method in ("tie-uniform", "tie", "tie-exact", "gd", "icom"):
        assert f"\n{method} " in out
    assert png.stat().st_size > 10_000


@pytest.mark.gpu
def test_results_live_where_the_input_lived():
    if not ft.gpu_available():
        pytest.skip("no CUDA device answers here (CuPy missing, no driver or no device)")
    import cupy

    phi, intensity, didz, _ = periodic_field(shape=(64, 48), contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), 300e3)
    on_gpu = ft.FocalTriplet(*(cupy.asarray(p) for p in t.planes), dz=10.0,
                             pixel_size=(0.2, 0.25), energy=300e3)
    a = ft.reconstruct(on_gpu, method="tie")
    assert isinstance(a.phase, cupy.ndarray) and isinstance(a.gradient, cupy.ndarray)
    b = ft.reconstruct(t, method="tie")  # auto takes the GPU, hands back NumPy
    assert isinstance(b.phase, np.ndarray) and isinstance(b.residual, np.ndarray)
    c = ft.reconstruct(t, method="tie", backend="cpu")
    assert rel_rms(cupy.asnumpy(a.phase), c.phase) < 1e-5
    assert rel_rms(b.phase, c.phase) < 1e-5


def test_fftw_measures_only_transforms_worth_it():
    """FFTW measures its plans for the sizes a Plan repeats and estimates them
    for small images, where measuring costs more than a one-shot solve."""
    pytest.importorskip("pyfftw")
    from flowtie_fast.fft import RealFFTPlan

    backend = ft.backend.get_backend("cpu")
    if backend.fft_library != "pyfftw":
        pytest.skip("pyFFTW is not this backend's FFT library")
    small = RealFFTPlan(backend, (32, 32), np.float32)
    large = RealFFTPlan(backend, (64, 64), np.float32)
    assert "FFTW_ESTIMATE" in small._fftw.fwd.flags and "FFTW_MEASURE" in large._fftw.fwd.flags
    x = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    small.forward(x)
    np.testing.assert_allclose(small.spec, np.fft.rfft2(x), rtol=1e-5, atol=1e-4)
