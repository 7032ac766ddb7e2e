"""LiberTEM: the reduction UDF equals reduce_4dstem on memory and npy datasets,
and the triplet it builds reconstructs the encoded phase."""

from __future__ import annotations

import numpy as np
import pytest
from fields import rel_rms
from test_stem import E, K_SAMPLING, _phase_and_gradient, gaussian_patterns

import flowtie_fast as ft
from flowtie_fast import stem

pytest.importorskip("libertem")
from libertem.api import Context  # noqa: E402

from flowtie_fast.stem.live import (  # noqa: E402
    reduce_with_libertem,
    triplet_with_libertem,
)

CENTER = (16.0, 15.0)


@pytest.fixture(scope="module")
def ctx():
    with Context.make_with("inline") as c:
        yield c


def encoded(step=0.25, scale=1.0):
    phi, grad = _phase_and_gradient()
    return phi, gaussian_patterns(scale * grad / (2 * np.pi) / K_SAMPLING, center=CENTER)


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_udf_equals_reduce_4dstem(ctx, dtype, rng):
    data = (rng.random((9, 7, 33, 31)) * 300).astype(dtype)
    det = stem.Detector((33, 31), (K_SAMPLING, K_SAMPLING), E, CENTER)
    regions = {"bf": (0.0, 8.0), "df": (8.0, np.inf), "whole": (0.0, np.inf)}
    want = stem.reduce_4dstem(data, det, regions, backend="cpu")
    got = reduce_with_libertem(ctx, ctx.load("memory", data=data, sig_dims=2), det, regions)
    for name in regions:
        np.testing.assert_allclose(got.virtual[name], want.virtual[name], rtol=1e-6)
    # The COM of random patterns is a small difference of large float32 sums,
    # grouped differently per partition: absolute error ~1e-7 of the k extent.
    np.testing.assert_allclose(got.com, want.com, rtol=1e-6, atol=1e-6 * 16 * K_SAMPLING)


def test_triplet_from_npy_files_reconstructs_the_phase(ctx, tmp_path):
    """Three .npy files through LiberTEM give the triplet of from_4dstem (same
    planes, same centre of mass) and iCOM finds the encoded phase."""
    phi, data = encoded()
    paths = []
    for name, scale in (("minus", 0.98), ("zero", 1.0), ("plus", 1.02)):
        path = tmp_path / f"{name}.npy"
        np.save(path, (data * scale).astype(np.float32))
        paths.append(path)
    datasets = [ctx.load("npy", path=str(p)) for p in paths]
    # Geometry given: from_4dstem finds it from 256 sampled patterns, the
    # LiberTEM path from the mean of all of them (checked separately below).
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=CENTER,
              bf_radius=5.0)
    t = triplet_with_libertem(ctx, datasets, **kw)
    arrays = [np.load(p) for p in paths]
    want = ft.FocalTriplet.from_4dstem(*arrays, **kw, backend="cpu")
    for a, b in zip(t.planes, want.planes):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(t.gradient, want.gradient, rtol=1e-5, atol=1e-9)
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < 1e-3
    found = triplet_with_libertem(ctx, datasets, dz=20.0, scan_step=0.25,
                                  k_sampling=K_SAMPLING, energy=E)
    assert np.allclose(found.reductions[1].detector.center, CENTER, atol=0.05)


def test_bad_datasets_are_named(ctx, rng):
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    ds = ctx.load("memory", data=data, sig_dims=2)
    other = ctx.load("memory", data=data[:, :3], sig_dims=2)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    with pytest.raises(ft.InputError, match="datasets: expected three"):
        triplet_with_libertem(ctx, [ds, ds], **kw)
    with pytest.raises(ft.InputError, match="datasets: expected equal shapes"):
        triplet_with_libertem(ctx, [ds, ds, other], **kw)
    det = stem.Detector((9, 9), (K_SAMPLING, K_SAMPLING), E, (4.0, 4.0))
    with pytest.raises(ft.InputError, match="detector shape"):
        reduce_with_libertem(ctx, ds, det, {"whole": (0, np.inf)})


def test_bad_arguments_are_refused_before_any_pass(ctx, rng, monkeypatch):
    """virtual=["bf"] raised TypeError after a full pass; datasets=None a
    TypeError."""
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    ds = ctx.load("memory", data=data, sig_dims=2)
    passes = []
    monkeypatch.setattr(ctx, "run_udf", lambda *a, **k: passes.append(k))
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E)
    for args, extra, says in [
            ((None,), {}, r"^datasets: expected three LiberTEM datasets .*got NoneType"),
            (("abc",), {}, r"^datasets: expected three LiberTEM datasets .*got str"),
            (([ds, None, ds],), {}, r"^datasets: the zero entry is NoneType"),
            (([ds] * 3,), {"virtual": ["bf"]}, r"^virtual: expected one of .*got \['bf'\]"),
            (([ds] * 3,), {"virtual": "dark"}, r"^virtual: expected one of"),
            (([ds] * 3,), {"dz": -1.0}, r"^dz: ")]:
        with pytest.raises(ft.InputError, match=says):
            triplet_with_libertem(ctx, *args, **{**kw, **extra})
    assert passes == []


def test_reduction_udf_refuses_bad_weights(ctx):
    """ReductionUDF("abc") gave ValueError, np.ones(5) AxisError; NaN weights
    and weights of another detector size gave NaN or partial sums."""
    from flowtie_fast.stem.live import ReductionUDF

    for w, says in [("abc", r"^weights: expected a 2-D array of real numbers"),
                    (None, r"^weights: expected a 2-D array of real numbers"),
                    (np.ones(5), r"^weights: expected a non-empty 2-D array .*got shape \(5,\)"),
                    (np.ones((2, 8, 8)), r"^weights: expected a non-empty 2-D array"),
                    (np.full((2, 64), np.nan), r"^weights: expected finite numbers")]:
        with pytest.raises(ft.InputError, match=says):
            ReductionUDF(w)
    with pytest.raises(ft.InputError, match=r"^lo, hi: expected 0 <= lo <= hi <= 64"):
        ReductionUDF(np.ones((2, 64)), lo=np.array([0, 0]), hi=np.array([10**8, 64]))
    with pytest.raises(ft.InputError, match=r"^lo, hi: .*got lo=5, hi=3"):
        ReductionUDF(np.ones((2, 64)), lo=np.array([5, 0]), hi=np.array([3, 64]))
    ds = ctx.load("memory", data=np.ones((4, 4, 16, 16), np.float32), sig_dims=2)
    with pytest.raises(ft.InputError, match=r"^weights: shape \(2, 64\) .* the dataset's "
                                            r"detector is \(16, 16\) \(256 pixels\)"):
        ctx.run_udf(dataset=ds, udf=ReductionUDF(np.ones((2, 64), np.float32)))
    r = ctx.run_udf(dataset=ds, udf=ReductionUDF(np.ones((2, 256), np.float32)))
    assert np.allclose(np.asarray(r["sums"].data), 256.0)
