"""ONNX export, built node by node with ``onnx.helper`` (not ``torch.onnx``), so every op is chosen.

Three models, all plain ONNX that stock ONNX Runtime runs (no custom op library):

- ``sensor.onnx``: ``frames`` (1, T, 64, 64) uint8 -> ``readout`` uint8 levels. The whole in-pixel
  computation is ONE node, ``PixelRNNSensor`` of domain ``pixelrnn.ppa``: an ONNX local function
  (FunctionProto) whose body uses only standard operators, and whose inputs are the sensor
  program's weights (graph initializers).
- ``host.onnx``: ``readout`` -> ``logits`` (1, classes) float32, the off-sensor decoder.
- ``pixelrnn.onnx``: ``frames`` -> ``logits`` and ``readout`` (sensor function + decoder).

The readout is the sensor program's :class:`core.readout_layout.ReadoutLayout`. The authors' (o at
the last frame, one kernel pair, 64x64, 8 bit) is ``readout`` (1, 64, 64), the 8-bit encoded o_T,
with the authors' decoder (:func:`host_model`); its graphs are byte for byte those of before
layouts existed. Any other layout (o at several frames, K output kernel pairs, pooling, 4/2/1-bit
levels) or head (``mlp``, ``cnn``) reads out ``readout`` (1, M, S, S) uint8, M = frames x K maps,
frame-major, S = 64 / pool (the authors' 64x64 map keeps its (1, 64, 64)), exactly
``firmware_sim``'s ``SensorResult.readout`` of one window; ``host.onnx`` is
:meth:`PixelRNN.decode` node by node (:func:`layout_host_model`). The function unrolls the steps
up to the last read-out frame and concatenates the read-out frames' o (1, K, 64, 64) along the
map axis.

Exactness (``firmware_sim.fast`` is the reference, byte for byte): the front end uses the same
float32 ops in the same order as ``FrontEnd.normalize`` / ``binarize``. Binary convolutions of +-1
maps with +-1 kernels give integer sums that float32 holds exactly, in any summation order. Every
binary decision is a comparison of a pre-activation with a threshold (GreaterOrEqual + Where,
sign(0) = +1), never a sigmoid (docs/DESIGN.md section 4). Since those pre-activations are integers,
``v >= t`` is the same as ``v >= ceil(t)``: the graph compares with ``ceil(t)``, which float32 holds
exactly, so a float64 threshold (``SensorWeights``) decides exactly as the simulator does. The
readout, as ``ReadoutLayout.pool_maps`` then ``quantize``:

- pooling is ``AveragePool`` over pool x pool blocks (``pool_maps``: the block sum / pool**2): the
  sum of integers |o| <= 50 is exact, and dividing by a power of two is exact, so the float32 mean
  is the float64 one;
- 8 bit: ``clip(floor(127 + 10 o), 0, 255)`` (Mul, Add, Floor, Clip). o is an integer divided by
  pool**2 <= 64, so 10 o and 127 + 10 o are exact in float32 as in float64: no rounding occurs;
- 4/2/1 bit, any ``step``: the level is the number of thresholds t_m (m = 1 .. 2**b - 1) with
  ``o >= t_m`` (GreaterOrEqual against all of them, ReduceSum over them; :func:`readout_thresholds`).
  t_m is the least value the sensor can read out (|o| <= 50, a multiple of 1 / pool**2) that
  ``ReadoutLayout.quantize`` puts at level m or above, so the comparison decides as the float64
  ``floor(o / step)`` does on every such value, with no division in the graph.

The graphs are noise-free (the simulator with ``NoiseModel.off()``).

H > 1 hidden maps (``SensorWeights.hidden``): the hidden state is (1, H, 64, 64) and one Conv per
step gives every chain's gate sum and every o: ``w_input`` is (H + K, 1, 5, 5) = (W_fi^0..H-1,
W_oi^0..K-1); ``w_hidden`` (H + K, H, 5, 5) holds W_fh^j at [j, j] (zeros elsewhere in the gate
rows: chain j's gate sees h^j only) and W_oh^{k,j} at [H + k, j]; ``gate_level`` is (1, H, 1, 1).
The sums stay integers (zeros add nothing), |o| <= 25 (H + 1). H = 1 builds the graphs it always did.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from core.errors import InputError
from core.readout_layout import ReadoutLayout
from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.weights import KERNEL, SensorWeights, o_max
from pixelrnn import __version__

OPSET = 17              # ONNX Runtime >= 1.13 (a Pi's pip wheel) runs it
IR_VERSION = 8          # the IR of opset 17; local functions need IR >= 8
DOMAIN = "pixelrnn.ppa"
DOMAIN_VERSION = 1
SENSOR_OP = "PixelRNNSensor"
PRODUCER = "pixelrnn-edge"
SIZE = 64
POOL = 4
FILES = ("sensor.onnx", "host.onnx", "pixelrnn.onnx")
LEVEL_BOUND = 1_000_000  # |threshold| clamp: float32 holds it exactly, and every |sum| the graph compares is far below
_F = TensorProto.FLOAT


@dataclass(frozen=True)
class DecoderParams:
    """The off-sensor decoder's parameters as float32 numpy arrays (no PyTorch needed to use them)."""

    fin_sign: np.ndarray      # (1,) +-1: sign of the 1x1 conv weight
    bn_weight: np.ndarray     # (1,)
    bn_bias: np.ndarray       # (1,)
    bn_mean: np.ndarray       # (1,) running mean
    bn_var: np.ndarray        # (1,) running variance
    bn_eps: float
    thresh3: np.ndarray       # (1,)
    fc_weight: np.ndarray     # (classes, 4096)
    fc_bias: np.ndarray       # (classes,)

    @property
    def num_classes(self) -> int:
        return int(self.fc_weight.shape[0])


