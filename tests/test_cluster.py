"""Batches solved on a dask cluster (flowtie_fast.cluster): the same phases as
one Plan in one process, in input order, one Plan per worker and shape, the
library's errors raised as themselves, and workers pinned to their device.

CPU clusters of two workers stand in for GPUs (device names that no driver
knows, so the pinned workers compute on the CPU); the GPU case runs where a
device answers."""

from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest

import flowtie_fast as ft
from flowtie_fast.backend import gpu_available
from flowtie_fast.testing import smooth_triplets

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
cluster = pytest.importorskip("flowtie_fast.cluster")

N, PIXEL, DZ, E = 48, 0.2, 20.0, 300e3  # under 64²: FFTW_ESTIMATE, the same plan everywhere
FAKE = ["fake0", "fake1"]  # CUDA_VISIBLE_DEVICES entries no driver knows: no GPU visible


def _stack(b, n=N, seed=0):
    """``b`` smooth triplets (b, 3, n, n) float32, each different."""
    return smooth_triplets(b, n, seed)


def _plan(n=N, **kw):
    return ft.Plan((n, n), PIXEL, DZ, E, backend="cpu", threads=1, **kw)


class _Unused:
    """A client that fails the test if anything is sent to it."""

    def __getattr__(self, name):
        raise AssertionError(f"client.{name} used before the inputs were checked")


@pytest.fixture(scope="module")
def pinned():
    """Two worker processes pinned as GPU workers are (one device each), on
    device names no driver knows: they compute on the CPU."""
    with cluster.local_cluster(FAKE, dask_cuda=False) as client:
        client.wait_for_workers(2)
        yield client


# ------------------------------------------------------------------ devices


