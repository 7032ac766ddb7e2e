"""Do the acquisition conditions help the flow network as inputs?

Trains two networks of the shipped recipe on the same corpus samples: ``A``
with the six input channels the library feeds (``flow_inputs``), ``B`` with
two more constant channels, ``log10(electrons per pattern) / 7`` (noise-free:
1) and the probe's band limit ``2 α / λ`` times the pixel size (cycles per
pixel; the dimensionless form of voltage, semiangle and scan step); then
scores the network alone on held-out series.

Criterion, fixed before training: the conditions help where, on the
validation series s0040-s0047 (noise-free and three drawn acquisitions per
file), the geometric mean of NMSE_B / NMSE_A of the network alone is below
0.90 and B is better on at least 60 % of the samples; only then are they
scored on the test series and read by a shipped model.

    python scripts/conditions_study.py train data/corpus --steps 4000 -o data/conditions
    python scripts/conditions_study.py score data/corpus data/conditions --series s0040-s0047
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import flowtie_fast as ft
from flowtie_fast.evaluation.evaluate import phase_errors
from flowtie_fast.flow.infer import flow_inputs
from flowtie_fast.flow.model import FlowNet
from flowtie_fast.training import train as T
from flowtie_fast.training.data import load_corpus
from flowtie_fast.simulation.sweep import read_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_corpus import split  # noqa: E402  (the corpus's held-out halves)



def semiangles(folder) -> dict:
    return {r["id"]: float(r["settings"]["semiangle"]) for r in read_manifest(folder).values()}


def condition_values(sample, semiangle_mrad: float) -> tuple:
    cond = sample.conditions or {}
    h0, h1 = sample.pixel_size
    dose = cond.get("dose")
    electrons = math.inf if dose is None else float(dose) * h0 * h1
    c_dose = 1.0 if not math.isfinite(electrons) else min(math.log10(max(electrons, 1.0)) / 7, 1.0)
    lam = 2 * math.pi / sample.wavenumber
    c_band = 2 * semiangle_mrad * 1e-3 / lam * 0.5 * (h0 + h1)
    return c_dose, c_band


def with_conditions(x, values):
    """Append the constant condition channels to inputs ``x`` (B, C, H, W)."""
    b, _, h, w = x.shape
    v = torch.tensor(values, dtype=x.dtype).view(b, -1, 1, 1).expand(b, -1, h, w)
    return torch.cat([x, v], dim=1)


def load(folder, wanted: str, seed: int, variants=3):
    folder = Path(folder)
    records = read_manifest(folder)
    ids = sorted(r["id"] for r in records.values() if split(int(r["index"])) == wanted)
    alpha = semiangles(folder)
    samples = load_corpus(folder, variants=variants, seed=seed, series=ids)
    for s in samples:
        s.conditions = dict(s.conditions or {}, semiangle=alpha[s.name[:5]])
    return samples, ids


def train_both(folder, out: Path, steps: int, seed: int = 0):
    out.mkdir(parents=True, exist_ok=True)
    samples, ids = load(folder, "train", seed=0)
    print(f"{len(samples)} training samples from {len(ids)} series: {ids[0]}..{ids[-1]}",
          flush=True)
    cfg = T.TrainConfig(steps=steps, batch=8, lr=2e-3, schedule="cosine", seed=seed,
                        checkpoint_every=10**6)
    plain_tensors = T._tensors
    plain_net = FlowNet
    for variant in ("A", "B"):
        if (out / f"{variant}.pt").exists():
            continue
        if variant == "B":
            def tensors(batch, use_com):
                x, *rest = plain_tensors(batch, use_com)
                vals = [condition_values(b, b.conditions["semiangle"]) for b in batch]
                return (with_conditions(x, vals), *rest)

            def net(in_channels=6, **kw):
                return plain_net(in_channels=in_channels + 2, **kw)
            T._tensors, T.FlowNet = tensors, net
        start = time.perf_counter()
        model, history = T.train(samples, replace(cfg))
        T._tensors, T.FlowNet = plain_tensors, plain_net
        torch.save(model.state_dict(), out / f"{variant}.pt")
        print(f"{variant}: {steps} steps in {time.perf_counter() - start:.0f} s, final loss "
              f"{np.mean(history[-100:]):.3f}", flush=True)


def network_phase(model, s, conditions: bool):
    planes = torch.from_numpy(np.ascontiguousarray(s.planes[None]))
    didz = torch.from_numpy(np.ascontiguousarray(s.didz[None].astype(np.float32)))
    com = torch.from_numpy(np.ascontiguousarray(s.com[None]))
    x = flow_inputs(planes[:, 0], planes[:, 1], planes[:, 2], didz, s.wavenumber,
                    s.pixel_size, com)
    if conditions:
        x = with_conditions(x, [condition_values(s, s.conditions["semiangle"])])
    with torch.no_grad():
        v = model(x)[0].numpy().astype(np.float64)
    g = v / np.array(s.pixel_size).reshape(2, 1, 1)
    solver = ft.TIESolver(s.phase.shape, s.pixel_size, backend="cpu",
                          boundary="periodic" if s.periodic else "mirror")
    return solver.integrate(g).phase, solver.integrate(2 * np.pi * s.com.astype(np.float64)).phase


def score(folder, trained: Path, wanted: str, out: Path):
    samples, ids = load(folder, wanted, seed=1)
    nets = {}
    for variant, extra in (("A", 0), ("B", 2)):
        net = FlowNet(in_channels=6 + extra, width=24, depth=3)
        net.load_state_dict(torch.load(trained / f"{variant}.pt", weights_only=True))
        nets[variant] = net.eval()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in samples:
            row = {"sample": s.name, "dose": (s.conditions or {}).get("dose")}
            for variant, net in nets.items():
                phase, icom = network_phase(net, s, variant == "B")
                row[variant] = phase_errors(phase, s.phase)[1]
            row["icom"] = phase_errors(icom, s.phase)[1]
            rows.append(row)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    ratio = np.array([r["B"] / r["A"] for r in rows])
    gm = lambda a: float(np.exp(np.mean(np.log(a))))  # noqa: E731
    print(f"{wanted}: {len(rows)} samples of {len(ids)} series ({ids[0]}..{ids[-1]})")
    print(f"  geometric mean NMSE B/A {gm(ratio):.3f}; B better on {np.mean(ratio < 1):.0%}")
    print(f"  A/icom {gm([r['A'] / r['icom'] for r in rows]):.3f}, "
          f"B/icom {gm([r['B'] / r['icom'] for r in rows]):.3f}")
    for label, sel in (("noise-free", [r for r in rows if r["dose"] is None]),
                       ("counts", [r for r in rows if r["dose"] is not None])):
        if sel:
            print(f"  {label} ({len(sel)}): B/A {gm([r['B'] / r['A'] for r in sel]):.3f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("folder")
    t.add_argument("--steps", type=int, default=4000)
    t.add_argument("-o", "--output", type=Path, default=Path("data/conditions"))
    s = sub.add_parser("score")
    s.add_argument("folder")
    s.add_argument("trained", type=Path)
    s.add_argument("--split", choices=("validation", "test"), default="validation")
    a = p.parse_args(argv)
    if a.cmd == "train":
        train_both(a.folder, a.output, a.steps)
    else:
        score(a.folder, a.trained, a.split, a.trained / f"{a.split}.jsonl")


if __name__ == "__main__":
    main()
