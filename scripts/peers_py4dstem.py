"""py4DSTEM's phase methods on the cases exported by ``scripts/peers.py export``:
DPC, parallax, single-slice and multislice ptychography (docs/peers.md).

Runs in its own virtual environment (py4DSTEM is not a dependency of
flowtie_fast and pins its own NumPy/SciPy); it reads only the exported
.npz files (4D scans and calibrations, no ground truth):

    python3 -m venv /tmp/peers/venv && /tmp/peers/venv/bin/pip install py4DSTEM
    nice /tmp/peers/venv/bin/python scripts/peers_py4dstem.py /tmp/peers/export \\
        -o /tmp/peers/phases [--methods dpc parallax ptycho ptycho-ms] [--iterations 8]

Writes ``<out>/py4dstem-<method>/<case>.npz`` with ``phase`` (Sy, Sx) in rad on
the scan grid (parallax: arbitrary units), ``seconds`` (wall time of
the calls from the DataCube to the phase: construction, preprocess,
reconstruct) and ``note``.

Which scan each method gets (abTEM and py4DSTEM share the defocus sign:
``defocus = -C10``, positive = underfocus):

- DPC: the in-focus scan (``zero``); its ``object_phase`` solves
  ``∇φ = CoM`` with the CoM in 1/Å, so it is multiplied by 2π (rad).
- parallax and ptychography: the scan recorded at probe defocus +dz (``minus``,
  20 Å underfocus), with ``defocus=+dz`` given.

How the results are brought to the ground truth's grid: DPC and parallax
return images on the scan grid (parallax's upsampled image is not used); the
ptychographic object (``object_type="potential"``: the phase in rad, not
wrapped; multislice: summed over slices) is sampled at the probe positions
(``_positions_px``, the probe centres in object pixels) by cubic-spline
interpolation, periodic.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")

import py4DSTEM  # noqa: E402
from scipy import ndimage  # noqa: E402


def datacube(arr, z):
    """A calibrated py4DSTEM DataCube of one (Sy, Sx, Ky, Kx) scan; detector axes
    parallel to the scan axes (no rotation, no transpose)."""
    dc = py4DSTEM.DataCube(data=np.ascontiguousarray(arr, dtype=np.float32))
    dc.calibration.set_R_pixel_size(float(z["scan_step"][0]))
    dc.calibration.set_R_pixel_units("A")
    dc.calibration.set_Q_pixel_size(float(z["k_sampling"][0]))
    dc.calibration.set_Q_pixel_units("A^-1")
    return dc


def run_dpc(z, iterations):
    dc = datacube(z["zero"], z)
    dpc = py4DSTEM.process.phase.DPC(datacube=dc, energy=float(z["energy"]), verbose=False,
                                     device="cpu")
    dpc.preprocess(force_com_rotation=0.0, force_com_transpose=False,
                   plot_center_of_mass=False, plot_rotation=False)
    dpc.reconstruct(max_iter=64, progress_bar=False)  # py4DSTEM's default max_iter
    # py4DSTEM's DPC fits grad(phase) = CoM with the CoM in 1/Å (its _forward): its
    # object_phase is the phase over 2π; times 2π it is in rad (grad φ = 2π CoM).
    return 2 * np.pi * np.asarray(dpc.object_phase), "DPC(zero scan), preprocess defaults " \
        "but rotation 0, no transpose; reconstruct(max_iter=64) (default); object_phase x 2π"


def run_parallax(z, iterations):
    dc = datacube(z["minus"], z)
    par = py4DSTEM.process.phase.Parallax(datacube=dc, energy=float(z["energy"]), verbose=False,
                                          device="cpu", object_padding_px=(8, 8),
                                          defocus=float(z["defocus_minus"]))
    par.preprocess(edge_blend=2, threshold_intensity=0.8, plot_average_bf=False,
                   force_rotation_angle_deg=0, force_transpose=False)
    par.reconstruct(progress_bar=False, plot_aligned_bf=False, plot_convergence=False)
    par.aberration_fit(force_transpose=False, force_rotation_angle_deg=0)
    par.aberration_correct(plot_corrected_phase=False, upsampled=False)
    img = np.asarray(par.recon_phase_corrected)
    img = par._crop_padded_object(img, upsampled=False)
    img = np.asarray(img)
    sy, sx = z["zero"].shape[:2]
    note = (f"Parallax(minus scan, defocus={float(z['defocus_minus']):g} Å, "
            f"object_padding_px=(8, 8)), preprocess(edge_blend=2), reconstruct defaults, "
            f"aberration_fit, aberration_correct(upsampled=False); fitted C1 "
            f"{float(getattr(par, 'aberrations_C1', np.nan)):.1f} Å; arbitrary units; "
            f"cropped shape {img.shape}")
    if img.shape != (sy, sx):
        img = img[:sy, :sx]
    return img, note


def _sample_at_positions(obj, ptycho, shape):
    """The real object (Px, Py) at the probe centres, (Sy, Sx), periodic cubic
    spline interpolation."""
    pos = np.asarray(ptycho._asnumpy(ptycho._positions_px))
    vals = ndimage.map_coordinates(np.asarray(obj, np.float64), [pos[:, 0], pos[:, 1]],
                                   order=3, mode="grid-wrap")
    return vals.reshape(shape)


def run_ptycho(z, iterations, multislice=False):
    dc = datacube(z["minus"], z)
    shape = z["zero"].shape[:2]
    common = dict(datacube=dc, energy=float(z["energy"]), semiangle_cutoff=float(z["semiangle"]),
                  defocus=float(z["defocus_minus"]), object_type="potential", verbose=False,
                  device="cpu")
    if multislice:
        thickness = float(z["thickness"])
        n = max(2, int(round(thickness / 20.0)))
        ptycho = py4DSTEM.process.phase.MultislicePtychography(
            num_slices=n, slice_thicknesses=thickness / n, **common)
    else:
        ptycho = py4DSTEM.process.phase.SingleslicePtychography(**common)
    ptycho.preprocess(plot_center_of_mass=False, plot_rotation=False, plot_probe_overlaps=False,
                      force_com_rotation=0.0, force_com_transpose=False)
    # In chunks of at most 4 iterations (py4DSTEM continues from its state when
    # reset is not asked for) so that a run stops at the time cap.
    start, done = time.perf_counter(), 0
    while done < iterations and time.perf_counter() - start < TIME_CAP:
        step = min(4, iterations - done)
        ptycho.reconstruct(num_iter=step, progress_bar=False, reset=(done == 0))
        done += step
    obj = np.asarray(ptycho._asnumpy(ptycho._object))
    if multislice:
        obj = obj.sum(axis=0)
    phase = _sample_at_positions(obj, ptycho, shape)
    kind = (f"MultislicePtychography({n} slices of {thickness / n:.1f} Å)" if multislice
            else "SingleslicePtychography")
    note = (f"{kind}(minus scan, defocus={float(z['defocus_minus']):g} Å, semiangle "
            f"{float(z['semiangle']):g} mrad, object_type='potential'), preprocess defaults "
            f"but rotation 0, no transpose; {done} of {iterations} iterations "
            f"(cap {TIME_CAP:g} s), otherwise reconstruct "
            f"defaults (gradient descent, step 0.5); object sampling "
            f"{ptycho.sampling[0]:.4f} Å, sampled at the probe positions")
    return phase, note


#: Seconds after which ptychography stops iterating (checked every 4 iterations).
TIME_CAP = 300.0

METHODS = {
    "dpc": run_dpc,
    "parallax": run_parallax,
    "ptycho": lambda z, it: run_ptycho(z, it, False),
    "ptycho-ms": lambda z, it: run_ptycho(z, it, True),
}


def main(argv=None):
    global TIME_CAP
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("export", help="folder of scripts/peers.py export")
    p.add_argument("-o", "--output", default="/tmp/peers/phases")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--iterations", type=int, default=8,
                   help="ptychography iterations (py4DSTEM's default num_iter: 8)")
    p.add_argument("--suffix", default="", help="appended to the method's folder name")
    p.add_argument("--time-cap", type=float, default=TIME_CAP,
                   help="ptychography: stop iterating after this many seconds (default 300)")
    p.add_argument("--cases", nargs="+", default=None)
    a = p.parse_args(argv)
    TIME_CAP = a.time_cap
    files = sorted(Path(a.export).glob("*.npz"))
    if a.cases:
        files = [f for f in files if f.stem in a.cases]
    print(f"py4DSTEM {py4DSTEM.__version__}, numpy {np.__version__}, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    for method in a.methods:
        for f in files:
            z = np.load(f)
            start = time.perf_counter()
            try:
                phase, note = METHODS[method](z, a.iterations)
            except Exception as exc:  # noqa: BLE001  recorded, the run goes on
                seconds = time.perf_counter() - start
                print(f"{method} {f.stem}: FAILED after {seconds:.1f} s: "
                      f"{type(exc).__name__}: {exc}", flush=True)
                continue
            seconds = time.perf_counter() - start
            d = Path(a.output) / f"py4dstem-{method}{a.suffix}"
            d.mkdir(parents=True, exist_ok=True)
            np.savez(d / f"{f.stem}.npz", phase=np.asarray(phase, np.float64),
                     seconds=seconds, note=note)
            print(f"{method} {f.stem}: {seconds:.2f} s; {note}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