def test_device_lists_and_worker_environments():
    vd = cluster.visible_devices
    assert vd("cpu") == []
    assert vd("auto", environ={}, count=0) == []
    assert vd("auto", environ={}, count=2) == ["0", "1"]
    assert vd("auto", environ={"CUDA_VISIBLE_DEVICES": "3, 5"}, count=2) == ["3", "5"]
    assert vd("gpu", environ={"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b,GPU-c"}, count=2) == \
        ["GPU-a", "GPU-b"]
    assert vd([2, "GPU-9f"]) == ["2", "GPU-9f"]
    with pytest.raises(ft.BackendError, match="devices='gpu': no CUDA device"):
        vd("gpu", environ={}, count=0)
    for bad in ("tpu", [], [True], [-1], ["0,1"], [0, 0], 3):
        with pytest.raises(ft.InputError, match="devices: expected"):
            vd(bad)
    envs = cluster.worker_environments(["3", "GPU-9f"])
    assert envs == [{"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "GPU-9f"}]
    specs = cluster.worker_specs(["3", "5"], 2)
    assert list(specs) == ["gpu-3", "gpu-5"]
    assert specs["gpu-5"]["options"]["env"] == {"CUDA_VISIBLE_DEVICES": "5"}
    assert specs["gpu-5"]["options"]["nthreads"] == 2


def test_local_cluster_refuses_bad_arguments_before_starting():
    with pytest.raises(ft.InputError, match="n_workers: one worker per GPU, 2"):
        cluster.local_cluster(FAKE, n_workers=3)
    with pytest.raises(ft.InputError, match="processes: GPU workers"):
        cluster.local_cluster(FAKE, processes=False)
    with pytest.raises(ft.InputError, match=r"threads_per_worker: expected an integer"):
        cluster.local_cluster("cpu", threads_per_worker=0)


def test_each_worker_process_sees_its_own_device(pinned):
    seen = pinned.run(lambda: os.environ.get("CUDA_VISIBLE_DEVICES"))
    names = {a: w["name"] for a, w in pinned.scheduler_info()["workers"].items()}
    assert sorted(seen.values()) == FAKE
    assert {names[a]: d for a, d in seen.items()} == {f"gpu-{d}": d for d in FAKE}


# ------------------------------------------------------------------ results


def test_phases_equal_one_plan_in_order_with_uneven_batches(pinned):
    stack = _stack(7)
    plan = _plan()
    want = plan.solve_batch(stack)
    want_grad = np.empty((7, 2, N, N), np.float32)
    plan.solve_batch(stack, gradient_out=want_grad)
    phase, grad = cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E,
                                           batch_size=3, threads=1, client=pinned,
                                           return_gradient=True)  # batches of 3, 3, 1
    assert phase.dtype == np.float32 and phase.shape == (7, N, N)
    np.testing.assert_array_equal(phase, want)
    np.testing.assert_array_equal(grad, want_grad)
    lazy = cluster.reconstruct_many(da.from_array(stack, chunks=(2, 3, N, N)), method="tie",
                                    pixel_size=PIXEL, dz=DZ, energy=E, batch_size=4,
                                    threads=1, client=pinned)
    np.testing.assert_array_equal(lazy, want)


def test_icom_and_triplets_with_their_gradients_and_noise(pinned):
    stack = _stack(5, seed=1)
    rng = np.random.default_rng(2)
    grads = rng.normal(0, 0.1, (5, 2, N, N)).astype(np.float32)
    plan = _plan(method="icom")
    want = plan.solve_batch(stack, gradient=grads)
    got = cluster.reconstruct_many(stack, "icom", pixel_size=PIXEL, dz=DZ, energy=E,
                                   gradient=grads, batch_size=2, client=pinned)
    np.testing.assert_array_equal(got, want)
    triplets = [ft.FocalTriplet(*s, dz=DZ, pixel_size=PIXEL, energy=E, noise=[1.0 + i] * 3)
                for i, s in enumerate(stack.astype(np.uint16))]
    tie = _plan(alpha="auto")
    want = np.stack([tie.solve(*t.planes, noise=t.noise) for t in triplets])
    got = cluster.reconstruct_many(triplets, alpha="auto", batch_size=2, client=pinned)
    np.testing.assert_array_equal(got, want)


def test_one_plan_per_worker_and_shape_reused_across_batches_and_calls(pinned):
    cluster.release_plans(pinned)
    small, large = _stack(6), _stack(4, n=32)
    for _ in range(2):
        cluster.reconstruct_many(small, pixel_size=PIXEL, dz=DZ, energy=E, batch_size=2,
                                 client=pinned)
        cluster.reconstruct_many(large, pixel_size=PIXEL, dz=DZ, energy=E, batch_size=1,
                                 client=pinned)
    plans = cluster.cached_plans(pinned)
    assert len(plans) == 2
    for entries in plans.values():
        shapes = [e["shape"] for e in entries]
        assert len(shapes) == len(set(shapes)) <= 2  # one Plan per shape on each worker
        assert {e["device"] for e in entries} == {"cpu"}
    done = {}
    for entries in plans.values():
        for e in entries:
            done[e["shape"]] = done.get(e["shape"], 0) + e["batches"]
    # every batch of both calls solved by a Plan made once (not one per task)
    assert done == {(N, N): 2 * 3, (32, 32): 2 * 4}
    assert sum(cluster.release_plans(pinned).values()) == sum(map(len, plans.values()))
    assert all(v == [] for v in cluster.cached_plans(pinned).values())


# ------------------------------------------------------------------ errors


def test_a_refusal_on_a_worker_is_raised_as_itself_with_its_message(pinned):
    stack = _stack(7)
    stack[5, 1, 3, 3] = np.nan  # checked on the worker: the data of a dask array
    lazy = da.from_array(stack, chunks=(2, 3, N, N))
    with pytest.raises(ft.InputError) as info:
        cluster.reconstruct_many(lazy, pixel_size=PIXEL, dz=DZ, energy=E, batch_size=2,
                                 client=pinned)
    assert type(info.value) is ft.InputError
    assert str(info.value) == "stack[5]: zero: contains NaN or Inf"
    assert info.value.__cause__ is None and info.value.__context__ is None
    # scaled out of float32's precise range: refused by the worker's solver
    stack = _stack(3)
    stack[2] *= np.float32(1e16)
    with pytest.raises(ft.InputError, match=r"^stack\[2\]: triplet: a mean in-focus intensity"):
        cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E, batch_size=1,
                                 client=pinned)


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "tea"}, "method: expected one of"),
    ({"alpha": -1.0}, "alpha: expected a finite number >= 0"),
    ({"floor": 0.1, "method": "gd"}, "floor: applies to methods"),
    ({"tol": 1e-3}, "tol: applies to methods"),
    ({"warmup": False}, r"options: unknown \['warmup'\]"),
    ({"backend": "tpu"}, "backend: each worker makes its own"),
    ({"dz": None}, "dz: expected a value"),
    ({"energy": 300.0}, "energy: expected 1000 to"),
    ({"batch_size": 0}, "batch_size: expected"),
    ({"method": "icom"}, "gradient: method 'icom' needs"),
    ({"gradient": np.zeros((3, 2, N, N))}, r"gradient: expected a real array of shape \(4, 2"),
    ({"stack": np.zeros((4, 2, N, N))}, r"stack: expected an array \(B, 3, Ny, Nx\)"),
    ({"stack": np.zeros((4, 3, N, N), complex)}, "stack: expected real intensities"),
    ({"nan": (2, 0)}, r"^stack\[2\]: minus: contains NaN or Inf"),
    ({"nan": (3, 2), "negative": True}, r"^stack\[3\]: plus: expected non-negative"),
    ({"stack": [ft.FocalTriplet(*_stack(1)[0], dz=(DZ, 2 * DZ), pixel_size=PIXEL, energy=E)],
      "dz": None, "pixel_size": None, "energy": None}, r"stack\[0\]: expected an even"),
])
def test_inputs_are_checked_before_anything_is_sent(kwargs, message):
    kwargs = dict(kwargs)
    stack = kwargs.pop("stack", _stack(4))
    if "nan" in kwargs:
        i, j = kwargs.pop("nan")
        stack[i, j, 1, 1] = -1.0 if kwargs.pop("negative", False) else np.nan
    args = {"pixel_size": PIXEL, "dz": DZ, "energy": E, **kwargs}
    with pytest.raises(ft.InputError, match=message):
        cluster.reconstruct_many(stack, client=_Unused(), **args)


