"""Defects confined to one of the planes: isolated outlying pixels (replaced,
reported) and exactly zero rows, columns or blocks (refused), at every entry
point (flowtie_fast.planes.screen_planes)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import flowtie_fast as ft
from flowtie_fast.errors import InputError, TrustWarning
from flowtie_fast.evaluation.evaluate import phase_errors

N, PIXEL, DZ, ENERGY = 64, 0.2, 20.0, 300e3


def _gaussian():
    """The README's Gaussian phase (rad) and its noise-free planes at ∓dz, 0."""
    y, x = np.mgrid[:N, :N] * PIXEL
    truth = 0.5 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 8.0)
    q = 2 * np.pi * np.fft.fftfreq(N, PIXEL)
    kz = (q[:, None] ** 2 + q[None, :] ** 2) / (2 * ft.wavenumber(ENERGY))
    wave = np.fft.fft2(np.exp(1j * truth))
    planes = [np.abs(np.fft.ifft2(wave * np.exp(-1j * s * kz))) ** 2 for s in (-DZ, 0, DZ)]
    return truth, planes


TRUTH, PLANES = _gaussian()


def _triplet(planes, **kw):
    return ft.FocalTriplet(*planes, dz=DZ, pixel_size=PIXEL, energy=ENERGY, **kw)


