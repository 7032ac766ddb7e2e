"""Training samples for the flow model, and augmentations that respect the physics.

A sample is one focal triplet with its ground truth, as NumPy arrays:
the planes, the focal derivative, the centre of mass (1/Å) of the in-focus
dataset, the phase (rad) and its gradient (rad/Å), the wavenumber (rad/Å) and
the pixel size (Å). Augmentations act on all of them consistently:

- periodic shifts and tilings (the scans cover whole unit cells);
- flips and 90° rotations, applied to vector fields as vectors (a flip of
  axis 0 negates component 0; a rotation permutes and negates components and
  swaps the pixel sizes);
- dose: Poisson counts at a random dose per pixel, the derivative recomputed
  from the noisy planes (:func:`augment`, for triplets of images);
- 4D-STEM dose: :func:`load_samples` with ``doses`` draws Poisson counts on
  the patterns themselves and reduces them, so that the planes and the centre
  of mass carry the noise of a real acquisition at that dose;
- real acquisitions: :func:`load_corpus` reads a sweep folder
  (:mod:`flowtie_fast.simulation.sweep`) and draws, per file, a fixed number of
  acquisitions (:mod:`flowtie_fast.simulation.acquisition`: counts with gain noise and a
  flat-field map, drift, source blur) on the 4D patterns before the reduction,
  which registers the three scans as the library does at inference.

Periodic and non-periodic samples
---------------------------------
Samples of whole periods (``Sample.periodic``, the default) take periodic
shifts and tilings. Windows (``periodic=False``: a crop of a larger specimen,
its margin already removed) take flips and 90° rotations only: :func:`augment`
never shifts them and :func:`tile` returns them as they are, since wrapping a
window around would put a seam into it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, check_count, check_positive
from ..evaluation.evaluate import case_files
from ..io import load
from ..simulation import acquisition
from ..simulation.acquisition import CONDITIONS
from ..simulation.simulate import poisson_counts
from ..simulation.sweep import read_manifest
from ..triplet import FocalTriplet

__all__ = ["Sample", "load_samples", "load_corpus", "corpus_ranges", "augment", "tile",
           "MIN_TRAINING_DOSE"]

# The lowest dose load_corpus draws by default (e⁻/Å²), whatever the recipe's
# range says. The recipe's [acquisition] dose starts at 1e2: at scan steps of
# 0.1-0.5 Å a pattern then holds 1-25 electrons, the phase is lost to every
# method (the validation conditions start at 1e3) and such samples, whose loss
# is normalised per sample like every other one, would mostly teach the
# network to blur. 1e3 is the low end of the validation conditions.
MIN_TRAINING_DOSE = 1e3


@dataclass
class Sample:
    planes: np.ndarray  # (3, H, W): I(-dz), I(0), I(+dz)
    weights: np.ndarray  # (3,) derivative weights (1/Å) of the planes
    com: np.ndarray  # (2, H, W) centre of mass, 1/Å
    phase: np.ndarray  # (H, W) rad
    gradient: np.ndarray  # (2, H, W) rad/Å
    wavenumber: float  # rad/Å
    pixel_size: tuple  # Å
    name: str = ""
    periodic: bool = True  # whole periods: periodic shifts, tilings and spectral loss terms
    conditions: dict | None = None  # the acquisition drawn for it (load_corpus), else None

    @property
    def didz(self) -> np.ndarray:
        """Focal derivative (intensity per Å)."""
        return np.tensordot(self.weights, self.planes, axes=(0, 0))


def check_doses(doses) -> list:
    """``doses`` as a list of None (noise-free) and positive finite floats
    (e⁻/Å²); :class:`InputError` naming ``doses`` otherwise."""
    if isinstance(doses, (str, bytes)) or not hasattr(doses, "__iter__"):
        raise InputError(f"doses: expected a sequence of doses in e⁻/Å² (or None), "
                         f"got {doses!r}")
    return [None if d is None else check_positive("doses", d) for d in doses]


def _truth32(a, key: str, path) -> np.ndarray:
    """A ground truth ``a`` (``key`` of the file ``path``) as float32, which
    training works in; :class:`InputError` naming the file and key where its
    values overflow float32 (a gradient of 1e300 became Inf and the training
    "collapsed" as if the learning rate were too high)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(a, np.float32)
    if not np.isfinite(out).all():
        big = float(np.nanmax(np.abs(np.asarray(a, np.float64))))
        unit = "rad" if key == "phase_gt" else "rad/Å"
        raise InputError(f"{Path(path).name}: '{key}' holds values up to {big:.3g}, beyond the "
                         f"range of float32 (3.4e+38) that training works in; expected {unit}")
    return out


