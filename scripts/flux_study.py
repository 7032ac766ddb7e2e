"""What a beam current that changes between the three scans does to the phase,
with and without ``from_4dstem(normalize=True)``.

For the thinnest and thickest file of each corpus series (cropped as the
evaluation grid reads them), noise-free and at 1e4 e/Å²: the ±dz scans
recorded at ``1 + e`` and ``1 - e`` times the in-focus scan's current
(``e`` = 0.05 and 0.10, the counts drawn at those doses), reconstructed by
``tie``, ``tie-uniform`` and the shipped flow alone (``flowtie``,
``uncertainty=False``) from planes scaled back to the in-focus scan's flux
(``normalize=True``) and as recorded (``normalize=False``). The NMSE of
each against the ground truth, and that of the scans at one current.

    python scripts/flux_study.py data/corpus -o data/flux.jsonl [--limit N]
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
from flowtie_fast.simulation.acquisition import counts, crop_margin

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import present  # noqa: E402

METHODS = ("tie", "tie-uniform", "flowtie")
CHANGES = (0.0, 0.05, 0.10)


def nmse_row(path, periodic, margin, dose, change, rng):
    """The NMSE of each method, normalised and as recorded, for one case."""
    ds = ft.load(path)
    truth = np.asarray(ds.phase_gt, float)
    planes = [np.asarray(p) for p in (ds.minus, ds.zero, ds.plus)]
    if margin:
        truth = crop_margin(truth, margin)
        planes = [crop_margin(p, margin) for p in planes]
    current = (1 + change, 1.0, 1 - change)
    if dose is None:
        planes = [p * np.float32(c) for p, c in zip(planes, current)]
    else:
        planes = [counts(p, dose * c, ds.scan_step, rng, dtype=np.uint32)
                  for p, c in zip(planes, current)]
    boundary = "periodic" if periodic else "mirror"
    row = {"case": path.stem, "dose": dose, "change": change}
    for normalize in (True, False):
        t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                        k_sampling=ds.k_sampling, energy=ds.energy,
                                        backend="cpu", normalize=normalize,
                                        register="periodic" if periodic else True)
        for m in METHODS:
            extra = {"uncertainty": False} if m == "flowtie" else {}
            rec = ft.reconstruct(t, method=m, backend="cpu", boundary=boundary, **extra)
            row[f"{m}/{'scaled' if normalize else 'raw'}"] = phase_errors(
                np.asarray(rec.phase), truth)[1]
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--output", type=Path, default=Path("data/flux.jsonl"))
    p.add_argument("--limit", type=int, default=None)
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    with a.output.open("a") as f:
        for path, periodic, margin, kind in present(a.folders, a.limit):
            for dose in (None, 1e4):
                for change in CHANGES:
                    try:
                        row = nmse_row(path, periodic, margin, dose, change, rng)
                    except ft.InputError as exc:
                        row = {"case": path.stem, "dose": dose, "change": change,
                               "error": str(exc)}
                    row["kind"] = kind
                    f.write(json.dumps(row) + "\n")
                    f.flush()
    summary(a.output)


def summary(path):
    """Per dose and change: the geometric mean over the cases of each method's
    NMSE over its NMSE at one current, normalised and as recorded, and the
    largest such ratio."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    base = {(r["case"], r["dose"]): r for r in rows if r["change"] == 0.0}
    for dose in (None, 1e4):
        for change in CHANGES[1:]:
            sel = [(r, base[(r["case"], dose)]) for r in rows
                   if r["dose"] == dose and r["change"] == change and (r["case"], dose) in base]
            if not sel:
                continue
            parts = []
            for m in METHODS:
                for how in ("scaled", "raw"):
                    k = f"{m}/{how}"
                    v = np.array([r[k] / max(b[f"{m}/scaled"], 1e-12) for r, b in sel])
                    parts.append(f"{k} {np.exp(np.log(v).mean()):.3f} (max {v.max():.2f})")
            print(f"dose {dose}, change ±{change:.0%}, {len(sel)} cases: " + "; ".join(parts))


if __name__ == "__main__":
    main()
