"""Generative PixelRNN family: exact log-likelihood and sampling over discrete pixels.

PixelCNN, Row LSTM, Diagonal BiLSTM and (conditional) Gated PixelCNN, all sharing
:class:`~pixelrnn.generative.common.AutoregressiveImageModel` (``log_prob``, ``nll``, ``sample``).
"""
from .common import NLL, AutoregressiveImageModel, FixedMaskConv2d, MaskedConv2d, NaiveStepper, Stepper, raster_mask
from .diagbilstm import DiagonalBiLSTM
from .gated import GatedPixelCNN
from .pixelcnn import PixelCNN
from .rowlstm import RowLSTM
from .vlae import VLAE

__all__ = ["NLL", "AutoregressiveImageModel", "FixedMaskConv2d", "MaskedConv2d", "raster_mask", "Stepper",
           "NaiveStepper", "PixelCNN", "RowLSTM", "DiagonalBiLSTM", "GatedPixelCNN", "VLAE"]
