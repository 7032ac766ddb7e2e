"""Command line: ``flowtie demo | reconstruct | simulate | evaluate | train``.

- ``flowtie demo`` makes a focal triplet of a known phase object by Fresnel
  propagation (a weak phase object on a non-uniform amplitude), retrieves it
  with every TIE method and prints the phase error and the time of each.
- ``flowtie reconstruct FILE --method M -o OUT [--png FIGURE]`` reconstructs a
  file of the flowtie_fast layout (triplet or 4D-STEM) and writes atomically
  (``.npz``, or ``.h5`` with the arrays as datasets and the rest as root
  attributes) ``phase`` (rad), ``gradient`` (rad/Å), ``residual`` (1/Å²),
  ``uncertainty`` (rad; ``flowtie`` with its trust check, where it returned
  its flow's phase),
  ``method``, ``pixel_size`` (Å), ``source`` (the input's path),
  ``fallback`` (text, where ``flowtie`` returned a classical phase) and
  ``verdict``: JSON text of the entries of the solve's ``info`` that say
  whether to trust the phase (:data:`~flowtie_fast.trust.VERDICT_KEYS`:
  ``trusted`` true or false and, where false, ``why`` for ``flowtie``'s
  trust check; ``fallback``; ``trust``, the text of any warning against the
  phase, e.g. a saturated detector's), ``{}`` where nothing was said. Older
  versions wrote no ``verdict``.
- ``flowtie simulate`` runs abTEM for a thickness series and writes one file
  per thickness (extra ``sim``).
- ``flowtie evaluate DIR`` runs every method on every simulated case and prints
  and saves the table of phase errors.
- ``flowtie train DIR`` trains the flow model (extra ``flow``) with
  checkpoints it resumes from, and exports it to TorchScript.

Each command checks its arguments, calls public functions of the package and
prints. The research commands (demo, simulate, evaluate, train) import their
subpackage when they run, so that ``flowtie reconstruct`` starts without
them, and without PyTorch unless the method is flowtie.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

import flowtie_fast as ft
from flowtie_fast import __version__
from flowtie_fast.errors import (BackendError, InputError, check_count, check_positive,
                                 out_of_memory)
from flowtie_fast.files import (atomic_path, check_not_input, check_output, one_line,
                                remove_live_temporaries)
from flowtie_fast.flow import load_model
from flowtie_fast.flow.infer import check_model_source
from flowtie_fast.stem.detector import VIRTUAL_IMAGES

__all__ = ["main"]
from flowtie_fast.io import write_fields
from flowtie_fast.solvers import METHODS
from flowtie_fast.trust import verdict_entries


def _demo_fresnel(args) -> int:
    from flowtie_fast.evaluation import demo

    phase, t = demo.fresnel_case(args.size, args.pixel_size, args.dz, args.energy)
    print(f"Fresnel-propagated phase object: {args.size}x{args.size} px, "
          f"{args.pixel_size} Å/px, dz = ±{args.dz} Å, {args.energy / 1e3:g} keV")
    column = f"best of {demo.REPEATS} warm, ms"
    print(f"{'method':<12}{'backend':<9}{'NMSE':>11}{column:>24}")
    for row in demo.method_rows(t, phase, demo.methods(gradient=False), demo.backends()):
        print(f"{row.method:<12}{row.backend:<9}{row.nmse:>11.2e}{row.seconds * 1e3:>24.3f}")
    print(_demo_note(demo.REPEATS))
    return 0


def _demo_note(repeats) -> str:
    """What the demo's columns mean."""
    return ("NMSE: MSE / var(truth), both means removed (dimensionless). Time: the best of "
            f"{repeats} runs after a warm-up run that plans, compiles and loads the model.")


