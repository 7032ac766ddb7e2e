"""Signals of when not to trust flowtie, measured on simulations with ground truth.

For every case x dose: the phase error (NMSE) of flowtie, icom and tie; the
spread of the shipped ensemble members' phases (default, seed0, seed2,
seed3) relative to the phase's spread; the fraction of the focal derivative's
power above its noise. Prints one JSON line per case (for calibration and
for docs/evaluation.md).

    python scripts/trust_study.py data/validation --doses none 1e3 3e3 1e4 1e5
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.simulation.acquisition import counts as dose_counts
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.flow.infer import load_model
from flowtie_fast.noise import denoise

MEMBERS = ("default", "seed0", "seed2", "seed3")


def derivative_snr(t):
    """Fraction of the focal derivative's power (mean removed) that the noise
    filter keeps: 1 for noise-free data, 0 when nothing is above the noise."""
    if t.noise is None:
        return 1.0
    d = np.tensordot(t.derivative_weights, np.stack([np.asarray(p, float) for p in t.planes]), 1)
    d -= d.mean()
    total = float(np.sum(d ** 2))
    kept = d.copy()
    denoise(kept, t.noise.combined(t.derivative_weights))
    return float(np.sum(kept ** 2)) / total if total > 0 else 0.0


def case_rows(path, doses, rng):
    ds = ft.load(path)
    for dose in doses:
        if dose is None:
            t = ds.triplet(backend="cpu")
        else:
            planes = [dose_counts(p, dose, ds.scan_step, rng, dtype=np.uint32)
                      for p in (ds.minus, ds.zero, ds.plus)]
            t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                            k_sampling=ds.k_sampling, energy=ds.energy,
                                            backend="cpu")
        truth = np.asarray(ds.phase_gt, float)
        phases = {}
        for m in MEMBERS:
            phases[m] = np.asarray(ft.reconstruct(t, method="flowtie", model=load_model(m), uncertainty=False,
                                                  backend="cpu").phase, float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            icom = ft.reconstruct(t, method="icom", backend="cpu").phase
            tie = ft.reconstruct(t, method="tie", backend="cpu").phase
        stack = np.stack([p - p.mean() for p in phases.values()])
        spread = stack.std(axis=0)
        mean = stack.mean(axis=0)
        err = phases["default"] - phases["default"].mean() - (truth - truth.mean())
        yield {
            "case": Path(path).stem, "dose": dose,
            "nmse_flowtie": phase_errors(phases["default"], truth)[1],
            "nmse_ensemble": phase_errors(mean, truth)[1],
            "nmse_icom": phase_errors(icom, truth)[1],
            "nmse_tie": phase_errors(tie, truth)[1],
            "rel_spread": float(np.sqrt(np.mean(spread ** 2)) / (phases["default"].std() or 1)),
            "snr": derivative_snr(t),
            "rms_error": float(np.sqrt(np.mean(err ** 2))),
            "rms_spread": float(np.sqrt(np.mean(spread ** 2))),
            # |error| / spread quantiles: what factor covers 68 % of the pixels
            "ratio_icom": float(phases["default"].std() / max(float(np.std(icom)), 1e-12)),
            "k68": float(np.quantile(np.abs(err) / np.maximum(spread, 1e-12), 0.68)),
        }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--doses", nargs="+", default=["none"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    doses = [None if d == "none" else float(d) for d in args.doses]
    files = []
    for p in args.paths:
        files += sorted(p.glob("*.npz")) if p.is_dir() else [p]
    rng = np.random.default_rng(args.seed)
    for f in files:
        for row in case_rows(f, doses, rng):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
