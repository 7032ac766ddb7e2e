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
gradient       (2, Ny, Nx) float, rad/Å   a measured phase gradient of a triplet
                                          (optional; triplets only: 4D-STEM data
                                          give theirs, the centre of mass, when
                                          reduced), for ``method="icom"``
material       str                        optional
thickness      float, Å                   optional
semiangle      float, mrad                optional
=============  =========================  ==========================================

``format`` and ``kind`` are optional when reading (files written by hand
may leave them out), but checked when present: a format newer than
``flowtie_fast/1`` ("written by a newer flowtie_fast") and a ``kind`` that
disagrees with the arrays' dimensions are refused.

Writes are atomic (a temporary file in the target folder, flushed to disk,
then a rename), so a failed write leaves nothing behind. Temporaries are named
``.NAME.flowtie-tmp.<host>.<pid>.<random>``; the leftovers of a killed writer
are removed by the next write of the same file (see :func:`atomic_path`).
Files are created with the permissions of the process umask, like any other
file the user creates. :func:`check_output` checks an output path before any
work is done.

Reading never executes code from the file (no pickles) and never follows a
link to another file; every key is checked (dtype, shape, positive finite
calibrations) and a bad one raises :class:`~flowtie_fast.errors.InputError`
naming the file and the key. HDF5 datasets are read lazily: a
:class:`Dataset` loaded from HDF5 keeps the file open and streams 4D data
through the reduction.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, check_positive, first_line

__all__ = ["Dataset", "check_output", "load", "save"]

FORMAT = "flowtie_fast/1"
_ARRAYS = ("minus", "zero", "plus", "phase_gt", "gradient_gt", "gradient")
_REQUIRED = ("minus", "zero", "plus", "dz", "scan_step", "energy")
_OPTIONAL_SCALARS = ("material", "thickness", "semiangle")
_KEYS = _ARRAYS + ("dz", "scan_step", "k_sampling", "energy", "format", "kind") + \
    _OPTIONAL_SCALARS
_DATA_SUFFIXES = (".npz", ".h5", ".hdf5")

#: Temporaries of other hosts (whose processes cannot be asked) older than this
#: many seconds are taken for the leftovers of a killed writer.
STALE_SECONDS = 24 * 3600
_TMP_MARK = ".flowtie-tmp."


