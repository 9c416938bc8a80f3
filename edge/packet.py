"""The readout packet: the only bytes that cross the sensor boundary (DESIGN.md section 3).

One format, used by the sensor stage to encode and by the host to decode. Big-endian, 40-byte
header, payload, CRC32 (``zlib.crc32``) of header + payload as a 4-byte trailer:

=======  ======  =========================================================================
offset   type    field
=======  ======  =========================================================================
0        4s      magic ``b"PXRN"``
4        u8      version (1)
5        u8      kind: 0 = readout, 1 = end of stream (no payload)
6        u8      encoding: 8 = 8-bit analog levels, 1 = 1-bit packed (sign of o),
                 2 = 1-bit signs, arithmetic-coded with a learned prior
7        u8      level: 1-bit and prior, the host maps bits to ``127 +- level`` (0 for 8-bit)
8        u32     stream id (random per sensor run: a restarted sensor is a new stream)
12       u32     window sequence number (0, 1, 2, ... per stream)
16       u64     timestamp of the window's last frame, ``time.monotonic_ns()`` of the sender
24       8s      model id: the sensor program hash (``SensorWeights.program_hash()``, 16 hex)
32       u16     height, u16 width of the readout
36       u32     payload length in bytes
40       ...     payload: H*W bytes (8-bit), ceil(H*W/8) bytes (1-bit, ``np.packbits``) or, prior:
                 8-byte prior id + ``core.prior_coder.PriorCoder`` payload (variable length)
end-4    u32     CRC32 of everything before it
=======  ======  =========================================================================

A 64x64 window is 4,096 + 44 bytes with the 8-bit payload and 512 + 44 with the 1-bit one; with
the prior payload it is 44 + 8 (prior id) + 4 (CRC32 of the bits) + the arithmetic code, about
``-log2 p(bits) / 8`` bytes under the prior: small for readouts like the prior's training data,
slightly over 512 for an untrained prior. The decoder accepts at most :func:`max_payload_bytes`
(2 * ceil(H*W/8) + 64); a readout the prior would code longer than that is sent 1-bit instead.

Prior payload: the same bits as the 1-bit payload, coded losslessly by
:class:`core.prior_coder.PriorCoder` (both ends load the same prior file). The prior id is the
first 8 bytes of the coder's ``prior_hash``: a host without a prior rejects the packet
(``no_prior``), a host with another prior too (``wrong_prior``); a payload whose decoded bits fail
their CRC32 is ``bad_prior_decode`` (never a silently wrong readout).

1-bit payload: bit = ``readout >= 127`` (o >= 0, sign(0) = +1). The host rebuilds levels
``127 + level`` / ``127 - level`` (default level 50, i.e. o = +-5 MAC, about the mean |o| of the
authors' models). The magnitude of o is lost, and the decoder was trained on 8-bit levels, so
accuracy drops. Measured through the simulator (noise off / authors' noise, seed 0):
authors' gesture model on the 90 Cambridge test clips 68.9% / 84.4% (8-bit) -> 66.7% / 72.2%
(1-bit); lip model on the 10 Tulips1 clips 90% / 50% -> 80% / 50%. Other levels were worse
(gesture, noise off: 37.8% at level 10, 58.9% at 30, 60.0% at 80). A decoder fine-tuned on 1-bit
readouts would recover part of the gap.

Decoding never raises on bad bytes: :class:`PacketDecoder` counts each rejection by reason.
"""
from __future__ import annotations

import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from core.constants import ZERO_LEVEL

MAGIC = b"PXRN"
VERSION = 1
KIND_READOUT = 0
KIND_END = 1
ENC_8BIT = 8
ENC_1BIT = 1
ENC_PRIOR = 2
PAYLOADS = {"8bit": ENC_8BIT, "1bit": ENC_1BIT, "prior": ENC_PRIOR}
PRIOR_ID_BYTES = 8
PRIOR_MIN_BYTES = PRIOR_ID_BYTES + 4     # prior id + the CRC32 of the bits (the code may be empty)
DEFAULT_LEVEL = 50           # 1-bit: levels 127 +- 50 (o = +-5 MAC)
MAX_SIDE = 4096

