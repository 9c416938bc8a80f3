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

from .common import AutoregressiveImageModel, FixedMaskConv2d, MaskedConv2d, Stepper, _check_int, output_head


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
# The helpers below are shared with rowlstm.py and diagbilstm.py (their first layer is the same
# mask-A convolution).

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
