"""Hostile inputs: odd arrays, files and streams are refused naming the argument,
never taken silently or reported as an unexpected error."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

import flowtie_fast as ft
from flowtie_fast import cli

N, PIXEL, DZ, E = 32, 0.2, 20.0, 300e3


def planes(seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    base = 1.0 + 0.2 * np.cos(2 * np.pi * y / N) * np.sin(2 * np.pi * x / N)
    return [base * (1 + 0.02 * s) + 0.01 * rng.random((N, N)) for s in (-1, 0, 1)]


def patterns(shape=(6, 6, 16, 16), seed=0):
    rng = np.random.default_rng(seed)
    ky, kx = np.mgrid[:shape[2], :shape[3]]
    disk = (ky - shape[2] / 2 + 0.5) ** 2 + (kx - shape[3] / 2 + 0.5) ** 2 < (shape[2] / 4) ** 2
    return [rng.poisson(disk * 100.0 + 1, size=shape).astype(np.uint16) for _ in range(3)]


STEM = dict(dz=DZ, scan_step=0.2, k_sampling=0.05, energy=E, backend="cpu", register=False)


def test_masked_4dstem_data_are_refused_naming_the_dataset():
    data = patterns()
    masked = np.ma.masked_array(data[1], mask=data[1] > 50)
    with pytest.raises(ft.InputError, match="^zero: masked arrays are not supported"):
        ft.FocalTriplet.from_4dstem(data[0], masked, data[2], **STEM)


def _corrupt_h5(path, data):
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        for k, d in zip(("minus", "zero", "plus"), data):
            f.create_dataset(k, data=d, chunks=(1, 1) + d.shape[2:], compression="gzip")
        f.attrs.update(dict(dz=[DZ, DZ], scan_step=[0.2, 0.2], energy=E,
                            k_sampling=[0.05, 0.05]))
    with h5py.File(path, "r") as f:
        offset = f["zero"].id.get_chunk_info(20).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xde\xad\xbe\xef" * 8)


def test_an_hdf5_file_unreadable_mid_reduction_is_an_input_error_naming_it(tmp_path, capsys):
    path = tmp_path / "corrupt.h5"
    _corrupt_h5(path, patterns())
    with ft.load(path) as ds:
        with pytest.raises(ft.InputError, match=r"^corrupt\.h5: its 4D-STEM data cannot be "
                                                r"read .*filter"):
            ds.triplet(backend="cpu", register=False)
    assert cli.main(["reconstruct", str(path), "-o", str(tmp_path / "o.npz"),
                     "--backend", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowtie reconstruct: error: corrupt.h5: its 4D-STEM data")
    assert not (tmp_path / "o.npz").exists()


def test_hdf5_datasets_closed_during_the_reduction_are_named(tmp_path):
    h5py = pytest.importorskip("h5py")
    data = patterns()
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        for i, d in enumerate(data):
            f.create_dataset(f"s{i}", data=d, chunks=(1, 1, 16, 16))
    f = h5py.File(path, "r")

    class ClosesItsFile:
        """An HDF5 dataset whose file is closed while it is being read."""

        def __init__(self, d):
            self.d, self.calls = d, 0
            self.shape, self.dtype, self.ndim = d.shape, d.dtype, d.ndim

        def __getitem__(self, key):
            self.calls += 1
            if self.calls == 3:
                f.close()
            return self.d[key]

    with pytest.raises(ft.InputError, match="HDF5 data cannot be read"):
        ft.FocalTriplet.from_4dstem(f["s0"], ClosesItsFile(f["s1"]), f["s2"], **STEM,
                                    chunk_bytes=4096)


@pytest.mark.parametrize("key,value,says", [
    ("scan_step", [2e-11, 2e-11], r"'scan_step' must be 0.0001 to 1e\+07 Å"),
    ("energy", 300.0, r"'energy' must be 1000 to 1e\+07 eV \(e.g. 300e3 for 300 keV\)"),
    ("dz", [20e9, 20e9], r"'dz' must be 0.001 to 1e\+08 Å"),
])
def test_calibrations_out_of_range_in_a_file_name_the_file_and_key(tmp_path, key, value, says):
    p = planes()
    fields = dict(minus=p[0], zero=p[1], plus=p[2], dz=[DZ, DZ], scan_step=[0.2, 0.2],
                  energy=E)
    fields[key] = np.asarray(value)
    np.savez(tmp_path / "slip.npz", **fields)
    with pytest.raises(ft.InputError, match=f"^slip.npz: {says}"):
        ft.load(tmp_path / "slip.npz")


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of a duplicate name
        for name, value in members:
            buf = io.BytesIO()
            np.save(buf, value)
            z.writestr(name, buf.getvalue())


@pytest.mark.parametrize("extra", ["zero.npy", "zero"])
def test_an_npz_holding_a_key_twice_is_refused(tmp_path, extra):
    p = planes()
    members = [("minus.npy", p[0]), ("zero.npy", p[1]), ("plus.npy", p[2]),
               ("dz.npy", np.array([DZ, DZ])), ("scan_step.npy", np.array([0.2, 0.2])),
               ("energy.npy", np.array(E)), (extra, p[1] * 5)]
    _zip(tmp_path / "twice.npz", members)
    with pytest.raises(ft.InputError, match=r"^twice.npz: 'zero' is stored twice"):
        ft.load(tmp_path / "twice.npz")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_an_output_path_ending_in_a_separator_is_refused(tmp_path, capsys, suffix):
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    target = str(tmp_path / f"out{suffix}") + "/"
    with pytest.raises(ft.InputError, match=r"^path: .* ends with '/'"):
        ft.save(target, t)
    source = ft.save(tmp_path / f"in{suffix}", t)
    assert cli.main(["reconstruct", str(source), "-o", target, "--backend", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output:" in err[0] and "ends with '/'" in err[0]
    with pytest.raises(ft.InputError, match=r"^path: .* ends with '/'"):
        ft.load(str(source) + "/")
    assert not (tmp_path / f"out{suffix}").exists()


def test_a_console_that_cannot_print_the_path_does_not_turn_success_into_an_error(tmp_path):
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "entrée.npz", t)
    out = tmp_path / "résultat.npz"
    env = {"PYTHONIOENCODING": "ascii", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                          str(source), "-o", str(out), "--backend", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "r\\xe9sultat.npz" in run.stdout
    with np.load(out) as written:
        assert np.isfinite(written["phase"]).all()


@pytest.mark.parametrize("value", ["100000", "0", "-2", "four", "4,,2", "8,5000"])
def test_an_omp_thread_count_the_runtimes_cannot_take_is_refused_naming_it(tmp_path, value):
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "NUMBA_", "FLOWTIE_"))}
    run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                          str(source), "-o", str(tmp_path / "out.npz"), "--backend", "cpu",
                          "--kernels", "numba"],
                         capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": value},
                         timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and f"OMP_NUM_THREADS={value!r}" in run.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("name,value", [("OMP_WAIT_POLICY", "bogus"),
                                        ("OMP_WAIT_POLICY", "sleep"),
                                        ("GOMP_SPINCOUNT", "-1"), ("GOMP_SPINCOUNT", "lots")])
def test_an_omp_wait_policy_the_runtimes_would_ignore_is_refused_naming_it(tmp_path, name,
                                                                          value):
    """libgomp prints its own message for these and goes on spinning by its
    default: the backend refuses them in one line before any runtime loads."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OMP_", "GOMP_", "NUMBA_", "FLOWTIE_"))}
    run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                          str(source), "-o", str(tmp_path / "out.npz"), "--backend", "cpu",
                          "--kernels", "numba"],
                         capture_output=True, text=True, env={**env, name: value}, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr.count("\n") == 1 and f"{name}={value!r}" in run.stderr, run.stderr
    assert "libgomp" not in run.stderr
    assert not (tmp_path / "out.npz").exists()


def test_usual_omp_wait_policies_are_accepted(monkeypatch):
    from flowtie_fast import _threads

    for policy, spin in (("PASSIVE", ""), ("active", "0"), (" Passive ", "10k"), ("", "INFINITE"),
                         ("", "300000")):
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)
        monkeypatch.setenv("GOMP_SPINCOUNT", spin)
        _threads.check_wait_policy()


def test_spin_counts_libgomp_reads_are_accepted_and_those_it_ignores_refused(monkeypatch):
    """libgomp reads the suffix in either case, after spaces, and a count up to
    2**64 - 1; it ignores (with its own message) a count beyond that."""
    from flowtie_fast import _threads

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for spin in ("10m", "1g", "2t", "10 k", "+10", "18446744073709551615"):
        monkeypatch.setenv("GOMP_SPINCOUNT", spin)
        _threads.check_wait_policy()
    for spin in ("18446744073709551616", "1" * 5000, "10kk", "1e5"):
        monkeypatch.setenv("GOMP_SPINCOUNT", spin)
        with pytest.raises(ft.BackendError, match="GOMP_SPINCOUNT="):
            _threads.check_wait_policy()


