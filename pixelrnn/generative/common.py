"""Shared pieces of the generative PixelRNN family (van den Oord et al. 2016).

Every model here is an autoregressive density over images of discrete pixels: an image ``x`` of
shape (B, H, W) holding integers in ``[0, K)`` has the exact likelihood

    p(x) = prod_i p(x_i | x_<i),    i in raster order (row by row, left to right),

where each factor is a K-way softmax. A model only has to implement ``forward(inp, cond)``: a
float map (B, 1, H, W) -> logits (B, K, H, W) whose logits at pixel i depend on ``inp`` at pixels
< i only. Everything else (log-likelihood, NLL in nats and bits/dim, naive sampling) lives here.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MASK_TYPES = ("A", "B")


def _check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_shape(image_shape) -> tuple[int, int]:
    if image_shape is None:
        raise ValueError("image_shape must be given (here or when the model was built)")
    if len(tuple(image_shape)) != 2:
        raise ValueError(f"image_shape must be (height, width), got {image_shape!r}")
    h, w = image_shape
    return _check_int("height", h, minimum=1), _check_int("width", w, minimum=1)


def raster_mask(*, kernel_size: tuple[int, int], mask_type: str, in_channels: int,
                out_channels: int, n_colors: int = 1) -> Tensor:
    """The PixelCNN mask (out, in, kh, kw) of a convolution that must not see the future.

    Kernel taps in rows above the centre, and left of the centre in the centre row, are allowed.
    At the centre tap channels are split into ``n_colors`` contiguous groups (R, G, B, ...): an
    output of group g may see input groups < g (mask ``"A"``, first layer: the pixel itself is not
    yet known) or <= g (mask ``"B"``, later layers: features at the pixel already exclude it).
    With ``n_colors=1`` (gray images) the centre is simply off for A and on for B.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
    for name, ch in (("in_channels", in_channels), ("out_channels", out_channels)):
        if ch % n_colors:
            raise ValueError(f"{name}={ch} is not divisible by n_colors={n_colors}")
    cy, cx = kh // 2, kw // 2
    mask = torch.zeros(out_channels, in_channels, kh, kw)
    mask[:, :, :cy, :] = 1
    mask[:, :, cy, :cx] = 1
    g_out = torch.arange(out_channels) * n_colors // out_channels
    g_in = torch.arange(in_channels) * n_colors // in_channels
    allowed = g_in[None, :] < g_out[:, None] if mask_type == "A" else g_in[None, :] <= g_out[:, None]
    mask[:, :, cy, cx] = allowed.float()
    return mask


