"""First-call costs of a Plan in fresh processes: cold (empty Numba cache, no
FFTW wisdom) and warm (cache and wisdom file from the cold run).

    python scripts/first_call.py --size 256 --methods tie flowtie

Each run is a new Python process, so imports, Numba compilation or cache
loading, FFTW planning and model loading are all counted; prints a Markdown
table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
start = time.perf_counter()
import flowtie_fast as ft
imported = time.perf_counter() - start
size, method, wisdom = int(sys.argv[1]), sys.argv[2], sys.argv[3]
plan = ft.Plan((size, size), 0.2, 20.0, 300e3, method=method, backend=sys.argv[4],
               wisdom=wisdom)
print(json.dumps({"import": imported, **plan.timings}))
"""


def run(size, method, backend, cache, wisdom):
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    out = subprocess.run([sys.executable, "-c", CHILD, str(size), method, wisdom, backend],
                         env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["tie", "flowtie"])
    p.add_argument("--backend", default="cpu")
    args = p.parse_args(argv)
    print("| method | run | import (ms) | backend (ms) | setup: FFT plans (ms) | "
          "first solve (ms) | steady solve (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for method in args.methods:
        with tempfile.TemporaryDirectory() as tmp:
            cache, wisdom = str(Path(tmp) / "numba"), str(Path(tmp) / "fftw.wisdom")
            for label in ("cold: empty Numba cache, no wisdom", "warm: cache and wisdom kept"):
                t = run(args.size, method, args.backend, cache, wisdom)
                print(f"| {method} {args.size}² | {label} | {t['import'] * 1e3:.0f} | "
                      f"{t['backend'] * 1e3:.0f} | {t['setup'] * 1e3:.0f} | "
                      f"{t['first_solve'] * 1e3:.0f} | {t['solve'] * 1e3:.1f} |", flush=True)


if __name__ == "__main__":
    main()