def test_a_usual_omp_thread_count_is_accepted(monkeypatch):
    from flowtie_fast import _threads

    for value in ("1", "2", " 4 ", "4,2", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        _threads.check_thread_count()


def test_planes_that_underflow_in_float32_are_named_as_such():
    tiny = ft.FocalTriplet(*[p * 1e-100 for p in planes()], dz=DZ, pixel_size=PIXEL, energy=E)
    with pytest.raises(ft.InputError, match=r"^minus: values up to .* underflow to zero in "
                                            r"float32; .*dtype='float64'"):
        ft.reconstruct(tiny, backend="cpu")
    assert np.isfinite(ft.reconstruct(tiny, backend="cpu", dtype="float64").phase).all()


def test_an_all_zero_in_focus_scan_is_a_dropped_frame_from_the_start():
    data = patterns()
    with pytest.raises(ft.InputError, match=r"^zero: every sampled pattern is zero "
                                            r"everywhere \(a dropped frame\?\)"):
        ft.FocalTriplet.from_4dstem(data[0], np.zeros_like(data[1]), data[2], **STEM)


def test_a_plan_batch_that_is_no_array_names_its_type():
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^stack: expected an array .* got list$"):
        plan.solve_batch([[p.tolist() for p in planes()]])


def test_plane_positions_of_another_type_are_refused_in_one_line():
    stack = planes()
    with pytest.raises(ft.InputError) as info:
        ft.FocalSeries(stack, np.array([1, 2, 3], "datetime64[s]"), PIXEL, E)
    assert "\n" not in str(info.value) and str(info.value).startswith("z")


def test_from_reductions_refuses_a_counts_that_is_not_a_bool():
    from flowtie_fast.stem.focal import reduce_triplet
    reductions, _ = reduce_triplet(*patterns(), 0.05, E, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^counts: expected True or False, got 'no'$"):
        ft.FocalTriplet.from_reductions(reductions, DZ, 3.0, counts="no", register=False)


def test_from_reductions_refuses_counts_true_of_patterns_that_are_not_counts():
    """Floating-point patterns (gain-corrected, normalised) said to be counts took
    Poisson noise from their means in the wrong units without a word: refused,
    naming counts, the value that is no whole number and what is expected."""
    from flowtie_fast.stem.focal import reduce_triplet
    data = [p * np.float32(0.37) for p in patterns()]
    reductions, counted = reduce_triplet(*data, 0.05, E, backend="cpu")
    assert not counted
    with pytest.raises(ft.InputError, match=r"^counts: True, but the 'bf' image of minus holds "
                                            r"[0-9.e+]+ \(dtype float\d+\), not a whole number "
                                            r"of counts; expected .*integer electron counts.*"
                                            r"or counts=False"):
        ft.FocalTriplet.from_reductions(reductions, DZ, 3.0, counts=True, register=False)
    # the same patterns as counts=False, and integer counts as counts=True, are taken
    ft.FocalTriplet.from_reductions(reductions, DZ, 3.0, counts=False, register=False)
    reductions, counted = reduce_triplet(*patterns(), 0.05, E, backend="cpu")
    t = ft.FocalTriplet.from_reductions(reductions, DZ, 3.0, counts=counted, register=False)
    assert counted and t.noise.source == "poisson"


def test_a_centre_of_mass_beyond_the_detector_is_refused():
    """Dark-subtracted patterns whose sums are near zero gave a centre of mass of
    ~70 1/Å on a detector of 0.5 1/Å, integrated without a word."""
    rng = np.random.default_rng(0)
    ky, kx = np.mgrid[:16, :16]
    disk = (ky - 7.5) ** 2 + (kx - 7.5) ** 2 < 16
    data = [disk * 100.0 + rng.normal(0, 5, (8, 8, 16, 16)) - (disk * 100.0).mean()
            for _ in range(3)]
    with pytest.raises(ft.InputError, match=r"^zero: a centre of mass of up to .* 1/Å lies "
                                            r"beyond the detector"):
        ft.FocalTriplet.from_4dstem(*data, **STEM)


def test_a_non_finite_poisson_com_noise_is_unknown_not_infinite():
    import dataclasses
    from flowtie_fast.stem.focal import com_poisson_noise, reduce_triplet
    reductions, _ = reduce_triplet(*patterns(), 0.05, E, backend="cpu")
    virtual = dict(reductions[1].virtual)
    virtual["whole"] = np.full(virtual["whole"].shape, 1e-300)
    virtual["bf-full"] = np.zeros(virtual["whole"].shape)
    assert com_poisson_noise(dataclasses.replace(reductions[1], virtual=virtual)) is None
    bf = np.array(reductions[1].virtual["bf-full"], np.float64)
    bf[0, 0] = np.nan
    virtual = {**reductions[1].virtual, "bf-full": bf}
    assert com_poisson_noise(dataclasses.replace(reductions[1], virtual=virtual)) is None


def test_4dstem_patterns_of_negative_sum_are_not_called_zero():
    data = [(p.astype(np.int16) - 30) for p in patterns()]
    with pytest.raises(ft.InputError, match=r"^zero: the sampled patterns sum to -\S+ on "
                                            r"average, expected a positive intensity"):
        ft.FocalTriplet.from_4dstem(*data, **STEM)


def test_a_virtual_image_the_beam_misses_is_named_not_a_dropped_frame():
    ky, kx = np.mgrid[:16, :16]
    ring = ((ky - 7.5) ** 2 + (kx - 7.5) ** 2) > 49
    data = [np.broadcast_to(ring * 5, (8, 8, 16, 16)).astype(np.uint16) for _ in range(3)]
    with pytest.raises(ft.InputError, match=r"^virtual: the 'bf' image of minus is zero "
                                            r"everywhere while its patterns hold counts"):
        ft.FocalTriplet.from_4dstem(*data, **STEM, center=(7.5, 7.5), bf_radius=5.0)


def test_a_strided_out_is_told_an_allocation_that_runs():
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    stack = np.stack([np.stack(planes()) for _ in range(2)]).astype(np.float32)
    out = np.broadcast_to(np.zeros((1, N, N), np.float32), (2, N, N))
    with pytest.raises(ft.InputError, match=r"^out: expected a C-contiguous array") as err:
        plan.solve_batch(stack, out=out)
    hint = str(err.value).split("e.g. ")[1].split("), got")[0]
    assert eval(hint, {"np": np}).shape == (2, N, N)


def test_a_gradient_of_absurd_magnitude_is_refused_not_integrated():
    """A finite gradient of 1e28 rad/Å (within float32) gave an icom phase of 1e27 rad."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    t.gradient = np.full((2, N, N), 1e28)
    for solve in (lambda: ft.reconstruct(t, method="icom", backend="cpu"),
                  lambda: ft.Plan((N, N), PIXEL, DZ, E, method="icom", backend="cpu",
                                  warmup=False).solve(*planes(), gradient=t.gradient)):
        with pytest.raises(ft.InputError, match=r"^gradient: values up to 1e\+28 rad/Å, "
                                                r"expected at most 319\.1 "):
            solve()


def test_a_gradient_beyond_any_deflection_is_refused_where_it_is_given():
    """A centre of mass in 1/Å given 1000 times too large (peak 400 rad/Å,
    a deflection of 1.25 rad at 300 keV: no centre of mass reaches it) gave
    an icom phase 1000 times too strong without a word. Refused where it is
    given (the triplet, a Plan's solve), naming gradient, the deflection and
    the units expected; 20 rad/Å (63 mrad) is taken, and so is 400 rad/Å where
    no energy is known (TIESolver.integrate: the energy-free limit)."""
    rng = np.random.default_rng(3)
    slip = 400 * np.tanh(rng.standard_normal((2, N, N)))
    slip[0, 0, 0] = 400.0
    says = (r"^gradient: values up to 400 rad/Å, expected at most 319\.1 \(it would deflect "
            r"the electron by 1\.25 rad .* beyond the 1 rad any centre of mass reaches\); "
            r"check its units \(rad/Å: 2π × the centre of mass in 1/Å\)")
    with pytest.raises(ft.InputError, match=says):
        ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E, gradient=slip)
    plan = ft.Plan((N, N), PIXEL, DZ, E, method="icom", backend="cpu", warmup=False)
    with pytest.raises(ft.InputError, match=says):
        plan.solve(*planes(), gradient=slip)
    with pytest.raises(ft.InputError, match=r"expected at most 129\.1 \(it would deflect"):
        ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=60e3, gradient=slip / 2)
    fine = slip / 20
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E, gradient=fine)
    assert np.isfinite(ft.reconstruct(t, method="icom", backend="cpu").phase).all()
    plan.solve(*planes(), gradient=fine)
    solver = ft.TIESolver((N, N), PIXEL, backend="cpu")
    assert np.isfinite(solver.integrate(slip).phase).all()


def test_a_flowtie_plan_refuses_a_gradient_beyond_any_deflection():
    """A flowtie Plan read a measured gradient unchecked: 400 rad/Å (a centre
    of mass 1000 times too large) came back as its icom fallback's phase,
    1000 times too strong, under a warning that named only the flow. Refused
    before anything is written, as by the plans of the other methods."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    slip = 400 * np.tanh(rng.standard_normal((2, N, N)))
    slip[0, 0, 0] = 400.0
    plan = ft.Plan((N, N), PIXEL, DZ, E, method="flowtie", backend="cpu", warmup=False)
    out = np.full((N, N), 7.0, np.float32)
    with pytest.raises(ft.InputError, match=r"^gradient: values up to 400 rad/Å, expected "
                                            r"at most 319\.1 \(it would deflect"):
        plan.solve(*planes(), gradient=slip, out=out)
    assert (out == 7.0).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)  # the verdict is not under test
        plan.solve(*planes(), gradient=slip / 20, out=out)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("method", ["icom", "flowtie"])
def test_a_batch_with_one_absurd_gradient_is_refused_before_any_item_is_written(method):
    kw = {"uncertainty": False} if method == "flowtie" else {}
    plan = ft.Plan((N, N), PIXEL, DZ, E, method=method, backend="cpu", warmup=False, **kw)
    stack = np.stack([np.stack(planes(s)) for s in range(3)]).astype(np.float32)
    gradient = np.zeros((3, 2, N, N), np.float32)
    gradient[2] = 1e28
    out = np.full((3, N, N), 7.0, np.float32)
    with pytest.raises(ft.InputError, match=r"^stack\[2\]: gradient: values up to 1e\+28"):
        plan.solve_batch(stack, gradient=gradient, out=out)
    assert (out == 7.0).all()


def test_an_hdf5_write_that_fills_the_disk_is_an_oserror_not_a_crash(tmp_path):
    """HDF5 that met a failed write kept its file open, printed tracebacks from
    its destructors and crashed the interpreter at exit (SIGSEGV)."""
    pytest.importorskip("h5py")
    resource = pytest.importorskip("resource")
    script = (
        "import errno, numpy as np, flowtie_fast as ft\n"
        f"t = ft.FocalTriplet(*[np.full(({N}, {N}), 1.0 + 0.1 * s) for s in range(3)], "
        f"dz={DZ}, pixel_size={PIXEL}, energy={E})\n"
        "try:\n"
        f"    ft.save({str(tmp_path / 'out.h5')!r}, t)\n"
        "except OSError as exc:\n"
        "    assert exc.errno == errno.EFBIG, exc\n"
        "    print('refused:', exc)\n")

    def limit():  # files of at most 6 KiB: the write fails midway
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 10, 6 << 10))

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         preexec_fn=limit, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "refused: [Errno 27] path: " in run.stdout
    assert "Traceback" not in run.stderr
    assert os.listdir(tmp_path) == []


def test_sigterm_while_the_command_line_writes_leaves_no_temporary(tmp_path):
    """SIGTERM (how services and acquisition software stop a process) killed
    the command mid-write without a word, leaving its temporary beside the
    output."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    out = tmp_path / "out" / "phase.npz"
    script = (
        "import os, signal, sys, numpy as np\n"
        "from flowtie_fast import cli\n"
        "savez = np.savez\n"
        "def terminated_midway(f, **fields):\n"
        "    f.write(b'PK partial')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    savez(f, **fields)\n"
        "np.savez = terminated_midway\n"
        f"sys.exit(cli.main(['reconstruct', {str(source)!r}, '-o', {str(out)!r}, "
        "'--backend', 'cpu']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 143, (run.returncode, run.stderr[-2000:])
    assert run.stderr.strip().splitlines()[-1] == \
        "flowtie reconstruct: terminated; nothing half-written is left"
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("options", [dict(preconditioner="none"), dict(max_iter=3)])
def test_gd_stopped_by_max_iter_says_its_phase_is_not_the_solution(options):
    """Without the preconditioner gd ended its 200 iterations 98% away from the
    solution and returned that iterate without a word."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    with pytest.warns(ft.TrustWarning, match=r"^gd: stopped after \d+ iterations \(max_iter\)"):
        rec = ft.reconstruct(t, method="gd", backend="cpu", **options)
    assert rec.info["converged"] is False and rec.info["trust"].startswith("gd: stopped")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ft.TrustWarning)
        rec = ft.reconstruct(t, method="gd", backend="cpu")
    assert rec.info["converged"] and "trust" not in rec.info


