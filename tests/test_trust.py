"""flowtie's uncertainty, trust check and fallback (flowtie_fast.trust) on a
small multislice simulation, noise-free and at a dose far below the
training data's."""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("abtem")

import flowtie_fast as ft  # noqa: E402
from flowtie_fast import trust  # noqa: E402
from flowtie_fast.simulation.acquisition import counts  # noqa: E402
from flowtie_fast.evaluation.evaluate import phase_errors  # noqa: E402
from flowtie_fast.simulation.simulate import simulate_series  # noqa: E402
from flowtie_fast.stem.rotation import rotate_com  # noqa: E402


@pytest.fixture(scope="module")
def case():
    """Two unit cells of SrTiO3 [001] (7.8 Å), 20 x 20 scan, 300 keV, 20 mrad, dz = 20 Å."""
    (c,) = simulate_series("SrTiO3", (7.8,), scan_gpts=(20, 20), supercell=8.0,
                           potential_sampling=0.08, max_angle=40.0)
    return c


def _triplet(case, dose=None, seed=0):
    planes = [case.minus, case.zero, case.plus]
    if dose is not None:
        rng = np.random.default_rng(seed)
        planes = [counts(p, dose, case.scan_step, rng, dtype=np.uint32) for p in planes]
    return ft.FocalTriplet.from_4dstem(*planes, dz=case.dz, scan_step=case.scan_step,
                                       k_sampling=case.k_sampling, energy=case.energy,
                                       backend="cpu")


def test_noise_free_flow_is_trusted_with_a_calibrated_uncertainty(case):
    rec = ft.reconstruct(_triplet(case), method="flowtie", backend="cpu")
    assert rec.info["trusted"] is True and "fallback" not in rec.info
    u = rec.uncertainty
    assert u.shape == case.phase.shape and u.dtype == np.float32
    assert np.isfinite(u).all() and (u >= 0).all() and u.max() > 0
    err = np.abs((rec.phase - rec.phase.mean()) - (case.phase - case.phase.mean()))
    coverage = float(np.mean(err <= u))
    assert 0.53 <= coverage <= 0.83, coverage  # the per-case range asked of it: 68 ± 15 %
    assert rec.info["rel_spread"] < trust.calibration()["spread_limit"]


def test_a_dose_far_below_training_falls_back_to_icom(case):
    """At 1e3 e/Å² (training: 1e4 and 1e5) the flow is not trusted and the
    centre of mass's phase is returned; at 300 e/Å² that holds no phase above
    its noise and the TIE's is returned, here zero too."""
    t = _triplet(case, dose=1e3, seed=1)
    raw = ft.reconstruct(t, method="flowtie", backend="cpu", uncertainty=False)
    with pytest.warns(ft.TrustWarning, match="not trusted"):
        safe = ft.reconstruct(t, method="flowtie", backend="cpu")
    icom = ft.reconstruct(t, method="icom", backend="cpu")
    assert safe.info["trusted"] is False and safe.info["fallback"] == "icom"
    assert safe.uncertainty is None
    np.testing.assert_array_equal(safe.phase, icom.phase)
    # the raw flow was worse than the classical phase it was replaced by
    assert phase_errors(raw.phase, case.phase)[1] > phase_errors(safe.phase, case.phase)[1]
    lower = _triplet(case, dose=300.0, seed=1)
    with pytest.warns(ft.TrustWarning, match="gradient holds no phase above its noise"):
        safe = ft.reconstruct(lower, method="flowtie", backend="cpu")
    assert safe.info["fallback"] == "tie" and "icom_disagreement" not in safe.info
    np.testing.assert_array_equal(safe.phase, ft.reconstruct(lower, method="tie",
                                                             backend="cpu").phase)


def test_uncertainty_off_is_the_network_alone(case):
    t = _triplet(case)
    rec = ft.reconstruct(t, method="flowtie", backend="cpu", uncertainty=False)
    assert rec.uncertainty is None and "trusted" not in rec.info
    full = ft.reconstruct(t, method="flowtie", backend="cpu")
    np.testing.assert_array_equal(rec.phase, full.phase)  # the same network answer


def test_uncertainty_applies_to_flowtie_only(case):
    with pytest.raises(ft.InputError, match="uncertainty: applies to method 'flowtie'"):
        ft.reconstruct(_triplet(case), method="tie", backend="cpu", uncertainty=True)
    with pytest.raises(ft.InputError, match="uncertainty: expected True or False"):
        ft.reconstruct(_triplet(case), method="flowtie", backend="cpu", uncertainty="yes")


