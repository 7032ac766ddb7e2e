"""abTEM end to end on a tiny GaAs case made here: signs and axes pinned by the
ground truth, the file layout, and the command line."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import flowtie_fast as ft

pytest.importorskip("abtem")

from flowtie_fast.cli import main  # noqa: E402
from flowtie_fast.evaluation.evaluate import evaluate, format_table, phase_errors  # noqa: E402
from flowtie_fast.simulation.simulate import simulate_series  # noqa: E402


@pytest.fixture(scope="module")
def case():
    """One unit cell of GaAs [001] (5.65 Å), 16 x 16 scan, 300 keV, 20 mrad, dz = 20 Å."""
    (c,) = simulate_series("GaAs", (5.65,), scan_gpts=(16, 16), supercell=8.0,
                           potential_sampling=0.08, max_angle=40.0)
    return c


def test_case_layout(case):
    assert case.minus.shape == case.zero.shape == case.plus.shape
    assert case.zero.shape[:2] == (16, 16) and case.phase.shape == (16, 16)
    assert case.thickness == pytest.approx(5.6533)
    # The defocused planes differ from the in-focus one, symmetrically to first order.
    d_minus = np.abs(case.minus - case.zero).sum()
    d_plus = np.abs(case.plus - case.zero).sum()
    assert d_minus > 0 and 0.5 < d_minus / d_plus < 2


@pytest.mark.parametrize("method", ["tie", "gd", "icom"])
def test_thin_specimen_signs_and_axes(case, method):
    """NMSE below 0.6 on a thin specimen; the same phase with its sign flipped
    (what a wrong defocus sign or swapped planes give) is far worse."""
    t = ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                    scan_step=case.scan_step, k_sampling=case.k_sampling,
                                    energy=case.energy, backend="cpu")
    phase = ft.reconstruct(t, method=method, backend="cpu").phase
    _, nmse = phase_errors(phase, case.phase)
    _, flipped = phase_errors(-phase, case.phase)
    assert nmse < 0.6, nmse
    assert flipped > 1.4, flipped
    # Swapping the planes (the abTEM defocus sign taken the wrong way round) flips TIE.
    if method != "icom":
        swapped = ft.FocalTriplet.from_4dstem(case.plus, case.zero, case.minus, dz=case.dz,
                                              scan_step=case.scan_step,
                                              k_sampling=case.k_sampling, energy=case.energy,
                                              backend="cpu")
        _, wrong = phase_errors(ft.reconstruct(swapped, method=method, backend="cpu").phase,
                                case.phase)
        assert wrong > 1.4, wrong


@pytest.mark.parametrize("model", ["default", "fast", "ensemble"])
def test_shipped_flow_model_beats_tie_on_a_small_case(case, model):
    """Each shipped model (trained on other sizes, samplings and thicknesses) cuts
    the phase error of the TIE here, and reports where its flow disagrees with
    the measured transport."""
    pytest.importorskip("torch")
    t = ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                    scan_step=case.scan_step, k_sampling=case.k_sampling,
                                    energy=case.energy, backend="cpu")
    tie = phase_errors(ft.reconstruct(t, method="tie", backend="cpu").phase, case.phase)[1]
    rec = ft.reconstruct(t, method="flowtie", backend="cpu", model=model)
    flow = phase_errors(rec.phase, case.phase)[1]
    assert flow < 0.75 * tie, (flow, tie)
    assert rec.residual.shape == (16, 16) and np.isfinite(rec.residual).all()
    assert rec.info["model"].endswith("ensemble" if model == "ensemble" else f"flow_{model}.pt")
    # The gradient returned is that of the returned phase (curl-free projection).
    p = ft.PoissonSolver((16, 16), case.scan_step, backend="cpu")
    np.testing.assert_allclose(rec.gradient, p.gradient(rec.phase), atol=1e-4)


def test_file_round_trip_and_command_line(case, tmp_path, capsys):
    path = ft.save(tmp_path / "cases" / "GaAs_0005.7A.h5", case)
    with ft.load(path) as ds:
        np.testing.assert_array_equal(np.asarray(ds.zero), case.zero)
        assert ds.meta["material"] == "GaAs"
    out = tmp_path / "rec.npz"
    png = tmp_path / "rec.png"
    assert main(["reconstruct", str(path), "--method", "tie", "-o", str(out), "--png", str(png),
                 "--backend", "cpu"]) == 0
    with np.load(out) as z:
        assert z["phase"].shape == (16, 16) and z["gradient"].shape == (2, 16, 16)
        _, nmse = phase_errors(z["phase"], case.phase)
        assert nmse < 0.6
    assert png.stat().st_size > 1000
    if importlib.util.find_spec("torch") is not None:  # flowtie: model and precision
        flow = tmp_path / "flow.npz"
        assert main(["reconstruct", str(path), "--method", "flowtie", "--model", "fast",
                     "--precision", "bfloat16", "-o", str(flow), "--backend", "cpu"]) == 0
        with np.load(flow) as z:
            assert phase_errors(z["phase"], case.phase)[1] < 0.6
        assert main(["reconstruct", str(path), "--method", "flowtie", "--model",
                     str(tmp_path / "none.pt"), "-o", str(flow), "--backend", "cpu",
                     "--overwrite"]) == 2
        assert "model: no such file" in capsys.readouterr().err
    table = tmp_path / "table.md"
    assert main(["evaluate", str(tmp_path / "cases"), "--methods", "tie", "icom",
                 "-o", str(table)]) == 0
    text = table.read_text()
    assert "| GaAs | 5.7 |" in text and "tie MSE (NMSE)" in text and "MSE in rad²" in text
    rows = evaluate(tmp_path / "cases", methods=("tie",), repeats=1)
    assert rows[0]["nmse"] < 0.6 and "GaAs" in format_table(rows)


def test_command_line_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, zero=np.ones((4, 4)))
    assert main(["reconstruct", str(bad), "-o", str(tmp_path / "o.npz")]) == 2
    assert "missing key" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_frozen_phonons_and_dose():
    (c,) = simulate_series("SrTiO3", (3.905,), scan_gpts=(12, 12), supercell=8.0,
                           potential_sampling=0.1, max_angle=30.0, frozen_phonons=2, sigma=0.08,
                           dose=2e4, seed=3)
    assert c.zero.shape[:2] == (12, 12) and c.meta["frozen_phonons"] == 2
    counts = c.zero.sum(axis=(-2, -1))
    assert np.all(c.zero == np.round(c.zero))  # Poisson counts
    expected = 2e4 * c.scan_step[0] * c.scan_step[1]
    assert abs(counts.mean() / expected - 1) < 0.05
    t = ft.FocalTriplet.from_4dstem(c.minus, c.zero, c.plus, dz=c.dz, scan_step=c.scan_step,
                                    k_sampling=c.k_sampling, energy=c.energy, backend="cpu")
    _, nmse = phase_errors(ft.reconstruct(t, method="icom", backend="cpu").phase, c.phase)
    assert nmse < 0.8


def test_simulation_on_the_gpu_matches_the_cpu():
    """abTEM through CuPy gives the same patterns and truth (a GPU only)."""
    from conftest import _skip_without_gpu

    _skip_without_gpu()
    kw = dict(scan_gpts=(8, 8), supercell=8.0, potential_sampling=0.08, max_angle=40.0)
    (cpu,) = simulate_series("GaAs", (5.65,), **kw)
    (gpu,) = simulate_series("GaAs", (5.65,), device="gpu", **kw)
    assert isinstance(gpu.zero, np.ndarray)
    for a, b in ((cpu.minus, gpu.minus), (cpu.zero, gpu.zero), (cpu.plus, gpu.plus)):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-6 * float(np.max(a)))
    np.testing.assert_allclose(gpu.phase, cpu.phase, atol=1e-5)


def test_a_gpu_simulation_without_a_device_is_refused_before_any_work():
    from flowtie_fast.backend import gpu_available

    if gpu_available():
        pytest.skip("a CUDA device answers here")
    with pytest.raises(ft.BackendError, match="device: 'gpu'"):
        simulate_series("GaAs", (5.65,), device="gpu")
