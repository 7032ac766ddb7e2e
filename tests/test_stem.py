"""4D-STEM reduction: one pass, chunked streaming, centre, rotation, from_4dstem."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
from fields import rel_rms

import flowtie_fast as ft
from flowtie_fast import stem
from flowtie_fast.stem import reduction
from flowtie_fast import testing as ref

E = 300e3
K_SAMPLING = 0.05  # 1/Å per detector pixel


def gaussian_patterns(offsets, det=(33, 31), center=(16.0, 15.0), width=2.5, total=1000.0):
    """Patterns (Sy, Sx, Ky, Kx): a Gaussian spot displaced by ``offsets`` (2, Sy, Sx) pixels."""
    iy, ix = np.indices(det, dtype=np.float64)
    cy = center[0] + offsets[0][..., None, None]
    cx = center[1] + offsets[1][..., None, None]
    p = np.exp(-((iy - cy) ** 2 + (ix - cx) ** 2) / (2 * width**2))
    return (total * p / p.sum(axis=(-2, -1), keepdims=True)).astype(np.float32)


def numpy_reduction(data, detector, regions):
    theta = detector.angle_mrad()
    flat = data.reshape(*data.shape[:2], -1).astype(np.float64)
    virtual = {n: flat @ ((theta >= a) & (theta < b)).ravel().astype(float)
               for n, (a, b) in regions.items()}
    ky, kx = detector.k()
    total = flat.sum(-1)
    com = np.stack([flat @ ky.ravel() / total, flat @ kx.ravel() / total])
    return virtual, com


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float16, np.float32, np.int16])
def test_reduction_equals_numpy(backend, dtype, rng):
    data = (rng.random((7, 6, 20, 18)) * 200).astype(dtype)
    det = stem.Detector((20, 18), (K_SAMPLING, K_SAMPLING), E, (9.6, 8.3))
    regions = {"bf": (0.0, 5.0), "ring": (5.0, 12.0), "whole": (0.0, np.inf)}
    red = stem.reduce_4dstem(data, det, regions, backend=backend, chunk_bytes=3 * 6 * 20 * 18)
    virtual, com = numpy_reduction(data, det, regions)
    host = ft.get_backend(backend).to_numpy
    for n in regions:
        np.testing.assert_allclose(host(red.virtual[n]), virtual[n], rtol=1e-5)
    np.testing.assert_allclose(host(red.com), com, rtol=1e-4, atol=1e-6)


def test_sampled_mean_pattern_on_either_backend(backend, rng):
    """16 rows x 16 columns of the scan, averaged; CuPy data stays on the device
    until the mean."""
    data = (rng.random((40, 37, 12, 10)) * 100).astype(np.uint16)
    be = ft.get_backend(backend)
    picked = stem.sample_patterns(be.asarray(data))
    assert picked.shape == (16 * 16, 12, 10)
    rows = np.unique(np.linspace(0, 39, 16).astype(int))
    cols = np.unique(np.linspace(0, 36, 16).astype(int))
    want = data[rows][:, cols].reshape(-1, 12, 10).astype(np.float64).mean(axis=0)
    mean = stem.mean_pattern(picked)
    assert isinstance(mean, np.ndarray) and mean.dtype == np.float64
    np.testing.assert_allclose(mean, want, rtol=1e-12)


def test_centre_of_mass_is_the_phase_gradient_over_two_pi():
    rng = np.random.default_rng(0)
    offsets = rng.uniform(-2, 2, size=(2, 5, 4))
    data = gaussian_patterns(offsets)
    det = stem.Detector((33, 31), (K_SAMPLING, 0.04), E, (16.0, 15.0))
    red = stem.reduce_4dstem(data, det, {"whole": (0, np.inf)}, backend="cpu")
    want = offsets * np.array([K_SAMPLING, 0.04])[:, None, None]
    np.testing.assert_allclose(red.com, want, atol=1e-5)
    np.testing.assert_allclose(red.gradient, 2 * np.pi * want, atol=1e-4)


def test_find_center_and_bf_radius():
    det_shape = (40, 44)
    iy, ix = np.indices(det_shape)
    disk = ((iy - 17.0) ** 2 + (ix - 25.0) ** 2 <= 8.0**2).astype(float)
    pattern = 100 * disk + 1.0 * (ix > 38)  # dark-field tail on one side
    cy, cx = stem.find_center(pattern[None])
    assert abs(cy - 17.0) < 0.05 and abs(cx - 25.0) < 0.05
    det = stem.Detector(det_shape, (K_SAMPLING, K_SAMPLING), E, (cy, cx))
    mrad_per_px = K_SAMPLING * ft.wavelength(E) * 1e3
    assert stem.bf_radius_mrad(pattern[None], det) == pytest.approx(8.0 * mrad_per_px, rel=0.03)


def test_memory_map_streams_in_bounded_chunks(tmp_path, rng):
    shape = (48, 40, 24, 24)
    mm = np.lib.format.open_memmap(tmp_path / "scan.npy", mode="w+", dtype=np.uint16,
                                   shape=shape)
    for i in range(shape[0]):
        mm[i] = rng.integers(0, 1000, size=shape[1:], dtype=np.uint16)
    mm.flush()
    data = np.load(tmp_path / "scan.npy", mmap_mode="r")
    det = stem.Detector(shape[2:], (K_SAMPLING, K_SAMPLING), E, (11.5, 11.5))
    regions = {"bf": (0.0, 6.0), "whole": (0, np.inf)}
    chunk = 4 * 40 * 24 * 24 * 2  # 4 scan rows: 12 chunks
    stem.reduce_4dstem(np.asarray(data[:2]), det, regions, backend="cpu")  # JIT outside
    tracemalloc.start()
    red = stem.reduce_4dstem(data, det, regions, backend="cpu", chunk_bytes=chunk)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total = data.nbytes
    assert peak < 3 * chunk + 48 * 40 * 8 * 8, (peak, chunk, total)
    assert peak < total / 2
    in_memory = stem.reduce_4dstem(np.asarray(data), det, regions, backend="cpu")
    np.testing.assert_allclose(red.virtual["bf"], in_memory.virtual["bf"], rtol=1e-6)
    np.testing.assert_allclose(red.com, in_memory.com, rtol=1e-6, atol=1e-9)


def test_hdf5_and_dask_inputs_equal_the_in_memory_path(tmp_path, rng):
    h5py = pytest.importorskip("h5py")
    data = rng.integers(0, 500, size=(10, 9, 16, 16), dtype=np.uint16)
    det = stem.Detector((16, 16), (K_SAMPLING, K_SAMPLING), E, (7.5, 7.5))
    regions = {"whole": (0, np.inf)}
    ref = stem.reduce_4dstem(data, det, regions, backend="cpu")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("d", data=data, chunks=(1, 9, 16, 16))
    with h5py.File(tmp_path / "d.h5", "r") as f:
        red = stem.reduce_4dstem(f["d"], det, regions, backend="cpu", chunk_bytes=9 * 256 * 2)
    np.testing.assert_allclose(red.com, ref.com, rtol=1e-6)
    da = pytest.importorskip("dask.array")
    red = stem.reduce_4dstem(da.from_array(data, chunks=(3, 9, 16, 16)), det, regions,
                             backend="cpu", chunk_bytes=3 * 9 * 256 * 2)
    np.testing.assert_allclose(red.com, ref.com, rtol=1e-6)


def test_hdf5_data_never_or_partly_written_is_refused_before_reading(tmp_path, rng):
    """HDF5 reads what was never written as the fill value: taken for data."""
    h5py = pytest.importorskip("h5py")
    data = rng.integers(1, 500, size=(6, 5, 8, 8)).astype(np.float32)
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=K_SAMPLING, energy=E, center=(4, 4),
              bf_radius=5.0, backend="cpu", register=False)
    det = stem.Detector((8, 8), (K_SAMPLING, K_SAMPLING), E, (4.0, 4.0))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("good", data=data, chunks=(2, 5, 8, 8))
        f.create_dataset("never", shape=data.shape, dtype="f4", fillvalue=1000.0)
        f.create_dataset("never_chunked", shape=data.shape, dtype="f4", chunks=(2, 5, 8, 8))
        part = f.create_dataset("part", shape=data.shape, dtype="f4", chunks=(2, 5, 8, 8))
        part[:4] = data[:4]  # 2 of 3 chunks
        layout = h5py.VirtualLayout(shape=data.shape, dtype="f4")
        layout[:] = h5py.VirtualSource(f["good"])
        f.create_virtual_dataset("virtual", layout)
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        h5py.h5d.create(f.id, b"compact", h5py.h5t.NATIVE_FLOAT,
                        h5py.h5s.create_simple(data.shape), dcpl)
        f["compact"][...] = data
    with h5py.File(tmp_path / "d.h5", "r") as f:
        good = f["good"]
        for key, says in (("never", r"'/never' of shape \(6, 5, 8, 8\) was never written "
                                    r"\(HDF5 holds no storage for it; it would read as its "
                                    r"fill value 1000\)"),
                          ("never_chunked", "'/never_chunked' .* was never written"),
                          ("part", "'/part' .* holds 2 of 3 chunks: partly written")):
            with pytest.raises(ft.InputError, match=f"^plus: the HDF5 dataset {says}"):
                ft.FocalTriplet.from_4dstem(good, good, f[key], **kw)
            with pytest.raises(ft.InputError, match=f"^data: the HDF5 dataset {says}"):
                stem.reduce_4dstem(f[key], det, {"bf": (0, 5.0)}, backend="cpu")
        ref = ft.FocalTriplet.from_4dstem(good, good, good, **kw)
        for key in ("virtual", "compact"):  # written, whatever the storage says
            t = ft.FocalTriplet.from_4dstem(good, good, f[key], **kw)
            np.testing.assert_array_equal(t.planes[2], ref.planes[2])


def test_dask_distributed_cluster_equals_the_in_memory_path(rng):
    """On a LocalCluster of two worker processes the chunks are reduced on the
    workers (detector axes split on purpose: the graph rechunks them whole);
    virtual images and centre of mass equal the in-memory pass."""
    da = pytest.importorskip("dask.array")
    distributed = pytest.importorskip("dask.distributed")
    data = rng.integers(0, 500, size=(12, 10, 16, 16), dtype=np.uint16)
    det = stem.Detector((16, 16), (K_SAMPLING, K_SAMPLING), E, (7.5, 7.5))
    regions = {"bf": (0, 20.0), "df": (20.0, np.inf)}
    ref = stem.reduce_4dstem(data, det, regions, backend="cpu")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        lazy = da.from_array(data, chunks=(4, 5, 8, 16))
        with distributed.get_task_stream(client) as stream:
            red = stem.reduce_4dstem(lazy, det, regions, backend="cpu")
        # The reduction ran as tasks on the workers: one per chunk of scan positions.
        reduced = [t for t in stream.data if str(t["key"]).startswith("('_reduce_block")]
        assert len(reduced) == 3 * 2
        assert {t["worker"] for t in reduced} <= set(client.scheduler_info()["workers"])
    for name in regions:
        np.testing.assert_allclose(red.virtual[name], ref.virtual[name], rtol=1e-6)
    np.testing.assert_allclose(red.com, ref.com, rtol=1e-6, atol=1e-9)


def _phase_and_gradient(n=32, step=0.25):
    y = np.arange(n)[:, None] * step
    x = np.arange(n)[None, :] * step
    a = 2 * np.pi / (n * step)
    phi = 0.6 * np.sin(a * y) * np.cos(2 * a * x) + 0.3 * np.cos(a * x + a * y)
    gy = 0.6 * a * np.cos(a * y) * np.cos(2 * a * x) - 0.3 * a * np.sin(a * x + a * y)
    gx = -1.2 * a * np.sin(a * y) * np.sin(2 * a * x) - 0.3 * a * np.sin(a * x + a * y)
    return phi, np.stack([gy, gx])


@pytest.mark.parametrize("degrees,flip", [(0.0, False), (37.0, False), (123.0, True),
                                          (250.0, False)])
def test_rotation_calibration_finds_the_curl_free_rotation(degrees, flip):
    phi, grad = _phase_and_gradient()
    # What the detector sees: the inverse of "transpose (flip) then rotate".
    back = stem.rotate_com(grad, -degrees, False)
    com = back[::-1] if flip else back
    found, found_flip = stem.calibrate_rotation(com, reference_gradient=grad)
    assert found_flip == flip
    assert abs((found - degrees + 180) % 360 - 180) < 0.2
    # Without a reference the answer is determined up to 180 degrees.
    half, _ = stem.calibrate_rotation(com)
    assert abs((half - degrees + 90) % 180 - 90) < 0.2


@pytest.mark.parametrize("rotation", [0.0, "auto"])
def test_from_4dstem_icom_recovers_the_encoded_phase(rotation):
    """Patterns whose spots sit at ∇φ/2π: iCOM gives φ back (exact for this field)."""
    phi, grad = _phase_and_gradient()
    step = 0.25
    offsets_px = grad / (2 * np.pi) / K_SAMPLING
    data = gaussian_patterns(offsets_px)
    t = ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=step,
                                    k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                                    rotation=rotation, backend="cpu")
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < 1e-3
    assert len(t.reductions) == 3 and set(t.reductions[1].virtual) >= {"bf", "whole"}


def _window_phase_and_gradient(n=32, step=0.25):
    """A φ that is not periodic over the scan (half periods: a window of a
    larger specimen) and whose gradient has zero mean over it."""
    y = (np.arange(n)[:, None] + 0.5) * step
    x = (np.arange(n)[None, :] + 0.5) * step
    b = np.pi / (n * step)
    phi = 0.5 * np.sin(b * y) * np.sin(b * x) + 0.3 * np.cos(2 * b * x) + 0 * y
    gy = 0.5 * b * np.cos(b * y) * np.sin(b * x)
    gx = 0.5 * b * np.sin(b * y) * np.cos(b * x) - 0.6 * b * np.sin(2 * b * x)
    return phi, np.stack([gy, gx])


def test_a_constant_centre_of_mass_offset_is_no_phase_ramp():
    """A detector centre given 0.8 px off (or descan) moves every spot alike
    (and is warned: it is off the spot measured); the triplet's gradient
    drops that mean, so that iCOM over a non-periodic field
    (mirror boundary) returns φ, not φ plus a ramp of several times φ."""
    phi, grad = _window_phase_and_gradient()
    offsets_px = grad / (2 * np.pi) / K_SAMPLING
    data = gaussian_patterns(offsets_px)
    # this φ is one bump over the field, most of its gradient a plane: kept (descan="none",
    # which then warns that a plane that large looks like descan)
    kwargs = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, backend="cpu",
                  register=False, descan="none")
    with pytest.warns(ft.TrustWarning, match="kept"):
        exact = ft.FocalTriplet.from_4dstem(data, data, data, center=(16.0, 15.0), **kwargs)
    with pytest.warns(stem.DetectorWarning, match=r"^center: "):  # 0.29 spot radii off
        off = ft.FocalTriplet.from_4dstem(data, data, data, center=(16.3, 14.2), **kwargs)
    for t in (exact, off):
        rec = ft.reconstruct(t, method="icom", backend="cpu", boundary="mirror",
                             dtype="float64")
        assert rel_rms(rec.phase, phi) < 0.05
        assert np.abs(t.gradient.mean(axis=(1, 2))).max() < 1e-6 * np.abs(t.gradient).max()
    # the reductions keep the centre of mass as measured: the offset is there
    shift = (off.reductions[1].com - exact.reductions[1].com).mean(axis=(1, 2))
    assert np.allclose(shift, [-0.3 * K_SAMPLING, 0.8 * K_SAMPLING], rtol=0.05)


def _descan_px(n, total, direction):
    """Disk displacement (2, n, n) in detector px of a descan that moves it by
    ``total`` px from one end of the scan to the other: along the detector
    direction ``direction`` (angle in degrees), linearly along scan axis 1."""
    a = np.deg2rad(direction)
    ramp = total * (np.arange(n) / (n - 1) - 0.5)
    return np.stack([np.sin(a) * np.broadcast_to(ramp, (n, n)),
                     np.cos(a) * np.broadcast_to(ramp, (n, n))])


@pytest.mark.parametrize("direction", [0.0, 90.0, 35.0])
def test_a_descan_ramp_is_removed_from_the_gradient_and_warned(direction):
    """Uncorrected descan moves every spot by an amount that grows linearly
    across the scan (2 detector px here): along its own axis (0°) the ramp has
    no curl, and iCOM integrated it into a quadratic phase without a word.
    The triplet's gradient drops its plane by default, records it in
    ``triplet.descan`` and warns that it is large; ``descan="none"`` keeps
    it, and warns that iCOM's phase is not the specimen's."""
    phi, grad = _phase_and_gradient()
    offsets_px = grad / (2 * np.pi) / K_SAMPLING
    kwargs = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E,
                  center=(16.0, 15.0), backend="cpu", register=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        right = ft.FocalTriplet.from_4dstem(*[gaussian_patterns(offsets_px)] * 3, **kwargs)
    assert right.descan["applied"] and not right.descan["large"]
    assert right.descan["across_px"] < 0.05
    data = gaussian_patterns(offsets_px + _descan_px(32, 2.0, direction))
    with pytest.warns(ft.TrustWarning, match=r"moves linearly by 2\.0\d detector px .*removed"):
        t = ft.FocalTriplet.from_4dstem(data, data, data, **kwargs)
    assert t.descan["mode"] == "plane" and t.descan["applied"] and t.descan["large"]
    assert abs(t.descan["across_px"] - 2.0) < 0.05
    assert abs(t.descan["across_mrad"] - 2.0 * K_SAMPLING * ft.physics.wavelength(E) * 1e3) < 0.05
    assert np.abs(t.gradient - right.gradient).max() < 0.01 * np.abs(right.gradient).max()
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < 0.01
    with pytest.warns(ft.TrustWarning, match="kept .descan='none'.: icom integrates"):
        kept = ft.FocalTriplet.from_4dstem(data, data, data, descan="none", **kwargs)
    assert kept.descan["mode"] == "none" and not kept.descan["applied"]
    rec = ft.reconstruct(kept, method="icom", backend="cpu", dtype="float64")
    if direction == 90.0:  # across its own axis the ramp is all curl, which iCOM drops
        assert rel_rms(rec.phase, phi) < 0.01
    else:
        assert rel_rms(rec.phase, phi) > 0.3


def test_descan_plane_fits_and_removes_an_analytic_plane():
    """The least-squares plane of each component is found exactly, on a
    non-square scan, whatever else (zero-mean, orthogonal to it) is there."""
    ny, nx = 12, 17
    y, x = np.mgrid[:ny, :nx].astype(float)
    u, v = y - (ny - 1) / 2, x - (nx - 1) / 2  # even functions of these have no slope
    wiggle = np.stack([np.cos(0.9 * u) * np.cos(0.4 * v), np.cos(0.3 * u * v)])
    slopes = np.array([[0.02, -0.01], [0.005, 0.03]])  # rad/Å per px: component, axis
    g = (wiggle + 0.7 + slopes[:, 0, None, None] * y + slopes[:, 1, None, None] * x)
    g = g.astype(np.float32)
    out, rec = stem.descan_plane(g, E, (0.05, 0.05))
    assert np.allclose(rec["slopes"], slopes, atol=1e-6)
    assert out.dtype == np.float32
    _, left = stem.fit_plane(out)
    assert np.abs(left).max() < 1e-6
    kept, rec_none = stem.descan_plane(g, E, 0.05, mode="none")
    assert rec_none["slopes"] == rec["slopes"] and not rec_none["applied"]
    assert np.allclose(kept, g - g.mean(axis=(1, 2), keepdims=True))


def test_from_4dstem_refuses_an_unknown_descan_mode(rng):
    data = rng.random((4, 4, 9, 9)).astype(np.float32)
    with pytest.raises(ft.InputError, match=r"^descan: expected one of 'plane', 'none', "
                                            r"got 'yes'"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.25,
                                    k_sampling=K_SAMPLING, energy=E, descan="yes")
    # before the data are read: a typo is not found after a pass over them
    with pytest.raises(ft.InputError, match=r"^descan: "):
        ft.FocalTriplet.from_4dstem(data, data[..., :5], data, dz=20.0, scan_step=0.25,
                                    k_sampling=K_SAMPLING, energy=E, descan="yes")


def test_from_reductions_leaves_the_reductions_given_unchanged():
    """The rotation is applied to copies: building twice from the same
    reductions, or from a triplet's own (rotated) reductions, gives the
    same gradient, and the caller's centre of mass is not rotated."""
    _, grad = _phase_and_gradient(n=16)
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    reds, _ = stem.reduce_triplet(data, data, data, K_SAMPLING, E, center=(16.0, 15.0),
                                  backend="cpu")
    raw = [r.com.copy() for r in reds]
    kw = dict(dz=20.0, scan_step=0.25, register=False)
    t1 = ft.FocalTriplet.from_reductions(reds, rotation=30.0, **kw)
    t2 = ft.FocalTriplet.from_reductions(reds, rotation=30.0, **kw)
    for r, c in zip(reds, raw):
        assert np.array_equal(r.com, c) and r.rotation == 0.0 and r.flip is False
    np.testing.assert_array_equal(t1.gradient, t2.gradient)
    np.testing.assert_allclose(t1.gradient, 2 * np.pi * stem.rotate_com(raw[1], 30.0, False),
                               atol=1e-5)
    assert t1.reductions[1].rotation == 30.0 and t1.reductions[1] is not reds[1]
    # A triplet's own reductions: the rotation asked for is from the detector axes.
    for rotation, flip in ((30.0, False), (90.0, True)):
        t3 = ft.FocalTriplet.from_reductions(t1.reductions, rotation=rotation, flip=flip, **kw)
        direct = ft.FocalTriplet.from_reductions(reds, rotation=rotation, flip=flip, **kw)
        np.testing.assert_allclose(t3.gradient, direct.gradient, atol=1e-5)
    assert t1.reductions[1].rotation == 30.0
    t = ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.25,
                                    k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                                    rotation=90.0, register=False, backend="cpu")
    again = ft.FocalTriplet.from_reductions(t.reductions, rotation=90.0, **kw)
    np.testing.assert_allclose(again.gradient, t.gradient, atol=1e-5)


