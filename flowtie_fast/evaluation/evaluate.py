"""Every method on every simulated case against the ground truth: the paper's table.

``evaluate(paths)`` loads each file of the layout in :mod:`flowtie_fast.io`
that carries a ground truth, builds the focal triplet (``from_4dstem`` for
4D-STEM data), runs each method and measures the phase error (docs/conventions.md):
``MSE = mean(((φ - mean φ) - (φ_gt - mean φ_gt))²)`` in rad², and NMSE, that
divided by ``var(φ_gt)``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

from ..backend import get_backend
from ..errors import InputError, check_count
from ..files import as_path, one_line
from ..io import load
from ..solvers import METHODS, reconstruct

__all__ = ["evaluate", "format_table", "phase_errors", "timed_reconstruct", "DEFAULT_METHODS",
           "available_methods"]

#: The classical methods (no PyTorch needed): the default of :func:`evaluate`.
DEFAULT_METHODS = ("tie-uniform", "tie", "tie-exact", "gd", "icom")

#: Methods that integrate the measured phase gradient (the 4D-STEM centre of mass).
GRADIENT_METHODS = ("icom", "flowtie")


def available_methods() -> tuple:
    """Every method of :data:`~flowtie_fast.solvers.METHODS` that can run here.

    Returns
    -------
    tuple of str
        The methods, ``flowtie`` only where PyTorch is installed (extra
        ``flow``).
    """
    torch = importlib.util.find_spec("torch") is not None
    return tuple(m for m in METHODS if m != "flowtie" or torch)


def phase_errors(phase, truth):
    """Phase error against a ground truth, both means removed.

    Parameters
    ----------
    phase : array-like (Ny, Nx)
        The reconstructed phase in rad.
    truth : array-like (Ny, Nx)
        The ground-truth phase in rad.

    Returns
    -------
    mse : float
        ``mean(((φ - mean φ) - (φ_gt - mean φ_gt))²)`` in rad².
    nmse : float
        ``mse / var(φ_gt)``, dimensionless; NaN where the ground truth is flat
        (nothing to normalise by).

    Raises
    ------
    InputError
        Naming ``phase`` or ``truth``: not a 2-D array of finite real numbers
        (or a masked array), shapes that differ (nothing is broadcast), or
        values whose squared error overflows float64.
    """
    phase = _phase_array("phase", phase)
    truth = _phase_array("truth", truth)
    if truth.shape != phase.shape:
        raise InputError(f"truth: shape {truth.shape}, expected {phase.shape} like phase")
    with np.errstate(over="ignore", invalid="ignore"):
        d = (phase - phase.mean()) - (truth - truth.mean())
        mse = float(np.mean(d**2))
        var = float(np.var(truth))
    if not (np.isfinite(mse) and np.isfinite(var)):
        big = {n: float(np.abs(a).max()) for n, a in (("truth", truth), ("phase", phase))}
        name = max(big, key=big.get)
        raise InputError(f"{name}: phases up to {big[name]:.3g} rad overflow the squared error "
                         "in float64; expected phases in rad")
    return mse, mse / var if var > 0 else float("nan")  # a flat truth has no NMSE


def _phase_array(name, a) -> np.ndarray:
    """``a`` as a float64 2-D array of finite real numbers; InputError naming
    ``name`` otherwise (a masked array too: its mask would be ignored)."""
    if isinstance(a, np.ma.MaskedArray):
        raise InputError(f"{name}: masked arrays are not supported (the mask would be "
                         "ignored); fill the masked values first (a.filled(...))")
    try:
        a = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 (ragged lists and the like)
        raise InputError(f"{name}: expected a 2-D array of phases in rad, got "
                         f"{type(a).__name__} ({exc})") from None
    if a.dtype.kind not in "iuf":
        raise InputError(f"{name}: expected real numbers (phases in rad), got dtype {a.dtype}")
    if a.ndim != 2 or a.size == 0:
        raise InputError(f"{name}: expected a non-empty 2-D array, got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if not np.isfinite(a).all():
        raise InputError(f"{name}: contains NaN or Inf; expected finite phases in rad")
    return a


def timed_reconstruct(triplet, method, backend="cpu", repeats=3, **options):
    """Reconstruct and time it: the best of ``repeats`` runs after a warm-up
    call that pays for planning, compilation and model loading.

    Parameters
    ----------
    triplet : FocalTriplet or FocalSeries
        The measured intensities.
    method : str
        One of :data:`~flowtie_fast.solvers.METHODS`.
    backend : {"auto", "cpu", "gpu"} or Backend
        Where to compute (default "cpu").
    repeats : int
        Timed runs after the warm-up (default 3).
    **options
        Passed to :func:`~flowtie_fast.solvers.reconstruct`.

    Returns
    -------
    rec : Reconstruction
        Of the last run.
    seconds : float
        The best time of the ``repeats`` runs, in s.
    """
    repeats = check_count("repeats", repeats, 1)
    reconstruct(triplet, method=method, backend=backend, **options)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        rec = reconstruct(triplet, method=method, backend=backend, **options)
        best = min(best, time.perf_counter() - start)
    return rec, best


def case_files(paths):
    """The data files of ``paths`` (files, or folders whose .npz/.h5/.hdf5 files
    are taken in name order), checked to exist; :class:`InputError` naming
    ``paths`` otherwise."""
    if isinstance(paths, (str, os.PathLike)) and not isinstance(paths, bytes):
        given = [paths]
    elif isinstance(paths, (list, tuple)):
        given = list(paths)
    else:
        raise InputError("paths: expected a file or folder path (str or pathlib.Path) or a "
                         f"list of them, got {type(paths).__name__}")
    if not given:
        raise InputError("paths: expected a file or folder path or a list of them, got an "
                         "empty list")
    out, seen = [], {}
    for p in given:
        p = as_path("paths", p)
        if p.is_dir():
            try:
                found = sorted(q for q in p.iterdir()
                               if q.suffix.lower() in (".npz", ".h5", ".hdf5"))
            except OSError as exc:
                raise InputError(f"paths: the folder {str(p)!r} cannot be read "
                                 f"({exc.strerror})") from exc
        elif not p.exists():
            raise InputError(f"paths: no such file or folder {str(p)!r}")
        else:
            found = [p]
        for q in found:  # one case given twice would count twice, without a word
            try:
                st = os.stat(q)
            except OSError:  # a link to nothing, a loop: named when the file is read
                continue
            first = seen.setdefault((st.st_dev, st.st_ino), q)
            if first is not q:
                how = "" if str(first) == str(q) else f" (also as {str(first)!r})"
                raise InputError(f"paths: {str(q)!r} is given twice{how}; expected each case "
                                 "once")
        out += found
    if not out:
        shown = ", ".join(repr(str(p)) for p in given)
        raise InputError(f"paths: no .npz/.h5 files in {shown}")
    return out


def evaluate(paths, methods=DEFAULT_METHODS, *, backend="cpu", repeats=3, triplet_options=None,
             model=None, progress=None, skip_without_gradient=False):
    """Run ``methods`` on every case with a ground truth.

    Parameters
    ----------
    paths : path or sequence of paths
        Files or folders of files in the flowtie_fast layout.
    methods : sequence of str
        Methods of :data:`~flowtie_fast.solvers.METHODS` (default: the
        classical ones, :data:`DEFAULT_METHODS`).
    backend : {"auto", "cpu", "gpu"}
        Where to compute (default "cpu").
    repeats : int
        Each method is timed ``repeats`` times after a warm-up; the best is
        kept (default 3).
    triplet_options : dict, optional
        Passed to :meth:`Dataset.triplet` (e.g. ``virtual``, ``bf_radius``).
    model : str, path or FlowModel, optional
        Flow model of ``flowtie``: a shipped name, a TorchScript file or a
        :class:`~flowtie_fast.flow.FlowModel` (default: the shipped default).
    progress : callable, optional
        Called with a line of text per case.
    skip_without_gradient : bool
        Leave ``icom`` and ``flowtie`` out on a case without a measured phase
        gradient (a triplet of images without ``gradient``) instead of raising
        (default False).

    Returns
    -------
    list of dict
        Rows with case (the file's name, or its path where two files share
        a name), material, thickness (Å), method, mse (rad²), nmse
        (dimensionless), time_ms (the best of ``repeats`` warm runs, ms) and
        repeats and fallback (``flowtie``: the classical method whose phase was
        returned where the flow was not trusted, else None).

    Raises
    ------
    InputError
        Before any case is solved, for a file that cannot be opened or holds
        no ground truth (planes an HDF5 file holds are read at its turn); a
        case's triplet or solve refused, prefixed with its file's name;
        before any file is read, for arguments of the wrong type or range: a
        method that is not one of :data:`~flowtie_fast.solvers.METHODS` or
        given twice, ``repeats`` not a positive integer, ``model`` without
        ``flowtie`` among the methods, ``paths`` not a path or a list of them;
        after the cases, where ``skip_without_gradient`` left none solved.
    """
    if isinstance(methods, str):
        methods = (methods,)
    if not isinstance(methods, (list, tuple)) or not methods:
        raise InputError(f"methods: expected a list of method names from {METHODS}, got "
                         f"{methods!r}")
    for m in methods:
        if not isinstance(m, str) or m not in METHODS:
            raise InputError(f"methods: expected names from {METHODS}, got {m!r}")
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:
        raise InputError(f"methods: each method once, got {twice[0]!r} more than once")
    methods = tuple(methods)
    repeats = check_count("repeats", repeats, 1)
    if model is not None and "flowtie" not in methods:
        raise InputError(f"model: applies to flowtie only, which methods {list(methods)} "
                         "leave out")
    if triplet_options is not None and not isinstance(triplet_options, dict):
        raise InputError(f"triplet_options: expected a dict of options, got "
                         f"{type(triplet_options).__name__}")
    if progress is not None and not callable(progress):
        raise InputError(f"progress: expected a callable or None, got {progress!r}")
    get_backend(backend)  # a BackendError naming it, before any work
    rows = []
    files = case_files(paths)
    names = [p.name for p in files]
    for path in files:  # every file readable and with a truth before any is solved
        with load(path) as ds:
            if ds.phase_gt is None:
                raise InputError(f"{path.name}: no ground truth ('phase_gt') to evaluate against")
    for path in files:
        case = path.name if names.count(path.name) == 1 else str(path)
        with load(path) as ds:
            try:  # the planes an HDF5 file holds are read here, one file at a time
                t = ds.triplet(backend=backend, **(triplet_options or {}))
            except InputError as exc:  # name the file it is refused for
                raise type(exc)(f"{case}: {exc}") from None
            truth = ds.phase_gt
            material = ds.meta.get("material", path.stem)
            thickness = float(ds.meta.get("thickness", np.nan))
        done = len(rows)
        skipped = []
        for method in methods:
            if skip_without_gradient and method in GRADIENT_METHODS and t.gradient is None:
                skipped.append(method)
                continue
            options = {"model": model} if method == "flowtie" and model is not None else {}
            try:
                rec, best = timed_reconstruct(t, method, backend, repeats, **options)
                phase = rec.phase.get() if hasattr(rec.phase, "get") else rec.phase
                mse, nmse = phase_errors(phase, truth)
            except InputError as exc:  # name the file it is refused for
                raise type(exc)(f"{case}: {exc}") from None
            rows.append({"case": case, "material": material, "thickness": thickness,
                         "method": method, "mse": mse, "nmse": nmse, "time_ms": best * 1e3,
                         "repeats": repeats, "fallback": rec.info.get("fallback")})
        if progress is not None:
            shown = _thickness_text(thickness)
            where = f"{one_line(material)}, {shown} Å" if shown else one_line(material)
            said = ["NMSE " + ", ".join(f"{r['method']} {nmse_text(r['nmse'])}"
                                         for r in rows[done:])] if len(rows) > done else []
            if skipped:
                said.append(f"{' and '.join(skipped)} skipped (no measured gradient)")
            progress(f"{one_line(case)} ({where}): " + "; ".join(said))
    if not rows:  # every case skipped: no table to give
        raise InputError(f"methods: {', '.join(methods)} need a measured phase gradient, which "
                         "none of the cases holds (4D-STEM files, or triplets saved with "
                         "gradient=); add a method that reads the planes, e.g. tie")
    return rows


def nmse_text(nmse, spec: str = ".3f") -> str:
    """An NMSE for display in the format ``spec``: ``"undefined (flat ground
    truth)"`` where it is NaN (:func:`phase_errors`: nothing to normalise
    by), never "nan"."""
    return "undefined (flat ground truth)" if math.isnan(nmse) else format(nmse, spec)


def _thickness_text(thickness) -> str:
    """A thickness in Å for display; "" for a file that records none (NaN),
    never "nan"."""
    return f"{thickness:.1f}" if np.isfinite(thickness) else ""


def _cell(text) -> str:
    """:func:`~flowtie_fast.files.one_line` for a Markdown table's cell: a
    ``|`` escaped."""
    return one_line(text).replace("|", "\\|")


def _case(r) -> tuple:
    """What tells one case from another: its file (rows of :func:`evaluate`),
    else its material and thickness."""
    return (r.get("case"), r["material"], r["thickness"])


def format_table(rows) -> str:
    """The rows of :func:`evaluate` as a Markdown table.

    Parameters
    ----------
    rows : list of dict
        Rows of :func:`evaluate`.

    Returns
    -------
    str
        Markdown: a line on the units, one line per case (per file: two files
        of one material and thickness are two lines) with MSE in rad² (NMSE)
        per method and the method of least MSE; then each method's time in
        ms.
    """
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cases = list(dict.fromkeys(_case(r) for r in rows))
    by = {_case(r) + (r["method"],): r for r in rows}
    lines = ["Phase error against each file's ground truth, both means removed: MSE in rad² "
             "(NMSE = MSE / var(φ_gt), dimensionless; 1 is the error of a flat phase); "
             "thickness in Å.", ""]
    lines.append("| case | material | thickness (Å) | " + " | ".join(
        f"{m} MSE (NMSE)" for m in methods) + " | least MSE |")
    lines.append("|" + " --- |" * (len(methods) + 4))
    fallbacks = missing = False
    for case in cases:
        cells = []
        for m in methods:
            r = by.get(case + (m,))
            missing = missing or r is None
            mark = "†" if r is not None and r.get("fallback") else ""
            fallbacks = fallbacks or bool(mark)
            cells.append("-" if r is None else
                         f"{r['mse']:.4f} ({nmse_text(r['nmse'])}){mark}")
        present = [by[case + (m,)] for m in methods if case + (m,) in by]
        best = min(present, key=lambda r: r["mse"])["method"]
        name, material, thickness = case
        lines.append(f"| {_cell(name or '-')} | {_cell(material)} | "
                     f"{_thickness_text(thickness) or '-'} | " +
                     " | ".join(cells) + f" | {best} |")
    if fallbacks:
        lines += ["", "† flowtie did not trust its flow there and returned the classical "
                      "phase (Reconstruction.info['fallback'])."]
    if missing:
        lines += ["", "-: not run on that case (icom and flowtie need a measured phase "
                      "gradient)."]
    repeats = {r.get("repeats") for r in rows} - {None}
    runs = (f"best of {repeats.pop()} warm runs" if len(repeats) == 1
            else "best of the warm runs")
    lines += ["", f"| method | time (ms): median over the cases of the {runs} |",
              "| --- | ---: |"]
    for m in methods:
        lines.append(f"| {m} | {np.median([r['time_ms'] for r in rows if r['method'] == m]):.2f} |")
    return "\n".join(lines) + "\n"
