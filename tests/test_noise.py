"""The noise of the planes and the regularisation it sets (flowtie_fast.noise).

A Fresnel-propagated phase object recorded as Poisson counts from 1e2 to 1e6
electrons per Å²: every classical method stays at or below a flat phase's
error where the noise hides the transport, and keeps its noise-free accuracy
where it does not; without the noise-aware defaults the same data blow up.
"""

import warnings

import numpy as np
import pytest

import flowtie_fast as ft
from flowtie_fast.noise import (ALPHA_MAX, band_noise, check_noise, denoise, denoise_gradient,
                                discrepancy_alpha, estimate_noise, gradient_levels,
                                poisson_noise, teague_floor)
from flowtie_fast.simulation.optics import defocus_triplet, gaussian_bumps

E = 300e3
PIXEL = 0.25
CLASSICAL = ("tie-uniform", "tie", "tie-exact", "gd")


def _object(n=96):
    """Gaussian bumps of 0.6 rad, 1.5 to 4 Å wide, on a periodic box."""
    return gaussian_bumps(n, PIXEL, 12, 0.6, (1.5, 4.0), seed=1)


def _nmse(phase, truth):
    p = np.asarray(phase, float) - np.mean(phase)
    t = truth - truth.mean()
    return float(np.mean((p - t) ** 2) / np.mean(t ** 2))


def _counts(triplet, dose, rng):
    """Poisson counts of the planes at ``dose`` e⁻/Å², as uint32."""
    electrons = dose * PIXEL * PIXEL
    mean = float(np.mean(triplet.zero))
    return [rng.poisson(np.asarray(p) * (electrons / mean)).astype(np.uint32)
            for p in triplet.planes]


@pytest.fixture(scope="module")
def phase_object():
    phi = _object()
    return phi, defocus_triplet(phi, 40.0, PIXEL, E)


def test_counts_are_poisson_and_floats_are_unknown(phase_object):
    _, t = phase_object
    counts = _counts(t, 1e4, np.random.default_rng(0))
    c = ft.FocalTriplet(*counts, dz=40.0, pixel_size=PIXEL, energy=E)
    assert c.noise.source == "poisson"
    np.testing.assert_allclose(c.noise.variance, [p.mean() for p in counts], rtol=1e-12)
    f = ft.FocalTriplet(*(p.astype(np.float32) for p in counts), dz=40.0, pixel_size=PIXEL,
                        energy=E)
    assert f.noise is None
    g = ft.FocalTriplet(*counts, dz=40.0, pixel_size=PIXEL, energy=E, noise=(1.0, 2.0, 3.0))
    assert g.noise.source == "given" and g.noise.variance == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("dose", [1e2, 1e3, 1e4, 1e5, 1e6])