def decoder_params(model) -> DecoderParams:
    """Read the decoder of a :class:`pixelrnn.model.PixelRNN` (eval-mode semantics: running stats)."""
    f32 = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return DecoderParams(
        fin_sign=f32(model.binarize(model.fin_conv.detach())).reshape(1),
        bn_weight=f32(model.bn.weight).reshape(1), bn_bias=f32(model.bn.bias).reshape(1),
        bn_mean=f32(model.bn.running_mean).reshape(1), bn_var=f32(model.bn.running_var).reshape(1),
        bn_eps=float(model.bn.eps), thresh3=f32(model.thresh3).reshape(1),
        fc_weight=f32(model.fc.weight), fc_bias=f32(model.fc.bias))


def threshold_level(value: float) -> float:
    """The integer level equivalent to threshold ``value`` for integer pre-activations: ceil(value).

    Clamped to +-1e6, which float32 holds exactly: pre-activations are sums of at most 50 +-1
    taps, so the clamp changes no decision (and keeps huge thresholds from overflowing float32).
    """
    return float(min(max(math.ceil(value), -LEVEL_BOUND), LEVEL_BOUND))


def readout_thresholds(layout: ReadoutLayout, *, hidden: int = 1) -> np.ndarray:
    """The b < 8-bit readout's level thresholds, float32 (2**b - 1,): t_m is the least o the sensor can
    read out (a multiple of 1 / pool**2 in [-50, 50], as ``pool_maps`` makes it; [-25 (H + 1),
    25 (H + 1)] for ``hidden`` H maps) whose level (``ReadoutLayout.quantize``) is >= m, or
    :data:`LEVEL_BOUND` if none is. Levels are monotone in o, so for every such o the level is the
    number of m with ``o >= t_m``; each t_m is exact in float32."""
    area = layout.pool * layout.pool
    bound = o_max(hidden)
    values = np.arange(-bound * area, bound * area + 1) / float(area)
    first = np.searchsorted(layout.quantize(values), np.arange(1, layout.max_level + 1))
    return np.where(first < len(values), values[np.minimum(first, len(values) - 1)], LEVEL_BOUND).astype(np.float32)


# -- small builders -----------------------------------------------------------------------------
def _const(name: str, value, dtype=np.float32) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.asarray(value, dtype=dtype), name=name))


def _init(name: str, value, doc: str = "", dtype=np.float32) -> TensorProto:
    tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name)
    tensor.doc_string = doc
    return tensor


def _sign_nodes(pre: str, level: str, out: str) -> list[onnx.NodeProto]:
    """``out = +1 if pre >= level else -1`` (sign(0) = +1): a comparison, never a sigmoid."""
    return [helper.make_node("GreaterOrEqual", [pre, level], [out + "_ge"]),
            helper.make_node("Where", [out + "_ge", "one", "minus_one"], [out])]


# -- the sensor: one local function ---------------------------------------------------------------
SENSOR_INPUTS = ("frames", "conv1", "w_input", "w_hidden", "input_mean", "input_std", "theta0",
                 "thresh1_level", "gate_level")
