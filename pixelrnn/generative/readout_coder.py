"""Lossless compression of sensor readouts: a Gated PixelCNN prior + arithmetic coding (torch side).

The sensor sends one H x W readout of K-level symbols per window (64 x 64 1-bit readouts are
512 raw bytes). A small :class:`~pixelrnn.generative.gated.GatedPixelCNN` trained on readouts
gives p(x_i | x_<i) for every pixel in raster order; coding each pixel with an arithmetic coder
under that distribution costs about ``-log2 p(x)`` bits for the whole readout.

:class:`ReadoutCoder` is a thin wrapper: the torch model -> float64 copy ->
:func:`~pixelrnn.generative.gated.gated_prior_arrays` -> :class:`core.prior_coder.PriorCoder`,
the torch-free coder the edge device runs. Encoding, decoding, the payload format (a CRC32 of the
symbols, then the arithmetic code) and :attr:`prior_hash` are the PriorCoder's, so
``ReadoutCoder(model).save(path)`` then ``core.prior_coder.load_prior(path)`` gives a coder that
produces the same payload bytes. See :mod:`core.prior_coder` for why encoder and decoder build
bit-identical frequency tables (one procedure, float64, batch size 1, the cached stepper rather
than the teacher-forced pass) and the caveat: bit-identical floats need the same numpy/BLAS build
and CPU dispatch on both ends (a mismatch raises :class:`core.prior_coder.PriorMismatch`).
Only :meth:`ReadoutCoder.ideal_bits` (teacher-forced ``-log2 p``, for reporting) uses torch.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from core.arith import check_precision_bits
from core.prior_coder import PriorCoder, PriorMismatch, check_symbols

from .gated import GatedPixelCNN, gated_prior_arrays, gated_prior_meta

__all__ = ["ReadoutCoder", "PriorCoder", "PriorMismatch"]


class ReadoutCoder:
    """Lossless coder of (H, W) symbol arrays in [0, K) under an unconditional Gated PixelCNN prior.

    The coder keeps its own float64 copy of ``model`` in eval mode: later changes to ``model``
    do not affect it (nor :attr:`prior_hash`).
    """

    def __init__(self, model: GatedPixelCNN, *, precision_bits: int = 16):
        if not isinstance(model, GatedPixelCNN):
            raise ValueError(f"model must be a GatedPixelCNN, got {type(model).__name__}")
        if model.num_labels is not None or model.cond_dim is not None:
            raise ValueError("model must be unconditional (no num_labels / cond_dim): a readout carries no label")
        if model.num_classes > 256:
            raise ValueError(f"num_classes must be <= 256 (symbols are decoded as uint8), got {model.num_classes}")
        self.precision_bits = check_precision_bits(precision_bits)
        if model.num_classes > 1 << self.precision_bits:
            raise ValueError(f"precision_bits={precision_bits} is too small for K={model.num_classes} symbols")
        self.num_classes = model.num_classes
        self._model = copy.deepcopy(model).double().eval().requires_grad_(False)
        self.coder = PriorCoder(gated_prior_arrays(self._model), gated_prior_meta(self._model),
                                precision_bits=self.precision_bits)

    @property
    def prior_hash(self) -> str:
        """16 hex chars identifying the float64 prior (see ``PriorCoder.prior_hash``): encoder and
        decoder must agree on it."""
        return self.coder.prior_hash

    def encode(self, symbols: np.ndarray) -> bytes:
        """Compress an (H, W) integer array with values in [0, K) -> 4-byte CRC32 of the symbols +
        arithmetic code. The shape is not stored."""
        return self.coder.encode(symbols)

    def decode(self, payload: bytes, *, shape: tuple[int, int]) -> np.ndarray:
        """Decompress a payload of :meth:`encode` -> (H, W) uint8. Needs the same prior
        (:attr:`prior_hash`); a payload from another prior raises ``PriorMismatch`` (a ValueError)."""
        return self.coder.decode(payload, shape=shape)

    def save(self, path):
        """Write the prior file the edge device loads (``core.prior_coder.load_prior``)."""
        return self.coder.save(path)

    def ideal_bits(self, symbols) -> float:
        """``-log2 p(symbols)`` under the float64 prior, teacher-forced (for reporting)."""
        sym = check_symbols(symbols, self.num_classes)
        with torch.no_grad():
            nats = -self._model.log_prob(torch.from_numpy(sym)[None]).item()
        return nats / math.log(2)
