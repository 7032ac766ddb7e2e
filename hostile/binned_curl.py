"""np.gradient of a phase is exactly curl-free under the check's central
differences at full sampling, but the 2x2-binned pass (block mean, then central
differences at 2x the step) is not a consistent discretisation: sharp features
get curl there, and the field is flagged."""
import numpy as np
from flowtie_fast import trust
from flowtie_fast.trust import _orientation_at

def lattice(shape, sig_px, a_px=(4.7, 3.9)):
    y = np.arange(shape[0])[:, None] * 1.0; x = np.arange(shape[1])[None, :] * 1.0
    phi = np.zeros(shape)
    for cy in np.arange(2, shape[0], a_px[0]):
        for cx in np.arange(2, shape[1], a_px[1]):
            phi += np.exp(-((y - cy - .3) ** 2 / sig_px[0] ** 2 + (x - cx - .1) ** 2 / sig_px[1] ** 2) / 2)
    return phi

for step, sig_px, a_px in [((0.5, 0.1), (0.6, 0.6), (4.7, 3.9)),
                           ((0.5, 0.1), (1.0, 5.0), (4.0, 20.0)),   # physically isotropic atoms 0.5 A, 2 A lattice
                           ((0.5, 0.1), (0.8, 4.0), (4.0, 20.0)),
                           ((0.25, 0.25), (0.6, 0.6), (4.7, 3.9))]:
    phi = lattice((128, 128), sig_px, a_px)
    g = np.stack(np.gradient(phi, *step))
    full = _orientation_at(g, step)
    ny, nx = g.shape[1:]
    b = g.reshape(2, ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))
    binned = _orientation_at(b, (2 * step[0], 2 * step[1]))
    c = trust.gradient_orientation(g, step)
    print(step, sig_px, "full: curl %.2g sig %.2f mis %.1f" % (full["curl_fraction"], full["significance"], full["misorientation"]),
          "| binned: curl %.2g sig %.2f mis %.1f" % (binned["curl_fraction"], binned["significance"], binned["misorientation"]),
          "| suspect", c["suspect"])
