"""Paths and atomic writes: the file-system rules every writer and reader shares.

An output path is checked before any work is done (:func:`check_output`,
:func:`check_target`); an input path must be an existing regular file
(:func:`check_input_file`). Writes go through :func:`atomic_path`: a
temporary file in the target folder, flushed to disk, then renamed into
place, so that a failed write leaves nothing behind. Temporaries are named
``.NAME.flowtie-tmp.<host>.<pid>.<random>``; the leftovers of a killed writer
are removed by the next write of the same file.

Nothing here knows a file format (those are in :mod:`flowtie_fast.io`).
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
import time
from pathlib import Path

import numpy as np

from .errors import InputError, first_line

#: The data files of the flowtie_fast layout.
_DATA_SUFFIXES = (".npz", ".h5", ".hdf5")

# The public names; the other path checks are the package's own helpers.
__all__ = ["atomic_path", "check_output"]

#: Temporaries of other hosts (whose processes cannot be asked) older than this
#: many seconds are taken for the leftovers of a killed writer.
STALE_SECONDS = 24 * 3600



_TMP_MARK = ".flowtie-tmp."

# The temporaries of the writes under way in this process (:func:`atomic_path`),
# for :func:`remove_live_temporaries`.
_LIVE: set = set()


def remove_live_temporaries() -> None:
    """Delete the temporaries of the writes under way in this process: for a
    process about to end without unwinding (``os._exit``), whose writes'
    own clean-up will not run. The targets are left as they were."""
    for tmp in list(_LIVE):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        _LIVE.discard(tmp)



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
        raise InputError(f"{name}: expected a {listed} file, got {str(path)!r}")
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
    path = as_path(name, path, file=True)
    overwrite = _check_bool("overwrite", overwrite)
    check_not_input(name, path, inputs)
    if _is_dir(name, path):
        raise InputError(f"{name}: {str(path)!r} is a directory; expected the path of a file")
    _suffix(path, suffixes, name)
    check_target(name, path, overwrite, "pass --overwrite to replace it")
    return path



def as_path(name: str, path, *, file: bool = False) -> Path:
    """``path`` (a str or an ``os.PathLike``) as a :class:`~pathlib.Path`, checked
    to be one the system can take: not empty, no NUL character, each name and
    the whole within the file system's limits, and with ``file``, not ending
    in a separator (the path of a folder, which :class:`~pathlib.Path` would
    silently turn into that of a file); :class:`InputError` naming ``name``
    otherwise. A leading ``~`` or ``~user`` is the home folder, as a shell
    reads it (not a folder named ``~`` in the working one). Nothing is read
    from the disk."""
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
    if file and text[-1] in (os.sep, os.altsep or os.sep):
        raise InputError(f"{name}: {_short(text, 200)!r} ends with {text[-1]!r}, the path of a "
                         "folder; expected the path of a file (drop the trailing separator)")
    path = Path(os.path.expanduser(text))
    _check_name_lengths(name, path)
    return path



def one_line(text) -> str:
    """Text from a file or a user (a ``material``, a file name, a message
    that quotes them) on one line, with control characters (a terminal's
    escape sequences, carriage returns) and undecodable bytes of file names
    (lone surrogates) shown as escapes."""
    text = " ".join(str(text).split())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


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
        except FileExistsError:  # another's: left alone
            continue
        except BaseException:  # interrupted (Ctrl-C): a file of this random name is ours
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:
            os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
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
    path = as_path(name, path, file=True)
    overwrite = _check_bool("overwrite", overwrite)
    folder = path.parent
    stem = _tmp_stem(path.name)
    tmp = None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _remove_stale(folder, stem)
            tmp = _create_tmp(folder, stem)
        except OSError as exc:
            raise _write_error(name, path, exc, None) from exc
        _LIVE.add(tmp)
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
    except BaseException:  # an interrupt between the creation and the write included
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    finally:
        _LIVE.discard(tmp)



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


def check_hdf5_written(name: str, dataset) -> None:
    """Refuse an h5py dataset that was never written, or a chunked one only
    partly written: HDF5 reads what is missing as the fill value, which would
    be taken for data. Metadata only, nothing is read.

    Parameters
    ----------
    name : str
        How the message names the argument (or file) the dataset came from.
    dataset : h5py.Dataset or anything else
        Anything that is not an h5py dataset passes. Compact datasets
        (always allocated), virtual ones (their storage lies in the sources),
        datasets of no element and datasets whose metadata cannot be queried
        pass too; reading them reports its own errors.

    Raises
    ------
    InputError
        Naming ``name`` and the dataset: "... was never written" where no
        storage was allocated (contiguous or chunked), "... holds k of m
        chunks: partly written" where chunks are missing.
    """
    if not type(dataset).__module__.startswith("h5py"):
        return
    try:
        import h5py

        if not isinstance(dataset, h5py.Dataset):
            return
        dsid = dataset.id
        shape, size = dataset.shape, dataset.size
        if shape is None or not size:
            return
        layout = dsid.get_create_plist().get_layout()
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED) or dataset.external:
            return
        stored = dsid.get_storage_size()
        chunks = dataset.chunks
        have = dsid.get_num_chunks() if layout == h5py.h5d.CHUNKED and chunks else None
        fill = dataset.fillvalue
    except Exception:  # noqa: BLE001  a closed file, an h5py without these calls
        return
    try:
        fill = f"{fill:g}"
    except (TypeError, ValueError):
        fill = repr(fill)
    what = f"{name}: the HDF5 dataset {dataset.name!r} of shape {tuple(shape)}"
    if stored == 0:
        raise InputError(f"{what} was never written (HDF5 holds no storage for it; it "
                         f"would read as its fill value {fill}); expected recorded data")
    if have is not None:
        need = 1
        for n, c in zip(shape, chunks):
            need *= -(-int(n) // int(c))
        if have < need:
            raise InputError(f"{what} holds {have} of {need} chunks: partly written (the "
                             f"missing ones would read as its fill value {fill}); expected "
                             "a complete dataset")