#: The factor either way beyond which a file's ``gradient_gt`` and the
#: gradient of its ``phase_gt`` (central differences) are not one phase's.
TRUTH_MISMATCH = 10.0


def _check_truths(phase, gradient, pixel_size, path) -> None:
    """:class:`InputError` naming the file where its ``gradient_gt`` is not the
    gradient of its ``phase_gt`` within :data:`TRUTH_MISMATCH` in RMS (a
    gradient 1e6 times its phase's was trained on without a word; central
    differences read a sharp phase's gradient low, never ten times)."""
    if min(phase.shape) < 3 or tuple(gradient.shape[-2:]) != tuple(phase.shape):
        return
    with np.errstate(over="ignore", invalid="ignore"):
        step = [float(v) for v in np.broadcast_to(np.asarray(pixel_size, float), (2,))]
        fd = np.gradient(np.asarray(phase, np.float64), *step)
        want = math.sqrt(sum(float(np.mean(g * g)) for g in fd))
        got = math.sqrt(float(np.mean(np.asarray(gradient, np.float64) ** 2)) * 2)
    if not (want > 0 and math.isfinite(want) and math.isfinite(got)):
        return
    ratio = got / want
    if not 1 / TRUTH_MISMATCH <= ratio <= TRUTH_MISMATCH:
        raise InputError(f"{Path(path).name}: 'gradient_gt' is {ratio:.3g} times the gradient "
                         f"of its 'phase_gt' (RMS, central differences at {step} Å); expected "
                         "the gradient of that phase in rad/Å")


def load_samples(paths, doses=(None,), seed=0, **triplet_options) -> list:
    """Samples from files of the flowtie_fast layout that carry a ground truth.

    Parameters
    ----------
    paths : path or sequence of paths
        Files or folders.
    doses : sequence of float or None
        One sample per file and dose: None is the noise-free data; a number is
        a dose in e⁻/Å² at which Poisson counts are drawn on the 4D-STEM
        patterns before the reduction (files of images: noise-free only).
    seed : int
        Of the Poisson draws.
    **triplet_options
        Passed to :meth:`Dataset.triplet` (e.g. ``virtual``).

    Raises
    ------
    InputError
        Before anything is read: a path that does not exist (naming it), or
        a dose that is neither None nor a positive finite number; naming the
        file and key: a ground truth beyond float32's range.
    """
    doses = check_doses(doses)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"paths: no such file or folder {str(p)!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for path in case_files(paths):
        with load(path) as ds:
            if ds.phase_gt is None or ds.gradient_gt is None:
                continue
            phase_gt = _truth32(ds.phase_gt, "phase_gt", path)
            gradient_gt = _truth32(ds.gradient_gt, "gradient_gt", path)
            _check_truths(phase_gt, gradient_gt, ds.scan_step, path)
            for dose in doses:
                if dose is not None and ds.kind != "4dstem":
                    continue
                try:  # named by its file: a folder holds many
                    if dose is None:
                        t = ds.triplet(**{"backend": "cpu", **triplet_options})
                    else:
                        counts = [poisson_counts(p, dose, ds.scan_step, rng, np.uint16)
                                  for p in (ds.minus, ds.zero, ds.plus)]
                        t = FocalTriplet.from_4dstem(*counts, dz=ds.dz, scan_step=ds.scan_step,
                                                     k_sampling=ds.k_sampling, energy=ds.energy,
                                                     **{"backend": "cpu", **triplet_options})
                except InputError as exc:
                    raise type(exc)(f"{Path(path).name}: {exc}") from None
                planes = np.stack([np.asarray(p, np.float32) for p in t.planes])
                com = (np.asarray(t.gradient, np.float32) / (2 * np.pi)
                       if t.gradient is not None else np.zeros((2,) + t.shape, np.float32))
                name = Path(path).stem + ("" if dose is None else f"@{dose:.0e}")
                samples.append(Sample(planes, np.asarray(t.derivative_weights, np.float32),
                                      com, phase_gt, gradient_gt, t.wavenumber,
                                      tuple(t.pixel_size), name))
    return samples


