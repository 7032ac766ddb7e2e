import sys, warnings, numpy as np
sys.path.insert(0, "tests")
import flowtie_fast as ft
from flowtie_fast.stem.rotation import rotate_com
from test_orientation import _field, STEP
phi, g = _field(n=(32, 32))
wrong = rotate_com(g, 90.0, False).astype(np.float32)
p32 = [np.ones(phi.shape, np.float32)] * 3
for method in ["icom", "tie", "tie-uniform", "gd", "flowtie"]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            plan = ft.Plan(phi.shape, method=method, dz=20.0, pixel_size=STEP, energy=300e3, backend="cpu")
            plan.solve(*p32, gradient=wrong)
            info = plan.info
            print(method, "suspect", (plan.gradient_orientation or {}).get("suspect"), "trust" in info,
                  "icom_dis", info.get("icom_disagreement", "-"), "fallback", info.get("fallback", "-"), "why", str(info.get("why", "-"))[:70])
        except Exception as e:
            print(method, "!!!", type(e).__name__, str(e)[:200])
    print("   warnings:", [f"{x.category.__name__}: {str(x.message)[:60]}" for x in w])
# triplet with extreme float32 values and a 90-degree turn
planes = [np.ones(phi.shape)] * 3
for scale in [3e38 / np.abs(wrong).max(), 1e-40]:
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            t = ft.FocalTriplet(*planes, gradient=(wrong * scale).astype(np.float32), dz=20.0, pixel_size=STEP, energy=300e3)
            print("triplet scale %g" % scale, t.gradient_orientation.get("suspect"), t.gradient_orientation.get("testable"))
        except Exception as e:
            print("triplet scale", scale, type(e).__name__, str(e)[:150])
    print("   warnings:", [f"{x.category.__name__} {x.filename.split('/')[-1]}:{x.lineno}: {str(x.message)[:50]}" for x in w])
