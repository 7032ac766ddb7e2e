"""Training the flow model: physical augmentations, determinism, resuming, export."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from fields import periodic_field, triplet_from

torch = pytest.importorskip("torch")

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.training.data import Sample, _flip, _rot90, augment, load_samples, tile  # noqa: E402
from flowtie_fast.training.train import TrainConfig, export_torchscript, train  # noqa: E402

E = 300e3


def make_sample(pixel=(0.2, 0.25), shape=(24, 20), contrast=0.3):
    phi, intensity, didz, grad = periodic_field(shape=shape, pixel=pixel, contrast=contrast)
    t = triplet_from(intensity, didz, 10.0, pixel, E)
    planes = np.stack(t.planes).astype(np.float32)
    return Sample(planes, np.asarray(t.derivative_weights, np.float32),
                  (grad / (2 * np.pi)).astype(np.float32), phi.astype(np.float32),
                  grad.astype(np.float32), t.wavenumber, pixel, "analytic")


def spectral_gradient(phase, pixel):
    p = ft.PoissonSolver(phase.shape, pixel, dtype=np.float64, backend="cpu")
    return p.gradient(phase.astype(np.float64))


@pytest.mark.parametrize("op", ["flip0", "flip1", "rot90", "rot90x3", "tile"])
def test_augmentations_keep_the_gradient_the_gradient_of_the_phase(op):
    s = make_sample()
    if op == "flip0":
        a = _flip(s, 0)
    elif op == "flip1":
        a = _flip(s, 1)
    elif op == "rot90":
        a = _rot90(s)
    elif op == "rot90x3":
        a = _rot90(_rot90(_rot90(s)))
    else:
        a = tile(s, 2)
    want = spectral_gradient(a.phase, a.pixel_size)
    scale = np.abs(want).max()
    np.testing.assert_allclose(a.gradient, want, atol=2e-5 * scale)
    np.testing.assert_allclose(2 * np.pi * a.com, want, atol=2e-5 * scale)
    # The TIE still holds for the transformed planes: tie-exact recovers the phase.
    t = ft.FocalTriplet(*a.planes, dz=10.0, pixel_size=a.pixel_size, energy=E)
    rec = ft.reconstruct(t, method="tie-exact", backend="cpu", dtype="float64")
    d = rec.phase - (a.phase - a.phase.mean())
    assert np.sqrt(np.mean(d**2) / np.var(a.phase)) < 1e-3


def test_dose_augmentation_adds_poisson_noise():
    s = make_sample()
    rng = np.random.default_rng(0)
    low = augment(s, rng, dose_range=(10.0, 10.0))
    high = augment(s, np.random.default_rng(0), dose_range=(1e6, 1e6))
    clean = augment(s, np.random.default_rng(0))
    assert np.std(low.planes[1] - clean.planes[1]) > 10 * np.std(high.planes[1] - clean.planes[1])


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    samples = [make_sample(), make_sample(pixel=(0.3, 0.3), contrast=0.1)]
    cfg = TrainConfig(steps=6, batch=2, reps=1, width=8, depth=2, lr=3e-3, checkpoint_every=2)
    straight, history = train(samples, cfg)
    ckpt = tmp_path / "run.pt"
    train(samples, cfg, checkpoint=ckpt, stop_after=3)
    lines = []
    resumed, history2 = train(samples, cfg, checkpoint=ckpt, resume=ckpt, log=lines.append)
    assert lines == [f"resuming from {ckpt} at step 3"]
    assert history2 == history
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    longer, h = train(samples, TrainConfig(steps=40, batch=2, reps=1, width=8, depth=2, lr=3e-3))
    assert np.mean(h[-5:]) < 0.5 * np.mean(h[:5])


def test_a_dead_network_is_recognised_and_a_fresh_one_is_not():
    from flowtie_fast.training.train import _dead

    fresh = {"flow": torch.tensor(0.9985), "phase": torch.tensor(0.9995),
             "grad_norm": torch.tensor(0.3)}  # a new network: near zero, learning
    dead = {"flow": torch.tensor(1.0), "phase": torch.tensor(1.0),
            "grad_norm": torch.tensor(2e-8)}  # seed 2 of the shipped recipe from step ~250
    assert not _dead(fresh) and _dead(dead)
    assert not _dead({**dead, "phase": torch.tensor(0.5)})


def test_a_collapse_rolls_back_to_the_last_healthy_state(monkeypatch):
    """Twenty dead steps from step 31, detected at step 50: back to the newest
    snapshot at least 40 steps older (step 10), learning rate halved, the run
    completes; a NaN that recurs exhausts the rollbacks."""
    import flowtie_fast.training.train as tr

    calls = {"n": 0}

    def dead_once(terms):
        calls["n"] += 1
        return 31 <= calls["n"] <= 50

    monkeypatch.setattr(tr, "_dead", dead_once)
    samples = [make_sample()]
    cfg = TrainConfig(steps=60, batch=1, reps=1, width=8, depth=2, lr=2e-3, checkpoint_every=10)
    with pytest.warns(RuntimeWarning, match="collapse detected at step 50.*rolled back to "
                                            "step 10.*halved to 0.001"):
        model, history = tr.train(samples, cfg)
    assert len(history) == 60 and calls["n"] == 50 + 50

    bad = make_sample()
    bad.planes[1, 3, 3] = np.nan  # every batch carries it: the loss is never finite
    with pytest.warns(RuntimeWarning, match="rolled back"), \
            pytest.raises(RuntimeError, match="collapsed .* after 2 rollbacks"):
        tr.train([bad], TrainConfig(steps=5, batch=1, reps=1, width=8, depth=2, restarts=2))


def test_a_run_resumed_inside_a_dead_stretch_ends_as_the_uninterrupted_one(monkeypatch,
                                                                          tmp_path):
    """Stopped at step 40, ten steps into a dead stretch: the checkpoint keeps the
    streak and the snapshots, so the resumed run rolls back where the
    uninterrupted one does (step 50, to step 10) and ends with the same weights."""
    import flowtie_fast.training.train as tr

    def dead_from_31_to_50():
        calls = {"n": 0}

        def dead(terms):
            calls["n"] += 1
            return 31 <= calls["n"] <= 50
        return dead

    samples = [make_sample()]
    cfg = TrainConfig(steps=60, batch=1, reps=1, width=8, depth=2, lr=2e-3, checkpoint_every=10)
    monkeypatch.setattr(tr, "_dead", dead_from_31_to_50())
    with pytest.warns(RuntimeWarning, match="rolled back to step 10"):
        straight, history = tr.train(samples, cfg)
    monkeypatch.setattr(tr, "_dead", dead_from_31_to_50())  # the same verdicts, call by call
    ckpt = tmp_path / "run.pt"
    tr.train(samples, cfg, checkpoint=ckpt, stop_after=40)
    assert torch.load(ckpt, weights_only=True)["streak"] == 10
    with pytest.warns(RuntimeWarning, match="rolled back to step 10"):
        resumed, history2 = tr.train(samples, cfg, checkpoint=ckpt, resume=ckpt)
    assert history2 == history
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_export_loads_and_matches(tmp_path):
    model, _ = train([make_sample()], TrainConfig(steps=2, batch=1, reps=1, width=8, depth=2))
    path = export_torchscript(model, tmp_path / "flow.pt")
    extra = {"config.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    config = extra["config.json"]
    config = config.decode() if isinstance(config, bytes) else config
    assert '"in_channels": 6' in config
    x = torch.randn(1, 6, 20, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_a_bad_teacher_is_refused_by_the_config_before_any_data(tmp_path):
    """--teacher nope was refused only after the training data were read."""
    (tmp_path / "evil.pt").write_bytes(b"not a model")
    for teacher, says in (("nope", r"^teacher: 'nope' is neither a shipped name"),
                          (tmp_path, r"^teacher: .* is a directory"),
                          (tmp_path / "evil.pt", r"^teacher: .* is not a TorchScript model")):
        with pytest.raises(ft.InputError, match=says):
            TrainConfig(teacher=teacher, distill=0.5)
    assert TrainConfig(teacher="fast", distill=0.5).teacher == "fast"


def test_distillation_pulls_the_student_toward_its_teacher(tmp_path):
    """With distill = 1 the flow term's target is the teacher's flow: a student
    trained on the flow term alone ends nearer the teacher than one trained on
    the ground truth (same seed, same batches); distill = 0 ignores the
    teacher (bitwise the plain run)."""
    from flowtie_fast.training.train import _tensors

    samples = [make_sample()]
    # A teacher that is wrong on purpose: a briefly trained small network.
    teacher, _ = train(samples, TrainConfig(steps=3, batch=1, reps=1, width=8, depth=2, seed=5))
    path = export_torchscript(teacher, tmp_path / "teacher.pt")
    base = dict(steps=40, batch=2, reps=1, width=8, depth=2, lr=3e-3, weights=(1.0, 0.0, 0.0))
    plain, h0 = train(samples, TrainConfig(**base))
    with pytest.warns(RuntimeWarning, match="ignored: distill is 0"):
        ignored, h1 = train(samples, TrainConfig(**base, teacher=str(path), distill=0.0))
    assert h1 == h0
    student, _ = train(samples, TrainConfig(**base, teacher=str(path), distill=1.0))
    x = _tensors([samples[0]], True)[0]
    with torch.no_grad():
        t = teacher.eval()(x)
        near = float(((student.eval()(x) - t) ** 2).mean())
        far = float(((plain.eval()(x) - t) ** 2).mean())
    assert near < 0.5 * far


def test_distillation_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="distill: expected a fraction"):
        train([make_sample()], TrainConfig(steps=1, width=8, depth=2, distill=1.5,
                                           teacher="default"))
    with pytest.raises(ValueError, match="teacher: distill > 0 needs a teacher"):
        train([make_sample()], TrainConfig(steps=1, width=8, depth=2, distill=0.5))
    with pytest.raises(ValueError, match="teacher: .* takes other inputs"):
        train([make_sample()], TrainConfig(steps=1, width=8, depth=2, distill=0.5,
                                           teacher="default", use_com=False))
    # A run resumed from its checkpoint keeps the targets it was trained on.
    ckpt = tmp_path / "run.ckpt"
    cfg = TrainConfig(steps=2, batch=1, reps=1, width=8, depth=2, teacher="fast", distill=0.5)
    train([make_sample()], cfg, checkpoint=ckpt, stop_after=1)
    with pytest.raises(ft.InputError, match="resume: the checkpoint .* was trained with "
                                            "--teacher fast, this run asks for no --teacher; "
                                            "pass --teacher fast or start without --resume"):
        train([make_sample()], TrainConfig(steps=2, batch=1, reps=1, width=8, depth=2),
              checkpoint=ckpt, resume=ckpt)
    with pytest.raises(ft.InputError, match="resume: .* --distill 0.5, this run asks for "
                                            "--distill 0.25; pass --distill 0.5"):
        train([make_sample()], TrainConfig(steps=2, batch=1, reps=1, width=8, depth=2,
                                           teacher="fast", distill=0.25), resume=ckpt)


def test_samples_from_files(tmp_path):
    s = make_sample()
    ds = ft.Dataset(*s.planes, dz=(10.0, 10.0), scan_step=s.pixel_size, energy=E,
                    phase_gt=s.phase, gradient_gt=s.gradient)
    ft.save(tmp_path / "a.npz", ds)
    (loaded,) = load_samples(tmp_path)
    np.testing.assert_allclose(loaded.didz, s.didz, rtol=1e-5, atol=1e-9)
    assert loaded.pixel_size == s.pixel_size and loaded.name == "a"


def test_the_shipped_ensemble_is_the_mean_of_its_members(tmp_path):
    """model="ensemble": the mean flow of seeds 0, 2 and 3 of one recipe,
    exactly; through reconstruct it integrates that mean flow; members must
    agree on their inputs."""
    from flowtie_fast.flow import FlowEnsemble, FlowModel, load_model
    from flowtie_fast.flow.model import FlowNet

    ens = load_model("ensemble")
    assert isinstance(ens, FlowEnsemble) and ens.path == "ensemble" and len(ens.models) == 3
    s = make_sample()
    args = (list(s.planes), s.didz.astype(np.float32), s.wavenumber, s.pixel_size, s.com)
    members = [FlowModel(n).predict(*args) for n in ("seed0", "seed2", "seed3")]
    torch.testing.assert_close(ens.predict(*args), sum(members) / 3)
    t = ft.FocalTriplet(*s.planes, dz=10.0, pixel_size=s.pixel_size, energy=E,
                        gradient=(2 * np.pi * s.com).astype(np.float32))
    rec = ft.reconstruct(t, method="flowtie", model="ensemble", backend="cpu")
    assert rec.info["model"] == "ensemble"
    one = [ft.reconstruct(t, method="flowtie", model=n, backend="cpu").phase
           for n in ("seed0", "seed2", "seed3")]
    np.testing.assert_allclose(rec.phase, np.mean(one, axis=0), atol=1e-4 * np.abs(rec.phase).max())
    with pytest.raises(ft.InputError, match="share their device and input channels"):
        four = export_torchscript(FlowNet(in_channels=4, width=8, depth=2), tmp_path / "4.pt")
        FlowEnsemble([FlowModel("default"), FlowModel(four)])


def test_train_command_line(tmp_path, capsys, monkeypatch):
    from flowtie_fast.cli import main

    s = make_sample()
    ft.save(tmp_path / "data" / "a.npz",
            ft.Dataset(*s.planes, dz=(10.0, 10.0), scan_step=s.pixel_size, energy=E,
                       phase_gt=s.phase, gradient_gt=s.gradient))
    out = tmp_path / "m.pt"
    assert main(["train", str(tmp_path / "data"), "--steps", "10", "--batch", "2", "--width",
                 "8", "--depth", "2", "-o", str(out), "--checkpoint",
                 str(tmp_path / "c.ckpt")]) == 0
    assert "step     10/10" in capsys.readouterr().out
    assert torch.jit.load(str(out))(torch.randn(1, 6, 24, 20)).shape == (1, 2, 24, 20)

    import flowtie_fast.training.train as tr  # a run that is dead from its first step

    monkeypatch.setattr(tr, "_dead", lambda terms: True)
    dead = tmp_path / "dead.pt"
    assert main(["train", str(tmp_path / "data"), "--steps", "30", "--batch", "1", "--width",
                 "8", "--depth", "2", "-o", str(dead), "--restarts", "0", "--checkpoint",
                 str(tmp_path / "d.ckpt")]) == 2
    assert "collapsed" in capsys.readouterr().err and not dead.exists()


def test_4dstem_dose_samples_carry_counting_noise(tmp_path):
    """Noisy copies are drawn on the patterns: the centre of mass gets the
    shot noise of the dose (error ~ 1/sqrt(dose)), the ground truth stays."""
    from test_stem import K_SAMPLING, _phase_and_gradient, gaussian_patterns

    phi, grad = _phase_and_gradient(n=16)
    data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING) * 50
    ds = ft.Dataset(data, data, data, dz=(20.0, 20.0), scan_step=(0.25, 0.25), energy=E,
                    k_sampling=(K_SAMPLING, K_SAMPLING), phase_gt=phi.astype(np.float32),
                    gradient_gt=grad.astype(np.float32))
    ft.save(tmp_path / "c.npz", ds)
    clean, low, high = load_samples(tmp_path, doses=(None, 1e3, 1e5), center=(16.0, 15.0))
    assert [s.name for s in (clean, low, high)] == ["c", "c@1e+03", "c@1e+05"]
    np.testing.assert_array_equal(low.phase, clean.phase)
    err = [float(np.std(s.com - clean.com)) for s in (low, high)]
    # 100x the dose: 10x less scatter of the centre of mass (Poisson), within 40 %.
    assert 6 < err[0] / err[1] < 14
    assert not np.array_equal(low.planes, clean.planes)


def test_bfloat16_inference_stays_close_to_float32():
    """The shipped model with bfloat16 weights and activations: flows within 3 %
    of the largest float32 flow, float32 out; an unknown precision is refused."""
    from flowtie_fast.flow import FlowModel

    s = make_sample()
    args = (list(s.planes), s.didz.astype(np.float32), s.wavenumber, s.pixel_size, s.com)
    v32 = FlowModel().predict(*args).numpy()
    model16 = FlowModel(precision="bfloat16")
    v16 = model16.predict(*args)
    assert str(v16.dtype) == "torch.float32"
    assert all(p.dtype == torch.bfloat16 for p in model16.module.parameters())
    assert np.abs(v16.numpy() - v32).max() <= 0.03 * np.abs(v32).max()
    # "tf32" differs from "float32" on a GPU only (cuDNN's TF32 convolutions).
    assert torch.equal(FlowModel(precision="tf32").predict(*args), torch.from_numpy(v32))
    with pytest.raises(ft.InputError, match="precision: expected 'float32', 'tf32' or"):
        FlowModel(precision="float16")


def test_both_shipped_models_load_by_name():
    """Every shipped name loads its file and reads 6 channels; the shipped
    weights stay small; an unknown name is a missing file."""
    from flowtie_fast.flow import FlowModel
    from flowtie_fast.flow.infer import SHIPPED, default_model_path

    # six networks of about 1 MB each: the package data stays a few MB
    assert sum(default_model_path(n).stat().st_size for n in SHIPPED) < 7e6
    for name in SHIPPED:
        m = FlowModel(name)
        assert m.path == default_model_path(name) and m.in_channels == 6
        assert m.path.stat().st_size < 3e6  # shipped weights stay small
    assert FlowModel("fast").config["channels"] == [16, 40, 80]
    # The default was distilled from the ensemble (docs/models.md): its file says so.
    recipe = FlowModel("default").config["train"]
    assert (recipe["teacher"], recipe["distill"], recipe["seed"]) == ("ensemble", 0.5, 0)
    recipe = FlowModel("fast").config["train"]
    assert (recipe["teacher"], recipe["distill"], recipe["seed"]) == ("ensemble", 0.5, 1)
    recipe = FlowModel("corpus").config["train"]  # docs/models.md
    assert (recipe["schedule"], recipe["seed"], recipe["init"], recipe["steps"]) == ("cosine", 0, None, 10000)
    with pytest.raises(ft.InputError, match="no such file"):
        FlowModel("fastest")


# Checkpoints: read as tensors and plain containers only, resumed only when asked,
# and only into a run of the same network and objective.

TINY = dict(batch=1, reps=1, width=4, depth=2, checkpoint_every=2)


class _Payload:
    """Unpickling this creates ``path``: proof that the pickle's code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write_data(folder):
    s = make_sample()
    ft.save(folder / "a.npz", ft.Dataset(*s.planes, dz=(10.0, 10.0), scan_step=s.pixel_size,
                                         energy=E, phase_gt=s.phase, gradient_gt=s.gradient))
    return folder


