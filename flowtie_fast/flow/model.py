"""FlowNet: a small U-Net from the normalised triplet to the flow, in physical units.

Inputs and outputs are made dimensionless with the pixel size so that one
network serves scan steps from 0.1 to 0.5 Å and any image size:

- intensities divided by the mean in-focus intensity Ī: I-/Ī, I0/Ī, I+/Ī;
- the transport source ``k ∂I/∂z h² / Ī`` (rad per pixel², the right-hand
  side of the TIE written per pixel);
- optionally the 4D-STEM centre of mass as a phase gradient per pixel,
  ``2π COM h`` (rad per pixel);
- output: the flow ``v h`` in rad per pixel; divide by h for rad/Å.

h is the pixel size along each axis (Å); the channels are made by
:func:`~flowtie_fast.flow.infer.flow_inputs`. Convolutions pad circularly: the
triplets are periodic (whole unit cells) or mirrored by the caller.
"""

from __future__ import annotations

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular"), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, padding_mode="circular"), nn.GELU())

    def forward(self, x):
        return self.body(x)


class _Up(nn.Module):
    """Upsample the coarse level and merge it with the skip connection."""

    def __init__(self, c_lo, c_hi):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_lo, c_hi, 2, stride=2)
        self.merge = _Block(2 * c_hi, c_hi)

    def forward(self, x, skip):
        return self.merge(torch.cat([self.up(x), skip], dim=1))


class FlowNet(nn.Module):
    """U-Net with ``depth`` levels of ``width · 2^level`` channels.

    Parameters
    ----------
    in_channels : int
        4 (triplet) or 6 (triplet and centre of mass).
    width : int
        Channels of the first level (default 24: about 0.26 M parameters at depth 3).
    depth : int
        Levels (each halves the image; inputs are padded circularly to a
        multiple of ``stride · 2^(depth-1)`` and the output cropped back).
    stride : int
        1: the first level works at full resolution. s > 1: the input is
        folded into ``s²`` times the channels at 1/s of the resolution
        (pixel unshuffle, no information lost) and the head unfolds ``2 s²``
        channels back into the full-resolution flow (pixel shuffle): about
        ``s²`` times fewer operations. Measured at s = 2: ~4x faster, but
        less accurate, and lost on unseen Si (docs/evaluation.md); the
        shipped models use s = 1.
    channels : sequence of int, optional
        Channels of each level, overriding ``width`` and ``depth`` (e.g. a
        narrow full-resolution level and wider coarse ones).

    Notes
    -----
    The module is scriptable: ``torch.jit.script(FlowNet())`` runs on any
    image size.
    """

    def __init__(self, in_channels: int = 4, width: int = 24, depth: int = 3, stride: int = 1,
                 channels=None):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride: expected a positive integer, got {stride!r}")
        chans = [width * 2**i for i in range(depth)] if channels is None else \
            [int(c) for c in channels]
        width, depth = chans[0], len(chans)
        self.in_channels, self.width, self.depth, self.stride = in_channels, width, depth, stride
        self.channels = chans
        self.multiple: int = stride * 2 ** (depth - 1)
        self.fold = nn.PixelUnshuffle(stride)
        self.unfold = nn.PixelShuffle(stride)
        self.down = nn.ModuleList()
        cin = in_channels * stride**2
        for c in chans:
            self.down.append(_Block(cin, c))
            cin = c
        self.ups = nn.ModuleList([_Up(c_lo, c_hi) for c_hi, c_lo in
                                  zip(chans[-2::-1], chans[:0:-1])])
        self.head = nn.Conv2d(chans[0], 2 * stride**2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The flow of a batch of network inputs.

        Parameters
        ----------
        x : Tensor (B, in_channels, Ny, Nx)
            The dimensionless inputs of :func:`~flowtie_fast.flow.infer.flow_inputs`.

        Returns
        -------
        Tensor (B, 2, Ny, Nx)
            The flow ``v h`` in rad per pixel, component 0 along axis 0.
        """
        h, w = x.shape[-2], x.shape[-1]
        m = self.multiple
        ph, pw = (m - h % m) % m, (m - w % m) % m
        if ph > 0 or pw > 0:
            x = nn.functional.pad(x, [0, pw, 0, ph], mode="circular")
        x = self.fold(x)
        skips: list[torch.Tensor] = []
        for i, block in enumerate(self.down):
            if i > 0:
                x = nn.functional.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i, up in enumerate(self.ups):
            x = up(x, skips[len(skips) - 2 - i])
        return self.unfold(self.head(x))[..., :h, :w]