def test_without_a_client_the_call_says_how_to_start_one(monkeypatch):
    monkeypatch.setattr(distributed, "default_client",
                        lambda: (_ for _ in ()).throw(ValueError("No clients found")))
    with pytest.raises(ft.InputError, match="client: no dask.distributed client is active"):
        cluster.reconstruct_many(_stack(2), pixel_size=PIXEL, dz=DZ, energy=E)


# ------------------------------------------------------------------ 4D-STEM on the workers


def test_a_triplet_from_dask_4d_arrays_is_reduced_on_the_workers(pinned):
    """``from_4dstem`` with dask arrays and a client active: each chunk of scan
    positions is reduced on a worker; the triplet equals the in-memory one."""
    rng = np.random.default_rng(3)
    iy, ix = np.indices((20, 20))
    spot = np.exp(-((iy - 10.0) ** 2 + (ix - 10.0) ** 2) / 8.0)
    data = [(1000 * spot * (1 + 0.05 * rng.random((12, 10, 1, 1)))).astype(np.float32)
            for _ in range(3)]
    geometry = dict(dz=DZ, scan_step=PIXEL, k_sampling=0.05, energy=E, backend="cpu",
                    register=False)
    want = ft.FocalTriplet.from_4dstem(*data, **geometry)
    lazy = [da.from_array(d, chunks=(4, 10, 20, 20)) for d in data]
    with pinned.as_current(), distributed.get_task_stream(pinned) as stream:
        got = ft.FocalTriplet.from_4dstem(*lazy, **geometry)
    reduced = [t for t in stream.data if str(t["key"]).startswith("('_reduce_block")]
    assert len(reduced) == 3 * 3  # three chunks of each of the three scans
    assert len({t["worker"] for t in reduced}) == 2
    for a, b in zip(got.planes, want.planes):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(got.gradient, want.gradient, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ threads, GPUs


def test_thread_workers_and_the_client_closing_its_cluster():
    stack = _stack(5)
    with cluster.local_cluster("cpu", n_workers=2, processes=False) as client:
        got = cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E)  # default
        plans = cluster.cached_plans()
        local = client.cluster
    np.testing.assert_array_equal(got, _plan().solve_batch(stack))
    assert len(plans) == 2 and all(len(v) == 1 for v in plans.values())
    assert client.status == "closed" and local.status.name == "closed"


