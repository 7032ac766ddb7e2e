"""The CPU backend's OpenMP runtimes whatever was imported first.

PyTorch puts its libgomp in the global symbol scope with the default (spinning)
wait policy; Numba's omp layer and pyFFTW's FFTW then ran on it, and a 256²
``tie`` beside busy programs took up to 100x longer (scripts/busy_host.py).
These tests check the configuration the backend chooses, in fresh processes
(the import order is a per-process fact), and the dynamic linker's own record
of where ``GOMP_parallel`` is bound (LD_DEBUG=bindings); not timings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the guard inspects the Linux dynamic linker")

_CHILD = r"""
import json, sys
FIRST = {first!r}
if FIRST == "torch":
    import torch  # noqa: F401
elif FIRST == "gomp":  # another OpenMP user that loads its runtime globally, as PyTorch does
    import ctypes, ctypes.util
    ctypes.CDLL(ctypes.util.find_library("gomp"), mode=ctypes.RTLD_GLOBAL).omp_get_max_threads()
import numpy as np
import flowtie_fast as ft
from flowtie_fast import _threads
be = ft.get_backend("cpu")
import numba
n = 64
y, x = np.mgrid[:n, :n] / n
planes = [(1.0 + 0.2 * np.sin(6.28 * (x + s * 0.1)) * np.cos(6.28 * y)).astype(np.float32)
          for s in (-1, 0, 1)]
plan = ft.Plan((n, n), pixel_size=0.2, dz=20.0, energy=300e3, method="tie", backend=be)
phase = plan.solve(*planes)
d = _threads.prepare()
print("RESULT " + json.dumps({{
    "layer": numba.threading_layer(), "numba_threads": d.numba_threads, "isolated": d.isolated,
    "foreign": d.foreign, "fftw_threads": d.fftw_threads, "reason": d.reason,
    "kernels": type(be.kernels).__name__, "fft_threads": getattr(be, "fft_threads", None),
    "policy": __import__("os").environ.get("OMP_WAIT_POLICY"),
    "phase": phase.astype(float).ravel()[::37].tolist()}}))
