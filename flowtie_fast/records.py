"""The records a triplet keeps beside its arrays, as files store them.

A triplet's registration, the verdict of its gradient's orientation check
and, of a 4D-STEM triplet or integer planes, the pile-up check of its
patterns or planes, the descan plane, the beam-current factors and the
isolated pixels replaced in its planes are plain data: :mod:`flowtie_fast.io`
stores each as JSON text. Every record is checked field by field when it is
written and when it is read (types, counts, finite numbers, printable text,
no key given twice, a bounded length): never code, and never a record the
solves would misread.
"""

from __future__ import annotations

import json
import math
import unicodedata

import numpy as np

from .errors import InputError
from .files import _short
from .planes import repair_limit
from .trust import suspicion

__all__ = ["RECORDS", "RECORD_CHECKS", "json_limit", "json_text", "unique_keys",
           "suspect_record", "stored_defects", "joined_defects"]

#: The records, in the order files store them.
RECORDS = ("registration", "orientation", "saturation", "descan", "flux", "plane_defects")

_REGISTRATION = {"shifts": "3 x 2 shifts in px", "reliable": "true or false",
                 "applied": "true or false", "signal": "text or null", "why": "text or null"}

#: characters: the longest JSON record read (a registration record or an
#: orientation verdict is a few hundred, a saturation record a few thousand);
#: a record of replaced pixels may hold more (:func:`json_limit`).
_JSON_CHARS = 1 << 16
#: Screens a stored ``plane_defects`` record may join: the pixels replaced
#: before the planes were stored, and those the loaded triplet's screen
#: replaced in them (:func:`joined_defects`).
_SCREENS = 2
#: characters of one pixel ``[row, column, value, median]`` of a
#: ``plane_defects`` record, at most (four floats' reprs of up to 24 each).
_PIXEL_CHARS = 128


def unique_keys(pairs) -> dict:
    """A JSON object's pairs as a dict, for :func:`json.loads`'s ``object_pairs_hook``.

    Parameters
    ----------
    pairs : list of (str, object)
        The object's keys and values, in the order of the text.

    Returns
    -------
    dict
        The object.

    Raises
    ------
    ValueError
        Where a key is given twice (which of them counts would otherwise be
        the parser's choice).
    """
    record = {}
    for k, v in pairs:
        if k in record:
            raise ValueError(f"key {k!r} given twice")
        record[k] = v
    return record


def json_limit(key: str, shape: tuple) -> tuple:
    """The most characters of a record's JSON text that a file is read up to.

    Parameters
    ----------
    key : str
        The record, one of :data:`RECORDS`.
    shape : tuple of int
        The planes' shape, (..., Ny, Nx) px.

    Returns
    -------
    most : int
        Characters: 65536 (2**16) for every record, and for
        ``plane_defects`` as many more as the pixels three planes may have
        replaced (:func:`~flowtie_fast.planes.repair_limit`) take.
    said : str
        How a message says the limit.
    """
    if key != "plane_defects":
        return _JSON_CHARS, "a few hundred characters"
    most = _JSON_CHARS + 3 * _SCREENS * int(repair_limit(shape[-2:])) * _PIXEL_CHARS
    return most, f"at most {most} characters for planes of {shape[-2:]} px"


def _check_printable(record, name: str, want: str) -> None:
    """Refuse a record whose texts hold a control character or a lone
    surrogate (JSON escapes such as ``"\\u001b[2J"``, ``"\\n"``,
    ``"\\ud800"``): its ``why`` is printed in the command's messages (raw
    terminal escapes and lines, or a UnicodeEncodeError naming nothing)."""
    bad = _unprintable(record)
    if bad is not None:
        what = "a lone surrogate, which UTF-8 cannot encode" if "\ud800" <= bad <= "\udfff" \
            else "a control character"
        raise InputError(f"{name} must be {want}, got {_short(repr(record), 80)} (its text "
                         f"holds {bad!r}, {what}; expected printable text)")


def _unprintable(value):
    """The first character of a parsed JSON value's texts (keys included) that
    is a control character (category Cc: terminal escapes, newlines) or a
    lone surrogate (Cs), or None: such text would be printed raw in a message,
    or fail to print at all."""
    if isinstance(value, str):
        return next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        return next((bad for v in value if (bad := _unprintable(v)) is not None), None)
    return None


