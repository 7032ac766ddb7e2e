"""Can a centre of mass of the wrong scale be told from the TIE phase? The
least-squares scale of the ``icom`` phase on the ``tie`` phase on right corpus data.

For the thinnest and thickest file of every finished series of a sweep folder
(cropped as ``scripts/evaluation_grid.py``), noise-free and at 1e3 and 1e4
e⁻/Å² (one draw, seed 0): the scale ``<icom, tie> / <tie, tie>`` and the
correlation of the two phases (means removed), and ``icom``'s NMSE:

    python scripts/scale_check_study.py data/corpus -o data/scale.jsonl
    python scripts/scale_check_study.py --score data/scale.jsonl

A centre of mass k times too strong (a ``k_sampling`` slip) multiplies the
scale by k; the spread of the scale on right data says which k a check could
catch without false alarms.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_grid as grid  # noqa: E402

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402


def _scale(a, b):
    """(scale of a on b, correlation), None where b or a is flat."""
    a, b = a - a.mean(), b - b.mean()
    ab, aa, bb = float((a * b).mean()), float((a * a).mean()), float((b * b).mean())
    if aa <= 0 or bb <= 0:
        return None, None
    return ab / bb, ab / np.sqrt(aa * bb)


def run(folder: Path, out: Path) -> None:
    with out.open("a") as f:
        for path, periodic, margin, kind in grid.present([folder]):
            for dose in (None, 1e3, 1e4):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        t, truth, boundary, _ = grid.triplet_of(
                            path, periodic, margin, dose, None, np.random.default_rng(0))
                    except ft.InputError:
                        continue
                    icom, tie = (np.asarray(ft.reconstruct(t, method=m, backend="cpu",
                                                           boundary=boundary).phase, float)
                                 for m in ("icom", "tie"))
                scale, corr = _scale(icom, tie)
                row = {"case": path.stem, "kind": kind, "dose": dose, "scale": scale,
                       "corr": corr, "icom_nmse": phase_errors(icom, truth)[1]}
                f.write(json.dumps(row) + "\n")
                f.flush()


def score(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for least in (0.3, 0.5, 0.7):
        s = np.array([r["scale"] for r in rows if r["corr"] is not None and r["corr"] > least])
        p = np.percentile(s, [1, 5, 50, 95, 99])
        print(f"correlation > {least}: {len(s)} rows, scale 1/5/50/95/99 %: "
              + " ".join(f"{v:.2f}" for v in p) + f", range {s.min():.3g}-{s.max():.3g}")


def main(argv=None) -> None:
    grid.study_main(__doc__, run, score, "data/scale.jsonl", argv)


if __name__ == "__main__":
    main()
