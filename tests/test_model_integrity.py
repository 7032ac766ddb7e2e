"""Integrity of the flow models: shipped files match their recorded digests,
every model passes a probe at load, files that are no model run no code, and
a flow with NaN or Inf is refused at prediction instead of becoming the phase."""

from __future__ import annotations

import json
import warnings
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.flow import FlowEnsemble, FlowModel, load_model  # noqa: E402
from flowtie_fast.flow import infer  # noqa: E402

K = ft.wavenumber(300e3)
PIXEL = (0.2, 0.2)
UPDATE = ('python -c "from flowtie_fast.flow.infer import record_digests; record_digests()"')


def save_module(module, path, in_channels=4):
    """Script ``module`` and save it as a flow model file (config.json as
    export_torchscript writes it)."""
    torch.jit.save(torch.jit.script(module), str(path),
                   _extra_files={"config.json": json.dumps({"in_channels": in_channels})})
    return path


class Zero(torch.nn.Module):
    """A finite flow model: zero flow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x[:, :2])


class Linear(torch.nn.Module):
    """A finite flow model that passes NaN in its input through."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.01 * x[:, :2]


class AllNaN(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :2] * float("nan")


class OneChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


class NaNWhereBright(torch.nn.Module):
    """Finite on smooth input; NaN at pixels brighter than 3x the mean
    in-focus intensity (channel 1 is I0 / mean I0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x[:, :2])
        return torch.where(x[:, 1:2] > 3.0, torch.full_like(v, float("nan")), v)


class Payload:
    """Unpickled, it creates the file ``target`` (Python code run by a pickle)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def smooth_triplet(n=32, bright=False):
    y, x = np.mgrid[:n, :n] * 2 * np.pi / n
    i0 = (1 + 0.1 * np.cos(x + y)).astype(np.float32)
    if bright:
        i0[n // 2, n // 3] = 10.0  # one bright pixel
    didz = (1e-3 * np.cos(2 * x) * np.sin(y)).astype(np.float32)
    return [i0 + 50 * didz, i0, i0 - 50 * didz], didz


def flip_weights(path):
    """Flip the sign bit of every float32 weight in the largest tensor storage
    of a TorchScript file, in place: the file still loads and runs."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        data = bytearray(f.read(info.file_size))
        data[3::4] = bytes(b ^ 0x80 for b in data[3::4])  # high byte of each float32 (LE)
        f.seek(start)
        f.write(data)


# ---------------------------------------------------------------- shipped digests


def test_recorded_digests_match_the_shipped_files():
    """A shipped model cannot change without its recorded digest."""
    recorded = infer.recorded_digests()
    files = {infer.SHIPPED[n]: infer.default_model_path(n) for n in infer.SHIPPED}
    assert set(recorded) == set(files), (
        f"flowtie_fast/data/{infer.DIGESTS_FILE} lists {sorted(recorded)}, the shipped models "
        f"are {sorted(files)}; after checking the files, update the digests with {UPDATE}")
    stale = [f for f, p in files.items() if infer.file_digest(p) != recorded[f]]
    assert not stale, (f"the shipped model files {stale} do not match their digests in "
                       f"flowtie_fast/data/{infer.DIGESTS_FILE}; if the new files are intended "
                       f"(a retrained model), update the digests with {UPDATE}")


@pytest.fixture
def fake_data_dir(tmp_path, monkeypatch):
    """Copies of the shipped files in a folder that the loader takes for the
    package's; the recorded digests stay the package's."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("default", "seed0", "seed2", "seed3"):
        shutil.copy(infer.default_model_path(name), data / infer.SHIPPED[name])
    monkeypatch.setattr(infer, "default_model_path",
                        lambda name="default": data / infer.SHIPPED[name])
    load_model.cache_clear()
    yield data
    load_model.cache_clear()


def test_a_shipped_file_with_flipped_weights_is_refused(fake_data_dir, tmp_path):
    """By name, by its path and as an ensemble member; the same bytes as a
    user's file load (only the digest tells them from a real model)."""
    intact = FlowModel("default")  # intact copies load
    flip_weights(fake_data_dir / "flow_default.pt")
    flip_weights(fake_data_dir / "flow_seed2.pt")
    msg = r"model: the shipped file .*flow_default\.pt \(model 'default'\) does not match " \
          r"its recorded digest \(corrupted or modified install\); reinstall flowtie_fast"
    with pytest.raises(ft.InputError, match=msg):
        FlowModel("default")
    with pytest.raises(ft.InputError, match=msg):
        FlowModel(fake_data_dir / "flow_default.pt")
    with pytest.raises(ft.InputError, match=r"flow_seed2\.pt \(model 'seed2'\) does not match"):
        load_model("ensemble")
    user = FlowModel(shutil.copy(fake_data_dir / "flow_default.pt", tmp_path / "mine.pt"))
    planes, didz = smooth_triplet()
    args = (planes, didz, K, PIXEL, np.zeros((2,) + didz.shape, np.float32))
    want = intact.predict(*args)
    assert (user.predict(*args) - want).abs().max() > 0.5 * want.abs().max()  # silently wrong


def test_the_model_cache_follows_the_file_not_the_path_string(tmp_path, monkeypatch):
    """A relative path after a change of folder, and a file replaced at the
    same path, load the file now there, not the network cached before."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_module(Zero(), tmp_path / "a" / "m.pt")
    save_module(Linear(), tmp_path / "b" / "m.pt")
    planes, didz = smooth_triplet()
    args = (planes, didz, K, PIXEL, np.zeros((2,) + didz.shape, np.float32))
    nonzero = lambda m: bool(m.predict(*args).abs().max() > 0)  # noqa: E731
    load_model.cache_clear()
    try:
        monkeypatch.chdir(tmp_path / "a")
        a = load_model("m.pt")
        assert not nonzero(a) and load_model("m.pt") is a  # cached
        monkeypatch.chdir(tmp_path / "b")
        b = load_model("m.pt")
        assert b is not a and nonzero(b)
        assert str(b.path) == str((tmp_path / "b" / "m.pt").resolve())
        shutil.copy(tmp_path / "b" / "m.pt", tmp_path / "a" / "m.pt")  # replaced in place
        assert nonzero(load_model(tmp_path / "a" / "m.pt"))
    finally:
        load_model.cache_clear()


# ---------------------------------------------------------------- files that are no model


def test_files_that_are_no_model_raise_and_run_no_code(tmp_path):
    """Random bytes, a zip of something else, a torch.save'd dict, a plain
    pickle whose __reduce__ writes a file, and a TorchScript archive whose
    pickles were swapped for it: InputError naming the path, no file written."""
    marker = tmp_path / "marker"
    evil = pickle.dumps(Payload(marker), protocol=2)
    check = tmp_path / "check"  # the payload is live: unpickling writes its file
    pickle.loads(pickle.dumps(Payload(check), protocol=2))
    assert check.exists()

    files = {"random.pt": np.random.default_rng(0).bytes(4096), "evil.pkl": evil}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "not a model")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "state.pt")
    save_module(Zero(), tmp_path / "zero.pt")
    for swapped in ("constants.pkl", "data.pkl"):
        with zipfile.ZipFile(tmp_path / "zero.pt") as z, \
                zipfile.ZipFile(tmp_path / f"swap_{swapped}.pt", "w") as out:
            for n in z.namelist():
                out.writestr(n, evil if n.endswith("/" + swapped) else z.read(n))
    for name in ["random.pt", "evil.pkl", "other.zip", "state.pt", "swap_constants.pkl.pt",
                 "swap_data.pkl.pt"]:
        path = tmp_path / name
        with pytest.raises(ft.InputError, match="is not a readable TorchScript flow model") as e:
            FlowModel(path)
        assert str(path) in str(e.value)
    assert not marker.exists()


# ---------------------------------------------------------------- probe at load


def test_the_probe_refuses_broken_models_at_load(tmp_path):
    """A model that returns NaN, the wrong shape, or fails on its declared
    input channels is refused at load, naming its file."""
    good = FlowModel(save_module(Zero(), tmp_path / "zero.pt"))
    assert good.in_channels == 4
    cases = {
        "nan.pt": (AllNaN(), 4, "produces NaN or Inf on a smooth probe triplet"),
        "one.pt": (OneChannel(), 4, r"returns \(1, 1, 32, 32\) for a probe triplet"),
        "conv.pt": (torch.nn.Conv2d(4, 2, 3, padding=1), 6,
                    "fails on a probe triplet of 32x32 pixels with 6 input channels"),
    }
    for name, (module, channels, why) in cases.items():
        path = save_module(module, tmp_path / name, channels)
        with pytest.raises(ft.InputError, match=why) as e:
            FlowModel(path)
        assert str(path) in str(e.value)
        with pytest.raises(ft.InputError, match=why):
            FlowModel(path, precision="bfloat16")


# ---------------------------------------------------------------- NaN at prediction


def test_a_flow_with_nan_at_prediction_raises_naming_the_model(tmp_path):
    """Finite on the probe and on smooth input, NaN at one bright pixel: the
    prediction, the ensemble and a reconstruction raise instead of returning
    a NaN phase."""
    path = save_module(NaNWhereBright(), tmp_path / "bright.pt")
    model = FlowModel(path)  # passes the probe
    planes, didz = smooth_triplet()
    assert torch.isfinite(model.predict(planes, didz, K, PIXEL)).all()
    bright, didz = smooth_triplet(bright=True)
    msg = (r"model: the flow network produced NaN or Inf for this input \(model "
           f"'{path}'\\)$")
    with pytest.raises(ft.InputError, match=msg):
        model.predict(bright, didz, K, PIXEL)
    batch = torch.from_numpy(np.stack([planes, bright]))
    with pytest.raises(ft.InputError, match=msg):
        model.predict_batch(batch, torch.from_numpy(np.stack([didz, didz])), K, PIXEL)
    ens = FlowEnsemble([FlowModel(save_module(Zero(), tmp_path / "zero.pt")), model])
    with pytest.raises(ft.InputError, match=msg):
        ens.predict(bright, didz, K, PIXEL)
    t = ft.FocalTriplet(*bright, dz=50.0, pixel_size=PIXEL, energy=300e3)
    with pytest.raises(ft.InputError, match="flow network produced NaN or Inf"):
        ft.reconstruct(t, method="flowtie", backend="cpu", model=path)
    # NaN already in the input: the message says so.
    planes[0][0, 0] = np.nan
    with pytest.raises(ft.InputError, match="input planes, didz or centre of mass hold NaN"):
        FlowModel(save_module(Linear(), tmp_path / "linear.pt")).predict(planes, didz, K, PIXEL)


class Huge(torch.nn.Module):
    """A finite flow of 1e30 rad/px: within float32, its squares are not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :2], 1e30) * torch.sign(x[:, 1:2] - 1.0)


def test_a_flow_beyond_any_phase_gradient_is_refused_without_numpy_s_overflow(tmp_path):
    """A model whose flow is 1e30 (finite in float32) was refused by the
    result's check, after NumPy's 'overflow encountered' RuntimeWarning
    escaped from the trust check's statistics (an exception under
    warnings-as-errors): only the ResultError, naming the stage."""
    path = save_module(Huge(), tmp_path / "huge.pt")
    planes, _ = smooth_triplet()
    t = ft.FocalTriplet(*planes, dz=50.0, pixel_size=PIXEL, energy=300e3)
    FlowModel(path)  # finite: it passes the load-time probe
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ft.ResultError, match=r"^flowtie"):
            ft.reconstruct(t, method="flowtie", backend="cpu", model=str(path),
                           uncertainty=True)