def _registration_record(record, name: str, shape=None) -> dict:
    """A registration record (``triplet.registration``) checked and made of
    plain values (the shifts a nested list of floats); :class:`InputError`
    naming ``name`` where it is not one, or, given the planes' ``shape``
    (..., Ny, Nx), where a shift exceeds their extent along its axis."""
    want = ("a registration record {" +
            ", ".join(f"{k!r}: {v}" for k, v in _REGISTRATION.items()) + "}")
    if not isinstance(record, dict) or not {"shifts", "reliable", "applied"} <= set(record) \
            or not set(record) <= set(_REGISTRATION):
        raise InputError(f"{name} must be {want}, got {_short(repr(record), 80)}")
    _check_printable(record, name, want)
    try:
        shifts = np.array(record["shifts"], dtype=object)
        ok = shifts.shape == (3, 2) and all(
            isinstance(v, (int, float, np.integer, np.floating)) and
            not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))
            for v in shifts.ravel())
    except (TypeError, ValueError, OverflowError):  # an integer beyond float's range
        ok = False
    flags = all(isinstance(record[k], (bool, np.bool_)) for k in ("reliable", "applied"))
    texts = all(isinstance(record.get(k), (str, type(None))) for k in ("signal", "why"))
    if not (ok and flags and texts) or (record["applied"] and not record["reliable"]):
        raise InputError(f"{name} must be {want} (applied only where reliable), got "
                         f"{_short(repr(record), 80)}")
    if shape is not None and len(shape) >= 2:
        extent = [int(n) for n in shape[-2:]]
        if any(abs(float(v)) > n for row in shifts for v, n in zip(row, extent)):
            raise InputError(f"{name} must be {want} with shifts within the planes' extent "
                             f"{tuple(extent)} px, got shifts "
                             f"{_short(repr([[float(v) for v in r] for r in shifts]), 80)}")
    return {"shifts": [[float(v) for v in row] for row in shifts],
            "reliable": bool(record["reliable"]), "applied": bool(record["applied"]),
            "signal": record.get("signal"), "why": record.get("why")}


def suspect_record(check) -> dict | None:
    """The orientation verdict a file stores of a triplet's orientation check.

    Parameters
    ----------
    check : dict or None
        ``triplet.gradient_orientation``.

    Returns
    -------
    dict or None
        ``{"suspect": True, "why": text}`` where the check found the gradient
        misoriented, and its scale verdict (``misscaled``, ``tie_scale``,
        ``tie_correlation``) where it found the gradient and the planes
        disagree in scale (``suspect`` False and ``why`` None where that
        alone), else None.
    """
    why = suspicion(check)
    record = None if why is None else {"suspect": True, "why": why}
    if check and check.get("misscaled") is not None \
            and all(math.isfinite(v) for v in (check["misscaled"], *check["tie_scale"])):
        record = record or {"suspect": False, "why": None}
        record.update(misscaled=float(check["misscaled"]),
                      tie_scale=[float(v) for v in check["tie_scale"]],
                      tie_correlation=float(check["tie_correlation"]))
    return record


_SCALE_KEYS = {"misscaled", "tie_scale", "tie_correlation"}


def _orientation_record(record, name: str) -> dict:
    """An orientation verdict ``{"suspect": true, "why": text}`` and/or a
    scale verdict (``misscaled``, ``tie_scale``, ``tie_correlation``)
    checked; :class:`InputError` naming ``name`` where it is not one."""
    want = ('a verdict {"suspect": true, "why": text} (stored only where the check found the '
            'gradient misoriented) and/or {"misscaled", "tie_scale", "tie_correlation"}')
    ok = isinstance(record, dict) and {"suspect", "why"} <= set(record) \
        and set(record) <= {"suspect", "why"} | _SCALE_KEYS
    scaled = ok and _SCALE_KEYS <= set(record)
    if ok and (set(record) & _SCALE_KEYS) and not scaled:
        ok = False
    if ok and scaled:
        try:
            scale = _SCALE({k: record[k] for k in _SCALE_KEYS}, "")
        except _NotRecord:
            ok = False
    if ok:
        ok = (record["suspect"] is True and isinstance(record["why"], str)
              and bool(record["why"].strip())) or (
            record["suspect"] is False and record["why"] is None and scaled)
    if not ok:
        raise InputError(f"{name} must be {want}, got {_short(repr(record), 80)}")
    _check_printable(record, name, want)
    out = {"suspect": record["suspect"], "why": record["why"]}
    if scaled:
        out.update({k: float(v) for k, v in scale.items() if k != "tie_scale"},
                   tie_scale=tuple(float(v) for v in scale["tie_scale"]))
    return out


