"""TFLite files of a model with another readout layout or decoder head, from its numpy parameters.

The Keras/Larq twin (:mod:`pixelrnn.larq_twin`) builds the authors' readout and head only. For any
other :class:`core.readout_layout.ReadoutLayout` or head this module builds the same computation as
``host.onnx`` and ``sensor.onnx`` (:mod:`export.onnx_export`), op for op, as TensorFlow functions
of builtin ops, and converts them with TensorFlow's converter (``TFLITE_BUILTINS`` only, so
ai-edge-litert and tflite-runtime both run the files):

- ``host.tflite``: readout levels (N, M, S, S) uint8 -> logits (N, classes), the layout's
  ``dequantize`` then the head of :class:`export.onnx_export.LayoutDecoderParams` (authors, mlp,
  cnn). The authors' 64x64 8-bit readout with another head keeps its (N, 64, 64) input, as
  ``host.onnx`` does and the camera loop feeds it;
- ``host_int8.tflite`` (:func:`host_int8_tflite`): the same input and output as ``host.tflite``
  (uint8 levels, not quantized, -> float32 logits) and int8 inside: a CAST and a QUANTIZE, then
  every op of the decoder in int8 (post-training, static ranges calibrated on representative
  readout levels of the layout), a DEQUANTIZE to the float logits. Its input takes the levels as
  they are, so a device feeds it exactly what it feeds ``host.tflite`` (a b < 8-bit level needs no
  scale: 0..2**b - 1, with the int8 scale fitted after the cast);
- ``pixelrnn.tflite``: frames (N, T, 64, 64) uint8 -> logits, the sensor program
  (:class:`firmware_sim.weights.SensorWeights`) then the same decoder;
- ``pixelrnn_lce.tflite`` (:func:`lce_keras_model`, converted by Larq Compute Engine): the same
  computation with the sensor's binary convolutions as Larq layers, which LCE bit-packs
  (LceBconv2d); batch 1, and only LCE's interpreter runs it.

Exactness of the sensor part (as in :mod:`export.onnx_export`, whose helpers it reuses): the input
binarization compares the gray level with the least level the front end maps to +1; every other
binary decision compares an integer pre-activation with ``ceil(threshold)``
(:func:`export.onnx_export.threshold_level`); pooling is an average of integers over a power-of-two
block; the 8-bit level is ``clip(floor(127 + 10 o))`` with no rounding on the way, and a b < 8-bit
level is the count of read-out thresholds ``o >= t_m`` (:func:`export.onnx_export.readout_thresholds`).
So the readout levels are those of ``firmware_sim`` bit for bit (in every file: a binary
convolution of +-1 maps sums integers, exact in float32 and in LCE's popcounts). The decoder is
float32: its logits differ from ``PixelRNN.decode`` by the order of float32 sums only (tests allow
1e-4). The authors' readout and head keep the Keras/Larq twin (:mod:`pixelrnn.larq_twin`).
"""
from __future__ import annotations

import warnings

import numpy as np

from export.onnx_export import LayoutDecoderParams, readout_thresholds, threshold_level
from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.weights import SensorWeights

SIZE = 64
POOL = 4            # the in-pixel CNN's max-pool


def _tf():
    """TensorFlow, imported through the twin so that Keras 2 (``TF_USE_LEGACY_KERAS``) is set first."""
    from pixelrnn.larq_twin import tf
    return tf


# -- the host decoder --------------------------------------------------------------------------------
def _channel_affine(x, scale: np.ndarray, shift: np.ndarray, shape: tuple[int, ...]):
    """``x * scale + shift`` per channel, the constants reshaped to broadcast as ``shape``."""
    tf = _tf()
    return x * tf.constant(scale.reshape(shape)) + tf.constant(shift.reshape(shape))


def _batchnorm(x, weight, bias, mean, var, eps: float, shape: tuple[int, ...]):
    """Eval-mode BatchNorm (running statistics) as one multiply-add per channel, in float32."""
    scale = (weight / np.sqrt(var + np.float32(eps))).astype(np.float32)
    return _channel_affine(x, scale, (bias - mean * scale).astype(np.float32), shape)


