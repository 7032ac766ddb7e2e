"""Inference of the flow model: TorchScript files, the shipped default, zero-copy GPU input.

:class:`FlowModel` loads a TorchScript file written by
:func:`~flowtie_fast.training.train.export_torchscript` (or the file shipped in
``flowtie_fast/data``) and predicts the flow (rad/Å) of a focal series; the
phase is then the project's own Poisson integration of it
(:meth:`TIESolver.solve` with ``method="flowtie"``). On the GPU, CuPy arrays
reach torch through DLPack without a copy to the host.

Integrity: a shipped model file must match the SHA-256 digest recorded in
``flowtie_fast/data/models.json`` (:func:`record_digests` rewrites it after a
model is retrained); every model, shipped or not, must return a finite flow
of the right shape on a small probe triplet when it is loaded; and a flow
with NaN or Inf is refused at prediction instead of becoming a NaN phase.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import threading
import warnings
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from ..backend import is_cupy
from ..errors import BackendError, InputError, first_line, user_stacklevel
from ..files import check_input_file
from ..physics import wavenumber as _wavenumber

__all__ = ["FlowEnsemble", "FlowModel", "default_model_path", "file_digest", "load_model",
           "record_digests", "recorded_digests"]

# The models shipped in flowtie_fast/data (MODEL.md): "seed0", "seed2" and
# "seed3" are one recipe with three seeds, and "ensemble" is the mean of their
# flows (three times the network time); "default" is one network of the same
# size distilled from that ensemble (as accurate on the test cases, at a third
# of its time); "fast" has a narrow full-resolution level (about
# half the time, measured less accurate); "corpus" is the same network trained
# on the simulated acquisitions of flowtie_fast/data/corpus.toml (low doses,
# unseen specimen kinds; weaker on thick crystals): docs/models.md.
SHIPPED = {"default": "flow_default.pt", "fast": "flow_fast.pt", "seed0": "flow_seed0.pt",
           "seed2": "flow_seed2.pt", "seed3": "flow_seed3.pt", "corpus": "flow_corpus.pt"}
ENSEMBLES = {"ensemble": ("seed0", "seed2", "seed3")}
# SHA-256 of each shipped file, {file name: hex digest}, in the data package.
DIGESTS_FILE = "models.json"
# The probe every model must pass at load: a smooth 32x32 triplet at 300 keV
# and 0.2 Å pixels (see FlowModel._probe).
_PROBE_SHAPE = (32, 32)
_PROBE_PIXEL = (0.2, 0.2)
_PROBE_DZ = 50.0  # Å

#: Seconds a network may take on the load-time probe (a shipped model takes
#: ~5 ms on 2 CPU cores) before it is refused as one that never returns.
PROBE_SECONDS = 30.0
# Files (real path, size, modification time) whose network did not return from
# the probe in this process: refused at once when loaded again, instead of
# leaving one more thread running it.
_NEVER_RETURNED: set = set()

# cuDNN's TF32 switch is process-wide: GPU calls that turn it off for their
# duration take this lock, so that concurrent calls restore the caller's value.
_TF32_LOCK = threading.Lock()
# One CUDA graph capture at a time in the process (torch's capture stream is
# shared by every graph); captures are thread-local, so that other threads'
# CUDA calls during one neither fail nor break it.
_CAPTURE_LOCK = threading.Lock()
#: Configs of shipped files whose fused CPU network agreed with the module here.
_FUSED_AGREED: set = set()


class _ProbeTimeout(Exception):
    """The network did not return from the probe within :data:`PROBE_SECONDS`."""


def _probe_call(module, x):
    """``module(x)`` without gradients and unoptimised, in a helper thread
    that the caller waits for at most :data:`PROBE_SECONDS`.

    TorchScript cannot be interrupted (no signal reaches Python while it runs),
    so a network that never returns is left running in its daemon thread,
    which ends with the process; the caller gets :class:`_ProbeTimeout`, and
    Ctrl-C while it waits. An exception of the module is raised here."""
    import torch

    box = {}

    def run():
        try:
            with torch.no_grad(), torch.jit.optimized_execution(False):
                box["value"] = module(x)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            box["error"] = exc

    thread = threading.Thread(target=run, name="flowtie-model-probe", daemon=True)
    thread.start()
    thread.join(PROBE_SECONDS)
    if thread.is_alive():
        raise _ProbeTimeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def _file_identity(path: Path):
    """``(real path, size, modification time)`` of a file, or None."""
    try:
        st = path.stat()
        return str(path.resolve()), st.st_size, st.st_mtime_ns
    except OSError:
        return None


def _data_dir() -> Path:
    """The folder of the shipped model files (the ``flowtie_fast.data`` package)."""
    return Path(str(resources.files("flowtie_fast.data")))


def default_model_path(name: str = "default") -> Path:
    """A TorchScript file shipped in the package (a name of ``SHIPPED``).

    Parameters
    ----------
    name : str, optional
        A key of ``SHIPPED``: ``"default"`` (the default), ``"fast"``,
        ``"seed0"``, ``"seed2"``, ``"seed3"`` or ``"corpus"``; not an
        ensemble name.

    Returns
    -------
    Path
        The file in the folder of the ``flowtie_fast.data`` package (its
        existence is not checked).

    Raises
    ------
    KeyError
        Where ``name`` is not a key of ``SHIPPED``.
    """
    return _data_dir() / SHIPPED[name]


def file_digest(path) -> str:
    """The SHA-256 digest of a file, as 64 hexadecimal digits.

    Parameters
    ----------
    path : str or Path
        The file (a shipped model is about 1 MB: under 1 ms).

    Returns
    -------
    str
        The digest, 64 lowercase hexadecimal digits.
    """
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _digests_path() -> Path:
    """``models.json`` of the installed package (never of a folder that
    :func:`_data_dir` is pointed at: the digests vouch for the install)."""
    return Path(str(resources.files("flowtie_fast.data").joinpath(DIGESTS_FILE)))


def recorded_digests() -> dict:
    """The digests recorded for the shipped model files.

    Returns
    -------
    dict
        ``{file name: SHA-256 hex digest}``, read from ``models.json`` in the
        installed package (not from a folder that ``_data_dir`` may point to).

    Raises
    ------
    InputError
        The digest file is missing or unreadable (a broken install).
    """
    path = _digests_path()
    try:
        digests = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"model: the digests of the shipped models ({path}) cannot be read "
                         f"({exc}); reinstall flowtie_fast") from exc
    if not isinstance(digests, dict):
        raise InputError(f"model: {path} is not a table of digests; reinstall flowtie_fast")
    return digests


def record_digests() -> dict:
    """Record the SHA-256 digest of every shipped model file in ``models.json``.

    Run it after a shipped model is retrained or replaced (shipped files whose
    digest does not match are refused at load)::

        python -c "from flowtie_fast.flow.infer import record_digests; record_digests()"

    Returns
    -------
    dict
        The digests written, ``{file name: SHA-256 hex digest}``.
    """
    digests = {SHIPPED[n]: file_digest(default_model_path(n)) for n in sorted(SHIPPED)}
    path = _digests_path()
    path.write_text(json.dumps(dict(sorted(digests.items())), indent=1) + "\n")
    return digests


def _shipped_name(path: Path):
    """The name (a key of ``SHIPPED``) of the shipped file at ``path``, or None."""
    try:
        resolved = path.resolve()
        return next((n for n in SHIPPED if default_model_path(n).resolve() == resolved), None)
    except OSError:
        return None


def _verify_shipped(name: str, path: Path) -> None:
    """Refuse a shipped model file whose SHA-256 is not the recorded one."""
    want = recorded_digests().get(SHIPPED[name])
    if want is None:
        raise InputError(f"model: no digest is recorded for the shipped file {path} (model "
                         f"{name!r}); reinstall flowtie_fast")
    if file_digest(path) != want:
        raise InputError(f"model: the shipped file {path} (model {name!r}) does not match its "
                         "recorded digest (corrupted or modified install); reinstall "
                         "flowtie_fast")


class FlowModel:
    """A TorchScript flow model on a device.

    Parameters
    ----------
    path : str or Path, optional
        TorchScript file, or the name of a shipped model, ``"default"``
        (the default) or ``"fast"``.
    device : str
        ``"cpu"`` or ``"cuda"``.
    precision : {"float32", "tf32", "bfloat16"}
        Arithmetic of the network. ``"bfloat16"`` converts its weights once and
        runs it in bfloat16 (inputs, outputs and the Poisson integration stay
        float32): on CPUs with bfloat16 instructions (AVX512-BF16, AMX) the
        network runs about twice as fast as in float32, and faster than under
        ``torch.autocast``, which recasts the weights at every call; the phase
        NMSE of the test cases moves by at most 0.0017 (docs/performance.md).
        ``"float32"`` on the GPU turns PyTorch's default of TF32 convolutions
        off for the call (TF32 moves the flow away from the CPU's result far
        more than IEEE float32 does, for no speed at 256²): the flag is
        process-wide, so another thread's own cuDNN call made at that moment
        runs in IEEE float32 too. ``"tf32"`` leaves cuDNN's TF32 convolutions
        on (PyTorch's default; faster than IEEE float32 at 1024² on an H200,
        alike at 256²: docs/performance.md); on the CPU it is float32.
    cuda_graphs : bool
        On a CUDA device, record the whole prediction (input channels, network,
        output scaling) as a CUDA graph per input shape, wavenumber and pixel
        size, and replay it: one launch instead of dozens, which is most of the
        time at small sizes. The first call of a new shape captures (about as
        long as three plain calls); a capture that fails falls back to plain
        calls with a warning. Ignored on the CPU.

    Raises
    ------
    InputError
        The file is missing or is no TorchScript flow model (nothing in it is
        run as Python: TorchScript's loader resolves no arbitrary classes); a
        shipped file does not match its recorded SHA-256 digest; or the
        network fails, returns a shape other than (1, 2, 32, 32) or returns
        NaN or Inf on the load-time probe, a smooth 32x32 triplet (0.2 Å
        pixels, 300 keV, a centre of mass of zeros for 6-channel models), or
        does not return from it within :data:`PROBE_SECONDS` (30 s); such a
        file is refused at once when it is loaded again in the process.

    Notes
    -----
    One instance may serve several threads (:func:`load_model` caches it): the
    graphs' input buffers are filled and replayed under a lock.

    On the CPU a FlowNet file (one whose weights load into
    ``FlowNet(**config)``) runs as the same function in fused channels-last
    oneDNN calls built at load from its weights (``runtime == "onednn"``,
    ~1.4x faster at 256² on 2 cores); the load-time probe first checks it
    against the TorchScript module in float32 (within 1e-4 of the largest
    flow), and any other file, or ``FLOWTIE_FLOW_RUNTIME=torchscript`` in the
    environment, runs the module itself (``runtime == "torchscript"``).
    """

    _MAX_GRAPHS = 4  # captured shapes kept per model (each holds its own buffers)

    def __init__(self, path=None, device: str = "cpu", precision: str = "float32",
                 cuda_graphs: bool = True):
        try:
            import torch
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise InputError("model: method 'flowtie' needs PyTorch (pip install "
                             "'flowtie_fast[flow]')") from exc
        if precision not in ("float32", "tf32", "bfloat16"):
            raise InputError("precision: expected 'float32', 'tf32' or 'bfloat16', got "
                             f"{precision!r}")
        self.precision = precision
        self.torch = torch
        if not isinstance(device, str) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise InputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if path is not None and (not isinstance(path, (str, os.PathLike)) or not os.fspath(path)):
            raise InputError(f"model: expected a shipped name ({', '.join(sorted(SHIPPED))}) "
                             f"or a TorchScript file, got {path!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendError(f"device: {device!r}, but PyTorch sees no CUDA device here; "
                               "use device='cpu'")
        shipped = None
        if path is None or (isinstance(path, str) and path in SHIPPED):
            shipped = path or "default"
            path = default_model_path(shipped)
        path = Path(path)
        if path.is_dir():
            raise InputError(f"model: {str(path)!r} is a folder, expected a TorchScript file")
        if not path.is_file():
            if os.path.lexists(path):  # a FIFO, a device, a loop or a dangling link
                check_input_file("model", path)
            raise InputError(f"model: no such file {str(path)!r}; expected a shipped name "
                             f"({', '.join(sorted(SHIPPED))}) or a TorchScript file")
        if shipped is None:  # a shipped file given by its path is checked alike
            shipped = _shipped_name(path)
        if shipped is not None:
            _verify_shipped(shipped, path)  # ~1 ms a file (SHA-256 of ~1 MB)
        identity = _file_identity(path)
        if identity is not None and identity in _NEVER_RETURNED:
            raise InputError(self._never_returned(path, "earlier in this process"))
        extra = {"config.json": ""}
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:
            raise InputError(f"model: {path.name} is not a readable TorchScript flow model "
                             f"(file {str(path)!r}: {first_line(exc)})") from exc
        raw = extra["config.json"]
        try:
            self.config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            channels = self.config["in_channels"]
        except Exception as exc:
            raise InputError(f"model: {path.name} has no flowtie_fast configuration "
                             "(config.json); export it with flowtie_fast.training.train."
                             "export_torchscript") from exc
        if channels not in (4, 6) or isinstance(channels, bool):  # flow_inputs makes 4 or 6
            raise InputError(f"model: {path.name} declares in_channels={channels!r} in its "
                             "configuration; a flow model reads 4 or 6 input channels (6 with "
                             "the centre of mass)")
        self.in_channels = int(channels)
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.path, self.device = path, device
        # the shipped name (a key of SHIPPED) where the file is a shipped one, else None
        self.shipped = shipped
        self.cuda_graphs = bool(cuda_graphs) and torch.device(device).type == "cuda"
        self._graphs = {}  # key -> (graph, static inputs, static output, last replay)
        self._graph_failed = set()
        self._lock = threading.Lock()
        # On the CPU the network runs as the same function in fused oneDNN
        # calls (_FusedFlowNet), checked in float32 against the module on the
        # probe triplet before both take the model's dtype; None where the file
        # is no FlowNet of its config, or where the fused path fails or differs.
        self._fused = None
        module = module.eval()
        try:
            if torch.device(device).type == "cpu":
                fused = _FusedFlowNet.build(module, self.config)
                # Shipped files of one config run the same code: one agreement a
                # process stands for all of them (their weights are verified).
                key = (fused.stride, tuple((n, tuple(w.shape))
                                           for n, w in sorted(fused.p.items()))
                       ) if shipped and fused is not None else None
                if fused is not None and (key in _FUSED_AGREED
                                          or fused.agrees(module, self._probe_input())):
                    self._fused = fused.to(self.dtype)
                    if key is not None:
                        _FUSED_AGREED.add(key)
            self.module = module.to(self.dtype)
            self._probe()
        except _ProbeTimeout:
            if identity is not None:
                _NEVER_RETURNED.add(identity)
            raise InputError(self._never_returned(path, "")) from None

    @staticmethod
    def _never_returned(path, when) -> str:
        """The refusal of a network that did not return from the probe."""
        when = f" ({when})" if when else ""
        ny, nx = _PROBE_SHAPE
        return (f"model: {str(path)!r} did not return from a probe triplet of {ny}x{nx} pixels "
                f"within {PROBE_SECONDS:g} s{when}, where a shipped model takes ~5 ms: a "
                "network that never ends is refused (TorchScript cannot be stopped: it keeps "
                "running in a background thread until the process ends)")

    def _probe_input(self):
        """The probe's network input (1, C, 32, 32), float32 (see :meth:`_probe`)."""
        torch = self.torch
        ny, nx = _PROBE_SHAPE
        h = _PROBE_PIXEL
        k = _wavenumber(300e3)  # rad/Å
        gy, gx = 2 * np.pi / (ny * h[0]), 2 * np.pi / (nx * h[1])
        y, x = np.meshgrid(np.arange(ny) * h[0], np.arange(nx) * h[1], indexing="ij")
        phi_y = 0.5 * gy * np.cos(gy * y) * np.sin(gx * x)
        phi_x = 0.5 * gx * np.sin(gy * y) * np.cos(gx * x)
        intensity = 1 + 0.1 * np.cos(gy * y + gx * x)
        i_y, i_x = -0.1 * gy * np.sin(gy * y + gx * x), -0.1 * gx * np.sin(gy * y + gx * x)
        lap = -(gy**2 + gx**2) * 0.5 * np.sin(gy * y) * np.sin(gx * x)
        didz = -(i_y * phi_y + i_x * phi_x + intensity * lap) / k
        planes = np.stack([intensity + _PROBE_DZ * didz, intensity, intensity - _PROBE_DZ * didz])

        def t(a):
            return torch.as_tensor(np.asarray(a, np.float32)[None], device=self.device)

        com = t(np.zeros((2, ny, nx))) if self.in_channels == 6 else None
        p, d = t(planes), t(didz)
        return flow_inputs(p[:, 0], p[:, 1], p[:, 2], d, k, h, com)

    def _probe(self):
        """Run the network once on a smooth synthetic triplet: InputError
        naming the file unless it returns a finite flow of shape (1, 2, 32, 32).

        The triplet is the transport of intensity of a weak phase object,
        ``∂I/∂z = -∇·(I ∇φ) / k`` with ``φ = 0.5 sin sin`` over one period,
        ``I0 = 1 + 0.1 cos`` and planes ``I0 ∓ dz ∂I/∂z`` at dz = 50 Å (all
        positive). It runs unoptimised: ~5 ms for a shipped model freshly
        loaded on 2 CPU cores, and TorchScript's optimising first run stays
        with the first prediction. It runs in a helper thread, waited for at
        most :data:`PROBE_SECONDS` (:func:`_probe_call`).
        """
        torch = self.torch
        ny, nx = _PROBE_SHAPE
        where = f"model: {str(self.path)!r}"
        try:
            # Unoptimised (a thread-local switch): TorchScript's profiling run
            # and optimisation stay for the first prediction, as without probe.
            v = _probe_call(self.module, self._probe_input().to(self.dtype))
        except _ProbeTimeout:
            raise
        except Exception as exc:
            raise InputError(f"{where} fails on a probe triplet of {ny}x{nx} pixels with "
                             f"{self.in_channels} input channels ({type(exc).__name__}: "
                             f"{first_line(exc)})") from exc
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (1, 2, ny, nx):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise InputError(f"{where} returns {got} for a probe triplet of {ny}x{nx} pixels; "
                             f"a flow model returns a flow of shape (1, 2, {ny}, {nx})")
        if not v.is_floating_point():  # complex, integer or bool: no flow of real numbers
            raise InputError(f"{where} returns a tensor of {v.dtype} for a probe triplet of "
                             f"{ny}x{nx} pixels; a flow model returns real floating-point "
                             "numbers")
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{where} produces NaN or Inf on a smooth probe triplet "
                             f"({ny}x{nx} pixels): a broken or corrupted model")

    @property
    def runtime(self) -> str:
        """``"onednn"`` where the network runs as fused oneDNN calls (CPU,
        FlowNet files), else ``"torchscript"`` (the file's module as loaded)."""
        return "torchscript" if self._fused is None else "onednn"

    def _check_finite(self, v, args):
        """InputError naming the model unless the flow ``v`` is finite: one sum
        (NaN and Inf propagate through it; ~0.01 ms at 256² on the CPU)."""
        torch = self.torch
        if math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all()):
            return  # (the second test only where the sum overflowed)
        why = ""
        if not all(bool(torch.isfinite(a).all()) for a in args if a is not None):
            why = "; the input planes, didz or centre of mass hold NaN or Inf"
        raise InputError("model: the flow network produced NaN or Inf for this input "
                         f"(model {str(self.path)!r}){why}")

    def __repr__(self) -> str:
        return (f"FlowModel({str(self.path)!r}, in_channels={self.in_channels}, {self.device}, "
                f"{self.precision})")

    def _tensor(self, a):
        torch = self.torch
        if is_cupy(a):
            return torch.from_dlpack(a)  # zero copy on the device
        return torch.from_numpy(np.ascontiguousarray(a))

    def predict(self, planes, didz, wavenumber, pixel_size, com=None):
        """Flow of one triplet, as a torch tensor on the model's device.

        Parameters
        ----------
        planes : sequence of three arrays (H, W)
            The intensities at ``-dz, 0, +dz`` (NumPy or CuPy).
        didz : array (H, W)
            The focal derivative ``∂I/∂z``, intensity per Å.
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        pixel_size : (float, float)
            Sampling along (axis 0, axis 1) in Å.
        com : array (2, H, W), optional
            The 4D-STEM centre of mass in 1/Å; required by models with 6
            input channels, ignored by the others.

        Returns
        -------
        torch.Tensor (2, H, W)
            The flow (the phase gradient the network predicts) in rad/Å,
            float32.

        Raises
        ------
        InputError
            Where the flow holds NaN or Inf (see :meth:`predict_batch`).
        """
        torch = self.torch
        stack = torch.stack([self._tensor(p).float() for p in planes])[None]
        c = None if com is None else self._tensor(com)[None]
        return self.predict_batch(stack, self._tensor(didz)[None], wavenumber, pixel_size,
                                  c)[0]

    def predict_batch(self, planes, didz, wavenumber, pixel_size, com=None, graphs=None):
        """Flows of a batch of triplets, in one network call.

        Parameters
        ----------
        planes : array or torch.Tensor (B, 3, H, W)
            The intensities at ``-dz, 0, +dz`` (NumPy, CuPy or torch).
        didz : array or torch.Tensor (B, H, W)
            The focal derivatives ``∂I/∂z``, intensity per Å.
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        pixel_size : (float, float)
            Sampling along (axis 0, axis 1) in Å.
        com : array or torch.Tensor (B, 2, H, W), optional
            The 4D-STEM centres of mass in 1/Å; required by models with 6
            input channels, ignored by the others.
        graphs : bool, optional
            False runs this call without the model's CUDA graphs (default
            None: the model's ``cuda_graphs``; True cannot turn on graphs
            the model has off, nor on the CPU).

        Returns
        -------
        torch.Tensor (B, 2, H, W)
            The flows in rad/Å, float32, on the model's device.

        Raises
        ------
        InputError
            The network's flow holds NaN or Inf (the message names the model,
            and says so where the input already held them); a 6-channel model
            is given no centre of mass.
        """
        torch = self.torch
        if self.in_channels == 6 and com is None:
            raise InputError("triplet: this flow model needs the 4D-STEM centre of mass "
                             "(FocalTriplet.from_4dstem, or gradient=)")

        def tensor(a):
            t = a if isinstance(a, torch.Tensor) else self._tensor(a)
            return t.to(self.device).float()

        args = (tensor(planes), tensor(didz), tensor(com) if self.in_channels == 6 else None)
        k, h = float(wavenumber), (float(pixel_size[0]), float(pixel_size[1]))
        v = self._replay(args, k, h) if self.cuda_graphs and graphs is not False else None
        if v is None:
            v = self._compute(*args, k, h)
        self._check_finite(v, args)
        return v

    def _compute(self, planes, didz, com, k, h):
        """Inputs, network and output scaling on the model's device."""
        torch = self.torch
        allow_tf32 = {"float32": False, "tf32": True}.get(self.precision)
        if not planes.is_cuda or allow_tf32 is None:
            return self._network(planes, didz, com, k, h)
        cudnn = torch.backends.cudnn
        with _TF32_LOCK:  # the flag is process-wide: one toggling call at a time
            before = cudnn.allow_tf32
            cudnn.allow_tf32 = allow_tf32  # IEEE float32 or TF32 convolutions (see the class)
            try:
                return self._network(planes, didz, com, k, h)
            finally:
                cudnn.allow_tf32 = before

    def _network(self, planes, didz, com, k, h):
        torch = self.torch
        with torch.no_grad():
            x = flow_inputs(planes[:, 0], planes[:, 1], planes[:, 2], didz, k, h, com)
            v = self._run(x.to(self.dtype))
            if not v.is_floating_point():  # .float() would drop an imaginary part
                raise InputError(f"model: the flow network {str(self.path)!r} returned a tensor "
                                 f"of {v.dtype} for an input of {tuple(x.shape)}, expected real "
                                 "floating-point numbers")
            v = v.float()
            if v.ndim != 4 or tuple(v.shape[:2]) != (x.shape[0], 2) \
                    or tuple(v.shape[2:]) != tuple(x.shape[2:]):
                raise InputError(f"model: the flow network {str(self.path)!r} returned shape "
                                 f"{tuple(v.shape)} for an input of {tuple(x.shape)}, expected "
                                 f"{(x.shape[0], 2) + tuple(x.shape[2:])}")
            return torch.stack([v[:, 0] / h[0], v[:, 1] / h[1]], dim=1)

    def _run(self, x):
        """The network on (B, C, H, W) in the model's dtype: the fused CPU path,
        or the TorchScript module (and from then on, with a warning, where the
        fused path raises)."""
        fused = self._fused
        if fused is not None:
            try:
                return fused(x)
            except RuntimeError as exc:
                # the module on the same input: where it fails too, the input was the
                # cause (the error is the module's) and the fused path stays
                v = self.module(x)
                self._fused = None  # one assignment: safe beside other threads
                warnings.warn(f"flow model {str(self.path)!r}: the fused oneDNN path failed "
                              f"({first_line(exc)}); running the TorchScript module",
                              RuntimeWarning, stacklevel=user_stacklevel())
                return v
        return self.module(x)

    def _replay(self, args, k, h):
        """The prediction through the CUDA graph of this shape (captured on first
        use); None where capturing failed."""
        key = (tuple(args[0].shape), args[2] is not None, k, h)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if key in self._graph_failed:
                    return None
                entry = self._capture(args, k, h, key)
                if entry is None:
                    return None
            graph, static, out, done = entry
            torch = self.torch
            # A caller on another stream must not refill the inputs while the
            # last replay still reads them.
            torch.cuda.current_stream().wait_event(done)
            for s, a in zip(static, args):
                if s is not None:
                    s.copy_(a)
            graph.replay()
            v = out.clone()  # the graph's output buffer is reused by the next replay
            done.record()
            return v

    def _capture(self, args, k, h, key):
        torch = self.torch
        static = tuple(None if a is None else a.clone() for a in args)
        try:
            with _CAPTURE_LOCK:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up: cuDNN picks its algorithms
                    for _ in range(2):
                        self._compute(*static, k, h)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    out = self._compute(*static, k, h)
        except Exception as exc:  # an operator that cannot be captured
            self._graph_failed.add(key)
            warnings.warn(f"flow model: CUDA graph capture failed ({type(exc).__name__}: "
                          f"{exc}); predicting without graphs", RuntimeWarning,
                          stacklevel=user_stacklevel())
            return None
        if len(self._graphs) >= self._MAX_GRAPHS:
            self._graphs.pop(next(iter(self._graphs)))
        done = torch.cuda.Event()
        done.record()
        self._graphs[key] = entry = (graph, static, out, done)
        return entry


