"""The LiberTEM reduction UDF on the CuPy backend against the NumPy backend, on a CUDA device.

    python -m scripts.live_gpu_check [--scan N] [--detector K] [--partitions P]
                                     [--repeats R] [--no-dask]

Checks that :class:`flowtie_fast.stem.live.ReductionUDF` runs on LiberTEM's
CuPy backend where the executor has a CUDA worker (every partition reduced on
the device, into result buffers on the device) and gives the NumPy backend's
sums to float32 rounding (relative 1e-5 of the largest sum), then times both
backends on a synthetic uint16 LiberTEM memory dataset (N² scan of K²
patterns) with the inline executor (``LIBERTEM_USE_CUDA`` unset: a CPU worker
with all cores; ``=0``: device 0). For scale it also times the host-to-device
copy of the dataset and ``reduce_4dstem`` of the dataset already on the
device (the kernel with nothing to copy). With dask (``--no-dask`` skips it),
a cluster of one CPU and one GPU worker runs the CuPy backend in a worker
process on a smaller dataset. Prints a Markdown table; exit status 1 where a
check fails, 2 where no CUDA device answers. Defaults (128² scan of 128²
patterns, 512 MiB): under a minute on one device, dask included.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

E, K_SAMPLING = 300e3, 0.05  # eV, 1/Å per detector pixel
REGIONS = {"bf": (0.0, 10.0), "abf": (10.0, 20.0), "df": (20.0, np.inf), "whole": (0.0, np.inf)}


def _use_device(on: bool) -> None:
    """Where the inline executor's next run goes: CUDA device 0 or the CPU."""
    os.environ.pop("LIBERTEM_USE_CPU", None)
    if on:
        os.environ["LIBERTEM_USE_CUDA"] = "0"
    else:
        os.environ.pop("LIBERTEM_USE_CUDA", None)


def _timed(fn, repeats):
    """The result of ``fn()`` after one warm-up call, and the median seconds of
    ``repeats`` more."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=int, default=128, help="scan positions a side")
    parser.add_argument("--detector", type=int, default=128, help="detector pixels a side")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dask", action="store_true", help="skip the dask cluster check")
    args = parser.parse_args(argv)

    import flowtie_fast as ft

    if not ft.gpu_available():
        print("live_gpu_check: no CUDA device answers (CuPy missing, no driver or no device)",
              file=sys.stderr)
        return 2
    import cupy
    from libertem.api import Context

    from flowtie_fast import stem
    from flowtie_fast.stem.detector import detector_weights
    from flowtie_fast.stem.live import ReductionUDF

    class Probe(ReductionUDF):
        """ReductionUDF with a second result: 1 at each scan position reduced
        on the CuPy backend (a result, so that it comes back from dask workers)."""

        def get_result_buffers(self):
            out = super().get_result_buffers()
            out["cupy"] = self.buffer(kind="nav", dtype=np.int8, where="device")
            return out

        def process_partition(self, partition):
            super().process_partition(partition)
            self.results.cupy[:] = int(self.meta.array_backend == self.BACKEND_CUPY)

    def run(ctx, ds, W, backends):
        r = ctx.run_udf(dataset=ds, udf=Probe(W), backends=backends)
        return np.asarray(r["sums"].data), np.asarray(r["cupy"].data)

    failed = []

    def check(name, got, want, on_device):
        scale = float(np.abs(want).max()) or 1.0
        err = float(np.abs(got - want).max()) / scale
        if not bool(np.all(on_device)):
            failed.append(f"{name}: {int(np.size(on_device) - np.count_nonzero(on_device))} "
                          "scan positions were not reduced on the CuPy backend")
        if not err <= 1e-5:
            failed.append(f"{name}: sums differ from the NumPy backend's by {err:.2e} of the "
                          "largest (limit 1e-5)")
        return err

    n, k = args.scan, args.detector
    rng = np.random.default_rng(0)
    data = rng.integers(0, 300, size=(n, n, k, k), dtype=np.uint16)
    gbytes = data.nbytes / 1e9
    det = stem.Detector((k, k), (K_SAMPLING, K_SAMPLING), E, (k / 2, k / 2))
    W, _ = detector_weights(det, REGIONS)
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{name}, {os.cpu_count()} CPUs; {n}² scan of {k}² uint16 patterns "
          f"({data.nbytes / 2**20:.0f} MiB), {W.shape[0]} weight rows, {args.partitions} "
          f"partitions; median of {args.repeats} after a warm-up\n")
    print("| path | s | GB/s | max difference (of the largest sum) |")
    print("| --- | ---: | ---: | ---: |")

    with Context.make_with("inline") as ctx:
        ds = ctx.load("memory", data=data, sig_dims=2, num_partitions=args.partitions)
        _use_device(False)
        (want, _), t = _timed(lambda: run(ctx, ds, W, ("numpy",)), args.repeats)
        print(f"| LiberTEM inline, NumPy backend (CPU) | {t:.3f} | {gbytes / t:.1f} | |",
              flush=True)
        _use_device(True)
        try:
            (got, on_device), t = _timed(lambda: run(ctx, ds, W, ("cupy",)), args.repeats)
        finally:
            _use_device(False)
        err = check("inline, CuPy backend", got, want, on_device)
        print(f"| LiberTEM inline, CuPy backend (device 0) | {t:.3f} | {gbytes / t:.1f} | "
              f"{err:.1e} |", flush=True)

    def to_device():
        d = cupy.asarray(data)
        cupy.cuda.Device().synchronize()
        return d

    dev, t = _timed(to_device, args.repeats)
    print(f"| host to device copy (cupy.asarray) | {t:.3f} | {gbytes / t:.1f} | |", flush=True)

    def reduce_on_device(frames):
        r = stem.reduce_4dstem(frames, det, REGIONS, backend="gpu")
        cupy.cuda.Device().synchronize()
        return r

    _, t = _timed(lambda: reduce_on_device(dev), args.repeats)
    print(f"| reduce_4dstem of the device array | {t:.3f} | {gbytes / t:.1f} | |", flush=True)
    dev = None  # the device copy freed before the dask run

    if not args.no_dask:
        small = data[: max(2, n // 2), : max(2, n // 2)].copy()
        _use_device(False)
        with Context.make_with("inline") as ctx:
            want, _ = run(ctx, ctx.load("memory", data=small, sig_dims=2, num_partitions=4), W,
                          ("numpy",))
        t0 = time.perf_counter()
        with Context.make_with("dask", cpus=1, gpus=1) as ctx:
            ds = ctx.load("memory", data=small, sig_dims=2, num_partitions=4)
            got, on_device = run(ctx, ds, W, ("cupy",))
        err = check("dask GPU worker, CuPy backend", got, want, on_device)
        print(f"| dask, one GPU worker, CuPy backend ({small.shape[0]}² scan, with start-up) | "
              f"{time.perf_counter() - t0:.1f} | | {err:.1e} |", flush=True)

    print()
    for line in failed:
        print("FAILED", line)
    print("live_gpu_check:", "failed" if failed else "ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
