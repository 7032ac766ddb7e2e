"""Files: one layout in .npz and HDF5, atomic writes, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

import flowtie_fast as ft


@pytest.fixture
def dataset(rng):
    shape = (6, 5, 12, 12)
    planes = [rng.integers(0, 300, size=shape, dtype=np.uint16) for _ in range(3)]
    return ft.Dataset(*planes, dz=(20.0, 20.0), scan_step=(0.2, 0.25), energy=300e3,
                      k_sampling=(0.05, 0.05), phase_gt=rng.random(shape[:2]),
                      gradient_gt=rng.random((2,) + shape[:2]),
                      meta={"material": "GaAs", "thickness": 11.3, "semiangle": 20.0})


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_round_trip_4dstem(tmp_path, dataset, suffix):
    path = ft.save(tmp_path / f"case{suffix}", dataset)
    with ft.load(path) as back:
        assert back.kind == "4dstem"
        for k in ("minus", "zero", "plus"):
            np.testing.assert_array_equal(np.asarray(getattr(back, k)), getattr(dataset, k))
            assert np.asarray(getattr(back, k)).dtype == np.uint16
        np.testing.assert_array_equal(back.phase_gt, dataset.phase_gt)
        np.testing.assert_array_equal(back.gradient_gt, dataset.gradient_gt)
        assert back.dz == (20.0, 20.0) and back.scan_step == (0.2, 0.25)
        assert back.k_sampling == (0.05, 0.05) and back.energy == 300e3
        assert back.meta == {"material": "GaAs", "thickness": 11.3, "semiangle": 20.0}
        t = back.triplet(center=(6, 6), backend="cpu")
        assert t.shape == (6, 5) and t.gradient.shape == (2, 6, 5)
    assert [p.name for p in tmp_path.iterdir()] == [f"case{suffix}"]  # no temporary left


@pytest.mark.parametrize("suffix", [".npz", ".hdf5"])
def test_round_trip_triplet(tmp_path, rng, suffix):
    planes = [1 + rng.random((16, 12)) for _ in range(3)]
    t = ft.FocalTriplet(*planes, dz=(15.0, 25.0), pixel_size=0.3, energy=200e3)
    back = ft.load(ft.save(tmp_path / f"t{suffix}", t)).triplet()
    assert back.dz == (15.0, 25.0) and back.pixel_size == (0.3, 0.3)
    np.testing.assert_array_equal(back.plus, planes[2])
    a = ft.reconstruct(t, backend="cpu").phase
    b = ft.reconstruct(back, backend="cpu").phase
    np.testing.assert_array_equal(a, b)


def test_missing_keys_and_wrong_shapes(tmp_path, rng):
    np.savez(tmp_path / "a.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)))
    with pytest.raises(ft.InputError, match=r"a.npz: missing key\(s\) \['plus', 'dz', "):
        ft.load(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)),
             plus=np.ones((4, 5)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0)
    with pytest.raises(ft.InputError, match=r"'plus' has shape \(4, 5\), expected \(4, 4\)"):
        ft.load(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", minus=np.ones((2, 2, 4, 4)), zero=np.ones((2, 2, 4, 4)),
             plus=np.ones((2, 2, 4, 4)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0)
    with pytest.raises(ft.InputError, match="missing key 'k_sampling'"):
        ft.load(tmp_path / "c.npz")
    np.savez(tmp_path / "d.npz", minus=np.ones((4, 4)), zero=np.ones((4, 4)),
             plus=np.ones((4, 4)), dz=[1.0, 1.0], scan_step=[1.0, 1.0], energy=1.0,
             phase_gt=np.ones((3, 3)))
    with pytest.raises(ft.InputError, match=r"'phase_gt' has shape \(3, 3\), expected"):
        ft.load(tmp_path / "d.npz")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_truncated_and_garbage_files(tmp_path, dataset, suffix):
    path = ft.save(tmp_path / f"full{suffix}", dataset)
    raw = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ft.InputError, match=f"cut{suffix}"):
        ds = ft.load(cut)
        ds.triplet(center=(6, 6), backend="cpu")  # lazy HDF5 reads fail here, if not before
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"not a file of this kind" * 10)
    with pytest.raises(ft.InputError, match=f"junk{suffix} is not a readable"):
        ft.load(junk)


def test_paths(tmp_path, dataset):
    with pytest.raises(ft.InputError, match="path: no such file"):
        ft.load(tmp_path / "none.npz")
    with pytest.raises(ft.InputError, match="path: expected a .npz, .h5 or .hdf5 file"):
        ft.save(tmp_path / "x.tiff", dataset)
    with pytest.raises(ft.InputError, match="obj: expected a Dataset"):
        ft.save(tmp_path / "x.npz", {"minus": 1})


def test_failed_write_leaves_nothing(tmp_path, dataset):
    class Exploding:
        shape = (6, 5)

        def __array__(self, *a, **k):
            raise RuntimeError("disk full")

    broken = ft.Dataset(dataset.minus, dataset.zero, dataset.plus, (20.0, 20.0), (0.2, 0.2),
                        300e3, (0.05, 0.05), phase_gt=Exploding())
    with pytest.raises(RuntimeError, match="disk full"):
        ft.save(tmp_path / "x.npz", broken)
    assert list(tmp_path.iterdir()) == []


def test_raw_detector_files_through_rosettasciio(tmp_path, rng):
    emd = pytest.importorskip("rsciio.emd")
    data = rng.random((6, 5, 10, 12)).astype(np.float32)
    paths = []
    for name in ("m", "z", "p"):
        sig = {"data": data, "axes": [
            {"name": "y", "size": 6, "scale": 0.02, "units": "nm", "navigate": True, "offset": 0},
            {"name": "x", "size": 5, "scale": 0.025, "units": "nm", "navigate": True, "offset": 0},
            {"name": "ky", "size": 10, "scale": 0.5, "units": "1/nm", "navigate": False,
             "offset": 0},
            {"name": "kx", "size": 12, "scale": 0.5, "units": "1/nm", "navigate": False,
             "offset": 0}],
            "metadata": {"General": {"title": name}, "Signal": {"signal_type": ""}},
            "original_metadata": {}}
        paths.append(tmp_path / f"{name}.emd")
        emd.file_writer(str(paths[-1]), sig)
    with pytest.raises(ft.InputError, match="energy: z.emd does not record the beam energy"):
        ft.io.read_raw(paths[1])
    ds = ft.io.load_raw_triplet(*paths, dz=20.0, energy=300e3)
    assert ds.scan_step == pytest.approx((0.2, 0.25)) and ds.k_sampling == pytest.approx((0.05,
                                                                                          0.05))
    t = ds.triplet(center=(5, 6), backend="cpu")
    assert t.shape == (6, 5) and t.pixel_size == pytest.approx((0.2, 0.25))
    with pytest.raises(ft.InputError, match="expected one of"):
        ft.io.read_raw(tmp_path / "x.tiff")


def test_evaluate_a_triplet_file_with_ground_truth(tmp_path):
    """Image triplets (not 4D data) with a ground truth go through evaluate too."""
    from fields import periodic_field, triplet_from

    from flowtie_fast.evaluate import evaluate

    phi, intensity, didz, grad = periodic_field(shape=(32, 30), contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), 300e3)
    ft.save(tmp_path / "t.npz", ft.Dataset(*t.planes, dz=(10.0, 10.0), scan_step=(0.2, 0.25),
                                           energy=300e3, phase_gt=phi, gradient_gt=grad))
    (row,) = evaluate(tmp_path, methods=("tie-exact",), repeats=1)
    assert row["nmse"] < 1e-6
    with pytest.raises(ft.InputError, match=r"options: \['virtual'\] apply to 4D-STEM"):
        ft.load(tmp_path / "t.npz").triplet(virtual="bf")