class _FusedFlowNet:
    """A FlowNet TorchScript file on the CPU as the same function in fewer, fused calls.

    The TorchScript module runs each 3x3 convolution as a circular pad, a
    convolution in NCHW (oneDNN reorders input, output and weights to its own
    layout at every call) and a separate GELU. Here, with the file's own
    weights: activations stay channels-last (oneDNN's native layout, no
    reorders), each GELU is a post-op of its convolution (the exact erf GELU,
    computed on the float32 accumulator), and each block pads once, by 2
    pixels, written with the merge's concatenation into one buffer: the first
    convolution's unpadded output over the 2-pixel margin is then exactly its
    circular padding by 1 (convolution commutes with periodic shifts), and the
    second one needs none. Outputs equal the module's within float32 rounding
    (at most 2.2e-5 of the largest flow over the six shipped models, the erf
    GELU of oneDNN against PyTorch's); the convolutions are then ~85 % of the
    time (the rest is the padding copies). Measured at 256² on a 2-core Zen 4:
    network 50-60 ms against 69-83 ms (best of 15-20, medians 63-71 against
    83-105), 1.6-1.9x on one thread; bfloat16 reconstructions 32-36 ms against
    54-58 ms. No TorchScript optimising runs: the first call is as fast.

    Built only from a file whose parameters are those of ``FlowNet(**config)``
    (names and shapes), and used only where it gives the module's flow on the
    load-time probe; stateless at call time (weights read-only,
    buffers per call), so threads may share it.
    """

    def __init__(self, net, weights):
        import torch

        self._torch, self._CL = torch, torch.channels_last
        # convolution + bias + optional post-op (the operator of torch.compile's
        # CPU freezing path): mkldnn::_convolution_pointwise
        self._conv_op = torch.ops.mkldnn._convolution_pointwise
        self.stride, self.multiple, self.levels = net.stride, net.multiple, len(net.channels)
        self.dtype = torch.float32
        self.p = {}
        for name, w in weights.items():
            w = w.detach().float()
            if w.dim() == 4 and not name.endswith("up.weight"):  # convolution weights
                w = w.contiguous(memory_format=self._CL)
            self.p[name] = w

    def to(self, dtype):
        """This network with its weights in ``dtype`` (self where unchanged)."""
        if dtype == self.dtype:
            return self
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.dtype = dtype
        other.p = {name: w.to(dtype) for name, w in self.p.items()}
        return other

    @classmethod
    def build(cls, module, config):
        """The fused network of a loaded TorchScript FlowNet, or None where the
        file is another network or this PyTorch lacks the oneDNN operators."""
        runtime = os.environ.get("FLOWTIE_FLOW_RUNTIME", "").strip().lower()
        if runtime not in ("", "onednn", "torchscript"):
            raise BackendError("FLOWTIE_FLOW_RUNTIME: expected 'onednn' (the default on the "
                               "CPU) or 'torchscript', got "
                               f"{os.environ['FLOWTIE_FLOW_RUNTIME'][:80]!r}; fix or unset it")
        if runtime == "torchscript":
            return None
        try:
            import torch
            if not (torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
                return None
            from .model import FlowNet
            with torch.device("meta"):  # names and shapes only: no initialisation
                net = FlowNet(int(config["in_channels"]), int(config["width"]),
                              int(config["depth"]), int(config.get("stride", 1)),
                              config.get("channels"))
            want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
            weights = module.state_dict()
            if {k: tuple(v.shape) for k, v in weights.items()} != want:
                return None
        except Exception:  # another architecture, or a config FlowNet refuses
            return None
        return cls(net, weights)

    def agrees(self, module, x, tol=1e-4):
        """Whether this (float32) network gives the float32 module's output on
        ``x`` (the load-time probe) within ``tol`` of its largest value; a
        warning says why where not. Errors of the module itself are the
        probe's to report: they count as agreement here."""
        torch = self._torch
        try:
            v = _probe_call(module, x)
        except _ProbeTimeout:
            raise
        except Exception:
            return True
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (x.shape[0], 2) + \
                tuple(x.shape[2:]) or not bool(torch.isfinite(v).all()):
            return True
        try:
            with torch.no_grad():
                y = self(x)
            ok = y.shape == v.shape and bool(
                (y - v).abs().max() <= tol * v.abs().max() + 1e-12)
            why = "" if ok else f"its flow differs from the module's by more than {tol:g}"
        except RuntimeError as exc:
            ok, why = False, f"{type(exc).__name__}: {first_line(exc)}"
        if not ok:
            warnings.warn(f"flow model: the fused oneDNN path is off ({why}); running the "
                          "TorchScript module", RuntimeWarning, stacklevel=user_stacklevel())
        return ok

    def _conv(self, x, name, gelu=True):
        return self._conv_op(x, self.p[name + "weight"], self.p[name + "bias"], [0, 0], [1, 1],
                             [1, 1], 1, "gelu" if gelu else "none", [],
                             "none" if gelu else "")

    def _padded(self, parts, p):
        """The channels of ``parts`` concatenated and padded circularly by p: one buffer."""
        n, _, h, w = parts[0].shape
        c = sum(t.shape[1] for t in parts)
        b = self._torch.empty((n, c, h + 2 * p, w + 2 * p), dtype=parts[0].dtype,
                              memory_format=self._CL)
        o = 0
        for t in parts:
            b[:, o:o + t.shape[1], p:h + p, p:w + p] = t
            o += t.shape[1]
        b[:, :, :p, p:w + p] = b[:, :, h:h + p, p:w + p]
        b[:, :, h + p:, p:w + p] = b[:, :, p:2 * p, p:w + p]
        b[:, :, :, :p] = b[:, :, :, w:w + p]
        b[:, :, :, w + p:] = b[:, :, :, p:2 * p]
        return b

    def _block(self, parts, name):
        h, w = parts[0].shape[-2:]
        if min(h, w) >= 2:  # one padding by 2 serves both convolutions
            x = self._conv(self._padded(parts, 2), name + "body.0.")
            return self._conv(x, name + "body.2.")
        x = self._conv(self._padded(parts, 1), name + "body.0.")  # 1-pixel levels
        return self._conv(self._padded([x], 1), name + "body.2.")

    def __call__(self, x):
        """FlowNet.forward on (B, C, H, W) in the network's dtype; (B, 2s², ...) NCHW."""
        torch = self._torch
        F = torch.nn.functional
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        if ph > 0 or pw > 0:
            x = F.pad(x, [0, pw, 0, ph], mode="circular")
        if self.stride > 1:
            x = F.pixel_unshuffle(x, self.stride)
        x = x.to(self.dtype).contiguous(memory_format=self._CL)
        skips = []
        for i in range(self.levels):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = self._block([x], f"down.{i}.")
            skips.append(x)
        for i in range(self.levels - 1):
            name = f"ups.{i}."
            up = F.conv_transpose2d(x, self.p[name + "up.weight"], self.p[name + "up.bias"],
                                    stride=2)
            x = self._block([up, skips[self.levels - 2 - i]], name + "merge.")
        y = self._conv(x, "head.", gelu=False).contiguous()
        if self.stride > 1:
            y = F.pixel_shuffle(y, self.stride)
        return y[..., :h, :w]


class FlowEnsemble:
    """The mean flow of several :class:`FlowModel` (seeds of one recipe): the
    spread between seeds is the largest error left, and the mean of three
    seeds' flows halves the worst case of the test crystals
    (docs/evaluation.md, docs/models.md).

    Parameters
    ----------
    models : sequence of FlowModel
        On one device, all with or all without the centre-of-mass channels.
    name : str, optional
        Shown as ``path`` (what a reconstruction's ``info["model"]`` reports).

    Notes
    -----
    Same interface as :class:`FlowModel` (``predict``, ``predict_batch``,
    ``device``, ``in_channels``, ``precision``); each member keeps its own
    CUDA graphs. The time is the members' times added up. The integrity
    checks are the members': each passed the load-time probe, and a member
    whose flow holds NaN or Inf raises :class:`InputError` naming its file.
    """

    def __init__(self, models, name=None):
        self.models = list(models)
        if not self.models:
            raise InputError("model: an ensemble needs at least one flow model")
        for m in self.models:
            if not isinstance(m, FlowModel):
                raise InputError(f"model: the members of an ensemble are FlowModel objects "
                                 f"(load_model(...)), got {type(m).__name__}")
        if len({m.precision for m in self.models}) > 1:
            raise InputError("model: the members of an ensemble must share their precision, "
                             f"got {[m.precision for m in self.models]}")
        first = self.models[0]
        for m in self.models[1:]:
            if (m.device, m.in_channels) != (first.device, first.in_channels):
                raise InputError("model: the members of an ensemble must share their device "
                                 "and input channels")
        self.device, self.in_channels = first.device, first.in_channels
        self.precision = first.precision
        self.path = name or "+".join(str(m.path) for m in self.models)

    def __repr__(self) -> str:
        return f"FlowEnsemble({self.path!r}, {len(self.models)} models, {self.device})"

    def _mean(self, method, *args):
        v = getattr(self.models[0], method)(*args)
        for m in self.models[1:]:
            v = v + getattr(m, method)(*args)
        return v / len(self.models)

    def predict_batch(self, planes, didz, wavenumber, pixel_size, com=None, graphs=None):
        """The mean of the members' :meth:`FlowModel.predict_batch`.

        Parameters
        ----------
        planes : array or torch.Tensor (B, 3, H, W)
            The intensities at ``-dz, 0, +dz``.
        didz : array or torch.Tensor (B, H, W)
            The focal derivatives, intensity per Å.
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        pixel_size : (float, float)
            Sampling along (axis 0, axis 1) in Å.
        com : array or torch.Tensor (B, 2, H, W), optional
            The centres of mass in 1/Å (models with 6 input channels).
        graphs : bool, optional
            As in :meth:`FlowModel.predict_batch` (default None).

        Returns
        -------
        torch.Tensor (B, 2, H, W)
            The mean flow in rad/Å.
        """
        return self._mean("predict_batch", planes, didz, wavenumber, pixel_size, com, graphs)

    def predict(self, planes, didz, wavenumber, pixel_size, com=None):
        """The mean of the members' :meth:`FlowModel.predict`.

        Parameters
        ----------
        planes : sequence of three arrays (H, W)
            The intensities at ``-dz, 0, +dz``.
        didz : array (H, W)
            The focal derivative, intensity per Å.
        wavenumber : float
            ``k = 2π/λ`` in rad/Å.
        pixel_size : (float, float)
            Sampling along (axis 0, axis 1) in Å.
        com : array (2, H, W), optional
            The centre of mass in 1/Å (models with 6 input channels).

        Returns
        -------
        torch.Tensor (2, H, W)
            The mean flow in rad/Å.
        """
        return self._mean("predict", planes, didz, wavenumber, pixel_size, com)


def load_model(path=None, device: str = "cpu", precision: str = "float32"):
    """A cached :class:`FlowModel`, or :class:`FlowEnsemble` for a shipped
    ensemble name (``"ensemble"``); loading a TorchScript file takes ~0.1 s.

    Parameters
    ----------
    path : str or os.PathLike, optional
        A TorchScript file or a shipped name (``"default"``, ``"fast"``,
        ``"ensemble"``, ...: docs/models.md); None (default) for the default
        model.
    device : str
        ``"cpu"`` (default) or ``"cuda"`` (or ``"cuda:N"``).
    precision : {"float32", "tf32", "bfloat16"}
        Arithmetic of the network (default "float32"; see
        :class:`FlowModel`).

    Returns
    -------
    FlowModel or FlowEnsemble
        Loaded once per (model, device, precision) and cached (eight at
        most). A file is cached by its real path and identity (device,
        inode, size, modification and change times): a relative path after
        a change of working folder, or a file replaced at the same path,
        loads the file now there.

    Raises
    ------
    InputError
        ``path`` is not None, a shipped name or a file path; ``device`` or
        ``precision`` is not a string (see :class:`FlowModel`).
    BackendError
        ``device`` names a GPU that PyTorch cannot use here.
    """
    if path is not None and (not isinstance(path, (str, os.PathLike)) or not os.fspath(path)):
        raise InputError(f"model: expected a shipped name ({', '.join(sorted(SHIPPED))}, "
                         f"{', '.join(sorted(ENSEMBLES))}) or a TorchScript file, got {path!r}")
    for name, value in (("device", device), ("precision", precision)):
        if not isinstance(value, str):
            raise InputError(f"{name}: expected a string, got {value!r}")
    return _load_model(*_model_key(None if path is None else os.fspath(path)), device,
                       precision)


def check_model_source(name: str, path) -> None:
    """Refuse, before any work, a model argument that cannot be loaded: not a
    shipped or ensemble name and not an existing regular file that is a
    TorchScript archive (a zip file). :class:`InputError` naming ``name``
    (e.g. ``model``, ``teacher``, ``--model``); None (the default) passes.
    Loading it (:func:`load_model`) still checks the model itself."""
    if path is None or (isinstance(path, str) and (path in SHIPPED or path in ENSEMBLES)):
        return
    names = ", ".join(sorted(SHIPPED) + sorted(ENSEMBLES))
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"{name}: expected a shipped name ({names}) or a TorchScript file, "
                         f"got {path!r}")
    if not os.path.lexists(os.fspath(path)) and isinstance(path, str) and \
            os.sep not in path and "." not in path:
        raise InputError(f"{name}: {path!r} is neither a shipped name ({names}) nor an "
                         "existing file")
    check_input_file(name, Path(os.fspath(path)))
    try:
        ok = zipfile.is_zipfile(os.fspath(path))
    except OSError as exc:
        raise InputError(f"{name}: {os.fspath(path)!r} cannot be read "
                         f"({exc.strerror or first_line(exc)})") from exc
    if not ok:
        raise InputError(f"{name}: {os.fspath(path)!r} is not a TorchScript model file (a zip "
                         "archive written by torch.jit.save or export_torchscript)")


