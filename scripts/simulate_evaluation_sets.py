"""Simulate the validation and test sets of the evaluation (abTEM, CPU).

Resumable: a case whose file exists is skipped. Writes under ``data/``
(ignored by git):

- ``data/validation``: Cu and CeO2 [001] (model and threshold selection only);
- ``data/test``: Si and MgO [001] (never trained on), the GaAs and SrTiO3
  thicknesses held out of training, and SrTiO3 1.56 nm scanned at 0.122 Å
  (the low-dose case, dosed at evaluation time);
- ``data/train``: the GaAs and SrTiO3 [001] series the shipped models were
  trained on (docs/models.md), the 32 x 32 and frozen-phonon series
  included: ``python scripts/simulate_evaluation_sets.py data train``.

Settings of ``docs/evaluation.md``: 300 keV, 20 mrad, dz 20 Å, 24 x 24
scan of one cell, 12 Å supercell, 0.06 Å potential sampling, 40 mrad detector.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import ase.build

import flowtie_fast as ft
from flowtie_fast.simulation.simulate import series_thicknesses, simulate_series

COMMON = dict(energy=300e3, semiangle=20.0, dz=20.0, supercell=12.0,
              potential_sampling=0.06, max_angle=40.0)


def cell(name):
    if name in ("GaAs", "SrTiO3"):
        return name
    a = {"Si": 5.431, "MgO": 4.212, "Cu": 3.615, "CeO2": 5.411}[name]
    kind = {"Si": "diamond", "MgO": "rocksalt", "Cu": "fcc", "CeO2": "fluorite"}[name]
    return ase.build.bulk(name, kind, a=a, cubic=True)


SETS = [
    ("validation", "Cu", (3.6, 14.5, 39.8), {}),
    ("validation", "CeO2", (5.4, 16.2, 37.9), {}),
    ("test", "Si", (5.4, 10.9, 21.7, 43.4), {}),
    ("test", "MgO", (4.2, 12.6, 21.1, 42.1), {}),
    ("test", "SrTiO3", (15.6,), {"scan_gpts": (32, 32), "tag": "step0.12"}),
    ("test", "GaAs", (11.3, 45.2, 141.3), {}),
    ("test", "SrTiO3", (11.7, 50.8, 148.4), {}),
    ("train", "SrTiO3", (7.8, 15.6, 31.2, 62.5, 117.1, 160.1),
     {"semiangle": 15.0, "dz": 15.0, "scan_gpts": (20, 20), "tag": "15mrad"}),
    ("train", "GaAs", (11.3, 17.0, 33.9, 67.8, 113.1, 169.6),
     {"semiangle": 25.0, "dz": 30.0, "scan_gpts": (16, 16), "tag": "25mrad"}),
    ("train", "SrTiO3", (3.9, 23.4, 101.5, 199.2), {}),
    ("train", "GaAs", (5.7, 22.6, 90.5, 197.9), {}),
    ("train", "SrTiO3", (3.9, 15.6, 27.3, 54.7), {"scan_gpts": (32, 32), "tag": "32x32"}),
    ("train", "GaAs", (5.7, 11.3, 28.3, 56.5),
     {"scan_gpts": (20, 20), "frozen_phonons": 4, "tag": "phonons"}),
]


def main(root="data", *folders):
    for folder, name, thicknesses, extra in SETS:
        if folders and folder not in folders or not folders and folder == "train":
            continue
        extra = dict(extra)
        tag = extra.pop("tag", "")
        material = cell(name)
        out = Path(root) / folder
        out.mkdir(parents=True, exist_ok=True)

        def path(t):
            return out / f"{name}{'_' + tag if tag else ''}_{t:06.1f}A.npz"

        todo = [t for t in series_thicknesses(material, thicknesses) if not path(t).exists()]
        if not todo:
            continue
        start = time.perf_counter()
        cases = simulate_series(material, todo, **{**COMMON, "scan_gpts": (24, 24), **extra})
        for c in cases:
            c.material = name
            ft.save(path(c.thickness), c)
        print(f"{folder}/{name}{tag}: {len(cases)} cases in {time.perf_counter() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
