"""Physics of the solvers: analytic fields with known answers, a non-periodic
field, a Fresnel-propagated phase object, gradient descent and iCOM."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fields import neumann_field, periodic_field, rel_rms, triplet_from

import flowtie_fast as ft
from flowtie_fast import testing as reference
from flowtie_fast import trust
from flowtie_fast.simulation.optics import defocus_series, defocus_triplet, gaussian_bumps

E = 300e3
PIXEL = (0.2, 0.25)
TOL = {"float64": 1e-4, "float32": 1e-3}


def host(x):
    return x.get() if type(x).__module__.startswith("cupy") else np.asarray(x)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tie_exact_recovers_the_analytic_phase(backend, dtype):
    phi, intensity, didz, grad = periodic_field(contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    rec = ft.reconstruct(t, method="tie-exact", backend=backend, dtype=dtype)
    assert rec.info["converged"]
    assert rel_rms(host(rec.phase), phi) <= TOL[dtype]
    g = host(rec.gradient)
    assert np.sqrt(np.mean((g - grad) ** 2) / np.mean(grad**2)) <= TOL[dtype]
    assert host(rec.phase).dtype == np.dtype(dtype)
    assert abs(float(host(rec.phase).mean())) < 1e-6


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_tie_uniform_is_exact_for_uniform_intensity(backend, dtype):
    phi, intensity, didz, _ = periodic_field(contrast=0.0)
    t = triplet_from(3.5 * intensity, 3.5 * didz, 10.0, PIXEL, E)  # any dose
    rec = ft.reconstruct(t, method="tie-uniform", backend=backend, dtype=dtype)
    assert rel_rms(host(rec.phase), phi) <= TOL[dtype]


def test_tie_uniform_is_wrong_for_non_uniform_intensity():
    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    assert rel_rms(ft.reconstruct(t, method="tie-uniform", backend="cpu").phase, phi) > 0.05


def test_teague_shows_its_known_error_and_no_more():
    """Teague's solution drops the curl of I∇φ: with non-uniform I it differs
    from the truth, by exactly what the textbook formula (an independent
    complex128 NumPy pipeline) gives, while the exact TIE is exact."""
    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    rec = ft.reconstruct(t, method="tie", backend="cpu", dtype="float64")
    textbook = reference.teague_tie(t.minus, t.zero, t.plus, 10.0, PIXEL, E)
    assert rel_rms(rec.phase, textbook) <= 1e-6
    teague_error = rel_rms(rec.phase, phi)
    exact_error = rel_rms(ft.reconstruct(t, method="tie-exact", backend="cpu",
                                         dtype="float64").phase, phi)
    assert teague_error > 1e-3  # visible: the curl term is not small here
    assert exact_error < teague_error / 100
    # float32 gives the same Teague answer within float32 rounding.
    rec32 = ft.reconstruct(t, method="tie", backend="cpu", dtype="float32")
    assert rel_rms(rec32.phase, textbook) <= 1e-4


@pytest.mark.parametrize("method", ["tie-uniform", "tie-exact"])
def test_mirror_recovers_a_non_periodic_phase_and_periodic_does_not(backend, method):
    contrast = 0.0 if method == "tie-uniform" else 0.3
    phi, intensity, didz, _ = neumann_field(contrast=contrast)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    mirror = ft.reconstruct(t, method=method, boundary="mirror", backend=backend,
                            dtype="float64")
    periodic = ft.reconstruct(t, method=method, boundary="periodic", backend=backend,
                              dtype="float64")
    assert rel_rms(host(mirror.phase), phi) <= 1e-3
    assert rel_rms(host(periodic.phase), phi) > 3e-2


def _weak_phase_object(n=128, pixel=0.2, seed=3):
    """Gaussian bumps of ±0.1 rad, 1.2 to 3 Å wide, on a periodic box."""
    return gaussian_bumps(n, pixel, 10, 0.1, (1.2, 3.0), seed)


def _linear_theory_error(phi, pixel, dz):
    """Relative RMS error of the central difference for a weak phase object.

    To first order in φ each Fourier component of the intensity varies as
    ``sin(χ(z))`` with ``χ = π λ z |f|²``; the central difference over ±dz
    returns the derivative times ``sin(χ)/χ``, so a TIE reconstruction of that
    component is scaled by ``sinc``. This is the error every TIE method must
    show on such an object (the solvers themselves are exact, tested above).
    """
    lam = ft.wavelength(E)
    n = phi.shape[0]
    f = np.fft.fftfreq(n, pixel)
    chi = np.pi * lam * dz * (f[:, None] ** 2 + f[None, :] ** 2)
    damp = np.where(chi > 0, np.sin(chi) / np.where(chi > 0, chi, 1), 1.0)
    spec = np.fft.fft2(phi - phi.mean())
    return float(np.sqrt(np.sum(np.abs(spec * (1 - damp)) ** 2) / np.sum(np.abs(spec) ** 2)))


@pytest.mark.parametrize("dz", [20.0, 500.0])
def test_fresnel_weak_phase_object(dz, backend):
    """Angular-spectrum propagation to ±dz; every TIE method must show the
    central-difference error of linear theory and nothing more.

    Tolerance: the TIE itself is exact to first order in z whatever φ, so the
    only error left is the O(dz²) error of the central difference, which for a
    weak object is the linear-theory figure above; the part of it that is
    second order in φ is at most |φ|max ≈ 0.1 of it. Hence 1.2 × expected,
    plus 1e-4 for float32 rounding, and at least 0.8 × expected where that is
    visible (dz = 500 Å: 3 %).
    """
    phi = _weak_phase_object()
    t = defocus_triplet(phi, dz, 0.2, E)
    expected = _linear_theory_error(phi, 0.2, dz)
    for method in ("tie-uniform", "tie", "tie-exact", "gd"):
        rec = ft.reconstruct(t, method=method, backend=backend)
        error = rel_rms(host(rec.phase), phi)
        assert error <= 1.2 * expected + 1e-4, (method, error, expected)
        if expected > 1e-2:
            assert error >= 0.8 * expected, (method, error, expected)


def test_fresnel_phase_object_with_absorption_needs_the_intensity():
    """With a non-uniform amplitude the uniform-intensity TIE is biased while
    Teague and the exact TIE are not."""
    phi = _weak_phase_object(seed=5)
    n = phi.shape[0]
    y = np.arange(n)[:, None] * 0.2
    x = np.arange(n)[None, :] * 0.2
    amplitude = 1 - 0.3 * np.exp(-((y - 9) ** 2 + (x - 14) ** 2) / (2 * 4.0**2))
    t = defocus_triplet(phi, 20.0, 0.2, E, amplitude=amplitude)
    err = {m: rel_rms(ft.reconstruct(t, method=m, backend="cpu").phase, phi)
           for m in ("tie-uniform", "tie", "tie-exact")}
    assert err["tie-exact"] < 0.02
    assert err["tie"] < 0.05
    assert err["tie-uniform"] > 2 * err["tie-exact"]


@pytest.mark.parametrize("preconditioner", ["biharmonic", "none"])
def test_gd_lowers_its_objective(preconditioner):
    phi, intensity, didz, _ = periodic_field(shape=(48, 40), contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    rec = ft.reconstruct(t, method="gd", backend="cpu", dtype="float64",
                         preconditioner=preconditioner, max_iter=60)
    obj = np.array(rec.info["objective"])
    assert len(obj) > 2
    assert np.all(np.diff(obj) <= 1e-12 * obj[0])  # exact line search never goes up
    assert obj[-1] < 0.5 * obj[0]


def test_gd_ends_near_the_exact_tie():
    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    gd = ft.reconstruct(t, method="gd", backend="cpu", dtype="float64")
    exact = ft.reconstruct(t, method="tie-exact", backend="cpu", dtype="float64")
    assert gd.info["objective"][-1] < 1e-8 * gd.info["objective"][0]
    assert rel_rms(gd.phase, exact.phase) <= 1e-3
    assert rel_rms(gd.phase, phi) <= 1e-3


def test_residual_map_tells_exact_from_approximate():
    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    k = ft.wavenumber(E)
    signal = np.sqrt(np.mean((k * didz) ** 2))
    exact = ft.reconstruct(t, method="tie-exact", backend="cpu", dtype="float64")
    teague = ft.reconstruct(t, method="tie", backend="cpu", dtype="float64")
    assert exact.residual.shape == phi.shape
    assert np.sqrt(np.mean(exact.residual**2)) < 1e-8 * signal
    assert np.sqrt(np.mean(teague.residual**2)) > 1e-3 * signal


@pytest.mark.parametrize("boundary,field", [("periodic", periodic_field),
                                            ("mirror", neumann_field)])
def test_icom_integrates_a_gradient(backend, boundary, field):
    phi, intensity, _, grad = field()
    t = ft.FocalTriplet(intensity, intensity, intensity, dz=1.0, pixel_size=PIXEL, energy=E,
                        gradient=grad)
    rec = ft.reconstruct(t, method="icom", backend=backend, boundary=boundary, dtype="float64")
    assert rel_rms(host(rec.phase), phi) <= (1e-10 if boundary == "periodic" else 1e-3)
    assert not t.gradient_orientation["suspect"] and "trust" not in rec.info
    # A curl field has no potential: the residual map says so, and so do the
    # triplet and the solve (a gradient turned by 90°).
    curl = np.stack([grad[1], -grad[0]])
    with pytest.warns(ft.TrustWarning, match="gradient: 100% of its power is curl"):
        t_curl = ft.FocalTriplet(intensity, intensity, intensity, dz=1.0, pixel_size=PIXEL,
                                 energy=E, gradient=curl)
    with pytest.warns(ft.TrustWarning, match="icom: gradient: .* icom phase from it is wrong"):
        rec_curl = ft.reconstruct(t_curl, method="icom", backend=backend, boundary=boundary,
                                  dtype="float64")
    assert rec_curl.info["trust"] == t_curl.gradient_orientation["why"]
    assert np.mean(host(rec_curl.residual)) > 10 * np.mean(host(rec.residual))


def test_uneven_spacing_and_many_planes():
    """Intensity quadratic in z: the least-squares stencils are exact for
    uneven triplets and for five planes alike."""
    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    curvature = 1e-4 * np.cos(phi)  # second z derivative, arbitrary

    def planes(zs):
        return [intensity + z * didz + 0.5 * z * z * curvature for z in zs]

    exact = ft.reconstruct(triplet_from(intensity, didz, 10.0, PIXEL, E), method="tie-exact",
                           backend="cpu", dtype="float64").phase
    uneven = ft.FocalTriplet(*planes([-6.0, 0.0, 15.0]), dz=(6.0, 15.0), pixel_size=PIXEL,
                             energy=E)
    five = ft.FocalSeries(planes([-20.0, -9.0, 0.0, 8.0, 21.0]), [-20, -9, 0, 8, 21], PIXEL, E)
    shifted = ft.FocalSeries(planes([-30.0, -12.0, 5.0, 14.0]), [-30, -12, 5, 14], PIXEL, E,
                             z0=0.0, degree=2)
    for series in (uneven, five, shifted):
        rec = ft.reconstruct(series, method="tie-exact", backend="cpu", dtype="float64")
        assert rel_rms(rec.phase, exact) <= 1e-8


def test_defocus_series_gives_the_same_phase_as_the_triplet():
    phi = _weak_phase_object(n=64)
    s = defocus_series(phi, [-20.0, -10.0, 0.0, 10.0, 20.0], 0.2, E)
    t = defocus_triplet(phi, 10.0, 0.2, E)
    a = ft.reconstruct(s, method="tie", backend="cpu").phase
    b = ft.reconstruct(t, method="tie", backend="cpu").phase
    assert rel_rms(a, phi) < 0.02 and rel_rms(b, phi) < 0.02


@pytest.mark.parametrize("dtype", [np.float16, np.uint16, np.int32])
def test_any_real_input_dtype(dtype):
    phi = _weak_phase_object(n=64)
    t = defocus_triplet(phi, 20.0, 0.2, E)
    scale = 1000 if np.dtype(dtype).kind in "ui" else 1
    # Scaled noise-free intensities, not counts: say so (integers are taken as
    # Poisson counts otherwise, and this weak object is below their noise).
    cast = ft.FocalTriplet(*((p * scale).astype(dtype) for p in t.planes), dz=20.0,
                           pixel_size=0.2, energy=E, noise=0.0)
    rec = ft.reconstruct(cast, method="tie", backend="cpu")
    assert rec.phase.dtype == np.float32
    assert rel_rms(rec.phase, phi) < 0.1


def test_tikhonov_damps_low_frequencies():
    phi, intensity, didz, _ = periodic_field(contrast=0.0)
    t = triplet_from(intensity, didz, 10.0, PIXEL, E)
    plain = ft.reconstruct(t, method="tie-uniform", backend="cpu", dtype="float64")
    damped = ft.reconstruct(t, method="tie-uniform", backend="cpu", dtype="float64", alpha=1.0)
    assert np.std(damped.phase) < 0.9 * np.std(plain.phase)


def test_warnings_name_the_caller_s_line_whatever_the_entry_point():
    """A solve's warnings were raised with fixed stack levels counted for one
    path through the library: from reconstruct the "no signal" warning named
    a line of solvers.py, from Plan.solve another one, or a line beyond the
    caller; a FocalSeries's named none of the caller's."""
    rng = np.random.default_rng(0)
    p = 100 + rng.normal(0, 1, (32, 32))
    t = ft.FocalTriplet(p, p, p, 20.0, 0.2, E, noise=1.0)  # no focal derivative at all
    unregistered = {"shifts": np.zeros((3, 2)), "reliable": False, "applied": False,
                    "signal": None, "why": "images under 8 px a side"}
    plan = ft.Plan((32, 32), 0.2, 20.0, E, method="tie", backend="cpu", warmup=False)
    calls = [("no signal above the noise", lambda: ft.reconstruct(t, backend="cpu")),
             ("no signal above the noise", lambda: ft.reconstruct(t, method="gd",
                                                                 backend="cpu")),
             ("no signal above the noise", lambda: plan.solve(p, p, p, noise=1.0)),
             ("drift between the scans", lambda: plan.solve(
                 p, p, p + rng.normal(0, 1, p.shape), registration=unregistered)),
             ("some are integers", lambda: ft.FocalSeries(
                 [p.astype(np.uint16), p, p], [-20.0, 0.0, 20.0], 0.2, E))]
    for says, call in calls:
        with pytest.warns(UserWarning, match=says) as caught:
            call()
        # every warning (the drift's call also warns of planes of noise alone)
        assert {w.filename for w in caught} == {__file__}, (says, caught[0].filename)


@pytest.mark.parametrize("depth, radius", [(0.99, 10), (1.0, 10), (0.99, 30)])
def test_teague_does_not_blow_up_on_a_near_opaque_patch(depth, radius):
    """A Fresnel phase object with an absorbing patch down to 1 % of the
    intensity or none: Teague's division turns the curl of ``I ∇φ`` it drops
    into phase amplified by ``Ī / I``. With the default floor of 0.1 the
    phase error stays a fraction of the phase's variance (it was 3-37 times
    it at 1e-3); tie-exact solves the exact equation and stays exact."""
    from flowtie_fast.evaluation.evaluate import phase_errors
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_triplet

    n, px, dz = 256, 0.5, 200.0
    phase, amplitude = phase_object(n, px)
    y, x = np.mgrid[:n, :n]
    amplitude = amplitude * (1 - depth * np.exp(-((y - 180) ** 2 + (x - 70) ** 2)
                                                / (2 * radius ** 2)))
    t = defocus_triplet(phase, dz, px, E, amplitude=amplitude)
    rec = ft.reconstruct(t, method="tie", backend="cpu")
    assert rec.info["floor"] == 0.1
    assert phase_errors(np.asarray(rec.phase), phase)[1] < 0.2
    old = ft.reconstruct(t, method="tie", floor=1e-3, backend="cpu")
    assert phase_errors(np.asarray(old.phase), phase)[1] > 1.0
    exact = ft.reconstruct(t, method="tie-exact", backend="cpu")
    assert exact.info["floor"] == 1e-3
    assert phase_errors(np.asarray(exact.phase), phase)[1] < 1e-3


def test_an_unmeasured_drift_leads_the_verdict_and_keeps_the_disagreement_found():
    """Where the drift could not be measured, info['trust'] said only that:
    the TIE phase's disagreement with the centre of mass, found before, was
    dropped from the verdict a file stores (both were warned)."""
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_triplet

    n, px = 64, 0.5
    phase, _ = phase_object(n, px)
    planes = defocus_triplet(phase, 100.0, px, E).planes
    y, x = np.mgrid[:n, :n] * px
    other = 0.05 * np.sin(2 * np.pi * y / (n * px)) * np.cos(4 * np.pi * x / (n * px))
    gradient = np.stack(np.gradient(other, px))  # a phase unlike the planes'
    t = ft.FocalTriplet(*planes, dz=100.0, pixel_size=px, energy=E, gradient=gradient)
    t.registration = {"shifts": np.zeros((3, 2)), "reliable": False, "applied": False,
                      "signal": "df", "why": "quality too low"}
    with pytest.warns(ft.TrustWarning):
        rec = ft.reconstruct(t, method="tie", backend="cpu")
    assert rec.info["icom_disagreement"] > trust.calibration()["classical_disagreement_limit"]
    assert rec.info["trust"].startswith("the drift between the scans could not be measured; "
                                        "also: tie: this phase is far from the one the "
                                        "measured centre of mass gives")


def test_a_defocus_beyond_the_tie_s_linear_transport_is_said():
    """A Fresnel phase object (a 1.4 Å bump) with every parameter in range:
    the TIE phase's error rose with the defocus step to worse than flat at
    1 µm, without a word. Where the finite steps put more than the limit of
    the phase's power off the TIE's linear transport, the triplet warns and
    the TIE methods' info says so; uneven steps are weighed as the
    derivative's weights take them (a short step beside a long one passes)."""
    from flowtie_fast.evaluation.evaluate import phase_errors
    from flowtie_fast.simulation.optics import propagate
    from flowtie_fast.triplet import DEFOCUS_ERROR_LIMIT

    n, px = 64, 0.2
    y, x = np.mgrid[:n, :n] * px
    truth = 0.3 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 2.0)
    for dz, said in ((20.0, False), (500.0, False), (5000.0, True)):
        planes = [np.abs(propagate(np.exp(1j * truth), z, px, E)) ** 2 for z in (-dz, 0, dz)]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t = ft.FocalTriplet(*planes, dz=dz, pixel_size=px, energy=E)
        assert (t.defocus_check is not None) == said, (dz, t.defocus_check)
        assert any(str(w.message) == t.defocus_check for w in caught) == said
        rec = ft.reconstruct(t, method="tie", backend="cpu")
        error = phase_errors(np.asarray(rec.phase), truth)[1]
        if said:
            assert rec.info["trust"] == t.defocus_check and error > 0.5
            assert f"limit {DEFOCUS_ERROR_LIMIT:g})" in t.defocus_check
        else:
            assert "trust" not in rec.info and error < 0.1
    # 200 Å and 8000 Å from focus: the three-point derivative's error goes as
    # their product, not as the longer step (it was flagged, NMSE 8e-5)
    planes = [np.abs(propagate(np.exp(1j * truth), z, px, E)) ** 2 for z in (-200.0, 0, 8000.0)]
    series = ft.FocalSeries(planes, [-200.0, 0.0, 8000.0], px, E)
    assert series.defocus_check is None
