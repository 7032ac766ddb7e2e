"""A resumable sweep of abTEM simulations from a committed recipe (a TOML file).

The recipe (``flowtie_fast/data/corpus.toml`` by default) names the ranges of
every setting; :func:`plan` turns it into a fixed list of series with a fixed
seed, and :func:`run` simulates the pending ones into a folder::

    flowtie simulate --sweep CONFIG -o DIR [--limit N] [--list]

Series and files
----------------
A *series* is one multislice pass (:func:`flowtie_fast.simulation.simulate.simulate_specimen`)
that records several thicknesses through abTEM exit planes. Series ``i`` is
named ``s{i:04d}``; its files are ``DIR/s0007_<specimen>_t<k>.npz``, one per
thickness ``k`` (layout of :mod:`flowtie_fast.io`: noise-free patterns, dz as
the pair ``(dz_minus, dz_plus)``, the ground-truth phase and gradient on the
whole scan, margins included). The files are written atomically; then one
JSON line describing the series is appended to ``DIR/manifest.jsonl``. A series
is done when all its files and its manifest line exist and the line records
the settings the recipe plans now (``--list`` shows the same test: ``done``,
``pending`` or ``other recipe``); a killed run resumes with the first series
that is not done, and a series whose recorded settings differ from the
recipe's plan is refused (restore the recipe, or only append
stages so that planned series keep their settings).

Order
-----
Families of specimens are visited by a smooth weighted round robin and each
family cycles through its specimens in a seeded order, so the first series
already span every kind. Every series draws its settings from its own random
generator (seeded by the recipe's seed and the series index), so appending
stages or series leaves the earlier ones unchanged. Within a stage a series
whose cost exceeds the stage's ``max_cost`` (in 1e9 cost units, below) is
drawn again, up to :data:`DRAWS` times; where none fits, the cheapest draw is
planned, and ``--list`` and :func:`run` (before it simulates) say so.

Cost
----
Cost units = scan positions x potential pixels x slices x 3 defoci x
frozen-phonon configs; estimated seconds = ``overhead + per_unit * units``,
both constants in the recipe's ``[cost]`` table, measured on the machine that
made the recipe. The plan depends on the units only, so the constants may be
re-measured without changing it.

Manifest line
-------------
``id``, ``index``, ``stage``, ``family``, ``kind``, ``name``, ``specimen``
(builder settings), ``settings`` (energy eV, semiangle mrad, dz pair Å, tilt
mrad, max_angle mrad, potential_sampling Å, slice_thickness Å, frozen_phonons,
sigma Å, supercell Å, potential_gpts, num_slices), ``scan`` (periodic, start,
step, gpts of the nominal window, margin, shape with margins), ``truth``
(periodic flag, margin, what it is), ``files`` (file, thickness Å,
exit_plane), ``acquisition`` (the recipe's ranges, applied at load time by
:mod:`flowtie_fast.simulation.acquisition`), ``timing`` (seconds: multislice, truth,
total, estimated), ``plan`` (the planned series as drawn), versions and the
time it finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import InputError
from ..files import _path_error, _short, as_path, check_input_file
from ..io import Dataset, save
from ..physics import wavelength
from .acquisition import GAIN_MAP_MAX, GAIN_NOISE_MAX
from .simulate import ScanWindow, device_context, simulate_specimen, slicing
from .specimens import (AMORPHOUS, CRYSTALS, LAYERED, ZONES, _FAMILY, _conventional, amorphous,
                        crystal_cell, interface, layered, nanoparticle_on_support, point_defects)

__all__ = ["load_config", "plan", "run", "estimate_seconds", "list_plan", "read_manifest",
           "check_folder", "over_budget", "HELD_OUT", "DEFAULT_CONFIG"]

#: The recipe shipped with the package.
DEFAULT_CONFIG = Path(__file__).parent.parent / "data" / "corpus.toml"

#: Specimens kept out of the corpus: the validation set (Cu, CeO2 in any
#: orientation) and the test set (Si [001], MgO [001]; and the GaAs and SrTiO3
#: [001] thicknesses, in unit cells, that the test set holds out: no crystal,
#: edge or interface series plans them, an interface skipping those of both its
#: crystals).
HELD_OUT = {
    "elements": ("Cu", "Ce"),
    "materials": ("Cu", "CeO2"),
    "zones": (("Si", "001"), ("MgO", "001")),
    "cells": {("GaAs", "001"): (2, 8, 25), ("SrTiO3", "001"): (3, 13, 38)},
}

KINDS = ("crystal", "layered", "amorphous", "nanoparticle", "interface", "edge")
SCANS = ("periodic", "window")
ACQUISITION_KEYS = ("dose", "gain_noise", "gain_map", "drift", "source_fwhm")
#: The range of each ``[acquisition]`` value (low, high, unit): a number or a
#: pair ``[low, high]`` within it (``drift``: one number), read before any
#: series is simulated, not when the corpus is loaded for training.
ACQUISITION_RANGES = {"dose": (0.0, 1e10, "e/Å²"),
                      "gain_noise": (0.0, GAIN_NOISE_MAX,
                                     "(relative spread of one electron's signal)"),
                      "gain_map": (0.0, GAIN_MAP_MAX, "(relative spread of the pixel gains)"),
                      "drift": (0.0, 64.0, "scan pixels"),
                      "source_fwhm": (0.0, 100.0, "Å")}
DEFOCI = 3

# ----------------------------------------------------------------------------- config


def _toml():
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise InputError("config: reading TOML needs Python 3.11 or 'pip install tomli'") \
                from exc
    return tomllib


def _fail(key, expected, got):
    raise InputError(f"{key}: expected {expected}, got {got!r}")


def _table(parent, key, where, required=True):
    value = parent.get(key)
    if value is None:
        if required:
            raise InputError(f"{where}{key}: missing table [{where}{key}]")
        return {}
    if not isinstance(value, dict):
        _fail(f"{where}{key}", "a table", value)
    return value


def _known(table, keys, where):
    unknown = sorted(set(table) - set(keys))
    if unknown:
        raise InputError(f"{where}{unknown[0]}: unknown key; expected one of {sorted(keys)}")


def _real(table, key, where, lo, hi, unit="", required=True, default=None):
    if key not in table:
        if required:
            raise InputError(f"{where}{key}: missing; expected a number in [{lo:g}, {hi:g}] "
                             f"{unit}".rstrip())
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or not lo <= v <= hi:
        _fail(f"{where}{key}", f"a number in [{lo:g}, {hi:g}] {unit}".rstrip(), v)
    return float(v)


def _integer(table, key, where, lo, hi, required=True, default=None):
    if key not in table:
        if required:
            raise InputError(f"{where}{key}: missing; expected an integer in [{lo}, {hi}]")
        return default
    v = table[key]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        _fail(f"{where}{key}", f"an integer in [{lo}, {hi}]", v)
    return int(v)


def _pair(table, key, where, lo, hi, unit="", integer=False, required=True, default=None):
    """``[low, high]`` within ``[lo, hi]`` (a single number means both)."""
    if key not in table:
        if required:
            raise InputError(f"{where}{key}: missing; expected [low, high] within "
                             f"[{lo:g}, {hi:g}] {unit}".rstrip())
        return default
    v = table[key]
    values = v if isinstance(v, list) else [v, v]
    kind = "integers" if integer else "numbers"
    want = f"[low, high] {kind} within [{lo:g}, {hi:g}] {unit}".rstrip()
    if len(values) != 2:
        _fail(f"{where}{key}", want, v)
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or \
                (integer and not isinstance(x, int)) or not math.isfinite(x) or not lo <= x <= hi:
            _fail(f"{where}{key}", want, v)
    if values[0] > values[1]:
        _fail(f"{where}{key}", want + " with low <= high", v)
    return [int(x) if integer else float(x) for x in values]


def _fraction(table, key, where, required=True, default=None):
    return _real(table, key, where, 0.0, 1.0, required=required, default=default)


def _strings(table, key, where, required=True):
    if key not in table:
        if required:
            raise InputError(f"{where}{key}: missing; expected a list of strings")
        return []
    v = table[key]
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        _fail(f"{where}{key}", "a non-empty list of strings", v)
    return list(v)


def _specimen_ref(text, key):
    """``"Material:zone"`` checked against the crystals and the held-out specimens."""
    if ":" not in text:
        _fail(key, "'Material:zone' (e.g. 'GaAs:110')", text)
    material, zone = text.split(":", 1)
    if material not in CRYSTALS:
        _fail(key, f"a material among {sorted(CRYSTALS)}", text)
    zones = ZONES[_FAMILY[CRYSTALS[material]["structure"]]]
    if zone not in zones:
        _fail(key, f"a zone of {material} among {sorted(zones)}", text)
    _check_held_out(material, zone, key)
    return material, zone


def _check_held_out(material, zone, key):
    if material in HELD_OUT["materials"] or (material, zone) in HELD_OUT["zones"]:
        raise InputError(f"{key}: {material} [{zone}] is held out of the corpus for validation "
                         "or testing (flowtie_fast.simulation.sweep.HELD_OUT); remove it")


def _held_out_cells(ref):
    """The cell counts along the beam that the test set holds out for a
    crystal, edge or interface ``ref`` (``"Material:zone"`` or
    ``"Left:zone|Right:zone"``): those of every component, so that no planned
    thickness is a held-out number of cells of any crystal in the specimen."""
    skip = set()
    for part in ref.split("|"):
        material, _, zone = part.partition(":")
        skip.update(HELD_OUT["cells"].get((material, zone), ()))
    return tuple(sorted(skip))


def _check_elements(elements, key):
    bad = sorted(set(elements) & set(HELD_OUT["elements"]))
    if bad:
        raise InputError(f"{key}: element {bad[0]} is held out of the corpus (validation "
                         "specimens); remove it")


def load_config(path=None) -> dict:
    """Read and check a sweep recipe; :class:`InputError` naming the key.

    Parameters
    ----------
    path : str or Path, optional
        The TOML file (default: the shipped ``corpus.toml``).

    Returns
    -------
    dict
        The recipe with every value checked and normalised, plus
        ``"_source"`` (the path) and ``"_sha256"`` (of the file's bytes).
    """
    path = as_path("config", DEFAULT_CONFIG if path is None else path)
    check_input_file("config", path)  # says what a directory, FIFO or broken link is
    raw = path.read_bytes()
    try:
        # "utf-8-sig": a byte-order mark (some Windows editors write one) is no TOML
        cfg = _toml().loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InputError(f"config: {path.name} is not UTF-8 text ({exc})") from exc
    except Exception as exc:  # tomllib.TOMLDecodeError
        raise InputError(f"config: {path.name} is not valid TOML ({exc})") from exc
    out = check_config(cfg)
    out["_source"] = str(path)
    out["_sha256"] = hashlib.sha256(raw).hexdigest()
    return out


def check_config(cfg) -> dict:
    """Check a parsed recipe (a dict as TOML gives it); see :func:`load_config`."""
    if not isinstance(cfg, dict):
        _fail("config", "a table", cfg)
    _known(cfg, ("schema", "sweep", "cost", "stage", "optics", "grid", "acquisition",
                 "family"), "")
    schema = cfg.get("schema")
    if type(schema) is not int or schema != 1:  # true and 1.0 equal 1
        _fail("schema", "1", schema)
    out = {"schema": 1}

    t = _table(cfg, "sweep", "")
    _known(t, ("name", "seed"), "sweep.")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        _fail("sweep.name", "a non-empty string", name)
    out["sweep"] = {"name": name, "seed": _integer(t, "seed", "sweep.", 0, 2**63 - 1)}

    t = _table(cfg, "cost", "")
    _known(t, ("per_unit", "overhead"), "cost.")
    out["cost"] = {"per_unit": _real(t, "per_unit", "cost.", 1e-12, 1e-3, "s"),
                   "overhead": _real(t, "overhead", "cost.", 0.0, 3600.0, "s")}

    stages = cfg.get("stage")
    if not isinstance(stages, list) or not stages:
        _fail("stage", "one or more [[stage]] tables", stages)
    out["stage"] = []
    for i, s in enumerate(stages):
        where = f"stage[{i}]."
        if not isinstance(s, dict):
            _fail(f"stage[{i}]", "a table", s)
        _known(s, ("series", "max_cost", "thickness", "families"), where)
        st = {"series": _integer(s, "series", where, 1, 100000),
              "max_cost": _real(s, "max_cost", where, 1e-6, 1e6, "x 1e9 units"),
              "thickness": _pair(s, "thickness", where, 1.0, 1000.0, "Å"),
              "families": s.get("families")}
        if st["families"] is not None:
            st["families"] = _strings(s, "families", where)
        out["stage"].append(st)

    t = _table(cfg, "optics", "")
    w = "optics."
    _known(t, ("energy", "semiangle", "dz", "uneven_fraction", "uneven_ratio", "tilt",
               "tilt_fraction", "detector", "frozen_phonon_fraction", "frozen_phonons",
               "sigma"), w)
    energies = t.get("energy")
    if not isinstance(energies, list) or not energies or not all(
            not isinstance(e, bool) and isinstance(e, (int, float)) and 20e3 <= e <= 1e6
            for e in energies):
        _fail("optics.energy", "a list of energies in eV within [2e4, 1e6]", energies)
    out["optics"] = {
        "energy": [float(e) for e in energies],
        "semiangle": _pair(t, "semiangle", w, 1.0, 100.0, "mrad"),
        "dz": _pair(t, "dz", w, 1.0, 1000.0, "Å"),
        "uneven_fraction": _fraction(t, "uneven_fraction", w),
        "uneven_ratio": _pair(t, "uneven_ratio", w, 0.1, 0.99),
        "tilt": _pair(t, "tilt", w, 0.0, 50.0, "mrad"),
        "tilt_fraction": _fraction(t, "tilt_fraction", w),
        "detector": _pair(t, "detector", w, 1.0, 10.0, "x semiangle"),
        "frozen_phonon_fraction": _fraction(t, "frozen_phonon_fraction", w),
        "frozen_phonons": _integer(t, "frozen_phonons", w, 1, 100),
        "sigma": _pair(t, "sigma", w, 0.0, 0.5, "Å"),
    }

    t = _table(cfg, "grid", "")
    w = "grid."
    _known(t, ("potential_sampling", "slice_thickness", "supercell", "scan_gpts",
               "window_gpts", "scan_step", "margin", "thicknesses"), w)
    out["grid"] = {
        "potential_sampling": _pair(t, "potential_sampling", w, 0.01, 0.5, "Å"),
        "slice_thickness": _real(t, "slice_thickness", w, 0.2, 20.0, "Å"),
        "supercell": _pair(t, "supercell", w, 4.0, 200.0, "Å"),
        "scan_gpts": _pair(t, "scan_gpts", w, 4, 512, integer=True),
        "window_gpts": _pair(t, "window_gpts", w, 4, 512, integer=True),
        "scan_step": _pair(t, "scan_step", w, 0.01, 5.0, "Å"),
        "margin": _integer(t, "margin", w, 0, 64),
        "thicknesses": _pair(t, "thicknesses", w, 1, 50, integer=True),
    }

    t = _table(cfg, "acquisition", "")
    _known(t, ACQUISITION_KEYS, "acquisition.")
    acq = {}
    for key in ACQUISITION_KEYS:
        if key not in t:
            continue
        v = t[key]
        lo, hi, unit = ACQUISITION_RANGES[key]
        if key == "drift" and isinstance(v, list):  # random_conditions takes one number
            _fail("acquisition.drift", f"one number in [{lo:g}, {hi:g}] {unit} (the largest "
                  "shift of the defocused scans)", v)
        if isinstance(v, list):
            acq[key] = _pair(t, key, "acquisition.", lo, hi, unit)
        else:
            acq[key] = _real(t, key, "acquisition.", lo, hi, unit)
    if "dose" in acq and min(np.atleast_1d(acq["dose"])) <= 0:
        _fail("acquisition.dose", "positive e/Å² (a number or [low, high])", t["dose"])
    out["acquisition"] = acq
    drift = max(np.atleast_1d(acq.get("drift", 0.0)))
    if out["grid"]["margin"] < math.ceil(drift):
        raise InputError(f"grid.margin: expected at least the largest drift "
                         f"(acquisition.drift = {drift:g} px) so that drifted windows are "
                         f"cropped, not wrapped; got {out['grid']['margin']}")

    families = cfg.get("family")
    if not isinstance(families, list) or not families:
        _fail("family", "one or more [[family]] tables", families)
    out["family"] = []
    names = set()
    for i, f in enumerate(families):
        out["family"].append(_check_family(f, i))
        if out["family"][-1]["name"] in names:
            _fail(f"family[{i}].name", "a name not used by another family",
                  out["family"][-1]["name"])
        names.add(out["family"][-1]["name"])
    for i, st in enumerate(out["stage"]):
        for name in st["families"] or ():
            if name not in names:
                _fail(f"stage[{i}].families", f"names among {sorted(names)}", name)
    return out


def _check_family(f, i):
    where = f"family[{i}]."
    if not isinstance(f, dict):
        _fail(f"family[{i}]", "a table", f)
    kind = f.get("kind")
    if kind not in KINDS:
        _fail(f"{where}kind", f"one of {KINDS}", kind)
    common = ("name", "kind", "weight", "scan", "specimens")
    extra = {"crystal": ("cells", "vacancy_fraction", "substitution_fraction",
                         "substitutions"),
             "layered": ("layers", "vacancy_fraction"),
             "amorphous": (),
             "nanoparticle": ("diameter", "support"),
             "interface": ("cells",),
             "edge": ("vacuum",)}[kind]
    _known(f, common + extra, where)
    name = f.get("name")
    if not isinstance(name, str) or not name:
        _fail(f"{where}name", "a non-empty string", name)
    scan = f.get("scan")
    if scan not in SCANS:
        _fail(f"{where}scan", f"one of {SCANS}", scan)
    out = {"name": name, "kind": kind, "scan": scan,
           "weight": _integer(f, "weight", where, 1, 1000),
           "specimens": _strings(f, "specimens", where)}
    key = f"{where}specimens"
    for s in out["specimens"]:
        if kind in ("crystal", "edge"):
            _specimen_ref(s, key)
            material = s.split(":")[0]
            _check_elements(_elements(material), key)
        elif kind == "interface":
            if "|" not in s:
                _fail(key, "'Left:zone|Right:zone' (e.g. 'SrTiO3:001|BaTiO3:001')", s)
            for part in s.split("|", 1):
                _specimen_ref(part, key)
        elif kind == "nanoparticle":
            material, zone = _specimen_ref(s, key)
            if CRYSTALS[material]["structure"] != "fcc":
                _fail(key, "an fcc metal 'Element:zone' (e.g. 'Au:110')", s)
            _check_elements([material], key)
        elif kind == "layered":
            if s not in LAYERED:
                _fail(key, f"2D materials among {sorted(LAYERED)}", s)
        elif kind == "amorphous":
            if s not in AMORPHOUS:
                _fail(key, f"amorphous kinds among {sorted(AMORPHOUS)}", s)
    if kind == "crystal":
        out["cells"] = _pair(f, "cells", where, 1, 20, integer=True, required=False,
                             default=[1, 1])
        out["vacancy_fraction"] = _pair(f, "vacancy_fraction", where, 0.0, 0.5,
                                        required=False, default=None)
        out["substitution_fraction"] = _pair(f, "substitution_fraction", where, 0.0, 0.5,
                                             required=False, default=None)
        subs = f.get("substitutions", {})
        if not isinstance(subs, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in subs.items()):
            _fail(f"{where}substitutions", "a table of element = \"new element\"", subs)
        _check_elements(list(subs.values()), f"{where}substitutions")
        from ase.data import atomic_numbers

        for k, v in subs.items():
            for e in (k, v):
                if e not in atomic_numbers:
                    _fail(f"{where}substitutions", "chemical element symbols", e)
        out["substitutions"] = dict(subs)
        if (out["vacancy_fraction"] or out["substitution_fraction"]) and scan == "periodic":
            _fail(f"{where}scan", "'window' for a family with point defects (the "
                  "defects break the unit cell's period)", scan)
    elif kind == "layered":
        out["layers"] = _pair(f, "layers", where, 1, 20, integer=True)
        out["vacancy_fraction"] = _pair(f, "vacancy_fraction", where, 0.0, 0.5,
                                        required=False, default=None)
        if out["vacancy_fraction"] and scan == "periodic":
            _fail(f"{where}scan", "'window' for a family with point defects", scan)
    elif kind == "nanoparticle":
        out["diameter"] = _pair(f, "diameter", where, 4.0, 100.0, "Å")
        out["support"] = _pair(f, "support", where, 0.0, 1000.0, "Å")
        if scan != "window":
            _fail(f"{where}scan", "'window' (a nanoparticle is not periodic)", scan)
    elif kind == "interface":
        out["cells"] = _pair(f, "cells", where, 1, 20, integer=True)
        if scan != "window":
            _fail(f"{where}scan", "'window' (a scan across the interface)", scan)
    elif kind == "edge":
        out["vacuum"] = _pair(f, "vacuum", where, 1.0, 100.0, "Å")
        if scan != "window":
            _fail(f"{where}scan", "'window' (a scan across the edge)", scan)
    elif kind == "amorphous" and scan != "window":
        _fail(f"{where}scan", "'window' for an amorphous film", scan)
    return out


def _elements(material):
    return re.findall(r"[A-Z][a-z]?", material)


# ----------------------------------------------------------------------------- plan


def _family_sequence(families, n, allowed=None):
    """Smooth weighted round robin: the family index of each of ``n`` series."""
    idx = [i for i, f in enumerate(families) if allowed is None or f["name"] in allowed]
    current = {i: 0 for i in idx}
    total = sum(families[i]["weight"] for i in idx)
    out = []
    for _ in range(n):
        for i in idx:
            current[i] += families[i]["weight"]
        best = max(idx, key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def _loguniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


_UNIT_CACHE = {}


def _unit_cell(ref):
    """The orthogonal cell of ``"Material:zone"`` (cached; do not modify)."""
    if ref not in _UNIT_CACHE:
        material, zone = ref.split(":")
        _UNIT_CACHE[ref] = crystal_cell(material, zone)
    return _UNIT_CACHE[ref]


def _geometry_interface(ref, n_left, n_right):
    left, right = (_unit_cell(p) for p in ref.split("|"))
    la, lb, lc = np.diag(left.cell.array)
    return (n_left * la + n_right * right.cell[0, 0], lb, lc), n_left * la


def _layer_geometry(material, layers):
    key = ("layered", material, layers)
    if key not in _UNIT_CACHE:
        _UNIT_CACHE[key] = layered(material, layers)
    a = _UNIT_CACHE[key]
    return tuple(np.diag(a.cell.array)), list(a.info["exit_depths"])


def estimate_seconds(series, cost) -> float:
    """Estimated seconds of a planned series (``cost``: the recipe's [cost])."""
    return cost["overhead"] + cost["per_unit"] * series["cost_units"]


def _cost_units(shape, potential_gpts, num_slices, configs):
    return float(shape[0] * shape[1]) * potential_gpts[0] * potential_gpts[1] * num_slices \
        * DEFOCI * max(1, configs)


def plan(cfg) -> list:
    """The series of a checked recipe (:func:`load_config`), in run order.

    Returns
    -------
    list of dict
        JSON-serialisable series, each with ``id``, ``index``, ``stage``,
        ``family``, ``kind``, ``name``, ``specimen``, ``settings``, ``scan``,
        ``exits`` (count), ``thicknesses`` (planned, Å), ``files``,
        ``cost_units`` and ``estimated_seconds``.
    """
    families = cfg["family"]
    out = []
    index = 0
    uses = {}
    for s_i, stage in enumerate(cfg["stage"]):
        seq = _family_sequence(families, stage["series"], stage["families"])
        for f_i in seq:
            fam = families[f_i]
            k = uses.get(f_i, 0)
            uses[f_i] = k + 1
            order = np.random.default_rng([cfg["sweep"]["seed"], 7919, f_i]).permutation(
                len(fam["specimens"]))
            ref = fam["specimens"][int(order[k % len(order)])]
            out.append(_plan_series(cfg, stage, s_i, fam, ref, index))
            index += 1
    return out


#: Draws of a series within its stage's ``max_cost`` before the cheapest is kept.
DRAWS = 60


def over_budget(cfg, series) -> list:
    """The planned ``series`` whose cost exceeds their stage's ``max_cost``
    (no draw of :data:`DRAWS` fitted: the cheapest was kept), costliest
    first."""
    over = [s for s in series if s["cost_units"] > cfg["stage"][s["stage"]]["max_cost"] * 1e9]
    return sorted(over, key=lambda s: -s["cost_units"])


def _over_budget_text(cfg, over, n) -> str:
    """One line on the series of :func:`over_budget` (of ``n``)."""
    top = over[0]
    limit = cfg["stage"][top["stage"]]["max_cost"]
    return (f"config: {len(over)} of {n} series exceed their stage's max_cost (no draw of "
            f"{DRAWS} fitted), the costliest {top['id']} {top['name']}: "
            f"{top['cost_units'] / 1e9:.3g} against max_cost {limit:g} (x 1e9 units), "
            f"estimated {_format_seconds(top['estimated_seconds'])}; narrow the ranges that "
            "set the cost (grid.supercell, grid.potential_sampling, grid.scan_gpts, "
            "optics.frozen_phonons, stage thickness) or raise max_cost")


def _plan_series(cfg, stage, stage_index, fam, ref, index):
    rng = np.random.default_rng([cfg["sweep"]["seed"], index])
    best = None
    for _ in range(DRAWS):
        series = _draw_series(cfg, stage, fam, ref, index, rng)
        series["stage"] = stage_index
        if best is None or series["cost_units"] < best["cost_units"]:
            best = series
        if series["cost_units"] <= stage["max_cost"] * 1e9:
            break
    best = series if series["cost_units"] <= stage["max_cost"] * 1e9 else best
    best["estimated_seconds"] = round(estimate_seconds(best, cfg["cost"]), 1)
    return best


def _draw_optics(cfg, rng):
    o = cfg["optics"]
    g = cfg["grid"]
    energy = float(o["energy"][int(rng.integers(len(o["energy"])))])
    semiangle = round(float(rng.uniform(*o["semiangle"])), 2)
    dz = _loguniform(rng, *o["dz"])
    if rng.random() < o["uneven_fraction"]:
        other = dz * float(rng.uniform(*o["uneven_ratio"]))
        other = max(other, o["dz"][0])
        pair = [dz, other] if rng.random() < 0.5 else [other, dz]
    else:
        pair = [dz, dz]
    pair = [round(v, 2) for v in pair]
    if rng.random() < o["tilt_fraction"]:
        magnitude = float(rng.uniform(*o["tilt"]))
        azimuth = float(rng.uniform(0, 2 * math.pi))
        tilt = [round(magnitude * math.cos(azimuth), 3), round(magnitude * math.sin(azimuth), 3)]
    else:
        tilt = [0.0, 0.0]
    detector = round(semiangle * float(rng.uniform(*o["detector"])), 2)

    # abTEM keeps angles up to 2/3 of the Nyquist angle: the sampling must resolve
    # the detector (simulate.check_settings).
    finest = 1e3 * wavelength(energy) / (3 * detector)
    sampling = round(min(float(rng.uniform(*g["potential_sampling"])), 0.99 * finest), 4)
    fp = o["frozen_phonons"] if rng.random() < o["frozen_phonon_fraction"] else 0
    sigma = round(float(rng.uniform(*o["sigma"])), 3) if fp else 0.0
    return {"energy": energy, "semiangle": semiangle, "dz": pair, "tilt": tilt,
            "max_angle": detector, "potential_sampling": sampling, "frozen_phonons": fp,
            "sigma": sigma}


def _geometric(lo, hi, n):
    if n == 1 or hi <= lo:
        return [hi]
    return [lo * (hi / lo) ** (k / (n - 1)) for k in range(n)]


def _thickness_draw(rng, stage, cfg, lo_floor=None):
    lo, hi = stage["thickness"]
    if lo_floor is not None:
        lo = max(lo, lo_floor)
        hi = max(hi, lo)
    t_max = _loguniform(rng, max(lo, min(hi, 2 * lo)), hi)
    t_min = _loguniform(rng, lo, max(lo, t_max / 4))
    n = int(rng.integers(cfg["grid"]["thicknesses"][0], cfg["grid"]["thicknesses"][1] + 1))
    return _geometric(t_min, t_max, n)


def _whole_cells(thicknesses, height, skip=()):
    """Distinct whole numbers of cells near ``thicknesses`` (Å), as many as
    there are thicknesses: where rounding merges two, the nearest unused whole
    numbers are taken (none of ``skip``)."""
    n = len(thicknesses)
    wanted = [max(1.0, t / height) for t in thicknesses]
    top = max(max(round(w) for w in wanted), n + len(skip))
    out = []
    for w in wanted:
        free = [m for m in range(1, top + 1) if m not in out and m not in skip]
        if not free:
            break
        out.append(min(free, key=lambda m: (abs(m - w), m)))
    return sorted(out)


def _scan_periodic(rng, cfg, period):
    """Scan of one period: positions per axis and step, or None where the
    period cannot be scanned within the recipe's positions and steps."""
    g = cfg["grid"]
    s = _loguniform(rng, *g["scan_step"])
    gpts = []
    for p in period:
        n = int(round(p / s))
        n = min(max(n, g["scan_gpts"][0]), g["scan_gpts"][1])
        if not g["scan_step"][0] - 1e-9 <= p / n <= g["scan_step"][1] + 1e-9:
            return None
        gpts.append(n)
    return gpts


def _scan_fallback(cfg, period, preferred, fam, name):
    """Positions per axis for one unit cell that the drawn step could not scan
    within the recipe's limits: ``preferred`` on both axes where its steps are
    within ``grid.scan_step`` (the planner's choice since the first recipe),
    else the feasible count nearest to it on each axis; a cell that no count
    within ``grid.scan_gpts`` scans with a step within ``grid.scan_step`` is
    refused, naming the keys, rather than planned with a step beyond them."""
    g = cfg["grid"]
    (s_lo, s_hi), (n_lo, n_hi) = g["scan_step"], g["scan_gpts"]

    def within(p, n):
        return s_lo - 1e-9 <= p / n <= s_hi + 1e-9

    if all(within(p, preferred) for p in period):
        return [preferred] * 2
    out = []
    for p in period:
        feasible = [n for n in range(n_lo, n_hi + 1) if within(p, n)]
        if not feasible:
            fewest, most = math.ceil(p / s_hi - 1e-9), math.floor(p / s_lo + 1e-9)
            detail = (f"such steps take {fewest} to {most} positions along its {p:.3f} Å side"
                      if fewest <= most else f"no whole number of positions along its "
                      f"{p:.3f} Å side gives such a step")
            raise InputError(
                f"grid.scan_step: family {fam['name']!r} scans whole cells of {name} "
                f"({period[0]:.3f} x {period[1]:.3f} Å) with steps within grid.scan_step = "
                f"{g['scan_step']} Å and grid.scan_gpts = {g['scan_gpts']} positions per "
                f"side, which cannot be: {detail}; widen grid.scan_step or grid.scan_gpts")
        out.append(min(feasible, key=lambda n: (abs(n - preferred), n)))
    return out


def _draw_series(cfg, stage, fam, ref, index, rng):
    g = cfg["grid"]
    optics = _draw_optics(cfg, rng)
    kind = fam["kind"]
    seed = int(rng.integers(2**31))
    supercell_min = float(rng.uniform(*g["supercell"]))
    # Room for the defocused probe: its radius at the largest step is dz * alpha.
    probe_room = 2 * max(optics["dz"]) * optics["semiangle"] * 1e-3 + 6.0
    supercell_min = max(supercell_min, probe_room)
    margin = g["margin"] if fam["scan"] == "window" else 0
    step = _loguniform(rng, *g["scan_step"])
    n_win = int(rng.integers(g["window_gpts"][0], g["window_gpts"][1] + 1))
    window_len = (n_win + 2 * margin) * step
    specimen = {"builder": kind, "seed": seed}
    name = ref
    z_period = None
    window_centre = None
    slice_t = g["slice_thickness"]

    if kind in ("crystal", "edge", "interface"):
        if kind == "interface":
            n_left, n_right = (int(rng.integers(fam["cells"][0], fam["cells"][1] + 1))
                               for _ in range(2))
            (lx_cell, ly_cell, c), x_iface = _geometry_interface(ref, n_left, n_right)
            specimen.update({"left": ref.split("|")[0], "right": ref.split("|")[1],
                             "n_left": n_left, "n_right": n_right})
            name = ref.replace(":", "").replace("|", "-")
        else:
            unit = _unit_cell(ref)
            lx_cell, ly_cell, c = (float(v) for v in np.diag(unit.cell.array))
            material, zone = ref.split(":")
            specimen.update({"material": material, "zone": zone})
            name = f"{material}{zone}"
        z_period = c
        thick = _thickness_draw(rng, stage, cfg)
        cells = _whole_cells(thick, c, _held_out_cells(ref))
        exits = [m * c for m in cells]
        height = cells[-1] * c
        specimen["cells"] = cells
        slice_t = c / math.ceil(c / g["slice_thickness"] - 1e-9)
        if fam["scan"] == "periodic":
            cx, cy = (int(rng.integers(fam["cells"][0], fam["cells"][1] + 1)) for _ in range(2))
            period = (cx * lx_cell, cy * ly_cell)
            gpts = _scan_periodic(rng, cfg, period)
            if gpts is None:  # too many positions: one cell per axis
                period = (lx_cell, ly_cell)
                gpts = _scan_periodic(rng, cfg, period) or \
                    _scan_fallback(cfg, period, g["scan_gpts"][1], fam, name)
            cx, cy = (round(p / u) for p, u in zip(period, (lx_cell, ly_cell)))
            # The supercell holds whole scan periods.
            rep = [math.ceil(math.ceil(supercell_min / u - 1e-9) / k) * k
                   for u, k in zip((lx_cell, ly_cell), (cx, cy))]
            scan = {"periodic": True, "start": [0.0, 0.0],
                    "step": [period[0] / gpts[0], period[1] / gpts[1]], "gpts": gpts,
                    "margin": 0, "cells": [cx, cy]}
        else:
            need = max(supercell_min, window_len + 2.0)
            if kind == "edge":
                vacuum = float(rng.uniform(*fam["vacuum"]))
                crystal_x = max(need - vacuum, window_len / 2 + 2.0)
                rep = [max(1, math.ceil(crystal_x / lx_cell)),
                       max(1, math.ceil(need / ly_cell))]
                x_edge = rep[0] * lx_cell
                specimen["vacuum_x"] = round(max(vacuum, need - x_edge), 3)
                window_centre = [x_edge, float(rng.uniform(0, rep[1] * ly_cell))]
                lx_total = x_edge + specimen["vacuum_x"]
            elif kind == "interface":
                rep = [1, max(1, math.ceil(need / ly_cell))]
                while rep[0] * lx_cell < need:  # whole bilayers along x
                    rep[0] += 1
                window_centre = [x_iface + float(rng.uniform(-0.5, 0.5)),
                                 float(rng.uniform(0, rep[1] * ly_cell))]
                lx_total = rep[0] * lx_cell
            else:
                rep = [max(1, math.ceil(need / lx_cell)), max(1, math.ceil(need / ly_cell))]
                window_centre = [float(rng.uniform(0, rep[0] * lx_cell)),
                                 float(rng.uniform(0, rep[1] * ly_cell))]
                lx_total = rep[0] * lx_cell
            scan = {"periodic": False, "step": [step, step], "gpts": [n_win, n_win],
                    "margin": margin}
        specimen["repeat"] = rep
        if kind == "edge":
            extent = [lx_total, rep[1] * ly_cell]
        elif kind == "interface" and fam["scan"] == "window":
            extent = [lx_total, rep[1] * ly_cell]
        else:
            extent = [rep[0] * lx_cell, rep[1] * ly_cell]
        if kind == "crystal" and (fam.get("vacancy_fraction") or fam.get("substitution_fraction")):
            specimen["defects"] = _draw_defects(rng, fam, specimen["material"])
            name += "-def"
        if kind == "edge":
            name += "-edge"

    elif kind == "layered":
        layers = int(rng.integers(fam["layers"][0], fam["layers"][1] + 1))
        (lx_cell, ly_cell, height), exits = _layer_geometry(ref, layers)
        specimen.update({"material": ref, "layers": layers})
        name = f"{ref}-{layers}L"
        if fam["scan"] == "periodic":
            cx, cy = (int(rng.integers(1, 4)) for _ in range(2))
            period = (cx * lx_cell, cy * ly_cell)
            gpts = _scan_periodic(rng, cfg, period)
            if gpts is None:
                cx = cy = 1
                period = (lx_cell, ly_cell)
                gpts = _scan_periodic(rng, cfg, period) or \
                    _scan_fallback(cfg, period, g["scan_gpts"][0], fam, name)
            rep = [math.ceil(math.ceil(supercell_min / lx_cell - 1e-9) / cx) * cx,
                   math.ceil(math.ceil(supercell_min / ly_cell - 1e-9) / cy) * cy]
            scan = {"periodic": True, "start": [0.0, 0.0],
                    "step": [period[0] / gpts[0], period[1] / gpts[1]], "gpts": gpts,
                    "margin": 0, "cells": [cx, cy]}
        else:
            need = max(supercell_min, window_len + 2.0)
            rep = [max(1, math.ceil(need / lx_cell)), max(1, math.ceil(need / ly_cell))]
            window_centre = [float(rng.uniform(0, rep[0] * lx_cell)),
                             float(rng.uniform(0, rep[1] * ly_cell))]
            scan = {"periodic": False, "step": [step, step], "gpts": [n_win, n_win],
                    "margin": margin}
            if fam.get("vacancy_fraction"):
                specimen["defects"] = {"vacancies": {_layer_vacancy_element(ref): round(
                    float(rng.uniform(*fam["vacancy_fraction"])), 4)}, "substitutions": {}}
                name += "-def"
        specimen["repeat"] = rep
        extent = [rep[0] * lx_cell, rep[1] * ly_cell]

    elif kind == "amorphous":
        need = max(supercell_min, window_len + 2.0)
        extent = [round(need, 3), round(need, 3)]
        thick = _thickness_draw(rng, stage, cfg, lo_floor=10.0)
        height = round(thick[-1], 3)
        exits = [round(t, 3) for t in thick]
        specimen.update({"material": ref, "extent": extent, "thickness": height})
        name = f"a-{ref}"
        window_centre = [float(rng.uniform(0, extent[0])), float(rng.uniform(0, extent[1]))]
        scan = {"periodic": False, "step": [step, step], "gpts": [n_win, n_win],
                "margin": margin}

    elif kind == "nanoparticle":
        material, zone = ref.split(":")
        diameter = round(float(rng.uniform(*fam["diameter"])), 2)
        lo_s, hi_s = fam["support"]
        hi_s = min(hi_s, max(lo_s, stage["thickness"][1] - diameter))
        support = round(float(rng.uniform(lo_s, hi_s)), 2)
        need = max(supercell_min, window_len + 2.0, diameter + 8.0)
        extent = [round(need, 3), round(need, 3)]
        centre = [extent[0] / 2 + float(rng.uniform(-1, 1)),
                  extent[1] / 2 + float(rng.uniform(-1, 1))]
        specimen.update({"material": material, "zone": zone, "diameter": diameter,
                         "support": support, "extent": extent, "centre": centre})
        name = f"{material}{zone}-np"
        # Window centred on the particle or on its rim (part particle, part support).
        r = diameter / 2 * float(rng.uniform(0, 1.2))
        phi = float(rng.uniform(0, 2 * math.pi))
        window_centre = [centre[0] + r * math.cos(phi), centre[1] + r * math.sin(phi)]
        height = diameter + 2.0 + support + 2.0  # estimate: particle, gap, support, vacuum
        exits = [diameter + 2.0, diameter + 3.0 + support / 2, height] if support > 0 \
            else [height]
        scan = {"periodic": False, "step": [step, step], "gpts": [n_win, n_win],
                "margin": margin}
    else:  # pragma: no cover - checked by check_config
        raise InputError(f"kind: {kind!r}")

    if not scan["periodic"]:
        scan["start"] = [round(c - scan["gpts"][i] * step / 2, 4)
                         for i, c in enumerate(window_centre)]
    scan["step"] = [round(v, 6) for v in scan["step"]]
    shape = [n + 2 * scan["margin"] for n in scan["gpts"]]
    scan["shape"] = shape
    # FFT-friendly potential grids (7-smooth sizes), at least as fine as drawn.
    pot_gpts = [_smooth(math.ceil(e / optics["potential_sampling"] - 1e-9)) for e in extent]
    optics["potential_gpts"] = pot_gpts

    slices, _, depths = slicing(height, exits, slice_t)
    optics["slice_thickness"] = round(slice_t, 6)
    series = {
        "id": f"s{index:04d}", "index": index, "family": fam["name"], "kind": kind,
        "name": name, "specimen": specimen, "settings": optics, "scan": scan,
        "extent": [round(e, 4) for e in extent], "height": round(height, 4),
        "thicknesses": [round(d, 3) for d in depths], "exits": len(depths),
        "z_period": None if z_period is None else round(z_period, 6),
        "potential_gpts": pot_gpts, "num_slices": len(slices),
    }
    series["cost_units"] = _cost_units(shape, pot_gpts, len(slices), optics["frozen_phonons"])
    series["files"] = [f"{series['id']}_{_safe(name)}_t{k}.npz" for k in range(len(depths))]
    return series


def _smooth(n):
    """The smallest 7-smooth integer (2^a 3^b 5^c 7^d) at least ``n``."""
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _safe(name):
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)


def _layer_vacancy_element(material):
    return {"MoS2": "S", "WSe2": "Se", "graphene": "C", "hBN": "N"}[material]


def _draw_defects(rng, fam, material):
    elements = sorted(set(_unit_cell_elements(material)))
    out = {"vacancies": {}, "substitutions": {}}
    if fam.get("vacancy_fraction"):
        e = elements[int(rng.integers(len(elements)))]
        out["vacancies"][e] = round(float(rng.uniform(*fam["vacancy_fraction"])), 4)
    if fam.get("substitution_fraction"):
        subs = [e for e in elements if e in fam["substitutions"]]
        if subs:
            e = subs[int(rng.integers(len(subs)))]
            out["substitutions"][e] = [fam["substitutions"][e],
                                       round(float(rng.uniform(*fam["substitution_fraction"])),
                                             4)]
    return out


def _unit_cell_elements(material):
    return _conventional(material).get_chemical_symbols()


# ----------------------------------------------------------------------------- build


def build_specimen(series):
    """The ase.Atoms of a planned series (whole specimen, its full thickness) and
    the exit depths (Å) to record."""
    sp = series["specimen"]
    kind = series["kind"]
    if kind in ("crystal", "edge"):
        atoms = crystal_cell(sp["material"], sp["zone"])
        rx, ry = sp["repeat"]
        c = atoms.cell[2, 2]
        atoms = atoms * (rx, ry, sp["cells"][-1])
        if kind == "edge":
            cell = np.diag(atoms.cell.array).copy()
            cell[0] += sp["vacuum_x"]
            atoms.set_cell(np.diag(cell), scale_atoms=False)
        exits = [m * c for m in sp["cells"]]
    elif kind == "interface":
        left = crystal_cell(*sp["left"].split(":"))
        right = crystal_cell(*sp["right"].split(":"))
        unit = interface(left, right, sp["n_left"], sp["n_right"])
        rx, ry = sp["repeat"]
        atoms = unit * (rx, ry, sp["cells"][-1])
        exits = [m * unit.cell[2, 2] for m in sp["cells"]]
    elif kind == "layered":
        unit = layered(sp["material"], sp["layers"])
        rx, ry = sp["repeat"]
        atoms = unit * (rx, ry, 1)
        exits = unit.info["exit_depths"]
    elif kind == "amorphous":
        atoms = amorphous(sp["material"], sp["extent"], sp["thickness"], sp["seed"])
        exits = series["thicknesses"]
    elif kind == "nanoparticle":
        atoms = nanoparticle_on_support(sp["material"], sp["diameter"], sp["extent"],
                                        sp["support"], sp["seed"], zone=sp["zone"],
                                        centre=sp["centre"])
        exits = atoms.info["exit_depths"]
    else:  # pragma: no cover
        raise InputError(f"kind: {kind!r}")
    defects = sp.get("defects")
    if defects:
        atoms = point_defects(atoms, sp["seed"] + 1, vacancies=defects["vacancies"],
                              substitutions=defects["substitutions"])
    atoms.pbc = True
    return atoms, list(exits)


# ----------------------------------------------------------------------------- manifest


def read_manifest(folder) -> dict:
    """The finished series recorded in ``folder/manifest.jsonl``: id -> record
    (the last line of an id wins; lines that do not parse, such as the tail of a
    killed write, are skipped).

    Raises
    ------
    InputError
        Naming the file, the line and the key, for a line of a series (a JSON
        object with a string ``id``) whose ``plan``, ``files``, ``index``,
        ``scan``, ``truth`` or ``acquisition`` is not of the form
        :func:`run` writes (an edited or foreign manifest); naming
        ``manifest`` for one that is no regular file (a folder, a FIFO,
        a device, a link to nothing: a sweep's records would be lost in it,
        or its write would block or fail after a series was simulated) or
        holds a line that is not UTF-8 text (a run writes ASCII lines).
    """
    path = Path(folder) / "manifest.jsonl"
    out = {}
    if not os.path.lexists(path):
        return out
    check_input_file("manifest", path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise InputError(f"manifest: line {number} of {str(path)!r} is not UTF-8 text "
                                 f"(byte {raw[exc.start]:#04x} at column {exc.start + 1}); "
                                 "expected the JSON lines of a sweep's manifest") from None
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("id"), str):
                _check_record(rec, path, number)
                out[rec["id"]] = rec
    return out


def _check_record(rec, path, number) -> None:
    """A manifest line of the form :func:`run` writes, in the keys the sweep
    and the training read; :class:`InputError` naming the line otherwise."""
    plan_keys = ("id", "kind", "name", "specimen", "settings", "scan", "extent", "thicknesses",
                 "files")
    checks = (("plan", lambda v: isinstance(v, dict) and all(k in v for k in plan_keys),
               f"a planned series (a table with {', '.join(plan_keys)})"),
              ("files", lambda v: isinstance(v, list) and all(
                  isinstance(e, dict) and isinstance(e.get("file"), str) for e in v),
               "a list of tables with a 'file' name"),
              ("index", lambda v: isinstance(v, int) and not isinstance(v, bool),
               "an integer"),
              ("scan", lambda v: isinstance(v, dict), "a table"),
              ("truth", lambda v: isinstance(v, dict), "a table"),
              ("acquisition", lambda v: isinstance(v, dict), "a table"))
    for key, ok, want in checks:
        if key in rec and not ok(rec[key]):
            raise InputError(f"{path.name}: line {number} (series {_short(rec['id'])}) "
                             f"records '{key}' as {_short(repr(rec[key]), 60)}, expected "
                             f"{want}: not a line this sweep wrote; restore the file or use "
                             "another folder")


def _append_line(path, record) -> None:
    """Append one JSON line in a single write, flushed to disk; a partial line
    left by a killed writer is closed first."""
    text = json.dumps(record, sort_keys=True, default=_json_default) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    text = "\n" + text
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _planned_key(series) -> str:
    """What must match between a recorded series and the plan."""
    keep = {k: series[k] for k in ("id", "kind", "name", "specimen", "settings", "scan",
                                   "extent", "thicknesses", "files")}
    return json.dumps(keep, sort_keys=True, default=_json_default)


def _is_done(series, folder, records) -> bool:
    """The test of :func:`run` (and of :func:`list_plan`): a manifest line of
    the same planned settings and every file of the series."""
    return _status(series, folder, records) == "done"


def _other_plan(series, records) -> bool:
    """Whether ``series`` was recorded under other planned settings (another
    recipe or seed): :func:`run` refuses the folder then."""
    rec = records.get(series["id"])
    return rec is not None and "plan" in rec and \
        _planned_key(rec["plan"]) != _planned_key(series)


def _status(series, folder, records) -> str:
    """``"done"``, ``"other recipe"`` (recorded with other settings: a run
    refuses the folder) or ``"pending"`` (no manifest line, or a file missing:
    a run simulates it)."""
    if _other_plan(series, records):
        return "other recipe"
    rec = records.get(series["id"])
    if rec is not None and all((Path(folder) / f).is_file() for f in series["files"]):
        return "done"
    return "pending"


def check_folder(folder, name="output", writable=True) -> Path:
    """An output folder of a sweep, checked before any work: a path the system
    takes that is a folder or can be made one (no file in its place or in
    the place of a folder above it) and, with ``writable``, in a folder this
    process may write; :class:`InputError` naming ``name`` otherwise.
    Nothing is created."""
    folder = as_path(name, folder)
    shown = repr(_short(str(folder), 200))
    try:
        if os.path.lexists(folder):
            if not folder.is_dir():
                what = "a file" if folder.is_file() else "not a folder"
                raise InputError(f"{name}: {shown} is {what}; expected a folder (existing or "
                                 "to be created)")
            if writable and not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"{name}: {shown} cannot be written: no permission to write "
                                 "in it (or a read-only file system)")
            return folder
        parent = Path(os.path.abspath(folder)).parent
        while not parent.is_dir():
            if os.path.lexists(parent):
                what = "a file, not a folder" if parent.is_file() else "not a folder"
                raise InputError(f"{name}: {shown} cannot be created: {str(parent)!r} is "
                                 f"{what}")
            parent = parent.parent
        if writable and not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"{name}: {shown} cannot be created: no permission to write in "
                             f"{str(parent)!r} (or a read-only file system)")
    except OSError as exc:  # ELOOP, EACCES on a parent, ...
        raise _path_error(name, folder, exc) from exc
    return folder