@pytest.mark.parametrize("rotation", [1e300, np.inf, np.nan, -361.0, "north", True, None])
def test_from_4dstem_refuses_a_rotation_out_of_range(rotation, rng):
    data = rng.random((4, 4, 8, 8)).astype(np.float32)
    with pytest.raises(ft.InputError, match="rotation: expected"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2,
                                    k_sampling=K_SAMPLING, energy=E, rotation=rotation)


def test_rotation_functions_refuse_bad_inputs():
    com = np.ones((2, 8, 8))
    with pytest.raises(ft.InputError, match="flip: expected True or False, got 'no'"):
        stem.rotate_com(com, 0.0, "no")
    with pytest.raises(ft.InputError, match="degrees: expected"):
        stem.rotate_com(com, np.nan, False)
    with pytest.raises(ft.InputError, match=r"com: expected an array \(2, Sy, Sx\)"):
        stem.rotate_com(np.ones((3, 8, 8)), 0.0, False)
    with pytest.raises(ft.InputError, match=r"com: expected an array \(2, Sy, Sx\)"):
        stem.calibrate_rotation(np.zeros((3, 8, 8)))
    with pytest.raises(ft.InputError, match="com: contains NaN or Inf"):
        stem.calibrate_rotation(np.full((2, 8, 8), np.nan))
    with pytest.raises(ft.InputError, match="reference_gradient: expected"):
        stem.calibrate_rotation(com, reference_gradient=np.ones((2, 4, 4)))


