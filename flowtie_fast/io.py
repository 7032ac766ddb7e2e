"""Files: one documented layout in ``.npz`` and HDF5 (``.h5``/``.hdf5``).

Layout ``flowtie_fast/2`` (the same keys in both formats; HDF5 stores the
scalars as attributes of the root group and the arrays as datasets). A file
is written as ``flowtie_fast/1`` where it holds none of the keys version 2
added (``virtual``, ``noise``, ``gradient_noise``, the records
``registration``, ``orientation``, ``saturation``, ``descan``, ``flux``,
``plane_defects``, and the sources), so that earlier versions read it; where it
holds one, as ``flowtie_fast/2``, which earlier versions refuse ("written by
a newer flowtie_fast") rather than drop what steers the solves:

=====================  =========================  ==========================================
key                    shape / type               meaning
=====================  =========================  ==========================================
format                 str                        ``"flowtie_fast/1"`` or ``"flowtie_fast/2"``
kind                   str                        ``"4dstem"`` or ``"triplet"``
minus                  (Sy, Sx, Ky, Kx) or        data at z = -dz (abTEM defocus +dz),
                       (Ny, Nx)                   any real dtype
zero, plus             same                       at z = 0 and z = +dz
dz                     (2,) float, Å              (dz_minus, dz_plus)
scan_step              (2,) float, Å              scan step (4dstem) or pixel size (triplet)
k_sampling             (2,) float, 1/Å            detector sampling (4dstem only)
energy                 float, eV
phase_gt               (Sy, Sx) float, rad        ground-truth phase (optional)
gradient_gt            (2, Sy, Sx) float, rad/Å   its gradient (optional)
gradient               (2, Ny, Nx) float, rad/Å   a measured phase gradient of a triplet
                                                  (optional; triplets only: 4D-STEM data
                                                  give theirs, the centre of mass, when
                                                  reduced), for ``method="icom"``
virtual                str                        the 4D-STEM virtual image the planes are,
                                                  one of ``"bf"``, ``"bf-full"``,
                                                  ``"abf"``, ``"df"``, ``"whole"``
                                                  (optional; triplets only)
noise                  (3,) float, intensity²     the planes' noise variance, one per
                                                  plane (optional; triplets only)
noise_source           str                        where it came from: ``"poisson"``,
                                                  ``"band"``, ``"given"`` or
                                                  ``"estimated"`` (optional with
                                                  ``noise``; default ``"given"``)
gradient_noise         (2,) float, (rad/Å)²       the noise variance of the measured
                                                  gradient, per component (optional,
                                                  with ``gradient``)
gradient_noise_source  str                        as ``noise_source``, for
                                                  ``gradient_noise``
registration           str (JSON)                 the record of the scans' registration
                                                  (``triplet.registration``: ``shifts``
                                                  (3 x 2 px), ``reliable``, ``applied``,
                                                  ``signal``, ``why``; optional; triplets
                                                  only)
orientation            str (JSON)                 ``{"suspect": true, "why": text}``: the
                                                  gradient's own orientation check, made
                                                  when the triplet was, found it misoriented,
                                                  and/or ``misscaled``, ``tie_scale``,
                                                  ``tie_correlation`` where it found the
                                                  gradient and planes disagree in scale
                                                  (``suspect`` false, ``why`` null where that
                                                  alone; optional, with ``gradient``;
                                                  triplets only)
saturation             str (JSON)                 the pile-up check of a 4D-STEM triplet's
                                                  patterns (``triplet.saturation``:
                                                  ``saturated``, ``why``, ``scans``;
                                                  optional; triplets only)
descan                 str (JSON)                 the descan plane of its gradient
                                                  (``triplet.descan``: ``mode``,
                                                  ``applied``, ``slopes`` (2 x 2),
                                                  ``across_px``, ``across_mrad``,
                                                  ``large``; optional, with ``gradient``;
                                                  triplets only)
flux                   str (JSON)                 its scans' beam-current factors
                                                  (``triplet.flux``: ``per_pattern``,
                                                  ``scale``, ``applied``, ``why``,
                                                  ``gain``; optional; triplets only)
plane_defects          str (JSON)                 the isolated pixels replaced in the planes
                                                  (``triplet.plane_defects``: ``pixels``
                                                  per plane, ``repaired`` (true), ``why``;
                                                  optional; triplets only)
material               str                        optional
thickness              float, Å                   optional
semiangle              float, mrad                optional
=====================  =========================  ==========================================

``format`` and ``kind`` are optional when reading (files written by hand
may leave them out), but checked when present: a format newer than
``flowtie_fast/1`` ("written by a newer flowtie_fast") and a ``kind`` that
disagrees with the arrays' dimensions are refused.

A triplet without ``virtual`` (planes given directly, or a file of an older
version) loads with ``virtual`` None; one without ``noise`` has its noise
estimated again when the triplet is made (Poisson for integer planes, else
unknown); one without ``registration`` has no record of its scans'
registration (``triplet.registration`` None). ``orientation`` keeps a
verdict the reloaded triplet could not reach again: the sign of the
centre of mass of a triplet of ``"abf"`` or ``"df"`` planes was checked
against the bright-field images of its 4D-STEM data, which the file does
not hold; so does ``saturation`` (the patterns are not in the file): a
reloaded triplet whose detector saturated is distrusted by every solve, as
the original. ``plane_defects`` is stored where the pixels were replaced
(the planes stored are the repaired ones, in which they are not found
again); pixels reported and not replaced (too many) are not stored: the
planes stored still hold them, and the reloaded triplet finds them again.
The records are JSON text, checked field by field when read (types,
counts, finite numbers, no key given twice), of at most 65536 characters
(``plane_defects``: more, as many as the pixels two screens of planes of
that size replace take: those replaced before a triplet was stored and
those its reloaded planes showed).

The output of ``flowtie reconstruct`` (:func:`write_fields`) is not of this
layout and is not read by :func:`load`: it holds the phase, its gradient,
residual and uncertainty, ``method``, ``pixel_size``, ``source``,
``fallback`` and ``verdict`` (JSON text of the solve's trust entries:
:data:`~flowtie_fast.trust.VERDICT_KEYS`; absent from files of earlier
versions); :mod:`flowtie_fast.cli` lists its keys.

Writes are atomic (a temporary file in the target folder, flushed to disk,
then a rename), so a failed write leaves nothing behind. Temporaries are named
``.NAME.flowtie-tmp.<host>.<pid>.<random>``; the leftovers of a killed writer
are removed by the next write of the same file. Files are created with the
permissions of the process umask, like any other file the user creates. The
path rules and atomic writes are :mod:`flowtie_fast.files`'s.

Reading never executes code from the file (no pickles) and never follows a
link to another file; every key is checked (dtype, shape, positive finite
calibrations) and a bad one raises :class:`~flowtie_fast.errors.InputError`
naming the file and the key. HDF5 datasets are read lazily: a
:class:`Dataset` loaded from HDF5 keeps the file open and streams 4D data
through the reduction.
"""

from __future__ import annotations

import copy
import errno
import importlib
import inspect
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from .files import (_check_bool, _short, _suffix, as_path, atomic_path, check_hdf5_written,
                    check_input_file, check_target)
from .backend import _gib, host_available_memory, is_cupy
from .errors import RANGES, InputError, TrustWarning, check_positive, first_line, is_number
from .noise import SOURCES, Noise
from .physics import wavelength
from .records import (RECORD_CHECKS, RECORDS, json_limit, json_text, joined_defects,
                      stored_defects, suspect_record, unique_keys)
from .stem.detector import VIRTUAL_IMAGES, DetectorWarning
from .trust import scale_warning
from .triplet import FocalTriplet, HDF5ReadError

__all__ = ["Dataset", "load", "save"]

