"""The fused CPU runtime of the flow network (flow/infer.py, _FusedFlowNet).

On the CPU a FlowNet file runs as fused channels-last oneDNN calls built at
load from the file's own weights. It must be the same function as the
TorchScript module: within 1e-4 of the largest flow in float32 (the erf GELU
of oneDNN against PyTorch's; measured ~2e-5), and in bfloat16 within 5e-2 of
the module in bfloat16 and no further from float32 than it.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fields import periodic_field, triplet_from

torch = pytest.importorskip("torch")

import flowtie_fast as ft  # noqa: E402
from flowtie_fast.flow import FlowModel, infer  # noqa: E402
from flowtie_fast.flow.infer import SHIPPED, _FusedFlowNet, flow_inputs  # noqa: E402
from flowtie_fast.flow.model import FlowNet  # noqa: E402
from flowtie_fast.training.train import TrainConfig, export_torchscript, train  # noqa: E402

E = 300e3
TOL32 = 1e-4  # of the largest flow
TOL16 = 5e-2
TEST_DATA = Path(__file__).resolve().parents[1] / "data" / "test"


def plain(model, x):
    """The TorchScript module itself, as loaded (the reference)."""
    with torch.no_grad():
        return model.module(x.to(model.dtype)).float()


def fused(model, x):
    assert model.runtime == "onednn"
    with torch.no_grad():
        return model._fused(x.to(model.dtype)).float()


def assert_same(got, want, tol):
    assert got.shape == want.shape
    err = float((got - want).abs().max())
    assert err <= tol * float(want.abs().max()), (err, float(want.abs().max()))


def analytic_inputs(shape=(96, 80), pixel=(0.2, 0.25), channels=6):
    """The network's inputs for a triplet of the TIE (tests/fields.py)."""
    phi, intensity, didz, grad = periodic_field(shape=shape, pixel=pixel)
    t = triplet_from(intensity, didz, 10.0, pixel, E)

    def a(v):
        return torch.as_tensor(np.asarray(v, np.float32))[None]

    planes = [a(p) for p in t.planes]
    com = a(grad / (2 * np.pi)) if channels == 6 else None
    return flow_inputs(*planes, a(didz), ft.wavenumber(E), pixel, com)


def random_inputs(shape=(1, 6, 50, 38), seed=0):
    g = torch.Generator().manual_seed(seed)
    return 1 + 0.3 * torch.randn(shape, generator=g)


def analytic_triplet(shape=(64, 64), pixel=(0.2, 0.2)):
    phi, intensity, didz, grad = periodic_field(shape=shape, pixel=pixel)
    planes = [(intensity + s * 10.0 * didz).astype(np.float32) for s in (-1, 0, 1)]
    return ft.FocalTriplet(*planes, dz=10.0, pixel_size=pixel, energy=E,
                           gradient=grad.astype(np.float32))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_runs_fused_as_the_same_function(name):
    m = FlowModel(name)
    assert m.runtime == "onednn"
    for x in (random_inputs(), random_inputs((2, 6, 64, 64), seed=1), analytic_inputs()):
        assert_same(fused(m, x), plain(m, x), TOL32)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_bfloat16_fused_is_as_close_to_float32_as_the_module(name):
    m16, m32 = FlowModel(name, precision="bfloat16"), FlowModel(name)
    assert m16.runtime == "onednn"
    for x in (random_inputs(), analytic_inputs()):
        ref = plain(m32, x)
        module16, fused16 = plain(m16, x), fused(m16, x)
        assert_same(fused16, module16, TOL16)
        # the fused GELU rounds once (float32 accumulator) instead of twice
        rms = [float((v - ref).pow(2).mean().sqrt()) for v in (fused16, module16)]
        assert rms[0] <= 1.1 * rms[1] + 1e-7, rms


def _real_triplets():
    files = sorted(TEST_DATA.glob("*.npz"))[:1]
    return [ft.load(f).triplet() for f in files]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_reconstruction_is_unchanged_on_triplets(precision, monkeypatch):
    """The phase of ``reconstruct`` with the fused network and with the
    TorchScript module (FLOWTIE_FLOW_RUNTIME=torchscript): an analytic 64x64
    triplet, and a simulated 4D-STEM test case where data/test is present."""
    fast = FlowModel("default", precision=precision)
    monkeypatch.setenv("FLOWTIE_FLOW_RUNTIME", "torchscript")
    slow = FlowModel("default", precision=precision)
    monkeypatch.delenv("FLOWTIE_FLOW_RUNTIME")
    assert (fast.runtime, slow.runtime) == ("onednn", "torchscript")
    tol = TOL32 if precision == "float32" else TOL16
    for t in [analytic_triplet()] + _real_triplets():
        a = ft.reconstruct(t, method="flowtie", model=fast, uncertainty=False, backend="cpu")
        b = ft.reconstruct(t, method="flowtie", model=slow, uncertainty=False, backend="cpu")
        assert_same(torch.from_numpy(np.asarray(a.phase, np.float64)),
                    torch.from_numpy(np.asarray(b.phase, np.float64)), tol)


