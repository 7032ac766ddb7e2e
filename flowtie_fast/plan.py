"""Plans for acquisition software: one shape, method and backend, prepared once.

A :class:`Plan` owns a :class:`~flowtie_fast.solvers.TIESolver` (FFT plans,
kernels, work buffers) and the focal weights of one defocus step. After its
warm-up call, ``plan.solve(minus, zero, plus, out=phase)`` allocates no image
arrays for ``tie-uniform``, ``tie``, ``tie-exact``, ``gd`` and ``icom`` (the
allocation tracker, which sees NumPy's buffers, sees a few KB of Python
objects a call: less than a quarter of one 64² float32 image, tested),
compiles nothing and plans nothing, where the planes' noise is unknown (float
planes without ``noise=``). With a known noise (integer planes are Poisson
counts, or ``noise=``) the filter of the focal derivative works on float64
copies: a few images a call. ``flowtie`` runs its network through PyTorch,
whose activations PyTorch allocates.

First-call costs are measured separately in :attr:`Plan.timings` (seconds):

- ``backend``: the backend object (imports; on the GPU the NVRTC compilation
  of the CUDA kernels, once per process);
- ``setup``: FFT plans (FFTW_MEASURE on the CPU, cuFFT on the GPU) and work
  buffers;
- ``first_solve``: the warm-up solve, which loads or compiles the Numba
  kernels (compiled once per machine, then loaded from Numba's disk cache)
  and loads the flow model;
- ``solve``: the second, steady call.

FFTW's plans can be kept between runs in a wisdom file
(:func:`~flowtie_fast.fft.save_wisdom`, ``Plan(..., wisdom=path)``).

A measured gradient is checked for curl (a detector rotation or flip given
wrong, swapped components: :func:`~flowtie_fast.trust.gradient_orientation`)
and, where it has none and the planes are bright-field images, for its sign
against the TIE gradient of the planes given with it (half a turn, or a
gradient negated: :func:`~flowtie_fast.trust.sign_check`) once, on the
first one given whose signal can tell (``testable``; each of the first
:data:`ORIENTATION_CHECKS` given, then one in that many): the orientation
belongs to the set-up, not to a frame, and the check costs more than an
``icom`` solve. ``plan.gradient_orientation`` keeps it; where it is suspect a
:class:`~flowtie_fast.errors.TrustWarning` says so, every ``icom`` solve's
``plan.info["trust"]`` repeats it, and ``flowtie`` does not fall back to it.

Thread model: a plan serialises its own calls with a lock (it owns buffers),
so one plan shared by many threads is safe but runs one solve at a time
(``plan.info`` is kept per thread: each reads its own latest solve's);
for parallel solves give each thread its own plan (tested: 8 threads with a
plan each give results identical to one thread). On the CPU the Numba kernels
then run concurrently, which needs a thread-safe Numba threading layer (omp
or tbb): the CPU backend asks Numba for one unless NUMBA_THREADING_LAYER is set.

Examples
--------
>>> plan = Plan((128, 128), pixel_size=0.2, dz=20.0, energy=300e3, method="tie")
>>> phase = np.empty((128, 128), np.float32)
>>> for minus, zero, plus in frames:
...     plan.solve(minus, zero, plus, out=phase)
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import replace

import numpy as np

from .backend import array_module, get_backend, is_cupy
from .errors import (InputError, TrustWarning, check_choice, check_positive, first_line,
                     user_stacklevel)
from .fft import load_wisdom, save_wisdom
from .noise import COUNTS, check_noise, counts_check, gradient_noise_warning, poisson_noise
from .physics import wavenumber
from .solvers import (ImplausibleResult, SolveOptions, TIESolver, check_options,
                      check_regularisation, check_verdict_records, image_verdict,
                      lead_trust)
from .planes import check_not_masked, focal_weights
from .triplet import planes_checks
from .stem.detector import VIRTUAL_IMAGES, image_saturation
from .trust import (SIGNED_IMAGES, checked_orientation,
                    plain_tie_gradient, scale_warning, suspicion)

__all__ = ["Plan", "triplet_records"]

#: How many measured gradients a plan checks for curl while none has had the
#: signal to tell; after them, one in this many (a run of noise alone is not
#: checked at every frame, and the first telling frame after it is checked
#: within this many).
ORIENTATION_CHECKS = 64
#: Seconds after which a telling check is made again, on the next gradient
#: given (a calibration changed in the middle of a run: the scale, the
#: detector rotation). A check costs 4 to 15 times a 256² solve (15-24 ms on
#: two CPU cores), once in this many seconds of solves.
ORIENTATION_RECHECK_S = 30.0

_INPUT_NAMES = ("minus", "zero", "plus", "gradient", "out")


def _brief(value) -> str:
    """A value for a message: its repr, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_records(registration, orientation, saturation=None, plane_defects=None,
                   gradient_noise=None):
    """The records of :meth:`Plan.solve` checked, where given (each a dict of
    a triplet, a few dict lookups: checked at every call, outside the
    solve): ``registration`` (or None), why the ``orientation`` verdict
    found the gradient misoriented and why it found the gradient and the
    planes disagree in scale (each or None), ``saturation`` and
    ``plane_defects`` (or None); :class:`InputError` naming the argument
    otherwise. The fields checked are those the verdict reads."""
    if registration is not None and not (
            isinstance(registration, dict)
            and isinstance(registration.get("reliable"), (bool, np.bool_))):
        raise InputError(f"registration: expected a registration record (a triplet's "
                         f"registration: a dict whose 'reliable' is True or False) or None, "
                         f"got {_brief(registration)}")
    check_verdict_records(saturation, plane_defects)
    check_noise(gradient_noise, 2, "gradient_noise", "component")
    if orientation is None:
        return registration, None, None
    if not (isinstance(orientation, dict)
            and isinstance(orientation.get("suspect"), (bool, np.bool_))
            and (not orientation["suspect"] or isinstance(orientation.get("why"), str))):
        raise InputError(f"orientation: expected an orientation verdict (a triplet's "
                         f"gradient_orientation: a dict whose 'suspect' is True or False, "
                         f"with its 'why' where True) or None, got {_brief(orientation)}")
    try:  # its scale verdict, read as reconstruct reads the triplet's
        scale = scale_warning(orientation)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"orientation: a scale verdict ('misscaled') needs its 'tie_scale' "
                         f"(low, high) and 'tie_correlation' as a triplet's check gives them, "
                         f"got {_brief(orientation)}") from exc
    return registration, suspicion(orientation), scale


