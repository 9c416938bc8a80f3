"""The PixelRNN model (So, Bose, Dudek, Wetzstein, CVPR 2024) in PyTorch, with its dataclass config.

Per frame, in the pixel array: binary input ``sign(x - theta0)``; 16 binary 5x5 convolutions, ReLU,
4x4 max-pool, ``sign(v - thresh1)``, the 4x4 mosaic ``x_t``. Then the binary RNN cell::

    f_t = sign(W_fi * x_t + W_fh * h_{t-1} - rnn_threshold)     h_0 = +1
    h_t = f_t . h_{t-1}
    o_t = W_oi * x_t + W_oh * h_{t-1}

Off the sensor: the 8-bit readout of o_T, then 1x1 conv (one binary weight), BatchNorm2d(1), tanh,
minus thresh3, Linear(4096 -> classes).

That is the authors' network and this file's default. The config generalises the readout
(:class:`core.readout_layout.ReadoutLayout`): o read out at several frames (``readout_every``), K
output kernel pairs (``out_channels``), maps averaged over blocks on the array (``readout_pool``)
and 8, 4, 2 or 1-bit levels (``readout_bits``, trained through a straight-through quantizer); the
decoder then sees M = frames x K maps, with the authors' head or a small MLP (``decoder``).

``hidden_channels`` (H) gives H independent gated chains j, each with its own kernels and
threshold, mixed only by the outputs (docs/MODEL.md)::

    f^j_t = sign(W_fi^j * x_t + W_fh^j * h^j_{t-1} - thr_j)     h^j_0 = +1
    h^j_t = f^j_t . h^j_{t-1}
    o^k_t = W_oi^k * x_t + sum_j W_oh^{k,j} * h^j_{t-1}

Parameters: ``w_fi``/``w_fh`` (H, 1, 5, 5), ``w_oi`` (K, 1, 5, 5), ``w_oh`` (K, H, 5, 5),
``rnn_threshold`` (H,): H = 1 is the authors' RNN with the shapes, names and draws it always had.
H is capped by the registers of a SCAMP-5 element (:func:`firmware_sim.program.max_hidden`).

Weights are latent reals (clipped to [-1, 1] by :meth:`PixelRNN.clip_latent_`), binarized in the
forward pass by a straight-through estimator chosen by name. In eval mode with noise off the
forward is bit-exact with ``firmware_sim`` (tested): integer sums of +-1 products are exact in
float32 and every binary decision is a sign of an exact pre-activation.
"""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.readout_layout import ReadoutLayout
from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.frontend import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, FrontEnd
from firmware_sim.noise import NoiseModel
from firmware_sim.program import check_hidden_fits
from firmware_sim.weights import SensorWeights
from pixelrnn import cpu_kernels
from pixelrnn.quantizers import get_quantizer, get_surrogate, sign

SIZE = 64
N_MAPS = 16
KERNEL = 5
POOL = 4
DECODERS = {"authors": "1x1 conv (one binary weight per map), BatchNorm, tanh, minus thresh3, Linear",
            "mlp": "BatchNorm per map, Linear -> hidden, ReLU, dropout 0.2, Linear",
            "cnn": "BatchNorm per map, three 3x3 conv + BatchNorm + ReLU (+ 2x2 max-pool) layers of hidden/8, "
                   "4x4 average pool, dropout 0.2, Linear"}


@functools.lru_cache(maxsize=64)
def _layout(every, timesteps, channels, bits, pool, step) -> ReadoutLayout:
    """ReadoutLayout.every, cached: a forward pass asks for the layout several times, and a
    ReadoutLayout is frozen, so one instance per distinct set of fields is shared (an unhashable
    field value, e.g. a list from a hand-edited config, fails the cache and is rebuilt)."""
    return ReadoutLayout.every(every, timesteps=timesteps, channels=channels, bits=bits, pool=pool, step=step)


@dataclass
class ModelConfig:
    """Everything that defines a PixelRNN (saved inside every checkpoint)."""

    num_classes: int = 9
    classes: list[str] = field(default_factory=list)
    task: str = "gesture"
    timesteps: int = 16
    quantizer: str = "tanh_mx"
    quantizer_m: float = 2.0
    gate_threshold: bool = True          # learn rnn_threshold (the authors' gesture model); else 0
    learn_theta0: bool = False           # learn the input binarization threshold (lip models)
    input_mean: float = IMAGENET_GRAY_MEAN
    input_std: float = IMAGENET_GRAY_STD
    readout_8bit: bool = True            # decoder sees the quantized readout, as on the real sensor
    readout_every: int = 0               # read o out at frames every, 2*every, ..., T (0: the last only)
    out_channels: int = 1                # K output kernel pairs (W_oi, W_oh): K maps per readout frame
    hidden_channels: int = 1             # H binary hidden maps, each a gated chain (W_fi, W_fh, threshold)
    readout_bits: int = 8                # 8 (the ADC), 4, 2 or 1; trained for (STE), not applied after
    readout_pool: int = 1                # maps averaged over pool x pool blocks on the array
    readout_step: float = 0.0            # MAC units per level for bits < 8 (0: the layout's default)
    decoder: str = "authors"             # off-sensor head: see DECODERS
    decoder_hidden: int = 256            # width of the "mlp" head
    noise_conv: float = 0.0              # training noise (MAC units), on while model.training
    noise_gate: float = 0.0
    noise_out: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"{len(self.classes)} class names for num_classes={self.num_classes}")
        if not (isinstance(self.timesteps, int) and self.timesteps >= 1):
            raise ValueError(f"timesteps must be a positive integer, got {self.timesteps!r}")
        get_quantizer(self.quantizer, m=self.quantizer_m)  # validates name and m
        NoiseModel(self.noise_conv, self.noise_gate, self.noise_out)  # validates sigmas
        FrontEnd(mean=self.input_mean, std=self.input_std)
        _ = self.layout  # validates the readout fields
        h = self.hidden_channels
        if not (isinstance(h, int) and not isinstance(h, bool) and h >= 1):
            raise ValueError(f"hidden_channels must be a positive integer, got {h!r}")
        check_hidden_fits(self.layout, h)   # one line naming the register bank it lacks
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {sorted(DECODERS)}, got {self.decoder!r}")
        if not (isinstance(self.decoder_hidden, int) and self.decoder_hidden >= 1):
            raise ValueError(f"decoder_hidden must be a positive integer, got {self.decoder_hidden!r}")

    @property
    def layout(self) -> ReadoutLayout:
        """What leaves the sensor per window (:mod:`core.readout_layout`)."""
        return self.layout_for(self.timesteps)

    def layout_for(self, timesteps: int) -> ReadoutLayout:
        """The readout of a window of ``timesteps`` frames (the model runs on any clip length)."""
        return _layout(self.readout_every, timesteps, self.out_channels, self.readout_bits, self.readout_pool,
                       self.readout_step)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes) or [str(i) for i in range(self.num_classes)]

    @property
    def train_noise(self) -> NoiseModel:
        return NoiseModel(self.noise_conv, self.noise_gate, self.noise_out)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)


def to_mosaic(maps: torch.Tensor) -> torch.Tensor:
    """(B, 16, h, w) -> (B, 1, 4h, 4w); map k at tile row k % 4, tile column k // 4 (firmware_sim.mosaic)."""
    b, k, h, w = maps.shape
    return maps.reshape(b, 4, 4, h, w).permute(0, 2, 3, 1, 4).reshape(b, 1, 4 * h, 4 * w)


