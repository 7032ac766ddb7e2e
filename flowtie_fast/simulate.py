"""Multislice simulation of 4D-STEM focal triplets with abTEM (extra ``sim``).

abTEM, the field's standard multislice code, does the physics; this module
chooses the set-up the FlowTIE evaluation needs and computes the ground
truth:

- a crystal (GaAs [001], SrTiO3 [001] built in, any ``ase.Atoms`` accepted),
  repeated laterally into a supercell wide enough for the probe and along z to
  the largest thickness;
- one multislice pass per defocus for a whole thickness series: abTEM exit
  planes after whole unit cells;
- three probe defoci ``(+dz, 0, -dz)`` (abTEM: positive = underfocus), which
  record the planes ``(-dz, 0, +dz)`` (DESIGN §2) and are stored in that order;
- a scan of whole unit cells (periodic) on a pixelated detector, optional
  frozen phonons and Poisson noise at a dose in e⁻/Å²;
- the ground truth per thickness: the projected potential of the slices above
  the exit plane times σ(E), Fourier-resampled to the scan grid, and its
  spectral gradient.

Cost on 2 cores: see ``benchmarks/RESULTS.md`` ("Simulation").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, check_count, check_positive, check_real
from .physics import wavelength

__all__ = ["MATERIALS", "SimulationCase", "crystal", "simulate_series", "ground_truth_phase"]

MATERIALS = {
    "GaAs": {"lattice": 5.6533, "structure": "zincblende"},
    "SrTiO3": {"lattice": 3.905, "structure": "perovskite"},
}


def poisson_counts(patterns, dose, scan_step, rng, dtype=np.float32):
    """Detector counts at a dose: the patterns scaled so that the mean pattern
    holds ``dose`` electrons per Å² times the scan-pixel area, then Poisson
    draws.

    Parameters
    ----------
    patterns : ndarray (..., Ky, Kx)
        Noise-free intensities (any scale).
    dose : float
        Electrons per Å².
    scan_step : (float, float)
        Å.
    rng : numpy.random.Generator
    dtype : dtype
        Of the counts (float32 as simulations store them; uint16 as detectors).
    """
    p = np.asarray(patterns)
    electrons = float(dose) * float(scan_step[0]) * float(scan_step[1])
    norm = p.sum(axis=(-2, -1), keepdims=True).mean()
    return rng.poisson(p * (electrons / norm)).astype(dtype)


def _abtem():
    try:
        import abtem
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("simulation needs abTEM: pip install 'flowtie_fast[sim]'") from exc
    return abtem


def crystal(material):
    """The [001] unit cell of a built-in material, or ``material`` itself (ase.Atoms).

    Returns an orthorhombic ``ase.Atoms`` with z along the beam.
    """
    import ase
    import ase.build

    if isinstance(material, ase.Atoms):
        atoms = material.copy()
        cell = atoms.cell
        if not np.allclose(cell.array, np.diag(np.diag(cell.array)), atol=1e-6):
            raise InputError("material: expected an orthorhombic cell (z along the beam)")
        return atoms
    if material == "GaAs":
        return ase.build.bulk("GaAs", "zincblende", a=MATERIALS["GaAs"]["lattice"], cubic=True)
    if material == "SrTiO3":
        a = MATERIALS["SrTiO3"]["lattice"]
        return ase.Atoms("SrTiO3", cell=[a, a, a], pbc=True,
                         scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0),
                                           (0.5, 0, 0.5), (0, 0.5, 0.5)])
    raise InputError(f"material: expected one of {tuple(MATERIALS)} or an ase.Atoms, "
                     f"got {material!r}")


@dataclass
class SimulationCase:
    """One thickness of a simulated series: the three 4D datasets and the truth."""

    material: str
    thickness: float  # Å
    minus: np.ndarray  # (Sy, Sx, Ky, Kx) recorded at z = -dz (abTEM defocus +dz)
    zero: np.ndarray
    plus: np.ndarray
    dz: float
    scan_step: tuple  # Å
    k_sampling: tuple  # 1/Å
    energy: float
    semiangle: float  # mrad
    phase: np.ndarray  # ground-truth projected phase on the scan grid, rad
    gradient: np.ndarray  # its gradient, rad/Å
    meta: dict = field(default_factory=dict)


def ground_truth_phase(projected_potential, scan_shape, energy):
    """``σ(E) V_proj`` (rad) Fourier-resampled to the scan grid.

    ``projected_potential`` (V·Å) samples exactly one scan period from the
    origin, like the scan; its spectrum is cropped (or zero-padded) to the scan
    grid, Nyquist terms dropped.
    """
    from abtem.core.energy import energy2sigma

    v = np.asarray(projected_potential, dtype=np.float64)
    spec = np.fft.fft2(v)
    sy, sx = scan_shape
    ny, nx = v.shape
    out = np.zeros(scan_shape, complex)
    fy = np.fft.fftfreq(sy, 1.0 / sy).round().astype(int)
    fx = np.fft.fftfreq(sx, 1.0 / sx).round().astype(int)
    keep_y = np.flatnonzero(np.abs(fy) < min(sy, ny) / 2)
    keep_x = np.flatnonzero(np.abs(fx) < min(sx, nx) / 2)
    out[np.ix_(keep_y, keep_x)] = spec[np.ix_(fy[keep_y] % ny, fx[keep_x] % nx)]
    out *= (sy * sx) / (ny * nx)
    return energy2sigma(energy) * np.real(np.fft.ifft2(out))


def _spectral_gradient(phase, step):
    sy, sx = phase.shape
    qy = 2 * np.pi * np.fft.fftfreq(sy, step[0])[:, None]
    qx = 2 * np.pi * np.fft.fftfreq(sx, step[1])[None, :]
    spec = np.fft.fft2(phase)
    return np.stack([np.real(np.fft.ifft2(1j * qy * spec)), np.real(np.fft.ifft2(1j * qx * spec))])


def _thickness_defocus_scan_k(measured, n_thickness):
    """abTEM's measurement as (thickness, defocus, scan 0, scan 1, k 0, k 1) float32:
    axes found by their metadata (abTEM drops a thickness axis of length one and
    adds one per ensemble, e.g. frozen phonons, which is averaged)."""
    data = np.asarray(measured.array, dtype=np.float32)
    kinds = [type(ax).__name__ for ax in measured.axes_metadata]
    ensemble = [i for i, k in enumerate(kinds[:-4])
                if k not in ("ThicknessAxis", "ParameterAxis")]
    if ensemble:
        data = data.mean(axis=tuple(ensemble))
        kinds = [k for i, k in enumerate(kinds) if i not in ensemble]
    if "ThicknessAxis" not in kinds:
        data = data[None]
    if data.shape[:2] != (n_thickness, 3) or data.ndim != 6:
        raise RuntimeError(f"unexpected abTEM output axes {kinds} with shape {data.shape}")
    return data


def _cells(thicknesses, height) -> list:
    """Whole unit cells of each wanted thickness (at least one), sorted, unique."""
    return sorted({max(1, int(round(t / height))) for t in thicknesses})


def series_thicknesses(material, thicknesses) -> list:
    """The thicknesses (Å) :func:`simulate_series` simulates for these wanted
    ones: whole unit cells of ``material``, sorted, without repeats."""
    height = float(crystal(material).cell.array[2, 2])
    return [m * height for m in _cells(check_settings(thicknesses), height)]


def check_settings(thicknesses, *, energy=300e3, semiangle=20.0, dz=20.0, scan_cells=(1, 1),
                   scan_gpts=None, supercell=16.0, potential_sampling=0.05,
                   slice_thickness=1.5, max_angle=None, frozen_phonons=0, sigma=0.08,
                   dose=None, seed=0):
    """Every setting of :func:`simulate_series` (same names and units) checked
    before abTEM runs; :class:`InputError` naming the first bad one. Returns
    the thicknesses as a tuple of floats."""
    try:
        thicknesses = tuple(float(t) for t in np.atleast_1d(thicknesses))
    except (TypeError, ValueError) as exc:
        raise InputError(f"thicknesses: expected numbers in Å, got {thicknesses!r}") from exc
    if not thicknesses:
        raise InputError("thicknesses: expected at least one thickness in Å")
    for t in thicknesses:
        if not (math.isfinite(t) and 0 < t <= 1e5):
            raise InputError(f"thicknesses: expected Å in (0, 1e5], got {t!r}")
    check_positive("energy", energy)
    check_positive("dz", dz)
    for name, value, lo, hi in (("semiangle", semiangle, 0.1, 500.0),
                                ("supercell", supercell, 1.0, 1e4),
                                ("potential_sampling", potential_sampling, 0.005, 1.0),
                                ("slice_thickness", slice_thickness, 0.1, 100.0)):
        if not lo <= check_positive(name, value) <= hi:
            raise InputError(f"{name}: expected {lo:g} to {hi:g}, got {value!r}")
    if max_angle is not None and check_positive("max_angle", max_angle) > 2000:
        raise InputError(f"max_angle: expected at most 2000 mrad, got {max_angle!r}")
    detector = 3 * semiangle if max_angle is None else max_angle
    if detector < semiangle:
        raise InputError(f"max_angle: the detector ({detector:g} mrad) must take in the "
                         f"bright-field disk (semiangle {semiangle:g} mrad)")
    # abTEM keeps scattering angles up to 2/3 of the Nyquist angle λ / (2 Δx).
    resolved = 1e3 * (2 / 3) * wavelength(energy) / (2 * potential_sampling)
    if detector > 1.05 * resolved:
        raise InputError(f"potential_sampling: {potential_sampling:g} Å resolves angles up to "
                         f"{resolved:.3g} mrad, less than the detector's {detector:g} mrad; "
                         f"use at most {1e3 * wavelength(energy) / (3 * detector):.3g} Å")
    check_real("sigma", sigma, low=0.0)  # thermal displacement, Å
    if dose is not None:
        check_positive("dose", dose)
    check_count("frozen_phonons", frozen_phonons, 0, 10000)
    check_count("seed", seed, 0)
    for name, pair, low in (("scan_cells", scan_cells, 1), ("scan_gpts", scan_gpts, 2)):
        if pair is None:
            continue
        if len(pair) != 2:
            raise InputError(f"{name}: expected two integers, got {pair!r}")
        for v in pair:
            check_count(name, v, low, 1 << 16)
    return thicknesses


def simulate_series(material="GaAs", thicknesses=(5.0, 20.0, 50.0, 100.0, 150.0, 200.0), *,
                    energy=300e3, semiangle=20.0, dz=20.0, scan_cells=(1, 1),
                    scan_gpts=None, supercell=16.0, potential_sampling=0.05,
                    slice_thickness=1.5, max_angle=None, frozen_phonons=0, sigma=0.08,
                    dose=None, seed=0, progress=False):
    """Simulate a 4D-STEM thickness series at three probe defoci in one multislice pass.

    Parameters
    ----------
    material : "GaAs", "SrTiO3" or ase.Atoms
        Orthorhombic cell, [001] along the beam.
    thicknesses : sequence of float
        Wanted thicknesses in Å; rounded to whole unit cells (at least one).
    energy : float
        eV (default 300 keV).
    semiangle : float
        Probe convergence semi-angle in mrad (default 20).
    dz : float
        Defocus step in Å (default 20): probe defoci ``+dz, 0, -dz``.
    scan_cells : (int, int)
        Unit cells covered by the periodic scan.
    scan_gpts : (int, int), optional
        Scan positions (default: about 0.2 Å steps, at least 16 per cell).
    supercell : float
        Minimum lateral size of the potential in Å (probe room; default 16).
    potential_sampling : float
        Å (default 0.05).
    slice_thickness : float
        Target slice thickness in Å (rounded to divide the cell height).
    max_angle : float, optional
        Detector extent in mrad (default 3 × semiangle).
    frozen_phonons : int
        Configurations (0: static lattice).
    sigma : float
        Thermal displacement in Å for frozen phonons.
    dose : float, optional
        Electrons per Å² for Poisson noise (default: noise-free).
    seed : int
    progress : bool
        Show abTEM's progress bar.

    Returns
    -------
    list of SimulationCase, one per thickness.
    """
    thicknesses = check_settings(thicknesses, energy=energy, semiangle=semiangle, dz=dz,
                                 scan_cells=scan_cells, scan_gpts=scan_gpts,
                                 supercell=supercell, potential_sampling=potential_sampling,
                                 slice_thickness=slice_thickness, max_angle=max_angle,
                                 frozen_phonons=frozen_phonons, sigma=sigma, dose=dose,
                                 seed=seed)
    abtem = _abtem()

    unit = crystal(material)
    name = material if isinstance(material, str) else unit.get_chemical_formula()
    a, b, c = np.diag(unit.cell.array)
    cells = _cells(thicknesses, c)
    per_cell = max(1, int(round(c / slice_thickness)))
    scan_cells = tuple(int(s) for s in scan_cells)
    rep = (max(scan_cells[0], math.ceil(supercell / a)),
           max(scan_cells[1], math.ceil(supercell / b)))
    atoms = unit * (rep[0], rep[1], cells[-1])
    if frozen_phonons:
        potential_atoms = abtem.FrozenPhonons(atoms, num_configs=int(frozen_phonons),
                                              sigmas=sigma, seed=seed)
    else:
        potential_atoms = atoms
    exit_planes = tuple(per_cell * m - 1 for m in cells)
    pot = abtem.Potential(potential_atoms, sampling=potential_sampling,
                          slice_thickness=c / per_cell, exit_planes=exit_planes,
                          projection="infinite")
    extent = (scan_cells[0] * a, scan_cells[1] * b)
    if scan_gpts is None:
        scan_gpts = tuple(max(16 * n, int(round(e / 0.2))) for n, e in zip(scan_cells, extent))
    scan = abtem.GridScan(start=(0, 0), end=extent, gpts=scan_gpts, endpoint=False)
    max_angle = 3 * semiangle if max_angle is None else max_angle
    probe = abtem.Probe(energy=energy, semiangle_cutoff=semiangle,
                        defocus=np.array([dz, 0.0, -dz]))
    probe.grid.match(pot)
    detector = abtem.PixelatedDetector(max_angle=max_angle)
    start = time.perf_counter()
    measured = probe.scan(pot, scan=scan, detectors=detector)
    if progress:
        measured = measured.compute(scheduler="threads", progress_bar=True)
    else:
        measured = measured.compute(scheduler="threads", progress_bar=False)
    elapsed = time.perf_counter() - start
    data = _thickness_defocus_scan_k(measured, len(cells))
    k_sampling = tuple(float(s) for s in measured.sampling[-2:])
    scan_step = (extent[0] / scan_gpts[0], extent[1] / scan_gpts[1])

    # Ground truth: projected potential of the slices above each exit plane, on a
    # potential of exactly one scan period (static lattice: the mean over
    # frozen phonons to first order).
    truth = abtem.Potential(unit * (scan_cells[0], scan_cells[1], cells[-1]),
                            sampling=potential_sampling, slice_thickness=c / per_cell,
                            projection="infinite")
    cumulative = np.cumsum(np.asarray(truth.build().compute().array), axis=0)
    rng = np.random.default_rng(seed)
    cases = []
    for i, m in enumerate(cells):
        phase = ground_truth_phase(cumulative[exit_planes[i]], scan_gpts, energy)
        planes = data[i]
        if dose is not None:
            planes = poisson_counts(planes, dose, scan_step, rng)
        cases.append(SimulationCase(
            material=name, thickness=float(m * c), minus=planes[0], zero=planes[1],
            plus=planes[2], dz=float(dz), scan_step=scan_step, k_sampling=k_sampling,
            energy=float(energy), semiangle=float(semiangle), phase=phase.astype(np.float32),
            gradient=_spectral_gradient(phase, scan_step).astype(np.float32),
            meta={"cells": int(m), "supercell": rep, "potential_sampling": potential_sampling,
                  "slice_thickness": c / per_cell, "frozen_phonons": int(frozen_phonons),
                  "dose": dose, "seconds_total": elapsed, "abtem": abtem.__version__}))
    return cases