@pytest.mark.parametrize("call", ["rotate_com", "fit_plane", "descan_plane"])
@pytest.mark.parametrize("bad,says", [
    ("nan", r"contains NaN or Inf"), ("complex", r"expected real numbers, got dtype complex"),
    ("flat", r"expected an array \(2, Sy, Sx\), got shape \(8, 8\)"),
    ("empty", r"expected at least one scan position")])
def test_public_field_functions_refuse_what_they_would_turn_into_nan(call, bad, says):
    """rotate_com, fit_plane and descan_plane returned NaN everywhere for one
    NaN of the field, rotated complex values as complex numbers and raised
    ValueError for a 2-D one."""
    _, grad = _phase_and_gradient(n=8)
    field = {"nan": np.where(np.arange(64).reshape(8, 8) == 9, np.nan, grad),
             "complex": grad.astype(complex), "flat": grad[0],
             "empty": grad[:, :0]}[bad]
    name = {"rotate_com": "com", "fit_plane": "field", "descan_plane": "gradient"}[call]
    run = {"rotate_com": lambda f: stem.rotate_com(f, 10.0, False),
           "fit_plane": stem.fit_plane,
           "descan_plane": lambda f: stem.descan_plane(f, E, K_SAMPLING)}[call]
    with pytest.raises(ft.InputError, match=rf"^{name}: {says}"):
        run(field)


def test_descan_plane_refuses_a_mode_or_sampling_it_would_misread():
    """An unknown mode was taken as "none" (the plane kept without a word), a
    NaN k_sampling gave a NaN ``across_px`` that no warning compares above."""
    _, grad = _phase_and_gradient(n=8)
    with pytest.raises(ft.InputError, match=r"^mode: expected one of 'plane', 'none', "
                                            r"got 'Plane'"):
        stem.descan_plane(grad, E, K_SAMPLING, mode="Plane")
    for k in (np.nan, 0.0, (0.05, -1.0)):
        with pytest.raises(ft.InputError, match=r"^k_sampling: expected"):
            stem.descan_plane(grad, E, k)


@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_calibrate_rotation_does_not_depend_on_the_scale_of_the_field(scale):
    """The squared curl of a field of 1e300 overflowed (a rotation of NaN), of
    1e-300 underflowed (0 degrees whatever the rotation); the turn and flip
    are those of the field at any scale, the reference's sign too."""
    _, grad = _phase_and_gradient()
    com = stem.rotate_com(grad, -37.0, False)
    want, want_flip = stem.calibrate_rotation(com, reference_gradient=grad)
    assert abs(want - 37.0) < 0.2 and not want_flip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got, flip = stem.calibrate_rotation(com * scale, reference_gradient=grad * scale)
        half, _ = stem.calibrate_rotation(com * scale)
    assert got == pytest.approx(want, abs=1e-9) and flip == want_flip
    assert half == pytest.approx(want % 180, abs=1e-9)


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.DetectorWarning")  # random patterns
def test_from_4dstem_rejects_bad_data(rng):
    good = rng.random((4, 4, 8, 8)).astype(np.float32)
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=K_SAMPLING, energy=E, center=(4, 4),
              bf_radius=5.0, backend="cpu")
    with pytest.raises(ft.InputError, match="zero: expected a 4-D array"):
        ft.FocalTriplet.from_4dstem(good, good[0], good, **kw)
    with pytest.raises(ft.InputError, match=r"plus: expected shape \(4, 4, 8, 8\)"):
        ft.FocalTriplet.from_4dstem(good, good, good[:, :3], **kw)
    with pytest.raises(ft.InputError, match="minus: expected real detector counts"):
        ft.FocalTriplet.from_4dstem(good.astype(complex), good, good, **kw)
    bad = good.copy()
    bad[2, 1, 3, 3] = np.nan
    with pytest.raises(ft.InputError, match=r"plus: contains NaN or Inf \(first at scan "
                                            r"position \(2, 1\)\)"):
        ft.FocalTriplet.from_4dstem(good, good, bad, **kw)
    with pytest.raises(ft.InputError, match="k_sampling: expected a positive"):
        ft.FocalTriplet.from_4dstem(good, good, good, **{**kw, "k_sampling": 0})
    with pytest.raises(ft.InputError, match="virtual: expected one of"):
        ft.FocalTriplet.from_4dstem(good, good, good, **kw, virtual="haadf")


def test_weights_are_reused_for_the_same_geometry_and_not_for_another(rng, monkeypatch):
    """An acquisition loop reduces scan after scan with one detector: the
    weights are computed once; another centre or region set gets its own."""
    data = (rng.random((3, 4, 16, 16)) * 100).astype(np.uint16)
    det = stem.Detector((16, 16), (0.05, 0.05), 300e3, (7.5, 7.5))
    regions = {"bf": (0.0, 5.0), "df": (5.0, np.inf)}
    reduction._WEIGHT_CACHE.clear()
    made = []
    compute = stem.detector_weights
    monkeypatch.setattr(reduction, "detector_weights", lambda *a: made.append(a) or compute(*a))
    a = stem.reduce_4dstem(data, det, regions, backend="cpu")
    b = stem.reduce_4dstem(data, det, regions, backend="cpu")
    assert len(made) == 1 and len(reduction._WEIGHT_CACHE) == 1
    np.testing.assert_array_equal(a.com, b.com)
    moved = stem.Detector((16, 16), (0.05, 0.05), 300e3, (8.5, 7.5))
    c = stem.reduce_4dstem(data, moved, regions, backend="cpu")
    assert len(made) == 2 and len(reduction._WEIGHT_CACHE) == 2
    assert not np.array_equal(a.com, c.com)
    stem.reduce_4dstem(data, det, {"bf": (0.0, 5.0)}, backend="cpu")
    assert len(made) == 3
    W, _ = compute(moved, regions)
    want = ref.reduce_patterns(data.reshape(12, 256), W, *stem.weight_ranges(W))
    np.testing.assert_allclose(c.virtual["bf"].ravel(), want[:, 0], rtol=1e-5)


