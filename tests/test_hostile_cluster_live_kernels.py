"""Hostile inputs to the dask cluster, the LiberTEM UDF's datasets and the
OpenMP thread setting: each is refused naming the argument, or reported as
the library's own exception."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowtie_fast as ft

KW = dict(pixel_size=0.2, dz=20.0, energy=300e3)


def _stack(b, n=16):
    y, x = np.mgrid[:n, :n] * (2 * np.pi / n)
    return np.stack([[1000 * (1 - 0.02 * s * 0.3 * np.sin(y + i) * np.cos(2 * x))
                      for s in (-1, 0, 1)] for i in range(b)]).astype(np.float32)


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import local_cluster

    with local_cluster("cpu", n_workers=1, processes=False) as c:
        yield c


def test_a_dask_stack_of_unknown_chunk_sizes_is_refused_naming_the_stack(client):
    da = pytest.importorskip("dask.array")
    from flowtie_fast.cluster import reconstruct_many

    s = da.from_array(_stack(3))
    with pytest.raises(ft.InputError, match=r"stack: .*known chunk sizes"):
        reconstruct_many(s[s[:, 0, 0, 0] > 0], **KW)


def test_a_batch_size_beyond_the_stack_takes_the_whole_dask_stack(client):
    da = pytest.importorskip("dask.array")
    from flowtie_fast.cluster import reconstruct_many

    s = _stack(3)
    want = ft.Plan((16, 16), 0.2, 20.0, 300e3, backend="cpu", threads=1).solve_batch(s)
    got = reconstruct_many(da.from_array(s, chunks=(2, 3, 16, 16)), batch_size=10**30, **KW)
    np.testing.assert_array_equal(got, want)  # one Plan's result, bit for bit


def test_a_dask_chunk_that_cannot_be_read_is_an_input_error_naming_the_item(client):
    da = pytest.importorskip("dask.array")
    from flowtie_fast.cluster import reconstruct_many

    def unreadable(block):
        raise KeyError("chunk unreadable")

    s = da.from_array(_stack(4), chunks=(2, 3, 16, 16)).map_blocks(unreadable, dtype=np.float32)
    with pytest.raises(ft.InputError, match=r"stack\[[02]\]: .*KeyError"):
        reconstruct_many(s, batch_size=2, **KW)


def test_a_list_of_arrays_is_named_as_such_not_as_a_pixel_size_taken_from_triplets(client):
    from flowtie_fast.cluster import reconstruct_many

    with pytest.raises(ft.InputError, match=r"stack\[0\]: expected a FocalTriplet .*ndarray"):
        reconstruct_many(list(_stack(2)), **KW)


def test_a_closed_client_is_refused_naming_the_client():
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import (cached_plans, local_cluster, reconstruct_many,
                                      release_plans)

    with local_cluster("cpu", n_workers=1, processes=False) as c:
        pass
    with pytest.raises(ft.InputError, match="client: .*'closed'"):
        reconstruct_many(_stack(2), client=c, **KW)
    for call in (cached_plans, release_plans):
        with pytest.raises(ft.InputError, match="client: .*'closed'"):
            call(c)


_KILL = textwrap.dedent("""
    import os, signal, threading, time
    import numpy as np
    import flowtie_fast as ft
    from flowtie_fast.cluster import local_cluster, reconstruct_many

    def stack(b, n):
        y, x = np.mgrid[:n, :n] * (2 * np.pi / n)
        return np.stack([[1000 * (1 - 0.02 * s * 0.3 * np.sin(y + i) * np.cos(2 * x))
                          for s in (-1, 0, 1)] for i in range(b)]).astype(np.float32)

    if __name__ == "__main__":
        with local_cluster("cpu", n_workers=2) as c:
            c.wait_for_workers(2)
            address, pid = next(iter(c.run(os.getpid).items()))
            out = {}
            def go():
                try:
                    reconstruct_many(stack(16, 64), "tie-exact", max_iter=3000, tol=1e-14,
                                     batch_size=1, client=c, pixel_size=0.2, dz=20.0,
                                     energy=300e3)
                    out["r"] = "returned"
                except BaseException as e:
                    out["r"] = f"{type(e).__name__}: {e}"
            t = threading.Thread(target=go, daemon=True)
            t.start()
            deadline = time.monotonic() + 120
            while not c.processing().get(address) and time.monotonic() < deadline:
                time.sleep(0.05)  # until the worker holds batches of the run
            os.kill(pid, signal.SIGKILL)
            t.join(120)
            print("RESULT", out.get("r", "hang"), flush=True)
        os._exit(0)