def _demo(args) -> int:
    """GaAs 4D-STEM triplet simulated by abTEM, every method, a table and a figure;
    the Fresnel phase object where abTEM is missing (or with --fresnel)."""
    from flowtie_fast.evaluation import demo

    fresnel = args.fresnel or not demo.have_abtem()
    options = {"size": 256, "pixel_size": 0.2, "dz": 20.0, "energy": 300e3}
    given = [f"--{k.replace('_', '-')}" for k in options if getattr(args, k) is not None]
    if not fresnel and given:  # the GaAs demo's conditions are fixed
        raise InputError(f"{'/'.join(given)}: apply to the Fresnel demo only (--fresnel)")
    if fresnel and args.png is not None:
        raise InputError("--png: the Fresnel demo writes no figure")
    for k, default in options.items():
        setattr(args, k, default if getattr(args, k) is None else getattr(args, k))
    check_count("--size", args.size, 16, 4096)
    for name in ("pixel_size", "dz", "energy"):
        try:
            check_positive(name, getattr(args, name))
        except InputError as exc:  # named as the option given
            raise InputError(f"--{name.replace('_', '-')}{str(exc)[len(name):]}") from None
    if fresnel:
        if not args.fresnel:
            print("abTEM is not installed (extra 'sim'): the Fresnel demo instead")
        return _demo_fresnel(args)
    # The demo replaces its own figure (in the temporary folder, never in the
    # working tree); any other existing file needs --overwrite.
    default = _demo_png()
    args.png = default if args.png is None else args.png
    args.overwrite = args.overwrite or args.png == default
    check_output(args.png, overwrite=args.overwrite, name="--png", suffixes=".png")
    methods = demo.methods()
    if "flowtie" not in methods:
        print("flowtie: skipped, PyTorch is not installed (pip install 'flowtie_fast[flow]')")
    case, t, seconds = demo.gaas_case()
    print(f"{demo.conditions(case)}; {case.zero.shape[2]}x{case.zero.shape[3]} px patterns; "
          f"abTEM {seconds:.0f} s")
    column = f"best of {demo.REPEATS} warm, ms"
    print(f"{'method':<12}{'backend':<9}{'MSE (rad²)':>12}{'NMSE':>8}{column:>24}")
    rows = []
    for row in demo.method_rows(t, case.phase, methods, demo.backends()):
        rows.append(row)
        print(f"{row.method:<12}{row.backend:<9}{row.mse:>12.4f}{row.nmse:>8.3f}"
              f"{row.seconds * 1e3:>24.3f}")
    print(_demo_note(demo.REPEATS))
    fig = demo.figure(case, rows)
    with atomic_path(args.png, args.overwrite, name="--png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"figure: {_shown_path(args.png)}")
    return 0


def _demo_png() -> Path:
    """Where ``flowtie demo`` writes its figure by default: the system's
    temporary folder, so that a run from a source checkout leaves nothing in it."""
    return Path(tempfile.gettempdir()) / "flowtie_demo.png"


def _save_panels(path, panels, title=None, overwrite=True, name="--png") -> None:
    """A row of grey images with colour bars, written atomically as PNG
    (``name``: the option that gave ``path``, for the messages)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.1))
    for ax, (label, img) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(np.asarray(img), cmap="gray")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        with atomic_path(path, overwrite, name=name) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)


def _reconstruct(args) -> int:
    check_output(args.output, inputs=[args.file], overwrite=args.overwrite)
    if args.png is not None:
        check_output(args.png, inputs=[args.file], overwrite=args.overwrite, name="--png",
                     suffixes=".png")
        if os.path.realpath(args.png) == os.path.realpath(args.output):
            raise InputError(f"--png: {str(args.png)!r} is also the -o output; choose another "
                             "figure path")
    if args.method != "flowtie" and (args.model or args.precision != "float32"
                                     or args.no_uncertainty):
        raise ft.InputError("--model/--precision/--no-uncertainty: apply to --method flowtie "
                            f"only, got --method {args.method}")
    if args.method == "flowtie":  # before the file is read and reduced
        check_model_source("--model", args.model)
    options = {}
    if args.virtual:
        options["virtual"] = args.virtual
    if args.register is not None:
        options["register"] = {"on": True, "periodic": "periodic", "off": False}[args.register]
    if args.normalize is not None:
        options["normalize"] = args.normalize == "on"
    if args.descan is not None:
        options["descan"] = args.descan
    if args.bf_radius is not None:
        options["bf_radius"] = args.bf_radius
    with ft.load(args.file) as ds:
        for flag, given in (("--virtual", args.virtual), ("--normalize", args.normalize),
                            ("--descan", args.descan), ("--bf-radius", args.bf_radius)):
            if given is not None and ds.kind != "4dstem":
                raise ft.InputError(f"{flag}: applies to 4D-STEM files only; "
                                    f"{args.file.name} holds a triplet of images")
        be = _one_shot_backend(args.backend, args.kernels, ds)
        t = ds.triplet(backend=be, **options)
        _report_registration(getattr(t, "registration", None))
        _report_flux(getattr(t, "flux", None))
        extra = {}
        if args.method == "flowtie":
            extra["model"] = _flow_model(args.model, args.precision, be)
            extra["uncertainty"] = not args.no_uncertainty
        rec = ft.reconstruct(t, method=args.method, backend=be,
                             boundary=args.boundary, dtype=args.dtype, **extra)
        fields = {"phase": be.to_numpy(rec.phase), "gradient": be.to_numpy(rec.gradient),
                  "residual": be.to_numpy(rec.residual), "method": args.method,
                  "pixel_size": np.asarray(t.pixel_size), "source": _text_path(args.file)}
        if rec.uncertainty is not None:
            fields["uncertainty"] = be.to_numpy(rec.uncertainty)
        if rec.info.get("fallback"):
            fields["fallback"] = rec.info["fallback"]
        # whether to trust the phase, as reconstruct judged it (JSON: trusted a bool)
        fields["verdict"] = json.dumps(verdict_entries(rec.info))
        if ds.phase_gt is not None:
            from flowtie_fast.evaluation.evaluate import nmse_text, phase_errors

            try:
                mse, nmse = phase_errors(fields["phase"], ds.phase_gt)
                print(f"phase error against the file's ground truth: MSE {mse:.4g} rad², "
                      f"NMSE {nmse_text(nmse, '.4g')}")
            except InputError as exc:  # the result is still written
                warnings.warn(f"no phase error against the file's ground truth: {exc}",
                              UserWarning, stacklevel=2)
        truth = ds.phase_gt
    write_fields(args.output, fields, arrays=("phase", "gradient", "residual", "uncertainty"),
                 overwrite=args.overwrite)
    args.written.append(args.output)  # whole: a failure of the figure names it
    done = f"{args.method} (returned the {rec.info['fallback']} phase)" \
        if rec.info.get("fallback") else args.method
    print(f"{done}: {_shown_path(args.output)} ({rec.info.get('time', 0) * 1e3:.1f} ms)")
    if args.png is not None:
        _figure(args.png, fields, truth, args.method, args.overwrite)
        print(f"figure: {_shown_path(args.png)}")
    return 0


def _report_registration(record) -> None:
    """One line on the registration of a triplet's planes."""
    if not record:
        return
    if record.get("why"):  # nothing was measured: no shifts to report
        print(f"registration: not measured ({record['why']}); the planes are used as recorded")
        return
    s = record["shifts"]
    shifts = ", ".join(f"{name} ({s[i][0]:+.2f}, {s[i][1]:+.2f})"
                       for i, name in ((0, "-dz"), (2, "+dz")))
    state = ("applied" if record["applied"] else
             "not applied (unreliable)" if not record["reliable"] else
             "not applied (under 0.1 px)")
    source = {"df": "the dark-field images", "planes": "the planes themselves"}.get(
        record.get("signal"), "the planes")
    print(f"registration from {source}: shifts (dy, dx) px {shifts}; {state}")


def _report_flux(record) -> None:
    """One line on the electrons per pattern of a 4D-STEM triplet's scans."""
    m = (record or {}).get("per_pattern")
    if not m or not all(v > 0 for v in m):  # nothing measured, or nothing to compare
        return
    state = "planes scaled to the in-focus scan's" if record["applied"] else \
        "planes used as recorded"
    print(f"beam: the -dz and +dz scans hold {m[0] / m[1]:.4g} and {m[2] / m[1]:.4g} times the "
          f"in-focus scan's electrons per pattern; {state}")


#: 4D-STEM data (bytes as stored) up to which ``--kernels auto`` takes the NumPy
#: kernels: reducing it with them costs less than starting Numba (~0.5-0.8 s).
ONE_SHOT_NUMPY_BYTES = 256 * 2**20


def _one_shot_backend(name, kernels, ds):
    """The backend of one command-line reconstruction: on the CPU, the NumPy
    kernels for a triplet of images or a 4D file of at most
    ``ONE_SHOT_NUMPY_BYTES`` (``--kernels auto``), else the Numba twins."""
    if name == "gpu" and kernels == "numpy":
        raise InputError("--kernels numpy: the NumPy kernels are the CPU's; got --backend gpu "
                         "(use --backend cpu)")
    if name == "gpu" or (name == "auto" and kernels == "auto" and ft.gpu_available()):
        return ft.get_backend("gpu")  # a named CPU kernel set keeps "auto" on the CPU
    if kernels == "auto":
        size = sum(int(np.prod(p.shape)) * np.dtype(p.dtype).itemsize
                   for p in (ds.minus, ds.zero, ds.plus)) if ds.kind == "4dstem" else 0
        kernels = "numpy" if size <= ONE_SHOT_NUMPY_BYTES else "numba"
    return ft.get_backend("cpu", kernels=kernels)


def _flow_model(model, precision, backend):
    """The flow model of the command line's --model and --precision."""
    device = "cuda" if ft.get_backend(backend).is_gpu else "cpu"
    return load_model(model or "default", device, precision)


def _figure(path, fields, truth, method, overwrite) -> None:
    panels = [("phase (rad)", fields["phase"]),
              ("d phase / d axis 0 (rad/Å)", fields["gradient"][0]),
              ("d phase / d axis 1 (rad/Å)", fields["gradient"][1]),
              ("TIE residual (1/Å²)", fields["residual"])]
    if truth is not None:
        panels.insert(0, ("ground truth phase (rad)", truth))
    _save_panels(path, panels, title=method, overwrite=overwrite)


_SERIES_OPTIONS = {"material": "GaAs", "thickness": [5.65, 22.6, 56.5], "energy": 300e3,
                   "semiangle": 20.0, "dz": 20.0, "scan_gpts": None, "supercell": 12.0,
                   "sampling": 0.06, "max_angle": 40.0, "frozen_phonons": 0, "dose": None,
                   "seed": 0, "tilt": None}


def _simulate(args) -> int:
    """One thickness series (the options), or a resumable sweep (--sweep)."""
    given = [f"--{k.replace('_', '-')}" for k in _SERIES_OPTIONS
             if getattr(args, k) is not None]
    if args.sweep is not None or args.list:
        return _simulate_sweep(args, given)
    if args.limit is not None:
        raise InputError("--limit: applies to a sweep only (--sweep CONFIG)")
    for k, default in _SERIES_OPTIONS.items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    from flowtie_fast.simulation.simulate import (cell_height, check_settings,
                                                  series_thicknesses, simulate_series)

    from flowtie_fast.simulation.sweep import check_folder

    out = check_folder(Path("data") if args.output is None else args.output)
    dz = args.dz
    if isinstance(dz, list):
        dz = dz[0] if len(dz) == 1 else tuple(dz)
    tilt = (0.0, 0.0) if args.tilt is None else tuple(args.tilt)
    check_settings(args.thickness, energy=args.energy, semiangle=args.semiangle, dz=dz,
                   scan_gpts=args.scan_gpts, supercell=args.supercell,
                   potential_sampling=args.sampling, max_angle=args.max_angle,
                   frozen_phonons=args.frozen_phonons, dose=args.dose, seed=args.seed,
                   tilt=tilt)
    simulated = series_thicknesses(args.material, args.thickness)
    wanted = sorted(set(args.thickness))
    cell = cell_height(args.material)
    if len(simulated) < len(wanted) or min(wanted) < cell / 2:  # merged, or raised to a cell
        warnings.warn(f"--thickness: {', '.join(f'{t:g}' for t in wanted)} Å become "
                      f"{len(simulated)} thickness{'es' if len(simulated) > 1 else ''} of whole "
                      f"{args.material} unit cells ({cell:.4g} Å each): "
                      f"{', '.join(f'{t:.1f}' for t in simulated)} Å", UserWarning, stacklevel=2)
    paths = [out / _case_name(args.material, t) for t in simulated]
    for path in paths:  # before minutes of simulation, not after
        check_output(path, overwrite=args.overwrite)
    start = time.perf_counter()
    cases = simulate_series(args.material, args.thickness, energy=args.energy,
                            semiangle=args.semiangle, dz=dz,
                            scan_gpts=tuple(args.scan_gpts) if args.scan_gpts else None,
                            supercell=args.supercell, potential_sampling=args.sampling,
                            max_angle=args.max_angle, frozen_phonons=args.frozen_phonons,
                            dose=args.dose, seed=args.seed, progress=True, tilt=tilt,
                            device=args.device)
    for c in cases:
        path = ft.save(out / _case_name(c.material, c.thickness), c, overwrite=args.overwrite)
        print(f"{_shown_path(path)}  ({c.zero.shape}, thickness {c.thickness:.1f} Å)")
    print(f"simulated {len(cases)} thicknesses in {time.perf_counter() - start:.0f} s")
    return 0


def _simulate_sweep(args, given) -> int:
    """``flowtie simulate --sweep CONFIG -o DIR [--limit N] [--list]``."""
    from flowtie_fast.simulation import sweep

    if given:
        raise InputError(f"{'/'.join(given)}: apply to a single series, not to --sweep (the "
                         "recipe sets every setting)")
    if args.overwrite:
        raise InputError("--overwrite: a sweep never replaces finished series; it resumes "
                         "(use another -o folder to start again)")
    if args.limit is not None:
        check_count("--limit", args.limit, 1)
    if args.output is not None:  # before the recipe is read: a file in the way, ...
        sweep.check_folder(args.output, writable=not args.list)
    elif not args.list:
        raise InputError("-o/--output: a sweep needs an output folder (e.g. -o data/corpus)")
    cfg = sweep.load_config(args.sweep)
    series = sweep.plan(cfg)
    if args.list:
        sweep.list_plan(cfg, series, folder=args.output, file=sys.stdout)
        return 0
    longest = max(series, key=lambda s: s["estimated_seconds"], default=None)
    cost = "" if longest is None else (
        f" (estimated {sum(s['estimated_seconds'] for s in series) / 3600:.1f} h, the longest "
        f"{longest['id']} {sweep._format_seconds(longest['estimated_seconds'])})")
    print(f"sweep {cfg['sweep']['name']!r} ({cfg['_source']}): {len(series)} series "
          f"planned{cost}; output {args.output}", flush=True)
    result = sweep.run(cfg, args.output, limit=args.limit,
                       log=lambda line: print(line, flush=True), device=args.device)
    print(f"{result['simulated']} series simulated in {result['seconds']:.0f} s "
          f"({result['done_before']} done before, {len(result['failed'])} failed); "
          f"manifest: {Path(args.output) / 'manifest.jsonl'}", flush=True)
    return 1 if result["failed"] else 0


def _case_name(material, thickness) -> str:
    """File name of one simulated thickness (Å)."""
    return f"{material}_{thickness:06.1f}A.npz"


def _evaluate(args) -> int:
    from flowtie_fast.evaluation.evaluate import (available_methods, case_files, evaluate,
                                                  format_table)

    given = args.methods is not None
    methods = args.methods if given else list(available_methods())
    twice = sorted({m for m in methods if methods.count(m) > 1})
    if twice:  # before anything is printed
        raise InputError(f"--methods: each method once, got {twice[0]!r} more than once")
    if "flowtie" not in methods and (args.model or args.precision != "float32"):
        raise InputError("--model/--precision: apply to flowtie only, which "
                         + ("--methods leaves out" if given else
                            "needs PyTorch (pip install 'flowtie_fast[flow]')"))
    check_count("--repeats", args.repeats, 1, 1000)
    if args.output is not None:  # an empty -o is refused, not ignored
        check_output(args.output, overwrite=args.overwrite, suffixes=(".md", ".txt"))
        check_not_input("output", args.output, case_files(args.directory))
    if not given and "flowtie" not in methods:
        print("flowtie: skipped, PyTorch is not installed (pip install 'flowtie_fast[flow]')")
    options = {"virtual": args.virtual} if args.virtual else {}
    model = _flow_model(args.model, args.precision, args.backend) \
        if "flowtie" in methods else None
    print(f"methods: {', '.join(methods)}; {args.backend} backend; time: best of "
          f"{args.repeats} runs after a warm-up run")
    rows = evaluate(args.directory, methods=methods, backend=args.backend,
                    repeats=args.repeats, triplet_options=options, model=model,
                    progress=print, skip_without_gradient=True)
    table = format_table(rows)
    print(table)
    if args.output is not None:
        with atomic_path(args.output, args.overwrite) as tmp:
            tmp.write_text(table)
        print(f"table: {_shown_path(args.output)}")
    return 0


#: The names a training checkpoint may take (not those of data files).
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")


def _train(args) -> int:
    from flowtie_fast.training.data import check_doses, load_samples
    from flowtie_fast.training import train as training

    # Every setting and both checkpoint paths are checked before the data is read.
    dose = (args.dose[0], args.dose[1]) if args.dose else (None, None)
    cfg = training.TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr,
                               width=args.width, depth=args.depth, stride=args.stride,
                               seed=args.seed, dose=dose,
                               channels=tuple(args.channels) if args.channels else None,
                               weights=tuple(args.weights), restarts=args.restarts,
                               teacher=args.teacher, distill=args.distill)
    doses = check_doses([None] + list(args.doses or []))
    # Neither the checkpoint nor the model may replace a training file.
    data_files = [q for d in map(Path, args.data)
                  for q in (sorted(d.iterdir()) if d.is_dir() else [d])]
    # The teacher is read too (where it is a file, not a shipped name).
    teacher = [args.teacher] if args.teacher and os.path.lexists(args.teacher) else []
    check_not_input("--checkpoint", args.checkpoint, [*data_files, *teacher])
    if args.checkpoint.suffix.lower() not in CHECKPOINT_SUFFIXES:
        # a checkpoint named as data (ck.npz in the data folder) broke every later
        # run over that folder
        raise InputError(f"--checkpoint: expected a file name ending in "
                         f"{' or '.join(CHECKPOINT_SUFFIXES)}, got {_shown_path(args.checkpoint)}")
    training.check_checkpoints(cfg, args.checkpoint, args.resume, args.overwrite)
    # The model and the checkpoint are two files (-o was called "the input file").
    try:
        check_not_input("output", args.output, [args.checkpoint])
    except InputError:
        raise InputError(f"output: {str(args.output)!r} is also the --checkpoint path; the "
                         "model and the checkpoint need two files (e.g. -o flowtie_model.pt)") \
            from None
    # Resuming continues the run whose model -o holds: it is replaced at the end.
    check_output(args.output, inputs=[*data_files, *teacher, args.checkpoint, args.resume],
                 overwrite=args.overwrite or args.resume is not None,
                 suffixes=(".pt", ".pth", ".ts"))
    samples = load_samples(args.data, doses=doses)
    if not samples:
        raise InputError("data: no files with a ground truth (training needs both "
                         "'phase_gt' and 'gradient_gt' in each file)")
    print(f"{len(samples)} training cases: " + ", ".join(s.name for s in samples))

    def report(step, total, terms, seconds):
        print(f"step {step:6d}/{cfg.steps}  loss {total:.4g}  " +
              "  ".join(f"{k} {v:.3g}" for k, v in terms.items()) + f"  {seconds:.0f} s",
              flush=True)

    try:
        model, _ = training.train(samples, cfg, checkpoint=args.checkpoint, resume=args.resume,
                                  overwrite=args.overwrite, progress=report,
                                  log=lambda line: print(line, flush=True))
    except training.TrainingCollapse as exc:  # the settings' fault: nothing worth exporting
        print(f"flowtie train: error: {_printable(exc)}", file=sys.stderr)
        return 2
    # any other failure (out of memory inside PyTorch, ...) is the environment's: main()
    # a model made meanwhile by another run is kept (checked free before the run)
    training.export_torchscript(model, args.output, cfg,
                                overwrite=args.overwrite or args.resume is not None)
    print(f"model: {_shown_path(args.output)}")
    return 0