def test_a_noise_or_gradient_set_on_a_triplet_after_it_was_made_is_checked_at_the_solve():
    """A negative noise variance set on the documented attribute gave a phase of
    2e3 rad without a word; a gradient set to text raised a bare ValueError."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    t.noise = ft.Noise((-1.0, -1.0, -1.0), "given")
    with pytest.raises(ft.InputError, match=r"^noise: expected 1 or 3 finite non-negative"):
        ft.reconstruct(t, backend="cpu")
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    t.gradient = "abc"
    with pytest.raises(ft.InputError, match=r"^gradient: expected a real array of shape"):
        ft.reconstruct(t, method="icom", backend="cpu")


def test_a_path_without_a_name_is_shown_as_given_not_as_an_empty_name(tmp_path, capsys):
    """``flowtie reconstruct .`` said "expected a .npz, .h5 or .hdf5 file, got ''"."""
    with pytest.raises(ft.InputError, match=r"^path: expected a \.npz, \.h5 or \.hdf5 file, "
                                            r"got '\.'$"):
        ft.load(".")
    assert cli.main(["reconstruct", ".", "-o", str(tmp_path / "o.npz"), "--backend",
                     "cpu"]) == 2
    assert capsys.readouterr().err.strip().endswith("file, got '.'")


def test_register_takes_a_numpy_bool_like_the_other_flags():
    """``register=np.True_`` (a flag read from an array or a config) was refused as
    "expected True, False or 'periodic', got np.True_" where flip= and counts=
    take it."""
    data = patterns()
    options = {**STEM, "register": np.bool_(False)}
    t = ft.FocalTriplet.from_4dstem(*data, **options)
    assert t.registration is None
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E, register=np.bool_(True))
    assert t.registration is not None
    with pytest.raises(ft.InputError, match=r"^register: expected True, False or 'periodic'"):
        ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E,
                        register=np.array("periodic"))


@pytest.mark.parametrize("change,says", [
    (dict(zero=planes()[1].astype(object)), r"^obj: 'zero' has dtype object; expected real"),
    (dict(zero=planes()[1] + 0j), r"^obj: 'zero' has dtype complex128"),
    (dict(energy=300.0), r"^obj: 'energy' must be 1000 to 1e\+07 eV"),
    (dict(gradient=np.full((2, N, N), np.nan)), r"^obj: 'gradient' contains NaN or Inf"),
    (dict(meta={"thickness": float("nan")}), r"^obj: 'thickness' must be a positive finite"),
    (dict(energy=None), r"^obj: cannot be written \(float\(\) argument"),
])
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_refuses_what_load_would_refuse_before_writing(tmp_path, change, says, suffix):
    """save wrote any Dataset it was given (object arrays pickled into the .npz,
    NaN gradients, an energy in keV), files that load then refused; others
    raised a bare TypeError or AttributeError."""
    p = planes()
    fields = dict(minus=p[0], zero=p[1], plus=p[2], dz=(DZ, DZ), scan_step=(0.2, 0.2),
                  energy=E)
    with pytest.raises(ft.InputError, match=says):
        ft.save(tmp_path / f"out{suffix}", ft.Dataset(**{**fields, **change}))
    assert os.listdir(tmp_path) == []


def test_a_dataset_of_no_plane_is_refused_when_made():
    """Dataset(zero=None) was taken, and refused only when saved (a bare
    AttributeError before that): refused as it is made, naming the plane."""
    p = planes()
    with pytest.raises(ft.InputError, match=r"^zero: expected a real array .* got NoneType"):
        ft.Dataset(minus=p[0], zero=None, plus=p[2], dz=(DZ, DZ), scan_step=(0.2, 0.2),
                   energy=E)


@pytest.mark.parametrize("method", ["icom", "tie"])
def test_a_mirror_plan_given_a_gradient_allocates_no_image(method):
    """The fd divergence of a measured gradient (icom, and the check of a TIE
    phase against it) made its face averages with np.roll: four images a
    solve on the mirror boundary."""
    from fields import least_peak_bytes
    n = 64  # an image of 16 KB: the tracker's few KB of Python objects are far less
    p = [np.tile(a, (2, 2)).astype(np.float32) for a in planes()]
    grad = np.zeros((2, n, n), np.float32)
    grad[1] = 0.01 * np.sin(2 * np.pi * np.arange(n) / n)
    plan = ft.Plan((n, n), PIXEL, DZ, E, method=method, backend="cpu", boundary="mirror")
    out = np.empty((n, n), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ft.TrustWarning)
        plan.solve(*p, gradient=grad, out=out)
        peak = least_peak_bytes(lambda: plan.solve(*p, gradient=grad, out=out))
    assert peak < n * n * 4 / 4, peak
    assert np.isfinite(out).all()


def test_a_refused_plan_solve_leaves_no_earlier_verdict_in_info():
    """plan.info kept the previous solve's verdict (its TrustWarning reason)
    after a refused solve or batch: a program reading it after the error saw
    a verdict on other data."""
    p = [a.astype(np.float32) for a in planes()]
    plan = ft.Plan((N, N), PIXEL, DZ, E, method="tie", backend="cpu")
    with pytest.warns(ft.TrustWarning):
        plan.solve(*p, noise=1e3)  # all noise: "no signal above the noise"
    assert "trust" in plan.info
    bad = [a.copy() for a in p]
    bad[1][0, 0] = np.nan
    with pytest.raises(ft.InputError, match="^zero: contains NaN"):
        plan.solve(*bad)
    assert plan.info == {}
    with pytest.warns(ft.TrustWarning):
        plan.solve(*p, noise=1e3)
    with pytest.raises(ft.InputError, match=r"^stack\[0\]: zero: contains NaN"):
        plan.solve_batch(np.stack(bad)[None])
    assert plan.info == {}


@pytest.mark.parametrize("pixel,dz", [(1e7, 1e-3), (1e7, DZ), (10.0, 1e-3)])
@pytest.mark.parametrize("method", ["tie-uniform", "tie", "tie-exact", "gd"])
def test_a_phase_whose_gradient_no_phase_has_is_refused_naming_the_stage(pixel, dz, method):
    """Parameters each within its range (a millimetre pixel, a 1e-3 Å defocus
    step) gave phases up to 1e19 rad and gradients of 1e11 rad/Å without a
    word; a result whose phase gradient is beyond GRADIENT_LIMIT, the bound on
    a measured gradient, is refused like a non-finite one, in a Plan too
    (without a gradient_out, by a lower bound from the phase's own size: it
    catches the gross cases)."""
    t = ft.FocalTriplet(*planes(), dz=dz, pixel_size=pixel, energy=E)
    says = (rf"^{method}: the result's phase gradient reaches at least .* beyond 319.1 rad/Å, "
            r"a deflection of 1 rad at k = 319.1 rad/Å")
    with pytest.raises(ft.ResultError, match=says):
        ft.reconstruct(t, method=method, backend="cpu")
    plan = ft.Plan((N, N), pixel, dz, E, method=method, backend="cpu")
    out = np.zeros((N, N), np.float32)
    if pixel == 1e7:
        with pytest.raises(ft.ResultError, match=says):
            plan.solve(*planes(), out=out)
    with pytest.raises(ft.ResultError, match=says):
        plan.solve(*planes(), out=out, gradient_out=np.zeros((2, N, N), np.float32))
    # the usual scale passes
    ft.reconstruct(ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E),
                   method=method, backend="cpu")


def test_a_worker_refusing_a_result_reports_a_result_error():
    """A worker sent back the refusal of a result of a ResultError's subclass
    as a plain InputError: the name is now that of the library's class it is."""
    pytest.importorskip("distributed")
    from flowtie_fast.cluster import _solve_batch, _Spec
    stack = np.stack([np.stack(planes(i)) for i in range(2)]).astype(np.float32)
    spec = _Spec((N, N), (1e7, 1e7), 1e-3, E, "tie", "cpu", 1, "float32", ())
    status, name, message = _solve_batch(stack, None, None, spec, 4, False)
    assert (status, name) == ("error", "ResultError")
    assert message.startswith("stack[4]: tie: the result's phase gradient reaches")


def test_libertem_passes_name_a_missing_context_and_bad_values():
    """triplet_with_libertem with ctx=None raised a bare AttributeError; NaN in
    the in-focus dataset was called "center: the mean pattern is empty"; and
    float64 values whose sums overflow the float32 reduction were called NaN
    or Inf alone."""
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem
    ctx = Context.make_with("inline")
    data = [d.astype(np.float32) for d in patterns((6, 6, 16, 16))]
    args = dict(dz=DZ, scan_step=0.2, k_sampling=0.05, energy=E)
    with pytest.raises(ft.InputError, match=r"^ctx: expected a LiberTEM Context.*NoneType"):
        triplet_with_libertem(None, [ctx.load("memory", data=d) for d in data], **args)
    nan = data[1].copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ft.InputError, match=r"^zero: the patterns contain NaN or Inf$"):
        triplet_with_libertem(ctx, [ctx.load("memory", data=d) for d in (data[0], nan, data[2])],
                              **args)
    big = data[1].astype(np.float64) * 1e40
    with pytest.raises(ft.InputError, match=r"^zero: contains NaN or Inf, or float64 values "
                                            r"whose sums exceed float32's range"):
        triplet_with_libertem(ctx, [ctx.load("memory", data=d) for d in (data[0], big, data[2])],
                              **args)


@pytest.mark.parametrize("truth, says", [
    (lambda p: p[:1], r"truth: shape \(1, 32\), expected \(32, 32\) like phase"),
    (lambda p: p[:, :1], r"truth: shape \(32, 1\), expected \(32, 32\)"),
    (lambda p: 1.0, r"truth: expected a non-empty 2-D array, got shape \(\)"),
    (lambda p: np.full_like(p, np.nan), "truth: contains NaN or Inf"),
    (lambda p: p * 1e200, "truth: phases up to .* overflow the squared error"),
    (lambda p: p + 1j, "truth: expected real numbers"),
])
def test_phase_errors_refuse_a_truth_they_would_broadcast_or_overflow(truth, says):
    from flowtie_fast.evaluation.evaluate import phase_errors

    phase = np.cos(np.arange(32 * 32).reshape(32, 32) * 0.1)
    with pytest.raises(ft.InputError, match=says):
        phase_errors(phase, truth(phase))


def test_evaluate_names_the_file_whose_truth_overflows_the_error(tmp_path, capsys):
    from fields import periodic_field, triplet_from

    from flowtie_fast.evaluation.evaluate import evaluate

    pixel = (0.2, 0.25)
    phi, intensity, didz, grad = periodic_field(shape=(32, 32), pixel=pixel, contrast=0.3)
    t = triplet_from(intensity, didz, 20.0, pixel, 300e3)
    ft.save(tmp_path / "huge.npz", ft.Dataset(*t.planes, dz=(20.0, 20.0), scan_step=pixel,
                                              energy=300e3, phase_gt=phi * 1e200))
    with pytest.raises(ft.InputError, match="huge.npz: truth: phases up to"):
        evaluate(tmp_path, methods=("tie",), repeats=1)
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: huge.npz: truth: phases up to" in err and "inf" not in err


def test_evaluate_refuses_an_empty_output_path_instead_of_ignoring_it(tmp_path, capsys):
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "-o", ""]) == 2
    assert "flowtie evaluate: error: output: expected a file path, got an empty string" in \
        capsys.readouterr().err


def test_dataset_triplet_names_an_unknown_option_instead_of_a_type_error():
    rng = np.random.default_rng(0)
    data = [rng.random((4, 4, 8, 8)).astype(np.float32) + 0.5 for _ in range(3)]
    ds = ft.Dataset(*data, dz=(20.0, 20.0), scan_step=(0.2, 0.2), energy=300e3,
                    k_sampling=(0.05, 0.05))
    for options in ({"bogus": 1}, {"dz": 5.0}):
        with pytest.raises(ft.InputError, match=r"options: \['(bogus|dz)'\] are not options "
                                                r"of Dataset.triplet; expected some of"):
            ds.triplet(**options)


@pytest.mark.parametrize("field, value, says", [
    ("depth", 40, "width/depth/stride: .*(too large to be held|parameters needs about)"),
    ("width", 100000, r"width/depth/stride: a network of .* parameters needs about"),
    ("channels", (8, 10**51), "channels/stride: levels of up to 1e\\+51 channels"),
    ("lr", 1e300, r"lr: expected a learning rate in \(0, 1\]"),
])
def test_a_training_network_that_cannot_be_held_is_refused_before_it_is_built(field, value,
                                                                                 says):
    pytest.importorskip("torch")
    from flowtie_fast.training.train import TrainConfig

    with pytest.raises(ft.InputError, match=says):
        TrainConfig(**{field: value})


def test_training_refuses_a_network_wider_than_its_images_and_a_batch_beyond_memory(
        monkeypatch):
    pytest.importorskip("torch")
    from fields import periodic_field, triplet_from

    import flowtie_fast.training.train as tr
    from flowtie_fast.training.data import Sample

    pixel = (0.2, 0.25)
    phi, intensity, didz, grad = periodic_field(shape=(12, 12), pixel=pixel, contrast=0.1)
    t = triplet_from(intensity, didz, 1.0, pixel, 300e3)
    sample = Sample(np.stack(t.planes).astype(np.float32),
                    np.asarray(t.derivative_weights, np.float32),
                    (grad / (2 * np.pi)).astype(np.float32), phi.astype(np.float32),
                    grad.astype(np.float32), t.wavenumber, pixel, "tiny")
    deep = tr.TrainConfig(steps=1, batch=1, channels=(4,) * 7)  # pads to 64, images of 24
    with pytest.raises(ft.InputError, match="channels/stride: the network pads its input to "
                                            "a multiple of 64 .* case tiny gives 24x24"):
        tr.train([sample], deep)
    monkeypatch.setattr(tr, "host_available_memory", lambda: 1 << 20)
    with pytest.raises(ft.InputError, match="batch: a step of 64 copies needs about"):
        tr.train([sample], tr.TrainConfig(steps=1, batch=64, channels=(4,)))


def test_a_model_path_that_is_a_fifo_is_named_as_such_not_missing(tmp_path):
    pytest.importorskip("torch")
    from flowtie_fast.flow import load_model

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(ft.InputError, match="model: .* is a FIFO"):
        load_model(fifo)


def _train_data(folder):
    """A folder with one small training case (planes, ground-truth phase and gradient)."""
    from fields import periodic_field, triplet_from

    pixel = (0.2, 0.25)
    phi, intensity, didz, grad = periodic_field(shape=(24, 20), pixel=pixel, contrast=0.3)
    t = triplet_from(intensity, didz, 10.0, pixel, E)
    ft.save(folder / "a.npz", ft.Dataset(*[np.asarray(p, np.float32) for p in t.planes],
                                         dz=(10.0, 10.0), scan_step=pixel, energy=E,
                                         phase_gt=phi.astype(np.float32),
                                         gradient_gt=grad.astype(np.float32)))
    return folder


