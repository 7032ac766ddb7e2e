"""Same-run ratios for docs/performance.md: ``tie`` against the FFTs it
performs (same plans, same library) and against the plain NumPy reference.

asv tracks each timing over time; this script answers the ratio questions in
one process, interleaving the contenders so that drift and noise on a shared
machine hit all of them alike, and prints a Markdown table.

    python scripts/ratios.py --sizes 256 1024 2048 --backend cpu --repeats 30
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from benchmarks.common import DZ, ENERGY, PIXEL, require, triplet, triplet_arrays  # noqa: E402
from flowtie_fast.testing import teague_tie  # noqa: E402


def _fft_bound(poisson, sync):
    def run():
        poisson.scalar.forward()
        poisson.vector.inverse()
        poisson.vector.forward()
        poisson.scalar.inverse()
        poisson.vector.inverse()
        sync()
    return run


def measure(size, backend, repeats, reference):
    be = require(backend)
    t = triplet(size, backend)
    solver = ft.TIESolver((size, size), PIXEL, backend=be)
    out = be.empty((size, size), solver.dtype)
    grad = be.empty((2, size, size), solver.dtype)
    contenders = {
        "tie": lambda: (solver.solve(t, method="tie"), be.synchronize()),
        "tie, out= given": lambda: (solver.solve(t, method="tie", out=out, gradient_out=grad),
                                    be.synchronize()),
        "tie-uniform": lambda: (solver.solve(t, method="tie-uniform"), be.synchronize()),
        "FFTs of tie (8 real 2-D)": _fft_bound(solver.poisson, be.synchronize),
    }
    if reference:
        planes = triplet_arrays(size)
        contenders["NumPy reference Teague"] = lambda: teague_tie(*planes, DZ, PIXEL, ENERGY)
    return interleaved(contenders, repeats)


def interleaved(contenders: dict, repeats: int) -> dict:
    """Median seconds of each callable: one warm-up call each (JIT, plans), then
    ``repeats`` rounds that run every contender once, so that drift and noise
    on a shared machine hit all of them alike."""
    times = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--stem", action="store_true", help="the 4D reduction instead")
    parser.add_argument("--flow", action="store_true", help="flowtie inference instead")
    parser.add_argument("--precision", default="float32", choices=("float32", "tf32", "bfloat16"),
                        help="flow model arithmetic (--flow)")
    parser.add_argument("--model", default="default",
                        help="shipped flow model or ensemble (--flow)")
    args = parser.parse_args(argv)
    if args.stem:
        return reduction(args.backend, args.repeats)
    if args.flow:
        return flow_timing(args.backend, args.repeats, args.sizes, args.precision, args.model)
    be = require(args.backend)
    print(f"{datetime.date.today()}, {platform.node()}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, backend {be!r}, "
          f"median of {args.repeats} interleaved runs, float32")
    print()
    print("| size | contender | median (ms) | / FFTs of tie | NumPy reference / this |")
    print("| --- | --- | ---: | ---: | ---: |")
    for size in args.sizes:
        m = measure(size, args.backend, args.repeats, not args.no_reference)
        bound = m["FFTs of tie (8 real 2-D)"]
        ref = m.get("NumPy reference Teague")
        for name, value in m.items():
            speedup = f"{ref / value:.1f}x" if ref else "-"
            print(f"| {size}² | {name} | {value * 1e3:.2f} | {value / bound:.2f} | {speedup} |")
        sys.stdout.flush()




def reduction(backend="cpu", repeats=10, shape=(128, 128, 64, 64)):
    """Median time of the one-pass 4D reduction and of a NumPy sum of the same array."""
    import numpy as np

    from benchmarks.benchmark_stem import REGIONS
    from flowtie_fast import stem

    be = require(backend)
    rows = []
    for dtype in ("uint16", "float32"):
        data = be.asarray((np.random.default_rng(0).random(shape, dtype=np.float32) * 200)
                          .astype(dtype))
        det = stem.Detector(shape[2:], (0.05, 0.05), 300e3, (31.5, 31.5))
        med = interleaved({
            "reduce": lambda: (stem.reduce_4dstem(data, det, REGIONS, backend=be,
                                                  chunk_bytes=1 << 40), be.synchronize()),
            "sum": lambda: (data.sum(), be.synchronize())}, repeats)
        gbs = data.nbytes / 1e9
        rows.append(f"| {shape} {dtype} ({data.nbytes / 1e6:.0f} MB) | {med['reduce'] * 1e3:.1f} "
                    f"| {gbs / med['reduce']:.1f} | {med['sum'] * 1e3:.1f} | "
                    f"{gbs / med['sum']:.1f} | {med['sum'] / med['reduce']:.2f} |")
    print("| data | reduction (ms) | GB/s | NumPy sum (ms) | GB/s | fraction of sum bandwidth |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))


def flow_timing(backend="cpu", repeats=10, sizes=(256, 1024), precision="float32",
                model_name="default"):
    """Median time of method="flowtie" (network + Poisson integration + residual)
    and of the network alone, beside tie; and of a Plan's flowtie solve (no
    residual, caller-owned output)."""
    import numpy as np
    import torch

    from flowtie_fast.flow.infer import FlowEnsemble, FlowModel, load_model

    be = require(backend)
    print(f"flow model {model_name!r}, precision {precision}\n")
    print("| size | flowtie (ms) | Plan.solve flowtie (ms) | Plan.solve, no CUDA graph (ms) "
          "| network alone (ms) | tie (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        planes = triplet(size, backend).planes
        t = ft.FocalTriplet(*planes, dz=DZ, pixel_size=PIXEL, energy=ENERGY,
                            gradient=be.xp.zeros((2, size, size), np.float32))
        solver = ft.TIESolver((size, size), PIXEL, backend=be)
        model = load_model(model_name, "cuda" if be.is_gpu else "cpu", precision)
        x = torch.zeros(1, 6, size, size, device=model.device)
        plan = ft.Plan((size, size), PIXEL, DZ, ENERGY, method="flowtie", backend=be,
                       model=model)
        out = be.empty((size, size), np.float32)
        members = getattr(model, "models", [model])  # an ensemble's, or the one model
        eager = None
        if be.is_gpu:  # the same weights predicting without CUDA graphs
            plain = [FlowModel(m.path, m.device, precision, cuda_graphs=False) for m in members]
            eager = ft.Plan((size, size), PIXEL, DZ, ENERGY, method="flowtie", backend=be,
                            model=plain[0] if len(plain) == 1 else FlowEnsemble(plain))

        def net():  # the network alone, in the arithmetic the model's calls use
            tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            try:
                for m in members:
                    m.module(x.to(m.dtype))
            finally:
                torch.backends.cudnn.allow_tf32 = tf32

        runs = {"flowtie": lambda: (solver.solve(t, method="flowtie", model=model),
                                    be.synchronize()),
                "plan": lambda: (plan.solve(*planes, gradient=t.gradient, out=out),
                                 be.synchronize()),
                "net": lambda: (net(), be.synchronize()),
                "eager": lambda: eager is not None and (
                    eager.solve(*planes, gradient=t.gradient, out=out), be.synchronize()),
                "tie": lambda: (solver.solve(t, method="tie"), be.synchronize())}
        with torch.no_grad():
            med = {k: v * 1e3 for k, v in interleaved(runs, repeats).items()}
        no_graph = f"{med['eager']:.2f}" if eager is not None else "—"
        print(f"| {size}² | {med['flowtie']:.2f} | {med['plan']:.2f} | {no_graph} | "
              f"{med['net']:.2f} | {med['tie']:.2f} |")


if __name__ == "__main__":
    main()
