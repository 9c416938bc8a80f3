"""Binarization with straight-through estimators, chosen by registered name (as larq does).

Every quantizer's forward is ``sign(x)`` with sign(0) = +1; they differ in the surrogate gradient:

- ``ste_sign``: gradient 1 where |x| <= 1, else 0 (larq's SteSign).
- ``tanh_mx``: gradient ``m * (1 - tanh(m x)^2)`` (the authors' estimator; they use m = 2).
"""
from __future__ import annotations

from typing import Callable

import torch


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (the hardware's comparator).

    On floats: copysign(1, x + 0), where adding +0 turns -0 into +0; the same values as
    ``where(x >= 0, 1, -1)`` (NaN aside) in two fast passes, ~7x faster on a CPU than the where."""
    one = torch.ones((), dtype=x.dtype, device=x.device)
    if not x.is_floating_point():
        return torch.where(x >= 0, one, -one)
    return torch.copysign(one, x + 0.0)


def ste_sign_grad(x: torch.Tensor, m: float = 2.0) -> torch.Tensor:
    """d sign / dx as ``ste_sign`` estimates it: 1 where |x| <= 1, else 0."""
    return (x.abs() <= 1).to(x.dtype)


def tanh_mx_grad(x: torch.Tensor, m: float = 2.0) -> torch.Tensor:
    """d sign / dx as ``tanh_mx`` estimates it: m (1 - tanh(m x)^2).

    Computed in place in one fresh tensor: the same float32 bits as the written-out formula, without
    its four temporaries (each a page fault per 4 kB of a full-resolution map on every training step)."""
    t = torch.mul(x, m).tanh_()
    return t.mul_(t).neg_().add_(1).mul_(m)


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ste_sign_grad(x)


class _TanhMx(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, m):
        ctx.save_for_backward(x)
        ctx.m = m
        return sign(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return tanh_mx_grad(x, ctx.m).mul_(grad), None


def _ste_sign(x: torch.Tensor, m: float) -> torch.Tensor:
    return _SteSign.apply(x)


def _tanh_mx(x: torch.Tensor, m: float) -> torch.Tensor:
    return _TanhMx.apply(x, m)


QUANTIZERS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "ste_sign": _ste_sign,
    "tanh_mx": _tanh_mx,
}


# name -> its surrogate derivative (used where a fused kernel applies the chain rule itself)
SURROGATES: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "ste_sign": ste_sign_grad,
    "tanh_mx": tanh_mx_grad,
}
assert set(SURROGATES) == set(QUANTIZERS)


def get_surrogate(name: str, *, m: float = 2.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The surrogate derivative of the quantizer ``name`` (what its backward multiplies by)."""
    get_quantizer(name, m=m)
    fn = SURROGATES[name]
    return lambda x: fn(x, m)


def get_quantizer(name: str, *, m: float = 2.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """The binarizer registered as ``name``, with its slope ``m`` bound (used by ``tanh_mx``)."""
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r}; choose from {sorted(QUANTIZERS)}")
    if not (m > 0):
        raise ValueError(f"quantizer slope m must be > 0, got {m}")
    fn = QUANTIZERS[name]
    return lambda x: fn(x, m)
