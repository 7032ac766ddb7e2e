"""The multi-GPU cluster on a machine with CUDA devices, in under two minutes.

Checks what a CPU machine cannot (tests/test_cluster.py runs the rest):

1. ``local_cluster("gpu")`` starts one worker per device (dask-cuda where
   installed, else worker processes pinned by CUDA_VISIBLE_DEVICES) and each
   worker computes on its own GPU (its Plan's device label, and the PCI bus
   id CuPy reports inside the worker);
2. ``reconstruct_many`` on the GPU workers equals ``Plan.solve_batch`` on this
   process's GPU bit for bit (tie and icom, 256², float32), in input order
   with uneven batches, and keeps one Plan per worker and shape;
3. a refusal on a GPU worker comes back as ``InputError`` with its message;
4. timings: a batch of tie-exact solves on 1 GPU worker against all of them,
   and the same in one process, with the machine and date.

Usage::

    python scripts/cluster_gpu_check.py            # exit status 1 if a check fails
    python scripts/cluster_gpu_check.py --json out.json

Needs CuPy and dask.distributed; prints what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time

import numpy as np

import flowtie_fast as ft
from flowtie_fast import cluster
from flowtie_fast.testing import smooth_triplets

N, PIXEL, DZ, E = 256, 0.2, 20.0, 300e3


def stack(b, n=N, seed=0):
    return smooth_triplets(b, n, seed)


def _bus_id():
    import cupy

    return cupy.cuda.Device().pci_bus_id


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    if not ft.gpu_available():
        print("no CUDA device answers here: nothing to check")
        return 0
    import cupy

    report = {"machine": platform.node(), "date": datetime.datetime.now().isoformat(timespec="minutes"),
              "devices": cupy.cuda.runtime.getDeviceCount(), "checks": {}}
    checks = report["checks"]
    data = stack(9)
    grads = np.random.default_rng(1).normal(0, 0.1, (9, 2, N, N)).astype(np.float32)
    want = {m: ft.Plan((N, N), PIXEL, DZ, E, m, backend="gpu").solve_batch(
        cupy.asarray(data), gradient=cupy.asarray(grads) if m == "icom" else None).get()
        for m in ("tie", "icom")}
    t0 = time.perf_counter()
    with cluster.local_cluster("gpu") as client:
        client.wait_for_workers(len(cluster.visible_devices("gpu")))
        report["start_s"] = time.perf_counter() - t0
        report["cluster"] = type(client.cluster).__name__
        buses = client.run(_bus_id)
        checks["one GPU per worker"] = len(set(buses.values())) == len(buses)
        for m in ("tie", "icom"):
            got = cluster.reconstruct_many(data, m, pixel_size=PIXEL, dz=DZ, energy=E,
                                           gradient=grads if m == "icom" else None,
                                           batch_size=2, backend="gpu")
            checks[f"{m} equals Plan on the GPU bit for bit"] = bool(np.array_equal(got, want[m]))
            report[f"{m}_max_abs_diff"] = float(np.abs(got - want[m]).max())
        plans = cluster.cached_plans(client)
        report["plans"] = plans
        devices = [p["device"] for v in plans.values() for p in v if p["method"] == "tie"]
        checks["one Plan per worker and shape, on its own device"] = (
            len(devices) == len(set(devices)) >= 1 and all(d.startswith("gpu:")
                                                           for d in devices))
        bad = data.copy()
        bad[4, 2, 0, 0] = np.inf
        try:
            import dask.array as da

            cluster.reconstruct_many(da.from_array(bad, chunks=(2, 3, N, N)), pixel_size=PIXEL,
                                     dz=DZ, energy=E, backend="gpu")
            checks["worker refusal raised as InputError"] = False
        except ft.InputError as exc:
            checks["worker refusal raised as InputError"] = \
                str(exc) == "stack[4]: plus: contains NaN or Inf"
            report["refusal"] = str(exc)
        # timings: tie-exact, 32 triplets of 256²
        many = stack(32, seed=2)
        cluster.reconstruct_many(many[:8], "tie-exact", pixel_size=PIXEL, dz=DZ, energy=E,
                                 batch_size=4, backend="gpu")  # every worker's Plan made
        t0 = time.perf_counter()
        cluster.reconstruct_many(many, "tie-exact", pixel_size=PIXEL, dz=DZ, energy=E,
                                 batch_size=4, backend="gpu")
        report["tie-exact 32x256² on every GPU (s)"] = time.perf_counter() - t0
    with cluster.local_cluster([cluster.visible_devices("gpu")[0]]) as client:
        cluster.reconstruct_many(many[:8], "tie-exact", pixel_size=PIXEL, dz=DZ, energy=E,
                                 batch_size=4, backend="gpu")
        t0 = time.perf_counter()
        cluster.reconstruct_many(many, "tie-exact", pixel_size=PIXEL, dz=DZ, energy=E,
                                 batch_size=4, backend="gpu")
        report["tie-exact 32x256² on 1 worker (s)"] = time.perf_counter() - t0
    plan = ft.Plan((N, N), PIXEL, DZ, E, "tie-exact", backend="gpu")
    gpu = cupy.asarray(many)
    plan.solve_batch(gpu[:2])
    cupy.cuda.get_current_stream().synchronize()
    t0 = time.perf_counter()
    plan.solve_batch(gpu)
    cupy.cuda.get_current_stream().synchronize()
    report["tie-exact 32x256² in one process, data on the GPU (s)"] = time.perf_counter() - t0
    print(json.dumps(report, indent=1, default=str))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    failed = [k for k, ok in checks.items() if not ok]
    print("FAILED: " + "; ".join(failed) if failed else "all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