FORMAT = "flowtie_fast/2"  # the newest layout read and written
_ARRAYS = ("minus", "zero", "plus", "phase_gt", "gradient_gt", "gradient")
_REQUIRED = ("minus", "zero", "plus", "dz", "scan_step", "energy")
_OPTIONAL_SCALARS = ("material", "thickness", "semiangle")
# A triplet's record of its planes: the noise of the planes (one variance per
# plane, intensity²) and of the measured gradient (one per component, (rad/Å)²).
_NOISES = (("noise", 3, "intensity²", "plane"), ("gradient_noise", 2, "(rad/Å)²", "component"))
_TRIPLET_ONLY = ("gradient", "virtual") + RECORDS + tuple(k for k, *_ in _NOISES)
#: The keys layout 2 added: a file holding one is written as flowtie_fast/2.
_VERSION_2 = ("virtual", "noise", "gradient_noise") + RECORDS
_KEYS = _ARRAYS + ("dz", "scan_step", "k_sampling", "energy", "format", "kind") + \
    _OPTIONAL_SCALARS + ("virtual",) + RECORDS + \
    tuple(n for k, *_ in _NOISES for n in (k, k + "_source"))
#: The keys that hold text (the rest hold numbers).
_TEXT_KEYS = ("format", "kind", "material", "virtual") + RECORDS + \
    tuple(k + "_source" for k, *_ in _NOISES)
_NUMBERS = "real numbers (integers or floats)"


