"""The evaluation grid: every method x dose x drift on simulations with ground truth.

For every case (a file of the flowtie_fast layout with a ground truth, from
``scripts/simulate_evaluation_sets.py`` or a ``flowtie simulate --sweep``
folder, whose manifest says which windows are non-periodic and their margin)
and every condition (dose in e⁻/Å² or noise-free; drift of the ±dz scans or
none), the phase NMSE of every method, flowtie as the library returns it (the
trust check and fallback on) and the network alone, the ratio of flowtie's
MSE to the best classical method's, the uncertainty's coverage (share of
pixels with ``|error| <= uncertainty``), the registration's error and, of
each TIE method, the norm of its TIE residual over a flat phase's
(``METHOD_residual``).

    python scripts/evaluation_grid.py data/test data/corpus -o data/grid.jsonl
    (of a sweep folder, the thinnest and the thickest file of each series)
    python scripts/evaluation_grid.py --table data/grid.jsonl   # Markdown, worst first
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
from flowtie_fast.simulation.acquisition import counts, crop_margin, drift
from flowtie_fast.evaluation.evaluate import phase_errors

CLASSICAL = ("tie-uniform", "tie", "tie-exact", "gd", "icom")
DOSES = (None, 1e3, 1e4, 1e5)
DRIFTS = (None, ((2.3, -1.7), (-1.8, -2.0)))


def study_main(doc: str, run, score, output: str, argv=None) -> None:
    """The command line of a corpus study: ``FOLDER -o OUT`` runs ``run(folder,
    out)``, ``--score FILE`` prints ``score(file)``; ``doc`` (the study's module
    docstring) gives the description, ``output`` the default output path."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path(output))
    parser.add_argument("--score", type=Path, help="print the summary of a study file")
    args = parser.parse_args(argv)
    if args.score:
        score(args.score)
    else:
        run(args.folder, args.output)


def cases(folders):
    """(path, periodic, margin, kind) of every file with a ground truth."""
    for folder in folders:
        folder = Path(folder)
        manifest = folder / "manifest.jsonl"
        if manifest.exists():
            for line in manifest.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                scan = row.get("scan", {})
                files = row.get("files", [])
                for f in files[:1] + files[-1:] if len(files) > 1 else files:
                    name = f if isinstance(f, str) else f.get("file", f.get("path"))
                    yield (folder / Path(name).name, bool(scan.get("periodic", True)),
                           int(scan.get("margin", 0) or 0), row.get("family", "crystal"))
        else:
            for f in sorted(folder.glob("*.npz")):
                yield f, True, 0, "crystal"


def present(folders, limit=None):
    """The :func:`cases` whose file is there, the first ``limit`` of them
    (None: all)."""
    n = 0
    for case in cases(folders):
        if not case[0].exists():
            continue
        n += 1
        if limit and n > limit:
            return
        yield case


def chooses(folder: str, case: str) -> bool:
    """The half of the cases that choose a limit (the validation crystals and the
    even-numbered corpus series); the other half (the test crystals and the
    odd-numbered series) scores it after."""
    if folder != "corpus":
        return folder == "validation"
    return int(case[1:5]) % 2 == 0


def one(path, periodic, margin, kind, dose, shifts, rng):
    t, truth, boundary, ds = triplet_of(path, periodic, margin, dose, shifts, rng)
    row = {"case": path.stem, "kind": kind, "periodic": periodic, "energy": ds.energy,
           "thickness": ds.meta.get("thickness"), "dose": dose,
           "drift": None if shifts is None else [list(s) for s in shifts],
           "shape": list(t.shape)}
    reg = t.registration or {}
    if shifts is not None and reg:
        want = -np.array([shifts[0], shifts[1]])
        got = reg["shifts"][[0, 2]]
        row["registration_error"] = float(np.abs(got - want).max()) if reg["applied"] else None
        row["registration_applied"] = bool(reg["applied"])
    flat = None
    for m in CLASSICAL:
        rec = ft.reconstruct(t, method=m, backend="cpu", boundary=boundary)
        row[m] = phase_errors(rec.phase, truth)[1]
        if m != "icom":  # the TIE residual against a flat phase's, k ∂I/∂z / Ī
            if flat is None:
                planes = [np.asarray(p, np.float64) for p in t.planes]
                didz = sum(w * p for w, p in zip(t.derivative_weights, planes))
                focus = sum(w * p for w, p in zip(t.intensity_weights, planes))
                flat = float(np.linalg.norm(t.wavenumber * didz / focus.mean()))
            row[m + "_residual"] = float(np.linalg.norm(np.asarray(rec.residual))) / flat \
                if flat > 0 else None
    raw = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary,
                         uncertainty=False)
    safe = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary)
    row["flowtie_raw"] = phase_errors(raw.phase, truth)[1]
    row["flowtie"] = phase_errors(safe.phase, truth)[1]
    row["fallback"] = safe.info.get("fallback")
    best = min(row[m] for m in CLASSICAL)
    row["best_classical"] = min(CLASSICAL, key=lambda m: row[m])
    row["ratio"] = row["flowtie"] / best if best > 0 else math.inf
    if safe.uncertainty is not None:
        err = np.abs((safe.phase - safe.phase.mean()) - (truth - truth.mean()))
        row["coverage"] = float(np.mean(err <= safe.uncertainty))
    return row