def _plain_equal(a, b):
    """Same structure and values, and nothing but tensors and plain containers."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and \
            all(_plain_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and \
            all(_plain_equal(x, y) for x, y in zip(a, b))
    assert a is None or type(a) in (int, float, str, bool), type(a)
    return type(a) is type(b) and a == b


def test_checkpoints_hold_only_tensors_and_plain_containers(tmp_path):
    """Every entry (snapshots, random states, config with tuples and NumPy
    numbers) reads back with weights_only=True, equal to what was saved."""
    ckpt = tmp_path / "run.ckpt"
    cfg = TrainConfig(steps=4, seed=np.int64(3), dose=(np.float32(50), 500.0),
                      channels=[np.int64(4), 8], **{**TINY, "width": np.int64(4)})
    train([make_sample()], cfg, checkpoint=ckpt)
    safe = torch.load(ckpt, weights_only=True)
    assert _plain_equal(torch.load(ckpt, weights_only=False), safe)
    assert {"model", "optimizer", "step", "history", "numpy_rng", "torch_rng", "config",
            "restarts", "snapshots", "streak"} <= safe.keys()
    assert safe["step"] == 4 and len(safe["snapshots"]) == 3
    assert safe["config"]["seed"] == 3 and safe["config"]["channels"] == (4, 8)
    assert safe["config"]["dose"] == (50.0, 500.0)


def test_a_planted_pickle_never_runs(tmp_path, capsys):
    """A checkpoint whose unpickling would run code, a truncated or random file,
    a file without the training state: one-line InputErrors naming resume, and
    the payload never runs (through the API and the command line)."""
    import pickle

    from flowtie_fast.cli import main

    marker = tmp_path / "pwned"
    planted = tmp_path / "planted.ckpt"
    torch.save({"model": _Payload(marker)}, planted)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps(_Payload(marker)))
    # The payload is live: an unrestricted load runs it.
    proof = tmp_path / "proof"
    torch.save(_Payload(proof), tmp_path / "proof.ckpt")
    torch.load(tmp_path / "proof.ckpt", weights_only=False)
    assert proof.exists()

    good = tmp_path / "good.ckpt"
    cfg = TrainConfig(steps=4, **TINY)
    train([make_sample()], cfg, checkpoint=good, stop_after=2)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    noise = tmp_path / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(0).bytes(4000))
    partial = tmp_path / "partial.ckpt"
    state = torch.load(good, weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "optimizer"}, partial)
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2], listed)
    tampered = tmp_path / "tampered.ckpt"
    torch.save({**state, "model": dict(list(state["model"].items())[1:])}, tampered)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    cases = {planted: "other objects .* not unpickled", legacy: "not unpickled",
             truncated: "unreadable", noise: "not unpickled|unreadable",
             partial: "no 'optimizer' entry", listed: "expected a dict",
             tampered: "does not fit this network: RuntimeError: .*Missing key",
             empty: "unreadable: .*empty",
             tmp_path / "missing.ckpt": "no such checkpoint file"}
    for path, why in cases.items():
        with pytest.raises(ft.InputError, match=f"^resume: .*({why})") as err:
            train([make_sample()], cfg, resume=path)
        assert "\n" not in str(err.value)
    data = _write_data(tmp_path / "data")
    assert main(["train", str(data), "--steps", "4", "--batch", "1", "--width", "4", "--depth",
                 "2", "--resume", str(planted), "--checkpoint", str(tmp_path / "new.ckpt"),
                 "-o", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowtie train: error: resume: ") and err.count("\n") == 1
    assert not marker.exists() and not (tmp_path / "m.pt").exists()


def test_an_existing_checkpoint_is_neither_read_nor_replaced_without_being_asked(tmp_path):
    samples = [make_sample()]
    cfg = TrainConfig(steps=4, **TINY)
    ckpt = tmp_path / "run.ckpt"
    train(samples, cfg, checkpoint=ckpt, stop_after=2)
    before = ckpt.read_bytes()
    with pytest.raises(ft.InputError, match=r"^checkpoint: .*run.ckpt exists .* pass --resume "
                                            r".*run.ckpt .* another --checkpoint path, or "
                                            r"--overwrite"):
        train(samples, cfg, checkpoint=ckpt)
    with pytest.raises(ft.InputError, match="^checkpoint: "):  # resuming elsewhere
        train(samples, cfg, checkpoint=ckpt, resume=tmp_path / "other.ckpt")
    assert ckpt.read_bytes() == before
    # Asked to: a fresh run replaces it (the same run as one without a checkpoint).
    _, fresh = train(samples, cfg)
    _, history = train(samples, cfg, checkpoint=ckpt, overwrite=True)
    assert history == fresh and torch.load(ckpt, weights_only=True)["step"] == 4
    # Resuming into another file leaves the checkpoint read alone.
    train(samples, cfg, checkpoint=ckpt, overwrite=True, stop_after=2)
    before = ckpt.read_bytes()
    _, resumed = train(samples, cfg, checkpoint=tmp_path / "next.ckpt", resume=ckpt)
    assert resumed == fresh and ckpt.read_bytes() == before


@pytest.mark.parametrize("change, message", [
    ({"width": 8}, "--width 4, this run asks for --width 8; pass --width 4"),
    ({"channels": (4, 8, 16)}, "no --channels, this run asks for --channels 4 8 16; leave out "
                               "--channels"),
    ({"stride": 2}, "--stride 1, this run asks for --stride 2; pass --stride 1"),
    ({"use_com": False}, "use_com=True, this run asks for use_com=False; set use_com=True"),
    ({"weights": (1.0, 0.0, 0.0)}, "--weights 1 0 1, this run asks for --weights 1 0 0"),
    ({"lr": 1e-3}, "--lr 0.002, this run asks for --lr 0.001; pass --lr 0.002"),
    ({"seed": 1}, "--seed 0, this run asks for --seed 1; pass --seed 0"),
    ({"dose": (10.0, 100.0)}, "no --dose, this run asks for --dose 10 100"),
])
def test_a_checkpoint_of_another_network_or_objective_is_refused(tmp_path, change, message):
    ckpt = tmp_path / "run.ckpt"
    train([make_sample()], TrainConfig(steps=4, **TINY), checkpoint=ckpt, stop_after=2)
    with pytest.raises(ft.InputError) as err:
        train([make_sample()], TrainConfig(**{"steps": 4, **TINY, **change}), resume=ckpt)
    text = str(err.value)
    assert text.startswith(f"resume: the checkpoint {ckpt} was trained with ") and "\n" not in text
    assert message in text and text.endswith("or start without --resume")


def test_resuming_trains_longer_but_never_zero_steps(tmp_path):
    from dataclasses import fields

    from flowtie_fast.training.train import _CHECKED, RESUMABLE

    # Every setting is either compared with the checkpoint's or free to change.
    assert sorted(RESUMABLE + _CHECKED) == sorted(f.name for f in fields(TrainConfig))
    samples = [make_sample()]
    ckpt = tmp_path / "run.ckpt"
    train(samples, TrainConfig(steps=4, **TINY), checkpoint=ckpt)
    for steps in (4, 3):
        with pytest.raises(ft.InputError, match=f"^resume: the checkpoint .* is already at step "
                                                f"4, this run asks for --steps {steps}; pass "
                                                f"--steps above 4"):
            train(samples, TrainConfig(steps=steps, **TINY), checkpoint=ckpt, resume=ckpt)
    # More steps (and another checkpoint interval and rollback budget): trains on.
    longer = TrainConfig(steps=6, **{**TINY, "checkpoint_every": 3}, restarts=1)
    lines = []
    _, history = train(samples, longer, checkpoint=ckpt, resume=ckpt, log=lines.append)
    assert lines == [f"resuming from {ckpt} at step 4"] and len(history) == 6
    assert torch.load(ckpt, weights_only=True)["step"] == 6


@pytest.mark.parametrize("field, value, message", [
    ("steps", -1, "steps: expected a positive integer, got -1"),
    ("steps", 2.5, "steps: expected a positive integer"),
    ("batch", 0, "batch: expected a positive integer"),
    ("lr", float("nan"), "lr: expected a positive finite number"),
    ("lr", -1e-3, "lr: expected a positive finite number"),
    ("width", 0, "width: expected a positive integer"),
    ("depth", 0, "depth: expected a positive integer"),
    ("channels", (8, 0), "channels: expected a positive integer, got 0"),
    ("stride", 0, "stride: expected a positive integer"),
    ("weights", (0.0, 0.0, 0.0), "weights: expected at least one positive weight"),
    ("weights", (1.0, float("inf"), 0.0), "weights: expected a finite number >= 0, got inf"),
    ("weights", (1.0, -1.0, 0.0), "weights: expected a finite number >= 0, got -1.0"),
    ("weights", (1.0, 1.0), "weights: expected three numbers"),
    ("dose", (100.0, 10.0), r"dose: expected low <= high, got \(100, 10\)"),
    ("dose", (0.0, 10.0), "dose: expected a positive finite number, got 0.0"),
    ("restarts", -1, "restarts: expected an integer >= 0, got -1"),
    ("distill", 1.5, r"distill: expected a fraction in \[0, 1\], got 1.5"),
])
def test_train_settings_are_checked(field, value, message):
    with pytest.raises(ft.InputError, match=f"^{message}"):
        TrainConfig(**{field: value})
    cfg = TrainConfig(steps=1, **TINY)
    setattr(cfg, field, value)  # changed after it was made: train checks it again
    with pytest.raises(ft.InputError, match=f"^{message}"):
        train([make_sample()], cfg)


@pytest.mark.parametrize("args, message", [
    (["--steps", "-1"], "steps: expected a positive integer, got -1"),
    (["--batch", "0"], "batch: expected a positive integer"),
    (["--lr", "inf"], "lr: expected a positive finite number"),
    (["--width", "0"], "width: expected a positive integer"),
    (["--depth", "-2"], "depth: expected a positive integer"),
    (["--channels", "8", "0"], "channels: expected a positive integer"),
    (["--stride", "0"], "stride: expected a positive integer"),
    (["--weights", "0", "0", "0"], "weights: expected at least one positive weight"),
    (["--weights", "1", "nan", "0"], "weights: expected a finite number >= 0"),
    (["--dose", "100", "10"], "dose: expected low <= high"),
    (["--dose", "-1", "10"], "dose: expected a positive finite number"),
    (["--doses", "1e4", "-5"], "doses: expected a positive finite number, got -5.0"),
    (["--restarts", "-1"], "restarts: expected an integer >= 0"),
    (["--distill", "2", "--teacher", "fast"], r"distill: expected a fraction in \[0, 1\]"),
])
def test_the_train_command_checks_its_numbers_before_reading_data(
        tmp_path, capsys, args, message):
    """The data path does not exist: the number is refused before it is looked at."""
    from flowtie_fast.cli import main

    assert main(["train", str(tmp_path / "missing"), "--checkpoint", str(tmp_path / "c.ckpt"),
                 *args]) == 2
    err = capsys.readouterr().err
    assert re.match(f"flowtie train: error: {message}", err) and err.count("\n") == 1


def test_the_train_command_resumes_only_when_asked(tmp_path, capsys):
    from flowtie_fast.cli import main

    data = _write_data(tmp_path / "data")
    ckpt, out = tmp_path / "c.ckpt", tmp_path / "m.pt"
    base = ["train", str(data), "--batch", "1", "--width", "4", "--depth", "2", "-o", str(out),
            "--checkpoint", str(ckpt)]
    assert main([*base, "--steps", "3"]) == 0
    capsys.readouterr()
    before = ckpt.read_bytes()
    assert main([*base, "--steps", "5"]) == 2  # exists, not asked to resume or overwrite
    err = capsys.readouterr().err
    assert err.startswith(f"flowtie train: error: checkpoint: {ckpt} exists") and \
        f"--resume {ckpt}" in err and "--overwrite" in err and ckpt.read_bytes() == before
    assert main([*base, "--steps", "5", "--resume", str(ckpt)]) == 0
    assert f"resuming from {ckpt} at step 3\n" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["step"] == 5
    assert main([*base, "--steps", "5", "--resume", str(ckpt)]) == 2
    assert "already at step 5, this run asks for --steps 5" in capsys.readouterr().err
    assert main([*base, "--steps", "8", "--resume", str(ckpt), "--width", "8"]) == 2
    assert "was trained with --width 4, this run asks for --width 8; pass --width 4" in \
        capsys.readouterr().err
    assert main([*base, "--steps", "2", "--overwrite"]) == 0
    assert torch.load(ckpt, weights_only=True)["step"] == 2
    assert "resuming" not in capsys.readouterr().out


def test_missing_data_paths_are_named(tmp_path, capsys):
    from flowtie_fast.cli import main

    data = _write_data(tmp_path / "data")
    for missing in (tmp_path / "gaas", tmp_path / "b.npz"):
        with pytest.raises(ft.InputError, match=f"^paths: no such file or folder "
                                                f"'{re.escape(str(missing))}'"):
            load_samples([data, missing])
        assert main(["train", str(data), str(missing), "--checkpoint",
                     str(tmp_path / "c.ckpt")]) == 2
        assert f"paths: no such file or folder '{missing}'" in capsys.readouterr().err
    with pytest.raises(ft.InputError, match="^doses: expected a positive"):
        load_samples(data, doses=(None, 0.0))


# -- load_corpus: a sweep folder, real acquisitions ----------------------------------------

ACQUISITION = {"dose": [1e2, 1e6], "gain_noise": [0.0, 0.3], "gain_map": [0.0, 0.05],
               "drift": 3.0, "source_fwhm": [0.0, 1.0]}


def fake_corpus(folder, margin=3):
    """Two series in a sweep folder: s0000 periodic (16 x 16 scan, one file), s0001 a
    window (16 x 16 and ``margin`` positions each side, two files), tiny patterns."""
    import json

    from test_stem import K_SAMPLING, _phase_and_gradient, gaussian_patterns

    lines = []
    for index, (periodic, n_files) in enumerate([(True, 1), (False, 2)]):
        m = 0 if periodic else margin
        n = 16 + 2 * m
        files = []
        for k in range(n_files):
            phi, grad = _phase_and_gradient(n=n)
            phi, grad = (1 + k) * phi, (1 + k) * grad
            data = gaussian_patterns(grad / (2 * np.pi) / K_SAMPLING) * 50
            name = f"s{index:04d}_fake_t{k}.npz"
            ft.save(folder / name,
                    ft.Dataset(data, data, data, dz=(20.0, 20.0), scan_step=(0.25, 0.25),
                               energy=E, k_sampling=(K_SAMPLING, K_SAMPLING),
                               phase_gt=phi.astype(np.float32),
                               gradient_gt=grad.astype(np.float32)))
            files.append({"file": name, "thickness": 5.0 * (k + 1), "exit_plane": k})
        lines.append({"id": f"s{index:04d}", "index": index, "family": "fake", "name": "fake",
                      "scan": {"periodic": periodic, "margin": m, "shape": [n, n]},
                      "truth": {"periodic": periodic, "margin": m}, "files": files,
                      "acquisition": ACQUISITION})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


def test_corpus_samples_are_periodic_or_cropped_windows_under_drawn_acquisitions(tmp_path):
    from flowtie_fast.simulation.acquisition import crop_margin
    from flowtie_fast.training.data import load_corpus

    folder = fake_corpus(tmp_path)
    samples = load_corpus(folder, variants=2, seed=3, center=(16.0, 15.0))
    assert [s.name for s in samples] == [
        "s0000_fake_t0", "s0000_fake_t0@a1", "s0000_fake_t0@a2",
        "s0001_fake_t0", "s0001_fake_t0@a1", "s0001_fake_t0@a2",
        "s0001_fake_t1", "s0001_fake_t1@a1", "s0001_fake_t1@a2"]
    assert [s.periodic for s in samples] == [True] * 3 + [False] * 6
    for s in samples:  # the window's margin of 3 is cropped from planes, COM and truth
        assert s.planes.shape == (3, 16, 16) and s.com.shape == s.gradient.shape == (2, 16, 16)
        assert s.phase.shape == (16, 16)
    with ft.load(folder / "s0001_fake_t1.npz") as ds:
        np.testing.assert_array_equal(samples[6].phase, ds.phase_gt[3:-3, 3:-3])
        np.testing.assert_array_equal(samples[7].gradient, ds.gradient_gt[:, 3:-3, 3:-3])
        t = ft.FocalTriplet.from_4dstem(*(crop_margin(p, 3) for p in (ds.minus, ds.zero,
                                                                       ds.plus)),
                                        dz=ds.dz, scan_step=ds.scan_step,
                                        k_sampling=ds.k_sampling, energy=ds.energy,
                                        center=(16.0, 15.0), backend="cpu")
    np.testing.assert_allclose(samples[6].planes[1], t.planes[1], rtol=1e-6)
    np.testing.assert_allclose(2 * np.pi * samples[6].com, t.gradient, rtol=1e-5, atol=1e-7)
    clean, noisy = samples[0], samples[1:3] + samples[4:6] + samples[7:9]
    assert clean.conditions["dose"] is None and clean.conditions["drift"] == [[0.0, 0.0]] * 3
    for s in noisy:  # drawn from the recorded ranges, the dose floored at 1e3
        c = s.conditions
        assert 1e3 <= c["dose"] <= 1e6 and 0 <= c["gain_noise"] <= 0.3
        assert 0 < max(abs(v) for row in c["drift"] for v in row) <= 3.0
        assert c["drift"][1] == [0.0, 0.0] and 0 <= c["source_fwhm"] <= 1.0
        assert c["margin"] == (0 if s.periodic else 3)
    assert len({s.conditions["dose"] for s in noisy}) == len(noisy)
    assert not np.array_equal(samples[1].planes, clean.planes)


def test_corpus_acquisitions_are_deterministic_by_seed(tmp_path):
    from flowtie_fast.training.data import load_corpus

    folder = fake_corpus(tmp_path)
    a = load_corpus(folder, variants=1, seed=5, center=(16.0, 15.0))
    b = load_corpus(folder, variants=1, seed=5, center=(16.0, 15.0))
    c = load_corpus(folder, variants=1, seed=6, center=(16.0, 15.0))
    for x, y in zip(a, b):
        assert x.conditions == y.conditions
        np.testing.assert_array_equal(x.planes, y.planes)
        np.testing.assert_array_equal(x.com, y.com)
    assert a[1].conditions["dose"] != c[1].conditions["dose"]
    np.testing.assert_array_equal(a[0].planes, c[0].planes)  # noise-free: no draw
    # A series' draws do not depend on the others in the folder.
    (only,) = [s for s in load_corpus(folder, variants=1, seed=5, series=["s0001"],
                                      center=(16.0, 15.0)) if s.name == "s0001_fake_t1@a1"]
    assert only.conditions == a[-1].conditions
    # Overrides of the recorded ranges, and the floor of the dose.
    d = load_corpus(folder, variants=1, seed=5, series=["s0000"], min_dose=None,
                    ranges={"dose": 50.0, "drift": None, "source_fwhm": None},
                    center=(16.0, 15.0))
    assert d[1].conditions["dose"] == 50.0 and d[1].conditions["drift"] == [[0.0, 0.0]] * 3
    assert d[1].conditions["source_fwhm"] == 0.0


def test_corpus_arguments_are_checked(tmp_path):
    from flowtie_fast.training.data import load_corpus

    with pytest.raises(ft.InputError, match="no manifest.jsonl"):
        load_corpus(tmp_path)
    folder = fake_corpus(tmp_path)
    with pytest.raises(ft.InputError, match="variants"):
        load_corpus(folder, variants=-1)
    with pytest.raises(ft.InputError, match="unknown conditions"):
        load_corpus(folder, ranges={"dosage": 1e3})
    with pytest.raises(ft.InputError, match="series"):
        load_corpus(folder, series=["s0009"])
    (folder / "s0000_fake_t0.npz").unlink()
    with pytest.raises(ft.InputError, match="s0000_fake_t0.npz of series s0000 .* missing"):
        load_corpus(folder)


def _dihedral(s):
    """The eight flips and rotations of a sample's in-focus plane."""
    out, a = [], s.planes[1]
    for k in range(4):
        r = np.rot90(a, k)
        out += [r, np.flip(r, 0)]
    return out