#: What a verdict against the planes' TIE phase adds: the plan's planes may
#: be other than the bright-field images it takes them for.
_NOT_BRIGHT_FIELD = ("; if the planes are not bright-field images, name them: "
                     "Plan(..., virtual='abf'), 'df', ...")

#: The records :meth:`Plan.solve` takes beside the arrays.
_RECORD_KEYS = ("registration", "orientation", "saturation", "plane_defects", "gradient_noise")


def triplet_records(triplet) -> dict:
    """The records a triplet keeps beside its arrays, as :meth:`Plan.solve`
    takes them (``registration``, ``orientation``, ``saturation``,
    ``plane_defects``, ``gradient_noise``; None where the triplet has none):
    with them a plan
    gives the verdict :func:`~flowtie_fast.solvers.reconstruct` gives the
    triplet (``plan.solve(*t.planes, gradient=t.gradient,
    **triplet_records(t))``).

    Parameters
    ----------
    triplet : FocalTriplet
        The triplet (e.g. from ``FocalTriplet.from_4dstem``).

    Returns
    -------
    dict
        The keyword arguments of :meth:`Plan.solve` for its records.
    """
    return {"registration": getattr(triplet, "registration", None),
            "orientation": getattr(triplet, "gradient_orientation", None),
            "saturation": getattr(triplet, "saturation", None),
            "plane_defects": getattr(triplet, "plane_defects", None),
            "gradient_noise": getattr(triplet, "gradient_noise", None)}