@dataclass
class Dataset:
    """A focal triplet on disk or in memory: 4D-STEM data or three images.

    Build the triplet with :meth:`triplet`. ``gradient`` is a measured phase
    gradient (2, Ny, Nx) in rad/Å of a triplet of images, given to the
    triplet (``method="icom"``).
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
    _handle: object = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)
    _path: object = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return "4dstem" if len(self.zero.shape) == 4 else "triplet"

    def triplet(self, **kwargs):
        """The :class:`~flowtie_fast.triplet.FocalTriplet` (``from_4dstem`` for 4D data;
        keyword arguments go to it, ``backend`` only is accepted for images)."""
        from .triplet import FocalTriplet

        self._check_open("dataset")
        if self.kind == "4dstem":
            return FocalTriplet.from_4dstem(self.minus, self.zero, self.plus, dz=self.dz,
                                            scan_step=self.scan_step,
                                            k_sampling=self.k_sampling, energy=self.energy,
                                            **kwargs)
        kwargs.pop("backend", None)  # images are read as they are
        if kwargs:
            raise InputError(f"options: {sorted(kwargs)} apply to 4D-STEM data only; this "
                             "file holds a triplet of images")
        self._check_read_memory()
        where = Path(self._name())
        planes = [_read(getattr(self, k), k, where) for k in ("minus", "zero", "plus")]
        gradient = None if self.gradient is None else _read(self.gradient, "gradient", where)
        return FocalTriplet(*planes, dz=self.dz, pixel_size=self.scan_step, energy=self.energy,
                            gradient=gradient)

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
        from .backend import _gib, host_available_memory

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


def _from_object(obj) -> Dataset:
    if isinstance(obj, Dataset):
        obj._check_open("obj")
        return obj
    from .backend import is_cupy
    from .triplet import FocalTriplet

    if isinstance(obj, FocalTriplet):
        host = [None if a is None else (a.get() if is_cupy(a) else a)
                for a in (*obj.planes, obj.gradient)]
        return Dataset(*host[:3], obj.dz, obj.pixel_size, obj.energy, gradient=host[3])
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
    if ds.gradient is not None:
        out["gradient"] = ds.gradient
    for k in _OPTIONAL_SCALARS:
        if ds.meta.get(k) is not None:
            out[k] = ds.meta[k]
    return out


def _suffix(path: Path, suffixes=None, name: str = "path") -> str:
    """The lower-case suffix of ``path`` if it is one of ``suffixes`` (default:
    the data files, .npz, .h5 and .hdf5); :class:`InputError` naming ``name``
    otherwise."""
    if suffixes is None:
        suffixes = _DATA_SUFFIXES
    elif isinstance(suffixes, str):
        suffixes = (suffixes,)
    suffixes = tuple(x.lower() if x.startswith(".") else f".{x.lower()}" for x in suffixes)
    s = path.suffix.lower()
    if s not in suffixes:
        listed = suffixes[0] if len(suffixes) == 1 else \
            ", ".join(suffixes[:-1]) + " or " + suffixes[-1]
        raise InputError(f"{name}: expected a {listed} file, got {path.name!r}")
    return s


def check_output(path, *, inputs=(), overwrite=False, name="output", suffixes=None) -> Path:
    """Check an output path before any work is done; nothing is created.

    Parameters
    ----------
    path : str or Path
        The file to be written.
    inputs : iterable of str or Path, optional
        The files read by the same command (``None`` entries are skipped); the
        output must not be one of them, through a symbolic link or a hard link
        either.
    overwrite : bool, optional
        Whether an existing file may be replaced.
    name : str, optional
        The argument's name, used in the messages.
    suffixes : iterable of str, optional
        The accepted suffixes (``(".png",)``, ``(".md", ".txt")``, ...);
        default the data files: .npz, .h5 and .hdf5.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    InputError
        When ``path`` is one of ``inputs``, is a directory or another thing
        than a regular file, has another suffix, exists and ``overwrite`` is
        false, has a parent that is not a folder, has a name longer than the
        file system allows, or when its folder cannot be created or written.
    """
    path = as_path(name, path)
    overwrite = _check_bool("overwrite", overwrite)
    check_not_input(name, path, inputs)
    if _is_dir(name, path):
        raise InputError(f"{name}: {str(path)!r} is a directory; expected the path of a file")
    _suffix(path, suffixes, name)
    check_target(name, path, overwrite, "pass --overwrite to replace it")
    return path


def as_path(name: str, path) -> Path:
    """``path`` (a str or an ``os.PathLike``) as a :class:`~pathlib.Path`, checked
    to be one the system can take: not empty, no NUL character, each name and
    the whole within the file system's limits; :class:`InputError` naming
    ``name`` otherwise. Nothing is read from the disk."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{name}: expected a file path (str or pathlib.Path), got "
                         f"{type(path).__name__}")
    try:
        text = os.fspath(path)
    except TypeError as exc:
        raise InputError(f"{name}: expected a file path, got {first_line(exc)}") from exc
    if not isinstance(text, str):
        raise InputError(f"{name}: expected a file path as text, got {type(text).__name__}")
    if not text:
        raise InputError(f"{name}: expected a file path, got an empty string")
    if "\0" in text:
        raise InputError(f"{name}: expected a file path without NUL characters, got "
                         f"{_short(text)!r}")
    path = Path(text)
    _check_name_lengths(name, path)
    return path


def _short(text: str, size: int = 60) -> str:
    return text if len(text) <= size else text[:size - 3] + "..."


