"""The simulation sweep: recipe checks, the planner, the ground truth of
windows and tilts, and a resumable run of tiny series through the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import flowtie_fast as ft

pytest.importorskip("abtem")

from flowtie_fast.simulation import sweep  # noqa: E402
from flowtie_fast.cli import main  # noqa: E402
from flowtie_fast.simulation.simulate import (ScanWindow, _spectral_gradient,  # noqa: E402
                                   ground_truth_phase, simulate_specimen, window_truth)
from flowtie_fast.simulation.specimens import crystal_cell, layered, repeat_to  # noqa: E402

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


# -- defects found by a hostile test -------------------------------------------------------------


def _held_out(ref):
    """The held-out cell counts of every crystal of a specimen reference."""
    out = set()
    for part in ref.split("|"):
        material, _, zone = part.partition(":")
        out |= set(sweep.HELD_OUT["cells"].get((material, zone), ()))
    return out


def test_no_family_plans_held_out_thicknesses(tmp_path):
    """The interface family planned 3 SrTiO3 [001] cells (11.715 Å, s0096 of the
    default recipe) and a GaAs:001|SrTiO3:001 interface 2 GaAs cells: the
    held-out thicknesses of the test set leaked into the corpus."""
    series = sweep.plan(sweep.load_config())
    for s in series:
        sp = s["specimen"]
        ref = sp.get("left", "") + "|" + sp.get("right", "") if s["kind"] == "interface" \
            else f"{sp.get('material')}:{sp.get('zone')}"
        assert not set(sp.get("cells", ())) & _held_out(ref), (s["id"], s["name"], sp["cells"])
    text = TINY.replace('''[[family]]
name = "film"
kind = "amorphous"
weight = 1
scan = "window"
specimens = ["C"]''', '''[[family]]
name = "iface"
kind = "interface"
weight = 3
scan = "window"
cells = [1, 1]
specimens = ["GaAs:001|SrTiO3:001", "BaTiO3:001|SrTiO3:001"]''').replace(
        "series = 2", "series = 16").replace("max_cost = 1.0", "max_cost = 1000.0").replace(
        "thickness = [3.0, 12.0]", "thickness = [3.0, 60.0]").replace(
        "thicknesses = [1, 2]", "thicknesses = [3, 5]")
    planned = [s for s in sweep.plan(sweep.load_config(_write(tmp_path, text)))
               if s["kind"] == "interface"]
    assert len(planned) >= 8
    for s in planned:
        ref = s["specimen"]["left"] + "|" + s["specimen"]["right"]
        assert not set(s["specimen"]["cells"]) & _held_out(ref), (s["name"], s["thicknesses"])
        assert len(s["specimen"]["cells"]) == len(set(s["specimen"]["cells"]))


#: sha256 of the planned settings of s0000 to s0095 of the committed recipe.
PLANNED_S0000_S0095 = "4a7bcf62426f84b9760792326683dc8a4d6c36ba0083e0e68b1b8b442e8fe4ec"


def test_the_default_recipe_keeps_the_plan_of_its_simulated_series():
    """Fixing the planner must not re-plan series a sweep has simulated (a
    folder holding them would be refused): s0000 to s0095 as first planned."""
    import hashlib

    series = sweep.plan(sweep.load_config())[:96]
    digest = hashlib.sha256("\n".join(sweep._planned_key(s) for s in series).encode())
    assert digest.hexdigest() == PLANNED_S0000_S0095


@pytest.mark.parametrize("make", ["file", "parent-file"])
def test_an_output_folder_that_cannot_be_made_is_refused_before_any_work(tmp_path, capsys,
                                                                          monkeypatch, make):
    """-o afile/sub gave '[Errno 20] Not a directory' and exit status 1, after
    the recipe was planned."""
    cfg_path = _write(tmp_path, TINY)
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = afile if make == "file" else afile / "sub"
    planned = []
    monkeypatch.setattr(sweep, "plan", lambda cfg: planned.append(cfg) or [])
    assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowtie simulate: error: output: ") and "afile" in err
    assert "is a file" in err and len(err.strip().splitlines()) == 1
    assert main(["simulate", "--sweep", str(cfg_path), "--list", "-o", str(out)]) == 2
    assert "output: " in capsys.readouterr().err
    assert not planned and afile.read_text() == "x"
    with pytest.raises(ft.InputError, match=r"^output: .*afile.* is a file"):
        sweep.run(sweep.load_config(cfg_path), out, progress=False)
    # The single-series command says the same.
    assert main(["simulate", "--material", "GaAs", "--thickness", "5.65", "-o", str(out)]) == 2
    assert "output: " in capsys.readouterr().err


def test_list_shows_series_of_another_recipe_as_such(tmp_path, capsys):
    """--list marked a series simulated with seed 5 'done' for a recipe of seed 6,
    which a run refuses: the status is the run's test (files, manifest line and
    the same recorded settings)."""
    cfg_path = _write(tmp_path, TINY)
    other = _write(tmp_path, TINY.replace("seed = 5", "seed = 6"), "other.toml")
    first = sweep.plan(sweep.load_config(cfg_path))[0]
    assert first["files"] == sweep.plan(sweep.load_config(other))[0]["files"]
    out = tmp_path / "corpus"
    out.mkdir()
    for f in first["files"]:
        (out / f).write_bytes(b"")
    sweep._append_line(out / "manifest.jsonl", {"id": first["id"], "plan": first})

    def status(path):
        assert main(["simulate", "--sweep", str(path), "--list", "-o", str(out)]) == 0
        text = capsys.readouterr().out
        return {line.split()[0]: line.split("  ")[-1].strip() for line in text.splitlines()
                if line.startswith("s000")}, text

    listed, _ = status(cfg_path)
    assert listed == {"s0000": "done", "s0001": "pending"}
    listed, text = status(other)
    assert listed == {"s0000": "other recipe", "s0001": "pending"}
    assert "1 series in" in text and "another recipe" in text
    assert main(["simulate", "--sweep", str(other), "-o", str(out)]) == 2  # as the run says
    assert "series s0000" in capsys.readouterr().err


def test_the_planner_keeps_its_scan_step_limit():
    """grid.scan_step = [0.5, 0.5] with scan_gpts = [4, 4] planned graphene with
    steps of 0.615 x 1.065 Å: a cell that no allowed count of positions scans
    within the step limits is refused, naming the key."""
    text = TINY.replace("scan_gpts = [4, 12]", "scan_gpts = [4, 4]").replace(
        "scan_step = [0.4, 0.5]", "scan_step = [0.5, 0.5]")
    cfg = sweep.check_config(sweep._toml().loads(text))
    with pytest.raises(ft.InputError, match=r"^grid.scan_step: .*graphene.*grid.scan_gpts"):
        sweep.plan(cfg)
    # Where some counts fit, the fallback of one cell takes the one nearest the
    # planner's choice, within the limits.
    g = {"grid": {"scan_step": [0.4, 0.5], "scan_gpts": [4, 12]}}
    fam = {"name": "2d"}
    assert sweep._scan_fallback(g, (2.46, 4.261), 4, fam, "graphene") == [5, 9]
    assert sweep._scan_fallback(g, (2.46, 4.261), 12, fam, "graphene") == [6, 10]
    assert sweep._scan_fallback({"grid": {"scan_step": [0.1, 1.1], "scan_gpts": [4, 12]}},
                                (2.46, 4.261), 4, fam, "graphene") == [4, 4]
    for cfg in (sweep.load_config(), sweep.check_config(sweep._toml().loads(TINY))):
        lo, hi = cfg["grid"]["scan_step"]
        for s in sweep.plan(cfg):
            assert all(lo - 1e-6 <= v <= hi + 1e-6 for v in s["scan"]["step"]), s["id"]


def test_a_folder_given_as_the_recipe_is_called_a_folder(tmp_path, capsys):
    """--sweep DIR said 'config: no such file'."""
    with pytest.raises(ft.InputError, match=r"^config: .* is a directory"):
        sweep.load_config(tmp_path)
    assert main(["simulate", "--sweep", str(tmp_path), "--list"]) == 2
    assert "is a directory" in capsys.readouterr().err
    with pytest.raises(ft.InputError, match=r"^config: no such file"):
        sweep.load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize("make", ["folder", "fifo", "device", "dangling", "binary"])
def test_a_manifest_that_is_no_file_of_json_lines_is_refused_before_any_series(
        tmp_path, capsys, monkeypatch, make):
    """A manifest.jsonl that was a folder, a FIFO or a link to a device or to
    nothing was read as empty: the sweep then simulated a series (minutes)
    and failed on the folder, blocked forever opening the FIFO, appended its
    records to /dev/null (lost: every rerun simulated them again) or created
    the link's target wherever it pointed. A manifest of other bytes than
    UTF-8 stopped `--list` with "'utf-8' codec can't decode byte 0x94 ...",
    naming neither the file nor the line."""
    import os

    cfg_path = _write(tmp_path, TINY)
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / "manifest.jsonl"
    if make == "folder":
        manifest.mkdir()
    elif make == "fifo":
        os.mkfifo(manifest)
    elif make == "device":
        manifest.symlink_to(os.devnull)
    elif make == "dangling":
        manifest.symlink_to(tmp_path / "elsewhere" / "m.jsonl")
    else:
        manifest.write_bytes(b'{"id": "s0000"}\n\x94\xff not text\n')
    expected = {"folder": "is a directory", "fifo": "is a FIFO", "device": "is a device",
                "dangling": "is a symbolic link to", "binary": "line 2 of"}[make]

    def simulated(*args, **kwargs):
        raise AssertionError("a series was simulated")

    monkeypatch.setattr(sweep, "simulate_specimen", simulated)
    for extra in (["--list"], []):
        assert main(["simulate", "--sweep", str(cfg_path), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("flowtie simulate: error: manifest: "), err
        assert expected in err and "manifest.jsonl" in err and len(err.splitlines()) == 1
    with pytest.raises(ft.InputError, match=f"^manifest: .*{expected}"):
        sweep.read_manifest(out)
    assert not (tmp_path / "elsewhere").exists()