@dataclass
class Dataset:
    """A focal triplet on disk or in memory: 4D-STEM data or three images.

    Build the triplet with :meth:`triplet`. :func:`load` and
    :func:`~flowtie_fast.io.load_raw_triplet` make datasets; each parameter
    is kept as the attribute of the same name.

    Parameters
    ----------
    minus, zero, plus : array
        The planes at ``-dz, 0, +dz``: 4D-STEM patterns (Sy, Sx, Ky, Kx) or
        images (Ny, Nx), in memory, memory-mapped or HDF5 datasets.
    dz : (float, float)
        Defocus steps in Å.
    scan_step : (float, float)
        Scan step (4D-STEM) or pixel size (images) in Å.
    energy : float
        Electron energy in eV.
    k_sampling : (float, float) or None, optional
        Detector sampling in 1/Å per pixel (4D-STEM data; default None).
    phase_gt : array (Ny, Nx), optional
        Ground-truth phase in rad (simulations).
    gradient_gt : array (2, Ny, Nx), optional
        Ground-truth phase gradient in rad/Å (simulations).
    meta : dict, optional
        Metadata (default empty); :func:`save` stores ``material`` (text),
        ``thickness`` (Å) and ``semiangle`` (mrad), and refuses other keys
        rather than drop them.
    gradient : array (2, Ny, Nx), optional
        A measured phase gradient in rad/Å of a triplet of images, given to
        the triplet (``method="icom"``).
    virtual : str, optional
        The 4D-STEM virtual image a triplet's planes are (``"bf"``,
        ``"bf-full"``, ``"abf"``, ``"df"``, ``"whole"``), given to the
        triplet; None (the default) where unknown.
    noise : Noise, optional
        The noise of a triplet's planes (variances in intensity²), given to
        the triplet; None (the default): estimated when it is made.
    gradient_noise : Noise, optional
        The noise of the measured ``gradient`` (variances per component in
        (rad/Å)²), given to the triplet (``icom`` filters by it).
    registration : dict, optional
        The record of a triplet's registration (``triplet.registration``:
        ``shifts`` (3, 2) in px, ``reliable``, ``applied``, ``signal``,
        ``why``), given back to the triplet: where it says the drift could
        not be measured, the reloaded triplet is judged so, as the original.
    orientation : dict, optional
        ``{"suspect": True, "why": str}`` where the triplet's own check found
        its measured gradient misoriented (``triplet.gradient_orientation``),
        given back to the triplet with its :class:`~flowtie_fast.errors.TrustWarning`
        where its check made anew does not find it (the bright-field images it
        was checked against are not in the file).
    saturation : dict, optional
        The pile-up check of a 4D-STEM triplet's patterns
        (``triplet.saturation``), given back to the triplet: where it found
        the detector saturated, every solve of the reloaded triplet says so
        (``info["trust"]``), as of the original, and
        :meth:`triplet` warns again (a
        :class:`~flowtie_fast.stem.DetectorWarning`). Integer planes are
        checked anew as the triplet is made (with their own
        :class:`~flowtie_fast.errors.TrustWarning`): their check stands where
        it finds them saturated, or where the file holds no record.
    descan : dict, optional
        The descan plane of a 4D-STEM triplet's gradient
        (``triplet.descan``), given back to the triplet.
    flux : dict, optional
        The beam-current factors of a 4D-STEM triplet's scans
        (``triplet.flux``), given back to the triplet.
    plane_defects : dict, optional
        The isolated pixels replaced in a triplet's planes
        (``triplet.plane_defects``, where ``"repaired"``), given back to the
        triplet with its :class:`~flowtie_fast.errors.TrustWarning`: the
        planes stored are the repaired ones, in which they are not found
        again.
    _handle, _closed, _path : optional
        Internal: the open HDF5 file, whether it was closed, and the file's
        path.
    """

    minus: object
    zero: object
    plus: object
    dz: tuple
    scan_step: tuple
    energy: float
    k_sampling: tuple | None = None
    phase_gt: object = None
    gradient_gt: object = None
    meta: dict = field(default_factory=dict)
    gradient: object = None
    virtual: str | None = None
    noise: Noise | None = None
    gradient_noise: Noise | None = None
    registration: dict | None = None
    orientation: dict | None = None
    saturation: dict | None = None
    descan: dict | None = None
    flux: dict | None = None
    plane_defects: dict | None = None
    _handle: object = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)
    _path: object = field(default=None, repr=False)

    def __post_init__(self):
        # Planes given as nested lists are read as arrays here; anything else
        # without a shape and a dtype (an array, a memory map, an HDF5 or dask
        # dataset: read when used) is refused naming it.
        for name in ("minus", "zero", "plus"):
            value = getattr(self, name)
            if hasattr(value, "shape") and hasattr(value, "dtype"):
                continue
            try:
                array = np.asarray(value)
            except Exception as exc:  # noqa: BLE001  ragged lists, objects
                raise InputError(f"{name}: expected an array of intensities, got "
                                 f"{type(value).__name__} ({first_line(exc)})") from None
            if array.dtype.kind not in "uif" or array.ndim not in (2, 4):
                raise InputError(f"{name}: expected a real array (Ny, Nx) or (Sy, Sx, Ky, Kx) "
                                 f"of intensities, got {type(value).__name__} read as "
                                 f"{array.dtype} {array.shape}")
            setattr(self, name, array)

    @property
    def kind(self) -> str:
        """``"4dstem"`` where the planes are 4D scans (Sy, Sx, Ky, Kx), else
        ``"triplet"`` (images (Ny, Nx))."""
        return "4dstem" if len(self.zero.shape) == 4 else "triplet"

    def __repr__(self) -> str:
        """One line: kind, shape and dtype of the planes, the conditions, what
        else it holds and its file; never the data (nothing is read)."""
        try:
            shape = tuple(int(n) for n in self.zero.shape)
            dtype = str(self.zero.dtype)
        except Exception:  # noqa: BLE001  an h5py dataset of a closed file
            shape, dtype = "closed", "?"

        def nums(v) -> str:
            return "(" + ", ".join(f"{float(x):.4g}" for x in np.ravel(v)) + ")"

        parts = [f"kind={self.kind if shape != 'closed' else '?'!r}",
                 f"shape={shape}", f"dtype={dtype}", f"dz={nums(self.dz)} Å",
                 f"scan_step={nums(self.scan_step)} Å", f"energy={float(self.energy):g} eV"]
        if self.k_sampling is not None:
            parts.append(f"k_sampling={nums(self.k_sampling)} 1/Å")
        if self.virtual is not None:
            parts.append(f"virtual={self.virtual!r}")
        extra = [k for k in ("gradient", "phase_gt", "gradient_gt", "noise", "gradient_noise")
                 if getattr(self, k) is not None]
        if extra:
            parts.append(f"with={extra}")
        if self.meta:
            parts.append("meta={" + ", ".join(f"{k!r}: {_short(' '.join(repr(v).split()), 30)}"
                                              for k, v in self.meta.items()) + "}")
        if self._path is not None:
            parts.append(f"file={Path(self._path).name!r}")
        if self._closed:
            parts.append("closed")
        return "Dataset(" + ", ".join(parts) + ")"

    def triplet(self, **kwargs):
        """The focal triplet of this dataset.

        Parameters
        ----------
        **kwargs
            Options of :meth:`~flowtie_fast.triplet.FocalTriplet.from_4dstem`
            (``virtual``, ``rotation``, ``register``, ...) for 4D-STEM data;
            for images ``register`` (default False, as for
            :class:`~flowtie_fast.triplet.FocalTriplet`: a stored
            registration record is kept unless the images are registered
            again) and ``backend``, which is ignored (images are read as
            they are).

        Returns
        -------
        FocalTriplet
            For 4D-STEM data, the reduced triplet (with its ``gradient``, the
            centre of mass); for images, the three images and any measured
            ``gradient`` (rad/Å), ``virtual``, ``noise``, ``gradient_noise``
            and records (``registration``, ``gradient_orientation``'s verdict,
            ``saturation``, ``descan``, ``flux``, ``plane_defects``) stored
            with them.
        """
        self._check_open("dataset")
        unknown = sorted(k for k in kwargs if k not in _TRIPLET_OPTIONS)
        if unknown:  # a TypeError (or the file's own dz given twice) otherwise
            raise InputError(f"options: {unknown} are not options of Dataset.triplet; "
                             f"expected some of {_TRIPLET_OPTIONS}")
        if self.kind == "4dstem":
            try:
                return FocalTriplet.from_4dstem(self.minus, self.zero, self.plus, dz=self.dz,
                                                scan_step=self.scan_step,
                                                k_sampling=self.k_sampling,
                                                energy=self.energy, **kwargs)
            except HDF5ReadError as exc:
                raise InputError(f"{self._name()}: its 4D-STEM data cannot be read "
                                 f"({exc.reason}); the file is damaged or truncated, or "
                                 "changed while it was read") from exc
        kwargs.pop("backend", None)  # images are read as they are
        register = kwargs.pop("register", False)
        if kwargs:
            raise InputError(f"options: {sorted(kwargs)} apply to 4D-STEM data only; this "
                             "file holds a triplet of images")
        self._check_read_memory()
        where = Path(self._name())
        planes = [_read(getattr(self, k), k, where) for k in ("minus", "zero", "plus")]
        gradient = None if self.gradient is None else _read(self.gradient, "gradient", where)
        # planes whose drift could not be measured when they were stored: their
        # TIE phase is no reference for the gradient's sign and scale (the
        # triplet compared none as it was made), unless registered now
        unaligned = (not register and self.registration is not None
                     and not self.registration.get("reliable"))
        t = FocalTriplet(*planes, dz=self.dz, pixel_size=self.scan_step, energy=self.energy,
                         gradient=None if unaligned else gradient, noise=self.noise,
                         virtual=self.virtual, register=register)
        if unaligned and gradient is not None:
            t.gradient = t._check_gradient(gradient)
            t._check_orientation(sign=False)
        t.gradient_noise = self.gradient_noise
        if self.registration is not None and t.registration is None:
            t.registration = {**self.registration,
                              "shifts": np.array(self.registration["shifts"], float)}
        stored = self.orientation or {}
        if stored.get("suspect") and not (t.gradient_orientation or {}).get("suspect"):
            # the stored reason, not the correction of a check that found none
            fresh = {k: v for k, v in (t.gradient_orientation or {}).items()
                     if k not in ("misorientation", "correction")}
            t.gradient_orientation = {**fresh, "suspect": True, "why": stored["why"]}
            warnings.warn(stored["why"], TrustWarning, stacklevel=2)
        if stored.get("misscaled") is not None \
                and scale_warning(t.gradient_orientation) is None:
            # the scale verdict, where the check made anew does not reach it (an
            # 'abf' or 'df' triplet's was made against bright-field images)
            t.gradient_orientation = {**(t.gradient_orientation or {}),
                                      **{k: stored[k] for k in
                                         ("misscaled", "tie_scale", "tie_correlation")}}
            warnings.warn(scale_warning(t.gradient_orientation), TrustWarning, stacklevel=2)
        # the triplet's own copies: a record changed on one is not changed on the other
        t.descan, t.flux = copy.deepcopy((self.descan, self.flux))
        # integer planes were checked for saturation as the triplet was made (and
        # warned): a stored record replaces that check only where it found none
        if self.saturation is not None and not (t.saturation or {}).get("saturated"):
            t.saturation = copy.deepcopy(self.saturation)
            if self.saturation["saturated"]:
                warnings.warn(self.saturation["why"], DetectorWarning, stacklevel=2)
        if self.plane_defects is not None:  # the planes held are the repaired ones
            t.plane_defects = joined_defects(copy.deepcopy(self.plane_defects),
                                              t.plane_defects, t.shape)
            warnings.warn(self.plane_defects["why"], TrustWarning, stacklevel=2)
        return t

    def _name(self) -> str:
        """How messages name this dataset: its file's name, else ``dataset``."""
        return "dataset" if self._path is None else Path(self._path).name

    def _check_open(self, name: str) -> None:
        """:class:`InputError` naming ``name`` when the HDF5 file was closed
        (by :meth:`close`, or through the h5py file itself)."""
        closed = self._closed
        if not closed and self._handle is not None:
            try:
                closed = not bool(self._handle)  # an h5py File is false once closed
            except Exception:  # noqa: BLE001  a handle that cannot say is unusable
                closed = True
        if closed:
            raise InputError(f"{name}: its HDF5 file is closed; load it again (ft.load) to "
                             "read it")

    def _check_read_memory(self) -> None:
        """Refuse, before reading, planes that do not fit in the memory
        available now (an HDF5 file may declare any size): :class:`InputError`
        naming the file with both figures."""
        nbytes = 0
        for k in ("minus", "zero", "plus", "gradient"):
            v = getattr(self, k)
            if v is None or isinstance(v, np.ndarray):
                continue  # in memory already
            shape, dtype = getattr(v, "shape", None), getattr(v, "dtype", None)
            if shape is None or dtype is None:
                continue
            nbytes += int(np.prod([int(n) for n in shape], dtype=object)) * \
                np.dtype(dtype).itemsize
        available = host_available_memory()
        if available is not None and nbytes > available:
            shape = tuple(int(n) for n in self.zero.shape)
            raise InputError(f"{self._name()}: its planes of shape {shape} ({self.zero.dtype}) "
                             f"need about {_gib(nbytes)} to be read, more than the "
                             f"{_gib(available)} of memory available; crop or bin them, or "
                             "use another machine")

    def close(self) -> None:
        """Close the underlying HDF5 file, if any; its data cannot be read after."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# The options Dataset.triplet passes to FocalTriplet.from_4dstem (the file gives the rest).
_TRIPLET_OPTIONS = tuple(
    n for n, p in inspect.signature(FocalTriplet.from_4dstem).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY)


def _from_object(obj) -> Dataset:
    if isinstance(obj, Dataset):
        obj._check_open("obj")
        return obj
    if isinstance(obj, FocalTriplet):
        host = [None if a is None else (a.get() if is_cupy(a) else a)
                for a in (*obj.planes, obj.gradient)]
        return Dataset(*host[:3], obj.dz, obj.pixel_size, obj.energy, gradient=host[3],
                       virtual=obj.virtual, noise=obj.noise,
                       gradient_noise=getattr(obj, "gradient_noise", None),
                       registration=getattr(obj, "registration", None),
                       orientation=suspect_record(obj.gradient_orientation),
                       saturation=getattr(obj, "saturation", None),
                       descan=getattr(obj, "descan", None), flux=getattr(obj, "flux", None),
                       plane_defects=stored_defects(getattr(obj, "plane_defects", None)))
    # A simulate.SimulationCase (duck-typed: the module needs abTEM).
    if all(hasattr(obj, a) for a in ("minus", "zero", "plus", "k_sampling", "phase")):
        return Dataset(obj.minus, obj.zero, obj.plus, (obj.dz, obj.dz), tuple(obj.scan_step),
                       obj.energy, tuple(obj.k_sampling), obj.phase, obj.gradient,
                       {"material": obj.material, "thickness": obj.thickness,
                        "semiangle": obj.semiangle})
    raise InputError(f"obj: expected a Dataset, FocalTriplet or SimulationCase, "
                     f"got {type(obj).__name__}")


def _fields(ds: Dataset) -> dict:
    newer = any(getattr(ds, k) is not None for k in _VERSION_2)
    out = {"format": FORMAT if newer else "flowtie_fast/1", "kind": ds.kind,
           "minus": ds.minus, "zero": ds.zero, "plus": ds.plus,
           "dz": np.asarray(ds.dz, float).reshape(-1)[[0, -1]],
           "scan_step": np.broadcast_to(np.asarray(ds.scan_step, float), (2,)),
           "energy": float(ds.energy)}
    if ds.k_sampling is not None:
        out["k_sampling"] = np.broadcast_to(np.asarray(ds.k_sampling, float), (2,))
    if ds.phase_gt is not None:
        out["phase_gt"] = ds.phase_gt
    if ds.gradient_gt is not None:
        out["gradient_gt"] = ds.gradient_gt
    if ds.gradient is not None:
        out["gradient"] = ds.gradient
    if ds.virtual is not None:
        out["virtual"] = ds.virtual
    for k in RECORDS:
        if getattr(ds, k) is not None:
            out[k] = json_text(k, getattr(ds, k), _plane_shape(ds))
    for k, *_ in _NOISES:
        noise = getattr(ds, k)
        if noise is not None:
            out[k] = np.asarray(noise.variance, float)
            out[k + "_source"] = noise.source
    for k in _OPTIONAL_SCALARS:
        if ds.meta.get(k) is not None:
            out[k] = ds.meta[k]
    return out


def save(path, obj, overwrite: bool = False) -> Path:
    """Write a triplet, a 4D-STEM dataset or a simulated case atomically.

    A :class:`~flowtie_fast.triplet.FocalTriplet`'s measured ``gradient``
    (e.g. the centre of mass of 4D-STEM data), the virtual image its planes
    are (``virtual``), the noise of its planes (``noise``) and of its
    gradient (``gradient_noise``) and its records, as JSON text: the
    registration of its scans (``registration``), a suspect orientation of
    its gradient (``orientation``), the pile-up check of its patterns
    (``saturation``), the descan plane (``descan``), the scans' beam-current
    factors (``flux``) and the isolated pixels replaced in its planes
    (``plane_defects``, where they were replaced) are stored too, under
    those keys, and given back to the triplet by :meth:`Dataset.triplet`.

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.h5``/``.hdf5``.
    obj : Dataset, FocalTriplet or SimulationCase
        What to write: a dataset (e.g. of :func:`load`), a triplet of images
        or a simulated case (:class:`~flowtie_fast.simulation.simulate.SimulationCase`,
        with its ground truth).
    overwrite : bool
        Replace an existing file. False (the default) refuses one, checked
        before anything is written, and atomically again when the file is
        renamed into place (:func:`atomic_path`): saving onto a file, even
        the one the data were loaded from, needs ``overwrite=True``.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    InputError
        Naming ``path`` for a path that is not a writable file path (a
        directory, a folder that is a file, a name too long, an existing file
        when ``overwrite`` is False), ``overwrite`` for a value that is not a
        bool, ``obj`` for another object, a closed HDF5 dataset,
        ``meta`` keys the layout does not store (all but ``material``,
        ``thickness`` and ``semiangle``), or a gradient, virtual image,
        noise or record given with 4D-STEM data, a noise that is not a
        :class:`~flowtie_fast.noise.Noise` of finite non-negative variances,
        or a record that is not one (``obj: its saturation must be ...``,
        naming the record and the field).
    OSError
        When the file cannot be written (disk full, read-only file system,
        permission denied), naming ``path``; no temporary is left.
    """
    path = as_path("path", path, file=True)
    overwrite = _check_bool("overwrite", overwrite)
    _suffix(path)
    ds = _from_object(obj)
    if not isinstance(ds.meta, dict):
        raise InputError(f"obj: expected meta to be a dict, got {type(ds.meta).__name__}")
    lost = [k for k, v in ds.meta.items() if k not in _OPTIONAL_SCALARS and v is not None]
    if lost:  # never dropped without a word
        raise InputError(f"obj: the layout {FORMAT} stores the meta keys "
                         f"{', '.join(_OPTIONAL_SCALARS)} only, not {_short(repr(lost), 80)}; "
                         "remove them from meta (and keep them elsewhere) to save")
    given = [k for k in _TRIPLET_ONLY if getattr(ds, k) is not None]
    if given and ds.kind == "4dstem":
        raise InputError(f"obj: {_triplet_only(given)}")
    for k, *_ in _NOISES:
        if not isinstance(getattr(ds, k), (Noise, type(None))):
            raise InputError(f"obj: expected its {k} to be a Noise or None, got "
                             f"{_short(repr(getattr(ds, k)), 60)}")
    try:
        fields = _fields(ds)
    except InputError:  # a record that is not one, named
        raise
    except (AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"obj: cannot be written ({' '.join(str(exc).split())}); expected "
                         "arrays for the planes and numbers for dz, scan_step and energy") \
            from exc
    for k in ("phase_gt", "gradient_gt", "gradient"):  # images: read once, here
        if k in fields and not isinstance(fields[k], np.ndarray):
            fields[k] = np.asarray(fields[k])
    # The reader's checks, before anything is written: a file load() would
    # refuse is never written. The planes (HDF5, dask: maybe large and lazy)
    # are checked by shape and dtype, not read.
    _dataset({k: _unread(v) if k in ("minus", "zero", "plus") else v
              for k, v in fields.items()}, Path("obj"), None, lazy=True)
    check_target("path", path, overwrite, "pass overwrite=True to replace it")
    return write_fields(path, fields, arrays=_ARRAYS, overwrite=overwrite, name="path")


def _unread(v):
    """An array of ``v``'s shape and dtype that holds nothing (every element
    the one zero), for checks of shape and dtype; ``v`` itself where it is an
    array already or has no shape and dtype to take."""
    if isinstance(v, np.ndarray) or not (hasattr(v, "shape") and hasattr(v, "dtype")):
        return v
    try:
        return np.broadcast_to(np.zeros((), np.dtype(v.dtype)), tuple(int(n) for n in v.shape))
    except (TypeError, ValueError):
        return v


def write_fields(path, fields: dict, arrays=(), overwrite: bool = True, *,
                 name: str = "output") -> Path:
    """Write ``fields`` atomically to ``.npz`` (all keys) or HDF5 (keys in
    ``arrays`` as datasets, the rest as root attributes).

    Parameters
    ----------
    path : str or Path
        ``.npz``, ``.h5`` or ``.hdf5``.
    fields : dict
        Names and values (arrays, numbers, strings).
    arrays : iterable of str, optional
        The keys stored as HDF5 datasets.
    overwrite : bool
        Replace an existing file (default); see :func:`atomic_path`.
    name : str
        How messages name the path.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        For another suffix, or a path that cannot be a file.
    OSError
        When the file cannot be written (disk full, read-only file system,
        permission denied), naming the path; no temporary is left behind.
    """
    path = as_path(name, path, file=True)
    suffix = _suffix(path, None, name)
    with atomic_path(path, overwrite, name=name) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in fields.items()})
        else:
            import h5py

            with open(tmp, "w+b") as raw:
                fh = _RecordedErrors(raw)
                with h5py.File(fh, "w") as f:
                    for k, v in fields.items():
                        if k in arrays:
                            f.create_dataset(k, data=np.asarray(v),
                                             chunks=True if np.ndim(v) >= 3 else None)
                        else:
                            f.attrs[k] = v
                if fh.error is not None:
                    raise fh.error
    return path


class _RecordedErrors:
    """A binary file for h5py's file-object driver that records the first
    error met (disk full, file too large) instead of raising it into HDF5, and
    from then on takes every call without touching the file: HDF5 that meets a
    failed write keeps the file open, prints tracebacks from its destructors
    and crashes the interpreter at exit. The writer raises :attr:`error` once
    the HDF5 file is closed; the temporary is then discarded."""

    def __init__(self, raw):
        self._raw, self.error, self._pos = raw, None, 0

    def _call(self, fn, *args):
        if self.error is None:
            try:
                return fn(*args)
            except OSError as exc:
                self.error = exc
        return None

    def seek(self, pos, whence=0):
        self._pos = pos
        found = self._call(self._raw.seek, pos, whence)
        return pos if found is None else found

    def tell(self):
        found = self._call(self._raw.tell)
        return self._pos if found is None else found

    def write(self, b):
        self._call(self._raw.write, b)
        return memoryview(b).nbytes

    def readinto(self, b):
        found = self._call(self._raw.readinto, b)
        if found is None:
            memoryview(b).cast("B")[:] = b"\0" * memoryview(b).nbytes
            return memoryview(b).nbytes
        return found

    def read(self, size=-1):
        found = self._call(self._raw.read, size)
        return b"\0" * max(size, 0) if found is None else found

    def truncate(self, size=None):
        self._call(self._raw.truncate, size)
        return size

    def flush(self):
        self._call(self._raw.flush)


def load(path) -> Dataset:
    """Read a file written by :func:`save` (or any file in the layout).

    Only the keys of the layout are read; nothing in the file is executed
    (no pickles; records are JSON data) and HDF5 links to other files,
    virtual and external datasets are refused, and so are HDF5 datasets
    never or only partly written (which HDF5 would read as their fill
    value).

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.h5``/``.hdf5``.

    Returns
    -------
    Dataset
        Close it (or use it in a ``with`` block) when read from HDF5.

    Raises
    ------
    InputError
        Naming the file and the key for missing keys, wrong shapes or dtypes
        (the planes and ground truths hold real numbers: integers or floats;
        not bools, complex numbers, strings or objects), calibrations that are
        not positive finite numbers of the right count (``dz``, ``scan_step``
        and ``k_sampling``: 1 or 2, ``energy``: 1), a ``format`` newer than
        this version reads or a ``kind`` the arrays contradict, a record
        (``registration``, ``orientation``, ``saturation``, ``descan``,
        ``flux``, ``plane_defects``) that is not JSON text of one (too long,
        a key given twice, a field of the wrong type, NaN or an infinite
        number where a finite one is expected; the message names the
        field), HDF5 datasets never written or missing chunks, and
        unreadable or truncated files; naming ``path`` for a path that is
        not a regular file (missing, a directory, a FIFO, a loop of links).
    """
    path = as_path("path", path, file=True)
    suffix = _suffix(path)
    check_input_file("path", path)
    if suffix == ".npz":
        handle, fields = None, _read_npz(path)
    else:
        handle, fields = _read_h5(path, suffix)
    try:
        return _dataset(fields, path, handle)
    except BaseException:
        if handle is not None:
            handle.close()
        raise


def _read_npz(path: Path) -> dict:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InputError(f"path: {path.name} is not a readable .npz file "
                         f"({_reason(exc)})") from exc
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise InputError(f"path: {path.name} is not a readable .npz file (it holds a single "
                         "array, not named keys)")
    with z:
        _check_npz_unique(z, path)
        _check_npz_memory(z, path)
        fields = {}
        for k in _KEYS:
            if k not in z.files:
                continue
            try:
                fields[k] = z[k]
            except Exception as exc:  # object arrays (pickles), truncated members
                raise InputError(f"{path.name}: '{k}' cannot be read ({_reason(exc)})") \
                    from exc
    return fields


def _check_npz_unique(z, path: Path) -> None:
    """Refuse an archive that stores a key of the layout more than once (two
    members of one name, or both ``k`` and ``k.npy``): which one is meant
    cannot be told. :class:`InputError` naming the file and the key."""
    names = z.zip.namelist()
    for k in _KEYS:
        members = [n for n in names if n in (k, k + ".npy")]
        if len(members) > 1:
            raise InputError(f"{path.name}: '{k}' is stored twice in the archive (members "
                             f"{members}); which one is meant cannot be told: write the file "
                             "again with one of them")


def _check_npz_memory(z, path: Path) -> None:
    """Refuse, before reading any member, an .npz archive whose arrays (the
    sizes their .npy headers declare: shape x dtype, read without loading,
    compressed members included) do not fit in the memory available now:
    :class:`InputError` naming the file with both figures."""
    total, largest = 0, None
    for k in _KEYS:
        if k not in z.files:
            continue
        member = k + ".npy" if k + ".npy" in z.zip.namelist() else k
        try:
            with z.zip.open(member) as fp:
                if fp.read(len(npy.MAGIC_PREFIX)) != npy.MAGIC_PREFIX:
                    nbytes, shape, dtype = z.zip.getinfo(member).file_size, None, None
                else:
                    fp.seek(0)
                    version = npy.read_magic(fp)
                    read = npy.read_array_header_1_0 if version == (1, 0) else \
                        npy.read_array_header_2_0
                    shape, _, dtype = read(fp)
                    nbytes = int(np.prod([int(n) for n in shape], dtype=object)) * \
                        dtype.itemsize
        except Exception as exc:  # malformed or oversized headers, truncated members
            raise InputError(f"{path.name}: '{k}' cannot be read ({_reason(exc)})") from exc
        total += nbytes
        if largest is None or nbytes > largest[1]:
            largest = (k, nbytes, shape, dtype)
    available = host_available_memory()
    if available is not None and total > available:
        k, _, shape, dtype = largest
        what = f"'{k}' of shape {tuple(int(n) for n in shape)} ({dtype})" if shape is not None \
            else f"'{k}'"
        raise InputError(f"{path.name}: its arrays need about {_gib(total)} to be read "
                         f"(largest: {what}), more than the {_gib(available)} of memory "
                         "available; crop or bin them, or use another machine")


def _read_h5(path: Path, suffix: str):
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
        if "unable to lock file" in str(exc):  # the environment's state, not bad data
            raise BlockingIOError(
                errno.EAGAIN, f"{path.name} is held open for writing by another process "
                "(HDF5's file lock): read it once the writer has closed it") from exc
        raise InputError(f"path: {path.name} is not a readable {suffix} file ({exc})") from exc
    fields, key = {}, None
    try:
        for key in _KEYS:
            link = handle.get(key, getlink=True)
            if link is None:
                continue
            if isinstance(link, h5py.ExternalLink):
                raise InputError(f"{path.name}: '{key}' is a link to another file; expected "
                                 "data stored in this file")
            obj = handle[key]
            # A soft link may lead through an external link: where the object lives
            # is what counts, not how the key was written.
            if obj.file.id != handle.id:
                raise InputError(f"{path.name}: '{key}' resolves to an object in another "
                                 "file; expected data stored in this file")
            if not isinstance(obj, h5py.Dataset):
                raise InputError(f"{path.name}: '{key}' is an HDF5 {type(obj).__name__}, "
                                 "expected a dataset")
            if obj.is_virtual or obj.external:
                raise InputError(f"{path.name}: '{key}' is a virtual or external dataset; "
                                 "expected data stored in this file")
            check_hdf5_written(path.name, obj)
            twin = next((k for k in ("minus", "zero", "plus")
                         if k in fields and key in ("minus", "zero", "plus")
                         and fields[k].id == obj.id), None)
            if twin is not None:  # a plane linked twice: one recording read as two planes
                raise InputError(f"{path.name}: '{key}' and '{twin}' are one HDF5 dataset "
                                 "(linked under both names); expected three recorded planes")
            fields[key] = obj
        for key in _KEYS:
            if key in handle.attrs:
                if key in fields:  # which of the two is meant cannot be told
                    raise InputError(f"{path.name}: '{key}' is both a dataset and a root "
                                     "attribute; expected one of them")
                # h5py reads an enumeration attribute as bare integers: its type tells
                _check_not_enum(handle.attrs.get_id(key), key, path,
                                "a string" if key in _TEXT_KEYS else _NUMBERS)
                fields[key] = handle.attrs[key]
    except InputError:
        handle.close()
        raise
    except Exception as exc:
        handle.close()
        raise InputError(f"{path.name}: '{key}' cannot be read ({exc})") from exc
    return handle, fields


def _reason(exc) -> str:
    """Why NumPy could not read a file, without its advice to unpickle it."""
    text = " ".join(str(exc).split())
    if "max_header_size" in text or "Header info length" in text:
        found = re.search(r"Header info length \((\d+)\)", text)
        size = f" ({found.group(1)} bytes)" if found else ""
        return (f"its .npy header is too large{size}; a header this size is refused as "
                "unsafe to parse")
    if "pickle" in text:
        return "pickled Python objects, or not an .npz archive: nothing pickled is ever loaded"
    return text


def _is_h5_dataset(v) -> bool:
    h5py = sys.modules.get("h5py")
    return h5py is not None and isinstance(v, h5py.Dataset)


def _describe(a: np.ndarray) -> str:
    if a.dtype.kind == "V":
        return f"a compound value of dtype {a.dtype}"
    if a.size == 1:
        text = repr(a.reshape(-1)[0].item() if a.dtype.kind != "O" else a.reshape(-1)[0])
        return text if len(text) <= 60 else text[:57] + "..."
    return f"an array of dtype {a.dtype} and shape {a.shape}"


def _as_array(v, k: str, path: Path):
    """``v`` as an array or an HDF5 dataset (not read)."""
    if isinstance(v, np.ndarray) or _is_h5_dataset(v):
        return v
    try:
        return np.asarray(v)
    except Exception as exc:
        raise InputError(f"{path.name}: '{k}' cannot be read ({exc})") from exc


def _enum_members(dtype) -> dict | None:
    """The members (name -> value) of an HDF5 enumeration's dtype, None for
    any other dtype. h5py reads an enumeration as its integer base type and
    keeps the names in the dtype's metadata (``h5py.check_enum_dtype``):
    its values are labels, not measurements."""
    metadata = getattr(dtype, "metadata", None)
    members = metadata.get("enum") if metadata else None
    return dict(members) if isinstance(members, dict) else None


def _check_not_enum(v, k: str, path: Path, want: str = _NUMBERS) -> None:
    """Refuse key ``k`` whose dtype (``v.dtype``) is an HDF5 enumeration (its
    integers are labels), naming the key, the dtype and its members, and
    saying that ``want`` is expected."""
    members = _enum_members(getattr(v, "dtype", None))
    if members is not None:
        shown = _short(", ".join(f"{n}={x}" for n, x in sorted(members.items(),
                                                                key=lambda m: m[1])), 60)
        raise InputError(f"{path.name}: '{k}' has dtype {v.dtype}, an HDF5 enumeration "
                         f"({shown}); expected {want}, not labels")


def _array_shape(fields: dict, k: str, path: Path) -> tuple:
    """The shape of array ``k``, checked to hold real numbers."""
    v = _as_array(fields[k], k, path)
    if v.shape is None:
        raise InputError(f"{path.name}: '{k}' is an empty HDF5 dataset; expected an array")
    if v.dtype.kind not in "iuf":
        raise InputError(f"{path.name}: '{k}' has dtype {v.dtype}; expected {_NUMBERS}")
    _check_not_enum(v, k, path)
    return tuple(v.shape)


def _read(v, k: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(v)
    except Exception as exc:
        raise InputError(f"{path.name}: '{k}' cannot be read ({exc})") from exc


def _reals(fields: dict, k: str, path: Path, counts, want: str) -> np.ndarray:
    """Key ``k``: a number or a flat run of real numbers, as many as one of
    ``counts``, as float64; :class:`InputError` saying it must be ``want``
    otherwise."""
    v = _as_array(fields[k], k, path)
    if v.shape is None or len(v.shape) > 1 or int(np.prod(v.shape)) not in counts:
        got = "no dataspace" if v.shape is None else \
            f"{int(np.prod(v.shape))} values of shape {tuple(v.shape)}"
        raise InputError(f"{path.name}: '{k}' must be {want}, got {got}")
    a = _read(v, k, path)
    if a.dtype.kind not in "iuf":
        raise InputError(f"{path.name}: '{k}' must be {want}, got {_describe(a)}")
    _check_not_enum(v if _is_h5_dataset(v) else a, k, path)
    return a.astype(float).reshape(-1)


def _positive(fields: dict, k: str, path: Path, most: int, unit: str) -> tuple:
    """Key ``k``: ``most`` positive finite floats (one value is repeated)."""
    want = "a positive finite number" + (" or a pair of them" if most == 2 else "")
    want += f" ({unit})"
    values = _reals(fields, k, path, range(1, most + 1), want)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise InputError(f"{path.name}: '{k}' must be {want}, got {values.tolist()}")
    if k in RANGES:  # a unit slip (metres, keV) is named with the file's key
        lo, hi, unit, example = RANGES[k]
        if not ((values >= lo) & (values <= hi)).all():
            raise InputError(f"{path.name}: '{k}' must be {lo:g} to {hi:g} {unit} (e.g. "
                             f"{example}), got {values.tolist()}")
    return (float(values[0]), float(values[-1])) if most == 2 else (float(values[0]),)


def _text(fields: dict, k: str, path: Path) -> str:
    v = fields[k]
    if _is_h5_dataset(v):
        if v.shape != ():
            raise InputError(f"{path.name}: '{k}' must be a string, got a dataset of shape "
                             f"{v.shape}")
        _check_not_enum(v, k, path, "a string")
        try:
            v = v[()]
        except Exception as exc:
            raise InputError(f"{path.name}: '{k}' cannot be read ({exc})") from exc
    if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "SU":
        v = v.item()
    if isinstance(v, bytes):
        try:
            v = v.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"{path.name}: '{k}' is not UTF-8 text ({exc})") from exc
    if not isinstance(v, str):
        try:
            got = _describe(np.asarray(v))
        except Exception:
            got = type(v).__name__
        raise InputError(f"{path.name}: '{k}' must be a string, got {got}")
    try:  # what HDF5 stores: UTF-8 without NUL characters (one rule for both formats)
        v.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{path.name}: '{k}' must be text UTF-8 can encode, got "
                         f"{_short(repr(v), 60)} ({exc.reason})") from exc
    if "\x00" in v:
        raise InputError(f"{path.name}: '{k}' must be text without NUL characters, got "
                         f"{_short(repr(v), 60)}")
    return str(v)


def _dataset(fields: dict, path: Path, handle, *, lazy=None) -> Dataset:
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InputError(f"{path.name}: missing key(s) {missing}; expected the layout "
                         f"{FORMAT} ({', '.join(_REQUIRED)})")
    shape = _array_shape(fields, "zero", path)
    if len(shape) not in (2, 4):
        raise InputError(f"{path.name}: 'zero' must be 2-D (triplet) or 4-D (4D-STEM), got "
                         f"shape {shape}")
    if 0 in shape:  # before the others are compared with it: the empty one is named
        raise InputError(f"{path.name}: 'zero' is empty (shape {shape})")
    for k in ("minus", "plus"):
        other = _array_shape(fields, k, path)
        if 0 in other:
            raise InputError(f"{path.name}: '{k}' is empty (shape {other})")
        if other != shape:
            raise InputError(f"{path.name}: '{k}' has shape {other}, expected {shape} like "
                             "'zero'")
    _check_format(fields, path, shape)
    k_sampling = None
    if len(shape) == 4:
        if "k_sampling" not in fields:
            raise InputError(f"{path.name}: missing key 'k_sampling' (1/Å) for 4D-STEM data")
        k_sampling = _positive(fields, "k_sampling", path, 2, "1/Å")
    scan = shape[:2]
    truth = {}
    given = [k for k in _TRIPLET_ONLY if k in fields]
    if given and len(shape) == 4:
        raise InputError(f"{path.name}: {_triplet_only(given)}: remove "
                         f"{'it' if len(given) == 1 else 'them'}")
    for k, want in (("phase_gt", scan), ("gradient_gt", (2,) + scan), ("gradient", (2,) + scan)):
        if k in fields:
            got = _array_shape(fields, k, path)
            if got != want:
                raise InputError(f"{path.name}: '{k}' has shape {got}, expected {want}")
            truth[k] = _read(fields[k], k, path)
            if not np.isfinite(truth[k]).all():
                what = "a measured gradient" if k == "gradient" else "a ground truth"
                raise InputError(f"{path.name}: '{k}' contains NaN or Inf; {what} must be "
                                 "finite")
    virtual = None
    if "virtual" in fields:
        virtual = _text(fields, "virtual", path)
        if virtual not in VIRTUAL_IMAGES:
            raise InputError(f"{path.name}: 'virtual' must be one of {VIRTUAL_IMAGES} (the "
                             f"4D-STEM virtual image the planes are), got {_short(virtual)!r}")
    noises = {k: _noise(fields, k, path, count, unit, each)
              for k, count, unit, each in _NOISES}
    for k in ("orientation", "descan"):
        if k in fields and "gradient" not in fields:
            raise InputError(f"{path.name}: '{k}' without 'gradient'; expected the record of "
                             "a measured gradient stored with it")
    records = {k: _json_record(fields, k, path, shape) for k in RECORDS if k in fields}
    if noises["gradient_noise"] is not None and "gradient" not in fields:
        raise InputError(f"{path.name}: 'gradient_noise' without 'gradient'; expected the "
                         "noise of a measured gradient stored with it")
    meta = {}
    if "material" in fields:
        meta["material"] = _text(fields, "material", path)
    for k, unit in (("thickness", "Å"), ("semiangle", "mrad")):
        if k in fields:
            meta[k] = _positive(fields, k, path, 1, unit)[0]
    dz = _positive(fields, "dz", path, 2, "Å")
    scan_step = _positive(fields, "scan_step", path, 2, "Å")
    energy = _positive(fields, "energy", path, 1, "eV")[0]
    lazy = handle is not None if lazy is None else lazy  # True: the planes are not read
    arr = (lambda k: fields[k]) if lazy else (lambda k: np.asarray(fields[k]))
    return Dataset(arr("minus"), arr("zero"), arr("plus"), dz, scan_step, energy, k_sampling,
                   truth.get("phase_gt"), truth.get("gradient_gt"), meta,
                   gradient=truth.get("gradient"), virtual=virtual, _handle=handle,
                   _path=path, **records, **noises)


def _json_field(fields: dict, key: str, path: Path, shape: tuple = (1, 1)):
    """Key ``key``: JSON text of at most :func:`json_limit` characters, nested
    no deeper than Python's parser reaches, without a key given twice, parsed;
    :class:`InputError` naming it otherwise."""
    text = _text(fields, key, path)
    want = f"{path.name}: '{key}' must be JSON text of the {key} record"
    most, said = json_limit(key, shape)
    if len(text) > most:
        raise InputError(f"{want} ({said}), got {len(text)} characters")
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise InputError(f"{want}, got {_short(repr(text), 60)} ({why})") from None


def _json_record(fields: dict, key: str, path: Path, shape: tuple):
    """Record ``key`` of a file of planes of ``shape``: JSON text
    (:func:`_json_field`) of a record its check takes; :class:`InputError`
    naming the file and the key otherwise."""
    return RECORD_CHECKS[key](_json_field(fields, key, path, shape), f"{path.name}: '{key}'",
                               shape)


def _plane_shape(ds: Dataset) -> tuple:
    return tuple(int(n) for n in ds.zero.shape)


def _triplet_only(keys) -> str:
    """Why 4D-STEM data hold none of ``keys`` (of :data:`_TRIPLET_ONLY`)."""
    return (f"{', '.join(repr(k) for k in keys)} {'is' if len(keys) == 1 else 'are'} for a "
            "triplet of images only; 4D-STEM data give their own (the centre of mass, the "
            "virtual image chosen, their noise, their registration, the check of their "
            "gradient, their saturation, descan and flux records) when reduced")


def _noise(fields: dict, k: str, path: Path, count: int, unit: str, each: str):
    """Key ``k`` and ``k_source``: the :class:`~flowtie_fast.noise.Noise`
    of ``count`` finite non-negative variances (``unit``, one per ``each``)
    and a known source (default ``"given"``), or None where ``k`` is absent."""
    source = k + "_source"
    if k not in fields:
        if source in fields:
            raise InputError(f"{path.name}: '{source}' without '{k}'; expected both or "
                             "neither")
        return None
    want = f"{count} finite non-negative variances ({unit}, one per {each})"
    values = _reals(fields, k, path, (count,), want)
    if not (np.isfinite(values).all() and (values >= 0).all()):
        raise InputError(f"{path.name}: '{k}' must be {want}, got {values.tolist()}")
    name = _text(fields, source, path) if source in fields else "given"
    if name not in SOURCES:
        raise InputError(f"{path.name}: '{source}' must be one of {SOURCES}, got "
                         f"{_short(name)!r}")
    return Noise(tuple(float(v) for v in values), name)


def _check_format(fields: dict, path: Path, shape: tuple) -> None:
    """The optional ``format`` and ``kind`` keys: a format of this layout no
    newer than :data:`FORMAT`, a kind that agrees with the arrays."""
    if "format" in fields:
        text = _text(fields, "format", path)
        match = re.fullmatch(r"flowtie_fast/([0-9]{1,9})", text.strip())
        if match is None or int(match[1]) < 1:  # layouts 1 and 2 exist
            raise InputError(f"{path.name}: 'format' must be 'flowtie_fast/1' or {FORMAT!r}, "
                             f"got {_short(text)!r}")
        if int(match[1]) > int(FORMAT.split("/")[1]):
            raise InputError(f"{path.name}: 'format' is {text.strip()!r}: written by a newer "
                             f"flowtie_fast (this version reads up to {FORMAT!r}); update "
                             "flowtie_fast to read it")
    if "kind" in fields:
        kind = _text(fields, "kind", path).strip()
        actual = "4dstem" if len(shape) == 4 else "triplet"
        if kind not in ("4dstem", "triplet"):
            raise InputError(f"{path.name}: 'kind' must be '4dstem' or 'triplet', got "
                             f"{_short(kind)!r}")
        if kind != actual:
            what = "4-D patterns (Sy, Sx, Ky, Kx)" if actual == "4dstem" else \
                "2-D images (a triplet)"
            raise InputError(f"{path.name}: 'kind' is {kind!r} but 'zero' has shape {shape} "
                             f"({what}); expected kind {actual!r}")


# --------------------------------------------------------------------------- raw detector files

_RAW_READERS = {".mib": "rsciio.quantumdetector", ".blo": "rsciio.blockfile",
                ".dm3": "rsciio.digitalmicrograph", ".dm4": "rsciio.digitalmicrograph",
                ".emd": "rsciio.emd"}
#: Relative difference up to which the calibrations of the three files of
#: :func:`load_raw_triplet` are taken as one (rounding in the files' metadata).
CALIBRATION_RTOL = 1e-3
_LENGTH = {"nm": 10.0, "Å": 1.0, "A": 1.0, "angstrom": 1.0, "pm": 0.01, "µm": 1e4, "um": 1e4}


def _per_angstrom(scale, units, energy):
    u = str(units).replace(" ", "")
    if u in ("1/nm", "nm^-1", "nm-1"):
        return scale / 10.0
    if u in ("1/Å", "1/A", "Å^-1", "A^-1"):
        return scale
    if u == "mrad":
        if energy is None:
            raise InputError("energy: needed to convert a detector calibrated in mrad")
        return scale * 1e-3 / wavelength(energy)
    raise InputError(f"k_sampling: cannot convert detector units {units!r}; give k_sampling")


def _recorded_number(value, name, path, what, unit=""):
    """A calibration ``value`` a detector file records, as a float: a real
    number (not a bool) or text that reads as one; :class:`InputError` naming
    ``name`` and the file otherwise (``'200 kV'``, None, a list)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    number = None
    if is_number(value):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        unit = f" in {unit}" if unit else ""
        raise InputError(f"{name}: {path.name} records {what} as {_short(repr(value), 60)}, "
                         f"not a number{unit}; give {name}")
    return number