def test_plan_fills_uncertainty_out_and_reports_the_verdict(case):
    t = _triplet(case)
    plan = ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie", backend="cpu")
    u = np.full(t.shape, -1.0, np.float32)
    phase = plan.solve(*t.planes, gradient=t.gradient, uncertainty_out=u)
    rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    np.testing.assert_allclose(phase, rec.phase, atol=1e-5)
    np.testing.assert_allclose(u, rec.uncertainty, atol=1e-5)
    assert plan.info["trusted"] is True
    fast = ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie",
                   backend="cpu", uncertainty=False)
    with pytest.raises(ft.InputError, match="uncertainty_out"):
        fast.solve(*t.planes, gradient=t.gradient, uncertainty_out=u)


def test_an_ensemble_of_your_own_gives_an_uncalibrated_spread(case):
    from flowtie_fast.flow.infer import FlowEnsemble, load_model

    t = _triplet(case)
    mine = FlowEnsemble([load_model("seed0"), load_model("seed2")], name="mine")
    rec = ft.reconstruct(t, method="flowtie", backend="cpu", model=mine)
    assert rec.uncertainty is not None and rec.uncertainty.max() > 0
    single = ft.reconstruct(t, method="flowtie", backend="cpu",
                            model=str(load_model("seed0").path) + "")
    # a shipped file given by path is still the shipped model: calibrated
    assert single.uncertainty is not None


def test_calibration_file_is_complete():
    cal = trust.calibration()
    assert tuple(cal["members"]) == trust.MEMBERS
    assert 1.0 <= cal["scale"] <= 5.0
    assert 0 < cal["spread_limit_no_signal"] <= cal["spread_limit"] < 1
    assert 0 < cal["orientation_limit_degrees"] < 90 and cal["orientation_significance"] > 4
    assert -1 < cal["orientation_sign_limit"] < 0


# ---------------------------------------------------------------- drift between the scans

def _drifted(case, shift_minus, shift_plus):
    from flowtie_fast.simulation.acquisition import drift

    return [drift(case.minus, shift_minus), case.zero, drift(case.plus, shift_plus)]


@pytest.mark.parametrize("shifts", [((2.3, -1.7), (-1.84, -2.04)), ((0.4, 0.3), (-0.3, 0.5))])
def test_from_4dstem_registers_drifted_scans(case, shifts):
    data = _drifted(case, *shifts)
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    t = ft.FocalTriplet.from_4dstem(*data, register="periodic", **kw)
    reg = t.registration
    assert reg["reliable"] and reg["applied"] and reg["signal"] == "df"
    # the shift that aligns a scan undoes its drift
    np.testing.assert_allclose(-reg["shifts"][0], shifts[0], atol=0.1)
    np.testing.assert_allclose(-reg["shifts"][2], shifts[1], atol=0.1)
    clean = ft.reconstruct(_triplet(case), method="flowtie", backend="cpu", uncertainty=False)
    fixed = ft.reconstruct(t, method="flowtie", backend="cpu", uncertainty=False)
    raw = ft.reconstruct(ft.FocalTriplet.from_4dstem(*data, register=False, **kw),
                         method="flowtie", backend="cpu", uncertainty=False)
    e_clean, e_fixed, e_raw = (phase_errors(r.phase, case.phase)[1] for r in (clean, fixed, raw))
    assert e_fixed < e_clean + 0.02, (e_fixed, e_clean)
    if max(map(abs, shifts[0])) > 1:
        assert e_raw > 3 * e_fixed, (e_raw, e_fixed)


def test_undrifted_scans_are_left_as_recorded(case):
    t = ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                    scan_step=case.scan_step, k_sampling=case.k_sampling,
                                    energy=case.energy, backend="cpu")
    assert t.registration["reliable"] and not t.registration["applied"]
    u = ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                    scan_step=case.scan_step, k_sampling=case.k_sampling,
                                    energy=case.energy, backend="cpu", register=False)
    assert u.registration is None
    for a, b in zip(t.planes, u.planes):
        np.testing.assert_array_equal(a, b)


