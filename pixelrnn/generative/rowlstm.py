"""Row LSTM (van den Oord et al. 2016, section 3.1).

The image is processed one row at a time. Each Row LSTM layer computes its gates from
  * input-to-state: a 1 x 3 convolution along the current row of the layer input, mask B
    (left neighbour and the pixel's own features, which already exclude the pixel), and
  * state-to-state: a 1D convolution (k=3) over the previous row's hidden state,
so the state at (r, c) sees (r-1, c-1..c+1), and recursively a triangle above the pixel.
A first k x k mask-A convolution supplies the current row's left context; each layer adds a
1x1-projected residual, and a 1x1 head gives K logits per pixel.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, _check_int, output_head


class RowLSTMLayer(nn.Module):
    """One Row LSTM layer with a residual connection: (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input_to_state = MaskedConv2d(channels, 4 * hidden, (1, 3), mask_type="B")
        self.state_to_state = nn.Conv1d(hidden, 4 * hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        gates_in = self.input_to_state(x)
        h = x.new_zeros(batch, self.hidden, width)
        c = torch.zeros_like(h)
        rows = []
        for r in range(height):
            o, f, i, g = (gates_in[:, :, r] + self.state_to_state(h)).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            rows.append(h)
        return x + self.out(torch.stack(rows, dim=2))


class RowLSTM(AutoregressiveImageModel):
    """PixelRNN with ``num_layers`` Row LSTM layers of ``hidden`` units (stream width 2*hidden)."""

    def __init__(self, *, num_classes: int, hidden: int = 16, num_layers: int = 2,
                 first_kernel: int = 7, image_shape=None):
        super().__init__(num_classes=num_classes, image_shape=image_shape)
        _check_int("hidden", hidden, minimum=1)
        _check_int("num_layers", num_layers, minimum=1)
        _check_int("first_kernel", first_kernel, minimum=3)   # mask A at size 1 would see nothing
        self.first = MaskedConv2d(1, 2 * hidden, first_kernel, mask_type="A")
        self.layers = nn.Sequential(*[RowLSTMLayer(2 * hidden, hidden) for _ in range(num_layers)])
        self.head = output_head(2 * hidden, 2 * hidden, num_classes)

    def forward(self, inp: Tensor, cond=None) -> Tensor:
        return self.head(self.layers(self.first(inp)))
