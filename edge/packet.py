"""The readout packet: the only bytes that cross the sensor boundary (docs/DESIGN.md section 3).

One format, used by the sensor stage to encode and by the host to decode. Big-endian, 40-byte
header, payload, CRC32 (``zlib.crc32``) of header + payload as a 4-byte trailer:

=======  ======  =========================================================================
offset   type    field
=======  ======  =========================================================================
0        4s      magic ``b"PXRN"``
4        u8      version (1)
5        u8      kind: 0 = readout, 1 = end of stream (no payload)
6        u8      encoding: the payload's wire id in ``edge.payloads``: 8 = 8-bit analog levels,
                 1 = 1-bit packed (sign of o), 2 = 1-bit signs, arithmetic-coded with a learned prior,
                 3 = the same under an adaptive context model, 6 = under a static context table,
                 20 / 18 / 17 = the 4 / 2 / 1-bit levels of a readout layout (``levels4/2/1``),
                 33 / 34 = the 1-bit levels context- / table-coded (``levels1-context/-table``)
7        u8      level: payloads that use one (1-bit, prior): the host maps bits to ``127 +- level``;
                 0 for the others (the ``levels`` payloads reject any other value: ``bad_encoding``)
8        u32     stream id (random per sensor run: a restarted sensor is a new stream)
12       u32     window sequence number (0, 1, 2, ... per stream)
16       u64     timestamp of the window's last frame, ``time.monotonic_ns()`` of the sender
24       8s      model id: the sensor program hash (``SensorWeights.program_hash()``, 16 hex)
32       u16     height, u16 width of the readout: 64, 64 for the authors' readout; M*S, S for a
                 readout layout's M maps of S x S, stacked vertically (frame-major)
36       u32     payload length in bytes
40       ...     payload: H*W bytes (8-bit), ceil(H*W/8) bytes (1-bit, ``np.packbits``), ceil(H*W*b/8)
                 bytes (``levels{b}``: b bits per level, MSB first, zero padding bits; exactly
                 ``ReadoutLayout.pack``) or, prior: 8-byte prior id + ``core.prior_coder.PriorCoder``
                 payload (variable length); table: 8-byte table id + CRC32 of the bits + code
                 (``core.table_coder``, variable length)
end-4    u32     CRC32 of everything before it
=======  ======  =========================================================================

A 64x64 window is 4,096 + 44 bytes with the 8-bit payload and 512 + 44 with the 1-bit one; with
the prior payload it is 44 + 8 (prior id) + 4 (CRC32 of the bits) + the arithmetic code, about
``-log2 p(bits) / 8`` bytes under the prior: small for readouts like the prior's training data,
slightly over 512 for an untrained prior. The decoder accepts at most :func:`max_payload_bytes`
(2 * ceil(H*W/8) + 64); a readout the prior would code longer than that is sent 1-bit instead.

Readout layouts (:class:`core.readout_layout.ReadoutLayout`: o read out at several frames, K output
kernel pairs, pooled maps, 8/4/2/1-bit levels): the window's (M, S, S) levels travel as one
(M*S, S) image in the layout's own payload (``8bit`` or ``levels{b}``; ``edge.payloads``), so the
frame is the same and a host takes the shape and the one encoding its bundle's layout expects
(``bad_shape``, ``bad_encoding`` otherwise). Sizes per window, 44 bytes of overhead added: every 4th
frame x 2 channels, 8 bit = 32,768 B; every 2nd frame, 32x32, 1 bit = 1,024 B; every 8th frame x 3
channels, 16x16, 2 bit = 384 B. Rows are at most ``MAX_SIDE`` (4,096 = the largest layout, 16 frames
x 4 channels x 64); a UDP link carries at most 65,507 bytes per datagram (``edge.link``).

Prior payload: the same bits as the 1-bit payload, coded losslessly by
:class:`core.prior_coder.PriorCoder` (both ends load the same prior file). The prior id is the
first 8 bytes of the coder's ``prior_hash``: a host without a prior rejects the packet
(``no_prior``), a host with another prior too (``wrong_prior``); a payload whose decoded bits fail
their CRC32 is ``bad_prior_decode`` (never a silently wrong readout). The table payloads
(``table``, ``levels1-table``) follow the same rules with their table file: ``no_table``,
``wrong_table`` (another table's id, or a readout shape the table does not code),
``bad_table_decode``.

1-bit payload: bit = ``readout >= 127`` (o >= 0, sign(0) = +1). The host rebuilds levels
``127 + level`` / ``127 - level`` (default level 50, i.e. o = +-5 MAC, about the mean |o| of the
authors' models). The magnitude of o is lost, and the decoder was trained on 8-bit levels, so
accuracy drops. Measured through the simulator (noise off / authors' noise, seed 0):
authors' gesture model on the 90 Cambridge test clips 68.9% / 84.4% (8-bit) -> 66.7% / 72.2%
(1-bit); lip model on the 10 Tulips1 clips 90% / 50% -> 80% / 50%. Other levels were worse
(gesture, noise off: 37.8% at level 10, 58.9% at 30, 60.0% at 80). A decoder fine-tuned on 1-bit
readouts would recover part of the gap.

Payload types live in a registry (:mod:`edge.payloads`): this module frames whichever codec the
encoding byte names, checks the payload length against the codec's size (exact, or a range) and
hands the payload to the codec's decoder. A new payload type is one registry entry.

Decoding never raises on bad bytes: :class:`PacketDecoder` counts each rejection by reason, and
applies the stream and sequence rules (a bounded sequence window, replays, end-of-stream only for
the stream it ends). The CRC32 is no defence against forgery: on a UDP link every packet is wrapped
in a MAC (:mod:`edge.auth`), a link-layer trailer outside this format.
"""
from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from core.constants import ZERO_LEVEL
from edge.payloads import (
    DEFAULT_LEVEL,
    NAME_TO_ID,
    PRIOR_ID_BYTES,
    PRIOR_MIN_BYTES,
    PacketError,
    encode_payload,
    find_payload,
    get_payload,
)