def test_an_unreliable_registration_is_not_applied(case):
    from flowtie_fast.stem.registration import RegistrationWarning

    rng = np.random.default_rng(0)
    noise = [rng.poisson(2.0, case.zero.shape).astype(np.uint16) for _ in range(3)]
    with pytest.warns(RegistrationWarning, match="not applied"):
        t = ft.FocalTriplet.from_4dstem(*noise, dz=case.dz, scan_step=case.scan_step,
                                        k_sampling=case.k_sampling, energy=case.energy,
                                        center=(case.zero.shape[2] / 2, case.zero.shape[3] / 2),
                                        backend="cpu")
    assert not t.registration["reliable"] and not t.registration["applied"]
    with pytest.warns(ft.TrustWarning, match="drift between the scans could not be measured"):
        rec = ft.reconstruct(t, method="tie-uniform", backend="cpu")
    # the drift leads; what the solve found besides stays (a flat phase: no signal)
    assert rec.info["trust"] == ("the drift between the scans could not be measured; also: "
                                 "no signal above the noise")


def test_register_is_checked(case):
    with pytest.raises(ft.InputError, match="register"):
        ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, dz=case.dz,
                                    scan_step=case.scan_step, k_sampling=case.k_sampling,
                                    energy=case.energy, backend="cpu", register="yes")


# ---------------------------------------------------------------- the command line

def test_cli_normalize_off_uses_the_planes_as_recorded(case, tmp_path, capsys):
    """``--normalize off`` reaches from_4dstem (the scaled +dz scan keeps its
    flux in the planes) and says so; on a triplet of images it is refused."""
    from flowtie_fast.cli import main

    src = tmp_path / "dim.npz"
    ft.save(src, dataclasses.replace(case, plus=case.plus * np.float32(0.9)))
    phases = {}
    for flag, told in (("on", "planes scaled"), ("off", "planes used as recorded")):
        out = tmp_path / f"rec_{flag}.npz"
        assert main(["reconstruct", str(src), "-o", str(out), "--method", "tie-uniform",
                     "--register", "off", "--normalize", flag]) == 0
        line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("beam:")]
        assert len(line) == 1 and told in line[0] and " 0.9 times" in line[0]
        with np.load(out) as f:
            phases[flag] = f["phase"]
    # the TIE reads the planes: the dimmer +dz scan as recorded moves its phase
    assert not np.allclose(phases["on"], phases["off"], rtol=0, atol=1e-3 * np.ptp(phases["on"]))
    images = tmp_path / "images.npz"
    ft.save(images, ft.FocalTriplet(case.minus.sum(axis=(2, 3)), case.zero.sum(axis=(2, 3)),
                                    case.plus.sum(axis=(2, 3)), dz=case.dz,
                                    pixel_size=case.scan_step, energy=case.energy))
    assert main(["reconstruct", str(images), "-o", str(tmp_path / "img.npz"), "--method",
                 "tie", "--normalize", "off"]) == 2
    assert "--normalize: applies to 4D-STEM files only" in capsys.readouterr().err


def test_cli_writes_the_uncertainty_and_says_when_it_falls_back(case, tmp_path, capsys):
    from flowtie_fast.cli import main

    clean = tmp_path / "clean.npz"
    ft.save(clean, case)
    out = tmp_path / "rec.npz"
    assert main(["reconstruct", str(clean), "-o", str(out), "--method", "flowtie",
                 "--register", "periodic"]) == 0
    with np.load(out) as f:
        assert f["uncertainty"].shape == case.phase.shape and "fallback" not in f
    text = capsys.readouterr()
    assert "registration from the dark-field images" in text.out
    assert re.search(r"beam: the -dz and \+dz scans hold [0-9.]+ and [0-9.]+ times the in-focus "
                     r"scan's electrons per pattern; planes scaled", text.out)

    low = tmp_path / "low.npz"
    rng = np.random.default_rng(1)
    planes = [counts(p, 1e3, case.scan_step, rng, dtype=np.uint16)
              for p in (case.minus, case.zero, case.plus)]
    ft.save(low, ft.io.Dataset(*planes, (case.dz, case.dz), case.scan_step, case.energy,
                               case.k_sampling, case.phase, case.gradient))
    out2 = tmp_path / "rec2.npz"
    assert main(["reconstruct", str(low), "-o", str(out2), "--method", "flowtie"]) == 0
    text = capsys.readouterr()
    assert "returned the icom phase" in text.out
    warnings_ = [ln for ln in text.err.splitlines() if ln.strip()]
    assert warnings_ and all(ln.startswith("flowtie reconstruct: warning: ")
                             for ln in warnings_), text.err
    with np.load(out2) as f:
        assert str(f["fallback"]) == "icom" and "uncertainty" not in f