def main(argv=None) -> int:
    """Run ``flowtie``: parse the arguments and the command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default None: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 2 for bad usage or input, 1 for a
        fault of the environment, 130 when interrupted, 143 when terminated
        (SIGTERM); every failure is one line on standard error (the traceback
        with ``--debug``).
    """
    try:
        parser = _parser()
    except KeyboardInterrupt:
        print("flowtie: interrupted while starting; nothing was done", file=sys.stderr)
        return 130
    args = parser.parse_args(argv)
    args.written = []  # outputs complete on disk, named where a later step fails
    _COMMAND_OPTIONS.clear()  # the options the messages may name
    _COMMAND_OPTIONS.update(parser.commands[args.command]._option_string_actions)
    streams = _printable_streams()
    watch = _SignalWatch(args.command)
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            warnings.simplefilter("default")
            for kind in (DeprecationWarning, FutureWarning):  # dependencies' notes to us
                warnings.simplefilter("ignore", kind)
            status = args.func(args)
            sys.stdout.check()
            return status
    except KeyboardInterrupt as exc:
        how = "terminated" if isinstance(exc, _Terminated) else "interrupted"
        print(f"flowtie {args.command}: {how}; nothing half-written is left"
              f"{_written(args.written)}", file=sys.stderr)
        return 143 if how == "terminated" else 130
    except Exception as exc:  # one line, never a traceback (--debug shows it)
        if args.debug:
            traceback.print_exc()
        print(f"flowtie {args.command}: error: {_describe(exc)}{_written(args.written)}",
              file=sys.stderr)
        return _exit_code(exc)
    finally:
        sys.stdout = stdout
        watch.stop()
        _restore_streams(streams)