__all__ = ["MAGIC", "VERSION", "KIND_READOUT", "KIND_END", "ENC_8BIT", "ENC_1BIT", "ENC_PRIOR", "PAYLOADS",
           "PRIOR_ID_BYTES", "PRIOR_MIN_BYTES", "DEFAULT_LEVEL", "MAX_SIDE", "HEADER_BYTES", "CRC_BYTES",
           "OVERHEAD_BYTES", "REASONS", "MAX_SEQ_JUMP", "PacketError", "Packet", "model_id_bytes", "payload_bytes",
           "max_payload_bytes", "encode_readout", "encode_end", "side_states", "decode_packet", "PacketDecoder"]

UNCHECKED_MAX_SIDE = 64   # variable-size payloads decoded without an expected shape: at most 64x64
MAGIC = b"PXRN"
VERSION = 1
KIND_READOUT = 0
KIND_END = 1
ENC_8BIT = get_payload("8bit").wire_id
ENC_1BIT = get_payload("1bit").wire_id
ENC_PRIOR = get_payload("prior").wire_id
PAYLOADS = NAME_TO_ID                    # {name: wire id}, a live view of the registry
MAX_SIDE = 4096

_HEADER = struct.Struct("!4sBBBBIIQ8sHHI")
HEADER_BYTES = _HEADER.size              # 40
CRC_BYTES = 4
OVERHEAD_BYTES = HEADER_BYTES + CRC_BYTES  # 44

# the frame's own rejections, the decoder's stream and sequence rules, the link's MAC check
# (``edge.auth``), then those the built-in codecs add (a codec's ``reasons``)
REASONS = ("short", "bad_magic", "bad_version", "bad_kind", "bad_encoding", "bad_length", "bad_crc",
           "bad_shape", "bad_payload", "wrong_model", "stale_seq", "seq_jump", "wrong_stream",
           "wrong_stream_end", "bad_mac",
           *dict.fromkeys(r for name in PAYLOADS for r in get_payload(name).reasons))
MAX_SEQ_JUMP = 1024          # a readout more windows ahead than this is ``seq_jump`` (PacketDecoder)


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


def payload_bytes(shape: tuple[int, int], encoding: int | str) -> int:
    """Payload size of a readout of ``shape`` in a fixed-size ``encoding`` (wire id or name; a
    variable-size payload such as the prior's raises, see :func:`max_payload_bytes`)."""
    codec = get_payload(encoding)
    if codec.variable:
        raise ValueError(f"the {codec.name} payload has a variable size: use max_payload_bytes or the packet's length")
    return int(codec.size(shape))


