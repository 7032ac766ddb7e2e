"""Files: one documented layout in ``.npz`` and HDF5 (``.h5``/``.hdf5``).

Layout ``flowtie_fast/1`` (the same keys in both formats; HDF5 stores the
scalars as attributes of the root group and the arrays as datasets):

=============  =========================  ==========================================
key            shape / type               meaning
=============  =========================  ==========================================
format         str                        ``"flowtie_fast/1"``
kind           str                        ``"4dstem"`` or ``"triplet"``
minus          (Sy, Sx, Ky, Kx) or        data at z = -dz (abTEM defocus +dz),
               (Ny, Nx)                   any real dtype
zero, plus     same                       at z = 0 and z = +dz
dz             (2,) float, Å              (dz_minus, dz_plus)
scan_step      (2,) float, Å              scan step (4dstem) or pixel size (triplet)
k_sampling     (2,) float, 1/Å            detector sampling (4dstem only)
energy         float, eV
phase_gt       (Sy, Sx) float, rad        ground-truth phase (optional)
gradient_gt    (2, Sy, Sx) float, rad/Å   its gradient (optional)
material       str                        optional
thickness      float, Å                   optional
semiangle      float, mrad                optional
=============  =========================  ==========================================

Writes are atomic (a temporary file in the target folder, then a rename), so a
failed write leaves nothing behind. HDF5 datasets are read lazily: a
:class:`Dataset` loaded from HDF5 keeps the file open and streams 4D data
through the reduction.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Dataset", "load", "save"]

FORMAT = "flowtie_fast/1"
_ARRAYS = ("minus", "zero", "plus", "phase_gt", "gradient_gt")
_REQUIRED = ("minus", "zero", "plus", "dz", "scan_step", "energy")
_OPTIONAL_SCALARS = ("material", "thickness", "semiangle")


@dataclass
class Dataset:
    """A focal triplet on disk or in memory: 4D-STEM data or three images.

    Build the triplet with :meth:`triplet`.
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
    _handle: object = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "4dstem" if len(self.zero.shape) == 4 else "triplet"

    def triplet(self, **kwargs):
        """The :class:`~flowtie_fast.triplet.FocalTriplet` (``from_4dstem`` for 4D data;
        keyword arguments go to it, ``backend`` only is accepted for images)."""
        from .triplet import FocalTriplet

        if self.kind == "4dstem":
            return FocalTriplet.from_4dstem(self.minus, self.zero, self.plus, dz=self.dz,
                                            scan_step=self.scan_step,
                                            k_sampling=self.k_sampling, energy=self.energy,
                                            **kwargs)
        kwargs.pop("backend", None)  # images are read as they are
        if kwargs:
            raise InputError(f"options: {sorted(kwargs)} apply to 4D-STEM data only; this "
                             "file holds a triplet of images")
        return FocalTriplet(np.asarray(self.minus), np.asarray(self.zero), np.asarray(self.plus),
                            dz=self.dz, pixel_size=self.scan_step, energy=self.energy)

    def close(self) -> None:
        """Close the underlying HDF5 file, if any."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _from_object(obj) -> Dataset:
    if isinstance(obj, Dataset):
        return obj
    from .triplet import FocalTriplet

    if isinstance(obj, FocalTriplet):
        return Dataset(obj.minus, obj.zero, obj.plus, obj.dz, obj.pixel_size, obj.energy)
    # A simulate.SimulationCase (duck-typed: the module needs abTEM).
    if all(hasattr(obj, a) for a in ("minus", "zero", "plus", "k_sampling", "phase")):
        return Dataset(obj.minus, obj.zero, obj.plus, (obj.dz, obj.dz), tuple(obj.scan_step),
                       obj.energy, tuple(obj.k_sampling), obj.phase, obj.gradient,
                       {"material": obj.material, "thickness": obj.thickness,
                        "semiangle": obj.semiangle})
    raise InputError(f"obj: expected a Dataset, FocalTriplet or SimulationCase, "
                     f"got {type(obj).__name__}")


def _fields(ds: Dataset) -> dict:
    out = {"format": FORMAT, "kind": ds.kind, "minus": ds.minus, "zero": ds.zero,
           "plus": ds.plus, "dz": np.asarray(ds.dz, float).reshape(-1)[[0, -1]],
           "scan_step": np.broadcast_to(np.asarray(ds.scan_step, float), (2,)),
           "energy": float(ds.energy)}
    if ds.k_sampling is not None:
        out["k_sampling"] = np.broadcast_to(np.asarray(ds.k_sampling, float), (2,))
    if ds.phase_gt is not None:
        out["phase_gt"] = ds.phase_gt
    if ds.gradient_gt is not None:
        out["gradient_gt"] = ds.gradient_gt
    for k in _OPTIONAL_SCALARS:
        if ds.meta.get(k) is not None:
            out[k] = ds.meta[k]
    return out


def _suffix(path: Path) -> str:
    s = path.suffix.lower()
    if s not in (".npz", ".h5", ".hdf5"):
        raise InputError(f"path: expected a .npz, .h5 or .hdf5 file, got {path.name!r}")
    return s


def save(path, obj) -> Path:
    """Write a triplet, a 4D-STEM dataset or a simulated case atomically.

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.h5``/``.hdf5``.
    obj : Dataset, FocalTriplet or simulate.SimulationCase

    Returns
    -------
    Path
    """
    return write_fields(path, _fields(_from_object(obj)), arrays=_ARRAYS)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the
    block ends, deleted if it raises (nothing is half-written). Creates the
    folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_fields(path, fields: dict, arrays=()) -> Path:
    """Write ``fields`` atomically to ``.npz`` (all keys) or HDF5 (keys in
    ``arrays`` as datasets, the rest as root attributes)."""
    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{k: np.asarray(v) for k, v in fields.items()})
        else:
            import h5py

            with h5py.File(tmp, "w") as f:
                for k, v in fields.items():
                    if k in arrays:
                        f.create_dataset(k, data=np.asarray(v),
                                         chunks=True if np.ndim(v) >= 3 else None)
                    else:
                        f.attrs[k] = v
    return path


def load(path) -> Dataset:
    """Read a file written by :func:`save` (or any file in the layout).

    Raises :class:`~flowtie_fast.errors.InputError` naming the file and the
    key for missing keys, wrong shapes and unreadable or truncated files.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise InputError(f"path: no such file {str(path)!r}")
    handle = None
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                fields = {k: z[k] for k in z.files}
        else:
            import h5py

            handle = h5py.File(path, "r")
            fields = {k: handle[k] for k in handle.keys()}
            fields.update({k: handle.attrs[k] for k in handle.attrs.keys()})
    except InputError:
        raise
    except Exception as exc:
        if handle is not None:
            handle.close()
        raise InputError(f"path: {path.name} is not a readable {suffix} file ({exc})") from exc
    try:
        return _dataset(fields, path, handle)
    except BaseException:
        if handle is not None:
            handle.close()
        raise


