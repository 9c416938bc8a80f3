"""Row LSTM (van den Oord et al. 2016, section 3.1).

The image is processed one row at a time. Each Row LSTM layer computes its gates from
  * input-to-state: a 1 x 3 convolution along the current row of the layer input, mask B
    (left neighbour and the pixel's own features, which already exclude the pixel), and
  * state-to-state: a 1D convolution (k=3) over the previous row's hidden state,
so the state at (r, c) sees (r-1, c-1..c+1), and recursively a triangle above the pixel.
A first k x k mask-A convolution supplies the current row's left context; each layer adds a
1x1-projected residual, and a 1x1 head gives K logits per pixel.

Sampling: :class:`CachedRowLSTMStepper` keeps each layer's (h, c) states of the previous row and
computes, at each new pixel, every layer at that pixel only: one input-to-state product on the
pixel's and its left neighbour's features plus one LSTM step from the cached previous-row state.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, Stepper, _check_int, output_head
from .stepping import PixelInput, dense, lstm_step


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
        # unbind once: indexing gates_in[:, :, r] in the loop would make backward allocate and
        # fill a full-size zero gradient per row (quadratic in the image height)
        for gates_r in gates_in.unbind(2):
            o, f, i, g = (gates_r + self.state_to_state(h)).chunk(4, dim=1)
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

    def cached_stepper(self, *, batch: int, image_shape: tuple[int, int], cond) -> Stepper | None:
        if type(self).forward is not RowLSTM.forward:   # a subclass changed the network
            return None
        return CachedRowLSTMStepper(self, batch=batch, image_shape=image_shape, cond=cond)


class CachedRowLSTMStepper(Stepper):
    """Row LSTM stepper that computes every layer at the new pixel only.

    Per layer it keeps the (h, c) states of the finished row r - 1 (W, B, hidden) and, once per
    row (at c == 0), the state-to-state convolution of that row plus the input-to-state bias.
    At (r, c): the first mask-A convolution reads the cached encoded pixels before (r, c); then
    per layer, gates = cached row term[c] + W_centre x_l(r, c) + W_left x_l(r, c - 1), one LSTM
    step from c(r - 1, c), and the residual 1x1 projection gives x_{l+1}(r, c). Nothing at rows
    < r is recomputed.
    """

    def __init__(self, model: RowLSTM, *, batch: int, image_shape: tuple[int, int], cond):
        super().__init__(model, batch=batch, image_shape=image_shape, cond=cond)
        height, width = image_shape
        with torch.no_grad():
            self._first = PixelInput(model, model.first, batch=batch, height=height, width=width)
            self._layers = []
            for layer in model.layers:
                conv = layer.input_to_state
                w = (conv.weight * conv.mask.to(conv.weight.dtype)).detach()   # (4h, C, 1, 3)
                if w.shape[-2:] != (1, 3) or w[:, :, :, 2].any():
                    raise ValueError("Row LSTM input-to-state must be a 1x3 mask-B convolution")
                s2s = layer.state_to_state
                self._layers.append(dict(
                    hidden=layer.hidden,
                    w_left=w[:, :, 0, 0].t().contiguous(), w_centre=w[:, :, 0, 1].t().contiguous(),
                    b_in=conv.bias.detach(), w_s2s=s2s.weight.detach(), b_s2s=s2s.bias.detach(),
                    out=dense(layer.out)))
            self._head = (dense(model.head[1]), dense(model.head[3]))
            dtype = self._first.buf.dtype
            # per layer: states of the current row (being filled) and of the previous row
            self._h = [torch.zeros(width, batch, lay["hidden"], dtype=dtype) for lay in self._layers]
            self._c = [torch.zeros(width, batch, lay["hidden"], dtype=dtype) for lay in self._layers]
            self._c_above = [None] * len(self._layers)
            self._row_term = [None] * len(self._layers)
            self._x_left = [None] * len(self._layers)

    def _start_row(self) -> None:
        """Row r begins: the states of row r - 1 are final; cache what row r needs from them."""
        for i, lay in enumerate(self._layers):
            h_above = self._h[i]                          # zeros for r == 0 (top padding)
            term = F.conv1d(h_above.permute(1, 2, 0), lay["w_s2s"], lay["b_s2s"], padding=1)
            self._row_term[i] = (term + lay["b_in"][:, None]).permute(2, 0, 1).contiguous()   # (W, B, 4h)
            self._c_above[i] = self._c[i]
            self._h[i] = torch.empty_like(h_above)
            self._c[i] = torch.empty_like(h_above)

    @torch.no_grad()
    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        self._advance(x, r, c)
        if c == 0:
            self._start_row()
        h = self._first.step(x, r, c)
        for i, lay in enumerate(self._layers):
            gates = torch.addmm(self._row_term[i][c], h, lay["w_centre"])
            if c > 0:
                gates = torch.addmm(gates, self._x_left[i], lay["w_left"])
            state, cell = lstm_step(gates, self._c_above[i][c], lay["hidden"])
            self._h[i][c] = state
            self._c[i][c] = cell
            self._x_left[i] = h
            b_out, w_out = lay["out"]
            h = h + torch.addmm(b_out, state, w_out)
        (b1, w1), (b2, w2) = self._head
        return torch.addmm(b2, torch.addmm(b1, torch.relu(h), w1).relu_(), w2)
