"""Phase error at finite dose: Poisson counts drawn from the noise-free 4D data
of data/eval and data/unseen (thin cases), for the methods that 4D-STEM feeds.

    python benchmarks/noise_study.py   # prints the table in benchmarks/EVALUATION.md
"""

from __future__ import annotations

import glob

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluate import phase_errors
from flowtie_fast.simulate import poisson_counts

METHODS = ("tie", "tie-exact", "icom", "flowtie")
DOSES = (1e4, 1e5, 1e6)  # electrons per Å²


def main():
    rng = np.random.default_rng(0)
    files = sorted(glob.glob("data/eval/*_00[0-4]*.npz")) + \
        sorted(glob.glob("data/unseen/*_00[0-2]*.npz"))
    print("| case | dose (e/Å²) | " + " | ".join(METHODS) + " |")
    print("| --- | ---: |" + " ---: |" * len(METHODS))
    for path in files:
        with ft.load(path) as ds:
            for dose in DOSES:
                planes = [poisson_counts(p, dose, ds.scan_step, rng, np.uint16)
                          for p in (ds.minus, ds.zero, ds.plus)]
                t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                                k_sampling=ds.k_sampling, energy=ds.energy,
                                                backend="cpu")
                errors = [phase_errors(ft.reconstruct(t, method=m, backend="cpu").phase,
                                       ds.phase_gt)[1] for m in METHODS]
                name = f"{ds.meta.get('material')} {ds.meta.get('thickness') / 10:.2f} nm"
                print(f"| {name} | {dose:.0e} | " + " | ".join(f"{e:.3f}" for e in errors) +
                      " |", flush=True)


if __name__ == "__main__":
    main()
