"""Diagonal BiLSTM (van den Oord et al. 2016, section 3.2).

Skewing the map (row r shifted right by r) turns diagonals into columns, so one LSTM step per
skewed column updates a whole diagonal at once. In skewed coordinates the 2 x 1 state-to-state
convolution over the previous column reads rows r-1 and r, i.e. the pixel *above* and the pixel
to the *left* in the original image; the state at (r, c) therefore sees everything above-left.
The second direction runs on the width-flipped map (sees above-right and the row to the right,
which includes the future), so its output is shifted down by one row: it then sees only rows
strictly above. Together: the full context of every previous pixel, in a single layer.

One detail the paper leaves implicit: if the right-to-left direction only read the mask-A input
features, the last pixels of the previous row (r-1, c') with c' > c + k//2 (k the first kernel)
would never reach pixel (r, c) at any depth, because no feature at row r-1 contains the pixel
(r-1, W-1) itself. So in the first layer the right-to-left direction also reads the raw pixel
through a 1x1 convolution; that is causal because its output is shifted down a row.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, _check_int, output_head


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1), row r shifted right by r (zeros elsewhere)."""
    height = x.shape[2]
    return torch.stack([F.pad(x[:, :, r], (r, height - 1 - r)) for r in range(height)], dim=2)


def unskew(x: Tensor, *, width: int) -> Tensor:
    """Inverse of :func:`skew`: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    return torch.stack([x[:, :, r, r:r + width] for r in range(x.shape[2])], dim=2)


class DiagonalLSTM(nn.Module):
    """One direction: input-to-state 1x1 (mask B), state-to-state 2x1 along the skewed column."""

    def __init__(self, channels: int, hidden: int, *, raw_channels: int = 0):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, 1, mask_type="B")
        self.raw_to_state = nn.Conv2d(raw_channels, 4 * hidden, 1, bias=False) if raw_channels else None
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 2)

    def forward(self, x: Tensor, raw: Tensor | None = None) -> Tensor:
        """``raw`` (only with ``raw_channels``): extra input map that may include the pixel."""
        batch, _, height, width = x.shape
        gates_in = self.input_to_state(x)
        if self.raw_to_state is not None:
            gates_in = gates_in + self.raw_to_state(raw)
        gates_in = skew(gates_in)
        h = x.new_zeros(batch, self.hidden, height)
        c = torch.zeros_like(h)
        cols = []
        for j in range(gates_in.shape[3]):
            # pad one row on top: new state at row r reads old states at rows r-1 and r
            recur = self.state_to_state(F.pad(h, (1, 0)))
            o, f, i, g = (gates_in[:, :, :, j] + recur).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            cols.append(h)
        return unskew(torch.stack(cols, dim=3), width=width)


class DiagonalBiLSTMLayer(nn.Module):
    """Both directions, the right-to-left one shifted down a row; 1x1 projection + residual."""

    def __init__(self, channels: int, hidden: int, *, raw_channels: int = 0):
        super().__init__()
        self.left_to_right = DiagonalLSTM(channels, hidden)
        self.right_to_left = DiagonalLSTM(channels, hidden, raw_channels=raw_channels)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor, raw: Tensor | None = None) -> Tensor:
        forward_map = self.left_to_right(x)
        backward_map = self.right_to_left(x.flip(3), None if raw is None else raw.flip(3)).flip(3)
        backward_map = F.pad(backward_map, (0, 0, 1, 0))[:, :, :-1]   # shift down by one row
        return x + self.out(forward_map + backward_map)


class DiagonalBiLSTM(AutoregressiveImageModel):
    """PixelRNN with ``num_layers`` Diagonal BiLSTM layers of ``hidden`` units per direction."""

    def __init__(self, *, num_classes: int, hidden: int = 16, num_layers: int = 2,
                 first_kernel: int = 7, image_shape=None):
        super().__init__(num_classes=num_classes, image_shape=image_shape)
        _check_int("hidden", hidden, minimum=1)
        _check_int("num_layers", num_layers, minimum=1)
        _check_int("first_kernel", first_kernel, minimum=3)   # mask A at size 1 would see nothing
        self.first = MaskedConv2d(1, 2 * hidden, first_kernel, mask_type="A")
        self.layers = nn.ModuleList(DiagonalBiLSTMLayer(2 * hidden, hidden, raw_channels=1 if i == 0 else 0)
                                    for i in range(num_layers))
        self.head = output_head(2 * hidden, 2 * hidden, num_classes)

    def forward(self, inp: Tensor, cond=None) -> Tensor:
        x = self.first(inp)
        for i, layer in enumerate(self.layers):
            x = layer(x, inp if i == 0 else None)
        return self.head(x)
