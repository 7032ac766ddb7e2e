"""icom under noise: the phase NMSE of the measured gradient's filter on corpus files.

For the thinnest and the thickest file of every finished series of a
``flowtie simulate --sweep`` folder, cropped to the nominal window (as
``scripts/evaluation_grid.py``), noise-free and with Poisson counts at 1e2,
1e3 and 1e4 e⁻/Å² (one draw, seed 0), the NMSE of ``icom`` with the
library's filter (:func:`flowtie_fast.noise.denoise_gradient`) and with the
earlier rule it replaced (each component filtered on its own, threshold
``ln M``, no detection stage), and a summary by held-out cycle and dose:

    python scripts/icom_noise_study.py data/corpus -o data/icom_noise.jsonl
    python scripts/icom_noise_study.py --score data/icom_noise.jsonl
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_grid as grid  # noqa: E402

import flowtie_fast as ft  # noqa: E402
import flowtie_fast.solvers as solvers  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402
from flowtie_fast.noise import denoise  # noqa: E402

DOSES = (None, 1e2, 1e3, 1e4)
LIBRARY = solvers.TIESolver._denoised_gradient


def _earlier(self, gradient, noise):
    """Each component filtered by :func:`denoise` at ``ln M``."""
    g = np.array(gradient, np.float64)
    if noise is None:
        return LIBRARY(self, gradient, noise)
    level = math.log(g.shape[1] * (g.shape[2] // 2 + 1))
    kept = [denoise(g[i], noise.variance[i], level) for i in range(2)]
    return self.backend.asarray(g, self.dtype), kept


def run(folder: Path, out: Path) -> None:
    done = set()
    if out.exists():
        done = {(r["case"], r["dose"]) for r in map(json.loads, out.read_text().splitlines())}
    with out.open("a") as f:
        for path, periodic, margin, kind in grid.present([folder]):
            for dose in DOSES:
                if (path.stem, dose) in done:
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        t, truth, boundary, ds = grid.triplet_of(
                            path, periodic, margin, dose, None, np.random.default_rng(0))
                    except ft.InputError as exc:
                        print("skipped", path.stem, dose, exc)
                        continue
                    row = {"case": path.stem, "kind": kind, "dose": dose,
                           "periodic": periodic, "shape": list(t.shape)}
                    for name, rule in (("earlier", _earlier), ("library", LIBRARY)):
                        solvers.TIESolver._denoised_gradient = rule
                        try:
                            rec = ft.reconstruct(t, method="icom", backend="cpu",
                                                 boundary=boundary)
                        finally:
                            solvers.TIESolver._denoised_gradient = LIBRARY
                        row[name] = phase_errors(rec.phase, truth)[1]
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(path.stem, dose, round(row["earlier"], 3), round(row["library"], 3))


def _cycle(case: str) -> str:
    """The held-out half of a corpus series (docs/models.md): index // 8."""
    c = int(case[1:5]) // 8
    return "validation" if c in (5, 9, 13, 17) else "test" if c in (7, 11, 15, 19) else "other"


def score(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    gm = lambda rs, k: math.exp(sum(math.log(max(r[k], 1e-12)) for r in rs) / len(rs))  # noqa
    groups = defaultdict(list)
    for r in rows:
        groups[_cycle(r["case"])].append(r)
        groups[f"dose {r['dose']}"].append(r)
    print("| rows | n | earlier: > 1 / worst / geometric mean "
          "| library: > 1 / worst / geometric mean |")
    print("| --- | ---: | --- | --- |")
    for name in ("validation", "test", "other", *sorted(k for k in groups if k[:4] == "dose")):
        rs = groups[name]
        cells = [f"{sum(r[k] > 1.0001 for r in rs)} / {max(r[k] for r in rs):.2f} / "
                 f"{gm(rs, k):.3f}" for k in ("earlier", "library")]
        print(f"| {name} | {len(rs)} | {cells[0]} | {cells[1]} |")


def main(argv=None) -> None:
    grid.study_main(__doc__, run, score, "data/icom_noise.jsonl", argv)


if __name__ == "__main__":
    main()
