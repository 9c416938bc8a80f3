"""The Keras/Larq twin of :class:`pixelrnn.model.PixelRNN`, and weights moved both ways.

The PyTorch model stays the one definition of the architecture; this module rebuilds the same
forward pass from Larq layers so that TensorFlow's own converter (plain TFLite) and Larq Compute
Engine (bit-packed TFLite) can export it (docs/DESIGN.md section 4). Layout: PyTorch is NCHW, Keras NHWC;
both convolutions are cross-correlations, so kernels are transposed (out, in, kh, kw) -> (kh, kw,
in, out) without flipping. The decoder flattens a one-channel map, so (C, H, W) with C = 1 and
(H, W, C) give the same order.

In inference (``training`` false) every binary decision is a comparison, ``x >= threshold`` ->
+1 (sign(0) = +1, as the sensor's comparator and ``pixelrnn.quantizers.sign``), never a sigmoid:
for finite float32, ``x - t >= 0`` exactly when ``x >= t``, so this equals the PyTorch model. In
training the same places use a straight-through quantizer (``ste_sign`` or ``tanh_mx``). Larq's
``ste_sign`` is ``sign(sign(x) + 0.1)``: it maps 0 (and -0.0) to +1, like ours.

TensorFlow must run with the legacy Keras 2 (``tf_keras``) for Larq: ``TF_USE_LEGACY_KERAS=1`` is set
here (if unset) before TensorFlow is imported; importing TensorFlow earlier without it fails below.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import larq as lq  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import torch  # noqa: E402

from core.errors import InputError  # noqa: E402
from firmware_sim.encoding import IW, ZERO_LEVEL  # noqa: E402
from pixelrnn.model import KERNEL, N_MAPS, POOL, SIZE, ModelConfig, PixelRNN  # noqa: E402

keras = tf.keras
if not keras.layers.Layer.__module__.startswith("tf_keras"):
    raise ImportError("pixelrnn.larq_twin needs Keras 2 (tf_keras): set TF_USE_LEGACY_KERAS=1 before "
                      "TensorFlow is first imported")

# PyTorch name -> (Keras layer, Keras weight attribute) of every tensor the twin holds.
_CONVS = ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv")
_SCALARS = {"theta0": "binarize_input", "thresh1": "thresh1", "rnn_threshold": "rnn_threshold",
            "thresh3": "thresh3"}
_SENSOR_KEYS = ("conv1", "thresh1", "w_fi", "w_fh", "w_oi", "w_oh", "rnn_threshold", "theta0")


# -- quantizers ---------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="pixelrnn")
class TanhMx(keras.layers.Layer):
    """The authors' estimator: forward sign (sign(0) = +1), backward ``m * (1 - tanh(m x)^2)``."""

    precision = 1

    def __init__(self, m: float = 2.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.m = float(m)

    def call(self, x):
        m = self.m

        @tf.custom_gradient
        def _sign(v):
            def grad(dy):
                t = tf.tanh(m * v)
                return dy * m * (1.0 - t * t)
            return lq.math.sign(v), grad

        return _sign(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "m": self.m}


def make_quantizer(name: str, *, m: float = 2.0):
    """A Larq quantizer for the names of ``pixelrnn.quantizers.QUANTIZERS``."""
    if name == "ste_sign":
        return lq.quantizers.SteSign()
    if name == "tanh_mx":
        return TanhMx(m)
    raise InputError(f"unknown quantizer {name!r}; choose from ['ste_sign', 'tanh_mx']")


# -- layers -------------------------------------------------------------------------------------
@keras.utils.register_keras_serializable(package="pixelrnn")
class Binarize(keras.layers.Layer):
    """``sign(x - threshold)`` with a learnable scalar threshold of shape (1,)."""

    def __init__(self, *, quantizer: str = "ste_sign", m: float = 2.0, initial: float = 1.0,
                 learn: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.quantizer_name, self.m, self.initial, self.learn = quantizer, float(m), float(initial), bool(learn)
        self.quantizer = make_quantizer(quantizer, m=m)

    def build(self, input_shape) -> None:
        self.threshold = self.add_weight(name="threshold", shape=(1,), trainable=self.learn,
                                         initializer=keras.initializers.Constant(self.initial))
        super().build(input_shape)

    def call(self, x, training=None):
        if training:
            return self.quantizer(x - self.threshold)
        return tf.where(x >= self.threshold, 1.0, -1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "quantizer": self.quantizer_name, "m": self.m,
                "initial": self.initial, "learn": self.learn}


@keras.utils.register_keras_serializable(package="pixelrnn")
class InputBinarize(Binarize):
    """Gray frames (0..255) -> ``sign((g / 255 - mean) / std - theta0)``, the sensor's front end.

    ``gray_threshold`` (set by :func:`build_twin`): in inference compare the gray level itself with a
    threshold that reproduces the PyTorch float32 decision on every integer level exactly, so no
    rewrite of the normalisation by a converter can move a bit.
    """

    def __init__(self, *, mean: float, std: float, gray_threshold: float | None = None, **kwargs) -> None:
        kwargs.setdefault("initial", 0.0)
        super().__init__(**kwargs)
        self.mean, self.std = float(mean), float(std)
        self.gray_threshold = None if gray_threshold is None else float(gray_threshold)

    def call(self, frames, training=None):
        g = tf.cast(frames, tf.float32)
        if self.gray_threshold is not None and not training:
            return tf.where(g >= self.gray_threshold, 1.0, -1.0)
        x = (g / 255.0 - self.mean) / self.std
        return super().call(x, training=training)

    def get_config(self) -> dict:
        return {**super().get_config(), "mean": self.mean, "std": self.std,
                "gray_threshold": self.gray_threshold}


@keras.utils.register_keras_serializable(package="pixelrnn")
class Offset(keras.layers.Layer):
    """``x - thresh3`` (learnable scalar of shape (1,))."""

    def build(self, input_shape) -> None:
        self.value = self.add_weight(name="value", shape=(1,), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        return x - self.value


@keras.utils.register_keras_serializable(package="pixelrnn")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization with PyTorch's defaults, carrying ``num_batches_tracked`` for round trips."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("epsilon", 1e-5)
        kwargs.setdefault("momentum", 0.9)      # PyTorch momentum 0.1
        # TF's graph optimizer fuses FusedBatchNorm + Tanh at inference and then fails with
        # "Fusion is not implemented: [FusedBatchNorm,Tanh]" (measured, TF 2.21 CPU): keep it unfused.
        kwargs.setdefault("fused", False)
        super().__init__(**kwargs)

    def build(self, input_shape) -> None:
        super().build(input_shape)
        self.num_batches_tracked = self.add_weight(name="num_batches_tracked", shape=(), dtype="int64",
                                                   initializer="zeros", trainable=False)

    def call(self, x, training=None):
        if training:
            self.num_batches_tracked.assign_add(1)
        return super().call(x, training=training)


@keras.utils.register_keras_serializable(package="pixelrnn")
class Readout(keras.layers.Layer):
    """o -> 8-bit level ``clip(floor(127 + 10 o), 0, 255)``; straight-through gradient in training."""

    def call(self, o, training=None):
        level = ZERO_LEVEL + IW * o
        quantized = tf.clip_by_value(tf.floor(level), 0.0, 255.0)
        if training:
            return level + tf.stop_gradient(quantized - level)
        return quantized


def mosaic(maps):
    """(N, h, w, 16) NHWC maps -> (N, 4h, 4w); map k at tile row k % 4, tile column k // 4 (also used by
    :mod:`export.tflite_layout`)."""
    h, w = maps.shape[1], maps.shape[2]
    t = tf.transpose(maps, (0, 3, 1, 2))                     # (N, k, h, w), k = col * 4 + row
    t = tf.reshape(t, (-1, 4, 4 * h, w))                     # (N, col, row * h + i, j)
    t = tf.transpose(t, (0, 2, 1, 3))                        # (N, row * h + i, col, j)
    return tf.reshape(t, (-1, 4 * h, 4 * w))


# -- the model ----------------------------------------------------------------------------------
def make_keras_model(config: ModelConfig, *, include_sensor: bool = True, quantizer: str | None = None,
                     bitpacked: bool = False, gray_threshold: float | None = None,
                     input_dtype: str = "uint8") -> keras.Model:
    """A fresh (untrained) twin for ``config``; see :func:`build_twin` for one holding a model's weights.

    ``quantizer``: straight-through estimator of the binary weights and decisions in training
    (default ``config.quantizer``). ``bitpacked``: put ``ste_sign`` input quantizers on the binary
    convolutions (their inputs are already +-1, so the numbers do not change) so LCE's converter
    recognises them and bit-packs them. Training noise (``config.noise_*``) is added by
    GaussianNoise layers, active only in training.
    """
    if not isinstance(config, ModelConfig):
        raise InputError(f"config must be a pixelrnn.model.ModelConfig, got {type(config).__name__}")
    if config.hidden_channels != 1:
        raise InputError(f"the Keras/Larq twin has one hidden map, this model has hidden_channels="
                         f"{config.hidden_channels}: train it with --backend torch and export it with --format onnx")
    qname = quantizer or config.quantizer
    m = config.quantizer_m
    q = lambda: make_quantizer(qname, m=m)  # noqa: E731

    def bconv(filters: int, size: int, name: str, binary_input: bool = True):
        return lq.layers.QuantConv2D(
            filters, size, padding="same", use_bias=False, name=name,
            input_quantizer="ste_sign" if (bitpacked and binary_input) else None,
            kernel_quantizer=q(), kernel_constraint="weight_clip",
            kernel_initializer=keras.initializers.RandomUniform(-1.0, 1.0))

    fc = keras.layers.Dense(config.num_classes, name="fc")
    fin_conv = bconv(1, 1, "fin_conv", binary_input=False)
    bn = BatchNorm(name="bn")
    thresh3 = Offset(name="thresh3")

    def decoder(readout):
        o = (tf.cast(readout, tf.float32) - ZERO_LEVEL) / IW
        y = fin_conv(tf.reshape(o, (-1, SIZE, SIZE, 1)))
        y = thresh3(keras.layers.Activation("tanh")(bn(y)))
        return fc(keras.layers.Flatten()(y))

    if not include_sensor:
        readout = keras.Input((SIZE, SIZE), dtype=input_dtype, name="readout")
        return keras.Model(readout, decoder(readout), name="pixelrnn_host")

    steps = config.timesteps
    frames = keras.Input((steps, SIZE, SIZE), dtype=input_dtype, name="frames")
    binary = InputBinarize(mean=config.input_mean, std=config.input_std, gray_threshold=gray_threshold,
                           quantizer=qname, m=m, learn=config.learn_theta0, name="binarize_input")(frames)
    conv = bconv(N_MAPS, KERNEL, "conv1")(tf.reshape(binary, (-1, SIZE, SIZE, 1)))
    pooled = keras.layers.MaxPool2D(POOL, name="pool")(keras.layers.ReLU(name="relu")(conv))
    if config.noise_conv:
        pooled = keras.layers.GaussianNoise(config.noise_conv, name="noise_conv")(pooled)
    bits = Binarize(quantizer=qname, m=m, initial=1.0, name="thresh1")(pooled)     # (B*T, 16, 16, 16)
    x = tf.reshape(mosaic(bits), (-1, steps, SIZE, SIZE))                            # x_t, (B, T, 64, 64)

    w_fi, w_fh, w_oi, w_oh = (bconv(1, KERNEL, n) for n in ("w_fi", "w_fh", "w_oi", "w_oh"))
    gate_of = Binarize(quantizer=qname, m=m, initial=1.0 if config.gate_threshold else 0.0,
                       learn=config.gate_threshold, name="rnn_threshold")
    gate_noise = keras.layers.GaussianNoise(config.noise_gate, name="noise_gate") if config.noise_gate else None
    # input halves of the gate for all frames at once (they do not depend on h)
    fi = tf.reshape(w_fi(tf.reshape(x, (-1, SIZE, SIZE, 1))), (-1, steps, SIZE, SIZE, 1))
    hidden = tf.ones_like(fi[:, 0])                                                  # h_0 = +1
    for step in range(steps - 1):                   # the gate at the last frame is never used
        pre = fi[:, step] + w_fh(hidden)
        if gate_noise is not None:
            pre = gate_noise(pre)
        hidden = gate_of(pre) * hidden
    out = w_oi(tf.reshape(x[:, steps - 1], (-1, SIZE, SIZE, 1))) + w_oh(hidden)      # o_T
    if config.noise_out:
        out = keras.layers.GaussianNoise(config.noise_out, name="noise_out")(out)
    if config.readout_8bit:
        logits = decoder(Readout(name="readout")(out))
    else:
        logits = decoder(ZERO_LEVEL + IW * out)     # decodes back to exactly o
    return keras.Model(frames, logits, name="pixelrnn")


def exact_gray_threshold(model: PixelRNN) -> float:
    """A gray threshold T with ``g >= T`` equal to the model's binary input on every level 0..255.

    Levels ``>= k`` binarize to +1 in PyTorch's float32 arithmetic; T is the analytic threshold
    ``255 (mean + theta0 std)`` clamped into ``(k - 1, k]``, so float frames also binarize sensibly.
    """
    levels = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    with torch.no_grad():
        positive = (model.binarize_input(levels) > 0).flatten().numpy()
    k = int(np.argmax(positive)) if positive.any() else 256
    if not positive[k:].all():
        raise InputError("the model's input binarization is not monotone in the gray level")
    c = model.config
    analytic = np.float32(255.0 * (c.input_mean + float(model.theta0.detach()) * c.input_std))
    high = np.float32(k)
    low = np.nextafter(np.float32(k - 1), np.float32(np.inf))
    return float(np.clip(analytic, low, high))


def build_twin(*, model: PixelRNN, include_sensor: bool = True, bitpacked: bool = False,
               input_dtype: str = "uint8") -> keras.Model:
    """The Keras twin of ``model`` (eval mode, noise off): frames (B, T, 64, 64) -> logits.

    ``include_sensor=False``: the host decoder only, readout (B, 64, 64) levels -> logits.
    ``bitpacked``: see :func:`make_keras_model` (for LCE). ``input_dtype``: uint8 or float32 input.
    The binary weights use ``ste_sign`` (the forward of every quantizer is the same sign).
    """
    if not isinstance(model, PixelRNN):
        raise InputError(f"model must be a pixelrnn.model.PixelRNN, got {type(model).__name__}")
    if input_dtype not in ("uint8", "float32"):
        raise InputError(f"input_dtype must be 'uint8' or 'float32', got {input_dtype!r}")
    layout = model.config.layout
    if not layout.is_authors or model.config.decoder != "authors":
        raise InputError(f"the Keras/Larq twin builds the authors' readout and head only; this model reads out "
                         f"{layout.describe()} with the {model.config.decoder} head (`pixelrnn export` builds its "
                         "TFLite and LCE files without the twin)")
    gray = exact_gray_threshold(model) if include_sensor else None
    twin = make_keras_model(model.config, include_sensor=include_sensor, quantizer="ste_sign",
                            bitpacked=bitpacked, gray_threshold=gray, input_dtype=input_dtype)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    load_state_dict_into_twin(twin, state)
    return twin


# -- weights both ways ---------------------------------------------------------------------------
def _layer(twin: keras.Model, name: str):
    try:
        return twin.get_layer(name)
    except ValueError:
        return None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def load_state_dict_into_twin(twin: keras.Model, state: dict) -> None:
    """Copy a PixelRNN state dict into the twin's layers (those it has: full or host-only)."""
    for name in _CONVS:
        layer = _layer(twin, name)
        if layer is not None:
            layer.kernel.assign(np.transpose(_np(state[name]), (2, 3, 1, 0)))
    for name, layer_name in _SCALARS.items():
        layer = _layer(twin, layer_name)
        if layer is not None:
            getattr(layer, "value" if name == "thresh3" else "threshold").assign(_np(state[name]).reshape(1))
    bn = twin.get_layer("bn")
    bn.gamma.assign(_np(state["bn.weight"]))
    bn.beta.assign(_np(state["bn.bias"]))
    bn.moving_mean.assign(_np(state["bn.running_mean"]))
    bn.moving_variance.assign(_np(state["bn.running_var"]))
    bn.num_batches_tracked.assign(int(state["bn.num_batches_tracked"]))
    fc = twin.get_layer("fc")
    fc.kernel.assign(_np(state["fc.weight"]).T)
    fc.bias.assign(_np(state["fc.bias"]))


def twin_to_state_dict(keras_model: keras.Model, *, config: ModelConfig) -> dict[str, torch.Tensor]:
    """The PixelRNN state dict held by a twin (latent weights, thresholds, BN statistics, fc).

    A host-only twin gives the decoder's entries only.
    """
    if not isinstance(keras_model, keras.Model):
        raise InputError(f"keras_model must be a Keras model, got {type(keras_model).__name__}")
    if not isinstance(config, ModelConfig):
        raise InputError(f"config must be a pixelrnn.model.ModelConfig, got {type(config).__name__}")
    t = lambda v: torch.from_numpy(np.array(v.numpy()))  # noqa: E731
    state: dict[str, torch.Tensor] = {}
    for name in _CONVS:
        layer = _layer(keras_model, name)
        if layer is not None:
            state[name] = t(layer.kernel).permute(3, 2, 0, 1).contiguous()
    for name, layer_name in _SCALARS.items():
        layer = _layer(keras_model, layer_name)
        if layer is not None:
            state[name] = t(layer.value if name == "thresh3" else layer.threshold).reshape(1)
    bn = keras_model.get_layer("bn")
    state.update({"bn.weight": t(bn.gamma), "bn.bias": t(bn.beta), "bn.running_mean": t(bn.moving_mean),
                  "bn.running_var": t(bn.moving_variance),
                  "bn.num_batches_tracked": t(bn.num_batches_tracked).to(torch.int64)})
    fc = keras_model.get_layer("fc")
    if fc.units != config.num_classes:
        raise InputError(f"the twin has {fc.units} classes, config says {config.num_classes}")
    state["fc.weight"] = t(fc.kernel).T.contiguous()
    state["fc.bias"] = t(fc.bias)
    return state


def torch_from_twin(keras_model: keras.Model, *, config: ModelConfig) -> PixelRNN:
    """A PyTorch PixelRNN (eval mode) holding a full twin's weights."""
    state = twin_to_state_dict(keras_model, config=config)
    missing = [k for k in _SENSOR_KEYS if k not in state]
    if missing:
        raise InputError(f"torch_from_twin needs a full twin (with the sensor); this one lacks {missing}")
    model = PixelRNN(config)
    model.load_state_dict(state)
    return model.eval()
