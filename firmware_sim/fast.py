"""The fast path: the PixelRNN sensor program vectorized in numpy.

It computes exactly what the instruction-level program (``program.py``) computes, stage by stage,
without modelling individual array instructions. Binary convolutions are done as one float32
matrix product over 5x5 patches (im2col): +-1 operands give integer sums that float32 holds exactly,
so the result equals the hardware's 25 add-or-subtract steps. Every threshold comparison is made on
an exact (float64) pre-activation, so no rounding ever decides a sign (docs/DESIGN.md section 4).

The readout follows the weights' :class:`core.readout_layout.ReadoutLayout`: in every read-out
frame f (1-based) and for every output kernel pair k, ``o = W_oi[k]*x_{f-1} + W_oh[k]*h_{f-1}``
(float64), then :func:`output_stage` (gain, N(0, out_sigma^2) per pixel, offsets), then the
layout's ``pool_maps`` and ``quantize``. Maps are frame-major (index ``i*K + k``). Noise is drawn
in this order, per chunk of clips: conv (16, B, h/4, w/4) for all frames, then for every step its
gate (n, h, w) and, in a read-out step, right after it the output (n, K, h, w). For the authors'
layout (o at the last frame, K = 1) that is the order, and so the numbers, of before layouts.

H > 1 hidden maps (:attr:`SensorWeights.hidden`): H gated chains, each with its own W_fi^j, W_fh^j
and threshold, h^j_0 = +1, and ``o^k = W_oi^k*x + sum_j W_oh^{k,j}*h^j``. A step's gate noise is
then H draws (n, h, w), chain 0 first, so H = 1 draws what it always drew. The hidden and gate
stages (``4_hidden``, ``7_forget_gate_x``) gain a chain axis: (N, T, H, h, w); H = 1 keeps (N, T, h, w).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_sim.encoding import encode_analog, encode_binary
from firmware_sim.mosaic import to_mosaic
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import KERNEL, SensorWeights

PAD = KERNEL // 2
POOL = 4
STAGES = ("0_binarized_x", "1_conv1", "2_conv1post", "3_thresholded_quantized", "4_hidden",
          "7_forget_gate_x")


def patches(maps: np.ndarray) -> np.ndarray:
    """(B, H, W) +-1 maps -> (25, B, H, W) float32 zero-padded 5x5 neighbourhoods, tap-major.

    Tap-major (one contiguous plane per tap) makes both this copy and the matrix product below
    stream through memory; it measured ~5x faster than a pixel-major im2col here.
    """
    b, h, w = maps.shape
    padded = np.zeros((b, h + 2 * PAD, w + 2 * PAD), dtype=np.float32)
    padded[:, PAD:PAD + h, PAD:PAD + w] = maps
    out = np.empty((KERNEL * KERNEL, b, h, w), dtype=np.float32)
    for i in range(KERNEL):
        for j in range(KERNEL):
            out[i * KERNEL + j] = padded[:, i:i + h, j:j + w]
    return out


def binary_conv_f32(maps: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Cross-correlate (B, H, W) +-1 maps with (K, 5, 5) +-1 kernels, zero padding 2 -> (K, B, H, W) float32.

    One float32 matrix product over the patches: +-1 operands give integer sums (|s| <= 25) that
    float32 represents exactly, so this equals the hardware's 25 add-or-subtract steps.
    """
    p = patches(maps)
    mat = kernels.reshape(kernels.shape[0], -1).astype(np.float32)  # (K, 25)
    return (mat @ p.reshape(KERNEL * KERNEL, -1)).reshape((kernels.shape[0],) + maps.shape)


