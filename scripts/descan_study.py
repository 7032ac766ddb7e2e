"""Uncorrected descan: what it does to ``icom`` and what removing a plane costs.

Descan left uncorrected moves the bright-field disk linearly with the scan
position. For corpus files (right data noise-free and at 1e4 e/Å², and with
the disk moved by 0.5, 1 and 2 detector px from one end of the scan to the
other, in a random direction of the detector and along a random direction of
the scan, the same in the three scans), the ``icom`` phase NMSE (a) with the
triplet's gradient as ``from_4dstem`` gives it, (b) with a least-squares
plane (a constant and two slopes per component) removed from it, and the
fitted plane's size: the disk displacement it stands for across the scan (px),
its share of the gradient's sum of squares, and the range of the phase its
curl-free part implies across the field (rad); and (c) with the plane of the
difference from the bright-field TIE gradient removed instead.

    python scripts/descan_study.py data/corpus -o data/descan.jsonl [--per-family 6]
    python scripts/descan_study.py --table data/descan.jsonl
    python scripts/descan_study.py data/corpus --flowtie --per-family 3 -o data/descan_flowtie.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
from scipy import ndimage

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.stem.descan import descan_plane

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_grid  # noqa: E402
from evaluation_grid import present, triplet_of  # noqa: E402

DOSES = (None, 1e4)
RAMPS = (0.0, 0.5, 1.0, 2.0)


def descan_matrix(shape, total, rng):
    """2 x 2 matrix A (detector px per scan px) of a descan that moves the disk by
    ``total`` px from one end of the scan to the other: along a random detector
    direction ``u``, linearly along a random scan direction ``v``."""
    a, b = rng.uniform(0, 2 * np.pi, 2)
    u = np.array([np.sin(a), np.cos(a)])
    v = np.array([np.sin(b), np.cos(b)])
    span = abs(v[0]) * (shape[0] - 1) + abs(v[1]) * (shape[1] - 1)
    return total * np.outer(u, v) / span


def apply_descan(patterns, A):
    """Patterns with each one moved by ``A @ (r - centre)`` detector px (bilinear)."""
    sy, sx = patterns.shape[:2]
    out = np.empty(patterns.shape, np.float32)
    c = np.array([(sy - 1) / 2, (sx - 1) / 2])
    for i in range(sy):
        for j in range(sx):
            s = A @ (np.array([i, j]) - c)
            out[i, j] = ndimage.shift(patterns[i, j].astype(np.float32), s, order=1,
                                      mode="nearest")
    return out


def fit_plane(g):
    """Least-squares plane (constant, slope along rows, slope along columns) of
    each component of ``g`` (2, Ny, Nx): the plane's values and its 2 x 2 slopes
    ``S[c, axis]`` (per px)."""
    ny, nx = g.shape[1:]
    y, x = np.mgrid[:ny, :nx].astype(float)
    y -= y.mean()
    x -= x.mean()
    M = np.stack([np.ones(y.size), y.ravel(), x.ravel()], 1)
    coef = np.linalg.lstsq(M, g.reshape(2, -1).T, rcond=None)[0]  # (3, 2)
    plane = (M @ coef).T.reshape(g.shape)
    return plane, coef[1:].T


def ramp_size(g, plane, S, pixel_size, k_sampling):
    """The fitted plane's disk displacement across the scan (px), its share of
    the sum of squares of g, and the phase range (rad) of its curl-free part."""
    ny, nx = g.shape[1:]
    corners = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float)
    corners -= [(ny - 1) / 2, (nx - 1) / 2]
    kpx = 2 * np.pi * np.asarray(k_sampling, float)  # rad/Å of one detector px
    disp = (corners @ S.T) / kpx  # px, (4, 2)
    across = max(np.linalg.norm(disp[i] - disp[j]) for i in range(4) for j in range(4))
    share = float((plane ** 2).sum() / max((g ** 2).sum(), 1e-300))
    # symmetric part of the slopes in rad/Å²: a phase 1/2 r' Ss r (r in Å)
    dy, dx = pixel_size
    Sa = S / np.array([dy, dx])[None, :]
    Ss = (Sa + Sa.T) / 2
    y, x = np.mgrid[:ny, :nx].astype(float)
    r = np.stack([(y - y.mean()) * dy, (x - x.mean()) * dx])
    phase = 0.5 * np.einsum("i...,ij,j...->...", r, Ss, r)
    return float(across), share, float(phase.max() - phase.min())


def icom(t, boundary, truth):
    return phase_errors(ft.reconstruct(t, method="icom", backend="cpu",
                                       boundary=boundary).phase, truth)[1]


def one(path, periodic, margin, kind, dose, total, rng, flowtie=False):
    ds = ft.load(path)
    A = None
    if total:
        A = descan_matrix(np.shape(ds.zero)[:2], total, rng)
        ds.minus, ds.zero, ds.plus = (apply_descan(np.asarray(p), A)
                                      for p in (ds.minus, ds.zero, ds.plus))
    # triplet_of loads the file itself: hand it this (descanned) dataset instead
    real_load = evaluation_grid.ft.load
    evaluation_grid.ft.load = lambda _path: ds
    try:
        # (a) as before the plane removal: only the mean removed
        t, truth, boundary, _ = triplet_of(path, periodic, margin, dose, None, rng,
                                           descan="none")
    finally:
        evaluation_grid.ft.load = real_load
    row = {"case": path.stem, "kind": kind, "periodic": periodic, "dose": dose,
           "descan_px": total, "shape": list(t.shape),
           "A": None if A is None else A.tolist()}
    row["icom"] = icom(t, boundary, truth)
    g = np.asarray(t.gradient, float)
    plane, S = fit_plane(g)
    row["ramp_px"], row["ramp_share"], row["ramp_phase"] = ramp_size(
        g, plane, S, t.pixel_size, ds.k_sampling)
    t2 = copy.copy(t)  # (b): what from_4dstem's default, descan="plane", gives
    t2.gradient = descan_plane(t.gradient, ds.energy, ds.k_sampling)[0]
    row["icom_plane"] = icom(t2, boundary, truth)
    # (c) the plane of the centre of mass's difference from the bright-field TIE
    # gradient (a disk moved within the "bf" detector's margin leaves the "bf"
    # images as they are: their TIE phase holds no descan)
    try:
        gt = np.asarray(t._tie_gradient(), float)
        plane_c, S_c = fit_plane(g - gt)
        t3 = copy.copy(t)
        t3.gradient = (g - plane_c).astype(t.gradient.dtype)
        row["icom_plane_tie"] = icom(t3, boundary, truth)
        row["ramp_tie_px"], row["ramp_tie_share"], row["ramp_tie_phase"] = ramp_size(
            g, plane_c, S_c, t.pixel_size, ds.k_sampling)
    except ft.InputError:
        pass
    if flowtie:  # the library's flowtie (trust check and fallback on), (a) and (b)
        for name, tt in (("flowtie", t), ("flowtie_plane", t2)):
            rec = ft.reconstruct(tt, method="flowtie", backend="cpu", boundary=boundary)
            row[name] = phase_errors(rec.phase, truth)[1]
            row[name + "_fallback"] = rec.info.get("fallback")
    row["curl_suspect"] = bool((t.gradient_orientation or {}).get("suspect"))
    row["truth_range"] = float(truth.max() - truth.min())
    return row


def choose_files(folder, per_family):
    """Up to ``per_family`` series of each manifest family, the thinnest file
    of each (``present`` yields the thinnest and thickest of each series)."""
    by = {}
    fam = {}
    for line in (Path(folder) / "manifest.jsonl").read_text().splitlines():
        r = json.loads(line)
        fam[r["id"]] = r["family"]
    seen = set()
    for path, periodic, margin, kind in present([folder]):
        sid = path.stem[:5]
        if sid in seen:
            continue
        seen.add(sid)
        f = fam.get(sid, kind)
        if len(by.setdefault(f, [])) < per_family:
            by[f].append((path, periodic, margin, f))
    return [c for f in sorted(by) for c in by[f]]


def run(folder, out, per_family, flowtie=False, doses=DOSES, ramps=RAMPS):
    done = set()
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["case"], r["dose"], r["descan_px"]))
    with out.open("a") as f:
        for path, periodic, margin, kind in choose_files(folder, per_family):
            for dose in doses:
                for total in ramps:
                    if (path.stem, dose, total) in done:
                        continue
                    # one seed per case and condition: resumable, same draws again
                    seed = zlib.crc32(f"{path.stem} {dose} {total}".encode())
                    rng = np.random.default_rng(seed)
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        try:
                            row = one(path, periodic, margin, kind, dose, total, rng,
                                      flowtie)
                        except ft.InputError as exc:
                            row = {"case": path.stem, "kind": kind, "dose": dose,
                                   "descan_px": total, "error": str(exc)}
                    row["seconds"] = time.perf_counter() - start
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    shown = ("icom", "icom_plane", "icom_plane_tie", "ramp_px", "ramp_tie_px")
                    print(path.stem, kind, dose, total,
                          {k: round(row[k], 3) for k in shown if k in row},
                          round(row["seconds"], 1), flush=True)


def table(path):
    """Markdown: per family and dose, icom NMSE on right data (a) as today and
    (b) with the plane removed, the worst b/a, and the median a -> b with the
    disk moved by 0.5, 1 and 2 px; then the warning threshold's rates."""
    rows = [json.loads(x) for x in Path(path).read_text().splitlines()]
    rows = [r for r in rows if "error" not in r]
    key = {(r["case"], r["dose"]): r["icom"] for r in rows if r["descan_px"] == 0}
    lines = ["| family | dose e/Å² | files | right: a | right: b | right: worst b/a | "
             "0.5 px: a -> b | 1 px: a -> b | 2 px: a -> b | worst a / right a |",
             "|" + " --- |" * 10]
    fams = sorted({r["kind"] for r in rows})
    for fam in fams + ["all"]:
        for dose in DOSES:
            sel = [r for r in rows if (fam == "all" or r["kind"] == fam) and r["dose"] == dose]
            right = [r for r in sel if r["descan_px"] == 0]
            if not right:
                continue
            ratio = max(r["icom_plane"] / r["icom"] for r in right)
            cells = []
            for total in RAMPS[1:]:
                s = [r for r in sel if r["descan_px"] == total]
                cells.append(f"{np.median([r['icom'] for r in s]):.2f} -> "
                             f"{np.median([r['icom_plane'] for r in s]):.2f}")
            worst = max(r["icom"] / key[(r["case"], dose)] for r in sel
                        if (r["case"], dose) in key)
            lines.append(f"| {fam} | {'none' if dose is None else f'{dose:.0e}'} | "
                         f"{len(right)} | {np.median([r['icom'] for r in right]):.3f} | "
                         f"{np.median([r['icom_plane'] for r in right]):.3f} | {ratio:.2f} | "
                         + " | ".join(cells) + f" | {worst:.1f} |")
    lines += ["", "| half | threshold px | right data above | 0.5 px above | 1 px above | "
              "2 px above |", "|" + " --- |" * 6]
    for half, name in ((0, "choose (even series)"), (1, "score (odd series)")):
        sel = [r for r in rows if int(r["case"][1:5]) % 2 == half]
        for limit in (0.75, 0.9, 1.0):
            rates = [np.mean([r["ramp_px"] > limit for r in sel if r["descan_px"] == t])
                     for t in RAMPS]
            lines.append(f"| {name} | {limit:g} | " + " | ".join(f"{x:.2f}" for x in rates)
                         + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("data/descan.jsonl"))
    parser.add_argument("--per-family", type=int, default=6)
    parser.add_argument("--flowtie", action="store_true",
                        help="also flowtie (a) and (b), noise-free, right and 1 px only")
    parser.add_argument("--table", type=Path)
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    if args.flowtie:
        run(args.folder, args.output, args.per_family, True, (None,), (0.0, 1.0))
    else:
        run(args.folder, args.output, args.per_family)
    return 0


if __name__ == "__main__":
    sys.exit(main())