def _check_bool(name: str, value) -> bool:
    """``value`` as a bool: True or False only (a string such as ``"no"`` is
    refused rather than taken as true); :class:`InputError` naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _is_dir(name: str, path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise _path_error(name, path, exc) from exc


def _path_error(name: str, path: Path, exc: OSError) -> InputError:
    """An OSError met while looking at ``path`` as an :class:`InputError`
    naming ``name`` and ``path`` (not a temporary)."""
    if exc.errno == errno.ELOOP:
        what = "a loop of symbolic links"
    elif exc.errno == errno.ENOTDIR:
        what = "one of its folders is a file"
    else:
        what = exc.strerror or first_line(exc)
    return InputError(f"{name}: {_short(str(path), 200)!r} cannot be used ({what})")


def check_target(name: str, path: Path, overwrite: bool, hint: str) -> None:
    """Refuse an output ``path`` that cannot be written as a new or replaced
    regular file: a directory or other non-regular file in its place, an
    existing file when not ``overwrite`` (``hint`` says how to replace it), a
    parent that is not a folder, or a folder that cannot be written.
    :class:`InputError` naming ``name``; nothing is created."""
    shown = repr(_short(str(path), 200))
    try:
        if os.path.lexists(path):
            if _is_dir(name, path):
                raise InputError(f"{name}: {shown} is a directory; expected the path of a file")
            if path.exists() and not path.is_file():
                raise InputError(f"{name}: {shown} exists and is not a regular file; choose "
                                 "another output path")
            if not overwrite:
                raise InputError(f"{name}: {shown} exists; {hint}")
        folder = Path(os.path.abspath(path)).parent
        while not folder.is_dir():
            if os.path.lexists(folder):
                raise InputError(f"{name}: {shown} cannot be created: {str(folder)!r} is not "
                                 "a folder")
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InputError(f"{name}: {shown} cannot be written: no permission to write in "
                             f"{str(folder)!r} (or a read-only file system)")
    except OSError as exc:  # ELOOP, EACCES on a parent, ...
        raise _path_error(name, path, exc) from exc


def check_not_input(name: str, path, inputs) -> None:
    """Refuse an output ``path`` that is one of ``inputs`` (paths or None), by
    name, through a symbolic link or as a hard link: :class:`InputError`
    naming ``name``."""
    shown = str(path)
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = (inputs,)
    real = os.path.realpath(path)
    for source in inputs:
        if source is None:
            continue
        same = os.path.realpath(source) == real
        if not same:
            with contextlib.suppress(OSError, ValueError):  # one of them is missing
                same = os.path.samefile(path, source)
        if same:
            which = "" if str(source) == shown else f" {str(source)!r}"
            raise InputError(f"{name}: {shown!r} is the input file{which}; choose another "
                             "output path")


def _check_name_lengths(name: str, path: Path) -> None:
    """Refuse a path with a component longer than its file system allows, or
    longer as a whole than the system takes (PATH_MAX); checked first: longer
    names make the other checks fail with OSError."""
    try:
        absolute = os.path.abspath(path)
    except (OSError, ValueError):  # the working folder is gone
        absolute = str(path)
    parts = Path(absolute).parts
    try:
        name_max = os.pathconf(parts[0], "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        name_max = 255
    for part in parts[1:]:
        size = len(os.fsencode(part))
        if size > name_max:
            raise InputError(f"{name}: the name {part[:40]!r}... has {size} bytes; the file "
                             f"system allows {name_max}")
    try:
        path_max = os.pathconf(parts[0], "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        path_max = 4096
    size = max(len(os.fsencode(str(path))), len(os.fsencode(absolute)))
    if path_max > 0 and size >= path_max:
        raise InputError(f"{name}: the path {str(path)[:40]!r}... has {size} bytes; the "
                         f"system takes paths of fewer than {path_max}")


def save(path, obj, overwrite: bool = True) -> Path:
    """Write a triplet, a 4D-STEM dataset or a simulated case atomically.

    A :class:`~flowtie_fast.triplet.FocalTriplet`'s measured ``gradient``
    (e.g. the centre of mass of 4D-STEM data) is stored too, as ``gradient``,
    and given back to the triplet by :meth:`Dataset.triplet`.

    Parameters
    ----------
    path : str or Path
        ``.npz`` or ``.h5``/``.hdf5``.
    obj : Dataset, FocalTriplet or simulate.SimulationCase
    overwrite : bool
        Replace an existing file (default); False refuses one, checked before
        anything is written, and atomically again when the file is renamed
        into place (:func:`atomic_path`).

    Returns
    -------
    Path

    Raises
    ------
    InputError
        Naming ``path`` for a path that is not a writable file path (a
        directory, a folder that is a file, a name too long, an existing file
        when ``overwrite`` is False), ``overwrite`` for a value that is not a
        bool, ``obj`` for another object or a closed HDF5 dataset.
    OSError
        When the file cannot be written (disk full, read-only file system,
        permission denied), naming ``path``; no temporary is left.
    """
    path = as_path("path", path)
    overwrite = _check_bool("overwrite", overwrite)
    _suffix(path)
    ds = _from_object(obj)
    if ds.gradient is not None and ds.kind == "4dstem":
        raise InputError("obj: a measured 'gradient' is stored for a triplet of images only; "
                         "4D-STEM data give their own (the centre of mass) when reduced")
    check_target("path", path, overwrite, "pass overwrite=True to replace it")
    return write_fields(path, _fields(ds), arrays=_ARRAYS, overwrite=overwrite, name="path")


def _host_tag() -> str:
    """This host's name as it appears in temporaries: letters, digits and
    hyphens, hashed where the name has other characters or is long."""
    try:
        host = socket.gethostname()
    except OSError:
        host = ""
    if re.fullmatch(r"[A-Za-z0-9-]{1,40}", host):
        return host
    digest = hashlib.sha1(host.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9-]', '-', host)[:24]}-{digest}"


_HOST = _host_tag()


def _tmp_stem(name: str) -> str:
    """``name`` as it appears in its temporaries (shortened, with a hash, where
    long, so that the temporary's name fits the file system's limit)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 120:
        return name
    return f"{raw[:80].decode('utf-8', 'ignore')}~{hashlib.sha1(raw).hexdigest()[:12]}"