def _dequantize(levels, layout):
    """uint8 levels -> o in MAC units, as ``ReadoutLayout.dequantize`` and ``host.onnx`` compute it."""
    tf = _tf()
    r = tf.cast(levels, tf.float32)
    if layout.bits == 8:
        return (r - np.float32(ZERO_LEVEL)) / np.float32(IW)
    return (r - np.float32(layout.zero) + np.float32(0.5)) * np.float32(layout.step)


def _cnn(y, convs: tuple):
    """The cnn head's layers on NCHW maps (run in NHWC, TFLite's layout) -> NCHW-flattened features."""
    tf = _tf()
    x = tf.transpose(y, (0, 2, 3, 1))
    for layer in convs:
        kind = layer[0]
        if kind == "conv":     # PyTorch (out, in, 3, 3), padding 1 -> HWIO, SAME
            x = tf.nn.conv2d(x, np.transpose(layer[1], (2, 3, 1, 0)), 1, "SAME") + layer[2]
        elif kind == "bn":
            x = _batchnorm(x, *layer[1:6], shape=(-1,))
        elif kind == "relu":
            x = tf.nn.relu(x)
        elif kind == "maxpool":
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        else:
            x = tf.nn.avg_pool2d(x, int(layer[1]), int(layer[1]), "VALID")
    return tf.reshape(tf.transpose(x, (0, 3, 1, 2)), (tf.shape(x)[0], -1))


def decode(decoder: LayoutDecoderParams, levels):
    """readout levels (N, M, S, S) (or the authors' (N, 64, 64)) -> logits (N, classes), as
    ``PixelRNN.decode`` and ``host.onnx`` compute them (eval mode)."""
    tf = _tf()
    layout = decoder.layout
    m, s = layout.maps, layout.side
    o = tf.reshape(_dequantize(levels, layout), (-1, m, s, s))
    bn = (decoder.bn_weight, decoder.bn_bias, decoder.bn_mean, decoder.bn_var, decoder.bn_eps)
    if decoder.head == "authors":
        y = tf.tanh(_batchnorm(o * decoder.fin_sign.reshape(1, m, 1, 1), *bn, shape=(1, m, 1, 1)))
        y = y - decoder.thresh3.reshape(())
    else:
        y = _batchnorm(o, *bn, shape=(1, m, 1, 1))
    h = _cnn(y, decoder.convs) if decoder.head == "cnn" else tf.reshape(y, (-1, m * s * s))
    for i, (weight, bias) in enumerate(decoder.linears):
        if i:
            h = tf.nn.relu(h)
        h = tf.matmul(h, np.ascontiguousarray(weight.T)) + bias
    return h


# -- the sensor ----------------------------------------------------------------------------------------
def gray_level(sensor: SensorWeights) -> float:
    """The least gray level the front end binarizes to +1 (256: none), so ``g >= level`` is
    ``FrontEnd.binarize`` on every uint8 level; a front end that is not monotone is a ValueError."""
    positive = sensor.frontend.binarize(np.arange(256, dtype=np.uint8)) > 0
    first = int(np.argmax(positive)) if positive.any() else 256
    if not positive[first:].all():
        raise ValueError("the sensor's input binarization is not monotone in the gray level")
    return float(first)


def _sign(x, level: float):
    """+1 where ``x >= level``, else -1 (sign(0) = +1): a comparison, never a sigmoid."""
    tf = _tf()
    return tf.where(x >= np.float32(level), np.float32(1.0), np.float32(-1.0))


def _kernels(*maps: np.ndarray) -> np.ndarray:
    """5x5 +-1 kernels -> one HWIO filter (5, 5, 1, len) in float32 (cross-correlation, no flip)."""
    return np.stack([np.asarray(k, np.float32) for k in maps], axis=-1)[:, :, None, :]


def _float_conv(x, kernels: np.ndarray):
    """A binary convolution of +-1 maps as a float32 Conv2D (integer sums: exact), zero padding."""
    return _tf().nn.conv2d(x, kernels, 1, "SAME")


