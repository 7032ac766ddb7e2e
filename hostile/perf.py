import time, numpy as np
from flowtie_fast import trust
rng = np.random.default_rng(0)
for n in (256, 512, 1024):
    g = rng.standard_normal((2, n, n)).astype(np.float32)
    trust.gradient_orientation(g, (0.2, 0.2))
    ts = []
    for _ in range(5):
        t = time.perf_counter(); trust.gradient_orientation(g, (0.2, 0.2)); ts.append(time.perf_counter() - t)
    print(n, "best %.1f ms median %.1f ms" % (1e3 * min(ts), 1e3 * np.median(ts)))
