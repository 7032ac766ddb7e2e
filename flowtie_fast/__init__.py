"""flowtie_fast: phase and phase gradient from defocused intensity triplets.

The data path, top to bottom::

    4D-STEM arrays / files         (stem.py, io.py)  one-pass virtual images + centre of mass
    FocalTriplet / FocalSeries     (triplet.py)  measured planes, dz, pixel size, energy
      -> focal derivative kernels  (backend.py)  CUDA kernels or Numba twins
      -> PoissonSolver operators   (poisson.py)  FFT / DCT plans, one discretisation
      -> TIESolver methods         (solvers.py)  tie-uniform, tie, tie-exact, gd, icom
      -> Reconstruction            phase (rad), gradient (rad/Å), TIE residual
    Plan                           (plan.py)  one shape/method prepared once: no allocation
                                   per solve, batches (B, 3, Ny, Nx) -> (B, Ny, Nx)

Conventions (units, signs, axes) are those of the project's DESIGN notes:
lengths in Å, energy in eV, phase in rad, phase gradient in rad/Å.
"""

from .backend import Backend, get_backend, gpu_available, load_wisdom, save_wisdom
from .errors import BackendError, InputError
from .io import Dataset, load, save
from .physics import wavelength, wavenumber
from .plan import Plan
from .poisson import PoissonSolver
from .solvers import METHODS, Reconstruction, TIESolver, reconstruct
from .triplet import FocalSeries, FocalTriplet, focal_weights

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Backend",
    "BackendError",
    "Dataset",
    "FocalSeries",
    "FocalTriplet",
    "InputError",
    "Plan",
    "PoissonSolver",
    "Reconstruction",
    "TIESolver",
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
