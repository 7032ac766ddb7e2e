"""Could the scale of the centre of mass tell a scan step given in nm as Å?

The centre of mass gives the phase gradient in rad/Å whatever the scan step;
the TIE gradient of the bright-field images scales as 1/h with the scan step
h the caller gives. For the thinnest and thickest file of each corpus series
(cropped as the evaluation grid reads them), noise-free and at 1e5, 1e4 and
1e3 e/Å²: the RMS ratio of the two gradients at the right step and at a
tenth of it (the slip).

    python scripts/scale_study.py data/corpus -o data/scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.trust import plain_tie_gradient

sys.path.insert(0, str(Path(__file__).parent))
from evaluation_grid import cases, triplet_of  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+")
    p.add_argument("-o", "--output", type=Path, default=Path("data/scale.jsonl"))
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    rows = []
    for path, periodic, margin, kind in cases(a.folders):
        if not path.exists():
            continue
        for dose in (None, 1e5, 1e4, 1e3):
            try:
                t, _, _, _ = triplet_of(path, periodic, margin, dose, None, rng)
            except ft.InputError:
                continue
            bf = [np.asarray(r.virtual["bf"], float) for r in t.reductions]
            g = np.asarray(t.gradient, float)
            g = g - g.mean(axis=(1, 2), keepdims=True)
            slip = tuple(h / 10 for h in t.pixel_size)
            for label, step in (("right", t.pixel_size), ("nm", slip)):
                tie = plain_tie_gradient(bf, t.derivative_weights, t.intensity_weights,
                                         t.wavenumber, step)
                tie = tie - tie.mean(axis=(1, 2), keepdims=True)
                power = float((tie * tie).sum())
                if power > 0:
                    rows.append({"case": path.stem, "dose": dose, "step": label,
                                 "rms_ratio": float(np.sqrt((g * g).sum() / power))})
    a.output.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for label in ("right", "nm"):
        for dose in (None, 1e5, 1e4, 1e3):
            v = np.array([r["rms_ratio"] for r in rows
                          if r["step"] == label and r["dose"] == dose])
            if v.size:
                q = np.percentile(v, [0, 5, 50, 95, 100])
                print(f"{label:5s} dose {dose}: {v.size} files, RMS ratio min {q[0]:.2f}, 5 % "
                      f"{q[1]:.2f}, median {q[2]:.2f}, 95 % {q[3]:.2f}, max {q[4]:.2f}")


if __name__ == "__main__":
    main()
