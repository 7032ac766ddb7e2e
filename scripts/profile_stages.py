"""Where the time goes: the stages of the 1024² ``tie`` solve and of the flow
network, each timed on its own (median of interleaved runs), for
docs/performance.md.

    python scripts/profile_stages.py --size 1024 --repeats 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flowtie_fast as ft  # noqa: E402
from benchmarks.common import PIXEL, require, triplet  # noqa: E402
from scripts.ratios import interleaved  # noqa: E402


def tie_stages(size, backend, repeats):
    """The ``tie`` solve (spectral, periodic) split into the calls it makes."""
    be = require(backend)
    t = triplet(size, backend)
    s = ft.TIESolver((size, size), PIXEL, backend=be)
    P, k = s.poisson, be.kernels
    dt = s.dtype.type
    out = be.empty((size, size), s.dtype)
    grad = be.empty((2, size, size), s.dtype)
    planes = t.planes
    w = t.derivative_weights
    s.solve(t, method="tie", out=out, gradient_out=grad)
    mean = float(planes[1].mean())

    def sync(f):
        return lambda: (f(), be.synchronize())

    stages = {
        "whole solve (tie, out= given)": lambda: s.solve(t, method="tie", out=out,
                                                         gradient_out=grad),
        "focal derivative kernel": lambda: k.focal_derivative3(*planes, s._didz,
                                                               *(dt(x) for x in w)),
        "mean intensity": lambda: float(planes[1].mean()),
        "rFFT of dI/dz (1 forward)": lambda: P.scalar.forward(s._didz),
        "spectral gradient + inverse Laplacian kernel":
            lambda: P._spectral_gradient_to_vector(P.rt, poisson=True),
        "2 inverse rFFTs (gradient of psi)": lambda: P.vector.inverse(),
        "divide by max(I, floor) kernel": lambda: k.vector_scale(
            P.vector.real[0], P.vector.real[1], planes[1], dt(1e-3 * mean), 1),
        "2 forward rFFTs": lambda: P.vector.forward(),
        "spectral divergence + inverse Laplacian kernel":
            lambda: P._spectral_divergence_to_scalar(P.rt, poisson=True),
        "spectral gradient kernel (output gradient)":
            lambda: P._spectral_gradient_to_vector(1.0),
        "1 inverse rFFT (phase)": lambda: P.scalar.inverse(out),
        "2 inverse rFFTs (output gradient)": lambda: P.vector.inverse(grad),
    }
    med = interleaved({n: sync(f) for n, f in stages.items()}, repeats)
    whole = med.pop("whole solve (tie, out= given)")
    print(f"\n`tie` at {size}² float32 on {backend}: whole solve {whole * 1e3:.2f} ms, "
          f"stages sum {sum(med.values()) * 1e3:.2f} ms\n")
    print("| stage | ms | share |")
    print("| --- | ---: | ---: |")
    for n, v in med.items():
        print(f"| {n} | {v * 1e3:.3f} | {v / whole:.0%} |")
    ffts = sum(v for n, v in med.items() if "FFT" in n)
    print(f"\nFFTs {ffts * 1e3:.2f} ms ({ffts / whole:.0%} of the solve); kernels and "
          f"the rest {(whole - ffts) * 1e3:.2f} ms")


def flow_stages(size, repeats, backend="cpu"):
    """The network's time per operator type (torch profiler): CPU time on the
    CPU; on the GPU, device time per kernel type beside the host time that
    launches them (a network whose host time exceeds its device time is
    launch-bound)."""
    import torch

    from flowtie_fast.flow.infer import load_model

    gpu = backend == "gpu"
    model = load_model(None, "cuda" if gpu else "cpu")
    x = torch.zeros(1, model.in_channels, size, size, device=model.device)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if gpu:
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.no_grad():
        for _ in range(3):
            model.module(x)
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(repeats):
                model.module(x)
            if gpu:
                torch.cuda.synchronize()
    key = "self_device_time_total" if gpu else "self_cpu_time_total"
    rows = sorted(prof.key_averages(), key=lambda e: -getattr(e, key))
    total = sum(getattr(e, key) for e in rows)
    host = sum(e.self_cpu_time_total for e in rows)
    where = "device" if gpu else "CPU"
    print(f"\nflow network ({model.config.get('width')} wide, depth "
          f"{model.config.get('depth')}, stride {model.config.get('stride', 1)}) at "
          f"{size}² on {backend}: {total / repeats / 1e3:.2f} ms of {where} time per call "
          f"(profiled)" + (f", {host / repeats / 1e3:.2f} ms of host time" if gpu else "") + "\n")
    print(f"| operator | {where} ms per call | share |")
    print("| --- | ---: | ---: |")
    for e in rows[:8]:
        print(f"| {e.key} | {getattr(e, key) / repeats / 1e3:.3f} | "
              f"{getattr(e, key) / total:.0%} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--flow-size", type=int, default=256)
    p.add_argument("--backend", default="cpu")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args(argv)
    tie_stages(args.size, args.backend, args.repeats)
    flow_stages(args.flow_size, max(3, args.repeats // 5), args.backend)


if __name__ == "__main__":
    main()