def corpus_ranges(acquisition, overrides=None, min_dose=MIN_TRAINING_DOSE) -> dict:
    """The ranges :func:`load_corpus` draws acquisitions from: a manifest
    line's ``acquisition`` table, updated by ``overrides`` (a key set to None
    switches that effect off), with the dose's low end raised to ``min_dose``
    (None: as recorded).

    Raises
    ------
    InputError
        ``overrides`` that is not a mapping of known conditions
        (:data:`flowtie_fast.simulation.acquisition.CONDITIONS`), or a bad ``min_dose``.
    """
    if overrides is not None and not isinstance(overrides, Mapping):
        raise InputError(f"ranges: expected a mapping of acquisition ranges, got {overrides!r}")
    unknown = [k for k in (overrides or {}) if k not in CONDITIONS]
    if unknown:
        raise InputError(f"ranges: unknown conditions {unknown!r}; expected keys among "
                         f"{CONDITIONS}")
    out = {k: v for k, v in dict(acquisition or {}).items() if k in CONDITIONS}
    out.update(overrides or {})
    out = {k: v for k, v in out.items() if v is not None}
    if min_dose is not None and out.get("dose") is not None:
        floor = check_positive("min_dose", min_dose)
        dose = out["dose"]
        if isinstance(dose, (list, tuple)):
            lo, hi = (float(v) for v in dose)
            out["dose"] = (max(lo, floor), max(hi, floor))
        else:
            out["dose"] = max(float(dose), floor)
    return out


def _corpus_sample(t, phase, gradient, name, periodic, conditions) -> Sample:
    planes = np.stack([np.asarray(p, np.float32) for p in t.planes])
    com = (np.asarray(t.gradient, np.float32) / (2 * np.pi)
           if t.gradient is not None else np.zeros((2,) + t.shape, np.float32))
    return Sample(planes, np.asarray(t.derivative_weights, np.float32), com,
                  np.ascontiguousarray(phase, np.float32),
                  np.ascontiguousarray(gradient, np.float32), t.wavenumber,
                  tuple(float(h) for h in t.pixel_size), name, periodic, conditions)


