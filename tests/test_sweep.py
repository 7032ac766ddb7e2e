"""The simulation sweep: recipe checks, the planner, the ground truth of
windows and tilts, and a resumable run of tiny series through the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import flowtie_fast as ft

pytest.importorskip("abtem")

from flowtie_fast import sweep  # noqa: E402
from flowtie_fast.cli import main  # noqa: E402
from flowtie_fast.simulate import (ScanWindow, _spectral_gradient,  # noqa: E402
                                   ground_truth_phase, simulate_specimen, window_truth)
from flowtie_fast.specimens import crystal_cell, layered, repeat_to  # noqa: E402

TINY = """
schema = 1
[sweep]
name = "tiny"
seed = 5
[cost]
per_unit = 1e-7
overhead = 1.0
[[stage]]
series = 2
max_cost = 1.0
thickness = [3.0, 12.0]
[optics]
energy = [300e3]
semiangle = [10.0, 12.0]
dz = [10.0, 20.0]
uneven_fraction = 1.0
uneven_ratio = [0.5, 0.6]
tilt = [2.0, 3.0]
tilt_fraction = 1.0
detector = [1.5, 1.5]
frozen_phonon_fraction = 0.0
frozen_phonons = 2
sigma = [0.05, 0.05]
[grid]
potential_sampling = [0.1, 0.1]
slice_thickness = 2.0
supercell = [7.0, 7.0]
scan_gpts = [4, 12]
window_gpts = [4, 4]
scan_step = [0.4, 0.5]
margin = 1
thicknesses = [1, 2]
[acquisition]
dose = [1e3, 1e5]
drift = 1.0
[[family]]
name = "2d"
kind = "layered"
weight = 1
scan = "periodic"
layers = [1, 1]
specimens = ["graphene"]
[[family]]
name = "film"
kind = "amorphous"
weight = 1
scan = "window"
specimens = ["C"]
"""


def _write(tmp_path, text, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# -- recipe and planner --------------------------------------------------------------------------


def test_default_recipe_plans_a_diverse_corpus_without_held_out_specimens():
    cfg = sweep.load_config()
    series = sweep.plan(cfg)
    assert len(series) == sum(s["series"] for s in cfg["stage"])
    assert len({s["id"] for s in series}) == len(series)
    assert series == sweep.plan(cfg)  # deterministic
    first = series[:40]
    assert {s["family"] for s in first} == {f["name"] for f in cfg["family"]}
    assert sum(s["estimated_seconds"] for s in first) < 2.5 * 3600
    assert any(s["scan"]["periodic"] for s in first)
    assert any(not s["scan"]["periodic"] and s["scan"]["margin"] >= 5 for s in first)
    assert any(s["settings"]["dz"][0] != s["settings"]["dz"][1] for s in first)
    assert any(any(s["settings"]["tilt"]) for s in first)
    assert any(s["settings"]["frozen_phonons"] for s in series)
    energies = {s["settings"]["energy"] for s in series}
    assert min(energies) == 60e3 and max(energies) == 300e3
    steps = [s["scan"]["step"][0] for s in series]
    assert 0.1 - 1e-6 <= min(steps) and max(steps) <= 0.5 + 1e-6
    assert max(s["thicknesses"][-1] for s in series) > 200
    materials = set()
    for s in series:
        sp = s["specimen"]
        assert s["settings"]["max_angle"] <= 2.0 * s["settings"]["semiangle"] + 1e-6
        for ref in (sp.get("left"), sp.get("right")):
            if ref:
                materials.add(tuple(ref.split(":")))
        if "material" in sp:
            materials.add((sp["material"], sp.get("zone")))
        for sub in (sp.get("defects") or {}).get("substitutions", {}).values():
            assert sub[0] not in ("Cu", "Ce")
        if s["kind"] != "layered" and s["kind"] != "amorphous" and "zone" in sp:
            assert 3 <= len(s["thicknesses"]) or s["kind"] == "nanoparticle" \
                or s["thicknesses"][-1] < 30
    assert not {m for m, _ in materials} & {"Cu", "CeO2"}
    assert ("Si", "001") not in materials and ("MgO", "001") not in materials
    assert len({m for m, _ in materials}) >= 10
    assert {z for _, z in materials} >= {"001", "110", "111"}


def test_appending_a_stage_keeps_the_planned_series():
    cfg = sweep.load_config()
    before = sweep.plan(cfg)
    cfg["stage"].append({"series": 3, "max_cost": 1.0, "thickness": [3.0, 10.0],
                         "families": None})
    after = sweep.plan(cfg)
    assert after[:len(before)] == before and len(after) == len(before) + 3


@pytest.mark.parametrize("edit, key", [
    (lambda t: t.replace("[optics]", "[optix]"), "optix"),
    (lambda t: t.replace("semiangle = [10.0, 12.0]", "semiangle = [12.0, 10.0]"),
     "optics.semiangle"),
    (lambda t: t.replace('specimens = ["graphene"]', 'specimens = ["Cu"]'),
     "family[0].specimens"),
    (lambda t: t.replace('kind = "layered"', 'kind = "crystal"').replace(
        'layers = [1, 1]\n', "").replace('"graphene"', '"Si:001"'), "held out"),
    (lambda t: t.replace('"graphene"', '"CeO2:001"').replace('kind = "layered"',
                                                              'kind = "crystal"').replace(
        'layers = [1, 1]\n', ""), "family[0].specimens"),
    (lambda t: t.replace("drift = 1.0", "drift = 5.0"), "grid.margin"),
    (lambda t: t.replace("margin = 1", "margin = 1\nmargins = 2"), "grid.margins"),
    (lambda t: t.replace("energy = [300e3]", "energy = 300e3"), "optics.energy"),
    (lambda t: t.replace('scan = "window"', 'scan = "periodic"'), "family[1].scan"),
    (lambda t: t.replace("seed = 5", "seed = -1"), "sweep.seed"),
    (lambda t: t + "\n[[", "not valid TOML"),
])
def test_recipe_errors_name_the_key(tmp_path, edit, key):
    with pytest.raises(ft.InputError, match=key.replace("[", r"\[").replace("]", r"\]")):
        sweep.load_config(_write(tmp_path, edit(TINY)))


# -- ground truth --------------------------------------------------------------------------------


def test_window_of_one_whole_period_has_the_periodic_truth():
    rng = np.random.default_rng(0)
    slices = rng.random((4, 50, 60))
    period, gpts = (5.0, 6.0), (20, 24)
    step = (period[0] / gpts[0], period[1] / gpts[1])
    positions = [np.arange(n) * s for n, s in zip(gpts, step)]
    truth = window_truth(slices, period, positions, step, 200e3, [1.0] * 4, [1, 3])
    for plane, (phase, gradient) in zip((1, 3), truth):
        ref = ground_truth_phase(slices[:plane + 1].sum(0), gpts, 200e3)
        np.testing.assert_allclose(phase, ref, atol=1e-12 * np.abs(ref).max() + 1e-15)
        np.testing.assert_allclose(gradient, _spectral_gradient(ref, step), atol=1e-12)
    # The same period inside a 2 x 3 supercell, and a window with a margin: the
    # margin holds the periodic continuation.
    big = np.tile(slices, (1, 2, 3))
    win = ScanWindow((0.0, 0.0), step, gpts, margin=3)
    (phase, gradient), = window_truth(big, (10.0, 18.0), win.positions(), step, 200e3,
                                      [1.0] * 4, [3])
    ref = ground_truth_phase(slices.sum(0), gpts, 200e3)
    wrapped = np.take(np.take(ref, np.arange(-3, gpts[0] + 3), axis=0, mode="wrap"),
                      np.arange(-3, gpts[1] + 3), axis=1, mode="wrap")
    np.testing.assert_allclose(phase, wrapped, atol=1e-12)
    assert gradient.shape == (2,) + win.shape


def test_tilted_truth_follows_the_beam_path():
    """A slice at depth z under a tilt t is seen at r + z tan(t): the truth of the
    tilted beam equals the untilted truth at shifted positions."""
    rng = np.random.default_rng(1)
    slices = np.zeros((3, 40, 40))
    slices[2] = rng.random((40, 40))
    extent, step = (8.0, 8.0), (0.4, 0.4)
    pos = [np.arange(20) * 0.4, np.arange(20) * 0.4]
    thick = [10.0, 20.0, 30.0]
    tilt = (4.0, -3.0)
    (tilted, gt), = window_truth(slices, extent, pos, step, 300e3, thick, [2], tilt)
    z = 10 + 20 + 15.0  # middle of the third slice
    shifted = [p + z * math.tan(t * 1e-3) for p, t in zip(pos, tilt)]
    (ref, gr), = window_truth(slices, extent, shifted, step, 300e3, thick, [2])
    np.testing.assert_allclose(tilted, ref, atol=1e-12)
    np.testing.assert_allclose(gt, gr, atol=1e-11)


def test_tilted_uneven_window_case_loads_back(tmp_path):
    atoms = layered("graphene", 1)
    atoms, _ = repeat_to(atoms, (7.0, 7.0))
    scan = ScanWindow((1.0, 1.5), (0.45, 0.45), (4, 4), margin=1)
    (case,) = simulate_specimen(atoms, atoms.info["exit_depths"], scan, energy=300e3,
                                semiangle=11.0, dz=(30.0, 15.0), potential_sampling=0.1,
                                max_angle=18.0, tilt=(3.0, -2.0), name="graphene")
    assert case.dz == (30.0, 15.0) and case.meta["margin"] == 1
    assert case.zero.shape[:2] == (6, 6) and case.phase.shape == (6, 6)
    assert not case.meta["periodic"] and case.meta["tilt"] == [3.0, -2.0]
    path = ft.save(tmp_path / "g.npz", case)
    ds = ft.load(path)
    assert ds.dz == (30.0, 15.0)
    np.testing.assert_array_equal(ds.phase_gt, case.phase)
    assert np.ptp(case.phase) > 0 and np.isfinite(case.gradient).all()
    # Uneven steps: the -dz_minus plane is farther from focus than +dz_plus.
    assert np.abs(case.minus - case.zero).sum() > np.abs(case.plus - case.zero).sum()


# -- a resumable run -----------------------------------------------------------------------------


def test_sweep_runs_resumes_and_refuses_another_plan(tmp_path, capsys):
    cfg_path = _write(tmp_path, TINY)
    out = tmp_path / "corpus"
    assert main(["simulate", "--sweep", str(cfg_path), "--list"]) == 0
    listed = capsys.readouterr().out
    assert "s0000" in listed and "s0001" in listed and "estimated total" in listed

    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out), "--limit", "1"]) == 0
    records = sweep.read_manifest(out)
    assert list(records) == ["s0000"]
    first = records["s0000"]
    files = [out / f["file"] for f in first["files"]]
    stamps = [p.stat().st_mtime_ns for p in files]
    assert first["truth"]["periodic"] is True and first["scan"]["margin"] == 0
    assert first["acquisition"] == {"dose": [1e3, 1e5], "drift": 1.0}
    assert first["settings"]["dz"][0] != first["settings"]["dz"][1]

    # The rest: the finished series is skipped, its files untouched.
    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out)]) == 0
    records = sweep.read_manifest(out)
    assert list(records) == ["s0000", "s0001"]
    assert [p.stat().st_mtime_ns for p in files] == stamps
    second = records["s0001"]
    assert second["truth"]["periodic"] is False and second["scan"]["margin"] == 1
    assert second["scan"]["shape"] == [6, 6]
    for rec in (first, second):
        for f in rec["files"]:
            ds = ft.load(out / f["file"])
            assert ds.dz == tuple(rec["settings"]["dz"])
            assert ds.zero.shape[:2] == tuple(rec["scan"]["shape"])
            assert ds.phase_gt.shape == tuple(rec["scan"]["shape"])
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["plan"] for line in lines)

    # A series whose file went missing (a killed run) is simulated again; a torn
    # manifest tail is skipped and closed before the next line.
    files[0].unlink()
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"id": "s00')
    capsys.readouterr()
    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out), "--list"]) == 0
    assert "pending" in capsys.readouterr().out
    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out)]) == 0
    assert files[0].is_file()
    assert set(sweep.read_manifest(out)) == {"s0000", "s0001"}
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4

    # Another plan into the same folder is refused, naming the series.
    other = _write(tmp_path, TINY.replace("seed = 5", "seed = 6"), "other.toml")
    assert main(["simulate", "--sweep", str(other), "-o", str(out)]) == 2
    assert "series s0000" in capsys.readouterr().err
    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out), "--dz", "3"]) == 2
    assert "--dz" in capsys.readouterr().err


def test_crystal_cells_are_orthorhombic_with_the_zone_along_z():
    cell = crystal_cell("GaAs", "110")
    a = 5.6533
    np.testing.assert_allclose(np.diag(cell.cell.array), [a * 2**0.5, a, a * 2**0.5])
    assert len(cell) == 16
    hexa = crystal_cell("GaN", "0001")
    np.testing.assert_allclose(np.diag(hexa.cell.array)[:2], [3.189, 3.189 * 3**0.5])
    with pytest.raises(ft.InputError, match="zone"):
        crystal_cell("GaN", "111")


def test_single_series_command_takes_uneven_steps_and_a_tilt(tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["simulate", "--material", "SrTiO3", "--thickness", "3.9", "--dz", "30", "15",
                 "--tilt", "2", "-1", "--scan-gpts", "6", "6", "--supercell", "4",
                 "--sampling", "0.1", "--semiangle", "10", "--max-angle", "20",
                 "-o", str(out)]) == 0
    (path,) = sorted(out.glob("*.npz"))
    ds = ft.load(path)
    assert ds.dz == (30.0, 15.0) and ds.phase_gt.shape == (6, 6)
    assert np.isfinite(ds.gradient_gt).all() and np.ptp(ds.phase_gt) > 0
    assert main(["simulate", "--limit", "2", "-o", str(out)]) == 2
    assert "--limit" in capsys.readouterr().err
