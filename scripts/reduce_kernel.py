"""The 4D reduction kernel alone on a CUDA device, against reading its data once.

    python -m scripts.reduce_kernel [--repeats N] [--variants NAME ...]

Times ``reduce_patterns`` (kernels/flowtie_kernels.cu) by CUDA events, without
the host-side work of ``stem.reduce_4dstem`` (weights, transfers, combining
the sums), for variants built with ``-D`` from its tuning knobs
(FT_REDUCE_UNROLL, FT_REDUCE_CHUNK, FT_REDUCE_MIN_BLOCKS), on patterns of a
128² and a 64² detector. The bound is a device-to-device copy of the same
bytes, halved (it reads and writes each byte once). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

# The default holds four blocks an SM (at most 64 registers a thread); "1
# block/SM" lets the compiler take the registers it wants (95 for uint16: two
# blocks an SM), the default before the first device run of this script.
VARIANTS = {
    "default": (),
    "1 block/SM": ("-DFT_REDUCE_MIN_BLOCKS=1",),
    "3 blocks/SM": ("-DFT_REDUCE_MIN_BLOCKS=3",),
    "unroll 2": ("-DFT_REDUCE_UNROLL=2",),
    "unroll 8": ("-DFT_REDUCE_UNROLL=8",),
    "tile 256": ("-DFT_REDUCE_CHUNK=256",),
    "tile 1024": ("-DFT_REDUCE_CHUNK=1024",),
}
# (patterns, pixels, dtype, weight rows): 128² scan of 128² and 64² patterns;
# 3 rows = bright field and centre of mass, 8 = the most one pass computes.
CASES = [(16384, 16384, np.uint16, 3), (16384, 16384, np.uint16, 8),
         (16384, 16384, np.float32, 3), (16384, 4096, np.uint16, 8)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args(argv)

    import cupy as cp
    from cupyx.profiler import benchmark

    import flowtie_fast as ft
    from flowtie_fast._cuda import _REDUCE_BLOCK, _REDUCE_LANES, kernel_dir, reduce_kernel

    if not ft.gpu_available():
        print("reduce_kernel: no CUDA device answers", file=sys.stderr)
        return 2
    directory = kernel_dir()
    path = directory / "flowtie_kernels.cu"
    code = f'#line 1 "{path}"\n' + path.read_text()
    name = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"{name}, median of {args.repeats} (CUDA events), kernel alone, full-detector rows\n")
    print("| variant | patterns x pixels, type, rows | ms | GB/s | x reading once | max error |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    modules = {v: cp.RawModule(code=code, options=("-std=c++14", f"-I{directory}") + VARIANTS[v])
               for v in args.variants}
    rng = np.random.default_rng(0)
    for npat, count, dtype, nq in CASES:
        data = cp.asarray((rng.random((npat, count), dtype=np.float32) * 200).astype(dtype))
        W = cp.asarray(rng.normal(size=(nq, count)).astype(np.float32))
        lo, hi = cp.zeros(nq, np.int64), cp.full(nq, count, np.int64)
        out = cp.empty((npat, nq), np.float32)
        want = data.astype(np.float32) @ W.T  # cuBLAS, to check each variant
        copy = cp.empty_like(data)
        t_copy = np.median(benchmark(
            lambda: copy.data.copy_from_device_async(data.data, data.nbytes),
            n_repeat=args.repeats, n_warmup=3).gpu_times) / 2
        blocks = -(-npat // (_REDUCE_BLOCK // _REDUCE_LANES))
        for variant in args.variants:
            fn = modules[variant].get_function(reduce_kernel(dtype, count, data.data.ptr))
            call = (data, np.int64(npat), np.int64(count), W, np.int32(nq), lo, hi, out)
            t = np.median(benchmark(lambda: fn((blocks,), (_REDUCE_BLOCK,), call),
                                    n_repeat=args.repeats, n_warmup=3).gpu_times)
            err = float(cp.abs(out - want).max() / cp.abs(want).max())
            label = f"{npat} x {count}, {np.dtype(dtype).name}, {nq}"
            print(f"| {variant} | {label} | {t * 1e3:.3f} | {data.nbytes / t / 1e9:.0f} | "
                  f"{t / t_copy:.1f} | {err:.1e} |", flush=True)
        print(f"| read once (copy / 2) | {npat} x {count}, {np.dtype(dtype).name} | "
              f"{t_copy * 1e3:.3f} | {data.nbytes / t_copy / 1e9:.0f} | 1.0 | |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