_HEADER = struct.Struct("!4sBBBBIIQ8sHHI")
HEADER_BYTES = _HEADER.size              # 40
CRC_BYTES = 4
OVERHEAD_BYTES = HEADER_BYTES + CRC_BYTES  # 44

REASONS = ("short", "bad_magic", "bad_version", "bad_kind", "bad_encoding", "bad_length", "bad_crc",
           "bad_shape", "wrong_model", "stale_seq", "no_prior", "wrong_prior", "bad_prior_decode")


class PacketError(ValueError):
    """A packet that was rejected; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Packet:
    """A decoded packet. ``readout`` is the (H, W) uint8 level map (1-bit payloads expanded)."""

    kind: int
    encoding: int
    stream_id: int
    seq: int
    t_ns: int
    model_id: str
    shape: tuple[int, int]
    readout: np.ndarray | None
    nbytes: int

    @property
    def is_end(self) -> bool:
        return self.kind == KIND_END


def model_id_bytes(model_id: str) -> bytes:
    """A 16-hex-digit program hash -> the 8 bytes carried in the header."""
    try:
        raw = bytes.fromhex(model_id)
    except (TypeError, ValueError):
        raise ValueError(f"model_id must be 16 hex digits (a sensor program hash), got {model_id!r}") from None
    if len(raw) != 8:
        raise ValueError(f"model_id must be 16 hex digits (a sensor program hash), got {model_id!r}")
    return raw


def payload_bytes(shape: tuple[int, int], encoding: int) -> int:
    """Payload size of a readout of ``shape`` in ``encoding`` (8-bit or 1-bit: the prior payload's
    size varies per readout, see :func:`max_payload_bytes`)."""
    n = int(shape[0]) * int(shape[1])
    if encoding == ENC_PRIOR:
        raise ValueError("the prior payload has a variable size: use max_payload_bytes or the packet's length")
    return n if encoding == ENC_8BIT else (n + 7) // 8


def max_payload_bytes(shape: tuple[int, int], encoding: int) -> int:
    """The largest payload a decoder accepts: the fixed size for 8-bit and 1-bit, and for the prior
    payload twice the 1-bit size + 64 (id, CRC and the worst a reasonable prior spends)."""
    if encoding == ENC_PRIOR:
        return 2 * payload_bytes(shape, ENC_1BIT) + 64
    return payload_bytes(shape, encoding)


def _check_coder(coder) -> None:
    """A prior coder (``core.prior_coder.PriorCoder``) over 2 symbols, the 1-bit readout's."""
    if not all(hasattr(coder, a) for a in ("prior_id", "encode", "decode", "num_classes")):
        raise ValueError(f"coder must be an core.prior_coder.PriorCoder, got {type(coder).__name__}")
    if coder.num_classes != 2:
        raise ValueError(f"the prior must model 2 levels (1-bit readouts), this one has {coder.num_classes}")


def _frame(header: bytes, payload: bytes) -> bytes:
    body = header + payload
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_readout(readout: np.ndarray, *, model_id: str, stream_id: int, seq: int, t_ns: int = 0,
                   encoding: int = ENC_8BIT, level: int = DEFAULT_LEVEL, coder=None) -> bytes:
    """Frame one (H, W) uint8 readout as a packet: 8-bit levels, 1-bit packed signs, or the signs
    coded with the prior ``coder`` (an ``core.prior_coder.PriorCoder``; a readout it would code
    longer than :func:`max_payload_bytes` goes out 1-bit)."""
    readout = np.asarray(readout)
    if readout.dtype != np.uint8 or readout.ndim != 2:
        raise ValueError(f"readout must be an (H, W) uint8 array, got {readout.shape} {readout.dtype}")
    h, w = readout.shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"readout side must be 1..{MAX_SIDE}, got {h}x{w}")
    if encoding == ENC_8BIT:
        payload, level = np.ascontiguousarray(readout).tobytes(), 0
    elif encoding in (ENC_1BIT, ENC_PRIOR):
        if not (isinstance(level, int) and 1 <= level <= ZERO_LEVEL):
            raise ValueError(f"1-bit level must be an integer 1..{ZERO_LEVEL}, got {level!r}")
        bits = readout >= ZERO_LEVEL
        payload = None
        if encoding == ENC_PRIOR:
            if coder is None:
                raise ValueError("the prior encoding needs a coder (core.prior_coder.load_prior(FILE))")
            _check_coder(coder)
            payload = bytes(coder.prior_id) + coder.encode(bits.view(np.uint8))
            if len(payload) > max_payload_bytes((h, w), ENC_PRIOR):
                payload, encoding = None, ENC_1BIT          # the prior does not fit this readout
        if payload is None:
            payload = np.packbits(bits, axis=None).tobytes()
    else:
        raise ValueError(f"encoding must be {ENC_8BIT} (8-bit), {ENC_1BIT} (1-bit) or {ENC_PRIOR} (prior), "
                         f"got {encoding!r}")
    _check_ids(stream_id, seq, t_ns)
    header = _HEADER.pack(MAGIC, VERSION, KIND_READOUT, encoding, level, stream_id, seq, t_ns,
                          model_id_bytes(model_id), h, w, len(payload))
    return _frame(header, payload)


