"""The fast path: the PixelRNN sensor program vectorized in numpy.

It computes exactly what the instruction-level program (``program.py``) computes, stage by stage,
without modelling individual array instructions. Binary convolutions are done as one float32
matrix product over 5x5 patches (im2col): +-1 operands give integer sums that float32 holds exactly,
so the result equals the hardware's 25 add-or-subtract steps. Every threshold comparison is made on
an exact (float64) pre-activation, so no rounding ever decides a sign (docs/DESIGN.md section 4).
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
    """Per-clip outputs. ``stages`` holds the 8-bit encoded intermediates that were asked for."""

    readout: np.ndarray            # (N, 64, 64) uint8, o at the last frame
    output: np.ndarray             # (N, 64, 64) float32, o at the last frame (MAC units, unclipped)
    stages: dict[str, np.ndarray]


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
    which measured faster than large batches on this machine.
    """
    binary, noise = check_run_args(binary, noise, stages)
    n = binary.shape[0]
    readouts, outputs, collected = [], [], {name: [] for name in stages}
    for start in range(0, n, chunk):
        r, o, st = _run_chunk(binary[start:start + chunk], weights, noise, rng, stages)
        readouts.append(r)
        outputs.append(o)
        for name in stages:
            collected[name].append(st[name])
    empty = (0,) + binary.shape[2:]
    return SensorResult(
        readout=np.concatenate(readouts) if readouts else np.zeros(empty, np.uint8),
        output=np.concatenate(outputs) if outputs else np.zeros(empty, np.float32),
        stages={name: np.concatenate(v) for name, v in collected.items()} if n else {})


def _run_chunk(binary, weights, noise, rng, stages):
    n, t, h, w = binary.shape
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
    # Input-driven halves of the recurrent convolutions do not depend on h: all frames at once.
    xi = binary_conv_f32(x.reshape(n * t, h, w), np.stack([weights.w_fi, weights.w_oi]))
    fi = xi[0].reshape(n, t, h, w)
    oi = xi[1].reshape(n, t, h, w)
    w_h = np.stack([weights.w_fh, weights.w_oh])
    hidden = np.ones((n, h, w), dtype=np.int8)
    hid_seq = np.empty((n, t, h, w), np.int8) if "4_hidden" in stages else None
    gate_seq = np.empty((n, t, h, w), np.int8) if "7_forget_gate_x" in stages else None
    o = None
    for step in range(t):
        hh = binary_conv_f32(hidden, w_h)
        if hid_seq is not None:
            hid_seq[:, step] = hidden
        pre = (fi[:, step] + hh[0]).astype(np.float64)
        if noise.gate_sigma:
            pre = pre + noise.gate_sigma * _normal(rng, pre.shape)
        gate = sign_ge(pre - weights.rnn_threshold)
        if gate_seq is not None:
            gate_seq[:, step] = gate
        if step == t - 1:
            o = output_stage((oi[:, step] + hh[1]).astype(np.float64), noise, rng)
        hidden = gate * hidden
    if hid_seq is not None:
        out["4_hidden"] = encode_binary(hid_seq)
    if gate_seq is not None:
        out["7_forget_gate_x"] = encode_binary(gate_seq)
    return encode_analog(o), o.astype(np.float32), out


class SensorStream:
    """Frame-by-frame sensor stage for a live loop: push one binary frame, get a readout every T frames.

    The hidden state starts at +1 for each window of ``weights.timesteps`` frames, as in training.
    """

    def __init__(self, weights: SensorWeights, *, noise: NoiseModel | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.weights = weights
        self.noise = noise or NoiseModel.off()
        self.rng = rng
        self._w_i = np.stack([weights.w_fi, weights.w_oi])
        self._w_h = np.stack([weights.w_fh, weights.w_oh])
        self.reset()

    def reset(self) -> None:
        self.step = 0
        self.hidden = None

    def push(self, binary_frame: np.ndarray) -> np.ndarray | None:
        """Process one (H, W) +-1 frame; return the (H, W) uint8 readout at the window's last frame."""
        frame = np.asarray(binary_frame)[None]
        if self.hidden is None:
            self.hidden = np.ones_like(frame, dtype=np.int8)
        _, _, x = cnn_stage(frame, self.weights, self.noise, self.rng)
        xi = binary_conv_f32(x, self._w_i)
        hh = binary_conv_f32(self.hidden, self._w_h)
        pre = (xi[0] + hh[0]).astype(np.float64)
        if self.noise.gate_sigma:
            pre = pre + self.noise.gate_sigma * _normal(self.rng, pre.shape)
        gate = sign_ge(pre - self.weights.rnn_threshold)
        self.step += 1
        if self.step < self.weights.timesteps:
            self.hidden = gate * self.hidden
            return None
        o = output_stage((xi[1] + hh[1]).astype(np.float64), self.noise, self.rng)
        self.reset()
        return encode_analog(o)[0]


def check_run_args(binary, noise: NoiseModel | None, stages) -> tuple[np.ndarray, NoiseModel]:
    """The checks both whole-clip paths (this one and :mod:`firmware_sim.packed`) make of their input."""
    binary = np.asarray(binary)
    if binary.ndim != 4:
        raise ValueError(f"binary clips must be (N, T, H, W), got shape {binary.shape}")
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    return binary, noise or NoiseModel.off()