def max_payload_bytes(shape: tuple[int, int], encoding: int | str) -> int:
    """The largest payload a decoder accepts: the fixed size, or a variable payload's maximum
    (the prior's: twice the 1-bit size + 64, for the id, CRC and the worst a reasonable prior spends)."""
    return int(get_payload(encoding).size(shape))


def _frame(header: bytes, payload: bytes) -> bytes:
    body = header + payload
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def encode_readout(readout: np.ndarray, *, model_id: str, stream_id: int, seq: int, t_ns: int = 0,
                   encoding: int | str = ENC_8BIT, level: int = DEFAULT_LEVEL, coder=None) -> bytes:
    """Frame one (H, W) uint8 readout as a packet in the payload ``encoding`` (wire id or name,
    :mod:`edge.payloads`). ``coder``: the payload's side state (the prior payload's
    ``core.prior_coder.PriorCoder``); a readout it would code longer than the payload's maximum
    goes out in the codec's fallback (the prior's: 1-bit)."""
    readout = np.asarray(readout)
    if readout.dtype != np.uint8 or readout.ndim != 2:
        raise ValueError(f"readout must be an (H, W) uint8 array, got {readout.shape} {readout.dtype}")
    h, w = readout.shape
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise ValueError(f"readout side must be 1..{MAX_SIDE}, got {h}x{w}")
    try:
        codec = get_payload(encoding)
    except ValueError:
        raise ValueError(f"encoding must be a payload's wire id or name ("
                         f"{', '.join(f'{i} = {n}' for n, i in PAYLOADS.items())}), got {encoding!r}") from None
    if codec.uses_level and not (isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= ZERO_LEVEL):
        raise ValueError(f"1-bit level must be an integer 1..{ZERO_LEVEL}, got {level!r}")
    used, payload = encode_payload(codec, readout, state=coder, level=level)
    _check_ids(stream_id, seq, t_ns)
    header = _HEADER.pack(MAGIC, VERSION, KIND_READOUT, used.wire_id, level if used.uses_level else 0,
                          stream_id, seq, t_ns, model_id_bytes(model_id), h, w, len(payload))
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


def side_states(*, coder=None, states: Mapping | None = None) -> dict[int, object]:
    """Host-side payload state, checked: ``{wire id: state}`` from ``states`` (keys: payload names or
    wire ids) plus ``coder``, shorthand for the prior payload's coder."""
    out: dict[int, object] = {}
    for key, state in {**(dict(states) if states else {}), **({ENC_PRIOR: coder} if coder is not None else {})}.items():
        codec = get_payload(key)
        if state is not None and codec.check_state is not None:
            codec.check_state(state)
        if state is not None:
            out[codec.wire_id] = state
    return out


def decode_packet(data: bytes, *, expect_model: str | None = None, coder=None, states: Mapping | None = None,
                  expect_shape: tuple[int, int] | None = None,
                  expect_encodings: tuple[int, ...] | None = None) -> Packet:
    """Parse and check one packet; raise :class:`PacketError` (with a reason) if it is malformed.
    ``states``: the host's payload side state ``{payload name or wire id: state}``; ``coder``: the
    prior coder (``core.prior_coder.PriorCoder``), needed for prior payloads. ``expect_shape``: the
    readout shape the host takes (``bad_shape``), checked before the payload is decoded (the
    prior's decoding costs time in proportion to H * W). ``expect_encodings``: the wire ids the
    host's model reads (``bad_encoding`` for any other; None: any registered payload)."""
    return _decode(data, expect_model=expect_model, states=side_states(coder=coder, states=states),
                   expect_shape=expect_shape, expect_encodings=_check_encodings(expect_encodings))


def _check_encodings(encodings) -> frozenset[int] | None:
    if encodings is None:
        return None
    if isinstance(encodings, (str, bytes)) or not all(
            isinstance(e, (int, np.integer)) and not isinstance(e, bool) and 0 <= e <= 255 for e in encodings):
        raise ValueError(f"expected encodings must be wire ids 0..255 or None, got {encodings!r}")
    return frozenset(int(e) for e in encodings)