def _inputs_of_rnn(sensor: SensorWeights, frames, conv):
    """frames (N, T, 64, 64) uint8 -> the recurrent convolutions' input halves (N, T, 64, 64, H + K):
    binarize, 16 binary 5x5 convs, ReLU, 4x4 max-pool, threshold, 4x4 mosaic, then (W_fi^0..H-1,
    W_oi...) (H = 1: W_fi, as always)."""
    from pixelrnn.larq_twin import mosaic

    tf = _tf()
    t = sensor.timesteps
    x = _sign(tf.cast(tf.reshape(frames, (-1, SIZE, SIZE, 1)), tf.float32), gray_level(sensor))
    pooled = tf.nn.max_pool2d(tf.nn.relu(conv(x, _kernels(*sensor.conv1))), POOL, POOL, "VALID")
    bits = _sign(pooled, threshold_level(sensor.thresh1))
    x_t = tf.reshape(mosaic(bits), (-1, SIZE, SIZE, 1))
    x_in = conv(x_t, _kernels(*sensor.fi_kernels, *sensor.w_oi))
    return tf.reshape(x_in, (-1, t, SIZE, SIZE, sensor.hidden + sensor.channels))


def _levels(layout, o):
    """The read-out o (N, 64, 64, M) -> levels (N, M, S, S) float32: ``pool_maps`` then ``quantize``."""
    tf = _tf()
    if layout.pool > 1:
        o = tf.nn.avg_pool2d(o, layout.pool, layout.pool, "VALID")
    if layout.bits == 8:
        levels = tf.clip_by_value(tf.floor(o * np.float32(IW) + np.float32(ZERO_LEVEL)), 0.0, 255.0)
    else:
        above = [tf.cast(o >= t, tf.float32) for t in readout_thresholds(layout)]
        levels = tf.add_n(above) if len(above) > 1 else above[0]
    return tf.transpose(levels, (0, 3, 1, 2))


def sense(sensor: SensorWeights, frames, conv=_float_conv):
    """frames (N, T, 64, 64) uint8 -> readout levels (N, M, S, S) float32, exactly firmware_sim's
    (noise off): the binary RNN (h0 = +1) unrolled up to the last read-out frame. ``conv(x, kernels)``
    runs each binary convolution (a float Conv2D; LCE's bit-packed one for :func:`lce_keras_model`).
    H > 1 hidden maps: one convolution per chain j of h^j with (W_fh^j, W_oh^{0..K-1,j}) (no zero
    taps, which a bit-packed convolution cannot hold), o = W_oi x + the chains' sums."""
    tf = _tf()
    layout, k = sensor.layout, sensor.channels
    x_in = _inputs_of_rnn(sensor, frames, conv)
    if sensor.hidden > 1:
        return _levels(layout, _sense_chains(sensor, x_in, conv))
    w_hidden, gate = _kernels(sensor.w_fh, *sensor.w_oh), threshold_level(sensor.rnn_threshold)
    hidden, outs = tf.ones_like(x_in[:, 0, :, :, :1]), []
    for i in range(layout.frames[-1]):
        pre = x_in[:, i] + conv(hidden, w_hidden)
        if i + 1 in layout.frames:
            outs.append(pre[..., 1:1 + k])
        if i + 1 < layout.frames[-1]:
            hidden = _sign(pre[..., :1], gate) * hidden
    return _levels(layout, tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0])


def _sense_chains(sensor: SensorWeights, x_in, conv):
    """The RNN of H > 1 hidden maps on ``x_in`` (N, T, 64, 64, H + K) -> the read-out o (N, 64, 64, M)."""
    tf = _tf()
    layout, k, hc = sensor.layout, sensor.channels, sensor.hidden
    w_hidden = [_kernels(sensor.fh_kernels[j], *sensor.oh_kernels[:, j]) for j in range(hc)]
    gates = [threshold_level(t) for t in sensor.gate_thresholds]
    hidden, outs = [tf.ones_like(x_in[:, 0, :, :, :1]) for _ in range(hc)], []
    for i in range(layout.frames[-1]):
        sums = [conv(hidden[j], w_hidden[j]) for j in range(hc)]          # (N, 64, 64, 1 + K) each
        if i + 1 in layout.frames:
            outs.append(tf.add_n([x_in[:, i, :, :, hc:hc + k]] + [s[..., 1:1 + k] for s in sums]))
        if i + 1 < layout.frames[-1]:
            hidden = [_sign(x_in[:, i, :, :, j:j + 1] + sums[j][..., :1], gates[j]) * hidden[j] for j in range(hc)]
    return tf.concat(outs, axis=-1) if len(outs) > 1 else outs[0]