class _NotRecord(Exception):
    """A field of a record that is not what it must be: ``args`` are where
    (``"scans.plus.share"``) and what it must be."""


def _flag(v, where: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise _NotRecord(where, "true or false")
    return bool(v)


def _words(v, where: str):
    if v is not None and (not isinstance(v, str) or _unprintable(v) is not None):
        # a record's text is printed in messages: no terminal escapes, no lone surrogates
        raise _NotRecord(where, "printable text or null")
    return v


def _number(least=-math.inf, most=math.inf, *, whole=False, positive=False, infinite=False):
    """A check of a number of a record (not a bool, not NaN, finite unless
    ``infinite``) from ``least`` to ``most`` (above 0 where ``positive``;
    an integer's value where ``whole``): the float (an int where given one)."""
    want = "a whole number" if whole else "a number"
    want += " above 0" if positive else f" of at least {least:g}" if least > -math.inf else ""
    want += f" and at most {most:g}" if most < math.inf else ""
    want += "" if infinite else " (finite)"

    def check(v, where: str):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer,
                                                                  np.floating)):
            raise _NotRecord(where, want)
        try:
            f = float(v)
        except OverflowError:  # an integer beyond float's range
            raise _NotRecord(where, want) from None
        if math.isnan(f) or not (infinite or math.isfinite(f)) or not least <= f <= most \
                or (positive and not f > 0) or (whole and not (math.isfinite(f) and
                                                               f == int(f))):
            raise _NotRecord(where, want)
        return int(v) if isinstance(v, (int, np.integer)) else f
    return check


def _maybe(check):
    """``check``, or None."""
    return lambda v, where: None if v is None else check(v, where)


def _seq(check, count, kind=tuple):
    """A list of ``count`` values ``check`` takes, as ``kind``."""
    def run(v, where: str):
        if not isinstance(v, (list, tuple)) or len(v) != count:
            raise _NotRecord(where, f"a list of {count}")
        return kind(check(x, f"{where}[{i}]") for i, x in enumerate(v))
    return run


def _object(spec: dict, optional: dict | None = None):
    """An object of exactly the keys of ``spec`` (and any of ``optional``),
    each checked by its check, in that order."""
    optional = optional or {}

    def run(v, where: str):
        want = "{" + ", ".join(list(spec) + [k + "?" for k in optional]) + "}"
        if not isinstance(v, dict) or not set(spec) <= set(v) \
                or not set(v) <= set(spec) | set(optional):
            raise _NotRecord(where or "the record", f"an object {want}")
        dot = f"{where}." if where else ""
        return {k: check(v[k], dot + k) for k, check in {**spec, **optional}.items()
                if k in v}
    return run


def _one_of(*choices):
    def check(v, where: str):
        if not isinstance(v, str) or v not in choices:
            raise _NotRecord(where, f"one of {choices}")
        return v
    return check


_PLANES = ("minus", "zero", "plus")
#: What a ``plane_defects`` record names: the planes, and the measured
#: gradient (patterns whose centre of mass was replaced, scan px).
_DEFECTS = _PLANES + ("gradient",)
_SCAN = _object({"value": _number(), "pixels": _number(0, whole=True),
                 "share": _number(0, 1), "next": _number(0, whole=True),
                 "full_scale": _flag, "detector_pixels": _number(0, whole=True),
                 "saturated": _flag, "why": _words})
#: Of integer planes given directly: each plane's maximum and pixels at full scale.
_PLANE_TOP = _object({"value": _number(0, whole=True), "pixels": _number(0, whole=True),
                      "full_scale": _flag, "saturated": _flag})
