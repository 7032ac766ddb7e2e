"""The reprs of the public objects: one short line each, never array contents."""

import warnings

import numpy as np
import pytest
from fields import periodic_field, triplet_from

import flowtie_fast as ft


def short(obj, limit=300):
    text = repr(obj)
    assert len(text) < limit, text
    assert "\n" not in text, text
    assert "array(" not in text and "..." not in text, text
    return text


@pytest.fixture
def triplet():
    phi, intensity, didz, grad = periodic_field(shape=(48, 40), contrast=0.3)
    return triplet_from(intensity, didz, 20.0, (0.2, 0.25), 300e3), phi, grad


def test_a_loaded_4dstem_file_prints_one_line(tmp_path):
    rng = np.random.default_rng(0)
    planes = [rng.random((12, 10, 33, 33)).astype(np.float32) + 0.1 for _ in range(3)]
    ds = ft.Dataset(*planes, dz=(20.0, 20.0), scan_step=(0.2356, 0.2356), energy=300e3,
                    k_sampling=(0.059, 0.059), phase_gt=rng.random((12, 10)),
                    gradient_gt=rng.random((2, 12, 10)),
                    meta={"material": "GaAs", "thickness": 11.3066, "semiangle": 20.0})
    for name in ("case.npz", "case.h5"):
        ft.save(tmp_path / name, ds)
        with ft.load(tmp_path / name) as loaded:
            text = short(loaded)
            for part in ("kind='4dstem'", "(12, 10, 33, 33)", "float32", "dz=(20, 20) Å",
                         "300000 eV", "phase_gt", "'GaAs'", repr(name)):
                assert part in text, text
        short(loaded)  # closed: still one line, nothing read
    assert "kind='triplet'" in short(ft.Dataset(*[np.ones((4, 4))] * 3, dz=(20.0, 20.0),
                                                scan_step=(0.2, 0.2), energy=300e3))


def test_triplet_reconstruction_plan_and_noise_print_one_line(triplet):
    t, phi, grad = triplet
    text = short(t)
    assert "shape=(48, 40)" in text and "pixel_size=(0.2, 0.25) Å" in text
    rec = ft.reconstruct(t, method="tie-exact", backend="cpu")
    text = short(rec)
    assert "method='tie-exact'" in text and "(48, 40) float32 rad" in text
    rec = ft.reconstruct(t, method="tie", backend="cpu")
    pending = rec._residual_fn is not None
    short(rec)
    assert (rec._residual_fn is not None) == pending  # the repr computes no residual
    short(ft.reconstruct(ft.FocalTriplet(*t.planes, dz=20.0, pixel_size=(0.2, 0.25),
                                         energy=300e3, gradient=grad),
                         method="icom", backend="cpu"))
    plan = ft.Plan(t.shape, (0.2, 0.25), 20.0, 300e3, method="tie", backend="cpu")
    short(plan)
    short(ft.Noise((1e-4, 2e-4, 1e-4), "given"))


def test_flowtie_reconstruction_prints_one_line(triplet):
    pytest.importorskip("torch")
    t, phi, grad = triplet
    t = ft.FocalTriplet(*t.planes, dz=20.0, pixel_size=(0.2, 0.25), energy=300e3,
                        gradient=grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert "method='flowtie'" in short(rec)


def test_a_noise_not_yet_checked_prints_as_given():
    """A Noise's values are checked where it is used; its repr, which a log
    line may call first, prints what it holds instead of raising."""
    assert repr(ft.Noise("abc", "given")) == "Noise(variance='abc', source='given')"
    assert repr(ft.Noise((1.0, 2.0, 3.0), "given")) == \
        "Noise(variance=(1, 2, 3), source='given')"