def encode_end(*, model_id: str, stream_id: int, seq: int, t_ns: int = 0) -> bytes:
    """The end-of-stream packet (no payload); ``seq`` is the number of readout packets sent."""
    _check_ids(stream_id, seq, t_ns)
    header = _HEADER.pack(MAGIC, VERSION, KIND_END, ENC_8BIT, 0, stream_id, seq, t_ns,
                          model_id_bytes(model_id), 0, 0, 0)
    return _frame(header, b"")


def _check_ids(stream_id: int, seq: int, t_ns: int) -> None:
    for name, value, bits in (("stream_id", stream_id, 32), ("seq", seq, 32), ("t_ns", t_ns, 64)):
        if not (isinstance(value, (int, np.integer)) and 0 <= value < (1 << bits)):
            raise ValueError(f"{name} must be an integer in [0, 2^{bits}), got {value!r}")


def decode_packet(data: bytes, *, expect_model: str | None = None, coder=None,
                  expect_shape: tuple[int, int] | None = None) -> Packet:
    """Parse and check one packet; raise :class:`PacketError` (with a reason) if it is malformed.
    ``coder``: the host's prior coder (``core.prior_coder.PriorCoder``), needed for prior payloads.
    ``expect_shape``: the readout shape the host takes (``bad_shape``), checked before a prior
    payload is decoded (decoding costs time in proportion to H * W)."""
    if coder is not None:
        _check_coder(coder)
    data = bytes(data)
    if len(data) < OVERHEAD_BYTES:
        raise PacketError("short", f"packet of {len(data)} bytes is shorter than the {OVERHEAD_BYTES}-byte frame")
    (magic, version, kind, encoding, level, stream_id, seq, t_ns, model_raw, h, w,
     length) = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PacketError("bad_magic", f"bad magic {magic!r}")
    if len(data) != OVERHEAD_BYTES + length:
        raise PacketError("bad_length", f"packet is {len(data)} bytes, its header says {OVERHEAD_BYTES + length}")
    (crc,) = struct.unpack_from("!I", data, len(data) - CRC_BYTES)
    if crc != zlib.crc32(data[:-CRC_BYTES]) & 0xFFFFFFFF:
        raise PacketError("bad_crc", "CRC32 mismatch")
    if version != VERSION:
        raise PacketError("bad_version", f"packet version {version}, this host reads {VERSION}")
    if kind not in (KIND_READOUT, KIND_END):
        raise PacketError("bad_kind", f"unknown packet kind {kind}")
    if encoding not in (ENC_8BIT, ENC_1BIT, ENC_PRIOR) or (encoding != ENC_8BIT and not 1 <= level <= ZERO_LEVEL):
        raise PacketError("bad_encoding", f"unknown encoding {encoding} (level {level})")
    model_id = model_raw.hex()
    if expect_model is not None and model_id != expect_model:
        raise PacketError("wrong_model", f"packet from sensor program {model_id}, host model is {expect_model}")
    if kind == KIND_END:
        if length or h or w:
            raise PacketError("bad_length", "end-of-stream packet with a payload")
        return Packet(KIND_END, encoding, stream_id, seq, t_ns, model_id, (0, 0), None, len(data))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise PacketError("bad_shape", f"readout shape {h}x{w}")
    if encoding == ENC_PRIOR:
        if not PRIOR_MIN_BYTES <= length <= max_payload_bytes((h, w), encoding):
            raise PacketError("bad_length", f"prior payload of {length} bytes for a {h}x{w} readout (allowed "
                              f"{PRIOR_MIN_BYTES}..{max_payload_bytes((h, w), encoding)})")
    elif length != payload_bytes((h, w), encoding):
        raise PacketError("bad_length", f"payload of {length} bytes for a {h}x{w} {encoding}-bit readout")
    if expect_shape is not None and (h, w) != tuple(expect_shape):
        raise PacketError("bad_shape", f"readout {(h, w)}, host model takes {tuple(expect_shape)}")
    if encoding == ENC_PRIOR:
        bits = _decode_prior(data[HEADER_BYTES:HEADER_BYTES + length], (h, w), coder)
    elif encoding == ENC_8BIT:
        payload = np.frombuffer(data, dtype=np.uint8, count=length, offset=HEADER_BYTES)
        readout = payload.reshape(h, w).copy()
    else:
        payload = np.frombuffer(data, dtype=np.uint8, count=length, offset=HEADER_BYTES)
        bits = np.unpackbits(payload, count=h * w).reshape(h, w)
    if encoding != ENC_8BIT:
        readout = np.where(bits, ZERO_LEVEL + level, ZERO_LEVEL - level).astype(np.uint8)
    return Packet(KIND_READOUT, encoding, stream_id, seq, t_ns, model_id, (h, w), readout, len(data))