def test_classical_methods_never_worse_than_flat(phase_object, dose):
    phi, t = phase_object
    counts = _counts(t, dose, np.random.default_rng(int(dose)))
    c = ft.FocalTriplet(*counts, dz=40.0, pixel_size=PIXEL, energy=E)
    clean = _nmse(ft.reconstruct(t, method="tie", backend="cpu").phase, phi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        for method in CLASSICAL:
            err = _nmse(ft.reconstruct(c, method=method, backend="cpu").phase, phi)
            assert err <= 1.0 + 1e-6, (method, dose, err)
            if dose >= 1e5:  # the noise no longer hides the transport
                assert err < clean + 0.1, (method, dose, err, clean)


@pytest.fixture(scope="module")
def absorbing_object():
    """The phase object with dark spots (amplitude down to 0.03): few counts
    there at a low dose, which Teague's division amplifies."""
    phi = _object()
    amp = np.clip(1.0 - 0.97 * gaussian_bumps(96, PIXEL, 10, 1.0, (1.0, 2.0), seed=7), 0.03, 1)
    return phi, defocus_triplet(phi, 40.0, PIXEL, E, amplitude=amp)


@pytest.mark.parametrize("dose", [1e2, 1e3, 1e4, 1e5])
def test_without_the_noise_defaults_low_dose_blows_up(absorbing_object, dose):
    """Regularisation off, the same counts: far worse than a flat phase at a
    low dose (the tests above could fail); on, never much worse than flat
    (one Fourier mode above the noise at 3e3 e/Å² gives up to 1.3: the
    amplitude's share of the transport is taken for phase)."""
    phi, t = absorbing_object
    c = ft.FocalTriplet(*_counts(t, dose, np.random.default_rng(3)), dz=40.0,
                        pixel_size=PIXEL, energy=E)
    off = _nmse(ft.reconstruct(c, method="tie", backend="cpu", denoise=False,
                               floor=1e-3).phase, phi)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        on = ft.reconstruct(c, method="tie", backend="cpu")
    assert on.info["noise"] == "poisson" and on.info["floor"] > 1e-3
    if dose <= 1e3:
        assert off > 20 and _nmse(on.phase, phi) <= 1.0 + 1e-6
    else:
        assert _nmse(on.phase, phi) < off and on.info["denoise"] > 0


def test_plan_takes_counts_as_poisson(absorbing_object):
    phi, t = absorbing_object
    counts = _counts(t, 1e3, np.random.default_rng(4))
    plan = ft.Plan(phi.shape, PIXEL, 40.0, E, method="tie", backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        assert _nmse(plan.solve(*counts), phi) <= 1.0 + 1e-6
        raw = ft.Plan(phi.shape, PIXEL, 40.0, E, method="tie", backend="cpu", denoise=False,
                      floor=1e-3)
        assert _nmse(raw.solve(*counts), phi) > 20
        floats = [p.astype(np.float32) for p in counts]  # unknown noise unless given
        # unfiltered: worse than flat (Teague's floor of 0.1 without noise
        # bounds the division, 4.97; at 1e-3, above, beyond 20)
        assert _nmse(plan.solve(*floats), phi) > 2
        given = [float(p.mean()) for p in counts]
        assert _nmse(plan.solve(*floats, noise=given), phi) <= 1.0 + 1e-6


def test_band_noise_measures_white_noise_above_the_band():
    rng = np.random.default_rng(2)
    n, pixel = 128, 0.2
    y, x = np.meshgrid(np.arange(n) * pixel, np.arange(n) * pixel, indexing="ij")
    signal = 100 + 20 * np.cos(2 * np.pi * 0.5 * y) * np.cos(2 * np.pi * 0.3 * x)
    planes = [signal + rng.normal(0, 3.0, (n, n)) for _ in range(3)]
    noise = band_noise(planes, (pixel, pixel), band_limit=1.0)
    assert noise.source == "band"
    np.testing.assert_allclose(noise.variance, 9.0, rtol=0.1)
    assert band_noise(planes, (pixel, pixel), band_limit=3.3) is None  # no room above


def test_4dstem_counts_carry_their_noise():
    """Virtual images of Poisson patterns: the measured noise is the counts'."""
    rng = np.random.default_rng(0)
    sy = sx = 32
    ky = kx = 24
    yy, xx = np.mgrid[:ky, :kx] - 11.5
    disk = (np.hypot(yy, xx) < 5).astype(float)
    lam = ft.wavelength(E)
    k_sampling = 4.0 / 5 * 1e-3 / lam  # the disk edge at 4 mrad: room above 2α/λ
    scan = 0.1
    patterns = [rng.poisson(np.broadcast_to(disk * 3.0, (sy, sx, ky, kx))).astype(np.uint16)
                for _ in range(3)]
    t = ft.FocalTriplet.from_4dstem(*patterns, dz=20.0, scan_step=scan, k_sampling=k_sampling,
                                    energy=E, center=(11.5, 11.5), backend="cpu")
    assert t.noise.source == "band"
    np.testing.assert_allclose(t.noise.variance, [float(p.mean()) for p in t.planes],
                               rtol=0.2)


def test_denoise_keeps_strong_modes_and_removes_noise():
    rng = np.random.default_rng(1)
    n = 64
    y, x = np.mgrid[:n, :n]
    clean = np.cos(2 * np.pi * 3 * y / n) + 0.5 * np.sin(2 * np.pi * 5 * x / n)
    noisy = clean + rng.normal(0, 0.5, (n, n))
    a = noisy.copy()
    kept = denoise(a, 0.25)
    assert 1 <= kept <= 8
    assert np.mean((a - clean) ** 2) < 0.05 * np.mean((noisy - clean) ** 2)
    pure = rng.normal(0, 0.5, (n, n))
    assert denoise(pure, 0.25) == 0 and np.all(pure == 0)


def test_discrepancy_alpha():
    rng = np.random.default_rng(0)
    n = 64
    y, x = np.mgrid[:n, :n]
    clean = np.cos(2 * np.pi * 2 * y / n)
    noisy = clean + rng.normal(0, 0.3, (n, n))
    assert discrepancy_alpha(noisy, (0.2, 0.2), 0.0) == 0.0
    a1 = discrepancy_alpha(noisy, (0.2, 0.2), 0.05)
    a2 = discrepancy_alpha(noisy, (0.2, 0.2), 0.09)
    assert 0 < a1 < a2 < ALPHA_MAX
    assert discrepancy_alpha(rng.normal(0, 0.3, (n, n)), (0.2, 0.2), 1.0) == ALPHA_MAX


def test_floor_rule():
    assert teague_floor(0.0, 10.0) == 1e-3
    assert teague_floor(0.0, 10.0, least=0.1) == 0.1
    assert teague_floor(4e-4, 1.0, least=0.1) == 0.1  # 2 σ / Ī = 0.04
    assert teague_floor(25.0, 100.0) == pytest.approx(0.1)
    assert teague_floor(1e6, 1.0) == 1.0
    assert poisson_noise([4.0, 5.0]).variance == (4.0, 5.0)


@pytest.mark.parametrize("call,says", [
    (lambda a: denoise(a, np.nan), r"^variance: expected a finite number >= 0"),
    (lambda a: denoise(a, -0.25), r"^variance: expected a finite number >= 0"),
    (lambda a: denoise(a, 0.25, threshold=0.5), r"^threshold: expected a finite number >= 1"),
    (lambda a: denoise(np.where(a > 2, np.nan, a), 0.25), r"^a: contains NaN or Inf"),
    (lambda a: denoise(np.round(a).astype(np.int32), 0.25), r"^a: expected a floating-point"),
    (lambda a: denoise(np.broadcast_to(a, a.shape), 0.25), r"^a: the array is read-only"),
    (lambda a: denoise(a[0], 0.25), r"^a: expected a 2-D array"),
    (lambda a: discrepancy_alpha(a, (0.2, 0.2), np.nan), r"^variance: expected a finite"),
    (lambda a: discrepancy_alpha(a, (0.2, 0.2), -1.0), r"^variance: expected a finite"),
    (lambda a: discrepancy_alpha(a, (0.0, 0.2), 0.1), r"^pixel_size: expected a positive"),
    (lambda a: discrepancy_alpha(a, (0.2, 0.2), 0.1, bins=0), r"^bins: expected a positive"),
    (lambda a: discrepancy_alpha(a * np.nan, (0.2, 0.2), 0.1), r"^source: contains NaN"),
    (lambda a: teague_floor(np.nan, 1.0), r"^variance: expected a finite number"),
    (lambda a: poisson_noise([1.0, -2.0, 1.0]), r"^means\[1\]: expected a finite number >= 0"),
    (lambda a: poisson_noise([1.0, np.nan, 1.0]), r"^means\[1\]: expected a finite number"),
    (lambda a: poisson_noise(3.0), r"^means: expected a sequence"),
    (lambda a: estimate_noise(a * np.nan), r"^plane: contains NaN or Inf"),
    (lambda a: estimate_noise(a * 1e300), r"^plane: contains NaN or Inf, or values whose"),
    (lambda a: estimate_noise(a[0]), r"^plane: expected a 2-D array"),
    (lambda a: band_noise([a, a * np.nan], (0.2, 0.2), 1.0), r"^planes\[1\]: contains NaN"),
    (lambda a: band_noise([a, a[:8]], (0.2, 0.2), 1.0), r"^planes\[1\]: expected shape"),
    (lambda a: band_noise([a], (0.0, 0.2), 1.0), r"^pixel_size: expected a positive"),
    (lambda a: band_noise([a], (0.2, 0.2), np.nan), r"^band_limit: expected a finite"),
])
def test_the_public_noise_helpers_refuse_what_they_would_misread(call, says):
    """Each returned a wrong number or raised another exception: denoise made
    an array of one NaN, or a NaN variance, zero ("no signal"), amplified
    its modes for a negative variance and truncated an integer array;
    discrepancy_alpha gave 0 (no regularisation) for a NaN or negative
    variance; teague_floor the floor of no noise for a NaN; poisson_noise a
    Noise of negative or NaN variances; estimate_noise and band_noise NaN or
    Inf; several raised ValueError, IndexError or ZeroDivisionError."""
    rng = np.random.default_rng(0)
    a = 1.0 + rng.normal(0, 0.5, (32, 32))
    with pytest.raises(ft.InputError, match=says):
        call(a.copy())


@pytest.mark.parametrize("bad", ["high", -1.0, [1.0, 2.0], [np.nan] * 3, True, object(),
                                 [1.0, True, 1.0], (np.bool_(False), 1.0, 1.0),
                                 [1.0, "2", 1.0], ft.Noise((1.0, True, 1.0), "given")])
def test_bad_noise_is_refused(bad):
    with pytest.raises(ft.InputError, match="noise"):
        check_noise(bad, 3)


@pytest.mark.parametrize("bad", [{"denoise": "yes"}, {"alpha": "maybe"}, {"floor": "often"},
                                 {"alpha": 1e13}])
def test_bad_regularisation_options_are_refused(phase_object, bad):
    _, t = phase_object
    with pytest.raises(ft.InputError, match=next(iter(bad))):
        ft.reconstruct(t, method="tie", backend="cpu", **bad)


# ---------------------------------------------------------------- what is and is not counts

def test_integer_planes_that_are_not_counts_are_measured_with_a_warning(phase_object):
    phi, t = phase_object
    top = max(float(np.max(p)) for p in t.planes)
    u8 = [np.round(np.asarray(p) / top * 255).astype(np.uint8) for p in t.planes]
    with pytest.warns(ft.TrustWarning, match="not as counts"):
        c = ft.FocalTriplet(*u8, dz=40.0, pixel_size=PIXEL, energy=E)
    assert c.noise.source == "estimated"
    floats = ft.FocalTriplet(*(p.astype(np.float32) for p in u8), dz=40.0, pixel_size=PIXEL,
                             energy=E)
    err = _nmse(ft.reconstruct(c, method="tie", backend="cpu").phase, phi)
    ref = _nmse(ft.reconstruct(floats, method="tie", backend="cpu").phase, phi)
    assert err < ref + 0.05, (err, ref)  # not smoothed as if 128 counts a pixel


def test_counts_in_detector_units_are_measured(phase_object):
    """100 units per electron at 1e2 e/Å²: Poisson on the units would be 100x
    too small a noise; measured instead, never much worse than flat."""
    phi, t = phase_object
    rng = np.random.default_rng(2)
    adu = [(c.astype(np.uint32) * 100).astype(np.uint32) for c in _counts(t, 1e2, rng)]
    with pytest.warns(ft.TrustWarning, match="not as counts"):
        c = ft.FocalTriplet(*adu, dz=40.0, pixel_size=PIXEL, energy=E)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        assert _nmse(ft.reconstruct(c, method="tie", backend="cpu").phase, phi) <= 1.0 + 1e-6


def test_mixed_integer_and_float_planes_have_unknown_noise_and_say_so(phase_object):
    _, t = phase_object
    counts = _counts(t, 1e4, np.random.default_rng(0))
    with pytest.warns(ft.TrustWarning, match="mixed|some are integers"):
        c = ft.FocalTriplet(counts[0], counts[1].astype(np.float32), counts[2], dz=40.0,
                            pixel_size=PIXEL, energy=E)
    assert c.noise is None


@pytest.mark.parametrize("bad", [ft.Noise((-1.0,) * 3, "given"), ft.Noise((np.nan,) * 3, "given"),
                                 ft.Noise(("a", "b", "c"), "given"),
                                 ft.Noise((1.0, 1.0, 1.0), "bogus"),
                                 np.array([1 + 0j, 1, 1]), np.array([True, False, True]),
                                 ["1", "2", "3"], np.ma.array([1.0, 2.0, 3.0], mask=[0, 1, 0])])
def test_noise_objects_and_arrays_are_checked_like_numbers(phase_object, bad):
    _, t = phase_object
    with pytest.raises(ft.InputError, match="noise"):
        ft.FocalTriplet(*t.planes, dz=40.0, pixel_size=PIXEL, energy=E, noise=bad)


def test_a_bad_noise_array_is_named_by_its_shape():
    with pytest.raises(ft.InputError) as err:
        check_noise(np.ones((64, 64)), 3)
    assert "\n" not in str(err.value) and "shape (64, 64)" in str(err.value)


def test_an_overflowing_noise_filter_stays_silent(phase_object):
    _, t = phase_object
    c = ft.FocalTriplet(*t.planes, dz=40.0, pixel_size=PIXEL, energy=E, noise=1e300)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(c, method="tie", backend="cpu")
    assert np.all(rec.phase == 0)


def _spectral_gradient(phi, h):
    """(∂φ/∂y, ∂φ/∂x) of a periodic phase, exact for its Fourier series."""
    ky = 2j * np.pi * np.fft.fftfreq(phi.shape[0], h)[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(phi.shape[1], h)[None, :]
    f = np.fft.fft2(phi)
    return np.stack([np.fft.ifft2(ky * f).real, np.fft.ifft2(kx * f).real])


@pytest.mark.parametrize("mirror", [False, True])
def test_denoise_gradient_finds_no_phase_in_pure_noise(mirror):
    """White noise at its stated variance passes the detection level in about
    one field of M: none of 60 fields of 32² px, periodic or reflected."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        g = rng.normal(0.0, 0.7, (2, 32, 32))
        assert denoise_gradient(g, (0.49, 0.49), mirror=mirror) == 0 and not np.any(g)


def _integrated(g, h, boundary):
    solver = ft.TIESolver(g.shape[1:], h, backend="cpu", boundary=boundary, dtype="float64")
    return np.asarray(solver.integrate(g).phase)


def test_denoise_gradient_keeps_a_phase_and_drops_the_curl():
    """A strong phase gradient passes nearly whole and a curl added to it (no
    phase has one) is removed with the noise: the filtered field is nearer
    the phase's gradient, and its phase nearer the phase, than the noisy
    field's."""
    h = 0.25
    phi = gaussian_bumps(32, h, 6, 0.6, (1.5, 3.0), seed=2)
    g = _spectral_gradient(phi, h)
    psi = _spectral_gradient(gaussian_bumps(32, h, 6, 0.6, (1.5, 3.0), seed=3), h)
    curl = np.stack([psi[1], -psi[0]])
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.1, g.shape)
    a = g + curl + noise
    assert denoise_gradient(a, (0.01, 0.01)) > 0
    # noise and curl: 1.6 times the signal's RMS; filtered: 0.29
    assert np.sqrt(np.mean((g + curl + noise - g) ** 2)) > 1.5 * g.std()
    assert np.sqrt(np.mean((a - g) ** 2)) < 0.35 * g.std()
    spread = phi.std()
    filtered = np.sqrt(np.mean((_integrated(a, h, "periodic") - _integrated(g, h, "periodic"))
                               ** 2))
    noisy = np.sqrt(np.mean((_integrated(g + noise, h, "periodic")
                             - _integrated(g, h, "periodic")) ** 2))
    assert filtered < 0.75 * noisy and filtered < 0.15 * spread


@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
@pytest.mark.parametrize("pixel", [(0.25, 0.25), (0.25, 1.0)])
@pytest.mark.parametrize("n", [32, 33])
def test_denoise_gradient_of_a_noise_free_gradient_keeps_its_phase(boundary, pixel, n):
    """Stated noise-free, every mode passes whole: the phase integrated at
    either boundary is the unfiltered field's, for even and odd sizes and
    oblong pixels (the modes' directions computed per pixel, not per Å, took
    22 % of a curl-free gradient on (1, 2) pixels; the Nyquist lines of an
    even size broke the spectrum's symmetry)."""
    phi = gaussian_bumps(n, 0.25, 6, 0.6, (1.5, 3.0), seed=2)
    ky = 2j * np.pi * np.fft.fftfreq(n, pixel[0])[:, None]
    kx = 2j * np.pi * np.fft.fftfreq(n, pixel[1])[None, :]
    f = np.fft.fft2(phi)
    g = np.stack([np.fft.ifft2(ky * f).real, np.fft.ifft2(kx * f).real])
    exact = g.copy()
    assert denoise_gradient(exact, (0.0, 0.0), mirror=boundary == "mirror", pixel_size=pixel) > 0
    solver = ft.TIESolver(g.shape[1:], pixel, backend="cpu", boundary=boundary, dtype="float64")
    reference = np.asarray(solver.integrate(g).phase)
    assert np.sqrt(np.mean((np.asarray(solver.integrate(exact).phase) - reference) ** 2)) \
        < 1e-3 * reference.std()
    if boundary == "periodic":
        np.testing.assert_allclose(exact, g, atol=1e-3 * np.abs(g).max())


@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
def test_icom_of_a_weak_phase_under_heavy_noise_is_never_worse_than_flat(boundary):
    """A weak phase (0.05 rad bumps) whose measured gradient carries 10 times
    its own amplitude of noise, 20 draws: icom returns a phase no worse than
    a flat one on each, where filtering each component by its own noise (the
    curl's noise included, at the level pure noise passes once a field)
    returned up to 1.08 (periodic) and 2.87 (mirror) times a flat phase's
    error."""
    h, n = 0.25, 24
    phi = gaussian_bumps(n, h, 3, 0.05, (1.5, 3.0), seed=1)
    g0 = _spectral_gradient(phi, h)
    sigma = 10.0 * float(g0.std())
    flat = np.ones((n, n))
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(20):
        t = ft.FocalTriplet(flat, flat, flat, dz=10.0, pixel_size=h, energy=E,
                            gradient=g0 + rng.normal(0.0, sigma, g0.shape))
        t.gradient_noise = ft.Noise((sigma ** 2, sigma ** 2), "given")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)
            rec = ft.reconstruct(t, method="icom", backend="cpu", boundary=boundary)
        errors.append(_nmse(rec.phase, phi) if np.any(rec.phase) else 1.0)
    assert max(errors) <= 1.0 + 1e-9


def _mirror_reference(g, variance, pixel_size):
    """:func:`denoise_gradient` with ``mirror=True`` the plain way: extend the
    field by reflection to (2 Ny, 2 Nx) (``∂φ/∂y`` odd in y, even in x;
    ``∂φ/∂x`` the reverse), filter its rfft modes, keep the first quadrant.
    Returns the filtered field and the rfft modes kept."""
    ny, nx = g.shape[1:]
    gy, gx = g[0].astype(np.float64), g[1].astype(np.float64)
    gy = np.block([[gy, gy[:, ::-1]], [-gy[::-1], -gy[::-1, ::-1]]])
    gx = np.block([[gx, -gx[:, ::-1]], [gx[::-1], -gx[::-1, ::-1]]])
    my, mx = gy.shape
    qy = np.fft.fftfreq(my, pixel_size[0])[:, None]
    qx = np.fft.rfftfreq(mx, pixel_size[1])[None, :]
    q = np.hypot(qy, qx)
    q[q == 0] = 1.0
    uy, ux = qy / q, qx / q
    lon = uy * np.fft.rfft2(gy) + ux * np.fft.rfft2(gx)
    ky = np.abs(np.fft.fftfreq(my) * my)[:, None]
    kx = (np.fft.rfftfreq(mx) * mx)[None, :]

    def ends(k, n, first, last):
        return np.where(k == 0, first, np.where(k == n, last, 1.0))

    fy = uy ** 2 * ends(ky, ny, 0.0, 2.0) * ends(kx, nx, 2.0, 0.0)
    fx = ux ** 2 * ends(ky, ny, 2.0, 0.0) * ends(kx, nx, 0.0, 2.0)
    noise = my * mx * (fy * variance[0] + fx * variance[1])
    with np.errstate(divide="ignore", invalid="ignore"):  # no noise: rounding unless a pixel reaches it
        ratio = np.where(fy + fx > 0, np.abs(lon) ** 2 / noise, 0.0)
    ratio[0, 0] = 0.0
    detect, keep = gradient_levels((ny, nx), True)
    if not (ratio > detect).any():
        return np.zeros_like(g, dtype=np.float64), 0
    gain = np.where(ratio > keep, 1.0 - 1.0 / np.maximum(ratio, 1e-300), 0.0)
    lon *= gain
    # each component keeps the modes of its own symmetry: an even (cosine)
    # direction has none at the Nyquist frequency (∂φ/∂y in x, ∂φ/∂x in y)
    sy, sx = uy * lon, ux * lon
    sy[:, nx] = 0.0
    sx[ny, :] = 0.0
    out = np.stack([np.fft.irfft2(sy, s=(my, mx))[:ny, :nx],
                    np.fft.irfft2(sx, s=(my, mx))[:ny, :nx]])
    return out, int(np.count_nonzero(gain))


@pytest.mark.parametrize("shape", [(32, 32), (33, 20), (17, 40)])
@pytest.mark.parametrize("sigma", [0.02, 0.2])
def test_mirror_gradient_filter_equals_the_filter_of_the_reflected_field(shape, sigma):
    """The mirror filter works on the field's sine and cosine transforms, not
    on the reflected field four times its size; it keeps the same modes and
    returns the same field as filtering the reflection itself."""
    ny, nx = shape
    h = (0.25, 0.4)
    phi = gaussian_bumps(max(shape), 0.25, 5, 0.8, (1.5, 3.0), seed=4)[:ny, :nx]
    g = np.stack(np.gradient(phi, *h)) + np.random.default_rng(5).normal(0.0, sigma, (2, ny, nx))
    variance = (sigma ** 2, 0.5 * sigma ** 2)
    expected, kept = _mirror_reference(g, variance, h)
    assert kept > 0
    got = g.copy()
    assert denoise_gradient(got, variance, mirror=True, pixel_size=h) == kept
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * np.abs(expected).max())