# -- conversion -------------------------------------------------------------------------------------
def _converter(fn, shape: tuple):
    """A TFLite converter of ``fn`` on a uint8 input (None, *shape) (dynamic batch)."""
    tf = _tf()
    concrete = tf.function(fn, input_signature=[tf.TensorSpec((None, *shape), tf.uint8)]).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete])


def _convert(fn, shape: tuple) -> bytes:
    """``fn`` on a uint8 input (None, *shape) -> a builtin-ops TFLite flatbuffer (dynamic batch)."""
    tf = _tf()
    converter = _converter(fn, shape)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def host_input_shape(layout) -> tuple[int, ...]:
    """What host.tflite takes per window: (M, S, S), or (64, 64) for the authors' readout."""
    return (SIZE, SIZE) if layout.is_authors else layout.shape


def host_tflite(decoder: LayoutDecoderParams) -> bytes:
    """``host.tflite``: readout levels -> logits (see the module docstring)."""
    return _convert(lambda levels: decode(decoder, levels), host_input_shape(decoder.layout))


def host_int8_tflite(decoder: LayoutDecoderParams, representative: np.ndarray) -> bytes:
    """``host_int8.tflite``: readout levels (uint8, as host.tflite takes them) -> float32 logits, the
    decoder post-training quantized to int8 (``TFLITE_BUILTINS_INT8``: int8 weights and activations,
    int32 biases), its activation ranges calibrated on ``representative``
    levels (N, *``host_input_shape``) uint8, one at a time (see the module docstring)."""
    tf = _tf()
    shape = host_input_shape(decoder.layout)
    if not (isinstance(representative, np.ndarray) and representative.dtype == np.uint8
            and representative.shape[1:] == tuple(shape) and len(representative)):
        raise ValueError(f"representative must be (N, {', '.join(map(str, shape))}) uint8 levels, got "
                         f"{getattr(representative, 'shape', type(representative).__name__)}")

    def dataset():
        for levels in representative:
            yield [levels[None]]

    converter = _converter(lambda levels: decode(decoder, levels), shape)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_output_type = tf.float32
    with warnings.catch_warnings():   # the uint8 input is cast, not quantized: it has no statistics
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        return converter.convert()


def pixelrnn_tflite(sensor: SensorWeights, decoder: LayoutDecoderParams) -> bytes:
    """``pixelrnn.tflite``: frames (N, T, 64, 64) uint8 -> logits; the decoder must read the sensor's layout."""
    if decoder.layout != sensor.layout:
        raise ValueError(f"the decoder reads {decoder.layout.describe()}, the sensor reads out "
                         f"{sensor.layout.describe()}")
    return _convert(lambda frames: decode(decoder, sense(sensor, frames)), (sensor.timesteps, SIZE, SIZE))


def sensor_tflite(sensor: SensorWeights) -> bytes:
    """The sensor alone, frames -> readout levels (N, M, S, S) float32 (not a bundle file: the
    parity tests' view of ``pixelrnn.tflite``'s sensor part)."""
    return _convert(lambda frames: sense(sensor, frames), (sensor.timesteps, SIZE, SIZE))


# -- bit-packed (LCE) -----------------------------------------------------------------------------------
def _bitpacked_conv(x, kernels: np.ndarray):
    """A Larq QuantConv2D holding ``kernels`` with sign quantizers on input and kernel, which LCE's
    converter turns into a bit-packed LceBconv2d (zero padding, as the float one)."""
    from pixelrnn.larq_twin import lq

    layer = lq.layers.QuantConv2D(kernels.shape[-1], kernels.shape[:2], padding="same", use_bias=False,
                                  input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    out = layer(x)
    layer.set_weights([kernels])
    return out


def lce_keras_model(sensor: SensorWeights, decoder: LayoutDecoderParams):
    """A Keras model, frames (1, T, 64, 64) uint8 -> logits, whose binary convolutions are Larq layers
    (:func:`_bitpacked_conv`), for ``larq_compute_engine.convert_keras_model``."""
    from pixelrnn.larq_twin import keras

    if decoder.layout != sensor.layout:
        raise ValueError(f"the decoder reads {decoder.layout.describe()}, the sensor reads out "
                         f"{sensor.layout.describe()}")
    frames = keras.Input((sensor.timesteps, SIZE, SIZE), batch_size=1, dtype="uint8", name="frames")
    return keras.Model(frames, decode(decoder, sense(sensor, frames, conv=_bitpacked_conv)), name="pixelrnn_lce")
