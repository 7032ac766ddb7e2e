"""Training the flow model: deterministic, checkpointed, resumable.

Each step draws one case, makes a batch of augmented copies of it (periodic
shifts, flips, 90° rotations, dose), predicts the flow from the dimensionless
inputs and takes an Adam step on the composite loss. Everything random comes
from one seed (NumPy generator and torch), and a checkpoint holds the model,
the optimiser, the step and both random states, so that an interrupted run
resumed from its checkpoint ends with the same weights as an uninterrupted one.

Checkpoints hold tensors and plain containers only (dict, list, tuple, int,
float, str, bool, None) and are read with ``torch.load(weights_only=True)``:
a file that holds anything else is refused, never unpickled. A run resumes
only when asked to (``resume``), and only from a checkpoint of the same
network and objective.

With a teacher (``TrainConfig.teacher``, ``distill``), the flow term's target
is a blend of the ground-truth gradient and the teacher's predicted flow: a
single network learns from the mean flow of an ensemble (docs/models.md).

With ``TrainConfig.init`` (a shipped model's name or a TorchScript file of the
same network), the run starts from that model's weights instead of a random
initialisation: a fine-tuning.

Non-periodic samples (windows, ``Sample.periodic`` false: :func:`load_corpus`)

are never shifted periodically nor tiled, and their batches train on the flow
term alone: the continuity and phase terms use the periodic spectral
derivative and Poisson integration, which do not hold across a window's
border (a non-periodic phase has no periodic integral), so their weights are
0 for those batches. A batch holds copies of one sample, so it is all of one
kind.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ..backend import _gib, host_available_memory
from ..errors import InputError, check_count, check_positive, check_real, is_number
from ..files import atomic_path, check_input_file
from ..flow.infer import FlowEnsemble, check_model_source, flow_inputs, load_model
from ..flow.model import FlowNet
from .data import Sample, augment, tile
from .loss import CompositeLoss


__all__ = ["TrainConfig", "TrainingCollapse", "train", "check_checkpoints", "load_checkpoint",
           "export_torchscript"]


class TrainingCollapse(RuntimeError):
    """A run that collapsed (zero flow or a non-finite loss) more often than
    its rollbacks allow: the settings (learning rate, seed), not the machine,
    are the cause, and nothing worth exporting was trained."""


#: The fewest counts per pixel a training dose draws (``TrainConfig.dose``).
MIN_COUNTS = 0.1


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved in checkpoints and exports).

    Checked and normalised (plain Python numbers and tuples) when made and
    again by :func:`train`: a bad value raises
    :class:`~flowtie_fast.errors.InputError` naming the field, which is also
    the name of its ``flowtie train`` option (``steps`` is ``--steps``).
    """

    steps: int = 2000
    batch: int = 8
    reps: int = 2  # periods per side of each training image
    lr: float = 2e-3
    weights: tuple = (1.0, 0.0, 1.0)  # flow, continuity, phase (ablation: docs/evaluation.md)
    width: int = 24
    depth: int = 3
    stride: int = 1  # FlowNet's pixel-unshuffle factor
    channels: tuple | None = None  # channels per level, overriding width and depth
    use_com: bool = True
    dose: tuple = (None, None)  # counts per pixel, log-uniform; (None, None): no noise
    clip: float = 5.0  # largest gradient norm of a step (0: none); median ~1, spikes ~1000
    seed: int = 0
    checkpoint_every: int = 100
    restarts: int = 3  # rollbacks after a collapse (zero flow or NaN), lr halved each; 0: none
    # Distillation: the flow term's target is (1 - distill) * ground truth +
    # distill * the teacher's flow (a shipped name, "ensemble" or a file).
    teacher: str | None = None
    distill: float = 0.0
    # Fine-tuning: the weights the run starts from (a shipped name or a TorchScript
    # file of the same network); None: a random initialisation.
    init: str | None = None
    # Learning rate over the run: "constant", or "cosine" (lr x (1 + cos(π step / steps)) / 2,
    # down to 0 at the last step; a rollback's halvings apply on top; a run resumed with
    # other steps follows the new length from there on).
    schedule: str = "constant"

    def __post_init__(self):
        self.validate()

    def validate(self) -> TrainConfig:
        """Check every field and normalise it in place; returns ``self``.

        Raises
        ------
        InputError
            Naming the first bad field and what was expected: ``steps``,
            ``batch``, ``reps``, ``width``, ``depth``, ``stride``,
            ``checkpoint_every`` positive integers; ``restarts`` and ``seed``
            integers >= 0; ``lr`` in (0, 1]; ``weights`` three
            finite non-negative numbers (flow, continuity, phase), not all
            zero; ``channels`` None or positive integers; ``dose`` (None,
            None) or two positive finite counts per pixel, low <= high;
            ``clip`` finite >= 0; ``distill`` in [0, 1], and > 0 only with a
            ``teacher``; ``init`` None or a model name or file; ``schedule``
            "constant" or "cosine"; a network whose parameters do not fit in
            the memory available to train.
        """
        for name in ("steps", "batch", "reps", "width", "depth", "stride", "checkpoint_every"):
            setattr(self, name, check_count(name, getattr(self, name), 1))
        self.restarts = check_count("restarts", self.restarts, 0)
        self.seed = check_count("seed", self.seed, 0)
        self.lr = check_positive("lr", self.lr)
        if self.lr > 1.0:  # Adam's step is lr per parameter: above 1 it only diverges
            raise InputError(f"lr: expected a learning rate in (0, 1] (e.g. 2e-3), got "
                             f"{self.lr!r}")
        w = self.weights
        if isinstance(w, (str, bytes)) or not hasattr(w, "__len__") or len(w) != 3:
            raise InputError(f"weights: expected three numbers (flow, continuity, phase), "
                             f"got {w!r}")
        w = tuple(check_real("weights", v, low=0.0) for v in w)
        if not any(w):
            raise InputError(f"weights: expected at least one positive weight, got {w!r}")
        self.weights = w
        if self.channels is not None:
            c = self.channels
            if isinstance(c, (str, bytes)) or not hasattr(c, "__len__") or len(c) == 0:
                raise InputError(f"channels: expected positive integers, got {c!r}")
            self.channels = tuple(check_count("channels", v, 1) for v in c)
        if not isinstance(self.use_com, (bool, np.bool_)):
            raise InputError(f"use_com: expected True or False, got {self.use_com!r}")
        self.use_com = bool(self.use_com)
        dose = (None, None) if self.dose is None else self.dose
        if tuple(dose) != (None, None):
            if isinstance(dose, (str, bytes)) or not hasattr(dose, "__len__") or len(dose) != 2:
                raise InputError(f"dose: expected two counts per pixel (low, high), got {dose!r}")
            lo, hi = check_positive("dose", dose, pair=True)
            if lo > hi:
                raise InputError(f"dose: expected low <= high, got ({lo:g}, {hi:g})")
            if lo < MIN_COUNTS:  # planes of no counts: every step refused, then "collapsed"
                raise InputError(f"dose: expected at least {MIN_COUNTS:g} counts per pixel, "
                                 f"got ({lo:g}, {hi:g}): fewer leave the planes empty")
            dose = (lo, hi)
        self.dose = tuple(dose)
        self.clip = check_real("clip", self.clip, low=0.0)
        if self.teacher is not None:
            if not isinstance(self.teacher, (str, os.PathLike)):
                raise InputError(f"teacher: expected a model name or file, got {self.teacher!r}")
            self.teacher = str(self.teacher) or None
        d = self.distill
        if not is_number(d) or not 0.0 <= float(d) <= 1.0:
            raise InputError(f"distill: expected a fraction in [0, 1], got {d!r}")
        self.distill = float(d)
        if self.distill > 0 and not self.teacher:
            raise InputError("teacher: distill > 0 needs a teacher model")
        if self.distill > 0:  # a missing or non-model teacher is refused before any data
            check_model_source("teacher", self.teacher)
        self._check_network_memory()
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule: expected 'constant' or 'cosine', got {self.schedule!r}")
        if self.init is not None:
            if not isinstance(self.init, (str, os.PathLike)):
                raise InputError(f"init: expected a model name or file, got {self.init!r}")
            self.init = str(self.init) or None
        return self

    def _network(self):
        """The run's FlowNet on the meta device: names and shapes, no memory."""
        with torch.device("meta"):
            return FlowNet(in_channels=6 if self.use_com else 4, width=self.width,
                           depth=self.depth, stride=self.stride, channels=self.channels)

    def _check_network_memory(self) -> None:
        """InputError naming the network's settings when its parameters, with
        their gradients, Adam's two moments and the rollback snapshots, do not
        fit in the memory available now (the process would be killed)."""
        try:
            params = sum(p.numel() for p in self._network().parameters())
        except (RuntimeError, OverflowError, TypeError):  # a size beyond an address
            widest = max(self.channels or [self.width * 2 ** (self.depth - 1)])
            widest = f"{widest:.3g}" if widest < 10**300 else "more than 1e300"
            raise InputError(f"{_network_options(self)}: levels of up to {widest} channels "
                             "are too large to be held in memory; give fewer or narrower "
                             "levels") from None
        need = _PARAM_COPIES * 4 * params
        available = host_available_memory()
        if available is not None and need > available:
            raise InputError(
                f"{_network_options(self)}: a network of {params:.3g} parameters needs about "
                f"{_gib(need)} to train (weights, gradients, optimiser state and snapshots), "
                f"more than the {_gib(available)} available; give fewer or narrower levels")