@pytest.mark.parametrize("error, code, says", [
    (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                  "99999999999 bytes. Error code 12 (Cannot allocate memory)"), 1,
     "out of memory"),
    (RuntimeError("a failure inside the library"), 1, "unexpected RuntimeError"),
])
def test_train_tells_a_fault_of_the_environment_from_bad_usage(tmp_path, capsys, monkeypatch,
                                                                error, code, says):
    """Every RuntimeError of a training run was reported as bad usage (exit 2),
    out of memory inside PyTorch included."""
    pytest.importorskip("torch")
    import flowtie_fast.training.train as tr

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(tr, "train", fails)
    data = _train_data(tmp_path / "data")
    out = tmp_path / "m.pt"
    assert cli.main(["train", str(data), "--steps", "1", "--width", "4", "--depth", "2",
                     "-o", str(out), "--checkpoint", str(tmp_path / "c.ckpt")]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowtie train: error: ") and says in err[0]
    assert not out.exists()


def test_a_teacher_that_fails_to_load_is_named_as_the_teacher(tmp_path, capsys):
    """A teacher file that is a zip but no TorchScript model was reported as
    "model: ...", which names no argument of flowtie train."""
    pytest.importorskip("torch")
    with zipfile.ZipFile(tmp_path / "t.pt", "w") as z:
        z.writestr("a", "b")
    data = _train_data(tmp_path / "data")
    assert cli.main(["train", str(data), "--steps", "1", "--width", "4", "--depth", "2",
                     "--teacher", str(tmp_path / "t.pt"), "--distill", "0.5",
                     "-o", str(tmp_path / "m.pt"), "--checkpoint",
                     str(tmp_path / "c.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("flowtie train: error: teacher: t.pt is not a readable "
                              "TorchScript flow model"), err


@pytest.mark.parametrize("noise", [[[1.0, 2.0, 3.0]], [[1.0], [2.0], [3.0]],
                                   np.ones((3, 1)), [[0.5]], np.ones((1, 1, 3))])
def test_nested_noise_variances_are_refused_not_flattened(noise):
    """noise=[[1, 2, 3]] (a list of lists: per item? per pixel?) was flattened
    to three per-plane variances without a word."""
    says = (r"^noise: expected 1 or 3 variances, one per plane \(intensity², a number or a "
            r"flat list\), got [^\n]* of shape \(")
    with pytest.raises(ft.InputError, match=says):
        ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E, noise=noise)
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    with pytest.raises(ft.InputError, match=says):
        plan.solve(*planes(), noise=noise)
    with pytest.raises(ft.InputError, match=says):
        ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E,
                        noise=ft.Noise(tuple(np.asarray(noise, dtype=object).tolist()),
                                       "given"))


_HANGS = '''
import json, sys, torch

class Hangs(torch.nn.Module):
    """Returns a zero flow for the 32x32 probe; on other sizes it never returns."""

    def __init__(self, always: bool):
        super().__init__()
        self.always = always

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while (self.always or x.shape[-1] != 32) and i >= 0:
            i += 1  # 2**63 steps: never ends
        return torch.zeros_like(x[:, :2])

torch.jit.save(torch.jit.script(Hangs(sys.argv[2] == "always")), sys.argv[1],
               _extra_files={"config.json": json.dumps({"in_channels": 4})})
'''


def _hanging_model(path, always):
    """A flow model file whose network never returns (on every input, or off
    the load-time probe's 32x32), written by another process (torch.jit.script
    reads the class's source from a file)."""
    source = path.with_suffix(".py")
    source.write_text(_HANGS)
    subprocess.run([sys.executable, str(source), str(path), "always" if always else "off"],
                   check=True, timeout=300)
    source.unlink()
    return path


def test_a_model_that_never_returns_from_the_probe_is_refused_after_the_time_limit(tmp_path):
    """A model file whose network never returns hung load_model (and flowtie
    reconstruct --model) forever, deaf to Ctrl-C and SIGTERM."""
    pytest.importorskip("torch")
    path = _hanging_model(tmp_path / "hangs.pt", always=True)
    script = (
        "import threading, time, flowtie_fast as ft\n"
        "from flowtie_fast.flow import infer, load_model\n"
        "infer.PROBE_SECONDS = 2.0\n"
        "for attempt in range(2):\n"
        "    start = time.perf_counter()\n"
        "    try:\n"
        f"        load_model({str(path)!r})\n"
        "    except ft.InputError as exc:\n"
        "        print(f'{time.perf_counter() - start:.1f}', threading.active_count(), exc)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    first, again = run.stdout.strip().splitlines()
    says = f"model: {str(path)!r} did not return from a probe triplet of 32x32 pixels within 2 s"
    assert says in first and says in again, run.stdout
    assert float(first.split()[0]) < 30 and float(again.split()[0]) < 1  # refused at once
    assert first.split()[1] == again.split()[1] == "2"  # one helper thread left, not two


@pytest.mark.parametrize("signum, code, how", [(15, 143, "terminated"),
                                               (2, 130, "interrupted")])
def test_the_command_line_ends_on_a_signal_while_a_model_never_returns(tmp_path, signum, code,
                                                                       how):
    """A model that passes the probe and then never returns on the data kept
    flowtie reconstruct running forever: SIGTERM and Ctrl-C reach Python
    only between its calls, and TorchScript never came back."""
    pytest.importorskip("torch")
    import time

    path = _hanging_model(tmp_path / "hangs.pt", always=False)
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in24.npz", ft.Dataset(*[p[:24, :24] for p in t.planes],
                                                       dz=(DZ, DZ), scan_step=(PIXEL, PIXEL),
                                                       energy=E))
    out = tmp_path / "out.npz"
    script = (
        "import sys\n"
        "from flowtie_fast import cli\n"
        "from flowtie_fast.flow import infer\n"
        "run = infer.FlowModel._run\n"
        "def announced(self, x):\n"
        "    print('predicting', flush=True)\n"
        "    return run(self, x)\n"
        "infer.FlowModel._run = announced\n"
        f"sys.exit(cli.main(['reconstruct', {str(source)!r}, '-o', {str(out)!r}, '--method', "
        f"'flowtie', '--model', {str(path)!r}, '--no-uncertainty', '--backend', 'cpu']))\n")
    # A background job of a non-interactive shell (a CI runner) starts with
    # SIGINT ignored, and a child inherits that: Ctrl-C is then ignored by
    # design. The child starts with the default disposition, as in a terminal.
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "predicting\n"
        time.sleep(0.5)  # inside the network
        os.kill(proc.pid, signum)
        start = time.perf_counter()
        err = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err[-2000:]
    assert time.perf_counter() - start < 30
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"flowtie reconstruct: {how};"), err
    assert sorted(os.listdir(tmp_path)) == ["hangs.pt", "in24.npz"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_wisdom_path_that_is_no_regular_file_is_refused_not_read(tmp_path, kind):
    """Plan(wisdom=) on a FIFO blocked forever reading it; /dev/full was
    called a file of "pickled (object) data"."""
    if kind == "fifo":
        path = tmp_path / "w.wis"
        os.mkfifo(path)
        says = "is a FIFO (named pipe), not a regular file"
    else:
        path = "/dev/full"
        says = "is a device, not a regular file"
    script = (  # in another process: a blocked read runs into the timeout
        "import flowtie_fast as ft\n"
        "from flowtie_fast.fft import load_wisdom\n"
        "for load in (lambda: load_wisdom(path), lambda: ft.Plan((32, 32), 0.2, 20.0, 300e3, "
        "backend='cpu', warmup=False, wisdom=path)):\n"
        "    try:\n"
        "        load()\n"
        "    except ft.InputError as exc:\n"
        "        print(exc)\n")
    run = subprocess.run([sys.executable, "-c", f"path = {str(path)!r}\n" + script],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("wisdom: ") and says in line
                                   for line in lines), run.stdout


def test_a_checkpoint_to_resume_that_is_no_regular_file_is_named_as_such(tmp_path):
    """flowtie train --resume on a FIFO or a device said "no such checkpoint
    file" of a path that exists."""
    pytest.importorskip("torch")
    from flowtie_fast.training.train import load_checkpoint

    fifo = tmp_path / "r.ckpt"
    os.mkfifo(fifo)
    for path, says in ((fifo, r"is a FIFO \(named pipe\), not a regular file"),
                       ("/dev/zero", "is a device, not a regular file")):
        with pytest.raises(ft.InputError, match=f"^resume: .*{says}"):
            load_checkpoint(path)


@pytest.mark.parametrize("channels", [-6, 0, 5, 10**9, "six", None])
def test_a_model_configuration_of_impossible_input_channels_is_named(tmp_path, channels):
    """A model file whose config.json declared -6 or 1e9 input channels was
    reported as failing on the probe ("The following operation failed in the
    TorchScript interpreter"); a flow model reads 4 channels, or 6 with the
    centre of mass."""
    torch = pytest.importorskip("torch")
    import json

    from flowtie_fast.flow import FlowModel

    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(6, 2, 3, padding=1)), str(path),
                   _extra_files={"config.json": json.dumps({"in_channels": channels})})
    with pytest.raises(ft.InputError, match=r"^model: m.pt declares in_channels=.* in its "
                                            r"configuration; a flow model reads 4 or 6"):
        FlowModel(path)


@pytest.mark.parametrize("argv, says", [
    ([], "flowtie: error: the following arguments are required: command"),
    (["reconstruct", "in.npz"], "flowtie reconstruct: error: the following arguments are "
                                "required: -o/--output"),
    (["reconstruct", "in.npz", "-o", "o.npz", "--method", "nope"],
     "flowtie reconstruct: error: argument --method: invalid choice: 'nope'"),
    (["demo", "--size", "1e3"], "flowtie demo: error: argument --size: invalid int value"),
    (["reconstruct", "in.npz", "-o", "o.npz", "--bogus"],
     "flowtie reconstruct: error: unrecognized arguments: --bogus"),
    (["evaluate", "a", "b"], "flowtie evaluate: error: unrecognized arguments: b"),
    # an option before the command was "the following arguments are required: command"
    (["--bogus"], "flowtie: error: unrecognized arguments: --bogus"),
    (["--debug", "--bogus", "--x=1"], "flowtie: error: unrecognized arguments: --bogus --x=1"),
    (["--bogus", "reconstruct", "in.npz", "-o", "o.npz"],
     "flowtie: error: unrecognized arguments: --bogus"),
])
def test_a_usage_error_is_one_line(capsys, argv, says):
    """Bad usage printed the command's whole usage (up to ten lines) before
    its one-line error."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(says) and "--help" in err[0], err


def test_help_and_version_still_print_beside_an_unknown_option(capsys):
    for argv, says in ((["--bogus", "--help"], "usage: flowtie"),
                       (["--bogus", "--version"], "flowtie_fast ")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(says)


def test_an_unwritable_standard_output_is_named_as_such(tmp_path):
    """With the standard output on a full device, flowtie reconstruct wrote
    its result and then failed with "[Errno 28] No space left on device",
    which names no file and reads as if the result could not be written."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                              str(source), "-o", str(tmp_path / "out.npz"), "--backend", "cpu"],
                             stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert run.returncode == 1
    assert run.stderr.strip() == ("flowtie reconstruct: error: the standard output cannot be "
                                  "written ([Errno 28] No space left on device) "
                                  f"({tmp_path / 'out.npz'} written whole before it; "
                                  "--overwrite replaces it)"), run.stderr
    assert (tmp_path / "out.npz").exists()


def test_memory_checks_count_the_process_address_space_limit(tmp_path):
    """Under a limit of the address space (ulimit -v, as batch systems set
    it), a solver far beyond it passed the memory check, which read the
    machine's free memory alone, and failed in NumPy with a bare MemoryError."""
    resource = pytest.importorskip("resource")
    script = (
        "import flowtie_fast as ft\n"
        "try:\n"
        "    ft.Plan((12000, 12000), 0.2, 20.0, 300e3, backend='cpu', warmup=False)\n"
        "except ft.InputError as exc:\n"
        "    print(exc)\n")

    def limit():  # 3 GB of address space: the interpreter and its libraries fit
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         preexec_fn=limit, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("shape: (12000, 12000) needs about") and \
        "available on the cpu" in run.stdout, run.stdout


@pytest.mark.parametrize("version", [1, 2])
def test_memory_checks_count_the_memory_limit_of_the_control_group(tmp_path, version):
    """In a container whose memory is limited by its control group, the check
    read the host's free memory: work beyond the limit passed it, and the
    kernel killed the process."""
    from flowtie_fast import backend

    if version == 2:
        (tmp_path / "fs" / "job").mkdir(parents=True)
        (tmp_path / "fs" / "job" / "memory.max").write_text(f"{2 << 30}\n")
        (tmp_path / "fs" / "job" / "memory.current").write_text(f"{1 << 30}\n")
        (tmp_path / "fs" / "memory.max").write_text("max\n")
        (tmp_path / "cgroup").write_text("0::/job\n")
    else:
        (tmp_path / "fs" / "memory" / "job").mkdir(parents=True)
        (tmp_path / "fs" / "memory" / "job" / "memory.limit_in_bytes").write_text(
            f"{3 << 30}\n")
        (tmp_path / "fs" / "memory" / "job" / "memory.usage_in_bytes").write_text(
            f"{2 << 30}\n")
        (tmp_path / "cgroup").write_text("5:cpu:/\n4:memory:/job\n")
    headroom = backend._cgroup_headroom(str(tmp_path / "fs"), str(tmp_path / "cgroup"))
    assert headroom == 1 << 30
    assert backend.host_available_memory() <= (backend._meminfo_available() or 1 << 62)


