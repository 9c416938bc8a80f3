"""The sensor side of the camera loop: front end, then the in-pixel program, then readout packets.

Per frame: grayscale, region of interest and resize to 64x64 (``firmware_sim.frontend``, the code
training uses), the sensor's input binarization (``FrontEnd.binarize``) and one step of the
sensor program (``firmware_sim.packed.PackedStream``: the packed path, frame by frame; over 2x
the old fast path's stream, docs/BENCHMARKS.md). Every ``timesteps`` frames the readout is framed as a packet
(``edge.packet``): that packet is all that leaves this stage. The
payload type comes from the registry in ``edge.payloads`` (8bit, 1bit, prior, ...); a payload with
side state opens it once here (the prior: a prior file, ``core.prior_coder``, numpy only), and the
host opens its own copy.

A sensor program with another readout layout (``SensorWeights.layout``, :mod:`core.readout_layout`)
sends its window's (M, S, S) levels as one (M*S, S) image in the layout's own payload (``8bit`` or
``levels{bits}``, :func:`edge.payloads.choose_layout_payload`): the options' ``8bit`` (the default)
stands for it; 1bit, prior or another bit depth are a one-line InputError.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from core.errors import InputError
from core.readout_layout import SIZE as LAYOUT_SIZE  # the sensor size a readout layout is defined on
from edge.packet import OVERHEAD_BYTES, encode_end, encode_readout
from edge.payloads import DEFAULT_LEVEL, PayloadOptions, choose_layout_payload, layout_image_shape
from edge.stats import Latency
from firmware_sim.frontend import crop_resize, to_gray
from firmware_sim.noise import NoiseModel
from firmware_sim.packed import PackedStream
from firmware_sim.weights import SensorWeights


def frames_per_row(frames: int, channels: int) -> int:
    """How many read-out frames (blocks of ``channels`` maps side by side) :meth:`SensorStage.last_view`
    puts in a row: the divisor of ``frames`` whose grid is nearest to square (the wider on a tie), so
    8 frames of one channel make 2 rows of 4, not a column 8 maps tall."""
    def skew(d: int) -> float:
        return abs(math.log((frames // d) / (d * channels)))
    return min((d for d in range(1, frames + 1) if frames % d == 0), key=lambda d: (round(skew(d), 9), -d))

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
    payload: str = "8bit"                 # a payload name from edge.payloads (8bit, 1bit, prior, ...)
    level: int = DEFAULT_LEVEL            # level-carrying payloads (1bit, prior): the host rebuilds 127 +- level
    noise: NoiseModel = field(default_factory=NoiseModel.off)
    seed: int = 0                         # noise seed
    stream_id: int | None = None          # None: random
    prior: str | os.PathLike | None = None  # the payload's file, for payloads with side state (the prior file)

    def __post_init__(self) -> None:
        self.payload_options  # noqa: B018 - building it validates payload, level and file (edge.payloads)
        if not isinstance(self.noise, NoiseModel):
            raise InputError(f"noise must be a NoiseModel, got {type(self.noise).__name__}")
        if self.stream_id is not None and not (isinstance(self.stream_id, int) and 0 <= self.stream_id < 2**32):
            raise InputError(f"stream_id must be an integer in [0, 2^32), got {self.stream_id!r}")

    @property
    def payload_options(self) -> PayloadOptions:
        """The payload choice as :class:`edge.payloads.PayloadOptions` (``open()`` it for side state)."""
        return PayloadOptions(name=self.payload, level=self.level, file=self.prior)


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
        self.layout = weights.layout
        if self.layout.is_authors:
            self.readout_shape = (self.size, self.size)
        else:
            if self.size != LAYOUT_SIZE:
                raise InputError(f"a readout layout needs a {LAYOUT_SIZE}x{LAYOUT_SIZE} sensor, this program "
                                 f"runs {self.size}x{self.size}")
            self.readout_shape = layout_image_shape(self.layout)    # (M*S, S): the maps stacked vertically
        name = choose_layout_payload(self.layout, self.options.payload)
        options_used = self.options.payload_options
        if name != options_used.name:
            options_used = PayloadOptions(name=name, level=self.options.level, file=self.options.prior)
        self.payload = options_used.open()                     # codec, level and side state, opened once
        self.payload.check_shape(self.readout_shape)           # e.g. a table fitted on another layout's readouts
        self.codec = self.payload.codec
        self.encoding = self.codec.wire_id                     # the packet header's encoding byte
        self.coder = self.payload.state                        # side state (the prior's coder), or None
        self.stream_id = (self.options.stream_id if self.options.stream_id is not None
                          else int.from_bytes(os.urandom(4), "big"))
        rng = np.random.default_rng(self.options.seed) if self.options.noise.enabled else None
        self._stream = PackedStream(weights, noise=self.options.noise, rng=rng)
        self.windows = 0
        self.frames = 0
        self.last_readout: np.ndarray | None = None
        self.sensor_latency = Latency()      # per frame: binarize + one step of the program
        self.encode_latency = Latency()      # per window: packet framing (and prior coding)
        self.payload_bytes = 0               # readout packets' payloads, summed (variable-size ones vary)
        self.fallbacks = 0                   # windows sent in the codec's fallback (the prior's code too long)

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
        if readout.shape != self.readout_shape:                # a layout's (M, S, S) -> (M*S, S)
            readout = readout.reshape(self.readout_shape)
        packet = encode_readout(readout, model_id=self.model_id, stream_id=self.stream_id, seq=self.windows,
                                t_ns=t_ns, encoding=self.encoding, level=self.payload.level, coder=self.coder)
        self.encode_latency.add(time.perf_counter() - t1)
        self.payload_bytes += len(packet) - OVERHEAD_BYTES
        if packet[6] != self.encoding:       # the header's encoding byte
            self.fallbacks += 1
        self.windows += 1
        self.last_readout = readout
        return packet

    @property
    def mean_payload_bytes(self) -> float | None:
        """Payload bytes per window: the exact size for a fixed-size payload, the measured mean over
        the windows sent for a variable-size one (None before any window)."""
        if not self.codec.variable:
            return self.codec.size(self.readout_shape)
        return self.payload_bytes / self.windows if self.windows else None

    @property
    def last_view(self) -> np.ndarray | None:
        """The last readout as an image to look at: the authors' readout as it is; a layout's maps in
        a grid of frame blocks (each block a read-out frame's K channels side by side, frames in
        reading order, :func:`frames_per_row` of them per row: a near-square image), b-bit levels
        stretched to 0..255."""
        readout = self.last_readout
        if readout is None or self.layout.is_authors:
            return readout
        layout = self.layout
        s, k, r = layout.side, layout.channels, len(layout.frames)
        per_row = frames_per_row(r, k)
        grid = (readout.reshape(r // per_row, per_row, k, s, s).transpose(0, 3, 1, 2, 4)
                .reshape(r // per_row * s, per_row * k * s))
        if layout.bits < 8:
            grid = (grid.astype(np.uint16) * 255 // layout.max_level).astype(np.uint8)
        return grid

    def layout_summary(self) -> dict:
        """For a run summary: ``{"readout_layout": ...}`` for a non-authors layout, else ``{}``."""
        if self.layout.is_authors:
            return {}
        return {"readout_layout": {**self.layout.to_dict(), "shape": list(self.layout.shape),
                                   "packet_shape": list(self.readout_shape),
                                   "describe": self.layout.describe()}}

    def payload_summary(self) -> dict:
        """For a run summary: ``{payload name: {file, what describes its side state, windows sent in
        the fallback}}`` for a payload with a file (the prior), else ``{}``."""
        codec = self.codec
        if codec.open_state is None:
            return {}
        info = {"file": str(self.options.prior),
                **(codec.describe_state(self.coder) if codec.describe_state is not None else {})}
        if codec.fallback is not None:
            info[f"fallback_{codec.fallback}_windows"] = self.fallbacks
        return {codec.name: info}

    @property
    def next_is_last(self) -> bool:
        """Whether the next frame pushed completes a window (its readout is on the critical path)."""
        return self.frames % self.timesteps == self.timesteps - 1

    def end_packet(self) -> bytes:
        """End of stream; its ``seq`` is the number of windows sent (the host counts missing ones)."""
        return encode_end(model_id=self.model_id, stream_id=self.stream_id, seq=self.windows,
                          t_ns=time.monotonic_ns())