def test_cli_refuses_options_that_do_not_apply(case, tmp_path, capsys):
    from flowtie_fast.cli import main

    images = tmp_path / "images.npz"
    t = _triplet(case)
    ft.save(images, ft.FocalTriplet(*t.planes, dz=t.dz, pixel_size=t.pixel_size,
                                    energy=t.energy))
    assert main(["reconstruct", str(images), "-o", str(tmp_path / "a.npz"),
                 "--normalize", "off"]) == 2
    assert "--normalize: applies to 4D-STEM files only" in capsys.readouterr().err
    assert main(["reconstruct", str(images), "-o", str(tmp_path / "b.npz"), "--method", "tie",
                 "--no-uncertainty"]) == 2
    assert "--no-uncertainty" in capsys.readouterr().err


# ---------------------------------------------------------------- edge cases of the checks

def test_scans_too_small_to_register_say_so(case):
    from flowtie_fast.stem.registration import RegistrationWarning

    small = [x[:6, :6] for x in (case.minus, case.zero, case.plus)]
    with pytest.warns(RegistrationWarning, match="too small"):
        t = ft.FocalTriplet.from_4dstem(*small, dz=case.dz, scan_step=case.scan_step,
                                        k_sampling=case.k_sampling, energy=case.energy,
                                        backend="cpu")
    assert not t.registration["reliable"]


def test_constant_data_are_not_registered_reliably(case):
    flat = [np.ones_like(x) for x in (case.minus, case.zero, case.plus)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ft.FocalTriplet.from_4dstem(*flat, dz=case.dz, scan_step=case.scan_step,
                                        k_sampling=case.k_sampling, energy=case.energy,
                                        center=(flat[0].shape[2] / 2, flat[0].shape[3] / 2),
                                        backend="cpu")
    assert not t.registration["reliable"]


def test_the_noise_is_measured_before_the_drift_is_undone(case):
    data = _drifted(case, (1.5, 0.5), (-1.2, 0.7))
    rng = np.random.default_rng(3)
    data = [counts(p, 1e5, case.scan_step, rng, dtype=np.uint32) for p in data]
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ft.FocalTriplet.from_4dstem(*data, register="periodic", **kw)
        b = ft.FocalTriplet.from_4dstem(*data, register=False, **kw)
    assert a.noise == b.noise


def _tiny_model(path):
    from flowtie_fast.flow.model import FlowNet
    from flowtie_fast.training.train import export_torchscript

    torch.manual_seed(0)
    net = FlowNet(in_channels=6, width=4, depth=1).eval()
    with torch.no_grad():  # an untrained net's flow is weak: scaled to the measured one's
        # strength, so that it is not taken for a model that predicts no flow
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        last.weight.mul_(60.0)
        if last.bias is not None:
            last.bias.mul_(60.0)
    return export_torchscript(net, path)


def test_one_network_twice_is_no_ensemble(case, tmp_path):
    from flowtie_fast.flow.infer import FlowEnsemble, load_model

    path = _tiny_model(tmp_path / "tiny.pt")
    t = _triplet(case)
    for members in ([load_model(str(path))], [load_model(str(path))] * 2):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            rec = ft.reconstruct(t, method="flowtie", backend="cpu",
                                 model=FlowEnsemble(members, name="one"))
        assert rec.uncertainty is None and "unavailable" in rec.info["uncertainty"]
        assert rec.info["rel_spread"] is None


def test_making_a_flowtie_plan_warns_about_nothing(case):
    t = _triplet(case)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", DeprecationWarning)
        plan = ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie",
                       backend="cpu")
    assert plan.info == {}


def test_a_batch_keeps_every_items_verdict(case):
    t = _triplet(case)
    low = _triplet(case, dose=300.0, seed=1)
    plan = ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie", backend="cpu")
    stack = np.stack([np.stack([np.asarray(p, np.float32) for p in x.planes])
                      for x in (low, t)])
    grads = np.stack([np.asarray(low.gradient, np.float32), np.asarray(t.gradient, np.float32)])
    u = np.full((2,) + t.shape, 7.0, np.float32)
    with pytest.warns(ft.TrustWarning):
        plan.solve_batch(stack, gradient=grads, uncertainty_out=u,
                         noise=[float(v) for v in low.noise.variance])
    items = plan.info["items"]
    assert items[0]["trusted"] is False and items[0]["fallback"] == "icom"
    assert plan.info["trusted"] is False
    assert np.all(u[0] == trust.NO_UNCERTAINTY)  # no map where the phase fell back
    assert np.all(u[1] >= 0) and u[1].max() > 0