class Plan:
    """A prepared solve of one image shape, defocus step, method and backend.

    Parameters
    ----------
    shape : (int, int)
        Image shape (Ny, Nx).
    pixel_size : float or (float, float)
        Sampling along (axis 0, axis 1) in Å.
    dz : float or (float, float)
        Defocus step in Å: the planes are at ``-dz, 0, +dz`` (docs/conventions.md);
        a pair ``(dz_minus, dz_plus)`` for uneven spacing (as a triplet's or a
        loaded file's ``dz``). Kept as ``plan.dz``: one number where the two
        are equal.
    energy : float
        Electron energy in eV.
    method : str
        One of :data:`~flowtie_fast.solvers.METHODS` (default "tie").
    backend : {"auto", "cpu", "gpu"} or Backend
        Where to compute (default "auto": the GPU where one answers).
    threads : int, optional
        CPU threads of this plan.
    dtype : {"float32", "float64"}
        Working precision (default "float32").
    boundary : {"periodic", "mirror"}
        Boundary condition of the Poisson solves (default "periodic").
    scheme : {"auto", "spectral", "fd"}
        Discretisation (default "auto").
    alpha : float or "auto"
        Tikhonov parameter in Å⁻⁴ (default 0).
    floor : float or "auto"
        Intensity floor as a fraction of the mean in-focus intensity (default
        "auto").
    denoise : bool
        Filter the focal derivative by the noise (default True). These six
        are as in :class:`~flowtie_fast.solvers.TIESolver`.
    model : path, "default", "fast", "ensemble", FlowModel or FlowEnsemble, optional
        The flow model of ``flowtie``: a TorchScript file or a shipped model
        (default "default"; "fast" takes about half the time, less accurate).
    uncertainty : bool, optional
        ``flowtie``: the trust check, the fallback to the classical phase and
        the uncertainty map (``uncertainty_out``) at every solve (default
        True; four network passes: ``False`` runs the network alone).
        ``plan.info`` holds the latest solve's verdict (the latest of the
        calling thread: each thread sees its own).
    tol : float, optional
        Relative residual at which ``tie-exact`` and ``gd`` stop (default: as
        in :meth:`~flowtie_fast.solvers.TIESolver.solve`).
    max_iter : int, optional
        Most iterations of ``tie-exact`` and ``gd`` (default 100 and 200).
    preconditioner : {"biharmonic", "none"}
        Descent direction of ``gd`` (default "biharmonic").
    warmup : bool
        Solve a synthetic triplet once now, so that the first real call pays
        no compilation (default True).
    wisdom : path, optional
        FFTW wisdom file (CPU): read before planning when it exists, written
        after.
    cuda_graphs : bool
        GPU ``flowtie``: the flow network's forward pass (its inputs, the
        network and the output scaling) is captured as a CUDA graph per input
        shape at the warm-up and replayed at every solve (default True;
        False launches it eagerly). The classical kernels and FFTs of a solve
        are launched call by call, not captured. No effect on the CPU.
    virtual : {"bf", "bf-full", "abf", "df", "whole"}
        The 4D-STEM virtual image the planes are (default "bf", the images
        the TIE and the shipped flow models read). On any other, as for a
        triplet of those images: the sign of a measured gradient is not
        checked against the planes' TIE phase (their contrast does not
        follow it), the TIE methods and the shipped network alone
        (``flowtie``, ``uncertainty=False``) say their phase is not the
        specimen's (a :class:`~flowtie_fast.errors.TrustWarning` here, and
        ``plan.info["trust"]`` at each solve) and ``flowtie`` with its trust
        check does not trust the shipped models (a warning at each solve,
        as for any flow it does not trust).
    """

    def __init__(self, shape, pixel_size, dz, energy, method="tie", *, backend="auto",
                 threads=None, dtype="float32", boundary="periodic", scheme="auto", alpha=0.0,
                 floor="auto", denoise=True, model=None, uncertainty=None, tol=None,
                 max_iter=None, preconditioner="biharmonic", warmup=True, wisdom=None,
                 cuda_graphs=True, virtual="bf"):
        check_options(method, tol, max_iter, preconditioner, model, uncertainty)
        self.virtual = check_choice("virtual", virtual, VIRTUAL_IMAGES)
        check_regularisation(method, alpha, floor)
        for name, flag in (("warmup", warmup), ("cuda_graphs", cuda_graphs)):
            if not isinstance(flag, (bool, np.bool_)):
                raise InputError(f"{name}: expected True or False, got {flag!r}")
        dz_minus, dz_plus = check_positive("dz", dz, pair=True)
        self.dz = dz_minus if dz_minus == dz_plus else (dz_minus, dz_plus)
        self._dz = (dz_minus, dz_plus)
        self.energy = check_positive("energy", energy)
        self.method = method
        start = time.perf_counter()
        backend = get_backend(backend, threads)
        self.timings = {"backend": time.perf_counter() - start}
        start = time.perf_counter()
        if wisdom is not None:
            load_wisdom(wisdom)
        self.solver = TIESolver(shape, pixel_size, boundary=boundary, scheme=scheme,
                                alpha=alpha, floor=floor, denoise=denoise, dtype=dtype,
                                backend=backend,
                                threads=threads)
        if wisdom is not None and not self.solver.backend.is_gpu:
            save_wisdom(wisdom)
        self.backend = self.solver.backend
        self.shape, self.dtype = self.solver.shape, self.solver.dtype
        self.pixel_size = self.solver.pixel_size
        self.wavenumber = wavenumber(self.energy)
        self._intensity_weights, self._derivative_weights = focal_weights(
            (-dz_minus, 0.0, dz_plus))
        # Planes reach the plan unvalidated: the derivative step checks them.
        self.options = SolveOptions(tol=tol, max_iter=max_iter, preconditioner=preconditioner,
                                    model=model, residual=False, names=_INPUT_NAMES[:3],
                                    uncertainty=method == "flowtie" and uncertainty is not False,
                                    cuda_graphs=bool(cuda_graphs), planes_image=self.virtual)
        self._local = threading.local()  # plan.info: each thread's latest solve
        # a thread sharing the plan waits for a check under way, not reading it half done
        self._orientation_lock = threading.Lock()
        self.info = {}
        # the checks of earlier solves, each kept with time.monotonic() of it,
        # its verdict and what it saw of the planes: the curl check of the
        # first telling gradient, the counts check (the dtype and a sparse
        # mean of the in-focus plane), the focal derivative's checks (the
        # dtype, the focal contrast, whether a noise was given)
        self.reset_orientation()
        self.timings["setup"] = time.perf_counter() - start
        why = image_verdict(method, self.virtual, model, not self.options.uncertainty)
        if why is not None:  # once here; each solve's plan.info["trust"] repeats it
            warnings.warn(f"{method}: {why}; give a plan the 'bf' images, or method='icom'",
                          TrustWarning, stacklevel=user_stacklevel())
        if warmup:
            self._warm_up()

    @property
    def info(self) -> dict:
        """The information of the calling thread's latest solve (for
        ``flowtie``: the trust verdict and any fallback; where a measured
        gradient's orientation looks wrong, ``trust``): a thread sharing the
        plan reads its own solve's, not another thread's."""
        return getattr(self._local, "info", {})

    @info.setter
    def info(self, value: dict):
        self._local.info = value

    def reset_orientation(self):
        """Forget the checks made on earlier solves: the curl check of the
        measured gradients and of their noise, and the counts and
        focal-derivative checks of the planes; the next solve checks them
        again (another specimen, detector or set-up)."""
        with self._orientation_lock:
            self.gradient_orientation = None
            self._untelling = 0  # gradients given since, none of them telling
            self._checked_at = -math.inf  # time.monotonic() of the last check
            self._counts = (-math.inf, None, None)
            self._transport = (-math.inf, (None, None), None)
            self._gradient_noise = (-math.inf, None, None)

    def __repr__(self) -> str:
        return (f"Plan(shape={self.shape}, method={self.method!r}, dz={self.dz} Å, "
                f"backend={self.backend!r})")

    def _warm_up(self):
        """Two solves of a smooth synthetic triplet: the first pays for
        compilation and model loading, the second is the steady cost."""
        xp = self.backend.xp
        y, x = np.meshgrid(*(np.arange(n) / n for n in self.shape), indexing="ij")
        bump = 1.0 + 0.05 * np.cos(2 * np.pi * y) * np.cos(2 * np.pi * x)
        planes = [xp.asarray((bump * (1 + 0.01 * s)).astype(self.dtype)) for s in (-1, 0, 1)]
        gradient = xp.zeros((2,) + self.shape, self.dtype)
        out = self.backend.empty(self.shape, self.dtype)
        with warnings.catch_warnings():  # a verdict on synthetic planes says nothing
            warnings.simplefilter("ignore")
            for key in ("first_solve", "solve"):
                start = time.perf_counter()
                try:
                    self.solve(*planes, gradient=gradient, out=out)
                except ImplausibleResult:  # the synthetic planes' scale, refused after the
                    pass                   # solve ran: real planes are checked at theirs
                self.timings[key] = time.perf_counter() - start
        self.info = {}
        self.reset_orientation()  # the synthetic planes say nothing of the set-up

    # ------------------------------------------------------------------ checks

    @staticmethod
    def _batch_saturation(stack):
        """The full-scale check of :meth:`solve` over the items of an integer
        ``stack`` (each saturated one warns): the text that names them, or
        None."""
        if np.dtype(stack.dtype).kind not in "iu":
            return None
        found = [(i, record["why"]) for i in range(len(stack))
                 for record in [image_saturation(_INPUT_NAMES[:3], list(stack[i]))]
                 if record["saturated"]]
        if not found:
            return None
        items = ", ".join(f"stack[{i}]" for i, _ in found)
        return (f"the detector saturated in {items} (of {len(stack)}): {found[0][1]}")

    def _orientation(self, gradient, planes, aligned=True):
        """Check a measured gradient given with ``planes`` while no telling one
        was (every one at first, then one in :data:`ORIENTATION_CHECKS`: a run
        of noise), and again once :data:`ORIENTATION_RECHECK_S` have passed
        since the last check; the warning of a suspect orientation and that of a scale
        disagreement (:meth:`_misscaled`), each or None, of one check read
        under the lock (another thread's reset or check does not mix in). Its
        sign is compared with the planes' TIE phase only where they are
        ``aligned`` (no registration record, or a reliable one)."""
        if gradient is None:
            return None, None
        with self._orientation_lock:
            if not (self.gradient_orientation or {}).get("testable"):
                self._untelling += 1
                if (self._untelling <= ORIENTATION_CHECKS
                        or self._untelling % ORIENTATION_CHECKS == 0):
                    self._check_orientation(gradient, planes, aligned)
            elif time.monotonic() - self._checked_at >= ORIENTATION_RECHECK_S:
                self._check_orientation(gradient, planes, aligned, again=True)  # still so?
            check = self.gradient_orientation or {}
        return check["why"] if check.get("suspect") else None, self._misscaled(check)

    def _check_orientation(self, gradient, planes, aligned=True, again=False):
        """The curl check of a measured gradient and, where it passes and the
        planes are ``aligned``, its sign against the TIE gradient of the
        planes given with it (planes or a gradient the solve will refuse are
        left for it to refuse: no verdict). ``again``: a telling check made
        anew, which an untelling one (a frame of noise) does not replace."""
        try:  # as the solve checks them (finite, ...): a call it refuses leaves no verdict
            # screened as the solve screens them (icom's are read here alone): planes
            # with a dropped row or block tell nothing of the gradient
            self.solver.validate_planes(planes, self._intensity_weights, _INPUT_NAMES[:3])
            self.solver._check_gradient(gradient, self.wavenumber)
        except InputError:
            return
        # the half turn against the TIE phase, whose sign only bright-field images follow
        tie = None if self.virtual not in SIGNED_IMAGES or not aligned else \
            lambda: plain_tie_gradient(planes, self._derivative_weights,
                                       self._intensity_weights, self.wavenumber,
                                       self.pixel_size)
        check = checked_orientation(gradient, self.pixel_size, tie, testable_only=True)
        self._checked_at = time.monotonic()
        if again and not check.get("testable"):
            return
        if check.get("misorientation") == 180.0:  # suspect by the comparison with the TIE
            check["why"] += _NOT_BRIGHT_FIELD
        self.gradient_orientation = check  # whole: another thread reads it as it is
        for why in (check["why"] if check["suspect"] else None, self._misscaled(check)):
            if why:
                warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())

    @staticmethod
    def _misscaled(check):
        """Where a check's measured gradient and the planes' TIE gradient
        disagree in scale (:func:`~flowtie_fast.trust.scale_warning`), why;
        else None."""
        why = scale_warning(check)
        return None if why is None else why + _NOT_BRIGHT_FIELD

    def _image(self, name, a, shape):
        """``a`` checked as an input of ``shape``: an array of this plan's
        backend, returned as the array the solve reads. An object that is not
        a NumPy array but converts to one (``__array__``: a memory map, a
        matrix, an xarray-like wrapper) is converted here, once, and the
        result is what is checked and solved: its own ``shape`` and ``dtype``
        attributes are not trusted (the kernels index the planes by the
        plan's shape)."""
        check_not_masked(name, a)
        if is_cupy(a) != self.backend.is_gpu:
            where = "CuPy" if self.backend.is_gpu else "NumPy"
            raise InputError(f"{name}: expected a {where} array for this {self.backend.name} "
                             f"plan, got {type(a).__name__}")
        if type(a) is not np.ndarray and not self.backend.is_gpu:
            if not (isinstance(a, np.ndarray) or hasattr(a, "__array__")
                    or hasattr(a, "__array_interface__")):
                raise InputError(f"{name}: expected a NumPy array for this cpu plan, got "
                                 f"{type(a).__name__}")
            try:
                a = np.asarray(a)
            except Exception as exc:  # noqa: BLE001  any failure of a foreign __array__
                raise InputError(f"{name}: could not be read as an array "
                                 f"({first_line(exc)})") from exc
        if not hasattr(a, "dtype") or a.dtype.kind not in "uif":
            raise InputError(f"{name}: expected a real array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)}")
        if tuple(a.shape) != tuple(shape):
            raise InputError(f"{name}: expected shape {tuple(shape)}, got {tuple(a.shape)}")
        return a

    def _output(self, name, a, shape, inputs=(), input_names=()):
        if a is None:
            return self.backend.empty(shape, self.dtype)
        return self.backend.check_output(name, a, shape, self.dtype, inputs, input_names)

    # ------------------------------------------------------------------ solves

    def solve(self, minus, zero, plus, *, gradient=None, out=None, gradient_out=None,
              noise=None, uncertainty_out=None, registration=None, orientation=None,
              saturation=None, plane_defects=None, gradient_noise=None):
        """The phase (rad, mean zero) of one triplet.

        Parameters
        ----------
        minus, zero, plus : arrays (Ny, Nx)
            Intensities at ``-dz, 0, +dz`` on this plan's backend (any real
            dtype; the working dtype avoids a conversion).
        gradient : array (2, Ny, Nx), optional
            Measured phase gradient in rad/Å (4D-STEM centre of mass ``2π COM``);
            required by ``icom`` and by flow models that read it.
        out : array (Ny, Nx), optional
            Caller-owned phase output (C-contiguous, working dtype).
        gradient_out : array (2, Ny, Nx), optional
            Caller-owned phase-gradient output (rad/Å); without it the
            gradient is not computed (for ``tie``, 3 of its 8 transforms).
        noise : Noise, float or sequence of float, optional
            White-noise variance of the planes (intensity²) for ``alpha`` and
            ``floor`` "auto"; default: Poisson statistics where the planes
            are counts (an integer dtype), otherwise none
            (:mod:`flowtie_fast.noise`).
        uncertainty_out : array (Ny, Nx), optional
            ``flowtie`` with ``uncertainty``: filled with the phase's standard
            deviation (rad) where the flow is trusted. Where no map exists
            (the classical phase returned instead, ``plan.info["fallback"]``,
            or a single model of your own) every pixel is set to
            :data:`~flowtie_fast.trust.NO_UNCERTAINTY` (-1, no standard
            deviation) and ``plan.info["uncertainty"]`` says why: never the
            previous solve's map.
        registration : dict, optional
            The record of the planes' registration (a triplet's
            ``registration``; a dict whose ``"reliable"`` is True or False):
            where it says the drift between the scans could not be measured,
            the TIE methods say so and ``flowtie`` does not trust its flow, as
            :func:`~flowtie_fast.solvers.reconstruct` does for the triplet.
            Default None: the planes are taken as registered.
        orientation : dict, optional
            The verdict of a check of ``gradient``'s orientation made where
            more was known than this plan sees (a triplet's
            ``gradient_orientation``: its ``"suspect"`` True or False and its
            ``"why"``; e.g. the sign of a ``"df"`` triplet's centre of mass
            checked against bright-field images): where it found the gradient
            misoriented, the solve reads it so, before the plan's own check.
        saturation : dict, optional
            The pile-up check of the 4D-STEM patterns the planes were made
            from (a triplet's ``saturation``: its ``"saturated"`` True or
            False and its ``"why"``): where it says the detector saturated,
            ``plan.info["trust"]`` starts with it for every method and
            ``flowtie``'s ``plan.info["trusted"]`` is False (its phase is
            returned: no other phase is a fallback), as
            :func:`~flowtie_fast.solvers.reconstruct` does for the triplet.
            Without it, planes of an integer dtype are checked for pixels at
            their full scale as a triplet checks them
            (:func:`~flowtie_fast.stem.detector.image_saturation`: one
            maximum per plane, a :class:`TrustWarning` and the same verdict
            where more than 4 pixels of a plane read it).
        plane_defects : dict, optional
            The isolated pixels replaced in the planes before they were given
            (a triplet's ``plane_defects``: ``"pixels"`` per plane,
            ``"repaired"``, ``"why"``): reported as
            ``plan.info["plane_defects"]``, and its ``"why"`` as
            ``plan.info["trust"]`` where nothing else is, as ``reconstruct``
            reports them (the planes given, repaired, no longer show them).
            ``flowtie_fast.plan.triplet_records(t)`` gives a triplet's five
            records as these arguments. A malformed record raises :class:`InputError` naming
            its argument before anything is written.
        gradient_noise : Noise, float or (float, float), optional
            White-noise variance of ``gradient``'s components, (rad/Å)² (a
            triplet's ``gradient_noise``): ``icom`` filters the gradient by
            it, as :func:`~flowtie_fast.solvers.reconstruct` does for the
            triplet. Default None: unfiltered; then the plan estimates the
            noise from the gradient's own pixel scatter (on the first
            gradients, every 30 s and where their scale changes) and, where
            that noise would carry more than :data:`~flowtie_fast.noise.GRADIENT_NOISE_LIMIT` of
            the ``icom`` phase's power, says so (a :class:`TrustWarning` and
            ``plan.info["trust"]``, of ``icom`` and of ``flowtie`` where it
            returned the ``icom`` phase).

        Returns
        -------
        out
            The phase. Non-finite input raises :class:`InputError` before
            ``out`` is written (and ``plan.info`` is then empty: never the
            verdict of an earlier solve), as does a row, column or block of
            one plane that is exactly zero where another holds signal;
            isolated pixels of one plane far from their neighbours are
            replaced by their neighbours' median in a copy, with a
            :class:`~flowtie_fast.errors.TrustWarning` and
            ``plan.info["plane_defects"]``
            (:func:`~flowtie_fast.planes.screen_planes`).
        """
        self.info = {}
        planes = [self._image(n, a, self.shape)
                  for n, a in (("minus", minus), ("zero", zero), ("plus", plus))]
        noise = check_noise(noise, 3)
        not_counts = None
        if noise is None and all(p.dtype.kind in "iu" for p in planes):
            noise = COUNTS
            if self.method != "icom":  # icom's phase does not read the planes' noise
                not_counts = self._counts_check(planes)
        if gradient is not None:
            gradient = self._image("gradient", gradient, (2,) + self.shape)
        if self.method == "icom" and gradient is None:
            raise InputError("gradient: method 'icom' needs the measured phase gradient")
        inputs = (*planes, gradient, out)
        out = self._output("out", out, self.shape, inputs[:4], _INPUT_NAMES)
        # Without gradient_out the gradient is not computed (3 of the 8 FFTs of tie).
        grad = self._output("gradient_out", gradient_out, (2,) + self.shape, inputs,
                            _INPUT_NAMES) if gradient_out is not None else None
        if uncertainty_out is not None:
            if not self.options.uncertainty:
                raise InputError("uncertainty_out: needs a flowtie plan with uncertainty")
            self._output("uncertainty_out", uncertainty_out, self.shape,
                         (*inputs, gradient_out), (*_INPUT_NAMES, "gradient_out"))
        if gradient_noise is not None and gradient is None:
            raise InputError("gradient_noise: given without a gradient (the noise of a "
                             "measured gradient: give gradient= too, or leave it None)")
        gradient_noise = check_noise(gradient_noise, 2, "gradient_noise", "component")
        registration, given, given_scale = _check_records(registration, orientation,
                                                          saturation, plane_defects)
        if saturation is None:  # integer planes at their full scale: a camera's clip
            saturation = image_saturation(_INPUT_NAMES[:3], planes)
        changes = {} if noise is None else {"noise": noise}
        # after every refusal of the arguments; the sign against the TIE phase
        # only of planes not known to be misaligned
        own, own_scale = self._orientation(
            gradient, planes, registration is None or bool(registration.get("reliable")))
        suspect = given or own  # the verdict given first
        if suspect:
            changes["gradient_suspect"] = suspect
        # the scale verdict given (a triplet's, as reconstruct reads it) first
        misscaled = None if gradient is None else given_scale or own_scale
        if misscaled:
            changes["gradient_misscaled"] = misscaled
        for key, record in (("registration", registration), ("saturation", saturation),
                            ("plane_defects", plane_defects)):
            if record is not None:
                changes[key] = record
        if gradient_noise is not None:
            changes["gradient_noise"] = gradient_noise
        options = replace(self.options, **changes) if changes else self.options
        self.info = self.solver.solve_planes(
            planes, self._derivative_weights, self._intensity_weights, self.wavenumber,
            self.method, gradient=gradient, out=out, gradient_out=grad,
            uncertainty_out=uncertainty_out, options=options)
        if not_counts is not None:
            self.info.setdefault("trust", not_counts)
        filtered = gradient_noise is not None and self.solver.denoise
        if gradient is not None and not filtered and not suspect and (
                self.method == "icom" or self.info.get("fallback") == "icom"):
            why = self._gradient_noise_check(gradient)
            if why is not None:
                self.info.setdefault("trust", why)
        if self.method not in ("icom", "flowtie"):  # the phase of the focal derivative
            noise_check, defocus_check = self._transport_checks(planes, noise)
            if noise_check is not None:
                lead_trust(self.info, noise_check)  # planes of noise alone: the cause
            if defocus_check is not None:
                self.info.setdefault("trust", defocus_check)
        return out

    @staticmethod
    def _seen(zero, *more):
        """What a check of the planes remembers of them: the in-focus plane's
        dtype, a sparse mean, and ``more``."""
        return (zero.dtype, float(zero[::8, ::8].mean()), *more)

    @staticmethod
    def _contrast(planes) -> float:
        """The outer planes' RMS difference over the in-focus plane's mean, on
        every 8th pixel of every 8th row: what tells a frame of a specimen
        from a blank one, whatever the exposure."""
        minus, zero, plus = (p[::8, ::8] for p in planes)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            diff = plus.astype(np.float64) - minus
            return float(np.sqrt(np.mean(diff * diff)) / abs(zero.mean(dtype=np.float64)))

    @staticmethod
    def _same(before, seen) -> bool:
        """Whether planes ``seen`` are of the dtype and scale (within a factor
        1.25 either way) of those ``before``, and alike in what else was
        seen."""
        if before is None or before[0] != seen[0] or before[2:] != seen[2:]:
            return False
        a, b = before[1], seen[1]
        return (a >= 0) == (b >= 0) and 0.8 * abs(a) <= abs(b) <= 1.25 * abs(a)

    def _recalled(self, slot, seen, check, *args):
        """The verdict of a check of earlier solves, kept in attribute
        ``slot`` as ``(time.monotonic() of it, verdict, what it saw)``: made
        anew by ``check(*args)`` (returns the verdict, warns what it finds;
        no closure is made at each solve) on the first solve, once :data:`ORIENTATION_RECHECK_S` have
        passed, and at once where ``seen`` differs from what the last check
        saw (:meth:`_same`); a thread sharing the plan waits for a check
        under way."""
        with self._orientation_lock:
            at, verdict, before = getattr(self, slot)
            if self._same(before, seen) and time.monotonic() - at < ORIENTATION_RECHECK_S:
                return verdict
            verdict = check(*args)
            setattr(self, slot, (time.monotonic(), verdict, seen))
            return verdict

    def _transport_checks(self, planes, noise):
        """The triplet's checks of the focal derivative
        (:func:`~flowtie_fast.triplet.planes_checks`: planes of unknown noise
        that hold nothing above it, defocus steps too large for the TIE),
        made on the first planes, again once :data:`ORIENTATION_RECHECK_S`
        have passed (a check costs a few solves), and at once where the
        planes' dtype or focal contrast changed (a sparse sample's RMS
        difference of the outer planes over the in-focus mean, beyond a
        factor 1.25 either way: a blank frame after a specimen, or the
        reverse; an exposure alone does not change it), or a noise is given
        after none (or none after one): ``(noise_check, defocus_check)``,
        each why or None, warned when found. ``noise`` is the solve's (None:
        unknown; :data:`~flowtie_fast.noise.COUNTS`: the Poisson noise of the
        planes' means)."""
        if self.backend.is_gpu:  # planes_checks reads host planes only: no pass to pay
            return None, None
        return self._recalled("_transport",
                              (planes[1].dtype, self._contrast(planes), noise is None),
                              self._transport_verdict, planes, noise)

    def _transport_verdict(self, planes, noise):
        """:meth:`_transport_checks` made anew."""
        if noise == COUNTS:
            noise = poisson_noise([max(float(p[::8, ::8].mean(dtype=np.float64)), 1e-12)
                                   for p in planes])
        try:
            return planes_checks(planes, self._derivative_weights,
                                 (-self._dz[0], 0.0, self._dz[1]), self.pixel_size,
                                 self.energy, noise, None)
        except InputError:  # planes the solve took but the estimate cannot read
            return None, None

    def _gradient_noise_check(self, gradient):
        """Whether the noise a measured gradient of unknown noise suggests by
        its own pixel scatter would carry more than
        :data:`~flowtie_fast.noise.GRADIENT_NOISE_LIMIT` of its ``icom`` phase's power
        (:func:`~flowtie_fast.noise.gradient_noise_share`): why, warned when
        found, or None. Checked on the first gradient, again once
        :data:`ORIENTATION_RECHECK_S` have passed, and at once where the
        gradient's dtype or scale (a sparse RMS, beyond a factor 1.25 either
        way) changed."""
        # 16 to 32 samples a side (a 24 px scan read every 8th pixel gave 3 x 3,
        # whose RMS noise alone moved beyond the factor); a few kB copied
        step = max(1, min(gradient.shape[1:]) // 16)
        sample = gradient[:, ::step, ::step].ravel()  # NumPy or CuPy, as given
        with np.errstate(over="ignore", invalid="ignore"):
            scale = math.sqrt(abs(float(array_module(sample).vdot(sample, sample)))
                              / max(sample.size, 1))
        return self._recalled("_gradient_noise", (gradient.dtype, scale),
                              self._gradient_noise_verdict, gradient)

    def _gradient_noise_verdict(self, gradient):
        """:meth:`_gradient_noise_check` made anew."""
        why = gradient_noise_warning(gradient, self.pixel_size,
                                     "pass gradient_noise= (a triplet's gradient_noise)")
        if why is not None:
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
        return why

    def _counts_check(self, planes):
        """Whether integer planes given without a noise are electron counts
        (:func:`~flowtie_fast.noise.counts_check`), checked on the first such
        planes, again once :data:`ORIENTATION_RECHECK_S` have passed (an
        estimate of the images' noise costs a few solves), and at once where
        the planes' dtype or scale changed (a sparse mean of the in-focus
        plane, beyond a factor 1.25 either way: other frames, another
        camera setting): why not, warned when found, or None."""
        return self._recalled("_counts", self._seen(planes[1]), self._counts_verdict, planes)

    @staticmethod
    def _counts_verdict(planes):
        """:meth:`_counts_check` made anew."""
        _, _, why = counts_check(planes, [float(p.sum(dtype=np.float64)) for p in planes])
        if why is not None:
            why += (": taken as counts all the same, whose noise regularises the plan's "
                    "solves (pass noise=, e.g. noise=triplet.noise or the planes' variances)")
            warnings.warn(why, TrustWarning, stacklevel=user_stacklevel())
        return why

    @staticmethod
    def _batch_records(records, b):
        """``records`` of :meth:`solve_batch` checked: None, or B dicts (or
        None) of the keywords of :meth:`solve`'s records, each checked as
        :meth:`solve` checks them; :class:`InputError` naming the item
        otherwise."""
        if records is None:
            return None
        if isinstance(records, (str, bytes, dict)) or not hasattr(records, "__len__") \
                or len(records) != b:
            raise InputError(f"records: expected a sequence of {b} records, one per item "
                             f"(plan.triplet_records of each triplet, or None), got "
                             f"{_brief(records)}")
        out = []
        for i, r in enumerate(records):
            r = {} if r is None else r
            if not isinstance(r, dict) or not set(r) <= set(_RECORD_KEYS):
                raise InputError(f"records[{i}]: expected a dict of some of {_RECORD_KEYS} "
                                 f"(plan.triplet_records of a triplet) or None, got "
                                 f"{_brief(r)}")
            try:
                _check_records(**{k: r.get(k) for k in _RECORD_KEYS})
            except InputError as exc:
                raise InputError(f"records[{i}]: {exc}") from exc
            out.append(r)
        return out

    def solve_batch(self, stack, *, gradient=None, out=None, gradient_out=None, noise=None,
                    uncertainty_out=None, records=None):
        """Phases of many triplets: (B, 3, Ny, Nx) in, (B, Ny, Nx) out.

        For a time or tilt series. The plan's checks of the measured
        gradient's orientation and scale, and of the planes, are the plan's
        (made on the first items and every 30 s, as for :meth:`solve`), not
        each item's: items of another set-up in one batch need a plan each,
        or ``records`` with each triplet's verdicts. The plan's buffers serve every item; for
        ``flowtie`` with ``uncertainty=False`` the network sees the whole batch
        at once (one forward pass) and the Poisson integration runs per item
        (integer items at their dtype's full scale are named in
        ``plan.info["trust"]``, with ``plan.info["trusted"]`` False, as
        :meth:`solve` names them); with the trust check, each item is solved
        as by :meth:`solve`.

        Parameters
        ----------
        stack : array (B, 3, Ny, Nx)
            Triplets ``(minus, zero, plus)`` on this plan's backend.
        gradient : array (B, 2, Ny, Nx), optional
            Measured phase gradients (rad/Å).
        out : array (B, Ny, Nx), optional
            Caller-owned output for the phases (rad), the plan's dtype and
            backend; allocated when not given.
        gradient_out : array (B, 2, Ny, Nx), optional
            Caller-owned output for the phase gradients (rad/Å); not computed
            without it.
        noise : Noise, float or sequence of float, optional
            As for :meth:`solve`, the same for every item.
        uncertainty_out : array (B, Ny, Nx), optional
            As for :meth:`solve`, per item. ``plan.info["items"]`` holds each
            item's verdict, ``plan.info["trusted"]`` whether all were trusted.
        records : sequence of B dict, optional
            Per item, the records :meth:`solve` takes (``registration``,
            ``orientation``, ``saturation``, ``plane_defects``; e.g.
            :func:`triplet_records` of the item's triplet, or None): each
            item is then solved by :meth:`solve` with them (no whole-batch
            network pass) and its verdict in ``plan.info["items"]`` is the
            one :func:`~flowtie_fast.solvers.reconstruct` gives its triplet.
            All are checked before any item is solved.

        Returns
        -------
        array (B, Ny, Nx)
            The phases in rad (``out`` where given), on the plan's backend.
        """
        self.info = {}  # a refused batch leaves no earlier solve's verdict
        if not hasattr(stack, "ndim"):
            raise InputError(f"stack: expected an array (B, 3, Ny, Nx) on this plan's backend, "
                             f"got {type(stack).__name__}")
        if stack.ndim != 4 or stack.shape[1] != 3:
            raise InputError(f"stack: expected an array (B, 3, Ny, Nx), got shape "
                             f"{tuple(stack.shape)}")
        b = int(stack.shape[0])
        if b == 0:  # no item: no verdict to give (reconstruct_many refuses it too)
            raise InputError(f"stack: expected at least 1 triplet, got shape "
                             f"{tuple(stack.shape)}")
        stack = self._image("stack", stack, (b, 3) + self.shape)
        if gradient is not None:
            gradient = self._image("gradient", gradient, (b, 2) + self.shape)
        if out is None:  # a memory map or a broadcast view holds more items than memory
            self.backend.check_memory("stack", f"a batch of {b} items of {self.shape}",
                                      b * int(np.prod(self.shape)) * self.dtype.itemsize,
                                      f"its phases ({self.dtype})")
        out = self._output("out", out, (b,) + self.shape, (stack, gradient),
                           ("stack", "gradient"))
        if gradient_out is not None:
            self._output("gradient_out", gradient_out, (b, 2) + self.shape,
                         (stack, gradient, out), ("stack", "gradient", "out"))
        if uncertainty_out is not None:
            if not self.options.uncertainty:
                raise InputError("uncertainty_out: needs a flowtie plan with uncertainty")
            self._output("uncertainty_out", uncertainty_out, (b,) + self.shape,
                         (stack, gradient, out, gradient_out),
                         ("stack", "gradient", "out", "gradient_out"))
        noise = check_noise(noise, 3)
        records = self._batch_records(records, b)
        batched = self.method == "flowtie" and b > 1 and not self.options.uncertainty \
            and records is None
        # Every item is checked before the first is solved: a refusal writes nothing
        # (flow_batch checks the planes itself).
        for i in range(b):
            try:
                if not batched:
                    self.solver.validate_planes([stack[i, j] for j in range(3)],
                                                self._intensity_weights, _INPUT_NAMES[:3])
                if gradient is not None:
                    self.solver._check_gradient(gradient[i], self.wavenumber)
            except InputError as exc:
                raise InputError(f"stack[{i}]: {exc}") from exc
        if batched:
            suspect = misscaled = None
            for i in range(b if gradient is not None else 0):
                suspect, misscaled = self._orientation(gradient[i],
                                                       [stack[i, j] for j in range(3)])
                if (self.gradient_orientation or {}).get("testable"):
                    break
            info = {}  # the plan's once the pass returns: a refused pass leaves none
            if suspect:  # the network reads the gradient: said, as solve says it
                info = {"trust": suspect}
            # as solve says them: first, saturation before scale, and not trusted
            for lead in (misscaled, self._batch_saturation(stack)):
                if lead:
                    lead_trust(info, lead)
                    info["trusted"] = False
            why = image_verdict(self.method, self.virtual, self.options.model, True)
            if why is not None:  # the plan warned once
                info.setdefault("trust", why)
            defects = {}
            self.solver.flow_batch(stack, self._derivative_weights,
                                   self._intensity_weights, self.wavenumber,
                                   gradient=gradient, out=out,
                                   gradient_out=gradient_out, model=self.options.model,
                                   names=_INPUT_NAMES[:3],
                                   cuda_graphs=self.options.cuda_graphs, defects=defects)
            if defects:  # repaired before the network read them (warned)
                info["plane_defects"] = {f"stack[{i}]": record
                                         for i, record in defects.items()}
                info.setdefault("trust", "; ".join(r["why"] for r in defects.values()))
            self.info = info
            return out
        items = []
        for i in range(b):
            try:
                self.solve(stack[i, 0], stack[i, 1], stack[i, 2],
                           gradient=None if gradient is None else gradient[i], out=out[i],
                           gradient_out=None if gradient_out is None else gradient_out[i],
                           noise=noise,
                           uncertainty_out=None if uncertainty_out is None
                           else uncertainty_out[i], **(records[i] if records else {}))
            except InputError as exc:
                raise type(exc)(f"stack[{i}]: {exc}") from exc
            items.append(self.info)
        self.info = {"items": items}
        if self.method == "flowtie" and self.options.uncertainty:
            self.info["trusted"] = all(it.get("trusted") is not False for it in items)
        return out
