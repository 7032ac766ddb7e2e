"""The classical focal-derivative methods say when their phase may be wrong:
against the measured gradient where there is one, and when ``tie-exact``
stops before its tolerance."""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
from fields import grid, neumann_field, rel_rms

import flowtie_fast as ft
from flowtie_fast import trust

E = 300e3
PIXEL = (0.2, 0.25)
FOCAL = ("tie-uniform", "tie", "tie-exact", "gd")


def _window(stray):
    """A non-periodic window whose phase is the Neumann field, with its exact
    gradient, and planes whose focal derivative carries, besides the phase's,
    a smooth change the phase does not explain: ``stray`` times a half-period
    cosine across the window, in units of the phase's own derivative (the
    illumination changing between the scans, say)."""
    phi, intensity, didz, grad = neumann_field(contrast=0.0)
    _, x = np.broadcast_arrays(*grid(phi.shape, PIXEL, centred=True))
    lx = phi.shape[1] * PIXEL[1]
    didz = didz + stray * np.abs(didz).max() * np.cos(np.pi * x / lx)
    planes = [intensity + s * 10.0 * didz for s in (-1, 0, 1)]
    return ft.FocalTriplet(*planes, dz=10.0, pixel_size=PIXEL, energy=E, gradient=grad), phi


def _solve(t, method, **kw):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rec = ft.reconstruct(t, method=method, boundary="mirror", backend="cpu",
                             dtype="float64", **kw)
    return rec, [w for w in seen if issubclass(w.category, ft.TrustWarning)]


@pytest.mark.parametrize("method", FOCAL)
def test_a_phase_the_gradient_confirms_passes_quietly(method):
    t, phi = _window(stray=0.0)
    rec, seen = _solve(t, method)
    assert rel_rms(rec.phase, phi) < 0.01
    assert rec.info["icom_disagreement"] < 0.01
    assert seen == [] and "trust" not in rec.info


@pytest.mark.parametrize("method", FOCAL)
def test_a_focal_derivative_the_gradient_contradicts_is_flagged(method):
    t, phi = _window(stray=0.5)
    rec, seen = _solve(t, method)
    # The stray change, integrated twice over the window, swamps the phase ...
    assert rel_rms(rec.phase, phi) > 2
    # ... the centre of mass does not see it, and the disagreement says so.
    icom, _ = _solve(t, "icom")
    assert rel_rms(icom.phase, phi) < 0.05
    assert rec.info["icom_disagreement"] > trust.calibration()["classical_disagreement_limit"]
    assert len(seen) == 1 and method in str(seen[0].message)
    assert rec.info["trust"] == str(seen[0].message)


def _neumann_triplet():
    """The Neumann test field's phase and a triplet 10 Å either side of focus."""
    phi, intensity, didz, _ = neumann_field(contrast=0.3)
    return phi, ft.FocalTriplet(*[intensity + s * 10.0 * didz for s in (-1, 0, 1)],
                                dz=10.0, pixel_size=PIXEL, energy=E)


def test_no_gradient_no_check():
    phi, t = _neumann_triplet()
    rec, seen = _solve(t, "tie")
    assert "icom_disagreement" not in rec.info and seen == []


def test_a_bad_gradient_is_refused_before_the_solve():
    t, _ = _window(stray=0.0)
    plan = ft.Plan(t.shape, t.pixel_size, dz=10.0, energy=E, method="tie", backend="cpu",
                   boundary="mirror", dtype="float64")
    out = np.full(t.shape, 7.0)
    bad = np.asarray(t.gradient).copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ft.InputError, match="gradient"):
        plan.solve(*t.planes, gradient=bad, out=out)
    assert (out == 7.0).all()  # nothing written


def test_the_plan_checks_as_reconstruct_does():
    t, _ = _window(stray=0.5)
    plan = ft.Plan(t.shape, t.pixel_size, dz=10.0, energy=E, method="tie", backend="cpu",
                   boundary="mirror", dtype="float64")
    with pytest.warns(ft.TrustWarning, match="centre of mass"):
        plan.solve(*t.planes, gradient=t.gradient)
    assert plan.info["icom_disagreement"] > 1


