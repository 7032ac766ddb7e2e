"""The NumPy kernel set of one-shot work: same results as the Numba twins
through every solver and the 4D-STEM path, and a command line that starts
without Numba where it pays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fields import neumann_field, periodic_field, rel_rms, triplet_from

import flowtie_fast as ft
from flowtie_fast import cli

ROOT = Path(__file__).resolve().parents[1]


def test_the_numpy_kernel_backend_is_its_own_cached_backend():
    be = ft.get_backend("cpu", kernels="numpy")
    assert be.kernel_set == "numpy" and "kernels='numpy'" in repr(be)
    assert ft.get_backend("cpu", kernels="numpy") is be
    assert ft.get_backend("cpu") is not be and ft.get_backend("cpu").kernel_set == "numba"


@pytest.mark.parametrize("kernels", ["numb", None, "cuda"])
def test_an_unknown_kernel_set_is_refused(kernels):
    with pytest.raises(ft.BackendError, match="kernels: expected one of"):
        ft.get_backend("cpu", kernels=kernels)
    with pytest.raises(ft.BackendError, match="kernels: expected one of"):
        ft.Backend("cpu", kernels=kernels)


def test_the_gpu_has_no_numpy_kernels():
    with pytest.raises(ft.BackendError, match="'numba' on the GPU"):
        ft.Backend("gpu", kernels="numpy")


@pytest.mark.parametrize("method", ["tie-uniform", "tie", "tie-exact", "gd"])
@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
def test_every_solver_gives_the_numba_result_with_numpy_kernels(method, boundary):
    field = periodic_field if boundary == "periodic" else neumann_field
    phi, intensity, didz, _ = field()
    t = triplet_from(intensity, didz, dz=20.0, pixel=(0.2, 0.25), energy=300e3)
    fast = ft.reconstruct(t, method=method, boundary=boundary, backend="cpu")
    cold = ft.reconstruct(t, method=method, boundary=boundary,
                          backend=ft.get_backend("cpu", kernels="numpy"))
    assert cold.phase.dtype == fast.phase.dtype == np.float32
    scale = np.abs(fast.phase).max()
    assert np.abs(cold.phase - fast.phase).max() < 2e-5 * scale
    assert np.abs(cold.gradient - fast.gradient).max() < 2e-5 * np.abs(fast.gradient).max()
    assert scale > 0.1 and rel_rms(fast.phase, phi) < 0.25  # a phase, not a trivial one


def test_the_4dstem_path_gives_the_numba_triplet_with_numpy_kernels(rng):
    minus, zero, plus = _defocused_4d(rng)
    kwargs = dict(dz=20.0, scan_step=0.3, k_sampling=0.05, energy=300e3, register=False)
    fast = ft.FocalTriplet.from_4dstem(minus, zero, plus, backend="cpu", **kwargs)
    cold = ft.FocalTriplet.from_4dstem(minus, zero, plus,
                                       backend=ft.get_backend("cpu", kernels="numpy"), **kwargs)
    for a, b in zip(fast.planes, cold.planes):
        assert np.allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(a).max())
    assert np.allclose(fast.gradient, cold.gradient, rtol=1e-5,
                       atol=1e-5 * np.abs(fast.gradient).max())
    for method in ("tie", "icom"):
        want = ft.reconstruct(fast, method=method, backend="cpu").phase
        got = ft.reconstruct(cold, method=method,
                             backend=ft.get_backend("cpu", kernels="numpy")).phase
        assert np.abs(want).max() > 0 and np.allclose(got, want, atol=1e-4 * np.abs(want).max())


def _defocused_4d(rng, scan=(12, 10), det=21):
    """Three scans of a bright-field disk whose brightness and position vary
    over the scan in different ways at -dz, 0 and +dz (a non-zero focal
    derivative and centre of mass)."""
    y, x = np.mgrid[:scan[0], :scan[1]]
    ky, kx = np.mgrid[:det, :det] - det // 2
    scans = []
    for s in (-1, 0, 1):
        gain = 1 + 0.2 * s * np.sin(2 * np.pi * y / scan[0]) * np.cos(2 * np.pi * x / scan[1])
        shift = 1.5 * np.sin(2 * np.pi * x / scan[1])
        disk = (ky[None, None] ** 2 + (kx[None, None] - shift[..., None, None]) ** 2) < 36
        mean = 20 + 400 * disk * gain[..., None, None]
        scans.append(rng.poisson(mean).astype(np.uint16))
    return scans


class _Stored:
    """A 4D dataset as a file holds it: shape and dtype, no data in memory."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, np.dtype(dtype)


class _File:
    def __init__(self, kind, shape=(4, 4, 8, 8), dtype=np.uint16):
        self.kind = kind
        self.minus = self.zero = self.plus = _Stored(shape, dtype)


def test_the_command_line_takes_numpy_kernels_for_small_work_only(monkeypatch):
    monkeypatch.setattr(ft, "gpu_available", lambda: False)  # 'auto' would take a GPU
    small = cli._one_shot_backend("auto", "auto", _File("4dstem"))
    assert small.kernel_set == "numpy"
    assert cli._one_shot_backend("cpu", "auto", _File("triplet")).kernel_set == "numpy"
    # 3 x 128 x 128 x 128 x 128 uint16: 768 MiB, above the limit
    big = cli._one_shot_backend("cpu", "auto", _File("4dstem", (128, 128, 128, 128)))
    assert big.kernel_set == "numba"
    assert cli._one_shot_backend("cpu", "numba", _File("triplet")).kernel_set == "numba"
    assert cli._one_shot_backend("cpu", "numpy", _File("4dstem", (128,) * 4)).kernel_set \
        == "numpy"


def test_numpy_kernels_on_the_gpu_are_a_usage_error():
    with pytest.raises(ft.InputError, match="--kernels numpy"):
        cli._one_shot_backend("gpu", "numpy", _File("triplet"))


CHILD = """
import sys, time
start = time.perf_counter()
from flowtie_fast.cli import main
code = main(sys.argv[1:])
print("numba imported:", "numba" in sys.modules, "seconds:", time.perf_counter() - start)
sys.exit(code)
"""


def _reconstruct_in_child(tmp_path, *options):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "FLOWTIE_"))}
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.npz"
    run = subprocess.run([sys.executable, "-c", CHILD, "reconstruct", str(tmp_path / "in.npz"),
                          "-o", str(out), "--backend", "cpu", "--register", "off", *options],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    words = run.stdout.split()
    return words[words.index("imported:") + 1] == "True", np.load(out)["phase"]


def test_a_small_reconstruction_starts_without_numba_and_agrees_with_it(tmp_path, rng):
    ds = ft.Dataset(*_defocused_4d(rng), dz=(20.0, 20.0), scan_step=(0.3, 0.3),
                    energy=300e3, k_sampling=(0.05, 0.05))
    ft.save(tmp_path / "in.npz", ds)
    numba_used, cold = _reconstruct_in_child(tmp_path)
    assert not numba_used
    numba_used, fast = _reconstruct_in_child(tmp_path, "--kernels", "numba")
    assert numba_used
    assert np.abs(fast).max() > 0 and np.abs(cold - fast).max() < 1e-4 * np.abs(fast).max()


def test_a_named_kernel_set_keeps_auto_on_the_cpu(monkeypatch):
    monkeypatch.setattr(ft, "gpu_available", lambda: True)
    for kernels in ("numpy", "numba"):
        be = cli._one_shot_backend("auto", kernels, _File("triplet"))
        assert not be.is_gpu and be.kernel_set == kernels
