"""What removing the centre of mass's plane (``descan="plane"``) costs the flow
networks and ``icom`` on right data: the held-out test series of a corpus.

For the thinnest and thickest file of every series of the test cycles
(docs/models.md: index // 8 in 7, 11, 15, 19), cropped to the window,
noise-free and at 1e4 e⁻/Å² (one draw, seed 0), no drift and
``register=False``: the NMSE of the network alone (``uncertainty=False``) of
``"default"`` and ``"corpus"`` and of ``icom``, with ``descan="none"`` and
``"plane"``:

    python scripts/descan_flow_study.py data/corpus -o data/descan_flow.jsonl
    python scripts/descan_flow_study.py --score data/descan_flow.jsonl
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluation_grid as grid  # noqa: E402

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402
from flowtie_fast.simulation.acquisition import counts, crop_margin  # noqa: E402

TEST_CYCLES = (7, 11, 15, 19)
COLUMNS = ("default", "corpus", "icom")


def _row(path, periodic, margin, kind, dose):
    ds = ft.load(path)
    truth = np.asarray(ds.phase_gt, float)
    planes = [np.asarray(p) for p in (ds.minus, ds.zero, ds.plus)]
    if margin:
        truth, planes = crop_margin(truth, margin), [crop_margin(p, margin) for p in planes]
    if dose:
        rng = np.random.default_rng(0)
        planes = [counts(p, dose, ds.scan_step, rng, dtype=np.uint32) for p in planes]
    row = {"case": path.stem, "kind": kind, "dose": dose}
    boundary = "periodic" if periodic else "mirror"
    for mode in ("none", "plane"):
        t = ft.FocalTriplet.from_4dstem(*planes, dz=ds.dz, scan_step=ds.scan_step,
                                        k_sampling=ds.k_sampling, energy=ds.energy,
                                        backend="cpu", register=False, descan=mode)
        for model in ("default", "corpus"):
            rec = ft.reconstruct(t, method="flowtie", model=model, backend="cpu",
                                 boundary=boundary, uncertainty=False)
            row[f"{model}_{mode}"] = phase_errors(rec.phase, truth)[1]
        rec = ft.reconstruct(t, method="icom", backend="cpu", boundary=boundary)
        row[f"icom_{mode}"] = phase_errors(rec.phase, truth)[1]
    return row


def run(folder: Path, out: Path) -> None:
    with out.open("a") as f:
        for path, periodic, margin, kind in grid.present([folder]):
            if int(path.stem[1:5]) // 8 not in TEST_CYCLES:
                continue
            for dose in (None, 1e4):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        row = _row(path, periodic, margin, kind, dose)
                    except ft.InputError as exc:
                        row = {"case": path.stem, "dose": dose, "error": str(exc)}
                f.write(json.dumps(row) + "\n")
                f.flush()


def score(path: Path) -> None:
    rows = [r for r in map(json.loads, path.read_text().splitlines()) if "error" not in r]
    print(f"{len(rows)} rows of {len({r['case'] for r in rows})} files")
    for m in COLUMNS:
        ratios = [r[f"{m}_plane"] / r[f"{m}_none"] for r in rows]
        worst = max(range(len(rows)), key=ratios.__getitem__)
        gm = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"{m}: geometric mean plane/none {gm:.3f}, worst {ratios[worst]:.2f} "
              f"({rows[worst]['case']}, dose {rows[worst]['dose']}), best {min(ratios):.2f}")


def main(argv=None) -> None:
    grid.study_main(__doc__, run, score, "data/descan_flow.jsonl", argv)


if __name__ == "__main__":
    main()