def triplet_of(path, periodic, margin, dose, shifts, rng, **options):
    """The triplet of one case and condition as the grid reconstructs it, its
    ground-truth phase (cropped to the window), the boundary and the file;
    ``options`` go to ``from_4dstem`` (e.g. ``descan="none"``)."""
    ds = ft.load(path)
    planes = [np.asarray(p) for p in (ds.minus, ds.zero, ds.plus)]
    truth = np.asarray(ds.phase_gt, float)
    if margin:
        truth = crop_margin(truth, margin)
    if shifts is not None:
        planes = [drift(planes[0], shifts[0], periodic=periodic, margin=margin), planes[1],
                  drift(planes[2], shifts[1], periodic=periodic, margin=margin)]
        planes[1] = crop_margin(planes[1], margin) if margin else planes[1]
    elif margin:
        planes = [crop_margin(p, margin) for p in planes]
    if dose is not None:
        planes = [counts(p, dose, ds.scan_step, rng, dtype=np.uint32) for p in planes]
    t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                    k_sampling=ds.k_sampling, energy=ds.energy, backend="cpu",
                                    register="periodic" if periodic else True, **options)
    return t, truth, "periodic" if periodic else "mirror", ds


def run(folders, out, limit=None):
    rng = np.random.default_rng(0)
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["case"], r["dose"], r["drift"] is not None))
    with out.open("a") as f:
        for path, periodic, margin, kind in present(folders, limit):
            for dose in DOSES:
                for shifts in DRIFTS:
                    if (path.stem, dose, shifts is not None) in done:
                        continue
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            row = one(path, periodic, margin, kind, dose, shifts, rng)
                        except ft.InputError as exc:
                            row = {"case": path.stem, "kind": kind, "dose": dose,
                                   "drift": None if shifts is None else [list(s) for s in shifts],
                                   "error": str(exc)}
                    row["seconds"] = time.perf_counter() - start
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(path.stem, dose, shifts is not None, row.get("ratio"),
                          row.get("fallback"), flush=True)


def table(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    rows.sort(key=lambda r: -r["ratio"])
    head = ("| case | kind | keV | dose e/Å² | drift | best classical (NMSE) | flowtie NMSE "
            "| network alone | ratio | fallback | coverage | registration error px |")
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        dose = "none" if r["dose"] is None else f"{r['dose']:.0e}"
        best = r["best_classical"]
        cov = "" if r.get("coverage") is None else f"{r['coverage']:.2f}"
        reg = "" if r.get("registration_error") is None else f"{r['registration_error']:.2f}"
        lines.append(
            f"| {r['case']} | {r['kind']} | {r['energy'] / 1e3:.0f} | {dose} | "
            f"{'yes' if r['drift'] else 'no'} | {best} ({r[best]:.3f}) | {r['flowtie']:.3f} | "
            f"{r['flowtie_raw']:.3f} | {r['ratio']:.2f} | {r['fallback'] or ''} | {cov} | "
            f"{reg} |")
    return "\n".join(lines)


def _group(row) -> str:
    case = row["case"]
    if case[0] == "s" and case[1:5].isdigit():
        return "corpus (unseen kinds and conditions)"
    if case.split("_")[0] in ("Cu", "CeO2"):
        return "validation (Cu, CeO2)"
    return "test (GaAs, SrTiO3, Si, MgO)"


def summary(path) -> str:
    """Counts of a grid file's rows per group (test, validation, corpus) and
    dose: flowtie as returned worse than the best classical method, at most
    half its error, NMSE above 1 (flowtie, the network alone, the best
    classical method), fallbacks, and the uncertainty's coverage in 0.5-0.95
    where a map was returned (median)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    head = ("| group | dose | rows | flowtie worse than best classical | flowtie at most 0.5x "
            "| flowtie NMSE > 1 | network alone NMSE > 1 | best classical NMSE > 1 | fell back "
            "| coverage in 0.5-0.95 (median) |")
    lines = [head, "|" + " --- |" * 3 + " ---: |" * 6 + " --- |"]
    order = ("test", "validation", "corpus")
    groups = sorted({_group(r) for r in rows}, key=lambda g: order.index(g.split()[0]))
    for g in groups:
        for dose in (None, 1e5, 1e4, 1e3):
            sel = [r for r in rows if _group(r) == g and r["dose"] == dose]
            if not sel:
                continue
            cov = [r["coverage"] for r in sel if r.get("coverage") is not None]
            inside = sum(0.5 <= c <= 0.95 for c in cov)
            cells = [g, "none" if dose is None else f"{dose:.0e}", len(sel),
                     sum(r["ratio"] > 1 for r in sel), sum(r["ratio"] <= 0.5 for r in sel),
                     sum(r["flowtie"] > 1 for r in sel), sum(r["flowtie_raw"] > 1 for r in sel),
                     sum(r[r["best_classical"]] > 1 for r in sel),
                     sum(bool(r.get("fallback")) for r in sel),
                     f"{inside} of {len(cov)} ({np.median(cov):.2f})" if cov else "-"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("data/grid.jsonl"))
    parser.add_argument("--limit", type=int, help="first N cases only")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a grid file")
    parser.add_argument("--summary", type=Path, help="print the counts per group and dose")
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.summary:
        print(summary(args.summary))
        return 0
    run(args.folders, args.output, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
