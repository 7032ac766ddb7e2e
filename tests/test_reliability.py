"""Refusals that keep a run unattended safe: caller buffers, intensities,
physical ranges, non-finite results, memory, the thread layer and the command
line (one line, an exit code, nothing overwritten by surprise)."""

from __future__ import annotations

import errno
import importlib.util
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import flowtie_fast as ft
from flowtie_fast import cli
from flowtie_fast.errors import ResultError

N, PIXEL, DZ, E = 32, 0.2, 20.0, 300e3


def planes(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    base = 1.0 + 0.2 * np.cos(2 * np.pi * y / N) * np.sin(2 * np.pi * x / N)
    return [(base * (1 + 0.02 * s) + 0.01 * rng.random((N, N))).astype(dtype)
            for s in (-1, 0, 1)]


def triplet(p=None, **kw):
    p = planes() if p is None else p
    args = dict(dz=DZ, pixel_size=PIXEL, energy=E)
    args.update(kw)
    return ft.FocalTriplet(*p, **args)


@pytest.fixture(scope="module")
def plan():
    return ft.Plan((N, N), PIXEL, DZ, E, method="tie", backend="cpu")


# --------------------------------------------------------------------------- buffers


def read_only_memmap(tmp_path, shape):
    path = tmp_path / "out.dat"
    np.zeros(shape, np.float32).tofile(path)
    return np.memmap(path, np.float32, mode="r", shape=shape)


def read_only_bytes(shape):
    return np.frombuffer(bytes(4 * int(np.prod(shape))), np.float32).reshape(shape)


@pytest.mark.parametrize("make", ["memmap", "bytes", "flag"])
def test_read_only_outputs_are_refused_before_any_work(plan, tmp_path, make):
    """A read-only memory map crashed the process; an array over immutable bytes
    was written through."""
    shape = (N, N)
    if make == "memmap":
        out = read_only_memmap(tmp_path, shape)
    elif make == "bytes":
        out = read_only_bytes(shape)
    else:
        out = np.zeros(shape, np.float32)
        out.flags.writeable = False
    with pytest.raises(ft.InputError, match="out: the array is read-only"):
        plan.solve(*planes(), out=out)
    with pytest.raises(ft.InputError, match="out: the array is read-only"):
        ft.reconstruct(triplet(), method="tie", backend="cpu", out=out)
    grad = read_only_bytes((2, N, N))
    with pytest.raises(ft.InputError, match="gradient_out: the array is read-only"):
        plan.solve(*planes(), gradient_out=grad)
    with pytest.raises(ft.InputError, match="out: the array is read-only"):
        ft.TIESolver((N, N), PIXEL, backend="cpu").poisson.solve(planes()[0], out=out)
    assert not np.any(out)


@pytest.mark.parametrize("out, match", [
    (np.zeros((N, N), np.float32, order="F")[:, :N // 2], "out: expected a float32 array"),
    (np.asfortranarray(np.zeros((N, N + 1), np.float32))[:, :N], "out: expected a C-contig"),
    (np.zeros((N, N), np.float64), "out: expected a float32 array of shape"),
    (np.zeros((N, N + 1), np.float32), "out: expected a float32 array of shape"),
    ([[0.0] * N] * N, "out: expected a writeable NumPy array"),
])
def test_outputs_of_the_wrong_layout_are_refused(plan, out, match):
    with pytest.raises(ft.InputError, match=match):
        plan.solve(*planes(), out=out)


def test_an_output_that_aliases_an_input_is_refused(plan):
    p = planes()
    keep = [a.copy() for a in p]
    with pytest.raises(ft.InputError, match="out: shares memory with zero"):
        plan.solve(*p, out=p[1])
    stack = np.zeros((2, N, N), np.float32)
    with pytest.raises(ft.InputError, match="gradient_out: shares memory with out"):
        plan.solve(*p, out=stack[0], gradient_out=stack)
    with pytest.raises(ft.InputError, match="out: shares memory with minus"):
        ft.reconstruct(ft.FocalTriplet(*p, dz=DZ, pixel_size=PIXEL, energy=E), method="tie",
                       backend="cpu", out=p[0])
    for a, b in zip(p, keep):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- intensities


@pytest.mark.parametrize("i, name", [(0, "minus"), (1, "zero"), (2, "plus")])
def test_a_dropped_frame_is_refused_alike_by_every_entry_point(plan, i, name):
    """A Plan returned a 7 rad phase for an all-zero frame that FocalTriplet refused."""
    p = planes()
    p[i] = np.zeros_like(p[i])
    message = f"{name}: intensity is zero everywhere"
    with pytest.raises(ft.InputError, match=message):
        triplet(p)
    out = np.full((N, N), 7.0, np.float32)
    with pytest.raises(ft.InputError, match=message):
        plan.solve(*p, out=out)
    assert np.all(out == 7.0)  # nothing written
    with pytest.raises(ft.InputError, match=rf"stack\[1\]: {name}: intensity is zero"):
        plan.solve_batch(np.stack([np.stack(planes()), np.stack(p)]))


@pytest.mark.parametrize("method", ["tie", "tie-exact", "gd", "tie-uniform"])
def test_negative_intensities_are_refused(plan, method):
    """tie-exact reported converged=True with an error of 6e5 on them."""
    p = planes()
    p[1] = p[1] - 1.5
    with pytest.raises(ft.InputError, match="zero: expected non-negative intensities"):
        triplet(p)
    m = ft.Plan((N, N), PIXEL, DZ, E, method=method, backend="cpu", warmup=False)
    with pytest.raises(ft.InputError, match="zero: expected non-negative intensities"):
        m.solve(*p)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_planes_are_refused_by_a_plan(plan, value):
    p = planes()
    p[2][3, 4] = value
    with pytest.raises(ft.InputError, match="plus: contains NaN or Inf"):
        plan.solve(*p)


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize("kw, match", [
    (dict(dz=1e-39), "dz: expected 0.001 to 1e\\+08 Å"),
    (dict(pixel_size=1.8e-11), "pixel_size: expected 0.0001 to 1e\\+07 Å"),
    (dict(energy=300.0), "energy: expected 1000 to 1e\\+07 eV \\(e.g. 300e3 for 300 keV\\)"),
    (dict(energy=3e9), "energy: expected 1000 to 1e\\+07 eV"),
])
def test_implausible_physical_parameters_name_the_unit(kw, match):
    """dz = 1e-39, a pixel size in metres or an energy in keV gave NaN or zero phases."""
    with pytest.raises(ft.InputError, match=match):
        triplet(**kw)
    args = dict(pixel_size=PIXEL, dz=DZ, energy=E)
    args.update(kw)
    with pytest.raises(ft.InputError, match=match):
        ft.Plan((N, N), method="tie", backend="cpu", warmup=False, **args)


def test_4dstem_calibrations_are_checked():
    from flowtie_fast import stem

    data = np.ones((4, 4, 16, 16), np.float32)
    detector = stem.Detector((16, 16), (0.05, 0.05), E, (8.0, 8.0))
    with pytest.raises(ft.InputError, match="com_radius: expected a positive"):
        stem.reduce_4dstem(data, detector, {"bf": (0.0, 5.0)}, com_radius_mrad=0.0,
                           backend="cpu")
    with pytest.raises(ft.InputError, match="k_sampling: expected"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=DZ, scan_step=PIXEL,
                                    k_sampling=5e-9, energy=E, backend="cpu")
    with pytest.raises(ft.InputError, match="center: expected"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=DZ, scan_step=PIXEL,
                                    k_sampling=0.05, energy=E, center=(np.nan, 3),
                                    backend="cpu")


# --------------------------------------------------------------------------- results


def overflowing_planes():
    """Finite float32 planes whose transport overflows float32 in the solve:
    a bright 2 x 2 block of 3e37 in each of the ±dz planes, at two places (a
    whole plane x3e37 is refused before the solve, its flux far from the
    others'; one bright pixel alone is replaced by its neighbours' median)."""
    p = planes()
    p[0][3:5, 3:5] += np.float32(3e37)
    p[2][N - 5:N - 3, N - 6:N - 4] += np.float32(3e37)
    return p


def test_a_non_finite_result_is_refused_naming_the_stage(plan):
    p = overflowing_planes()
    out = np.zeros((N, N), np.float32)
    with pytest.raises(ResultError, match="tie: the result contains NaN or Inf"):
        plan.solve(*p, out=out)
    with pytest.raises(ResultError, match="tie: the result contains NaN or Inf"):
        ft.reconstruct(triplet(p), method="tie", backend="cpu")
    assert issubclass(ResultError, ft.InputError)
    scaled = planes()  # the former input: refused before the solve, naming the plane
    scaled[2] = scaled[2] * np.float32(3e37)
    with pytest.raises(ft.InputError, match="^plus: a mean intensity .* times that of"):
        plan.solve(*scaled, out=out)


# --------------------------------------------------------------------------- resources


def test_a_solver_too_large_for_memory_is_refused_with_the_figures():
    with pytest.raises(ft.InputError, match=r"shape: \(200000, 200000\) needs about .* GiB "
                                            r".* more than the .* GiB available on the cpu"):
        ft.TIESolver((200000, 200000), PIXEL, backend="cpu")
    with pytest.raises(ft.InputError, match="shape: expected \\(Ny, Nx\\), integers"):
        ft.TIESolver((16.5, 16), PIXEL, backend="cpu")


def test_the_workqueue_layer_is_serialised_not_aborted():
    """Numba's workqueue layer aborted the process (SIGABRT) when two plans
    solved at once."""
    code = textwrap.dedent(f"""
        import threading, numpy as np, flowtie_fast as ft
        rng = np.random.default_rng(0)
        p = [(1 + 0.1 * rng.random(({N}, {N}))).astype(np.float32) for _ in range(3)]
        want = ft.Plan(({N}, {N}), 0.2, 20.0, 300e3, backend="cpu").solve(*p)
        bad = []
        def work():
            plan = ft.Plan(({N}, {N}), 0.2, 20.0, 300e3, backend="cpu")
            out = np.empty(({N}, {N}), np.float32)
            for _ in range(100):
                plan.solve(*p, out=out)
                bad.append(not np.array_equal(out, want))
        ts = [threading.Thread(target=work) for _ in range(4)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        import numba
        print(numba.threading_layer(), len(bad), any(bad))
    """)
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["workqueue", "400", "False"]


# --------------------------------------------------------------------------- command line


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "raw.npz"
    ft.save(path, triplet(planes(dtype=np.float64)))
    return path


def one_line_error(capsys, command):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"flowtie {command}: error: "), err
    return err[0]


def test_the_output_may_not_be_the_input(raw, capsys):
    before = raw.read_bytes()
    assert cli.main(["reconstruct", str(raw), "-o", str(raw)]) == 2
    assert "is the input file" in one_line_error(capsys, "reconstruct")
    link = raw.with_name("link.npz")
    link.symlink_to(raw.name)
    assert cli.main(["reconstruct", str(raw), "-o", str(link), "--overwrite"]) == 2
    assert "is the input file" in one_line_error(capsys, "reconstruct")
    assert raw.read_bytes() == before


def test_a_bad_model_is_refused_before_the_file_is_read(raw, tmp_path, capsys, monkeypatch):
    """--model pointing at a folder or a non-model file was refused only after
    the 4D reduction ran."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "evil.pt").write_bytes(b"not a model")
    read = []
    monkeypatch.setattr(ft, "load", lambda *a, **k: read.append(a))
    for model, says in ((tmp_path / "mods", "is a directory, not a file"),
                        (tmp_path / "evil.pt", "is not a TorchScript model file"),
                        ("nope", "is neither a shipped name")):
        assert cli.main(["reconstruct", str(raw), "-o", str(tmp_path / "o.npz"),
                         "--method", "flowtie", "--model", str(model)]) == 2
        line = one_line_error(capsys, "reconstruct")
        assert "--model: " in line and says in line, line
    assert read == []


def test_an_existing_output_is_kept_unless_overwrite(raw, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out.npz"
    out.write_bytes(b"precious")
    calls = []
    monkeypatch.setattr(ft, "reconstruct", lambda *a, **k: calls.append(1))
    assert cli.main(["reconstruct", str(raw), "-o", str(out)]) == 2
    assert "exists; pass --overwrite" in one_line_error(capsys, "reconstruct")
    assert out.read_bytes() == b"precious" and not calls  # refused before any work
    monkeypatch.undo()
    assert cli.main(["reconstruct", str(raw), "-o", str(out), "--overwrite"]) == 0
    with np.load(out) as z:
        assert z["phase"].shape == (N, N)


def test_simulate_checks_its_outputs_and_numbers_before_simulating(tmp_path, capsys,
                                                                  monkeypatch):
    pytest.importorskip("ase")
    from flowtie_fast.simulation import simulate

    monkeypatch.setattr(simulate, "simulate_series",
                        lambda *a, **k: pytest.fail("simulated before checking"))
    (t,) = simulate.series_thicknesses("GaAs", [5.65])
    (tmp_path / cli._case_name("GaAs", t)).write_bytes(b"finished simulation")
    assert cli.main(["simulate", "--thickness", "5.65", "-o", str(tmp_path)]) == 2
    assert "exists; pass --overwrite" in one_line_error(capsys, "simulate")
    for args in (["--thickness", "-5"], ["--dz", "-20"], ["--energy", "300"],
                 ["--frozen-phonons", "-1"], ["--scan-gpts", "0", "4"]):
        assert cli.main(["simulate", *args, "-o", str(tmp_path / "new")]) == 2, args
        one_line_error(capsys, "simulate")


@pytest.mark.parametrize("args", [["demo", "--fresnel", "--size", "0"],
                                  ["demo", "--fresnel", "--dz", "-20"],
                                  ["demo", "--fresnel", "--pixel-size", "2e-11"]])
def test_demo_numbers_are_checked(args, capsys):
    assert cli.main(args) == 2
    one_line_error(capsys, "demo")


def test_environment_failures_are_one_line_with_exit_1(raw, tmp_path, capsys, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.npz"))

    monkeypatch.setattr(cli, "write_fields", full)
    assert cli.main(["reconstruct", str(raw), "-o", str(tmp_path / "o.npz")]) == 1
    assert "No space left on device" in one_line_error(capsys, "reconstruct")
    assert not list(tmp_path.glob("*o.npz*"))


def test_unexpected_failures_are_one_line_and_debug_shows_the_traceback(raw, tmp_path, capsys,
                                                                      monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(ft, "reconstruct", broken)
    argv = ["reconstruct", str(raw), "-o", str(tmp_path / "o.npz")]
    assert cli.main(argv) == 1
    line = one_line_error(capsys, "reconstruct")
    assert "unexpected ZeroDivisionError" in line and "--debug" in line
    assert cli.main(["--debug", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert cli.main([*argv, "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_malformed_files_are_one_line_errors(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, minus=np.ones(3), zero=np.ones(3), plus=np.ones(3), dz=np.array("x"),
             scan_step=np.ones(7), energy=np.ones(5))
    assert cli.main(["reconstruct", str(bad), "-o", str(tmp_path / "o.npz")]) == 2
    one_line_error(capsys, "reconstruct")


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_statistics_match_numpy_and_leave_the_derivative_unchanged(dtype):
    from flowtie_fast import _numba_kernels as k

    rng = np.random.default_rng(3)
    p = [rng.normal(1.0, 0.5, (37, 29)).astype(dtype) for _ in range(3)]
    p[2][5, 7] = np.nan
    w = [dtype(v) for v in (-0.025, 0.0, 0.025)]
    want = np.empty((37, 29), dtype)
    got = np.empty_like(want)
    k.focal_derivative3(*p, want, *w)
    stats = np.empty((3, 2))
    k.focal_derivative3_stats(*p, got, *w, np.empty((6, 37)), stats)
    np.testing.assert_array_equal(got, want)
    for i, a in enumerate(p):
        assert stats[i, 0] == np.count_nonzero(a < 0)
        np.testing.assert_allclose(stats[i, 1], a.astype(np.float64).sum(), rtol=1e-12)
        single = np.empty((3, 2))
        k.plane_stats(a, np.empty((2, 37)), single, i)
        np.testing.assert_array_equal(single[i], stats[i])
    assert np.isnan(stats[2, 1])
    same = [p[0]] * 3
    k.focal_derivative3_stats(*same, got, *w, np.empty((6, 37)), stats)
    assert not got.any()  # identical planes: exactly no derivative


# --------------------------------------------------------------------------- solvers and inputs


def test_gd_refuses_an_objective_that_overflows():
    """gd returned an all-zero phase marked converged when |k ∂I/∂z|² overflowed
    float32 (an accepted mean intensity, 9e11, with an extreme focal change)."""
    p = [a * np.float32(9e11) for a in planes()]
    p[0][3:5, 3:5] += np.float32(9e20)  # an extreme 2 x 2 block in each of the ±dz planes
    p[2][N - 5:N - 3, N - 6:N - 4] += np.float32(9e20)  # (one pixel alone is replaced)
    with pytest.raises(ResultError, match="gd: the objective overflows"):
        ft.reconstruct(triplet(p), method="gd", backend="cpu")
    p = [a * np.float32(9e11) for a in planes()]  # the former input: its flux is refused
    p[2] = p[2] * np.float32(1e6)
    with pytest.raises(ft.InputError, match="^plus: a mean intensity .* times that of"):
        ft.reconstruct(triplet(p), method="gd", backend="cpu")


@pytest.mark.parametrize("scale, dtype, match", [
    (1e-42, np.float32, "triplet: a mean in-focus intensity of 1.* is outside what float32"),
    (1e20, np.float32, "triplet: a mean in-focus intensity of 1.* is outside what float32"),
    (1e300, np.float64, "minus: values up to 1.* exceed the range of float32"),
])
def test_intensities_beyond_the_working_precision_are_refused(scale, dtype, match):
    """Subnormal planes gave a 2.7x wrong tie phase without a word; float64 values
    beyond float32 were reported as NaN or Inf."""
    p = [a.astype(dtype) * dtype(scale) for a in planes()]
    with pytest.raises(ft.InputError, match=match):
        ft.reconstruct(triplet(p), method="tie", backend="cpu")
    rec = ft.reconstruct(triplet(p), method="tie", backend="cpu", dtype="float64") \
        if scale < 1e200 else None
    if rec is not None:
        assert np.isfinite(rec.phase).all()


def test_a_batch_refused_at_a_later_item_writes_nothing(plan):
    bad = planes()
    bad[1] = np.zeros_like(bad[1])
    out = np.full((2, N, N), 7.0, np.float32)
    with pytest.raises(ft.InputError, match=r"stack\[1\]: zero: intensity is zero"):
        plan.solve_batch(np.stack([np.stack(planes()), np.stack(bad)]), out=out)
    assert np.all(out == 7.0)


def test_masked_arrays_and_non_bool_flags_are_refused():
    p = planes()
    with pytest.raises(ft.InputError, match="zero: masked arrays are not supported"):
        ft.FocalTriplet(p[0], np.ma.masked_array(p[1], p[1] > 1.1), p[2], dz=DZ,
                        pixel_size=PIXEL, energy=E)
    data = np.ones((4, 4, 16, 16), np.float32)
    with pytest.raises(ft.InputError, match="flip: expected True or False"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=DZ, scan_step=PIXEL, k_sampling=0.05,
                                    energy=E, center=(8.0, 8.0), flip="no", backend="cpu")


def test_hdf5_data_reached_through_a_soft_link_to_another_file_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "t.h5"
    ft.save(path, triplet(planes(dtype=np.float64)))
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("g/zero", data=planes()[1])
    with h5py.File(path, "a") as f:
        del f["zero"]
        f["lnk"] = h5py.ExternalLink("other.h5", "/g")
        f["zero"] = h5py.SoftLink("/lnk/zero")
    with pytest.raises(ft.InputError, match="'zero' resolves to an object in another file"):
        ft.load(path)


def test_options_that_do_not_apply_are_refused(raw, tmp_path, capsys):
    out = str(tmp_path / "o.npz")
    assert cli.main(["reconstruct", str(raw), "-o", out, "--virtual", "df"]) == 2
    assert "--virtual: applies to 4D-STEM files only" in one_line_error(capsys, "reconstruct")
    assert cli.main(["reconstruct", str(raw), "-o", out, "--model", "fast"]) == 2
    assert "apply to --method flowtie only" in one_line_error(capsys, "reconstruct")


def test_a_flow_network_of_the_wrong_output_shape_is_refused_at_prediction(tmp_path):
    pytest.importorskip("torch")
    from flowtie_fast.flow.infer import FlowModel

    model = FlowModel("default")

    class Cropped:
        path = "cropped.pt"

        def predict_batch(self, planes, didz, k, h, com=None):
            v = model.predict_batch(planes, didz, k, h, com)
            return v[..., : v.shape[-1] // 2] if v.shape[-1] > 32 else v

    solver = ft.TIESolver((64, 64), PIXEL, backend="cpu")
    p = [np.pad(a, 16, mode="wrap") for a in planes()]
    with pytest.raises(ft.InputError, match=r"model: the flow network cropped.pt returned "
                                            r"shape \(1, 2, 64, 32\)"):
        solver._predict_flow(Cropped(), np.stack(p)[None], np.zeros((1, 64, 64), np.float32),
                             ft.wavenumber(E), np.zeros((1, 2, 64, 64), np.float32))


def test_an_output_name_too_long_is_refused_before_the_work(raw, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(ft, "reconstruct", lambda *a, **k: calls.append(1))
    long = raw.with_name("a" * 300 + ".npz")
    assert cli.main(["reconstruct", str(raw), "-o", str(long)]) == 2
    assert "the file system allows" in one_line_error(capsys, "reconstruct") and not calls


def _reconstruct_in_child(env):
    """A small CPU reconstruction in a fresh process with ``env`` added: its
    BackendError printed on stdout, if any."""
    code = ("import numpy as np, flowtie_fast as ft\n"
            "p = [np.ones((16, 16)) * (1 + 0.01 * i) for i in range(3)]\n"
            "try:\n"
            "    ft.reconstruct(ft.FocalTriplet(*p, dz=20.0, pixel_size=0.2, energy=3e5),\n"
            "                   backend='cpu')\n"
            "except ft.BackendError as e:\n"
            "    print('BackendError', e)\n")
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, **env),
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("env, names", [
    ({"NUMBA_THREADING_LAYER": "garbage"}, "NUMBA_THREADING_LAYER='garbage'"),
    ({"NUMBA_NUM_THREADS": "0"}, "NUMBA_NUM_THREADS='0'"),
])
def test_a_bad_numba_setting_is_a_backend_error_naming_it(env, names):
    run = _reconstruct_in_child(env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("BackendError backend: Numba does not start") and \
        names in run.stdout, run.stdout


@pytest.mark.parametrize("env, reason", [
    ({"NUMBA_NUM_THREADS": "abc"}, "invalid literal for int"),
    ({"NUMBA_OPT": "abc"}, "supported values are 0, 1, 2, 3, and 'max'"),
])
def test_a_numba_setting_numba_cannot_parse_is_one_line_naming_it(env, reason):
    """Numba printed a RuntimeWarning with a Python traceback before the one-line
    BackendError (NUMBA_NUM_THREADS=abc), or before a successful run (NUMBA_OPT=abc)."""
    (name, value), = env.items()
    run = _reconstruct_in_child(env)
    assert run.returncode == 0 and run.stderr == "", run.stderr[-2000:]
    assert run.stdout.startswith(f"BackendError backend: Numba does not start: it cannot read "
                                 f"{name}={value!r} (") and reason in run.stdout, run.stdout
    assert len(run.stdout.strip().splitlines()) == 1


def disk_patterns(scan=(4, 4), det=16, radius=4.0):
    y, x = np.meshgrid(np.arange(det), np.arange(det), indexing="ij")
    disk = ((y - det / 2) ** 2 + (x - det / 2) ** 2 <= radius**2).astype(np.float32)
    return np.broadcast_to(100 * disk + 1, scan + (det, det)).copy()


def test_4dstem_refusals_name_the_cause():
    """A NaN in the patterns was reported as an empty mean pattern; a virtual
    disk smaller than a pixel as a dropped frame."""
    data = disk_patterns()
    bad = data.copy()
    bad[1, 1, 8, 8] = np.nan
    args = dict(dz=DZ, scan_step=PIXEL, k_sampling=0.05, energy=E, backend="cpu")
    with pytest.raises(ft.InputError,
                       match=r"zero: contains NaN or Inf \(at scan position \(1, 1\)"):
        ft.FocalTriplet.from_4dstem(data, bad, data, **args)
    with pytest.raises(ft.InputError, match="bf_radius: 0.001 mrad is smaller than half a "
                                            "detector pixel"):
        ft.FocalTriplet.from_4dstem(data, data, data, bf_radius=1e-3, **args)


def test_a_detector_centre_is_two_real_numbers():
    """center="88" was read digit by digit, a dict by its keys, (True, 8) as (1, 8),
    and a set in no set order."""
    data = disk_patterns()
    args = dict(dz=DZ, scan_step=PIXEL, k_sampling=0.05, energy=E, backend="cpu")
    for center in ("88", b"88", {8: 1, 9: 2}, {8, 9}, (True, 8), (8, np.bool_(False)),
                   (8, "8"), (8, 8, 8), [8], np.array([[8, 8]]), np.array([True, True]), 8.0):
        with pytest.raises(ft.InputError, match=r"^center: expected \(row, column\) in detector "
                                                r"pixels, two real numbers, got "):
            ft.FocalTriplet.from_4dstem(data, data, data, center=center, **args)
    for center in ((8, 8.0), [np.float32(8), np.int64(8)], np.array([8.0, 8.0]),
                   (np.array(8.0), 8)):
        t = ft.FocalTriplet.from_4dstem(data, data, data, center=center, **args)
        assert t.reductions[1].detector.center == (8.0, 8.0)


def test_4dstem_data_beyond_float32_are_named_as_such():
    """data * 1e38 (finite float64) was 'minus: contains NaN or Inf' and data * 1e-50
    'intensity is zero everywhere (a dropped frame?)'."""
    data = disk_patterns().astype(np.float64)
    args = dict(dz=DZ, scan_step=PIXEL, k_sampling=0.05, energy=E, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^minus: pattern values up to 1.01e\+40 \(sums "
                                            r"up to .*\) are too large for the float32 "
                                            r"reduction, whose sums would overflow; rescale the "
                                            r"data \(e.g. multiply by 1e-12\)$"):
        ft.FocalTriplet.from_4dstem(data * 1e38, data * 1e38, data * 1e38, **args)
    with pytest.raises(ft.InputError, match=r"^zero: pattern values of at most 1.01e-48 are too "
                                            r"small for the float32 reduction \(below 1.18e-38, "
                                            r"they sum to zero\); rescale the data \(e.g. "
                                            r"multiply by 1e\+48\)$"):
        ft.FocalTriplet.from_4dstem(data, data * 1e-50, data, **args)
    # A pattern the sample for the mean does not see overflows in the pass itself.
    big = disk_patterns(scan=(40, 4)).astype(np.float64)
    big[1, 1] *= 1e38
    with pytest.raises(ft.InputError, match=r"^plus: values up to 1.01e\+40 \(at scan "
                                            r"position \(1, 1\)\) are too large for the "
                                            r"float32 reduction, whose sums overflow"):
        ft.FocalTriplet.from_4dstem(big / 1e38 + 1, big / 1e38 + 1, big, **args)
    t = ft.FocalTriplet.from_4dstem(data * 1e20, data * 1e20, data * 1e20, **args)
    assert np.isfinite(t.zero).all()  # large, but within float32's sums


def test_an_empty_bright_field_disk_is_named_not_called_a_dropped_frame():
    """A bright-field disk of 2 px centred between pixels: the default 'bf' disk
    (a quarter of it, 0.5 px) held no pixel and the planes were 'a dropped frame'."""
    y, x = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    disk = ((y - 7.5) ** 2 + (x - 7.5) ** 2 <= 4.0).astype(np.float32)
    data = np.broadcast_to(100 * disk + 1, (4, 4, 16, 16)).copy()
    args = dict(dz=DZ, scan_step=PIXEL, k_sampling=0.05, energy=E, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^bf_radius: the 'bf' disk of .* mrad \(the "
                                            r"default, a quarter of the .* mrad bright-field "
                                            r"disk\) holds no detector pixel around the centre "
                                            r"\(7.5, 7.5\) .*; give a larger one, e.g. "
                                            r"bf_radius=0.731$"):
        ft.FocalTriplet.from_4dstem(data, data, data, **args)
    t = ft.FocalTriplet.from_4dstem(data, data, data, bf_radius=0.731, **args)
    assert t.zero.min() > 0
    assert ft.FocalTriplet.from_4dstem(data, data, data, virtual="bf-full", **args).shape == \
        (4, 4)


def test_a_gradient_beyond_float32_is_named_as_such(plan):
    """A finite gradient of 1e300 rad/Å was said to contain NaN (by icom)."""
    with pytest.raises(ft.InputError, match=r"^gradient: values up to 1e\+300 exceed the range "
                                            r"of float32 \(3.4e\+38\); a phase gradient is a "
                                            r"few rad/Å"):
        ft.reconstruct(triplet(gradient=np.full((2, N, N), 1e300)), method="icom",
                       backend="cpu")
    with pytest.raises(ft.InputError, match="^gradient: values up to 1e\\+300 exceed"):
        ft.Plan((N, N), PIXEL, DZ, E, method="icom", backend="cpu", warmup=False).solve(
            *planes(), gradient=np.full((2, N, N), -1e300))
    # within float32, but no deflection reaches it: refused where the triplet is made
    with pytest.raises(ft.InputError, match=r"^gradient: values up to 1e\+30 rad/Å, expected "
                                            r"at most 319\.1 \(it would deflect"):
        triplet(gradient=np.full((2, N, N), 1e30))


def test_plane_positions_are_real_numbers():
    """FocalSeries took booleans (False, True) as 0 and 1 Å and strings as numbers."""
    a, b, c = planes()
    for z in ([False, True], [np.False_, 40.0], ["-40", "40"], [b"0", 40.0], "ab",
              np.array([False, True]), np.array(["0", "40"]), [[0.0], [40.0]], None, 5.0):
        with pytest.raises(ft.InputError, match=r"^z: expected 2 plane positions in Å \(real "
                                                r"numbers\), got "):
            ft.FocalSeries([a, b], z, PIXEL, E)
    with pytest.raises(ft.InputError, match=r"^z: expected plane positions in Å"):
        ft.focal_weights([False, True, 2.0])
    with pytest.raises(ft.InputError, match=r"^z0: expected a real number, got '0'"):
        ft.focal_weights([-1.0, 0.0, 1.0], z0="0")
    s = ft.FocalSeries([a, b, c], np.array([-40, 0, 40]), PIXEL, E)
    assert s.z.tolist() == [-40.0, 0.0, 40.0]
    assert ft.FocalSeries([a, b, c], (np.float32(-40), 0, np.int64(40)), PIXEL, E).z[2] == 40.0


def test_evaluate_checks_its_arguments_before_any_work(tmp_path, monkeypatch):
    """repeats=2.5, paths=None raised TypeError; model with methods=['tie'] was
    ignored; methods=['tie', 'bogus'] failed after tie had run."""
    from flowtie_fast.evaluation import evaluate as ev

    ft.save(tmp_path / "t.npz", ft.Dataset(*planes(), dz=(DZ, DZ), scan_step=(PIXEL, PIXEL),
                                           energy=E, phase_gt=np.zeros((N, N))))
    ran = []
    monkeypatch.setattr(ev, "timed_reconstruct", lambda *a, **k: ran.append(a))
    for kwargs, says in (
            (dict(repeats=2.5), r"^repeats: expected a positive integer, got 2.5$"),
            (dict(repeats="x"), r"^repeats: expected a positive integer, got 'x'$"),
            (dict(repeats=0), r"^repeats: expected a positive integer, got 0$"),
            (dict(paths=None), r"^paths: expected a file or folder path .* got NoneType$"),
            (dict(paths=b"dir"), r"^paths: expected a file or folder path .* got bytes$"),
            (dict(paths=[]), r"^paths: expected .* got an empty list$"),
            (dict(model="no-such.pt"), r"^model: applies to flowtie only, which methods "
                                       r"\['tie'\] leave out$"),
            (dict(methods=["tie", "bogus"]), r"^methods: expected names from .*, got "
                                             r"'bogus'$"),
            (dict(methods=["tie", "tie"]), r"^methods: each method once, got 'tie' more "),
            (dict(methods=[]), r"^methods: expected a list of method names"),
            (dict(triplet_options="bf"), r"^triplet_options: expected a dict"),
            (dict(progress="yes"), r"^progress: expected a callable or None")):
        args = {"paths": tmp_path, "methods": ["tie"], "repeats": 1, **kwargs}
        with pytest.raises(ft.InputError, match=says):
            ev.evaluate(args.pop("paths"), **args)
    with pytest.raises(ft.BackendError, match="backend: expected"):
        ev.evaluate(tmp_path, methods=["tie"], backend="tpu")
    assert ran == []
    monkeypatch.undo()
    with pytest.raises(ft.InputError, match=r"^repeats: expected a positive integer"):
        ev.timed_reconstruct(triplet(), "tie", "cpu", 2.5)


def test_evaluate_and_model_paths_say_what_is_wrong(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path / "nosuchdir")]) == 2
    assert "no such file or folder" in one_line_error(capsys, "evaluate")
    from flowtie_fast.flow.infer import load_model

    pytest.importorskip("torch")
    with pytest.raises(ft.InputError, match="is a folder, expected a TorchScript file"):
        load_model(str(tmp_path))


def test_ctrl_c_while_the_command_line_loads_is_one_line(monkeypatch, capsys):
    """Ctrl-C while `flowtie` imported its modules printed a traceback; the
    entry point imports nothing heavy before its handler is in place."""
    from flowtie_fast import _entry

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(_entry.importlib, "import_module", interrupted)
    assert _entry.main(["--version"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flowtie: interrupted while starting; nothing was done"]
    code = "import sys, flowtie_fast._entry; print('numpy' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout.strip() == "False", run.stderr


# --------------------------------------------------------------------------- data, batches, ranges


def test_train_never_writes_its_checkpoint_over_a_training_file(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    case = data / "c1.npz"
    ft.save(case, triplet(planes(dtype=np.float64)))
    before = case.read_bytes()
    for target in ([str(case)], [str(data)]):
        argv = ["train", *target, "--checkpoint", str(case), "--overwrite", "--steps", "1",
                "-o", str(tmp_path / "m.pt")]
        assert cli.main(argv) == 2
        assert "--checkpoint: " in one_line_error(capsys, "train")
    assert case.read_bytes() == before


def test_a_batch_refused_for_its_scale_writes_nothing(plan):
    one = np.stack(planes())
    out = np.full((2, N, N), 7.0, np.float32)
    with pytest.raises(ft.InputError, match=r"stack\[1\]: triplet: a mean in-focus intensity"):
        plan.solve_batch(np.stack([one, one * np.float32(1e20)]), out=out)
    assert np.all(out == 7.0)


def test_masked_inputs_are_refused_by_every_entry_point(plan):
    p = planes()
    masked = np.ma.masked_array(p[1], p[1] > 1.1)
    with pytest.raises(ft.InputError, match="zero: masked arrays are not supported"):
        plan.solve(p[0], masked, p[2])
    with pytest.raises(ft.InputError, match="gradient: masked arrays are not supported"):
        triplet(gradient=np.ma.masked_array(np.zeros((2, N, N)), False))
    with pytest.raises(ft.InputError, match="stack: masked arrays are not supported"):
        plan.solve_batch(np.ma.masked_array(np.stack([np.stack(p)]), False))


def test_a_centre_of_mass_disk_under_a_pixel_is_refused():
    data = disk_patterns()
    with pytest.raises(ft.InputError, match="com_radius: 0.001 mrad is smaller than half a "
                                            "detector pixel"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=DZ, scan_step=PIXEL, k_sampling=0.05,
                                    energy=E, com_radius=1e-3, backend="cpu")


@pytest.mark.parametrize("z, z0, match", [
    ([-1e300, 0.0, 1e300], 0.0, "z: expected planes 0.001 to 1e\\+08 Å apart"),
    ([-1e-12, 0.0, 1e-12], 0.0, "z: expected planes 0.001 to 1e\\+08 Å apart"),
    ([-20.0, 0.0, 20.0], 1e3, "z0: expected a plane within one span"),
])
def test_focal_series_spacing_is_held_to_the_dz_range(z, z0, match):
    with pytest.raises(ft.InputError, match=match):
        ft.FocalSeries(planes(), z, PIXEL, E, z0=z0)


def test_an_hdf5_key_given_twice_is_refused(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "both.h5"
    ft.save(path, triplet(planes(dtype=np.float64)))
    with h5py.File(path, "a") as f:
        f.create_dataset("dz", data=np.array([20.0, 20.0]))
        f.attrs["dz"] = np.array([999.0, 999.0])
    with pytest.raises(ft.InputError, match="'dz' is both a dataset and a root attribute"):
        ft.load(path)


def test_gd_refuses_a_step_that_underflows(monkeypatch):
    """gd returned a zero phase marked converged when |A d|² underflowed."""
    from flowtie_fast import solvers

    monkeypatch.setitem(solvers._INTENSITY_SCALE, np.float32, (1e-40, 1e12))
    p = [a * np.float32(1e-20) for a in planes()]
    with pytest.raises(ResultError, match="gd: the descent step underflows .* rescale them"):
        ft.reconstruct(triplet(p), method="gd", backend="cpu")
    # planes of a mean of 1 without lateral structure: rescaling cannot help
    flat = [np.full((32, 32), v, np.float32) for v in (0.98, 1.0, 1.02)]
    with pytest.raises(ResultError, match=r"mean intensity 1\); their mean is already of order "
                                          r"1: use dtype='float64' or method='tie'"):
        ft.reconstruct(triplet(flat), method="gd", backend="cpu")


def test_options_a_method_would_ignore_are_refused():
    t = triplet()
    for options, match in ((dict(model="default"), "model: applies to method 'flowtie'"),
                           (dict(tol=1e-3), "tol: applies to methods 'tie-exact' and 'gd'"),
                           (dict(preconditioner="none"), "preconditioner: applies to method")):
        with pytest.raises(ft.InputError, match=match):
            ft.reconstruct(t, method="tie", backend="cpu", **options)
    with pytest.raises(ft.InputError, match="floor: expected a fraction"):
        ft.reconstruct(t, method="tie", backend="cpu", floor=1e300)
    with pytest.raises(ft.InputError, match="alpha: expected a Tikhonov parameter"):
        ft.reconstruct(t, method="tie", backend="cpu", alpha=1e300)


def test_small_api_edges_raise_input_errors(tmp_path):
    path = tmp_path / "t.h5"
    ft.save(path, triplet(planes(dtype=np.float64)))
    ds = ft.load(path)
    ds.close()
    with pytest.raises(ft.InputError, match="dataset: its HDF5 file is closed"):
        ds.triplet()
    for bad in (None, b"t.npz", 3):
        with pytest.raises(ft.InputError, match="path: expected a file path"):
            ft.load(bad)
    for energy in (0, -1, "x"):
        with pytest.raises(ft.InputError, match="energy: expected"):
            ft.wavelength(energy)
    with pytest.raises(ft.InputError, match="z: expected finite plane positions"):
        ft.focal_weights([0.0, np.nan, 2.0])
    # As FocalSeries holds them: planes at least 1e-3 Å apart, within 1e8 Å of z0.
    for z, z0 in (([0.0, 1e-12, 1.0], 0.0), ([-1.0, 0.0, 1.0], 2e8)):
        with pytest.raises(ft.InputError, match="z: expected planes 0.001 to 1e.08 Å apart"):
            ft.focal_weights(z, z0)
    assert ft.focal_weights([-1e-3, 0.0, 1e-3])[1][2] == pytest.approx(500.0)
    with pytest.raises(ft.InputError, match="wisdom: .* is a folder"):
        ft.save_wisdom(tmp_path)


def test_a_flat_ground_truth_has_no_nmse_but_the_result_is_written(tmp_path, capsys):
    from flowtie_fast.evaluation.evaluate import phase_errors

    mse, nmse = phase_errors(np.ones((4, 4)), np.zeros((4, 4)))
    assert mse == 0.0 and np.isnan(nmse)
    path = tmp_path / "flat.npz"
    np.savez(path, format="flowtie_fast/1", kind="triplet", minus=planes()[0], zero=planes()[1],
             plus=planes()[2], dz=[DZ, DZ], scan_step=[PIXEL, PIXEL], energy=E,
             phase_gt=np.zeros((N, N)))
    assert cli.main(["reconstruct", str(path), "-o", str(tmp_path / "o.npz")]) == 0
    assert (tmp_path / "o.npz").is_file()


def test_simulate_refuses_a_grid_that_cannot_hold_its_detector():
    """--sampling 0.9 wrote a probe truncated at 7 mrad for a 40 mrad detector."""
    from flowtie_fast.simulation.simulate import check_settings

    with pytest.raises(ft.InputError, match="potential_sampling: 0.9 Å resolves angles up to"):
        check_settings([5.65], potential_sampling=0.9)
    with pytest.raises(ft.InputError, match="max_angle: the detector \\(1 mrad\\)"):
        check_settings([5.65], max_angle=1.0)
    assert check_settings([5.65]) == (5.65,)


# --------------------------------------------------------------------------- wisdom, writers, models


def test_a_wisdom_path_that_cannot_be_written_is_refused_before_planning(tmp_path,
                                                                          monkeypatch):
    """Plan(wisdom="/proc/w.wis") planned, then raised FileNotFoundError on the
    temporary."""
    import errno

    from flowtie_fast import plan as plan_module

    planned = []
    monkeypatch.setattr(plan_module, "TIESolver",
                        lambda *a, **k: planned.append(1) or pytest.fail("planned"))
    (tmp_path / "reg").write_text("a file")
    paths = [(tmp_path / "reg" / "w.wis", r"^wisdom: '.*w.wis' cannot be created: '.*reg' is "
                                          r"not a folder$"),
             (str(tmp_path / ("w" * 300)), r"^wisdom: the name 'w{40}'... has 300 bytes")]
    if os.path.isdir("/proc"):
        paths.append(("/proc/w.wis", r"^wisdom: '/proc/w.wis' cannot be"))
    for path, says in paths:
        with pytest.raises(ft.InputError, match=says):
            ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", wisdom=path, warmup=False)
    real_open = os.open

    def refuse(path, *args, **kwargs):  # a folder that takes no new files
        if "flowtie-tmp" in str(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ft.InputError, match=r"^wisdom: '.*w.wis' cannot be created in '.*' "
                                            r"\(Permission denied\); give a path in a folder "
                                            r"you can write$"):
        ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", wisdom=tmp_path / "w.wis", warmup=False)
    assert planned == [] and sorted(p.name for p in tmp_path.iterdir()) == ["reg"]



def test_a_file_that_is_not_wisdom_is_never_replaced(tmp_path):
    """Plan(wisdom=...) replaced a user's .npz of three arrays with FFTW wisdom."""
    path = tmp_path / "exp.npz"
    np.savez(path, np.arange(10.0), np.ones(5), np.zeros(3))
    before = path.read_bytes()
    with pytest.raises(ft.BackendError, match="is not an FFTW wisdom file written by"):
        ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", wisdom=path, warmup=False)
    assert path.read_bytes() == before
    wisdom = tmp_path / "plans.wisdom"
    ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", wisdom=wisdom, warmup=False)
    assert ft.load_wisdom(wisdom) is True
    for bad in ("", 123, None):
        with pytest.raises(ft.InputError, match="wisdom: expected a file path"):
            ft.load_wisdom(bad)


def test_an_output_created_by_a_concurrent_writer_is_kept(tmp_path):
    """Two runs without --overwrite both succeeded, the second replacing the first."""
    from flowtie_fast.files import atomic_path

    path = tmp_path / "new.npz"
    with pytest.raises(ft.InputError, match="was created meanwhile by another writer"):
        with atomic_path(path, overwrite=False) as tmp:
            tmp.write_bytes(b"mine")
            path.write_bytes(b"theirs")  # the other writer finishes first
    assert path.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["new.npz"]  # no temporary left
    with atomic_path(tmp_path / "free.npz", overwrite=False) as tmp:
        tmp.write_bytes(b"ok")
    assert (tmp_path / "free.npz").read_bytes() == b"ok"


def test_flow_model_arguments_are_checked():
    pytest.importorskip("torch")
    from flowtie_fast.flow.infer import FlowEnsemble, load_model

    for bad in ("", 42, ["default"], object()):
        with pytest.raises(ft.InputError, match="model: expected a shipped name"):
            load_model(bad)
    with pytest.raises(ft.InputError, match="device: expected a string"):
        load_model("fast", device=None)
    with pytest.raises(ft.InputError, match="model: the members of an ensemble are FlowModel"):
        FlowEnsemble(["fast"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ft.BackendError, match="PyTorch sees no CUDA device"):
            load_model("fast", device="cuda")


def test_gd_refuses_a_first_step_without_progress():
    """gd in float32 reported convergence after one step that changed nothing
    (one pixel of 1e9 in a plane of ones)."""
    h = np.ones((64, 64), np.float32)
    h[10, 10] = 1e9
    t = ft.FocalTriplet(h, h, h * np.float32(1.0001), dz=DZ, pixel_size=PIXEL, energy=E)
    with pytest.raises(ResultError, match="gd: the first step did not lower the objective"):
        ft.reconstruct(t, method="gd", backend="cpu")


def test_more_inputs_that_are_refused(tmp_path, capsys):
    path = tmp_path / "gt.npz"
    np.savez(path, format="flowtie_fast/1", kind="triplet", minus=planes()[0], zero=planes()[1],
             plus=planes()[2], dz=[DZ, DZ], scan_step=[PIXEL, PIXEL], energy=E,
             phase_gt=np.full((N, N), np.nan))
    with pytest.raises(ft.InputError, match="'phase_gt' contains NaN or Inf"):
        ft.load(path)
    solver = ft.PoissonSolver((N, N), PIXEL, backend="cpu")
    with pytest.raises(ft.InputError, match="scale: expected a finite number"):
        solver.solve(planes()[0], scale=np.nan)
    from flowtie_fast.simulation.simulate import check_settings

    with pytest.raises(ft.InputError, match="potential_sampling: expected 0.005 to 1"):
        check_settings([10.0], potential_sampling=1e-9)
    from flowtie_fast.io import load_raw_triplet

    with pytest.raises(ft.InputError, match="dz: expected a positive"):
        load_raw_triplet("a.blo", "b.blo", "c.blo", dz=-5)
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--model", "fast"]) == 2
    assert "apply to flowtie only" in one_line_error(capsys, "evaluate")


def test_a_centre_off_the_detector_and_odd_plane_positions_are_named():
    data = disk_patterns()
    with pytest.raises(ft.InputError, match="center: expected \\(row, column\\) in detector "
                                            "pixels on the"):
        ft.FocalTriplet.from_4dstem(data, data, data, dz=DZ, scan_step=PIXEL, k_sampling=0.05,
                                    energy=E, center=(-10.0, -10.0), backend="cpu")
    for z in ("abc", [[0.0, 1.0], [2.0, 3.0]]):
        with pytest.raises(ft.InputError, match="z: expected"):
            ft.focal_weights(z)


def test_demo_options_of_the_other_demo_are_refused(capsys):
    assert cli.main(["demo", "--size", "64"]) == (2 if importlib.util.find_spec("abtem")
                                                  else 0)
    capsys.readouterr()
    assert cli.main(["demo", "--fresnel", "--size", "32", "--png", "x.png"]) == 2
    assert "--png: the Fresnel demo writes no figure" in one_line_error(capsys, "demo")


def test_a_checkpoint_named_as_data_is_refused(tmp_path, capsys):
    """--checkpoint data/ck.npz put a PyTorch file among the data: every later
    train or evaluate of that folder failed on it."""
    data = tmp_path / "data"
    data.mkdir()
    ft.save(data / "c1.npz", triplet(planes(dtype=np.float64)))
    argv = ["train", str(data), "--checkpoint", str(data / "ck.npz"), "--steps", "1",
            "-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 2
    assert one_line_error(capsys, "train").startswith(
        "flowtie train: error: --checkpoint: expected a file name ending in .ckpt or .pt or "
        ".pth, got ")
    assert sorted(p.name for p in data.iterdir()) == ["c1.npz"]