def load_corpus(folder, *, variants=3, seed=0, ranges=None, min_dose=MIN_TRAINING_DOSE,
                series=None, progress=None, **triplet_options) -> list:
    """Samples from a sweep folder (:func:`flowtie_fast.simulation.sweep.run`): every file
    of every finished series in its ``manifest.jsonl``, noise-free and under
    ``variants`` random acquisitions.

    For each file, the noise-free sample comes first, then ``variants``
    samples, each with its own conditions drawn by
    :func:`flowtie_fast.simulation.acquisition.random_conditions` from the series'
    recorded ``acquisition`` ranges (see :func:`corpus_ranges`: ``ranges``
    overrides, the dose floored at ``min_dose``) and applied to the 4D patterns
    by :func:`flowtie_fast.simulation.acquisition.apply` (source blur, drift, counts with
    gain noise and a flat-field map). The patterns are then reduced by
    :meth:`FocalTriplet.from_4dstem` with registration (``"periodic"`` for
    series of whole periods, True for windows), as the library reduces an
    acquisition at inference: the network sees the registered planes and the
    centre of mass it will be fed.

    Windows (``truth.periodic`` false) carry ``truth.margin`` extra scan
    positions each side: the drift moves the scans within it and the margin is
    then cropped, from the patterns (by :func:`~flowtie_fast.simulation.acquisition.apply`)
    and from the ground truth; their samples have ``periodic=False``. The drift
    is capped at the margin.

    Deterministic: the draws of a file come from a generator seeded by
    ``(seed, series index, file position)``, so they do not depend on which
    other series are in the folder (a growing corpus keeps its earlier
    samples). The 4D arrays of a file are dropped once it is reduced.

    Parameters
    ----------
    folder : path
        Holding ``manifest.jsonl`` and the series' files.
    variants : int
        Acquisitions per file (>= 0) besides the noise-free sample.
    seed : int
    ranges : mapping, optional
        Overrides of the recorded ranges (keys of
        :data:`flowtie_fast.simulation.acquisition.CONDITIONS`; None switches an effect off).
    min_dose : float or None
        Lowest dose drawn (e⁻/Å², default :data:`MIN_TRAINING_DOSE`); None: the
        recorded range as it is.
    series : sequence of str, optional
        Only these series ids (``"s0007"``); default: all finished ones.
    progress : callable, optional
        Called with a line of text per file.
    **triplet_options
        Passed to :meth:`FocalTriplet.from_4dstem` (e.g. ``virtual``).

    Returns
    -------
    list of Sample
        Named ``<file stem>`` (noise-free) and ``<file stem>@a<j>``, in the
        manifest's series order; ``conditions`` holds what was applied (dose,
        gain noise, gain map, drift, source FWHM, margin) and the registration
        (``registered``, ``registration_shifts``).

    Raises
    ------
    InputError
        Before anything is read: no such folder, no manifest in it, a bad
        ``variants``, ``seed``, ``ranges`` or ``min_dose``, an unknown series id,
        a listed file that is missing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"folder: no such folder {str(folder)!r}")
    if not (folder / "manifest.jsonl").is_file():
        raise InputError(f"folder: {str(folder)!r} has no manifest.jsonl (a sweep folder: "
                         f"flowtie simulate --sweep)")
    variants = check_count("variants", variants, 0)
    seed = check_count("seed", seed, 0)
    if min_dose is not None:
        check_positive("min_dose", min_dose)
    corpus_ranges({}, ranges, min_dose)  # checks ranges
    records = sorted(read_manifest(folder).values(), key=lambda r: (r.get("index", 0), r["id"]))
    if series is not None:
        wanted = [series] if isinstance(series, str) else list(series)
        known = {r["id"] for r in records}
        missing = [s for s in wanted if s not in known]
        if missing:
            raise InputError(f"series: {missing!r} not finished in {str(folder)!r}")
        records = [r for r in records if r["id"] in set(wanted)]
    jobs = []
    for rec in records:
        truth = rec.get("truth") or {}
        periodic = bool(truth.get("periodic", rec.get("scan", {}).get("periodic", True)))
        margin = 0 if periodic else int(truth.get("margin", rec.get("scan", {}).get("margin", 0)))
        todo = corpus_ranges(rec.get("acquisition"), ranges, min_dose)
        if todo.get("drift") is not None and not periodic:
            todo["drift"] = min(float(todo["drift"]), float(margin))
        for k, entry in enumerate(rec.get("files", [])):
            path = folder / entry["file"]
            if not path.is_file():
                raise InputError(f"folder: {entry['file']} of series {rec['id']} is listed in "
                                 f"manifest.jsonl but missing")
            jobs.append((rec, k, path, periodic, margin, todo))
    options = {"backend": "cpu", **triplet_options}
    samples = []
    for rec, k, path, periodic, margin, todo in jobs:
        rng = np.random.default_rng([seed, int(rec.get("index", 0)), k])
        register = "periodic" if periodic else True
        with load(path) as ds:
            if ds.kind != "4dstem" or ds.phase_gt is None or ds.gradient_gt is None:
                continue
            raw = [np.asarray(p) for p in (ds.minus, ds.zero, ds.plus)]
            calib = {"dz": ds.dz, "scan_step": ds.scan_step, "k_sampling": ds.k_sampling,
                     "energy": ds.energy}
            # float32, as the samples hold them (checked to fit)
            phase = _truth32(ds.phase_gt, "phase_gt", path)
            gradient = _truth32(ds.gradient_gt, "gradient_gt", path)
            _check_truths(phase, gradient, ds.scan_step, path)
        if margin:
            phase = phase[margin:-margin, margin:-margin]
            gradient = gradient[:, margin:-margin, margin:-margin]
        var = float(np.var(phase))
        if not (np.isfinite(phase).all() and np.isfinite(gradient).all() and var > 0):
            if progress is not None:
                progress(f"{path.name}: skipped (flat or non-finite ground truth)")
            continue
        for j in range(variants + 1):
            if j == 0:
                cond = {"dose": None, "gain_noise": 0.0, "gain_map": None, "drift": None,
                        "source_fwhm": 0.0}
            else:
                cond = acquisition.random_conditions(rng, todo)
            planes, applied = acquisition.apply(raw, rng=rng, scan_step=calib["scan_step"],
                                                periodic=periodic, margin=margin, **cond)
            with warnings.catch_warnings():  # unreliable registrations are left unapplied
                warnings.simplefilter("ignore")
                t = FocalTriplet.from_4dstem(*planes, **calib, register=register, **options)
            del planes
            reg = getattr(t, "registration", None) or {}
            applied = {key: applied[key] for key in ("dose", "gain_noise", "gain_map", "drift",
                                                     "source_fwhm", "margin")}
            applied["registered"] = bool(reg.get("applied", False))
            shifts = reg.get("shifts")
            applied["registration_shifts"] = None if shifts is None else \
                np.asarray(shifts, float).tolist()
            name = path.stem + ("" if j == 0 else f"@a{j}")
            samples.append(_corpus_sample(t, phase, gradient, name, periodic, applied))
        del raw
        if progress is not None:
            progress(f"{path.name}: {variants + 1} samples ({'periodic' if periodic else 'window'}"
                     f", {samples[-1].phase.shape[0]} x {samples[-1].phase.shape[1]})")
    return samples


def _flip(s: Sample, axis: int) -> Sample:
    sign = np.ones((2, 1, 1), np.float32)
    sign[axis] = -1
    return replace(s, planes=np.flip(s.planes, axis + 1).copy(),
                   com=sign * np.flip(s.com, axis + 1), phase=np.flip(s.phase, axis).copy(),
                   gradient=sign * np.flip(s.gradient, axis + 1))


def _rot90(s: Sample) -> Sample:
    """f'(a, b) = f(b, N1 - 1 - a): ∂f'/∂a = -∂f/∂x1, ∂f'/∂b = ∂f/∂x0."""
    def rot(a):
        return np.rot90(a, 1, axes=(-2, -1)).copy()

    def vec(v):
        return np.stack([-rot(v[1]), rot(v[0])])

    return replace(s, planes=rot(s.planes), com=vec(s.com), phase=rot(s.phase),
                   gradient=vec(s.gradient), pixel_size=(s.pixel_size[1], s.pixel_size[0]))