def _tmp_pattern(stem: str):
    return re.compile(re.escape(f".{stem}{_TMP_MARK}")
                      + r"(?P<host>[A-Za-z0-9-]{1,40})\.(?P<pid>[1-9][0-9]{0,9})\.[0-9a-f]{8}")


def _pid_gone(pid: int) -> bool:
    """Whether no process ``pid`` runs on this host (False where unsure)."""
    if os.name == "nt":  # os.kill would terminate the process there
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # PermissionError: another user's process
        return False
    return False


def _remove_stale(folder: Path, stem: str) -> None:
    """Remove the temporaries of ``stem`` left in ``folder`` by killed writers.

    A temporary is removed when it is a regular file whose name matches the
    pattern exactly and either its writer ran on this host and runs no more,
    or it comes from another host and was last modified more than
    :data:`STALE_SECONDS` ago. Temporaries of live processes are kept. Best
    effort: errors are ignored.
    """
    prefix = f".{stem}{_TMP_MARK}"
    pattern = _tmp_pattern(stem)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        if match["host"] == _HOST:
            if not _pid_gone(int(match["pid"])):
                continue
        elif now - st.st_mtime < STALE_SECONDS:
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)


def _create_tmp(folder: Path, stem: str) -> Path:
    """Create an empty temporary for ``stem`` in ``folder``, mode 0o666 less the
    process umask (applied by the system, as for any new file)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))
    for _ in range(100):
        tmp = folder / f".{stem}{_TMP_MARK}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free name for a temporary file", str(folder))


_NO_FSYNC = {errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL),
             getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def _fsync_file(path: Path) -> None:
    """Flush ``path`` to disk (through a new handle: writers use their own)."""
    flags = (os.O_RDWR | getattr(os, "O_BINARY", 0)) if os.name == "nt" else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FSYNC:  # a file system without fsync
            raise
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries to disk where the platform can (POSIX);
    skipped silently elsewhere. Only an I/O error is raised."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path, overwrite: bool = True, *, name: str = "output"):
    """A temporary path beside ``path`` to write to, moved onto ``path`` when
    the block ends.

    The folder is created if needed. The temporary,
    ``.NAME.flowtie-tmp.<host>.<pid>.<random>``, is created empty with the
    permissions of the process umask; when the block ends it is flushed to
    disk (fsync), renamed onto ``path`` and the folder is flushed too. If the
    block raises, the temporary is deleted and nothing is half-written. A
    process killed inside the block cannot delete its temporary: each write
    first removes the temporaries of the same file name whose process no
    longer runs on this host (or, from another host, that are older than
    :data:`STALE_SECONDS`); a live process's temporary is never touched.

    Parameters
    ----------
    path : str or Path
        The file to write.
    overwrite : bool
        Replace an existing file (default). False: the temporary is linked to
        ``path`` only if no file of that name exists at that moment (an atomic
        test, so a concurrent writer that got there first is never replaced)
        and :class:`InputError` is raised otherwise.
    name : str
        How messages name the path (the argument that gave it).

    Yields
    ------
    Path
        The temporary: write it by path or through any file handle, and close
        it before the block ends.

    Raises
    ------
    InputError
        Naming ``name`` when the path cannot be a file (a name too long, a
        folder in its place or a file in place of a folder, a loop of links).
    OSError
        When the folder, the temporary or the file cannot be written (disk
        full, read-only file system, permission denied), of the class and
        ``errno`` of the system's error, its message naming ``path`` (not the
        temporary); no temporary is left.
    """
    path = as_path(name, path)
    overwrite = _check_bool("overwrite", overwrite)
    folder = path.parent
    stem = _tmp_stem(path.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder, stem)
        tmp = _create_tmp(folder, stem)
    except OSError as exc:
        raise _write_error(name, path, exc, None) from exc
    try:
        try:
            yield tmp
            _fsync_file(tmp)
            if overwrite:
                os.replace(tmp, path)
            else:
                _link_new(tmp, path, name)
            _fsync_dir(folder)
        except OSError as exc:
            raise _write_error(name, path, exc, tmp) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


#: System errors that say the path itself cannot be a file (the caller's input).
_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP}


def _write_error(name: str, path: Path, exc: OSError, tmp) -> Exception:
    """An OSError of a write, told in one line naming ``path`` (never the
    temporary): an :class:`InputError` where the path cannot be a file, else
    an OSError of the same class and ``errno`` (an environment error: disk
    full, read-only file system, no permission)."""
    reason = exc.strerror or first_line(exc)
    if tmp is not None:
        reason = reason.replace(str(tmp), str(path))
    reason = reason.replace(f".{_tmp_stem(path.name)}{_TMP_MARK}", "")
    shown = repr(_short(str(path), 200))
    if exc.errno in _PATH_ERRNOS:
        if exc.errno == errno.EISDIR:
            return InputError(f"{name}: {shown} is a directory; expected the path of a file")
        if exc.errno == errno.EEXIST:
            reason = "one of its folders is a file"
        return InputError(f"{name}: {shown} cannot be written ({reason})")
    text = f"{name}: {shown} cannot be written ({reason})"
    try:
        new = type(exc)(exc.errno, text) if exc.errno is not None else type(exc)(text)
    except Exception:  # an OSError subclass of another signature
        new = OSError(exc.errno, text) if exc.errno is not None else OSError(text)
    return new


def _link_new(tmp: Path, path: Path, name: str = "output") -> None:
    """Give ``tmp`` the name ``path`` only if that name is free, then drop the
    temporary name: ``link`` fails atomically on an existing name (where the
    file system has no hard links, an existence test and a rename instead)."""
    meanwhile = InputError(f"{name}: {str(path)!r} was created meanwhile by another writer; "
                           "it is kept (overwriting was not allowed)")
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise meanwhile from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV,
                             errno.EMLINK):
            raise
        if os.path.lexists(path):
            raise meanwhile from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


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
    path = as_path(name, path)
    suffix = _suffix(path, None, name)
    with atomic_path(path, overwrite, name=name) as tmp:
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

    Only the keys of the layout are read; nothing in the file is executed
    (no pickles) and HDF5 links to other files, virtual and external datasets
    are refused.

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
        this version reads or a ``kind`` the arrays contradict, and
        unreadable or truncated files; naming ``path`` for a path that is not
        a regular file (missing, a directory, a FIFO, a loop of links).
    """
    path = as_path("path", path)
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


