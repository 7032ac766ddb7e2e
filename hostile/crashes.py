"""Odd inputs through gradient_orientation, FocalTriplet, Plan.solve, reconstruct."""
import numpy as np, warnings, traceback, tempfile, os
import flowtie_fast as ft
from flowtie_fast import trust
from flowtie_fast.errors import InputError
warnings.simplefilter("ignore")
STEP = (0.25, 0.31)
n = (32, 32)
y = np.arange(n[0])[:, None] * STEP[0]; x = np.arange(n[1])[None, :] * STEP[1]
phi = np.sin(2 * np.pi * y / 8) * np.cos(2 * np.pi * x / 9.92)
g = np.stack(np.gradient(phi, *STEP))

def direct(name, arr, step=STEP):
    try:
        c = trust.gradient_orientation(arr, step)
        print(f"{name:40s} -> testable={c['testable']} suspect={c['suspect']} "
              + (f"curl={c['curl_fraction']:.3g} sig={c['significance']:.3g} mis={c['misorientation']:.3g}" if c['testable'] else ""))
    except Exception as e:
        print(f"{name:40s} -> {type(e).__name__}: {e}"[:250])

print("== direct gradient_orientation")
direct("right", g)
direct("swapped", g[::-1])
for s in [1e300, 1e200, 1e160, 1e-150, 1e-160, 1e-170, 1e-300, 1e-310]:
    direct(f"right*{s:g}", g * s); direct(f"swapped*{s:g}", g[::-1] * s)
direct("right + 1e300 offset", g + 1e300)
direct("right, ptp 1e10 (big spike)", np.where(np.arange(32)[None, None, :] == 5, g * 1e10, g))
direct("nan one pixel", np.where(np.isnan(g) | (np.indices(g.shape)[1] == 3), np.nan, g))
direct("inf one pixel", np.where(np.indices(g.shape)[2] == 3, np.inf, g))
direct("constant", np.full((2, 32, 32), 3.0))
direct("one row", g[:, :1])
direct("shape (2,0,0)", np.zeros((2, 0, 0)))
direct("shape (2,3,3)", g[:, :3, :3])
direct("shape (3,32,32)", np.concatenate([g, g[:1]]))
direct("shape (2,32)", g[:, 0])
direct("shape (2,4,32,32)", np.stack([g] * 4, axis=1))
direct("fortran", np.asfortranarray(g))
direct("non-contig view", np.stack(np.gradient(np.tile(phi, (2, 2)), *STEP))[:, ::2, ::2])
ro = g.copy(); ro.flags.writeable = False; direct("read-only", ro)
fn = os.path.join(tempfile.mkdtemp(), "m.npy"); np.save(fn, g); direct("memmap", np.load(fn, mmap_mode="r"))
direct("object dtype", g.astype(object))
direct("int", (g * 100).astype(np.int32))
direct("int8 swapped", (g[::-1] * 20).astype(np.int8))
direct("uint8", (g * 20 + 100).astype(np.uint8))
direct("bool", g > 0)
direct("complex", g.astype(complex))
direct("list", g.tolist())
direct("float16", g.astype(np.float16))
direct("pixel_size scalar", g, 0.25)
direct("pixel_size neg", g, (-0.25, 0.31))
direct("pixel_size zero", g, (0.0, 0.31))
direct("pixel_size 3-tuple", g, (0.25, 0.31, 1))
direct("pixel_size nan", g, (np.nan, 0.31))

print("== FocalTriplet(gradient=...)")
planes = [np.ones(n)] * 3
kw = dict(dz=20.0, pixel_size=STEP, energy=300e3)
def trip(name, arr, **k):
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t = ft.FocalTriplet(*planes, gradient=arr, **{**kw, **k})
        o = t.gradient_orientation
        print(f"{name:40s} -> suspect={o.get('suspect')} testable={o.get('testable')} warns={[type(x.message).__name__ for x in w]}")
        return t
    except InputError as e:
        print(f"{name:40s} -> InputError: {str(e)[:120]}")
    except Exception as e:
        print(f"{name:40s} -> !!! {type(e).__name__}: {e}"[:300]); traceback.print_exc()
trip("right", g); trip("swapped", g[::-1]); trip("float16", g.astype(np.float16))
trip("int", (g * 100).astype(np.int64)); trip("object", g.astype(object)); trip("fortran", np.asfortranarray(g))
trip("1e30", g * 1e30); trip("1e-30", g * 1e-30); trip("1e-45 f32", (g * 1e-44).astype(np.float32))
trip("3e38 f32 swapped", (g[::-1] / abs(g).max() * 3e38).astype(np.float32))
trip("nan", np.where(np.indices(g.shape)[1] == 3, np.nan, g)); trip("memmap", np.load(fn, mmap_mode="r"))
trip("list", g.tolist()); trip("constant", np.full((2,) + n, 1.0))

print("== Plan.solve(gradient=...)")
for method in ["icom", "tie", "flowtie"]:
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            plan = ft.Plan(n, method=method, dz=20.0, pixel_size=STEP, energy=300e3, backend="cpu")
            p32 = [np.ones(n, np.float32)] * 3
            for name, arr in [("f32 huge", (g[::-1] * 1e37).astype(np.float32)), ("swapped f32", g[::-1].astype(np.float32))]:
                try:
                    plan.solve(*p32, gradient=arr)
                    print(method, name, "->", (plan.gradient_orientation or {}).get("suspect"), plan.info.get("trust", "")[:60], plan.info.get("fallback"))
                except InputError as e:
                    print(method, name, "-> InputError", str(e)[:100])
    except Exception as e:
        print(method, "!!!", type(e).__name__, e); traceback.print_exc()