def _decode(data: bytes, *, expect_model: str | None, states: Mapping[int, object],
            expect_shape: tuple[int, int] | None, expect_encodings: frozenset[int] | None = None) -> Packet:
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
    codec = find_payload(encoding)
    if codec is None or (codec.uses_level and not 1 <= level <= ZERO_LEVEL):
        raise PacketError("bad_encoding", f"unknown encoding {encoding} (level {level})")
    if expect_encodings is not None and kind == KIND_READOUT and encoding not in expect_encodings:
        takes = ", ".join(find_payload(e).name for e in sorted(expect_encodings) if find_payload(e) is not None)
        raise PacketError("bad_encoding", f"{codec.name} payload, the host's model reads {takes or 'none'}")
    model_id = model_raw.hex()
    if expect_model is not None and model_id != expect_model:
        raise PacketError("wrong_model", f"packet from sensor program {model_id}, host model is {expect_model}")
    if kind == KIND_END:
        if length or h or w:
            raise PacketError("bad_length", "end-of-stream packet with a payload")
        return Packet(KIND_END, encoding, stream_id, seq, t_ns, model_id, (0, 0), None, len(data))
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE):
        raise PacketError("bad_shape", f"readout shape {h}x{w}")
    low, high = codec.size_range((h, w))
    if not low <= length <= high:
        allowed = f"{low}..{high}" if low != high else f"{high}"
        raise PacketError("bad_length", f"{codec.name} payload of {length} bytes for a {h}x{w} readout "
                          f"(allowed {allowed})")
    if expect_shape is not None and (h, w) != tuple(expect_shape):
        raise PacketError("bad_shape", f"readout {(h, w)}, host model takes {tuple(expect_shape)}")
    if expect_shape is None and codec.variable and max(h, w) > UNCHECKED_MAX_SIDE:
        # a variable-size (costly) payload's decode time grows with the claimed H and W: without the
        # host's shape to hold it to, a claim larger than the default 64x64 readout is refused
        raise PacketError("bad_shape", f"{codec.name} payload claims a {h}x{w} readout; decoding one larger than "
                          f"{UNCHECKED_MAX_SIDE}x{UNCHECKED_MAX_SIDE} needs the host's expected shape")
    try:
        readout = codec.decode(data[HEADER_BYTES:HEADER_BYTES + length], (h, w), states.get(encoding), level)
    except PacketError:
        raise
    except ValueError as exc:                          # a codec's own check of its bytes
        raise PacketError("bad_payload", f"{codec.name} payload does not decode: {exc}") from None
    if not (isinstance(readout, np.ndarray) and readout.dtype == np.uint8 and readout.shape == (h, w)):
        raise PacketError("bad_payload", f"{codec.name} payload decoded to something other than a {h}x{w} "
                          "uint8 readout")
    return Packet(KIND_READOUT, encoding, stream_id, seq, t_ns, model_id, (h, w), readout, len(data))