def test_a_fallback_in_a_live_loop_leaves_no_stale_uncertainty(case):
    """A frame that falls back after a trusted one: its uncertainty_out holds
    NO_UNCERTAINTY at every pixel, not the previous frame's map."""
    t = _triplet(case)
    low = _triplet(case, dose=300.0, seed=1)
    plan = ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie", backend="cpu")
    u = np.empty(t.shape, np.float32)
    plan.solve(*t.planes, gradient=t.gradient, uncertainty_out=u)
    assert plan.info["trusted"] is True and (u >= 0).all() and u.max() > 0
    with pytest.warns(ft.TrustWarning, match="not trusted"):
        plan.solve(*low.planes, gradient=low.gradient, uncertainty_out=u,
                   noise=[float(v) for v in low.noise.variance])
    assert plan.info["fallback"] == "icom"
    assert np.all(u == trust.NO_UNCERTAINTY)
    assert plan.info["uncertainty"].startswith("none: the flow was not trusted")


def test_a_single_model_of_your_own_is_not_trusted_without_signal(case, tmp_path):
    """No spread to measure, but no signal above the noise still means no trust."""
    path = _tiny_model(tmp_path / "tiny.pt")
    base = _triplet(case)
    zero = np.asarray(base.zero, np.float64)
    flat = ft.FocalTriplet(zero, zero, zero, dz=base.dz, pixel_size=base.pixel_size,
                           energy=base.energy, noise=1.0, gradient=base.gradient)
    with pytest.warns(ft.TrustWarning, match="no signal above the noise"):
        rec = ft.reconstruct(flat, method="flowtie", backend="cpu", model=str(path))
    assert rec.info["snr"] == 0 and rec.info["trusted"] is False
    assert rec.info["fallback"] == "icom" and rec.uncertainty is None
    np.testing.assert_array_equal(
        rec.phase, ft.reconstruct(flat, method="icom", backend="cpu").phase)
    # the verdict itself: no spread and no signal is no trust; a signal is
    assert trust.verdict(None, 1.0, 0.0)["trusted"] is False
    assert trust.verdict(None, 1.0, 0.5)["trusted"] is True


def test_a_model_that_predicts_no_flow_is_not_trusted(case, tmp_path):
    """A flat flow phase where the measured centre of mass gives a phase is no
    answer: the icom phase instead, with a warning (it was returned trusted)."""
    import json

    class Zero(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x[:, :2])

    path = tmp_path / "zero.pt"
    torch.jit.save(torch.jit.script(Zero()), str(path),
                   _extra_files={"config.json": json.dumps({"in_channels": 6})})
    t = _triplet(case)
    with pytest.warns(ft.TrustWarning, match="flat"):
        rec = ft.reconstruct(t, method="flowtie", backend="cpu", model=str(path))
    assert rec.info["trusted"] is False and rec.info["fallback"] == "icom"
    icom = ft.reconstruct(t, method="icom", backend="cpu")
    np.testing.assert_allclose(rec.phase, icom.phase, atol=1e-6)
    assert trust.verdict(None, 0.0, 1.0, icom_rms=0.3)["trusted"] is False
    assert trust.verdict(None, 0.2, 1.0, icom_rms=0.3)["trusted"] is True


# ---------------------------------------------------------------- detector orientation

def test_a_detector_rotation_given_wrong_is_caught_and_the_right_one_named(case):
    """The patterns were recorded with detector and scan axes parallel: read
    with rotation=90 the centre of mass is a curl field, icom's phase is
    wrong, and the triplet and the solve say so, naming a rotation and flip
    that fix it; the flowtie fallback is then the TIE, not the wrong icom."""
    planes = [case.minus, case.zero, case.plus]
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = ft.FocalTriplet.from_4dstem(*planes, **kw)
    assert right.gradient_orientation["suspect"] is False
    assert right.gradient_orientation["tie_correlation"] > 0.3
    # half a turn has no curl: the sign against the TIE phase of the planes says so
    with pytest.warns(ft.TrustWarning, match=r"against the gradient of the bright-field TIE phase"
                      r".* half a turn wrong"
                      r".* rotation=0 with flip=False"):
        half = ft.FocalTriplet.from_4dstem(*planes, rotation=180.0, **kw)
    assert half.gradient_orientation["correction"] == (180.0, False)
    with pytest.warns(ft.TrustWarning, match="icom: gradient: it points against"):
        ft.reconstruct(half, method="icom", backend="cpu")
    # with rotation="auto" the TIE phase already chose the half turn: no second check
    auto = ft.FocalTriplet.from_4dstem(*planes, rotation="auto", **kw)
    assert "tie_correlation" not in auto.gradient_orientation
    with pytest.warns(ft.TrustWarning, match=r"rotation=(0|180) .*flip=False.* rotation='auto'"):
        wrong = ft.FocalTriplet.from_4dstem(*planes, rotation=90.0, **kw)
    assert wrong.gradient_orientation["misorientation"] > 80
    with pytest.warns(ft.TrustWarning, match="icom: gradient:"):
        bad = ft.reconstruct(wrong, method="icom", backend="cpu")
    good = ft.reconstruct(right, method="icom", backend="cpu")
    assert phase_errors(bad.phase, case.phase)[1] > phase_errors(good.phase, case.phase)[1] + 0.3
    # a flow that is not trusted falls back to the TIE, not to that icom phase
    low = _triplet(case, dose=300.0, seed=1)
    assert not low.gradient_orientation["suspect"]
    with pytest.warns(ft.TrustWarning):
        turned = ft.FocalTriplet(*low.planes, dz=case.dz, pixel_size=case.scan_step,
                                 energy=case.energy, noise=low.noise,
                                 gradient=rotate_com(right.gradient, 90.0, False))
    with pytest.warns(ft.TrustWarning, match="not trusted"):
        safe = ft.reconstruct(turned, method="flowtie", backend="cpu")
    assert safe.info["fallback"] == "tie"