"""


def _run(first, tmp_path, env=None, bindings=True):
    """Run the child; return its result and the GOMP_parallel bindings
    {"numba": file, "fftw": file} recorded by the dynamic linker."""
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "FLOWTIE_OMP_GUARD",
                              "NUMBA_THREADING_LAYER")}
    child_env.update(env or {})
    log = tmp_path / f"ld-{first}"
    if bindings:
        child_env.update(LD_DEBUG="bindings", LD_DEBUG_OUTPUT=str(log))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_CHILD.format(first=first))],
                       env=child_env, capture_output=True, text=True, timeout=600)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stderr[-3000:]
    bound = {}
    for f in tmp_path.glob(f"ld-{first}.*"):
        for m in re.finditer(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol "
                             r"`GOMP_parallel'", f.read_text(errors="replace")):
            key = "numba" if "omppool" in m[1] else "fftw" if "fftw3_omp" in m[1] else None
            if key:
                bound[key] = m[2]
        f.unlink()
    return json.loads(lines[-1][7:]), bound


def _need_torch():
    pytest.importorskip("torch", reason="PyTorch is not installed")


def _has_omp_layer():
    import importlib.util

    spec = importlib.util.find_spec("numba")
    return bool(spec and any(n.startswith("omppool") for n in
                             os.listdir(os.path.join(spec.submodule_search_locations[0],
                                                     "np", "ufunc"))))


def test_flowtie_first_leaves_each_library_its_own_passive_runtime(tmp_path):
    info, bound = _run("none", tmp_path)
    assert info["foreign"] is None and info["numba_threads"] is None and info["fftw_threads"] is None
    assert info["policy"] == "PASSIVE"
    if _has_omp_layer():
        assert info["layer"] == "omp"


def test_torch_first_numba_and_fftw_do_not_run_on_torchs_runtime(tmp_path):
    _need_torch()
    if not _has_omp_layer():
        pytest.skip("Numba has no omp layer here")
    info, bound = _run("torch", tmp_path)
    assert info["foreign"] and "torch" in info["foreign"], info["reason"]
    assert info["layer"] == "omp" and info["numba_threads"] is None, info["reason"]
    assert info["kernels"] != "_SerialKernels"
    # the dynamic linker's record: Numba's and FFTW's parallel regions use their own runtimes
    assert "numba" in bound and "torch" not in bound["numba"], bound
    if "fftw" in bound:
        assert "torch" not in bound["fftw"], bound
        assert info["fftw_threads"] is None  # FFTW keeps all its threads
        assert info["fft_threads"] in (None, len(os.sched_getaffinity(0)))


def test_torch_first_gives_the_same_phase(tmp_path):
    _need_torch()
    a, _ = _run("none", tmp_path, bindings=False)
    b, _ = _run("torch", tmp_path, bindings=False)
    # float32 transforms: each process measures its own FFTW plans (rounding differs)
    np.testing.assert_allclose(a["phase"], b["phase"], rtol=0, atol=1e-5)


def test_a_user_wait_policy_is_kept_and_the_runtime_shared(tmp_path):
    _need_torch()
    info, bound = _run("torch", tmp_path, env={"OMP_WAIT_POLICY": "ACTIVE"})
    assert info["policy"] == "ACTIVE"
    assert info["isolated"] == {} and info["numba_threads"] is None, info["reason"]
    assert "OMP_WAIT_POLICY" in info["reason"]


def test_the_guard_can_be_turned_off(tmp_path):
    _need_torch()
    info, bound = _run("torch", tmp_path, env={"FLOWTIE_OMP_GUARD": "0"})
    assert info["isolated"] == {} and info["numba_threads"] is None and "off" in info["reason"]
    if "numba" in bound:
        assert "torch" in bound["numba"]  # what the guard prevents


def test_a_global_runtime_numba_shares_falls_back_to_one_thread(tmp_path):
    """The system libgomp loaded globally before: Numba's omp layer would run on
    it (initialised before the backend asked for passive waiting), so the
    backend runs its kernels on one thread; the process's threading layer, which
    the host's own Numba code may rely on, is left as it is."""
    import ctypes.util

    if ctypes.util.find_library("gomp") is None or not _has_omp_layer():
        pytest.skip("no system libgomp or no omp layer here")
    info, bound = _run("gomp", tmp_path, bindings=False)
    assert info["numba_threads"] == 1 and info["layer"] == "omp", info["reason"]
    assert info["kernels"] != "_SerialKernels"
    a, _ = _run("none", tmp_path, bindings=False)
    np.testing.assert_allclose(a["phase"], info["phase"], rtol=0, atol=1e-5)


def test_a_preloaded_library_takes_the_fallback_not_deepbind(tmp_path):
    """With LD_PRELOAD (an allocator such as jemalloc, ASan) a library loaded
    with RTLD_DEEPBIND would bypass it: the guard takes the runtime-free
    fallback (the kernels and FFTW on one thread each)."""
    _need_torch()
    import ctypes.util

    libm = ctypes.util.find_library("m")
    if libm is None or not _has_omp_layer():
        pytest.skip("no libm to preload or no omp layer here")
    info, bound = _run("torch", tmp_path, env={"LD_PRELOAD": libm}, bindings=False)
    assert info["numba_threads"] == 1 and info["layer"] == "omp", info["reason"]
    assert info["kernels"] != "_SerialKernels" and info["isolated"] == {}
    if info["fftw_threads"] is not None:
        assert info["fft_threads"] == 1


@pytest.mark.parametrize("value", ["off", "FALSE", " No "])
def test_the_guard_is_turned_off_by_any_usual_word(tmp_path, value):
    """Only "0" was read: off/false/no left the guard on, silently."""
    info, _ = _run("none", tmp_path, env={"FLOWTIE_OMP_GUARD": value}, bindings=False)
    assert info["reason"].startswith("guard off (FLOWTIE_OMP_GUARD="), info["reason"]


def test_an_unknown_guard_value_is_refused_naming_the_variable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    child = ("import flowtie_fast as ft\n"
             "try:\n    ft.get_backend('cpu')\n"
             "except ft.BackendError as e:\n    print('REFUSED', e)\n")
    for value, refused in (("maybe", True), ("On", False)):
        r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                           timeout=600, env=dict(env, FLOWTIE_OMP_GUARD=value))
        assert r.returncode == 0, r.stderr[-3000:]
        if refused:
            assert r.stdout.startswith("REFUSED FLOWTIE_OMP_GUARD: expected one of "
                                       "0/false/no/off"), r.stdout
            assert "'maybe'" in r.stdout
        else:
            assert "REFUSED" not in r.stdout, r.stdout
