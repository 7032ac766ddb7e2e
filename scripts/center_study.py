"""Which detector centres given off the bright-field disk can be told, and what they cost.

A centre given a tenth to a third of the disk's radius off (a typo, the
centre of another camera length, (x, y) for (row, column)) shifts every
centre of mass by a constant and cuts the virtual bright-field disk. For the
thinnest and thickest file of each corpus series (cropped as the evaluation
grid reads them), noise-free and at 1e4, 1e3 and 1e2 e/Å²:

- ``detect`` rows: the in-focus patterns ``from_4dstem`` samples, their
  mean, the disk's centre measured on it and its bootstrap scatter, and for
  each centre given (the right one: the disk's centre measured on the
  noise-free mean of the whole scan, and the detector's middle ``K // 2``
  where the simulation puts the beam; offsets of 0.1, 0.2 and 0.3 disk radii
  in eight directions; the right one in (column, row) order) its distance
  from the measured centre in pixels, the disk's radius and the scatter;
- ``harm`` rows (``--harm N``: the thinnest file of every N-th series):
  the ``icom`` and ``tie`` phase NMSE with the right centre, each offset
  along a row and a diagonal, and the swapped order.

``--summary`` scores a limit (``--tolerance`` disk radii, ``--sigmas``
standard errors) on the series that choose (even-numbered) and those that
score (odd-numbered).

    python scripts/center_study.py data/corpus -o data/center.jsonl
    python scripts/center_study.py data/corpus --harm 1 -o data/center_harm.jsonl
    python scripts/center_study.py data/corpus --harm 4 --harm-doses 1e3 \
        -o data/center_harm_1e3.jsonl
    python scripts/center_study.py --summary data/center.jsonl data/center_harm.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.simulation.acquisition import counts, crop_margin
from flowtie_fast.stem.detector import (CENTER_SIGMAS, CENTER_TOLERANCE, center_offset,
                                        center_scatter, mean_pattern, sample_patterns)

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import cases, chooses  # noqa: E402

DOSES = (None, 1e4, 1e3, 1e2)
OFFSETS = (0.1, 0.2, 0.3)           # disk radii
DIRECTIONS = tuple(range(0, 360, 45))  # degrees from the row axis


def givens(right, middle, radius, directions=DIRECTIONS):
    """(label, offset in radii or None, centre) of every centre given."""
    out = [("right", 0.0, right), ("middle", 0.0, middle),
           ("swapped", None, (right[1], right[0]))]
    for r in OFFSETS:
        for a in directions:
            t = math.radians(a)
            out.append((f"{r:g}@{a}", r, (right[0] + r * radius * math.cos(t),
                                          right[1] + r * radius * math.sin(t))))
    return out


def loaded(path, margin):
    ds = ft.load(path)
    planes = [np.asarray(p) for p in (ds.minus, ds.zero, ds.plus)]
    if margin:
        planes = [crop_margin(p, margin) for p in planes]
    return ds, planes


def detect(path, margin, rng):
    ds, planes = loaded(path, margin)
    zero = planes[1]
    full = zero.mean(axis=(0, 1), dtype=np.float64)
    truth = center_offset((0.0, 0.0), full)
    right, radius = truth["measured"], truth["radius"]
    middle = tuple(float(n // 2) for n in full.shape)
    sample = sample_patterns(zero)
    rows = []
    for dose in DOSES:
        s = sample if dose is None else counts(sample[:, None], dose, ds.scan_step, rng,
                                               dtype=np.uint32)[:, 0]
        mean = mean_pattern(s)
        try:
            scatter = center_scatter(s)
            base = center_offset(right, mean, scatter)
        except ft.InputError as exc:
            rows.append({"case": path.stem, "dose": dose, "error": str(exc)})
            continue
        for label, off, c in givens(right, middle, radius):
            o = center_offset(c, mean, scatter)
            rows.append({"case": path.stem, "dose": dose, "given": label, "offset": off,
                         "shape": list(full.shape), "right": list(right),
                         "true_radius": radius, "measured": list(base["measured"]),
                         "radius": o["radius"], "scatter": scatter,
                         "distance": o["distance"],
                         "swap_distance": math.hypot(c[1] - o["measured"][0],
                                                     c[0] - o["measured"][1])})
    return rows


def harm(path, periodic, margin, rng, doses=(None, 1e4)):
    ds, planes = loaded(path, margin)
    truth = np.asarray(ds.phase_gt, float)
    if margin:
        truth = crop_margin(truth, margin)
    full = planes[1].mean(axis=(0, 1), dtype=np.float64)
    o = center_offset((0.0, 0.0), full)
    right, radius = o["measured"], o["radius"]
    middle = tuple(float(n // 2) for n in full.shape)
    boundary = "periodic" if periodic else "mirror"
    rows = []
    for dose in doses:
        data = planes if dose is None else [counts(p, dose, ds.scan_step, rng,
                                                   dtype=np.uint32) for p in planes]
        for label, off, c in givens(right, middle, radius, directions=(0, 45)):
            if label == "swapped" and math.dist(c, right) < 1e-6:
                continue
            row = {"case": path.stem, "dose": dose, "given": label, "offset": off,
                   "radius": radius, "distance": math.dist(c, right)}
            try:
                t = ft.FocalTriplet.from_4dstem(
                    *data, dz=ds.dz, scan_step=ds.scan_step, k_sampling=ds.k_sampling,
                    energy=ds.energy, center=c, backend="cpu",
                    register="periodic" if periodic else True)
                for m in ("icom", "tie"):
                    row[m] = phase_errors(ft.reconstruct(t, method=m, backend="cpu",
                                                         boundary=boundary).phase, truth)[1]
            except ft.InputError as exc:
                row["error"] = str(exc)
            rows.append(row)
    return rows


def warned(r, tolerance, sigmas):
    return r["distance"] > max(tolerance * r["radius"], sigmas * r["scatter"])


def summary(paths, tolerance, sigmas):
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines()]
    det = [r for r in rows if "scatter" in r]
    errors = [r for r in rows if "error" in r and "given" not in r]
    print(f"{len(errors)} (file, dose) refused before the check: "
          f"{sorted({(r['case'], r['dose']) for r in errors})[:8]}")
    print(f"limit: {tolerance:g} disk radii and {sigmas:g} standard errors")
    for half, name in ((True, "choosing (even)"), (False, "scoring (odd)")):
        part = [r for r in det if chooses("corpus", r["case"]) == half]
        print(f"== {name}: {len({r['case'] for r in part})} files")
        for dose in DOSES:
            d = [r for r in part if r["dose"] == dose]
            if not d:
                continue
            right = [r for r in d if r["given"] in ("right", "middle")]
            fw = [r for r in right if warned(r, tolerance, sigmas)]
            line = f"dose {dose}: false warnings"
            for g in ("right", "middle"):
                line += (f" {g} {sum(r['given'] == g for r in fw)}/"
                         f"{sum(r['given'] == g for r in right)}")
            need = max((r["distance"] / r["radius"] for r in right
                        if r["given"] == "right" and r["distance"] > sigmas * r["scatter"]),
                       default=0.0)
            line += f" (right: largest radii beyond the scatter {need:.3f})"
            for off in OFFSETS:
                o = [r for r in d if r["offset"] == off]
                hits = sum(warned(r, tolerance, sigmas) for r in o)
                line += f"; {off:g} R warned {hits}/{len(o)}"
            sw = [r for r in d if r["given"] == "swapped"
                  and math.dist(r["right"], r["right"][::-1]) > tolerance * r["true_radius"]]
            line += f"; swapped warned {sum(warned(r, tolerance, sigmas) for r in sw)}/{len(sw)}"
            print(line)
            if fw:
                print("   false:", [(r["case"], r["given"], round(r["distance"], 3),
                                     round(r["radius"], 2), round(r["scatter"], 3)) for r in fw])
            sc = np.array([r["scatter"] / r["radius"] for r in right])
            print(f"   scatter / radius: median {np.median(sc):.4f}, max {sc.max():.4f}")
    hm = [r for r in rows if "icom" in r]
    if hm:
        print("== harm (NMSE, median [min, max] of the ratio to the right centre's)")
        for dose in sorted({r["dose"] for r in hm}, key=lambda d: d or 0):
            base = {r["case"]: r for r in hm if r["dose"] == dose and r["given"] == "right"}
            for label in sorted({r["given"] for r in hm} - {"right"}):
                sel = [r for r in hm if r["dose"] == dose and r["given"] == label
                       and r["case"] in base]
                if not sel:
                    continue
                line = f"dose {dose} {label:8s} ({len(sel)} files):"
                for m in ("icom", "tie"):
                    q = np.array([r[m] / base[r["case"]][m] for r in sel])
                    v = np.array([r[m] for r in sel])
                    line += (f" {m} x{np.median(q):.2f} [{q.min():.2f}, {q.max():.2f}]"
                             f" (NMSE median {np.median(v):.3f});")
                print(line)
            for m in ("icom", "tie"):
                v = np.array([b[m] for b in base.values()])
                print(f"dose {dose} right: {m} NMSE median {np.median(v):.3f} "
                      f"[{v.min():.3f}, {v.max():.3f}]")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--output", type=Path, default=Path("data/center.jsonl"))
    p.add_argument("--harm", type=int, default=0,
                   help="the harm rows instead, of the thinnest file of every N-th series")
    p.add_argument("--harm-doses", default="none,1e4",
                   help="doses of the harm rows in e/Å², comma-separated (none: noise-free)")
    p.add_argument("--summary", action="store_true", help="the folders are result files")
    p.add_argument("--tolerance", type=float, default=CENTER_TOLERANCE)
    p.add_argument("--sigmas", type=float, default=CENTER_SIGMAS)
    a = p.parse_args(argv)
    if a.summary:
        summary(a.folders, a.tolerance, a.sigmas)
        return
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    done = set()
    if a.output.exists():
        done = {json.loads(line)["case"] for line in a.output.read_text().splitlines()}
    with a.output.open("a") as f:
        series = []
        for path, periodic, margin, kind in cases(a.folders):
            first = path.stem.split("_")[0] not in series  # the thinnest file of a series
            if first:
                series.append(path.stem.split("_")[0])
            if not path.exists() or path.stem in done:
                continue
            if a.harm and (not first or (len(series) - 1) % a.harm):
                continue
            start = time.perf_counter()
            doses = tuple(None if d.strip().lower() == "none" else float(d)
                          for d in a.harm_doses.split(","))
            rows = (harm(path, periodic, margin, rng, doses) if a.harm
                    else detect(path, margin, rng))
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            print(path.stem, len(rows), f"{time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
