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


class Registration:
    """The drift registration of a triplet from its dark-field images
    (``register_triplet`` with ``signals``: three pairwise phase correlations,
    each with its noise standard error, and the self-match of each signal),
    against one plain FFT cross-correlation of two of the images (NumPy)."""

    params = ([64, 128, 256],)
    param_names = ["size"]

    def setup(self, size):
        rng = np.random.default_rng(0)
        y, x = np.mgrid[:size, :size]
        blobs = sum(np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 18.0)
                    for cy, cx in rng.uniform(0, size, (size // 4, 2)))
        base = 20.0 * (1.0 + blobs)
        shifts = [(1.3, -0.7), (0.0, 0.0), (-0.9, 1.6)]
        self.signals = [rng.poisson(np.roll(base, (round(dy), round(dx)), (0, 1))).astype(float)
                        for dy, dx in shifts]
        self.planes = [s + 1.0 for s in self.signals]

    def time_register_triplet(self, size):
        import warnings

        from flowtie_fast.stem.registration import register_triplet

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_triplet(self.planes, signals=self.signals, periodic=False,
                             apply_unreliable=False, threshold=1e9)

    def time_numpy_cross_correlation(self, size):
        """One FFT cross-correlation of two images: the floor of any estimate."""
        a, b = np.fft.rfft2(self.signals[1]), np.fft.rfft2(self.signals[0])
        np.fft.irfft2(a * np.conj(b), s=self.signals[0].shape)