@pytest.mark.gpu
def test_one_worker_per_gpu_equals_a_plan_on_the_gpu():
    if not gpu_available():
        pytest.skip("no CUDA device answers here (CuPy missing, no driver or no device)")
    import cupy

    stack = _stack(8, n=128)
    want = ft.Plan((128, 128), PIXEL, DZ, E, backend="gpu").solve_batch(cupy.asarray(stack))
    with cluster.local_cluster("gpu", dask_cuda=False) as client:
        got = cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E,
                                       backend="gpu", batch_size=2)
        plans = cluster.cached_plans(client)
    np.testing.assert_array_equal(got, cupy.asnumpy(want))
    devices = [e["device"] for v in plans.values() for e in v]
    assert len(devices) == len(set(devices)) == len(plans)  # one device per worker


def test_items_whose_solve_warned_on_a_worker_are_named_here(pinned):
    """A solve's TrustWarning is raised in the worker process: the caller of a
    batch saw none and got the phase (zero here, the TIE finding no signal
    above the noise) as if it were any other."""
    stack = _stack(4, seed=3)
    flat = np.full((3, N, N), float(stack[2].mean()), np.float32)
    flat += np.random.default_rng(4).normal(0, 1e-4, flat.shape).astype(np.float32)
    stack[2] = flat  # nothing above a noise of 0.01 per pixel
    plan = _plan()
    with pytest.warns(ft.TrustWarning, match="no signal above the noise"):
        want = plan.solve_batch(stack, noise=0.01)
    with pytest.warns(ft.TrustWarning) as caught:
        phase, info = cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E,
                                               noise=0.01, batch_size=3, threads=1,
                                               client=pinned, return_info=True)
    np.testing.assert_array_equal(phase, want)
    assert len(info) == 4 and [bool(v.get("trust")) for v in info] == [False, False, True,
                                                                           False]
    assert info[2]["trust"] == "no signal above the noise"
    text = str(caught[0].message)
    assert text.startswith("reconstruct_many: 1 of 4 tie phases are not to be trusted")
    assert "stack[2]: no signal above the noise" in text
    # without return_info the phases alone come back, and the warning all the same
    with pytest.warns(ft.TrustWarning, match=r"stack\[2\]"):
        alone = cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E,
                                         noise=0.01, batch_size=2, threads=1, client=pinned)
    np.testing.assert_array_equal(alone, want)
    with pytest.raises(ft.InputError, match="return_info: expected True or False"):
        cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E, client=_Unused(),
                                 return_info="yes")