def check_input_file(name: str, path: Path) -> None:
    """Refuse a ``path`` that is not an existing regular file (following
    links), saying what it is: :class:`InputError` naming ``name``."""
    shown = repr(_short(str(path), 200))
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            target = os.readlink(path) if os.path.islink(path) else "?"
            raise InputError(f"{name}: {shown} is a symbolic link to {target!r}, which does "
                             "not exist") from None
        raise InputError(f"{name}: no such file {str(path)!r}") from None
    except NotADirectoryError:
        raise InputError(f"{name}: no such file {shown} (one of its folders is a file)") \
            from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{name}: {shown} is a symbolic-link loop; expected a file") \
                from None
        raise InputError(f"{name}: {shown} cannot be read "
                         f"({exc.strerror or first_line(exc)})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{name}: {shown} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else
                "a socket" if stat.S_ISSOCK(mode) else
                "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")
        raise InputError(f"{name}: {shown} is {kind}, not a regular file")


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


def _read_h5(path: Path, suffix: str):
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:
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
            fields[key] = obj
        for key in _KEYS:
            if key in handle.attrs:
                if key in fields:  # which of the two is meant cannot be told
                    raise InputError(f"{path.name}: '{key}' is both a dataset and a root "
                                     "attribute; expected one of them")
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