_SATURATION = _object({"saturated": _flag, "why": _words},
                      {"scans": _object({n: _maybe(_SCAN) for n in _PLANES}),
                       "planes": _object({n: _maybe(_PLANE_TOP) for n in _PLANES})})
_DESCAN = _object({"mode": _one_of("plane", "none"), "applied": _flag,
                   "slopes": _seq(_seq(_number(), 2, list), 2, list),
                   "across_px": _number(0), "across_mrad": _number(0), "large": _flag})
_GAIN = _object({"poisson": _seq(_number(0), 3), "band": _seq(_number(0), 3),
                 "ratio": _number(0, infinite=True), "why": _words})
_FLUX = _object({"per_pattern": _maybe(_seq(_number(), 3)),
                 "scale": _seq(_number(positive=True), 3), "applied": _flag, "why": _words},
                {"gain": _maybe(_GAIN),
                 "excluded": _maybe(_seq(_number(0, whole=True), 3, list))})

#: A gradient's scale verdict (``trust.sign_check``), stored beside its orientation's.
_SCALE = _object({"misscaled": _number(positive=True), "tie_scale": _seq(_number(), 2, list),
                  "tie_correlation": _number()})


def _checked(check, record, name: str, what: str, consistent=None):
    """``record`` checked by ``check`` (and ``consistent``, which returns
    where and what is wrong, or None); :class:`InputError` naming ``name``
    where it is not ``what``."""
    try:
        out = check(record, "")
        wrong = None if consistent is None else consistent(out)
        if wrong is not None:
            raise _NotRecord(*wrong)
    except _NotRecord as exc:
        where, want = exc.args
        raise InputError(f"{name} must be {what}: {where} must be {want}, got "
                         f"{_short(repr(record), 80)}") from None
    return out


def _saturation_record(record, name: str, shape=None) -> dict:
    """A saturation record (``triplet.saturation``,
    :func:`~flowtie_fast.stem.focal.saturation_record`) checked and made of
    plain values; :class:`InputError` naming ``name`` where it is not one."""
    def consistent(r):
        if ("scans" in r) == ("planes" in r):
            return "the record", "of the scans (4D-STEM) or of the planes (images), one of them"
        kind = "scans" if "scans" in r else "planes"
        scans = [s for s in r[kind].values() if s is not None]
        if not scans:
            return kind, f"a record of at least one {kind[:-1]}"
        if r["saturated"] != any(s["saturated"] for s in scans):
            return "saturated", "true where a scan saturated, else false"
        if r["saturated"] != bool(r["why"] and r["why"].strip()):
            return "why", "text where saturated, else null"
        return None
    return _checked(_SATURATION, record, name, "a saturation record {saturated, why, "
                    "scans or planes: {minus, zero, plus}}", consistent)


def _descan_record(record, name: str, shape=None) -> dict:
    """A descan record (``triplet.descan``,
    :func:`~flowtie_fast.stem.descan.descan_plane`) checked;
    :class:`InputError` naming ``name`` where it is not one."""
    def consistent(r):
        return None if r["applied"] == (r["mode"] == "plane") else \
            ("applied", "true where mode is 'plane', else false")
    return _checked(_DESCAN, record, name, "a descan record {mode, applied, slopes, "
                    "across_px, across_mrad, large}", consistent)


def _flux_record(record, name: str, shape=None) -> dict:
    """A flux record (``triplet.flux``,
    :func:`~flowtie_fast.stem.focal.flux_record`, with its ``gain``) checked;
    :class:`InputError` naming ``name`` where it is not one."""
    return _checked(_FLUX, record, name, "a flux record {per_pattern, excluded, scale, "
                    "applied, why, gain}")


