"""PixelCNN (van den Oord et al. 2016): a stack of masked convolutions.

Layer 1 is a k x k convolution with mask A (the pixel itself is hidden), then residual blocks
(1x1 down, k x k mask B, 1x1 up) and a 1x1 head to K logits per pixel. Exact and fast to train,
but its receptive field has the known "blind spot" up and to the right (see gated.py for the fix).
"""
from __future__ import annotations

from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, _check_int, output_head


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
