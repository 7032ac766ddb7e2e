"""The curl check of a measured phase gradient (flowtie_fast.trust.gradient_orientation):
a gradient turned, transposed or with swapped components is caught and its
correction found; right ones, noise and small rotations pass."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fields import rel_rms

import flowtie_fast as ft
from flowtie_fast import trust
from flowtie_fast.stem.rotation import rotate_com

STEP = (0.25, 0.31)


def _field(n=(40, 36), periodic=True):
    """φ and its gradient (rad/Å) on a scan of STEP (periodic, or a window of
    half periods)."""
    y = np.arange(n[0])[:, None] * STEP[0]
    x = np.arange(n[1])[None, :] * STEP[1]
    a, b = 2 * np.pi / (n[0] * STEP[0]), 2 * np.pi / (n[1] * STEP[1])
    if not periodic:
        a, b = a / 2.3, b / 2.3
    phi = 0.6 * np.sin(2 * a * y) * np.cos(b * x) + 0.3 * np.cos(a * y + 3 * b * x)
    gy = 1.2 * a * np.cos(2 * a * y) * np.cos(b * x) - 0.3 * a * np.sin(a * y + 3 * b * x)
    gx = -0.6 * b * np.sin(2 * a * y) * np.sin(b * x) - 0.9 * b * np.sin(a * y + 3 * b * x)
    return phi, np.stack([gy, gx])


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("degrees,flip", [(0.0, False), (10.0, False), (20.0, False),
                                          (180.0, False), (-20.0, False)])
def test_a_gradient_within_the_limit_passes(periodic, degrees, flip):
    _, g = _field(periodic=periodic)
    check = trust.gradient_orientation(rotate_com(g, degrees, flip), STEP)
    assert check["testable"] and not check["suspect"]
    # central differences of a sampled gradient leave a little curl (1.9° for
    # the right field, whose finest period here is 4 px)
    assert abs(check["misorientation"] - abs((degrees + 90) % 180 - 90)) < 3.0


@pytest.mark.parametrize("periodic", [True, False])
@pytest.mark.parametrize("degrees,flip", [(40.0, False), (90.0, False), (-135.0, False),
                                          (0.0, True), (30.0, True), (90.0, True)])
def test_a_misoriented_gradient_is_caught_and_its_correction_found(periodic, degrees, flip):
    _, g = _field(periodic=periodic)
    wrong = rotate_com(g, degrees, flip)
    check = trust.gradient_orientation(wrong, STEP)
    assert check["suspect"] and check["curl_fraction"] > 0.2
    assert check["least_curl_fraction"] < 0.01
    theta, transpose = check["correction"]
    assert transpose == flip
    fixed = rotate_com(wrong, theta, transpose)
    # curl-free again: the gradient itself, up to the 180° no curl can tell
    assert min(rel_rms(fixed, g), rel_rms(fixed, -g)) < 0.02
    if not flip:
        assert abs(check["misorientation"] - abs((degrees + 90) % 180 - 90)) < 3.0


def test_swapped_components_are_caught_by_the_triplet_and_every_solve():
    phi, g = _field()
    planes = [np.ones(phi.shape)] * 3
    kw = dict(dz=20.0, pixel_size=STEP, energy=300e3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = ft.FocalTriplet(*planes, gradient=g, **kw)
    assert right.gradient_orientation["suspect"] is False
    with pytest.warns(ft.TrustWarning, match=r"gradient: \d+% of its power is curl.*"
                      "swapping its two components.*order of its components"):
        swapped = ft.FocalTriplet(*planes, gradient=g[::-1], **kw)
    check = swapped.gradient_orientation
    assert check["suspect"] and check["correction"][1] is True
    with pytest.warns(ft.TrustWarning, match="icom: gradient:"):
        rec = ft.reconstruct(swapped, method="icom", backend="cpu")
    assert rec.info["trust"] == check["why"]
    assert rel_rms(rec.phase - rec.phase.mean(), phi - phi.mean()) > 0.3  # wrong, and said so
    # the TIE methods do not check themselves against a gradient that is wrong
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tie = ft.reconstruct(swapped, method="tie-uniform", backend="cpu")
        tie_right = ft.reconstruct(right, method="tie-uniform", backend="cpu")
    assert tie.info["icom_disagreement"] is None
    assert tie_right.info["icom_disagreement"] is not None


def test_swapped_components_that_leave_little_curl_are_caught():
    """On this field the components swapped hold 20 % curl, which the turns'
    formula read as a misorientation of 26°, under the 30° limit: icom
    returned another phase (NMSE 1.02) without a word. A given orientation
    that only a transpose makes curl-free is no turn: flagged."""
    from fields import periodic_field

    pixel = (0.2, 0.25)
    phi, intensity, _, g = periodic_field((96, 80), pixel)
    right = trust.gradient_orientation(g, pixel)
    assert right["testable"] and not right["suspect"]
    check = trust.gradient_orientation(g[::-1], pixel)
    assert 0.1 < check["curl_fraction"] < 0.3 and check["least_curl_fraction"] < 0.01
    assert check["suspect"] and check["misorientation"] == 90.0
    assert check["correction"][1] is True
    planes = [intensity] * 3
    with pytest.warns(ft.TrustWarning, match=r"gradient: \d+% of its power is curl"):
        t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=pixel, energy=300e3, gradient=g[::-1])
    with pytest.warns(ft.TrustWarning, match="icom: gradient:"):
        ft.reconstruct(t, method="icom", backend="cpu")


@pytest.mark.parametrize("shape", [(8, 8), (16, 16), (24, 40), (64, 64)])
def test_noise_alone_is_never_suspect(shape):
    """White noise has as much curl as divergence at every orientation: its
    significance stays below the limit (500 draws of each size)."""
    rng = np.random.default_rng(7)
    limit = trust.calibration()["orientation_significance"]
    worst = max(trust.gradient_orientation(rng.standard_normal((2,) + shape), STEP)
                ["significance"] for _ in range(500))
    assert worst < 0.9 * limit


def test_a_right_gradient_under_noise_passes_and_a_wrong_one_is_caught_above_it():
    """With noise of half the gradient's RMS (64², white) the right
    orientation passes and a 90° turn is caught in every draw; at an RMS
    equal to the gradient's in most (the curl of the turn then stands 3.5-6
    noise spreads out); at ten times it the check cannot tell and says so
    (``testable`` False) rather than anything else."""
    _, g = _field(n=(64, 64))
    rng = np.random.default_rng(3)
    rms = np.sqrt(np.mean(g ** 2))
    turned = rotate_com(g, 90.0, False)
    caught_at_1 = 0
    for _ in range(50):
        noise = rng.standard_normal(g.shape) * rms
        assert not trust.gradient_orientation(g + noise, STEP)["suspect"]
        assert not trust.gradient_orientation(g + 0.5 * noise, STEP)["suspect"]
        assert trust.gradient_orientation(turned + 0.5 * noise, STEP)["suspect"]
        caught_at_1 += trust.gradient_orientation(turned + noise, STEP)["suspect"]
        faint = trust.gradient_orientation(turned + 10 * noise, STEP)
        assert not faint["suspect"] and not faint["testable"]
    assert caught_at_1 >= 40


def test_flat_and_tiny_fields_are_not_testable():
    for g in (np.zeros((2, 16, 16)), np.ones((2, 16, 16)), np.ones((2, 2, 30))):
        check = trust.gradient_orientation(g, STEP)
        assert check == {"testable": False, "suspect": False}


def test_a_plan_checks_the_first_telling_gradient_once(monkeypatch):
    phi, g = _field(n=(32, 32))
    planes = [np.ones(phi.shape, np.float32)] * 3
    kw = dict(dz=20.0, pixel_size=STEP, energy=300e3, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = ft.Plan(phi.shape, method="icom", **kw)  # its warm-up gradient is flat
        assert plan.gradient_orientation is None
        plan.solve(*planes, gradient=g.astype(np.float32))
    assert plan.gradient_orientation["testable"] and not plan.gradient_orientation["suspect"]
    assert "trust" not in plan.info
    swapped = g[::-1].astype(np.float32)
    with pytest.warns(ft.TrustWarning, match="gradient: .* icom phase from it is wrong"):
        wrong = ft.Plan(phi.shape, method="icom", **kw)
        wrong.solve(*planes, gradient=swapped)
    why = wrong.gradient_orientation["why"]
    assert wrong.info["trust"] == why
    calls = []
    # checked once: later frames are not checked again, and still carry the verdict
    original = trust.gradient_orientation
    monkeypatch.setattr("flowtie_fast.trust.gradient_orientation",
                        lambda *a: calls.append(a) or original(*a))
    wrong.solve(*planes, gradient=swapped)
    assert calls == [] and wrong.info["trust"] == why


def test_the_sign_check_flags_a_gradient_opposite_to_the_tie_gradient_only():
    """Against the TIE gradient: the same gradient passes, its negative is the
    half turn; white noise passes (its correlation is within its spread), and
    a weak anticorrelation (r = -0.1, as where the centre of mass no longer
    follows the phase) passes however many pixels carry it."""
    _, g = _field(n=(64, 64))
    rng = np.random.default_rng(5)
    noise = rng.standard_normal(g.shape) * np.sqrt(np.mean(g ** 2))
    for measured, suspect in ((g, False), (-g, True), (noise, False), (-g + noise, True),
                              (-g + 10 * noise, False)):
        check = trust.gradient_orientation(g, STEP)
        trust.sign_check(check, measured, g)
        assert check["suspect"] is suspect, (check["tie_correlation"], suspect)
        if suspect:
            assert check["correction"] == (180.0, False) and check["misorientation"] == 180.0
    big = _field(n=(256, 256))[1]
    weak = -0.1 * big + rng.standard_normal(big.shape) * np.sqrt(np.mean(big ** 2))
    check = trust.gradient_orientation(big, STEP)
    trust.sign_check(check, weak, big)
    assert -0.2 < check["tie_correlation"] < -0.05 and check["suspect"] is False


@pytest.mark.parametrize("scale,dtype", [(1e200, np.float64), (1e-200, np.float64),
                                         (1e-310, np.float64), (1e38, np.float32),
                                         (1e4, np.float16)])
def test_the_check_does_not_depend_on_the_field_s_scale(scale, dtype):
    """Squares of values beyond 1e154 overflow and below 1e-154 lose their
    digits in float64, and the 2x2 block sums of float32 or float16 values
    near their largest overflow: the field is taken to about 1 first."""
    _, g = _field()
    right, wrong = g / np.abs(g).max(), rotate_com(g, 90.0, False) / np.abs(g).max()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warnings either
        ok = trust.gradient_orientation((right * scale).astype(dtype), STEP)
        bad = trust.gradient_orientation((wrong * scale).astype(dtype), STEP)
    assert ok["testable"] and not ok["suspect"]
    assert bad["suspect"] and bad["misorientation"] > 80


@pytest.mark.parametrize("gradient,pixel_size", [
    (np.zeros((3, 16, 16)), STEP), (np.zeros((2, 16)), STEP), (np.zeros((2, 2, 16, 16)), STEP),
    (np.zeros((2, 16, 16), object), STEP), (np.zeros((2, 16, 16), complex), STEP),
    (None, STEP), (np.zeros((2, 16, 16)), (-0.25, 0.31)), (np.zeros((2, 16, 16)), (0.1, 0.2, 0.3)),
    (np.zeros((2, 16, 16)), "0.25")])
def test_what_is_not_a_gradient_is_refused(gradient, pixel_size):
    with pytest.raises(ft.InputError):
        trust.gradient_orientation(gradient, pixel_size)


def test_a_list_and_a_scalar_pixel_size_are_read():
    _, g = _field()
    check = trust.gradient_orientation(rotate_com(g, 90.0, False).tolist(), 0.25)
    assert check["suspect"]


def test_a_plan_checks_again_after_a_gradient_that_cannot_tell(monkeypatch):
    """A first frame of noise cannot tell a turn: the plan checks the next
    ones, and finds the 90° turn there; after ORIENTATION_CHECKS untelling
    frames it checks one frame in that many, and still finds it."""
    phi, g = _field(n=(32, 32))
    planes = [np.ones(phi.shape, np.float32)] * 3
    rng = np.random.default_rng(2)
    plan = ft.Plan(phi.shape, method="icom", dz=20.0, pixel_size=STEP, energy=300e3,
                   backend="cpu")
    with pytest.warns(ft.TrustWarning, match="mostly noise"):  # what it is: no turn told
        plan.solve(*planes, gradient=rng.standard_normal(g.shape).astype(np.float32))
    assert plan.gradient_orientation["testable"] is False
    assert plan.info["trust"].startswith("icom: the measured gradient's phase may be mostly")
    with pytest.warns(ft.TrustWarning, match="gradient: "):
        plan.solve(*planes, gradient=rotate_com(g, 90.0, False).astype(np.float32))
    assert plan.gradient_orientation["suspect"] and "trust" in plan.info
    monkeypatch.setattr(ft.plan, "ORIENTATION_CHECKS", 3)
    noisy = ft.Plan(phi.shape, method="icom", dz=20.0, pixel_size=STEP, energy=300e3,
                    backend="cpu")
    for _ in range(3):
        noisy.solve(*planes, gradient=rng.standard_normal(g.shape).astype(np.float32))
    turned = rotate_com(g, 90.0, False).astype(np.float32)
    noisy.solve(*planes, gradient=turned)
    assert noisy.gradient_orientation["testable"] is False  # not checked at every frame
    noisy.solve(*planes, gradient=turned)
    with pytest.warns(ft.TrustWarning, match="gradient: "):  # one in ORIENTATION_CHECKS
        noisy.solve(*planes, gradient=turned)
    assert noisy.gradient_orientation["suspect"] and "trust" in noisy.info


def test_a_refused_call_leaves_the_plan_s_check_as_it_was():
    phi, g = _field(n=(32, 32))
    planes = [np.ones(phi.shape, np.float32)] * 3
    plan = ft.Plan(phi.shape, method="icom", dz=20.0, pixel_size=STEP, energy=300e3,
                   backend="cpu")
    with pytest.raises(ft.InputError, match="out"):
        plan.solve(*planes, gradient=g[::-1].astype(np.float32),
                   out=np.empty(phi.shape, np.float64))
    assert plan.gradient_orientation is None
    plan.solve(*planes, gradient=g.astype(np.float32))
    assert plan.gradient_orientation["testable"] and "trust" not in plan.info


def test_each_thread_reads_its_own_solve_s_info():
    """One plan shared by threads: plan.info after a solve is that thread's
    solve's verdict, not the latest of any thread."""
    import threading
    import time

    phi, g = _field(n=(32, 32))
    planes = [np.ones(phi.shape, np.float32)] * 3
    plan = ft.Plan(phi.shape, method="icom", dz=20.0, pixel_size=STEP, energy=300e3,
                   backend="cpu")
    seen, barrier = {}, threading.Barrier(2)

    def run(name, info):
        barrier.wait()
        for _ in range(50):
            plan.solve(*planes, gradient=g.astype(np.float32))
            mine = plan.info
            time.sleep(0.002)  # the other thread solves meanwhile
            info.append(plan.info is mine)

    threads = [threading.Thread(target=run, args=(n, seen.setdefault(n, []))) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": [True] * 50, "b": [True] * 50}


def test_a_negated_gradient_given_with_its_planes_is_caught_by_their_tie_phase():
    """A gradient of the wrong sign has no curl; the planes' TIE phase tells."""
    from flowtie_fast.simulation.optics import defocus_triplet, gaussian_bumps

    phi = gaussian_bumps(64, 0.3, 12, 0.4, (0.8, 2.0), seed=3)
    t = defocus_triplet(phi, 40.0, 0.3, 300e3)
    q = np.fft.fftfreq(64, 0.3) * 2j * np.pi
    spectrum = np.fft.fft2(phi)
    g = np.stack([np.fft.ifft2(q[:, None] * spectrum).real,
                  np.fft.ifft2(q[None, :] * spectrum).real])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = ft.FocalTriplet(*t.planes, dz=40.0, pixel_size=0.3, energy=300e3, gradient=g)
    assert right.gradient_orientation["tie_correlation"] > 0.9
    with pytest.warns(ft.TrustWarning, match="half a turn wrong.* turn it by 180°"):
        wrong = ft.FocalTriplet(*t.planes, dz=40.0, pixel_size=0.3, energy=300e3, gradient=-g)
    assert wrong.gradient_orientation["suspect"]
    # the same evidence reads as -dz and +dz swapped: the TIE methods' info
    # says their phase may be the negative one (it said nothing)
    for method in ("tie-uniform", "tie", "tie-exact", "gd"):
        rec = ft.reconstruct(wrong, method=method, backend="cpu")
        assert rec.info["trust"].startswith(f"{method}: the measured gradient points against "
                                            "this phase's: either the detector rotation is "
                                            "half a turn wrong"), rec.info
        assert "the -dz and +dz scans are swapped (this one is)" in rec.info["trust"]


def test_the_sign_check_reads_any_scale_and_refuses_unlike_shapes():
    _, g = _field()
    for scale in (1e-200, 1.0, 1e200):
        check = trust.gradient_orientation(g, STEP)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow
            trust.sign_check(check, g * scale, g * scale)
        assert check["tie_correlation"] == pytest.approx(1.0)
    with pytest.raises(ft.InputError, match="tie_gradient: expected the shape of gradient"):
        trust.sign_check(trust.gradient_orientation(g, STEP), g, g[:, :8])


def test_a_plan_flags_a_negated_gradient_against_its_planes_tie_phase():
    """A gradient negated (or turned by 180°) has no curl; the plan compares
    the first telling one with the TIE gradient of the planes given with it,
    as a triplet does: icom says so in plan.info, flowtie falls back to the
    TIE, and a batched network pass says so too. The right sign passes."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz, pixel_size=pixel, energy=energy, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = ft.Plan(phi.shape, method="icom", **kw)
        phase = right.solve(*planes, gradient=g.astype(np.float32))
    assert right.gradient_orientation["tie_correlation"] > 0.9
    assert rel_rms(phase, phi) < 0.05 and "trust" not in right.info
    negated = (-g).astype(np.float32)
    with pytest.warns(ft.TrustWarning, match="180"):
        wrong = ft.Plan(phi.shape, method="icom", **kw)
        wrong.solve(*planes, gradient=negated)
    assert wrong.gradient_orientation["suspect"]
    assert wrong.gradient_orientation["tie_correlation"] < -0.9
    assert wrong.info["trust"] == wrong.gradient_orientation["why"]
    with pytest.warns(ft.TrustWarning):
        flow = ft.Plan(phi.shape, method="flowtie", **kw)
        flow.solve(*planes, gradient=negated)
    assert flow.info["fallback"] == "tie"
    with pytest.warns(ft.TrustWarning, match="180"):
        batch = ft.Plan(phi.shape, method="flowtie", uncertainty=False, **kw)
        batch.solve_batch(np.stack([planes, planes]), gradient=np.stack([negated, negated]))
    assert batch.info["trust"] == batch.gradient_orientation["why"]


@pytest.mark.parametrize("factor, says", [(10.0, r"0\.10\d times the measured"),
                                           (0.1, r"10\.\d times the measured"),
                                           (1 / (2 * np.pi), r"6\.\d+ times the measured"),
                                           (0.001, r"10\d\d times the measured")])
def test_a_gradient_and_planes_of_different_scales_are_said_so_by_every_method(factor, says):
    """A gradient in rad/nm, in cycles or scaled by a calibration given wrong
    has the right pattern at the wrong scale: icom's phase is that many
    times the phase. The TIE phase of the planes has the scale the defocus
    and the energy give; the triplet and the plan compare the two and warn.
    Which of them is wrong the data cannot tell (a dz given wrong scales the
    TIE instead, below): every method's info["trust"] says so, flowtie keeps
    its own phase untrusted. The right gradient, and one 1.5 times off
    (within what thin crystals show), pass."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz, pixel_size=pixel, energy=energy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for near in (1.0, 1.5, 1 / 1.5):
            right = ft.FocalTriplet(*planes, gradient=g * near, **kw)
            low, high = right.gradient_orientation["tie_scale"]
            assert low <= high and high / low < 1.05
            assert low * (1 - 1e-6) <= 1 / near <= high * (1 + 1e-6)
            assert "misscaled" not in right.gradient_orientation
            assert "trust" not in ft.reconstruct(right, method="icom", backend="cpu").info
    with pytest.warns(ft.TrustWarning, match=f"^gradient and planes disagree in scale: the "
                                             f"bright-field TIE phase of the planes has a "
                                             f"gradient {says}.*unit or calibration"):
        wrong = ft.FocalTriplet(*planes, gradient=g * factor, **kw)
    check = wrong.gradient_orientation
    assert check["misscaled"] == pytest.approx(1 / factor, rel=0.05)
    assert not check["suspect"]  # its orientation is right
    why = trust.scale_warning(check)
    for method in ("icom", "tie", "tie-exact"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            rec = ft.reconstruct(wrong, method=method, backend="cpu")
        assert rec.info["trust"].startswith(why), method
    with pytest.warns(ft.TrustWarning, match=says):
        plan = ft.Plan(phi.shape, method="flowtie", backend="cpu", **kw)
        u = np.full(phi.shape, 7.0, np.float32)
        phase = plan.solve(*planes, gradient=(g * factor).astype(np.float32),
                           uncertainty_out=u)
    assert plan.gradient_orientation["misscaled"] == pytest.approx(1 / factor, rel=0.05)
    # the flow where the trust check passed it, else the weaker of the two
    # classical phases: wrong by at most about its own size
    weaker = "tie" if factor > 1 else "icom"
    assert plan.info["trusted"] is False and plan.info.get("fallback") in (None, weaker)
    assert plan.info["trust"].startswith(why)
    assert np.isfinite(phase).all()
    # and no uncertainty map: the models' spread does not see a scale given wrong
    assert np.all(u == trust.NO_UNCERTAINTY)
    assert plan.info["uncertainty"].startswith("none: ")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(wrong, method="flowtie", backend="cpu")
    assert rec.uncertainty is None and rec.info["trusted"] is False
    with pytest.warns(ft.TrustWarning, match=says):
        batch = ft.Plan(phi.shape, method="flowtie", uncertainty=False, backend="cpu", **kw)
        batch.solve_batch(np.stack([planes, planes]),
                          gradient=np.stack([g * factor, g * factor]).astype(np.float32))
    assert batch.info["trusted"] is False and batch.info["trust"].startswith(why)


def test_a_defocus_given_wrong_is_said_by_every_method_and_does_not_blame_the_gradient():
    """The right gradient with dz given 10 times too small: the TIE phases
    are 10 times too large. The scale check cannot tell which side is wrong
    and names both; the TIE methods say so (before it, their comparison
    with the gradient did), and flowtie is not trusted."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz / 10, pixel_size=pixel, energy=energy)
    with pytest.warns(ft.TrustWarning, match=r"disagree in scale.*the planes' \(dz, energy\)"):
        t = ft.FocalTriplet(*planes, gradient=g.astype(np.float32), **kw)
    assert t.gradient_orientation["misscaled"] == pytest.approx(10, rel=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        tie = ft.reconstruct(t, method="tie", backend="cpu")
        icom = ft.reconstruct(t, method="icom", backend="cpu")
        flow = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert rel_rms(tie.phase, phi) > 5 and "disagree in scale" in tie.info["trust"]
    assert rel_rms(icom.phase, phi) < 0.05 and "disagree in scale" in icom.info["trust"]
    assert flow.info["trusted"] is False and flow.info["fallback"] == "icom"
    assert flow.info["trust"].startswith("gradient and planes disagree in scale")
    # the weaker of the two phases, here the right one (the TIE's is 10 times it)
    assert np.allclose(flow.phase, icom.phase, atol=1e-5 * np.abs(icom.phase).max())


def test_the_scale_check_keeps_quiet_where_the_two_gradients_do_not_agree():
    """Noise in the gradient widens the bracket of the scale instead of
    biasing it: a right gradient buried in noise is never judged misscaled,
    and one that shares nothing with the planes is not compared."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz) for s in (-1, 0, 1)]
    tie = trust.plain_tie_gradient(planes, (-1 / (2 * dz), 0, 1 / (2 * dz)), (0, 1, 0),
                                   ft.wavenumber(energy), pixel)
    rng = np.random.default_rng(1)
    for noise in (0.5, 2.0, 8.0):
        noisy = g + noise * g.std() * rng.standard_normal(g.shape)
        check = trust.gradient_orientation(noisy, pixel)
        trust.sign_check(check, noisy, tie)
        assert "misscaled" not in check, (noise, check["tie_scale"])
        if check["tie_scale"] is not None:
            low, high = check["tie_scale"]
            assert low <= 1.0 <= high
    unrelated = rng.standard_normal(g.shape) * g.std()
    check = trust.gradient_orientation(unrelated, pixel)
    trust.sign_check(check, unrelated, tie)
    assert check["tie_scale"] is None and "misscaled" not in check


def test_a_thread_sharing_a_plan_waits_for_the_sign_check_under_way(monkeypatch):
    """Two threads give a shared plan a negated gradient at once: the one that
    comes while the other's check compares the sign does not read that check
    half done (curl-free, not yet suspect) and return the negative phase
    without a word."""
    import threading
    import time

    from fields import periodic_field

    from flowtie_fast import plan as plan_module

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    negated = (-g).astype(np.float32)
    plan = ft.Plan(phi.shape, method="icom", dz=dz, pixel_size=pixel, energy=energy,
                   backend="cpu")
    comparing = threading.Event()
    reference = plan_module.plain_tie_gradient

    def slow_reference(*args):  # the first check's comparison takes a while
        comparing.set()
        time.sleep(0.3)
        return reference(*args)

    monkeypatch.setattr(plan_module, "plain_tie_gradient", slow_reference)
    said = {}

    def run(name):
        plan.solve(*planes, gradient=negated)
        said[name] = plan.info.get("trust")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = threading.Thread(target=run, args=("first",))
        first.start()
        assert comparing.wait(30)
        run("second")
        first.join()
    assert plan.gradient_orientation["suspect"]
    why = plan.gradient_orientation["why"]
    assert said == {"first": why, "second": why}
    # the check ran once: its warning once, then each icom solve says so
    assert sum(str(w.message) == why for w in caught) == 1


def test_planes_the_solve_refuses_leave_no_sign_verdict():
    """The sign check reads the planes; a call refused for them (here: -dz and
    +dz swapped, and a negative pixel) must not leave its verdict to flag the
    right data that follow."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    g = g.astype(np.float32)
    bad = [planes[2], planes[1], planes[0].copy()]
    bad[2][3, 5] = -1.0
    for method in ("icom", "tie"):
        plan = ft.Plan(phi.shape, method=method, dz=dz, pixel_size=pixel, energy=energy,
                       backend="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ft.InputError, match="plus: expected non-negative"):
                plan.solve(*bad, gradient=g)
            assert plan.gradient_orientation is None
            plan.solve(*planes, gradient=g)
        assert plan.gradient_orientation["tie_correlation"] > 0.9
        assert "trust" not in plan.info


def test_a_plan_of_other_than_bright_field_images_says_so_and_skips_the_sign_check():
    """The sign of a measured gradient is checked against the planes' TIE
    phase only where the planes are bright-field images (the contrast of
    'abf' and 'df' images does not follow the phase: a plan given them with
    the right gradient flagged a half turn on most corpus files). A plan told
    its planes are 'df' images skips that check, and its TIE methods say
    their phase is not the specimen's; a name it does not know is refused."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz, pixel_size=pixel, energy=energy, backend="cpu")
    negated = (-g).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dark = ft.Plan(phi.shape, method="icom", virtual="df", **kw)
        dark.solve(*planes, gradient=negated)
    assert dark.gradient_orientation["testable"] and not dark.gradient_orientation["suspect"]
    assert "tie_correlation" not in dark.gradient_orientation and "trust" not in dark.info
    with pytest.warns(ft.TrustWarning, match=r"virtual='abf'"):
        ft.Plan(phi.shape, method="icom", **kw).solve(*planes, gradient=negated)
    with pytest.warns(ft.TrustWarning, match=r"^tie: the planes are 'df' images"):
        tie = ft.Plan(phi.shape, method="tie", virtual="df", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, by the plan
        tie.solve(*planes)
    assert "'df' images" in tie.info["trust"]
    with pytest.raises(ft.InputError, match="^virtual: "):
        ft.Plan(phi.shape, method="icom", virtual="dark", **kw)


def test_a_triplet_of_other_than_bright_field_images_skips_the_sign_check():
    """A triplet told its planes are 'df' images (as one loaded from a file
    that records it) checks its gradient for curl, not for its sign against
    the planes' TIE phase, as a plan does; a name it does not know is
    refused."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz, pixel_size=pixel, energy=energy, gradient=(-g).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dark = ft.FocalTriplet(*planes, virtual="df", **kw)
    assert dark.virtual == "df" and dark.gradient_orientation["testable"]
    assert "tie_correlation" not in dark.gradient_orientation
    with pytest.warns(ft.TrustWarning, match="half a turn wrong"):
        bright = ft.FocalTriplet(*planes, virtual="bf", **kw)
    assert bright.gradient_orientation["suspect"]
    with pytest.raises(ft.InputError, match=r"^virtual: expected one of \('bf', 'bf-full', "
                                            r"'abf', 'df', 'whole'\), got 'dark'$"):
        ft.FocalTriplet(*planes, virtual="dark", **kw)


def test_a_plans_orientation_warning_names_the_line_that_called_solve():
    """The TrustWarning of a misoriented gradient given to Plan.solve named a
    line of plan.py (the solve's own call of its body) instead of the
    caller's."""
    from fields import periodic_field

    pixel = (0.2, 0.25)
    phi, intensity, _, g = periodic_field((96, 80), pixel)
    planes = [intensity.astype(np.float32)] * 3
    turned = np.ascontiguousarray(np.stack([g[1], -g[0]])).astype(np.float32)  # 90°
    plan = ft.Plan(phi.shape, pixel, 20.0, 300e3, method="icom", backend="cpu", warmup=False)
    with pytest.warns(ft.TrustWarning, match="of its power is curl") as caught:
        plan.solve(*planes, gradient=turned)
    assert [w.filename for w in caught] == [__file__]


def test_noise_in_the_planes_does_not_make_a_right_gradient_read_misscaled():
    """The bracket of the scale is unbiased by noise, but not free of it: the
    TIE gradient of noisy planes carries the noise amplified at low spatial
    frequencies (1/q), few independent values, and the low end Σab/Σaa moves
    by several times the true scale from one noise draw to the next. A weak
    phase (0.05 rad) with the right gradient, planes at 10 % noise (100
    counts a pixel, told to the triplet): the check read the TIE gradient
    as 23-26 times the gradient (bracket from 3.2-8 up) on 16 of 40 draws,
    and every method's info["trust"] blamed a unit or calibration. A right
    calibration must not be flagged by noise alone."""
    n, pixel, dz, energy = 64, 0.2, 20.0, 300e3
    y, x = np.mgrid[:n, :n] * pixel
    phi = 0.05 * (np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 8.0)
                  + 0.3 * np.exp(-((x - 3.8) ** 2 + (y - 8.3) ** 2) / 4.0))
    q = 2 * np.pi * np.fft.fftfreq(n, pixel)
    kz = (q[:, None] ** 2 + q[None, :] ** 2) / (2 * ft.wavenumber(energy))
    wave = np.fft.fft2(np.exp(1j * phi))
    clean = [np.abs(np.fft.ifft2(wave * np.exp(-1j * z * kz))) ** 2 for z in (-dz, 0.0, dz)]
    g = np.stack(np.gradient(phi, pixel))
    flagged = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        planes = [p + rng.normal(0, 0.1, p.shape) for p in clean]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            t = ft.FocalTriplet(*planes, dz=dz, pixel_size=pixel, energy=energy,
                                gradient=g, noise=0.01)
        if "misscaled" in t.gradient_orientation:
            flagged.append((seed, t.gradient_orientation["tie_scale"]))
    assert not flagged


def test_a_plan_told_a_triplet_s_scale_verdict_gives_reconstruct_s():
    """``plan.solve(*t.planes, gradient=t.gradient, **triplet_records(t))``
    gives the verdict ``reconstruct(t)`` gives: since the scale verdict is
    no longer an orientation suspicion, the plan read only the suspicion of
    the record given and dropped the triplet's scale verdict where its own
    check did not run again (a plan that had checked a right gradient
    before, as reconstruct_many's plans of a batch): a gradient 10 times off
    came back without a word."""
    from fields import periodic_field
    from flowtie_fast.plan import triplet_records

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    kw = dict(dz=dz, pixel_size=pixel, energy=energy)
    right = ft.FocalTriplet(*planes, gradient=g.astype(np.float32), **kw)
    with pytest.warns(ft.TrustWarning, match="disagree in scale"):
        wrong = ft.FocalTriplet(*planes, gradient=(g * 10).astype(np.float32), **kw)
    why = trust.scale_warning(wrong.gradient_orientation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        expected = ft.reconstruct(wrong, method="icom", backend="cpu").info["trust"]
        plan = ft.Plan(phi.shape, method="icom", backend="cpu", **kw)
        plan.solve(*right.planes, gradient=right.gradient, **triplet_records(right))
        plan.solve(*wrong.planes, gradient=wrong.gradient, **triplet_records(wrong))
    assert expected.startswith(why)
    assert plan.info.get("trust") == expected
    broken = {**wrong.gradient_orientation, "tie_scale": None}
    with pytest.raises(ft.InputError, match="^orientation: a scale verdict"):
        plan.solve(*wrong.planes, gradient=wrong.gradient, orientation=broken)


def test_a_plan_s_scale_verdict_is_the_check_s_it_solves_with():
    """Plan.solve took the orientation verdict from its check under the
    lock, then read ``plan.gradient_orientation`` again, unlocked, for the
    scale verdict: another thread's reset_orientation (or check of another
    gradient) in between left a solve of a gradient 10 times off without
    its verdict, though its own check had warned. Here the other thread's
    reset falls in that window."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    plan = ft.Plan(phi.shape, method="icom", backend="cpu", dz=dz, pixel_size=pixel,
                   energy=energy)
    checked = plan._orientation

    def then_another_thread_resets(*args, **kwargs):
        found = checked(*args, **kwargs)
        plan.reset_orientation()
        return found

    plan._orientation = then_another_thread_resets
    with pytest.warns(ft.TrustWarning, match="disagree in scale"):
        plan.solve(*planes, gradient=(g * 10).astype(np.float32))
    assert plan.info["trust"].startswith("gradient and planes disagree in scale")


def test_a_plan_checks_its_gradient_again_once_the_recheck_time_has_passed(monkeypatch):
    """A Plan kept its first telling verdict for every later frame: a
    gradient negated or scaled 10 times in the middle of a run (a calibration
    changed) went unseen, and a bad first frame left every later right one
    flagged. The check is made again once ORIENTATION_RECHECK_S have passed."""
    from fields import periodic_field

    from flowtie_fast import plan as plan_module

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    right, negated = g.astype(np.float32), (-g).astype(np.float32)
    plan = ft.Plan(phi.shape, method="icom", dz=dz, pixel_size=pixel, energy=energy,
                   backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan.solve(*planes, gradient=right)
        plan.solve(*planes, gradient=negated)  # within the time: the verdict stands
    assert "trust" not in plan.info
    monkeypatch.setattr(plan_module, "ORIENTATION_RECHECK_S", 0.0)
    with pytest.warns(ft.TrustWarning, match="180"):
        plan.solve(*planes, gradient=negated)
    assert plan.info["trust"] == plan.gradient_orientation["why"]
    with pytest.warns(ft.TrustWarning, match="disagree in scale"):
        plan.solve(*planes, gradient=10 * right)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phase = plan.solve(*planes, gradient=right)  # right again: the alarm is cleared
    assert "trust" not in plan.info and rel_rms(phase, phi) < 0.05


def test_an_icom_plan_reads_no_verdict_from_planes_with_a_dropped_row():
    """An icom plan's planes feed only its orientation check; planes with a
    dropped row (which every solve of a phase from them refuses) went into
    it unscreened. They give no verdict now, and the icom phase stands."""
    from fields import periodic_field

    pixel, energy, dz = (0.2, 0.25), 300e3, 20.0
    phi, intensity, didz, g = periodic_field(shape=(64, 64), pixel=pixel, energy=energy)
    planes = [(intensity + s * dz * didz).astype(np.float32) for s in (-1, 0, 1)]
    planes[2][40] = 0
    plan = ft.Plan(phi.shape, method="icom", dz=dz, pixel_size=pixel, energy=energy,
                   backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        phase = plan.solve(*planes, gradient=g.astype(np.float32))
    assert plan.gradient_orientation is None and rel_rms(phase, phi) < 0.05
    tie = ft.Plan(phi.shape, method="tie", dz=dz, pixel_size=pixel, energy=energy,
                  backend="cpu")
    with pytest.raises(ft.InputError, match="^plus: row 40"):
        tie.solve(*planes, gradient=g.astype(np.float32))
    assert tie.gradient_orientation is None  # a refused call leaves no verdict either


def test_a_transposed_scan_of_a_smooth_specimen_is_caught_without_noise():
    """Scan axes given as (x, y): a smooth phase's gradient, transposed, has
    12 % of its power as curl against none at its least-curl orientation, but
    over 32² px a share times √n stays under the white-noise significance
    limit: icom returned NMSE 1.38 without a word. Where the given curl
    exceeds the least by many times the least, it is suspect."""
    h, n = 0.2, 32
    y, x = np.mgrid[:n, :n] * h
    phi = (0.3 * np.sin(2 * np.pi * y / 4.8) * np.cos(2 * np.pi * x / 6.4)
           + 0.25 * np.exp(-((y - 3) ** 2 + (x - 4) ** 2) / 2)
           + 0.15 * np.exp(-((y - 4.5) ** 2 + (x - 1.5) ** 2) / 0.5))
    g = np.stack(np.gradient(phi, h, h))
    check = trust.gradient_orientation(np.stack([g[0].T, g[1].T]), (h, h))
    assert check["significance"] < trust.calibration()["orientation_significance"]
    assert check["suspect"] and check["misorientation"] == 90.0
    assert not trust.gradient_orientation(g, (h, h))["suspect"]
    noisy = g + np.random.default_rng(0).normal(0, 0.05 * g.std(), g.shape)
    assert not trust.gradient_orientation(noisy, (h, h))["suspect"]
    with pytest.warns(ft.TrustWarning, match=r"the scan's axes given as \(x, y\)"):
        ft.FocalTriplet(*[np.ones((n, n))] * 3, dz=20.0, pixel_size=h, energy=300e3,
                        gradient=np.stack([g[0].T, g[1].T]))