def _teacher(cfg: TrainConfig):
    """The teacher's networks (TorchScript, float32, CPU), or None."""
    if cfg.distill == 0.0:
        if cfg.teacher:
            warnings.warn(f"train: teacher {cfg.teacher} ignored: distill is 0", RuntimeWarning,
                          stacklevel=3)
        return None

    model = _load_named("teacher", str(cfg.teacher))
    members = model.models if isinstance(model, FlowEnsemble) else [model]
    channels = 6 if cfg.use_com else 4
    if any(m.in_channels != channels for m in members):
        raise InputError(f"teacher: {cfg.teacher} takes other inputs than this run "
                         f"({channels} channels)")
    return [m.module for m in members]


def _load_named(name: str, source):
    """:func:`load_model` of ``source`` on the CPU, its refusals naming the
    setting ``name`` (``teacher``, ``init``) instead of ``model``."""
    try:
        return load_model(source)
    except InputError as exc:
        text = str(exc)
        raise InputError(f"{name}: {text.removeprefix('model: ')}") from exc


def _initial_weights(cfg: TrainConfig, model: FlowNet) -> None:
    """Load ``cfg.init``'s parameters into ``model`` (InputError naming
    ``init`` when they do not fit)."""
    loaded = _load_named("init", cfg.init)
    if isinstance(loaded, FlowEnsemble):
        raise InputError(f"init: {cfg.init} is an ensemble; expected one network")
    try:
        model.load_state_dict(loaded.module.state_dict(), strict=True)
    except Exception as exc:  # noqa: BLE001 (another network's parameters)
        text = " ".join(str(exc).split())
        text = text if len(text) <= 200 else text[:197] + "..."
        raise InputError(f"init: the weights of {cfg.init} do not fit this network "
                         f"({type(exc).__name__}: {text})") from None