LEVELS_INPUT = "readout_thresholds"     # a b < 8-bit readout's extra input (:func:`readout_thresholds`)
PADS = [KERNEL // 2] * 4


def sensor_inputs(layout: ReadoutLayout) -> list[str]:
    """The function's inputs: :data:`SENSOR_INPUTS`, and :data:`LEVELS_INPUT` for a b < 8-bit readout."""
    return list(SENSOR_INPUTS) + ([LEVELS_INPUT] if layout.bits < 8 else [])


def _function_layout(timesteps: int, layout: ReadoutLayout | None) -> ReadoutLayout:
    """``layout`` (None: the authors' for ``timesteps``); one for other timesteps is a ValueError."""
    if layout is None:
        return ReadoutLayout(frames=(timesteps,), timesteps=timesteps)
    if not isinstance(layout, ReadoutLayout) or layout.timesteps != timesteps:
        raise ValueError(f"the sensor function needs a ReadoutLayout for timesteps={timesteps}, got {layout!r}")
    return layout


def sensor_function(*, timesteps: int, layout: ReadoutLayout | None = None, hidden: int = 1) -> onnx.FunctionProto:
    """The in-pixel program as the local function ``pixelrnn.ppa.PixelRNNSensor``.

    Inputs (:func:`sensor_inputs`): ``frames`` (1, T, 64, 64) uint8; ``conv1`` (16, 1, 5, 5) +-1;
    ``w_input`` (1 + K, 1, 5, 5) = (W_fi, W_oi[0..K-1]); ``w_hidden`` (1 + K, 1, 5, 5) = (W_fh,
    W_oh[...]); front end ``input_mean``, ``input_std``, ``theta0`` (float32 scalars);
    ``thresh1_level``, ``gate_level`` (ceil of the thresholds); for a b < 8-bit readout
    ``readout_thresholds`` (2**b - 1, 1, 1, 1, 1). Output: ``readout``, the levels of ``layout``
    (None: the authors', (1, 64, 64) uint8; any other (1, M, S, S) uint8). The recurrent steps are
    unrolled up to the last read-out frame. ``hidden``: H hidden maps (module docstring: ``w_input``
    (H + K, 1, 5, 5), ``w_hidden`` (H + K, H, 5, 5), ``gate_level`` (1, H, 1, 1)).
    """
    layout = _function_layout(timesteps, layout)
    if not (isinstance(hidden, int) and not isinstance(hidden, bool) and hidden >= 1):
        raise ValueError(f"hidden must be a positive integer (hidden maps), got {hidden!r}")
    recurrent, outs = _recurrent_nodes(layout, hidden)
    nodes = _sensor_constants(layout, hidden) + _frontend_nodes() + _cnn_nodes(timesteps) + recurrent
    nodes += _readout_nodes(layout, outs)
    readout = "8-bit readout of o_T" if layout.is_authors else f"readout {layout.describe()}, maps frame-major"
    rnn = "binary RNN (h0=+1)" if hidden == 1 else f"binary RNN of {hidden} gated hidden maps (h0=+1)"
    return helper.make_function(
        DOMAIN, SENSOR_OP, sensor_inputs(layout), ["readout"], nodes,
        opset_imports=[helper.make_opsetid("", OPSET)],
        doc_string=(f"PixelRNN in-pixel program, {timesteps} frames: binarized front end, 16 binary 5x5 convs, "
                    f"ReLU, 4x4 max-pool, threshold, 4x4 mosaic, {rnn}, {readout}. Binary "
                    "decisions: pre-activation >= ceil(threshold)."))


def _sensor_constants(layout: ReadoutLayout, hidden: int = 1) -> list[onnx.NodeProto]:
    t, s, p = layout.timesteps, SIZE, SIZE // POOL
    nodes = [_const("one", 1.0), _const("minus_one", -1.0), _const("zero", 0.0), _const("c255", 255.0)]
    if layout.bits == 8:
        nodes += [_const("c_iw", IW), _const("c_zero_level", ZERO_LEVEL)]
    nodes += [_const("shape_frames", [t, 1, s, s], np.int64), _const("shape_tiles", [t, 4, 4, p, p], np.int64)]
    if layout.is_authors:
        nodes.append(_const("shape_readout", [1, s, s], np.int64))
    if layout.channels > 1 or hidden > 1:
        nodes.append(_const("split_gate_out", [hidden, layout.channels], np.int64))
    if layout.bits < 8:
        nodes.append(_const("axis_levels", [0], np.int64))
    return nodes + [_const("hidden_0", np.ones((1, hidden, s, s)))]


def _frontend_nodes() -> list[onnx.NodeProto]:
    """FrontEnd.binarize's float32 ops in its order: ((g / 255 - mean) / std) - theta0 >= 0 -> ``x_bin``."""
    nodes = [helper.make_node("Cast", ["frames"], ["gray"], to=_F),
             helper.make_node("Div", ["gray", "c255"], ["g"]),
             helper.make_node("Sub", ["g", "input_mean"], ["g_centred"]),
             helper.make_node("Div", ["g_centred", "input_std"], ["x_norm"]),
             helper.make_node("Sub", ["x_norm", "theta0"], ["x_pre"])]
    return nodes + _sign_nodes("x_pre", "zero", "x_bin")


def _cnn_nodes(timesteps: int) -> list[onnx.NodeProto]:
    """The in-pixel CNN on all frames at once (conv, ReLU, 4x4 max-pool, threshold, 4x4 mosaic), then
    the input halves of the recurrent convolutions, which do not depend on h: ``x_in_0`` .. ``x_in_{T-1}``."""
    nodes = [helper.make_node("Reshape", ["x_bin", "shape_frames"], ["x_frames"]),
             helper.make_node("Conv", ["x_frames", "conv1"], ["conv"], kernel_shape=[KERNEL] * 2, pads=PADS),
             helper.make_node("Relu", ["conv"], ["conv_relu"]),
             helper.make_node("MaxPool", ["conv_relu"], ["pooled"], kernel_shape=[POOL] * 2,
                              strides=[POOL] * 2)]
    nodes += _sign_nodes("pooled", "thresh1_level", "features")
    # map k at tile row k % 4, tile column k // 4 (firmware_sim.mosaic):
    # (T, col, row, h, w) -> (T, row, h, col, w)
    return nodes + [
        helper.make_node("Reshape", ["features", "shape_tiles"], ["tiles"]),
        helper.make_node("Transpose", ["tiles"], ["tiles_t"], perm=[0, 2, 3, 1, 4]),
        helper.make_node("Reshape", ["tiles_t", "shape_frames"], ["x_mosaic"]),
        helper.make_node("Conv", ["x_mosaic", "w_input"], ["x_in"], kernel_shape=[KERNEL] * 2, pads=PADS),
        helper.make_node("Split", ["x_in"], [f"x_in_{i}" for i in range(timesteps)], axis=0)]


def _recurrent_nodes(layout: ReadoutLayout, hidden: int = 1) -> tuple[list[onnx.NodeProto], list[str]]:
    """The binary RNN (h0 = +1), unrolled up to the last read-out frame: (nodes, the read-out frames'
    o, each (1, K, 64, 64), in frame order). Step i splits its H + K sums into the H gates' and o's."""
    last = layout.frames[-1]
    split = ["split_gate_out"] if layout.channels > 1 or hidden > 1 else []
    nodes, state = [], "hidden_0"
    for i in range(last):
        nodes += [helper.make_node("Conv", [state, "w_hidden"], [f"h_in_{i}"],
                                   kernel_shape=[KERNEL] * 2, pads=PADS),
                  helper.make_node("Add", [f"x_in_{i}", f"h_in_{i}"], [f"pre_{i}"]),
                  helper.make_node("Split", [f"pre_{i}"] + split, [f"gate_pre_{i}", f"out_{i}"], axis=1)]
        if i < last - 1:  # the last read-out step's gate is never used: nothing after it leaves the sensor
            nodes += _sign_nodes(f"gate_pre_{i}", "gate_level", f"gate_{i}")
            nodes.append(helper.make_node("Mul", [f"gate_{i}", state], [f"hidden_{i + 1}"]))
            state = f"hidden_{i + 1}"
    return nodes, [f"out_{f - 1}" for f in layout.frames]


def _readout_nodes(layout: ReadoutLayout, outs: list[str]) -> list[onnx.NodeProto]:
    """The read-out frames' o -> ``readout`` uint8: ``ReadoutLayout.pool_maps`` then ``quantize``
    (see the module docstring for why each step is exact)."""
    if layout.is_authors:       # o_T (1, 1, 64, 64) -> (1, 64, 64), as before layouts existed
        return _adc_nodes(outs[0]) + [helper.make_node("Reshape", ["o_clipped", "shape_readout"], ["o_map"]),
                                      helper.make_node("Cast", ["o_map"], ["readout"], to=TensorProto.UINT8)]
    nodes, o = [], outs[0]
    if len(outs) > 1:           # frame-major: read-out frame i's K maps are maps i*K .. i*K + K - 1
        nodes.append(helper.make_node("Concat", outs, ["o_maps"], axis=1))
        o = "o_maps"
    if layout.pool > 1:         # the mean of each pool x pool block
        p = layout.pool
        nodes.append(helper.make_node("AveragePool", [o], ["o_pooled"], kernel_shape=[p, p], strides=[p, p]))
        o = "o_pooled"
    if layout.bits == 8:
        return nodes + _adc_nodes(o) + [helper.make_node("Cast", ["o_clipped"], ["readout"], to=TensorProto.UINT8)]
    # level = #{m : o >= t_m}: (2**b - 1, 1, M, S, S) comparisons, summed over the thresholds
    return nodes + [helper.make_node("GreaterOrEqual", [o, LEVELS_INPUT], ["o_ge"]),
                    helper.make_node("Cast", ["o_ge"], ["o_ge_f"], to=_F),
                    helper.make_node("ReduceSum", ["o_ge_f", "axis_levels"], ["o_levels"], keepdims=0),
                    helper.make_node("Cast", ["o_levels"], ["readout"], to=TensorProto.UINT8)]


def _adc_nodes(o: str) -> list[onnx.NodeProto]:
    """The 8-bit ADC level ``clip(floor(127 + iw * o), 0, 255)`` of ``o``, as float32 ``o_clipped``."""
    return [helper.make_node("Mul", [o, "c_iw"], ["o_scaled"]),
            helper.make_node("Add", ["o_scaled", "c_zero_level"], ["o_level"]),
            helper.make_node("Floor", ["o_level"], ["o_floor"]),
            helper.make_node("Clip", ["o_floor", "zero", "c255"], ["o_clipped"])]


def _hidden_kernels(sensor: SensorWeights) -> np.ndarray:
    """``w_hidden`` of H > 1 maps: (H + K, H, 5, 5), W_fh^j at [j, j] and W_oh^{k,j} at [H + k, j]."""
    h, k = sensor.hidden, sensor.channels
    out = np.zeros((h + k, h, KERNEL, KERNEL), np.int8)
    for j in range(h):
        out[j, j] = sensor.fh_kernels[j]
    out[h:] = sensor.oh_kernels
    return out


def _sensor_initializers(sensor: SensorWeights) -> list[TensorProto]:
    fe, layout = sensor.frontend, sensor.layout
    t1 = threshold_level(sensor.thresh1)
    out = "" if sensor.channels == 1 else f"[0..{sensor.channels - 1}]"
    if sensor.hidden == 1:
        w_hidden = _init("w_hidden", np.concatenate([sensor.w_fh[None], sensor.w_oh])[:, None], f"W_fh, W_oh{out}")
        gate_level = _init("gate_level", threshold_level(sensor.rnn_threshold),
                           f"ceil(rnn_threshold = {sensor.rnn_threshold!r}): gate sums are integers")
    else:
        last = sensor.hidden - 1
        w_hidden = _init("w_hidden", _hidden_kernels(sensor),
                         f"W_fh[j] at [j, j] (j = 0..{last}; zeros: chain j's gate sees h^j only), W_oh{out}[j] "
                         f"at [{sensor.hidden} + k, j]")
        levels = [threshold_level(t) for t in sensor.gate_thresholds]
        gate_level = _init("gate_level", np.reshape(levels, (1, sensor.hidden, 1, 1)),
                           f"ceil(rnn_threshold[j] = {list(sensor.gate_thresholds)!r}): gate sums are integers")
    w_in = "W_fi" if sensor.hidden == 1 else f"W_fi[0..{sensor.hidden - 1}]"
    inits = [
        _init("conv1", sensor.conv1[:, None], "16 binary 5x5 kernels (cross-correlation)"),
        _init("w_input", np.concatenate([sensor.fi_kernels, sensor.w_oi])[:, None], f"{w_in}, W_oi{out}"),
        w_hidden,
        _init("input_mean", fe.mean, "front end mean (gray/255 scale)"),
        _init("input_std", fe.std, "front end std"),
        _init("theta0", fe.theta0, "input binarization threshold, sign(x - theta0)"),
        _init("thresh1_level", t1, f"ceil(thresh1 = {sensor.thresh1!r}): pooled sums are integers"),
        gate_level,
    ]
    if layout.bits < 8:
        inits.append(_init(LEVELS_INPUT, readout_thresholds(layout, hidden=sensor.hidden).reshape(-1, 1, 1, 1, 1),
                           f"level = #(o >= t_m), t_m the least readable o at level >= m "
                           f"(bits {layout.bits}, step {layout.step!r})"))
    return inits


def _sensor_node(layout: ReadoutLayout) -> onnx.NodeProto:
    return helper.make_node(SENSOR_OP, sensor_inputs(layout), ["readout"], name="pixel_array", domain=DOMAIN)


def _check_sensor(sensor: SensorWeights) -> None:
    if not isinstance(sensor, SensorWeights):
        raise TypeError(f"sensor must be a firmware_sim SensorWeights, got {type(sensor).__name__}")
    if sensor.frontend.size != SIZE:
        raise ValueError(f"ONNX export supports {SIZE}x{SIZE} sensors, got size {sensor.frontend.size}")


# -- the host decoder -----------------------------------------------------------------------------
def _host_nodes(decoder: DecoderParams) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """readout (1, 64, 64) uint8 -> logits, as ``PixelRNN.decode``.

    o = (r - 127) / 10; times sign(fin_conv); BatchNorm (eval); tanh; minus thresh3; Linear.
    """
    nodes = [helper.make_node("Cast", ["readout"], ["readout_f"], to=_F),
             helper.make_node("Sub", ["readout_f", "host_zero_level"], ["readout_c"]),
             helper.make_node("Div", ["readout_c", "host_iw"], ["o"]),
             helper.make_node("Mul", ["o", "fin_sign"], ["y"]),
             helper.make_node("Reshape", ["y", "host_shape_nchw"], ["y_nchw"]),
             helper.make_node("BatchNormalization", ["y_nchw", "bn_weight", "bn_bias", "bn_mean", "bn_var"],
                              ["y_bn"], epsilon=decoder.bn_eps),
             helper.make_node("Tanh", ["y_bn"], ["y_tanh"]),
             helper.make_node("Sub", ["y_tanh", "thresh3"], ["y_feat"]),
             helper.make_node("Reshape", ["y_feat", "host_shape_flat"], ["features_flat"]),
             helper.make_node("MatMul", ["features_flat", "fc_weight_t"], ["fc_out"]),
             helper.make_node("Add", ["fc_out", "fc_bias"], ["logits"])]
    inits = [_init("host_zero_level", ZERO_LEVEL), _init("host_iw", IW),
             _init("fin_sign", decoder.fin_sign.reshape(()), "sign of the 1x1 conv weight"),
             _init("host_shape_nchw", [1, 1, SIZE, SIZE], dtype=np.int64),
             _init("bn_weight", decoder.bn_weight), _init("bn_bias", decoder.bn_bias),
             _init("bn_mean", decoder.bn_mean), _init("bn_var", decoder.bn_var),
             _init("thresh3", decoder.thresh3.reshape(())),
             _init("host_shape_flat", [1, SIZE * SIZE], dtype=np.int64),
             _init("fc_weight_t", np.ascontiguousarray(decoder.fc_weight.T), "Linear weight, transposed"),
             _init("fc_bias", decoder.fc_bias)]
    return nodes, inits


def _check_decoder(decoder: DecoderParams) -> None:
    if not isinstance(decoder, DecoderParams):
        raise TypeError(f"decoder must be DecoderParams, got {type(decoder).__name__}")
    classes = decoder.num_classes
    if decoder.fc_weight.shape != (classes, SIZE * SIZE) or decoder.fc_bias.shape != (classes,):
        raise ValueError(f"decoder Linear must be (classes, {SIZE * SIZE}), got {decoder.fc_weight.shape}")


# -- models ---------------------------------------------------------------------------------------
def _frames_info(timesteps: int):
    return helper.make_tensor_value_info("frames", TensorProto.UINT8, [1, timesteps, SIZE, SIZE])


def readout_shape(layout: ReadoutLayout | None = None) -> list[int]:
    """The ``readout`` tensor's shape: (1, 64, 64) for the authors' layout (None), (1, M, S, S) for any
    other (one window of ``firmware_sim``'s ``SensorResult.readout``)."""
    return [1, SIZE, SIZE] if layout is None or layout.is_authors else [1, *layout.shape]


def _readout_info(layout: ReadoutLayout | None = None):
    return helper.make_tensor_value_info("readout", TensorProto.UINT8, readout_shape(layout))


def _make_model(graph: onnx.GraphProto, *, functions: list[onnx.FunctionProto],
                metadata: dict[str, str], doc: str) -> onnx.ModelProto:
    opsets = [helper.make_opsetid("", OPSET)]
    if functions:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model = helper.make_model(graph, opset_imports=opsets, functions=functions, producer_name=PRODUCER,
                              producer_version=__version__, doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})
    return model