class FixedMaskConv2d(nn.Conv2d):
    """A 'same'-padded convolution whose weight is multiplied by a fixed 0/1 mask.

    Masked taps are exactly zero in the forward pass and get exactly zero gradient, so the mask
    is a hard guarantee, not a learned tendency.
    """

    def __init__(self, in_channels: int, out_channels: int, *, mask: Tensor, bias: bool = True):
        kh, kw = mask.shape[-2:]
        super().__init__(in_channels, out_channels, (kh, kw), padding=(kh // 2, kw // 2), bias=bias)
        if mask.dim() == 2:
            mask = mask.expand(out_channels, in_channels, kh, kw)
        if tuple(mask.shape) != tuple(self.weight.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight shape {tuple(self.weight.shape)}")
        self.register_buffer("mask", mask.clone().float())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask.to(self.weight.dtype), self.bias, padding=self.padding)


class MaskedConv2d(FixedMaskConv2d):
    """PixelCNN masked convolution (mask type A or B, see :func:`raster_mask`)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, *, mask_type: str,
                 n_colors: int = 1, bias: bool = True):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        mask = raster_mask(kernel_size=ks, mask_type=mask_type, in_channels=in_channels,
                           out_channels=out_channels, n_colors=n_colors)
        super().__init__(in_channels, out_channels, mask=mask, bias=bias)
        self.mask_type = mask_type


def output_head(channels: int, hidden: int, num_classes: int) -> nn.Sequential:
    """ReLU - 1x1 - ReLU - 1x1 to K logits per pixel (1x1 convs only mix channels at a pixel)."""
    return nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 1), nn.ReLU(),
                         nn.Conv2d(hidden, num_classes, 1))


class NLL(NamedTuple):
    """Mean negative log-likelihood of a batch: nats per image and bits per dimension (pixel)."""
    nats: Tensor
    bits_per_dim: Tensor


class AutoregressiveImageModel(nn.Module):
    """Base class: exact log-likelihood and naive sampling for a causal ``forward``.

    Subclasses implement ``forward(inp, cond) -> logits (B, K, H, W)`` with ``inp`` a float map
    (B, 1, H, W) (see :meth:`encode`) and, if conditional, override :meth:`check_cond`.
    """

    def __init__(self, *, num_classes: int, image_shape=None):
        super().__init__()
        self.num_classes = _check_int("num_classes", num_classes, minimum=2)
        self.image_shape = None if image_shape is None else _check_shape(image_shape)

    # --- inputs -------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def check_images(self, x) -> Tensor:
        """Validate a (B, H, W) integer image batch with values in [0, K)."""
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"x must be a (B, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        if x.is_floating_point() or x.is_complex():
            raise ValueError(f"x must hold integer pixel values, got dtype {x.dtype}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_classes):
            raise ValueError(f"pixel values must lie in [0, {self.num_classes})")
        return x.long()

    def check_cond(self, cond, batch: int):
        """Validate the conditioning input; unconditional models accept only ``None``."""
        if cond is not None:
            raise ValueError(f"{type(self).__name__} is unconditional; cond must be None")
        return None

    def encode(self, x: Tensor) -> Tensor:
        """Map integer pixels in [0, K) to a float map in [-1, 1] of shape (B, 1, H, W)."""
        return (x.to(self.dtype) * (2.0 / (self.num_classes - 1)) - 1.0).unsqueeze(1)

    # --- likelihood ---------------------------------------------------------------------------
    def logits(self, x: Tensor, *, cond=None) -> Tensor:
        """Teacher-forced logits (B, K, H, W): logits at pixel i are for p(x_i | x_<i)."""
        x = self.check_images(x)
        return self(self.encode(x), self.check_cond(cond, x.shape[0]))

    def log_prob(self, x: Tensor, *, cond=None) -> Tensor:
        """Exact log p(x) in nats, shape (B,): sum over pixels of log-softmax picked at x."""
        x = self.check_images(x)
        logp = F.log_softmax(self.logits(x, cond=cond), dim=1)
        return logp.gather(1, x.unsqueeze(1)).squeeze(1).flatten(1).sum(1)

    def nll(self, x: Tensor, *, cond=None) -> NLL:
        """Mean NLL of the batch in nats per image and in bits per dimension."""
        x = self.check_images(x)
        nats = -self.log_prob(x, cond=cond).mean()
        return NLL(nats, nats / (x.shape[1] * x.shape[2] * math.log(2)))

    # --- sampling -----------------------------------------------------------------------------
    def stepper(self, *, batch: int, image_shape: tuple[int, int], cond=None, cached: bool = True) -> "Stepper":
        """A :class:`Stepper` that yields next-pixel logits in raster order.

        ``cached=False`` gives :class:`NaiveStepper` (re-runs the whole network per pixel).
        Subclasses override :meth:`cached_stepper` to reuse work between pixels; the base class
        has no cache and falls back to the naive stepper.
        """
        _check_int("batch", batch, minimum=1)
        height, width = _check_shape(image_shape)
        cond = self.check_cond(cond, batch)
        if cached:
            stepper = self.cached_stepper(batch=batch, image_shape=(height, width), cond=cond)
            if stepper is not None:
                return stepper
        return NaiveStepper(self, batch=batch, image_shape=(height, width), cond=cond)

    def cached_stepper(self, *, batch: int, image_shape: tuple[int, int], cond) -> "Stepper | None":
        """Override to return a caching :class:`Stepper` (``cond`` is already validated)."""
        return None

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator, cond=None, image_shape=None,
               cached: bool = True):
        """Draw ``n`` images pixel by pixel in raster order.

        ``cached=True`` uses the model's caching stepper where it has one (same distribution,
        equal up to float rounding; see the cached == naive tests); ``cached=False`` re-runs the
        whole network once per pixel (O(H*W) passes). Pixels not yet drawn are 0 in the network
        input; causality makes their value irrelevant.
        Returns ``(images (n, H, W) long, log_prob (n,))`` with the log-probability accumulated
        from the very softmaxes that were sampled.
        """
        _check_int("n", n, minimum=1)
        if not isinstance(generator, torch.Generator):
            raise ValueError("generator must be a torch.Generator (sampling must be reproducible)")
        height, width = _check_shape(self.image_shape if image_shape is None else image_shape)
        stepper = self.stepper(batch=n, image_shape=(height, width), cond=cond, cached=cached)
        x = torch.zeros(n, height, width, dtype=torch.long)
        total = torch.zeros(n, dtype=self.dtype)
        for r in range(height):
            for c in range(width):
                logp = F.log_softmax(stepper.logits(x, r, c), dim=1)
                v = torch.multinomial(logp.exp().float(), 1, generator=generator).squeeze(1)
                x[:, r, c] = v
                total += logp.gather(1, v.unsqueeze(1)).squeeze(1)
        return x, total


class Stepper:
    """Next-pixel logits in raster order: the engine of sampling and of the readout coder.

    Call :meth:`logits` for (0, 0), (0, 1), ... strictly in raster order, each time with the
    batch ``x`` (B, H, W) long whose pixels before (r, c) are final (later pixels may hold
    anything and must not matter). Returns the logits (B, K) of p(x[:, r, c] | x_<(r, c)).
    A stepper is a pure function of the pixels before (r, c): two steppers fed the same pixels
    return bit-identical logits (encoder and decoder of the readout coder rely on this).
    """

    def __init__(self, model: AutoregressiveImageModel, *, batch: int, image_shape: tuple[int, int], cond):
        self.model, self.batch, self.cond = model, batch, cond
        self.height, self.width = image_shape
        self._next = 0

    def _advance(self, x: Tensor, r: int, c: int) -> None:
        if r * self.width + c != self._next:
            raise ValueError(f"pixels must be visited in raster order: expected index {self._next}, got ({r}, {c})")
        if tuple(x.shape) != (self.batch, self.height, self.width):
            raise ValueError(f"x must have shape {(self.batch, self.height, self.width)}, got {tuple(x.shape)}")
        self._next += 1

    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        raise NotImplementedError


class NaiveStepper(Stepper):
    """Re-runs the full network on the whole image for every pixel (reference; O(H*W) passes).

    Pixels at and after (r, c) are zeroed before each pass so the result depends only on the past.
    """

    @torch.no_grad()
    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        self._advance(x, r, c)
        past = x.clone()
        flat = past.view(self.batch, -1)
        flat[:, r * self.width + c:] = 0
        return self.model(self.model.encode(past), self.cond)[:, :, r, c]