def _check_recorded(series, records) -> None:
    rec = records.get(series["id"])
    if _other_plan(series, records):
        old, new = rec["plan"], series
        diff = next((k for k in ("kind", "name", "specimen", "settings", "scan", "extent",
                                 "thicknesses", "files") if old.get(k) != new.get(k)), "settings")
        raise InputError(f"config: series {series['id']} in manifest.jsonl was simulated with "
                         f"other {diff} ({old.get(diff)!r}) than the recipe plans now "
                         f"({new.get(diff)!r}); restore the recipe (only append stages) or "
                         "use another output folder")


@contextlib.contextmanager
def _lock(folder):
    """An exclusive lock on the output folder (one runner at a time)."""
    path = Path(folder) / ".sweep.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        except OSError as exc:
            raise InputError(f"output: another sweep is writing {str(folder)!r} (lock "
                             f"{path.name} is held); wait for it or use another folder") \
                from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- run


def _format_seconds(s) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


def list_plan(cfg, series, folder=None, file=None) -> str:
    """A table of the planned series with their estimated cost and status.

    The status (with ``folder``) is the test :func:`run` makes: ``done`` (a
    manifest line of the same planned settings and every file), ``other
    recipe`` (recorded with other settings: a run refuses the folder) or
    ``pending``."""
    if folder is not None:
        folder = check_folder(folder, writable=False)
    records = read_manifest(folder) if folder is not None else {}
    lines = [f"sweep {cfg['sweep']['name']!r}: {len(series)} series, "
             f"{sum(s['exits'] for s in series)} thickness files; cost model "
             f"{cfg['cost']['overhead']:g} s + {cfg['cost']['per_unit']:.3g} s x positions x "
             "pixels x slices x 3 defoci x configs",
             f"{'id':<6}{'st':>3} {'family':<16}{'specimen':<22}{'keV':>5}{'mrad':>6}"
             f"{'dz- / dz+ Å':>14}{'tilt':>6}{'FP':>3} {'thicknesses Å':<30}{'scan':<22}"
             f"{'cell Å':>12}{'Δ Å':>6}{'sl':>5}{'est':>8}  status"]
    total = 0.0
    others = []
    for s in series:
        st = s["settings"]
        sc = s["scan"]
        est = s["estimated_seconds"]
        total += est
        tilt = math.hypot(*st["tilt"])
        scan = f"{sc['gpts'][0]}x{sc['gpts'][1]}@{sc['step'][0]:.2f}" + \
            ("P" if sc["periodic"] else f"+{sc['margin']}")
        thick = ",".join(f"{t:.0f}" for t in s["thicknesses"])
        if len(thick) > 29:
            thick = thick[:26] + "..."
        status = _status(s, folder, records) if folder is not None else "pending"
        if status == "other recipe":
            others.append(s["id"])
        lines.append(f"{s['id']:<6}{s['stage']:>3} {s['family'][:15]:<16}{s['name'][:21]:<22}"
                     f"{st['energy'] / 1e3:>5.0f}{st['semiangle']:>6.1f}"
                     f"{st['dz'][0]:>7.1f}/{st['dz'][1]:<6.1f}{tilt:>6.1f}"
                     f"{st['frozen_phonons']:>3} {thick:<30}{scan:<22}"
                     f"{s['extent'][0]:>6.1f}x{s['extent'][1]:<5.1f}"
                     f"{st['potential_sampling']:>6.3f}{s['num_slices']:>5}"
                     f"{_format_seconds(est):>8}  {status}")
    by_stage = {}
    for s in series:
        by_stage.setdefault(s["stage"], []).append(s["estimated_seconds"])
    lines.append(f"estimated total {total / 3600:.1f} h; " + "; ".join(
        f"stage {k}: {len(v)} series, {sum(v) / 3600:.1f} h (mean {np.mean(v):.0f} s, "
        f"max {max(v):.0f} s)" for k, v in sorted(by_stage.items())))
    first = [s["estimated_seconds"] for s in series[:40]]
    lines.append(f"first {len(first)} series: {sum(first) / 3600:.2f} h")
    families = {}
    for s in series[:40]:
        families[s["family"]] = families.get(s["family"], 0) + 1
    lines.append("families in the first 40: " + ", ".join(f"{k} {v}"
                                                          for k, v in families.items()))
    over = over_budget(cfg, series)
    if over:
        lines.append(_over_budget_text(cfg, over, len(series)))
    if others:
        lines.append(f"{len(others)} series in {str(folder)!r} ({others[0]}"
                     f"{'' if len(others) == 1 else ', ...'}) "
                     f"{'was' if len(others) == 1 else 'were'} simulated under another "
                     "recipe (other recorded settings): a run into this folder is refused; "
                     "restore that recipe or use another folder")
    text = "\n".join(lines)
    if file is not None:
        print(text, file=file)
    return text


