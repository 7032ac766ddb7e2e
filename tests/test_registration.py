"""Drift registration (flowtie_fast.stem.registration): shift estimates against known
translations, shifting, triplets, refusal of unreliable estimates, bad arguments."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from fields import periodic_field

from flowtie_fast.errors import InputError
from flowtie_fast.simulation.optics import defocus_triplet, gaussian_bumps
from flowtie_fast.stem.registration import (RegistrationWarning, Shift, apply_shift, estimate_shift,
                                       register_triplet)

SHIFTS = [(3.0, -2.0), (0.373, -4.612), (-4.93, 2.281), (5.0, 4.5), (-1.5, 0.25)]


def bandlimited(shape, kmax, seed):
    """A periodic random field (unit variance) whose Fourier coefficients are
    zero beyond ``kmax`` cycles/px (and at the Nyquist frequency)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    f[np.hypot(fy, fx) >= kmax] = 0
    a = np.fft.ifft2(f).real
    return a / a.std()


def translate(a, d):
    """The periodic band-limited image ``a`` with its content moved by ``d``
    px (full complex spectrum: independent of the module under test)."""
    fy = np.fft.fftfreq(a.shape[0])[:, None]
    fx = np.fft.fftfreq(a.shape[1])[None, :]
    return np.fft.ifft2(np.fft.fft2(a) * np.exp(-2j * np.pi * (fy * d[0] + fx * d[1]))).real


def error(shift, d):
    """Distance (px) between an estimate and the shift -d that undoes a
    displacement d."""
    return float(np.hypot(shift.dy + d[0], shift.dx + d[1]))


