"""Could the dark field tell the sign of the phase?

For the thinnest and thickest file of each corpus series (cropped to the
nominal window, as the evaluation grid reads them), noise-free and at 1e3
e/Å²: the correlation of the ground-truth phase, and of the ``icom`` and
``tie-uniform`` phases, with the in-focus ``df`` virtual image. A check of
the phase's sign (swapped ±dz scans with ``rotation="auto"``) would need the
first to be positive on every window.

    python scripts/df_sign_study.py data/corpus -o data/dfsign.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import cases, triplet_of  # noqa: E402


def corr(a, b) -> float:
    a, b = np.ravel(a), np.ravel(b)
    return float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--output", type=Path, default=Path("data/dfsign.jsonl"))
    a = p.parse_args(argv)
    rng = np.random.default_rng(0)
    warnings.simplefilter("ignore")
    with a.output.open("w") as out:
        for path, periodic, margin, kind in cases(a.folders):
            if not path.exists():
                continue
            for dose in (None, 1e3):
                try:
                    t, truth, boundary, ds = triplet_of(path, periodic, margin, dose, None, rng)
                except ft.InputError:
                    continue
                df = np.asarray(t.reductions[1].virtual["df"], float)
                phases = {m: ft.reconstruct(t, method=m, backend="cpu", boundary=boundary).phase
                          for m in ("icom", "tie-uniform")}
                row = {"case": path.stem, "kind": kind, "dose": dose, "energy": ds.energy,
                       "truth_df": corr(truth, df), "icom_df": corr(phases["icom"], df),
                       "tie_df": corr(phases["tie-uniform"], df), "n": int(truth.size)}
                out.write(json.dumps(row) + "\n")
                out.flush()
    rows = [json.loads(line) for line in a.output.read_text().splitlines()]
    for dose in (None, 1e3):
        v = np.array([r["truth_df"] for r in rows if r["dose"] == dose], float)
        v = v[np.isfinite(v)]
        print(f"dose {dose}: {len(v)} windows, truth vs df: median r {np.median(v):.2f}, "
              f"lowest {v.min():.2f}, negative on {int((v < 0).sum())}")


if __name__ == "__main__":
    main()