@pytest.mark.parametrize("virtual", ["abf", "df", "bf-full"])
def test_the_half_turn_is_told_by_the_bright_field_whatever_the_planes(case, virtual):
    """Annular bright- and dark-field images do not carry the phase's sign:
    the half turn of an explicit rotation, and the one "auto" chooses, are
    told by the TIE phase of the bright-field images (on the abf planes the
    right rotation was called half a turn off, and "auto" chose the wrong
    one, the negative phase without a word)."""
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu", virtual=virtual)
    planes = [case.minus, case.zero, case.plus]
    bf = ft.reconstruct(ft.FocalTriplet.from_4dstem(*planes, dz=case.dz,
                                                    scan_step=case.scan_step,
                                                    k_sampling=case.k_sampling,
                                                    energy=case.energy, backend="cpu"),
                        method="icom", backend="cpu").phase
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        right = ft.FocalTriplet.from_4dstem(*planes, rotation=0.0, **kw)
        auto = ft.FocalTriplet.from_4dstem(*planes, rotation="auto", **kw)
    assert right.gradient_orientation["tie_correlation"] > 0.3
    icom = ft.reconstruct(auto, method="icom", backend="cpu").phase
    assert np.corrcoef(icom.ravel(), bf.ravel())[0, 1] > 0.99
    with pytest.warns(ft.TrustWarning, match="half a turn wrong.* rotation=0 with flip=False"):
        ft.FocalTriplet.from_4dstem(*planes, rotation=180.0, **kw)


def test_a_fallback_to_icom_says_when_the_tie_phase_contradicts_it():
    """A measured gradient of the wrong sign has no curl: where the flow is not
    trusted and nothing caught it before, the icom phase returned is the
    negative phase, and the TIE phase of the planes, which contradicts it, is
    named in the warning (a right gradient's fallback is not)."""
    from flowtie_fast.simulation.optics import defocus_triplet, gaussian_bumps

    phi = gaussian_bumps(64, 0.3, 12, 0.4, (0.8, 2.0), seed=3)
    t = defocus_triplet(phi, 40.0, 0.3, 300e3)
    y = np.fft.fftfreq(64, 0.3)[:, None] * 2j * np.pi
    x = np.fft.fftfreq(64, 0.3)[None, :] * 2j * np.pi
    spectrum = np.fft.fft2(phi)
    g = np.stack([np.fft.ifft2(y * spectrum).real, np.fft.ifft2(x * spectrum).real])
    for sign, contradicted in ((1.0, False), (-1.0, True)):
        triplet = ft.FocalTriplet(*t.planes, dz=40.0, pixel_size=0.3, energy=300e3,
                                  gradient=g)
        # turned after the triplet's own checks (which catch it: a Plan's do not)
        triplet.gradient = sign * g
        with pytest.warns(ft.TrustWarning, match="not trusted") as caught:
            # a flow taken for untrusted whatever it is: the fallback is the subject
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(trust, "verdict", lambda *a: {"trusted": False, "rel_spread": 1.0,
                                                         "snr": 1.0, "icom_ratio": None,
                                                         "why": "forced"})
                rec = ft.reconstruct(triplet, method="flowtie", backend="cpu")
        assert rec.info["fallback"] == "icom"
        said = any("which the tie phase contradicts" in str(w.message) for w in caught)
        assert said is contradicted, rec.info["icom_disagreement"]
        assert (rec.info["icom_disagreement"] > 3.683) is contradicted