def test_sparse_counts_keep_their_poisson_noise():
    """Integer planes of 0.005 counts a pixel (mostly zeros) were taken as
    "not counts": the image estimate of a Gaussian noise, 0.1 of the Poisson
    variance on such data, set the regularisation, and pure shot noise came
    back as a phase of several radians beside a warning about the noise alone."""
    rng = np.random.default_rng(3)
    sparse = [rng.poisson(0.005, (N, N)).astype(np.uint16) for _ in range(3)]
    for p in sparse:
        p[0, 0] += 1  # no plane zero everywhere
    t = ft.FocalTriplet(*sparse, dz=DZ, pixel_size=PIXEL, energy=E)
    assert t.noise.source == "poisson"
    with pytest.warns(ft.TrustWarning, match="no signal above the noise"):
        rec = ft.reconstruct(t, backend="cpu")
    assert float(np.abs(rec.phase).max()) == 0.0


@pytest.mark.parametrize("plane, factor", [(2, 1000.0), (1, 1e-3), (0, 2.5)])
def test_planes_whose_flux_differs_beyond_any_drift_are_refused(plane, factor):
    """A plane in other units or of another exposure (x1000, or x2.5) gave a
    phase wrong by a factor of up to 1e6 in NMSE, without a word: propagation
    conserves the flux, and the focal derivative took the difference of
    scales for a transport of intensity."""
    p = planes()
    p[plane] = p[plane] * factor
    names = ("minus", "zero", "plus")
    says = r" times that of (minus|zero|plus) .*propagation conserves the flux"
    with pytest.raises(ft.InputError, match=f"^({'|'.join(names)}): a mean intensity \\S+" +
                       says):
        ft.FocalTriplet(*p, dz=DZ, pixel_size=PIXEL, energy=E)
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    with pytest.raises(ft.InputError, match=says):
        plan.solve(*p)
    with pytest.raises(ft.InputError, match=r"^stack\[1\]: .*" + says):
        plan.solve_batch(np.stack([np.stack(planes()), np.stack(p)]))
    if plane == 2 and importlib.util.find_spec("distributed") is not None:
        from flowtie_fast.cluster import reconstruct_many
        with pytest.raises(ft.InputError, match=r"^stack\[1\]: .*" + says):  # before sending
            reconstruct_many(np.stack([np.stack(planes()), np.stack(p)]), pixel_size=PIXEL,
                             dz=DZ, energy=E, client=object())
    p[plane] = planes()[plane] * 1.5  # a drift of the beam current: taken
    ft.FocalTriplet(*p, dz=DZ, pixel_size=PIXEL, energy=E)
    plan.solve(*p)


def test_sparse_counts_whose_means_differ_by_their_noise_are_taken():
    """Planes of 0.01-0.03 counts a pixel (a 4D-STEM bright field at 1e2 e/Å²)
    differ in mean by a factor 2 or 3 from counting noise alone: they are the
    data, not a plane of other units, and get the no-signal verdict."""
    rng = np.random.default_rng(5)
    sparse = [rng.poisson(lam, (N, N)).astype(np.uint16) for lam in (0.01, 0.02, 0.03)]
    for p in sparse:
        p[0, 0] += 1
    means = [p.mean() for p in sparse]
    assert max(means) > 2 * min(means)
    t = ft.FocalTriplet(*sparse, dz=DZ, pixel_size=PIXEL, energy=E)
    with pytest.warns(ft.TrustWarning, match="no signal above the noise"):
        ft.reconstruct(t, backend="cpu")
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    with pytest.warns(ft.TrustWarning, match="no signal above the noise"):
        plan.solve(*sparse)
    floats = [p.astype(np.float32) for p in sparse]  # virtual images: float sums of counts
    ft.FocalTriplet(*floats, dz=DZ, pixel_size=PIXEL, energy=E)
    plan.solve(*floats)


class _ArrayLike:
    """An xarray-like wrapper: ``shape`` and ``dtype`` attributes, and an
    ``__array__`` that gives ``data`` (which may not match them) or raises."""

    def __init__(self, data, shape, dtype=np.float64, fail=None):
        self.data, self.shape, self.dtype, self.ndim = data, shape, np.dtype(dtype), len(shape)
        self.fail = fail

    def __array__(self, dtype=None, copy=None):
        if self.fail is not None:
            raise self.fail
        return self.data if dtype is None else self.data.astype(dtype)

    def __getitem__(self, key):
        return np.asarray(self)[key]


def test_a_plan_reads_an_array_like_once_and_checks_what_it_gave():
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    m, z, p = planes()
    # The shape attribute promised (N, N); the kernels would have read past a 3 x 3 buffer.
    with pytest.raises(ft.InputError, match=r"^minus: expected shape \(32, 32\), got \(3, 3\)"):
        plan.solve(_ArrayLike(np.ones((3, 3)), (N, N)), z, p)
    with pytest.raises(ft.InputError, match=r"^zero: could not be read as an array \(boom\)"):
        plan.solve(m, _ArrayLike(None, (N, N), fail=RuntimeError("boom")), p)
    with pytest.raises(ft.InputError, match=r"^plus: expected a NumPy array for this cpu plan"):
        plan.solve(m, z, type("Fake", (), {"shape": (N, N), "dtype": np.dtype("f8")})())
    stack = np.stack([np.stack([m, z, p])] * 2)
    with pytest.raises(ft.InputError, match=r"^stack: expected shape \(2, 3, 32, 32\)"):
        plan.solve_batch(_ArrayLike(stack[:, :, :4], stack.shape))
    # A wrapper whose data do match is solved as its array.
    want = plan.solve(m, z, p).copy()
    assert np.array_equal(plan.solve(_ArrayLike(m, (N, N)), np.asmatrix(z), p), want)
    assert np.array_equal(plan.solve_batch(_ArrayLike(stack, stack.shape))[1], want)


@pytest.mark.parametrize("kind", [np.asmatrix, np.ma.masked_array])
def test_an_output_of_an_ndarray_subclass_with_its_own_rules_is_refused(kind):
    plan = ft.Plan((N, N), PIXEL, DZ, E, backend="cpu", warmup=False)
    out = kind(np.zeros((N, N), np.float32))
    with pytest.raises(ft.InputError, match=r"^out: expected a plain NumPy array, got"):
        plan.solve(*planes(), out=out)


def test_4dstem_data_whose_shape_does_not_describe_them_are_refused_naming_them():
    d = patterns()
    lying = _ArrayLike(d[0][:2, :2, :4, :4], d[0].shape, np.uint16)
    with pytest.raises(ft.InputError, match=r"^minus: reading scan row 0 of a _ArrayLike of "
                       r"shape \(6, 6, 16, 16\) failed \(IndexError: .*\): its shape does "
                       r"not describe its data"):
        ft.FocalTriplet.from_4dstem(lying, d[1], d[2], **STEM)
    lying = _ArrayLike(d[1][:, :, :8], d[1].shape, np.uint16)
    with pytest.raises(ft.InputError, match=r"^zero: reading scan row 0 of a _ArrayLike"):
        ft.FocalTriplet.from_4dstem(d[0], lying, d[2], **STEM)
    unreadable = type("NoItems", (), {"shape": d[0].shape, "dtype": np.dtype("u2")})()
    with pytest.raises(ft.InputError, match=r"^plus: expected a 4-D array"):
        ft.FocalTriplet.from_4dstem(d[0], d[1], unreadable, **STEM)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_save_refuses_meta_it_would_drop_instead_of_losing_it(tmp_path, suffix):
    m, z, p = planes()
    ds = ft.Dataset(m, z, p, (DZ, DZ), (PIXEL, PIXEL), E,
                    meta={"material": "GaAs", "operator": "é", "run": 7})
    with pytest.raises(ft.InputError, match=r"^obj: the layout flowtie_fast/2 stores the meta "
                       r"keys material, thickness, semiangle only, not \['operator', 'run'\]"):
        ft.save(tmp_path / f"a{suffix}", ds)
    assert not list(tmp_path.iterdir())
    ds.meta = {"material": "GaAs", "thickness": 10.0, "other": None}
    assert ft.load(ft.save(tmp_path / f"b{suffix}", ds)).meta == {"material": "GaAs",
                                                                   "thickness": 10.0}


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("material, says", [("Ga\x00As", "without NUL characters"),
                                            ("Ga\udc80", "UTF-8 can encode")])
def test_a_material_hdf5_cannot_store_is_refused_in_either_format(tmp_path, suffix, material,
                                                                   says):
    m, z, p = planes()
    ds = ft.Dataset(m, z, p, (DZ, DZ), (PIXEL, PIXEL), E, meta={"material": material})
    with pytest.raises(ft.InputError, match=f"^obj: 'material' must be text {says}"):
        ft.save(tmp_path / f"a{suffix}", ds)
    assert not list(tmp_path.iterdir())


def _libertem_datasets(ctx, data):
    return [ctx.load("memory", data=d, sig_dims=2) for d in data]


def test_libertem_datasets_in_an_unordered_collection_are_refused():
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast.stem.live import triplet_with_libertem

    with Context.make_with("inline") as ctx:
        ds = _libertem_datasets(ctx, patterns())
        kw = dict(dz=DZ, scan_step=0.2, k_sampling=0.05, energy=E)
        # A set has no order: minus and plus could be swapped, flipping the phase's sign.
        with pytest.raises(ft.InputError, match=r"^datasets: expected three LiberTEM datasets "
                                                r"in order \(minus, zero, plus\), got set"):
            triplet_with_libertem(ctx, set(ds), **kw)
        with pytest.raises(ft.InputError, match=r"^datasets: .* in order .*got dict"):
            triplet_with_libertem(ctx, dict(zip("mzp", ds)), **kw)
        assert triplet_with_libertem(ctx, iter(ds), **kw).shape == (6, 6)


def test_a_libertem_reduction_checks_detector_regions_and_com_radius():
    pytest.importorskip("libertem")
    from libertem.api import Context

    from flowtie_fast import stem
    from flowtie_fast.stem.live import reduce_with_libertem

    det = stem.Detector((16, 16), (0.05, 0.05), E, (7.5, 7.5))
    whole = {"whole": (0, np.inf)}
    with Context.make_with("inline") as ctx:
        ds = _libertem_datasets(ctx, patterns())[0]
        # A negative radius gave a centre of mass of zero everywhere.
        with pytest.raises(ft.InputError, match=r"^com_radius: "):
            reduce_with_libertem(ctx, ds, det, whole, com_radius_mrad=-1)
        with pytest.raises(ft.InputError, match=r"^detector: expected a Detector"):
            reduce_with_libertem(ctx, ds, None, whole)
        with pytest.raises(ft.InputError, match=r"^regions: expected a dict"):
            reduce_with_libertem(ctx, ds, det, "bf")


@pytest.mark.parametrize("regions, says", [
    ("bf", r"^regions: expected a dict of name -> \(inner, outer\) in mrad, got str"),
    ({"x": (1, 2, 3)}, r"^regions: expected .* got \(1, 2, 3\) for 'x'"),
    ({"x": ("a", "b")}, r"^regions: expected .* got \('a', 'b'\) for 'x'"),
    ({3: (0, 5)}, r"^regions: expected .* names \(str\), got 3"),
])
def test_reduce_4dstem_names_regions_of_the_wrong_form(regions, says):
    from flowtie_fast import stem

    det = stem.Detector((16, 16), (0.05, 0.05), E, (7.5, 7.5))
    with pytest.raises(ft.InputError, match=says):
        stem.reduce_4dstem(patterns()[0], det, regions, backend="cpu")
    with pytest.raises(ft.InputError, match=r"^detector: expected a Detector"):
        stem.reduce_4dstem(patterns()[0], None, {"whole": (0, np.inf)}, backend="cpu")


