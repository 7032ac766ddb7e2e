"""Phase error at finite dose: Poisson counts drawn from the noise-free 4D data
of data/eval and data/unseen (thin cases), for the methods that 4D-STEM feeds.

    python scripts/noise_study.py [--models default fast]   # the table in docs/evaluation.md
"""

from __future__ import annotations

import argparse
import glob

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.simulation.simulate import poisson_counts

METHODS = ("tie", "tie-exact", "icom")
DOSES = (1e4, 1e5, 1e6)  # electrons per Å²


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["default"], help="shipped flow models")
    args = p.parse_args(argv)
    columns = list(METHODS) + [("flowtie", m) for m in args.models]
    names = list(METHODS) + ["flowtie" if m == "default" else f"flowtie ({m})"
                             for m in args.models]
    rng = np.random.default_rng(0)
    files = sorted(glob.glob("data/eval/*_00[0-4]*.npz")) + \
        sorted(glob.glob("data/unseen/*_00[0-2]*.npz"))
    print("| case | dose (e/Å²) | " + " | ".join(names) + " |")
    print("| --- | ---: |" + " ---: |" * len(names))
    for path in files:
        with ft.load(path) as ds:
            for dose in DOSES:
                planes = [poisson_counts(p, dose, ds.scan_step, rng, np.uint16)
                          for p in (ds.minus, ds.zero, ds.plus)]
                t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                                k_sampling=ds.k_sampling, energy=ds.energy,
                                                backend="cpu")
                errors = []
                for c in columns:
                    method, options = (c, {}) if isinstance(c, str) else (c[0], {"model": c[1]})
                    rec = ft.reconstruct(t, method=method, backend="cpu", **options)
                    errors.append(phase_errors(rec.phase, ds.phase_gt)[1])
                name = f"{ds.meta.get('material')} {ds.meta.get('thickness') / 10:.2f} nm"
                print(f"| {name} | {dose:.0e} | " + " | ".join(f"{e:.3f}" for e in errors) +
                      " |", flush=True)


if __name__ == "__main__":
    main()
