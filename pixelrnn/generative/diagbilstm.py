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

Sampling: :class:`CachedDiagonalBiLSTMStepper` runs the recurrences in original coordinates. In
the skewed loop the left-to-right state at (r, c) reads h(r - 1, c) (above) and (h, c)(r, c - 1)
(left; the cell state runs along the row). Left of column 0 sit the skew's padding states: they
see only biases, so the left neighbour of (r, 0) is a constant P_{r-1} (P_{-1} = 0, P_j = one
bias-only LSTM step from P_{j-1}). The right-to-left output used at row r is that direction's
row r - 1, computed once per row from finished rows; the left-to-right direction advances one
cell per pixel in every layer.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import AutoregressiveImageModel, MaskedConv2d, Stepper, _check_int, output_head
from .stepping import PixelInput, dense, lstm_step


def skew(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C, H, W + H - 1), row r shifted right by r (zeros elsewhere).

    Pure data movement by padding and reshaping (no per-row loop, so backward stays linear):
    pad each row to W + H, flatten, and re-read the first H * (W + H - 1) values with rows of
    W + H - 1; element (r, c) at flat index r(W+H) + c lands at (r, r + c).
    """
    b, ch, height, width = x.shape
    flat = F.pad(x, (0, height)).flatten(2)[:, :, :height * (width + height - 1)]
    return flat.reshape(b, ch, height, width + height - 1)


def unskew(x: Tensor, *, width: int) -> Tensor:
    """Inverse of :func:`skew`: (B, C, H, W + H - 1) -> (B, C, H, W)."""
    b, ch, height, _ = x.shape
    flat = F.pad(x.flatten(2), (0, height))
    return flat.reshape(b, ch, height, width + height)[:, :, :, :width]


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
        # channels-last per skewed column: (W', B, H, 4h), contiguous, unbound once (indexing a
        # column per step would make backward allocate a full-size zero gradient every step)
        columns = gates_in.permute(3, 0, 2, 1).contiguous().unbind(0)
        w = self.state_to_state.weight                          # (4h, h, 2): taps row r-1, row r
        w_s2s = torch.cat([w[:, :, 0], w[:, :, 1]], dim=1)      # the 2x1 conv as one linear map
        h = x.new_zeros(batch, height, self.hidden)
        c = torch.zeros_like(h)
        cols = []
        for gates_j in columns:
            # new state at row r reads the previous column's states at rows r-1 (zero above row 0) and r
            stacked = torch.cat([F.pad(h, (0, 0, 1, 0))[:, :-1], h], dim=2)     # (B, H, 2h)
            o, f, i, g = (gates_j + F.linear(stacked, w_s2s, self.state_to_state.bias)).chunk(4, dim=2)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            cols.append(h)
        return unskew(torch.stack(cols, dim=3).transpose(1, 2), width=width)   # (B, h, H, W')


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

    def cached_stepper(self, *, batch: int, image_shape: tuple[int, int], cond) -> Stepper | None:
        if type(self).forward is not DiagonalBiLSTM.forward:   # a subclass changed the network
            return None
        return CachedDiagonalBiLSTMStepper(self, batch=batch, image_shape=image_shape, cond=cond)


class _Direction:
    """Weights of one :class:`DiagonalLSTM` direction for step-wise use in original coordinates."""

    def __init__(self, lstm: DiagonalLSTM, *, height: int):
        conv = lstm.input_to_state
        w_in = (conv.weight * conv.mask.to(conv.weight.dtype)).detach()
        self.hidden = hidden = lstm.hidden
        self.w_in = w_in[:, :, 0, 0]                                   # (4h, C)
        self.w_in_t = self.w_in.t().contiguous()
        self.w_raw = None if lstm.raw_to_state is None else lstm.raw_to_state.weight.detach()[:, :, 0, 0]
        w_s2s = lstm.state_to_state.weight.detach()                    # (4h, h, 2): [row r-1, row r]
        self.w_up, self.w_left = w_s2s[:, :, 0], w_s2s[:, :, 1]
        self.w_left_t = self.w_left.t().contiguous()
        self.b_in = conv.bias.detach()
        self.b_s2s = lstm.state_to_state.bias.detach()
        # pad[r]: (h, c) of the skew padding left of row r's first pixel, i.e. P_{r-1}
        h = w_in.new_zeros(1, hidden)
        cell = torch.zeros_like(h)
        self.pad = [(h, cell)]
        for _ in range(height - 1):
            gates = F.linear(h, self.w_up) + F.linear(h, self.w_left) + self.b_s2s
            h, cell = lstm_step(gates, cell, hidden)
            self.pad.append((h, cell))


class CachedDiagonalBiLSTMStepper(Stepper):
    """Diagonal BiLSTM stepper: one left-to-right LSTM cell per layer per pixel.

    Per layer it caches: the left-to-right hidden states of row r - 1 (W, B, h) turned, once per
    row, into their state-to-state term plus biases; the running (h, c) of the pixel to the left;
    the layer input of every pixel of the current row (W, B, C); and the right-to-left output of
    row r (that direction's states at row r - 1). At c == 0 the right-to-left direction of each
    layer scans row r - 1 from right to left (its input row and, in the first layer, the raw
    pixel row are final by then). At (r, c), for each layer l: left-to-right cell from the layer
    input x_l(r, c), h(r - 1, c) and (h, c)(r, c - 1); x_{l+1} = x_l + W_out(h + h_rl(r - 1, c)) + b.
    """

    def __init__(self, model: DiagonalBiLSTM, *, batch: int, image_shape: tuple[int, int], cond):
        super().__init__(model, batch=batch, image_shape=image_shape, cond=cond)
        height, width = image_shape
        with torch.no_grad():
            self._first = PixelInput(model, model.first, batch=batch, height=height, width=width)
            dtype = self._first.buf.dtype
            self._layers = []
            for layer in model.layers:
                lr = _Direction(layer.left_to_right, height=height)
                rl = _Direction(layer.right_to_left, height=height)
                if lr.w_raw is not None:
                    raise ValueError("the left-to-right direction may not read the raw pixels")
                channels, hidden = lr.w_in.shape[1], lr.hidden
                self._layers.append(dict(
                    lr=lr, rl=rl, out=dense(layer.out),
                    h_lr=torch.zeros(width, batch, hidden, dtype=dtype),    # row being filled / row above
                    h_rl=torch.zeros(width, batch, hidden, dtype=dtype),    # right-to-left, row r - 1
                    x_row=torch.zeros(width, batch, channels, dtype=dtype),  # layer input, current row
                    up=None, left=None))
            self._head = (dense(model.head[1]), dense(model.head[3]))

    def _start_row(self, x: Tensor, r: int) -> None:
        """Row r begins: rows < r are final. Run the right-to-left scans over row r - 1 and cache
        the left-to-right terms that come from row r - 1."""
        raw = None
        if r > 0:
            raw = self.model.encode(x[:, r - 1:r, :]).reshape(self.batch, self.width).t().unsqueeze(2)  # (W, B, 1)
        for lay in self._layers:
            lr, rl = lay["lr"], lay["rl"]
            if r > 0:
                gates_row = (F.linear(lay["x_row"], rl.w_in, rl.b_in + rl.b_s2s)
                             + F.linear(lay["h_rl"], rl.w_up))        # h_rl: row r - 2 (zeros if r == 1)
                if rl.w_raw is not None:
                    gates_row = gates_row + F.linear(raw, rl.w_raw)
                h, cell = (t.expand(self.batch, -1) for t in rl.pad[r - 1])
                h_rl = torch.empty_like(lay["h_rl"])
                for c in range(self.width - 1, -1, -1):
                    h, cell = lstm_step(torch.addmm(gates_row[c], h, rl.w_left_t), cell, rl.hidden)
                    h_rl[c] = h
                lay["h_rl"] = h_rl
            lay["up"] = F.linear(lay["h_lr"], lr.w_up, lr.b_in + lr.b_s2s)   # (W, B, 4h)
            lay["h_lr"] = torch.empty_like(lay["h_lr"])
            lay["left"] = tuple(t.expand(self.batch, -1) for t in lr.pad[r])

    @torch.no_grad()
    def logits(self, x: Tensor, r: int, c: int) -> Tensor:
        self._advance(x, r, c)
        if c == 0:
            self._start_row(x, r)
        h = self._first.step(x, r, c)
        for lay in self._layers:
            lr = lay["lr"]
            lay["x_row"][c] = h
            gates = torch.addmm(torch.addmm(lay["up"][c], h, lr.w_in_t), lay["left"][0], lr.w_left_t)
            state, cell = lstm_step(gates, lay["left"][1], lr.hidden)
            lay["left"] = (state, cell)
            lay["h_lr"][c] = state
            if r > 0:
                state = state + lay["h_rl"][c]
            b_out, w_out = lay["out"]
            h = h + torch.addmm(b_out, state, w_out)
        (b1, w1), (b2, w2) = self._head
        return torch.addmm(b2, torch.addmm(b1, torch.relu(h), w1).relu_(), w2)
