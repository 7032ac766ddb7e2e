"""A CPU ``tie`` Plan in a shared process on a busy host.

Each measurement is a fresh process (the import order is a per-process fact):
it imports PyTorch first (``torch``), or flowtie_fast first and PyTorch after
the plan is built (``flowtie``), or flowtie_fast alone (``alone``), or first
loads another OpenMP runtime into the global symbol scope the way PyTorch
does (``gomp``: the system libgomp, ``RTLD_GLOBAL``); then it builds a
``tie`` Plan on the CPU, warms it up and times ``--solves`` calls of
``plan.solve(minus, zero, plus, out=phase)``.

``--busy K`` starts K normal-priority busy loops (``while True: pass``) for
the whole run, as other programs on an acquisition PC. The orders are
interleaved (the starting order rotates each round) so that all of them see
the same machine state. The table gives, per order, every process's median,
the worst (largest) per-process median, the p90 and max of all solves, and
the ratio of worst medians against the reference order (``flowtie``).

    python scripts/busy_host.py --busy 2 --processes 3           # torch vs flowtie first
    python scripts/busy_host.py --busy 0 --orders torch flowtie alone gomp
    python scripts/busy_host.py --diagnose                       # runtimes, layers, bindings

``--env KEY=VALUE`` sets a variable in the measured processes (e.g. to try
``GOMP_SPINCOUNT``); ``--no-guard`` measures without flowtie_fast's OpenMP
guard (flowtie_fast._threads), where the installed library has one, by
setting FLOWTIE_OMP_GUARD=0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDERS = ("torch", "flowtie", "alone", "gomp")
REFERENCE = "flowtie"
LIBS = re.compile(r"(libgomp|libiomp|libomp|libtbb|fftw3_omp)[^/]*$")


# --------------------------------------------------------------------------- worker


def _system_libgomp() -> str:
    import ctypes.util

    return ctypes.util.find_library("gomp") or "libgomp.so.1"


def _import_first(order: str) -> None:
    if order == "torch":
        import torch  # noqa: F401
    elif order == "gomp":
        import ctypes

        ctypes.CDLL(_system_libgomp(), mode=ctypes.RTLD_GLOBAL).omp_get_max_threads()


def _loaded_runtimes() -> list:
    found = set()
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if LIBS.search(path):
                found.add(path.replace(str(Path(sys.prefix)), "$VENV"))
    return sorted(found)


def worker(args) -> None:
    order = args.worker
    t0 = time.perf_counter()
    _import_first(order)
    sys.path.insert(0, args.src)
    import numpy as np

    import flowtie_fast as ft

    t_import = time.perf_counter() - t0
    n = args.size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:n, :n] / n
    base = 1.0 + 0.2 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y)
    planes = [(base + s * 0.05 * np.cos(2 * np.pi * 5 * (x + y)) + 0.01 * rng.random((n, n)))
              .astype(np.float32) for s in (-1, 0, 1)]
    kw = {"wisdom": args.wisdom} if args.wisdom else {}
    plan = ft.Plan((n, n), pixel_size=0.2, dz=20.0, energy=300e3, method="tie",
                   backend="cpu", threads=args.threads, **kw)
    if order == "flowtie":
        import torch  # noqa: F401  the same libraries, loaded after flowtie_fast
    out = np.empty((n, n), np.float32)
    for _ in range(args.warmup):
        plan.solve(*planes, out=out)
    times = []
    stop = time.perf_counter() + args.budget
    for i in range(args.solves):
        start = time.perf_counter()
        plan.solve(*planes, out=out)
        times.append(time.perf_counter() - start)
        if i >= 30 and start > stop:  # a stalled process: enough solves for its median
            break
    import numba

    info = {"order": order, "times": times, "import_s": t_import, "plan_s": plan.timings,
            "layer": numba.threading_layer(), "numba_threads": numba.get_num_threads(),
            "fftw_threads": getattr(plan.solver.backend, "fft_threads",
                                    plan.solver.backend.threads),
            "runtimes": _loaded_runtimes(), "tasks": len(os.listdir("/proc/self/task")),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "kernels": type(plan.solver.backend.kernels).__name__}
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    try:
        from flowtie_fast import _threads

        info["guard"] = _threads.describe()
    except ImportError:
        info["guard"] = None
    print("RESULT " + json.dumps(info))


# --------------------------------------------------------------------------- driver


def run_one(order, args, env, src=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", order, "--size", str(args.size),
           "--solves", str(args.solves), "--warmup", str(args.warmup),
           "--budget", str(args.budget), "--src", src or args.src]
    if args.wisdom:
        cmd += ["--wisdom", args.wisdom]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=args.timeout)
    lines = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not lines:
        raise RuntimeError(f"{order}: rc={r.returncode}\n{r.stderr[-2000:]}")
    return json.loads(lines[-1][7:])


def start_busy(k) -> list:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]


def stop_busy(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", out)[1].strip()
    except (OSError, TypeError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return f"{model}, {cores} cores, load average {load} before the run"


def measure(args, env) -> dict:
    """{row: [per-process result]}, a row per order (and per variant, as
    ``order@variant``), all interleaved with a rotating start."""
    variants = dict(v.split("=", 1) for v in (args.variants or [])) or {"": args.src}
    rows = []
    for v, spec in variants.items():
        src, *extra = spec.split(";")  # DIR;KEY=VALUE;...: variables of this variant
        row_env = {**env, **dict(kv.split("=", 1) for kv in extra)}
        orders = row_env.pop("ORDERS", None)  # ORDERS=torch,flowtie: this variant's orders
        orders = orders.split(",") if orders else args.orders
        rows += [(f"{o}@{v}" if v else o, o, src, row_env) for o in orders]
    results = {r[0]: [] for r in rows}
    busy = start_busy(args.busy)
    try:
        time.sleep(0.5 if busy else 0)
        for rnd in range(args.processes):
            k = rnd % len(rows)
            for name, order, src, row_env in rows[k:] + rows[:k]:
                results[name].append(run_one(order, args, row_env, src))
    finally:
        stop_busy(busy)
    return results


def ms(x) -> str:
    return f"{1e3 * x:.2f}" if x < 0.1 else f"{1e3 * x:.0f}"


def summary(results) -> dict:
    out = {}
    for order, runs in results.items():
        medians = [statistics.median(r["times"]) for r in runs]
        every = sorted(t for r in runs for t in r["times"])
        out[order] = {"medians": medians, "worst": max(medians), "best": min(medians),
                      "p90": every[int(0.9 * (len(every) - 1))], "max": every[-1]}
    return out


def table(results, args) -> str:
    s = summary(results)
    rows = ["| first import | per-process medians (ms) | worst median | p90 | max | "
            "worst / flowtie-first |", "|---|---|---|---|---|---|"]
    for order, v in s.items():
        variant = order.partition("@")[2]
        ref = s.get(f"{REFERENCE}@{variant}" if variant else REFERENCE)
        ratio = f"{v['worst'] / ref['worst']:.2f}" if ref else "-"
        rows.append(f"| {order} | {', '.join(ms(m) for m in v['medians'])} | {ms(v['worst'])} | "
                    f"{ms(v['p90'])} | {ms(v['max'])} | {ratio} |")
    first = next(iter(results.values()))[0]
    layers = sorted({f"{name}: {r['layer']}, FFTW threads {r['fftw_threads']}"
                     for name, runs in results.items() for r in runs})
    head = (f"`tie` Plan {args.size}², CPU, up to {args.solves} solves per process, "
            f"{args.processes} processes per order, {args.busy} busy neighbour(s); "
            f"{machine()}; {datetime.datetime.now():%Y-%m-%d %H:%M}; "
            f"{first['numba_threads']} Numba threads; env {args.env or '-'}"
            + (f"; variants {' '.join(args.variants)}" if args.variants else ""))
    return head + "\n\n" + "\n".join(rows) + "\n\nLayers: " + "; ".join(layers)


def worst_ratio(size=256, solves=100, processes=3, busy=2, env=None, orders=("torch", "flowtie"),
                threads=None, budget=5.0, src=None) -> float:
    """Worst-of-processes median, torch first over flowtie_fast first (for asv)."""
    ns = argparse.Namespace(size=size, solves=solves, warmup=5, processes=processes, busy=busy,
                            orders=list(orders), threads=threads, timeout=300, env=None,
                            src=src or str(ROOT), budget=budget, variants=None,
                            wisdom=os.path.join(tempfile.gettempdir(),
                                                "flowtie_busy_host.wisdom"))
    s = summary(measure(ns, {**os.environ, **(env or {})}))
    return s[orders[0]]["worst"] / s[orders[1]]["worst"]


# --------------------------------------------------------------------------- diagnosis


def diagnose(args, env) -> str:
    """Per order: runtimes mapped, Numba layer and threads, and which OpenMP
    runtime Numba's omppool and FFTW's OpenMP wrappers bind GOMP_parallel to
    (the dynamic linker's own record, LD_DEBUG=bindings)."""
    rows = ["| first import | layer | numba / fftw / torch threads | tasks | runtimes mapped | "
            "omppool -> | libfftw3_omp -> | guard |", "|---|---|---|---|---|---|---|---|"]
    for order in args.orders:
        with tempfile.TemporaryDirectory() as tmp:
            e = {**env, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": os.path.join(tmp, "ld")}
            ns = argparse.Namespace(**{**vars(args), "solves": 3})
            info = run_one(order, ns, e)
            text = "".join(Path(tmp, f).read_text(errors="replace") for f in os.listdir(tmp))
        bound = {}
        for m in re.finditer(r"binding file (\S+) \[\d+\] to (\S+) \[\d+\]: normal symbol "
                             r"`GOMP_parallel'", text):
            src = "omppool" if "omppool" in m[1] else "fftw" if "fftw3_omp" in m[1] else None
            if src:
                bound[src] = m[2].replace(str(Path(sys.prefix)), "$VENV")
        rows.append(f"| {order} | {info['layer']} | {info['numba_threads']} / "
                    f"{info['fftw_threads']} / {info.get('torch_threads', '-')} | "
                    f"{info['tasks']} | "
                    f"{'<br>'.join(info['runtimes'])} | {bound.get('omppool', '-')} | "
                    f"{bound.get('fftw', '-')} | {info.get('guard') or '-'} |")
    return "\n".join(rows)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--solves", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--processes", type=int, default=3, help="processes per order")
    p.add_argument("--busy", type=int, default=2, help="busy neighbour processes")
    p.add_argument("--orders", nargs="+", choices=ORDERS, default=["torch", "flowtie"])
    p.add_argument("--threads", type=int, default=None, help="Plan threads (default: all)")
    p.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-guard", action="store_true",
                   help="FLOWTIE_OMP_GUARD=0 in the measured processes")
    p.add_argument("--budget", type=float, default=8.0,
                   help="seconds of timed solves per process (at least 30 solves)")
    p.add_argument("--variants", nargs="*", metavar="NAME=DIR",
                   help="measure each order with the flowtie_fast package of each DIR "
                        "(e.g. before=/tmp/a after=/tmp/b), interleaved; 'DIR;KEY=VALUE;...' "
                        "also sets variables for that variant, 'ORDERS=torch,flowtie' its "
                        "orders")
    p.add_argument("--wisdom", default=os.path.join(tempfile.gettempdir(),
                                                    "flowtie_busy_host.wisdom"),
                   help="FFTW wisdom shared by the measured processes (planning with "
                        "FFTW_MEASURE on a busy host takes seconds; '' to plan each time)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--src", default=str(ROOT),
                   help="folder holding the flowtie_fast package to measure (default: this "
                        "checkout)")
    p.add_argument("--diagnose", action="store_true")
    p.add_argument("--json", help="write the raw per-process results here")
    p.add_argument("--worker", choices=ORDERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    env = dict(os.environ)
    env.update(kv.split("=", 1) for kv in args.env)
    if args.no_guard:
        env["FLOWTIE_OMP_GUARD"] = "0"
        args.env = args.env + ["FLOWTIE_OMP_GUARD=0"]
    if args.diagnose:
        print(diagnose(args, env))
        return
    results = measure(args, env)
    print(table(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