def _disk_data(det=53, radius_px=12.4, seed=3):
    """Three 4D scans of a bright-field disk (a weak dark-field floor around it)
    whose brightness varies over a 12 x 12 scan, alike in the three; k_sampling
    puts its edge at about 20 mrad at 300 keV."""
    rng = np.random.default_rng(seed)
    iy, ix = np.indices((det, det)) - (det - 1) / 2
    disk = (np.hypot(iy, ix) <= radius_px).astype(np.float64)
    k = 20e-3 / ft.wavelength(E) / radius_px
    scan = 1 + 0.2 * rng.random((12, 12, 1, 1))
    out = [(1000 * disk * scan * (1 + 0.01 * i) + 30 * scan * (1 - disk)).astype(np.float32)
           for i in (-1, 0, 1)]
    return out, k


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_a_detector_sampling_of_the_whole_detector_is_refused_naming_it():
    """k_sampling given as the detector's whole extent (per image, not per
    pixel) put the bright-field disk at radians and scaled the centre of
    mass with it: icom returned a phase as many times too strong as the
    detector has pixels across, without a word. A disk beyond any probe's
    convergence semi-angle is refused naming k_sampling, in from_4dstem and
    in the geometry that triplet_with_libertem shares."""
    data, k = _disk_data()
    kw = dict(dz=20.0, scan_step=0.2, energy=E, backend="cpu")
    t = ft.FocalTriplet.from_4dstem(*data, k_sampling=k, **kw)
    assert t.reductions[1].regions["bf-full"][1] == pytest.approx(20.0, rel=0.03)
    whole = k * data[1].shape[-1]  # 53 px: a disk of about 1060 mrad
    with pytest.raises(ft.InputError, match=r"^k_sampling: the bright-field disk measures "
                                            r"10\d\d mrad .* beyond the 500 mrad"):
        ft.FocalTriplet.from_4dstem(*data, k_sampling=whole, **kw)
    with pytest.raises(ft.InputError, match=r"^k_sampling: .*one detector pixel in 1/Å"):
        stem.triplet_geometry(stem.mean_pattern(data[1]), (whole, whole), E)
    # the largest disk taken: the simulations' own limit of the semi-angle
    edge = k * stem.detector.MAX_DISK_MRAD / 20.0 * 0.98
    stem.triplet_geometry(stem.mean_pattern(data[1]), (edge, edge), E)
    # a sampling in another unit, 1e5 times too small: a disk of 0.2 µrad,
    # whose icom phase came out as many times too weak, without a word
    with pytest.raises(ft.InputError, match=r"^k_sampling: the bright-field disk measures "
                                            r"0.000\d+ mrad .* under the 0.001 mrad"):
        ft.FocalTriplet.from_4dstem(*data, k_sampling=k * 1e-5, **kw)
    least = k * stem.detector.MIN_DISK_MRAD / 20.0 * 1.02
    stem.triplet_geometry(stem.mean_pattern(data[1]), (least, least), E)


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_a_detector_inside_the_bright_field_disk_is_flagged():
    """A detector cropped to 15 x 15 px inside a 20 mrad disk measured a
    'bf-full' disk of the detector's own size, and its 'df' image was bright
    field (registration on it, noise band from it): a DetectorWarning, and no
    'bf-full', 'abf' or 'df' region (so no band-limited noise, no registration
    on a false dark field)."""
    import warnings

    data, k = _disk_data()
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=k, energy=E, backend="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", stem.DetectorWarning)  # the whole detector: no warning
        whole = ft.FocalTriplet.from_4dstem(*data, **kw)
    assert whole.reductions[1].regions["bf-full"][1] == pytest.approx(20.0, rel=0.03)
    assert whole.registration["signal"] == "df"

    cropped = [d[..., 19:34, 19:34] for d in data]
    with pytest.warns(stem.DetectorWarning, match=r"^zero: the bright-field disk fills the "
                                                  r"detector \(.* mrad measured.*no dark field"
                      ) as told:
        t = ft.FocalTriplet.from_4dstem(*cropped, **kw)
    # at the caller's line (it named one in triplet.py)
    assert {w.filename for w in told if w.category is stem.DetectorWarning} == {__file__}
    regions = t.reductions[1].regions
    assert set(regions) == {"bf", "whole"}
    assert t.noise is None or t.noise.source != "band"
    assert t.registration["signal"] is None
    np.testing.assert_array_equal(t.zero, t.reductions[1].virtual["bf"])
    # its centre of mass does not see the disk's edge: no method leans on it
    assert t.gradient_orientation["suspect"] is True
    assert t.gradient_orientation["why"] == stem.detector.DISK_FILLS_COM
    with pytest.warns(ft.TrustWarning, match="^icom: the bright-field disk fills the detector"):
        icom = ft.reconstruct(t, method="icom", backend="cpu")
    assert icom.info["trust"].startswith("the bright-field disk fills the detector")
    with pytest.warns(ft.TrustWarning, match="returned the tie phase"):
        flow = ft.reconstruct(t, method="flowtie", backend="cpu")
    assert flow.info["fallback"] == "tie"
    assert flow.info["why"].endswith(stem.detector.DISK_FILLS_COM)
    # reductions of the whole detector made with regions of one's own choice
    # (no 'df') are not taken for it: the geometry decides, not the names
    det = whole.reductions[1].detector
    own = [stem.reduce_4dstem(d, det, {"bf": (0.0, 5.0), "whole": (0.0, np.inf)},
                              backend="cpu") for d in data]
    mine = ft.FocalTriplet.from_reductions(own, dz=20.0, scan_step=0.2, register=False)
    assert not (mine.gradient_orientation or {}).get("suspect")
    with pytest.warns(stem.DetectorWarning), pytest.raises(ft.InputError, match="^virtual: "):
        ft.FocalTriplet.from_4dstem(*cropped, **kw, virtual="df")
    fills, on_edge, edge = stem.disk_fills_detector(stem.mean_pattern(cropped[1]))
    assert fills and on_edge == edge == 56

    # A disk that only touches an edge still has dark field around it.
    mean = stem.mean_pattern(data[1])
    assert not stem.disk_fills_detector(mean)[0]
    assert not stem.disk_fills_detector(mean[14:, :])[0]  # 1 edge pixel in the disk
    assert stem.disk_fills_detector(mean[20:, :])[0]  # cut 6 px deep: 15 px along the edge


def test_the_poisson_noise_of_the_centre_of_mass_is_that_of_the_counts(rng):
    """A uniform bright-field disk of ~400 counts at the same place in every
    pattern: the centre of mass scatters only by the counts' Poisson noise,
    and the estimate from the virtual images matches that scatter."""
    det, radius = 33, 9.0
    ky, kx = np.mgrid[:det, :det] - 16.0
    disk = (ky ** 2 + kx ** 2) <= radius ** 2
    data = rng.poisson(disk * 400.0 / disk.sum(), size=(40, 40, det, det)).astype(np.uint16)
    energy = 300e3
    k_sampling = 0.05  # 1/Å per pixel: the disk's edge at 0.45 1/Å
    bf_mrad = radius * k_sampling * ft.wavelength(energy) * 1e3
    t = ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=2.0,
                                    k_sampling=k_sampling, energy=energy, center=(16.0, 16.0),
                                    bf_radius=0.5 * bf_mrad, backend="cpu", register=False)
    red = t.reductions[1]
    assert abs(red.regions["bf-full"][1] - bf_mrad) < 0.1 * bf_mrad
    noise = stem.focal.com_poisson_noise(red)
    measured = float(np.var(t.gradient))  # both components: the true field is constant
    assert noise.source == "poisson"
    assert 0.8 < noise.variance[0] / measured < 1.25
    # no room above the band limit at 2 Å steps: the triplet takes the counts' noise
    assert t.gradient_noise == noise


def test_a_dark_level_subtracted_too_far_is_warned_and_read_noise_is_not(rng):
    """Patterns whose far dark field lies below zero lost that level from every
    sum, which divides the centre of mass: icom comes out too strong (here
    about 1.5 times), and the reduction says so; zero-mean read noise left in
    the patterns does not set it off."""
    phi, grad = _phase_and_gradient()
    offsets_px = grad / (2 * np.pi) / K_SAMPLING
    data = gaussian_patterns(offsets_px, total=1000.0)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
              register=False, backend="cpu")
    noisy = data + rng.normal(0, 0.2, data.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        right = ft.FocalTriplet.from_4dstem(noisy, noisy, noisy, **kw)
    low = noisy - 1000.0 / (3 * data.shape[2] * data.shape[3])  # a third of the sum gone
    with pytest.warns(ft.TrustWarning,
                      match=r"far dark field .* below zero.* about 1\.[45]\d* times") as told:
        wrong = ft.FocalTriplet.from_4dstem(low, low, low, **kw)
    assert {w.filename for w in told} == {__file__}  # the caller's line, not triplet.py's
    ratio = np.std(ft.reconstruct(wrong, method="icom", backend="cpu").phase) / np.std(
        ft.reconstruct(right, method="icom", backend="cpu").phase)
    assert 1.4 < ratio < 1.6


def test_stem_helpers_refuse_empty_and_unbounded_inputs():
    g = np.random.default_rng(0).normal(size=(2, 16, 16))
    with pytest.raises(ft.InputError, match="step_degrees: expected a finite number >= 0.01"):
        stem.calibrate_rotation(g, step_degrees=1e-9)  # asked for 1.3 TiB
    with pytest.raises(ft.InputError, match="com: expected at least 3 scan positions a side"):
        stem.calibrate_rotation(np.ones((2, 0, 16)))  # returned 1.0 degree
    assert 0 <= stem.calibrate_rotation(g, step_degrees=0.01)[0] < 180
    with pytest.raises(ft.InputError, match="patterns: expected a real array"):
        stem.mean_pattern("x")
    with pytest.raises(ft.InputError, match="patterns: expected at least one pattern"):
        stem.mean_pattern(np.ones((0, 4, 16, 16)))  # returned NaN everywhere
    data = np.ones((4, 4, 8, 8))
    for count in (0, -1, np.nan, 2.5, "3"):
        with pytest.raises(ft.InputError, match="count: expected a positive integer"):
            stem.sample_patterns(data, count=count)
    with pytest.raises(ft.InputError, match="data: expected a scan of at least one position"):
        stem.sample_patterns(np.ones((0, 4, 8, 8)))
    with pytest.raises(ft.InputError, match=r"data: expected a 4D-STEM dataset .* shape \(4,\)"):
        stem.sample_patterns(np.zeros(4))  # raised ValueError (unpacking)
    assert stem.sample_patterns(data, count=3).shape[1:] == (8, 8)


def test_empty_patterns_among_full_ones_are_warned(rng):
    """A frame the camera dropped, or one never written to the file, reads as an
    empty pattern: no specimen gives one (vacuum passes the whole beam)."""
    phi, grad = _phase_and_gradient()
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
              register=False, backend="cpu")
    gap = data.copy()
    gap[5, 7:12] = 0
    with pytest.warns(ft.TrustWarning, match=r"plus: 5 of 1024 scan positions hold an empty "
                      r"pattern \(the first at \(5, 7\)\)"):
        ft.FocalTriplet.from_4dstem(data, data, gap, **kw)
    # sparse counts, where an empty pattern is chance: nothing said
    sparse = rng.poisson(data / data.sum(axis=(2, 3), keepdims=True) * 2.0).astype(np.uint16)
    assert (sparse.sum(axis=(2, 3)) == 0).any()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ft.FocalTriplet.from_4dstem(sparse, sparse, sparse, **kw)
        except ft.InputError:
            pass  # too few counts to be reduced is another matter
    assert not any("empty pattern" in str(w.message) for w in caught)


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
@pytest.mark.filterwarnings("ignore::flowtie_fast.errors.TrustWarning")
def test_data_with_the_detector_axes_first_are_told_to_move_them():
    """A reader that returns (detector y, detector x, scan y, scan x) (an NCEM
    .emd) makes the scan image the "pattern": no disk with dark field around
    it. The warning names the axis order and the fix."""
    data, k = _disk_data()
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=k, energy=E, backend="cpu")
    swapped = [np.ascontiguousarray(np.moveaxis(d, (2, 3), (0, 1))) for d in data]
    with pytest.warns(stem.DetectorWarning, match=r"detector axes first .*"
                                                  r"numpy\.moveaxis\(data, \(0, 1\), \(2, 3\)\)"):
        try:
            ft.FocalTriplet.from_4dstem(*swapped, **kw)
        except ft.InputError:  # refused further on: the warning came first
            pass
    # the fix the warning names gives data the library reads without it
    back = [np.moveaxis(d, (0, 1), (2, 3)) for d in swapped]
    with warnings.catch_warnings():
        warnings.simplefilter("error", stem.DetectorWarning)
        ft.FocalTriplet.from_4dstem(*back, **kw)