class _StdoutError(OSError):
    """The standard output could not be written (a full device, a closed pipe)."""


class _Stdout:
    """``sys.stdout`` while a command runs: a failed write or flush raises
    :class:`_StdoutError`, whose message names the standard output (the
    system's error alone, "[Errno 28] No space left on device", reads as if
    the command's output file could not be written)."""

    def __init__(self, stream):
        self._stream = stream
        self._lost = False  # whether something was printed to a closed standard output

    def check(self):
        """Raise :class:`_StdoutError` where the command printed to a standard
        output closed when it started: like a full device's, the failure is
        told after the command's files are written, never instead of them."""
        if self._lost:
            raise _StdoutError(errno.EBADF, "the standard output cannot be written (it is "
                                            "closed)")

    def _call(self, method, *args):
        if self._stream is None:  # the process started with it closed (``>&-``): the
            self._lost = True      # command goes on, and fails at its end (see check)
            return len(args[0]) if method == "write" else None
        try:
            return getattr(self._stream, method)(*args)
        except OSError as exc:
            raise _StdoutError(exc.errno, f"the standard output cannot be written "
                                          f"({' '.join(str(exc).split())})") from exc

    def write(self, text):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name):
        return getattr(self._stream, name)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, like Ctrl-C: the file being
    written is removed before the command stops."""


#: Seconds a command has, after Ctrl-C or SIGTERM, to get back to Python and
#: stop in order; past them it is ended where it is (exit 130 or 143, the
#: temporaries of its writes removed). Python code reacts at once: only a call
#: that does not return, such as a flow model whose network never ends
#: (TorchScript cannot be interrupted), waits for them.
SIGNAL_GRACE_SECONDS = 5.0


class _SignalWatch:
    """Ctrl-C and SIGTERM for a command: raised in the main thread as
    ``KeyboardInterrupt`` (:class:`_Terminated` for SIGTERM), and ended by a
    watcher thread where that cannot happen within
    :data:`SIGNAL_GRACE_SECONDS`.

    Python runs a signal handler only between the main thread's bytecodes; a
    call into native code that never returns defers it forever. The C-level
    handler also writes the signal's number into a pipe
    (``signal.set_wakeup_fd``), which the watcher reads; it counts the
    handlers that ran. Nothing is installed outside the main thread or where
    the caller has its own handlers or wake-up descriptor.
    """

    def __init__(self, command: str):
        self.command = command
        self.reached = 0  # handlers that ran in the main thread
        self.restore, self.write_fd = {}, None
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler, default in (
                (signal.SIGINT, self._interrupt, signal.default_int_handler),
                (signal.SIGTERM, self._terminate, signal.SIG_DFL)):
            previous = signal.getsignal(signum)
            if previous is default:
                signal.signal(signum, handler)
                self.restore[signum] = previous
        if not self.restore:
            return
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            previous_fd = None
        if previous_fd != -1:  # another wake-up descriptor (or none possible): keep it
            if previous_fd is not None:
                signal.set_wakeup_fd(previous_fd)
            os.close(read_fd)
            os.close(write_fd)
            return
        self.write_fd = write_fd
        _SignalWatch.active = True
        if not _SignalWatch.fork_hook:  # a forked child's signals are its own
            os.register_at_fork(after_in_child=_SignalWatch._forget_in_child)
            _SignalWatch.fork_hook = True
        threading.Thread(target=self._watch, args=(read_fd, set(self.restore)),
                         name="flowtie-signal-watch", daemon=True).start()

    active = False  # a watch's wake-up descriptor is installed
    fork_hook = False  # _forget_in_child is registered

    @staticmethod
    def _forget_in_child():
        if _SignalWatch.active:
            with contextlib.suppress(ValueError, OSError):  # a fork from another thread
                signal.set_wakeup_fd(-1)

    def _interrupt(self, signum, frame):
        self.reached += 1
        raise KeyboardInterrupt

    def _terminate(self, signum, frame):
        self.reached += 1
        raise _Terminated

    def _watch(self, read_fd, watched):
        received = 0
        try:
            while True:
                data = os.read(read_fd, 64)
                if not data:  # stop() closed the pipe
                    return
                for signum in data:
                    if signum not in watched:
                        continue
                    received += 1
                    deadline = time.monotonic() + SIGNAL_GRACE_SECONDS
                    while self.reached < received and time.monotonic() < deadline:
                        time.sleep(0.05)
                    if self.reached < received:
                        self._abandon(signum)
        finally:
            os.close(read_fd)

    def _abandon(self, signum):
        """End the process where it is: its writes' temporaries removed, one line."""
        how, code = ("terminated", 143) if signum == signal.SIGTERM else ("interrupted", 130)
        remove_live_temporaries()
        line = (f"flowtie {self.command}: {how}; a call that did not return within "
                f"{SIGNAL_GRACE_SECONDS:g} s (a flow model whose network never ends?) was "
                "abandoned; nothing half-written is left\n")
        with contextlib.suppress(OSError):
            os.write(2, line.encode(errors="backslashreplace"))
        os._exit(code)

    def stop(self):
        """Restore the handlers and the wake-up descriptor; end the watcher."""
        if self.write_fd is not None:
            signal.set_wakeup_fd(-1)  # before the pipe closes: no write into a reused fd
            _SignalWatch.active = False
            os.close(self.write_fd)  # the watcher reads the end of the pipe
            self.write_fd = None
        for signum, previous in self.restore.items():
            signal.signal(signum, previous)
        self.restore = {}


