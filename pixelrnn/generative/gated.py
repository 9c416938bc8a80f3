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

These dependencies make pixel-by-pixel evaluation cheap: :class:`GatedStepper` (the model's
cached stepper, used by ``sample`` and the readout coder) computes the vertical stack once per
row and advances the horizontal stack one column per pixel.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from core.prior_coder import GatedPriorNet

from .common import AutoregressiveImageModel, FixedMaskConv2d, Stepper, _check_int, output_head


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
                 cond_dim: int | None, cond_channels: int | None = None):
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
        if cond_channels:       # location-dependent conditioning: a 1x1 convolution of a map
            self.cond_v = nn.Conv2d(cond_channels, 2 * hidden, 1, bias=False)
            self.cond_h = nn.Conv2d(cond_channels, 2 * hidden, 1, bias=False)

    def forward(self, v: Tensor, h: Tensor, cond: Tensor | None):
        v_pre = self.v_conv(v)
        h_pre = self.h_conv(h) + self.v_to_h(v_pre)   # v_pre at (r, c) sees rows < r only
        if cond is not None and cond.dim() == 4:      # (B, C, H, W) map: not a function of x
            v_pre = v_pre + self.cond_v(cond)
            h_pre = h_pre + self.cond_h(cond)
        elif cond is not None:
            v_pre = v_pre + self.cond_v(cond)[:, :, None, None]
            h_pre = h_pre + self.cond_h(cond)[:, :, None, None]
        h_new = self.h_out(gate(h_pre))
        return gate(v_pre), (h_new if self.first else h + h_new)


class GatedPixelCNN(AutoregressiveImageModel):
    """Gated PixelCNN, optionally conditional.

    Conditioning: ``num_labels`` -> ``cond`` is a (B,) long tensor of class labels, embedded in
    ``embed_dim`` dims; ``cond_dim`` -> ``cond`` is any (B, cond_dim) float tensor;
    ``cond_channels`` -> ``cond`` is a (B, cond_channels, H, W) float map (the paper's
    location-dependent conditioning, e.g. a latent code decoded to image size), added through 1x1
    convolutions. At most one. Spatially conditioned models sample with the naive stepper.
    """

    def __init__(self, *, num_classes: int, hidden: int = 32, num_layers: int = 5,
                 kernel_size: int = 3, num_labels: int | None = None, cond_dim: int | None = None,
                 embed_dim: int = 16, cond_channels: int | None = None, image_shape=None):
        super().__init__(num_classes=num_classes, image_shape=image_shape)
        _check_int("hidden", hidden, minimum=1)
        _check_int("num_layers", num_layers, minimum=1)
        _check_int("kernel_size", kernel_size, minimum=3)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if sum(v is not None for v in (num_labels, cond_dim, cond_channels)) > 1:
            raise ValueError("give at most one of num_labels, cond_dim and cond_channels")
        self.cond_channels = None if cond_channels is None else _check_int("cond_channels", cond_channels, minimum=1)
        self.num_labels = None if num_labels is None else _check_int("num_labels", num_labels, minimum=1)
        self.cond_dim = None if cond_dim is None else _check_int("cond_dim", cond_dim, minimum=1)
        self.embedding = None
        vec_dim = self.cond_dim
        if self.num_labels is not None:
            self.embedding = nn.Embedding(self.num_labels, _check_int("embed_dim", embed_dim, minimum=1))
            vec_dim = embed_dim
        self.layers = nn.ModuleList(
            GatedLayer(1 if i == 0 else hidden, hidden, kernel_size=kernel_size, first=i == 0,
                       cond_dim=vec_dim, cond_channels=self.cond_channels) for i in range(num_layers))
        self.head = output_head(hidden, hidden, num_classes)

    def check_cond(self, cond, batch: int):
        if self.num_labels is None and self.cond_dim is None and self.cond_channels is None:
            return super().check_cond(cond, batch)
        if not isinstance(cond, Tensor):
            raise ValueError("this model is conditional: cond must be a tensor")
        if self.cond_channels is not None:
            if cond.dim() != 4 or cond.shape[:2] != (batch, self.cond_channels) or not cond.is_floating_point():
                raise ValueError(f"cond must be a ({batch}, {self.cond_channels}, H, W) float map, "
                                 f"got {cond.dtype} {tuple(cond.shape)}")
            return cond.to(self.dtype)
        if self.num_labels is not None:
            if cond.shape != (batch,) or cond.is_floating_point():
                raise ValueError(f"cond must be a ({batch},) integer label tensor, "
                                 f"got {cond.dtype} {tuple(cond.shape)}")
            if int(cond.min()) < 0 or int(cond.max()) >= self.num_labels:
                raise ValueError(f"labels must lie in [0, {self.num_labels})")
            return cond.long()
        if cond.shape != (batch, self.cond_dim):
            raise ValueError(f"cond must have shape ({batch}, {self.cond_dim}), got {tuple(cond.shape)}")
        return cond.to(self.dtype)

    def forward(self, inp: Tensor, cond=None) -> Tensor:
        if self.cond_channels is not None and tuple(cond.shape[2:]) != tuple(inp.shape[2:]):
            raise ValueError(f"the conditioning map is {tuple(cond.shape[2:])}, the image {tuple(inp.shape[2:])}")
        vec = self.embedding(cond) if self.embedding is not None else cond
        v = h = inp
        for layer in self.layers:
            v, h = layer(v, h, vec)
        return self.head(h)

    def cached_stepper(self, *, batch: int, image_shape: tuple[int, int], cond) -> "GatedStepper":
        """A :class:`GatedStepper` (row-cached vertical stack, per-pixel horizontal stack); None
        (the naive stepper) for a spatially conditioned model."""
        if self.cond_channels is not None:
            return None
        return GatedStepper(self, batch=batch, image_shape=image_shape, cond=cond)