""")


def test_a_worker_killed_mid_run_is_a_backend_error(tmp_path):
    pytest.importorskip("distributed")
    script = tmp_path / "kill.py"
    script.write_text(_KILL)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=280)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, r.stderr[-2000:]
    assert line[0].startswith("RESULT BackendError: client: "), line[0]


def test_a_complex_libertem_dataset_is_named_by_its_plane():
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    rng = np.random.default_rng(0)
    data = rng.poisson(20.0, (4, 5, 16, 16)).astype(np.uint16)
    with Context.make_with("inline") as ctx:
        ds = [ctx.load("memory", data=a, sig_dims=2)
              for a in (data, data, data.astype(np.complex64))]
        with pytest.raises(ft.InputError, match="plus: expected real detector counts"):
            triplet_with_libertem(ctx, ds, 20.0, 0.2, 0.05, 300e3)


@pytest.mark.parametrize("value", ["²", "4,²", "٣"])
def test_omp_num_threads_of_non_ascii_digits_is_a_backend_error(value):
    code = ("import flowtie_fast as ft\n"
            "try:\n    ft.get_backend('cpu', kernels='numpy')\n"
            "except ft.BackendError as e:\n    print('BackendError', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": value}, timeout=120)
    assert "BackendError backend: OMP_NUM_THREADS=" in r.stdout, r.stdout + r.stderr[-800:]


def test_reconstruct_with_the_numpy_kernels_after_numba_ones_runs_the_numpy_kernels():
    from flowtie_fast import solvers

    y, x = np.mgrid[:16, :16] * (2 * np.pi / 16)
    planes = [1000 * (1 - 0.02 * s * 0.3 * np.sin(y) * np.cos(2 * x)) for s in (-1, 0, 1)]
    t = ft.FocalTriplet(*planes, dz=20.0, pixel_size=0.2, energy=300e3)
    used = {}
    for kernels in ("numba", "numpy"):
        be = ft.get_backend("cpu", kernels=kernels)
        ft.reconstruct(t, backend=be)
        solver = solvers._cached_solver(t.shape, t.pixel_size, be, None, boundary="periodic",
                                        scheme="auto", alpha=0.0, floor="auto", denoise=True,
                                        dtype="float32")
        used[kernels] = solver.backend.kernel_set
    assert used == {"numba": "numba", "numpy": "numpy"}


def test_a_file_error_on_a_worker_is_not_reported_as_a_lost_worker(client):
    from flowtie_fast.cluster import reconstruct_many

    wisdom = "/proc/flowtie-none/w.wis"  # a folder that cannot exist
    with pytest.raises(ft.InputError, match=r"wisdom: .* its folder .* does not exist") as e:
        reconstruct_many(_stack(2), wisdom=wisdom, **KW)
    assert "died" not in str(e.value) and "lost" not in str(e.value)


def test_a_wisdom_file_in_a_missing_folder_is_refused_before_planning(tmp_path):
    with pytest.raises(ft.InputError, match=r"^wisdom: .* its folder .* does not exist"):
        ft.Plan((32, 32), 0.2, 20.0, 300e3, backend="cpu",
                wisdom=str(tmp_path / "missing" / "w.wis"))
    assert not (tmp_path / "missing").exists()


def test_gd_without_a_first_step_in_float64_does_not_advise_float64():
    rng = np.random.default_rng(1)
    t = ft.FocalTriplet(*[1 + 0.1 * rng.random((2, 2)) for _ in range(3)], dz=20.0,
                        pixel_size=0.2, energy=300e3)
    with pytest.raises(ft.ResultError) as info:
        ft.reconstruct(t, method="gd", dtype="float64", backend="cpu")
    assert "float64 on this 2 x 2 image" in str(info.value)
    assert "use dtype='float64'" not in str(info.value)


def test_a_worker_keeps_at_most_max_plans(client):
    from flowtie_fast import cluster

    cluster.release_plans(client)
    for i in range(cluster.MAX_PLANS + 3):
        cluster.reconstruct_many(_stack(1), pixel_size=0.2, dz=20.0 + i, energy=300e3,
                                 client=client)
    kept = cluster.cached_plans(client)
    assert [len(v) for v in kept.values()] == [cluster.MAX_PLANS]
    # the most recent geometry is one of those kept: solving it again makes no Plan
    last = 20.0 + cluster.MAX_PLANS + 2
    cluster.reconstruct_many(_stack(1), pixel_size=0.2, dz=last, energy=300e3, client=client)
    kept = cluster.cached_plans(client)
    assert [len(v) for v in kept.values()] == [cluster.MAX_PLANS]
    assert sorted(p["batches"] for v in kept.values() for p in v)[-1] == 2


def test_a_cluster_that_does_not_start_is_a_backend_error(monkeypatch):
    pytest.importorskip("distributed")
    import distributed

    from flowtie_fast import cluster

    def broken(*args, **kwargs):
        raise RuntimeError("Nanny failed to start")

    monkeypatch.setattr(distributed, "LocalCluster", broken)
    with pytest.raises(ft.BackendError, match=r"^local_cluster: the cluster did not start "
                                              r"\(RuntimeError: Nanny failed to start\)"):
        cluster.local_cluster("cpu", n_workers=1, processes=False)


def test_a_worker_out_of_memory_is_a_backend_error_not_unreadable_data():
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import _batch_failure

    err = _batch_failure(MemoryError("Unable to allocate 8.00 GiB"), 4)
    assert type(err) is ft.BackendError
    assert str(err).startswith("client: a worker failed on the batch from stack[4] "
                               "(MemoryError: Unable to allocate")


@pytest.mark.parametrize("device", ["-1", "+0", "-0", " -2 "])
def test_a_device_list_entry_that_hides_every_gpu_is_refused(device):
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import visible_devices

    with pytest.raises(ft.InputError, match=r"^devices: expected GPU indices"):
        visible_devices([device])
    assert visible_devices(["1", 0, "GPU-8a3f"]) == ["1", "0", "GPU-8a3f"]


def test_far_more_cpu_workers_than_cores_are_refused():
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import local_cluster

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with pytest.raises(ft.InputError, match=rf"^n_workers: expected an integer in \[1, {4 * cores}\]"):
        local_cluster("cpu", n_workers=4 * cores + 1)


def test_bool_frames_are_refused_alike_by_the_array_and_libertem_paths():
    rng = np.random.default_rng(0)
    data = rng.poisson(20.0, (4, 5, 16, 16)).astype(np.uint16)
    bits = data > 20
    with pytest.raises(ft.InputError, match=r"zero: expected real detector counts, got dtype "
                                            r"bool \(cast 1-bit frames to uint8\)"):
        ft.FocalTriplet.from_4dstem(data, bits, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu")
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    with Context.make_with("inline") as ctx:
        ds = [ctx.load("memory", data=a, sig_dims=2) for a in (data, bits, data)]
        with pytest.raises(ft.InputError, match=r"zero: expected real detector counts, got "
                                                r"dtype bool \(cast 1-bit frames to uint8\)"):
            triplet_with_libertem(ctx, ds, 20.0, 0.2, 0.05, 300e3)


def _disk_patterns(sy=16, sx=16, det=(32, 32), total=2000.0, hot=None):
    """Float32 patterns (Sy, Sx, Ky, Kx): a bright-field disk of 6 px radius
    displaced by a smooth field, with dark field around it; ``hot``: a
    detector pixel (row, column) and the value it reads in every pattern."""
    y, x = np.mgrid[:sy, :sx]
    gy = 0.8 * np.sin(2 * np.pi * y / sy) * np.cos(2 * np.pi * x / sx)
    gx = 0.8 * np.cos(2 * np.pi * y / sy) * np.sin(4 * np.pi * x / sx)
    iy, ix = np.indices(det, dtype=float)
    r = np.hypot(iy - 15.5 - gy[..., None, None], ix - 15.5 - gx[..., None, None])
    p = 1 / (1 + np.exp((r - 6.0) / 0.5)) + 0.02 * np.exp(-r / 10)
    p = (total * p / p.sum(axis=(-2, -1), keepdims=True)).astype(np.float32)
    if hot is not None:
        p[:, :, hot[0][0], hot[0][1]] = hot[1]
    return p


def _reductions():
    from flowtie_fast import stem

    data = _disk_patterns()
    reds, _ = stem.reduce_triplet(data, data, data, 0.05, 300e3, backend="cpu")
    return reds


@pytest.mark.parametrize("change, says", [
    ("scan", r"^minus: the 'bf' image of shape \(8, 16\) differs from zero's \(16, 16\)"),
    ("virtual", r"^virtual: 'bf' is not among the virtual images of minus \('whole',\)"),
    ("detector", r"^reductions: the detector of plus is str, expected a Detector"),
    ("nan", r"^minus: the 'bf' image contains NaN or Inf"),
    ("energy", r"^plus: reduced at 200000 eV, zero's 300000 eV"),
    ("regions", r"^minus: its 'bf' region \(0, 3\) mrad differs from zero's \(0, 1\.4"),
])
def test_from_reductions_names_reductions_that_are_not_one_triplet(change, says):
    import dataclasses

    reds = _reductions()
    m, z, p = reds
    if change == "scan":
        m = dataclasses.replace(m, virtual={k: v[:8] for k, v in m.virtual.items()})
    elif change == "virtual":
        m = dataclasses.replace(m, virtual={"whole": m.virtual["whole"]})
    elif change == "detector":
        p = dataclasses.replace(p, detector="detector")
    elif change == "nan":
        bf = m.virtual["bf"].copy()
        bf[0, 0] = np.nan
        m = dataclasses.replace(m, virtual={**m.virtual, "bf": bf})
    elif change == "energy":
        p = dataclasses.replace(p, detector=dataclasses.replace(p.detector, energy=200e3))
    else:
        m = dataclasses.replace(m, regions={**m.regions, "bf": (0.0, 3.0)})
    with pytest.raises(ft.InputError, match=says):
        ft.FocalTriplet.from_reductions([m, z, p], dz=20.0, scan_step=0.2)


def test_a_detector_is_checked_when_it_is_made():
    from flowtie_fast import stem

    det = stem.Detector((32, 32), 0.05, 300e3, [15.5, 15.5])  # one sampling for both axes
    assert det.k_sampling == (0.05, 0.05) and det.center == (15.5, 15.5)
    assert det.k()[0].shape == (32, 32)
    for kwargs, says in [(dict(center=(np.nan, 5.0)), r"^center: expected .* finite"),
                         (dict(energy=-1.0), r"^energy: "),
                         (dict(k_sampling=(0.05, 0.05, 0.05)), r"^k_sampling: "),
                         (dict(shape=(32,)), r"^detector: expected a shape \(Ky, Kx\)")]:
        args = dict(shape=(32, 32), k_sampling=0.05, energy=300e3, center=(15.5, 15.5))
        args.update(kwargs)
        with pytest.raises(ft.InputError, match=says):
            stem.Detector(**args)


def test_a_libertem_detector_under_two_pixels_a_side_is_refused_like_from_4dstem():
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    data = np.ascontiguousarray(_disk_patterns()[:, :, 15:16, 15:16])
    with pytest.raises(ft.InputError, match=r"^minus: expected at least 2 along every axis"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu")
    with Context.make_with("inline") as ctx:
        ds = [ctx.load("memory", data=data, sig_dims=2) for _ in range(3)]
        with pytest.raises(ft.InputError, match=r"^zero: expected at least 2 along every "
                                                r"axis, got \(16, 16, 1, 1\)"):
            triplet_with_libertem(ctx, ds, 20.0, 0.2, 0.05, 300e3)


def test_triplet_with_libertem_takes_register_and_counts_like_from_4dstem():
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    rng = np.random.default_rng(0)
    data = [rng.poisson(_disk_patterns(total=500.0)).astype(np.uint16) for _ in range(3)]
    # a 1 Å scan step leaves no room above the band limit: the counts give the noise
    kw = dict(dz=20.0, scan_step=1.0, k_sampling=0.05, energy=300e3)
    want = ft.FocalTriplet.from_4dstem(*data, register=False, backend="cpu", **kw)
    with Context.make_with("inline") as ctx:
        ds = [ctx.load("memory", data=a, sig_dims=2) for a in data]
        got = triplet_with_libertem(ctx, ds, register=False, **kw)
    assert got.registration is None and want.noise is not None
    assert got.noise == want.noise
    assert got.gradient_noise == want.gradient_noise


def _refused_alike(data, says):
    """``from_4dstem`` and ``triplet_with_libertem`` of three copies of
    ``data`` both refuse them with a message matching ``says``."""
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    with pytest.raises(ft.InputError, match=says):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu")
    with Context.make_with("inline") as ctx:
        ds = [ctx.load("memory", data=data, sig_dims=2) for _ in range(3)]
        with pytest.raises(ft.InputError, match=says):
            triplet_with_libertem(ctx, ds, 20.0, 0.2, 0.05, 300e3)


@pytest.mark.parametrize("value", [60.0, 1e6])
def test_a_hot_pixel_is_not_taken_for_the_bright_field_disk(value):
    data = _disk_patterns(hot=((3, 3), value))
    _refused_alike(data, r"^zero: detector pixel \(3, 3\) of the mean pattern is .* times its "
                         r"brightest neighbour")
    # the pixel set to zero, as the message says: the disk is found where it is
    data[..., 3, 3] = 0
    t = ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu", register=False)
    assert np.allclose(t.reductions[1].detector.center, (15.5, 15.5), atol=0.05)


def test_spikes_in_a_few_patterns_are_named_as_transient_not_as_hot_pixels():
    """Three X-ray spikes in 3 of 256 patterns outshone the disk in the mean of
    the sampled patterns and were refused as hot pixels, 'inf times its
    brightest neighbour'; the refusal now says what they are."""
    data = _disk_patterns()
    for position in ((2, 3), (8, 8), (13, 1)):
        data[position + (1, 1)] = 1e6
    with pytest.raises(ft.InputError, match=r"^zero: detector pixel \(1, 1\) of the mean "
                       r"pattern is .* times its brightest neighbour, from 3 of the 256 "
                       r"patterns sampled .* transient spikes"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu")


def test_sparse_counts_are_not_taken_for_hot_pixels():
    rng = np.random.default_rng(3)
    data = [rng.poisson(_disk_patterns(total=3.0)).astype(np.uint8) for _ in range(3)]
    t = ft.FocalTriplet.from_4dstem(*data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu", register=False)
    assert np.allclose(t.reductions[1].detector.center, (15.5, 15.5), atol=1.0)


def test_models_that_disagree_on_a_flat_phase_say_so_not_inf_percent():
    from flowtie_fast import trust

    v = trust.verdict(0.1, 0.0, 1.0)
    assert v["trusted"] is False and v["rel_spread"] == np.inf
    assert "inf%" not in v["why"] and "flat" in v["why"]


def test_demo_numbers_are_named_as_the_options_given(capsys):
    from flowtie_fast.cli import main

    for option in ("--pixel-size", "--dz", "--energy"):
        assert main(["demo", "--fresnel", option, "nan"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"flowtie demo: error: {option}: "), err


def test_4dstem_dask_data_of_unknown_chunk_sizes_are_named_not_the_others():
    da = pytest.importorskip("dask.array")

    data = _disk_patterns()
    lazy = da.from_array(data, chunks=(5, 7, 13, 11))
    unknown = lazy[lazy[:, 0, 0, 0] >= 0]  # a boolean selection: rows of unknown count
    for args, name in (((lazy, unknown, lazy), "zero"), ((unknown, lazy, lazy), "minus")):
        with pytest.raises(ft.InputError, match=rf"^{name}: expected a dask array of known "
                                                r"chunk sizes, got shape \(nan, 16, 32, 32\)"):
            ft.FocalTriplet.from_4dstem(*args, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                        energy=300e3, backend="cpu")


@pytest.mark.parametrize("command", ["reconstruct", "evaluate"])
def test_an_unknown_virtual_image_is_a_usage_error_naming_the_option(tmp_path, capsys, command):
    from flowtie_fast.cli import main

    missing = str(tmp_path / "never_read.npz")  # refused before any file is looked at
    argv = [command, missing, "--virtual", "bogus"]
    if command == "reconstruct":
        argv += ["-o", str(tmp_path / "o.npz")]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flowtie {command}: error: argument --virtual: invalid choice: "
                          "'bogus'"), err
    assert len(err.strip().splitlines()) == 1


def test_libertem_float64_patterns_below_float32s_range_are_named_as_from_4dstem():
    data = _disk_patterns().astype(np.float64) * 1e-45  # subnormal once summed in float32
    _refused_alike(data, r"^(minus|zero): pattern values of at most .* are too small for the "
                         r"float32 reduction")


@pytest.mark.parametrize("total", [0.1, 0.5])
def test_ultra_sparse_counts_are_not_taken_for_hot_pixels(total):
    """At 0.1 e per pattern the mean of 256 sampled patterns is a few
    scattered counts in the disk: single bright pixels, not hot ones."""
    from flowtie_fast.stem import detector

    for seed in range(10):
        data = np.random.default_rng(seed).poisson(_disk_patterns(total=total)).astype(np.uint8)
        detector.check_hot_pixels(detector.mean_pattern(detector.sample_patterns(data)))


def test_two_hot_pixels_are_refused_and_a_dim_one_is_part_of_the_disk():
    data = _disk_patterns(hot=((3, 3), 1e4))
    data[..., 28, 5] = 2e4
    with pytest.raises(ft.InputError, match=r"^zero: detector pixel \(28, 5\)"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu")
    dim = _disk_patterns(hot=((3, 3), 25.0))  # under twice the disk (about 17 a pixel)
    t = ft.FocalTriplet.from_4dstem(dim, dim, dim, dz=20.0, scan_step=0.2, k_sampling=0.05,
                                    energy=300e3, backend="cpu", register=False)
    assert np.allclose(t.reductions[1].detector.center, (15.5, 15.5), atol=0.5)