@pytest.mark.parametrize("boundary", ["periodic", "mirror"])
def test_the_gradient_filter_is_refused_before_it_allocates_more_than_is_free(boundary,
                                                                              monkeypatch):
    """The filter's working arrays (about 90 bytes a pixel for the mirror
    boundary) are counted before they are allocated: with too little memory
    free the solve is refused naming the gradient, not left to a MemoryError."""
    h, n = 0.25, 24
    phi = gaussian_bumps(n, h, 3, 0.5, (1.5, 3.0), seed=1)
    flat = np.ones((n, n))
    t = ft.FocalTriplet(flat, flat, flat, dz=10.0, pixel_size=h, energy=E,
                        gradient=_spectral_gradient(phi, h))
    t.gradient_noise = ft.Noise((1e-4, 1e-4), "given")
    solver = ft.TIESolver((n, n), h, backend="cpu", boundary=boundary)
    assert np.any(solver.solve(t, method="icom").phase)
    monkeypatch.setattr(solver.backend, "available_memory", lambda: 40 * n * n)
    with pytest.raises(ft.InputError, match=r"gradient: a measured gradient of \(24, 24\) "
                                            r"needs about .* for the filter of the gradient's"):
        solver.solve(t, method="icom")


def test_the_noise_helpers_refuse_masked_arrays():
    """The mask of a masked array would be ignored: the noise helpers refuse
    it as the solvers do, naming the argument."""
    a = np.ma.masked_array(np.ones((8, 8)), mask=np.eye(8, dtype=bool))
    with pytest.raises(ft.InputError, match="^plane: masked arrays are not supported"):
        estimate_noise(a)
    with pytest.raises(ft.InputError, match="^a: masked arrays are not supported"):
        denoise(a, 1.0)