def _printable_streams() -> list:
    """Let stdout and stderr print what their encoding cannot (a path in
    another script on an ASCII console) as escapes, so that a result already
    written is not reported as an error; returns what to restore."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors in (None, "backslashreplace", "surrogateescape"):
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper, or closed
            continue
        changed.append((stream, errors))
    return changed


def _restore_streams(changed) -> None:
    for stream, errors in changed:
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):
            pass


def _one_line_warning(command):
    """A ``warnings.showwarning`` that prints ``flowtie CMD: warning: ...`` on one
    line (the library's own warnings say what was done and what to change)."""
    def show(message, category, filename, lineno, file=None, line=None):
        if sys.stderr is None:  # started with it closed (``2>&-``): dropped, as by Python,
            return              # not printed on the standard output
        print(f"flowtie {command}: warning: {_printable(message)}", file=sys.stderr)
    return show


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help where it has a default
    value and its help does not already say ``default``; flags (no value) and
    options without a default say what happens when they are absent in their
    own help."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" not in text and action.option_strings and action.nargs != 0
                and default is not None and default is not argparse.SUPPRESS):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) \
                else "%(default)s"
            text += f" (default: {shown})"
        return text


#: An argument argparse reads as a negative number, not an option.
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line like every other
    failure of the command (exit status 2), pointing to ``--help`` for the
    usage; its subcommands' parsers are of this class too."""

    def add_argument(self, *args, **kwargs):
        """argparse's, keeping the option strings this parser takes, and those
        that print and exit (``--help``, ``--version``), for
        :meth:`stray_options`."""
        action = super().add_argument(*args, **kwargs)
        self.__dict__.setdefault("option_names", set()).update(action.option_strings)
        if kwargs.get("action") in ("help", "version"):
            self.__dict__.setdefault("exit_names", set()).update(action.option_strings)
        return action

    def error(self, message):
        text = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {text} (see {self.prog} --help)\n")

    def _takes(self, arg: str, names) -> bool:
        """Whether ``arg`` is one of the options ``names`` as argparse reads
        it: whole, with ``=value``, a unique prefix of a long option, or a
        short option with its value or further flags attached."""
        name = arg.split("=", 1)[0]
        if name in names:
            return True
        if name.startswith("--"):
            return self.allow_abbrev and any(n.startswith(name) for n in names)
        return len(arg) > 2 and arg[:2] in names

    def stray_options(self, args) -> tuple[list, bool]:
        """The options before the command (the arguments up to the first that
        is not an option) that this parser does not take, and whether those
        before the command ask for ``--help`` or ``--version``. argparse set
        stray options aside and then said only that the command was missing
        (``flowtie --bogus``), or had the command name them as its own."""
        names = self.__dict__.get("option_names", set())
        exits = self.__dict__.get("exit_names", set())
        stray, exit_ = [], False
        for arg in args:
            if arg == "--" or not arg.startswith("-") or _NEGATIVE_NUMBER.match(arg):
                break
            if not self._takes(arg, names):
                stray.append(arg)
            elif self._takes(arg, exits):
                exit_ = True
        return stray, exit_

    def parse_args(self, args=None, namespace=None):
        """argparse's, except that options before the command that ``flowtie``
        does not take are named by ``flowtie`` (``flowtie: error:
        unrecognized arguments: --bogus``; ``--help`` and ``--version``
        given with them still print), and arguments no command takes by the
        command they were given to (``flowtie evaluate: error: ...``)."""
        args = sys.argv[1:] if args is None else list(args)
        if getattr(self, "commands", None):
            stray, exit_ = self.stray_options(args)
            if stray and not exit_:
                self.error(f"unrecognized arguments: {' '.join(stray)}")
        args, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(self, "commands", {}).get(getattr(args, "command", None), self)
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        return args


