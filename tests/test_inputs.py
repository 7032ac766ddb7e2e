"""Bad input raises InputError (a ValueError) naming the argument (docs/reliability.md)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import flowtie_fast as ft

E = 300e3


@pytest.fixture
def planes(rng):
    return [1 + 0.1 * rng.random((16, 16)) for _ in range(3)]


def make(planes, **kw):
    args = dict(dz=20.0, pixel_size=0.2, energy=E)
    args.update(kw)
    return ft.FocalTriplet(*planes, **args)


def bad(planes, index, value):
    p = [q.copy() for q in planes]
    p[index] = value
    return p


@pytest.mark.parametrize("index,name", [(0, "minus"), (1, "zero"), (2, "plus")])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(planes, index, name, value):
    p = bad(planes, index, planes[index].copy())
    p[index][3, 4] = value
    with pytest.raises(ft.InputError, match=f"{name}: contains NaN or Inf"):
        make(p)


def test_shape_mismatch(planes):
    with pytest.raises(ft.InputError, match=r"plus: expected shape \(16, 16\)"):
        make(bad(planes, 2, np.ones((16, 15))))


@pytest.mark.parametrize("value,match", [
    (np.ones(16), "zero: expected a 2-D array"),
    (np.ones((2, 16, 16)), "zero: expected a 2-D array"),
    (np.ones((16, 16), complex), "zero: expected real intensities, got complex"),
    (np.array([["a"] * 16] * 16), "zero: expected a real numeric dtype"),
    (np.ones((1, 16)), "zero: expected at least 2 pixels"),
    (None, "zero: expected a 2-D real array"),
])
def test_wrong_arrays(planes, value, match):
    with pytest.raises(ft.InputError, match=match):
        make(bad(planes, 1, value))


@pytest.mark.parametrize("index,name", [(0, "minus"), (1, "zero"), (2, "plus")])
def test_all_zero_intensity(planes, index, name):
    with pytest.raises(ft.InputError, match=f"{name}: intensity is zero everywhere"):
        make(bad(planes, index, np.zeros((16, 16))))


def test_negative_intensity_is_refused(planes):
    with pytest.raises(ft.InputError, match="zero: expected non-negative intensities"):
        make(bad(planes, 1, -np.ones((16, 16))))


@pytest.mark.parametrize("kw,match", [
    (dict(dz=0.0), "dz: expected a positive"),
    (dict(dz=-5.0), "dz: expected a positive"),
    (dict(dz=np.nan), "dz: expected a positive"),
    (dict(dz=(5.0, -1.0)), "dz: expected a positive"),
    (dict(dz="20"), "dz: expected a positive number"),
    (dict(pixel_size=0.0), "pixel_size: expected a positive"),
    (dict(pixel_size=-0.2), "pixel_size: expected a positive"),
    (dict(pixel_size=(0.2, 0.0)), "pixel_size: expected a positive"),
    (dict(energy=0.0), "energy: expected a positive"),
    (dict(energy=-300e3), "energy: expected a positive"),
    (dict(energy=np.inf), "energy: expected a positive"),
    (dict(energy=True), "energy: expected a positive number"),
])
def test_bad_scalars(planes, kw, match):
    with pytest.raises(ft.InputError, match=match):
        make(planes, **kw)


def test_unknown_method(planes):
    with pytest.raises(ft.InputError, match="method: expected one of"):
        ft.reconstruct(make(planes), method="magic", backend="cpu")


def test_flowtie_model_errors(planes, tmp_path):
    pytest.importorskip("torch")
    t = make(planes)
    with pytest.raises(ft.InputError, match="model: no such file"):
        ft.reconstruct(t, method="flowtie", backend="cpu", model=tmp_path / "none.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not a model at all" * 20)
    with pytest.raises(ft.InputError, match="model: corrupt.pt is not a readable TorchScript"):
        ft.reconstruct(t, method="flowtie", backend="cpu", model=corrupt)
    # The shipped model reads the centre of mass: a plain triplet has none.
    with pytest.raises(ft.InputError, match="needs the 4D-STEM centre of mass"):
        ft.reconstruct(t, method="flowtie", backend="cpu")
    # Neither a name, a path nor a model: not read as a file name.
    for bad in (3, b"default", ["fast"], "", None.__class__):
        with pytest.raises(ft.InputError, match=r"^model: expected a shipped name \(default, "
                                                r"fast, seed0, seed2, seed3, corpus, "
                                                r"ensemble\), a TorchScript file path, a "
                                                r"FlowModel or FlowEnsemble, got "):
            ft.reconstruct(t, method="flowtie", backend="cpu", model=bad)
        with pytest.raises(ft.InputError, match="^model: expected a shipped name"):
            ft.Plan(t.shape, t.pixel_size, t.dz[0], t.energy, method="flowtie",
                    backend="cpu", model=bad)


def test_icom_without_gradient(planes):
    with pytest.raises(ft.InputError, match="'icom' needs a measured phase gradient"):
        ft.reconstruct(make(planes), method="icom", backend="cpu")


def test_bad_gradient_shape(planes):
    with pytest.raises(ft.InputError,
                       match=r"gradient: expected a real array of shape \(2, 16, 16\)"):
        make(planes, gradient=np.zeros((16, 16)))


@pytest.mark.parametrize("kw,match", [
    (dict(boundary="reflect"), "boundary: expected one of"),
    (dict(scheme="fem"), "scheme: expected one of"),
    (dict(boundary="mirror", scheme="spectral"), "scheme: 'spectral' needs boundary='periodic'"),
    (dict(alpha=-1.0), "alpha: expected a finite number >= 0"),
    (dict(floor=0.0), "floor: expected a finite number > 0"),
    (dict(dtype="int8"), "dtype: expected 'float32' or 'float64'"),
    (dict(backend="tpu"), "backend: expected 'auto', 'cpu' or 'gpu'"),
    (dict(threads=0), "threads: expected an integer in \\[1, 4096\\]"),
    (dict(preconditioner="jacobi", method="gd"), "preconditioner: expected"),
    (dict(tolerance=1e-3), "options: unknown"),
    (dict(tol=0.0, method="tie-exact"), "tol: expected a finite number > 0"),
    (dict(tol=np.nan, method="gd"), "tol: expected a finite number > 0"),
    (dict(tol=1.0, method="gd"), "tol: expected a relative residual below 1"),
    (dict(tol=5.0, method="tie-exact"), "tol: expected a relative residual below 1"),
    (dict(max_iter=0, method="gd"), "max_iter: expected an integer in"),
    (dict(max_iter=2.5, method="tie-exact"), "max_iter: expected an integer in"),
])
def test_bad_solver_options(planes, kw, match):
    kw = dict(kw)
    method = kw.pop("method", "tie")
    with pytest.raises(ValueError, match=match):
        ft.reconstruct(make(planes), method=method, **kw)


def test_not_a_triplet():
    with pytest.raises(ft.InputError, match="triplet: expected a FocalTriplet"):
        ft.reconstruct(np.ones((3, 16, 16)))


def test_solver_rejects_other_shapes_and_pixel_sizes(planes):
    solver = ft.TIESolver((16, 16), 0.2, backend="cpu")
    with pytest.raises(ft.InputError, match=r"triplet: expected images of shape \(16, 16\)"):
        solver.solve(ft.FocalTriplet(*(np.ones((8, 8)),) * 3, dz=1.0, pixel_size=0.2, energy=E))
    with pytest.raises(ft.InputError, match="pixel_size"):
        solver.solve(make(planes, pixel_size=0.3))
    with pytest.raises(ft.InputError, match="out: expected a float32 array"):
        solver.solve(make(planes), out=np.empty((16, 16), np.float64))


def test_errors_are_value_errors():
    assert issubclass(ft.InputError, ValueError) and issubclass(ft.BackendError, ValueError)


def test_a_nan_in_one_plane_is_reported_there_after_a_pickle_round_trip():
    """Unpickled arrays carry an equal but distinct dtype object, so the working
    copy is a new array for every plane: the refusal still names the plane
    that holds the NaN, not a finite one."""
    import pickle

    planes = [np.full((32, 32), 1100.0, np.float32) for _ in range(3)]
    planes[1][3, 4] = np.nan
    planes = pickle.loads(pickle.dumps(planes))
    plan = ft.Plan((32, 32), 0.2, 20.0, 300e3, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^zero: .*NaN or Inf"):
        plan.solve(*planes)


def _triplet_kw(**kw):
    args = dict(dz=20.0, pixel_size=0.2, energy=E)
    args.update(kw)
    return args


_PLANES = [np.full((16, 16), 1.0) + 0.01 * np.arange(16) for _ in range(3)]


@pytest.mark.parametrize("value", [np.timedelta64(50, "s"), np.timedelta64(1),
                                   np.datetime64("2020-01-01")])
@pytest.mark.parametrize("name,call", [
    ("dz", lambda v: ft.FocalTriplet(*_PLANES, **_triplet_kw(dz=v))),
    ("pixel_size", lambda v: ft.FocalTriplet(*_PLANES, **_triplet_kw(pixel_size=v))),
    ("energy", lambda v: ft.FocalTriplet(*_PLANES, **_triplet_kw(energy=v))),
    ("pixel_size", lambda v: ft.TIESolver((16, 16), v, backend="cpu")),
    ("threads", lambda v: ft.Plan((16, 16), 0.2, 20.0, E, backend="cpu", threads=v)),
    ("alpha", lambda v: ft.reconstruct(ft.FocalTriplet(*_PLANES, **_triplet_kw()), alpha=v,
                                       backend="cpu")),
    ("floor", lambda v: ft.reconstruct(ft.FocalTriplet(*_PLANES, **_triplet_kw()), floor=v,
                                       backend="cpu")),
    ("tol", lambda v: ft.reconstruct(ft.FocalTriplet(*_PLANES, **_triplet_kw()), method="gd",
                                     tol=v, backend="cpu")),
    ("max_iter", lambda v: ft.reconstruct(ft.FocalTriplet(*_PLANES, **_triplet_kw()),
                                          method="gd", max_iter=v, backend="cpu")),
])
def test_durations_and_dates_are_not_numbers(name, call, value):
    # np.timedelta64 subclasses np.signedinteger; float() refuses it
    with pytest.raises(ft.InputError, match=f"^{name}: expected"):
        call(value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_planes_at_their_full_scale_are_named_saturated(dtype):
    """A camera's images clipped at their dtype's full scale (a saturated
    camera, counts cast with clipping or wrapped by astype) cut the planes
    flat where they are brightest: every method's phase is wrong (1 % of
    each plane clipped: NMSE 1.4e-5 -> 0.23) and nothing said so. More than
    4 pixels of a plane at the full scale now give a TrustWarning naming the
    plane, ``triplet.saturation`` and every solve's ``info["trust"]``; the
    same planes below it, and a float copy, are not judged."""
    from flowtie_fast.evaluation.phantom import phase_object
    from flowtie_fast.simulation.optics import defocus_series

    phase, amp = phase_object(64, 0.5)
    s = defocus_series(phase, (-20.0, 0.0, 20.0), 0.5, 300e3, amp)
    full = np.iinfo(dtype).max
    scale = 0.99 * full / max(float(p.max()) for p in s.planes)
    kw = dict(dz=20.0, pixel_size=0.5, energy=300e3)
    below = [np.round(np.asarray(p) * scale).astype(dtype) for p in s.planes]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        warnings.filterwarnings("ignore", "planes: integer planes whose noise",
                                ft.TrustWarning)
        fine = ft.FocalTriplet(*below, **kw)
    assert fine.saturation is not None and not fine.saturation["saturated"]
    over = full / float(np.percentile(np.asarray(s.planes[0]), 99))  # 1 % of minus beyond
    clipped = [np.minimum(np.round(np.asarray(p) * over), full).astype(dtype)
               for p in s.planes]
    assert int((clipped[0] == full).sum()) > 4
    with pytest.warns(ft.TrustWarning, match=rf"^planes: minus: \d+ of its pixels \([0-9.e-]+\) "
                                             rf"read exactly {full}, the full scale of "):
        t = ft.FocalTriplet(*clipped, **kw)
    assert t.saturation["saturated"] and t.saturation["planes"]["minus"]["saturated"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        rec = ft.reconstruct(t, "tie", backend="cpu")
    assert rec.info["trust"].startswith("the detector saturated (triplet.saturation): minus:")
    floats = ft.FocalTriplet(*[c.astype(np.float32) for c in clipped], **kw)
    assert floats.saturation is None
    # a Plan given the camera's frames themselves judges them as the triplet does
    plan = ft.Plan((64, 64), 0.5, 20.0, 300e3, method="tie", backend="cpu")
    with pytest.warns(ft.TrustWarning, match=r"^planes: minus: \d+ of its pixels"):
        plan.solve(*clipped)
    assert plan.info["trust"].startswith(rec.info["trust"])  # the Plan's own noise may add
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        warnings.filterwarnings("ignore", "planes: integer planes whose noise", ft.TrustWarning)
        warnings.filterwarnings("ignore", "the focal derivative holds no signal", ft.TrustWarning)
        plan.solve(*below)
    assert "saturated" not in plan.info.get("trust", "")
    # the whole-batch network pass of a flowtie plan judges each item too
    pytest.importorskip("torch")
    flow = ft.Plan((64, 64), 0.5, 20.0, 300e3, method="flowtie", uncertainty=False,
                   backend="cpu")
    g = np.stack(np.gradient(phase, 0.5)).astype(np.float32)  # rad/Å
    with pytest.warns(ft.TrustWarning, match=r"^planes: minus: \d+ of its pixels"):
        flow.solve_batch(np.stack([below, clipped, below]), gradient=np.stack([g, g, g]))
    assert flow.info["trust"].startswith("the detector saturated in stack[1] (of 3): minus: ")
    assert flow.info["trusted"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        flow.solve_batch(np.stack([below, below]), gradient=np.stack([g, g]))
    assert "saturated" not in flow.info.get("trust", "") and "trusted" not in flow.info


def test_a_refused_whole_batch_pass_leaves_no_verdict(monkeypatch):
    """The whole-batch network pass of ``Plan.solve_batch`` refused (here: its
    flow pass) leaves ``plan.info`` empty, as a refused solve does: not the
    saturation verdict of a batch that returned nothing."""
    pytest.importorskip("torch")
    flow = ft.Plan((16, 16), 0.5, 20.0, 300e3, method="flowtie", uncertainty=False,
                   backend="cpu")
    stack = np.full((2, 3, 16, 16), 1000, np.uint16)
    stack[:, :, :4, :4] = 65535  # 16 pixels of each plane at the full scale

    def refuse(*args, **kwargs):
        raise ft.InputError("planes: refused")

    monkeypatch.setattr(flow.solver, "flow_batch", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        with pytest.raises(ft.InputError, match="refused"):
            flow.solve_batch(stack)
    assert flow.info == {}


def test_records_set_by_hand_on_a_triplet_are_checked_by_the_solve():
    """A solve reads a triplet's saturation and plane_defects records for
    its verdict: one set by hand that is not such a record is refused,
    naming it (a saturated record without its 'why' raised a KeyError; one
    that is not a dict was ignored)."""
    t = ft.FocalTriplet(*_PLANES, **_triplet_kw())
    for attr, value in (("saturation", {"saturated": True}), ("saturation", "yes"),
                        ("plane_defects", {"repaired": True, "why": "x"})):
        setattr(t, attr, value)
        with pytest.raises(ft.InputError, match=rf"^triplet\.{attr}: expected"):
            ft.reconstruct(t, method="tie", backend="cpu")
        setattr(t, attr, None)
    ft.reconstruct(t, method="tie", backend="cpu")