def test_a_centre_of_mass_limited_inside_the_bright_field_disk_is_warned():
    """A bright-field disk moved by the phase gradient: a centre of mass taken
    within half the disk's radius cuts its moving edge off, and icom's phase
    came out a fraction of the phase without a word. A TrustWarning names the
    disk's radius; a limit beyond it (with the disk's soft edge), or none, is
    taken silently. (A limit just beyond the half-maximum radius still cuts
    the edge's tail: 20.5 mrad here gave 0.57 of the phase, unwarned.)"""
    phi, grad = _phase_and_gradient()
    det, radius_px = 53, 12.4
    k = 20e-3 / ft.wavelength(E) / radius_px  # the disk's edge at 20 mrad
    offsets = grad / (2 * np.pi) / k  # px, up to about 1.4
    iy, ix = np.indices((det, det), dtype=np.float64) - (det - 1) / 2
    r = np.hypot(iy - offsets[0][..., None, None], ix - offsets[1][..., None, None])
    data = (1000 / (1 + np.exp((r - radius_px) / 0.5))).astype(np.float32)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=k, energy=E, backend="cpu",
              register=False)
    phases = {}
    for com_radius in (None, 30.0, 10.0):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ft.TrustWarning)
            if com_radius == 10.0:
                with pytest.warns(ft.TrustWarning, match=r"^com_radius: the centre of mass is "
                                  r"limited to 10 mrad, inside the bright-field disk \(20"):
                    t = ft.FocalTriplet.from_4dstem(data, data, data, com_radius=com_radius,
                                                    **kw)
            else:
                t = ft.FocalTriplet.from_4dstem(data, data, data, com_radius=com_radius, **kw)
        phases[com_radius] = ft.reconstruct(t, method="icom", backend="cpu",
                                            dtype="float64").phase
    assert rel_rms(phases[None], phi) < 0.05
    assert rel_rms(phases[30.0], phi) < 0.05
    assert np.std(phases[10.0]) < 0.5 * np.std(phi)  # what the warning is about


def test_the_com_radius_the_warning_advises_is_not_warned_again():
    """The warning names the least com_radius that is not inside the disk:
    rounded up, not to the nearest (a disk of 20.12 mrad advised 20.1, which
    was warned again, "limited to 20.1 mrad, inside the disk (20.1 mrad)")."""
    import re

    det, radius_px = 53, 12.4
    k = 20e-3 / ft.wavelength(E) / radius_px
    iy, ix = np.indices((det, det), dtype=np.float64) - (det - 1) / 2
    off = np.random.default_rng(0).normal(0, 0.3, (2, 16, 16))
    r = np.hypot(iy - off[0][..., None, None], ix - off[1][..., None, None])
    data = (1000 / (1 + np.exp((r - radius_px) / 0.5))).astype(np.float32)
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=k, energy=E, backend="cpu", register=False)
    with pytest.warns(ft.TrustWarning, match="^com_radius:") as caught:
        t = ft.FocalTriplet.from_4dstem(data, data, data, com_radius=15.0, **kw)
    disk = t.reductions[1].regions["bf-full"][1]
    assert 20.0 < disk < 20.15  # a radius that .3g rounds down
    message = next(str(w.message) for w in caught if str(w.message).startswith("com_radius:"))
    advised = float(re.search(r"give com_radius=([0-9.e+]+) or more", message).group(1))
    assert disk <= advised < disk + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        ft.FocalTriplet.from_4dstem(data, data, data, com_radius=advised, **kw)
    # just inside: the two radii are written so that they differ
    with pytest.warns(ft.TrustWarning, match="^com_radius:") as caught:
        ft.FocalTriplet.from_4dstem(data, data, data, com_radius=disk - 1e-4, **kw)
    message = next(str(w.message) for w in caught if str(w.message).startswith("com_radius:"))
    limit, measured = re.search(r"limited to ([0-9.]+) mrad, inside the bright-field disk "
                                r"\(([0-9.]+) mrad", message).groups()
    assert limit != measured


def _smooth(a, sigma=1.5):
    """``a`` smoothed over its last two axes by a periodic Gaussian of
    ``sigma`` px, rescaled to unit standard deviation."""
    qy = np.fft.fftfreq(a.shape[-2])[:, None]
    qx = np.fft.fftfreq(a.shape[-1])[None, :]
    out = np.fft.ifft2(np.fft.fft2(a) * np.exp(-2 * (np.pi * sigma) ** 2 * (qy**2 + qx**2))).real
    return out / out.std(axis=(-2, -1), keepdims=True)