@pytest.mark.parametrize("virtual", ["df", "abf", "bf-full", "whole"])
def test_the_shipped_flow_is_not_trusted_on_images_other_than_bright_field(case, virtual):
    """The shipped models read bright-field images: on the 'df' planes of 8 of
    60 noise-free corpus files their flow was trusted at NMSE 1.6-546;
    on this crystal the flow of 'whole' planes was trusted without a word.
    The flow falls back to icom, which reads the centre of mass alone, and
    says why; the TIE phase of such planes is no second opinion."""
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    planes = [case.minus, case.zero, case.plus]
    t = ft.FocalTriplet.from_4dstem(*planes, virtual=virtual, **kw)
    assert t.virtual == virtual
    with pytest.warns(ft.TrustWarning, match=f"the planes are '{virtual}' images") as caught:
        rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert rec.info["trusted"] is False and rec.info["fallback"] == "icom"
    assert not any("contradicts" in str(w.message) for w in caught)
    np.testing.assert_array_equal(rec.phase, ft.reconstruct(t, method="icom",
                                                            backend="cpu").phase)
    bf = ft.FocalTriplet.from_4dstem(*planes, **kw)
    assert bf.virtual == "bf"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        assert ft.reconstruct(bf, method="flowtie", backend="cpu").info["trusted"] is True
    plain = ft.FocalTriplet(*t.planes, dz=case.dz, pixel_size=case.scan_step,
                            energy=case.energy)
    assert plain.virtual is None  # unknown: not judged by it


@pytest.mark.parametrize("virtual", ["df", "abf", "bf-full", "whole"])
def test_the_tie_on_images_other_than_bright_field_says_so(case, virtual):
    """The TIE's contrast is that of bright-field images: on 60 noise-free
    corpus files `tie` on other planes gave NMSE 0.79 at best ('bf-full' and
    'whole' a near-flat phase), mostly without a word."""
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    planes = [case.minus, case.zero, case.plus]
    t = ft.FocalTriplet.from_4dstem(*planes, virtual=virtual, **kw)
    for method in ("tie", "tie-uniform", "tie-exact", "gd"):
        with pytest.warns(ft.TrustWarning, match=f"^{method}: the planes are '{virtual}' "):
            rec = ft.reconstruct(t, method=method, backend="cpu", max_iter=5
                                 if method in ("tie-exact", "gd") else None)
        assert "trust" in rec.info
    bf = ft.FocalTriplet.from_4dstem(*planes, **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft.reconstruct(bf, method="tie", backend="cpu")
    assert not any("the planes are" in str(w.message) for w in caught)


def test_the_network_alone_on_images_other_than_bright_field_says_so(case):
    """Without the trust check (uncertainty=False) the shipped network's flow
    of 'df' planes came back without a word: reconstruct warns at each call,
    a plan once when it is made and in plan.info at each solve (batched too);
    'bf' planes and a model of your own are not judged by it."""
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    planes = [case.minus, case.zero, case.plus]
    t = ft.FocalTriplet.from_4dstem(*planes, virtual="df", **kw)
    with pytest.warns(ft.TrustWarning, match=r"^flowtie: the planes are 'df' images and the "
                                             r"shipped models read bright-field"):
        rec = ft.reconstruct(t, method="flowtie", backend="cpu", uncertainty=False)
    assert "'df' images" in rec.info["trust"]
    pk = dict(dz=case.dz, pixel_size=t.pixel_size, energy=case.energy, backend="cpu",
              uncertainty=False, warmup=False)
    with pytest.warns(ft.TrustWarning, match="shipped models read bright-field"):
        plan = ft.Plan(t.shape, method="flowtie", virtual="df", **pk)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)  # said once, by the plan
        plan.solve(*t.planes, gradient=t.gradient)
        assert "'df' images" in plan.info["trust"]
        stack = np.stack([np.stack(t.planes)] * 2)
        plan.solve_batch(stack, gradient=np.stack([t.gradient] * 2))
        assert "'df' images" in plan.info["trust"]
        bf = ft.FocalTriplet.from_4dstem(*planes, **kw)
        assert "trust" not in ft.reconstruct(bf, method="flowtie", backend="cpu",
                                             uncertainty=False).info