@dataclass
class PacketDecoder:
    """Stateful host-side decoder: checks packets, counts rejections by reason and lost windows.

    ``expect_model``: the host model's sensor program hash; packets from another program are
    rejected (``wrong_model``). ``shape``: the readout shape the host model takes (``bad_shape``).
    ``states``: payload side state, ``{payload name or wire id: state}`` (:mod:`edge.payloads`);
    ``coder``: shorthand for the prior's coder (without one, prior packets are ``no_prior``).
    ``encodings``: the payload wire ids the host's model reads (a readout layout's one payload);
    None: any registered payload. Others are ``bad_encoding``.

    Sequence and stream rules (they bound what a packet that passed the checks can do, e.g. a
    replayed or buggy one; forged ones never get here on a UDP link, see :mod:`edge.auth`):

    * per stream, a sequence number at or below the last accepted one is ``stale_seq`` (a replay);
      one more than ``max_seq_jump`` windows ahead of the next expected one is ``seq_jump`` (so a
      single packet with sequence 2^32-1 cannot make every later genuine packet stale); a gap
      within the bound counts the skipped windows as ``lost``;
    * ``expect_stream``: the one stream this host takes (the UDP host knows its sensor's); readouts
      and ends of any other stream are ``wrong_stream``. Without it, any stream is taken (a
      restarted sensor is a new stream with its own sequence);
    * an end-of-stream packet is accepted only for the stream it ends: the stream of the last
      accepted readout (``expect_stream`` if set, any stream before the first readout); an end for
      another stream is ``wrong_stream_end``. Its sequence number (windows sent) follows the same
      ``stale_seq`` / ``seq_jump`` rules, so a bad end cannot inflate or hide the lost count.

    Counters: ``accepted`` readouts, ``ends`` end-of-stream packets and ``rejected`` by reason add
    up to every packet fed; ``lost`` counts windows that never came. :meth:`reject` counts a
    rejection made before this decoder, e.g. a failed MAC (``bad_mac``).
    """

    expect_model: str | None = None
    shape: tuple[int, int] | None = None
    coder: object = None
    states: Mapping | None = None
    expect_stream: int | None = None
    max_seq_jump: int = MAX_SEQ_JUMP
    encodings: tuple[int, ...] | None = None
    accepted: int = 0                  # readouts accepted
    ends: int = 0                      # end-of-stream packets accepted
    lost: int = 0
    bytes_in: int = 0
    rejected: Counter = field(default_factory=Counter)
    _last_seq: dict = field(default_factory=dict, repr=False)
    _current: int | None = field(default=None, repr=False)
    _states: dict = field(default_factory=dict, repr=False)
    _encodings: frozenset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.expect_stream is not None and not (isinstance(self.expect_stream, (int, np.integer))
                                                   and 0 <= self.expect_stream < 1 << 32):
            raise ValueError(f"expect_stream must be an integer in [0, 2^32) or None, got {self.expect_stream!r}")
        if not (isinstance(self.max_seq_jump, int) and not isinstance(self.max_seq_jump, bool)
                and self.max_seq_jump >= 1):
            raise ValueError(f"max_seq_jump must be an integer >= 1, got {self.max_seq_jump!r}")
        self._states = side_states(coder=self.coder, states=self.states)
        self._encodings = _check_encodings(self.encodings)

    def decode(self, data: bytes) -> Packet | None:
        """The packet, or None if it was rejected (the reason is counted in ``rejected``)."""
        self.bytes_in += len(data)
        try:
            packet = _decode(data, expect_model=self.expect_model, states=self._states, expect_shape=self.shape,
                             expect_encodings=self._encodings)
            last = self._check_sequence(packet)
        except PacketError as exc:
            self.rejected[exc.reason] += 1
            return None
        if packet.is_end:
            self.ends += 1
            return packet
        self.lost += packet.seq - (last + 1 if last is not None else 0)
        self._last_seq[packet.stream_id] = packet.seq
        self._current = packet.stream_id
        self.accepted += 1
        return packet

    def _check_sequence(self, packet: Packet) -> int | None:
        """Apply the stream and sequence rules (see the class); the stream's last accepted seq."""
        stream = packet.stream_id
        if self.expect_stream is not None and stream != self.expect_stream:
            raise PacketError("wrong_stream_end" if packet.is_end else "wrong_stream",
                              f"stream {stream:#010x}, this host takes stream {self.expect_stream:#010x}")
        if packet.is_end and self._current is not None and stream != self._current:
            raise PacketError("wrong_stream_end", f"end of stream {stream:#010x} while stream "
                              f"{self._current:#010x} runs")
        last = self._last_seq.get(stream)
        first = last + 1 if last is not None else 0           # the next sequence number expected
        if packet.is_end:
            # an end's seq is the number of windows sent: at least every window accepted so far
            if packet.seq < first:
                raise PacketError("stale_seq", f"end after {packet.seq} windows, window {last} was accepted")
        elif packet.seq < first:
            raise PacketError("stale_seq", f"window {packet.seq} after {last}")
        if packet.seq - first > self.max_seq_jump:
            raise PacketError("seq_jump", f"window {packet.seq} is {packet.seq - first} ahead of the next "
                              f"expected ({first}); at most {self.max_seq_jump} are taken")
        return last

    def reject(self, reason: str, *, nbytes: int = 0) -> None:
        """Count a packet rejected before it reached this decoder (``reason``, e.g. ``bad_mac``)."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {', '.join(REASONS)}, got {reason!r}")
        self.bytes_in += int(nbytes)
        self.rejected[reason] += 1

    @property
    def malformed(self) -> int:
        return sum(self.rejected.values())

    def end_lost(self, packet: Packet) -> None:
        """At an end packet (``seq`` = windows sent): count windows missing at the tail as lost."""
        last = self._last_seq.get(packet.stream_id)
        sent_after = packet.seq - (last + 1 if last is not None else 0)
        if sent_after > 0:
            self.lost += sent_after