def _shift(s: Sample, dy: int, dx: int) -> Sample:
    def r(a):
        return np.roll(a, (dy, dx), axis=(-2, -1))

    return replace(s, planes=r(s.planes), com=r(s.com), phase=r(s.phase), gradient=r(s.gradient))


def augment(s: Sample, rng: np.random.Generator, dose_range=(None, None)) -> Sample:
    """A random periodic shift (periodic samples only: no random number is
    drawn for it otherwise), flip, 90° rotation and (optionally) dose."""
    if s.periodic:
        s = _shift(s, int(rng.integers(s.phase.shape[0])), int(rng.integers(s.phase.shape[1])))
    if rng.random() < 0.5:
        s = _flip(s, 0)
    if rng.random() < 0.5:
        s = _flip(s, 1)
    if rng.random() < 0.5:
        s = _rot90(s)
    lo, hi = dose_range
    if lo is not None and hi is not None:
        dose = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))  # counts per pixel
        mean = s.planes[1].mean()
        counts = rng.poisson(np.clip(s.planes, 0, None) * (dose / mean)).astype(np.float32)
        s = replace(s, planes=counts * (mean / dose))
    return s


def tile(s: Sample, reps: int) -> Sample:
    """``reps`` x ``reps`` periods of a periodic sample (still periodic, unlike a
    crop, so the spectral operators of the loss stay exact); a non-periodic
    sample (a window) is returned as it is."""
    if not s.periodic or reps == 1:
        return s

    def t(a):
        return np.tile(a, (1,) * (a.ndim - 2) + (reps, reps))

    return replace(s, planes=t(s.planes), com=t(s.com), phase=t(s.phase),
                   gradient=t(s.gradient))
