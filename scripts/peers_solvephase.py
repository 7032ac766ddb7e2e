"""solvephase's transport-of-intensity solver (``solvephase.tie``) on the cases
exported by ``scripts/peers.py export`` (docs/peers.md).

Runs in the peers' virtual environment (solvephase is not a dependency of
flowtie_fast):

    /tmp/peers/venv/bin/pip install solvephase
    nice /tmp/peers/venv/bin/python scripts/peers_solvephase.py /tmp/peers/export \
        -o /tmp/peers/phases

Input: the three virtual bright-field images the export wrote (``bf_minus``,
``bf_zero``, ``bf_plus``: the planes z = -dz, 0, +dz that flowtie_fast's own
TIE methods see), so the comparison is of the solvers alone. solvephase works
in SI units: distances, pitch and wavelength in metres; its phase is in rad
with the same sign convention (``-k dI/dz = div(I grad φ)``). Periodic
solver (``method="fft"``: the scans are periodic), Teague's non-uniform
solution, central derivative, default regularisation.

Writes ``<out>/solvephase-tie/<case>.npz`` with ``phase`` (Sy, Sx) in rad,
``seconds`` (wall time of the ``tie`` call) and ``note``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import solvephase


def wavelength_m(energy_ev):
    """Relativistic electron wavelength in metres."""
    h, m, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    return h / math.sqrt(2 * m * e * energy_ev * (1 + e * energy_ev / (2 * m * c**2)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export")
    p.add_argument("-o", "--output", default="/tmp/peers/phases")
    p.add_argument("--method", default="fft", choices=("fft", "dct", "pcg"))
    a = p.parse_args(argv)
    print(f"solvephase {solvephase.__version__}", flush=True)
    for f in sorted(Path(a.export).glob("*.npz")):
        z = np.load(f)
        stack = np.stack([z["bf_minus"], z["bf_zero"], z["bf_plus"]]).astype(np.float64)
        dz = np.asarray(z["dz"], float)
        distances = np.array([-dz[0], 0.0, dz[-1]]) * 1e-10  # m
        pitch = tuple(float(s) * 1e-10 for s in z["scan_step"])  # m
        lam = wavelength_m(float(z["energy"]))
        solvephase.tie(stack, distances, pitch=pitch, wavelength=lam, method=a.method)  # warm-up
        start = time.perf_counter()
        res = solvephase.tie(stack, distances, pitch=pitch, wavelength=lam, method=a.method)
        seconds = time.perf_counter() - start
        phase = np.asarray(res.to_numpy().phase, np.float64)
        note = (f"solvephase.tie(bf planes at -dz, 0, +dz, method={a.method!r}, uniform=False, "
                f"derivative='central'), defaults otherwise; {res.message}")
        d = Path(a.output) / ("solvephase-tie" + ("" if a.method == "fft" else f"-{a.method}"))
        d.mkdir(parents=True, exist_ok=True)
        np.savez(d / f"{f.stem}.npz", phase=phase, seconds=seconds, note=note)
        print(f"{f.stem}: {seconds * 1e3:.2f} ms; {note}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