def _array_shape(fields: dict, k: str, path: Path) -> tuple:
    """The shape of array ``k``, checked to hold real numbers."""
    v = _as_array(fields[k], k, path)
    if v.shape is None:
        raise InputError(f"{path.name}: '{k}' is an empty HDF5 dataset; expected an array")
    if v.dtype.kind not in "iuf":
        raise InputError(f"{path.name}: '{k}' has dtype {v.dtype}; expected real numbers "
                         "(integers or floats)")
    return tuple(v.shape)


def _read(v, k: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(v)
    except Exception as exc:
        raise InputError(f"{path.name}: '{k}' cannot be read ({exc})") from exc


def _positive(fields: dict, k: str, path: Path, most: int, unit: str) -> tuple:
    """Key ``k``: ``most`` positive finite floats (one value is repeated)."""
    want = "a positive finite number" + (" or a pair of them" if most == 2 else "")
    want += f" ({unit})"
    v = _as_array(fields[k], k, path)
    if v.shape is None or len(v.shape) > 1 or not 1 <= int(np.prod(v.shape)) <= most:
        got = "no dataspace" if v.shape is None else \
            f"{int(np.prod(v.shape))} values of shape {tuple(v.shape)}"
        raise InputError(f"{path.name}: '{k}' must be {want}, got {got}")
    a = _read(v, k, path)
    if a.dtype.kind not in "iuf":
        raise InputError(f"{path.name}: '{k}' must be {want}, got {_describe(a)}")
    values = a.astype(float).reshape(-1)
    if not (np.isfinite(values).all() and (values > 0).all()):
        raise InputError(f"{path.name}: '{k}' must be {want}, got {values.tolist()}")
    return (float(values[0]), float(values[-1])) if most == 2 else (float(values[0]),)


def _text(fields: dict, k: str, path: Path) -> str:
    v = fields[k]
    if _is_h5_dataset(v):
        if v.shape != ():
            raise InputError(f"{path.name}: '{k}' must be a string, got a dataset of shape "
                             f"{v.shape}")
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
    return str(v)


def _dataset(fields: dict, path: Path, handle) -> Dataset:
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InputError(f"{path.name}: missing key(s) {missing}; expected the layout "
                         f"{FORMAT} ({', '.join(_REQUIRED)})")
    shape = _array_shape(fields, "zero", path)
    if len(shape) not in (2, 4):
        raise InputError(f"{path.name}: 'zero' must be 2-D (triplet) or 4-D (4D-STEM), got "
                         f"shape {shape}")
    for k in ("minus", "plus"):
        other = _array_shape(fields, k, path)
        if other != shape:
            raise InputError(f"{path.name}: '{k}' has shape {other}, expected {shape} like "
                             "'zero'")
    if 0 in shape:
        raise InputError(f"{path.name}: 'zero' is empty (shape {shape})")
    _check_format(fields, path, shape)
    k_sampling = None
    if len(shape) == 4:
        if "k_sampling" not in fields:
            raise InputError(f"{path.name}: missing key 'k_sampling' (1/Å) for 4D-STEM data")
        k_sampling = _positive(fields, "k_sampling", path, 2, "1/Å")
    scan = shape[:2]
    truth = {}
    if "gradient" in fields and len(shape) == 4:
        raise InputError(f"{path.name}: 'gradient' is for a triplet of images; 4D-STEM data "
                         "give their own (the centre of mass) when reduced: remove it")
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
    meta = {}
    if "material" in fields:
        meta["material"] = _text(fields, "material", path)
    for k, unit in (("thickness", "Å"), ("semiangle", "mrad")):
        if k in fields:
            meta[k] = _positive(fields, k, path, 1, unit)[0]
    dz = _positive(fields, "dz", path, 2, "Å")
    scan_step = _positive(fields, "scan_step", path, 2, "Å")
    energy = _positive(fields, "energy", path, 1, "eV")[0]
    lazy = handle is not None
    arr = (lambda k: fields[k]) if lazy else (lambda k: np.asarray(fields[k]))
    return Dataset(arr("minus"), arr("zero"), arr("plus"), dz, scan_step, energy, k_sampling,
                   truth.get("phase_gt"), truth.get("gradient_gt"), meta,
                   gradient=truth.get("gradient"), _handle=handle, _path=path)


def _check_format(fields: dict, path: Path, shape: tuple) -> None:
    """The optional ``format`` and ``kind`` keys: a format of this layout no
    newer than :data:`FORMAT`, a kind that agrees with the arrays."""
    if "format" in fields:
        text = _text(fields, "format", path)
        match = re.fullmatch(r"flowtie_fast/([0-9]{1,9})", text.strip())
        if match is None:
            raise InputError(f"{path.name}: 'format' must be {FORMAT!r}, got "
                             f"{_short(text)!r}")
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
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path: expected a file path, got {type(path).__name__}")
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
    return (sig["data"], check_positive("scan_step", scan_step, pair=True),
            check_positive("k_sampling", k_sampling, pair=True), check_positive("energy", energy))


def load_raw_triplet(minus, zero, plus, dz, **calibration) -> Dataset:
    """A :class:`Dataset` of three detector files (planes -dz, 0, +dz), read lazily."""
    dz = check_positive("dz", dz, pair=True)
    parts = [read_raw(p, **calibration) for p in (minus, zero, plus)]
    _, step, ks, energy = parts[1]
    return Dataset(parts[0][0], parts[1][0], parts[2][0], dz, step, energy, ks)
