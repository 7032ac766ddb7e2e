"""Training the flow model: deterministic, checkpointed, resumable.

Each step draws one case, makes a batch of augmented copies of it (periodic
shifts, flips, 90° rotations, dose), predicts the flow from the dimensionless
inputs and takes an Adam step on the composite loss. Everything random comes
from one seed (NumPy generator and torch), and a checkpoint holds the model,
the optimiser, the step and both random states, so that an interrupted run
resumed from its checkpoint ends with the same weights as an uninterrupted one.

With a teacher (``TrainConfig.teacher``, ``distill``), the flow term's target
is a blend of the ground-truth gradient and the teacher's predicted flow: a
single network learns from the mean flow of an ensemble (MODEL.md).
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from .data import Sample, augment, tile
from .loss import CompositeLoss
from .model import FlowNet, flow_inputs

__all__ = ["TrainConfig", "train", "export_torchscript"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (saved in checkpoints and exports)."""

    steps: int = 2000
    batch: int = 8
    reps: int = 2  # periods per side of each training image
    lr: float = 2e-3
    weights: tuple = (1.0, 0.0, 1.0)  # flow, continuity, phase (ablation: EVALUATION.md)
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


def _teacher(cfg: TrainConfig):
    """The teacher's networks (TorchScript, float32, CPU), or None."""
    if not 0.0 <= cfg.distill <= 1.0:
        raise ValueError(f"distill: expected a fraction in [0, 1], got {cfg.distill}")
    if cfg.distill == 0.0:
        if cfg.teacher:
            warnings.warn(f"train: teacher {cfg.teacher} ignored: distill is 0", RuntimeWarning,
                          stacklevel=3)
        return None
    if not cfg.teacher:
        raise ValueError("teacher: distill > 0 needs a teacher model")
    from .infer import FlowEnsemble, load_model

    model = load_model(str(cfg.teacher))
    members = model.models if isinstance(model, FlowEnsemble) else [model]
    channels = 6 if cfg.use_com else 4
    if any(m.in_channels != channels for m in members):
        raise ValueError(f"teacher: {cfg.teacher} takes other inputs than this run "
                         f"({channels} channels)")
    return [m.module for m in members]


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


def _save(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def train(samples, cfg: TrainConfig | None = None, *, checkpoint=None, progress=None,
          stop_after=None):
    """Train (or resume training) a :class:`FlowNet` on ``samples``.

    Parameters
    ----------
    samples : list of Sample
    cfg : TrainConfig
    checkpoint : path, optional
        Written every ``cfg.checkpoint_every`` steps and at the end; if it
        exists, training resumes from it.
    progress : callable, optional
        Called with (step, total loss, terms dict) every 10 steps.
    stop_after : int, optional
        Stop after this many steps of this call (to test resuming).

    Returns
    -------
    model, history (list of total losses)

    Raises
    ------
    RuntimeError
        When the run collapses (zero flow and no gradient for
        ``COLLAPSE_STEPS`` steps, or a non-finite loss) more than
        ``cfg.restarts`` times. Each collapse rolls the run back to a healthy
        snapshot (taken with each checkpoint: model, optimiser, step, random
        states; the newest at least ``ROLLBACK_MARGIN`` steps old) and halves
        the learning rate, with a ``RuntimeWarning``; a run that never
        collapses is unaffected.
    """
    cfg = cfg or TrainConfig()
    teachers = _teacher(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = FlowNet(in_channels=6 if cfg.use_com else 4, width=cfg.width, depth=cfg.depth,
                    stride=cfg.stride, channels=cfg.channels)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, history, restarts = 0, [], 0
    loaded = None
    checkpoint = Path(checkpoint) if checkpoint else None
    if checkpoint is not None and checkpoint.exists():
        loaded = torch.load(checkpoint, weights_only=False)
        saved = loaded.get("config", {})
        for name in ("teacher", "distill"):  # a resumed run keeps its targets
            if saved.get(name, getattr(TrainConfig, name)) != getattr(cfg, name):
                raise ValueError(f"{name}: the checkpoint {checkpoint} was trained with "
                                 f"{name}={saved.get(name)!r}, not {getattr(cfg, name)!r}")
        model.load_state_dict(loaded["model"])
        opt.load_state_dict(loaded["optimizer"])
        step, history = loaded["step"], loaded["history"]
        restarts = loaded.get("restarts", 0)
        rng.bit_generator.state = loaded["numpy_rng"]
        torch.set_rng_state(loaded["torch_rng"])
    losses: dict = {}

    def state():
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                "history": history, "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "config": asdict(cfg),
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

    def save():
        _save(checkpoint, {**state(), "snapshots": snapshots, "streak": streak})

    done_here = 0
    start = time.perf_counter()
    while step < cfg.steps and (stop_after is None or done_here < stop_after):
        batch = _batch(samples, cfg, rng)
        x, zero, didz, phase, grad = _tensors(batch, cfg.use_com)
        key = (tuple(zero.shape[-2:]), batch[0].pixel_size)
        if key not in losses:
            losses[key] = CompositeLoss(zero.shape[-2:], batch[0].pixel_size,
                                        cfg.weights).float()
        scale = torch.tensor(batch[0].pixel_size, dtype=torch.float32).view(1, 2, 1, 1)
        if teachers:  # the flow target moves toward the teacher's flow (rad/Å)
            with torch.no_grad():
                v = sum(t(x) for t in teachers) / len(teachers) / scale
            grad = (1 - cfg.distill) * grad + cfg.distill * v
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
                raise RuntimeError(
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


def export_torchscript(model: FlowNet, path, cfg: TrainConfig | None = None) -> Path:
    """Script the model and save it atomically with its configuration."""
    import json

    path = Path(path)
    scripted = torch.jit.script(model.eval())
    extra = {"config.json": json.dumps({"in_channels": model.in_channels, "width": model.width,
                                        "depth": model.depth, "stride": model.stride,
                                        "channels": model.channels,
                                        "train": asdict(cfg) if cfg else None})}
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
    return path