def test_reduction_udf_pixel_ranges_must_cover_the_weights():
    pytest.importorskip("libertem")
    from flowtie_fast.stem.live import ReductionUDF

    w = np.ones((1, 256), np.float32)
    # A range narrower than the non-zero weights summed part of each pattern.
    with pytest.raises(ft.InputError, match=r"^lo, hi: row 0 has non-zero weights outside "
                                            r"pixels \[0, 10\)"):
        ReductionUDF(w, lo=np.array([0]), hi=np.array([10]))
    with pytest.raises(ft.InputError, match=r"^lo, hi: expected both or neither, got lo only"):
        ReductionUDF(w, lo=np.array([0]))
    ReductionUDF(w, lo=np.array([0]), hi=np.array([256]))


def test_phase_errors_refuse_masked_arrays():
    from flowtie_fast.evaluation.evaluate import phase_errors

    a = np.add.outer(np.arange(8.0), np.arange(8.0))
    with pytest.raises(ft.InputError, match=r"^phase: masked arrays are not supported"):
        phase_errors(np.ma.masked_array(a, mask=a > 5), a)
    with pytest.raises(ft.InputError, match=r"^truth: masked arrays are not supported"):
        phase_errors(a, np.ma.masked_array(a, mask=a > 5))


def test_worker_specs_refuse_a_worker_without_threads():
    pytest.importorskip("distributed")
    from flowtie_fast import cluster

    # A worker with no thread never runs a task: a cluster of them waits forever.
    with pytest.raises(ft.InputError, match=r"^threads_per_worker: expected an integer in "
                                            r"\[1, 4096\], got 0"):
        cluster.worker_specs(["0"], threads_per_worker=0)
    assert cluster.worker_specs(["0"], 2)["gpu-0"]["options"]["nthreads"] == 2


@pytest.mark.parametrize("stack, kind", [((x for x in range(3)), "generator"),
                                         ({"a": 1}, "dict")])
def test_reconstruct_many_names_the_type_it_was_given(stack, kind):
    pytest.importorskip("distributed")
    from flowtie_fast import cluster

    with pytest.raises(ft.InputError, match=f"^stack: expected an array .*got {kind}"):
        cluster.reconstruct_many(stack, pixel_size=PIXEL, dz=DZ, energy=E)
    unreadable = _ArrayLike(None, (2, 3, N, N), fail=RuntimeError("boom"))
    with pytest.raises(ft.InputError, match=r"^stack: could not be read as an array "
                                            r"\(_ArrayLike: boom\)"):
        cluster.reconstruct_many(unreadable, pixel_size=PIXEL, dz=DZ, energy=E)
@pytest.mark.parametrize("schema", ["true", "1.0"])
def test_a_sweep_schema_of_another_type_is_refused(tmp_path, schema):
    from flowtie_fast.simulation import sweep

    text = sweep.DEFAULT_CONFIG.read_text().replace("schema = 1", f"schema = {schema}", 1)
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ft.InputError, match=r"^schema: expected 1, got"):
        sweep.load_config(tmp_path / "c.toml")




def test_reduce_frames_refuses_patterns_of_another_detector_size():
    from flowtie_fast import stem

    W = np.ones((2, 256), np.float32)
    lo, hi = np.zeros(2, np.int64), np.full(2, 256, np.int64)
    # 8 x 8 patterns against weights of 256 pixels: the kernel read past the frames.
    with pytest.raises(ft.InputError, match=r"^frames: expected patterns \(\.\.\., Ky, Kx\) of "
                                            r"256 pixels .*got shape \(4, 8, 8\)"):
        stem.reduce_frames(np.ones((4, 8, 8), np.uint16), W, lo, hi)
    with pytest.raises(ft.InputError, match=r"^frames: .*got shape \(256,\)"):
        stem.reduce_frames(np.ones(256, np.uint16), W, lo, hi)
    with pytest.raises(ft.InputError, match=r"^lo, hi: expected 0 <= lo <= hi <= 256"):
        stem.reduce_frames(np.ones((4, 16, 16), np.uint16), W, lo, hi + 1)
    with pytest.raises(ft.InputError, match=r"^W: expected a C-contiguous float32"):
        stem.reduce_frames(np.ones((4, 16, 16), np.uint16), W.astype(np.float64), lo, hi)
    got = stem.reduce_frames(np.ones((4, 16, 16), np.uint16), W, lo, hi)
    assert np.array_equal(got, np.full((4, 2), 256, np.float32))


