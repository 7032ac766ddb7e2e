"""End to end: a raw 4D-STEM focal triplet to the FlowTIE phase, stage by stage.

Three datasets of a 128 x 128 scan of 128 x 128 patterns (uint16: 1.6 GB,
float32: 3.2 GB in all) go through the path of ``FocalTriplet.from_4dstem``
and ``reconstruct(method="flowtie")``; each stage is timed on its own, the
whole path once more in one call, and both are held against reading the
same three arrays once (a NumPy sum of each, single-threaded).

    python scripts/end_to_end.py --backend cpu --repeats 5

Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from benchmarks.common import require  # noqa: E402
from flowtie_fast import stem  # noqa: E402

SCAN, DET = 128, 128
K_SAMPLING, SCAN_STEP, DZ, ENERGY = 0.04, 0.2, 20.0, 300e3


def raw_triplet(dtype, backend, seed=0):
    """Three (SCAN, SCAN, DET, DET) datasets: a bright-field disk of ~30 % of
    the detector radius, shifted by a smooth deflection field, with counts."""
    be = require(backend)
    rng = np.random.default_rng(seed)
    iy, ix = np.indices((DET, DET), dtype=np.float32)
    centre = (DET - 1) / 2
    wave = 2 * np.pi * np.arange(SCAN, dtype=np.float32) / SCAN
    dx = 1.5 * np.cos(wave)[:, None, None]  # deflection along detector x, per scan column
    out = []
    for plane in range(3):
        data = np.empty((SCAN, SCAN, DET, DET), dtype)
        for i in range(SCAN):  # row by row: bounded temporaries
            dy = 1.5 * np.sin(wave[i]) + 0.2 * plane
            r2 = (iy[None] - centre - dy) ** 2 + (ix[None] - centre - dx) ** 2
            disk = (r2 < (0.3 * DET / 2) ** 2).astype(np.float32) * 40
            noise = rng.random(disk.shape, dtype=np.float32) * 4
            data[i] = (disk + noise).astype(dtype)
        out.append(be.asarray(data))
    return out


def stages(data, backend):
    """Seconds of each stage of the path, in order (the data already in memory)."""
    be = require(backend)
    t = {}
    start = time.perf_counter()
    mean = stem.mean_pattern(stem.sample_patterns(data[1]))
    detector, regions = stem.triplet_geometry(mean, (K_SAMPLING, K_SAMPLING), ENERGY)
    t["centre and geometry (256 sampled patterns)"] = time.perf_counter() - start
    reductions = []
    for name, d in zip(("minus", "zero", "plus"), data):
        start = time.perf_counter()
        reductions.append(stem.reduce_4dstem(d, detector, regions, backend=be, name=name))
        be.synchronize()
        t[f"reduction of {name} (one pass)"] = time.perf_counter() - start
    start = time.perf_counter()
    trip = ft.FocalTriplet.from_reductions(reductions, DZ, SCAN_STEP)
    t["triplet (checks, rotation)"] = time.perf_counter() - start
    start = time.perf_counter()
    ft.reconstruct(trip, method="flowtie", backend=be)
    be.synchronize()
    t["flowtie: network + Poisson integration"] = time.perf_counter() - start
    return t


def run(dtype, backend, repeats):
    be = require(backend)
    data = raw_triplet(dtype, backend)
    nbytes = sum(int(d.nbytes) for d in data)

    def whole():
        trip = ft.FocalTriplet.from_4dstem(*data, dz=DZ, scan_step=SCAN_STEP,
                                           k_sampling=K_SAMPLING, energy=ENERGY, backend=be)
        rec = ft.reconstruct(trip, method="flowtie", backend=be)
        be.synchronize()
        return rec

    def read():
        for d in data:
            d.sum()
        be.synchronize()

    whole()  # warm-up: JIT, plans, model
    rows, totals, reads = [], [], []
    for _ in range(repeats):
        rows.append(stages(data, backend))
        start = time.perf_counter()
        whole()
        totals.append(time.perf_counter() - start)
        start = time.perf_counter()
        read()
        reads.append(time.perf_counter() - start)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    total, reading = statistics.median(totals), statistics.median(reads)
    print(f"\n{dtype}, {backend}: 3 x {SCAN}² scan x {DET}² detector, "
          f"{nbytes / 1e6:.0f} MB, median of {repeats}\n")
    print("| stage | ms | share of the stage sum |")
    print("| --- | ---: | ---: |")
    staged = sum(med.values())
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.1f} | {v / staged:.0%} |")
    print(f"| **sum of the stages** | {staged * 1e3:.1f} | |")
    print(f"| **whole path in one call** | {total * 1e3:.1f} | |")
    print(f"| reading the data once (NumPy sum of each) | {reading * 1e3:.1f} | |")
    print(f"\nwhole path / reading once: {total / reading:.2f} "
          f"({nbytes / 1e9 / total:.1f} GB/s through the whole path)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["uint16", "float32"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    for dtype in args.dtypes:
        run(dtype, args.backend, args.repeats)


if __name__ == "__main__":
    main()
