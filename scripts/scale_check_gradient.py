"""How the scale check of a measured gradient reads right and wrong calibrations.

For each simulated case (``.npz`` files of ``flowtie simulate``) at each dose,
the 4D-STEM triplet is reduced with its ``k_sampling`` as recorded and scaled
by each factor (a calibration or unit given wrong scales the centre-of-mass
gradient by it); one JSON line per case x dose x factor: the correlation with
the bright-field TIE gradient, the bracket of the TIE gradient's scale
(:func:`flowtie_fast.trust.sign_check`) and whether the gradient was judged
suspect, and why.

    python scripts/scale_check_gradient.py data/test data/validation -o data/scale_check.jsonl
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast.simulation.acquisition import counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--doses", nargs="+", default=["none", "1e4", "1e3", "300"])
    p.add_argument("--factors", nargs="+", type=float, default=[1.0, 10.0, 0.1, 2 * np.pi])
    args = p.parse_args(argv)
    files = sorted(f for d in args.folders for f in d.glob("*.npz"))
    with args.output.open("w") as out:
        for f in files:
            with ft.load(f) as ds:
                data = [np.asarray(getattr(ds, k)) for k in ("minus", "zero", "plus")]
                kw = dict(dz=ds.dz, scan_step=ds.scan_step, energy=ds.energy)
                k_sampling = np.asarray(ds.k_sampling, float)
            for dose in args.doses:
                planes = data
                if dose != "none":
                    rng = np.random.default_rng(0)
                    planes = [counts(a, float(dose), kw["scan_step"], rng, dtype=np.uint32)
                              for a in data]
                for factor in args.factors:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        t = ft.FocalTriplet.from_4dstem(*planes, k_sampling=tuple(k_sampling * factor),
                                                        backend="cpu", **kw)
                    c = t.gradient_orientation or {}
                    row = {"file": f.name, "dose": dose, "factor": factor,
                           "r": c.get("tie_correlation"), "tie_scale": c.get("tie_scale"),
                           "suspect": bool(c.get("suspect")), "misscaled": c.get("misscaled"),
                           "misorientation": c.get("misorientation")}
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    print(row)


if __name__ == "__main__":
    main()
