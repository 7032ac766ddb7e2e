"""Train the ``"corpus"`` flow model on the sweep, and score it beside the shipped ones.

The recipe of docs/models.md (``"corpus"``): the network of ``"default"``
(width 24, depth 3) from scratch; Adam, lr 2e-3 on a cosine schedule, 10000
steps of 8, loss weights flow 1, continuity 0, phase 1, seed 0; trained on

- every finished series of the sweep (``data/corpus``) outside the
  validation and test cycles (:func:`split`), each file noise-free and under
  three drawn acquisitions (:func:`~flowtie_fast.training.data.load_corpus`),
- the GaAs and SrTiO3 training crystals (``data/train``, made by
  ``scripts/simulate_evaluation_sets.py data train``), noise-free and at 1e3,
  3e3, 1e4 and 1e5 e/Å², three draws.

The score, fixed before any candidate is trained: over the triplets of one
half, its crystals (``data/validation``: Cu, CeO2; ``data/test``: Si, MgO and
the held-out GaAs and SrTiO3 thicknesses) noise-free and at 1e3, 3e3, 1e4 and
1e5 e/Å², and the thinnest and thickest file of each of its corpus series,
cropped to the nominal window, noise-free and at 1e4 e/Å² (each triplet as
the grid makes it: :func:`evaluation_grid.triplet_of`), the geometric mean of
the NMSE of the network alone (``uncertainty=False``) over the best classical
method's (``tie-uniform``, ``tie``, ``tie-exact``, ``icom``). A candidate
replaces ``"corpus"`` only where it scores lower on validation, and then on
test.

    python scripts/train_corpus.py train data/corpus data/train -o data/corpus_model
    python scripts/train_corpus.py score validation data/corpus data/validation \\
        -m data/corpus_model/flow.pt -m corpus -m default -o data/corpus_model/validation.jsonl
    python scripts/train_corpus.py summary data/corpus_model/validation.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors

sys.path.insert(0, str(Path(__file__).resolve().parent))
from evaluation_grid import cases, triplet_of  # noqa: E402

CYCLE = 8  # series per cycle of the round-robin split
CLASSICAL = ("tie-uniform", "tie", "tie-exact", "icom")
CRYSTAL_DOSES = (None, 1e3, 3e3, 1e4, 1e5)
CORPUS_DOSES = (None, 1e4)
TRAIN_DOSES = (None, 1e3, 3e3, 1e4, 1e5)


def split(index: int) -> str:
    """The half of the corpus series ``index``: cycles (index // 8) 5, 9, 13,
    ... validate; 7, 11, 15, ... test; the rest train. Each cycle of eight
    consecutive series visits every family of the sweep."""
    c = index // CYCLE
    if c >= 5 and (c - 5) % 4 == 0:
        return "validation"
    if c >= 7 and (c - 7) % 4 == 0:
        return "test"
    return "train"


def _series_index(path: Path) -> int:
    return int(path.stem[1:5])


def train(corpus: Path, crystals: Path, out: Path, steps: int, seed: int) -> Path:
    """Train a candidate on the training half and ``crystals``; write
    ``out/flow.pt`` (TorchScript) and ``out/train.json`` (what it saw)."""
    from flowtie_fast.simulation.sweep import read_manifest
    from flowtie_fast.training import train as T
    from flowtie_fast.training.data import load_corpus, load_samples

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "flow.pt"
    if model_path.exists():
        raise SystemExit(f"{model_path} exists: choose another -o")
    records = read_manifest(corpus)
    ids = sorted(r["id"] for r in records.values() if split(int(r["index"])) == "train")
    start = time.perf_counter()
    samples = load_corpus(corpus, variants=3, seed=0, series=ids)
    n_corpus = len(samples)
    for draw in range(3):
        samples += load_samples(crystals, doses=TRAIN_DOSES, seed=draw)
    print(f"{len(samples)} samples ({n_corpus} from {len(ids)} corpus series {ids[0]}..{ids[-1]},"
          f" {len(samples) - n_corpus} from {crystals}) in {time.perf_counter() - start:.0f} s",
          flush=True)
    cfg = T.TrainConfig(steps=steps, batch=8, lr=2e-3, schedule="cosine", seed=seed,
                        weights=(1.0, 0.0, 1.0), checkpoint_every=500)

    def progress(step, loss, terms, seconds):
        if step % 500 == 0:
            print(f"step {step}: loss {loss:.4g} ({seconds:.0f} s)", flush=True)

    model, _ = T.train(samples, cfg, checkpoint=out / "train.ckpt", progress=progress)
    T.export_torchscript(model, model_path, cfg)
    (out / "train.json").write_text(json.dumps({
        "series": ids, "samples": len(samples), "corpus_samples": n_corpus,
        "crystals": str(crystals), "steps": steps, "seed": seed,
        "seconds": time.perf_counter() - start}) + "\n")
    return model_path


def half_cases(half: str, corpus: Path, crystals: Path):
    """(path, periodic, margin, kind, doses) of the triplets of one half."""
    for path, periodic, margin, kind in cases([crystals]):
        yield path, periodic, margin, "crystal", CRYSTAL_DOSES
    for path, periodic, margin, kind in cases([corpus]):
        if path.exists() and split(_series_index(path)) == half:
            yield path, periodic, margin, kind, CORPUS_DOSES


def score(half: str, corpus: Path, crystals: Path, models, out: Path) -> None:
    """Write one row per triplet of ``half``: the classical methods' NMSE and
    each model's network alone (resumable: rows already in ``out`` are kept)."""
    done = set()
    if out.exists():
        done = {(r["case"], r["dose"]) for r in map(json.loads, out.read_text().splitlines())}
    with out.open("a") as f:
        for path, periodic, margin, kind, doses in half_cases(half, corpus, crystals):
            for dose in doses:
                if (path.stem, dose) in done:
                    continue
                start = time.perf_counter()
                # the draws of one triplet depend on it alone: a resumed run scores the same
                rng = np.random.default_rng([zlib.crc32(path.stem.encode()),
                                             doses.index(dose)])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t, truth, boundary, _ = triplet_of(path, periodic, margin, dose, None, rng)
                    row = {"case": path.stem, "half": half, "kind": kind, "dose": dose}
                    for m in CLASSICAL:
                        row[m] = phase_errors(ft.reconstruct(t, method=m, backend="cpu",
                                                             boundary=boundary).phase, truth)[1]
                    for name in models:
                        rec = ft.reconstruct(t, method="flowtie", backend="cpu",
                                             boundary=boundary, model=name,
                                             uncertainty=False)
                        row[name] = phase_errors(rec.phase, truth)[1]
                row["best"] = min(CLASSICAL, key=lambda m: row[m])
                row["seconds"] = time.perf_counter() - start
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(path.stem, dose, {n: round(row[n] / row[row["best"]], 3) for n in models},
                      flush=True)


def _gmean(values) -> float:
    values = [max(v, 1e-12) for v in values]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def summary(path: Path) -> str:
    """The Markdown table of a score file: per model, the score (geometric
    mean ratio), the worst ratio, the crystals' mean ratio per dose, the
    corpus files' geometric mean per dose, and the shares of triplets with
    a ratio below 1 and at most 0.5."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    fixed = {"case", "half", "kind", "dose", "best", "seconds", *CLASSICAL}
    models = [k for k in rows[0] if k not in fixed]
    doses = sorted({r["dose"] for r in rows}, key=lambda d: -1 if d is None else d)
    head = ["model", "score", "worst ratio"]
    head += [f"crystals {'noise-free' if d is None else f'{d:.0e}'}" for d in CRYSTAL_DOSES
             if d in doses]
    head += [f"corpus {'noise-free' if d is None else f'{d:.0e}'}" for d in CORPUS_DOSES]
    head += ["ratio < 1", "ratio ≤ 0.5"]
    lines = [f"{len(rows)} triplets of {path}", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    for m in models:
        ratio = [(r[m] / max(r[r["best"]], 1e-12), r) for r in rows]
        worst = max(ratio, key=lambda x: x[0])
        cells = [m, f"{_gmean([x for x, _ in ratio]):.3f}",
                 f"{worst[0]:.2f} ({worst[1]['case']}, {worst[1]['dose']})"]
        for d in CRYSTAL_DOSES:
            if d in doses:
                sel = [x for x, r in ratio if r["kind"] == "crystal" and r["dose"] == d]
                cells.append(f"{np.mean(sel):.2f}" if sel else "")
        for d in CORPUS_DOSES:
            sel = [x for x, r in ratio if r["kind"] != "crystal" and r["dose"] == d]
            cells.append(f"{_gmean(sel):.2f}" if sel else "")
        cells += [f"{100 * np.mean([x < 1 for x, _ in ratio]):.0f} %",
                  f"{100 * np.mean([x <= 0.5 for x, _ in ratio]):.0f} %"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a candidate")
    p.add_argument("corpus", type=Path)
    p.add_argument("crystals", type=Path)
    p.add_argument("-o", "--output", type=Path, default=Path("data/corpus_model"))
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("score", help="score models on one half")
    p.add_argument("half", choices=("validation", "test"))
    p.add_argument("corpus", type=Path)
    p.add_argument("crystals", type=Path)
    p.add_argument("-m", "--model", action="append", required=True,
                   help="a TorchScript file or a shipped name (repeat)")
    p.add_argument("-o", "--output", type=Path, required=True)
    p = sub.add_parser("summary", help="the table of a score file")
    p.add_argument("scores", type=Path)
    args = parser.parse_args(argv)
    if args.command == "train":
        print(train(args.corpus, args.crystals, args.output, args.steps, args.seed))
    elif args.command == "score":
        score(args.half, args.corpus, args.crystals, args.model, args.output)
    else:
        print(summary(args.scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
