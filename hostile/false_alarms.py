"""Correctly oriented gradients: does gradient_orientation flag any?"""
import numpy as np, itertools, warnings
from flowtie_fast import trust
import os, sys; sys.path.insert(0, os.path.dirname(__file__))
if os.environ.get("ALT"):
    import binned_alt; trust.gradient_orientation = binned_alt.orient_alt

rng = np.random.default_rng(0)

def spectral_grad(phi, step):
    ky = 2*np.pi*np.fft.fftfreq(phi.shape[0], step[0])[:, None]
    kx = 2*np.pi*np.fft.fftfreq(phi.shape[1], step[1])[None, :]
    F = np.fft.fft2(phi)
    return np.stack([np.fft.ifft2(1j*ky*F).real, np.fft.ifft2(1j*kx*F).real])

def fwd_grad(phi, step):  # forward differences (staggered), same shape
    g0 = np.diff(phi, axis=0, append=phi[-1:]) / step[0]
    g1 = np.diff(phi, axis=1, append=phi[:, -1:]) / step[1]
    return np.stack([g0, g1])

def atoms(shape, step, sigma_px, n_atoms=None, vacuum=False, lattice=False, dr=1.0):
    y = np.arange(shape[0])[:, None]*1.0; x = np.arange(shape[1])[None, :]*1.0
    phi = np.zeros(shape); gy = np.zeros(shape); gx = np.zeros(shape)
    if lattice:
        cs = [(cy + 0.3, cx + 0.1) for cy in np.arange(2, shape[0], 4.7) for cx in np.arange(2, shape[1], 3.9)]
    else:
        cs = [(rng.uniform(0, shape[0]), rng.uniform(0, shape[1])) for _ in range(n_atoms or 20)]
    if vacuum:
        cs = [c for c in cs if c[1] < shape[1]/2]
    for k, (cy, cx) in enumerate(cs):
        amp = dr ** (k % 5) if dr != 1 else 1.0
        e = amp*np.exp(-((y-cy)**2 + (x-cx)**2)/(2*sigma_px**2))
        phi += e
        gy += e*(-(y-cy)/sigma_px**2)/step[0]  # d/dpixel -> /step: phi in pixel units!
        gx += e*(-(x-cx)/sigma_px**2)/step[1]
    # NB: phi sampled in px coordinates, so the analytic gradient is wrt px/step only
    # for isotropic steps; for anisotropic ones use the px-coordinate phi differently
    return phi, np.stack([gy, gx])

def report(name, g, step):
    c = trust.gradient_orientation(g, step)
    if c.get("suspect") or c.get("misorientation", 0) > 15:
        print(f"FLAG {name}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in c.items()))
    return c

count = 0
for step in [(0.25, 0.25), (0.1, 0.5), (0.5, 0.1), (0.05, 0.05), (1.0, 3.0)]:
    for shape in [(64, 64), (128, 96), (5, 5), (3, 200), (200, 3), (11, 10), (256, 256)]:
        for sigma in [0.6, 0.8, 1.0, 1.5, 2.0, 4.0]:
            for opt in [dict(n_atoms=20), dict(vacuum=True), dict(lattice=True), dict(lattice=True, dr=30.0), dict(n_atoms=3)]:
                phi, g_exact = atoms(shape, (1.0, 1.0), sigma, **opt)
                # phi defined on pixel grid; physical coordinates y*step0, x*step1:
                g_exact = g_exact / np.array(step)[:, None, None]
                for kind, g in [("exact", g_exact), ("npgrad", np.stack(np.gradient(phi, *step))),
                                ("spectral", spectral_grad(phi, step)), ("fwd", fwd_grad(phi, step))]:
                    for dt in [np.float64, np.float32, np.float16]:
                        count += 1
                        report(f"{kind} step={step} shape={shape} sigma={sigma} {opt} {np.dtype(dt).name}", g.astype(dt), step)
print("cases", count)
