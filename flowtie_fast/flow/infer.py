"""Inference of the flow model: TorchScript files, the shipped default, zero-copy GPU input.

:class:`FlowModel` loads a TorchScript file written by
:func:`~flowtie_fast.flow.train.export_torchscript` (or the file shipped in
``flowtie_fast/data``) and predicts the flow (rad/Å) of a focal series; the
phase is then the project's own Poisson integration of it
(:meth:`TIESolver.solve` with ``method="flowtie"``). On the GPU, CuPy arrays
reach torch through DLPack without a copy to the host.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..backend import is_cupy
from ..errors import InputError

__all__ = ["FlowModel", "default_model_path", "load_model"]

# The models shipped in flowtie_fast/data (MODEL.md): "default" is the most
# accurate; "fast" has a narrow full-resolution level (about half the time,
# measured less accurate: benchmarks/EVALUATION.md).
SHIPPED = {"default": "flow_default.pt", "fast": "flow_fast.pt"}


def default_model_path(name: str = "default") -> Path:
    """A TorchScript file shipped in the package (``"default"`` or ``"fast"``)."""
    return Path(str(resources.files("flowtie_fast.data").joinpath(SHIPPED[name])))


class FlowModel:
    """A TorchScript flow model on a device.

    Parameters
    ----------
    path : str or Path, optional
        TorchScript file, or the name of a shipped model, ``"default"``
        (the default) or ``"fast"``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    precision : {"float32", "bfloat16"}
        Arithmetic of the convolutions. ``"bfloat16"`` runs them under
        ``torch.autocast`` (inputs, outputs and the Poisson integration stay
        float32): on CPUs with bfloat16 instructions (AVX512-BF16, AMX) about
        1.5x faster, with a flow error of ~0.7 % of its largest value
        (measured, benchmarks/RESULTS.md).
    """

    def __init__(self, path=None, device: str = "cpu", precision: str = "float32"):
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InputError("model: method 'flowtie' needs PyTorch (pip install "
                             "'flowtie_fast[flow]')") from exc
        if precision not in ("float32", "bfloat16"):
            raise InputError(f"precision: expected 'float32' or 'bfloat16', got {precision!r}")
        self.precision = precision
        self.torch = torch
        if path is None or (isinstance(path, str) and path in SHIPPED):
            path = default_model_path(path or "default")
        path = Path(path)
        if not path.is_file():
            raise InputError(f"model: no such file {str(path)!r}")
        extra = {"config.json": ""}
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:
            raise InputError(f"model: {path.name} is not a readable TorchScript flow model "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                             ) from exc
        raw = extra["config.json"]
        try:
            self.config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            self.in_channels = int(self.config["in_channels"])
        except Exception as exc:
            raise InputError(f"model: {path.name} has no flowtie_fast configuration "
                             "(config.json); export it with flowtie_fast.flow.train."
                             "export_torchscript") from exc
        self.module = module.eval()
        self.path, self.device = path, device

    def __repr__(self) -> str:
        return (f"FlowModel({str(self.path)!r}, in_channels={self.in_channels}, {self.device}, "
                f"{self.precision})")

    def _tensor(self, a):
        torch = self.torch
        if is_cupy(a):
            return torch.from_dlpack(a)  # zero copy on the device
        return torch.from_numpy(np.ascontiguousarray(a))

    def predict(self, planes, didz, wavenumber, pixel_size, com=None):
        """Flow (2, H, W) in rad/Å, as a torch tensor on the model's device.

        ``planes`` (3 arrays), ``didz`` and ``com`` (1/Å, (2, H, W)) are NumPy or
        CuPy arrays; ``com`` is required by models with 6 input channels.
        """
        torch = self.torch
        stack = torch.stack([self._tensor(p).float() for p in planes])[None]
        c = None if com is None else self._tensor(com)[None]
        return self.predict_batch(stack, self._tensor(didz)[None], wavenumber, pixel_size,
                                  c)[0]

    def predict_batch(self, planes, didz, wavenumber, pixel_size, com=None):
        """Flows (B, 2, H, W) in rad/Å of a batch, in one network call.

        ``planes`` (B, 3, H, W), ``didz`` (B, H, W) and ``com`` (B, 2, H, W) in
        1/Å: NumPy or CuPy arrays or torch tensors.
        """
        from .model import flow_inputs

        torch = self.torch
        if self.in_channels == 6 and com is None:
            raise InputError("triplet: this flow model needs the 4D-STEM centre of mass "
                             "(FocalTriplet.from_4dstem, or gradient=)")

        def tensor(a):
            return (a if isinstance(a, torch.Tensor) else self._tensor(a)).float()

        planes = tensor(planes)
        c = tensor(com) if self.in_channels == 6 else None
        x = flow_inputs(planes[:, 0], planes[:, 1], planes[:, 2], tensor(didz), wavenumber,
                        pixel_size, c).to(self.device)
        with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16,
                                             enabled=self.precision == "bfloat16"):
            v = self.module(x)
        v = v.float()
        scale = torch.tensor([float(pixel_size[0]), float(pixel_size[1])],
                             device=v.device).view(1, 2, 1, 1)
        return v / scale


@functools.lru_cache(maxsize=8)
def load_model(path=None, device: str = "cpu", precision: str = "float32") -> FlowModel:
    """A cached :class:`FlowModel` (loading a TorchScript file takes ~0.1 s)."""
    return FlowModel(path, device, precision)