# Copies of the parameters a run holds (weights, gradients, Adam's two moments,
# rollback snapshots of model and optimiser) and bytes of activations per value of
# the network's levels (measured 14 to 20 with the saved tensors of the backward
# pass; the lower end, so that no run that fits is refused).
_PARAM_COPIES = 12
_ACTIVATION_COPIES = 14


def _network_options(cfg: TrainConfig) -> str:
    return "channels/stride" if cfg.channels is not None else "width/depth/stride"


def _check_samples(samples, cfg: TrainConfig) -> None:
    if any(not getattr(s, "periodic", True) for s in samples) and cfg.weights[0] == 0:
        raise InputError(f"weights: non-periodic samples train on the flow term alone; a flow "
                         f"weight of 0 ({cfg.weights!r}) leaves them nothing to learn")
    # The network pads its input circularly to a multiple of stride x 2^(levels - 1):
    # no more than the image itself, and a batch's activations must fit in memory.
    net = cfg._network()
    m = net.multiple
    largest = 0
    for s in samples:
        reps = cfg.reps if getattr(s, "periodic", True) else 1
        sides = [n * reps for n in s.phase.shape[-2:]]
        if min(sides) < m / 2:
            raise InputError(
                f"{_network_options(cfg)}: the network pads its input to a multiple of "
                f"{m} pixels (stride {net.stride} x 2^{net.depth - 1}), which needs images of "
                f"at least {(m + 1) // 2} pixels a side; case {s.name} gives "
                f"{sides[0]}x{sides[1]}: give fewer levels or a smaller stride")
        padded = [-(-n // m) * m for n in sides]
        values = sum(c * (padded[0] // (net.stride * 2**i)) * (padded[1] // (net.stride * 2**i))
                     for i, c in enumerate(net.channels))
        largest = max(largest, values + (net.in_channels + 16) * sides[0] * sides[1])
    need = _ACTIVATION_COPIES * 4 * cfg.batch * largest
    available = host_available_memory()
    if available is not None and need > available:
        raise InputError(f"batch: a step of {cfg.batch} copies needs about {_gib(need)} for the "
                         f"network's activations, more than the {_gib(available)} available; "
                         "give a smaller batch or a narrower network")


def _batch(samples, cfg: TrainConfig, rng):
    s = samples[int(rng.integers(len(samples)))]
    s = tile(s, cfg.reps)
    batch = [augment(s, rng, cfg.dose) for _ in range(cfg.batch)]
    # A rotation swaps the axes (shape, pixel sizes): keep the first one's class.
    ref = (batch[0].phase.shape, batch[0].pixel_size)
    return [b for b in batch if (b.phase.shape, b.pixel_size) == ref]


def _tensors(batch: list[Sample], use_com: bool):
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.stack(a)))  # noqa: E731
    planes = t([b.planes for b in batch])
    didz = t([b.didz.astype(np.float32) for b in batch])
    com = t([b.com for b in batch]) if use_com else None
    x = flow_inputs(planes[:, 0], planes[:, 1], planes[:, 2], didz, batch[0].wavenumber,
                    batch[0].pixel_size, com)
    return x, planes[:, 1], didz, t([b.phase for b in batch]), t([b.gradient for b in batch])


# A run has collapsed when its loss is not finite, or when the network is dead
# for this many steps in a row: a zero prediction (the flow and phase terms are
# normalised so that a zero flow scores exactly 1 on each) with almost no
# gradient to leave it. One seed in four of the shipped recipe died so after a
# spike at step ~250 (gradient norm 3e-4 twenty steps later, 1e-7 to 1e-8 for
# the rest of the run, measured); a fresh network scores just under 1 with
# gradient norms of 0.1 to 1. A rollback goes to the newest healthy snapshot
# taken at least ROLLBACK_MARGIN steps before the collapse was detected (a
# snapshot taken in the steps of the fatal spike would die again).
COLLAPSE_STEPS = 20
ROLLBACK_MARGIN = 2 * COLLAPSE_STEPS


def _dead(terms) -> bool:
    value = {k: float(terms[k].detach()) for k in ("flow", "phase", "grad_norm")}
    return value["flow"] > 0.999 and value["phase"] > 0.999 and value["grad_norm"] < 1e-2


def _plain(obj):
    """``obj`` with NumPy scalars and arrays made Python numbers and lists, so
    that it loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    return obj


def _write_bytes(path, write, name: str, overwrite: bool = True) -> None:
    """Serialise with ``write(buffer)`` in memory, then write the bytes
    atomically to ``path`` from Python: PyTorch's own file writer aborts the
    process (C++ ``std::terminate``) or raises an opaque ``RuntimeError`` when
    the disk fills, where a Python write raises an ``OSError`` that
    :func:`atomic_path` names and cleans up. ``overwrite`` False: a file of
    that name made meanwhile (another run's) is kept, an :class:`InputError`."""
    buffer = io.BytesIO()
    write(buffer)
    with atomic_path(path, overwrite, name=name) as tmp, open(tmp, "wb") as f:
        f.write(buffer.getbuffer())


def _save(path: Path, state: dict, overwrite: bool = True) -> None:
    _write_bytes(path, lambda f: torch.save(state, f), "checkpoint", overwrite)


# What a checkpoint holds: required keys, then those that older checkpoints lack.
_REQUIRED = {"model": dict, "optimizer": dict, "step": int, "history": list,
             "numpy_rng": dict, "torch_rng": torch.Tensor, "config": dict}
_OPTIONAL = {"restarts": int, "snapshots": list, "streak": int}
_SNAPSHOT = ("model", "optimizer", "step", "history", "numpy_rng", "torch_rng")

# The settings a resumed run may change: how long it runs, how often it saves
# and how many rollbacks it may still take. Every other one changes the
# network, the data, the objective or the optimiser (the seed is replaced by
# the checkpoint's random states), so it must be the checkpoint's; listed in
# the order they are checked (the network first).
RESUMABLE = ("steps", "checkpoint_every", "restarts")
_CHECKED = ("channels", "width", "depth", "stride", "use_com", "init", "weights", "teacher",
            "distill", "lr", "schedule", "batch", "reps", "dose", "clip", "seed")
# The ``flowtie train`` option of each field (None: Python only).
_OPTIONS = {"steps": "--steps", "batch": "--batch", "reps": None, "lr": "--lr",
            "weights": "--weights", "width": "--width", "depth": "--depth",
            "stride": "--stride", "channels": "--channels", "use_com": None, "dose": "--dose",
            "clip": None, "seed": "--seed", "checkpoint_every": None, "restarts": "--restarts",
            "teacher": "--teacher", "distill": "--distill", "init": None,
            "schedule": None}


def _resume_error(path, reason: str) -> InputError:
    return InputError(f"resume: {path} is not a flowtie training checkpoint ({reason})")


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`train`, without running any code.

    Parameters
    ----------
    path : path
        The checkpoint file.

    Returns
    -------
    dict
        Its state: ``model`` and ``optimizer`` state dicts, ``step``,
        ``history`` (total losses), ``numpy_rng``, ``torch_rng``, ``config``
        (the :class:`TrainConfig` as a dict) and, when present, ``restarts``,
        ``snapshots`` and ``streak``.

    Raises
    ------
    InputError
        Naming ``resume``, when the file is missing, unreadable (truncated,
        not a torch file), holds objects other than tensors and plain
        containers (it is read with ``torch.load(weights_only=True)``: such
        objects are refused, never built) or lacks a key.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise InputError(f"resume: no such checkpoint file {str(path)!r}")
    check_input_file("resume", path)  # a folder, a FIFO, a device, a loop of links
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickle protocols
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (every failure to read is the file's)
        if "weights only" in str(exc).lower() or "weightsunpickler" in str(exc).lower():
            reason = ("expected tensors and plain containers only: it holds other objects or is "
                      "not a torch file, and was not unpickled")
        else:
            first = str(exc).strip().splitlines()[0].split(". ")[0][:160] if str(exc).strip() \
                else ("the file is empty" if path.stat().st_size == 0 else "")
            reason = f"unreadable: {type(exc).__name__}" + (f": {first}" if first else "")
        raise _resume_error(path, reason) from None
    if not isinstance(state, dict):
        raise _resume_error(path, f"expected a dict of training state, got a "
                                  f"{type(state).__name__}")
    for key, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if key not in state:
            if key in _REQUIRED:
                raise _resume_error(path, f"no {key!r} entry")
            continue
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            raise _resume_error(path, f"{key!r} is a {type(state[key]).__name__}, expected a "
                                      f"{kind.__name__}")
    if state["step"] < 0:
        raise _resume_error(path, f"step {state['step']} is negative")
    for snap in state.get("snapshots") or []:
        if not isinstance(snap, dict) or any(k not in snap for k in _SNAPSHOT) \
                or not isinstance(snap["step"], int):
            raise _resume_error(path, "a rollback snapshot lacks entries")
    return state


def _unset(name: str, value) -> bool:
    """Whether a field's value means its option was left out."""
    return value is None or value == (None, None) or (name == "distill" and value == 0)


def _setting(name: str, value) -> str:
    """How a field's value reads on the command line: ``--width 16``."""
    option = _OPTIONS.get(name)
    if option is None:
        return f"{name}={value!r}"
    if _unset(name, value):
        return f"no {option}"
    values = value if isinstance(value, tuple) else (value,)
    return option + "".join(f" {v:g}" if isinstance(v, float) else f" {v}" for v in values)


def _fix(name: str, value) -> str:
    option = _OPTIONS.get(name)
    if option is None:
        return f"set {name}={value!r}"
    if _unset(name, value):
        return f"leave out {option}"
    return f"pass {_setting(name, value)}"


def _canonical(value):
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return value


def _check_fit(state: dict, path, cfg: TrainConfig) -> None:
    """InputError unless the checkpoint's network and objective are ``cfg``'s
    and it is short of ``cfg.steps``."""
    saved = {f.name: _canonical(state["config"].get(f.name, f.default))
             for f in fields(TrainConfig)}
    saved["teacher"] = saved["teacher"] or None
    saved["init"] = saved["init"] or None
    asked = {f.name: _canonical(getattr(cfg, f.name)) for f in fields(TrainConfig)}
    for name in _CHECKED:
        if name in ("width", "depth") and saved["channels"] is not None \
                and saved["channels"] == asked["channels"]:
            continue  # --channels overrides them
        if saved[name] != asked[name]:
            raise InputError(
                f"resume: the checkpoint {path} was trained with {_setting(name, saved[name])}, "
                f"this run asks for {_setting(name, asked[name])}; {_fix(name, saved[name])} "
                f"or start without --resume")
    if state["step"] >= cfg.steps:
        raise InputError(
            f"resume: the checkpoint {path} is already at step {state['step']}, this run asks "
            f"for --steps {cfg.steps}; pass --steps above {state['step']} to train longer, or "
            f"start without --resume")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_checkpoints(cfg: TrainConfig, checkpoint=None, resume=None,
                      overwrite: bool = False) -> dict | None:
    """Check the checkpoint paths of a run before it starts (:func:`train`
    does; the command line also calls it before it reads the data).

    Parameters
    ----------
    cfg : TrainConfig
    checkpoint : path, optional
        The file the run will write. If it exists it must be ``resume`` (the
        run continues it) or ``overwrite`` must be true: an existing
        checkpoint is never replaced by accident.
    resume : path, optional
        Checkpoint to continue from (:func:`load_checkpoint`), of the same
        network and objective as ``cfg`` (every field but those of
        ``RESUMABLE``: ``steps``, ``checkpoint_every``, ``restarts``) and
        short of ``cfg.steps``.
    overwrite : bool
        Replace an existing ``checkpoint``.

    Returns
    -------
    dict or None
        The state to resume from (None without ``resume``).

    Raises
    ------
    InputError
        Naming ``checkpoint`` or ``resume`` and the option to change.
    """
    checkpoint = Path(checkpoint) if checkpoint else None
    resume = Path(resume) if resume else None
    if checkpoint is not None and checkpoint.is_dir():
        raise InputError(f"checkpoint: {checkpoint} is a folder, expected a file path")
    if checkpoint is not None and checkpoint.exists() and not overwrite \
            and not (resume is not None and _same_file(checkpoint, resume)):
        raise InputError(
            f"checkpoint: {checkpoint} exists and would be overwritten (it is only read with "
            f"--resume); pass --resume {checkpoint} to continue that run, another --checkpoint "
            f"path, or --overwrite to replace it")
    if resume is None:
        return None
    state = load_checkpoint(resume)
    _check_fit(state, resume, cfg)
    return state


def train(samples, cfg: TrainConfig | None = None, *, checkpoint=None, resume=None,
          overwrite=False, progress=None, log=None, stop_after=None):
    """Train (or resume training) a :class:`FlowNet` on ``samples``.

    Parameters
    ----------
    samples : list of Sample
    cfg : TrainConfig
        Checked again here (:meth:`TrainConfig.validate`, on a copy).
    checkpoint : path, optional
        Written every ``cfg.checkpoint_every`` steps and at the end (tensors
        and plain containers only). Never read, except as ``resume``; if it
        exists already, the run refuses to start unless it is ``resume`` or
        ``overwrite`` is true.
    resume : path, optional
        Continue the run saved in this checkpoint (it may be ``checkpoint``):
        it is read with ``torch.load(weights_only=True)`` and must be of the
        same network and objective (all settings but ``steps``,
        ``checkpoint_every`` and ``restarts``) and short of ``cfg.steps``.
        Without it, training starts from step 0.
    overwrite : bool
        Replace an existing ``checkpoint`` that is not ``resume``.
    progress : callable, optional
        Called with (step, total loss, terms dict, seconds) every 10 steps.
    log : callable, optional
        Called with one line of text: "resuming from PATH at step N".
    stop_after : int, optional
        Stop after this many steps of this call (to test resuming).

    Returns
    -------
    model, history (list of total losses)

    Raises
    ------
    InputError
        A bad setting (:meth:`TrainConfig.validate`), or a checkpoint that
        would be overwritten, cannot be read safely or does not fit this run
        (:func:`check_checkpoints`); nothing has been trained.
    TrainingCollapse
        A ``RuntimeError``: when the run collapses (zero flow and no gradient for
        ``COLLAPSE_STEPS`` steps, or a non-finite loss) more than
        ``cfg.restarts`` times. Each collapse rolls the run back to a healthy
        snapshot (taken with each checkpoint: model, optimiser, step, random
        states; the newest at least ``ROLLBACK_MARGIN`` steps old) and halves
        the learning rate, with a ``RuntimeWarning``; a run that never
        collapses is unaffected.
    """
    cfg = replace(cfg) if cfg is not None else TrainConfig()  # a checked copy
    checkpoint = Path(checkpoint) if checkpoint else None
    loaded = check_checkpoints(cfg, checkpoint, resume, overwrite)
    _check_samples(samples, cfg)
    teachers = _teacher(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = FlowNet(in_channels=6 if cfg.use_com else 4, width=cfg.width, depth=cfg.depth,
                    stride=cfg.stride, channels=cfg.channels)
    if cfg.init is not None and loaded is None:
        _initial_weights(cfg, model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history, restarts = 0, [], 0
    if loaded is not None:
        try:
            model.load_state_dict(loaded["model"])
            opt.load_state_dict(loaded["optimizer"])
            rng.bit_generator.state = loaded["numpy_rng"]
            torch.set_rng_state(loaded["torch_rng"])
        except Exception as exc:  # noqa: BLE001 (tampered or foreign state)
            text = " ".join(str(exc).split())  # one line
            text = text if len(text) <= 200 else text[:197] + "..."
            raise _resume_error(resume, f"its state does not fit this network: "
                                        f"{type(exc).__name__}: {text}") from None
        step, history = loaded["step"], loaded["history"]
        restarts = loaded.get("restarts", 0)
        if log is not None:
            log(f"resuming from {resume} at step {step}")
    losses: dict = {}

    def state():
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "history": history, "numpy_rng": _plain(rng.bit_generator.state),
                "torch_rng": torch.get_rng_state(), "config": _plain(asdict(cfg)),
                "restarts": restarts}

    def restore(snap):
        nonlocal step, history
        snap = copy.deepcopy(snap)  # the optimiser would otherwise adopt the snapshot's tensors
        model.load_state_dict(snap["model"])
        opt.load_state_dict(snap["optimizer"])
        step, history = snap["step"], snap["history"]
        rng.bit_generator.state = snap["numpy_rng"]
        torch.set_rng_state(snap["torch_rng"])

    # Healthy states to roll back to, oldest first, and the length of the current
    # dead streak: both travel in the checkpoint, so that a resumed run decides
    # as the uninterrupted one would.
    snapshots = loaded.get("snapshots") if loaded else None
    snapshots = snapshots or [copy.deepcopy(state())]
    streak = loaded.get("streak", 0) if loaded else 0

    # The first write replaces a file only where one was allowed to be there
    # (checked before the run): another run's, made meanwhile, is kept.
    replace_first = [overwrite or (resume is not None and checkpoint is not None
                                   and _same_file(Path(checkpoint), Path(resume)))]

    def save():
        _save(checkpoint, {**state(), "snapshots": snapshots, "streak": streak},
              replace_first[0])
        replace_first[0] = True  # this run's own from now on

    done_here = 0
    start = time.perf_counter()
    while step < cfg.steps and (stop_after is None or done_here < stop_after):
        batch = _batch(samples, cfg, rng)
        x, zero, didz, phase, grad = _tensors(batch, cfg.use_com)
        periodic = bool(getattr(batch[0], "periodic", True))
        key = (tuple(zero.shape[-2:]), batch[0].pixel_size, periodic)
        if key not in losses:  # windows: the flow term alone (module docstring)
            losses[key] = CompositeLoss(zero.shape[-2:], batch[0].pixel_size,
                                        cfg.weights if periodic else
                                        (cfg.weights[0], 0.0, 0.0)).float()
        scale = torch.tensor(batch[0].pixel_size, dtype=torch.float32).view(1, 2, 1, 1)
        if teachers:  # the flow target moves toward the teacher's flow (rad/Å)
            with torch.no_grad():
                v = sum(t(x) for t in teachers) / len(teachers) / scale
            grad = (1 - cfg.distill) * grad + cfg.distill * v
        if cfg.schedule == "cosine":  # a function of the step: resumes exactly
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 ** restarts * 0.5 * (1 + math.cos(math.pi * step
                                                                             / cfg.steps))
        opt.zero_grad()
        total, terms = losses[key](model(x) / scale, phase, grad, zero, didz,
                                   batch[0].wavenumber)
        finite = bool(torch.isfinite(total))
        if finite:
            total.backward()
            # One thick case's spike (loss x17 in a step, measured) otherwise threw
            # the strided networks into a dead state they never left.
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                  cfg.clip if cfg.clip > 0 else float("inf"))
            terms = {**terms, "grad_norm": norm}
        streak = streak + 1 if finite and _dead(terms) else 0
        if streak >= COLLAPSE_STEPS or not finite:
            if restarts >= cfg.restarts:
                raise TrainingCollapse(
                    f"train: the flow model collapsed (zero flow or non-finite loss) at step "
                    f"{step + 1} after {restarts} rollbacks with halved learning rates; try "
                    f"a lower lr or another seed")
            detected = step + 1
            # The newest snapshot at least ROLLBACK_MARGIN steps old (else the oldest).
            old_enough = [s for s in snapshots if s["step"] <= detected - ROLLBACK_MARGIN]
            target = old_enough[-1] if old_enough else snapshots[0]
            snapshots = [s for s in snapshots if s["step"] <= target["step"]]
            restore(target)
            restarts += 1
            for group in opt.param_groups:
                group["lr"] = cfg.lr * 0.5 ** restarts
            streak = 0
            if checkpoint is not None:
                save()  # the rollback, its count and learning rate survive an interruption
            warnings.warn(f"train: collapse detected at step {detected} (zero flow or "
                          f"non-finite loss); rolled back to step {step}, learning rate "
                          f"halved to {opt.param_groups[0]['lr']:g}", RuntimeWarning,
                          stacklevel=2)
            continue
        opt.step()
        step += 1
        done_here += 1
        history.append(float(total.detach()))
        if progress is not None and step % 10 == 0:
            progress(step, history[-1], {k: float(v.detach()) for k, v in terms.items()},
                     time.perf_counter() - start)
        if step % cfg.checkpoint_every == 0 and streak == 0:  # healthy states only
            snapshots.append(copy.deepcopy(state()))
            # Keep what a rollback may need: from the newest snapshot that is
            # already ROLLBACK_MARGIN steps old on.
            old_enough = [i for i, s in enumerate(snapshots)
                          if s["step"] <= step - ROLLBACK_MARGIN]
            snapshots = snapshots[old_enough[-1]:] if old_enough else snapshots
            if checkpoint is not None:
                save()
    if checkpoint is not None:
        save()
    return model, history


def export_torchscript(model: FlowNet, path, cfg: TrainConfig | None = None,
                       overwrite: bool = True) -> Path:
    """Script the model and save it atomically with its configuration;
    ``overwrite`` False keeps a file of that name made meanwhile (another
    run's), an :class:`InputError`."""
    path = Path(path)
    scripted = torch.jit.script(model.eval())
    extra = {"config.json": json.dumps({"in_channels": model.in_channels, "width": model.width,
                                        "depth": model.depth, "stride": model.stride,
                                        "channels": model.channels,
                                        "train": asdict(cfg) if cfg else None})}
    _write_bytes(path, lambda f: torch.jit.save(scripted, f, _extra_files=extra), "output",
                 overwrite)
    return path
