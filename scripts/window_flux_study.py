"""Why the TIE fails on non-periodic windows, and whether the measured
centre of mass at the window's edges mends it.

A scan is a window of a larger specimen: the phase's flux crosses its edges,
which the mirror (zero normal derivative) boundary of the TIE solves sets to
zero. With a measured gradient the flux is known: the uniform-intensity TIE
``∇²φ = -k ∂I/∂z / Ī`` is solved here with the inhomogeneous Neumann
boundary ``∂φ/∂n = g·n`` from the centre of mass (cell-centred 5-point
Laplacian, DCT-II; the boundary flux enters the right-hand side of the edge
pixels), beside the same solve with a zero flux, the library's
``tie-uniform`` and ``icom``. No noise filter: noise-free data.

    python scripts/window_flux_study.py data/corpus
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from scipy.fft import dctn, idctn

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import cases, triplet_of  # noqa: E402


def neumann_solve(rhs, h):
    """``L φ = rhs`` for the cell-centred 5-point Laplacian with zero flux at
    the edges (DCT-II diagonalises it); mean of φ zero."""
    ny, nx = rhs.shape
    ly = (2 * np.cos(np.pi * np.arange(ny) / ny) - 2) / h[0] ** 2
    lx = (2 * np.cos(np.pi * np.arange(nx) / nx) - 2) / h[1] ** 2
    eig = ly[:, None] + lx[None, :]
    eig[0, 0] = 1.0
    c = dctn(rhs - rhs.mean(), type=2, norm="ortho") / eig
    c[0, 0] = 0.0
    return idctn(c, type=2, norm="ortho")


def tie_with_flux(t, gradient):
    """The uniform-intensity TIE phase with the edges' flux from ``gradient``
    (rad/Å) and without it (zero flux)."""
    planes = [np.asarray(p, float) for p in t.planes]
    didz = sum(w * p for w, p in zip(t.derivative_weights, planes))
    mean = float(sum(w * p for w, p in zip(t.intensity_weights, planes)).mean())
    h = t.pixel_size
    f = -t.wavenumber * didz / mean
    # L0 φ = f + g_in / h on the edge pixels (the flux the zero-flux operator omits)
    r = f.copy()
    r[0, :] += gradient[0][0, :] / h[0]
    r[-1, :] -= gradient[0][-1, :] / h[0]
    r[:, 0] += gradient[1][:, 0] / h[1]
    r[:, -1] -= gradient[1][:, -1] / h[1]
    return neumann_solve(r, h), neumann_solve(f, h)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    rows = []
    for path, periodic, margin, kind in cases(a.folders):
        if not path.exists() or periodic:
            continue
        t, truth, boundary, _ = triplet_of(path, periodic, margin, None, None, rng)
        flux, zero = tie_with_flux(t, np.asarray(t.gradient, float))
        lib = {m: ft.reconstruct(t, method=m, backend="cpu", boundary=boundary).phase
               for m in ("tie-uniform", "icom")}
        row = [phase_errors(x, truth)[1] for x in (flux, zero, lib["tie-uniform"], lib["icom"])]
        rows.append(row)
        print(f"{path.stem:30s} {t.shape[0]:3d} x {t.shape[1]:3d}  edge flux {row[0]:6.2f}  "
              f"zero flux {row[1]:6.2f}  tie-uniform {row[2]:6.2f}  icom {row[3]:6.2f}",
              flush=True)
    a = np.array(rows)
    gm = np.exp(np.log(a).mean(axis=0))
    print(f"{len(rows)} noise-free windows; geometric mean NMSE: edge flux {gm[0]:.2f}, zero flux "
          f"{gm[1]:.2f}, tie-uniform {gm[2]:.2f}, icom {gm[3]:.2f}; above 1: "
          + ", ".join(str(int(n)) for n in (a > 1.0001).sum(axis=0)))


if __name__ == "__main__":
    main()