class _Progress:
    """A progress bar on stderr weighted by estimated seconds (tqdm where
    installed, else one line per series)."""

    def __init__(self, series, enabled=True):
        self.n = len(series)
        self.total = sum(s["estimated_seconds"] for s in series)
        self.done_est = 0.0
        self.k = 0
        self.start = time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            self.bar = tqdm(total=round(self.total), file=sys.stderr, unit="est-s",
                            dynamic_ncols=True, mininterval=1.0, smoothing=0.1,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}] {postfix}")
            self.bar.set_postfix_str(f"0/{self.n} series")

    def current(self, series):
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.k}/{self.n} series, {series['id']} "
                                     f"{series['name']}")

    def step(self, series):
        self.k += 1
        self.done_est += series["estimated_seconds"]
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(round(self.done_est) - self.bar.n)
            self.bar.set_postfix_str(f"{self.k}/{self.n} series")
        else:
            elapsed = time.perf_counter() - self.start
            rate = elapsed / self.done_est if self.done_est else 0
            eta = (self.total - self.done_est) * rate
            print(f"[{self.k}/{self.n}] {series['id']} {series['name']}: elapsed "
                  f"{_format_seconds(elapsed)}, ETA {_format_seconds(eta)}", file=sys.stderr,
                  flush=True)

    def write(self, log, line):
        """``log(line)`` with the bar cleared first and drawn again after."""
        if self.bar is None:
            log(line)
            return
        self.bar.clear()
        sys.stderr.flush()
        log(line)
        self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run(cfg, folder, *, limit=None, progress=True, log=print, device="cpu") -> dict:
    """Simulate the pending series of a recipe into ``folder`` (resumable).

    Parameters
    ----------
    cfg : dict or str or Path
        A checked recipe (:func:`load_config`) or the path of one.
    folder : str or Path
        Output folder (created).
    limit : int, optional
        Simulate at most this many pending series (in plan order).
    device : {"cpu", "gpu"}
        Where abTEM computes (``simulate_specimen``); checked before any series.
    progress : bool
        Progress bar with ETA on stderr.
    log : callable
        Receives one line per finished or failed series.

    Returns
    -------
    dict
        ``planned``, ``done_before``, ``simulated``, ``failed`` (ids), ``seconds``.

    Warns
    -----
    UserWarning
        Before any series is simulated, where pending series exceed their
        stage's ``max_cost`` (:func:`over_budget`), naming the costliest and
        its estimated time.
    """
    device_context(device)  # "gpu" without a device: refused before any series

    folder = check_folder(folder)  # before the recipe is read or planned
    if not isinstance(cfg, dict):
        cfg = load_config(cfg)
    series = plan(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        records = read_manifest(folder)
        for s in series:
            _check_recorded(s, records)
        done = [s for s in series if _is_done(s, folder, records)]
        pending = [s for s in series if not _is_done(s, folder, records)]
        if limit is not None:
            pending = pending[:int(limit)]
        over = over_budget(cfg, pending)
        if over:  # before any is simulated: they may take far longer than the recipe meant
            warnings.warn(_over_budget_text(cfg, over, len(pending)), UserWarning, stacklevel=2)
        bar = _Progress(pending, enabled=progress)
        failed = []
        t_start = time.perf_counter()
        manifest = folder / "manifest.jsonl"
        try:
            for s in pending:
                bar.current(s)
                t0 = time.perf_counter()
                try:
                    atoms, exits = build_specimen(s)
                    lx, ly = np.diag(atoms.cell.array)[:2]
                    if not np.allclose([lx, ly], s["extent"], atol=1e-3):
                        raise RuntimeError(f"built cell {lx:.4f} x {ly:.4f} Å differs from "
                                           f"the plan's {s['extent']}")
                    sc = s["scan"]
                    window = ScanWindow(tuple(sc["start"]), tuple(sc["step"]),
                                        tuple(sc["gpts"]), sc["margin"], sc["periodic"])
                    st = s["settings"]
                    cases = simulate_specimen(
                        atoms, exits, window, energy=st["energy"], semiangle=st["semiangle"],
                        dz=tuple(st["dz"]), potential_sampling=st["potential_sampling"],
                        potential_gpts=tuple(st["potential_gpts"]),
                        slice_thickness=st["slice_thickness"], max_angle=st["max_angle"],
                        tilt=tuple(st["tilt"]), frozen_phonons=st["frozen_phonons"],
                        sigma=st["sigma"] or 0.08, seed=s["specimen"]["seed"], name=s["name"],
                        device=device)
                    if len(cases) != len(s["files"]):
                        raise RuntimeError(f"{len(cases)} thicknesses simulated, "
                                           f"{len(s['files'])} planned")
                    files = []
                    for c, fname in zip(cases, s["files"]):
                        ds = Dataset(c.minus, c.zero, c.plus, tuple(st["dz"]), c.scan_step,
                                     c.energy, c.k_sampling, c.phase, c.gradient,
                                     {"material": s["name"], "thickness": c.thickness,
                                      "semiangle": c.semiangle})
                        # a rerun replaces the files of a series it did not finish
                        save(folder / fname, ds, overwrite=True)
                        files.append({"file": fname, "thickness": c.thickness,
                                      "exit_plane": c.meta["exit_plane"]})
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # one failed series does not stop the sweep
                    failed.append(s["id"])
                    bar.write(log, f"{s['id']} {s['name']}: FAILED ({type(exc).__name__}: "
                                   f"{exc})")
                    bar.step(s)
                    continue
                total = time.perf_counter() - t0
                meta = cases[0].meta
                record = {
                    "id": s["id"], "index": s["index"], "stage": s["stage"],
                    "family": s["family"], "kind": s["kind"], "name": s["name"],
                    "specimen": {**s["specimen"], "atoms": len(atoms),
                                 "formula": atoms.get_chemical_formula(),
                                 "defects": atoms.info.get("defects",
                                                           s["specimen"].get("defects"))},
                    "settings": {**st, "supercell": meta["supercell"],
                                 "potential_gpts": meta["potential_gpts"],
                                 "num_slices": meta["num_slices"]},
                    "scan": {"periodic": sc["periodic"], "start": sc["start"],
                             "step": sc["step"], "gpts": sc["gpts"], "margin": sc["margin"],
                             "shape": list(cases[0].zero.shape[:2])},
                    "truth": {"periodic": bool(sc["periodic"]), "margin": sc["margin"],
                              "tilted": bool(any(st["tilt"])),
                              "what": "sigma(E) x projected potential of the static "
                                      "specimen along the beam path, band-limited to the "
                                      "scan Nyquist, at the scan positions (margins "
                                      "included)"},
                    "files": files,
                    "acquisition": cfg["acquisition"],
                    "timing": {"multislice_s": round(meta["seconds_multislice"], 2),
                               "truth_s": round(meta["seconds_truth"], 2),
                               "total_s": round(total, 2),
                               "estimated_s": s["estimated_seconds"]},
                    "plan": s,
                    "config": {"name": cfg["sweep"]["name"], "sha256": cfg.get("_sha256")},
                    "versions": {"flowtie_fast": __version__, "abtem": meta["abtem"]},
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
                _append_line(manifest, record)
                bar.write(log, f"{s['id']} {s['name']}: {len(files)} files, {total:.0f} s "
                               f"(estimated {s['estimated_seconds']:.0f} s)")
                bar.step(s)
        finally:
            bar.close()
    return {"planned": len(series), "done_before": len(done),
            "simulated": len(pending) - len(failed), "failed": failed,
            "seconds": time.perf_counter() - t_start}

