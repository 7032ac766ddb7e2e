"""flowtie_fast: phase and phase gradient from defocused intensity triplets.

The data path, top to bottom::

    4D-STEM arrays / files         (stem/, io.py)  one-pass virtual images + centre of mass,
                                   detector geometry, drift registration, rotation
    FocalTriplet / FocalSeries     (triplet.py)  measured planes, dz, pixel size, energy
      -> focal derivative kernels  (_numba_kernels.py, _numpy_kernels.py, _cuda.py)  Numba
                                   twins, the same in NumPy (cold starts), or CUDA
      -> PoissonSolver operators   (poisson.py, fft.py)  FFT / DCT plans, one discretisation
      -> TIESolver methods         (solvers.py)  tie-uniform, tie, tie-exact, gd, icom, flowtie
      -> Reconstruction            phase (rad), gradient (rad/Å), TIE residual
    Plan                           (plan.py)  one shape/method prepared once: no allocation
                                   per solve, batches (B, 3, Ny, Nx) -> (B, Ny, Nx)

Layers (a module imports only modules below it; ``python scripts/import_graph.py``):

1. errors, physics, files (paths, atomic writes), backend, fft, _cuda, _numba_kernels,
   _numpy_kernels
2. poisson, noise, planes (checks of measured planes, focal weights)
3. stem (4D-STEM reduction, detector, rotation, registration, the steps to a triplet)
4. flow (network inference), trust, solvers
5. triplet (containers; built from 4D data by stem, rotation calibrated by solvers)
6. plan, io, stem.live; above plan: cluster (batches on a dask cluster, one
   worker per GPU); cli (the ``flowtie`` command) on top
7. research, never imported by the runtime: simulation/, evaluation/, training/,
   testing.py (the NumPy references)

Conventions (units, signs, axes): docs/conventions.md;
lengths in Å, energy in eV, phase in rad, phase gradient in rad/Å.
"""

import importlib as _importlib

__version__ = "0.1.0"

# The public names and the module that defines each: imported on first use
# (PEP 562), so that ``import flowtie_fast`` and the command line start
# without NumPy, Numba or h5py until something needs them.
_PUBLIC = {
    "Backend": "backend", "get_backend": "backend", "gpu_available": "backend",
    "load_wisdom": "fft", "save_wisdom": "fft",
    "BackendError": "errors", "InputError": "errors", "ResultError": "errors",
    "TrustWarning": "errors", "Noise": "noise",
    "Dataset": "io", "load": "io", "save": "io",
    "wavelength": "physics", "wavenumber": "physics",
    "Plan": "plan",
    "PoissonSolver": "poisson",
    "METHODS": "solvers", "Reconstruction": "solvers", "TIESolver": "solvers",
    "reconstruct": "solvers",
    "FocalSeries": "triplet", "FocalTriplet": "triplet", "focal_weights": "planes",
}


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'flowtie_fast' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "METHODS",
    "Backend",
    "BackendError",
    "Dataset",
    "FocalSeries",
    "FocalTriplet",
    "InputError",
    "Noise",
    "Plan",
    "PoissonSolver",
    "Reconstruction",
    "ResultError",
    "TIESolver",
    "TrustWarning",
    "focal_weights",
    "get_backend",
    "gpu_available",
    "load",
    "load_wisdom",
    "reconstruct",
    "save",
    "save_wisdom",
    "wavelength",
    "wavenumber",
]
