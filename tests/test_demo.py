"""``flowtie demo``: warm timings, labelled; a figure read at a glance, written
outside the working folder. abTEM is replaced by an analytic case here (the
real GaAs demo: tests/test_backend.py)."""

import importlib.util
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
from fields import periodic_field, triplet_from

import flowtie_fast as ft
from flowtie_fast import cli
from flowtie_fast.evaluation import demo

pytest.importorskip("matplotlib")


def fake_case():
    """A SimulationCase-like object and its triplet (with a measured gradient)."""
    pixel = (0.25, 0.25)
    phi, intensity, didz, grad = periodic_field(shape=(24, 24), pixel=pixel, contrast=0.3)
    t = triplet_from(intensity, didz, 20.0, pixel, 300e3)
    t = ft.FocalTriplet(*t.planes, dz=20.0, pixel_size=pixel, energy=300e3, gradient=grad)
    case = SimpleNamespace(material="GaAs", thickness=11.3, dz=20.0, scan_step=pixel,
                           energy=300e3, semiangle=20.0, phase=phi, gradient=grad,
                           zero=np.zeros((24, 24, 8, 8)), meta={})
    return case, t


def test_figure_shares_one_phase_scale_and_shows_both_gradients():
    case, t = fake_case()
    rows = list(demo.method_rows(t, case.phase, ["tie", "icom"], ["cpu"], repeats=1))
    fig = demo.figure(case, rows)
    width, height = fig.get_size_inches()
    assert 0.7 < width / height < 2.0  # a grid, not a strip
    images = [(ax.get_title(), im) for ax in fig.axes for im in ax.get_images()]
    phases = [im.get_clim() for title, im in images if "∂φ" not in title]
    grads = [(title, im.get_clim()) for title, im in images if "∂φ" in title]
    assert len(phases) == 3 and len(set(phases)) == 1  # truth, tie, icom: one scale
    lo, hi = phases[0]
    assert lo <= case.phase.min() - case.phase.mean() and hi >= case.phase.max() - \
        case.phase.mean()
    titles = [t for t, _ in grads]
    for want in ("ground truth ∂φ/∂x", "ground truth ∂φ/∂y", "∂φ/∂x", "∂φ/∂y"):
        assert any(want in t for t in titles), titles
    assert len(grads) == 4 and len({c for _, c in grads}) == 1
    texts = [t.get_text() for ax in fig.axes for t in ax.findobj(
        lambda a: hasattr(a, "get_text"))]
    assert any(t.endswith(" Å") and t[0].isdigit() for t in texts), "no scale bar in Å"
    title = fig._suptitle.get_text()
    for part in ("300 keV", "±20 Å", "0.25 Å/px", "24×24 scan", "noise-free", "11.3 Å"):
        assert part in title, title


@pytest.fixture
def demo_env(monkeypatch, tmp_path):
    """The GaAs demo on the analytic case, the temporary folder in tmp_path/tmp
    and the working folder tmp_path/work."""
    case, t = fake_case()
    monkeypatch.setattr(demo, "have_abtem", lambda: True)
    monkeypatch.setattr(demo, "gaas_case", lambda: (case, t, 0.0))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


def test_demo_prints_warm_times_of_every_method_and_writes_outside_the_working_folder(
        demo_env, capsys):
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert f"best of {demo.REPEATS} warm, ms" in out and "warm-up" in out
    expected = ["tie-uniform", "tie", "tie-exact", "gd", "icom"]
    if importlib.util.find_spec("torch") is not None:
        expected.append("flowtie")
    else:
        assert "flowtie: skipped" in out
    for method in expected:
        assert f"\n{method} " in out, out
    assert list((demo_env / "work").iterdir()) == []  # nothing in the working folder
    png = demo_env / "tmp" / "flowtie_demo.png"
    assert png.stat().st_size > 10_000 and f"figure: {png}" in out
    assert cli.main(["demo"]) == 0  # its own figure is replaced without --overwrite


def test_fresnel_demo_labels_its_warm_times(capsys):
    assert cli.main(["demo", "--fresnel", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert f"best of {demo.REPEATS} warm, ms" in out and "warm-up" in out


def test_timed_runs_are_warm(monkeypatch):
    """The reported time excludes the first call (planning, compilation)."""
    from flowtie_fast.evaluation import evaluate

    calls = []

    def fake(triplet, method, backend="cpu", **options):
        calls.append(method)
        if len(calls) == 1:
            import time
            time.sleep(0.2)  # the first call pays
        return SimpleNamespace(phase=np.zeros((4, 4)))

    monkeypatch.setattr(evaluate, "reconstruct", fake)
    _, best = evaluate.timed_reconstruct(None, "tie", "cpu", repeats=5)
    assert len(calls) == 6 and best < 0.1
