"""The trust check's signals on every case of the evaluation grid, for choosing
its rules on some cases and scoring them on others.

For every case (as ``scripts/evaluation_grid.py`` finds them) and dose
(noise-free and the ``--doses`` given, no drift): the NMSE of the network
alone, of ``icom`` and of ``tie``; the trust check's verdict and signals
(``rel_spread``, ``snr``, ``icom_ratio``); the correlation of the network's
phase with the ``icom`` phase; and the relative continuity residual of the
network's flow, ``|k ∂I/∂z + ∇·(I v)| / |k ∂I/∂z|`` (RMS over the pixels).
One JSON line per row.

    python scripts/trust_signals.py data/test data/validation data/corpus \\
        -o data/trust_signals.jsonl --doses none 1e4
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluation_grid import cases, triplet_of  # noqa: E402


def _corr(a, b) -> float:
    a = np.asarray(a, float) - np.mean(a)
    b = np.asarray(b, float) - np.mean(b)
    den = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b)) / den if den > 0 else 0.0


def row_of(path, periodic, margin, kind, dose, rng) -> dict:
    t, truth, boundary, ds = triplet_of(path, periodic, margin, dose, None, rng)
    raw = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary,
                         uncertainty=False)
    safe = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary)
    icom = ft.reconstruct(t, method="icom", backend="cpu", boundary=boundary)
    tie = ft.reconstruct(t, method="tie", backend="cpu", boundary=boundary)
    source = ft.wavenumber(t.energy) * np.tensordot(
        np.asarray(t.derivative_weights), np.stack([np.asarray(p, float) for p in t.planes]), 1)
    source = source - source.mean()
    residual = np.asarray(raw.residual, float)
    info = safe.info
    return {"case": path.stem, "kind": kind, "dose": dose, "energy": ds.energy,
            "series": path.stem.split("_")[0] if path.stem.startswith("s0") else None,
            "flowtie_raw": phase_errors(raw.phase, truth)[1],
            "flowtie": phase_errors(safe.phase, truth)[1],
            "icom": phase_errors(icom.phase, truth)[1],
            "tie": phase_errors(tie.phase, truth)[1],
            "trusted": bool(info.get("trusted")), "why": info.get("why"),
            "rel_spread": info.get("rel_spread"), "snr": info.get("snr"),
            "icom_ratio": info.get("icom_ratio"),
            "corr_icom": _corr(raw.phase, icom.phase),
            "residual": float(np.sqrt(np.mean(residual ** 2)) /
                              max(np.sqrt(np.mean(source ** 2)), 1e-30))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--doses", nargs="+", default=["none", "1e4"])
    args = p.parse_args(argv)
    doses = [None if d == "none" else float(d) for d in args.doses]
    rng = np.random.default_rng(11)
    with open(args.output, "a") as out:
        for path, periodic, margin, kind in cases(args.folders):
            for dose in doses:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        row = row_of(path, periodic, margin, kind, dose, rng)
                    except Exception as exc:  # noqa: BLE001  record and go on
                        row = {"case": path.stem, "dose": dose, "error": str(exc)}
                out.write(json.dumps(row) + "\n")
                out.flush()
                print(path.stem, dose, row.get("flowtie_raw"), row.get("icom"), flush=True)


if __name__ == "__main__":
    main()