def quiet(fn, *args, **kwargs):
    """Call ``fn`` and fail on any RegistrationWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegistrationWarning)
        return fn(*args, **kwargs)


# --------------------------------------------------------------- estimate_shift


@pytest.mark.parametrize("d", SHIFTS)
def test_periodic_bandlimited_shift(d):
    a = bandlimited((128, 112), 0.3, seed=1)
    s = estimate_shift(a, translate(a, d))
    assert error(s, d) < 0.008  # the 1/100 px grid
    assert s.quality > 0.8


@pytest.mark.parametrize("d", SHIFTS[:3])
def test_periodic_field_of_fields_py(d):
    # A TIE plane of the analytic field: a few harmonics, so a correct but
    # ambiguous-looking correlation (secondary maxima almost as high).
    _, intensity, didz, _ = periodic_field()
    plane = intensity + 20.0 * didz
    s = estimate_shift(plane, translate(plane, d))
    assert error(s, d) < 0.008


def test_upsample_sets_the_grid():
    a = bandlimited((64, 64), 0.3, seed=2)
    d = (1.234, -2.345)
    coarse = estimate_shift(a, translate(a, d), upsample=1)
    assert (coarse.dy, coarse.dx) == (-1.0, 2.0)
    tenth = estimate_shift(a, translate(a, d), upsample=10)
    assert error(tenth, d) < 0.071 and round(tenth.dy * 10) == tenth.dy * 10
    fine = estimate_shift(a, translate(a, d), upsample=1000)
    assert error(fine, d) < 0.001


def test_float32_and_integer_input():
    a = 100 + 20 * bandlimited((96, 96), 0.25, seed=3)
    d = (2.37, -1.61)
    s = estimate_shift(a.astype(np.float32), translate(a, d).astype(np.float32))
    assert error(s, d) < 0.01
    s = estimate_shift(np.round(a).astype(np.uint16), np.round(translate(a, d)).astype(np.uint16))
    assert error(s, d) < 0.02


@pytest.fixture(scope="module")
def large_field():
    return bandlimited((256, 256), 0.15, seed=4)


@pytest.mark.parametrize("d", [(3, -2), (-5, 5), (0, 4), (1, 1)])
def test_non_periodic_integer_crops(large_field, d):
    # Shifted windows of a larger field: content enters and leaves at the edges.
    ref = large_field[64:192, 64:192]
    mov = large_field[64 - d[0]:192 - d[0], 64 - d[1]:192 - d[1]]
    s = estimate_shift(ref, mov, periodic=False)
    assert error(s, d) < 0.02
    assert s.quality > 0.8


@pytest.mark.parametrize("d", [(0.373, -4.612), (-2.5, 1.25), (4.81, 3.07)])
def test_non_periodic_subpixel_crops(large_field, d):
    ref = large_field[64:192, 64:192]
    mov = translate(large_field, d)[64:192, 64:192]  # no wrap-around inside the crop
    assert error(estimate_shift(ref, mov, periodic=False), d) < 0.02
    # Treated as periodic, the edges bias the estimate.
    assert error(estimate_shift(ref, mov, periodic=True), d) > 0.05


def test_non_periodic_with_fixed_illumination(large_field):
    # A ramp and a broad spot that do not move with the specimen.
    y = np.linspace(-1, 1, 128)[:, None]
    x = np.linspace(-1, 1, 128)[None, :]
    illumination = 1 + 0.3 * (0.6 * y + 0.8 * x) + 0.3 * np.exp(-((y - 0.2) ** 2 + x**2) / 0.3)
    d = (2.6, -3.3)
    ref = (2 + 0.3 * large_field[64:192, 64:192]) * illumination
    mov = (2 + 0.3 * translate(large_field, d)[64:192, 64:192]) * illumination
    assert error(estimate_shift(ref, mov, periodic=False), d) < 0.03


@pytest.mark.parametrize("counts", [20, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_poisson_low_counts(counts, seed):
    rng = np.random.default_rng(10 + seed)
    mean = 1 + 0.2 * bandlimited((128, 128), 0.15, seed=20 + seed)
    for d in SHIFTS[1:4]:
        ref = rng.poisson(counts * mean).astype(np.float32)
        mov = rng.poisson(counts * translate(mean, d)).astype(np.float32)
        s = estimate_shift(ref, mov)
        assert error(s, d) < 0.1
        assert s.quality > 0.5


def test_poisson_low_counts_non_periodic(large_field):
    rng = np.random.default_rng(5)
    d = (-3.41, 2.77)
    ref = rng.poisson(30 * (1 + 0.2 * large_field[64:192, 64:192]))
    mov = rng.poisson(30 * (1 + 0.2 * translate(large_field, d)[64:192, 64:192]))
    assert error(estimate_shift(ref, mov, periodic=False), d) < 0.1


def test_inverted_contrast():
    a = bandlimited((96, 96), 0.25, seed=6)
    d = (-2.71, 1.44)
    s = estimate_shift(a, -translate(a, d), invert=True)
    assert error(s, d) < 0.01 and s.quality > 0.8
    # Without invert the maximum of an anti-correlation is no match.
    assert estimate_shift(a, -translate(a, d)).quality < 0.5


def test_quality_separates_matches_from_noise():
    rng = np.random.default_rng(7)
    a = bandlimited((128, 128), 0.1, seed=8)
    assert estimate_shift(a, translate(a, (1.3, 2.1))).quality > 0.8
    for seed in range(4):
        b = bandlimited((128, 128), 0.1, seed=30 + seed)  # unrelated, as smooth
        assert estimate_shift(a, b, invert=True).quality < 0.5
        noise = rng.poisson(30, (2, 128, 128)).astype(float)
        assert estimate_shift(noise[0], noise[1], invert=True).quality < 0.5


def test_featureless_input_has_no_shift():
    a = bandlimited((64, 64), 0.3, seed=9)
    flat = np.full((64, 64), 3.0)
    for ref, mov in ((flat, a), (a, flat), (flat, flat), (np.zeros((64, 64)), a)):
        assert estimate_shift(ref, mov) == Shift(0.0, 0.0, 0.0)
    # In focus, a simulated pure phase object is flat up to rounding.
    minus, focus, _ = fresnel(amplitude=0.0)
    assert 0 < np.ptp(focus) < 1e-9
    assert estimate_shift(focus, minus, invert=True) == Shift(0.0, 0.0, 0.0)


# --------------------------------------------------------------- apply_shift


def test_apply_shift_matches_the_translation():
    a = bandlimited((96, 80), 0.3, seed=11)
    for d in SHIFTS:
        np.testing.assert_allclose(apply_shift(a, d), translate(a, d), atol=1e-12)
    assert np.isrealobj(apply_shift(a, (0.5, 0.5)))


def test_apply_shift_undoes_the_estimate():
    a = bandlimited((128, 112), 0.3, seed=12)
    b = translate(a, (2.61, -3.17))
    aligned = apply_shift(b, estimate_shift(a, b, upsample=1000))
    assert np.abs(aligned - a).max() < 0.01 * np.abs(a).max()


@pytest.mark.parametrize("shape", [(64, 64), (63, 50), (48, 65)])
def test_apply_shift_round_trip(shape):
    a = bandlimited(shape, 0.3, seed=13)
    for s in [(1.37, -2.71), (0.5, 0.5), (-4.2, 3.9)]:
        back = apply_shift(apply_shift(a, s), (-s[0], -s[1]))
        np.testing.assert_allclose(back, a, atol=1e-12)


def test_apply_shift_zero_and_whole_pixels_are_exact():
    rng = np.random.default_rng(14)
    a = rng.random((40, 36)).astype(np.float32)
    for periodic in (True, False):
        out = apply_shift(a, (0.0, 0.0), periodic=periodic)
        assert out.dtype == np.float32 and np.array_equal(out, a) and out is not a
    assert np.array_equal(apply_shift(a, (3, -5)), np.roll(a, (3, -5), axis=(0, 1)))
    # Not periodic: the rows entering at the top are the mirror of the first rows.
    out = apply_shift(a, (2.0, 0.0), periodic=False)
    np.testing.assert_array_equal(out[2:], a[:-2])
    np.testing.assert_array_equal(out[:2], a[1::-1])
    assert apply_shift(a, (0.3, -0.2)).dtype == np.float32
    assert apply_shift(np.arange(100, dtype=np.uint8).reshape(10, 10), (0.5, 0)).dtype == np.float64


def test_apply_shift_non_periodic_interior(large_field):
    d = (2.4, -3.7)
    moved = translate(large_field, d)[64:192, 64:192]
    back = apply_shift(moved, (-d[0], -d[1]), periodic=False)
    truth = large_field[64:192, 64:192]
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(back[inner] - truth[inner]).max() < 0.02 * np.abs(truth).max()
    # Content moves right: the first 4 columns are extrapolated, the last ones
    # are data. There a periodic shift rings (the wrap-around is a jump).
    wrapped = apply_shift(moved, (-d[0], -d[1]), periodic=True)
    edge = (slice(8, -8), slice(-6, None))
    assert np.abs(back[edge] - truth[edge]).max() < 0.1 * np.abs(truth).max()
    assert np.abs(wrapped[edge] - truth[edge]).max() > 3 * np.abs(back[edge] - truth[edge]).max()


# --------------------------------------------------------------- triplets


def fresnel(amplitude=0.1, phase_height=0.5, dz=100.0, n=128, widths=(2.0, 5.0), seed=1):
    """Triplet (I(-dz), I(0), I(+dz)) of a Gaussian-bump phase object (rad),
    0.5 Å pixels, 300 keV, with an absorbing amplitude (0: a pure phase
    object); dz in Å, bump widths in Å."""
    phase = gaussian_bumps(n, 0.5, 60 * (n // 128) ** 2, phase_height, widths, seed=seed)
    amp = 1 - amplitude * gaussian_bumps(n, 0.5, 60 * (n // 128) ** 2, 1.0, widths,
                                         seed=seed + 1) ** 2
    return [np.asarray(p) for p in defocus_triplet(phase, dz, 0.5, 300e3, amplitude=amp).planes]


def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean((b - b.mean()) ** 2)))


@pytest.mark.parametrize("d0,d2", [((2.3, -1.7), (-1.1, 3.4)), ((0.4, 4.6), (-3.9, -0.8))])
def test_fresnel_triplet_drift(d0, d2):
    truth = fresnel()
    planes = [translate(truth[0], d0), truth[1], translate(truth[2], d2)]
    registered, shifts, reliable = quiet(register_triplet, planes)
    assert reliable
    assert shifts.shape == (3, 2) and not shifts[1].any()
    np.testing.assert_allclose(shifts[0], [-d0[0], -d0[1]], atol=0.02)
    np.testing.assert_allclose(shifts[2], [-d2[0], -d2[1]], atol=0.02)
    assert registered[1] is planes[1]
    for i in (0, 2):
        assert rel_rms(registered[i], truth[i]) < 0.01
    # The focal difference, what the TIE uses.
    assert rel_rms(registered[2] - registered[0], truth[2] - truth[0]) < 0.03
    assert rel_rms(planes[2] - planes[0], truth[2] - truth[0]) > 1.0


def test_fresnel_mixed_contrast():
    # Weak absorption and a strong phase: in the pairwise correlations the
    # amplitude and phase contrasts partly cancel; the joint refinement holds.
    truth = fresnel(amplitude=0.03, phase_height=1.0, dz=300.0, widths=(1.5, 4.0))
    d0, d2 = (2.3, -1.7), (-1.1, 3.4)
    planes = [translate(truth[0], d0), truth[1], translate(truth[2], d2)]
    registered, shifts, reliable = quiet(register_triplet, planes)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-d0[0], -d0[1]], [-d2[0], -d2[1]]], atol=0.07)
    assert rel_rms(registered[2] - registered[0], truth[2] - truth[0]) < 0.1


def test_fresnel_pure_phase_object_uniform_drift():
    # The in-focus plane is flat: only the ±dz pair can be matched, and a drift
    # uniform in time (plane 1 midway) is recovered.
    truth = fresnel(amplitude=0.0)
    assert np.ptp(truth[1]) < 1e-9
    d = (1.4, -2.2)
    planes = [translate(truth[0], d), truth[1], translate(truth[2], (-d[0], -d[1]))]
    registered, shifts, reliable = quiet(register_triplet, planes)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-d[0], -d[1]], [d[0], d[1]]], atol=0.02)
    assert rel_rms(registered[2] - registered[0], truth[2] - truth[0]) < 0.03


def test_fresnel_pure_phase_object_uneven_drift():
    # With a flat in-focus plane the frame of the pair is immaterial: the pair
    # is aligned to each other, shifted together by a common offset.
    truth = fresnel(amplitude=0.0)
    d0, d2 = (2.3, -1.7), (-1.1, 3.4)
    planes = [translate(truth[0], d0), truth[1], translate(truth[2], d2)]
    registered, shifts, reliable = quiet(register_triplet, planes)
    assert reliable
    residual0, residual2 = shifts[0] + d0, shifts[2] + d2  # content offset left in each
    np.testing.assert_allclose(residual0, residual2, atol=0.03)
    common = (residual0 + residual2) / 2
    assert rel_rms(registered[2] - registered[0], translate(truth[2] - truth[0], common)) < 0.03


def test_fresnel_triplet_with_signals():
    truth = fresnel(phase_height=1.0, dz=300.0)
    adf = 1 + 0.3 * bandlimited((128, 128), 0.2, seed=15)  # defocus-invariant
    d0, d2 = (2.3, -1.7), (-1.1, 3.4)
    planes = [translate(truth[0], d0), truth[1], translate(truth[2], d2)]
    signals = [translate(adf, d0), adf, translate(adf, d2)]
    registered, shifts, reliable = quiet(register_triplet, planes, signals=signals)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-d0[0], -d0[1]], [-d2[0], -d2[1]]], atol=0.01)
    for i in (0, 2):
        assert rel_rms(registered[i], truth[i]) < 0.005


def test_fresnel_triplet_non_periodic():
    big = fresnel(n=256)
    d0, d2 = (2.3, -1.7), (-1.1, 3.4)
    crop = (slice(64, 192), slice(64, 192))
    truth = [p[crop] for p in big]
    planes = [translate(big[0], d0)[crop], truth[1], translate(big[2], d2)[crop]]
    registered, shifts, reliable = quiet(register_triplet, planes, periodic=False)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-d0[0], -d0[1]], [-d2[0], -d2[1]]], atol=0.05)
    inner = (slice(8, -8), slice(8, -8))
    assert rel_rms(registered[2][inner] - registered[0][inner],
                   truth[2][inner] - truth[0][inner]) < 0.05


@pytest.mark.parametrize("with_signals", [False, True])
def test_zero_drift_leaves_planes_unchanged(with_signals):
    planes = fresnel()
    copies = [p.copy() for p in planes]
    adf = 1 + 0.3 * bandlimited((128, 128), 0.2, seed=16)
    signals = [adf, adf.copy(), adf.copy()] if with_signals else None
    registered, shifts, reliable = quiet(register_triplet, planes, signals=signals)
    assert reliable
    assert np.hypot(*shifts[0]) < 0.02 and np.hypot(*shifts[2]) < 0.02
    for out, given, copy in zip(registered, planes, copies):
        assert out is given and np.array_equal(out, copy)


def test_threshold_reports_but_does_not_apply():
    truth = fresnel()
    planes = [translate(truth[0], (0.3, 0.0)), truth[1], truth[2]]
    registered, shifts, _ = quiet(register_triplet, planes, threshold=0.5)
    assert abs(shifts[0, 0] + 0.3) < 0.02
    assert registered[0] is planes[0]


@pytest.mark.parametrize("kind", ["flat", "noise", "flat-focus-noise"])
def test_featureless_or_noise_triplet_is_unreliable(kind):
    rng = np.random.default_rng(17)
    noise = [rng.poisson(30, (128, 128)).astype(float) for _ in range(3)]
    planes = {"flat": [np.full((128, 128), 5.0)] * 3,
              "noise": noise,
              "flat-focus-noise": [noise[0], np.full((128, 128), 30.0), noise[2]]}[kind]
    with pytest.warns(RegistrationWarning, match=r"plane [02] .*may be wrong.*register=False"):
        _, _, reliable = register_triplet(planes)
    assert reliable is False


def test_noise_signals_are_unreliable():
    rng = np.random.default_rng(18)
    signals = [rng.normal(size=(96, 96)) for _ in range(3)]
    with pytest.warns(RegistrationWarning) as record:
        _, _, reliable = register_triplet(fresnel(n=96), signals=signals)
    assert not reliable
    assert any("from the signals" in str(w.message) and "quality" in str(w.message)
               for w in record)


def test_shift_beyond_max_shift_is_unreliable():
    truth = fresnel()
    planes = [translate(truth[0], (3.0, 2.0)), truth[1], translate(truth[2], (-3.0, -2.0))]
    with pytest.warns(RegistrationWarning, match="exceeds max_shift 2"):
        _, shifts, reliable = register_triplet(planes, max_shift=2.0)
    assert not reliable
    np.testing.assert_allclose(shifts[0], [-3.0, -2.0], atol=0.02)


def test_low_dose_triplet_is_flagged_as_uncertain():
    # 50 counts per pixel: the amplitude contrast gives each plane a clear
    # match, but the weak phase contrast leaves the relative shift of the ±dz
    # planes uncertain by more than 0.1 px.
    rng = np.random.default_rng(19)
    planes = [rng.poisson(50 * p).astype(float) for p in fresnel(amplitude=0.3)]
    with pytest.warns(RegistrationWarning, match=r"relative shift .* uncertain by ±0\.[1-9]"):
        _, _, reliable = register_triplet(planes)
    assert not reliable


# --------------------------------------------------------------- arguments


GOOD = np.ones((16, 16)) + np.arange(16.0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(reference=np.ones(16)), r"reference: expected a 2-D array"),
    (dict(reference=np.ones((2, 16, 16))), r"reference: expected a 2-D array"),
    (dict(moving=np.ones((16, 15))), r"moving: expected shape \(16, 16\)"),
    (dict(reference=np.ones((4, 16))), r"reference: expected at least 8 pixels"),
    (dict(moving=np.ones((16, 16), complex)), r"moving: expected a real image"),
    (dict(moving=np.array([["a"] * 16] * 16)), r"moving: expected a real numeric dtype"),
    (dict(reference=None), r"reference: expected a 2-D real array, got None"),
    (dict(reference=np.ma.masked_array(GOOD)), r"reference: masked arrays"),
    (dict(upsample=0), r"upsample: expected an integer in \[1, 1000\], got 0"),
    (dict(upsample=2.5), r"upsample: expected an integer"),
    (dict(upsample=True), r"upsample: expected an integer"),
    (dict(upsample=5000), r"upsample: expected an integer in \[1, 1000\]"),
    (dict(periodic="no"), r"periodic: expected True or False, got 'no'"),
    (dict(invert=1), r"invert: expected True or False, got 1"),
])
def test_estimate_shift_arguments(kwargs, match):
    args = dict(reference=GOOD, moving=GOOD)
    args.update(kwargs)
    ref, mov = args.pop("reference"), args.pop("moving")
    with pytest.raises(InputError, match=match):
        estimate_shift(ref, mov, **args)


@pytest.mark.parametrize("name", ["reference", "moving"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_estimate_shift_non_finite(name, value):
    bad = GOOD.copy()
    bad[3, 4] = value
    args = dict(reference=GOOD, moving=GOOD)
    args[name] = bad
    with pytest.raises(InputError, match=f"{name}: contains NaN or Inf"):
        estimate_shift(args["reference"], args["moving"])


@pytest.mark.parametrize("image,shift,match", [
    (GOOD, (1.0,), r"shift: expected a Shift or a pair"),
    (GOOD, (1.0, np.nan), r"shift: expected a Shift or a pair .*nan"),
    (GOOD, "up", r"shift: expected a Shift or a pair"),
    (GOOD, (1, 2, 3), r"shift: expected a Shift or a pair"),
    (np.full((16, 16), np.inf), (1, 2), r"image: contains NaN or Inf"),
    (np.ones((16,)), (1, 2), r"image: expected a 2-D array"),
])
def test_apply_shift_arguments(image, shift, match):
    with pytest.raises(InputError, match=match):
        apply_shift(image, shift)


def test_apply_shift_accepts_a_shift():
    a = bandlimited((32, 32), 0.3, seed=21)
    np.testing.assert_array_equal(apply_shift(a, Shift(1.5, -0.5, 0.9)), apply_shift(a, (1.5, -0.5)))


@pytest.mark.parametrize("planes,kwargs,match", [
    ([GOOD, GOOD], {}, r"planes: expected a sequence of three 2-D arrays .*got 2 items"),
    (np.ones((2, 16, 16)), {}, r"planes: expected a sequence of three .*shape \(2, 16, 16\)"),
    (GOOD, {}, r"planes: expected a sequence of three"),
    ([GOOD, GOOD, np.ones((16, 15))], {}, r"planes\[2\]: expected shape \(16, 16\)"),
    ([GOOD, np.full((16, 16), np.nan), GOOD], {}, r"planes\[1\]: contains NaN or Inf"),
    ([GOOD] * 3, dict(signals=[GOOD, GOOD, np.ones((15, 16))]), r"signals\[2\]: expected shape"),
    ([GOOD] * 3, dict(signals=[GOOD]), r"signals: expected a sequence of three"),
    ([GOOD] * 3, dict(max_shift=0), r"max_shift: expected a finite number > 0"),
    ([GOOD] * 3, dict(max_shift=np.inf), r"max_shift: expected a finite number"),
    ([GOOD] * 3, dict(min_quality=1.5), r"min_quality: expected a number in \[0, 1\], got 1.5"),
    ([GOOD] * 3, dict(min_quality=-0.1), r"min_quality: expected a finite number >= 0"),
    ([GOOD] * 3, dict(threshold=-1), r"threshold: expected a finite number >= 0, got -1"),
    ([GOOD] * 3, dict(periodic=None), r"periodic: expected True or False, got None"),
])
def test_register_triplet_arguments(planes, kwargs, match):
    with pytest.raises(InputError, match=match):
        register_triplet(planes, **kwargs)


def _scripted_matches(monkeypatch, e01, e21, e02, own):
    """register_triplet with signals, its pairwise matches given: (dy, dx,
    quality) of signal 0 and signal 2 against signal 1 and of signal 0
    against signal 2, and ``own`` the quality of every self-match."""
    import flowtie_fast.stem.registration as reg
    signals = [np.random.default_rng(i).random((32, 32)) for i in range(3)]
    table = {(1, 0): e01, (1, 2): e21, (2, 0): e02}

    def scripted(reference, moving, *args, **kwargs):
        i = next(k for k, s in enumerate(signals) if s is reference)
        j = next(k for k, s in enumerate(signals) if s is moving)
        return Shift(0.0, 0.0, own) if i == j else Shift(*table[(i, j)])

    monkeypatch.setattr(reg, "_estimate", scripted)  # every match register_triplet makes
    return signals


def test_weak_placing_match_is_checked_by_the_third(monkeypatch):
    """A crystal's lowered bar (0.7 x self-match 0.5 = 0.35) lets a match of
    signal 0 one lattice vector off (quality 0.6) through; the match of the
    ±dz signals (0.3, below the bar) still sees the loop open by 4 px."""
    true0, true2 = (-2.3, 1.7), (1.8, 2.0)
    signals = _scripted_matches(monkeypatch, (true0[0] + 4.0, true0[1], 0.6), (*true2, 0.9),
                                (true0[0] - true2[0], true0[1] - true2[1], 0.3), own=0.5)
    with pytest.warns(RegistrationWarning, match="miss closing by 4.00 px"):
        _, _, reliable = register_triplet(signals, signals=signals, periodic=False)
    assert not reliable


def test_sharp_placing_matches_are_not_refused_by_a_weak_third(monkeypatch):
    """Matches of quality 0.95 and more with signal 1 are trusted over a weak
    (0.3) match of the ±dz signals that misses."""
    signals = _scripted_matches(monkeypatch, (-2.3, 1.7, 0.96), (1.8, 2.0, 0.97),
                                (-1.0, 3.0, 0.3), own=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RegistrationWarning)
        _, shifts, reliable = register_triplet(signals, signals=signals, periodic=False)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-2.3, 1.7], [1.8, 2.0]])


# --------------------------------------------------------------- signals: noise and closure

D0, D2 = (2.3, -1.7), (-1.8, -2.0)


def _drifted_signals(n, counts, seed):
    """Dark-field-like signals of an n x n field of view cut from a larger
    smooth field (contrast 0.3), the -dz and +dz scans drifted by D0 and D2,
    with Poisson noise at ``counts`` per pixel."""
    big = bandlimited((3 * n, 3 * n), 0.2, seed=100 + seed)
    big = 1 + 0.3 * big / np.abs(big).max()
    clean = [translate(big, D0), big, translate(big, D2)]
    rng = np.random.default_rng(seed)
    return [rng.poisson(counts * a[n:2 * n, n:2 * n]).astype(float) for a in clean]


def _register_signals(signals):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RegistrationWarning)
        _, shifts, reliable = register_triplet(signals, signals=signals, periodic=False)
    err = max(error(Shift(*shifts[0], 1.0), D0), error(Shift(*shifts[2], 1.0), D2))
    return shifts, reliable, err


def test_shift_sigma_matches_the_spread_of_repeated_estimates():
    a = bandlimited((64, 64), 0.15, seed=3)
    a = 1 + 0.3 * a / np.abs(a).max()
    b = translate(a, (2.3, -1.7))
    rng = np.random.default_rng(1)
    found = [estimate_shift(rng.poisson(100 * a).astype(float), rng.poisson(100 * b).astype(float))
             for _ in range(60)]
    spread = np.array([(s.dy, s.dx) for s in found]).std(axis=0).max()
    sigma = np.median([s.sigma for s in found])
    assert 0.75 * spread < sigma < 1.25 * spread
    assert estimate_shift(a, b).sigma < 1e-3  # noise-free: rounding only
    assert Shift(1.0, 2.0, 0.5).sigma is None


def test_low_dose_signals_do_not_pass_a_wrong_shift():
    # 150 counts per pixel on a 20 px field: noise moves the correlation peak
    # of some triplets by more than 0.5 px while the three matches still close.
    results = [_register_signals(_drifted_signals(20, 150, seed)) for seed in range(20)]
    assert not [seed for seed, (_, reliable, err) in enumerate(results) if reliable and err > 0.5]
    assert any(reliable for _, reliable, _ in results)


def test_well_measured_small_fields_pass():
    for seed in range(20):
        shifts, reliable, err = _register_signals(_drifted_signals(20, 15000, seed))
        assert reliable and err < 0.5, (seed, shifts)


def test_noisy_placing_match_is_refused(monkeypatch):
    """Matches that close but whose peak noise is 0.3 px are not trusted."""
    signals = _scripted_matches(monkeypatch, (-2.3, 1.7, 0.8, 0.3), (1.8, 2.0, 0.8, 0.05),
                                (-4.1, -0.3, 0.8, 0.3), own=0.9)
    with pytest.warns(RegistrationWarning, match=r"plane 0 .* uncertain by ±0\.30 px"):
        _, _, reliable = register_triplet(signals, signals=signals, periodic=False)
    assert not reliable


def test_loop_within_its_tolerance_passes(monkeypatch):
    """Two estimates of the ±dz signals' relative shift, each within 0.5 px,
    may differ by 0.6 px: the loop closes within 0.71 px."""
    signals = _scripted_matches(monkeypatch, (-2.3, 1.7, 0.8, 0.02), (1.8, 2.0, 0.8, 0.02),
                                (-4.1 + 0.6, -0.3, 0.7, 0.02), own=0.9)
    _, shifts, reliable = quiet(register_triplet, signals, signals=signals, periodic=False)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-2.1, 1.7], [1.6, 2.0]])  # the loop shared
    signals = _scripted_matches(monkeypatch, (-2.3, 1.7, 0.8, 0.02), (1.8, 2.0, 0.8, 0.02),
                                (-4.1 + 0.8, -0.3, 0.7, 0.02), own=0.9)
    with pytest.warns(RegistrationWarning, match="miss closing by 0.80 px"):
        _, _, reliable = register_triplet(signals, signals=signals, periodic=False)
    assert not reliable


def test_sharp_placing_matches_are_not_refused_by_a_sharp_third(monkeypatch):
    """Placing matches of quality 0.95 and more are used as found even where
    the ±dz match reaches the bar and misses closing."""
    signals = _scripted_matches(monkeypatch, (-2.3, 1.7, 0.97), (1.8, 2.0, 0.96),
                                (-3.0, 0.0, 0.6), own=0.9)
    _, shifts, reliable = quiet(register_triplet, signals, signals=signals, periodic=False)
    assert reliable
    np.testing.assert_allclose(shifts[[0, 2]], [[-2.3, 1.7], [1.8, 2.0]])


# ------------------------------------------------------- image triplets: window, default, files

def _drifted_fresnel(n, d):
    """A Fresnel triplet of ``n`` px a side with its ±dz planes moved by ±``d``
    (px, (dy, dx)), mirror-extended at the edges as a window of a larger
    field would be."""
    truth = fresnel(n=n)
    return truth, [apply_shift(truth[0], d, periodic=False), truth[1],
                   apply_shift(truth[2], (-d[0], -d[1]), periodic=False)]


def test_large_images_are_registered_from_their_central_window(monkeypatch):
    """Images over the window are measured on its central part only: the
    shift found is the one of the whole field, and the estimator never sees
    the full planes."""
    import flowtie_fast as ft
    from flowtie_fast.stem import focal

    monkeypatch.setattr(focal, "REGISTRATION_WINDOW", 128)
    seen = []
    real = focal.register_triplet
    monkeypatch.setattr(focal, "register_triplet",
                        lambda planes, **kw: seen.append(planes[0].shape) or real(planes, **kw))
    truth, planes = _drifted_fresnel(256, (0.6, -1.3))
    t = quiet(ft.FocalTriplet, *planes, dz=100.0, pixel_size=0.5, energy=300e3, register=True)
    assert seen == [(128, 128)]
    assert t.registration["applied"] and t.registration["reliable"]
    np.testing.assert_allclose(t.registration["shifts"][0], [-0.6, 1.3], atol=0.05)
    np.testing.assert_allclose(t.registration["shifts"][2], [0.6, -1.3], atol=0.05)
    assert t.planes[0].shape == (256, 256)
    inner = (slice(16, -16),) * 2
    assert rel_rms(np.asarray(t.planes[2] - t.planes[0])[inner],
                   (truth[2] - truth[0])[inner]) < 0.05


def test_image_triplets_are_not_registered_unless_asked():
    """The default for images is off. Asked for, on a field of strong
    intensity contrast with uneven steps (-6, +15 Å), the estimate read the
    defocus change as a shift of 0.4 px (the ±dz planes taken for mirror
    images about the in-focus one, true of even steps only), and applying
    it ruined an exact TIE phase (NMSE 15); it now finds none."""
    import flowtie_fast as ft
    from fields import rel_rms as phase_rms

    phi, intensity, didz, _ = periodic_field(contrast=0.4)
    planes = [intensity + z * didz for z in (-6.0, 0.0, 15.0)]
    kw = dict(dz=(6.0, 15.0), pixel_size=(0.2, 0.25), energy=300e3)
    plain = ft.FocalTriplet(*planes, **kw)
    assert plain.registration is None
    rec = ft.reconstruct(plain, method="tie-exact", backend="cpu", dtype="float64")
    assert phase_rms(rec.phase, phi) < 1e-6
    asked = quiet(ft.FocalTriplet, *planes, register=True, **kw)
    assert not asked.registration["applied"]
    assert np.abs(asked.registration["shifts"]).max() < 0.02
    rec = ft.reconstruct(asked, method="tie-exact", backend="cpu", dtype="float64")
    assert phase_rms(rec.phase, phi) < 1e-6


def test_an_image_file_is_registered_when_asked(tmp_path, capsys):
    """``Dataset.triplet(register=True)`` and ``flowtie reconstruct --register on``
    register the images of a file; by default they are used as stored."""
    import flowtie_fast as ft
    from flowtie_fast.cli import main

    truth, planes = _drifted_fresnel(128, (0.8, 0.5))
    ft.save(tmp_path / "i.npz", ft.FocalTriplet(*planes, dz=100.0, pixel_size=0.5,
                                                energy=300e3))
    with ft.load(tmp_path / "i.npz") as ds:
        assert ds.triplet().registration is None
        t = quiet(ds.triplet, register=True)
    np.testing.assert_allclose(t.registration["shifts"][[0, 2]], [[-0.8, -0.5], [0.8, 0.5]],
                               atol=0.05)
    assert main(["reconstruct", str(tmp_path / "i.npz"), "-o", str(tmp_path / "o.npz"),
                 "--method", "tie", "--register", "on"]) == 0
    assert re.search(r"registration from the planes themselves: shifts \(dy, dx\) px "
                     r"-dz \(-0\.[78]\d, -0\.[45]\d\), \+dz \(\+0\.[78]\d, \+0\.[45]\d\); "
                     r"applied",
                     capsys.readouterr().out)


def test_a_registered_triplet_checks_its_gradient_against_the_registered_planes():
    """With ``register=True`` the measured gradient's sign and scale are
    compared with the TIE phase of the registered planes: those of the
    drifted ones share little with it and passed a gradient 10 times off or
    negated without a word."""
    import flowtie_fast as ft

    phase = gaussian_bumps(128, 0.5, 60, 0.5, (2.0, 5.0), seed=1)
    amp = 1 - 0.3 * gaussian_bumps(128, 0.5, 60, 1.0, (2.0, 5.0), seed=2) ** 2
    truth = [np.asarray(p) for p in defocus_triplet(phase, 20.0, 0.5, 300e3,
                                                    amplitude=amp).planes]
    planes = [truth[0], truth[1], apply_shift(truth[2], (1.0, 0.6), periodic=False)]
    g = np.stack(np.gradient(phase, 0.5))
    kw = dict(dz=20.0, pixel_size=0.5, energy=300e3, register=True)
    right = quiet(ft.FocalTriplet, *planes, gradient=g, **kw)
    assert right.registration["applied"] and not right.gradient_orientation["suspect"]
    assert right.gradient_orientation["tie_correlation"] > 0.8
    for factor, says, flag in ((10.0, "gradient and planes disagree in scale", "misscaled"),
                               (-1.0, "gradient: ", "suspect")):
        with pytest.warns(ft.TrustWarning, match=says):
            wrong = ft.FocalTriplet(*planes, gradient=factor * g, **kw)
        assert wrong.gradient_orientation.get(flag), factor


def _absorbing_plus_drifted():
    """A 64 px Fresnel phase object with some absorption (0.2 Å pixels, dz
    20 Å, 300 keV) whose +dz image is 3 px off: its planes, its right
    gradient (rad/Å) and the pixel size (Å)."""
    n, pixel = 64, 0.2
    y, x = np.mgrid[:n, :n] * pixel
    phase = (0.5 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 8.0)
             + 0.15 * np.exp(-((x - 3.8) ** 2 + (y - 8.3) ** 2) / 4.0))
    amp = np.exp(-0.3 * np.exp(-((x - 8.3) ** 2 + (y - 4.5) ** 2) / 8.0))
    truth = [np.asarray(p) for p in defocus_triplet(phase, 20.0, pixel, 300e3,
                                                    amplitude=amp).planes]
    planes = [truth[0], truth[1], np.roll(truth[2], 3, axis=1)]
    return planes, np.stack(np.gradient(phase, pixel)), pixel


def test_a_drift_left_in_the_planes_is_named_when_the_scale_check_trips():
    """Images recorded one after another drift, and images are not registered
    by default. A +dz image 3 px off, on an object with some absorption,
    adds the shifted image's gradient to the focal derivative: the TIE
    gradient of the planes is then some 6 times a right measured gradient,
    with the same pattern, and the scale check trips. Its warning named only
    units and calibrations (the gradient's, dz, energy, scan_step), none of
    them wrong here; it must name the drift too, which register=True undoes
    (and then the two agree)."""
    import flowtie_fast as ft

    planes, g, pixel = _absorbing_plus_drifted()
    kw = dict(dz=20.0, pixel_size=pixel, energy=300e3, gradient=g)
    with pytest.warns(ft.TrustWarning, match=r"disagree in scale.*drift.*register=True"):
        drifted = ft.FocalTriplet(*planes, **kw)
    assert drifted.gradient_orientation.get("misscaled")
    registered = quiet(ft.FocalTriplet, *planes, register=True, **kw)
    assert registered.registration["applied"]
    assert "misscaled" not in registered.gradient_orientation


def test_a_reloaded_triplet_whose_drift_was_not_measured_does_not_check_its_gradient_against_it(
        tmp_path):
    """A 4D-STEM triplet whose drift could not be measured compares its
    gradient with no TIE phase of its planes (they may be offset). Saved and
    loaded, it was checked anew against those planes: a right gradient with
    a +dz plane 3 px off read 6 times off on load. The loaded triplet keeps
    the curl check only, as the original; registered on load, it compares."""
    import flowtie_fast as ft
    from flowtie_fast import trust

    planes, g, pixel = _absorbing_plus_drifted()
    # as from_4dstem leaves a triplet whose dark field could not be registered
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=pixel, energy=300e3)
    t.gradient = g
    t.gradient_orientation = trust.checked_orientation(g, pixel)
    t.registration = {"shifts": np.zeros((3, 2)), "reliable": False, "applied": False,
                      "signal": "df", "why": None}
    ft.save(tmp_path / "t.npz", t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = ft.load(tmp_path / "t.npz").triplet()
    assert "tie_correlation" not in back.gradient_orientation
    assert not back.gradient_orientation["suspect"]
    assert back.registration["reliable"] is False
    again = quiet(ft.load(tmp_path / "t.npz").triplet, register=True)
    assert again.registration["applied"] and "tie_correlation" in again.gradient_orientation


@pytest.mark.parametrize("drift", [(4, 4), (0, 5), (3, -3)])
def test_rows_a_mirrored_shift_leaves_unrecorded_carry_no_focal_derivative(drift, monkeypatch):
    """A drift of the ±dz scans measured right and undone by the default
    (non-periodic) shift: the rows and columns it fills by mirroring hold
    another place's intensity, whose difference with the other planes is
    the specimen's contrast, tens of times the defocus': the TIE phase of a
    4 px drift on 64 px was worse than flat (NMSE 1.7), without a word.
    They are extrapolated in z from the recorded planes instead."""
    import flowtie_fast as ft
    from flowtie_fast.stem import focal

    pixel, energy, dz = 0.25, 300e3, 50.0
    phi = gaussian_bumps(64, pixel, 6, 0.5, (1.0, 2.0), seed=2)
    # some absorption: in-focus contrast for the mirrored rows to misplace
    amplitude = np.exp(-0.2 * np.abs(gaussian_bumps(64, pixel, 6, 1.0, (1.0, 2.0), seed=3)))
    t = defocus_triplet(phi, dz, pixel, energy, amplitude=amplitude)
    drifted = (np.roll(t.minus, drift, axis=(0, 1)), t.zero,
               np.roll(t.plus, (-drift[0], -drift[1]), axis=(0, 1)))

    def nmse(triplet):
        p = np.asarray(ft.reconstruct(triplet, method="tie", backend="cpu").phase, float)
        return float(np.sum((p - p.mean() - phi + phi.mean()) ** 2) / np.sum((phi - phi.mean()) ** 2))

    kw = dict(dz=dz, pixel_size=pixel, energy=energy)
    still = nmse(t)
    registered = ft.FocalTriplet(*drifted, register=True, **kw)
    assert registered.registration["applied"] and registered.registration["reliable"]
    np.testing.assert_allclose(registered.registration["shifts"][0], [-d for d in drift],
                               atol=0.3)
    assert still < 1e-4 and nmse(registered) < 0.01
    monkeypatch.setattr(focal, "_fill_unrecorded", lambda *a: None)  # mirrored rows as they were
    assert nmse(ft.FocalTriplet(*drifted, register=True, **kw)) > 0.05


def test_unrecorded_columns_are_extrapolated_with_the_uneven_steps():
    """Planes linear in z at (-10, 0, +40) Å: the columns the -dz plane's
    shift leaves unrecorded are its value there exactly, from the in-focus
    and +dz planes by the steps' ratio (swapped, they would be off by the
    contrast times 7.5); where neither ±dz plane is recorded both take the
    in-focus values."""
    from flowtie_fast.stem.focal import apply_registration

    a = 1.0 + 0.1 * bandlimited((32, 32), 0.2, 1)
    b = 0.002 * bandlimited((32, 32), 0.2, 2)
    minus, zero, plus = a - 10 * b, a, a + 40 * b
    recorded = np.roll(minus, -3, axis=1)  # its scan drifted 3 columns left
    record = {"shifts": np.array([[0.0, 3.0], [0.0, 0.0], [0.0, 0.0]]), "applied": True}
    out = apply_registration([recorded, zero, plus], record, True, dz=(10.0, 40.0))
    np.testing.assert_allclose(out[0][:, :3], minus[:, :3], rtol=1e-12)
    np.testing.assert_allclose(out[0][:, 3:], minus[:, 3:], rtol=1e-12)  # whole columns moved
    assert out[2] is plus or np.array_equal(out[2], plus)
    both = {"shifts": np.array([[0.0, 3.0], [0.0, 0.0], [0.0, 2.0]]), "applied": True}
    out = apply_registration([recorded, zero, np.roll(plus, -2, axis=1)], both, True,
                             dz=(10.0, 40.0))
    np.testing.assert_array_equal(out[0][:, :2], zero[:, :2])
    np.testing.assert_array_equal(out[2][:, :2], zero[:, :2])


def test_a_field_edge_neither_drifted_scan_records_is_warned_of():
    """Both ±dz scans drifted 6 rows the same way: after the shifts those rows
    hold neither, and their focal derivative is zero; the registration says
    so instead of leaving a flat band in the phase unexplained."""
    import flowtie_fast as ft

    pixel, energy, dz = 0.25, 300e3, 50.0
    phi = gaussian_bumps(64, pixel, 6, 0.5, (1.0, 2.0), seed=2)
    amplitude = np.exp(-0.2 * np.abs(gaussian_bumps(64, pixel, 6, 1.0, (1.0, 2.0), seed=3)))
    t = defocus_triplet(phi, dz, pixel, energy, amplitude=amplitude)
    drifted = (np.roll(t.minus, 6, axis=0), t.zero, np.roll(t.plus, 6, axis=0))
    with pytest.warns(RegistrationWarning, match=r"^register: after the shifts, 3\d\d px \(9\.\d% "
                                                 r"of the field, at its edges\) are recorded by "
                                                 r"neither ±dz scan"):
        r = ft.FocalTriplet(*drifted, dz=dz, pixel_size=pixel, energy=energy, register=True)
    assert r.registration["applied"]


@pytest.mark.parametrize("steps", [(40.0, 10.0), (10.0, 40.0), (10.0, 80.0), (120.0, 8.0)])
def test_planes_of_uneven_steps_are_registered_with_their_steps(steps):
    """From the planes alone the ±dz planes were read as mirror images of
    each other around the in-focus one, true for even steps only: at (40,
    10) Å a drift of 0.3 px was found on planes without any, and applied
    (TIE NMSE 1.86 against 0.006). The first-order relation uses the steps."""
    import flowtie_fast as ft

    pixel, energy = 0.25, 300e3
    phi = gaussian_bumps(64, pixel, 6, 0.5, (1.0, 2.0), seed=2)
    amplitude = np.exp(-0.2 * np.abs(gaussian_bumps(64, pixel, 6, 1.0, (1.0, 2.0), seed=3)))
    minus = defocus_triplet(phi, steps[0], pixel, energy, amplitude=amplitude).minus
    t = defocus_triplet(phi, steps[1], pixel, energy, amplitude=amplitude)
    kw = dict(dz=steps, pixel_size=pixel, energy=energy, register=True)
    still = ft.FocalTriplet(minus, t.zero, t.plus, **kw)
    assert np.abs(still.registration["shifts"]).max() < 0.1
    assert not still.registration["applied"]
    drifted = ft.FocalTriplet(np.roll(minus, (2, -1), axis=(0, 1)), t.zero,
                              np.roll(t.plus, (-2, 1), axis=(0, 1)), **kw)
    assert drifted.registration["reliable"] and drifted.registration["applied"]
    np.testing.assert_allclose(drifted.registration["shifts"][[0, 2]], [[-2, 1], [2, -1]],
                               atol=0.15)
