"""flowtie_fast against its peers on held-out multislice simulations: the
project-venv side of docs/peers.md.

Three steps, the peers in between in their own virtual environment (py4DSTEM
pins its own NumPy/SciPy; it is not a dependency of this project):

    # 1. export the 4D data and calibrations (no ground truth) to plain .npz
    python scripts/peers.py export data/test -o /tmp/peers/export   # the six CASES
    # 2a. flowtie_fast's methods and LiberTEM's CoMUDF (this venv)
    nice python scripts/peers.py run /tmp/peers/export -o /tmp/peers/phases
    # 2b. the peers (their venv: python3 -m venv /tmp/peers/venv;
    #     /tmp/peers/venv/bin/pip install py4DSTEM==0.14.18 solvephase==0.2.0)
    nice /tmp/peers/venv/bin/python scripts/peers_py4dstem.py /tmp/peers/export -o /tmp/peers/phases
    nice /tmp/peers/venv/bin/python scripts/peers_py4dstem.py /tmp/peers/export \
        -o /tmp/peers/phases --methods ptycho ptycho-ms --iterations 32 --suffix=-32it
    nice /tmp/peers/venv/bin/python scripts/peers_solvephase.py /tmp/peers/export \
        -o /tmp/peers/phases
    # 3. score every phase file against the ground truth with the project's metric
    python scripts/peers.py score data/test /tmp/peers/phases -o /tmp/peers/table.md

Every phase file is ``PHASES/<method>/<case>.npz`` with ``phase`` (Sy, Sx) in
rad on the scan grid of the case, ``seconds`` (wall time from the 4D arrays
in memory to the phase) and ``note``. Scoring uses
:func:`flowtie_fast.evaluation.evaluate.phase_errors` (means removed, no
scale): the table gives that NMSE, and separately the NMSE after a fitted
global scale ``s`` (least squares of ``s * φ`` on ``φ_gt``, means removed),
with ``s``, for methods that return arbitrary units.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402

#: The cases of docs/peers.md, fixed before anything was scored: thin to thick,
#: every material of the test set, flowtie's two weakest test cases among them.
CASES = ("GaAs_0011.3A", "GaAs_0141.3A", "SrTiO3_0050.8A", "SrTiO3_0148.4A", "MgO_0021.1A",
         "Si_0043.4A")

#: flowtie_fast's own methods on the triplet of ``from_4dstem`` defaults: (name,
#: method, options). ``flowtie`` is what a user gets by default (the trust check
#: returns the classical phase where the flow is not trusted); ``flowtie-raw``
#: is the flow model's own phase (``uncertainty=False``: no check, one pass).
OWN_RUNS = (("tie-uniform", "tie-uniform", {}), ("tie", "tie", {}),
            ("tie-exact", "tie-exact", {}), ("gd", "gd", {}), ("icom", "icom", {}),
            ("flowtie", "flowtie", {}), ("flowtie-raw", "flowtie", {"uncertainty": False}))
OWN = tuple(name for name, _, _ in OWN_RUNS)


def export(data, cases, out):
    """Write each case's three 4D scans, its calibrations and the project's
    virtual bright-field triplet (the planes the TIE methods see) to
    ``out/<case>.npz``; the ground truth stays behind."""
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        with ft.load(Path(data) / f"{case}.npz") as ds:
            t = ds.triplet()
            dz = np.ravel(ds.dz).astype(float)
            np.savez(out / f"{case}.npz",
                     minus=np.asarray(ds.minus, np.float32), zero=np.asarray(ds.zero, np.float32),
                     plus=np.asarray(ds.plus, np.float32),
                     # abTEM (and py4DSTEM) probe defocus of each scan, Å, positive = underfocus:
                     # minus was recorded at abTEM defocus +dz (docs/conventions.md).
                     defocus_minus=dz[0], defocus_plus=-dz[-1],
                     dz=dz, scan_step=np.ravel(ds.scan_step).astype(float),
                     k_sampling=np.ravel(ds.k_sampling).astype(float), energy=float(ds.energy),
                     semiangle=float(ds.meta["semiangle"]),
                     thickness=float(ds.meta["thickness"]), material=str(ds.meta["material"]),
                     bf_minus=np.asarray(t.minus), bf_zero=np.asarray(t.zero),
                     bf_plus=np.asarray(t.plus))
        print(f"exported {case}", flush=True)


def _save(out, method, case, phase, seconds, note=""):
    path = out / method / f"{case}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, phase=np.asarray(phase, np.float64), seconds=float(seconds), note=note)


def _libertem_com(ctx, arr):
    """LiberTEM's CoMUDF on one 4D scan: the field in detector pixels,
    (2, Sy, Sx), whole-frame centre of mass relative to the frame centre, mean
    shift subtracted (regression 0), no rotation or flip."""
    from libertem.udf.com import CoMUDF, RegressionOptions

    ds = ctx.load("memory", data=arr, sig_dims=2)
    udf = CoMUDF.with_params(regression=RegressionOptions.SUBTRACT_MEAN)
    res = ctx.run_udf(dataset=ds, udf=udf)
    return np.stack([res["field_y"].data, res["field_x"].data])


def run(export_dir, out, cases, repeats):
    """flowtie_fast's methods and LiberTEM's CoM on every exported case."""
    import libertem.api as lt

    import subprocess

    import libertem

    out.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parent.parent
    git = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    (out / "flowtie_fast.json").write_text(json.dumps(
        {"flowtie_fast": ft.__version__, "commit": git, "libertem": libertem.__version__,
         "numpy": np.__version__, "load": os.getloadavg(),
         "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}))
    ctx = lt.Context.make_with("inline")  # one process: the data are small
    files = [Path(export_dir) / f"{c}.npz" for c in cases]
    for i, path in enumerate(files):
        case = path.stem
        z = np.load(path)
        minus, zero, plus = z["minus"], z["zero"], z["plus"]
        kw = dict(dz=tuple(z["dz"]), scan_step=tuple(z["scan_step"]),
                  k_sampling=tuple(z["k_sampling"]), energy=float(z["energy"]))
        if i == 0:  # first call: imports and planning, not timed
            ft.FocalTriplet.from_4dstem(minus, zero, plus, backend="cpu", **kw)
        reduce_s = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            trip = ft.FocalTriplet.from_4dstem(minus, zero, plus, backend="cpu", **kw)
            reduce_s = min(reduce_s, time.perf_counter() - start)
        _save(out, "reduce", case, np.zeros(zero.shape[:2]), reduce_s, "from_4dstem only")
        for name, method, options in OWN_RUNS:
            if i == 0:  # planning, compilation, model loading: not timed
                ft.reconstruct(trip, method=method, backend="cpu", **options)
            best = np.inf
            for _ in range(repeats):
                start = time.perf_counter()
                rec = ft.reconstruct(trip, method=method, backend="cpu", **options)
                best = min(best, time.perf_counter() - start)
            # the time from the 4D scans: the reduction plus the reconstruction
            _save(out, name, case, rec.phase, reduce_s + best,
                  f"from_4dstem {reduce_s:.4f} s + reconstruct(method={method!r}, **{options}) "
                  f"{best:.4f} s, each the best of {repeats} after a warm-up; "
                  f"fallback {rec.info.get('fallback')}")
        # LiberTEM: centre of mass of the in-focus scan, then the periodic
        # least-squares integration (LiberTEM has none: flowtie_fast.PoissonSolver).
        if i == 0:
            _libertem_com(ctx, zero)
        start = time.perf_counter()
        field = _libertem_com(ctx, zero)
        com_s = time.perf_counter() - start
        k = np.asarray(z["k_sampling"])[:, None, None]
        grad = (2 * np.pi * k * field).astype(np.float64)  # rad/Å
        solver = ft.PoissonSolver(zero.shape[:2], tuple(z["scan_step"]), boundary="periodic",
                                  dtype=np.float64, backend="cpu")
        start = time.perf_counter()
        phase = solver.integrate(grad)
        int_s = time.perf_counter() - start
        _save(out, "libertem-com", case, phase, com_s + int_s,
              f"CoMUDF {com_s:.3f} s + integration {int_s:.4f} s")
        print(f"{case}: reduce {reduce_s:.3f} s, libertem {com_s:.3f} s", flush=True)


def _scaled_nmse(phase, truth):
    """NMSE after the least-squares global scale (means removed), and the scale."""
    p = phase - phase.mean()
    t = truth - truth.mean()
    s = float((p * t).sum() / (p * p).sum()) if (p * p).sum() > 0 else 0.0
    return float(np.mean((s * p - t) ** 2) / np.var(t)), s


def score(data, phases, cases, out=None):
    """Score every ``phases/<method>/<case>.npz`` with the project's
    :func:`phase_errors`; print (and write) the tables."""
    phases = Path(phases)
    methods = sorted(p.name for p in phases.iterdir() if p.is_dir() and p.name != "reduce")
    rows = []
    for case in cases:
        with ft.load(Path(data) / f"{case}.npz") as ds:
            truth = np.asarray(ds.phase_gt, np.float64)
            meta = dict(ds.meta)
        for m in methods:
            f = phases / m / f"{case}.npz"
            if not f.exists():
                continue
            z = np.load(f)
            phase = np.asarray(z["phase"], np.float64)
            if phase.shape != truth.shape or not np.all(np.isfinite(phase)):
                rows.append(dict(case=case, method=m, mse=np.nan, nmse=np.nan, nmse_s=np.nan,
                                 scale=np.nan, seconds=float(z["seconds"]),
                                 note="bad output"))
                continue
            mse, nmse = phase_errors(phase, truth)
            nmse_s, s = _scaled_nmse(phase, truth)
            rows.append(dict(case=case, material=meta["material"],
                             thickness=float(meta["thickness"]), method=m, mse=mse, nmse=nmse,
                             nmse_s=nmse_s, scale=s, seconds=float(z["seconds"]),
                             note=str(z["note"])))
    text = format_tables(rows, cases, methods)
    print(text)
    if out is not None:
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps(rows, indent=1))
    return rows


#: Peers whose output is in arbitrary units (no unscaled NMSE is meaningful):
#: left out of the unscaled "best peer".
ARBITRARY = ("py4dstem-parallax",)

#: Columns of the main table, in this order where present.
COLUMNS = ("flowtie", "flowtie-raw", "icom", "tie", "libertem-com", "py4dstem-dpc",
           "py4dstem-parallax", "py4dstem-ptycho", "py4dstem-ptycho-32it", "py4dstem-ptycho-ms",
           "py4dstem-ptycho-ms-32it", "solvephase-tie")


def _seconds(v):
    return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.1f} s"


def format_tables(rows, cases, methods):
    """Markdown: NMSE (time) per case and method, the worst case for flowtie
    first; then the same with a fitted global scale, and the scales."""
    by = {(r["case"], r["method"]): r for r in rows}
    peers = [m for m in methods if m not in OWN]
    cols = [m for m in COLUMNS if m in methods]  # gd, tie-exact, tie-uniform: docs/evaluation.md

    def best_peer(case, key, allowed):
        vals = [(by[(case, m)][key], m) for m in allowed
                if (case, m) in by and np.isfinite(by[(case, m)][key])]
        return min(vals) if vals else (np.nan, "-")

    def ratio(case, who, key="mse", allowed=None):
        allowed = [m for m in peers if m not in ARBITRARY] if allowed is None else allowed
        f = by.get((case, who))
        best, _ = best_peer(case, key, allowed)
        return f[key] / best if f and best > 0 else np.nan

    order = sorted(cases, key=lambda c: -np.nan_to_num(ratio(c, "flowtie"), nan=np.inf))
    lines = [f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; "
             f"load average now {', '.join(f'{x:.1f}' for x in os.getloadavg())}; "
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC", ""]
    lines += ["### NMSE (time), means removed, no scale", "",
              "| case | " + " | ".join(cols) + " | best peer | flowtie / best peer (MSE) "
              "| flowtie-raw / best peer (MSE) |",
              "| --- |" + " ---: |" * (len(cols) + 3)]
    for c in order:
        cells = [f"{by[(c, m)]['nmse']:.3f} ({_seconds(by[(c, m)]['seconds'])})"
                 if (c, m) in by else "-" for m in cols]
        _, bm = best_peer(c, "mse", [m for m in peers if m not in ARBITRARY])
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {bm} | {ratio(c, 'flowtie'):.3f} "
                     f"| {ratio(c, 'flowtie-raw'):.3f} |")
    lines += ["", "### NMSE after a fitted global scale s (s in brackets)", "",
              "| case | " + " | ".join(cols) + " | best peer | flowtie / best peer | "
              "flowtie-raw / best peer |",
              "| --- |" + " ---: |" * (len(cols) + 3)]
    for c in order:
        cells = [f"{by[(c, m)]['nmse_s']:.3f} ({by[(c, m)]['scale']:.2f})"
                 if (c, m) in by else "-" for m in cols]
        _, bm = best_peer(c, "nmse_s", peers)
        lines.append(f"| {c} | " + " | ".join(cells) + f" | {bm} | "
                     f"{ratio(c, 'flowtie', 'nmse_s', peers):.3f} | "
                     f"{ratio(c, 'flowtie-raw', 'nmse_s', peers):.3f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("data")
    e.add_argument("--cases", nargs="+", default=list(CASES))
    e.add_argument("-o", "--output", default="/tmp/peers/export")
    r = sub.add_parser("run")
    r.add_argument("export")
    r.add_argument("--cases", nargs="+", default=list(CASES))
    r.add_argument("--repeats", type=int, default=7)
    r.add_argument("-o", "--output", default="/tmp/peers/phases")
    s = sub.add_parser("score")
    s.add_argument("data")
    s.add_argument("phases")
    s.add_argument("--cases", nargs="+", default=list(CASES))
    s.add_argument("-o", "--output", default=None)
    a = p.parse_args(argv)
    if a.cmd == "export":
        export(a.data, a.cases, Path(a.output))
    elif a.cmd == "run":
        run(a.export, Path(a.output), a.cases, a.repeats)
    else:
        score(a.data, a.phases, a.cases, a.output)


if __name__ == "__main__":
    main()
