import sys, numpy as np
sys.path.insert(0, "hostile")
from binned_alt import orient_alt
from flowtie_fast import trust
rng = np.random.default_rng(5)
w = {"shipped": [], "alt": []}
for shape in [(8, 8), (16, 16), (32, 32), (64, 64), (128, 128), (13, 47)]:
    for _ in range(300):
        g = rng.standard_normal((2,) + shape)
        w["shipped"].append(trust.gradient_orientation(g, (0.25, 0.31))["significance"])
        w["alt"].append(orient_alt(g, (0.25, 0.31))["significance"])
for k, v in w.items():
    v = np.array(v); print(k, "draws", v.size, "max %.2f  >4.5: %d  >5: %d  p99 %.2f" % (v.max(), (v > 4.5).sum(), (v > 5).sum(), np.quantile(v, .99)))