def test_float_planes_of_noise_alone_are_warned_of(phase_object):
    """Floating-point planes of unknown noise were solved as given: pure
    noise came back as a phase of about 2 rad, without a word. Where their
    focal derivative holds nothing above the scatter of their own pixels,
    the triplet warns and the TIE methods' info says so; clean planes, and
    planes of counts whose noise is known, say nothing."""
    rng = np.random.default_rng(0)
    noise = [rng.normal(1.0, 0.1, (96, 96)).astype(np.float32) for _ in range(3)]
    with pytest.warns(ft.TrustWarning, match="^planes: their noise is unknown .* holds nothing "
                      "above the noise their pixel-to-pixel scatter suggests"):
        t = ft.FocalTriplet(*noise, dz=40.0, pixel_size=PIXEL, energy=E)
    for method in CLASSICAL:
        rec = ft.reconstruct(t, method=method, backend="cpu")
        assert rec.info["trust"].startswith(t.noise_check)
    phi, clean = phase_object
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        quiet = ft.FocalTriplet(*clean.planes, dz=40.0, pixel_size=PIXEL, energy=E)
        given = ft.FocalTriplet(*noise, dz=40.0, pixel_size=PIXEL, energy=E, noise=0.01)
    assert quiet.noise_check is None and given.noise_check is None
    assert "trust" not in ft.reconstruct(quiet, method="tie", backend="cpu").info