def _model_key(path):
    """``(path, identity)``: a shipped name (or None) as given; a file by its
    real path and ``(device, inode, size, mtime, ctime)``; a path that does not
    exist as given (the loader refuses it, naming it as the caller did)."""
    if path is None or (isinstance(path, str) and (path in SHIPPED or path in ENSEMBLES)):
        return path, None
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except (OSError, ValueError):
        return path, None
    return real, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=8)
def _load_model(path, identity, device, precision):
    if path in ENSEMBLES:
        return FlowEnsemble([_load_model(m, None, device, precision) for m in ENSEMBLES[path]],
                            name=path)
    return FlowModel(path, device, precision)


load_model.cache_clear = _load_model.cache_clear  # forget the loaded models


def flow_inputs(minus, zero, plus, didz, wavenumber: float, pixel_size, com=None):
    """Stack the dimensionless input channels, (B, C, H, W) float32.

    Parameters
    ----------
    minus, zero, plus, didz : tensors (B, H, W)
        Intensities and the focal derivative (intensity per Å).
    wavenumber : float
        The wavenumber k = 2π/λ in rad/Å.
    pixel_size : (float, float)
        Å along (axis 0, axis 1).
    com : tensor (B, 2, H, W), optional
        Centre of mass in 1/Å (default None: no centre-of-mass channels).

    Returns
    -------
    tensor (B, C, H, W) of float32
        C = 4 channels, each image divided by the mean ``Ī`` of its in-focus
        plane: ``minus / Ī``, ``zero / Ī``, ``plus / Ī`` and
        ``k · didz · h0 · h1 / Ī`` (h the pixel size); with ``com``, C = 6:
        then ``2π · h0 · com[:, 0]`` and ``2π · h1 · com[:, 1]`` (rad per
        pixel).
    """
    import torch

    mean = zero.mean(dim=(-2, -1), keepdim=True)
    h2 = float(pixel_size[0]) * float(pixel_size[1])
    chans = [minus / mean, zero / mean, plus / mean, wavenumber * didz * h2 / mean]
    if com is not None:  # scalars, not a tensor from the host: CUDA graphs capture this
        chans += [2 * torch.pi * float(pixel_size[0]) * com[:, 0],
                  2 * torch.pi * float(pixel_size[1]) * com[:, 1]]
    return torch.stack(chans, dim=1).float()