def _shown_path(path) -> str:
    """A path for a line of output: as it is, or quoted with its escapes where
    it holds characters that are not printable (a newline would split the
    line a log parser reads)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _written(paths) -> str:
    """What a failed command had written whole before it failed, for its
    error line ("" where nothing): a rerun with the same outputs needs
    --overwrite."""
    if not paths:
        return ""
    return (f" ({', '.join(_shown_path(p) for p in paths)} written whole before it; "
            "--overwrite replaces it)")


def _text_path(path) -> str:
    """A path as text any file format stores: bytes of its name that are not
    UTF-8 (a Latin-1 name from another machine, held by Python as lone
    surrogates) as backslash escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _path(text: str) -> Path:
    """A path argument as a :class:`~pathlib.Path`; an empty one is a usage
    error (``Path("")`` is ``.``, the current folder: ``-o ""`` wrote
    there)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def _parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = _Parser(prog="flowtie", description=__doc__.splitlines()[0],
                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"flowtie_fast {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error")
    overwrite = argparse.ArgumentParser(add_help=False)
    overwrite.add_argument("--overwrite", action="store_true",
                           help="replace existing output files (default: refuse to start)")
    sub = parser.add_subparsers(dest="command", required=True)
    parser.commands = sub.choices  # name -> its parser, which names stray arguments

    def command(name, **kwargs):
        kwargs.setdefault("description", kwargs.get("help"))
        return sub.add_parser(name, formatter_class=_HelpFormatter, **kwargs)

    demo = command("demo", parents=[common, overwrite],
                   help="every method on a simulated GaAs 4D-STEM triplet: a table of "
                        "phase errors and warm timings, and a figure")
    demo.add_argument("--png", type=_path,
                      help="figure to write (GaAs demo; default: flowtie_demo.png in the "
                           "system's temporary folder, replaced on each run)")
    demo.add_argument("--fresnel", action="store_true",
                      help="a Fresnel-propagated phase object instead (no abTEM needed)")
    demo.add_argument("--size", type=int, help="image size in pixels (Fresnel; default 256)")
    demo.add_argument("--pixel-size", type=float, help="Å per pixel (Fresnel; default 0.2)")
    demo.add_argument("--dz", type=float, help="defocus step in Å (Fresnel; default 20)")
    demo.add_argument("--energy", type=float,
                      help="electron energy in eV (Fresnel; default 300e3)")
    demo.set_defaults(func=_demo)

    PRECISIONS = ("float32", "tf32", "bfloat16")

    rec = command("reconstruct", parents=[common, overwrite],
                  help="reconstruct a file (triplet or 4D-STEM)")
    rec.add_argument("file", type=_path,
                     help="a .npz or .h5 file of the flowtie_fast layout (ft.save)")
    rec.add_argument("--method", default="tie", choices=METHODS, help="phase retrieval method")
    rec.add_argument("-o", "--output", type=str, required=True,
                     help=".npz or .h5 to write: phase (rad), gradient (rad/Å), residual "
                          "and the verdict (JSON: trusted, fallback, why, trust)")
    rec.add_argument("--png", type=str, help="also write a figure here (default: none)")
    rec.add_argument("--backend", default="auto", choices=("auto", "cpu", "gpu"),
                     help="where to compute (auto: the GPU where one answers)")
    rec.add_argument("--boundary", default="periodic", choices=("periodic", "mirror"),
                     help="boundary condition of the Poisson solves")
    rec.add_argument("--kernels", default="auto", choices=("auto", "numba", "numpy"),
                     help="CPU kernels: numba (fastest per call, ~0.5-0.8 s to start), numpy "
                          "(no start-up cost), auto: numpy for a triplet of images or a 4D "
                          "file up to 256 MiB; numba or numpy with --backend auto computes "
                          "on the CPU")
    rec.add_argument("--virtual", choices=VIRTUAL_IMAGES, metavar="IMAGE",
                     help="4D-STEM: virtual image the planes are made of (bf, bf-full, abf, "
                          "df, whole; default bf)")
    rec.add_argument("--model", help="flowtie: shipped model name (default, fast, seed0, "
                                     "seed2, seed3, ensemble, corpus) or a TorchScript file "
                                     "(default: default)")
    rec.add_argument("--precision", default="float32", choices=PRECISIONS,
                     help="flowtie: network arithmetic (bfloat16 ~1.9x faster on CPUs with "
                          "bfloat16 instructions)")
    rec.add_argument("--no-uncertainty", action="store_true",
                     help="flowtie: run the network alone, without the uncertainty map, the "
                          "trust check and the fallback to the classical phase (4x faster)")
    rec.add_argument("--register", choices=("on", "periodic", "off"),
                     help="undo the drift of the -dz and +dz planes against the in-focus "
                          "one: 4D-STEM from the dark field (default on), image triplets from "
                          "the images (default off: biased by the phase's own transport); "
                          "periodic for fields of whole unit cells; off)")
    rec.add_argument("--normalize", choices=("on", "off"),
                     help="4D-STEM: bring the -dz and +dz scans to the in-focus scan's beam "
                          "current, from the electrons their patterns hold (default on; off)")
    rec.add_argument("--descan", choices=("plane", "none"),
                     help="4D-STEM: remove the centre of mass's least-squares plane "
                          "(uncorrected descan; default plane), or only its mean (none)")
    rec.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                     help="working precision of the solve (default float32; float64 for "
                          "intensities beyond float32's range or the slow convergence of "
                          "tie-exact and gd)")
    rec.add_argument("--bf-radius", type=float, metavar="MRAD", dest="bf_radius",
                     help="4D-STEM: radius of the 'bf' virtual detector in mrad (default a "
                          "quarter of the measured bright-field disk)")
    rec.set_defaults(func=_reconstruct)

    sim = command("simulate", parents=[common, overwrite],
                  help="abTEM thickness series at three defoci, or a resumable sweep")
    sim.add_argument("--sweep", type=_path, metavar="CONFIG",
                     help="run the sweep of this recipe (TOML; the shipped one is "
                          "flowtie_fast/data/corpus.toml), resuming where it stopped "
                          "(default: one series, of the options below)")
    sim.add_argument("--device", default="cpu", choices=("cpu", "gpu"),
                     help="where abTEM computes (gpu: CuPy on the first CUDA device; "
                          "default cpu)")
    sim.add_argument("--limit", type=int, metavar="N",
                     help="--sweep: simulate only the first N pending series (default: all)")
    sim.add_argument("--list", action="store_true",
                     help="--sweep: print the planned series and their estimated cost "
                          "(and, with -o, which are done, pending or simulated under "
                          "another recipe) without simulating")
    sim.add_argument("--material", choices=("GaAs", "SrTiO3"),
                     help="crystal, seen along [001] (default GaAs)")
    sim.add_argument("--thickness", type=float, nargs="+",
                     help="thicknesses in Å (rounded to whole cells; default 5.65 22.6 56.5)")
    sim.add_argument("-o", "--output", type=_path,
                     help="output folder (default data; required with --sweep)")
    sim.add_argument("--energy", type=float, help="electron energy in eV (default 300e3)")
    sim.add_argument("--semiangle", type=float,
                     help="probe convergence semi-angle in mrad (default 20)")
    sim.add_argument("--dz", type=float, nargs="+", metavar="DZ",
                     help="defocus step in Å, or two: dz_minus dz_plus (default 20)")
    sim.add_argument("--tilt", type=float, nargs=2, metavar=("X", "Y"),
                     help="beam tilt (specimen mistilt) in mrad (default 0 0)")
    sim.add_argument("--scan-gpts", type=int, nargs=2, metavar=("NY", "NX"),
                     help="scan positions per axis (default: a step of about 0.2 Å, at "
                          "least 16 per unit cell)")
    sim.add_argument("--supercell", type=float, help="minimum lateral size, Å (default 12)")
    sim.add_argument("--sampling", type=float, help="potential sampling, Å (default 0.06)")
    sim.add_argument("--max-angle", type=float, help="detector extent, mrad (default 40)")
    sim.add_argument("--frozen-phonons", type=int,
                     help="frozen-phonon configurations (default 0: a static lattice)")
    sim.add_argument("--dose", type=float,
                     help="electrons per Å², drawn as Poisson noise (default: noise-free)")
    sim.add_argument("--seed", type=int,
                     help="seed of the noise and the phonon displacements (default 0)")
    sim.set_defaults(func=_simulate)

    ev = command("evaluate", parents=[common, overwrite],
                 help="every method on every case of a folder: phase errors and warm "
                      "timings against the files' ground truth")
    ev.add_argument("directory", type=_path,
                    help="folder (or file) of cases with a ground truth ('phase_gt'), e.g. "
                         "written by flowtie simulate")
    ev.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD",
                    help=f"methods to run, of {', '.join(METHODS)} (default: all of them; "
                         "flowtie where PyTorch is installed; icom and flowtie skip cases "
                         "without a measured gradient, named or not)")
    ev.add_argument("--backend", default="cpu", choices=("auto", "cpu", "gpu"),
                    help="where to compute")
    ev.add_argument("--repeats", type=int, default=3, metavar="N",
                    help="timed runs per method after a warm-up run; the best is reported")
    ev.add_argument("--virtual", choices=VIRTUAL_IMAGES, metavar="IMAGE",
                    help="4D-STEM: virtual image the planes are made of (bf, bf-full, abf, df, "
                         "whole; default bf)")
    ev.add_argument("--model", help="flowtie: shipped model name or TorchScript file "
                                    "(default: default)")
    ev.add_argument("--precision", default="float32", choices=PRECISIONS,
                    help="flowtie: network arithmetic")
    ev.add_argument("-o", "--output", type=str,
                    help="also write the table (Markdown) here (default: print it only)")
    ev.set_defaults(func=_evaluate)

    tr = command("train", parents=[common],
                 help="train the flow model on simulated cases (torch)")
    tr.add_argument("data", type=_path, nargs="+", help="files or folders with ground truth")
    tr.add_argument("-o", "--output", type=_path, default=Path("flowtie_model.pt"),
                    help="TorchScript file to write (an existing one is refused unless "
                         "--overwrite or --resume)")
    tr.add_argument("--checkpoint", type=_path, default=Path("flowtie_train.ckpt"),
                    help="checkpoint to write every 100 steps and at the end; never read "
                         "unless it is also --resume: if it exists already the run refuses to "
                         "start (pass --resume with it to continue that run, another "
                         "--checkpoint path, or --overwrite)")
    tr.add_argument("--resume", type=_path, metavar="PATH",
                    help="continue the run saved in this checkpoint (may be the --checkpoint "
                         "path); it must have the same settings but --steps and --restarts, "
                         "and fewer steps than --steps. Read as tensors only: no code in it "
                         "runs (default: a new run)")
    tr.add_argument("--overwrite", action="store_true",
                    help="replace an existing --checkpoint file and -o model instead of "
                         "refusing to start")
    tr.add_argument("--steps", type=int, default=2000, help="optimiser steps in all")
    tr.add_argument("--batch", type=int, default=8,
                    help="augmented copies of one case per step")
    tr.add_argument("--lr", type=float, default=2e-3, help="learning rate of Adam")
    tr.add_argument("--width", type=int, default=24,
                    help="channels of the network's first level")
    tr.add_argument("--depth", type=int, default=3, help="levels of the network")
    tr.add_argument("--channels", type=int, nargs="+",
                    help="channels of each level (overrides --width and --depth; default: "
                         "from them)")
    tr.add_argument("--stride", type=int, default=1,
                    help="pixel-unshuffle factor of the first level (2: ~4x faster)")
    tr.add_argument("--weights", type=float, nargs=3, default=[1.0, 0.0, 1.0],
                    metavar=("FLOW", "CONTINUITY", "PHASE"),
                    help="weights of the loss terms: flow, continuity, phase")
    tr.add_argument("--dose", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="counts per pixel range of noise drawn on the planes (image "
                         "triplets; default: noise-free)")
    tr.add_argument("--doses", type=float, nargs="+",
                    help="e/Å²: a noisy copy of each 4D-STEM case per dose (Poisson counts "
                         "on the patterns, then the reduction), beside the noise-free one "
                         "(default: none)")
    tr.add_argument("--seed", type=int, default=0,
                    help="seed of the initialisation, the sampling and the augmentation")
    tr.add_argument("--restarts", type=int, default=3,
                    help="rollbacks (learning rate halved) after a collapse to a zero flow or "
                         "a non-finite loss, before giving up (0: give up at once)")
    tr.add_argument("--teacher",
                    help="distil from this flow model (a shipped name: default, fast, seed0, "
                         "seed2, seed3, ensemble; or a file; default: none)")
    tr.add_argument("--distill", type=float, default=0.0,
                    help="fraction of the teacher's flow in the flow term's target (0..1)")
    tr.set_defaults(func=_train)

    return parser


def _exit_code(exc) -> int:
    """2 for bad usage or input (InputError and other ValueErrors), 1 for the
    environment (no GPU, files, memory) and anything unexpected."""
    if isinstance(exc, ValueError) and not isinstance(exc, BackendError):
        return 2
    return 1


#: The library's arguments that the command line sets by an option: its
#: messages name the option instead ("dtype='float64'" -> "--dtype float64").
_OPTIONS = {"dtype": "--dtype", "bf_radius": "--bf-radius", "backend": "--backend",
            "method": "--method", "register": "--register", "virtual": "--virtual",
            "descan": "--descan", "normalize": "--normalize", "boundary": "--boundary"}
_ON_OFF = {"True": "on", "False": "off"}
# not within a word, a path or quotes (a file named 'virtual=bf.npz' stays)
_ARGUMENT = re.compile(r"(?<![\w/'\".\-])(" + "|".join(_OPTIONS) + r")=('?)([\w.+\-]+)\2")
#: The options of the command running (set by :func:`main`): only those are named.
_COMMAND_OPTIONS: set = set()


def _as_options(text: str, options=None) -> str:
    """A library message as the command line's: an argument that the running
    command sets by an option (``options``, default the running command's),
    ``name=value``, becomes ``--option value``; API-only phrases become what
    a file holds."""
    options = _COMMAND_OPTIONS if options is None else options
    text = text.replace("(FocalTriplet.from_4dstem, or gradient=)",
                        "(a 4D-STEM file, or a triplet file with its 'gradient')")

    def option(m):
        flag = _OPTIONS[m.group(1)]
        if flag not in options:
            return m.group(0)
        return f"{flag} {_ON_OFF.get(m.group(3), m.group(3))}"
    return _ARGUMENT.sub(option, text)


def _printable(text: str) -> str:
    """``text`` on one line with control characters (a terminal's escape
    sequences, carriage returns) and undecodable bytes of file names (lone
    surrogates) shown as escapes, not sent to the terminal; the library's
    arguments named as the command line's options (:func:`_as_options`)."""
    return one_line(_as_options(" ".join(str(text).split())))


def _describe(exc) -> str:
    """One line for an exception: the message of a bad input (ours are
    ValueErrors) or of the environment ("[Errno 28] No space left on device:
    'path'"); the kind for anything else. Printable: see :func:`_printable`."""
    return _printable(_description(exc))


def _description(exc) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, _StdoutError):
        return exc.strerror
    if isinstance(exc, (ValueError, OSError)):
        return text
    if out_of_memory(exc):
        return f"out of memory ({text}); try a smaller input or another machine"
    return f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