def test_disagreement_scale():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(16, 16))
    assert trust.disagreement(ref + 3.0, ref) == pytest.approx(0.0, abs=1e-12)
    assert trust.disagreement(np.zeros_like(ref), ref) == pytest.approx(1.0)
    assert trust.disagreement(-ref, ref) == pytest.approx(4.0)
    assert trust.disagreement(ref, np.zeros_like(ref)) == np.inf
    assert trust.disagreement(np.zeros_like(ref), np.zeros_like(ref)) == 0.0


def test_tie_exact_that_stops_early_says_so():
    phi, t = _neumann_triplet()
    rec, seen = _solve(t, "tie-exact", max_iter=1, tol=1e-14)
    assert not rec.info["converged"]
    assert len(seen) == 1 and "stopped after 1 iterations (max_iter)" in str(seen[0].message)
    assert "the phase is the iterate of that residual" in str(seen[0].message)
    done, quiet = _solve(t, "tie-exact")
    assert done.info["converged"] and quiet == []


@pytest.mark.parametrize("preconditioner, warned", [("biharmonic", False), ("none", True)])
def test_gd_stopped_by_max_iter_warns_only_far_from_the_solution(preconditioner, warned):
    """Stopped by max_iter, the biharmonic descent is already at the solution
    (no warning); the plain descent is 98 % away (warned, and the estimate of
    the distance says it is not close)."""
    phi, t = _neumann_triplet()
    rec, seen = _solve(t, "gd", preconditioner=preconditioner, max_iter=40, tol=1e-300)
    assert not rec.info["converged"]
    error = rel_rms(rec.phase, phi)
    if warned:
        assert error > 0.5 and rec.info["distance"] > 0.01
        assert len(seen) == 1 and "stopped after 40 iterations" in str(seen[0].message)
    else:
        assert error < 1e-3 and rec.info["distance"] < 1e-3
        assert seen == [] and "trust" not in rec.info


def test_icom_of_a_gradient_that_is_all_noise_says_its_phase_is_zero():
    rng = np.random.default_rng(0)
    flat = np.ones((32, 32))
    t = ft.FocalTriplet(flat, flat, flat, dz=10.0, pixel_size=0.3, energy=E,
                        gradient=rng.normal(size=(2, 32, 32)))
    t.gradient_noise = ft.Noise((4.0, 4.0), "given")  # above the noise: nothing
    with pytest.warns(ft.TrustWarning, match="no phase above its noise") as seen:
        rec = ft.reconstruct(t, method="icom", backend="cpu")
    assert len(seen) == 1 and rec.info["denoise"] == 0
    assert not np.any(rec.phase) and rec.info["trust"] == str(seen[0].message)
    t.gradient_noise = ft.Noise((1e-6, 1e-6), "given")  # all of it kept: no word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.any(ft.reconstruct(t, method="icom", backend="cpu").phase)