def test_windows_are_never_shifted_nor_tiled():
    from flowtie_fast.training.train import _batch

    s = replace(make_sample(shape=(20, 20)), periodic=False)
    assert tile(s, 3) is s
    rng = np.random.default_rng(0)
    forms = _dihedral(s)
    for _ in range(40):
        a = augment(s, rng)
        assert a.periodic is False
        assert any(f.shape == a.planes[1].shape and np.array_equal(f, a.planes[1])
                   for f in forms)
    cfg = TrainConfig(batch=6, reps=2)
    for b in _batch([s], cfg, np.random.default_rng(1)):
        assert b.planes.shape == (3, 20, 20)
        assert any(np.array_equal(f, b.planes[1]) for f in forms)
    # A periodic sample is shifted (a shift is not a flip or rotation of this field).
    p = make_sample(shape=(20, 20))
    shifted = [augment(p, np.random.default_rng(i)).planes[1] for i in range(8)]
    assert not all(any(np.array_equal(f, x) for f in _dihedral(p)) for x in shifted)


def test_window_batches_train_on_the_flow_term_alone():
    seen = {}

    def progress(step, total, terms, seconds):
        seen[step] = (total, terms)

    cfg = TrainConfig(steps=10, batch=2, reps=1, width=8, depth=2, weights=(1.0, 0.0, 1.0))
    train([replace(make_sample(), periodic=False)], cfg, progress=progress)
    total, terms = seen[10]
    assert total == pytest.approx(terms["flow"], rel=1e-6) and terms["phase"] > 1e-3
    train([make_sample()], cfg, progress=progress)
    total, terms = seen[10]
    assert total == pytest.approx(terms["flow"] + terms["phase"], rel=1e-5)
    with pytest.raises(ft.InputError, match="weights: non-periodic samples"):
        train([replace(make_sample(), periodic=False)],
              TrainConfig(steps=1, batch=1, reps=1, width=8, depth=2, weights=(0, 0, 1)))


