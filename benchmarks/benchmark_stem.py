"""4D-STEM reduction (virtual images + centre of mass in one pass) against
reading the same array once (a NumPy sum over the same memory)."""

import numpy as np

from flowtie_fast import stem

from .common import BACKENDS, require

SHAPE = (128, 128, 64, 64)
REGIONS = {"bf": (0.0, 5.0), "bf-full": (0.0, 20.0), "abf": (10.0, 20.0),
           "df": (20.0, np.inf), "whole": (0.0, np.inf)}


class Reduce4D:
    """128² scans of 64² and 128² patterns (268 MB and 1 GB in float32)."""

    params = (BACKENDS, ["uint16", "float32"], [64, 128])
    param_names = ["backend", "dtype", "detector"]
    timeout = 300

    def setup(self, backend, dtype, detector):
        self.be = require(backend)
        rng = np.random.default_rng(0)
        shape = SHAPE[:2] + (detector, detector)
        data = (rng.random(shape, dtype=np.float32) * 200).astype(dtype)
        self.data = self.be.asarray(data)
        c = (detector - 1) / 2
        self.det = stem.Detector(shape[2:], (0.05, 0.05), 300e3, (c, c))
        stem.reduce_4dstem(self.data[:2], self.det, REGIONS, backend=self.be)

    def time_reduce(self, backend, dtype, detector):
        stem.reduce_4dstem(self.data, self.det, REGIONS, backend=self.be,
                           chunk_bytes=1 << 40)
        self.be.synchronize()

    def time_numpy_sum(self, backend, dtype, detector):
        """Reading the array once: the bandwidth bound."""
        self.data.sum()
        self.be.synchronize()
