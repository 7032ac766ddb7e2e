"""Does the rotation/flip named by orientation_warning for from_4dstem make the
gradient curl-free when passed back?"""
import re, sys, warnings
import numpy as np
sys.path.insert(0, "tests")
import flowtie_fast as ft
from flowtie_fast import stem
from test_stem import gaussian_patterns, _phase_and_gradient, K_SAMPLING, E

phi, grad = _phase_and_gradient()
kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0), backend="cpu")

def run(data, rotation, flip):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t = ft.FocalTriplet.from_4dstem(data, data, data, rotation=rotation, flip=flip, **kw)
    msgs = [str(x.message) for x in w if issubclass(x.category, ft.TrustWarning)]
    return t, msgs

bad = 0; n = 0
for true_r, true_f in [(0.0, False), (37.0, False), (123.0, True), (250.0, False), (301.0, True)]:
    back = stem.rotate_com(grad, -true_r, False)
    com = back[::-1] if true_f else back
    data = gaussian_patterns(com / (2 * np.pi) / K_SAMPLING)
    for r, f in [(true_r, true_f), (0.0, False), (0.0, True), (90.0, False), (-90.0, True), (200.0, False), (45.0, True), ((true_r + 180 + 360) % 720 - 360, true_f), (true_r + 15, true_f)]:
        n += 1
        t, msgs = run(data, r, f)
        o = t.gradient_orientation
        wrong_by = None
        if not msgs:
            print(f"true=({true_r},{true_f}) given=({r},{f}): no warning  mis={o['misorientation']:.1f} sig={o['significance']:.1f}")
            continue
        m = re.search(r"rotation=(-?\d+) \(or (-?\d+)\) with flip=(True|False)", msgs[0])
        R, R2, F = int(m.group(1)), int(m.group(2)), m.group(3) == "True"
        t2, msgs2 = run(data, float(R), F)
        t3, msgs3 = run(data, float(R2), F)
        ok = (F == true_f) and min(abs((R - true_r + 180) % 360 - 180), abs((R2 - true_r + 180) % 360 - 180)) < 2
        rec = ft.reconstruct(t2, method="icom", backend="cpu", dtype="float64")
        rec3 = ft.reconstruct(t3, method="icom", backend="cpu", dtype="float64")
        err = min(np.sqrt(np.mean((rec.phase - s * phi) ** 2)) / phi.std() for s in (1, -1))
        err3 = min(np.sqrt(np.mean((rec3.phase - s * phi) ** 2)) / phi.std() for s in (1, -1))
        status = "OK " if ok and not msgs2 and not msgs3 and err < 0.05 and err3 < 0.05 else "BAD"
        bad += status == "BAD"
        print(f"{status} true=({true_r},{true_f}) given=({r},{f}) -> suggests {R}/{R2} flip={F}; rerun warns={bool(msgs2)},{bool(msgs3)} icom err={err:.3f},{err3:.3f}")
print("bad", bad, "of", n)
print("sample message:", msgs[0] if msgs else "")
