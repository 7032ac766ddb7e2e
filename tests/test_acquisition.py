"""Acquisition effects on noise-free data: counts (dose, Poisson, gain noise,
gain map), drift of the scan, source blur, their order in apply(), random
conditions, and the refusal of bad arguments."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest

from flowtie_fast.simulation.acquisition import (FWHM_PER_SIGMA, apply, counts, crop_margin, drift,
                                      random_conditions, source_blur)
from flowtie_fast.errors import InputError


def _periodic_field(shape, shift=(0.0, 0.0)):
    """A band-limited periodic field (no Nyquist content) sampled at ``y - dy``,
    ``x - dx``: the analytic field shifted by ``shift``."""
    ny, nx = shape
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    y, x = y - shift[0], x - shift[1]
    return (2.0 + np.cos(2 * np.pi * (3 * y / ny + 2 * x / nx))
            + 0.5 * np.sin(2 * np.pi * (5 * y / ny - 7 * x / nx) + 0.3)
            + 0.25 * np.cos(2 * np.pi * (ny // 2 - 1) * y / ny))


def _smooth_field(seed=4, fmax=0.1, k=12):
    """A smooth non-periodic field f(y, x): a sum of cosines of random
    frequencies up to ``fmax`` cycles per pixel."""
    r = np.random.default_rng(seed)
    fr = r.uniform(-fmax, fmax, (k, 2))
    ph = r.uniform(0, 2 * np.pi, k)

    def f(y, x):
        return 3.0 + sum(np.cos(2 * np.pi * (fr[i, 0] * y + fr[i, 1] * x) + ph[i])
                         for i in range(k)) / np.sqrt(k)
    return f


# -- counts --------------------------------------------------------------------


def test_counts_mean_is_dose_times_area():
    rng = np.random.default_rng(0)
    patterns = 37.0 * rng.random((16, 16, 8, 8))  # any scale
    dose, step = 1e3, (0.2, 0.3)
    c = counts(patterns, dose, step, rng)
    expected = dose * step[0] * step[1] * 16 * 16  # electrons in all patterns
    assert c.dtype == np.float32 and c.shape == patterns.shape
    assert abs(c.sum() - expected) < 5 * np.sqrt(expected)
    # Each pixel's mean is its share of the pattern's electrons.
    c = counts(patterns, 1e6, step, rng).astype(np.float64)
    lam = patterns * (1e6 * step[0] * step[1] / patterns.sum(axis=(2, 3)).mean())
    assert np.abs(c - lam).max() < 6 * np.sqrt(lam.max())

    # Images: each pixel is a "pattern", the mean pixel holds dose x pixel area.
    image = 5.0 + rng.random((64, 64))
    c = counts(image, 500.0, 0.1, rng)
    expected = 500.0 * 0.01 * image.size
    assert abs(c.sum() - expected) < 5 * np.sqrt(expected)


@pytest.mark.parametrize("gain_noise", [0.0, 0.3])
def test_gain_noise_variance_over_mean(gain_noise):
    """Poisson electrons with gamma gains: variance / mean = 1 + gain_noise²."""
    rng = np.random.default_rng(1)
    flat = np.ones((64, 64, 16, 16), np.float32)
    dose = 4.0 * 256  # 4 electrons per pixel at a 1 Å step
    c = counts(flat, dose, 1.0, rng, gain_noise=gain_noise).astype(np.float64)
    assert c.mean() == pytest.approx(4.0, abs=0.01)
    assert c.var() / c.mean() == pytest.approx(1 + gain_noise**2, abs=0.01)


def test_gain_map_is_fixed_per_detector_pixel():
    rng = np.random.default_rng(2)
    flat = np.ones((64, 64, 8, 8))
    c = counts(flat, 1e3 * 64, 1.0, rng, gain_map=0.1).astype(np.float64)
    first, second = c[:32].mean(axis=(0, 1)), c[32:].mean(axis=(0, 1))
    rel = first / first.mean()
    assert 0.07 < rel.std() < 0.13
    assert np.corrcoef(first.ravel(), second.ravel())[0, 1] > 0.99  # the same map everywhere
    # A given map multiplies the counts of its pixel.
    g = np.linspace(0.5, 1.5, 64).reshape(8, 8)
    c = counts(flat, 1e3 * 64, 1.0, rng, gain_map=g).astype(np.float64)
    np.testing.assert_allclose(c.mean(axis=(0, 1)) / 1e3, g, rtol=0.01)


def test_counts_non_negative():
    rng = np.random.default_rng(3)
    patterns = rng.normal(1.0, 1.0, (8, 8, 8, 8))  # ringing: some negative intensities
    c = counts(patterns, 1e2, 0.5, rng, gain_noise=0.5, gain_map=0.3)
    assert (c >= 0).all() and c.sum() > 0
    assert (counts(patterns, 1e4, 0.5, rng)[patterns < 0] == 0).all()


def test_counts_reproducible_with_a_seed():
    patterns = np.random.default_rng(4).random((8, 8, 16, 16))
    kw = dict(gain_noise=0.2, gain_map=0.05)
    a = counts(patterns, 50.0, 0.2, np.random.default_rng(7), **kw)
    b = counts(patterns, 50.0, 0.2, np.random.default_rng(7), **kw)
    c = counts(patterns, 50.0, 0.2, np.random.default_rng(8), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_counts_integer_dtype():
    rng = np.random.default_rng(5)
    patterns = rng.random((4, 4, 8, 8))
    c = counts(patterns, 1e3, 0.5, rng, gain_noise=0.2, dtype=np.uint16)
    assert c.dtype == np.uint16 and c.sum() > 0
    with pytest.raises(InputError, match="dtype.*uint8"):
        counts(np.ones((4, 4, 2, 2)), 1e6, 1.0, rng, dtype=np.uint8)


# -- drift -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(12, 10), (6, 5, 3, 4)])
@pytest.mark.parametrize("shift", [(1, -2), (-7, 13), (0, 3)])
def test_integer_periodic_drift_is_roll(shape, shift):
    a = np.random.default_rng(6).random(shape).astype(np.float32)
    out = drift(a, shift)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.roll(a, shift, axis=(0, 1)))


def test_subpixel_periodic_drift_matches_the_shifted_field():
    shift = (0.37, -1.61)  # positive dy: features move to larger row indices
    a = _periodic_field((32, 24)).astype(np.float32)
    expected = _periodic_field((32, 24), shift)
    out = drift(a, shift)
    assert out.dtype == np.float32
    assert np.abs(out - expected).max() < 1e-5 * np.abs(expected).max()
    # float64 to rounding
    np.testing.assert_allclose(drift(a.astype(np.float64), shift), expected, atol=1e-5)


def test_drift_back_returns_the_input():
    # Odd sizes: no Nyquist component; values away from zero, so that the
    # shift's ringing stays above the clip at zero (it is exact there only).
    a = 1.0 + np.random.default_rng(7).random((15, 17))
    np.testing.assert_allclose(drift(drift(a, (0.3, -2.7)), (-0.3, 2.7)), a, atol=1e-12)
    out = drift(a, (0.0, 0.0))
    np.testing.assert_array_equal(out, a)
    assert out is not a


def test_nonperiodic_integer_drift_is_a_crop():
    m = 4
    big = np.random.default_rng(8).random((20 + 2 * m, 18 + 2 * m, 3, 2)).astype(np.float32)
    out = drift(big, (2, -3), periodic=False, margin=m)
    np.testing.assert_array_equal(out, big[m - 2:m - 2 + 20, m + 3:m + 3 + 18])
    np.testing.assert_array_equal(drift(big, (0, 0), periodic=False, margin=m),
                                  crop_margin(big, m))
    np.testing.assert_array_equal(crop_margin(big, m), big[m:-m, m:-m])


@pytest.mark.parametrize("shift", [(2.4, -3.7), (0.5, 0.5), (-4.0, 3.3)])
def test_nonperiodic_subpixel_drift_matches_the_shifted_field(shift):
    m, n = 8, 32
    f = _smooth_field()
    y, x = np.mgrid[-m:n + m, -m:n + m].astype(np.float64)
    out = drift(f(y, x), shift, periodic=False, margin=m)
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    expected = f(yy - shift[0], xx - shift[1])
    assert out.shape == (n, n)
    assert np.abs(out - expected).max() < 3e-3  # the field's amplitude is about 1


def test_drift_beyond_the_margin_is_refused():
    big = np.ones((16, 16))
    with pytest.raises(InputError, match=r"shift.*margin of 2"):
        drift(big, (2.5, 0.0), periodic=False, margin=2)
    with pytest.raises(InputError, match="shift"):
        drift(big, (0.0, 0.5), periodic=False)  # no margin: no room to drift into
    with pytest.raises(InputError, match="margin.*periodic"):
        drift(big, (1.0, 0.0), periodic=True, margin=2)
    with pytest.raises(InputError, match="margin"):
        drift(big, (1.0, 0.0), periodic=False, margin=8)
    with pytest.raises(InputError, match="margin"):
        crop_margin(big, -1)


def _sparse_counts(shape, seed=21):
    """Sparse electron counts: mostly zeros and isolated ones, where a Fourier
    interpolation rings below zero."""
    return np.random.default_rng(seed).poisson(0.3, shape).astype(np.float64)


@pytest.mark.parametrize("op", ["drift", "drift-nonperiodic", "blur", "blur-nonperiodic",
                                "apply", "apply-nonperiodic"])
def test_interpolated_counts_stay_non_negative(op):
    """drift(counts, (0.5, 0.3)) gave values down to -0.66, and apply() without a
    dose 4D data down to -1e-6, which FocalTriplet refuses: the ringing below
    zero is clipped, and nothing else changes (the unclipped result, read by
    shifting the counts plus a constant, agrees wherever it is positive)."""
    periodic = not op.endswith("nonperiodic")
    m = 0 if periodic else 2
    shape = (16 + 2 * m, 14 + 2 * m, 3, 3) if op.startswith("apply") else (24, 20)
    c = _sparse_counts(shape)

    def run(a):
        if op.startswith("drift"):
            return drift(a, (0.5, 0.3), periodic=periodic, margin=m)
        if op.startswith("blur"):
            return source_blur(a, 0.3, 0.2, periodic=periodic)
        planes, _ = apply([a, a, a], rng=np.random.default_rng(0), scan_step=0.2,
                          drift=[[0.5, 0.3], [0, 0], [-1.2, 0.7]], source_fwhm=0.05,
                          periodic=periodic, margin=m)
        return np.stack(planes)

    out = run(c)
    assert out.min() == 0.0
    unclipped = run(c + 100.0) - 100.0
    assert unclipped.min() < -1e-3  # there was ringing to clip
    np.testing.assert_allclose(out, np.maximum(unclipped, 0.0), atol=1e-9)
    if op.startswith("apply"):  # valid intensities of a triplet
        import flowtie_fast as ft

        ft.FocalTriplet(*(p.sum(axis=(2, 3)) for p in out), dz=20.0, pixel_size=0.2,
                        energy=300e3)
    # Whole-pixel moves are exact: nothing is clipped, negatives included.
    signed = c - 0.5
    if op == "drift":
        np.testing.assert_array_equal(drift(signed, (2, -3)), np.roll(signed, (2, -3), (0, 1)))
    if op == "drift-nonperiodic":
        np.testing.assert_array_equal(drift(signed, (1, -2), periodic=False, margin=m),
                                      signed[m - 1:m - 1 + 20, m + 2:m + 2 + 16])


# -- source blur -------------------------------------------------------------------


@pytest.mark.parametrize("periodic", [True, False])
def test_source_blur_conserves_the_total(periodic):
    a = np.random.default_rng(9).random((12, 10, 3, 3))
    out = source_blur(a, 0.7, (0.2, 0.25), periodic=periodic)
    assert out.shape == a.shape
    np.testing.assert_allclose(out.sum(axis=(0, 1)), a.sum(axis=(0, 1)), rtol=1e-12)
    assert np.abs(out - a).max() > 0.05  # it did blur


def test_source_blur_of_cosines_is_the_analytic_gaussian_convolution():
    ny, nx, step, fwhm = 24, 30, (0.2, 0.3), 0.8
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    assert FWHM_PER_SIGMA == pytest.approx(2.3548, abs=1e-4)
    y, x = np.mgrid[:ny, :nx].astype(np.float64)
    fy, fx = 3 / (ny * step[0]), 4 / (nx * step[1])  # 1/Å
    a = 2 + np.cos(2 * np.pi * 3 * y / ny) + np.cos(2 * np.pi * 4 * x / nx)
    damp = lambda f: np.exp(-(2 * np.pi * f * sigma) ** 2 / 2)  # noqa: E731
    expected = (2 + damp(fy) * np.cos(2 * np.pi * 3 * y / ny)
                + damp(fx) * np.cos(2 * np.pi * 4 * x / nx))
    np.testing.assert_allclose(source_blur(a, fwhm, step), expected, atol=1e-10)
    # Non-periodic: a cosine even about both ends (its mirror extension is
    # smooth) is blurred exactly too.
    k = 5
    b = 2 + np.cos(np.pi * k * (y + 0.5) / ny)
    f = k / (2 * ny * step[0])
    np.testing.assert_allclose(source_blur(b, fwhm, step, periodic=False),
                               2 + damp(f) * np.cos(np.pi * k * (y + 0.5) / ny), atol=1e-12)


def test_zero_source_fwhm_returns_the_input():
    a = np.random.default_rng(10).random((8, 8, 4, 4)).astype(np.float32)
    out = source_blur(a, 0.0, 0.2)
    np.testing.assert_array_equal(out, a)
    assert out is not a and out.dtype == np.float32


@pytest.mark.parametrize("op", ["drift", "blur", "drift-nonperiodic", "blur-nonperiodic"])
def test_4d_acts_on_the_scan_axes_only(op):
    rng = np.random.default_rng(11)
    m = 2 if op.endswith("nonperiodic") else 0
    periodic = not op.endswith("nonperiodic")

    def run(a):
        if op.startswith("drift"):
            return drift(a, (1.3, -0.6), periodic=periodic, margin=m)
        return source_blur(a, 0.9, 0.2, periodic=periodic)

    # Data that vary only along the detector are left as they are.
    detector = rng.random((5, 7))
    a = np.broadcast_to(detector, (12 + 2 * m, 10 + 2 * m, 5, 7)).copy()
    out = run(a)
    np.testing.assert_allclose(out, np.broadcast_to(detector, out.shape), rtol=1e-12)
    # Each detector pixel's scan image is processed as an image on its own.
    a = rng.random((12 + 2 * m, 10 + 2 * m, 3, 2))
    out = run(a)
    for i in range(3):
        for j in range(2):
            np.testing.assert_allclose(out[:, :, i, j], run(a[:, :, i, j]), rtol=1e-12)


# -- apply ----------------------------------------------------------------------


def _triplet(shape, seed=12):
    r = np.random.default_rng(seed)
    return [(1.0 + r.random(shape)).astype(np.float32) for _ in range(3)]


def test_apply_order_and_shapes():
    m, step, fwhm = 3, (0.2, 0.2), 0.6
    planes = _triplet((14 + 2 * m, 12 + 2 * m, 4, 4))
    shifts = np.array([[1.4, -2.5], [0.0, 0.0], [-3.0, 0.6]])
    out, info = apply(planes, rng=np.random.default_rng(0), drift=shifts, source_fwhm=fwhm,
                      scan_step=step, periodic=False, margin=m)
    assert [o.shape for o in out] == [(14, 12, 4, 4)] * 3
    assert all(o.dtype == np.float32 for o in out)
    for o, p, s in zip(out, planes, shifts):
        blur_first = drift(source_blur(p, fwhm, step, periodic=False), s, periodic=False,
                           margin=m)
        np.testing.assert_allclose(o, blur_first, rtol=1e-5, atol=1e-5)
    # Blurring after the crop gives other edges: the order is checked.
    drift_first = source_blur(drift(planes[0], shifts[0], periodic=False, margin=m), fwhm, step,
                              periodic=False)
    assert np.abs(out[0] - drift_first).max() > 1e-2

    # Counts come last, drawn in the order minus, zero, plus.
    dose = 2e3
    out, info = apply(planes, rng=np.random.default_rng(5), dose=dose, gain_noise=0.1,
                      drift=shifts, source_fwhm=fwhm, scan_step=step, periodic=False, margin=m)
    rng = np.random.default_rng(5)
    for o, p, s in zip(out, planes, shifts):
        noise_free = drift(source_blur(p, fwhm, step, periodic=False), s, periodic=False,
                           margin=m)
        np.testing.assert_array_equal(o, counts(noise_free, dose, step, rng, gain_noise=0.1))
    assert info["order"] == ["source_blur", "drift", "counts"]
    assert info["dose"] == dose and info["electrons_per_pattern"] == pytest.approx(80.0)
    assert info["drift"] == shifts.tolist() and info["shape"] == [14, 12, 4, 4]
    assert info["source_fwhm"] == fwhm and info["margin"] == m and info["periodic"] is False
    json.dumps(info)


def test_apply_periodic_images_and_objects():
    planes = _triplet((16, 16))
    case = SimpleNamespace(minus=planes[0], zero=planes[1], plus=planes[2])
    shifts = [[0.5, 0.25], [0, 0], [-1, 2]]
    out, info = apply(case, rng=np.random.default_rng(1), drift=shifts, scan_step=0.1)
    assert [o.shape for o in out] == [(16, 16)] * 3
    np.testing.assert_array_equal(out[1], planes[1])  # the in-focus scan stays put
    np.testing.assert_array_equal(out[2], np.roll(planes[2], (-1, 2), axis=(0, 1)))
    np.testing.assert_allclose(out[0], drift(planes[0], (0.5, 0.25)), rtol=1e-6)
    assert info["dose"] is None and info["gain_map"] is None


def test_apply_shares_one_gain_map():
    planes = [np.ones((32, 32, 8, 8), np.float32)] * 3
    out, info = apply(planes, rng=np.random.default_rng(2), dose=1e3 * 64, gain_map=0.1,
                      scan_step=1.0)
    means = [o.mean(axis=(0, 1)).ravel() for o in out]
    assert np.corrcoef(means[0], means[2])[0, 1] > 0.99
    assert info["gain_map"] == 0.1


def test_apply_time_budget():
    """The whole triplet of (32, 32, 64, 64) float32 scans in well under a few seconds."""
    import time

    planes = _triplet((32, 32, 64, 64))
    start = time.perf_counter()
    out, _ = apply(planes, rng=np.random.default_rng(3), dose=1e4, gain_noise=0.1, gain_map=0.05,
                   drift=[[1.3, -0.4], [0, 0], [-2.2, 0.7]], source_fwhm=0.5, scan_step=0.2)
    assert time.perf_counter() - start < 10.0
    assert all(np.isfinite(o).all() and (o >= 0).all() for o in out)


# -- random conditions ------------------------------------------------------------


def test_random_conditions_distributions():
    ranges = {"dose": (1e2, 1e6), "gain_noise": (0.0, 0.3), "drift": 5.0,
              "source_fwhm": (0.0, 1.0)}
    rng = np.random.default_rng(4)
    draws = [random_conditions(rng, ranges) for _ in range(2000)]
    doses = np.log10([d["dose"] for d in draws])
    assert doses.min() >= 2 and doses.max() <= 6
    assert doses.mean() == pytest.approx(4.0, abs=0.1)  # log-uniform
    assert np.histogram(doses, bins=4, range=(2, 6))[0].min() > 400
    g = np.array([d["gain_noise"] for d in draws])
    assert g.min() >= 0 and g.max() <= 0.3 and g.mean() == pytest.approx(0.15, abs=0.01)
    d = np.array([c["drift"] for c in draws])
    assert d.shape == (2000, 3, 2) and (d[:, 1] == 0).all()
    assert np.abs(d).max() <= 5 and np.abs(d[:, [0, 2]]).mean() == pytest.approx(2.5, abs=0.1)
    assert d[:, [0, 2]].mean() == pytest.approx(0.0, abs=0.15)  # both signs alike
    a = random_conditions(np.random.default_rng(9), ranges)
    b = random_conditions(np.random.default_rng(9), ranges)
    assert a["dose"] == b["dose"] and np.array_equal(a["drift"], b["drift"])
    assert random_conditions(rng, {}) == {"dose": None, "gain_noise": 0.0, "gain_map": None,
                                          "drift": None, "source_fwhm": 0.0}
    assert random_conditions(rng, {"dose": 1e3})["dose"] == 1e3
    # The conditions go straight into apply().
    out, info = apply(_triplet((8, 8)), rng=rng, scan_step=0.2, **a)
    assert info["dose"] == a["dose"]
    with pytest.raises(InputError, match="ranges.*'noise'"):
        random_conditions(rng, {"noise": 0.1})
    with pytest.raises(InputError, match="ranges.*dose"):
        random_conditions(rng, {"dose": (0.0, 1e3)})


# -- bad arguments -------------------------------------------------------------------


_PLANES = _triplet((8, 8, 2, 2))
_GOOD = dict(rng=np.random.default_rng(0), scan_step=0.2, dose=1e3)


@pytest.mark.parametrize("call, name, value", [
    (lambda: counts(np.ones((4, 4)), -1.0, 0.2, np.random.default_rng(0)), "dose", "-1.0"),
    (lambda: apply(_PLANES, **{**_GOOD, "dose": -5.0}), "dose", "-5.0"),
    (lambda: apply(_PLANES, **_GOOD, drift=[[np.nan, 0], [0, 0], [0, 0]]), "drift", "nan"),
    (lambda: apply(_PLANES, **_GOOD, drift=[[1, 0], [0, 0]]), "drift", r"\(2, 2\)"),
    (lambda: apply(_PLANES, **_GOOD, drift=[[1, 0], [1, 0], [0, 0]]), "drift", "in-focus"),
    (lambda: apply(_PLANES, **_GOOD, gain_noise=-0.1), "gain_noise", "-0.1"),
    (lambda: counts(np.ones((4, 4)), 1.0, 0.2, np.random.default_rng(0), gain_noise=-0.1),
     "gain_noise", "-0.1"),
    (lambda: apply(_PLANES, **_GOOD, source_fwhm=-1.0), "source_fwhm", "-1.0"),
    (lambda: source_blur(np.ones((4, 4)), -0.5, 0.2), "source_fwhm", "-0.5"),
    (lambda: drift(np.ones((4, 4)), (np.nan, 0)), "shift", "nan"),
    (lambda: drift(np.ones((4, 4)), (1, 2, 3)), "shift", "expected"),
    (lambda: drift(np.full((4, 4), np.inf), (1, 0)), "data", "NaN or Inf"),
    (lambda: counts(np.full((4, 4), np.nan), 1.0, 0.2, np.random.default_rng(0)),
     "patterns", "NaN or Inf"),
    (lambda: apply([np.ones((4, 4)), np.ones((4, 4)), np.full((4, 4), np.nan)], **_GOOD),
     "case_planes", "NaN or Inf"),
    (lambda: source_blur(np.ones((4, 4, 4)), 0.5, 0.2), "data", r"\(4, 4, 4\)"),
    (lambda: counts(np.ones(5), 1.0, 0.2, np.random.default_rng(0)), "patterns", r"\(5,\)"),
    (lambda: apply(_PLANES[:2], **_GOOD), "case_planes", "three"),
    (lambda: apply([np.ones((4, 4)), np.ones((4, 4)), np.ones((5, 4))], **_GOOD),
     "case_planes", "one shape"),
    (lambda: apply(_PLANES, **{**_GOOD, "dose": None}, gain_noise=0.1), "gain_noise", "dose"),
    (lambda: apply(_PLANES, **{**_GOOD, "rng": 0}), "rng", "Generator"),
    (lambda: apply(_PLANES, **{**_GOOD, "scan_step": 0.0}), "scan_step", "0.0"),
    (lambda: apply(_PLANES, **_GOOD, periodic="no"), "periodic", "'no'"),
    (lambda: apply(_PLANES, **_GOOD, drift=[[3, 0], [0, 0], [0, 0]], periodic=False, margin=2),
     "drift", "margin of 2"),
    (lambda: counts(np.ones((4, 4, 2, 2)), 1.0, 0.2, np.random.default_rng(0),
                    gain_map=np.ones((3, 3))), "gain_map", r"\(2, 2\)"),
    (lambda: counts(np.zeros((4, 4)), 1.0, 0.2, np.random.default_rng(0)), "patterns",
     "positive"),
])
def test_bad_arguments_are_named(call, name, value):
    with pytest.raises(InputError, match=name) as err:
        call()
    assert str(err.value).startswith(name)
    assert re.search(value, str(err.value)), str(err.value)


@pytest.mark.parametrize("kw", [dict(gain_noise=1e-300), dict(gain_noise=1e-9),
                                dict(gain_map=1e-300)])
def test_a_spread_too_small_to_change_the_variance_draws_exact_counts(kw):
    # gain_noise=1e-300 divided by zero (1 / gain_noise**2)
    flat = np.ones((8, 8))
    c = counts(flat, 100.0, (1, 1), np.random.default_rng(0), dtype=np.float64, **kw)
    exact = counts(flat, 100.0, (1, 1), np.random.default_rng(0), dtype=np.float64)
    np.testing.assert_array_equal(c, exact)