def _textured_scans(seed=5, det=41, radius_px=9.5, scan=(20, 22)):
    """Three 4D scans of one specimen (a bright-field disk whose brightness
    and edge shift vary smoothly over the scan, within the band limit of a
    scanned image as a specimen's do, a dark-field floor), alike in the
    three, as electron counts (uint16)."""
    rng = np.random.default_rng(seed)
    iy, ix = np.indices((det, det)) - (det - 1) / 2
    tilt = 0.6 * _smooth(rng.standard_normal((2, *scan)))[..., None, None]
    disk = (np.hypot(iy - tilt[0], ix - tilt[1]) <= radius_px).astype(np.float64)
    bright = 1.15 + 0.3 * _smooth(rng.random(scan) - 0.5)[..., None, None] / np.sqrt(12)
    lam = 200 * disk * bright + 5 * (1 - disk) * (2 - bright)
    k = 20e-3 / ft.wavelength(E) / radius_px
    return [rng.poisson(lam).astype(np.uint16) for _ in range(3)], k


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
@pytest.mark.parametrize("scan_step,source", [(0.2, "band"), (0.5, "poisson")])
def test_a_beam_current_changed_between_the_scans_is_undone(scan_step, source):
    """The ±dz scans recorded at 1.08 and 0.93 times the in-focus scan's
    current: with ``normalize`` (the default) their planes are those of the
    same scans at one current, the factors are recorded, and the noise of
    the scaled planes is c² times theirs, measured above the band limit
    (0.2 Å steps) or the Poisson noise of the counts (0.5 Å steps: no room
    above it); without it the planes keep the change."""
    data, k = _textured_scans()
    kw = dict(dz=20.0, scan_step=scan_step, k_sampling=k, energy=E, backend="cpu",
              register=False)
    same = ft.FocalTriplet.from_4dstem(*data, **kw)
    assert same.flux["applied"] and same.flux["scale"][1] == 1.0
    rng = np.random.default_rng(1)
    # the same specimen at other currents: counts drawn anew at 1.08 and 0.93 times
    changed = [rng.poisson(data[0] * 1.08).astype(np.uint16), data[1],
               rng.poisson(data[2] * 0.93).astype(np.uint16)]
    t = ft.FocalTriplet.from_4dstem(*changed, **kw)
    scale = t.flux["scale"]
    assert scale[0] == pytest.approx(1 / 1.08, rel=2e-3)
    assert scale[2] == pytest.approx(1 / 0.93, rel=2e-3)
    m = t.flux["per_pattern"]
    assert m[0] / m[1] == pytest.approx(1.08, rel=2e-3)
    assert m[2] / m[1] == pytest.approx(0.93, rel=2e-3)
    for got, want in zip(t.planes, same.planes):
        assert abs(float(got.mean()) / float(want.mean()) - 1) < 3e-3
    raw = ft.FocalTriplet.from_4dstem(*changed, **kw, normalize=False)
    assert not raw.flux["applied"]
    assert float(raw.minus.mean()) / float(same.minus.mean()) == pytest.approx(1.08, rel=3e-3)
    np.testing.assert_allclose(np.asarray(t.minus), np.asarray(raw.minus) * scale[0], rtol=1e-6)
    # the noise of the planes follows them
    assert t.noise.source == raw.noise.source == source
    for c, v, v_raw in zip(scale, t.noise.variance, raw.noise.variance):
        assert v == pytest.approx(c * c * v_raw, rel=1e-4)


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
@pytest.mark.filterwarnings("ignore::flowtie_fast.TrustWarning")  # the dropped frame's own
@pytest.mark.parametrize("defect", ["cosmic ray", "bright pattern", "dropped frame"])
def test_one_outlying_pattern_does_not_set_the_beam_current(defect):
    """The ±dz scans' factors came from the mean electrons per pattern of
    each scan: one pattern of 576 hit by a cosmic ray outside the bright
    field (60000 counts on one dark-field pixel), 30 times too bright or
    dropped (zero) moved its scan's factor by 0.17 to 5 % (the TIE phase of a
    weak object from an NMSE of 1.4e-5 to 3.8 at 4096 patterns), while the
    planes' own screen replaced the pixel and said all was well. Such a
    pattern is left out of the mean: the factors are those of the clean
    scans, and the flux record counts it."""
    rng = np.random.default_rng(3)
    iy, ix = np.indices((33, 33)) - 16.0
    r = np.hypot(iy, ix)
    disk, ring = (r <= 6).astype(float), ((r > 7) & (r <= 15)).astype(float)
    # the bright field varies with the specimen, the electrons on the detector do not
    b = 1 + 0.1 * _smooth(rng.standard_normal((24, 24)))[..., None, None]
    lam = 2000 * (disk * b / disk.sum() + ring * (2 - b) / ring.sum())
    data = [rng.poisson(lam).astype(np.uint16) for _ in range(3)]
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=20e-3 / ft.wavelength(E) / 6, energy=E,
              backend="cpu", register=False)
    clean = ft.FocalTriplet.from_4dstem(*data, **kw)
    hit = [d.copy() for d in data]
    if defect == "cosmic ray":
        hit[0][7, 9, 1, 16] = 60000
    elif defect == "bright pattern":
        hit[0][7, 9] = np.minimum(hit[0][7, 9].astype(np.int64) * 30, 65535)
    else:
        hit[0][7, 9] = 0
    t = ft.FocalTriplet.from_4dstem(*hit, **kw)
    assert t.flux["excluded"] == [1, 0, 0]
    assert t.flux["scale"] == pytest.approx(clean.flux["scale"], rel=2e-4)
    if defect == "cosmic ray":  # outside the bright field: the planes are the clean ones
        np.testing.assert_allclose(np.asarray(t.minus), np.asarray(clean.minus), rtol=1e-4)
    assert clean.flux["excluded"] == [0, 0, 0]


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_scans_of_another_dwell_time_are_scaled_with_a_warning():
    """A +dz scan that holds twice the electrons a pattern (twice the dwell
    time) is brought to the in-focus scan's flux with a TrustWarning that
    names it and the option that turns the scaling off; an option that is
    not a bool is refused before the data are read."""
    data, k = _textured_scans()
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=k, energy=E, backend="cpu", register=False)
    doubled = [data[0], data[1], (data[2] * 2).astype(np.uint16)]
    with pytest.warns(ft.TrustWarning, match=r"^plus holds 2 times the in-focus scan's "
                                             r"electrons per pattern.*normalize=False uses "
                                             r"them") as told:
        t = ft.FocalTriplet.from_4dstem(*doubled, **kw)
    assert t.flux["scale"][2] == pytest.approx(0.5, rel=2e-3)
    # the warning names the caller's line, not the library's
    assert {w.filename for w in told if w.category is ft.TrustWarning} == {__file__}
    ds = ft.Dataset(*doubled, (20.0, 20.0), (0.2, 0.2), E, (k, k))
    with pytest.warns(ft.TrustWarning, match=r"^plus holds 2 times") as told:
        ds.triplet(backend="cpu", register=False)
    assert {w.filename for w in told if w.category is ft.TrustWarning} == {__file__}
    # as recorded, twice the flux is refused by the planes' own check; 1.7 times is taken
    with pytest.raises(ft.InputError, match=r"^plus: a mean intensity 2 times that of zero"):
        ft.FocalTriplet.from_4dstem(*doubled, **kw, normalize=False)
    brighter = [data[0], data[1], np.round(data[2] * 1.7).astype(np.uint16)]
    with pytest.warns(ft.TrustWarning, match=r"^plus holds 1.7 times .*the planes are used as "
                                             r"recorded \(normalize=False\)"):
        raw = ft.FocalTriplet.from_4dstem(*brighter, **kw, normalize=False)
    assert not raw.flux["applied"] and raw.flux["scale"][2] == pytest.approx(1 / 1.7, rel=2e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        ft.FocalTriplet.from_4dstem(*data, **kw)  # one current: no warning

    class Unread:
        shape = (20, 22, 41, 41)
        dtype = np.dtype(np.uint16)
        ndim = 4

        def __getitem__(self, key):
            raise AssertionError("read before the options were checked")

        def __array__(self, *a, **k):
            raise AssertionError("read before the options were checked")

    with pytest.raises(ft.InputError, match=r"^normalize: expected True or False, got 'yes'"):
        ft.FocalTriplet.from_4dstem(Unread(), Unread(), Unread(), **kw, normalize="yes")


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_scaling_that_cannot_be_done_is_warned_not_skipped_without_a_word():
    """±dz scans with a dark level subtracted beyond their dark field (their
    whole-detector sums negative on average, their bright-field disks still
    bright): normalize=True left their planes as recorded without a word; a
    TrustWarning names the scans, and normalize=False stays silent."""
    data, k = _textured_scans()
    kw = dict(dz=20.0, scan_step=0.2, k_sampling=k, energy=E, backend="cpu", register=False)
    dark = [data[0].astype(np.float32) - 50, data[1], data[2].astype(np.float32) - 50]
    with pytest.warns(ft.TrustWarning, match=r"^normalize: the whole-detector sums of the "
                                             r"patterns average minus's -\d.*, plus's -\d.*, "
                                             r"no positive number of electrons .*used as "
                                             r"recorded, not scaled"):
        t = ft.FocalTriplet.from_4dstem(*dark, **kw)
    assert not t.flux["applied"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        raw = ft.FocalTriplet.from_4dstem(*dark, **kw, normalize=False)
    np.testing.assert_array_equal(np.asarray(raw.minus), np.asarray(t.minus))
    # reductions made elsewhere without the whole detector's image: nothing to compare
    reductions = t.reductions
    for r in reductions:
        del r.virtual["whole"]
    with pytest.warns(ft.TrustWarning, match=r"^normalize: the reductions hold no "
                                             r"whole-detector image .*not scaled"):
        ft.FocalTriplet.from_reductions(reductions, 20.0, 0.2, register=False)


def _shifted_disk_data(det=(53, 61), center=(26.0, 30.0), radius_px=12.4):
    """Three 4D scans of a soft-edged bright-field disk centred at ``center``
    (row, column) px on a non-square detector, moved by a phase gradient over
    a 32 x 32 scan (a specimen), alike in the three, with a weak dark-field
    floor; k_sampling puts its edge at 20 mrad at 300 keV."""
    _, grad = _phase_and_gradient()
    k = 20e-3 / ft.wavelength(E) / radius_px
    offsets = grad / (2 * np.pi) / k  # px
    iy, ix = np.indices(det, dtype=np.float64)
    r = np.hypot(iy - center[0] - offsets[0][..., None, None],
                 ix - center[1] - offsets[1][..., None, None])
    disk = 1000 / (1 + np.exp((r - radius_px) / 0.5)) + 5.0
    return [(disk * (1 + 0.01 * i)).astype(np.float32) for i in (-1, 0, 1)], k


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_a_centre_given_off_the_bright_field_disk_is_warned(rng):
    """A detector centre given a quarter of the disk's radius off shifts every
    centre of mass and cuts the 'bf' disk off-centre: a DetectorWarning names
    center, the value given, the measured centre, the distance in px and disk
    radii and what to do; the centre given is still used. The right centre
    (noise-free or re-measured on Poisson counts) and no centre pass
    silently; the right centre in (column, row) order is told as such."""
    data, k = _shifted_disk_data()
    kw = dict(dz=20.0, scan_step=0.25, k_sampling=k, energy=E, backend="cpu")
    counted = [rng.poisson(d * 0.05).astype(np.uint16) for d in data]  # 50 e in the disk's px
    with warnings.catch_warnings():
        warnings.simplefilter("error", stem.DetectorWarning)
        found = ft.FocalTriplet.from_4dstem(*data, **kw)
        for d in (data, counted):
            ft.FocalTriplet.from_4dstem(*d, **kw, center=(26.0, 30.0))
            ft.FocalTriplet.from_4dstem(*d, **kw, center=(26.3, 29.8))  # 0.03 radii
    assert found.reductions[1].detector.center == pytest.approx((26.0, 30.0), abs=0.05)
    for dy, dx in ((3.1, 0.0), (0.0, -3.1), (-2.19, 2.19)):  # 0.25 radii
        given = (26.0 + dy, 30.0 + dx)
        with pytest.warns(stem.DetectorWarning,
                          match=rf"^center: the detector centre given, \({given[0]:.4g}, "
                                rf"{given[1]:.4g}\) \(row, column\) px, lies 3.1 px \(0.25 "
                                r"bright-field disk radii .* from the disk's centre \(26, 30\) "
                                r"measured .*omit center= to use the measured one, or check the "
                                r"centre's \(row, column\) order"):
            t = ft.FocalTriplet.from_4dstem(*data, **kw, center=given)
        assert t.reductions[1].detector.center == given  # a warning, not a refusal
    with pytest.warns(stem.DetectorWarning, match=r"^center: .*\(30, 26\).* it is the measured "
                                                  r"centre in \(column, row\) order: give "
                                                  r"center=\(26, 30\)"):
        ft.FocalTriplet.from_4dstem(*counted, **kw, center=(30.0, 26.0))


def test_center_scatter_is_the_measured_centres_standard_error(rng):
    """The bootstrap scatter of the centre over 256 sampled patterns (their
    counts and the specimen's shifts of the disk) matches the scatter of the
    centres measured on independent samples of the scan's positions, drawn
    again."""
    data, _ = _shifted_disk_data()
    scan = data[1].reshape(-1, *data[1].shape[2:]) * 0.002  # 1 e in a disk px

    def sample():
        return rng.poisson(scan[rng.integers(0, len(scan), 256)])

    centres = [stem.find_center(sample()) for _ in range(40)]
    truth = float(np.sqrt(np.var(centres, axis=0, ddof=1).mean()))
    got = [stem.detector.center_scatter(sample(), seed=i) for i in range(5)]
    assert 0.6 * truth < np.median(got) < 1.6 * truth
    assert stem.detector.center_scatter(scan[:1]) == 0.0


def test_a_sparse_pattern_at_a_wide_angle_detector_s_edge_is_not_refused():
    """One in-focus pattern holding a single electron on the edge row of a
    detector that reaches 600 mrad puts its centre of mass there: the limit
    on a measured gradient (a deflection of a radian) must not refuse the
    triplet, whose gradient the reduction measured, not the caller."""
    det, conv, edge = 128, 30e-3, 0.6
    k = edge / ft.wavelength(E) / (det / 2)
    radius = conv / ft.wavelength(E) / k
    iy, ix = np.indices((det, det)) - (det - 1) / 2
    disk = (np.hypot(iy, ix) <= radius).astype(np.float64)
    rng = np.random.default_rng(0)
    scans = [rng.poisson(200 * disk / disk.sum() * (1 + 0.05 * rng.random((16, 16, 1, 1))))
             .astype(np.float32) for _ in range(3)]
    scans[1][3, 4] = 0
    scans[1][3, 4, det // 2, det - 1] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = ft.FocalTriplet.from_4dstem(*scans, dz=20.0, scan_step=0.2, k_sampling=k,
                                        energy=E, register=False)
    g = np.asarray(t.gradient)
    assert 0.5 < float(np.abs(g).max()) / ft.wavenumber(E) < 1.0  # the edge, under a radian



def _counted_disks(scale=0.2, seed=0):
    """:func:`_shifted_disk_data` as electron counts (uint16, about 200 in a
    disk pixel, up to ~270), its intensities and the kwargs of a triplet
    whose "bf" images leave room above their band limit (0.1 Å steps)."""
    data, k = _shifted_disk_data()
    rng = np.random.default_rng(seed)
    counted = [rng.poisson(d * scale).astype(np.uint16) for d in data]
    kw = dict(dz=20.0, scan_step=0.1, k_sampling=k, energy=E, backend="cpu")
    return counted, [d * scale for d in data], kw


def saturated_triplet_with_a_hot_pixel():
    """A 4D-STEM triplet whose +dz scan is clipped at a top value (a
    saturated detector, ``triplet.saturation``), its planes then given again
    with a hot pixel in one plane (replaced: ``triplet.plane_defects``),
    with its gradient, noise and records (registration, saturation)."""
    counted, _, kw = _counted_disks()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the saturation and the hot pixel, as tested
        t = ft.FocalTriplet.from_4dstem(counted[0], counted[1], np.minimum(counted[2], 190),
                                        **kw)
        planes = [np.array(p) for p in t.planes]
        planes[2][10, 12] *= 20  # a cosmic ray
        h = ft.FocalTriplet(*planes, dz=t.dz, pixel_size=t.pixel_size, energy=t.energy,
                            gradient=t.gradient, virtual=t.virtual, noise=t.noise)
    assert t.saturation["saturated"] and h.plane_defects["repaired"]
    h.registration, h.saturation = t.registration, t.saturation
    return h


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_patterns_that_pile_up_at_a_top_value_are_warned_and_recorded():
    """Counts clipped at a top value (a saturated detector: ~15 % of the
    pixels at exactly 190) pass every other check; a DetectorWarning names
    the scan clipped, the value and its share, the triplet records it, and
    every solve's info["trust"] says so (flowtie's "trusted" is False). The
    counts as drawn, their noise-free intensities and counts that stay under
    uint8's full scale pass silently."""
    counted, noise_free, kw = _counted_disks()
    with warnings.catch_warnings():
        warnings.simplefilter("error", stem.DetectorWarning)
        warnings.simplefilter("error", ft.TrustWarning)
        for data in (counted, noise_free, [(c // 2).astype(np.uint8) for c in counted]):
            t = ft.FocalTriplet.from_4dstem(*data, **kw)
            assert t.saturation is not None and not t.saturation["saturated"]
    assert t.saturation["scans"]["zero"]["full_scale"] is False
    clipped = [counted[0], counted[1], np.minimum(counted[2], 190)]
    with pytest.warns(stem.DetectorWarning, match=r"^plus: \d+ of the \d+ pixels of 256 patterns "
                      r"sampled across the scan \(0\.0\d+ of them\) read exactly 190, its "
                      r"maximum, .* counts that pile up at a top value, a detector saturated or "
                      r"counts clipped\. The bright field is cut flat .*lower the dose"):
        t = ft.FocalTriplet.from_4dstem(*clipped, **kw)
    sat = t.saturation
    assert sat["saturated"] and sat["why"].startswith("plus: ")
    assert not sat["scans"]["minus"]["saturated"] and not sat["scans"]["zero"]["saturated"]
    assert sat["scans"]["plus"]["value"] == 190 and 0.05 < sat["scans"]["plus"]["share"] < 0.2
    for method in ("icom", "tie"):
        assert "the detector saturated" in ft.reconstruct(t, method=method).info["trust"]


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_counts_at_their_dtype_s_full_scale_are_warned_as_clipped_or_wrapped():
    """Counts of up to ~600 cast to uint8 wrap around modulo 256 (no pile-up
    anywhere): the maximum, 255, is uint8's full scale, which is warned for
    every scan, as counts clipped there are."""
    counted, _, kw = _counted_disks(scale=0.5)
    assert min(c.max() for c in counted) > 500
    for data in ([c.astype(np.uint8) for c in counted],
                 [np.minimum(c, 255).astype(np.uint8) for c in counted]):
        with pytest.warns(stem.DetectorWarning, match=r"^minus: .* read exactly 255, its maximum"
                          r".*; 255 is the full scale of uint8: counts above it were clipped "
                          r"there or, cast to it \(astype\), wrapped around modulo 256; zero: "
                          r".*; plus: "):
            t = ft.FocalTriplet.from_4dstem(*data, **kw)
        assert all(r["full_scale"] for r in t.saturation["scans"].values())


@pytest.mark.filterwarnings("ignore::flowtie_fast.stem.registration.RegistrationWarning")
def test_counts_in_detector_units_take_the_measured_noise_and_name_the_gain():
    """Integer patterns in detector units of a gain of 5 per electron hold 5
    times the Poisson variance of their mean: where the noise is measured
    above the band limit, a TrustWarning names the gain, triplet.flux["gain"]
    records both estimates, and the larger (the measured one) is the noise.
    Right counts pass silently with a ratio near 1; counts without their
    Poisson noise (rounded intensities) take the Poisson noise, the larger."""
    counted, noise_free, kw = _counted_disks()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        right = ft.FocalTriplet.from_4dstem(*counted, **kw)
    assert 0.8 < right.flux["gain"]["ratio"] < 1.25
    with pytest.warns(ft.TrustWarning, match=r"^noise: the 'bf' planes' noise measured above "
                      r"the band limit is [4-6]\.\d+ times the variance of electron counts of "
                      r"their mean: the counts are not electrons but detector units of a gain "
                      r"of about [4-6]\.\d+ per electron"):
        adu = ft.FocalTriplet.from_4dstem(*[5 * c.astype(np.int32) for c in counted], **kw)
    gain = adu.flux["gain"]
    assert 4 < gain["ratio"] < 6 and adu.noise.source == "band"
    assert adu.noise.variance == pytest.approx(gain["band"])
    rounded = [np.rint(d).astype(np.uint16) for d in noise_free]
    with warnings.catch_warnings(), \
            pytest.warns(ft.TrustWarning, match=r"^noise: .* is 0(\.\d+)? times .*: the counts "
                         r"hold less noise than electrons .*the Poisson noise of their mean, "
                         r"the larger, is used"):
        warnings.simplefilter("ignore", stem.DetectorWarning)  # their flat disk piles up
        t = ft.FocalTriplet.from_4dstem(*rounded, **kw)
    assert t.noise.source == "poisson" and t.flux["gain"]["ratio"] < 0.5
    assert t.noise.variance == pytest.approx(t.flux["gain"]["poisson"])


def test_counts_spread_evenly_up_to_their_maximum_are_not_taken_for_a_pile_up():
    """Counts with no falling tail (uniform random integers: 24 pixels at the
    maximum against 18 at the value below, as a test fixture drew them) are
    not a pile-up; 40 against 18 is (more than 3 standard deviations of the
    count below beyond it)."""
    rng = np.random.default_rng(0)
    for at_top, flagged in ((24, False), (40, True)):
        sample = rng.integers(0, 297, 30 * 144).astype(np.uint16)
        sample[:18], sample[18:36], sample[36:36 + at_top] = 297, 298, 299
        rec = stem.detector.saturation(rng.permutation(sample).reshape(30, 12, 12))
        assert rec["value"] == 299 and rec["saturated"] is flagged, rec


@pytest.mark.parametrize("value", [65535, 4095])
def test_a_stuck_detector_pixel_is_not_taken_for_a_saturated_detector(value):
    """One detector pixel stuck at the full scale (or at a 12-bit maximum)
    in every pattern was reported as a saturated detector, and every solve
    after it distrusted; the same value at many detector pixels still is."""
    rng = np.random.default_rng(0)
    sample = rng.poisson(30, (256, 32, 32)).astype(np.uint16)
    sample[:, 5, 7] = value
    rec = stem.detector.saturation(sample)
    assert not rec["saturated"] and rec["detector_pixels"] == 1
    sample[:, 10:14, 10:14] = value  # 17 detector pixels at the top: a clipped bright field
    assert stem.detector.saturation(sample)["saturated"]


@pytest.mark.parametrize("hit", [1000.0, 3e4])
def test_a_cosmic_ray_on_one_in_focus_pattern_does_not_bend_the_icom_phase(hit, tmp_path):
    """One detector pixel of one in-focus pattern in 1024, far from the spot
    (a cosmic ray, an X-ray): its centre of mass took icom's error from 1e-3
    to about the phase itself, without a word. The pattern stands out of the
    whole-detector image; its centre of mass becomes its neighbours' median,
    warned and recorded."""
    phi, grad = _phase_and_gradient()
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    zero = data.copy()
    zero[17, 9, 2, 3] += hit
    kwargs = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                  rotation=0.0, backend="cpu", register=False)
    with pytest.warns(ft.TrustWarning, match=r"^gradient: 1 pattern of zero stands out of its 8 "
                      r"neighbours \(the worst at scan row 17, column 9: .*cosmic rays or X-rays"):
        t = ft.FocalTriplet.from_4dstem(data, zero, data, **kwargs)
    assert [p[:2] for p in t.plane_defects["pixels"]["gradient"]] == [[17, 9]]
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < 0.02
    assert "cosmic rays or X-rays" in rec.info["trust"]
    assert rec.info["plane_defects"] is t.plane_defects
    # the record goes with the triplet into a file and back
    ft.save(tmp_path / "t.npz", t)
    with pytest.warns(ft.TrustWarning, match="cosmic rays or X-rays"):
        back = ft.load(tmp_path / "t.npz").triplet()
    assert back.plane_defects["pixels"]["gradient"] == t.plane_defects["pixels"]["gradient"]
    # the same pattern without the hit: no alarm, and the exact phase
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        clean = ft.FocalTriplet.from_4dstem(data, data, data, **kwargs)
    assert clean.plane_defects is None


def test_a_dropped_scan_row_is_refused_before_registration_can_smear_it():
    """A row of dropped (all-zero) patterns in the +dz scan is refused with
    register=False; registered (the default), the shift applied to the plane
    had spread the zero row into values that passed, and the flux factors
    counted it: a wrong phase with a warning about missing frames only."""
    n, step = 32, 0.25

    def offsets(dy, scale):
        y = (np.arange(n)[:, None] + dy) * step
        x = np.arange(n)[None, :] * step
        a = 2 * np.pi / (n * step)
        gy = 0.6 * a * np.cos(a * y) * np.cos(2 * a * x) - 0.3 * a * np.sin(a * x + a * y)
        gx = -1.2 * a * np.sin(a * y) * np.sin(2 * a * x) - 0.3 * a * np.sin(a * x + a * y)
        return scale * np.stack([gy, gx]) / (2 * np.pi) / K_SAMPLING

    minus, zero = gaussian_patterns(offsets(0, 0.9)), gaussian_patterns(offsets(0, 1.0))
    plus = gaussian_patterns(offsets(0.4, 1.1))  # drifted: a shift is measured and applied
    plus[10] = 0
    for register in (True, False):
        with pytest.raises(ft.InputError, match=r"^plus: row 10 \(1 of 32, 3.12 %\) exactly "
                           "zero where minus holds signal"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ft.TrustWarning)  # the missing frames' warning
            ft.FocalTriplet.from_4dstem(minus, zero, plus, dz=20.0, scan_step=step,
                                        k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                                        rotation=0.0, backend="cpu", register=register)


@pytest.mark.parametrize("share, warned", [(0.25, False), (0.5, False), (0.8, True), (1.5, True)])
def test_a_bf_radius_near_or_beyond_the_disk_is_warned_of(share, warned):
    """A 'bf' detector as large as the bright-field disk sums away the defocus
    contrast: the TIE phase was flat (NMSE 1.000) without a word, where a
    com_radius inside the disk is warned of."""
    from flowtie_fast.stem.detector import triplet_geometry

    ky, kx = np.mgrid[:41, :41] - 20.0
    mean = np.where(np.hypot(ky, kx) < 10, 100.0, 1.0)
    _, regions = triplet_geometry(mean, 0.02, E)
    disk = regions["bf-full"][1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        triplet_geometry(mean, 0.02, E, bf_radius=share * disk)
    said = [str(w.message) for w in caught if str(w.message).startswith("bf_radius: ")]
    assert bool(said) == warned, said
    if warned:
        assert f"{share:.2g} of the bright-field disk" in said[0]
    with warnings.catch_warnings():  # the planes are not the 'bf' images: nothing to say
        warnings.simplefilter("error", ft.TrustWarning)
        triplet_geometry(mean, 0.02, E, bf_radius=share * disk, virtual="abf")


def test_several_hits_are_repaired_and_a_pattern_short_of_electrons_is_kept():
    """Screened on the in-focus scan's whole-detector image alone, three or
    more hits raised its own threshold and none was found (the icom phase
    changed without a word); and a position where the specimen scatters half
    the beam off the detector, a deficit, was taken for a hit and its real
    gradient replaced, with a false alarm."""
    phi, grad = _phase_and_gradient()
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    kwargs = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                  rotation=0.0, backend="cpu", register=False)
    zero = data.copy()
    hits = [(3, 4), (9, 20), (17, 9), (25, 27), (28, 6)]
    for r, c in hits:
        zero[r, c, 1, 2] += 3000.0
    with pytest.warns(ft.TrustWarning, match=r"^gradient: 5 patterns of zero stand out of "):
        t = ft.FocalTriplet.from_4dstem(data, zero, data, **kwargs)
    assert sorted(p[:2] for p in t.plane_defects["pixels"]["gradient"]) == sorted(
        [list(h) for h in hits])
    assert rel_rms(ft.reconstruct(t, method="icom", backend="cpu", dtype="float64").phase,
                   phi) < 0.03
    short = data.copy()
    short[12, 12] *= 0.5  # half the beam scattered beyond the detector there
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        kept = ft.FocalTriplet.from_4dstem(data, short, data, **kwargs)
    assert kept.plane_defects is None


def test_the_tie_methods_do_not_report_a_centre_of_mass_repair_they_do_not_read():
    phi, grad = _phase_and_gradient()
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    zero = data.copy()
    zero[17, 9, 2, 3] += 3000.0
    with pytest.warns(ft.TrustWarning, match="cosmic rays"):
        t = ft.FocalTriplet.from_4dstem(data, zero, data, dz=20.0, scan_step=0.25,
                                        k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                                        rotation=0.0, backend="cpu", register=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(t, method="tie", backend="cpu")
    assert "plane_defects" not in rec.info and "cosmic" not in str(rec.info.get("trust"))


def _specimen_patterns(rng, n=32, spread=0.3):
    """Gaussian-spot patterns of the test phase whose electron count varies
    from pattern to pattern by ``spread`` (a specimen scattering a varying
    share beyond the detector): a hit of a fifth of a pattern's electrons does
    not stand out of the whole-detector image."""
    phi, grad = _phase_and_gradient(n)
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    data *= (1 + spread * rng.uniform(-1, 1, (n, n)))[..., None, None].astype(np.float32)
    return phi, data


@pytest.mark.parametrize("defect", ["track", "negative pixel"])
def test_a_transient_too_weak_for_the_pattern_sum_is_found_by_its_pixel(defect, rng):
    """A 3-pixel track of 150 counts each far from the spot (under half of the
    pattern's electrons), or one pixel at -0.1 of a pattern's sum (a dark frame
    subtracted wrong), moves the pattern's centre of mass without standing out
    of the whole-detector image: the icom phase went wrong without a word.
    The pattern's largest (smallest) detector pixel stands out of its
    neighbours' and its centre of mass is replaced."""
    phi, data = _specimen_patterns(rng)
    kwargs = dict(dz=20.0, scan_step=0.25, k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                  rotation=0.0, backend="cpu", register=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        clean = ft.FocalTriplet.from_4dstem(data, data, data, **kwargs)
    assert clean.plane_defects is None
    base = rel_rms(ft.reconstruct(clean, method="icom", backend="cpu", dtype="float64").phase,
                   phi)
    zero = data.copy()
    if defect == "track":
        zero[11, 20, 29, 3:6] += 150.0
        said = r"a detector pixel at 15\d, where 7 of its 8 neighbours' patterns reach at most "
    else:
        zero[11, 20, 30, 28] = -100.0
        said = (r"a detector pixel at -100, where 7 of its 8 neighbours' patterns stay at "
                r"[-\d.e]+ or above\): a dark frame subtracted wrong\?")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        from flowtie_fast.stem.focal import reduce_triplet
        reductions, _ = reduce_triplet(data, zero, data, K_SAMPLING, E, center=(16.0, 15.0),
                                       backend="cpu")
    from flowtie_fast.planes import outlying_pixels
    whole = [ft.get_backend("cpu").to_numpy(r.virtual["whole"]) for r in reductions]
    assert outlying_pixels(whole)[1][0].size == 0  # the sums' screen misses it
    with pytest.warns(ft.TrustWarning, match=r"^gradient: 1 pattern of zero stands out of its 8 "
                      r"neighbours \(the worst at scan row 11, column 20: " + said):
        t = ft.FocalTriplet.from_4dstem(data, zero, data, **kwargs)
    assert [p[:2] for p in t.plane_defects["pixels"]["gradient"]] == [[11, 20]]
    rec = ft.reconstruct(t, method="icom", backend="cpu", dtype="float64")
    assert rel_rms(rec.phase, phi) < base + 0.002
    # what the repair prevents: the same planes with the hit pattern's gradient
    bent = ft.FocalTriplet(t.minus, t.zero, t.plus, t.dz, t.pixel_size, t.energy,
                           gradient=ft.get_backend("cpu").to_numpy(reductions[1].gradient))
    assert rel_rms(ft.reconstruct(bent, method="icom", backend="cpu", dtype="float64").phase,
                   phi) > base + 0.01


def test_the_pattern_peaks_are_the_data_extremes(rng):
    """``reduce_4dstem(peaks=True)`` measures each pattern's largest and
    smallest pixel, in the data's units, for every dtype the kernels read
    directly or after a conversion, chunk by chunk."""
    det = stem.Detector((20, 18), (K_SAMPLING, K_SAMPLING), E, (9.6, 8.3))
    for dtype in (np.uint8, np.uint16, np.int16, np.int64, np.float32, np.float64):
        data = ((rng.random((7, 6, 20, 18)) - 0.2) * 300).astype(dtype)
        red = stem.reduce_4dstem(data, det, {"bf": (0.0, 5.0)}, backend="cpu",
                                 chunk_bytes=2 * 6 * 20 * 18, peaks=True)
        flat = data.reshape(7, 6, -1).astype(np.float64)
        np.testing.assert_allclose(red.peaks, np.stack([flat.max(-1), flat.min(-1)]),
                                   rtol=1e-6)
        assert red.peaks.dtype == np.float32
        assert stem.reduce_4dstem(data, det, {"bf": (0.0, 5.0)}, backend="cpu").peaks is None


def test_a_hit_the_centre_of_mass_does_not_read_is_left_alone(rng):
    """A bright pixel at the spot's centre (where the centre of mass does not
    move), or beyond ``com_radius``, changes no gradient: nothing is replaced
    or warned of."""
    phi, data = _specimen_patterns(rng)
    zero = data.copy()
    zero[11, 20, 16, 15] += 200.0  # the spot's centre: |k| ~ 0
    with pytest.warns(ft.TrustWarning, match="^zero: 1 isolated pixel") as caught:  # the plane's
        t = ft.FocalTriplet.from_4dstem(data, zero, data, dz=20.0, scan_step=0.25,
                                        k_sampling=K_SAMPLING, energy=E, center=(16.0, 15.0),
                                        rotation=0.0, backend="cpu", register=False)
    assert "gradient" not in t.plane_defects["pixels"]
    assert not [w for w in caught if "gradient" in str(w.message)]


def test_poisson_counts_raise_no_pattern_alarm(rng):
    """Clean Poisson counts of 20 to 2e4 electrons a pattern: no pattern is
    taken for a hit (the count's own scatter of the largest pixel)."""
    phi, data = _specimen_patterns(rng, spread=0.1)
    for scale in (0.02, 1.0, 20.0):
        planes = [rng.poisson(data * scale).astype(np.uint16) for _ in range(3)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", ft.TrustWarning)
            warnings.filterwarnings("ignore", "noise", ft.TrustWarning)
            t = ft.FocalTriplet.from_4dstem(*planes, dz=20.0, scan_step=0.25,
                                            k_sampling=K_SAMPLING, energy=E,
                                            center=(16.0, 15.0), rotation=0.0, backend="cpu",
                                            register=False)
        assert t.plane_defects is None or "gradient" not in t.plane_defects["pixels"], scale


def test_sparse_counts_and_a_crystal_on_vacuum_are_not_taken_for_transients(rng):
    """Sparse counts (0.6 electrons a pattern, most patterns empty) made every
    lone electron a "transient" (the scan's median largest pixel was 0); the
    corners of a crystal on vacuum, whose channelled disks are 5 times
    brighter than the vacuum's and have 5 vacuum neighbours, were "repaired"
    noise-free. Neither is a transient."""
    from flowtie_fast.stem.focal import peak_outliers, reduce_triplet

    phi, grad = _phase_and_gradient()
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING)
    sparse = [rng.poisson(data * 0.0006).astype(np.uint16) for _ in range(3)]
    assert (sparse[1].sum(axis=(2, 3)) == 0).mean() > 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)  # the sparse planes' own verdicts
        reductions, _ = reduce_triplet(*sparse, K_SAMPLING, E, center=(16.0, 15.0),
                                       backend="cpu")
    assert peak_outliers(reductions[1].peaks, reductions[1].com, counts=True)[0].size == 0
    # a 12 x 12 crystal on vacuum: a spot 5 times brighter at the crystal, displaced
    vacuum = gaussian_patterns(np.zeros((2, 32, 32)), width=4.0)
    crystal = gaussian_patterns(np.full((2, 32, 32), 1.5), width=1.8)
    particle = vacuum.copy()
    particle[10:22, 10:22] = crystal[10:22, 10:22]
    reductions, _ = reduce_triplet(particle, particle, particle, K_SAMPLING, E,
                                   center=(16.0, 15.0), backend="cpu")
    top = reductions[1].peaks[0]
    assert top[10, 10] > 4 * top[9, 9]  # the corner's pixel stands far above its vacuum
    assert peak_outliers(reductions[1].peaks, reductions[1].com)[0].size == 0