def gated_prior_meta(model: GatedPixelCNN) -> dict[str, int]:
    """The integer metadata of :func:`gated_prior_arrays` (``core.prior_coder.META_KEYS``)."""
    first = model.layers[0]
    return {"num_classes": model.num_classes, "hidden": first.h_out.weight.shape[0],
            "kernel": first.h_conv.weight.shape[-1], "layers": len(model.layers)}


def gated_prior_arrays(model: GatedPixelCNN) -> dict[str, np.ndarray]:
    """The model's weights as the plain numpy matrices of ``core.prior_coder.prior_shapes`` (masked
    convolutions cut to their unmasked taps and flattened), in the model's dtype, snapshotted now.
    Conditioning projections are not included (a prior file is unconditional); :class:`GatedStepper`
    passes them separately."""
    p = model.layers[0].h_conv.weight.shape[-1] // 2

    def arr(t: Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().cpu().numpy())

    out = {}
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            k = layer.h_conv.weight.shape[-1]
            c_in, two_h = layer.v_conv.weight.shape[1], layer.v_conv.weight.shape[0]
            rows = taps = p if layer.first else p + 1     # unmasked kernel rows / taps
            wv = (layer.v_conv.weight * layer.v_conv.mask.to(model.dtype))[:, :, :rows, :]
            wh = (layer.h_conv.weight * layer.h_conv.mask.to(model.dtype))[:, :, 0, :taps]
            out.update({
                f"layer{i}.v_w": arr(wv.permute(2, 3, 1, 0).reshape(rows * k * c_in, two_h)),
                f"layer{i}.v_b": arr(layer.v_conv.bias),
                f"layer{i}.h_w": arr(wh.permute(2, 1, 0).reshape(taps * c_in, two_h)),
                f"layer{i}.h_b": arr(layer.h_conv.bias),
                f"layer{i}.link_w": arr(layer.v_to_h.weight[:, :, 0, 0].t()),
                f"layer{i}.link_b": arr(layer.v_to_h.bias),
                f"layer{i}.out_w": arr(layer.h_out.weight[:, :, 0, 0].t()),
                f"layer{i}.out_b": arr(layer.h_out.bias)})
        head1, head2 = model.head[1], model.head[3]
        out.update({"head.w1": arr(head1.weight[:, :, 0, 0].t()), "head.b1": arr(head1.bias),
                    "head.w2": arr(head2.weight[:, :, 0, 0].t()), "head.b2": arr(head2.bias)})
    return out


class GatedStepper(Stepper):
    """Cached next-pixel logits of a :class:`GatedPixelCNN` (same math as :class:`NaiveStepper`).

    The vertical stack is computed once per row, the horizontal stack one column per pixel; the
    numeric work is ``core.prior_coder.GatedPriorSteps`` (numpy, the one implementation shared with
    the torch-free readout coder) on :func:`gated_prior_arrays` snapshotted when the stepper is
    built (later changes to the model are not seen), in the model's dtype. A conditional model's
    label embedding / vector is projected here (``cond_v``, ``cond_h`` of every layer) and passed
    in as arrays. The stepper reads only pixels before (r, c) of ``x`` (rows < r when a row starts,
    pixel (r, c-1) at each step), so its output is a pure function of the past pixels: the same
    past gives bit-identical logits (for a given batch size). The logits equal the naive stepper's
    up to float rounding (different summation order, sigmoid via tanh).
    """

    def __init__(self, model: GatedPixelCNN, *, batch: int, image_shape: tuple[int, int], cond):
        super().__init__(model, batch=batch, image_shape=image_shape, cond=cond)
        net = GatedPriorNet(gated_prior_arrays(model), gated_prior_meta(model))
        cond_v = cond_h = None
        if cond is not None:
            with torch.no_grad():
                vec = model.embedding(cond) if model.embedding is not None else cond.to(model.dtype)
                cond_v = [np.ascontiguousarray(layer.cond_v(vec).cpu().numpy()) for layer in model.layers]
                cond_h = [np.ascontiguousarray(layer.cond_h(vec).cpu().numpy()) for layer in model.layers]
        self._steps = net.steps(batch=batch, width=self.width, cond_v=cond_v, cond_h=cond_h)

    def logits_numpy(self, x: np.ndarray, r: int, c: int) -> np.ndarray:
        """:meth:`logits` on a numpy (B, H, W) integer array -> numpy (B, K) logits (the same
        computation; saves the tensor wrapping in tight loops)."""
        self._advance(x, r, c)
        return self._steps.logits(x, r, c)

    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        # numpy only (no autograd involved): no torch.no_grad context needed per pixel
        return torch.from_numpy(self.logits_numpy(x.numpy(force=True), r, c))