def test_each_call_checks_its_gradients_orientation_on_the_cached_plans(pinned):
    """Worker plans are kept between calls: each call's gradients are checked
    for curl afresh, so a set of swapped components after a right set is
    flagged per item (and right ones after it are not)."""
    y = np.arange(N)[:, None] * PIXEL
    x = np.arange(N)[None, :] * PIXEL
    a = b = 2 * np.pi / (N * PIXEL)
    gy = 1.2 * a * np.cos(2 * a * y) * np.cos(b * x) - 0.3 * a * np.sin(a * y + 3 * b * x)
    gx = -0.6 * b * np.sin(2 * a * y) * np.sin(b * x) - 0.9 * b * np.sin(a * y + 3 * b * x)
    right = np.broadcast_to(np.stack([gy, gx]), (4, 2, N, N)).astype(np.float32)
    swapped = np.ascontiguousarray(right[:, ::-1])
    stack = _stack(4, seed=5)
    kw = dict(pixel_size=PIXEL, dz=DZ, energy=E, batch_size=2, threads=1, client=pinned,
              return_info=True)
    for grads, wrong in ((right, False), (swapped, True), (right, False)):
        if wrong:
            with pytest.warns(ft.TrustWarning, match="4 of 4 icom phases"):
                _, info = cluster.reconstruct_many(stack, "icom", gradient=grads, **kw)
        else:
            _, info = cluster.reconstruct_many(stack, "icom", gradient=grads, **kw)
        assert [("trust" in v) for v in info] == [wrong] * 4


def test_triplets_carry_their_saturation_and_replaced_pixels_to_the_items(pinned):
    """A saturated triplet (``triplet.saturation``) and the pixels replaced in
    its planes (``triplet.plane_defects``) reached the workers' plans
    without those records: its items came back without the detector's
    verdict that reconstruct gives. Each item's verdict is reconstruct's;
    a malformed record is refused here, before anything is sent."""
    from test_stem import saturated_triplet_with_a_hot_pixel

    from flowtie_fast.trust import verdict_entries

    t = saturated_triplet_with_a_hot_pixel()
    clean = copy.copy(t)
    clean.plane_defects = None  # the same planes, none said to be replaced
    for method in ("tie", "icom"):
        want = []
        for item in (t, clean):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want.append(verdict_entries(
                    ft.reconstruct(item, method, backend="cpu", threads=1).info))
        assert all(w["trust"].startswith("the detector saturated (triplet.saturation): ")
                   for w in want)
        with pytest.warns(ft.TrustWarning, match=rf"2 of 2 {method} phases .*stack\[0\]: "
                                                 r"the detector saturated"):
            _, info = cluster.reconstruct_many([t, clean], method, client=pinned, threads=1,
                                               return_info=True)
        assert info == want
    bad = copy.copy(t)
    bad.saturation = {"saturated": "yes"}
    with pytest.raises(ft.InputError, match=r"^stack\[1\]: saturation: expected"):
        cluster.reconstruct_many([t, bad], "tie", client=_Unused())


def test_a_duration_is_no_device_index():
    with pytest.raises(ft.InputError, match="devices: expected GPU indices"):
        cluster.visible_devices([np.timedelta64(1, "s")])
    assert cluster.visible_devices([0, np.int64(1)]) == ["0", "1"]


def test_the_triplets_virtual_image_reaches_the_plans_and_conflicts_are_refused():
    """Triplets reduced from 4D-STEM data record their virtual image: the
    workers' plans are made for it (a 'df' triplet's TIE says its phase is
    not the specimen's, as reconstruct does); triplets of several images, or
    a virtual= that contradicts theirs, are refused before anything is sent."""
    triplets = [ft.FocalTriplet(*p, dz=DZ, pixel_size=PIXEL, energy=E) for p in _stack(2)]
    for t in triplets:
        t.virtual = "df"
    assert cluster._triplets_image(triplets, None) == {"virtual": "df"}
    assert cluster._triplets_image(triplets, "df") == {"virtual": "df"}
    with pytest.raises(ft.InputError, match=r"^virtual: 'bf' given for triplets of 'df'"):
        cluster.reconstruct_many(triplets, "tie", client=_Unused(), virtual="bf")
    triplets[1].virtual = "bf"
    with pytest.raises(ft.InputError, match=r"^stack: triplets of different virtual images"):
        cluster.reconstruct_many(triplets, "tie", client=_Unused())
    with pytest.raises(ft.InputError, match="^virtual: "):
        cluster.reconstruct_many(_stack(2), "tie", pixel_size=PIXEL, dz=DZ, energy=E,
                                 client=_Unused(), virtual="dark")
    with pytest.warns(ft.TrustWarning, match="'df' images"):
        cluster._worker_plan(cluster._Spec((N, N), (PIXEL, PIXEL), DZ, E, "tie", "cpu", 1,
                                           "float32", (("virtual", "df"),)))


