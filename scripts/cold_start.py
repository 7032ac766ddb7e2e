"""Whole-process time of one `flowtie reconstruct` on a small 4D-STEM file.

    python scripts/cold_start.py --runs 5

Writes a synthetic 4D-STEM triplet (a 24 x 24 scan of 64 x 64 uint16
patterns, a bright-field disk whose brightness and position vary over the
scan) to a temporary folder, then runs the command line in fresh processes:
``tie`` with the NumPy kernels (the default for such a file) and the Numba
ones, and ``flowtie``; and ``import torch`` alone, the floor of any flowtie
process. Prints a Markdown table (best and median wall time of each) for
docs/performance.md, with the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import flowtie_fast as ft

ROWS = (("tie, --kernels auto (numpy)", ["--method", "tie"]),
        ("tie, --kernels numba", ["--method", "tie", "--kernels", "numba"]),
        ("flowtie (four networks: phase and uncertainty)", ["--method", "flowtie"]),
        ("flowtie --no-uncertainty", ["--method", "flowtie", "--no-uncertainty"]))


def synthetic_file(folder: Path, scan=24, det=64, seed=0) -> Path:
    """A small 4D-STEM triplet file (counts) with a non-zero focal derivative."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:scan, :scan]
    ky, kx = np.mgrid[:det, :det] - det // 2
    scans = []
    for s in (-1, 0, 1):
        gain = 1 + 0.2 * s * np.sin(2 * np.pi * y / scan) * np.cos(2 * np.pi * x / scan)
        shift = 1.5 * np.sin(2 * np.pi * x / scan)
        disk = (ky[None, None] ** 2 + (kx[None, None] - shift[..., None, None]) ** 2) < 15 ** 2
        scans.append(rng.poisson(2 + 40 * disk * gain[..., None, None]).astype(np.uint16))
    ds = ft.Dataset(*scans, dz=(20.0, 20.0), scan_step=(0.2, 0.2), energy=300e3,
                    k_sampling=(0.05, 0.05))
    return ft.save(folder / "scan.npz", ds)


def timed(argv, cwd) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="fresh processes per row (default 5)")
    args = p.parse_args(argv)
    flowtie = [sys.executable, "-m", "flowtie_fast._entry", "reconstruct"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = synthetic_file(tmp)
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        print("| command | best (s) | median (s) |")
        print("| --- | ---: | ---: |")
        for row, (label, extra) in enumerate(ROWS):
            times = [timed(flowtie + [str(source), "-o", str(tmp / f"out{row}_{i}.npz"),
                                      "--backend", "cpu", *extra], tmp)
                     for i in range(args.runs)]
            print(f"| {label} | {min(times):.2f} | {statistics.median(times):.2f} |", flush=True)
        times = [timed([sys.executable, "-c", "import torch"], tmp) for _ in range(args.runs)]
        print(f"| `python -c 'import torch'` alone | {min(times):.2f} | "
              f"{statistics.median(times):.2f} |")
        print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