@pytest.mark.parametrize("argv, flag", [
    (["simulate", "-o", "", "--thickness", "10"], "-o/--output"),
    (["simulate", "--sweep", "", "--list"], "--sweep"),
    (["reconstruct", "", "-o", "o.npz"], "file"),
    (["demo", "--png", ""], "--png"),
    (["evaluate", ""], "directory"),
])
def test_an_empty_path_argument_is_a_usage_error_not_the_current_folder(capsys, argv, flag):
    """``Path("")`` is ``.``: ``simulate -o ""`` wrote into the current folder."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}: expected a path, got an empty string" in err[0]


def _fake_raw_reader(monkeypatch, beam_energy=300.0, scale=0.02):
    """Let read_raw read any file as a 4D-STEM signal of these calibrations."""
    import types

    from flowtie_fast import io as fio

    def reader(path, lazy=True):
        axes = [{"scale": scale, "units": "nm"}] * 2 + [{"scale": 0.5, "units": "1/nm"}] * 2
        tem = {"beam_energy": beam_energy}
        return [{"data": np.ones((4, 4, 8, 8)), "axes": axes,
                 "metadata": {"Acquisition_instrument": {"TEM": tem}}}]

    module = types.SimpleNamespace(file_reader=reader)
    monkeypatch.setattr(fio, "importlib", types.SimpleNamespace(import_module=lambda n: module))
    return fio


@pytest.mark.parametrize("energy, says", [
    ("200 kV", r"records the beam energy as '200 kV', not a number in keV"),
    ([300.0], r"records the beam energy as \[300\.0\], not a number in keV"),
    (True, r"records the beam energy as True, not a number in keV"),
    (3e5, r"records a beam energy of 300000\.0 keV; expected 1 to 10000 keV"),
])
def test_a_beam_energy_a_detector_file_records_as_no_number_is_named(tmp_path, monkeypatch,
                                                                     energy, says):
    """The file's beam energy was passed to float(): text such as '200 kV' or
    a list raised ValueError or TypeError, and True was read as 1 keV."""
    fio = _fake_raw_reader(monkeypatch, beam_energy=energy)
    (tmp_path / "z.emd").write_bytes(b"x")
    with pytest.raises(ft.InputError, match=r"^energy: z\.emd " + says + r".*give energy"):
        fio.read_raw(tmp_path / "z.emd")
    assert fio.read_raw(tmp_path / "z.emd", energy=300e3)[3] == 300e3


@pytest.mark.parametrize("scale", [None, "abc"])
def test_a_detector_file_axis_without_a_numeric_scale_is_named(tmp_path, monkeypatch, scale):
    fio = _fake_raw_reader(monkeypatch, scale=scale)
    (tmp_path / "z.emd").write_bytes(b"x")
    with pytest.raises(ft.InputError, match=r"^scan_step: z\.emd records a scan axis scale as "
                                            r".*, not a number; give scan_step"):
        fio.read_raw(tmp_path / "z.emd", energy=300e3)
    assert fio.read_raw(tmp_path / "z.emd", energy=300e3, scan_step=0.2)[1] == (0.2, 0.2)


def test_detector_files_of_other_calibrations_are_not_one_focal_series(tmp_path):
    """The in-focus file's calibration was taken for all three: a defocused
    scan recorded at ten times the step was reconstructed as if it matched."""
    from flowtie_fast.io import load_raw_triplet

    emd = pytest.importorskip("rsciio.emd")
    data = np.random.default_rng(0).random((6, 5, 10, 12)).astype(np.float32)

    def write(name, step, k):
        axes = [{"name": n, "size": s, "scale": v, "units": u, "navigate": nav, "offset": 0}
                for n, s, v, u, nav in (("y", 6, step, "nm", True), ("x", 5, step, "nm", True),
                                        ("ky", 10, k, "1/nm", False),
                                        ("kx", 12, k, "1/nm", False))]
        emd.file_writer(str(tmp_path / name), {
            "data": data, "axes": axes, "original_metadata": {},
            "metadata": {"General": {"title": name}, "Signal": {"signal_type": ""}}})
        return tmp_path / name

    m, z = write("m.emd", 0.02, 0.5), write("z.emd", 0.02, 0.5)
    with pytest.raises(ft.InputError, match=r"^plus: p\.emd records scan_step \(2\.0, 2\.0\) Å, "
                                            r"the in-focus file z\.emd \(0\.2, 0\.2\) Å.*give "
                                            r"scan_step"):
        load_raw_triplet(m, z, write("p.emd", 0.2, 0.5), dz=DZ, energy=E)
    with pytest.raises(ft.InputError, match=r"^minus: q\.emd records k_sampling \(0\.5, 0\.5\)"):
        load_raw_triplet(write("q.emd", 0.02, 5.0), z, m, dz=DZ, energy=E)
    ds = load_raw_triplet(m, z, tmp_path / "p.emd", dz=DZ, energy=E, scan_step=0.2)
    assert ds.scan_step == (0.2, 0.2)


def test_a_registration_that_measured_nothing_is_not_reported_with_shifts(tmp_path, capsys):
    """Without a dark field nothing is measured: the command line printed
    'registration from the None images: shifts ... (+0.00, +0.00)'."""
    flat = [np.full((8, 8, 6, 6), 50, np.uint16) + p[:, :, 5:11, 5:11] % 3
            for p in patterns((8, 8, 16, 16))]
    ft.save(tmp_path / "d.npz", ft.Dataset(*flat, DZ, 0.2, E, 0.05))
    assert cli.main(["reconstruct", str(tmp_path / "d.npz"), "-o",
                     str(tmp_path / "o.npz")]) == 0
    out = capsys.readouterr().out
    assert "None" not in out and "registration from" not in out
    assert "registration: not measured (no dark field on the detector); the planes are used " \
           "as recorded" in out


@pytest.mark.parametrize("line, says", [
    ("gain_noise = 1e12", r"^acquisition\.gain_noise: expected a number in \[0, 10\]"),
    ("gain_map = [0.0, 1e12]", r"^acquisition\.gain_map: expected \[low, high\] numbers within "
                               r"\[0, 1\]"),
    ("source_fwhm = 1e12", r"^acquisition\.source_fwhm: expected a number in \[0, 100\] Å"),
    ("dose = 1e12", r"^acquisition\.dose: expected a number in \[0, 1e\+10\] e/Å²"),
    ("drift = [1.0, 5.0]", r"^acquisition\.drift: expected one number in \[0, 64\] scan pixels"),
])
def test_a_sweep_recipe_acquisition_beyond_reason_is_refused_when_read(tmp_path, line, says):
    """Values up to 1e12 were taken, and a drift range [low, high] that
    random_conditions refuses: the failure came when the corpus was loaded
    for training, after the sweep had simulated it."""
    from flowtie_fast.simulation import sweep

    key = line.split(" =")[0]
    text = "\n".join(line if ln.startswith(key + " ") else ln
                     for ln in sweep.DEFAULT_CONFIG.read_text().splitlines())
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ft.InputError, match=says):
        sweep.load_config(tmp_path / "c.toml")
    assert sweep.load_config()["acquisition"]["drift"] == 5.0


def test_series_beyond_their_stage_max_cost_are_named_before_any_is_simulated(tmp_path,
                                                                              monkeypatch):
    """Where no draw fitted within max_cost the cheapest was planned without a
    word: a recipe of 200 Å supercells planned series of hours each, against a
    max_cost of minutes, and began simulating them."""
    from flowtie_fast.simulation import sweep

    text = sweep.DEFAULT_CONFIG.read_text()
    for old, new in (("supercell = [12.0, 20.0]", "supercell = [200.0, 200.0]"),
                     ("series = 40", "series = 4"), ("series = 160", "series = 1"),
                     ("series = 100", "series = 1")):
        text = text.replace(old, new, 1)
    (tmp_path / "c.toml").write_text(text)
    cfg = sweep.load_config(tmp_path / "c.toml")
    over = sweep.over_budget(cfg, sweep.plan(cfg))
    assert len(over) == 6 and over[0]["estimated_seconds"] > 3600
    warned_first = []
    with pytest.warns(UserWarning, match=r"^config: 1 of 1 series exceed their stage's "
                                         r"max_cost \(no draw of 60 fitted\), the costliest "
                                         r"s0000 .* against max_cost 2\.8 .*estimated "
                                         r"[0-9]+:[0-9]{2}:[0-9]{2}; narrow the ranges") as got:
        monkeypatch.setattr(sweep, "build_specimen",
                            lambda s: warned_first.append(len(got)) or 1 / 0)
        sweep.run(cfg, tmp_path / "out", limit=1, progress=False, log=lambda line: None)
    assert warned_first == [1]
    assert "config: 6 of 6 series exceed their stage's max_cost" in \
        sweep.list_plan(cfg, sweep.plan(cfg))


def test_a_flow_network_of_complex_or_integer_output_is_refused(tmp_path):
    """A network returning complex numbers passed the probe (shape and
    finiteness only) and its imaginary part was dropped by .float() at
    prediction with PyTorch's warning; a bool flow was read as 0 and 1."""
    torch = pytest.importorskip("torch")
    import json

    from flowtie_fast.flow import FlowModel

    class Complex(torch.nn.Module):
        def forward(self, x):
            return torch.complex(x[:, :2], x[:, 2:4])

    class ComplexBeyondTheProbe(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] > 32:
                return torch.complex(x[:, :2], x[:, 2:4])
            return x[:, :2] * 0.0

    class Boolean(torch.nn.Module):
        def forward(self, x):
            return x[:, :2] > 0

    def export(name, module):
        path = tmp_path / name
        torch.jit.save(torch.jit.script(module), str(path),
                       _extra_files={"config.json": json.dumps({"in_channels": 6})})
        return path

    for name, module, dtype in (("c.pt", Complex(), "complex64"), ("b.pt", Boolean(), "bool")):
        with pytest.raises(ft.InputError, match=rf"^model: '.*{name}' returns a tensor of "
                                                rf"torch\.{dtype} for a probe triplet"):
            FlowModel(export(name, module))
    t = ft.FocalTriplet(*[np.tile(p, (2, 2)) for p in planes()], DZ, PIXEL, E,
                        gradient=np.zeros((2, 2 * N, 2 * N)))
    late = FlowModel(export("late.pt", ComplexBeyondTheProbe()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "discards the imaginary part"
        with pytest.raises(ft.InputError, match=r"^model: the flow network .*late\.pt' returned "
                                                r"a tensor of torch\.complex64 for an input of "
                                                r"\(1, 6, 64, 64\)"):
            ft.reconstruct(t, "flowtie", model=late, backend="cpu", uncertainty=False)


def test_a_sweep_recipe_saved_with_a_byte_order_mark_is_read(tmp_path):
    """A recipe saved by an editor that writes a UTF-8 byte-order mark was
    refused as 'not valid TOML (Invalid statement (at line 1, column 1))'."""
    from flowtie_fast.simulation import sweep

    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbf" + sweep.DEFAULT_CONFIG.read_bytes())
    assert sweep.load_config(tmp_path / "c.toml")["sweep"] == sweep.load_config()["sweep"]


def test_a_misspelt_shipped_model_name_lists_the_shipped_names():
    """model='defaultx' said only "model: no such file 'defaultx'"."""
    pytest.importorskip("torch")
    from flowtie_fast.flow import FlowModel

    with pytest.raises(ft.InputError, match=r"^model: no such file 'defaultx'; expected a "
                                            r"shipped name \(.*default, fast.*\) or a "
                                            r"TorchScript file"):
        FlowModel("defaultx")


def test_training_data_whose_ground_truth_overflows_float32_are_named(tmp_path, capsys):
    """A gradient_gt of 1e300 became Inf in float32: the training printed
    'overflow encountered in cast' and then blamed the learning rate ('the
    flow model collapsed ...; try a lower lr or another seed')."""
    pytest.importorskip("torch")
    m, z, p = planes()
    np.savez(tmp_path / "big.npz", minus=m, zero=z, plus=p, dz=DZ, scan_step=PIXEL, energy=E,
             phase_gt=np.zeros((N, N)), gradient_gt=np.full((2, N, N), 1e300))
    assert cli.main(["train", str(tmp_path), "--steps", "2", "--batch", "1", "--restarts", "1",
                     "-o", str(tmp_path / "m.pt"), "--checkpoint",
                     str(tmp_path / "c.ckpt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["flowtie train: error: big.npz: 'gradient_gt' holds values up to 1e+300, "
                   "beyond the range of float32 (3.4e+38) that training works in; expected "
                   "rad/Å"]
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("thickness, says", [
    (["5", "5.1", "5.2"], "5, 5.1, 5.2 Å become 1 thickness of whole GaAs unit cells "
                          "(5.653 Å each): 5.7 Å"),
    (["0.1", "30"], "0.1, 30 Å become 2 thicknesses of whole GaAs unit cells (5.653 Å each): "
                    "5.7, 28.3 Å"),
])
def test_simulate_says_when_thicknesses_become_fewer_or_thicker_cells(tmp_path, capsys,
                                                                      monkeypatch, thickness,
                                                                      says):
    """Three thicknesses within one unit cell gave one file, and 0.1 Å gave
    a whole cell of 5.65 Å, without a word before the simulation."""
    pytest.importorskip("ase")
    from flowtie_fast.simulation import simulate

    monkeypatch.setattr(simulate, "simulate_series", lambda *a, **k: [])
    assert cli.main(["simulate", "--thickness", *thickness, "-o", str(tmp_path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"flowtie simulate: warning: --thickness: {says}"]
    assert cli.main(["simulate", "--thickness", "5.65", "22.6", "-o", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_evaluate_shows_a_thickness_the_file_does_not_record_as_unknown_not_nan(tmp_path,
                                                                               capsys):
    """A file without 'thickness' was shown as '(case, nan Å)' and '| nan |'."""
    m, z, p = planes()
    np.savez(tmp_path / "c.npz", minus=m, zero=z, plus=p, dz=DZ, scan_step=PIXEL, energy=E,
             phase_gt=np.outer(np.sin(np.arange(N)), np.ones(N)))
    assert cli.main(["evaluate", str(tmp_path), "--methods", "tie", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out
    assert "c.npz (c): NMSE tie " in out and "| c.npz | c | - | " in out


def test_fftw_planning_of_awkward_sizes_is_bounded_in_time(monkeypatch):
    """FFTW_MEASURE planned sizes of large prime factors for longer than any
    solve (a TIESolver of 2 x 4099 px: 37 s; 2 x 1048573 px: over 5 minutes),
    in C, where Ctrl-C is not seen: each plan now has a time limit."""
    pyfftw = pytest.importorskip("pyfftw")
    from flowtie_fast import fft

    limits = []
    real_fftw = pyfftw.FFTW

    def spy(*args, **kwargs):
        limits.append(kwargs.get("planning_timelimit"))
        return real_fftw(*args, **kwargs)

    monkeypatch.setattr(pyfftw, "FFTW", spy)
    for boundary in ("periodic", "mirror"):  # measured plans (64² and more): quick here
        ft.TIESolver((64, 96), PIXEL, boundary=boundary, backend="cpu")
    assert len(limits) >= 4 and all(t == fft.PLANNING_SECONDS <= 10 for t in limits)


@pytest.mark.parametrize("line, key", [
    ({"id": "s0000", "plan": "x"}, "plan"),
    ({"id": "s0000", "plan": {"id": "s0000", "kind": "crystal"}}, "plan"),
    ({"id": "s0000", "files": "abc"}, "files"),
    ({"id": "s0000", "index": True}, "index"),
    ({"id": "s0000", "truth": [1]}, "truth"),
])
def test_a_sweep_manifest_line_of_another_form_is_named(tmp_path, capsys, line, key):
    """A manifest line whose plan was no planned series failed --list and the
    run with 'unexpected TypeError' or KeyError (exit status 1); its files or
    index failed the training's load_corpus alike."""
    import json

    from flowtie_fast.simulation import sweep
    from flowtie_fast.training.data import load_corpus

    (tmp_path / "manifest.jsonl").write_text('{"id": "s00\n' + json.dumps(line) + "\n")
    says = rf"manifest\.jsonl: line 2 \(series s0000\) records '{key}' as .*, expected "
    with pytest.raises(ft.InputError, match="^" + says):
        sweep.read_manifest(tmp_path)
    with pytest.raises(ft.InputError, match="^" + says):
        load_corpus(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text(sweep.DEFAULT_CONFIG.read_text())
    assert cli.main(["simulate", "--sweep", str(recipe), "--list", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowtie simulate: error: manifest.jsonl: line 2")


@pytest.mark.parametrize("option, value", [("gain_noise", 1e3), ("gain_noise", 1e200),
                                           ("gain_map", 1e6), ("gain_map", 1e200)])
def test_a_gain_spread_whose_draws_underflow_is_refused(option, value):
    """A gain noise of 1e3 (or a gain map spread of 1e6) gave counts of zero
    everywhere without a word, 1e200 an OverflowError."""
    from flowtie_fast.simulation import acquisition

    patterns = np.ones((4, 4, 8, 8))
    with pytest.raises(ft.InputError, match=rf"^{option}: expected a relative spread in "
                                            r"\[0, (10|1)\], got "):
        acquisition.counts(patterns, 1e3, 0.5, np.random.default_rng(0), **{option: value})
    with pytest.raises(ft.InputError, match=rf"^{option}: expected a relative spread"):
        acquisition.apply([patterns] * 3, rng=np.random.default_rng(0), dose=1e3,
                          scan_step=0.5, **{option: value})
    top = {"gain_noise": acquisition.GAIN_NOISE_MAX, "gain_map": acquisition.GAIN_MAP_MAX}
    c = acquisition.counts(patterns, 1e3, 0.5, np.random.default_rng(0),
                           **{option: top[option]})
    assert np.isfinite(c).all() and c.mean() > 1


def _under_address_space_limit(script, gib=3):
    """``script`` run in a fresh interpreter whose address space is limited to
    ``gib`` GiB (ulimit -v); returns the completed process."""
    resource = pytest.importorskip("resource")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (gib << 30, gib << 30))

    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)


def test_planes_beyond_memory_make_a_triplet_whose_solve_is_refused_not_a_memory_error():
    """Planes that are views larger than memory (a memory map, a broadcast
    view) raised a bare MemoryError from the triplet's check for negative
    values, which made a boolean image of each plane's size; the triplet is
    made and the solve refused naming its shape."""
    run = _under_address_space_limit(
        "import numpy as np, flowtie_fast as ft\n"
        "big = np.broadcast_to(np.float32(1.0), (60000, 60000))\n"
        "t = ft.FocalTriplet(big, big, big, 20.0, 0.2, 300e3)\n"
        "try:\n"
        "    ft.reconstruct(t, backend='cpu')\n"
        "except ft.InputError as exc:\n"
        "    print(exc)\n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("shape: (60000, 60000) needs about"), run.stdout


def test_a_batch_whose_phases_exceed_memory_is_refused_naming_the_stack():
    """A broadcast or memory-mapped stack of more items than memory holds
    phases for raised a bare MemoryError when the output was allocated."""
    run = _under_address_space_limit(
        "import numpy as np, flowtie_fast as ft\n"
        "plan = ft.Plan((32, 32), 0.2, 20.0, 300e3, backend='cpu', warmup=False)\n"
        "y, x = np.mgrid[:32, :32]\n"
        "base = (1 + 0.1 * np.cos(2 * np.pi * y / 32)).astype(np.float32)\n"
        "one = np.stack([base, base * 1.01, base * 1.02])[None]\n"
        "assert plan.solve_batch(np.repeat(one, 2, axis=0)).shape == (2, 32, 32)\n"
        "try:\n"
        "    plan.solve_batch(np.broadcast_to(one, (3_000_000, 3, 32, 32)))\n"
        "except ft.InputError as exc:\n"
        "    print(exc)\n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("stack: a batch of 3000000 items of (32, 32) needs about "
                                 "11.4 GiB for its phases (float32)"), run.stdout


def test_a_flow_batch_beyond_memory_is_refused_naming_the_planes_not_the_model():
    """The batched flow pass makes the network's inputs for the whole batch:
    beyond memory it raised a bare MemoryError (or, inside the network,
    blamed the model file for PyTorch's failed allocation)."""
    pytest.importorskip("torch")
    run = _under_address_space_limit(
        "import numpy as np, flowtie_fast as ft\n"
        "plan = ft.Plan((32, 32), 0.2, 20.0, 300e3, method='flowtie', uncertainty=False,\n"
        "               backend='cpu', warmup=False)\n"
        "y, x = np.mgrid[:32, :32]\n"
        "base = (1 + 0.1 * np.cos(2 * np.pi * y / 32)).astype(np.float32)\n"
        "one = np.stack([base, base * 1.01, base * 1.02])[None]\n"
        "g = np.zeros((1, 2, 32, 32), np.float32)\n"
        "b = 100_000\n"
        "try:\n"
        "    plan.solve_batch(np.broadcast_to(one, (b, 3, 32, 32)),\n"
        "                     gradient=np.broadcast_to(g, (b, 2, 32, 32)))\n"
        "except ft.InputError as exc:\n"
        "    print(exc)\n", gib=4)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(("planes: 100000 triplet(s) of (32, 32) px need more memory",
                                  "stack: a batch of 100000 items of (32, 32) does not fit")
                                 ), run.stdout


@pytest.mark.parametrize("noise, shown", [(np.ones((4, 3)), "an array of shape (4, 3)"),
                                          (np.ones((32, 32)), "an array of shape (32, 32)"),
                                          ([[1.0, 2.0, 3.0]], "[[1.0, 2.0, 3.0]] of shape (1, 3)")])
def test_noise_of_too_many_dimensions_is_shown_with_its_shape_once(noise, shown):
    """Per-item variances (B, 3) or a variance image gave 'an array of shape
    (4, 3) of shape (4, 3)'."""
    with pytest.raises(ft.InputError) as err:
        ft.FocalTriplet(*planes(), DZ, PIXEL, E, noise=noise)
    assert str(err.value).endswith(f"got {shown}") and str(err.value).count("of shape") == 1


def test_evaluate_refuses_an_output_that_is_a_link_to_one_of_its_cases(tmp_path, capsys):
    """`flowtie evaluate -o` was checked against nothing it reads: a table
    path linked to a case file was taken (the link replaced by the table)
    where every other command refuses an output that is one of its inputs."""
    data = tmp_path / "data"
    ft.save(data / "a.npz", ft.FocalTriplet(*planes(), DZ, PIXEL, E))
    table = tmp_path / "table.md"
    table.symlink_to(data / "a.npz")
    before = (data / "a.npz").read_bytes()
    assert cli.main(["evaluate", str(data), "-o", str(table), "--methods", "tie",
                     "--backend", "cpu", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output: " in err[0] and "is the input file" in err[0], err
    assert table.is_symlink() and (data / "a.npz").read_bytes() == before


def test_a_closed_standard_output_is_named_as_such_not_an_unexpected_error(tmp_path):
    """Started with its standard output closed (``>&-``), where Python sets
    ``sys.stdout`` to None, flowtie reconstruct wrote its result and then
    failed with "unexpected AttributeError: 'NoneType' object has no
    attribute 'write'" (a 4D-STEM file, which prints before it writes, not
    even written); the result is written and the failure named at the end,
    as for a full device."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                          str(source), "-o", str(tmp_path / "out.npz"), "--backend", "cpu"],
                         stderr=subprocess.PIPE, text=True, timeout=300,
                         preexec_fn=lambda: os.close(1))
    assert run.returncode == 1
    assert run.stderr.strip() == ("flowtie reconstruct: error: the standard output cannot be "
                                  f"written (it is closed) ({tmp_path / 'out.npz'} written whole "
                                  "before it; --overwrite replaces it)"), run.stderr
    with np.load(tmp_path / "out.npz") as written:
        assert np.isfinite(written["phase"]).all()
    # A 4D-STEM file prints its registration before the result is written; with
    # the standard error closed too, the warnings are dropped, not fatal.
    data = patterns()
    four = ft.save(tmp_path / "4d.npz", ft.Dataset(*data, dz=(DZ, DZ), scan_step=(0.2, 0.2),
                                                   energy=E, k_sampling=(0.05, 0.05)))
    for closed in ((1,), (1, 2)):
        out = tmp_path / f"out{len(closed)}.npz"
        run = subprocess.run([sys.executable, "-m", "flowtie_fast._entry", "reconstruct",
                              str(four), "-o", str(out), "--backend", "cpu", "--method", "icom"],
                             stderr=subprocess.PIPE, text=True, timeout=300,
                             preexec_fn=lambda closed=closed: [os.close(fd) for fd in closed])
        assert run.returncode == 1, run.stderr
        with np.load(out) as written:
            assert np.isfinite(written["phase"]).all()


def test_an_output_name_with_a_newline_is_shown_on_one_line(tmp_path, capsys):
    """The line naming the output printed a newline in its name raw: one
    result read as two lines by a log parser. Quoted with its escapes."""
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    out = tmp_path / "x\ny.npz"
    assert cli.main(["reconstruct", str(source), "-o", str(out), "--method", "tie",
                     "--backend", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert out.exists() and len(lines) == 1 and repr(str(out)) in lines[0], lines


@pytest.mark.parametrize("index, name", [(0, "minus"), (1, "zero"), (2, "plus")])
def test_a_nan_pattern_of_any_scan_is_named_by_its_scan_position(index, name):
    """A NaN in one pattern of the ±dz scans was named with its scan position,
    one in the in-focus scan only as 'the patterns contain NaN or Inf'."""
    data = [d.astype(np.float32) for d in patterns((8, 8, 16, 16))]
    data[index][3, 5, 4, 4] = np.nan
    with pytest.raises(ft.InputError, match=rf"^{name}: contains NaN or Inf \(.*scan position "
                                            r"\(3, 5\)"):
        ft.FocalTriplet.from_4dstem(*data, dz=DZ, scan_step=0.2, k_sampling=0.05, energy=E,
                                    backend="cpu")


def test_a_figure_that_cannot_be_written_is_named_by_png(tmp_path, capsys, monkeypatch):
    """A full disk while the --png figure was written was reported as
    "output: 'f.png' cannot be written", naming -o (already written) instead
    of --png."""
    import errno

    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.figure  # noqa: F401

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    t = ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E)
    source = ft.save(tmp_path / "in.npz", t)
    out, png = tmp_path / "o.npz", tmp_path / "f.png"
    assert cli.main(["reconstruct", str(source), "-o", str(out), "--png", str(png),
                     "--backend", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowtie reconstruct: error: ")
    assert f"--png: {str(png)!r} cannot be written (No space left on device)" in err[0], err
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "o.npz"]


class _Unreadable:
    """An array-like whose read fails, as a lazy file dataset's does."""

    dtype = np.dtype(np.float32)

    def __init__(self, shape):
        self.shape = shape

    def __array__(self, *args, **kwargs):
        raise OSError("Can't read data (file truncated)")


def test_an_unreadable_gradient_or_stack_is_an_input_error_naming_it():
    m, z, p = planes()
    message = r"could not be read as an array \(Can't read data"
    with pytest.raises(ft.InputError, match=r"^gradient: " + message):
        ft.FocalTriplet(m, z, p, dz=DZ, pixel_size=PIXEL, energy=E,
                        gradient=_Unreadable((2, N, N)))
    with pytest.raises(ft.InputError, match=r"^gradient: " + message):
        ft.TIESolver((N, N), PIXEL, backend="cpu").integrate(_Unreadable((2, N, N)))
    with pytest.raises(ft.InputError, match=r"^minus: expected a 4-D array"):
        ft.FocalTriplet.from_4dstem(_Unreadable((6, 6, 16, 16)), *patterns()[1:], **STEM)


@pytest.mark.parametrize("scale", [1e80, 1e120])
def test_float64_planes_of_a_huge_but_representable_scale_are_solved(scale):
    # the screen's fourth powers pass float64's range: the planes are examined
    # pixel by pixel, not refused by a Python OverflowError
    m, z, p = (a * scale for a in planes())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no NumPy overflow warning leaks
        t = ft.FocalTriplet(m, z, p, dz=DZ, pixel_size=PIXEL, energy=E)
        phase = ft.reconstruct(t, method="tie", backend="cpu", dtype="float64").phase
        ref = ft.reconstruct(ft.FocalTriplet(*planes(), dz=DZ, pixel_size=PIXEL, energy=E),
                             method="tie", backend="cpu", dtype="float64").phase
    assert np.allclose(phase, ref, atol=1e-6 * np.abs(ref).max())


@pytest.mark.parametrize("method", ["tie-uniform", "tie", "tie-exact", "gd"])
def test_a_phase_deflecting_the_electron_beyond_a_radian_is_refused(method):
    """A Fresnel triplet recorded at dz 20 Å, given dz 1e-3 Å (in range): the
    TIE phase's gradient reached 5.7 k (1800 rad/Å at 300 keV), under the
    fixed 1e4 rad/Å bound, and came back without a word; the bound is the
    wavenumber's where the energy is known, as for a measured gradient."""
    from flowtie_fast.simulation.optics import propagate
    n, pixel = 64, 0.2
    y, x = np.mgrid[:n, :n] * pixel
    truth = 0.3 * np.exp(-((x - 6.4) ** 2 + (y - 6.4) ** 2) / 8.0)
    recorded = [np.abs(propagate(np.exp(1j * truth), z, pixel, E)) ** 2 for z in (-DZ, 0, DZ)]
    with pytest.raises(ft.ResultError, match=rf"^{method}: .* beyond 319.1 rad/Å, a "
                       r"deflection of 1 rad .*deflects the electron by at least"):
        ft.reconstruct(ft.FocalTriplet(*recorded, dz=1e-3, pixel_size=pixel, energy=E),
                       method=method, backend="cpu")
    plan = ft.Plan((n, n), pixel, 1e-3, E, method=method, backend="cpu")
    with pytest.raises(ft.ResultError, match=rf"^{method}: .* beyond 319.1 rad/Å"):
        plan.solve(*recorded, gradient_out=np.zeros((2, n, n), np.float32))
    rec = ft.reconstruct(ft.FocalTriplet(*recorded, dz=DZ, pixel_size=pixel, energy=E),
                         method=method, backend="cpu")
    assert np.abs(np.gradient(rec.phase, pixel)).max() < 1.0  # the right step: a few 0.1 rad/Å


def test_a_command_failing_after_its_output_was_written_names_it(tmp_path, monkeypatch, capsys):
    """--png failing (a full disk, SIGTERM while the figure is drawn) left the
    -o file complete while the error said nothing of it, and the same command
    run again was refused: 'exists; pass --overwrite'."""
    source = tmp_path / "t.npz"
    ft.save(source, ft.Dataset(*planes(), dz=DZ, scan_step=PIXEL, energy=E))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "_figure", full_disk)
    out = tmp_path / "o.npz"
    assert cli.main(["reconstruct", str(source), "-o", str(out), "--png",
                     str(tmp_path / "o.png")]) == 1
    err = capsys.readouterr().err
    assert out.exists()
    assert err.rstrip().endswith(f"({out} written whole before it; --overwrite replaces it)"), err


def test_one_plane_position_is_refused_naming_z():
    """focal_weights((5.0,)) blamed 'degree' (not given) with an empty range."""
    for z in ((5.0,), ()):
        with pytest.raises(ft.InputError, match=r"^z: expected the positions of at least two "
                                                r"planes \(Å\)"):
            ft.focal_weights(z)


def test_the_command_line_names_its_own_options_in_the_library_s_advice(tmp_path, capsys):
    """Refusals told a command-line user to pass dtype='float64' or
    bf_radius=0.862, arguments the command line had no option for; a NumPy
    RuntimeWarning leaked as a 'warning:' line."""
    from flowtie_fast.cli import _as_options

    every = {"--dtype", "--bf-radius", "--register", "--method"}
    assert _as_options("or use dtype='float64'", every) == "or use --dtype float64"
    assert _as_options("give a larger one, e.g. bf_radius=0.862", every) == \
        "give a larger one, e.g. --bf-radius 0.862"
    assert _as_options("register=False skips it; method='icom'", every) == \
        "--register off skips it; --method icom"
    assert _as_options("pass noise= to state it", every) == "pass noise= to state it"
    # a command without the option keeps the argument; a file's name is kept
    assert _as_options("or use dtype='float64'", {"--method"}) == "or use dtype='float64'"
    assert _as_options("output: 'virtual=bf.npz' is the input", {"--virtual"}) == \
        "output: 'virtual=bf.npz' is the input"
    huge = [p * 1e50 for p in planes()]  # beyond float32, within float64
    source = ft.save(tmp_path / "huge.npz", ft.Dataset(*huge, dz=DZ, scan_step=PIXEL, energy=E))
    assert cli.main(["reconstruct", str(source), "-o", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err
    assert "warning:" not in err and err.rstrip().endswith("or use --dtype float64"), err
    assert cli.main(["reconstruct", str(source), "-o", str(tmp_path / "b.npz"),
                     "--dtype", "float64"]) == 0
    assert np.isfinite(np.load(tmp_path / "b.npz")["phase"]).all()
    assert cli.main(["reconstruct", str(source), "-o", str(tmp_path / "c.npz"),
                     "--bf-radius", "5"]) == 2
    assert "--bf-radius: applies to 4D-STEM files only" in capsys.readouterr().err
