"""The sensor side of the camera loop: front end, then the in-pixel program, then readout packets.

Per frame: grayscale, region of interest and resize to 64x64 (``firmware_sim.frontend``, the code
training uses), the sensor's input binarization (``FrontEnd.binarize``) and one step of the
sensor program (``firmware_sim.fast.SensorStream``, the fast path). Every ``timesteps`` frames the
readout is framed as a packet (``edge.packet``): that packet is all that leaves this stage. With
``payload="prior"`` the readout's signs are arithmetic-coded under a learned prior loaded from a
prior file (``core.prior_coder``, numpy only), which the host loads too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from edge.packet import DEFAULT_LEVEL, ENC_PRIOR, OVERHEAD_BYTES, PAYLOADS, encode_end, encode_readout
from core.prior_coder import PriorCoder, load_prior
from edge.stats import Latency
from core.errors import InputError
from firmware_sim.fast import SensorStream
from firmware_sim.frontend import crop_resize, to_gray
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights


class Preprocessor:
    """Camera frame -> (64x64 uint8 gray, ROI box): ``to_gray``, the ROI chooser, ``crop_resize``."""

    def __init__(self, roi, *, size: int) -> None:
        self.roi = roi
        self.size = size
        self.last_box: tuple[int, int, int, int] | None = None

    def __call__(self, frame: np.ndarray, *, last_of_window: bool = False) -> np.ndarray:
        gray = to_gray(frame)
        box = self.roi(gray, defer=last_of_window)
        self.last_box = box
        return crop_resize(gray, roi=box, size=self.size)


@dataclass(frozen=True)
class SensorOptions:
    payload: str = "8bit"                 # 8bit levels, 1bit packed signs or prior-coded signs (edge.packet)
    level: int = DEFAULT_LEVEL            # 1-bit: the host rebuilds levels 127 +- level
    noise: NoiseModel = field(default_factory=NoiseModel.off)
    seed: int = 0                         # noise seed
    stream_id: int | None = None          # None: random
    prior: str | os.PathLike | None = None  # payload "prior": the prior file (core.prior_coder)

    def __post_init__(self) -> None:
        if self.payload not in PAYLOADS:
            raise InputError(f"payload must be one of {', '.join(PAYLOADS)}, got {self.payload!r}")
        if not (isinstance(self.level, int) and 1 <= self.level <= 127):
            raise InputError(f"1-bit level must be an integer 1..127, got {self.level!r}")
        if not isinstance(self.noise, NoiseModel):
            raise InputError(f"noise must be a NoiseModel, got {type(self.noise).__name__}")
        if self.stream_id is not None and not (isinstance(self.stream_id, int) and 0 <= self.stream_id < 2**32):
            raise InputError(f"stream_id must be an integer in [0, 2^32), got {self.stream_id!r}")
        if self.prior is not None and not isinstance(self.prior, (str, os.PathLike)):
            raise InputError(f"prior must be a file path, got {type(self.prior).__name__}")
        if self.payload == "prior" and self.prior is None:
            raise InputError("--payload prior needs --prior FILE.npz (write one with: pixelrnn generate export-prior --checkpoint CKPT --out FILE.npz)")
        if self.payload != "prior" and self.prior is not None:
            raise InputError(f"--prior is only used with --payload prior (the payload is {self.payload})")


def open_prior(path) -> PriorCoder:
    """``--prior FILE`` -> the prior coder, or a one-line InputError."""
    try:
        return load_prior(path)
    except ValueError as exc:
        raise InputError(f"--prior: {exc}") from None


class SensorStage:
    """``push(image64, t_ns)`` per frame; returns a packet (bytes) at each window's last frame."""

    def __init__(self, *, weights: SensorWeights, options: SensorOptions | None = None) -> None:
        if not isinstance(weights, SensorWeights):
            raise InputError(f"weights must be a SensorWeights, got {type(weights).__name__}")
        self.options = options or SensorOptions()
        self.weights = weights
        self.model_id = weights.program_hash()
        self.size = weights.frontend.size
        self.timesteps = weights.timesteps
        self.encoding = PAYLOADS[self.options.payload]
        self.coder = open_prior(self.options.prior) if self.encoding == ENC_PRIOR else None
        self.stream_id = (self.options.stream_id if self.options.stream_id is not None
                          else int.from_bytes(os.urandom(4), "big"))
        rng = np.random.default_rng(self.options.seed) if self.options.noise.enabled else None
        self._stream = SensorStream(weights, noise=self.options.noise, rng=rng)
        self.windows = 0
        self.frames = 0
        self.last_readout: np.ndarray | None = None
        self.sensor_latency = Latency()      # per frame: binarize + one step of the program
        self.encode_latency = Latency()      # per window: packet framing (and prior coding)
        self.payload_bytes = 0               # readout packets' payloads, summed (they vary with the prior)
        self.prior_fallbacks = 0             # prior payload: windows sent 1-bit (the prior's code too long)

    def push(self, image: np.ndarray, *, t_ns: int) -> bytes | None:
        if image.shape != (self.size, self.size) or image.dtype != np.uint8:
            raise InputError(f"sensor input must be {self.size}x{self.size} uint8, got {image.shape} {image.dtype}")
        t0 = time.perf_counter()
        readout = self._stream.push(self.weights.frontend.binarize(image))
        t1 = time.perf_counter()
        self.sensor_latency.add(t1 - t0)
        self.frames += 1
        if readout is None:
            return None
        packet = encode_readout(readout, model_id=self.model_id, stream_id=self.stream_id, seq=self.windows,
                                t_ns=t_ns, encoding=self.encoding, level=self.options.level, coder=self.coder)
        self.encode_latency.add(time.perf_counter() - t1)
        self.payload_bytes += len(packet) - OVERHEAD_BYTES
        if packet[6] != self.encoding:       # the header's encoding byte
            self.prior_fallbacks += 1
        self.windows += 1
        self.last_readout = readout
        return packet

    @property
    def next_is_last(self) -> bool:
        """Whether the next frame pushed completes a window (its readout is on the critical path)."""
        return self.frames % self.timesteps == self.timesteps - 1

    def end_packet(self) -> bytes:
        """End of stream; its ``seq`` is the number of windows sent (the host counts missing ones)."""
        return encode_end(model_id=self.model_id, stream_id=self.stream_id, seq=self.windows,
                          t_ns=time.monotonic_ns())
