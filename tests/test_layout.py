"""The package's layout: imports only go down, and the runtime path loads no
heavy optional dependency (scripts/import_graph.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_form_no_circle_and_none_hides_in_a_function():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_graph.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "circles: none" in out.stdout
    assert "function-level imports of non-optional modules: none" in out.stdout
    assert "runtime imports of research subpackages: none" in out.stdout


RUNTIME = """
import sys
import numpy as np
import flowtie_fast as ft

rng = np.random.default_rng(0)
iy, ix = np.indices((20, 20))
spot = np.exp(-((iy - 10.0) ** 2 + (ix - 10.0) ** 2) / 8.0)
data = [(1000 * spot * (1 + 0.05 * rng.random((16, 16, 1, 1)))).astype(np.float32)
        for _ in range(3)]
t = ft.FocalTriplet.from_4dstem(*data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                energy=300e3, backend="cpu", register=False)
ft.save(sys.argv[1], t)
with ft.load(sys.argv[1]) as ds:
    t = ds.triplet()
for method in ("tie", "icom"):
    ft.reconstruct(t, method=method, backend="cpu")
ft.Plan(t.shape, 0.2, 20.0, 300e3, method="tie", backend="cpu").solve(*t.planes)
heavy = sorted(m for m in ("torch", "abtem", "ase", "dask", "distributed", "libertem",
                           "matplotlib", "flowtie_fast.simulation", "flowtie_fast.evaluation",
                           "flowtie_fast.training") if m in sys.modules)
print("heavy:", heavy)
"""


def test_the_runtime_path_imports_no_heavy_optional_dependency(tmp_path):
    """4D-STEM data to a triplet, a file written and read, tie and icom solves
    and a Plan: none of PyTorch, abTEM, dask, LiberTEM or matplotlib is
    imported, nor the research subpackages."""
    out = subprocess.run([sys.executable, "-c", RUNTIME, str(tmp_path / "t.npz")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "heavy: []" in out.stdout, out.stdout