def _defects_record(record, name: str, shape) -> dict:
    """A record of the isolated pixels replaced in planes of ``shape``
    (``triplet.plane_defects``, :func:`~flowtie_fast.planes.screen_planes`,
    ``"repaired"``) checked: each plane's pixels ``[row, column, value,
    median]`` within the planes and no more than two screens replace
    (:func:`~flowtie_fast.planes.repair_limit`); :class:`InputError`
    naming ``name`` where it is not one."""
    ny, nx = shape[-2:]
    most = _SCREENS * int(repair_limit((ny, nx)))
    pixel = _seq(_number(), 4, list)
    row, col = _number(0, ny - 1, whole=True), _number(0, nx - 1, whole=True)

    def pixels(v, where):
        if not isinstance(v, dict) or not v or not set(v) <= set(_DEFECTS):
            raise _NotRecord(where, f"an object of some of {_DEFECTS}")
        out = {}
        for n in (n for n in _DEFECTS if n in v):
            if not isinstance(v[n], list) or not 0 < len(v[n]) <= most:
                raise _NotRecord(f"{where}.{n}", f"a list of 1 to {most} pixels [row, column, "
                                 "value, median]")
            out[n] = [pixel(p, f"{where}.{n}[{i}]") for i, p in enumerate(v[n])]
            for i, p in enumerate(out[n]):
                row(p[0], f"{where}.{n}[{i}][0]")
                col(p[1], f"{where}.{n}[{i}][1]")
        return out

    def repaired(v, where):
        if v is not True:
            raise _NotRecord(where, "true (a record is stored only where its pixels were "
                             "replaced)")
        return True

    def why(v, where):
        if not isinstance(v, str) or not v.strip():
            raise _NotRecord(where, "text")
        return v
    return _checked(_object({"pixels": pixels, "repaired": repaired, "why": why}), record,
                    name, "a record of replaced pixels {pixels, repaired, why}")


#: Each record's check: (record, name, shape of the planes) -> the record, plain.
RECORD_CHECKS = {
    "registration": _registration_record,
    "orientation": lambda r, name, shape: _orientation_record(r, name),
    "saturation": _saturation_record, "descan": _descan_record, "flux": _flux_record,
    "plane_defects": _defects_record}


def json_text(key: str, record, shape: tuple) -> str:
    """A triplet's record checked and written as JSON text.

    Parameters
    ----------
    key : str
        The record, one of :data:`RECORDS`.
    record : dict
        The record as the triplet holds it.
    shape : tuple of int
        The planes' shape, (..., Ny, Nx) px.

    Returns
    -------
    str
        JSON text within the limit a file's record is read up to
        (:func:`json_limit`).

    Raises
    ------
    InputError
        Naming ``obj`` and the record where a field is not what it must be
        or the text is beyond the limit.
    """
    text = json.dumps(RECORD_CHECKS[key](record, f"obj: its {key}", shape))
    most, said = json_limit(key, shape)
    if len(text) > most:
        raise InputError(f"obj: its {key} takes {len(text)} characters as JSON text, beyond "
                         f"the {most} a file's is read up to ({said})")
    return text


def stored_defects(record):
    """``triplet.plane_defects`` as a file stores it.

    Parameters
    ----------
    record : dict or None
        ``triplet.plane_defects``.

    Returns
    -------
    dict or None
        None where its pixels were not replaced (the planes stored still hold
        them, and the loaded triplet finds them again), else the record.
    """
    return None if isinstance(record, dict) and record.get("repaired") is False else record


def joined_defects(stored: dict, found, shape):
    """A loaded triplet's ``plane_defects``: the stored record and what its load found.

    Pixels found and replaced join the stored ones (at most two screens'
    worth a plane, the newest kept, so that the triplet can be saved again);
    pixels found and not replaced (too many) stay in the planes, are found
    again at every load and are only named in ``why``: the record stays one
    of replaced pixels.

    Parameters
    ----------
    stored : dict
        The record of the pixels replaced before the planes were stored.
    found : dict or None
        The screen of the loaded planes (None where it found nothing).
    shape : tuple of int
        The planes' shape, (Ny, Nx) px.

    Returns
    -------
    dict
        The joined record.
    """
    if found is None:
        return stored
    why = f"{stored['why']}; also: {found['why']}"
    if not found["repaired"]:
        return {**stored, "why": why}
    most = _SCREENS * int(repair_limit(shape))
    pixels = {n: (stored["pixels"].get(n, []) + found["pixels"].get(n, []))[-most:]
              for n in _DEFECTS if n in stored["pixels"] or n in found["pixels"]}
    return {"pixels": pixels, "repaired": True, "why": why}