# -- the fast path: 5x5 convolutions as GEMMs on 8x8 neighbourhoods ------------------------------
#
# A 5x5 convolution (padding 2) of a 64x64 map, written out for the 4x4 block (i, j) at phase (r, c):
# out[4i+r, 4j+c] = sum_{dy,dx} w[dy,dx] * xpad[4i+r+dy, 4j+c+dx], and r+dy, c+dx < 8. So with the 8x8
# neighbourhoods of xpad at stride 4 (``F.unfold(x, 8, padding=2, stride=4)``: 64 values per block,
# 4x the input) the convolution is ONE matrix product with a (K*16 phases) x (C*64) weight matrix
# that holds each tap 16 times (:func:`s2d_weight`). GEMM-shaped, it runs far faster than oneDNN's
# 1-input-channel kernels on a CPU, and the 16 phases of a 4x4 max-pool window are adjacent rows:
# the pool is a max over one axis, and its argmax says where the gradient goes. Sums of +-1 products
# are exact integers in float32 in any order, so the forward is bit-identical to ``F.conv2d``.
# A phase (r, c) touches only rows r..r+4 of the neighbourhood, so the first layer (16 kernels)
# runs its product and weight gradient as four GEMMs, one per row phase r, on those 40 columns
# (1.6x fewer products than on all 64). The first layer and the recurrence run this a chunk of
# frames (or a step) at a time in reused buffers: fresh tensors of megabytes cost a page fault per
# 4 kB on every step (tens of thousands per step before, a large share of its time on the machines
# here).
def _phase_taps() -> torch.Tensor:
    """(16 phases, 64 neighbourhood positions) -> tap index dy*5+dx, or 25 (a zero) outside the kernel."""
    idx = torch.full((POOL * POOL, 64), KERNEL * KERNEL, dtype=torch.long)
    for r in range(POOL):
        for c in range(POOL):
            for dy in range(KERNEL):
                for dx in range(KERNEL):
                    idx[r * POOL + c, (r + dy) * 8 + (c + dx)] = dy * KERNEL + dx
    return idx


_TAPS = _phase_taps()


def s2d_weight(w: torch.Tensor) -> torch.Tensor:
    """(K, C, 5, 5) kernels -> the (K*16, C*64) matrix of :func:`bconv` (differentiable: a gather)."""
    k, c = w.shape[:2]
    flat = torch.cat([w.reshape(k, c, KERNEL * KERNEL), w.new_zeros(k, c, 1)], 2)
    return flat[:, :, _TAPS.to(w.device)].permute(0, 2, 1, 3).reshape(k * POOL * POOL, c * 64)


def _neighbourhoods(xpad: torch.Tensor) -> torch.Tensor:
    """Zero-padded (N, C, H+4, W+4) -> the (N, H/4, W/4, C, 8, 8) view of each 4x4 block's 8x8
    neighbourhood (stride 4), channel-major: what :class:`_Rows` and the reused row buffers hold."""
    return xpad.unfold(2, 8, POOL).unfold(3, 8, POOL).permute(0, 2, 3, 1, 4, 5)


