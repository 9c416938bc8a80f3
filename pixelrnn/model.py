"""The PixelRNN model (So, Bose, Dudek, Wetzstein, CVPR 2024) in PyTorch, with its dataclass config.

Per frame, in the pixel array: binary input ``sign(x - theta0)``; 16 binary 5x5 convolutions, ReLU,
4x4 max-pool, ``sign(v - thresh1)``, the 4x4 mosaic ``x_t``. Then the binary RNN cell::

    f_t = sign(W_fi * x_t + W_fh * h_{t-1} - rnn_threshold)     h_0 = +1
    h_t = f_t . h_{t-1}
    o_t = W_oi * x_t + W_oh * h_{t-1}

Off the sensor: the 8-bit readout of o_T, then 1x1 conv (one binary weight), BatchNorm2d(1), tanh,
minus thresh3, Linear(4096 -> classes).

Weights are latent reals (clipped to [-1, 1] by :meth:`PixelRNN.clip_latent_`), binarized in the
forward pass by a straight-through estimator chosen by name. In eval mode with noise off the
forward is bit-exact with ``firmware_sim`` (tested): integer sums of +-1 products are exact in
float32 and every binary decision is a sign of an exact pre-activation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from firmware_sim.encoding import IW, ZERO_LEVEL
from firmware_sim.frontend import IMAGENET_GRAY_MEAN, IMAGENET_GRAY_STD, FrontEnd
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights
from pixelrnn.quantizers import get_quantizer

SIZE = 64
N_MAPS = 16
KERNEL = 5
POOL = 4


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
    readout_8bit: bool = True            # decoder sees the 8-bit readout, as on the real sensor
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


def _randn(like: torch.Tensor, batch: int, generators: list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise shaped like ``like`` (leading dim = batch x something); per-clip streams."""
    if generators is None:
        return torch.randn_like(like)
    per_clip = like.numel() // batch
    draws = [torch.randn(per_clip, generator=g, dtype=like.dtype) for g in generators]
    return torch.stack(draws).reshape(like.shape)


