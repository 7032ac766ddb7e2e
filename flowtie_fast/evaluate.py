"""Every method on every simulated case against the ground truth: the paper's table.

``evaluate(paths)`` loads each file of the layout in :mod:`flowtie_fast.io`
that carries a ground truth, builds the focal triplet (``from_4dstem`` for
4D-STEM data), runs each method and measures the phase error (DESIGN §2):
``MSE = mean(((φ - mean φ) - (φ_gt - mean φ_gt))²)`` in rad², and NMSE, that
divided by ``var(φ_gt)``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import load

__all__ = ["evaluate", "format_table", "phase_errors", "timed_reconstruct", "DEFAULT_METHODS"]

DEFAULT_METHODS = ("tie-uniform", "tie", "tie-exact", "gd", "icom")


def phase_errors(phase, truth):
    """(MSE in rad², NMSE) after removing both means; NMSE is NaN where the
    ground truth is flat (nothing to normalise by)."""
    phase = np.asarray(phase, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    d = (phase - phase.mean()) - (truth - truth.mean())
    mse = float(np.mean(d**2))
    var = float(np.var(truth))
    return mse, mse / var if var > 0 else float("nan")  # a flat truth has no NMSE


def timed_reconstruct(triplet, method, backend="cpu", repeats=3, **options):
    """(Reconstruction, best time in s of ``repeats`` runs after a warm-up call
    that pays for planning, compilation and model loading); ``options`` go to
    :func:`~flowtie_fast.solvers.reconstruct`."""
    from .solvers import reconstruct

    reconstruct(triplet, method=method, backend=backend, **options)
    best = np.inf
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        rec = reconstruct(triplet, method=method, backend=backend, **options)
        best = min(best, time.perf_counter() - start)
    return rec, best


def _files(paths):
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".npz", ".h5", ".hdf5"))
        elif not p.exists():
            raise InputError(f"paths: no such file or folder {str(p)!r}")
        else:
            out.append(p)
    if not out:
        raise InputError(f"paths: no .npz/.h5 files in {paths}")
    return out


def evaluate(paths, methods=DEFAULT_METHODS, *, backend="cpu", repeats=3, triplet_options=None,
             model=None, progress=None):
    """Run ``methods`` on every case with a ground truth.

    Parameters
    ----------
    paths : path or sequence of paths
        Files or folders of files in the flowtie_fast layout.
    methods : sequence of str
    backend : {"auto", "cpu", "gpu"}
    repeats : int
        Each method is timed ``repeats`` times after a warm-up; the best is kept.
    triplet_options : dict, optional
        Passed to :meth:`Dataset.triplet` (e.g. ``virtual``, ``bf_radius``).
    model : str, path or FlowModel, optional
        Flow model of ``flowtie``: a shipped name, a TorchScript file or a
        :class:`~flowtie_fast.flow.FlowModel` (default: the shipped default).
    progress : callable, optional
        Called with a line of text per case.

    Returns
    -------
    list of dict
        Rows with material, thickness (Å), method, mse (rad²), nmse, time_ms.
    """
    rows = []
    for path in _files(paths):
        with load(path) as ds:
            if ds.phase_gt is None:
                raise InputError(f"{path.name}: no ground truth ('phase_gt') to evaluate against")
            t = ds.triplet(backend=backend, **(triplet_options or {}))
            truth = ds.phase_gt
            material = ds.meta.get("material", path.stem)
            thickness = float(ds.meta.get("thickness", np.nan))
        for method in methods:
            options = {"model": model} if method == "flowtie" and model is not None else {}
            rec, best = timed_reconstruct(t, method, backend, repeats, **options)
            phase = rec.phase.get() if hasattr(rec.phase, "get") else rec.phase
            mse, nmse = phase_errors(phase, truth)
            rows.append({"material": material, "thickness": thickness, "method": method,
                         "mse": mse, "nmse": nmse, "time_ms": best * 1e3})
        if progress is not None:
            progress(f"{material} {thickness:.1f} Å: " + ", ".join(
                f"{r['method']} {r['nmse']:.3f}" for r in rows[-len(methods):]))
    return rows


def format_table(rows) -> str:
    """Markdown: one line per case, MSE (NMSE) per method, and the times."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cases = list(dict.fromkeys((r["material"], r["thickness"]) for r in rows))
    by = {(r["material"], r["thickness"], r["method"]): r for r in rows}
    head = "| material | thickness (nm) | " + " | ".join(
        f"{m} MSE (NMSE)" for m in methods) + " | best |"
    lines = [head, "|" + " --- |" * (len(methods) + 3)]
    for material, thickness in cases:
        cells = []
        for m in methods:
            r = by.get((material, thickness, m))
            cells.append("-" if r is None else f"{r['mse']:.4f} ({r['nmse']:.3f})")
        present = [by[(material, thickness, m)] for m in methods if (material, thickness, m) in by]
        best = min(present, key=lambda r: r["mse"])["method"]
        lines.append(f"| {material} | {thickness / 10:.2f} | " + " | ".join(cells) +
                     f" | {best} |")
    lines.append("")
    lines.append("| method | median time (ms) |")
    lines.append("| --- | ---: |")
    for m in methods:
        lines.append(f"| {m} | {np.median([r['time_ms'] for r in rows if r['method'] == m]):.2f} |")
    return "\n".join(lines) + "\n"