def model_metadata(*, sensor: SensorWeights, classes: list[str] | None = None,
                   task: str | None = None) -> dict[str, str]:
    """The metadata_props every exported model carries (strings; JSON where structured)."""
    t = sensor.timesteps
    meta = {
        "iw": f"{IW:g}", "zero_level": f"{ZERO_LEVEL:g}", "timesteps": str(t),
        "input_spec": (f"frames uint8 (1,{t},{SIZE},{SIZE}) gray 0..255, front end mean/std/theta0: "
                       "x = (g/255 - mean)/std, binary input sign(x - theta0), sign(0)=+1"),
        "readout_spec": f"readout uint8 (1,{SIZE},{SIZE}) = clip(floor({ZERO_LEVEL:g} + {IW:g}*o_T), 0, 255)",
        "frontend": json.dumps(sensor.frontend.to_dict()),
        "thresholds": json.dumps({"thresh1": sensor.thresh1, "rnn_threshold": sensor.rnn_threshold}),
        "sensor_program_hash": sensor.program_hash(),
        "pixelrnn_version": __version__, "producer": PRODUCER,
    }
    if sensor.hidden > 1:
        meta["hidden_channels"] = str(sensor.hidden)
    if classes is not None:
        meta["classes"] = json.dumps(list(classes))
    if task is not None:
        meta["task"] = task
    return meta