def test_a_shipped_model_given_by_its_path_alone_on_other_images_says_so(case, tmp_path):
    """A shipped file given by its path is a shipped model (its trust check
    falls back on 'df' planes): the network alone of it on 'df' planes
    says so as the shipped name does; it returned its flow without a word.
    A model of your own is still not judged."""
    from flowtie_fast.flow.infer import default_model_path
    from flowtie_fast.solvers import image_verdict

    path = default_model_path("default")
    for given in (path, str(path)):
        assert "shipped models" in image_verdict("flowtie", "df", given, True)
    assert image_verdict("flowtie", "df", _tiny_model(tmp_path / "tiny.pt"), True) is None
    t = ft.FocalTriplet.from_4dstem(case.minus, case.zero, case.plus, virtual="df",
                                    dz=case.dz, scan_step=case.scan_step,
                                    k_sampling=case.k_sampling, energy=case.energy,
                                    backend="cpu")
    with pytest.warns(ft.TrustWarning, match="shipped models read bright-field"):
        rec = ft.reconstruct(t, method="flowtie", backend="cpu", model=str(path),
                             uncertainty=False)
    assert "'df' images" in rec.info["trust"]


def test_the_sign_is_not_judged_against_planes_whose_drift_could_not_be_measured(
        case, monkeypatch):
    """The TIE phase of scans whose drift could not be measured is not the
    specimen's: a right centre of mass was read as half a turn wrong against
    it (a W [110] corpus scan drifted 2-3 px: flowtie then fell back to that
    TIE phase, NMSE 2.3, where icom's was 0.64). Where the registration is
    unreliable the half turn is not judged, for a triplet and for a Plan told
    the record; where it is reliable, or no registration was asked for, it
    is."""
    import flowtie_fast.triplet as triplet_module

    planes = [case.minus, case.zero, case.plus]
    kw = dict(dz=case.dz, scan_step=case.scan_step, k_sampling=case.k_sampling,
              energy=case.energy, backend="cpu")
    with pytest.warns(ft.TrustWarning, match="half a turn wrong"):
        ft.FocalTriplet.from_4dstem(*planes, rotation=180.0, **kw)
    prepare = triplet_module.prepare_planes

    def unreliable(*args, **kwargs):
        out = list(prepare(*args, **kwargs))
        out[5] = {**(out[5] or {"shifts": np.zeros((3, 2)), "applied": False}),
                  "reliable": False, "applied": False}
        return tuple(out)

    monkeypatch.setattr(triplet_module, "prepare_planes", unreliable)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        half = ft.FocalTriplet.from_4dstem(*planes, rotation=180.0, **kw)
    assert half.registration["reliable"] is False
    assert half.gradient_orientation["suspect"] is False
    assert "tie_correlation" not in half.gradient_orientation
    # a Plan: the same half-turned gradient, with and without the record
    g = np.asarray(half.gradient, np.float32)
    p32 = [np.asarray(p, np.float32) for p in half.planes]
    plan_kw = dict(dz=case.dz, energy=case.energy, backend="cpu", method="icom")
    told = ft.Plan(half.shape, half.pixel_size, **plan_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)  # the record's own word
        told.solve(*p32, gradient=g, registration=half.registration)
    assert not (told.gradient_orientation or {}).get("suspect")
    plain = ft.Plan(half.shape, half.pixel_size, **plan_kw)
    with pytest.warns(ft.TrustWarning, match="half a turn wrong"):
        plain.solve(*p32, gradient=g)


def test_a_flow_kept_but_not_trusted_for_its_scale_gives_no_uncertainty():
    """k_sampling given 10 times too large: the centre of mass is 10 times
    the gradient the bright-field TIE phase gives. On GaAs [001] 11.3 Å the
    flow still passes its own trust check and is returned, untrusted, with
    no uncertainty map (the models' spread does not see a scale given
    wrong); the right calibration keeps its map."""
    (gaas,) = simulate_series("GaAs", (11.3,), scan_gpts=(16, 16), supercell=8.0,
                              potential_sampling=0.08, max_angle=40.0)
    kw = dict(dz=gaas.dz, scan_step=gaas.scan_step, energy=gaas.energy, backend="cpu")
    planes = (gaas.minus, gaas.zero, gaas.plus)
    right = ft.reconstruct(ft.FocalTriplet.from_4dstem(*planes, k_sampling=gaas.k_sampling,
                                                       **kw), method="flowtie", backend="cpu")
    assert right.info["trusted"] is True and right.uncertainty is not None
    with pytest.warns(ft.TrustWarning, match="disagree in scale"):
        t = ft.FocalTriplet.from_4dstem(*planes, k_sampling=tuple(10 * np.asarray(
            gaas.k_sampling)), **kw)
    rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert "fallback" not in rec.info and rec.info["trusted"] is False
    assert rec.uncertainty is None
    assert rec.info["uncertainty"].startswith("none: the measured gradient and the planes")