def test_a_model_of_ones_own_runs_fused(tmp_path):
    """Files written by export_torchscript: trained, with a channel list, a
    stride, 4 input channels; odd sizes (padding to the multiple) and sizes
    whose coarsest level is one pixel."""
    from flowtie_fast.training.data import Sample

    phi, intensity, didz, grad = periodic_field(shape=(24, 20), pixel=(0.2, 0.25))
    t = triplet_from(intensity, didz, 10.0, (0.2, 0.25), E)
    s = Sample(np.stack(t.planes).astype(np.float32),
               np.asarray(t.derivative_weights, np.float32),
               (grad / (2 * np.pi)).astype(np.float32), phi.astype(np.float32),
               grad.astype(np.float32), t.wavenumber, (0.2, 0.25), "analytic")
    cfg = TrainConfig(steps=2, batch=1, reps=1, width=8, depth=2)
    trained, _ = train([s], cfg)
    nets = {"trained": trained,
            "channels": FlowNet(6, channels=[8, 12, 20]),
            "stride2": FlowNet(6, width=8, depth=2, stride=2),
            "four": FlowNet(4, width=8, depth=3)}
    for label, net in nets.items():
        path = export_torchscript(net, tmp_path / f"{label}.pt",
                                  cfg if label == "trained" else None)
        for precision, tol in (("float32", TOL32), ("bfloat16", TOL16)):
            m = FlowModel(path, precision=precision)
            assert m.runtime == "onednn", label
            for shape in ((1, net.in_channels, 37, 23), (1, net.in_channels, 4, 4),
                          (2, net.in_channels, 9, 16)):
                x = random_inputs(shape)
                assert_same(fused(m, x), plain(m, x), tol)


class _NotAFlowNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(6, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-3 * torch.tanh(self.conv(x))


def test_another_network_runs_as_torchscript(tmp_path):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(_NotAFlowNet().eval()), str(path),
                   _extra_files={"config.json": json.dumps({"in_channels": 6, "width": 8,
                                                            "depth": 2})})
    m = FlowModel(path)
    assert m.runtime == "torchscript" and m._fused is None
    x = random_inputs()
    with torch.no_grad():
        assert torch.equal(m._run(x), m.module(x))


def test_the_fused_path_falls_back_with_a_warning(monkeypatch):
    m = FlowModel("default")
    x = random_inputs()
    want = plain(m, x)

    def broken(self, x):
        raise RuntimeError("no oneDNN kernel for this")

    monkeypatch.setattr(_FusedFlowNet, "__call__", broken)
    # an input both paths refuse: the module's error, and the fused path stays on
    module = m.module

    def refuses(x):
        raise RuntimeError("input too small for this network")

    m.module = refuses
    with pytest.raises(RuntimeError, match="input too small"), torch.no_grad():
        m._run(x)
    assert m.runtime == "onednn"
    m.module = module
    with pytest.warns(RuntimeWarning, match="fused oneDNN path failed"):
        with torch.no_grad():
            got = m._run(x)
    assert torch.equal(got, want) and m.runtime == "torchscript"
    # a path that differs on the load-time probe is never used (the agreement
    # of a shipped config is kept for the process: forget it first)
    monkeypatch.setattr(_FusedFlowNet, "__call__",
                        lambda self, x: 2 * torch.ones(x.shape[0], 2, *x.shape[2:]))
    monkeypatch.setattr(infer, "_FUSED_AGREED", set())
    with pytest.warns(RuntimeWarning, match="fused oneDNN path is off"):
        assert FlowModel("default").runtime == "torchscript"


def test_one_agreement_a_process_serves_every_shipped_file_of_its_config(monkeypatch):
    monkeypatch.setattr(infer, "_FUSED_AGREED", set())
    calls = []
    agrees = _FusedFlowNet.agrees

    def counted(self, module, x, tol=1e-4):
        calls.append(1)
        return agrees(self, module, x, tol)

    monkeypatch.setattr(_FusedFlowNet, "agrees", counted)
    for name in ("seed0", "seed2", "seed3"):
        assert FlowModel(name).runtime == "onednn"
    assert len(calls) == 1


def test_threads_share_one_fused_model():
    m = FlowModel("default")
    inputs = [analytic_triplet((48, 40)), analytic_triplet((64, 32))] * 3
    args = [([p for p in t.planes], (t.planes[2] - t.planes[0]) / 20.0, t.wavenumber,
             t.pixel_size, t.gradient / (2 * np.pi)) for t in inputs]
    want = [m.predict(*a) for a in args]
    got = [None] * len(args)

    def work(i):
        for _ in range(3):
            got[i] = m.predict(*args[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(args))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_the_runtime_variable_is_read_or_refused(monkeypatch):
    monkeypatch.setenv("FLOWTIE_FLOW_RUNTIME", " TorchScript ")
    assert FlowModel("default").runtime == "torchscript"
    monkeypatch.setenv("FLOWTIE_FLOW_RUNTIME", "onnx")
    with pytest.raises(ft.BackendError, match="FLOWTIE_FLOW_RUNTIME: expected 'onednn'"):
        FlowModel("default")
