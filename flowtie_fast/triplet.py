"""Focal series and triplets: the measured intensities at known defocus.

A :class:`FocalSeries` holds N >= 2 intensity images recorded at propagation
distances ``z`` (Å) around the plane of interest ``z0``; the focal derivative
and the in-focus intensity at ``z0`` are least-squares polynomial
(Savitzky-Golay) combinations of the planes. A :class:`FocalTriplet` is the
common case ``I(z0 - dz), I(z0), I(z0 + dz)``.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .backend import array_module, array_stats, is_cupy
from .errors import RANGES, InputError, check_choice, check_count, check_positive, check_real
from .noise import band_noise, check_noise, poisson_noise
from .physics import wavelength, wavenumber

__all__ = ["FocalSeries", "FocalTriplet", "focal_weights"]


def check_image(name: str, a, shape=None):
    """Validate one real 2-D image and return it as an array (NumPy or CuPy, no copy
    where possible); raise :class:`InputError` naming ``name`` otherwise."""
    if a is None:
        raise InputError(f"{name}: expected a 2-D real array, got None")
    check_not_masked(name, a)
    if not is_cupy(a):
        try:
            a = np.asarray(a)
        except Exception as exc:  # unreadable array-likes
            raise InputError(f"{name}: could not be read as an array ({exc})") from exc
    kind = a.dtype.kind
    if kind == "c":
        raise InputError(f"{name}: expected real intensities, got complex dtype {a.dtype}")
    if kind not in "uif":
        raise InputError(f"{name}: expected a real numeric dtype, got {a.dtype}")
    if a.ndim != 2:
        raise InputError(f"{name}: expected a 2-D array (Ny, Nx), got shape {tuple(a.shape)}")
    if min(a.shape) < 2:
        raise InputError(f"{name}: expected at least 2 pixels along each axis, got {a.shape}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise InputError(f"{name}: expected shape {tuple(shape)} like the other planes, "
                         f"got {tuple(a.shape)}")
    return a


def check_not_masked(name: str, a) -> None:
    """Refuse a NumPy masked array: the solvers would read the values under its
    mask as data."""
    if isinstance(a, np.ma.MaskedArray):
        raise InputError(f"{name}: masked arrays are not supported (the mask would be "
                         "ignored); fill the masked pixels, e.g. a.filled(a.mean())")


def check_intensity_stats(names, stats, planes) -> None:
    """The one validation of measured intensities, for every entry point.

    ``stats`` holds each plane's number of negative values and its sum (N x 2,
    from :meth:`~flowtie_fast.backend.Backend.plane_stats`). Refused, with
    :class:`InputError` naming the plane: NaN or Inf, a negative value (an
    intensity is a count or a sum of counts; the TIE and its solvers need
    ``I >= 0``), and a plane that is zero everywhere (a dropped frame).
    """
    for i, name in enumerate(names):
        negatives, total = stats.item(i, 0), stats.item(i, 1)
        if not math.isfinite(total):
            raise InputError(f"{name}: contains NaN or Inf")
        if negatives:
            low = float(planes[i].min())
            raise InputError(f"{name}: expected non-negative intensities, got {negatives:.0f} "
                             f"negative values, the lowest {low:g} (subtract less background, "
                             "or clip at 0)")
        if total == 0:
            raise InputError(f"{name}: intensity is zero everywhere (a dropped frame?)")


def check_gradient(g, shape):
    """A measured phase gradient (2, Ny, Nx) in rad/Å: a real, finite array of
    images of ``shape`` (NumPy or CuPy, returned without a copy where possible);
    :class:`InputError` naming ``gradient`` otherwise. Finiteness is one sum in
    the array's own dtype (no temporary: a Plan calls this on every icom solve),
    confirmed element by element only where the sum is not finite (it may
    merely have overflowed)."""
    want = (2,) + tuple(shape)
    check_not_masked("gradient", g)
    if not is_cupy(g):
        try:
            g = np.asarray(g)
        except (TypeError, ValueError) as exc:
            raise InputError(f"gradient: could not be read as an array ({exc})") from exc
    if g.dtype.kind not in "uif" or tuple(g.shape) != want:
        raise InputError(f"gradient: expected a real array of shape {want} (rad/Å), got "
                         f"{g.dtype} {tuple(g.shape)}")
    if not math.isfinite(float(g.sum())) and not bool(array_module(g).isfinite(g).all()):
        raise InputError("gradient: contains NaN or Inf")
    if g.dtype.kind == "f" and g.dtype.itemsize > 4:
        # Finite values beyond float32 become Inf in a float32 solve (said to be
        # NaN or Inf there); no phase gradient in rad/Å comes near them.
        peak = max(abs(float(g.max())), abs(float(g.min())))
        if peak > _FLOAT32_MAX:
            raise InputError(f"gradient: values up to {peak:g} exceed the range of float32 "
                             f"({_FLOAT32_MAX:.3g}); a phase gradient is a few rad/Å: check "
                             "its units, or rescale it")
    return g


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_positions(name: str, z, count=None) -> np.ndarray:
    """Plane positions in Å: a sequence (or 1-D array) of real numbers, not
    bools or strings (``np.asarray`` would read ``False`` as 0 and ``"-40"`` as
    -40); ``count`` of them when given. Returned as float64;
    :class:`InputError` naming ``name`` otherwise (finiteness and spacing are
    checked by the callers)."""
    want = f"{count} " if count is not None else ""
    bad = InputError(f"{name}: expected {want}plane positions in Å (real numbers), got "
                     f"{_shown(z)}")
    if isinstance(z, np.ndarray):
        if z.dtype.kind not in "iuf":
            raise bad
        values = z
    elif isinstance(z, (list, tuple, range)):
        for v in z:
            if isinstance(v, np.ndarray) and v.ndim == 0:
                v = v[()]
            if isinstance(v, (bool, np.bool_)) or \
                    not isinstance(v, (Real, np.integer, np.floating)):
                raise bad
        values = z
    else:
        raise bad
    try:
        z = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError, OverflowError) as exc:
        raise bad from exc
    if count is not None and z.size != count:
        raise bad
    return z


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def focal_weights(z, z0: float = 0.0, degree: int | None = None):
    """Least-squares (Savitzky-Golay) weights for the value and the derivative at ``z0``.

    Fits a polynomial of ``degree`` (default ``min(2, N - 1)``) to N samples at
    ``z`` and returns the rows that map the samples to its value and to its
    first derivative at ``z0``. For three planes at ``(-dz, 0, dz)`` this is
    ``I(0)`` and ``(I+ - I-) / (2 dz)``; for uneven spacing the exact
    three-point derivative of the interpolating parabola.

    Parameters
    ----------
    z : sequence of float
        Plane positions in Å, distinct.
    z0 : float
        Where to evaluate, in Å.
    degree : int, optional
        Polynomial degree, 1 <= degree < N.

    Returns
    -------
    value, derivative : ndarray
        Weight rows of length N (derivative weights in 1/Å).
    """
    z = check_positions("z", z)
    z0 = check_real("z0", z0)
    n = z.size
    if degree is None:
        degree = min(2, n - 1)
    if not 1 <= degree < n:
        raise InputError(f"degree: expected 1 <= degree < {n} (number of planes), got {degree}")
    if not (np.all(np.isfinite(z)) and np.isfinite(z0)):
        raise InputError(f"z: expected finite plane positions in Å, got {z.tolist()} "
                         f"(z0 = {z0})")
    if np.unique(z).size != n:
        raise InputError(f"z: expected distinct plane positions, got {z.tolist()}")
    scale = np.max(np.abs(z - z0))
    t = (z - z0) / scale
    vander = np.vander(t, degree + 1, increasing=True)
    pinv = np.linalg.pinv(vander)
    return pinv[0], pinv[1] / scale


REGISTRATION_THRESHOLD = 0.1  # px: smaller shifts are reported, not applied (the
# estimate's accuracy; the dark field of thick crystals shifts by a few hundredths
# of a pixel with defocus alone)


COUNTS_MISMATCH = 10.0  # estimated / Poisson variance beyond which planes are not counts


def _counts_noise(planes, stats):
    """The noise of planes given without one: Poisson where every plane is of
    an integer dtype and its noise, estimated from the image, is within a
    factor 10 of the Poisson variance; the estimate, with a TrustWarning,
    where integer planes are not counts (an 8-bit export, detector units of
    another gain); None, with a TrustWarning for mixed dtypes, otherwise."""
    import warnings

    from .errors import TrustWarning
    from .noise import Noise, estimate_noise

    integer = [p.dtype.kind in "iu" for p in planes]
    if not any(integer):
        return None
    if not all(integer):
        warnings.warn("planes: some are integers (counts?) and some floating point; their "
                      "noise is unknown and nothing is regularised (pass noise=)",
                      TrustWarning, stacklevel=4)
        return None
    size = planes[0].shape[0] * planes[0].shape[1]
    poisson = poisson_noise(stats[:, 1] / size)
    if min(planes[0].shape) < 8:
        return poisson
    estimated = [estimate_noise(p) for p in planes]
    ratio = sum(estimated) / max(sum(poisson.variance), 1e-300)
    if 1 / COUNTS_MISMATCH <= ratio <= COUNTS_MISMATCH:
        return poisson
    warnings.warn(f"planes: integer planes whose noise ({sum(estimated) / 3:.3g}, estimated "
                  f"from the images) is {ratio:.2g} times that of electron counts of their "
                  "mean: taken as measured, not as counts (pass noise= to state it)",
                  TrustWarning, stacklevel=4)
    return Noise(tuple(estimated), "estimated")


def _check_register(register):
    if register is True or register is False or register == "periodic":
        return register
    raise InputError(f"register: expected True, False or 'periodic', got {register!r}")


def _register(planes, signals, register, scan_step):
    """The planes with the drift of the ±dz ones undone (shifts from
    ``signals`` when given, else from the planes), and the record of it.

    The shifts are estimated as for a non-periodic field of view (tapered
    edges: a crystal repeating within a periodic scan gives equal correlation
    peaks a period apart, which the taper tells apart) and applied
    periodically for ``register="periodic"`` (scans of whole periods), by
    mirror extension otherwise (:mod:`flowtie_fast.registration`)."""
    from .registration import apply_shift, register_triplet

    record = {"shifts": np.zeros((3, 2)), "reliable": False, "applied": False,
              "signal": "planes" if signals is None else "df"}
    if min(planes[0].shape) < 8:
        import warnings

        from .registration import RegistrationWarning

        warnings.warn(f"register: images of {tuple(planes[0].shape)} px are too small to "
                      "measure a drift (at least 8 px a side); the planes are used as "
                      "recorded", RegistrationWarning, stacklevel=4)
        return planes, {**record, "why": "images under 8 px a side"}
    host = [np.asarray(p.get() if is_cupy(p) else p) for p in planes]
    source = None if signals is None else [np.asarray(s.get() if is_cupy(s) else s)
                                           for s in signals]
    _, shifts, reliable = register_triplet(host, signals=source, periodic=False,
                                           apply_unreliable=False, threshold=1e9)
    record.update(shifts=shifts, reliable=bool(reliable))
    if not reliable:
        return planes, record
    out = list(planes)
    for i in (0, 2):
        if math.hypot(*shifts[i]) < REGISTRATION_THRESHOLD:
            continue
        shifted = apply_shift(host[i].astype(np.float64), shifts[i],
                              periodic=register == "periodic")
        # Intensities: the interpolation's ringing below zero is clipped; the
        # plane keeps its device and floating dtype (counts become float64).
        xp = array_module(planes[i])
        out[i] = xp.asarray(np.maximum(shifted, 0),
                            dtype=planes[i].dtype if planes[i].dtype.kind == "f" else np.float64)
        record["applied"] = True
    return out, record


def _virtual_image_noise(planes, scan_step, energy, regions, virtual):
    """Noise of 4D-STEM virtual images measured above their band limit, or
    None (no room above it, or the regions unknown)."""
    disk = regions.get("bf-full", (0.0, 0.0))[1]
    if not disk > 0:
        return None
    band = 2 * disk * 1e-3 / wavelength(energy)
    return band_noise(planes, scan_step, band)


class FocalSeries:
    """Intensity images at N >= 2 propagation distances.

    Parameters
    ----------
    planes : sequence of 2-D arrays
        Intensities (any real dtype, NumPy or CuPy), each (Ny, Nx).
    z : sequence of float
        Propagation distance of each plane in Å (docs/conventions.md: a probe defocus
        Δf in abTEM's convention records the plane ``z = -Δf``).
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    energy : float
        Electron energy in eV.
    z0 : float
        Plane where the phase is wanted, in Å (default 0).
    degree : int, optional
        Degree of the least-squares fit (default ``min(2, N - 1)``).
    gradient : array (2, Ny, Nx), optional
        A measured phase gradient in rad/Å (e.g. 4D-STEM centre of mass),
        used by ``method="icom"``.
    noise : Noise, float or sequence of float, optional
        White-noise variance of the planes (intensity², one number or one per
        plane), from which the classical methods set their regularisation
        (:mod:`flowtie_fast.noise`). Default: Poisson statistics where the
        planes are counts (an integer dtype), otherwise unknown (None: no
        regularisation).

    Attributes
    ----------
    noise : Noise or None
        The noise in use (``noise.source`` says where it came from).
    """

    def __init__(self, planes, z, pixel_size, energy, z0: float = 0.0, degree=None,
                 gradient=None, noise=None):
        if isinstance(planes, (list, tuple)):
            planes = list(planes)
        elif planes is not None and getattr(planes, "ndim", 0) == 3:
            planes = [planes[i] for i in range(planes.shape[0])]
        else:
            raise InputError("planes: expected a sequence of 2-D arrays or a 3-D stack")
        if len(planes) < 2:
            raise InputError(f"planes: expected at least 2 planes, got {len(planes)}")
        z = check_positions("z", z, len(planes))
        if not np.all(np.isfinite(z)):
            raise InputError(f"z: expected {len(planes)} finite positions in Å, got {z.tolist()}")
        z0 = check_real("z0", z0)
        lo, hi = RANGES["dz"][:2]
        gaps = np.diff(np.sort(z))
        gaps = gaps[gaps > 0]  # repeated planes are refused by focal_weights
        span = float(z.max() - z.min())
        if (gaps.size and gaps.min() < lo) or np.abs(z - z0).max() > hi:
            raise InputError(f"z: expected planes {lo:g} to {hi:g} Å apart and from z0, got "
                             f"{z.tolist()} with z0 = {z0:g}")
        if not z.min() - span <= z0 <= z.max() + span:
            raise InputError(f"z0: expected a plane within one span ({span:g} Å) of the "
                             f"measured ones {z.tolist()}, got {z0:g}")
        if degree is not None:
            degree = check_count("degree", degree, 1, len(planes) - 1)
        names = self._plane_names(len(planes))
        first = check_image(names[0], planes[0])
        self.planes = [first] + [check_image(nm, p, first.shape)
                                 for nm, p in zip(names[1:], planes[1:])]
        stats = array_stats(self.planes)
        check_intensity_stats(names, stats, self.planes)
        self.noise = check_noise(noise, len(self.planes))
        if self.noise is None:
            self.noise = _counts_noise(self.planes, stats)
        self.z = z
        self.z0 = float(z0)
        self.pixel_size = check_positive("pixel_size", pixel_size, pair=True)
        self.energy = check_positive("energy", energy)
        self.intensity_weights, self.derivative_weights = focal_weights(z, self.z0, degree)
        self.gradient = None
        self.gradient_noise = None  # Noise of the gradient's two components, (rad/Å)²
        if gradient is not None:
            self.gradient = self._check_gradient(gradient)

    @staticmethod
    def _plane_names(n):
        return [f"planes[{i}]" for i in range(n)]

    def _check_gradient(self, g):
        return check_gradient(g, self.shape)

    @property
    def shape(self) -> tuple:
        """Image shape (Ny, Nx)."""
        return tuple(self.planes[0].shape)

    @property
    def wavenumber(self) -> float:
        """``k = 2π/λ`` in rad/Å."""
        return wavenumber(self.energy)

    @property
    def on_gpu(self) -> bool:
        """True when the planes are CuPy arrays."""
        return is_cupy(self.planes[0])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(shape={self.shape}, z={self.z.tolist()} Å, "
                f"pixel_size={self.pixel_size} Å, energy={self.energy:g} eV)")


class FocalTriplet(FocalSeries):
    """Three intensities ``I(z0 - dz), I(z0), I(z0 + dz)`` ordered by z.

    Parameters
    ----------
    minus, zero, plus : 2-D arrays
        Intensities at ``z0 - dz_minus``, ``z0`` and ``z0 + dz_plus`` (any real
        dtype, NumPy or CuPy, same shape).
    dz : float or (float, float)
        Defocus step in Å; a pair ``(dz_minus, dz_plus)`` for uneven spacing.
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    energy : float
        Electron energy in eV.
    gradient : array (2, Ny, Nx), optional
        A measured phase gradient in rad/Å for ``method="icom"``.
    noise : Noise, float or sequence of float, optional
        White-noise variance of the planes (see :class:`FocalSeries`).
    register : bool or "periodic"
        Undo a drift of the ±dz images against the in-focus one, estimated
        from the images themselves (default False: from images alone, the
        mean lateral transport of the image by the specimen's phase gradient
        cannot be told from drift, which biases the estimate by up to a few
        tenths of a pixel for strong phase objects or large dz;
        :meth:`from_4dstem` registers by default, from the dark field).
        ``"periodic"`` for images of whole periods. The record is in
        ``triplet.registration``.

    Examples
    --------
    >>> t = FocalTriplet(minus, zero, plus, dz=20.0, pixel_size=0.18, energy=300e3)
    """

    def __init__(self, minus, zero, plus, dz, pixel_size, energy, gradient=None, noise=None,
                 register=False):
        dz_minus, dz_plus = check_positive("dz", dz, pair=True)
        self.dz = (dz_minus, dz_plus)
        _check_register(register)
        super().__init__([minus, zero, plus], [-dz_minus, 0.0, dz_plus], pixel_size, energy,
                         z0=0.0, degree=2, gradient=gradient, noise=noise)
        self.registration = None
        if register:
            self.planes, self.registration = _register(self.planes, None, register,
                                                       self.pixel_size)

    @staticmethod
    def _plane_names(n):
        return ["minus", "zero", "plus"]

    @classmethod
    def from_4dstem(cls, minus, zero, plus, dz, scan_step, k_sampling, energy, *, center=None,
                    virtual="bf", bf_radius=None, com_radius=None, rotation=0.0, flip=False,
                    register=True, backend="auto", chunk_bytes=64 << 20):
        """Focal triplet from 4D-STEM data recorded at three probe defoci.

        Each dataset is reduced in one pass (chunked, bounded memory) to the
        virtual images and the centre of mass; the triplet's planes are the
        chosen virtual image and its ``gradient`` is ``2π ×`` the centre of
        mass of the in-focus dataset (rad/Å, for ``method="icom"``).

        Parameters
        ----------
        minus, zero, plus : array-like (Sy, Sx, Ky, Kx)
            Patterns recorded at the planes ``-dz, 0, +dz`` (abTEM defoci
            ``+dz, 0, -dz``: docs/conventions.md), any real dtype; NumPy, CuPy, memory
            maps, HDF5 datasets or dask arrays.
        dz : float or (float, float)
            Defocus step in Å.
        scan_step : float or (float, float)
            Scan step in Å (the pixel size of the triplet).
        k_sampling : float or (float, float)
            Detector sampling in 1/Å per pixel.
        energy : float
            Electron energy in eV.
        center : (float, float), optional
            Detector centre in pixels; default: found from the bright-field
            disk of patterns sampled across the in-focus scan.
        virtual : {"bf", "bf-full", "abf", "df", "whole"}
            Which virtual image forms the planes: a small bright-field disk
            (radius ``bf_radius``: coherent bright field, the image the TIE
            needs), the whole bright-field disk, its outer half (annular
            bright field), the annulus outside it, or the whole detector.
        bf_radius : float, optional
            Radius of the "bf" disk in mrad; default a quarter of the
            bright-field disk measured on the mean pattern (on GaAs
            simulations at 20 mrad this gave the lowest TIE phase error:
            benchmarks/EVALUATION.md).
        com_radius : float, optional
            Limit of the centre of mass in mrad (default: whole detector).
        rotation : float or "auto"
            Detector-to-scan rotation in degrees; "auto" finds it (and
            ``flip``) by minimising the curl of the centre of mass.
        flip : bool
            Transpose the detector axes before rotating.
        register : bool or "periodic"
            Undo the drift between the three scans (default True): the
            sub-pixel shifts of the ±dz scans against the in-focus one are
            estimated from their annular dark-field images (which do not
            change with defocus) and applied to the planes before any solve;
            ``"periodic"`` for scans of whole periods (simulations), where
            the shift wraps around; False to skip. The estimate and whether
            it was applied are in ``triplet.registration`` (shifts in px
            that align each plane, row 1 zero); shifts under 0.1 px are
            reported, not applied, and an unreliable estimate is not applied,
            with a :class:`~flowtie_fast.registration.RegistrationWarning`.
        backend : {"auto", "cpu", "gpu"}
        chunk_bytes : int
            Upper bound of raw data read at once.

        Returns
        -------
        FocalTriplet
            With ``reductions``: the three :class:`~flowtie_fast.stem.Reduction`.
        """
        from . import stem

        names = ("minus", "zero", "plus")
        data = [stem.check_4d(n, d) for n, d in zip(names, (minus, zero, plus))]
        for n, d in zip(names, data):
            if tuple(d.shape) != tuple(data[1].shape):
                raise InputError(f"{n}: expected shape {tuple(data[1].shape)} like zero, "
                                 f"got {tuple(d.shape)}")
        k_sampling = check_positive("k_sampling", k_sampling, pair=True)
        energy = check_positive("energy", energy)
        chunk_bytes = check_count("chunk_bytes", chunk_bytes, 1)
        for n, d in zip(names, data):
            if not (is_cupy(d) or stem._is_dask(d)):  # host memory, before reading
                stem.check_reduction_memory(n, d, chunk_bytes)
        sample = stem.sample_patterns(data[1])
        mean = stem.mean_pattern(sample)
        if not np.isfinite(mean).all():
            raise InputError("zero: the patterns contain NaN or Inf")
        detector, regions = stem.triplet_geometry(mean, k_sampling, energy, center, bf_radius)
        check_choice("virtual", virtual, tuple(regions))
        stem.check_region(virtual, regions, detector, bf_radius is not None)
        for n, d in zip(names, data):  # sums beyond float32 (data of a wider dtype)
            if np.dtype(d.dtype).kind == "f" and np.dtype(d.dtype).itemsize > 4:
                stem.check_float32_range(n, sample if n == "zero" else stem.sample_patterns(d),
                                         detector)
        reductions = [stem.reduce_4dstem(d, detector, regions, com_radius_mrad=com_radius,
                                         backend=backend, chunk_bytes=chunk_bytes, name=n)
                      for n, d in zip(names, data)]
        counts = all(np.dtype(d.dtype).kind in "iu" for d in data)
        return cls.from_reductions(reductions, dz, scan_step, virtual=virtual,
                                   rotation=rotation, flip=flip, counts=counts,
                                   register=register)

    @classmethod
    def from_reductions(cls, reductions, dz, scan_step, *, virtual="bf", rotation=0.0,
                        flip=False, counts=False, register=True):
        """Focal triplet from the three reductions of a 4D-STEM triplet.

        The second half of :meth:`from_4dstem`, for reductions made elsewhere
        (a LiberTEM UDF on a file or a live stream: :mod:`flowtie_fast.live`).

        Parameters
        ----------
        reductions : three :class:`~flowtie_fast.stem.Reduction`
            Of the datasets at ``-dz, 0, +dz``, before any rotation.
        dz, scan_step, virtual, rotation, flip, register
            As in :meth:`from_4dstem`.
        counts : bool
            Whether the patterns were electron counts (an integer dtype).

        Notes
        -----
        The triplet's ``noise`` is measured where the virtual images leave
        room above their band limit (a probe of aperture α, the measured
        bright-field disk, puts no spatial frequency above ``2α / λ`` into
        any scanned image, whatever the specimen), else taken as Poisson where the patterns
        were counts, else unknown (:mod:`flowtie_fast.noise`).
        """
        from . import stem

        reductions = list(reductions)
        if len(reductions) != 3 or not all(isinstance(r, stem.Reduction) for r in reductions):
            raise InputError("reductions: expected three flowtie_fast.stem.Reduction "
                             "(minus, zero, plus)")
        check_choice("virtual", virtual, tuple(reductions[1].virtual))
        scan_step = check_positive("scan_step", scan_step, pair=True)
        planes = [r.virtual[virtual] for r in reductions]
        energy = reductions[1].detector.energy
        # The noise first: an interpolating shift smooths it.
        noise = _virtual_image_noise(planes, scan_step, energy, reductions[1].regions, virtual)
        if noise is None and counts:
            noise = poisson_noise([float(p.mean()) for p in planes])
        registration = None
        if _check_register(register):
            signals = [r.virtual.get("df") for r in reductions]
            if any(x is None for x in signals):  # no dark field on this detector
                import warnings

                from .registration import RegistrationWarning

                warnings.warn("register: the detector records no dark field to measure the "
                              "drift on; not applied: the planes are used as recorded",
                              RegistrationWarning, stacklevel=2)
                registration = {"shifts": np.zeros((3, 2)), "reliable": False,
                                "applied": False, "signal": None,
                                "why": "no dark field on the detector"}
            else:
                planes, registration = _register(planes, signals, register, scan_step)
        t = cls(*planes, dz=dz, pixel_size=scan_step, energy=energy, noise=noise)
        com = reductions[1].com
        if isinstance(rotation, str):
            if rotation != "auto":
                raise InputError(f"rotation: expected degrees or 'auto', got {rotation!r}")
            rotation, flip = stem.calibrate_rotation(com, t._tie_gradient())
        rotation = check_real("rotation", rotation)
        if not isinstance(flip, (bool, np.bool_)):
            raise InputError(f"flip: expected True or False, got {flip!r}")
        for r in reductions:
            r.com = stem.rotate_com(r.com, rotation, bool(flip))
            r.rotation, r.flip = rotation, bool(flip)
        t.registration = registration
        t.gradient = t._check_gradient(reductions[1].gradient)
        t.gradient_noise = _virtual_image_noise(list(t.gradient), scan_step, energy,
                                                reductions[1].regions, virtual)
        t.reductions = reductions
        return t

    def _tie_gradient(self):
        """Phase gradient of Teague's TIE on these planes (rad/Å)."""
        from .solvers import reconstruct

        return reconstruct(self, method="tie", backend="cpu").gradient

    @property
    def minus(self):
        """Intensity at ``z0 - dz``."""
        return self.planes[0]

    @property
    def zero(self):
        """Intensity at ``z0``."""
        return self.planes[1]

    @property
    def plus(self):
        """Intensity at ``z0 + dz``."""
        return self.planes[2]
