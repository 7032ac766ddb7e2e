"""Which virtual image makes the TIE on a 4D-STEM focal triplet most accurate?

Runs ``tie`` and ``tie-exact`` on every simulated case of a folder for several
virtual detectors and prints the NMSE table used in docs/evaluation.md:

    python scripts/virtual_images.py data/eval
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flowtie_fast.evaluation.evaluate import evaluate  # noqa: E402
from flowtie_fast.io import load  # noqa: E402
from flowtie_fast.stem import (  # noqa: E402
    Detector,
    bf_radius_mrad,
    find_center,
    mean_pattern,
    sample_patterns,
)

# Virtual detectors: a bright-field disk of a fraction of the measured disk
# radius, the annular bright field, and the whole detector.
FRACTIONS = (0.125, 0.25, 0.5, 1.0)


def disk_radius(path):
    with load(path) as ds:
        mean = mean_pattern(sample_patterns(ds.zero))  # what from_4dstem measures
        det = Detector(tuple(ds.zero.shape[2:]), ds.k_sampling, ds.energy, find_center(mean))
        return bf_radius_mrad(mean, det)


def main(folder):
    files = sorted(Path(folder).glob("*.npz"))
    choices = [(f"bf r = {f:g} disk", {"virtual": "bf", "bf_fraction": f}) for f in FRACTIONS]
    choices += [("abf", {"virtual": "abf"}), ("whole", {"virtual": "whole"})]
    header = "| case | " + " | ".join(name for name, _ in choices) + " |"
    print(header)
    print("|" + " --- |" * (len(choices) + 1))
    for path in files:
        radius = disk_radius(path)
        cells = []
        for _, options in choices:
            options = dict(options)
            fraction = options.pop("bf_fraction", None)
            if fraction is not None:
                options["bf_radius"] = fraction * radius
            rows = evaluate([path], methods=("tie",), repeats=1, triplet_options=options)
            cells.append(f"{rows[0]['nmse']:.3f}")
        r = rows[0]
        print(f"| {r['material']} {r['thickness'] / 10:.1f} nm | " + " | ".join(cells) + " |")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/eval")