def test_a_plan_says_when_its_integer_planes_are_not_counts(absorbing_object, monkeypatch):
    """Integer planes in detector units (a gain of 20): reconstruct measured
    their noise and warned; a Plan took them as electron counts without a
    word. It checks the first such planes (and again after the recheck
    time), warns, and every solve's info says so."""
    from flowtie_fast import plan as plan_module

    phi, t = absorbing_object
    counts = _counts(t, 1e3, np.random.default_rng(4))
    adu = [(20 * c).astype(np.uint32) for c in counts]
    plan = ft.Plan(phi.shape, PIXEL, 40.0, E, method="tie", backend="cpu")
    with pytest.warns(ft.TrustWarning, match=r"^planes: integer planes whose noise .* is "
                      r"(19|20|21) times that of electron counts of their mean: taken as "
                      "counts"):
        plan.solve(*adu)
    assert plan.info["noise"] == "poisson"
    assert "times that of electron counts" in plan.info["trust"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)  # warned once, not at every frame
        plan.solve(*adu)
    assert "times that of electron counts" in plan.info["trust"]
    right = ft.Plan(phi.shape, PIXEL, 40.0, E, method="tie", backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)  # the dose's "no signal"
        right.solve(*counts)
    assert "electron counts" not in str(right.info.get("trust"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        # counts again, 20 times smaller: checked anew at once (it kept the
        # verdict for the recheck time), the alarm cleared
        plan.solve(*counts)
    assert "electron counts" not in str(plan.info.get("trust"))
    monkeypatch.setattr(plan_module, "ORIENTATION_RECHECK_S", 0.0)
    with pytest.warns(ft.TrustWarning, match="times that of electron counts"):
        plan.solve(*adu)  # and after the recheck time, whatever they are
    # icom's phase does not read the planes' noise: nothing to say of it
    g = np.zeros((2,) + phi.shape, np.float32)
    g[0] = np.gradient(phi, PIXEL, axis=0)
    icom = ft.Plan(phi.shape, PIXEL, 40.0, E, method="icom", backend="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        icom.solve(*adu, gradient=g)
    assert not any("electron counts" in str(w.message) for w in caught)
    assert "electron counts" not in str(icom.info.get("trust"))


def test_float_planes_whose_phase_the_noise_dominates_are_warned_of():
    """Where one mode of the focal derivative passes the noise but the noise an
    unregularised solve carries into the phase outweighs it, float planes of
    unknown noise came back as a phase worse than flat (NMSE 3.8) without a
    word: the triplet warns with the estimated share; given the noise, the
    phase is regularised (NMSE 0.2) and nothing is said."""
    from flowtie_fast.evaluation.evaluate import phase_errors
    from flowtie_fast.simulation.optics import defocus_triplet
    from flowtie_fast.triplet import _noise_dominance

    px, n, dz = 0.25, 32, 200.0
    x = np.mgrid[:n, :n][1] * px
    phi = 0.5 * np.cos(2 * np.pi * 3 * x / (n * px))
    base = [p + 99.0 for p in defocus_triplet(phi, dz, px, E).planes]  # I = 100
    truth = phi / 100
    power = np.abs(np.fft.rfft2((base[2] - base[0]) / (2 * dz))).max() ** 2
    sigma = np.sqrt(power / (20 * n * n * 2 / (2 * dz) ** 2))  # the mode 20 x the noise
    rng = np.random.default_rng(0)
    planes = [p + rng.normal(0, sigma, p.shape) for p in base]
    with pytest.warns(ft.TrustWarning, match=r"^planes: their noise is unknown .* amounts to "
                      r"an estimated [\d.]+ times the phase's power \(limit 0.3\)"):
        t = ft.FocalTriplet(*planes, dz=dz, pixel_size=px, energy=E)
    rec = ft.reconstruct(t, method="tie", backend="cpu")
    assert rec.info["trust"].startswith(t.noise_check)
    assert phase_errors(np.asarray(rec.phase), truth)[1] > 1.5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        given = ft.FocalTriplet(*planes, dz=dz, pixel_size=px, energy=E, noise=sigma ** 2)
    assert given.noise_check is None
    assert not [w for w in caught if "noise" in str(w.message)]
    regularised = ft.reconstruct(given, method="tie", backend="cpu")
    assert phase_errors(np.asarray(regularised.phase), truth)[1] < 0.5
    # the estimate: one mode of power 5 N at 1/q⁴ = 1 over a white noise N on 3 modes
    inverse = np.array([[0.0, 1.0, 1.0, 1.0]])  # 1/q⁴, 0 at the mean
    assert _noise_dominance(np.array([[0.0, 5.0, 1.0, 1.0]]), 1.0,
                            inverse) == pytest.approx(3 / 4)
    assert _noise_dominance(np.ones((1, 4)), 1.0, inverse) == np.inf