class PixelRNN(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.binarize = get_quantizer(config.quantizer, m=config.quantizer_m)
        u = lambda *shape: nn.Parameter(torch.empty(*shape).uniform_(-1, 1))  # noqa: E731
        # in-pixel CNN
        self.conv1 = u(N_MAPS, 1, KERNEL, KERNEL)
        self.thresh1 = nn.Parameter(torch.ones(1))
        # in-pixel RNN
        self.w_fi = u(1, 1, KERNEL, KERNEL)
        self.w_fh = u(1, 1, KERNEL, KERNEL)
        self.w_oi = u(1, 1, KERNEL, KERNEL)
        self.w_oh = u(1, 1, KERNEL, KERNEL)
        if config.gate_threshold:
            self.rnn_threshold = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("rnn_threshold", torch.zeros(1))
        if config.learn_theta0:
            self.theta0 = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("theta0", torch.zeros(1))
        # off-sensor decoder
        self.fin_conv = nn.Parameter(torch.ones(1, 1, 1, 1))
        self.bn = nn.BatchNorm2d(1)
        self.thresh3 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(SIZE * SIZE, config.num_classes)

    # -- binary weights ---------------------------------------------------------------------
    LATENT = ("conv1", "w_fi", "w_fh", "w_oi", "w_oh", "fin_conv")

    @torch.no_grad()
    def clip_latent_(self) -> None:
        """Keep latent binary weights in [-1, 1] (call after each optimizer step, as Larq does)."""
        for name in self.LATENT:
            getattr(self, name).clamp_(-1, 1)

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
               generators: list[torch.Generator] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The in-pixel part on (B, T, 64, 64) +-1 input -> o_T (B, 1, 64, 64) and recorded states.

        ``generators`` (one per clip) make the noise of each clip independent of the batch it is
        in, so training is reproducible across batch splits and DistributedDataParallel ranks.
        """
        noise = self._active_noise(noise)
        b, t, h, w = binary.shape
        if generators is not None and len(generators) != b:
            raise ValueError(f"{len(generators)} noise generators for a batch of {b} clips")
        randn = lambda like: _randn(like, b, generators)  # noqa: E731
        wc = self.binarize(self.conv1)
        conv = F.conv2d(binary.reshape(b * t, 1, h, w), wc, padding=KERNEL // 2)
        pooled = F.max_pool2d(F.relu(conv), POOL)
        pre = pooled + (randn(pooled) * noise.conv_sigma if noise.conv_sigma else 0.0)
        x = to_mosaic(self.binarize(pre - self.thresh1)).reshape(b, t, 1, h, w)
        w_i = torch.cat([self.binarize(self.w_fi), self.binarize(self.w_oi)])   # (2,1,5,5)
        w_h = torch.cat([self.binarize(self.w_fh), self.binarize(self.w_oh)])
        xi = F.conv2d(x.reshape(b * t, 1, h, w), w_i, padding=KERNEL // 2).reshape(b, t, 2, h, w)
        hidden = torch.ones(b, 1, h, w, dtype=binary.dtype, device=binary.device)
        states: dict[str, list] = {"x": [], "hidden": [], "gate": []}
        out = None
        for step in range(t):
            hh = F.conv2d(hidden, w_h, padding=KERNEL // 2)
            ft = xi[:, step, 0:1] + hh[:, 0:1]
            if noise.gate_sigma:
                ft = ft + randn(ft) * noise.gate_sigma
            gate = self.binarize(ft - self.rnn_threshold)
            if record:
                states["hidden"].append(hidden)
                states["gate"].append(gate)
            if step == t - 1:
                out = xi[:, step, 1:2] + hh[:, 1:2]
                if noise.out_gain != 1.0:   # calibrated analog gain of the output (firmware_sim.noise)
                    out = out * noise.out_gain
                if noise.out_sigma:
                    out = out + randn(out) * noise.out_sigma
                if noise.has_offset:        # scalar out_offset, plus a per-pixel map if calibrated
                    out = out + torch.as_tensor(noise.output_offset((h, w)), dtype=out.dtype, device=out.device)
            hidden = gate * hidden
        recorded = {}
        if record:
            recorded = {"binary": binary, "conv": conv.reshape(b, t, N_MAPS, h, w),
                        "pooled": pooled.reshape(b, t, N_MAPS, h // POOL, w // POOL),
                        "x": x[:, :, 0], "hidden": torch.stack(states["hidden"], 1)[:, :, 0],
                        "gate": torch.stack(states["gate"], 1)[:, :, 0]}
        return out, recorded

    def readout(self, out: torch.Tensor) -> torch.Tensor:
        """o -> the 8-bit readout level (float, 0..255), straight-through gradient inside the range."""
        level = ZERO_LEVEL + IW * out
        quantized = torch.clamp(torch.floor(level), 0, 255)
        return level + (quantized - level).detach()

    def decode(self, readout: torch.Tensor) -> torch.Tensor:
        """8-bit readout levels (B, 64, 64) or (B, 1, 64, 64), uint8 or float -> logits (B, classes)."""
        if readout.dim() == 3:
            readout = readout[:, None]
        o = (readout.to(torch.float32) - ZERO_LEVEL) / IW
        return self.decode_analog(o)

    def decode_analog(self, o: torch.Tensor) -> torch.Tensor:
        y = o * self.binarize(self.fin_conv)
        y = torch.tanh(self.bn(y)) - self.thresh3
        return self.fc(y.flatten(1))

    def forward(self, frames: torch.Tensor, *, noise: NoiseModel | None = None,
                binarized: bool = False, generators: list[torch.Generator] | None = None) -> torch.Tensor:
        """(B, T, 64, 64) gray frames (0..255) -> logits. ``binarized``: frames are already +-1."""
        binary = frames.to(torch.float32) if binarized else self.binarize_input(frames)
        out, _ = self.sensor(binary, noise=noise, generators=generators)
        if self.config.readout_8bit:
            return self.decode(self.readout(out))
        return self.decode_analog(out)

    # -- hand-over to the simulator ---------------------------------------------------------------
    @torch.no_grad()
    def sensor_weights(self) -> SensorWeights:
        """The binary kernels and thresholds the sensor runs (numpy, for firmware_sim)."""
        s = lambda p: self.binarize(p).detach().cpu().numpy().astype("int8")  # noqa: E731
        return SensorWeights(
            conv1=s(self.conv1)[:, 0], thresh1=float(self.thresh1), w_fi=s(self.w_fi)[0, 0],
            w_fh=s(self.w_fh)[0, 0], w_oi=s(self.w_oi)[0, 0], w_oh=s(self.w_oh)[0, 0],
            rnn_threshold=float(self.rnn_threshold),
            frontend=FrontEnd(mean=self.config.input_mean, std=self.config.input_std,
                              theta0=float(self.theta0)),
            timesteps=self.config.timesteps)
