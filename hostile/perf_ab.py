import time, subprocess, numpy as np, importlib.util, sys
from flowtie_fast import trust
src = subprocess.run(["git", "show", "HEAD:flowtie_fast/trust.py"], capture_output=True, text=True).stdout
spec = importlib.util.spec_from_loader("flowtie_fast.trust_old", loader=None)
old = importlib.util.module_from_spec(spec); old.__package__ = "flowtie_fast"; exec(src, old.__dict__)
rng = np.random.default_rng(0)
for n in (512, 1024):
    g = rng.standard_normal((2, n, n)).astype(np.float32)
    t = {"old": [], "new": []}
    for _ in range(6):
        for k, f in (("old", old.gradient_orientation), ("new", trust.gradient_orientation)):
            s = time.perf_counter(); f(g, (0.2, 0.2)); t[k].append(time.perf_counter() - s)
    print(n, {k: "best %.1f ms" % (1e3 * min(v)) for k, v in t.items()})
    a, b = old.gradient_orientation(g, (0.2, 0.2)), trust.gradient_orientation(g, (0.2, 0.2))
    print("   same result:", all(np.allclose(a[k], b[k], rtol=1e-9) for k in ("curl_fraction", "significance", "misorientation")))