def binary_conv(maps: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """As :func:`binary_conv_f32`, returned as (B, K, H, W) int16."""
    return np.moveaxis(binary_conv_f32(maps, kernels), 0, 1).astype(np.int16)


def maxpool4(values: np.ndarray) -> np.ndarray:
    """4x4 max-pool over the last two axes (pairwise maxima of strided slices: fast in numpy)."""
    m = np.maximum(np.maximum(values[..., 0::4], values[..., 1::4]),
                   np.maximum(values[..., 2::4], values[..., 3::4]))
    return np.maximum(np.maximum(m[..., 0::4, :], m[..., 1::4, :]),
                      np.maximum(m[..., 2::4, :], m[..., 3::4, :]))


def relu_maxpool(conv: np.ndarray) -> np.ndarray:
    """(..., H, W) -> ReLU then 4x4 max-pool -> (..., H/4, W/4)."""
    return np.maximum(maxpool4(conv), 0)


def sign_ge(pre: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1, as int8."""
    return np.where(pre >= 0, 1, -1).astype(np.int8)


@dataclass
class SensorResult:
    """Per-clip outputs. ``stages`` holds the 8-bit encoded intermediates that were asked for.

    ``readout`` holds the layout's uint8 levels: (N, 64, 64) for the authors' layout (o at the last
    frame), (N, M, S, S) for any other (M maps, frame-major; S = 64 / pool). ``output`` is the analog
    o (MAC units, after the output stage and pooling, before quantization; float32) of the same
    shape. ``levels`` is the readout as (N, M, S, S) for every layout.
    """

    readout: np.ndarray
    output: np.ndarray
    stages: dict[str, np.ndarray]

    @property
    def levels(self) -> np.ndarray:
        return self.readout[:, None] if self.readout.ndim == 3 else self.readout


def cnn_stage(binary: np.ndarray, weights: SensorWeights, noise: NoiseModel,
              rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, 64, 64) +-1 frames -> conv (16,B,64,64) f32, pooled (16,B,16,16) f32, mosaic x (B,64,64) int8."""
    conv = binary_conv_f32(binary, weights.conv1)
    pooled = relu_maxpool(conv)
    pre = pooled.astype(np.float64)
    if noise.conv_sigma:
        pre = pre + noise.conv_sigma * _normal(rng, pre.shape)
    quantized = sign_ge(pre - weights.thresh1)
    return conv, pooled, to_mosaic(np.moveaxis(quantized, 0, 1))


def _normal(rng: np.random.Generator | None, shape) -> np.ndarray:
    if rng is None:
        raise ValueError("noise is on: pass a numpy Generator (rng) to draw it")
    return rng.standard_normal(shape)


def output_stage(o: np.ndarray, noise: NoiseModel, rng: np.random.Generator | None) -> np.ndarray:
    """The analog output stage on (..., H, W) float64 o: ``out_gain * o + N(0, out_sigma^2) + offsets``.

    The offset is ``out_offset`` plus the per-pixel ``offset_map`` of a calibration file, if any.
    """
    if noise.out_gain != 1.0:
        o = o * noise.out_gain
    if noise.out_sigma:
        o = o + noise.out_sigma * _normal(rng, o.shape)
    if noise.has_offset:
        o = o + noise.output_offset(o.shape[-2:])
    return o


def run_clips(binary: np.ndarray, weights: SensorWeights, *, noise: NoiseModel | None = None,
              rng: np.random.Generator | None = None, stages: tuple[str, ...] = (),
              chunk: int = 1) -> SensorResult:
    """Run the sensor program on (N, T, 64, 64) +-1 int8 binary input clips.

    ``stages``: names from :data:`STAGES` to return, each (N, T, H, W) uint8 in the reference
    encoding. ``chunk`` clips are processed together: small chunks keep the working set in cache,
    which measured faster than large batches on this machine. The readout is the weights' layout
    (see :class:`SensorResult`); the authors' reads out the last frame of clips of any length T,
    any other layout needs T = ``weights.timesteps``.
    """
    binary, noise = check_run_args(binary, noise, stages)
    read_steps = check_readout(weights, binary.shape)
    n = binary.shape[0]
    readouts, outputs, collected = [], [], {name: [] for name in stages}
    for start in range(0, n, chunk):
        r, o, st = _run_chunk(binary[start:start + chunk], weights, noise, rng, stages, read_steps)
        readouts.append(r)
        outputs.append(o)
        for name in stages:
            collected[name].append(st[name])
    return make_result(weights, binary.shape, readouts, outputs,
                       {name: np.concatenate(v) for name, v in collected.items()} if n else {})


def check_readout(weights: SensorWeights, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The 0-based steps whose o is read out of (N, T, H, W) clips; checks the clips fit the layout."""
    _, t, h, w = shape
    frames = weights.readout_frames(t)
    p = weights.layout.pool
    if h % p or w % p:
        raise ValueError(f"the readout layout pools {p}x{p} blocks: frames of {h}x{w} do not divide")
    return tuple(f - 1 for f in frames)


def result_shape(weights: SensorWeights, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of ``SensorResult.readout`` for (N, T, H, W) clips: (N, H, W) for the authors'
    layout, (N, M, H/pool, W/pool) otherwise."""
    n, _, h, w = shape
    layout = weights.layout
    if layout.is_authors:
        return (n, h, w)
    return (n, len(layout.frames) * layout.channels, h // layout.pool, w // layout.pool)


def make_result(weights: SensorWeights, shape: tuple[int, ...], levels: list, outputs: list,
                stages: dict) -> SensorResult:
    """Chunks of (n, M, S, S) levels and outputs -> the SensorResult of the layout (shared by the paths)."""
    want = result_shape(weights, shape)
    empty = (0,) + want[1:]
    readout = np.concatenate(levels) if levels else np.zeros(empty, np.uint8)
    output = np.concatenate(outputs) if outputs else np.zeros(empty, np.float32)
    return SensorResult(readout=readout.reshape(readout.shape[:1] + want[1:]),
                        output=output.reshape(output.shape[:1] + want[1:]), stages=stages)


def readout_maps(o: np.ndarray, weights: SensorWeights, noise: NoiseModel,
                 rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, K, H, W) exact o of one read-out frame -> (levels uint8, output float32), each (n, K, S, S):
    the output stage (draws (n, K, H, W) normals when out_sigma is on), pooling, quantization."""
    layout = weights.layout
    o = layout.pool_maps(output_stage(o.astype(np.float64), noise, rng))
    return layout.quantize(o), o.astype(np.float32)


def _run_chunk(binary, weights, noise, rng, stages, read_steps):
    n, t, h, w = binary.shape
    layout = weights.layout
    k_out = weights.channels
    frames = binary.reshape(n * t, h, w)
    conv, pooled, x = cnn_stage(frames, weights, noise, rng)
    out: dict[str, np.ndarray] = {}
    if "0_binarized_x" in stages:
        out["0_binarized_x"] = encode_binary(binary)
    if "1_conv1" in stages:
        out["1_conv1"] = encode_analog(to_mosaic(np.moveaxis(conv, 0, 1))).reshape(n, t, 4 * h, 4 * w)
    if "2_conv1post" in stages:
        out["2_conv1post"] = encode_analog(to_mosaic(np.moveaxis(pooled, 0, 1))).reshape(n, t, h, w)
    x = x.reshape(n, t, h, w)
    if "3_thresholded_quantized" in stages:
        out["3_thresholded_quantized"] = encode_binary(x)
    # Input-driven halves of the recurrent convolutions do not depend on h: fi (H kernels) for all
    # frames at once, oi (K kernels) for the read-out frames.
    chains = weights.hidden
    fi = binary_conv_f32(x.reshape(n * t, h, w), weights.fi_kernels).reshape(chains, n, t, h, w)
    r = len(read_steps)
    oi = binary_conv_f32(x[:, list(read_steps)].reshape(n * r, h, w), weights.w_oi)
    oi = np.moveaxis(oi.reshape(k_out, n, r, h, w), 0, 2)            # (n, R, K, h, w)
    # chain j's hidden kernels: W_fh^j, and in a read-out step also W_oh^{k,j} for every k
    w_h = [weights.fh_kernels[j][None] for j in range(chains)]
    w_h_read = [np.concatenate([weights.fh_kernels[j][None], weights.oh_kernels[:, j]]) for j in range(chains)]
    thresholds = weights.gate_thresholds
    hidden = [np.ones((n, h, w), dtype=np.int8) for _ in range(chains)]
    seq_shape = (n, t, h, w) if chains == 1 else (n, t, chains, h, w)
    hid_seq = np.empty(seq_shape, np.int8) if "4_hidden" in stages else None
    gate_seq = np.empty(seq_shape, np.int8) if "7_forget_gate_x" in stages else None
    hid_at = None if hid_seq is None else hid_seq.reshape(n, t, chains, h, w)      # views with a chain axis
    gate_at = None if gate_seq is None else gate_seq.reshape(n, t, chains, h, w)
    levels = np.empty((n, r, k_out, h // layout.pool, w // layout.pool), np.uint8)
    output = np.empty(levels.shape, np.float32)
    index = {step: i for i, step in enumerate(read_steps)}
    for step in range(t):
        i = index.get(step)
        gates, o = [], None
        for j in range(chains):
            hh = binary_conv_f32(hidden[j], w_h[j] if i is None else w_h_read[j])
            if hid_at is not None:
                hid_at[:, step, j] = hidden[j]
            pre = (fi[j, :, step] + hh[0]).astype(np.float64)
            if noise.gate_sigma:
                pre = pre + noise.gate_sigma * _normal(rng, pre.shape)
            gates.append(sign_ge(pre - thresholds[j]))
            if gate_at is not None:
                gate_at[:, step, j] = gates[j]
            if i is not None:                                            # sum_j W_oh^{k,j} * h^j, exact
                o = np.moveaxis(hh[1:], 0, 1) if o is None else o + np.moveaxis(hh[1:], 0, 1)
        if i is not None:
            o = oi[:, i] + o                                             # (n, K, h, w), exact
            levels[:, i], output[:, i] = readout_maps(o, weights, noise, rng)
        hidden = [g * hj for g, hj in zip(gates, hidden)]
    if hid_seq is not None:
        out["4_hidden"] = encode_binary(hid_seq)
    if gate_seq is not None:
        out["7_forget_gate_x"] = encode_binary(gate_seq)
    return levels.reshape(n, r * k_out, *levels.shape[3:]), output.reshape(n, r * k_out, *levels.shape[3:]), out


class SensorStream:
    """Frame-by-frame sensor stage for a live loop: push one binary frame, get a readout every T frames.

    The hidden states (one per hidden map) start at +1 for each window of ``weights.timesteps``
    frames, as in training. The layout's read-out frames are quantized as they pass; the window's
    levels come back at its last frame: (H, W) for the authors' layout, (M, S, S) for any other.
    """

    def __init__(self, weights: SensorWeights, *, noise: NoiseModel | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.weights = weights
        self.noise = noise or NoiseModel.off()
        self.rng = rng
        self._frames = weights.readout_frames(weights.timesteps)
        self._chains = weights.hidden
        self._w_i = np.concatenate([weights.fi_kernels, weights.w_oi])     # (H + K, 5, 5)
        # per chain j: (W_fh^j, W_oh^{0..K-1, j})
        self._w_h = [np.concatenate([weights.fh_kernels[j][None], weights.oh_kernels[:, j]])
                     for j in range(self._chains)]
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.hidden = None
        self._levels: list[np.ndarray] = []

    def push(self, binary_frame: np.ndarray) -> np.ndarray | None:
        """Process one (H, W) +-1 frame; return the window's uint8 levels at its last frame, else None."""
        frame = np.asarray(binary_frame)[None]
        chains = self._chains
        if self.hidden is None:
            self.hidden = [np.ones_like(frame, dtype=np.int8) for _ in range(chains)]
        read = self.step + 1 in self._frames
        _, _, x = cnn_stage(frame, self.weights, self.noise, self.rng)
        xi = binary_conv_f32(x, self._w_i if read else self._w_i[:chains])
        gates, oh = [], None
        for j in range(chains):
            hh = binary_conv_f32(self.hidden[j], self._w_h[j] if read else self._w_h[j][:1])
            pre = (xi[j] + hh[0]).astype(np.float64)
            if self.noise.gate_sigma:
                pre = pre + self.noise.gate_sigma * _normal(self.rng, pre.shape)
            gates.append(sign_ge(pre - self.weights.gate_thresholds[j]))
            if read:
                oh = hh[1:] if oh is None else oh + hh[1:]
        self.step += 1
        if read:
            o = np.moveaxis(xi[chains:] + oh, 0, 1)                    # (1, K, H, W), exact
            self._levels.append(readout_maps(o, self.weights, self.noise, self.rng)[0][0])
        if self.step < self.weights.timesteps:
            self.hidden = [g * hj for g, hj in zip(gates, self.hidden)]
            return None
        levels = np.concatenate(self._levels)
        self.reset()
        return levels[0] if self.weights.layout.is_authors else levels


def check_run_args(binary, noise: NoiseModel | None, stages) -> tuple[np.ndarray, NoiseModel]:
    """The checks both whole-clip paths (this one and :mod:`firmware_sim.packed`) make of their input."""
    binary = np.asarray(binary)
    if binary.ndim != 4:
        raise ValueError(f"binary clips must be (N, T, H, W), got shape {binary.shape}")
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    return binary, noise or NoiseModel.off()