def test_a_run_starts_from_the_weights_of_init(tmp_path):
    from flowtie_fast.flow.model import FlowNet

    torch.manual_seed(7)
    start = FlowNet(in_channels=6, width=8, depth=2)
    path = export_torchscript(start, tmp_path / "start.pt")
    cfg = TrainConfig(steps=1, batch=1, reps=1, width=8, depth=2, lr=1e-12, init=str(path))
    model, _ = train([make_sample()], cfg)
    for k, v in start.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-9)
    fresh, _ = train([make_sample()], replace(cfg, init=None))
    assert not torch.equal(fresh.state_dict()["head.weight"], start.state_dict()["head.weight"])
    with pytest.raises(ft.InputError, match="init: the weights of .* do not fit"):
        train([make_sample()], replace(cfg, width=16))
    ckpt = tmp_path / "c.ckpt"
    train([make_sample()], replace(cfg, steps=2), checkpoint=ckpt, stop_after=1)
    with pytest.raises(ft.InputError, match="resume: .* was trained with init="):
        train([make_sample()], replace(cfg, steps=2, init=None), checkpoint=ckpt, resume=ckpt)


def test_a_cosine_schedule_resumes_exactly(tmp_path):
    cfg = TrainConfig(steps=6, batch=2, reps=1, width=8, depth=2, checkpoint_every=2,
                      schedule="cosine")
    whole, hist = train([make_sample()], cfg)
    ckpt = tmp_path / "c.ckpt"
    train([make_sample()], cfg, checkpoint=ckpt, stop_after=3)
    resumed, hist2 = train([make_sample()], cfg, checkpoint=ckpt, resume=ckpt)
    assert hist2 == hist
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    flat, _ = train([make_sample()], replace(cfg, schedule="constant"))
    assert not torch.equal(flat.state_dict()["head.weight"], whole.state_dict()["head.weight"])
    with pytest.raises(ft.InputError, match="schedule: expected 'constant' or 'cosine'"):
        TrainConfig(schedule="linear")


