"""The check of the classical focal-derivative phases against the measured
centre of mass: its signal and the phase error, on simulations with ground
truth, to choose and score ``classical_disagreement_limit``.

For every case and condition of the evaluation grid (``scripts/evaluation_grid.py``:
the same windows, doses and drift), the phase NMSE of ``tie-uniform``,
``tie``, ``tie-exact``, ``gd`` and ``icom`` and, for each focal-derivative
method, ``rec.info["icom_disagreement"]``.

    python scripts/classical_check.py data/test data/validation data/corpus -o data/classical_check.jsonl
    python scripts/classical_check.py --choose data/classical_check.jsonl

``--choose`` fixes the limit on the validation crystals and the
even-numbered corpus series (the one that minimises phases worse than flat,
NMSE > 1, that pass plus phases at most NMSE 1 that are flagged; ties go to
the larger limit) and then scores it on the test crystals and the
odd-numbered series.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import flowtie_fast as ft  # noqa: E402
from evaluation_grid import DRIFTS, cases, chooses, triplet_of  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402

FOCAL = ("tie-uniform", "tie", "tie-exact", "gd")
CONDITIONS = ((None, None), (1e3, None), (1e4, None), (None, DRIFTS[1]))


def run(folders, out):
    rng = np.random.default_rng(7)
    done = set()
    if Path(out).exists():
        for line in Path(out).read_text().splitlines():
            r = json.loads(line)
            done.add((r["folder"], r["case"], r["dose"], r["drift"] is not None))
    with open(out, "a") as f:
        for path, periodic, margin, kind in cases(folders):
            for dose, shifts in CONDITIONS:
                key = (path.parent.name, path.stem, dose, shifts is not None)
                if key in done:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t, truth, boundary, _ = triplet_of(path, periodic, margin, dose, shifts, rng)
                    row = {"folder": path.parent.name, "case": path.stem, "kind": kind,
                           "periodic": periodic, "dose": dose,
                           "drift": None if shifts is None else [list(s) for s in shifts]}
                    for m in FOCAL + ("icom",):
                        try:
                            rec = ft.reconstruct(t, method=m, backend="cpu", boundary=boundary)
                        except ft.ResultError as e:  # a refusal is not a wrong phase
                            row[m], row[m + ":error"] = math.nan, str(e)
                            np.savez(Path(out).with_suffix(f".{path.stem}.{dose}.npz"),
                                     *[np.asarray(p) for p in t.planes])
                            continue
                        row[m] = phase_errors(rec.phase, truth)[1]
                        if m != "icom":
                            row[m + ":d"] = rec.info.get("icom_disagreement")
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(path.stem, dose, shifts is not None, flush=True)


def _is_fit(row) -> bool:
    return chooses(row["folder"], row["case"])


def _count(rows, limit):
    """(worse than flat and passed, at most flat and flagged, all) over every
    focal-derivative method of every row."""
    missed = false = total = 0
    for r in rows:
        for m in FOCAL:
            d, e = r.get(m + ":d"), r[m]
            if d is None or e is None or not math.isfinite(e):
                continue
            total += 1
            missed += e > 1 and not d > limit
            false += e <= 1 and d > limit
    return missed, false, total


def choose(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    fit = [r for r in rows if _is_fit(r)]
    score = [r for r in rows if not _is_fit(r)]
    grid = sorted({round(x, 3) for x in np.geomspace(0.5, 100, 200)})
    best = min(grid, key=lambda lim: (sum(_count(fit, lim)[:2]), -lim))
    for name, part in (("fit", fit), ("score", score)):
        missed, false, total = _count(part, best)
        print(f"{name}: {len(part)} rows, {total} method-rows; at limit {best:g}: "
              f"{missed} worse than flat and not flagged, {false} at most flat and flagged "
              f"(without the check: {_count(part, math.inf)[0]} worse than flat)")
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*")
    ap.add_argument("-o", "--out", default="data/classical_check.jsonl")
    ap.add_argument("--choose", metavar="JSONL")
    a = ap.parse_args(argv)
    if a.choose:
        choose(a.choose)
    else:
        run(a.folders, a.out)


if __name__ == "__main__":
    main()
