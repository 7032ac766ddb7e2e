"""Which classical phase should an untrusted flow fall back to?

Collects, for every case of the evaluation grid's folders (the thinnest and
thickest file of each corpus series, cropped to the nominal window) and every
dose, the phases of the classical methods, of flowtie as returned and of the
network alone, beside the ground truth; then scores candidate fallbacks on
them: each classical method, and frequency blends of ``icom`` with the
uniform-intensity TIE (the low spatial frequencies from one, the high ones
from the other, crossing at ``q_c``).

    python scripts/fallback_study.py collect data/corpus -o data/fallback
    python scripts/fallback_study.py score data/fallback --choose even

``--choose even`` chooses the blend on the even-numbered series and scores it
on the odd-numbered ones (the split of ``scripts/evaluation_grid.py``).
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

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import present, triplet_of  # noqa: E402

CLASSICAL = ("tie-uniform", "tie", "tie-exact", "gd", "icom")
DOSES = (None, 1e5, 1e4, 1e3)


def collect(folders, out: Path, limit=None):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for path, periodic, margin, kind in present(folders, limit):
        for dose in DOSES:
            name = out / f"{path.stem}_{'none' if dose is None else f'{dose:.0e}'}.npz"
            if name.exists():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    t, truth, boundary, ds = triplet_of(path, periodic, margin, dose, None, rng)
                except ft.InputError as exc:
                    print(path.stem, dose, "refused:", exc, flush=True)
                    continue
                phases = {m: ft.reconstruct(t, method=m, backend="cpu", boundary=boundary).phase
                          for m in CLASSICAL}
                raw = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary,
                                     uncertainty=False)
                safe = ft.reconstruct(t, method="flowtie", backend="cpu", boundary=boundary)
            meta = {"case": path.stem, "kind": kind, "periodic": periodic, "dose": dose,
                    "energy": ds.energy, "fallback": safe.info.get("fallback"),
                    "trusted": safe.info.get("trusted")}
            np.savez(name, truth=truth, flowtie=safe.phase, flowtie_raw=raw.phase,
                     meta=json.dumps(meta), **{m.replace("-", "_"): p for m, p in phases.items()})
            print(path.stem, dose, {m: round(phase_errors(p, truth)[1], 3)
                                    for m, p in phases.items()}, flush=True)


def blend(low, high, qc, periodic):
    """The low spatial frequencies of ``low`` and the high ones of ``high``,
    crossing at ``qc`` (cycles per pixel) with a smooth weight
    ``1 / (1 + (q / qc)^4)``; non-periodic windows are mirrored first."""
    ny, nx = low.shape
    if not periodic:
        low = np.pad(low, ((0, ny), (0, nx)), mode="symmetric")
        high = np.pad(high, ((0, ny), (0, nx)), mode="symmetric")
    qy = np.fft.fftfreq(low.shape[0])[:, None]
    qx = np.fft.fftfreq(low.shape[1])[None, :]
    w = 1.0 / (1.0 + (np.hypot(qy, qx) / qc) ** 4)
    out = np.fft.ifft2(w * np.fft.fft2(low) + (1 - w) * np.fft.fft2(high)).real
    return out[:ny, :nx]


QC = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


def score(folder: Path, choose: str):
    rows = []
    for f in sorted(folder.glob("*.npz")):
        z = np.load(f)
        meta = json.loads(str(z["meta"]))
        truth = z["truth"]
        if np.var(truth) == 0:
            continue
        r = dict(meta)
        for m in CLASSICAL + ("flowtie", "flowtie_raw"):
            r[m] = phase_errors(z[m.replace("-", "_")], truth)[1]
        for qc in QC:
            r[f"icom<{qc}>tie-uniform"] = phase_errors(
                blend(z["icom"], z["tie_uniform"], qc, meta["periodic"]), truth)[1]
            r[f"tie-uniform<{qc}>icom"] = phase_errors(
                blend(z["tie_uniform"], z["icom"], qc, meta["periodic"]), truth)[1]
        r["best"] = min(r[m] for m in CLASSICAL)
        r["half"] = "choose" if (int(meta["case"][1:5]) % 2 == 0) == (choose == "even") else "score"
        rows.append(r)
    keys = [k for k in rows[0] if k in CLASSICAL or "<" in k or k.startswith("flowtie")]
    for half in ("choose", "score"):
        for dose in (None, 1e5, 1e4, 1e3):
            sel = [r for r in rows if r["half"] == half and r["dose"] == dose]
            if not sel:
                continue
            print(f"\n{half} half, dose {dose}, {len(sel)} triplets: geometric mean of NMSE / best "
                  "classical; rows worse than icom; worse than the best by 1.5x; NMSE > 1")
            for k in keys:
                ratio = np.array([r[k] / r["best"] for r in sel])
                worse_icom = sum(r[k] > r["icom"] * 1.0001 for r in sel)
                print(f"  {k:24s} {np.exp(np.mean(np.log(ratio))):6.3f}  {worse_icom:4d} "
                      f"{int(np.sum(ratio > 1.5)):4d} {sum(r[k] > 1 for r in sel):4d}")
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("folders", nargs="+")
    c.add_argument("-o", "--output", type=Path, default=Path("data/fallback"))
    c.add_argument("--limit", type=int)
    s = sub.add_parser("score")
    s.add_argument("folder", type=Path)
    s.add_argument("--choose", choices=("even", "odd"), default="even")
    a = p.parse_args(argv)
    if a.cmd == "collect":
        collect(a.folders, a.output, a.limit)
    else:
        score(a.folder, a.choose)


if __name__ == "__main__":
    main()
