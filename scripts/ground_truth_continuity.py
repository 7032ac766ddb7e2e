"""How far the ground truth itself is from the TIE: the continuity term of the
composite loss evaluated on the exact flow ∇φ_gt of each simulated case.

    python scripts/ground_truth_continuity.py data/eval data/unseen

A value near 0 means the measured transport ``k ∂I/∂z`` is what the projected
phase predicts (the TIE holds); 1 means it explains none of it; above 1 it
points elsewhere. It is why the loss ablation (docs/evaluation.md) drops the
continuity weight.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(paths):
    import torch

    from flowtie_fast.training.data import load_samples
    from flowtie_fast.training.loss import CompositeLoss

    print("| case | continuity of the exact flow (normalised) |")
    print("| --- | ---: |")
    for s in load_samples(paths):
        loss = CompositeLoss(s.phase.shape, s.pixel_size).double()
        t = lambda a: torch.from_numpy(a).double()[None]  # noqa: E731
        terms = loss.terms(t(s.gradient), t(s.phase), t(s.gradient), t(s.planes[1]),
                           t(s.didz), s.wavenumber)
        print(f"| {s.name} | {float(terms['continuity']):.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
