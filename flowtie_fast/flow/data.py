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
  of mass carry the noise of a real acquisition at that dose.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InputError, check_positive
from ..io import load

__all__ = ["Sample", "load_samples", "augment", "tile"]


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
        a dose that is neither None nor a positive finite number.
    """
    from ..evaluate import _files
    from ..simulate import poisson_counts
    from ..triplet import FocalTriplet

    doses = check_doses(doses)
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    for p in paths:
        if not Path(p).exists():
            raise InputError(f"paths: no such file or folder {str(p)!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for path in _files(paths):
        with load(path) as ds:
            if ds.phase_gt is None or ds.gradient_gt is None:
                continue
            for dose in doses:
                if dose is None:
                    t = ds.triplet(**{"backend": "cpu", **triplet_options})
                elif ds.kind == "4dstem":
                    counts = [poisson_counts(p, dose, ds.scan_step, rng, np.uint16)
                              for p in (ds.minus, ds.zero, ds.plus)]
                    t = FocalTriplet.from_4dstem(*counts, dz=ds.dz, scan_step=ds.scan_step,
                                                 k_sampling=ds.k_sampling, energy=ds.energy,
                                                 **{"backend": "cpu", **triplet_options})
                else:
                    continue
                planes = np.stack([np.asarray(p, np.float32) for p in t.planes])
                com = (np.asarray(t.gradient, np.float32) / (2 * np.pi)
                       if t.gradient is not None else np.zeros((2,) + t.shape, np.float32))
                name = Path(path).stem + ("" if dose is None else f"@{dose:.0e}")
                samples.append(Sample(planes, np.asarray(t.derivative_weights, np.float32),
                                      com, np.asarray(ds.phase_gt, np.float32),
                                      np.asarray(ds.gradient_gt, np.float32), t.wavenumber,
                                      tuple(t.pixel_size), name))
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
    """A random periodic shift, flip, 90° rotation and (optionally) dose."""
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
    crop, so the spectral operators of the loss stay exact)."""
    def t(a):
        return np.tile(a, (1,) * (a.ndim - 2) + (reps, reps))

    return replace(s, planes=t(s.planes), com=t(s.com), phase=t(s.phase),
                   gradient=t(s.gradient))
