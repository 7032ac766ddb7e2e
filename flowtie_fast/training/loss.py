"""The composite loss of FlowTIE: flow, continuity and phase terms.

With ``v`` the predicted flow (rad/Å), ``φ_gt`` and ``∇φ_gt`` the ground
truth, I0 the in-focus intensity and ``k ∂I/∂z`` the measured transport:

- flow: ``mean |v − ∇φ_gt|² / mean |∇φ_gt|²``;
- continuity: ``mean (k ∂I/∂z + ∇·(I0 v))² / mean (k ∂I/∂z)²`` (the TIE
  residual relative to the measured transport);
- phase: ``mean (P(v) − φ_gt)² / var(φ_gt)`` after removing both means (the
  NMSE of the evaluation), with ``P = ∇⁻² ∇·`` the Poisson integration.

Each term is normalised per sample, so that thick specimens (phases of
several rad) do not drown thin ones in a batch or over training; without the
normalisation a first training run collapsed to a zero flow.

The derivatives and P are the solver's spectral scheme
(:mod:`flowtie_fast.poisson`): ``i q`` with the Nyquist wavenumber zeroed, so
all three terms vanish on exact band-limited data, and they are
differentiable (``torch.fft``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SpectralOperators(nn.Module):
    """Gradient, divergence and Poisson integration of the spectral scheme, in torch."""

    def __init__(self, shape, pixel_size):
        super().__init__()
        ny, nx = (int(s) for s in shape)
        ky = 2 * math.pi * torch.fft.fftfreq(ny, float(pixel_size[0]), dtype=torch.float64)
        kx = 2 * math.pi * torch.fft.rfftfreq(nx, float(pixel_size[1]), dtype=torch.float64)
        if ny % 2 == 0:
            ky[ny // 2] = 0
        if nx % 2 == 0:
            kx[nx // 2] = 0
        s = ky[:, None] ** 2 + kx[None, :] ** 2
        inv = torch.where(s > 0, -1.0 / torch.where(s > 0, s, 1.0), torch.zeros_like(s))
        self.shape = (ny, nx)
        # float64 buffers: call .float() on the module to work in float32.
        self.register_buffer("ky", ky[:, None])
        self.register_buffer("kx", kx[None, :])
        self.register_buffer("inverse_laplacian", inv)

    def gradient(self, u):
        """(…, H, W) -> (…, 2, H, W)."""
        f = torch.fft.rfft2(u)
        n = self.shape
        return torch.stack([torch.fft.irfft2(1j * self.ky * f, s=n),
                            torch.fft.irfft2(1j * self.kx * f, s=n)], dim=-3)

    def divergence(self, g):
        """(…, 2, H, W) -> (…, H, W)."""
        f = 1j * self.ky * torch.fft.rfft2(g[..., 0, :, :]) + \
            1j * self.kx * torch.fft.rfft2(g[..., 1, :, :])
        return torch.fft.irfft2(f, s=self.shape)

    def integrate(self, g):
        """``∇⁻² ∇·g``: the phase (mean zero) whose gradient best fits g."""
        f = 1j * self.ky * torch.fft.rfft2(g[..., 0, :, :]) + \
            1j * self.kx * torch.fft.rfft2(g[..., 1, :, :])
        return torch.fft.irfft2(f * self.inverse_laplacian, s=self.shape)


class CompositeLoss(nn.Module):
    """``w_flow · flow + w_continuity · continuity + w_phase · phase`` (module docstring).

    Parameters
    ----------
    shape, pixel_size
        Image shape and pixel size (Å) of the batches.
    weights : (float, float, float)
        Weights of the flow, continuity and phase terms.

    ``forward`` returns the total and a dict of the three terms.
    """

    def __init__(self, shape, pixel_size, weights=(1.0, 1.0, 1.0)):
        super().__init__()
        self.ops = SpectralOperators(shape, pixel_size)
        self.weights = tuple(float(w) for w in weights)

    def terms(self, v, phase_gt, gradient_gt, zero, didz, wavenumber: float):
        img = (-2, -1)
        eps = 1e-30
        flow = ((v - gradient_gt) ** 2).sum(-3).mean(img) / \
            ((gradient_gt**2).sum(-3).mean(img) + eps)
        source = wavenumber * didz
        transport = self.ops.divergence(zero.unsqueeze(-3) * v)
        continuity = ((source + transport) ** 2).mean(img) / ((source**2).mean(img) + eps)
        p = self.ops.integrate(v)
        d = (p - p.mean(img, keepdim=True)) - (phase_gt - phase_gt.mean(img, keepdim=True))
        phase = (d**2).mean(img) / (phase_gt.var(img, unbiased=False) + eps)
        return {"flow": flow.mean(), "continuity": continuity.mean(), "phase": phase.mean()}

    def forward(self, v, phase_gt, gradient_gt, zero, didz, wavenumber: float):
        t = self.terms(v, phase_gt, gradient_gt, zero, didz, wavenumber)
        total = (self.weights[0] * t["flow"] + self.weights[1] * t["continuity"]
                 + self.weights[2] * t["phase"])
        return total, t