def _quiet(fn):
    """fn() and the TrustWarnings about isolated pixels it gave (sparse counts
    also hold no signal above their noise: another warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in caught if issubclass(w.category, TrustWarning)
                 and "isolated pixel" in str(w.message)]


@pytest.fixture(scope="module")
def plan():
    return ft.Plan((N, N), pixel_size=PIXEL, dz=DZ, energy=ENERGY, method="tie",
                   backend="cpu")


def test_a_hot_pixel_of_one_plane_is_replaced_and_reported_by_the_triplet():
    planes = [p.copy() for p in PLANES]
    planes[2][40, 50] *= 20  # a cosmic ray: NMSE 1.7e-5 -> 18 without the repair
    given = planes[2].copy()
    t, caught = _quiet(lambda: _triplet(planes))
    assert len(caught) == 1
    text = str(caught[0].message)
    assert "plus: 1 isolated pixel" in text and "row 40, column 50" in text
    assert "20 times the median of its 8 neighbours" in text and "replaced" in text
    record = t.plane_defects
    assert record["repaired"] and list(record["pixels"]) == ["plus"]
    row, col, value, median = record["pixels"]["plus"][0]
    assert (row, col) == (40, 50) and value == pytest.approx(20 * PLANES[2][40, 50])
    np.testing.assert_array_equal(planes[2], given)  # the caller's array is not written
    assert t.plus[40, 50] == pytest.approx(median)
    rec = ft.reconstruct(t, method="tie", backend="cpu")
    assert rec.info["plane_defects"] is record and rec.info["trust"] == record["why"]
    assert phase_errors(rec.phase, TRUTH)[1] < 2e-5  # as the clean planes' 1.7e-5


def test_a_dead_pixel_of_integer_counts_is_replaced_in_their_dtype():
    rng = np.random.default_rng(0)
    counts = [rng.poisson(p * 1e4).astype(np.int32) for p in PLANES]
    counts[0][10, 20] = 0
    t, caught = _quiet(lambda: _triplet(counts))
    assert len(caught) == 1 and "minus: 1 isolated pixel" in str(caught[0].message)
    assert t.minus.dtype == np.int32 and t.minus[10, 20] > 5000
    assert t.noise.source == "poisson"


@pytest.mark.parametrize("defect, message", [
    ("row", "row 40 (1 of 64"),
    ("tail", "rows 58-63 (6 of 64"),
    ("column", "column 9 (1 of 64"),
    ("block", "exactly zero where minus is positive at every pixel"),
])
def test_zero_rows_columns_and_blocks_of_one_plane_are_refused(defect, message, plan):
    planes = [p.astype(np.float32) for p in PLANES]
    where = {"row": np.s_[40, :], "tail": np.s_[-6:, :], "column": np.s_[:, 9],
             "block": np.s_[20:40, 30:50]}[defect]
    planes[2 if defect != "block" else 1][where] = 0
    with pytest.raises(InputError, match=re.escape(message)):
        _triplet(planes)
    with pytest.raises(InputError, match=re.escape(message)):
        plan.solve(*planes)
    assert plan.info == {}
    with pytest.raises(InputError, match=r"stack\[1\]: (plus|zero): "):
        plan.solve_batch(np.stack([np.stack(PLANES), np.stack(planes)]).astype(np.float32))


def test_plan_solve_replaces_a_hot_pixel_and_says_so(plan):
    planes = [p.astype(np.float32) for p in PLANES]
    planes[2][40, 50] *= 20
    out, caught = _quiet(lambda: plan.solve(*planes))
    assert len(caught) == 1 and "plus: 1 isolated pixel" in str(caught[0].message)
    assert "info['plane_defects']" in str(caught[0].message)
    assert plan.info["plane_defects"]["pixels"]["plus"][0][:2] == [40, 50]
    assert plan.info["trust"] == plan.info["plane_defects"]["why"]
    assert phase_errors(out, TRUTH)[1] < 1e-4  # 18 unrepaired
    out, caught = _quiet(lambda: plan.solve(*[p.astype(np.float32) for p in PLANES]))
    assert not caught and "plane_defects" not in plan.info


@pytest.mark.parametrize("dose", [None, 0.05, 1e2, 1e3, 1e4, 1e5])
def test_right_planes_raise_no_alarm(dose, plan):
    rng = np.random.default_rng(7)
    planes = PLANES if dose is None else [rng.poisson(p * dose).astype(np.int32)
                                          for p in PLANES]
    t, caught = _quiet(lambda: _triplet(planes))
    assert not caught and t.plane_defects is None
    _, caught = _quiet(lambda: plan.solve(*planes))
    assert not caught and "plane_defects" not in plan.info


def test_the_screen_kernels_agree():
    from flowtie_fast import _numba_kernels, _numpy_kernels
    from flowtie_fast.planes import screen_stats

    rng = np.random.default_rng(1)
    planes = [rng.poisson(3.0, (37, 29)).astype(np.float32) for _ in range(3)]
    for kernels in (_numba_kernels, _numpy_kernels):
        out = np.empty((3, 3))
        kernels.planes_screen3(*planes, np.empty((9, 37)), out)
        for k, p in enumerate(planes):
            np.testing.assert_allclose(out[k], screen_stats(p), rtol=1e-5)
            d = np.diff(p.astype(np.float64), axis=1)
            np.testing.assert_allclose(out[k], [np.sum(p <= 0), np.sum(d ** 2),
                                                np.sum(d ** 4)], rtol=1e-5)


def test_a_pixel_that_stands_out_in_every_plane_is_structure():
    from flowtie_fast.planes import screen_planes

    planes = [p.copy() for p in PLANES]
    for p in planes:
        p[30, 30] *= 20
    assert screen_planes(("minus", "zero", "plus"), planes)[1] is None


def test_a_pixel_beyond_the_screen_s_float32_sums_is_still_replaced(plan):
    planes = [p.astype(np.float32) for p in PLANES]
    planes[0][5, 6] = np.float32(3e37)  # its fourth power overflows the kernel's sums
    out, caught = _quiet(lambda: plan.solve(*planes))
    assert len(caught) == 1 and "minus: 1 isolated pixel" in str(caught[0].message)
    assert phase_errors(out, TRUTH)[1] < 1e-4


def test_an_hdf5_file_truncated_after_a_lazy_load_is_refused_not_read_as_zeros(tmp_path):
    pytest.importorskip("h5py")
    path = tmp_path / "t.h5"
    ft.save(path, _triplet([p.astype(np.float32) for p in PLANES]))
    data = ft.load(path)  # lazy: the planes are read by triplet()
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * 0.9))
    with pytest.raises(InputError, match="plus: rows .* exactly zero where"):
        data.triplet()
