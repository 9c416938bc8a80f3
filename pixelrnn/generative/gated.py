"""Gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders").

Two stacks remove PixelCNN's blind spot:
  * the vertical stack uses full-width k x k kernels restricted to rows above (first layer:
    strictly above; later layers: rows above and the current row, whose features already see
    only rows above), so it covers a rectangle above the pixel;
  * the horizontal stack uses 1 x k kernels restricted to the left (first layer: strictly left,
    later: left and the pixel itself), and receives the vertical stack through a 1x1 link.
Activations are gated, tanh(a) * sigmoid(b), and a conditioning vector (a class embedding, or any
vector) is linearly projected and added to the pre-activations of both stacks in every layer.
The horizontal stack has a residual connection (except in the first layer, whose input is the
pixel itself).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import AutoregressiveImageModel, FixedMaskConv2d, _check_int, output_head


def vertical_mask(kernel_size: int, *, first: bool) -> Tensor:
    """k x k mask: rows above the centre; the centre row too unless ``first``."""
    mask = torch.zeros(kernel_size, kernel_size)
    mask[: kernel_size // 2 + (0 if first else 1)] = 1
    return mask


def horizontal_mask(kernel_size: int, *, first: bool) -> Tensor:
    """1 x k mask: taps left of the centre; the centre too unless ``first``."""
    mask = torch.zeros(1, kernel_size)
    mask[0, : kernel_size // 2 + (0 if first else 1)] = 1
    return mask


def gate(x: Tensor) -> Tensor:
    """Gated activation: split channels in halves a, b -> tanh(a) * sigmoid(b)."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer: (v, h, cond_vector) -> (v, h)."""

    def __init__(self, in_channels: int, hidden: int, *, kernel_size: int, first: bool,
                 cond_dim: int | None):
        super().__init__()
        self.first = first
        self.v_conv = FixedMaskConv2d(in_channels, 2 * hidden,
                                      mask=vertical_mask(kernel_size, first=first))
        self.h_conv = FixedMaskConv2d(in_channels, 2 * hidden,
                                      mask=horizontal_mask(kernel_size, first=first))
        self.v_to_h = nn.Conv2d(2 * hidden, 2 * hidden, 1)
        self.h_out = nn.Conv2d(hidden, hidden, 1)
        self.cond_v = nn.Linear(cond_dim, 2 * hidden, bias=False) if cond_dim else None
        self.cond_h = nn.Linear(cond_dim, 2 * hidden, bias=False) if cond_dim else None

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None):
        v_pre = self.v_conv(v)
        h_pre = self.h_conv(h) + self.v_to_h(v_pre)   # v_pre at (r, c) sees rows < r only
        if cond is not None:
            v_pre = v_pre + self.cond_v(cond)[:, :, None, None]
            h_pre = h_pre + self.cond_h(cond)[:, :, None, None]
        h_new = self.h_out(gate(h_pre))
        return gate(v_pre), (h_new if self.first else h + h_new)


class GatedPixelCNN(AutoregressiveImageModel):
    """Gated PixelCNN, optionally conditional.

    Conditioning: ``num_labels`` -> ``cond`` is a (B,) long tensor of class labels, embedded in
    ``embed_dim`` dims; ``cond_dim`` -> ``cond`` is any (B, cond_dim) float tensor. At most one.
    """

    def __init__(self, *, num_classes: int, hidden: int = 32, num_layers: int = 5,
                 kernel_size: int = 3, num_labels: int | None = None, cond_dim: int | None = None,
                 embed_dim: int = 16, image_shape=None):
        super().__init__(num_classes=num_classes, image_shape=image_shape)
        _check_int("hidden", hidden, minimum=1)
        _check_int("num_layers", num_layers, minimum=1)
        _check_int("kernel_size", kernel_size, minimum=3)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if num_labels is not None and cond_dim is not None:
            raise ValueError("give at most one of num_labels and cond_dim")
        self.num_labels = None if num_labels is None else _check_int("num_labels", num_labels, minimum=1)
        self.cond_dim = None if cond_dim is None else _check_int("cond_dim", cond_dim, minimum=1)
        self.embedding = None
        vec_dim = self.cond_dim
        if self.num_labels is not None:
            self.embedding = nn.Embedding(self.num_labels, _check_int("embed_dim", embed_dim, minimum=1))
            vec_dim = embed_dim
        self.layers = nn.ModuleList(
            GatedLayer(1 if i == 0 else hidden, hidden, kernel_size=kernel_size, first=i == 0,
                       cond_dim=vec_dim) for i in range(num_layers))
        self.head = output_head(hidden, hidden, num_classes)

    def check_cond(self, cond, batch: int):
        if self.num_labels is None and self.cond_dim is None:
            return super().check_cond(cond, batch)
        if not isinstance(cond, Tensor):
            raise ValueError("this model is conditional: cond must be a tensor")
        if self.num_labels is not None:
            if cond.shape != (batch,) or cond.is_floating_point():
                raise ValueError(f"cond must be a ({batch},) integer label tensor, got {cond.dtype} {tuple(cond.shape)}")
            if int(cond.min()) < 0 or int(cond.max()) >= self.num_labels:
                raise ValueError(f"labels must lie in [0, {self.num_labels})")
            return cond.long()
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}")
        return cond.to(self.dtype)

    def forward(self, inp: Tensor, cond=None) -> Tensor:
        vec = self.embedding(cond) if self.embedding is not None else cond
        v = h = inp
        for layer in self.layers:
            v, h = layer(v, h, vec)
        return self.head(h)
