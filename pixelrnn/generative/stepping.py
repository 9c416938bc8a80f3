"""Pixel-at-a-time building blocks of the cached steppers (pixelcnn.py, rowlstm.py, diagbilstm.py).

A cached stepper computes every layer at the new pixel only; these pieces evaluate a masked
convolution, a 1x1 layer or an LSTM update for one pixel from buffers of what is already final.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import AutoregressiveImageModel, FixedMaskConv2d


def previous_pixel(r: int, c: int, width: int) -> tuple[int, int] | None:
    """The pixel just before (r, c) in raster order (None for (0, 0))."""
    if c > 0:
        return r, c - 1
    return (r - 1, width - 1) if r > 0 else None


def dense(conv: nn.Module) -> tuple[Tensor, Tensor]:
    """(bias, weight^T) of a 1x1 convolution / linear layer, for ``torch.addmm(bias, x, weight_t)``."""
    weight = conv.weight.detach()
    weight = weight.reshape(weight.shape[0], -1)
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return bias, weight.t().contiguous()


class MaskedConvAtPixel:
    """A 'same'-padded raster-masked convolution evaluated at one pixel at a time.

    The convolution's input is kept in a zero-padded channels-last buffer (B, H + kh//2,
    W + 2 * (kw//2), C_in); :meth:`write` stores the input at a pixel once it is final, :meth:`at`
    returns the output (B, C_out) at (r, c) from the rows r - kh//2 .. r of the buffer (rows below
    the centre are masked, so they are never read). Entries not yet written are 0 and meet only
    masked (exactly zero) taps, so the result depends on written entries only. The masked weight
    is a snapshot taken at construction.
    """

    def __init__(self, conv: FixedMaskConv2d, *, batch: int, height: int, width: int):
        weight = (conv.weight * conv.mask.to(conv.weight.dtype)).detach()
        c_out, c_in, kh, kw = weight.shape
        if tuple(conv.padding) != (kh // 2, kw // 2) or tuple(conv.stride) != (1, 1) \
                or tuple(conv.dilation) != (1, 1) or conv.groups != 1:
            raise ValueError("MaskedConvAtPixel needs a stride-1 'same'-padded convolution")
        self.ph, self.pw, self.kw = kh // 2, kw // 2, kw
        if weight[:, :, self.ph + 1:].any() or weight[:, :, self.ph, self.pw + 1:].any():
            raise ValueError("the convolution's mask lets it see pixels after the centre")
        self.weight_t = weight[:, :, :self.ph + 1].permute(0, 2, 3, 1).reshape(c_out, -1).t().contiguous()
        self.bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(c_out)
        self.batch = batch
        self.buf = weight.new_zeros(batch, height + self.ph, width + 2 * self.pw, c_in)

    def write(self, r: int, c: int, value: Tensor) -> None:
        """Store the (B, C_in) input at pixel (r, c)."""
        self.buf[:, r + self.ph, c + self.pw] = value

    def at(self, r: int, c: int) -> Tensor:
        """The (B, C_out) output at pixel (r, c)."""
        patch = self.buf[:, r:r + self.ph + 1, c:c + self.kw].reshape(self.batch, -1)
        return torch.addmm(self.bias, patch, self.weight_t)


class PixelInput(MaskedConvAtPixel):
    """The first (mask-A) convolution over the encoded pixel map, fed one final pixel per step."""

    def __init__(self, model: AutoregressiveImageModel, conv: FixedMaskConv2d, *, batch: int,
                 height: int, width: int):
        super().__init__(conv, batch=batch, height=height, width=width)
        self.model, self.width = model, width

    def step(self, x: Tensor, r: int, c: int) -> Tensor:
        """Write the pixel before (r, c) (final now) and return the convolution at (r, c)."""
        prev = previous_pixel(r, c, self.width)
        if prev is not None:
            pr, pc = prev
            self.write(pr, pc, self.model.encode(x[:, pr:pr + 1, pc:pc + 1]).reshape(self.batch, 1))
        return self.at(r, c)


def lstm_step(gates: Tensor, cell: Tensor, hidden: int) -> tuple[Tensor, Tensor]:
    """One LSTM update from (B, 4*hidden) gates ordered o, f, i, g (as in the layers' ``chunk``)."""
    s = torch.sigmoid(gates[:, :3 * hidden])
    cell = torch.addcmul(s[:, hidden:2 * hidden] * cell, s[:, 2 * hidden:], torch.tanh(gates[:, 3 * hidden:]))
    return s[:, :hidden] * torch.tanh(cell), cell