def sensor_model(*, sensor: SensorWeights, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """``sensor.onnx``: frames -> readout (the levels of ``sensor.layout``), one
    ``pixelrnn.ppa.PixelRNNSensor`` node."""
    _check_sensor(sensor)
    layout = sensor.layout
    graph = helper.make_graph([_sensor_node(layout)], "pixelrnn_sensor", [_frames_info(sensor.timesteps)],
                              [_readout_info(layout)], initializer=_sensor_initializers(sensor))
    if not metadata:
        metadata = model_metadata(sensor=sensor) if layout.is_authors else layout_metadata(sensor=sensor, frames=True)
    what = "8-bit readout" if layout.is_authors else f"readout levels ({layout.describe()})"
    return _make_model(graph, functions=[sensor_function(timesteps=sensor.timesteps, layout=layout,
                                                         hidden=sensor.hidden)],
                       metadata=metadata, doc=f"PixelRNN sensor (pixel-processor array): frames -> {what}")


def host_model(*, decoder: DecoderParams, metadata: dict[str, str]) -> onnx.ModelProto:
    """``host.onnx``: readout -> logits (the off-sensor decoder)."""
    _check_decoder(decoder)
    nodes, inits = _host_nodes(decoder)
    logits = helper.make_tensor_value_info("logits", _F, [1, decoder.num_classes])
    graph = helper.make_graph(nodes, "pixelrnn_host", [_readout_info()], [logits], initializer=inits)
    return _make_model(graph, functions=[], metadata=metadata,
                       doc="PixelRNN host decoder: 8-bit readout -> class logits")


def full_model(*, sensor: SensorWeights, decoder: DecoderParams | LayoutDecoderParams,
               metadata: dict[str, str]) -> onnx.ModelProto:
    """``pixelrnn.onnx``: frames -> logits (and the readout that would cross the sensor boundary).

    ``decoder``: the authors' (:func:`decoder_params`) or any layout's (:func:`layout_decoder_params`),
    reading ``sensor``'s readout."""
    _check_sensor(sensor)
    layout = sensor.layout
    nodes, inits = _decoder_nodes(decoder, layout)
    logits = helper.make_tensor_value_info("logits", _F, [1, decoder.num_classes])
    graph = helper.make_graph([_sensor_node(layout)] + nodes, "pixelrnn", [_frames_info(sensor.timesteps)],
                              [logits, _readout_info(layout)], initializer=_sensor_initializers(sensor) + inits)
    return _make_model(graph, functions=[sensor_function(timesteps=sensor.timesteps, layout=layout,
                                                         hidden=sensor.hidden)],
                       metadata=metadata, doc="PixelRNN: frames -> sensor readout -> host decoder -> class logits")


def _decoder_nodes(decoder, layout: ReadoutLayout) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """The host nodes of ``decoder`` (either kind), which must read ``layout``'s readout."""
    if isinstance(decoder, LayoutDecoderParams):
        _check_layout_decoder(decoder)
        if decoder.layout != layout:
            raise ValueError(f"the decoder reads {decoder.layout.describe()}, the sensor reads out {layout.describe()}")
        return _layout_host_nodes(decoder)
    _check_decoder(decoder)
    if not layout.is_authors:
        raise ValueError(f"DecoderParams decode the authors' readout, the sensor reads out {layout.describe()}: "
                         "pass layout_decoder_params(model)")
    return _host_nodes(decoder)


# -- the host decoder of any readout layout ---------------------------------------------------------
@dataclass(frozen=True)
class LayoutDecoderParams:
    """The off-sensor decoder of a model with a readout layout, as float32 numpy arrays.

    ``head`` is ``authors`` (per-map sign of the 1x1 conv, BatchNorm, tanh, minus thresh3, Linear)
    or ``mlp`` (BatchNorm, Linear, ReLU, Linear; dropout is the identity in eval). ``linears``:
    the Linear layers' (weight (out, in), bias (out,)) in order.
    """

    layout: ReadoutLayout
    head: str
    bn_weight: np.ndarray     # (M,)
    bn_bias: np.ndarray       # (M,)
    bn_mean: np.ndarray       # (M,) running mean
    bn_var: np.ndarray        # (M,) running variance
    bn_eps: float
    linears: tuple[tuple[np.ndarray, np.ndarray], ...]
    fin_sign: np.ndarray | None = None    # (M,) +-1 (authors head)
    thresh3: np.ndarray | None = None     # (1,) (authors head)
    convs: tuple = ()                     # cnn head: ("conv", w, b) | ("bn", scale, bias, mean, var, eps) | ("relu",)
                                          # | ("maxpool",) | ("avgpool", k)

    @property
    def num_classes(self) -> int:
        return int(self.linears[-1][0].shape[0])


def layout_decoder_params(model) -> LayoutDecoderParams:
    """Read the decoder of a PixelRNN with any readout layout (eval-mode semantics: running stats)."""
    f32 = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    layout = model.config.layout
    m = layout.maps
    head = model.config.decoder
    common = dict(layout=layout, head=head, bn_weight=f32(model.bn.weight).reshape(m),
                  bn_bias=f32(model.bn.bias).reshape(m), bn_mean=f32(model.bn.running_mean).reshape(m),
                  bn_var=f32(model.bn.running_var).reshape(m), bn_eps=float(model.bn.eps))
    if head == "mlp":
        from torch import nn

        kinds = [type(layer) for layer in model.head]
        if kinds != [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]:
            raise ValueError(f"the mlp head must be Linear, ReLU, Dropout, Linear; got "
                             f"{', '.join(k.__name__ for k in kinds)}")
        linears = tuple((f32(layer.weight), f32(layer.bias)) for layer in model.head if isinstance(layer, nn.Linear))
        return LayoutDecoderParams(linears=linears, **common)
    if head == "cnn":
        from torch import nn

        convs, side = [], layout.side
        for layer in model.head:
            if isinstance(layer, nn.Conv2d):
                convs.append(("conv", f32(layer.weight), f32(layer.bias)))
            elif isinstance(layer, nn.BatchNorm2d):
                convs.append(("bn", f32(layer.weight), f32(layer.bias), f32(layer.running_mean),
                              f32(layer.running_var), float(layer.eps)))
            elif isinstance(layer, nn.ReLU):
                convs.append(("relu",))
            elif isinstance(layer, nn.MaxPool2d):
                convs.append(("maxpool",))
                side //= 2
            elif isinstance(layer, nn.AdaptiveAvgPool2d):
                if side % 4:
                    raise ValueError(f"the cnn head's 4x4 average pool needs a side divisible by 4, got {side}")
                convs.append(("avgpool", side // 4))
            elif not isinstance(layer, (nn.Identity, nn.Flatten, nn.Dropout, nn.Linear)):
                raise ValueError(f"the cnn head has a layer the ONNX export does not know: {type(layer).__name__}")
        linears = tuple((f32(layer.weight), f32(layer.bias)) for layer in model.head if isinstance(layer, nn.Linear))
        return LayoutDecoderParams(linears=linears, convs=tuple(convs), **common)
    return LayoutDecoderParams(linears=((f32(model.fc.weight), f32(model.fc.bias)),),
                               fin_sign=f32(model.binarize(model.fin_conv.detach())).reshape(m),
                               thresh3=f32(model.thresh3).reshape(1), **common)


def _check_layout_decoder(decoder: LayoutDecoderParams) -> None:
    if not isinstance(decoder, LayoutDecoderParams):
        raise TypeError(f"decoder must be LayoutDecoderParams, got {type(decoder).__name__}")
    layout = decoder.layout
    m, feats = layout.maps, layout.maps * layout.side ** 2
    if decoder.head not in ("authors", "mlp", "cnn"):
        raise ValueError(f"decoder head must be authors, mlp or cnn, got {decoder.head!r}")
    for name in ("bn_weight", "bn_bias", "bn_mean", "bn_var") + (("fin_sign",) if decoder.head == "authors" else ()):
        if getattr(decoder, name) is None or getattr(decoder, name).shape != (m,):
            raise ValueError(f"decoder {name} must have shape ({m},) for {m} readout maps")
    width = feats
    if decoder.head == "cnn":
        channels = [c[1].shape[0] for c in decoder.convs if c[0] == "conv"]
        width = channels[-1] * 16 if channels else 0
    for i, (weight, bias) in enumerate(decoder.linears):
        if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
            raise ValueError(f"decoder Linear {i} must be (out, {width}) with a bias (out,), got "
                             f"{weight.shape} and {bias.shape}")
        width = weight.shape[0]


def authors_feature_table(decoder: LayoutDecoderParams) -> np.ndarray:
    """(M, 2**bits) float32: the authors head's feature of each map at each readout level,
    ``tanh(BatchNorm(fin_sign * dequantize(level))) - thresh3``, evaluated in float64 and rounded once."""
    layout = decoder.layout
    o = layout.dequantize(np.arange(2 ** layout.bits, dtype=np.uint8)).astype(np.float64)       # (L,)
    y = decoder.fin_sign.astype(np.float64)[:, None] * o[None, :]                                # (M, L)
    mean, var = decoder.bn_mean.astype(np.float64)[:, None], decoder.bn_var.astype(np.float64)[:, None]
    bn = (y - mean) / np.sqrt(var + decoder.bn_eps) * decoder.bn_weight.astype(np.float64)[:, None] \
        + decoder.bn_bias.astype(np.float64)[:, None]
    return (np.tanh(bn) - float(decoder.thresh3.reshape(-1)[0])).astype(np.float32)


def _feature_nodes(decoder: LayoutDecoderParams) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """``readout_f`` (levels, float) -> ``y_feat``: the layout's dequantize, then the head's per-map
    BatchNorm (and for the authors' head the sign, tanh and thresh3), evaluated at run time."""
    layout, m = decoder.layout, decoder.layout.maps
    bn = ["bn_weight", "bn_bias", "bn_mean", "bn_var"]
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    if layout.bits == 8:
        nodes += [helper.make_node("Sub", ["readout_f", "host_zero_level"], ["readout_c"]),
                  helper.make_node("Div", ["readout_c", "host_iw"], ["o"])]
        inits += [_init("host_zero_level", ZERO_LEVEL), _init("host_iw", IW)]
    else:
        nodes += [helper.make_node("Sub", ["readout_f", "host_zero_level"], ["readout_c"]),
                  helper.make_node("Add", ["readout_c", "host_half"], ["readout_mid"]),
                  helper.make_node("Mul", ["readout_mid", "host_step"], ["o"])]
        inits += [_init("host_zero_level", layout.zero), _init("host_half", 0.5),
                 _init("host_step", layout.step, f"MAC units per {layout.bits}-bit level")]
    inits += [_init("bn_weight", decoder.bn_weight), _init("bn_bias", decoder.bn_bias),
              _init("bn_mean", decoder.bn_mean), _init("bn_var", decoder.bn_var)]
    if decoder.head == "authors":
        nodes += [helper.make_node("Mul", ["o", "fin_sign"], ["y"]),
                  helper.make_node("BatchNormalization", ["y"] + bn, ["y_bn"], epsilon=decoder.bn_eps),
                  helper.make_node("Tanh", ["y_bn"], ["y_tanh"]),
                  helper.make_node("Sub", ["y_tanh", "thresh3"], ["y_feat"])]
        inits += [_init("fin_sign", decoder.fin_sign.reshape(1, m, 1, 1), "sign of the 1x1 conv weight, per map"),
                  _init("thresh3", decoder.thresh3.reshape(()))]
    else:
        nodes.append(helper.make_node("BatchNormalization", ["o"] + bn, ["y_feat"], epsilon=decoder.bn_eps))
    return nodes, inits


def _layout_host_nodes(decoder: LayoutDecoderParams) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """readout (1, M, S, S) uint8 levels -> logits, as ``PixelRNN.decode``: dequantize (the layout's
    ``dequantize``: (r - 127) / 10 for 8 bit, (r - zero + 0.5) * step otherwise), then the head."""
    layout = decoder.layout
    m, s = layout.maps, layout.side
    nodes = [helper.make_node("Cast", ["readout"], ["readout_f"], to=_F)]
    inits = []
    if layout.is_authors:       # another head on the authors' readout: its input stays (1, 64, 64)
        nodes = [helper.make_node("Cast", ["readout"], ["readout_u"], to=_F),
                 helper.make_node("Reshape", ["readout_u", "host_shape_maps"], ["readout_f"])]
        inits = [_init("host_shape_maps", [1, m, s, s], dtype=np.int64)]
    inits.append(_init("host_shape_flat", [1, m * s * s], dtype=np.int64))
    if decoder.head == "authors" and layout.bits == 1:
        # A 1-bit level is 0 or 1, so a map's feature tanh(BatchNorm(sign * dequantize(level))) -
        # thresh3 takes two values, T0 and T0 + D (computed here in float64, rounded once): the graph
        # computes T0 + D * level, which every machine rounds alike (D * 0 and D * 1 are exact, then
        # one addition). ONNX Runtime's tanh/BatchNorm kernels round differently on x86 and ARM: the
        # 1-bit gesture default's logits moved by a few ulps on aarch64 with them.
        table = authors_feature_table(decoder)
        nodes += [helper.make_node("Mul", ["readout_f", "host_feature_step"], ["feature_step"]),
                  helper.make_node("Add", ["feature_step", "host_feature_zero"], ["y_feat"])]
        inits += [_init("host_feature_zero", table[:, 0].reshape(1, m, 1, 1), "the feature at level 0, per map"),
                  _init("host_feature_step", (table[:, 1].astype(np.float64) - table[:, 0]).astype(np.float32)
                        .reshape(1, m, 1, 1), "level 1's feature minus level 0's, per map")]
    else:
        more, more_inits = _feature_nodes(decoder)
        nodes, inits = nodes + more, inits + more_inits
    if decoder.head == "cnn":      # conv layers on the (1, M, S, S) maps, then flatten to the Linear
        cur = "y_feat"
        for j, layer in enumerate(decoder.convs):
            nxt = f"cnn{j}"
            if layer[0] == "conv":
                nodes.append(helper.make_node("Conv", [cur, f"cnn{j}_w", f"cnn{j}_b"], [nxt],
                                              kernel_shape=list(layer[1].shape[2:]), pads=[1, 1, 1, 1]))
                inits += [_init(f"cnn{j}_w", layer[1], "3x3 conv weight"), _init(f"cnn{j}_b", layer[2])]
            elif layer[0] == "bn":
                names = [f"cnn{j}_{k}" for k in ("scale", "bias", "mean", "var")]
                nodes.append(helper.make_node("BatchNormalization", [cur] + names, [nxt], epsilon=layer[5]))
                inits += [_init(name, arr) for name, arr in zip(names, layer[1:5])]
            elif layer[0] == "relu":
                nodes.append(helper.make_node("Relu", [cur], [nxt]))
            elif layer[0] == "maxpool":
                nodes.append(helper.make_node("MaxPool", [cur], [nxt], kernel_shape=[2, 2], strides=[2, 2]))
            else:
                k = int(layer[1])
                nodes.append(helper.make_node("AveragePool", [cur], [nxt], kernel_shape=[k, k], strides=[k, k]))
            cur = nxt
        nodes.append(helper.make_node("Flatten", [cur], ["h_0"], axis=1))
    else:
        nodes.append(helper.make_node("Reshape", ["y_feat", "host_shape_flat"], ["h_0"]))
    last = len(decoder.linears) - 1
    for i, (weight, bias) in enumerate(decoder.linears):
        out = "logits" if i == last else f"fc{i}_out"
        nodes += [helper.make_node("MatMul", [f"h_{i}", f"fc{i}_weight_t"], [f"fc{i}_mm"]),
                  helper.make_node("Add", [f"fc{i}_mm", f"fc{i}_bias"], [out])]
        inits += [_init(f"fc{i}_weight_t", np.ascontiguousarray(weight.T), f"Linear {i} weight, transposed"),
                  _init(f"fc{i}_bias", bias)]
        if i != last:
            nodes.append(helper.make_node("Relu", [out], [f"h_{i + 1}"]))
    return nodes, inits


def layout_metadata(*, sensor: SensorWeights, classes: list[str] | None = None,
                    task: str | None = None, frames: bool = False) -> dict[str, str]:
    """The metadata_props of a readout layout's models (strings; JSON where structured); ``frames``:
    for a model that takes frames (sensor.onnx, pixelrnn.onnx), which also carries ``input_spec``."""
    layout = sensor.layout
    dropped = ("readout_spec",) if frames else ("readout_spec", "input_spec")
    meta = {k: v for k, v in model_metadata(sensor=sensor, classes=classes, task=task).items() if k not in dropped}
    shape = ",".join(map(str, readout_shape(layout)))
    meta["readout_spec"] = (f"readout uint8 ({shape}): {layout.describe()}; maps frame-major, levels as "
                            "core.readout_layout.ReadoutLayout.quantize")
    meta["readout_layout"] = json.dumps(layout.to_dict(), sort_keys=True)
    return meta


def layout_host_model(*, decoder: LayoutDecoderParams, metadata: dict[str, str]) -> onnx.ModelProto:
    """``host.onnx`` of a readout layout: ``readout`` (1, M, S, S) uint8 -> ``logits`` (1, classes)."""
    _check_layout_decoder(decoder)
    nodes, inits = _layout_host_nodes(decoder)
    logits = helper.make_tensor_value_info("logits", _F, [1, decoder.num_classes])
    graph = helper.make_graph(nodes, "pixelrnn_host", [_readout_info(decoder.layout)], [logits], initializer=inits)
    return _make_model(graph, functions=[], metadata=metadata,
                       doc=f"PixelRNN host decoder ({decoder.head} head): readout levels "
                           f"({decoder.layout.describe()}) -> class logits")


def build_models(*, model) -> dict[str, onnx.ModelProto]:
    """The three ONNX models of a :class:`pixelrnn.model.PixelRNN` (eval semantics, noise off).

    The authors' readout with the authors' head: the 8-bit o_T, whatever ``config.readout_8bit`` the
    model was trained with (the only thing a real sensor sends). Any other readout layout or head:
    the layout's levels, as the sensor sends them, through :func:`layout_host_model`'s decoder.
    """
    if not (hasattr(model, "sensor_weights") and hasattr(model, "config")):
        raise TypeError(f"model must be a pixelrnn PixelRNN, got {type(model).__name__}")
    sensor = model.sensor_weights()
    info = dict(sensor=sensor, classes=model.config.class_names, task=model.config.task)
    if sensor.layout.is_authors and model.config.decoder == "authors":
        decoder, meta = decoder_params(model), model_metadata(**info)
        host, framed = host_model(decoder=decoder, metadata=meta), meta
    else:
        decoder, meta = layout_decoder_params(model), layout_metadata(**info)
        host, framed = layout_host_model(decoder=decoder, metadata=meta), layout_metadata(**info, frames=True)
    return {"sensor.onnx": sensor_model(sensor=sensor, metadata=framed), "host.onnx": host,
            "pixelrnn.onnx": full_model(sensor=sensor, decoder=decoder, metadata=framed)}


def export_onnx(*, model, out_dir: str | Path, files: tuple[str, ...] = FILES) -> dict[str, Path]:
    """Check and write ``files`` (of ``sensor.onnx``, ``host.onnx``, ``pixelrnn.onnx``) into an
    existing folder; the others are neither checked nor written."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise InputError(f"ONNX output folder does not exist: {out_dir}")
    unknown = set(files) - set(FILES)
    if unknown:
        raise InputError(f"ONNX files must be among {', '.join(FILES)}, got {', '.join(sorted(unknown))}")
    written = {}
    for name, proto in build_models(model=model).items():
        if name not in files:
            continue
        onnx.checker.check_model(proto, full_check=True)
        path = out_dir / name
        onnx.save_model(proto, str(path))
        written[name] = path
    return written