def test_a_batched_flows_verdict_reaches_every_item():
    """flowtie without the trust check solves an array batch at once, and
    its plan's verdict is the batch's (no per-item verdicts): the shipped
    network on 'df' planes says its phase is not the specimen's, and each
    item's verdict from the worker says so too (it came back empty)."""
    import warnings

    spec = cluster._Spec((N, N), (PIXEL, PIXEL), DZ, E, "flowtie", "cpu", 1, "float32",
                         (("uncertainty", False), ("virtual", "df")))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)  # the worker's plan says it once
        result = cluster._solve_batch(_stack(2), np.zeros((2, 2, N, N), np.float32), None,
                                      spec, 0, False)
    assert result[0] == "ok"
    assert [("'df' images" in v.get("trust", "")) for v in result[3]] == [True, True]


def test_a_contradicted_virtual_image_names_what_is_expected():
    """virtual= that contradicts the triplets' recorded image says which
    one is expected, not only that they differ."""
    t = ft.FocalTriplet(*_stack(1)[0], dz=DZ, pixel_size=PIXEL, energy=E)
    t.virtual = "df"
    with pytest.raises(ft.InputError, match=r"expected 'df', or no virtual="):
        cluster.reconstruct_many([t], "tie", client=_Unused(), virtual="bf")


def test_triplets_carry_their_registration_and_orientation_verdicts_to_the_items(pinned):
    """A triplet records beside its planes whether the drift between its
    scans could be measured (``triplet.registration``) and its own check of
    its gradient's orientation (against the bright-field images of a 'df'
    triplet, which a plan given its planes does not see): each item of
    reconstruct_many is judged by them as reconstruct judges the triplet,
    not returned without a word."""
    small = smooth_triplets(2, 6, seed=1)  # too small to measure a drift
    with pytest.warns(UserWarning, match="too small to measure a drift"):
        triplets = [ft.FocalTriplet(*p, dz=DZ, pixel_size=PIXEL, energy=E, register=True)
                    for p in small]
    assert not triplets[0].registration["reliable"]
    with pytest.warns(ft.TrustWarning, match="drift between the scans could not be measured"):
        want = ft.reconstruct(triplets[0], "tie", backend="cpu", threads=1)
    drift = "the drift between the scans could not be measured"
    with pytest.warns(ft.TrustWarning, match=r"2 of 2 tie phases .*stack\[0\]: the drift"):
        phase, info = cluster.reconstruct_many(triplets, "tie", client=pinned, threads=1,
                                               return_info=True)
    assert [v.get("trust") for v in info] == [drift, drift]
    np.testing.assert_allclose(phase[0], want.phase, rtol=1e-5, atol=1e-6)

    y, x = np.mgrid[:N, :N] * PIXEL
    gradient = np.stack([np.cos(y), -np.sin(x)])  # curl-free: a plan's own check passes it
    t = ft.FocalTriplet(*_stack(1)[0], dz=DZ, pixel_size=PIXEL, energy=E, gradient=gradient)
    why = "gradient: it points against the gradient of the bright-field TIE phase"
    t.gradient_orientation = {"testable": True, "suspect": True, "why": why}  # as from_4dstem
    with pytest.warns(ft.TrustWarning, match=r"1 of 1 icom phases .*stack\[0\]: gradient: it"):
        _, info = cluster.reconstruct_many([t], "icom", client=pinned, threads=1,
                                           return_info=True)
    assert info[0]["trust"] == why
