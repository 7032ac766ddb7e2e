"""False alarms and detections of the 4D-STEM saturation check, and the gain
check of integer patterns, on corpus files (docs/reliability.md).

``alarms``: patterns sampled from every scan of every ``step``-th file of the
manifest (``stem.detector.sample_patterns``), noise-free and as Poisson
counts at 1e2-1e6 e/Å² (uint16, uint8 where they stay under 255,
whole-number float32, float32 with a gain noise of 0.3), judged by
``stem.detector.saturation``: none should be flagged.

``detect``: the in-focus patterns of those files as counts at 1e3-1e6 e/Å²,
clipped at 0.9, 1.0, 1.2 and 1.5 times the bright field's median count, and
cast to uint8 at 1e6 e/Å²: the share flagged.

``gain``: whole triplets (``from_4dstem``) of right counts and of counts
times 2, 5 and 9 (detector units), at 1e2-1e6 e/Å²: the band-over-Poisson
noise ratio (``triplet.flux["gain"]``), whether it was warned, and the
``icom`` and ``tie`` NMSE; one JSON line per case. Run it with the package
of another version on ``PYTHONPATH`` to compare the phases (the draws are
seeded by file name).

    python scripts/saturation_study.py alarms data/corpus [--files 60]
    python scripts/saturation_study.py detect data/corpus [--files 40]
    python scripts/saturation_study.py gain data/corpus -o gain.jsonl [--files 40]
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
import zlib
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.simulation.acquisition import counts
from flowtie_fast.stem.detector import sample_patterns, saturation

DOSES = (1e2, 1e3, 1e4, 1e5, 1e6)  # e/Å²


def corpus_files(corpus: Path, n: int) -> list:
    """Every k-th file of the manifest, ``n`` of them."""
    lines = (corpus / "manifest.jsonl").read_text().splitlines()
    files = [f["file"] for line in lines if line.strip()
             for f in json.loads(line)["files"]]
    return files[::max(1, len(files) // n)][:n]


def drawn(sample, dose, scan_step, total, rng):
    """Poisson counts of sampled patterns at ``dose`` (the mean pattern of
    the whole scan, ``total``, holding ``dose`` times the scan step's area)."""
    return rng.poisson(sample * dose * scan_step[0] * scan_step[1] / total)


def alarms(corpus: Path, n: int) -> None:
    """Print the checks and alarms of right data, by kind."""
    checks, flagged, ratio = collections.Counter(), collections.Counter(), {}
    for f in corpus_files(corpus, n):
        d = ft.load(corpus / f)
        rng = np.random.default_rng(zlib.crc32(f.encode()))
        for name in ("minus", "zero", "plus"):
            full = np.asarray(getattr(d, name))
            sample = sample_patterns(full).astype(np.float64)
            total = full.sum((2, 3)).mean()
            kinds = [("noise-free float32", sample.astype(np.float32))]
            for dose in DOSES:
                c = drawn(sample, dose, d.scan_step, total, rng)
                noisy = rng.gamma(np.maximum(c, 1e-9) / 0.09, 0.09) * (c > 0)
                kinds += [("uint16", c.astype(np.uint16)), ("float32 counts", c.astype(np.float32)),
                          ("float32 gain noise 0.3", noisy.astype(np.float32))]
                if c.max() < 255:
                    kinds.append(("uint8", c.astype(np.uint8)))
            for kind, x in kinds:
                r = saturation(x, name)
                checks[kind] += 1
                flagged[kind] += r["saturated"]
                if r["pixels"] >= 16 and r["next"]:
                    ratio[kind] = max(ratio.get(kind, 0.0), r["pixels"] / r["next"])
    for kind in checks:
        print(f"{kind:24s} checks {checks[kind]:5d} flagged {flagged[kind]}  largest ratio of a "
              f"maximum of >= 16 px to the value below: {ratio.get(kind)}")


def detect(corpus: Path, n: int) -> None:
    """Print the share of clipped and wrapped in-focus scans flagged."""
    found = collections.defaultdict(list)
    for f in corpus_files(corpus, n):
        d = ft.load(corpus / f)
        rng = np.random.default_rng(zlib.crc32(f.encode()))
        full = np.asarray(d.zero)
        sample = sample_patterns(full).astype(np.float64)
        total = full.sum((2, 3)).mean()
        for dose in DOSES[1:]:
            c = drawn(sample, dose, d.scan_step, total, rng).astype(np.int32)
            mean = c.mean(0)
            median = np.median(c[:, mean > 0.5 * mean.max()])
            for factor in (0.9, 1.0, 1.2, 1.5):
                cap = int(factor * median)
                if cap >= 2:
                    r = saturation(np.minimum(c, cap).astype(np.uint16))
                    found[(f"clipped at {factor} x the bright field's median", dose)].append(
                        (r["saturated"], r["share"]))
            if dose == DOSES[-1] and c.max() > 255:
                r = saturation(c.astype(np.uint8))
                found[("cast to uint8", dose)].append((r["saturated"], float((c > 255).mean())))
    for (what, dose), v in found.items():
        missed = sorted(round(s, 5) for hit, s in v if not hit)
        print(f"{what}, {dose:g} e/Å²: {sum(h for h, _ in v)} of {len(v)} flagged; missed at "
              f"shares {missed}")


def gain(corpus: Path, n: int, out: Path) -> None:
    """Write one JSON line per triplet: the gain record and the NMSE."""
    with open(out, "w") as stream:
        for f in corpus_files(corpus, n):
            d = ft.load(corpus / f)
            planes = [np.asarray(a) for a in (d.minus, d.zero, d.plus)]
            rng = np.random.default_rng(zlib.crc32(f.encode()))
            for dose in DOSES:
                c = [counts(a, dose, d.scan_step, rng, dtype=np.int32) for a in planes]
                for g in (1, 2, 5, 9):
                    row = {"file": f, "dose": dose, "gain": g}
                    with warnings.catch_warnings(record=True) as seen:
                        warnings.simplefilter("always")
                        try:
                            t = ft.FocalTriplet.from_4dstem(
                                *[(g * x).astype(np.int32 if g > 1 else np.uint16) for x in c],
                                dz=d.dz, scan_step=d.scan_step, k_sampling=d.k_sampling,
                                energy=d.energy)
                            rec = {m: ft.reconstruct(t, method=m) for m in ("icom", "tie")}
                        except ft.InputError as exc:
                            row["refused"] = str(exc)
                            stream.write(json.dumps(row) + "\n")
                            continue
                    record = (t.flux or {}).get("gain")
                    row.update(
                        ratio=None if record is None else record["ratio"],
                        warned=bool(record and record["why"]),
                        nmse={m: phase_errors(r.phase, d.phase_gt)[1] for m, r in rec.items()},
                        modes=rec["tie"].info.get("denoise"),
                        warnings=[str(w.message)[:120] for w in seen
                                  if not issubclass(w.category, DeprecationWarning)])
                    stream.write(json.dumps(row) + "\n")
            stream.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("alarms", "detect", "gain"))
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--files", type=int, default=None,
                        help="files of the manifest (default 60 for alarms, else 40)")
    parser.add_argument("-o", "--output", type=Path, default=Path("gain.jsonl"))
    args = parser.parse_args()
    n = args.files or (60 if args.what == "alarms" else 40)
    if args.what == "alarms":
        alarms(args.corpus, n)
    elif args.what == "detect":
        detect(args.corpus, n)
    else:
        gain(args.corpus, n, args.output)


if __name__ == "__main__":
    main()