class _Rows(torch.autograd.Function):
    """(N, C, H, W) -> (N*H*W/16, C*64): row (n, i, j) holds the 8x8 neighbourhood of block (i, j)
    (padding 2, stride 4), channel-major; the backward adds the overlapping 8x8 blocks back."""

    @staticmethod
    def forward(ctx, x):
        n, c, h, w = x.shape
        ctx.shape = x.shape
        return _neighbourhoods(F.pad(x, (2, 2, 2, 2))).reshape(n * (h // POOL) * (w // POOL), c * 64)

    @staticmethod
    def backward(ctx, grad):
        n, c, h, w = ctx.shape
        hb, wb = h // POOL, w // POOL
        g = grad.reshape(n, hb, wb, c, 2, POOL, 2, POOL)      # 8 = (block 0/1, phase 0..3)
        acc = grad.new_zeros(n, c, hb + 1, POOL, wb + 1, POOL)
        for bu in (0, 1):
            for bv in (0, 1):
                acc[:, :, bu:bu + hb, :, bv:bv + wb, :] += g[:, :, :, :, bu, :, bv, :].permute(0, 3, 1, 4, 2, 5)
        return acc.reshape(n, c, h + POOL, w + POOL)[:, :, 2:h + 2, 2:w + 2]


def _rows(x: torch.Tensor) -> torch.Tensor:
    return _Rows.apply(x)


def bconv(x: torch.Tensor, wbig: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, w, padding=2)`` for 5x5 kernels, with ``wbig = s2d_weight(w)``; (N, K, H, W)."""
    n, _, h, w = x.shape
    k = wbig.shape[0] // (POOL * POOL)
    out = _rows(x) @ wbig.t()                                            # (N*h/4*w/4, K*16)
    return out.view(n, h // POOL, w // POOL, k, POOL, POOL).permute(0, 3, 1, 4, 2, 5).reshape(n, k, h, w)


def _frame_rows(planes: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """The 8x8 neighbourhoods (stride 4) of already zero-padded (B, H+4, W+4) planes, channel after
    channel, written into ``out`` (a reused (B*H*W/16, 64 * len(planes)) buffer)."""
    b, hp, wp = planes[0].shape
    view = out.view(b, (hp - POOL) // POOL, (wp - POOL) // POOL, len(planes), 8, 8)
    for c, plane in enumerate(planes):
        view[:, :, :, c:c + 1].copy_(_neighbourhoods(plane.unsqueeze(1)))
    return out


def _block_rows(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """:class:`_Rows` of (n, 1, H, W) frames written into ``out`` (a reused (n*H*W/16, 64) buffer)."""
    return _frame_rows([F.pad(x[:, 0], (2, 2, 2, 2))], out)


CONV1_CHUNK = 64


def _phase_major(wbig: torch.Tensor, k: int) -> torch.Tensor:
    """A (K*16, 64) :func:`s2d_weight` matrix (kernel-major rows) with its rows in (phase, kernel)
    order: the 16 phases of one kernel become 16 row blocks of K, so a window's maximum is a max
    over contiguous planes and row phase r's rows are one block."""
    return wbig.view(k, POOL * POOL, -1).transpose(0, 1).reshape(wbig.shape)


def _row_phase_blocks(k: int) -> list[tuple[slice, slice]]:
    """For phase-major rows (:func:`_phase_major`): row phase r's rows (its 4 phases x K kernels)
    and the neighbourhood columns they can touch (rows r..r+4 of the 8x8: 8r..8r+40); the taps
    outside them are zeros of :func:`s2d_weight`."""
    return [(slice(r * POOL * k, (r + 1) * POOL * k), slice(8 * r, 8 * (r + KERNEL))) for r in range(POOL)]


def _ternary(t: torch.Tensor) -> bool:
    """True when every value of ``t`` is -1, 0 or +1 (so sums of products are small exact integers)."""
    return bool(torch.equal(t, t.sign()))


class _ConvReluPool(torch.autograd.Function):
    """relu(max_pool4(conv5x5(x, w))) for +-1 input x (N, 1, 64, 64) -> (N, 16, 16, 16).

    Equal, forward and backward, to ``F.max_pool2d(F.relu(F.conv2d(x, w, padding=2)), 4)`` (relu
    commutes with max; the first maximum of a window gets the gradient in both). Everything runs a
    chunk of ``chunk`` frames at a time in reused buffers: the 8x8 neighbourhood rows, their
    product with the (256, 64) matrix and the conv maps' gradient exist only per chunk (in cache,
    and no fresh megabytes, whose pages cost a fault each), and the backward never forms the
    full-resolution input gradient: one scatter into the argmax phase and a GEMM give the weight
    gradient. Both GEMMs run per row phase (:func:`_row_phase_blocks`), on the 40 columns it reads.
    ``s`` is the input binarization's surrogate derivative (x = sign(v - theta0)); then the gradient
    w.r.t. theta0 is sum_n rows_s[n] . (gm @ wbig)[n] (the chain rule through the convolution,
    rearranged), and ``gm`` has one phase per (n, k), so ``gm @ wbig`` is a bag of 16 weighted rows
    of wbig per n (16x fewer products than the GEMM). ``theta0`` is passed only to receive that
    gradient. ``wbig`` is an :func:`s2d_weight` matrix: the backward leaves the gradient of its
    zeros outside a row phase's columns at 0 (they belong to no tap).
    """

    @staticmethod
    def forward(ctx, x, wbig, s, theta0, chunk):
        n, _, h, w = x.shape
        k = wbig.shape[0] // (POOL * POOL)
        blocks = (h // POOL) * (w // POOL)
        m = n * blocks
        pooled = x.new_empty(m, k)
        arg = torch.empty(m, k, dtype=torch.uint8, device=x.device)
        size = min(chunk, n) * blocks
        rows = x.new_empty(size, wbig.shape[1])
        prod = x.new_empty(wbig.shape[0], size)
        encoded = _ternary(x) and _ternary(wbig)
        if encoded:
            # +-1 (or 0) inputs and taps: every sum is an integer v in [-64, 64], so 16 v + 15 - p is
            # exact in float32 and its maximum over the 16 phases p gives the window's maximum and,
            # among equal maxima, the first phase: a plain max over contiguous planes instead of an
            # indexed max over 16-element rows (which costs 10x more)
            wp = _phase_major(wbig * 16, k)
            bias = (POOL * POOL - 1 - torch.arange(POOL * POOL, device=x.device, dtype=x.dtype)).repeat_interleave(k)
            bias = bias.unsqueeze(1)
            # row phase r's 4 phases x K kernels read neighbourhood rows r..r+4 only: 40 of the 64
            # columns, so four GEMMs on them do 1.6x fewer products than one on all 64
            parts = [(rb, cols, wp[rb, cols].contiguous()) for rb, cols in _row_phase_blocks(k)]
        else:
            idx = torch.empty(size, k, dtype=torch.long, device=x.device)
            wt = wbig.t()
            prod = prod.view(size, wbig.shape[0])
        for f in range(0, n, chunk):      # chunks keep the (rows, K*16) product in cache
            a, b = f * blocks, min(f + chunk, n) * blocks
            r = _block_rows(x[f:f + chunk], rows[:b - a])
            if encoded:
                out = prod[:, :b - a]
                for rb, cols, w_r in parts:
                    torch.addmm(bias[rb], w_r, r[:, cols].t(), out=out[rb])
                top = out.view(POOL * POOL, k, b - a).amax(0)                      # (k, rows)
                v = torch.mul(top, 1.0 / (POOL * POOL)).floor_()                   # exact: a power of 2
                pooled[a:b] = v.t()
                arg[a:b] = (top.sub_(v, alpha=POOL * POOL).neg_().add_(POOL * POOL - 1)).t()
            else:
                torch.mm(r, wt, out=prod[:b - a])
                torch.max(prod[:b - a].view(-1, k, POOL * POOL), 2, out=(pooled[a:b], idx[:b - a]))
                arg[a:b] = idx[:b - a]
        pooled.clamp_min_(0)
        ctx.chunk = chunk
        ctx.need_theta = s is not None and ctx.needs_input_grad[3]
        ctx.save_for_backward(x, wbig, arg, pooled, s if ctx.need_theta else None)
        return pooled.view(n, h // POOL, w // POOL, k).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        x, wbig, arg, pooled, s = ctx.saved_tensors
        n, _, h, w = x.shape
        blocks = (h // POOL) * (w // POOL)
        m, k = pooled.shape
        phases = POOL * POOL
        g = torch.where(pooled > 0, grad.permute(0, 2, 3, 1).reshape(m, k), 0.0)    # relu' (grad is never written)
        # the conv maps' gradient per chunk, phase-major ((phase, kernel) columns, as the forward's
        # rows): row phase r's columns are one block, whose GEMM needs only the columns r's taps touch
        dwp = wbig.new_zeros(wbig.shape)
        blocks_r = _row_phase_blocks(k)
        need_x = ctx.needs_input_grad[0]
        wp = _phase_major(wbig, k) if need_x else None
        drows = x.new_empty(m, wbig.shape[1]) if need_x else None
        size = min(ctx.chunk, n) * blocks
        rows = x.new_empty(size, wbig.shape[1])
        rows_s = x.new_empty(size, wbig.shape[1]) if ctx.need_theta else None
        gm_buf = g.new_zeros(size, phases, k)        # zero again after each chunk: the scatter undone
        nothing = g.new_zeros(size, 1, k)
        dtheta = g.new_zeros(()) if ctx.need_theta else None
        if ctx.need_theta:
            offsets = (torch.arange(k, device=arg.device) * phases).unsqueeze(0)
        for f in range(0, n, ctx.chunk):
            a, b = f * blocks, min(f + ctx.chunk, n) * blocks
            gm = gm_buf[:b - a]
            where = arg[a:b].long()                                          # (rows, k)
            gm.scatter_(1, where.unsqueeze(1), g[a:b].unsqueeze(1))
            flat = gm.view(b - a, phases * k)
            r = _block_rows(x[f:f + ctx.chunk], rows[:b - a])
            for rb, cols in blocks_r:
                dwp[rb, cols].addmm_(flat[:, rb].t(), r[:, cols])
            if need_x:
                torch.mm(flat, wp, out=drows[a:b])
            if ctx.need_theta:
                back = F.embedding_bag(offsets + where, wbig, per_sample_weights=g[a:b], mode="sum")
                rs = _block_rows(s[f:f + ctx.chunk], rows_s[:b - a])
                dtheta += torch.dot(back.view(-1), rs.view(-1))
            gm.scatter_(1, where.unsqueeze(1), nothing[:b - a])
        dw = dwp.view(phases, k, -1).transpose(0, 1).reshape(wbig.shape)     # back to kernel-major rows
        dx = None
        if need_x:
            ctx.shape = x.shape
            dx = _Rows.backward(ctx, drows)
        return dx, dw, None, -dtheta.reshape(1) if ctx.need_theta else None, None


class _ConvReluPoolBits(torch.autograd.Function):
    """:class:`_ConvReluPool` for +-1 input and +-1 kernels on a CPU, by popcount on bit-packed
    neighbourhoods (:mod:`pixelrnn.cpu_kernels`): the same pooled values and argmax, the same gradients
    (summed in another order: float32 per frame, float64 across frames). Takes the (K, 1, 5, 5)
    kernels themselves rather than their :func:`s2d_weight` matrix; x gets no gradient (the caller
    uses this path only when it needs none); ``s`` and ``theta0`` as in :class:`_ConvReluPool`."""

    @staticmethod
    def forward(ctx, x, w, s, theta0, threads):
        n, _, h, wd = x.shape
        xn = x.detach()[:, 0].contiguous()
        wn = w.detach()[:, 0].contiguous().numpy()
        pooled, arg = cpu_kernels.conv_relu_pool(x=xn.numpy(), w=wn, threads=threads)
        pooled = torch.from_numpy(pooled)
        ctx.threads = threads
        ctx.need_theta = s is not None and ctx.needs_input_grad[3]
        ctx.save_for_backward(xn, w, pooled, torch.from_numpy(arg), s if ctx.need_theta else None)
        return pooled.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        xn, w, pooled, arg, s = ctx.saved_tensors
        dw, dtheta = _conv_bits_backward(ctx, xn, w, pooled, arg, s, grad.detach().contiguous().numpy())
        return None, dw, None, dtheta, None


def _conv_bits_backward(ctx, xn, w, pooled, arg, s, grad):
    """The first layer's kernel and theta0 gradients from the pooled maps' gradient ``grad``
    ((N, K, H/4, W/4) numpy) by :func:`pixelrnn.cpu_kernels.conv_relu_pool_backward`; the rest is
    what :class:`_ConvReluPoolBits` and :class:`_FirstLayerBits` saved."""
    dw, dshift = cpu_kernels.conv_relu_pool_backward(
        x=xn.numpy(), w=w.detach()[:, 0].contiguous().numpy(), grad=grad, pooled=pooled.numpy(), arg=arg.numpy(),
        s=s.detach()[:, 0].contiguous().numpy() if ctx.need_theta else None, threads=ctx.threads)
    dw = torch.from_numpy(dw).to(w.dtype).unsqueeze(1) if ctx.needs_input_grad[1] else None
    dtheta = torch.tensor([-dshift], dtype=w.dtype) if ctx.need_theta else None
    return dw, dtheta


class _FirstLayerBits(torch.autograd.Function):
    """The whole first layer on a CPU by :mod:`pixelrnn.cpu_kernels`: +-1 frames (N, 1, H, W) ->
    the mosaic x = sign(relu(max_pool4(conv5x5(frames, w))) (+ noise . sigma) - thresh1), (N, 1, H, W)
    as :func:`to_mosaic` tiles the 16 maps. The epilogue after the pool (noise, threshold, sign,
    tiling; backward: the quantizer's surrogate, un-tiling, thresh1's sum) is one pass each way
    instead of about a dozen PyTorch passes over the pooled maps; its float32 operations are the
    PyTorch path's, in its order, so every x is the same. ``noise``: the conv site's normals as
    (N, 16, H/4, W/4) or None; ``surrogate``: the quantizer's derivative (its backward's factor)."""

    @staticmethod
    def forward(ctx, x, w, s, theta0, noise, sigma, thresh1, surrogate, threads):
        n, _, h, wd = x.shape
        xn = x.detach()[:, 0].contiguous()
        pooled, arg = cpu_kernels.conv_relu_pool(x=xn.numpy(), w=w.detach()[:, 0].contiguous().numpy(), threads=threads)
        z, xm = cpu_kernels.threshold_mosaic(pooled=pooled, thr=float(thresh1.detach()), sigma=sigma, threads=threads,
                                             noise=noise.detach().numpy() if noise is not None else None)
        ctx.threads, ctx.surrogate = threads, surrogate
        ctx.need_theta = s is not None and ctx.needs_input_grad[3]
        ctx.save_for_backward(xn, w, torch.from_numpy(pooled), torch.from_numpy(arg), torch.from_numpy(z),
                              s if ctx.need_theta else None)
        return torch.from_numpy(xm).view(n, 1, h, wd)

    @staticmethod
    def backward(ctx, grad):
        xn, w, pooled, arg, z, s = ctx.saved_tensors
        g, total = cpu_kernels.threshold_mosaic_backward(grad=grad.detach()[:, 0].numpy(),
                                                         sur=ctx.surrogate(z).numpy(), threads=ctx.threads)
        dw, dtheta = _conv_bits_backward(ctx, xn, w, pooled, arg, s, g)
        dthresh = torch.tensor([-total], dtype=w.dtype) if ctx.needs_input_grad[6] else None
        return None, dw, None, dtheta, None, None, dthresh, None, None


def first_layer(binary: torch.Tensor, w: torch.Tensor, thresh1: torch.Tensor, *, binarize, surrogate,
                s: torch.Tensor | None = None, theta0: torch.Tensor | None = None,
                noise: torch.Tensor | None = None, sigma: float = 0.0, keep_pooled: bool = False,
                pm1: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The in-pixel CNN on +-1 frames (N, 1, H, W) -> (the mosaic x (N, 1, H, W), the pooled maps
    (N, 16, H/4, W/4) or None): x = binarize(relu(max_pool4(conv5x5(frames, w))) (+ noise . sigma)
    - thresh1), tiled by :func:`to_mosaic`. :class:`_FirstLayerBits` where :func:`_kernels_apply`
    (the pooled maps are then not kept unless ``keep_pooled``), else :func:`conv_relu_pool` and
    PyTorch operations; ``noise`` is the conv site's normals shaped as the pooled maps; ``pm1``: the
    frames are +-1 by construction (not checked again)."""
    if (not keep_pooled and w.shape[0] == N_MAPS and binary.dtype == torch.float32 and not binary.requires_grad
            and _kernels_apply(binary, w, pm1=pm1)):
        x = _FirstLayerBits.apply(binary, w, s, theta0, noise if sigma else None, float(sigma), thresh1, surrogate,
                                  torch.get_num_threads())
        return x, None
    pooled = conv_relu_pool(binary, w, s, theta0, pm1=pm1)
    pre = pooled + noise * sigma if sigma else pooled
    return to_mosaic(binarize(pre - thresh1)), pooled


def conv_relu_pool(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None = None,
                   theta0: torch.Tensor | None = None, *, pm1: bool = False) -> torch.Tensor:
    """The first layer, relu(max_pool4(conv5x5(x, w))), (N, 1, H, W) -> (N, K, H/4, W/4), by the
    fastest path that gives its exact values: :class:`_ConvReluPoolBits` where :func:`_kernels_apply`
    and x needs no gradient, else :class:`_ConvReluPool`'s GEMMs."""
    if x.dtype == torch.float32 and not x.requires_grad and _kernels_apply(x, w, pm1=pm1):
        return _ConvReluPoolBits.apply(x, w, s, theta0, torch.get_num_threads())
    return _ConvReluPool.apply(x, s2d_weight(w), s, theta0, CONV1_CHUNK)


def _fold_taps(dwbig: torch.Tensor) -> torch.Tensor:
    """The gradient of a (16, 64) :func:`s2d_weight` matrix of one 5x5 kernel -> (1, 1, 5, 5)."""
    taps = _TAPS.to(dwbig.device).flatten()
    flat = dwbig.new_zeros(KERNEL * KERNEL + 1).index_add_(0, taps, dwbig.reshape(-1))
    return flat[:KERNEL * KERNEL].reshape(1, 1, KERNEL, KERNEL)


def _to_maps(prod: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B*h/4*w/4, K*16) products of :func:`_frame_rows` -> a (B, K, h/4, 4, w/4, 4) view: map k
    of frame n is ``[n, k]``, which a (h, w) map's ``.view(h/4, 4, w/4, 4)`` takes as it is."""
    k = prod.shape[1] // (POOL * POOL)
    return prod.view(b, h // POOL, w // POOL, k, POOL, POOL).permute(0, 3, 1, 4, 2, 5)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(..., h, w) -> the (..., h/4, 4, w/4, 4) view that :func:`_to_maps`' maps are written into."""
    *lead, h, w = plane.shape
    return plane.view(*lead, h // POOL, POOL, w // POOL, POOL)


class _Recurrence(torch.autograd.Function):
    """The gate recurrence of one chain, fused with its input convolution: G steps of
    ``z_t = ((W_fi * x_t + W_fh * h_t) + n_t) - thr``, ``h_{t+1} = sign(z_t) . h_t`` from h_0 = +1
    -> the hidden states ``keep`` (indices 0..G), the ones the readouts convolve.

    Each step is one GEMM on the 8x8 neighbourhoods of x_t and h_t side by side (two input
    channels, in cache), so no (B, G, 64, 64) input convolution or its neighbourhoods are ever
    formed. x and h are +-1, so the sums are exact integers in any order and every gate is
    bit-identical to the step-by-step autograd graph (same noise and threshold operations, same
    order). The backward runs the chain rule by hand, a step at a time: one GEMM gives the input
    and the hidden state's gradients (the two transposed convolutions), one the kernels' gradients.
    Hidden states and step gradients live in zero-bordered buffers, so no step pads.
    """

    @staticmethod
    def forward(ctx, x, w_fi, w_fh, thr, noise, surrogate, keep):
        b, g, h, w = x.shape
        wcat = torch.cat([s2d_weight(w_fi), s2d_weight(w_fh)], 1)       # (16 phases, x taps | h taps)
        hpad = x.new_zeros(b, g + 1, h + POOL, w + POOL)       # H_0 .. H_G with a 2-pixel zero border
        hs = hpad[:, :, 2:h + 2, 2:w + 2]
        hs[:, 0] = 1.0
        xpad = x.new_zeros(b, h + POOL, w + POOL)
        rows = x.new_empty(b * (h // POOL) * (w // POOL), 2 * 64)
        prod = x.new_empty(rows.shape[0], POOL * POOL)
        zs = x.new_empty(b, g, h, w)
        for t in range(g):
            xpad[:, 2:h + 2, 2:w + 2] = x[:, t]
            torch.mm(_frame_rows([xpad, hpad[:, t]], rows), wcat.t(), out=prod)
            z = zs[:, t]
            _blocks(z).copy_(_to_maps(prod, b, h, w)[:, 0])
            if noise is not None:
                z.add_(noise[:, t])
            z.sub_(thr)
            torch.mul(sign(z), hs[:, t], out=hs[:, t + 1])
        ctx.surrogate = surrogate
        ctx.keep = keep
        ctx.save_for_backward(x, w_fi, w_fh, hpad, zs)
        return hs[:, list(keep)].clone()

    @staticmethod
    def backward(ctx, grad):
        x, w_fi, w_fh, hpad, zs = ctx.saved_tensors
        b, g, h, w = zs.shape
        hs = hpad[:, :, 2:h + 2, 2:w + 2]
        # the transposed convolutions of the step gradient: h's (for h_t) and x's, in one GEMM
        wflip = torch.cat([s2d_weight(w_fh.flip(-1, -2)), s2d_weight(w_fi.flip(-1, -2))], 0)      # (32, 64)
        sur = ctx.surrogate(zs)
        gpad = zs.new_zeros(b, h + POOL, w + POOL)
        gz = gpad[:, 2:h + 2, 2:w + 2]
        gx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        xpad = x.new_zeros(b, h + POOL, w + POOL)
        n = b * (h // POOL) * (w // POOL)
        rows = x.new_empty(n, 2 * 64)
        grows = x.new_empty(n, 64)
        back = x.new_empty(n, 2 * POOL * POOL)
        gm = x.new_empty(n, POOL * POOL)
        dw = zs.new_zeros(POOL * POOL, 2 * 64)
        dthr = zs.new_zeros(()) if ctx.needs_input_grad[3] else None
        gh = torch.zeros_like(hs[:, 0])
        for t in range(g - 1, -1, -1):
            for i, kept in enumerate(ctx.keep):     # the readouts that see h_{t+1}
                if kept == t + 1:
                    gh = gh + grad[:, i]
            torch.mul(gh * hs[:, t], sur[:, t], out=gz)             # d h_{t+1} / d f_t = h_t
            if dthr is not None:
                dthr -= gz.sum()
            # kernels: sum over blocks of (gz's 16 phases) x (the 8x8 neighbourhoods of x_t, h_t)
            gm.view(b, h // POOL, w // POOL, POOL, POOL).copy_(_blocks(gz).permute(0, 1, 3, 2, 4))
            xpad[:, 2:h + 2, 2:w + 2] = x[:, t]
            dw.addmm_(gm.t(), _frame_rows([xpad, hpad[:, t]], rows))
            torch.mm(_frame_rows([gpad], grows), wflip.t(), out=back)
            maps = _to_maps(back, b, h, w)                           # h's, x's
            if gx is not None:
                _blocks(gx[:, t]).copy_(maps[:, 1])
            gh = gh * sign(zs[:, t])
            _blocks(gh).add_(maps[:, 0])
        dw_fi = _fold_taps(dw[:, :64]) if ctx.needs_input_grad[1] else None
        dw_fh = _fold_taps(dw[:, 64:]) if ctx.needs_input_grad[2] else None
        return gx, dw_fi, dw_fh, dthr.reshape(1) if dthr is not None else None, None, None, None


class _RecurrenceBits(torch.autograd.Function):
    """:class:`_Recurrence` on a CPU by :mod:`pixelrnn.cpu_kernels`: the gates by popcount (the same
    float32 operations on the same exact sums, so every state is identical), the backward's
    convolutions as vectorised loops. Same arguments, except that the gate noise comes as the raw
    normals and their ``sigma`` (scaled inside, the same float32 products), plus the threads."""

    @staticmethod
    def forward(ctx, x, w_fi, w_fh, thr, normals, sigma, surrogate, keep, threads):
        xn = x.detach()                 # strided views are read as they are (no copies)
        hs, zs = cpu_kernels.recurrence(
            x=xn.numpy(), w_fi=w_fi.detach()[0, 0].numpy(), w_fh=w_fh.detach()[0, 0].numpy(),
            thr=float(thr.detach()), noise=normals.detach().numpy() if normals is not None else None, sigma=sigma,
            threads=threads)
        hs, zs = torch.from_numpy(hs), torch.from_numpy(zs)
        ctx.surrogate, ctx.keep, ctx.threads = surrogate, keep, threads
        ctx.save_for_backward(xn, w_fi, w_fh, hs, zs)
        return hs[:, list(keep)].clone()

    @staticmethod
    def backward(ctx, grad):
        xn, w_fi, w_fh, hs, zs = ctx.saved_tensors
        gx, dfi, dfh, dthr = cpu_kernels.recurrence_backward(
            x=xn.numpy(), hs=hs.numpy(), zs=zs.numpy(), sur=ctx.surrogate(zs).numpy(),
            grad=grad.detach().numpy(), keep=ctx.keep, w_fi=w_fi.detach()[0, 0].numpy(),
            w_fh=w_fh.detach()[0, 0].numpy(), need_gx=ctx.needs_input_grad[0], threads=ctx.threads)
        as_kernel = lambda d: torch.from_numpy(d).to(w_fi.dtype).view(1, 1, KERNEL, KERNEL)  # noqa: E731
        return (torch.from_numpy(gx) if gx is not None else None,
                as_kernel(dfi) if ctx.needs_input_grad[1] else None,
                as_kernel(dfh) if ctx.needs_input_grad[2] else None,
                torch.tensor([dthr], dtype=zs.dtype) if ctx.needs_input_grad[3] else None,
                None, None, None, None, None)


def _kernels_apply(x: torch.Tensor, *weights: torch.Tensor, pm1: bool = False) -> bool:
    """True when :mod:`pixelrnn.cpu_kernels` can run a layer on x with these kernels: +-1 float32
    x (or uint8 frames) and +-1 kernels on a CPU, H and W multiples of 4, numba installed and not
    turned off. ``pm1``: x is +-1 by construction (a sign's output), so its values are not checked."""
    if not (x.device.type == "cpu" and x.dtype in (torch.float32, torch.uint8) and cpu_kernels.available()
            and not torch.jit.is_tracing() and x.shape[-2] % POOL == 0 and x.shape[-1] % POOL == 0
            and all(bool(torch.equal(w.detach().abs(), torch.ones_like(w))) for w in weights)):
        return False
    return x.dtype == torch.uint8 or pm1 or cpu_kernels.all_pm1(x.detach().numpy())


def recurrence(x: torch.Tensor, w_fi: torch.Tensor, w_fh: torch.Tensor, thr: torch.Tensor,
               normals: torch.Tensor | None, sigma: float, surrogate, keep: tuple[int, ...]) -> torch.Tensor:
    """One gated chain's kept hidden states (:class:`_Recurrence`; gate noise = ``normals . sigma``),
    by the fastest exact path: :class:`_RecurrenceBits` where :func:`_kernels_apply`, else
    :class:`_Recurrence`'s GEMMs. x is the mosaic of a sign, +-1 by construction (not checked again)."""
    if x.dtype == torch.float32 and _kernels_apply(x, w_fi, w_fh, pm1=True):
        return _RecurrenceBits.apply(x, w_fi, w_fh, thr, normals, sigma, surrogate, keep, torch.get_num_threads())
    return _Recurrence.apply(x, w_fi, w_fh, thr, normals * sigma if normals is not None else None, surrogate, keep)


def noise_sizes(noise: NoiseModel, timesteps: int, size: int = SIZE, out_maps: int = 1,
                hidden: int = 1) -> dict[str, int]:
    """Standard normals one clip consumes, per noise site in stream order (conv, gate, out).

    ``out_maps``: the analog maps read out per window (readout frames x output channels).
    ``hidden``: H hidden maps; the gate site holds chain 0's T frames, then chain 1's, ... (so
    H = 1 draws what it always drew).
    """
    sizes = {}
    if noise.conv_sigma:
        sizes["conv"] = timesteps * N_MAPS * (size // POOL) ** 2
    if noise.gate_sigma:
        sizes["gate"] = hidden * timesteps * size * size
    if noise.out_sigma:
        sizes["out"] = out_maps * size * size
    return sizes


def draw_noise(noise: NoiseModel, batch: int, timesteps: int, generators: list[torch.Generator] | None,
               size: int = SIZE, out_maps: int = 1, hidden: int = 1, *, threads: int = 1) -> dict[str, torch.Tensor]:
    """The standard normals of a batch, (B, n) per noise site: one draw per clip from its generator.

    ``hidden``: the model's hidden maps (:attr:`ModelConfig.hidden_channels`), see :func:`noise_sizes`.
    ``threads``: clips drawn on this many threads at once (each clip from its own generator, so the
    numbers do not change; for a caller whose cores are otherwise idle, e.g. between training steps).

    One ``randn`` per clip gives the same numbers as the former per-site draws in stream order
    (torch's CPU normal sampler transforms blocks of 16 uniforms, and every block size here is a
    multiple of 16), so a clip's noise does not depend on its batch, rank or device.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    sizes = noise_sizes(noise, timesteps, size, out_maps, hidden)
    total = sum(sizes.values())
    if not total:
        return {}
    if generators is None:
        flat = torch.randn(batch, total)
    else:
        if len(generators) != batch:
            raise ValueError(f"{len(generators)} noise generators for a batch of {batch} clips")
        flat = torch.empty(batch, total)

        def draw(first: int) -> None:
            for i in range(first, batch, threads):
                torch.randn(total, generator=generators[i], out=flat[i])

        if threads == 1 or batch == 1:
            draw(0)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pixelrnn-noise") as pool:
                list(pool.map(draw, range(min(threads, batch))))
    return dict(zip(sizes, flat.split(list(sizes.values()), 1)))


class PixelRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.binarize = get_quantizer(config.quantizer, m=config.quantizer_m)
        self.surrogate = get_surrogate(config.quantizer, m=config.quantizer_m)
        u = lambda *shape: nn.Parameter(torch.empty(*shape).uniform_(-1, 1))  # noqa: E731
        # in-pixel CNN
        self.conv1 = u(N_MAPS, 1, KERNEL, KERNEL)
        self.thresh1 = nn.Parameter(torch.ones(1))
        # in-pixel RNN: H gated chains (their kernels stacked on dim 0), K output kernel pairs
        hc = config.hidden_channels
        self.w_fi = u(hc, 1, KERNEL, KERNEL)
        self.w_fh = u(hc, 1, KERNEL, KERNEL)
        self.w_oi = u(config.out_channels, 1, KERNEL, KERNEL)
        self.w_oh = u(config.out_channels, hc, KERNEL, KERNEL)
        if config.gate_threshold:
            self.rnn_threshold = nn.Parameter(torch.ones(hc))
        else:
            self.register_buffer("rnn_threshold", torch.zeros(hc))
        if config.learn_theta0:
            self.theta0 = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("theta0", torch.zeros(1))
        # off-sensor decoder, on the M readout maps of S x S
        layout = config.layout
        m, feats = layout.maps, layout.maps * layout.side ** 2
        self.bn = nn.BatchNorm2d(m)
        if config.decoder == "mlp":
            self.head = nn.Sequential(nn.Linear(feats, config.decoder_hidden), nn.ReLU(), nn.Dropout(0.2),
                                      nn.Linear(config.decoder_hidden, config.num_classes))
        elif config.decoder == "cnn":
            c = max(8, config.decoder_hidden // 8)
            self.head = nn.Sequential(
                nn.Conv2d(m, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                nn.MaxPool2d(2) if layout.side >= 16 else nn.Identity(),
                nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                nn.MaxPool2d(2) if layout.side >= 32 else nn.Identity(),
                nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * c * 16, config.num_classes))
        else:
            self.fin_conv = nn.Parameter(torch.ones(1, m, 1, 1))
            self.thresh3 = nn.Parameter(torch.zeros(1))
            self.fc = nn.Linear(feats, config.num_classes)

    # -- binary weights ---------------------------------------------------------------------
    LATENT = ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv")

    def latent(self) -> list[nn.Parameter]:
        """The latent binary weights this model has (the mlp head has no ``fin_conv``)."""
        return [getattr(self, name) for name in self.LATENT if hasattr(self, name)]

    @torch.no_grad()
    def clip_latent_(self) -> None:
        """Keep latent binary weights in [-1, 1] (call after each optimizer step, as Larq does)."""
        for p in self.latent():
            p.clamp_(-1, 1)

    def _active_noise(self, noise: NoiseModel | None) -> NoiseModel:
        if noise is not None:
            return noise
        return self.config.train_noise if self.training else NoiseModel.off()

    # -- forward ------------------------------------------------------------------------------
    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8/float gray frames (0..255) -> normalised x, the same float32 ops as FrontEnd."""
        g = frames.to(torch.float32) / 255.0
        return (g - self.config.input_mean) / self.config.input_std

    def binarize_input(self, frames: torch.Tensor) -> torch.Tensor:
        return self.binarize(self.normalize(frames) - self.theta0)

    def sensor(self, binary: torch.Tensor, *, noise: NoiseModel | None = None, record: bool = False,
               generators: list[torch.Generator] | None = None, draws: dict[str, torch.Tensor] | None = None,
               _theta: tuple[torch.Tensor, torch.Tensor] | None = None, _pm1: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The in-pixel part on (B, T, 64, 64) +-1 input -> the analog readout maps and recorded states.

        The maps are (B, M, S, S) for the config's :attr:`ModelConfig.layout` (M = readout frames x
        output channels, frame-major; S = 64 / pool); the authors' layout gives o_T as (B, 1, 64, 64).
        ``record=True`` also returns the states; ``hidden`` and ``gate`` are (B, T, 64, 64) for one
        hidden map and (B, T, H, 64, 64) for H > 1 (chain axis 2), as firmware_sim's stage dumps.

        ``generators`` (one per clip) make the noise of each clip independent of the batch it is
        in, so training is reproducible across batch splits and DistributedDataParallel ranks;
        ``draws`` (from :func:`draw_noise`) are those normals drawn ahead, e.g. by a loader thread.
        ``_theta`` and ``_pm1`` are :meth:`forward`'s: the input binarization's surrogate and theta0
        (its gradient is taken inside the first layer), and "binary is a sign's output" (not checked).
        """
        noise = self._active_noise(noise)
        b, t, h, w = binary.shape
        if generators is not None and len(generators) != b:
            raise ValueError(f"{len(generators)} noise generators for a batch of {b} clips")
        hc = self.config.hidden_channels
        if draws is None:
            draws = draw_noise(noise, b, t, generators, h, self.config.layout_for(t).maps, hc)
        draws = {k: v.to(binary.device) for k, v in draws.items()}
        if noise.gate_sigma and draws["gate"].shape[1] != hc * t * h * w:
            raise ValueError(f"the noise draws hold {draws['gate'].shape[1] // (t * h * w)} hidden maps' gate "
                             f"normals, the model has {hc}: draw them with draw_noise(..., hidden={hc})")
        # in-pixel CNN: conv + relu + 4x4 max-pool + noise + threshold, tiled (popcount kernels, or GEMMs)
        s, theta0 = _theta if _theta is not None else (None, None)
        if s is not None:
            s = s.reshape(b * t, 1, h, w)
        x, pooled = first_layer(binary.reshape(b * t, 1, h, w), self.binarize(self.conv1), self.thresh1,
                                binarize=self.binarize, surrogate=self.surrogate, s=s, theta0=theta0,
                                noise=draws["conv"].reshape(b * t, N_MAPS, h // POOL, w // POOL)
                                if noise.conv_sigma else None, sigma=noise.conv_sigma, keep_pooled=record, pm1=_pm1)
        x = x.reshape(b, t, 1, h, w)
        # in-pixel RNN: o at each readout frame f (1-based) sees x_{f-1} and h_{f-1}; gates after the
        # last readout frame do not reach any readout, so they are only made when recorded
        layout = self.config.layout_for(t)
        keep = [f - 1 for f in layout.frames]
        k_out, r = layout.channels, len(keep)
        w_fi, w_oi = self.binarize(self.w_fi), self.binarize(self.w_oi)
        w_fh, w_oh = self.binarize(self.w_fh), self.binarize(self.w_oh)
        gates = t if record else keep[-1]
        # W_fi^j * x_t for every chain j, when states are recorded (the fused recurrence makes its
        # own, a step at a time): one GEMM of H kernels, (B, G, H, 64, 64)
        xf = bconv(x[:, :gates].reshape(b * gates, 1, h, w), s2d_weight(w_fi)).reshape(b, gates, hc, h, w) \
            if gates and record else None
        # chain j's gate kernel and threshold (H = 1: the whole tensors, as always)
        w_fh_j = [w_fh] if hc == 1 else [w_fh[j:j + 1] for j in range(hc)]
        thr_j = [self.rnn_threshold] if hc == 1 else [self.rnn_threshold[j:j + 1] for j in range(hc)]
        # gate normals, chain-major per clip (draw_noise): (B, H, T, 64, 64)
        gate_draws = draws["gate"].reshape(b, hc, t, h, w) if noise.gate_sigma else None
        gate_noise = gate_draws * noise.gate_sigma if record and gate_draws is not None else None
        states: dict[str, list] = {"hidden": [], "gate": []}
        if record:
            wfh = [s2d_weight(wj) for wj in w_fh_j]
            hidden = [torch.ones(b, 1, h, w, dtype=binary.dtype, device=binary.device) for _ in range(hc)]
            for step in range(gates):
                step_gates = []
                for j in range(hc):
                    ft = xf[:, step, j] + bconv(hidden[j], wfh[j])[:, 0]
                    if gate_noise is not None:
                        ft = ft + gate_noise[:, j, step]
                    step_gates.append(self.binarize(ft - thr_j[j])[:, None])
                states["hidden"].append(torch.cat(hidden, 1))
                states["gate"].append(torch.cat(step_gates, 1))
                hidden = [g * hj for g, hj in zip(step_gates, hidden)]
            kept = torch.stack([states["hidden"][i] for i in keep], 1)                   # (B, R, H, 64, 64)
        elif keep[-1] == 0:
            kept = torch.ones(b, 1, hc, h, w, dtype=binary.dtype, device=binary.device)
        else:   # the fused recurrence (input convolution included), once per chain
            xg = x[:, :gates, 0]
            w_fi_j = [w_fi] if hc == 1 else [w_fi[j:j + 1] for j in range(hc)]
            chains = [recurrence(xg, w_fi_j[j], w_fh_j[j], thr_j[j],
                                 gate_draws[:, j, :gates] if gate_draws is not None else None, noise.gate_sigma,
                                 self.surrogate, tuple(keep))
                      for j in range(hc)]
            kept = chains[0].unsqueeze(2) if hc == 1 else torch.stack(chains, 2)       # (B, R, H, 64, 64)
        # o^{f,k} = W_oi[k] * x_{f-1} + sum_j W_oh[k, j] * h^j_{f-1}: (B, R*K, H, W), frame-major
        xo = bconv(x[:, keep].reshape(b * r, 1, h, w), s2d_weight(w_oi))
        out = (xo + bconv(kept.reshape(b * r, hc, h, w), s2d_weight(w_oh))).reshape(b, r * k_out, h, w)
        if noise.out_gain != 1.0:   # calibrated analog gain of the output (firmware_sim.noise)
            out = out * noise.out_gain
        if noise.out_sigma:
            out = out + draws["out"].reshape(out.shape) * noise.out_sigma
        if noise.has_offset:        # scalar out_offset, plus a per-pixel map if calibrated
            out = out + torch.as_tensor(noise.output_offset((h, w)), dtype=out.dtype, device=out.device)
        if layout.pool > 1:         # the mean of each pool x pool block, on the array
            out = F.avg_pool2d(out, layout.pool)
        recorded = {}
        if record:
            with torch.no_grad():
                conv = F.conv2d(binary.reshape(b * t, 1, h, w), self.binarize(self.conv1), padding=KERNEL // 2)
            hid, gat = torch.stack(states["hidden"], 1), torch.stack(states["gate"], 1)   # (B, T, H, 64, 64)
            recorded = {"binary": binary, "conv": conv.reshape(b, t, N_MAPS, h, w),
                        "pooled": pooled.reshape(b, t, N_MAPS, h // POOL, w // POOL),
                        "x": x[:, :, 0], "hidden": hid[:, :, 0] if hc == 1 else hid,
                        "gate": gat[:, :, 0] if hc == 1 else gat}
        return out, recorded

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        """Analog maps -> the readout levels (float, 0..2**bits-1) of the layout, as the sensor reads
        them out; the gradient is straight through wherever the level is inside the ADC's range."""
        layout = self.config.layout
        if layout.bits == 8:
            level = ZERO_LEVEL + IW * out
        else:
            level = out / layout.step + layout.zero
        quantized = torch.clamp(torch.floor(level), 0, layout.max_level)
        if layout.bits == 8:        # the authors' 8-bit readout: identity gradient, as always
            return level + (quantized - level).detach()
        inside = ((level >= 0) & (level <= layout.max_level + 1)).to(level.dtype)
        return quantized + (level - level.detach()) * inside

    def readout_levels(self, out: torch.Tensor):
        """Analog maps -> uint8 levels shaped as ``firmware_sim``'s ``SensorResult.readout``:
        (B, 64, 64) for the authors' layout, (B, M, S, S) otherwise."""
        levels = self.readout(out).detach().to(torch.uint8).cpu().numpy()
        return levels[:, 0] if self.config.layout.is_authors else levels

    def dequantize(self, levels: torch.Tensor) -> torch.Tensor:
        """Readout levels -> MAC units, as :meth:`core.readout_layout.ReadoutLayout.dequantize`."""
        layout = self.config.layout
        if layout.bits == 8:
            return (levels - ZERO_LEVEL) / IW
        return (levels - layout.zero + 0.5) * layout.step

    def decode(self, readout: torch.Tensor) -> torch.Tensor:
        """Readout levels (B, M, S, S), uint8 or float -> logits (B, classes); the authors' layout
        also takes (B, 64, 64)."""
        layout = self.config.layout
        if readout.dim() == 3 and layout.maps == 1:
            readout = readout[:, None]
        if tuple(readout.shape[1:]) != layout.shape:
            raise ValueError(f"readout must be (B, {', '.join(map(str, layout.shape))}) for this model's "
                             f"layout ({layout.describe()}), got {tuple(readout.shape)}")
        if readout.dtype == torch.uint8 and not self.training and not torch.is_grad_enabled():
            return self._decode_head(self._level_table(readout.shape[1]).take(self._level_index(readout)))
        return self.decode_analog(self.dequantize(readout.to(torch.float32)))

    def _level_table(self, maps: int) -> torch.Tensor:
        """(maps, 256): the decoder's elementwise part (dequantize, BN, and for the authors' head the
        binary scale, tanh, threshold) applied to every uint8 level of every map. In eval mode it is a
        function of (map, level) alone, so a chunk of readouts needs one gather instead of ~8 passes."""
        levels = torch.arange(256, dtype=torch.float32, device=self.bn.running_mean.device)
        return self._decode_prefix(self.dequantize(levels.view(1, 1, 256, 1).expand(1, maps, 256, 1).contiguous()))

    @staticmethod
    def _level_index(readout: torch.Tensor) -> torch.Tensor:
        """uint8 levels (B, M, S, S) -> their flat positions in the (M, 256) level table."""
        offsets = torch.arange(readout.shape[1], device=readout.device).view(1, -1, 1, 1) * 256
        return readout.to(torch.int64).add_(offsets)

    def _decode_prefix(self, o: torch.Tensor) -> torch.Tensor:
        """The decoder's elementwise part on analog maps o (B, M, S, S) (per map in eval mode)."""
        if self.config.decoder in ("mlp", "cnn"):
            return self.bn(o)
        return torch.tanh(self.bn(o * self.binarize(self.fin_conv))) - self.thresh3

    def _decode_head(self, y: torch.Tensor) -> torch.Tensor:
        """The rest of the decoder: (B, M, S, S) -> logits (B, classes)."""
        if self.config.decoder == "cnn":
            return self.head(y)
        return (self.head if self.config.decoder == "mlp" else self.fc)(y.flatten(1))

    def decode_analog(self, o: torch.Tensor) -> torch.Tensor:
        return self._decode_head(self._decode_prefix(o))

    def forward(self, frames: torch.Tensor, *, noise: NoiseModel | None = None,
                binarized: bool = False, generators: list[torch.Generator] | None = None,
                draws: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, T, 64, 64) gray frames (0..255) -> logits. ``binarized``: frames are already +-1.

        ``generators``: one noise generator per clip; ``draws``: the batch's normals drawn ahead
        (:func:`draw_noise`). The input binarization's gradient (to theta0) is applied inside the
        fused first layer, so the full-resolution input gradient is never formed.
        """
        theta = None
        need_theta = self.theta0.requires_grad and torch.is_grad_enabled()
        if binarized:
            binary = frames.to(torch.float32)
        elif frames.dtype == torch.uint8 and _kernels_apply(frames):
            # a uint8 frame has 256 values: the binarization (and its surrogate) made by PyTorch on
            # those, then looked up per pixel in one pass instead of ~12 full-resolution passes
            v = self.normalize(torch.arange(256, dtype=torch.uint8)) - self.theta0.detach()
            tables = (sign(v), self.surrogate(v)) if need_theta else (sign(v),)
            looked = cpu_kernels.lookup(levels=frames.numpy(), tables=tuple(t.numpy() for t in tables),
                                        threads=torch.get_num_threads())
            binary = torch.from_numpy(looked[0])
            if need_theta:
                theta = (torch.from_numpy(looked[1]), self.theta0)
        else:
            v = self.normalize(frames) - self.theta0.detach()
            binary = sign(v)
            if need_theta:
                theta = (self.surrogate(v), self.theta0)
        out, _ = self.sensor(binary, noise=noise, generators=generators, draws=draws, _theta=theta,
                             _pm1=not binarized)
        if self.config.readout_8bit:
            return self.decode(self.readout(out))
        return self.decode_analog(out)

    # -- hand-over to the simulator ---------------------------------------------------------------
    @torch.no_grad()
    def sensor_weights(self) -> SensorWeights:
        """The binary kernels and thresholds the sensor runs (numpy, for firmware_sim); H > 1 hidden
        maps give (H, 5, 5) gate kernels, (K, H, 5, 5) ``w_oh`` and H thresholds."""
        s = lambda p: self.binarize(p).detach().cpu().numpy().astype("int8")  # noqa: E731
        one = self.config.hidden_channels == 1
        return SensorWeights(
            conv1=s(self.conv1)[:, 0], thresh1=float(self.thresh1),
            w_fi=s(self.w_fi)[0, 0] if one else s(self.w_fi)[:, 0],
            w_fh=s(self.w_fh)[0, 0] if one else s(self.w_fh)[:, 0],
            w_oi=s(self.w_oi)[:, 0], w_oh=s(self.w_oh)[:, 0] if one else s(self.w_oh),
            layout=self.config.layout,
            rnn_threshold=float(self.rnn_threshold) if one else tuple(float(v) for v in self.rnn_threshold),
            frontend=FrontEnd(mean=self.config.input_mean, std=self.config.input_std,
                              theta0=float(self.theta0)),
            timesteps=self.config.timesteps)
