"""Alternative binned pass: curl and divergence at full sampling, then 2x2 block
means of them (consistent with the full-sampling discretisation) vs the shipped
2x2 block mean of the gradient, differenced at twice the step."""
import math, sys, numpy as np
from flowtie_fast import trust
from flowtie_fast.stem.rotation import rotate_com

def forms_alt(g, step, binned):
    sy, sx = step
    a, b = g[0].astype(np.float64), g[1].astype(np.float64)
    a0 = (a[2:, 1:-1] - a[:-2, 1:-1]) / (2 * sy); a1 = (a[1:-1, 2:] - a[1:-1, :-2]) / (2 * sx)
    b0 = (b[2:, 1:-1] - b[:-2, 1:-1]) / (2 * sy); b1 = (b[1:-1, 2:] - b[1:-1, :-2]) / (2 * sx)
    sums = []
    for c, d in ((b0 - a1, a0 + b1), (a0 - b1, b0 + a1)):
        if binned:  # (S + 1/S)/2 along both axes: what differencing at 2 steps applies to one term
            c = (c[2:] + c[:-2]) / 2; c = (c[:, 2:] + c[:, :-2]) / 2
            d = (d[2:] + d[:-2]) / 2; d = (d[:, 2:] + d[:, :-2]) / 2
            ny, nx = c.shape[0] // 2 * 2, c.shape[1] // 2 * 2
            c = c[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3))
            d = d[:ny, :nx].reshape(ny // 2, 2, nx // 2, 2).mean(axis=(1, 3))
        sums += [np.sum(c * c), np.sum(c * d), np.sum(d * d)]
    return np.array(sums).reshape(2, 3), c.size

def at_alt(g, step, binned):
    if min(g.shape[1:]) < 3: return None
    forms, n = forms_alt(g, step, binned)
    total = forms[0, 0] + forms[0, 2]
    if not total > 0 or not math.isfinite(total): return None
    (lo, hi, th), (flo, fhi, fth) = trust._least(*forms[0]), trust._least(*forms[1])
    flip = flo < lo
    least, top, th = (flo, fhi, fth) if flip else (lo, hi, th)
    excess = max(forms[0, 0] - least, 0.0)
    share = min(excess / (top - least), 1.0) if top > least else 0.0
    return {"curl_fraction": float(forms[0, 0] / total), "least_curl_fraction": float(least / total),
            "significance": float(excess / total * math.sqrt(n)),
            "misorientation": math.degrees(math.asin(math.sqrt(share))), "correction": (float(th), bool(flip))}

def orient_alt(g, step):
    cal = trust.calibration()
    found = [at_alt(g, step, False)]
    if min(g.shape[1:]) >= 10: found.append(at_alt(g, step, True))
    found = [f for f in found if f is not None]
    if not found: return {"testable": False, "suspect": False}
    best = max(found, key=lambda f: f["significance"])
    best["suspect"] = any(f["misorientation"] > cal["orientation_limit_degrees"] and f["significance"] > cal["orientation_significance"] for f in found)
    best["testable"] = True
    return best

if __name__ == "__main__":
    STEP = (0.25, 0.31)
    rng = np.random.default_rng(11)
    for name, fn in [("shipped", trust.gradient_orientation), ("alt", orient_alt)]:
        worst = {}
        for shape in [(8, 8), (10, 10), (12, 16), (16, 16), (24, 40), (32, 32), (64, 64), (128, 128)]:
            worst[shape] = max(fn(rng.standard_normal((2,) + shape), STEP)["significance"] for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
        print(name, "noise worst significance", {k: round(v, 2) for k, v in worst.items()})
    # detection power: smooth field turned 90 / transposed, under noise
    sys.path.insert(0, "tests")
    from test_orientation import _field
    for shape in [(16, 16), (32, 32), (64, 64)]:
        _, g = _field(n=shape)
        rms = np.sqrt(np.mean(g ** 2))
        for snr in [0.3, 0.5, 1.0, 2.0]:
            res = {}
            for name, fn in [("shipped", trust.gradient_orientation), ("alt", orient_alt)]:
                caught90 = caughtT = fa = 0
                for _ in range(100):
                    noise = rng.standard_normal(g.shape) * rms / snr
                    caught90 += fn(rotate_com(g, 90.0, False) + noise, STEP)["suspect"]
                    caughtT += fn(g[::-1] + noise, STEP)["suspect"]
                    fa += fn(g + noise, STEP)["suspect"]
                res[name] = (caught90, caughtT, fa)
            print(shape, "snr", snr, "caught 90/transposed/false alarm per 100:", res)
