"""The ``scamp_shape`` mosaic: 16 feature maps tiled 4x4 into one square image.

Map ``k`` sits at tile row ``k % 4`` and tile column ``k // 4`` (column-major), as measured on the
authors' reference intermediates (``1_conv1`` and ``2_conv1post`` match only in this order).
"""
from __future__ import annotations

import numpy as np


def to_mosaic(maps: np.ndarray) -> np.ndarray:
    """(..., 16, h, w) -> (..., 4h, 4w)."""
    maps = np.asarray(maps)
    *lead, k, h, w = maps.shape
    if k != 16:
        raise ValueError(f"to_mosaic needs 16 maps, got {k}")
    # (..., col, row, h, w) -> (..., row, h, col, w)
    tiles = maps.reshape(*lead, 4, 4, h, w)
    nd = len(lead)
    order = list(range(nd)) + [nd + 1, nd + 2, nd, nd + 3]
    return tiles.transpose(order).reshape(*lead, 4 * h, 4 * w)


def from_mosaic(image: np.ndarray) -> np.ndarray:
    """(..., 4h, 4w) -> (..., 16, h, w); the inverse of :func:`to_mosaic`."""
    image = np.asarray(image)
    *lead, hh, ww = image.shape
    h, w = hh // 4, ww // 4
    tiles = image.reshape(*lead, 4, h, 4, w)
    nd = len(lead)
    order = list(range(nd)) + [nd + 2, nd, nd + 1, nd + 3]
    return tiles.transpose(order).reshape(*lead, 16, h, w)