def _scalar(v):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v


def _dataset(fields: dict, path: Path, handle) -> Dataset:
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InputError(f"{path.name}: missing key(s) {missing}; expected the layout "
                         f"{FORMAT} ({', '.join(_REQUIRED)})")
    shape = tuple(fields["zero"].shape)
    for k in ("minus", "plus"):
        if tuple(fields[k].shape) != shape:
            raise InputError(f"{path.name}: '{k}' has shape {tuple(fields[k].shape)}, "
                             f"expected {shape} like 'zero'")
    if len(shape) not in (2, 4):
        raise InputError(f"{path.name}: 'zero' must be 2-D (triplet) or 4-D (4D-STEM), got "
                         f"shape {shape}")
    k_sampling = None
    if len(shape) == 4:
        if "k_sampling" not in fields:
            raise InputError(f"{path.name}: missing key 'k_sampling' (1/Å) for 4D-STEM data")
        k_sampling = tuple(float(v) for v in np.broadcast_to(
            np.asarray(fields["k_sampling"], float), (2,)))
    scan = shape[:2]
    for k, want in (("phase_gt", scan), ("gradient_gt", (2,) + scan)):
        if k in fields and tuple(fields[k].shape) != want:
            raise InputError(f"{path.name}: '{k}' has shape {tuple(fields[k].shape)}, "
                             f"expected {want}")
    meta = {k: _scalar(fields[k]) for k in _OPTIONAL_SCALARS if k in fields}
    meta = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in meta.items()}
    dz = np.asarray(fields["dz"], float).reshape(-1)
    lazy = handle is not None
    arr = (lambda k: fields[k]) if lazy else (lambda k: np.asarray(fields[k]))
    truth = {k: np.asarray(fields[k]) for k in ("phase_gt", "gradient_gt") if k in fields}
    return Dataset(arr("minus"), arr("zero"), arr("plus"), (float(dz[0]), float(dz[-1])),
                   tuple(float(v) for v in np.broadcast_to(np.asarray(fields["scan_step"],
                                                                     float), (2,))),
                   float(_scalar(fields["energy"])), k_sampling, truth.get("phase_gt"),
                   truth.get("gradient_gt"), meta, handle)


