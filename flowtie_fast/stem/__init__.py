"""4D-STEM acquisition: from (Sy, Sx, Ky, Kx) patterns at three defoci to a triplet.

- :mod:`~flowtie_fast.stem.detector`: detector geometry (centre, bright-field
  disk, the regions of the virtual images and their weights);
- :mod:`~flowtie_fast.stem.reduction`: the one-pass reduction of a dataset
  to its virtual images and centre of mass (chunked, dask, CUDA or Numba);
- :mod:`~flowtie_fast.stem.rotation`: the detector-to-scan rotation of the
  centre of mass, calibrated by its curl;
- :mod:`~flowtie_fast.stem.descan`: the plane of the centre of mass
  (uncorrected descan), measured and removed;
- :mod:`~flowtie_fast.stem.registration`: the drift between the three scans,
  estimated and undone;
- :mod:`~flowtie_fast.stem.focal`: the steps of
  :meth:`FocalTriplet.from_4dstem <flowtie_fast.triplet.FocalTriplet.from_4dstem>`
  (the triplet from 4D data; the public entry point is that constructor);
- :mod:`~flowtie_fast.stem.live`: the reduction as a LiberTEM UDF, for files
  and live streams (extra ``live``; not imported here).

Everything here sits below :mod:`flowtie_fast.triplet` (which builds on it),
except :mod:`~flowtie_fast.stem.live`, which hands its reductions to
``FocalTriplet.from_reductions``.
"""

from .descan import check_descan, descan_plane, fit_plane
from .detector import (Detector, DetectorWarning, bf_radius_mrad, detector_weights,
                       disk_fills_detector, find_center, mean_pattern, sample_patterns,
                       triplet_geometry, weight_ranges)
from .focal import orient, prepare_planes, reduce_triplet, register_planes
from .reduction import Reduction, finish_reduction, reduce_4dstem, reduce_frames
from .registration import (RegistrationWarning, Shift, apply_shift, estimate_shift,
                           register_triplet)
from .rotation import calibrate_rotation, rotate_com

__all__ = ["Detector", "DetectorWarning", "Reduction", "RegistrationWarning", "Shift",
           "apply_shift", "bf_radius_mrad", "calibrate_rotation", "check_descan",
           "descan_plane", "detector_weights",
           "disk_fills_detector", "estimate_shift", "find_center", "fit_plane", "finish_reduction",
           "mean_pattern", "orient", "prepare_planes", "reduce_4dstem", "reduce_frames",
           "reduce_triplet", "register_planes", "register_triplet", "rotate_com",
           "sample_patterns", "triplet_geometry", "weight_ranges"]