_FULL_DISK = r"""
import errno, resource, sys
from pathlib import Path
import torch
from flowtie_fast.flow.model import FlowNet
from flowtie_fast.training.train import _save, export_torchscript

folder = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a disk that fills at 4 KiB
for name, write in (("checkpoint", lambda: _save(folder / "c.ckpt", {"w": torch.zeros(4096)})),
                    ("output", lambda: export_torchscript(FlowNet(in_channels=4, width=8,
                                                                  depth=1), folder / "m.pt"))):
    try:
        write()
    except OSError as exc:
        assert exc.errno == errno.EFBIG, exc
        print(name, str(exc).split("] ", 1)[1])
"""


def test_a_full_disk_while_saving_a_model_or_checkpoint_is_an_oserror(tmp_path):
    """PyTorch's own file writer aborted the process (std::terminate, exit 134,
    a C++ stack trace) when the disk filled while a TorchScript model was
    exported, and raised an opaque RuntimeError ("unexpected pos 12416 vs
    12312") for a checkpoint; both are serialised in memory and written from
    Python now: an OSError naming the file, and no temporary left."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        f"checkpoint checkpoint: {str(tmp_path / 'c.ckpt')!r} cannot be written (File too large)",
        f"output output: {str(tmp_path / 'm.pt')!r} cannot be written (File too large)"]
    assert list(tmp_path.iterdir()) == []


def test_a_model_path_that_is_the_checkpoint_is_named_as_such(tmp_path, capsys):
    """-o equal to --checkpoint (by name or through a link) was refused as
    "output: 'm.pt' is the input file": the checkpoint is written, not read."""
    from flowtie_fast.cli import main

    data = tmp_path / "case.npz"
    data.write_bytes(b"never read")
    (tmp_path / "link.pt").symlink_to(tmp_path / "m.pt")
    for checkpoint in ("m.pt", "link.pt"):
        assert main(["train", str(data), "-o", str(tmp_path / "m.pt"), "--checkpoint",
                     str(tmp_path / checkpoint)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"flowtie train: error: output: {str(tmp_path / 'm.pt')!r} is also the "
                       "--checkpoint path; the model and the checkpoint need two files (e.g. "
                       "-o flowtie_model.pt)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz", "link.pt"]


def test_the_teacher_file_is_never_replaced_by_the_model_or_the_checkpoint(tmp_path, capsys):
    """`flowtie train --teacher t.pt --distill 0.5 -o t.pt --overwrite` read the
    teacher and then replaced it with the student: an input file overwritten."""
    from flowtie_fast.cli import main
    from flowtie_fast.flow.model import FlowNet

    teacher = export_torchscript(FlowNet(in_channels=6, width=4, depth=1), tmp_path / "t.pt")
    (tmp_path / "link.pt").symlink_to(teacher)
    before = teacher.read_bytes()
    data = tmp_path / "case.npz"
    data.write_bytes(b"never read")
    base = ["train", str(data), "--distill", "0.5", "--overwrite"]
    for given, option, target in (("t.pt", "-o", "output"), ("link.pt", "-o", "output"),
                                  ("t.pt", "--checkpoint", "--checkpoint")):
        other = ["--checkpoint", str(tmp_path / "c.ckpt")] if option == "-o" else \
            ["-o", str(tmp_path / "m.pt")]
        assert main([*base, "--teacher", str(tmp_path / given), option, str(teacher),
                     *other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"flowtie train: error: {target}: {str(teacher)!r} is the input file"), err
    assert teacher.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.npz", "link.pt", "t.pt"]


def test_a_gradient_truth_unlike_its_phase_truth_is_refused_naming_the_file(tmp_path):
    """A file whose gradient_gt was 1e6 times the gradient of its phase_gt was
    trained on without a word; a dose of 1e-9 counts a pixel (empty planes)
    ran until the training 'collapsed', blaming the learning rate."""
    from flowtie_fast.training.data import load_samples
    from flowtie_fast.training.train import TrainConfig

    n, step = 32, 0.2
    y, x = np.mgrid[:n, :n] * step
    phase = 0.3 * np.sin(2 * np.pi * y / (n * step)) * np.cos(2 * np.pi * x / (n * step))
    gradient = np.stack(np.gradient(phase, step, step))
    planes = [np.ones((n, n)) * (1 + 0.01 * s + 0.01 * phase) for s in (-1, 0, 1)]
    common = dict(dz=(20.0, 20.0), scan_step=(step, step), energy=300e3, phase_gt=phase)
    ft.save(tmp_path / "good.npz", ft.Dataset(*planes, gradient_gt=gradient, **common))
    assert len(load_samples([tmp_path / "good.npz"])) == 1
    ft.save(tmp_path / "bad.npz", ft.Dataset(*planes, gradient_gt=1e6 * gradient, **common))
    with pytest.raises(ft.InputError, match=r"^bad.npz: 'gradient_gt' is 1e\+06 times the "
                                            r"gradient of its 'phase_gt'"):
        load_samples([tmp_path / "bad.npz"])
    with pytest.raises(ft.InputError, match=r"^dose: expected at least 0.1 counts per pixel"):
        TrainConfig(dose=(1e-9, 1e-9))


def test_a_run_keeps_the_model_and_checkpoint_another_run_made_meanwhile(tmp_path, capsys):
    """Two `flowtie train` runs with the same -o and --checkpoint both exited
    0, each replacing the other's files: the first checkpoint write and the
    export keep a file made meanwhile (checked free before the run)."""
    from flowtie_fast.flow.model import FlowNet
    from flowtie_fast.training import train as tr

    model = FlowNet(in_channels=6, width=4, depth=1)
    out = tmp_path / "m.pt"
    out.write_bytes(b"the other run's model")
    with pytest.raises(ft.InputError, match=r"^output: .*m.pt' was created meanwhile by "
                                            r"another writer; it is kept"):
        tr.export_torchscript(model, out, overwrite=False)
    assert out.read_bytes() == b"the other run's model"
    ck = tmp_path / "c.ckpt"
    ck.write_bytes(b"the other run's checkpoint")
    with pytest.raises(ft.InputError, match=r"^checkpoint: .*c.ckpt' was created meanwhile"):
        tr._save(ck, {"step": 0}, overwrite=False)
    assert ck.read_bytes() == b"the other run's checkpoint"
    tr.export_torchscript(model, out)  # allowed: replaced
    assert out.read_bytes() != b"the other run's model"