# --------------------------------------------------------------------------- raw detector files

_RAW_READERS = {".mib": "rsciio.quantumdetector", ".blo": "rsciio.blockfile",
                ".dm3": "rsciio.digitalmicrograph", ".dm4": "rsciio.digitalmicrograph",
                ".emd": "rsciio.emd"}
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
        from .physics import wavelength

        return scale * 1e-3 / wavelength(energy)
    raise InputError(f"k_sampling: cannot convert detector units {units!r}; give k_sampling")


def read_raw(path, *, energy=None, scan_step=None, k_sampling=None):
    """One 4D-STEM dataset of a detector file, lazily, through rosettasciio.

    Reads .mib (Quantum Detectors), .blo (blockfile), .dm3/.dm4 (Gatan) and
    .emd files with rosettasciio (``pip install rosettasciio``). Calibrations
    come from the file unless given: scan step in Å, detector sampling in 1/Å
    (converted from nm, 1/nm or mrad), energy in eV.

    Returns
    -------
    data, scan_step, k_sampling, energy
        ``data`` is the (Sy, Sx, Ky, Kx) array, lazy (dask) where the reader is.
    """
    path = Path(path)
    module = _RAW_READERS.get(path.suffix.lower())
    if module is None:
        raise InputError(f"path: expected one of {sorted(_RAW_READERS)}, got {path.name!r}")
    if not path.is_file():
        raise InputError(f"path: no such file {str(path)!r}")
    try:
        import importlib

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
        energy = beam.get("beam_energy")
        energy = None if energy is None else float(energy) * 1e3  # keV -> eV
        if energy is None:
            raise InputError(f"energy: {path.name} does not record the beam energy; give it")
    if scan_step is None:
        try:
            scan_step = tuple(float(a["scale"]) * _LENGTH[str(a.get("units"))] for a in axes[:2])
        except KeyError as exc:
            raise InputError(f"scan_step: cannot convert scan units {exc}; give scan_step") \
                from exc
    if k_sampling is None:
        k_sampling = tuple(_per_angstrom(float(a["scale"]), a.get("units"), energy)
                           for a in axes[2:4])
    return sig["data"], scan_step, k_sampling, float(energy)


def load_raw_triplet(minus, zero, plus, dz, **calibration) -> Dataset:
    """A :class:`Dataset` of three detector files (planes -dz, 0, +dz), read lazily."""
    parts = [read_raw(p, **calibration) for p in (minus, zero, plus)]
    _, step, ks, energy = parts[1]
    return Dataset(parts[0][0], parts[1][0], parts[2][0], tuple(np.broadcast_to(dz, (2,))),
                   tuple(step), energy, tuple(ks))
