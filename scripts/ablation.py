"""Loss-weight and architecture ablation of the flow model, on held-out cases.

Trains one model per configuration on the same cases with the same seed and
number of steps, then measures the phase NMSE of ``method="flowtie"`` on
held-out thicknesses and on crystals never seen in training, beside the best
classical method of each case (lowest MSE of tie-uniform, tie, tie-exact, gd,
icom). Prints Markdown tables for docs/evaluation.md.

    python scripts/ablation.py --train A.npz B/ ... --test C/ D.npz ... \\
        --steps 800 --models /tmp/ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.evaluation.evaluate import case_files, phase_errors  # noqa: E402

CLASSICAL = ("tie-uniform", "tie", "tie-exact", "gd", "icom")

# name -> TrainConfig overrides
LOSS_WEIGHTS = {
    "flow only (1, 0, 0)": {"weights": (1.0, 0.0, 0.0)},
    "phase only (0, 0, 1)": {"weights": (0.0, 0.0, 1.0)},
    "flow + phase (1, 0, 1)": {"weights": (1.0, 0.0, 1.0)},
    "weak continuity (1, 0.01, 1)": {"weights": (1.0, 0.01, 1.0)},
    "continuity 0.1 (1, 0.1, 1)": {"weights": (1.0, 0.1, 1.0)},
    "strong continuity (1, 1, 1)": {"weights": (1.0, 1.0, 1.0)},
}
ARCHITECTURES = {
    "width 24, depth 3, stride 1": {"width": 24, "depth": 3, "stride": 1},
    "width 32, depth 3, stride 2": {"width": 32, "depth": 3, "stride": 2},
    "width 32, depth 4, stride 2": {"width": 32, "depth": 4, "stride": 2},
}


def cases(paths):
    """(name, triplet, truth) of every file with a ground truth."""
    out = []
    for path in case_files(paths):
        with ft.load(path) as ds:
            t = ds.triplet(backend="cpu")
            out.append((path.stem, float(ds.meta.get("thickness", np.nan)), t,
                        np.asarray(ds.phase_gt)))
    return out


def classical_best(test):
    best = {}
    for name, _, t, truth in test:
        best[name] = min(phase_errors(ft.reconstruct(t, method=m, backend="cpu").phase,
                                      truth)[1] for m in CLASSICAL)
    return best


def run(configs, samples, test, best, steps, models: Path, base: dict):
    from flowtie_fast.training.train import TrainConfig, export_torchscript, train

    rows = []
    for label, overrides in configs.items():
        cfg = TrainConfig(**{**base, "steps": steps, **overrides})
        start = time.perf_counter()
        try:
            model, history = train(samples, cfg)
        except RuntimeError as exc:  # collapsed past its rollbacks: no model to test
            print(json.dumps({"config": label, "collapsed": str(exc)}), flush=True)
            continue
        seconds = time.perf_counter() - start
        path = models / (label.split(" (")[0].replace(" ", "_").replace(",", "") + ".pt")
        export_torchscript(model, path, cfg)
        nmse = {}
        for name, _, t, truth in test:
            nmse[name] = phase_errors(ft.reconstruct(t, method="flowtie", model=path,
                                                     backend="cpu").phase, truth)[1]
        rows.append({"config": label, "seconds": seconds, "final_loss": history[-1],
                     "nmse": nmse, "params": sum(p.numel() for p in model.parameters()),
                     "path": str(path)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "nmse"}), flush=True)
    return rows


def table(rows, test, best):
    names = [c[0] for c in test]
    thin = [c[0] for c in test if c[1] < 50]
    head = ("| configuration | parameters | train (s) | mean NMSE, all | mean NMSE, < 5 nm "
            "| worst ratio to the best classical | cases at most half the best classical |")
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines.append(f"| best classical method of each case | - | - | "
                 f"{np.mean([best[n] for n in names]):.3f} | "
                 f"{np.mean([best[n] for n in thin]):.3f} | 1 | - |")
    for r in rows:
        ratios = [r["nmse"][n] / best[n] for n in names]
        lines.append(f"| {r['config']} | {r['params']:,} | {r['seconds']:.0f} | "
                     f"{np.mean([r['nmse'][n] for n in names]):.3f} | "
                     f"{np.mean([r['nmse'][n] for n in thin]):.3f} | {max(ratios):.2f} | "
                     f"{sum(x <= 0.5 for x in ratios)} / {len(names)} |")
    lines.append("")
    lines.append("| case | best classical | " + " | ".join(r["config"] for r in rows) + " |")
    lines.append("| --- |" + " ---: |" * (len(rows) + 1))
    for n in names:
        lines.append(f"| {n} | {best[n]:.3f} | " +
                     " | ".join(f"{r['nmse'][n]:.3f}" for r in rows) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", nargs="+", required=True)
    p.add_argument("--test", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--models", type=Path, default=Path("ablation_models"))
    p.add_argument("--study", choices=("loss", "architecture"), default="loss")
    p.add_argument("--dose", type=float, nargs=2)
    p.add_argument("--weights", type=float, nargs=3, help="loss weights of the architecture study")
    p.add_argument("--only", nargs="+", help="run only the configurations starting so")
    args = p.parse_args(argv)
    args.models.mkdir(parents=True, exist_ok=True)
    from flowtie_fast.training.data import load_samples

    samples = load_samples(args.train)
    test = cases(args.test)
    print(f"{len(samples)} training cases, {len(test)} test cases", flush=True)
    best = classical_best(test)
    base = {"dose": tuple(args.dose) if args.dose else (None, None)}  # default network
    if args.weights:
        base["weights"] = tuple(args.weights)
    configs = LOSS_WEIGHTS if args.study == "loss" else ARCHITECTURES
    if args.only:
        configs = {k: v for k, v in configs.items() if k.startswith(tuple(args.only))}
    rows = run(configs, samples, test, best, args.steps, args.models, base)
    print(table(rows, test, best))


if __name__ == "__main__":
    main()
