"""Phase NMSE of the shipped flow models in float32 and in bfloat16, per case
(the network alone: no trust check, no fallback).

    python scripts/precision_study.py --test data/eval data/unseen --models default fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from scripts.ablation import cases  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402


def main(argv=None):
    from flowtie_fast.flow import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test", nargs="+", required=True, help="files or folders with ground truth")
    p.add_argument("--models", nargs="+", default=["default"])
    args = p.parse_args(argv)
    test = cases(args.test)
    for name in args.models:
        pair = {prec: load_model(name, "cpu", prec) for prec in ("float32", "bfloat16")}
        print(f"\nmodel {name!r}\n")
        print("| case | float32 | bfloat16 | change |\n| --- | ---: | ---: | ---: |")
        worst = 0.0
        for case, _, t, truth in test:
            e = {prec: phase_errors(ft.reconstruct(t, method="flowtie", model=m,
                                                   backend="cpu", uncertainty=False).phase,
                                    truth)[1]
                 for prec, m in pair.items()}
            change = e["bfloat16"] - e["float32"]
            worst = max(worst, abs(change))
            print(f"| {case} | {e['float32']:.4f} | {e['bfloat16']:.4f} | {change:+.4f} |")
        print(f"\nlargest NMSE change: {worst:.4f}")


if __name__ == "__main__":
    main()