def test_flowtie_falls_back_to_the_tie_where_the_gradient_holds_no_phase_above_its_noise():
    """A measured gradient that is all noise gave the zero phase as flowtie's
    'icom' fallback, with the TIE phase said to contradict it ('inf times its
    variance'); the TIE phase is returned instead, and the warning says why."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    n = 64
    y, x = np.mgrid[:n, :n]
    s = np.sin(2 * np.pi * x / 16) * np.cos(2 * np.pi * y / 16)
    planes = [rng.poisson(2000 * (1 + 0.05 * c * s)).astype(np.uint16) for c in (-1, 0, 1)]
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.5, energy=E,
                        gradient=1e-3 * rng.standard_normal((2, n, n)))
    t.gradient_noise = ft.Noise((1e-6, 1e-6), "given")
    with pytest.warns(ft.TrustWarning, match=r"returned the tie phase instead; the measured "
                      r"gradient holds no phase above its noise"):
        rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert rec.info["fallback"] == "tie" and np.any(rec.phase)
    assert rec.info.get("icom_disagreement") is None


def test_a_constant_measured_gradient_is_not_integrated_to_a_flat_phase_without_a_word():
    """A centre-of-mass channel left at zero (or at one constant: a tilt, an
    offset) holds no phase: icom integrated it to the zero phase without a
    word, while the planes carry a 0.4 rad phase, through reconstruct and
    through a Plan alike; flowtie, not trusted, fell back to that zero phase
    (its warning said the TIE phase contradicts it 'inf times') where a
    gradient found all noise makes it return the TIE phase. A constant
    gradient, whatever its noise record, is said so and treated as one
    that holds no phase."""
    n, pixel, dz = 64, 0.2, 20.0
    y, x = np.mgrid[:n, :n] * pixel
    phi = 0.5 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 8.0)
    q = 2 * np.pi * np.fft.fftfreq(n, pixel)
    kz = (q[:, None] ** 2 + q[None, :] ** 2) / (2 * ft.wavenumber(E))
    wave = np.fft.fft2(np.exp(1j * phi))
    planes = [(np.abs(np.fft.ifft2(wave * np.exp(-1j * z * kz))) ** 2).astype(np.float32)
              for z in (-dz, 0.0, dz)]
    for constant in (np.zeros((2, n, n), np.float32), np.full((2, n, n), 0.1, np.float32)):
        t = ft.FocalTriplet(*planes, dz=dz, pixel_size=pixel, energy=E, gradient=constant)
        with pytest.warns(ft.TrustWarning, match="gradient is constant"):
            rec = ft.reconstruct(t, method="icom", backend="cpu")
        assert "gradient is constant" in rec.info["trust"]
        plan = ft.Plan((n, n), pixel_size=pixel, dz=dz, energy=E, method="icom",
                       backend="cpu")
        with pytest.warns(ft.TrustWarning, match="gradient is constant"):
            plan.solve(*planes, gradient=constant)
        assert "gradient is constant" in plan.info["trust"]
    if importlib.util.find_spec("torch") is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    if rec.info["trusted"] is False:
        assert rec.info["fallback"] == "tie" and np.any(rec.phase)


def test_tie_exact_below_the_working_precision_returns_its_best_iterate():
    """A float32 tie-exact solve asked for a tol below float32's floor kept
    iterating past it: the recursion lost conjugacy, the residual grew, and
    the last iterate came back (NMSE from 3e-9 to 5e8 between max_iter 40 and
    80, a refusal at 100, the advice a larger max_iter), or ran for hours
    with tol 1e-30. It stops where the residual stalls or grows, returns the
    iterate of least residual, and says nothing where that is at the
    working precision."""
    from flowtie_fast.simulation.optics import defocus_triplet

    n, px = 128, 0.2
    y, x = np.mgrid[:n, :n] * px
    truth = 0.5 * np.exp(-((x - 12.8) ** 2 + (y - 12.8) ** 2) / 8.0)
    t = defocus_triplet(truth, 20.0, px, E)
    for dtype, tol, max_iter in (("float32", 1e-8, 80), ("float32", 1e-30, 10 ** 7),
                                 ("float64", 1e-30, 10 ** 7)):  # float64: rz underflowed
        with warnings.catch_warnings():
            warnings.simplefilter("error", ft.TrustWarning)
            rec = ft.reconstruct(t, "tie-exact", tol=tol, max_iter=max_iter, backend="cpu",
                                 dtype=dtype)
        assert rel_rms(rec.phase, truth) < 1e-3, (tol, rec.info["stopped"])
        assert rec.info["least_residual"] <= (1e-5 if dtype == "float32" else 1e-10)
        assert rec.info["iterations"] <= 400  # stopped by the stall, not max_iter
        if not rec.info["converged"]:
            assert rec.info["stopped"] in ("stalled", "diverged", "breakdown")


def test_tie_exact_stopped_short_of_the_precision_says_how(monkeypatch):
    """Stalled or diverged above the working precision's floor, the warning
    says which, and that the phase is the iterate of least residual."""
    import flowtie_fast.solvers as solvers

    phi, t = _neumann_triplet()
    monkeypatch.setattr(solvers, "PCG_STALL", 1)  # any iteration short of a tenth stalls
    monkeypatch.setattr(solvers, "PCG_PRECISION", {np.dtype(np.float32): 0.0,
                                                  np.dtype(np.float64): 0.0})
    rec, seen = _solve(t, "tie-exact", tol=1e-30, max_iter=1000)
    assert rec.info["stopped"] in ("stalled", "diverged", "breakdown")
    how = {"stalled": "without a residual a tenth lower", "diverged": "its residual growing",
           "breakdown": "reached zero or lost positivity"}[rec.info["stopped"]]
    assert len(seen) == 1 and how in str(seen[0].message)
    assert "the phase is the iterate of that residual (dtype='float64'" in str(seen[0].message)