def read_raw(path, *, energy=None, scan_step=None, k_sampling=None):
    """One 4D-STEM dataset of a detector file, lazily, through rosettasciio.

    Reads .mib (Quantum Detectors), .blo (blockfile), .dm3/.dm4 (Gatan) and
    .emd files with rosettasciio (``pip install rosettasciio``). Calibrations
    come from the file unless given: scan step in Å, detector sampling in 1/Å
    (converted from nm, 1/nm or mrad), energy in eV.

    Parameters
    ----------
    path : str or os.PathLike
        The detector file (.mib, .blo, .dm3, .dm4 or .emd).
    energy : float, optional
        Electron energy in eV (default: the file's beam energy; an
        :class:`InputError` where it records none).
    scan_step : float or (float, float), optional
        Scan step in Å (default: the file's scan calibration).
    k_sampling : float or (float, float), optional
        Detector sampling in 1/Å per pixel (default: the file's detector
        calibration).

    Returns
    -------
    data : array (Sy, Sx, Ky, Kx)
        The patterns, lazy (dask) where the reader is.
    scan_step : (float, float)
        Scan step in Å.
    k_sampling : (float, float)
        Detector sampling in 1/Å per pixel.
    energy : float
        Electron energy in eV.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path: expected a file path, got {type(path).__name__}")
    path = Path(path)
    module = _RAW_READERS.get(path.suffix.lower())
    if module is None:
        raise InputError(f"path: expected one of {sorted(_RAW_READERS)}, got {path.name!r}")
    check_input_file("path", path)
    if energy is not None:  # a keV slip is named before any unit conversion uses it
        energy = check_positive("energy", energy)
    try:
        reader = importlib.import_module(module).file_reader
    except ImportError as exc:
        raise InputError(f"path: reading {path.suffix} files needs rosettasciio "
                         f"(pip install rosettasciio): {exc}") from exc
    try:
        signals = reader(str(path), lazy=True)
    except Exception as exc:
        raise InputError(f"path: {path.name} could not be read by {module} ({exc})") from exc
    four = [s for s in signals if len(s["data"].shape) == 4]
    if not four:
        raise InputError(f"path: {path.name} holds no 4-D dataset (Sy, Sx, Ky, Kx)")
    sig = four[0]
    axes = sig["axes"]
    if energy is None:
        beam = sig.get("metadata", {}).get("Acquisition_instrument", {}).get("TEM", {})
        kev = beam.get("beam_energy")
        if kev is None:
            raise InputError(f"energy: {path.name} does not record the beam energy; give it")
        kev = _recorded_number(kev, "energy", path, "the beam energy", "keV")
        try:
            energy = check_positive("energy", kev * 1e3)  # keV -> eV
        except InputError:
            lo, hi = RANGES["energy"][:2]
            raise InputError(f"energy: {path.name} records a beam energy of {kev!r} keV; "
                             f"expected {lo / 1e3:g} to {hi / 1e3:g} keV; give energy") from None
    if scan_step is None:
        try:
            scan_step = tuple(_recorded_number(a.get("scale"), "scan_step", path,
                                               "a scan axis scale") *
                              _LENGTH[str(a.get("units"))] for a in axes[:2])
        except KeyError as exc:
            raise InputError(f"scan_step: cannot convert scan units {exc}; give scan_step") \
                from exc
    if k_sampling is None:
        k_sampling = tuple(_per_angstrom(_recorded_number(a.get("scale"), "k_sampling", path,
                                                          "a detector axis scale"),
                                         a.get("units"), energy)
                           for a in axes[2:4])
    return (sig["data"], check_positive("scan_step", scan_step, pair=True),
            check_positive("k_sampling", k_sampling, pair=True), check_positive("energy", energy))


def load_raw_triplet(minus, zero, plus, dz, **calibration) -> Dataset:
    """A :class:`Dataset` of three detector files (planes -dz, 0, +dz), read lazily.

    Parameters
    ----------
    minus, zero, plus : str or os.PathLike
        The detector files of the planes ``-dz``, ``0`` and ``+dz`` (formats
        of :func:`read_raw`).
    dz : float or (float, float)
        Defocus step in Å.
    **calibration
        ``energy`` (eV), ``scan_step`` (Å), ``k_sampling`` (1/Å), as in
        :func:`read_raw`; the in-focus file's calibration is the dataset's.

    Returns
    -------
    Dataset
        The 4D-STEM triplet; :meth:`Dataset.triplet` reduces it.

    Raises
    ------
    InputError
        Naming the plane and the key where the calibration a defocused file
        records (scan step, detector sampling, energy: those not given)
        differs from the in-focus file's by more than
        :data:`CALIBRATION_RTOL`: the planes of one focal series share them,
        and files of other calibrations are of another acquisition or
        magnification (give the calibration to use one for all three).
    """
    dz = check_positive("dz", dz, pair=True)
    parts = [read_raw(p, **calibration) for p in (minus, zero, plus)]
    _, step, ks, energy = parts[1]
    for plane, path, part in (("minus", minus, parts[0]), ("plus", plus, parts[2])):
        for key, unit, mine, theirs in (("scan_step", "Å", part[1], step),
                                        ("k_sampling", "1/Å", part[2], ks),
                                        ("energy", "eV", part[3], energy)):
            if not np.allclose(mine, theirs, rtol=CALIBRATION_RTOL, atol=0):
                raise InputError(
                    f"{plane}: {Path(path).name} records {key} {mine!r} {unit}, the in-focus "
                    f"file {Path(zero).name} {theirs!r} {unit}: the planes of one focal series "
                    f"share their calibration; check the files, or give {key} to use one "
                    "for all three")
    return Dataset(parts[0][0], parts[1][0], parts[2][0], dz, step, energy, ks)
