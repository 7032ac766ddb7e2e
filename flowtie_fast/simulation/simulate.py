"""Multislice simulation of 4D-STEM focal triplets with abTEM (extra ``sim``).

abTEM, the field's standard multislice code, does the physics; this module
chooses the set-up the FlowTIE evaluation needs and computes the ground
truth:

- :func:`simulate_series`: a crystal (GaAs [001], SrTiO3 [001] built in, any
  orthorhombic ``ase.Atoms`` accepted), repeated laterally into a supercell
  wide enough for the probe and along z to the largest thickness, scanned
  over whole unit cells (periodic);
- :func:`simulate_specimen`: any orthorhombic specimen of its full thickness
  (:mod:`flowtie_fast.simulation.specimens`), exit planes at given depths, scanned over
  a :class:`ScanWindow`: whole periods, or a window inside the supercell
  (non-periodic) with a margin of extra scan positions on each side;
- one multislice pass for a whole thickness series: abTEM exit planes;
- three probe defoci ``(+dz_minus, 0, -dz_plus)`` (abTEM: positive =
  underfocus), which record the planes ``(-dz_minus, 0, +dz_plus)``
  (docs/conventions.md) and are stored in that order; ``dz`` is one step or the pair;
- a beam tilt (specimen mistilt, mrad): abTEM shifts the wave by
  ``Δz tan(tilt)`` in every slice, so the beam at depth z crosses the
  specimen at ``r + z tan(tilt)``;
- a pixelated detector, optional frozen phonons and Poisson noise at a dose
  in e⁻/Å²;
- the ground truth per thickness: σ(E) times the projected potential of the
  static specimen above the exit plane, along the (tilted) beam path,
  band-limited to the scan grid's Nyquist frequency and evaluated at the scan
  positions, with its gradient from the same Fourier series
  (:func:`window_truth`; :func:`ground_truth_phase` is its periodic special
  case).

Cost on 2 cores: see docs/performance.md ("Simulation cost").
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..backend import gpu_available
from ..errors import BackendError, InputError, check_choice, check_count, check_positive, check_real
from ..physics import wavelength
from .specimens import check_orthorhombic

__all__ = ["MATERIALS", "ScanWindow", "SimulationCase", "cell_height", "crystal",
           "simulate_series", "simulate_specimen", "ground_truth_phase", "window_truth",
           "slicing"]

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


def device_context(device):
    """abTEM's configuration for ``device`` ("cpu" or "gpu": CuPy on the
    first CUDA device); :class:`BackendError` where no device answers."""
    check_choice("device", device, ("cpu", "gpu"))
    if device == "gpu" and not gpu_available():
        raise BackendError("device: 'gpu', but CuPy finds no CUDA device that answers here; "
                           "use device='cpu'")
    return _abtem().config.set({"device": device})


def _on_host(computed):
    """An abTEM array object with its data in host memory (CuPy arrays copied)."""
    return computed.to_cpu() if hasattr(computed.array, "get") else computed


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
    dz: float | tuple  # Å: one step, or (dz_minus, dz_plus) where they differ
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


def _scan_three_defoci(abtem, pot, scan, n_thickness, *, energy, semiangle, dz_minus, dz_plus,
                       tilt, max_angle, progress):
    """Scan a probe at the defoci ``+dz_minus, 0, -dz_plus`` (abTEM's sign) over
    ``pot`` with a pixelated detector to ``max_angle`` mrad: the patterns (thickness, defocus, Sy, Sx, Ky, Kx) on
    the host, the detector sampling in 1/Å and the seconds the scan took."""
    probe = abtem.Probe(energy=energy, semiangle_cutoff=semiangle,
                        defocus=np.array([dz_minus, 0.0, -dz_plus]), tilt=tilt)
    probe.grid.match(pot)
    detector = abtem.PixelatedDetector(max_angle=max_angle)
    start = time.perf_counter()
    measured = probe.scan(pot, scan=scan, detectors=detector)
    measured = _on_host(measured.compute(scheduler="threads", progress_bar=bool(progress)))
    elapsed = time.perf_counter() - start
    return (_thickness_defocus_scan_k(measured, n_thickness),
            tuple(float(s) for s in measured.sampling[-2:]), elapsed)


def _cells(thicknesses, height) -> list:
    """Whole unit cells of each wanted thickness (at least one), sorted, unique."""
    return sorted({max(1, int(round(t / height))) for t in thicknesses})


def cell_height(material) -> float:
    """The height (Å) along the beam of one unit cell of ``material`` as
    :func:`simulate_series` builds it: thicknesses are whole numbers of it."""
    return float(crystal(material).cell.array[2, 2])


def series_thicknesses(material, thicknesses) -> list:
    """The thicknesses (Å) :func:`simulate_series` simulates for these wanted
    ones: whole unit cells of ``material``, sorted, without repeats."""
    height = cell_height(material)
    return [m * height for m in _cells(check_settings(thicknesses), height)]


def check_settings(thicknesses, *, energy=300e3, semiangle=20.0, dz=20.0, scan_cells=(1, 1),
                   scan_gpts=None, supercell=16.0, potential_sampling=0.05,
                   slice_thickness=1.5, max_angle=None, frozen_phonons=0, sigma=0.08,
                   dose=None, seed=0, tilt=(0.0, 0.0)):
    """Every setting of :func:`simulate_series` (same names and units) checked
    before abTEM runs; :class:`InputError` naming the first bad one. ``dz`` is
    one step or a pair ``(dz_minus, dz_plus)`` (Å); ``tilt`` is ``(x, y)`` in
    mrad, at most 50 each. Returns the thicknesses as a tuple of floats."""
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
    check_positive("dz", dz, pair=True)
    _check_tilt(tilt)
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


def _check_tilt(tilt):
    """``tilt`` as two floats in mrad, each within ±50; InputError otherwise."""
    try:
        pair = tuple(float(t) for t in tilt)
    except (TypeError, ValueError) as exc:
        raise InputError(f"tilt: expected two numbers (x, y) in mrad, got {tilt!r}") from exc
    if len(pair) != 2 or not all(math.isfinite(t) and abs(t) <= 50 for t in pair):
        raise InputError(f"tilt: expected two numbers (x, y) in mrad within ±50, got {tilt!r}")
    return pair


def _dz_pair(dz):
    """``(dz_minus, dz_plus)`` in Å of one step or a pair."""
    return check_positive("dz", dz, pair=True)


def _simulate_series(material="GaAs", thicknesses=(5.0, 20.0, 50.0, 100.0, 150.0, 200.0), *,
                    energy=300e3, semiangle=20.0, dz=20.0, scan_cells=(1, 1),
                    scan_gpts=None, supercell=16.0, potential_sampling=0.05,
                    slice_thickness=1.5, max_angle=None, frozen_phonons=0, sigma=0.08,
                    dose=None, seed=0, progress=False, tilt=(0.0, 0.0)):
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
    dz : float or (float, float)
        Defocus step in Å (default 20): probe defoci ``+dz, 0, -dz``; a pair
        ``(dz_minus, dz_plus)`` gives ``+dz_minus, 0, -dz_plus``.
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
    device : {"cpu", "gpu"}
        Where abTEM computes (keyword only; "gpu": CuPy, orders of magnitude
        faster for a sweep); the results are NumPy arrays either way.
    tilt : (float, float)
        Beam tilt against the zone axis along x and y (abTEM's first and second
        axes), mrad; the ground truth follows the tilted beam path.

    Returns
    -------
    list of SimulationCase, one per thickness; ``dz`` is a float where the
    steps are equal, the pair otherwise.
    """
    thicknesses = check_settings(thicknesses, energy=energy, semiangle=semiangle, dz=dz,
                                 scan_cells=scan_cells, scan_gpts=scan_gpts,
                                 supercell=supercell, potential_sampling=potential_sampling,
                                 slice_thickness=slice_thickness, max_angle=max_angle,
                                 frozen_phonons=frozen_phonons, sigma=sigma, dose=dose,
                                 seed=seed, tilt=tilt)
    abtem = _abtem()
    dz_minus, dz_plus = _dz_pair(dz)
    tilt = _check_tilt(tilt)

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
    data, k_sampling, elapsed = _scan_three_defoci(
        abtem, pot, scan, len(cells), energy=energy, semiangle=semiangle, dz_minus=dz_minus,
        dz_plus=dz_plus, tilt=tilt, max_angle=max_angle, progress=progress)
    scan_step = (extent[0] / scan_gpts[0], extent[1] / scan_gpts[1])

    # Ground truth: projected potential of the slices above each exit plane, on a
    # potential of exactly one scan period (static lattice: the mean over
    # frozen phonons to first order).
    truth = abtem.Potential(unit * (scan_cells[0], scan_cells[1], cells[-1]),
                            sampling=potential_sampling, slice_thickness=c / per_cell,
                            projection="infinite")
    slices = np.asarray(_on_host(truth.build().compute()).array)
    if tilt == (0.0, 0.0):
        cumulative = np.cumsum(slices, axis=0)
        truths = []
        for i in range(len(cells)):
            phase = ground_truth_phase(cumulative[exit_planes[i]], scan_gpts, energy)
            truths.append((phase, _spectral_gradient(phase, scan_step)))
    else:
        positions = [np.arange(n) * s for n, s in zip(scan_gpts, scan_step)]
        truths = window_truth(slices, extent, positions, scan_step, energy,
                              np.full(len(slices), c / per_cell), exit_planes, tilt)
    step_dz = float(dz_minus) if dz_minus == dz_plus else (float(dz_minus), float(dz_plus))
    rng = np.random.default_rng(seed)
    cases = []
    for i, m in enumerate(cells):
        phase, gradient = truths[i]
        planes = data[i]
        if dose is not None:
            planes = poisson_counts(planes, dose, scan_step, rng)
        cases.append(SimulationCase(
            material=name, thickness=float(m * c), minus=planes[0], zero=planes[1],
            plus=planes[2], dz=step_dz, scan_step=scan_step, k_sampling=k_sampling,
            energy=float(energy), semiangle=float(semiangle), phase=phase.astype(np.float32),
            gradient=gradient.astype(np.float32),
            meta={"cells": int(m), "supercell": rep, "potential_sampling": potential_sampling,
                  "slice_thickness": c / per_cell, "frozen_phonons": int(frozen_phonons),
                  "dose": dose, "seconds_total": elapsed, "abtem": abtem.__version__,
                  "tilt": tilt, "periodic": True, "margin": 0}))
    return cases

@functools.wraps(_simulate_series)
def simulate_series(*args, device="cpu", **kwargs):
    with device_context(device):
        return _simulate_series(*args, **kwargs)



@dataclass(frozen=True)
class ScanWindow:
    """The scan positions of :func:`simulate_specimen` (abTEM's x, then y).

    Parameters
    ----------
    start : (float, float)
        First position of the nominal window, Å.
    step : (float, float)
        Scan step, Å.
    gpts : (int, int)
        Positions of the nominal window.
    margin : int
        Extra positions on each side of the nominal window (non-periodic
        windows only), so that drift can later be applied by cropping shifted
        windows instead of wrapping.
    periodic : bool
        The nominal window is one lateral period of the specimen (its data and
        ground truth may be treated as periodic); then ``margin`` must be 0.
    """

    start: tuple
    step: tuple
    gpts: tuple
    margin: int = 0
    periodic: bool = False

    def check(self) -> "ScanWindow":
        """The window with numbers checked (InputError naming the field)."""
        if len(self.start) != 2 or not all(math.isfinite(float(v)) for v in self.start):
            raise InputError(f"start: expected two finite numbers in Å, got {self.start!r}")
        step = check_positive("scan_step", tuple(self.step), pair=True)
        if len(self.gpts) != 2:
            raise InputError(f"gpts: expected two integers, got {self.gpts!r}")
        for v in self.gpts:
            check_count("gpts", v, 2, 4096)
        check_count("margin", self.margin, 0, 1024)
        if self.periodic and self.margin:
            raise InputError(f"margin: expected 0 for a periodic window, got {self.margin!r}")
        return ScanWindow(tuple(float(v) for v in self.start), step,
                          tuple(int(v) for v in self.gpts), int(self.margin), bool(self.periodic))

    @property
    def shape(self) -> tuple:
        """Scan positions per axis, margins included."""
        return tuple(int(n) + 2 * int(self.margin) for n in self.gpts)

    def positions(self) -> list:
        """The positions along x and along y (Å), margins included."""
        return [float(s0) + (np.arange(n) - int(self.margin)) * float(d)
                for s0, d, n in zip(self.start, self.step, self.shape)]


def slicing(height, exit_depths, slice_thickness):
    """Slice thicknesses that tile ``[0, height]`` with a boundary at each exit depth.

    Parameters
    ----------
    height : float
        Specimen cell height, Å.
    exit_depths : sequence of float
        Depths (Å, in ``(0, height]``) after which the wave is recorded.
    slice_thickness : float
        Largest slice thickness, Å; each stretch between exit depths is cut
        into equal slices no thicker than this (to 0.1 %).

    Returns
    -------
    slices : tuple of float
        Å, summing to ``height``.
    exit_planes : tuple of int
        Index of the slice that ends at each exit depth (sorted, unique).
    depths : tuple of float
        The exit depths, sorted and unique.
    """
    height = float(height)
    depths = sorted({round(float(d), 6) for d in np.atleast_1d(exit_depths)})
    if not depths or depths[0] <= 0 or depths[-1] > height + 1e-6:
        raise InputError(f"exit_depths: expected depths in (0, {height:g}] Å, got "
                         f"{list(np.atleast_1d(exit_depths))!r}")
    depths = [min(d, height) for d in depths]
    bounds = [0.0] + depths + ([height] if depths[-1] < height - 1e-6 else [])
    slices, planes = [], []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        n = max(1, math.ceil((hi - lo) / float(slice_thickness) - 1e-3))
        slices += [(hi - lo) / n] * n
        if hi in depths:
            planes.append(len(slices) - 1)
    return tuple(slices), tuple(planes), tuple(depths)


def window_truth(slices, extent, positions, step, energy, thicknesses, exit_planes,
                 tilt=(0.0, 0.0)):
    """Ground-truth phase and gradient at scan positions, for each exit plane.

    ``σ(E)`` times the projected potential of the slices above each exit
    plane, as the Fourier series of the periodic supercell potential cut to
    the scan grid's band (``|q| < 1 / (2 step)`` per axis, the Nyquist
    frequency excluded, and below the potential grid's own Nyquist frequency)
    and evaluated at the positions by a matrix DFT; the gradient is the same
    series differentiated. For a window of whole periods this equals
    :func:`ground_truth_phase` and its spectral gradient.

    Parameters
    ----------
    slices : ndarray (n, Nx, Ny)
        Projected potential of each slice, V·Å, on the supercell grid (sample
        ``j`` at ``j * extent / N``).
    extent : (float, float)
        Supercell size, Å.
    positions : (ndarray, ndarray)
        Scan positions along x and y, Å.
    step : (float, float)
        Scan step, Å (sets the band).
    energy : float
        eV.
    thicknesses : sequence of float
        Slice thicknesses, Å (for the tilt).
    exit_planes : sequence of int
        Slice index after which each truth is taken.
    tilt : (float, float)
        Beam tilt in mrad: slice ``n`` is taken at ``r + z_n tan(tilt)``, with
        ``z_n`` the depth of its middle.

    Returns
    -------
    list of (phase, gradient)
        ``phase`` (Sx, Sy) in rad, ``gradient`` (2, Sx, Sy) in rad/Å, float64.
    """
    from abtem.core.energy import energy2sigma

    slices = np.asarray(slices)
    n, nx, ny = slices.shape
    sigma = energy2sigma(energy)
    qs, keeps = [], []
    for size, length, d in zip((nx, ny), extent, step):
        k = np.fft.fftfreq(size, 1.0 / size).round().astype(int)
        q = k / float(length)
        keep = np.flatnonzero((np.abs(q) * 2 * float(d) < 1 - 1e-9) & (2 * np.abs(k) < size))
        qs.append(q[keep])
        keeps.append(keep)
    ex = np.exp(2j * np.pi * np.asarray(positions[0], float)[:, None] * qs[0][None, :])
    ey = np.exp(2j * np.pi * np.asarray(positions[1], float)[:, None] * qs[1][None, :])
    z_mid = np.cumsum(thicknesses) - np.asarray(thicknesses) / 2
    tx, ty = (math.tan(t * 1e-3) for t in tilt)
    wanted = {int(p): i for i, p in enumerate(exit_planes)}
    acc = np.zeros((len(qs[0]), len(qs[1])), complex)
    out = [None] * len(exit_planes)
    chunk = 16
    for first in range(0, n, chunk):
        spec = np.fft.fft2(slices[first:first + chunk], axes=(1, 2))
        spec = spec[:, keeps[0]][:, :, keeps[1]] / (nx * ny)
        for j in range(spec.shape[0]):
            s = spec[j]
            if tx or ty:
                z = z_mid[first + j]
                s = s * np.exp(2j * np.pi * z * (tx * qs[0][:, None] + ty * qs[1][None, :]))
            acc += s
            i = wanted.get(first + j)
            if i is not None:
                phase = sigma * np.real(ex @ acc @ ey.T)
                gx = sigma * np.real(ex @ (2j * np.pi * qs[0][:, None] * acc) @ ey.T)
                gy = sigma * np.real(ex @ (2j * np.pi * qs[1][None, :] * acc) @ ey.T)
                out[i] = (phase, np.stack([gx, gy]))
    return out


def _simulate_specimen(atoms, exit_depths, scan, *, energy=300e3, semiangle=20.0, dz=20.0,
                      potential_sampling=0.08, potential_gpts=None, slice_thickness=2.0,
                      max_angle=None,
                      tilt=(0.0, 0.0), frozen_phonons=0, sigma=0.08, seed=0, name=None,
                      progress=False):
    """Simulate a 4D-STEM thickness series of a whole specimen in one multislice pass.

    Parameters
    ----------
    atoms : ase.Atoms
        Orthorhombic cell with z along the beam: the whole specimen (its full
        thickness; x and y periodic, as in abTEM).
    exit_depths : sequence of float
        Depths in Å where the wave is recorded: one case each.
    scan : ScanWindow
        Scan positions (Å), periodic or a window with a margin.
    energy : float
        eV.
    semiangle : float
        Probe convergence semi-angle, mrad.
    dz : float or (float, float)
        Defocus step(s) in Å: probe defoci ``+dz_minus, 0, -dz_plus``.
    potential_sampling : float
        Å.
    potential_gpts : (int, int), optional
        Potential grid points instead (FFT-friendly sizes); the sampling is
        then the cell size over them.
    slice_thickness : float
        Largest slice thickness, Å (:func:`slicing`).
    max_angle : float, optional
        Detector extent in mrad (default 3 × semiangle).
    tilt : (float, float)
        Beam tilt along x and y, mrad.
    frozen_phonons : int
        Configurations (0: static).
    sigma : float
        Thermal displacement for frozen phonons, Å.
    seed : int
    name : str, optional
        Material name recorded in the cases (default: the chemical formula).
    progress : bool
        Show abTEM's progress bar.
    device : {"cpu", "gpu"}
        Where abTEM computes (keyword only; "gpu": CuPy, orders of magnitude
        faster for a sweep); the results are NumPy arrays either way.

    Returns
    -------
    list of SimulationCase
        One per exit depth, ``thickness`` the exit depth in Å; the data and
        truth hold the whole scan including margins (``meta["margin"]``).
        The truth is that of the static specimen.
    """
    check_orthorhombic(atoms)
    if not isinstance(scan, ScanWindow):
        raise InputError(f"scan: expected a ScanWindow, got {type(scan).__name__}")
    scan = scan.check()
    lx, ly, height = (float(v) for v in np.diag(atoms.cell.array))
    if potential_gpts is not None:
        if len(potential_gpts) != 2:
            raise InputError(f"potential_gpts: expected two integers, got {potential_gpts!r}")
        potential_gpts = tuple(check_count("potential_gpts", g, 8, 1 << 14)
                               for g in potential_gpts)
        potential_sampling = max(lx / potential_gpts[0], ly / potential_gpts[1])
    check_settings(exit_depths, energy=energy, semiangle=semiangle, dz=dz,
                   supercell=min(lx, ly), potential_sampling=potential_sampling,
                   slice_thickness=slice_thickness, max_angle=max_angle,
                   frozen_phonons=frozen_phonons, sigma=sigma, seed=seed, tilt=tilt)
    tilt = _check_tilt(tilt)
    dz_minus, dz_plus = _dz_pair(dz)
    slices, exit_planes, depths = slicing(height, exit_depths, slice_thickness)
    abtem = _abtem()
    static = atoms.copy()
    static.pbc = True
    if frozen_phonons:
        source = abtem.FrozenPhonons(static, num_configs=int(frozen_phonons), sigmas=sigma,
                                     seed=seed)
    else:
        source = static
    sampled = {"sampling": potential_sampling} if potential_gpts is None else \
        {"gpts": potential_gpts}
    pot = abtem.Potential(source, **sampled, slice_thickness=slices, exit_planes=exit_planes,
                          projection="infinite")
    start = [p[0] for p in scan.positions()]
    end = [s + n * d for s, n, d in zip(start, scan.shape, scan.step)]
    grid = abtem.GridScan(start=start, end=end, gpts=scan.shape, endpoint=False)
    max_angle = 3 * semiangle if max_angle is None else max_angle
    data, k_sampling, elapsed = _scan_three_defoci(
        abtem, pot, grid, len(depths), energy=energy, semiangle=semiangle, dz_minus=dz_minus,
        dz_plus=dz_plus, tilt=tilt, max_angle=max_angle, progress=progress)

    t1 = time.perf_counter()
    truth_pot = abtem.Potential(static, **sampled, slice_thickness=slices,
                                projection="infinite")
    truth_slices = np.asarray(_on_host(truth_pot.build().compute()).array)
    truths = window_truth(truth_slices, (lx, ly), scan.positions(), scan.step, energy,
                          slices, exit_planes, tilt)
    truth_seconds = time.perf_counter() - t1
    label = name or atoms.get_chemical_formula()
    step_dz = float(dz_minus) if dz_minus == dz_plus else (float(dz_minus), float(dz_plus))
    cases = []
    for i, depth in enumerate(depths):
        phase, gradient = truths[i]
        planes = data[i]
        cases.append(SimulationCase(
            material=label, thickness=float(depth), minus=planes[0], zero=planes[1],
            plus=planes[2], dz=step_dz, scan_step=scan.step, k_sampling=k_sampling,
            energy=float(energy), semiangle=float(semiangle), phase=phase.astype(np.float32),
            gradient=gradient.astype(np.float32),
            meta={"exit_plane": int(exit_planes[i]), "periodic": scan.periodic,
                  "margin": scan.margin, "window_start": list(scan.start),
                  "window_gpts": list(scan.gpts), "supercell": [lx, ly, height],
                  "potential_gpts": list(pot.gpts), "num_slices": len(slices),
                  "potential_sampling": float(potential_sampling),
                  "max_angle": float(max_angle), "tilt": list(tilt),
                  "frozen_phonons": int(frozen_phonons), "sigma": float(sigma),
                  "seconds_multislice": elapsed, "seconds_truth": truth_seconds,
                  "abtem": abtem.__version__}))
    return cases


@functools.wraps(_simulate_specimen)
def simulate_specimen(*args, device="cpu", **kwargs):
    with device_context(device):
        return _simulate_specimen(*args, **kwargs)