def _decode_prior(payload: bytes, shape: tuple[int, int], coder) -> np.ndarray:
    """Prior id + PriorCoder payload -> (H, W) bits, or a PacketError."""
    if coder is None:
        raise PacketError("no_prior", "prior-coded packet, but this host has no prior (--prior FILE)")
    prior_id = payload[:PRIOR_ID_BYTES]
    if prior_id != bytes(coder.prior_id):
        raise PacketError("wrong_prior", f"packet coded with prior {prior_id.hex()}, the host's is "
                          f"{bytes(coder.prior_id).hex()}")
    try:
        bits = coder.decode(payload[PRIOR_ID_BYTES:], shape=shape)
    except ValueError as exc:                      # PriorMismatch: the bits fail their CRC
        raise PacketError("bad_prior_decode", f"prior payload does not decode: {exc}") from None
    if bits.shape != tuple(shape) or (bits > 1).any():
        raise PacketError("bad_prior_decode", "prior payload decoded to symbols other than 1-bit signs")
    return bits


@dataclass
class PacketDecoder:
    """Stateful host-side decoder: checks packets, counts rejections by reason and lost windows.

    ``expect_model``: the host model's sensor program hash; packets from another program are
    rejected (``wrong_model``). ``shape``: the readout shape the host model takes (``bad_shape``).
    ``coder``: the prior coder for prior-coded packets (without one they are ``no_prior``).
    Per stream, a sequence number at or below the last accepted one is ``stale_seq``; a gap
    counts the skipped windows as ``lost``.
    """

    expect_model: str | None = None
    shape: tuple[int, int] | None = None
    coder: object = None
    accepted: int = 0
    lost: int = 0
    bytes_in: int = 0
    rejected: Counter = field(default_factory=Counter)
    _last_seq: dict = field(default_factory=dict, repr=False)

    def decode(self, data: bytes) -> Packet | None:
        """The packet, or None if it was rejected (the reason is counted in ``rejected``)."""
        self.bytes_in += len(data)
        try:
            packet = decode_packet(data, expect_model=self.expect_model, coder=self.coder, expect_shape=self.shape)
            last = self._last_seq.get(packet.stream_id)
            if packet.is_end:
                return packet
            if last is not None and packet.seq <= last:
                raise PacketError("stale_seq", f"window {packet.seq} after {last}")
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            return None
        self.lost += packet.seq - (last + 1 if last is not None else 0)
        self._last_seq[packet.stream_id] = packet.seq
        self.accepted += 1
        return packet

    @property
    def malformed(self) -> int:
        return sum(self.rejected.values())

    def end_lost(self, packet: Packet) -> None:
        """At an end packet (``seq`` = windows sent): count windows missing at the tail as lost."""
        last = self._last_seq.get(packet.stream_id)
        sent_after = packet.seq - (last + 1 if last is not None else 0)
        if sent_after > 0:
            self.lost += sent_after
