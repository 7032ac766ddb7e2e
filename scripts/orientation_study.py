"""The curl check of the measured gradient (flowtie_fast.trust.gradient_orientation)
scored on 4D-STEM simulations: every file x dose, the centre of mass taken in
the right orientation and turned or transposed as a wrong detector rotation or
flip would; one JSON line per file x dose with, per orientation, whether it was
flagged and the icom phase error (NMSE against the ground truth) it gives.

    python scripts/orientation_study.py data/corpus -o data/orientation.jsonl
    python scripts/orientation_study.py --score data/orientation.jsonl
"""

from __future__ import annotations

import argparse
import collections
import json
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast import trust
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.simulation import acquisition
from flowtie_fast.stem.rotation import rotate_com

DOSES = (None, 1e2, 1e3, 1e4, 1e5, 1e6)  # e/Å²
ORIENTATIONS = ((0, False), (10, False), (20, False), (30, False), (45, False), (90, False),
                (135, False), (180, False), (0, True), (45, True), (90, True))


def rows(path, rng):
    ds = ft.load(path)
    truth = np.asarray(ds.phase_gt, float)
    for dose in DOSES:
        blur = float(rng.choice([0.0, 0.0, 0.5, 1.0]))  # source size, Å FWHM
        gain = float(rng.choice([0.0, 0.1, 0.3])) if dose else 0.0
        planes, _ = acquisition.apply(ds, rng=rng, dose=dose, gain_noise=gain,
                                      source_fwhm=blur, scan_step=ds.scan_step)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                            k_sampling=ds.k_sampling, energy=ds.energy,
                                            backend="cpu", register=False)
        g = np.asarray(t.gradient, float)
        row = {"case": Path(path).stem, "dose": dose, "source_fwhm": blur, "gain_noise": gain,
               "shape": list(g.shape[1:]), "orientations": {}, "half_turn": {}}
        # the sign check of an explicit rotation: the right one and half a turn off
        for degrees in (0.0, 180.0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                turned = ft.FocalTriplet.from_4dstem(
                    *planes, dz=ds.dz, scan_step=ds.scan_step, k_sampling=ds.k_sampling,
                    energy=ds.energy, backend="cpu", register=False, rotation=degrees)
            check = turned.gradient_orientation
            row["half_turn"][str(int(degrees))] = {
                "suspect": check["suspect"], "tie_correlation": check.get("tie_correlation")}
        for degrees, flip in ORIENTATIONS:
            turned = rotate_com(g, degrees, flip)
            check = trust.gradient_orientation(turned, ds.scan_step)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tt = ft.FocalTriplet(*t.planes, dz=ds.dz, pixel_size=ds.scan_step,
                                     energy=ds.energy, gradient=turned)
                phase = ft.reconstruct(tt, method="icom", backend="cpu").phase
            row["orientations"][f"{degrees}{'T' if flip else ''}"] = {
                "suspect": check["suspect"], "significance": check.get("significance"),
                "misorientation": check.get("misorientation"),
                "nmse_icom": phase_errors(phase, truth)[1]}
        yield row


def score(path):
    """Per orientation: flagged rows, and the harmful ones missed (the right
    orientation's icom NMSE below 0.7 and this one's 0.2 above it)."""
    data = [json.loads(line) for line in open(path)]
    print(f"{len(data)} file x dose rows")
    for key in data[0]["orientations"]:
        flagged = harmful = missed = 0
        by_dose = collections.Counter()
        for r in data:
            o, right = r["orientations"][key], r["orientations"]["0"]["nmse_icom"]
            harm = right < 0.7 and o["nmse_icom"] > right + 0.2
            flagged += o["suspect"]
            by_dose[str(r["dose"])] += o["suspect"]
            harmful += harm
            missed += harm and not o["suspect"]
        print(f"{key:>5}: flagged {flagged:4d}, harmful {harmful:4d}, harmful not flagged "
              f"{missed:4d}; flagged by dose {dict(by_dose)}")
    # half a turn, through from_4dstem: caught by the sign against the TIE phase
    right = sum(r["half_turn"]["0"]["suspect"] for r in data)
    harmful = [r for r in data if r["orientations"]["0"]["nmse_icom"] < 0.7
               and r["orientations"]["180"]["nmse_icom"] > r["orientations"]["0"]["nmse_icom"]
               + 0.2]
    caught = sum(r["half_turn"]["180"]["suspect"] for r in harmful)
    low = min((r["half_turn"]["0"]["tie_correlation"] for r in data
               if r["half_turn"]["0"]["tie_correlation"] is not None), default=None)
    print(f"rotation=0 flagged {right} of {len(data)} (lowest TIE correlation {low}); "
          f"rotation=180 caught {caught} of the {len(harmful)} harmful")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", help="folders of simulated .npz files")
    p.add_argument("-o", "--output", help="JSON lines to append to")
    p.add_argument("--score", help="score a JSON lines file and stop")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    if a.score:
        return score(a.score)
    rng = np.random.default_rng(a.seed)
    with open(a.output, "a") as out:
        for folder in a.folders:
            for path in sorted(Path(folder).glob("*.npz")):
                try:
                    for row in rows(path, rng):
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                except ft.InputError as exc:  # a case the reduction refuses (said, skipped)
                    print(f"{path.name}: skipped: {exc}")


if __name__ == "__main__":
    main()
