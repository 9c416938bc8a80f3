"""PixelCNN (van den Oord et al. 2016): a stack of masked convolutions.

Layer 1 is a k x k convolution with mask A (the pixel itself is hidden), then residual blocks
(1x1 down, k x k mask B, 1x1 up) and a 1x1 head to K logits per pixel. Exact and fast to train,
but its receptive field has the known "blind spot" up and to the right (see gated.py for the fix).

Sampling: :class:`CachedPixelCNNStepper` ("fast PixelCNN" caching) keeps every layer's features
for the pixels already visited and, at each new pixel, evaluates every layer at that one pixel
only (each masked convolution reads cached features of earlier pixels, which are final).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, Stepper, _check_int, output_head
from .stepping import MaskedConvAtPixel, PixelInput, dense


class ResidualBlock(nn.Module):
    """ReLU-1x1(2h->h)-ReLU-masked kxk B(h->h)-ReLU-1x1(h->2h), added to the input."""

    def __init__(self, channels: int, *, kernel_size: int = 3, n_colors: int = 1):
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, half, 1),
            nn.ReLU(), MaskedConv2d(half, half, kernel_size, mask_type="B", n_colors=n_colors),
            nn.ReLU(), nn.Conv2d(half, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class PixelCNN(AutoregressiveImageModel):
    """PixelCNN over single-channel images with K gray levels.

    ``hidden`` is the residual stream width (even), ``num_layers`` the number of residual blocks.
    """

    def __init__(self, *, num_classes: int, hidden: int = 32, num_layers: int = 4,
                 first_kernel: int = 7, kernel_size: int = 3, image_shape=None):
        super().__init__(num_classes=num_classes, image_shape=image_shape)
        _check_int("hidden", hidden, minimum=2)
        if hidden % 2:
            raise ValueError(f"hidden must be even, got {hidden}")
        _check_int("num_layers", num_layers, minimum=0)
        self.first = MaskedConv2d(1, hidden, first_kernel, mask_type="A")
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, kernel_size=kernel_size)
                                      for _ in range(num_layers)])
        self.head = output_head(hidden, hidden, num_classes)

    def forward(self, inp: Tensor, cond=None) -> Tensor:
        return self.head(self.blocks(self.first(inp)))

    def cached_stepper(self, *, batch: int, image_shape: tuple[int, int], cond) -> Stepper | None:
        if type(self).forward is not PixelCNN.forward:   # a subclass changed the network
            return None
        return CachedPixelCNNStepper(self, batch=batch, image_shape=image_shape, cond=cond)


# --- cached sampling -------------------------------------------------------------------------
class CachedPixelCNNStepper(Stepper):
    """PixelCNN stepper that evaluates every layer at the new pixel only.

    The features of every layer at (r, c) depend only on pixels before (r, c), so once computed
    they are final. At (r, c) the first mask-A convolution reads the encoded pixels before
    (r, c), and each residual block's masked k x k convolution reads its (cached) input at rows
    r - k//2 .. r; 1x1 convolutions, ReLUs and the head act on the pixel alone. Cost per pixel:
    one matrix product per convolution on a (B, taps * C) patch instead of a whole-image pass.
    """

    def __init__(self, model: PixelCNN, *, batch: int, image_shape: tuple[int, int], cond):
        super().__init__(model, batch=batch, image_shape=image_shape, cond=cond)
        height, width = image_shape
        with torch.no_grad():
            self._first = PixelInput(model, model.first, batch=batch, height=height, width=width)
            self._blocks = []
            for block in model.blocks:
                down, conv, up = block.net[1], block.net[3], block.net[5]
                self._blocks.append((dense(down), MaskedConvAtPixel(conv, batch=batch, height=height, width=width),
                                     dense(up)))
            self._head = (dense(model.head[1]), dense(model.head[3]))

    @torch.no_grad()
    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        self._advance(x, r, c)
        h = self._first.step(x, r, c)
        for (b_down, w_down), conv, (b_up, w_up) in self._blocks:
            conv.write(r, c, torch.addmm(b_down, torch.relu(h), w_down).relu_())
            h = h + torch.addmm(b_up, conv.at(r, c).relu_(), w_up)
        (b1, w1), (b2, w2) = self._head
        return torch.addmm(b2, torch.addmm(b1, torch.relu(h), w1).relu_(), w2)
