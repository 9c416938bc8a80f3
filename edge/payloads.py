"""Readout payload codecs: one registry entry per payload type of the readout packet.

A codec turns an (H, W) uint8 readout into the payload bytes of a packet and back
(``edge/packet.py`` documents the frame around it). Its wire id is the packet header's encoding
byte. The packet encoder and decoder, the sensor and host stages, the camera loop, its command
line and ``pixelrnn bench`` all take their choices from this registry, so adding a payload type is
one :func:`register_payload` call and nothing else.

Built in: ``8bit`` (id 8, the levels as they are), ``1bit`` (id 1, ``np.packbits`` of the signs of
o) and ``prior`` (id 2, the same signs arithmetic-coded under a learned prior, falling back to
``1bit`` for a readout the prior would code longer than its maximum), ``context`` (id 3, the same
signs under a JBIG-style adaptive context model, :mod:`core.context_coder`: no side file, falling back
to ``1bit`` when its code is not shorter), ``table`` (id 6, the same signs under a static table of
one probability per pixel position and context counted on training readouts, :mod:`core.table_coder`:
a side file like the prior's, falling back to ``1bit`` when its code is not shorter), and for models with a
:class:`core.readout_layout.ReadoutLayout` of 4, 2 or 1-bit levels ``levels4`` / ``levels2`` /
``levels1`` (ids 16 + bits = 20, 18, 17: the b-bit levels bit-packed MSB first, exactly
``ReadoutLayout.pack``; not the ``1bit`` payload, which sends the sign of an 8-bit level).

A readout layout's M maps of S x S travel as one (M*S, S) image, the maps stacked vertically in
frame-major order (:func:`layout_image_shape`); its payload is the layout's own
(:func:`layout_payload_name`): ``8bit`` for 8-bit levels, ``levels{bits}`` otherwise; a 1-bit layout
may also send its levels coded (:data:`LAYOUT_VARIANTS`): ``levels1-context`` (id 33) or
``levels1-table`` (id 34, the table payload's coder on the stacked maps, falling back to ``levels1``).
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from core import context_coder, table_coder
from core.constants import ZERO_LEVEL
from core.errors import InputError
from core.prior_coder import load_prior
from core.readout_layout import ReadoutLayout

DEFAULT_LEVEL = 50           # level-carrying payloads: the host rebuilds 127 +- 50 (o = +-5 MAC)
PRIOR_ID_BYTES = 8
PRIOR_MIN_BYTES = PRIOR_ID_BYTES + 4     # prior id + the CRC32 of the bits (the code may be empty)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")

Shape = tuple[int, int]


class PacketError(ValueError):
    """A packet that was rejected; ``reason`` is one of ``edge.packet.REASONS`` or a codec's ``reasons``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PayloadCodec:
    """One payload type. ``encode(readout, state, level) -> bytes`` (or None: send ``fallback``);
    ``decode(payload, shape, state, level) -> (H, W) uint8 levels`` or a :class:`PacketError`;
    ``size(shape)``: the exact size, or with ``min_size`` the largest accepted (variable size);
    ``open_state(path)``: side state opened once from a file (``file_label`` says what file),
    checked by ``check_state`` when handed in directly and summarized by ``describe_state`` (for run
    summaries); ``reasons``: rejections ``decode`` adds; ``max_level``: the largest level ``encode``
    takes (levels above it are refused, never truncated); ``check_shape(state, shape)``: a ValueError
    when the side state cannot code readouts of ``shape`` (a table fitted for another layout), asked
    by the sensor once before its first window."""

    wire_id: int
    name: str
    help: str
    encode: Callable[[np.ndarray, object, int], bytes | None]
    decode: Callable[[bytes, Shape, object, int], np.ndarray]
    size: Callable[[Shape], int]
    min_size: Callable[[Shape], int] | None = None
    uses_level: bool = False
    open_state: Callable[[str | os.PathLike], object] | None = None
    check_state: Callable[[object], None] | None = None
    describe_state: Callable[[object], dict] | None = None
    file_label: str = ""
    file_hint: str = ""
    fallback: str | None = None
    reasons: tuple[str, ...] = ()
    max_level: int = 255
    check_shape: Callable[[object, Shape], None] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.wire_id, int) and not isinstance(self.wire_id, bool) and 0 <= self.wire_id <= 255):
            raise ValueError(f"wire_id must be an integer 0..255 (the packet's encoding byte), got {self.wire_id!r}")
        if not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            raise ValueError(f"name must be 1-16 characters of a-z, 0-9, _ and -, got {self.name!r}")
        if not (isinstance(self.help, str) and self.help.strip()):
            raise ValueError(f"payload {self.name!r}: help must be a non-empty string")
        for attr in ("encode", "decode", "size"):
            if not callable(getattr(self, attr)):
                raise ValueError(f"payload {self.name!r}: {attr} must be callable")
        for attr in ("min_size", "open_state", "check_state", "describe_state", "check_shape"):
            if getattr(self, attr) is not None and not callable(getattr(self, attr)):
                raise ValueError(f"payload {self.name!r}: {attr} must be callable or None")
        if self.open_state is not None and not self.file_label:
            raise ValueError(f"payload {self.name!r}: a codec that opens a file needs a file_label")
        if not all(isinstance(r, str) and r for r in self.reasons):
            raise ValueError(f"payload {self.name!r}: reasons must be non-empty strings, got {self.reasons!r}")
        level = self.max_level
        if not (isinstance(level, int) and not isinstance(level, bool) and 1 <= level <= 255):
            raise ValueError(f"payload {self.name!r}: max_level must be an integer 1..255, got {self.max_level!r}")

    @property
    def variable(self) -> bool:
        """Whether the payload's size varies per readout (``size`` is then the maximum)."""
        return self.min_size is not None

    def size_range(self, shape: Shape) -> tuple[int, int]:
        """(smallest, largest) payload accepted for a readout of ``shape``."""
        high = int(self.size(shape))
        return (int(self.min_size(shape)) if self.min_size is not None else high), high


_BY_ID: dict[int, PayloadCodec] = {}
_BY_NAME: dict[str, PayloadCodec] = {}
_NAME_TO_ID: dict[str, int] = {}
NAME_TO_ID: Mapping[str, int] = MappingProxyType(_NAME_TO_ID)   # live: {name: wire id}, in registration order


def register_payload(codec: PayloadCodec) -> PayloadCodec:
    """Add ``codec`` to the registry (its name and wire id must be new); returns it."""
    if not isinstance(codec, PayloadCodec):
        raise ValueError(f"codec must be a PayloadCodec, got {type(codec).__name__}")
    if codec.wire_id in _BY_ID:
        raise ValueError(f"wire id {codec.wire_id} is taken by payload {_BY_ID[codec.wire_id].name!r}")
    if codec.name in _BY_NAME:
        raise ValueError(f"payload name {codec.name!r} is taken (wire id {_BY_NAME[codec.name].wire_id})")
    if codec.fallback is not None:
        other = _BY_NAME.get(codec.fallback)
        if other is None or other.variable or other.open_state is not None:
            raise ValueError(f"payload {codec.name!r}: fallback {codec.fallback!r} must be a registered "
                             f"fixed-size payload without side state")
    _BY_ID[codec.wire_id] = _BY_NAME[codec.name] = codec
    _NAME_TO_ID[codec.name] = codec.wire_id
    return codec


def unregister_payload(name_or_id: str | int) -> PayloadCodec:
    """Remove a payload from the registry (tests, plug-ins); returns it. Fallback targets stay."""
    codec = get_payload(name_or_id)
    users = [c.name for c in _BY_ID.values() if c.fallback == codec.name]
    if users:
        raise ValueError(f"payload {codec.name!r} is the fallback of {', '.join(users)}")
    del _BY_ID[codec.wire_id], _BY_NAME[codec.name], _NAME_TO_ID[codec.name]
    return codec


@contextmanager
def registered_payload(codec: PayloadCodec) -> Iterator[PayloadCodec]:
    """``with registered_payload(codec):`` the codec is registered inside the block only."""
    register_payload(codec)
    try:
        yield codec
    finally:
        unregister_payload(codec.wire_id)


def get_payload(name_or_id: str | int) -> PayloadCodec:
    """The codec of a payload name or wire id; an InputError names the choices."""
    if isinstance(name_or_id, str):
        codec = _BY_NAME.get(name_or_id)
    elif isinstance(name_or_id, (int, np.integer)) and not isinstance(name_or_id, bool):
        codec = _BY_ID.get(int(name_or_id))
    else:
        codec = None
    if codec is None:
        choices = ", ".join(f"{c.name} ({c.wire_id})" for c in _BY_ID.values())
        raise InputError(f"payload must be one of {choices}, got {name_or_id!r}")
    return codec


def find_payload(wire_id: int) -> PayloadCodec | None:
    """The codec of a wire id, or None (the packet decoder's lookup: no exception on bad bytes)."""
    return _BY_ID.get(wire_id)


def payload_names() -> tuple[str, ...]:
    """Registered payload names, in registration order (choices for options and command lines)."""
    return tuple(_BY_NAME)


def payload_help() -> str:
    """One line describing every payload, for a command line's help."""
    return "; ".join(f"{c.name}: {c.help}" for c in _BY_NAME.values())


def file_payload_names() -> tuple[str, ...]:
    """Payloads that open a side file (the prior)."""
    return tuple(c.name for c in _BY_NAME.values() if c.open_state is not None)


def file_payload_help() -> str:
    """What file each payload with one takes, for the help of a command's file option (one entry per
    kind of file: ``prior: the prior file (...); table/levels1-table: the table file (...)``)."""
    kinds: dict[object, list[PayloadCodec]] = {}
    for codec in _BY_NAME.values():
        if codec.open_state is not None:
            kinds.setdefault(codec.open_state, []).append(codec)
    parts = []
    for cs in kinds.values():
        hint = f" ({cs[0].file_hint})" if cs[0].file_hint else ""
        parts.append(f"{'/'.join(c.name for c in cs)}: {cs[0].file_label}{hint}")
    return "; ".join(parts)


def encode_payload(codec: PayloadCodec, readout: np.ndarray, *, state=None,
                   level: int = DEFAULT_LEVEL) -> tuple[PayloadCodec, bytes]:
    """(codec actually used, payload bytes): ``codec``, or its fallback when its code is None or
    longer than its maximum for this readout."""
    if codec.check_state is not None:
        codec.check_state(state)
    if codec.max_level < 255 and readout.size and int(readout.max()) > codec.max_level:
        raise ValueError(f"payload {codec.name!r} carries levels 0..{codec.max_level}, the readout holds "
                         f"{int(readout.max())}")
    payload = codec.encode(readout, state, level)
    if payload is not None and len(payload) <= codec.size(readout.shape):
        return codec, bytes(payload)
    if codec.fallback is None:
        raise ValueError(f"payload {codec.name!r} coded a {readout.shape} readout to "
                         f"{'nothing' if payload is None else f'{len(payload)} bytes'}, and it has no fallback")
    used = _BY_NAME[codec.fallback]
    return used, bytes(used.encode(readout, None, level))


@dataclass(frozen=True)
class PayloadOptions:
    """A payload choice: ``name`` (a registered payload), ``level`` (level-carrying payloads: the host
    rebuilds 127 +- level) and ``file`` (payloads with side state: e.g. the prior file)."""

    name: str = "8bit"
    level: int = DEFAULT_LEVEL
    file: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        codec = get_payload(self.name) if isinstance(self.name, str) else None
        if codec is None:
            raise InputError(f"payload must be a name from {', '.join(payload_names())}, got {self.name!r}")
        if not (isinstance(self.level, int) and not isinstance(self.level, bool) and 1 <= self.level <= ZERO_LEVEL):
            raise InputError(f"1-bit level must be an integer 1..{ZERO_LEVEL}, got {self.level!r}")
        if self.file is not None and not isinstance(self.file, (str, os.PathLike)):
            raise InputError(f"the payload's file must be a path, got {type(self.file).__name__}")
        if codec.open_state is not None and self.file is None:
            hint = f" ({codec.file_hint})" if codec.file_hint else ""
            raise InputError(f"payload {codec.name} needs {codec.file_label}{hint}")
        if codec.open_state is None and self.file is not None:
            takers = ", ".join(file_payload_names()) or "none"
            raise InputError(f"payload {codec.name} takes no file (payloads with a file: {takers}), got {self.file}")

    @property
    def codec(self) -> PayloadCodec:
        return get_payload(self.name)

    def open(self) -> PayloadState:
        """Open the side state once (the prior: ``core.prior_coder.load_prior``); a one-line InputError."""
        codec = self.codec
        state = None
        if codec.open_state is not None:
            try:
                state = codec.open_state(self.file)
            except (ValueError, OSError) as exc:
                raise InputError(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                 f"cannot open {codec.file_label} {self.file}") from None
        return PayloadState(codec=codec, level=self.level, state=state)


@dataclass(frozen=True)
class PayloadState:
    """An opened payload: its codec, level and side state (None for codecs without one)."""

    codec: PayloadCodec
    level: int = DEFAULT_LEVEL
    state: object = None

    @property
    def states(self) -> dict[int, object]:
        """``{wire id: side state}`` for a host decoder (empty without side state): the state serves every
        payload that opens the same kind of file (the table file: ``table`` and ``levels1-table``)."""
        if self.state is None:
            return {}
        return {c.wire_id: self.state for c in _BY_ID.values() if c.open_state is self.codec.open_state}

    def check_shape(self, shape: Shape) -> None:
        """A one-line InputError when the side state cannot code readouts of ``shape`` (the codec's
        ``check_shape``); nothing for codecs without one."""
        if self.codec.check_shape is not None and self.state is not None:
            try:
                self.codec.check_shape(self.state, tuple(shape))
            except ValueError as exc:
                raise InputError(str(exc).strip().splitlines()[0]) from None


# -- built-in codecs ------------------------------------------------------------------------------
def _levels(bits: np.ndarray, level: int) -> np.ndarray:
    return np.where(bits, ZERO_LEVEL + level, ZERO_LEVEL - level).astype(np.uint8)


def _encode_8bit(readout, state, level) -> bytes:
    return np.ascontiguousarray(readout).tobytes()


def _decode_8bit(payload, shape, state, level) -> np.ndarray:
    return np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()


def _encode_1bit(readout, state, level) -> bytes:
    return np.packbits(readout >= ZERO_LEVEL, axis=None).tobytes()


def _decode_1bit(payload, shape, state, level) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8), count=shape[0] * shape[1])
    return _levels(bits.reshape(shape), level)


def _check_coder(coder) -> None:
    """A prior coder (``core.prior_coder.PriorCoder``) over 2 symbols, the 1-bit readout's."""
    if coder is None:
        raise ValueError("the prior payload needs a coder (core.prior_coder.load_prior of the prior file)")
    if not all(hasattr(coder, a) for a in ("prior_id", "encode", "decode", "num_classes")):
        raise ValueError(f"coder must be a core.prior_coder.PriorCoder, got {type(coder).__name__}")
    if coder.num_classes != 2:
        raise ValueError(f"the prior must model 2 levels (1-bit readouts), this one has {coder.num_classes}")


def _encode_prior(readout, coder, level) -> bytes:
    return bytes(coder.prior_id) + coder.encode((readout >= ZERO_LEVEL).view(np.uint8))


def _decode_prior(payload, shape, coder, level) -> np.ndarray:
    """Prior id + PriorCoder payload -> levels, or a PacketError."""
    if coder is None:
        raise PacketError("no_prior", "prior-coded packet, but this host has no prior file")
    prior_id = bytes(payload[:PRIOR_ID_BYTES])
    if prior_id != bytes(coder.prior_id):
        raise PacketError("wrong_prior", f"packet coded with prior {prior_id.hex()}, the host's is "
                          f"{bytes(coder.prior_id).hex()}")
    try:
        bits = coder.decode(bytes(payload[PRIOR_ID_BYTES:]), shape=shape)
    except ValueError as exc:                      # PriorMismatch: the bits fail their CRC
        raise PacketError("bad_prior_decode", f"prior payload does not decode: {exc}") from None
    if bits.shape != tuple(shape) or (bits > 1).any():
        raise PacketError("bad_prior_decode", "prior payload decoded to symbols other than 1-bit signs")
    return _levels(bits, level)


def _bits_bytes(shape: Shape) -> int:
    return (int(shape[0]) * int(shape[1]) + 7) // 8


register_payload(PayloadCodec(
    wire_id=8, name="8bit", help="the 8-bit analog levels (4,096 B per 64x64 window)",
    encode=_encode_8bit, decode=_decode_8bit, size=lambda shape: int(shape[0]) * int(shape[1])))
register_payload(PayloadCodec(
    wire_id=1, name="1bit", help="the signs of o, packed (512 B per 64x64 window, less accurate)",
    encode=_encode_1bit, decode=_decode_1bit, size=_bits_bytes, uses_level=True))
register_payload(PayloadCodec(
    wire_id=2, name="prior",
    help="the 1bit signs losslessly arithmetic-coded under a learned prior (needs the prior file)",
    encode=_encode_prior, decode=_decode_prior,
    size=lambda shape: 2 * _bits_bytes(shape) + 64, min_size=lambda shape: PRIOR_MIN_BYTES,
    uses_level=True, open_state=load_prior, check_state=_check_coder,
    describe_state=lambda coder: {"prior_hash": coder.prior_hash}, file_label="the prior file",
    file_hint="the command pixelrnn generate export-prior writes one",
    fallback="1bit", reasons=("no_prior", "wrong_prior", "bad_prior_decode")))


def _context_code(bits: np.ndarray) -> bytes:
    """A binary map under the context model (a layout's stacked maps as such: ``stacked_rows``)."""
    return context_coder.encode_bits(bits, map_rows=context_coder.stacked_rows(bits.shape))


def _context_bits(payload, shape, name: str) -> np.ndarray:
    """Model id + CRC32 + context-model code -> the (H, W) bits, or a PacketError (``bad_context_decode``)."""
    try:
        return context_coder.decode_bits(bytes(payload), shape=tuple(shape),
                                         map_rows=context_coder.stacked_rows(shape))
    except ValueError as exc:                      # ContextMismatch (CRC), unknown model id, too short
        raise PacketError("bad_context_decode", f"{name} payload does not decode: {exc}") from None


def _encode_context(readout, state, level) -> bytes:
    return _context_code(readout >= ZERO_LEVEL)


def _decode_context(payload, shape, state, level) -> np.ndarray:
    return _levels(_context_bits(payload, shape, "context"), level)


register_payload(PayloadCodec(
    wire_id=3, name="context",
    help="the 1bit signs losslessly coded under an adaptive JBIG-style context model, no file "
         "(~424 B per 64x64 GRID window of the authors' readout layout vs 512; 1bit when not shorter)",
    encode=_encode_context, decode=_decode_context,
    # the 1bit size at most (longer codes fall back); at least its header, or less for a map so small
    # that it always falls back (the range stays well formed)
    size=_bits_bytes, min_size=lambda shape: min(context_coder.MIN_BYTES, _bits_bytes(shape)),
    uses_level=True, fallback="1bit", reasons=("bad_context_decode",)))


# -- the static context table (a side file, core.table_coder) -------------------------------------
TABLE_REASONS = ("no_table", "wrong_table", "bad_table_decode")


def _check_table(table) -> None:
    """A table (``core.table_coder.ContextTable``, ``load_table`` of the table file)."""
    if table is None:
        raise ValueError("the table payloads need a table (core.table_coder.load_table of the table file)")
    if not isinstance(table, table_coder.ContextTable):
        raise ValueError(f"table must be a core.table_coder.ContextTable, got {type(table).__name__}")


def _check_table_shape(table, shape: Shape) -> None:
    """The table codes readouts of one shape: the readouts it was fitted on."""
    if tuple(shape) != table.shape:
        raise ValueError(f"the table file was fitted on {table.shape[0]}x{table.shape[1]} readouts, this sensor "
                         f"sends {shape[0]}x{shape[1]}: fit one on this model's readouts (pixelrnn fit-table)")


def _table_code(bits: np.ndarray, table) -> bytes:
    _check_table_shape(table, bits.shape)
    return table_coder.encode_bits(bits, table=table)


def _table_bits(payload, shape, table, name: str) -> np.ndarray:
    """Table id + CRC32 + code -> the (H, W) bits, or a PacketError: ``no_table`` (this host has none),
    ``wrong_table`` (coded with another table, or for another shape), ``bad_table_decode`` (the CRC)."""
    if table is None:
        raise PacketError("no_table", f"{name} packet, but this host has no table file")
    table_id = bytes(payload[:table_coder.TABLE_ID_BYTES])
    if table_id != table.table_id:
        raise PacketError("wrong_table", f"packet coded with table {table_id.hex()}, the host's is {table.table_hash}")
    if tuple(shape) != table.shape:
        raise PacketError("wrong_table", f"{name} packet of a {shape[0]}x{shape[1]} readout, the host's table "
                          f"codes {table.shape[0]}x{table.shape[1]}")
    try:
        return table_coder.decode_bits(bytes(payload), table=table)
    except ValueError as exc:                      # TableMismatch (CRC), too short
        raise PacketError("bad_table_decode", f"{name} payload does not decode: {exc}") from None


def _table_codec(*, wire_id: int, name: str, help: str, fallback: str, levels: bool) -> PayloadCodec:
    """``table`` (the signs of 8-bit levels, ``readout >= 127``, rebuilt as 127 +- level) or
    ``levels1-table`` (a layout's 1-bit levels, level byte 0): the same coder and table file."""
    raw_size = get_payload(fallback).size

    def encode(readout, table, level) -> bytes:
        return _table_code(readout > 0 if levels else readout >= ZERO_LEVEL, table)

    def decode(payload, shape, table, level) -> np.ndarray:
        if levels and level != 0:
            raise PacketError("bad_encoding", f"{name} payload with level byte {level} (it carries none: 0)")
        bits = _table_bits(payload, shape, table, name)
        return bits if levels else _levels(bits, level)

    return PayloadCodec(
        wire_id=wire_id, name=name, help=help, encode=encode, decode=decode, size=raw_size,
        min_size=lambda shape: min(table_coder.HEADER_BYTES, raw_size(shape)), uses_level=not levels,
        open_state=table_coder.load_table, check_state=_check_table, check_shape=_check_table_shape,
        describe_state=lambda table: {"table_hash": table.table_hash, "table_shape": list(table.shape),
                                      "taps": list(table.taps), "program_hash": table.program_hash},
        file_label="the table file", file_hint="the command pixelrnn fit-table writes one", fallback=fallback,
        reasons=TABLE_REASONS, max_level=1 if levels else 255)


register_payload(_table_codec(
    wire_id=6, name="table", fallback="1bit", levels=False,
    help="the 1bit signs losslessly coded under a static table of one probability per pixel position and "
         "context, counted on training readouts of the same sensor program (needs the table file; ~358 B per "
         "64x64 GRID window vs 512; 1bit when not shorter)"))


# -- b-bit levels of a readout layout (4, 2, 1 bit) -------------------------------------------------
LEVELS_BITS = (4, 2, 1)
LEVELS_WIRE_BASE = 16                # wire id of levels{b}: 16 + b


def _levels_codec(bits: int) -> PayloadCodec:
    """``levels{bits}``: ``bits`` bits per level, MSB first, padded with zero bits to whole bytes
    (``ReadoutLayout.pack`` of the levels in row-major order). Its decoder refuses a level byte other
    than 0 (``bad_encoding``) and nonzero padding bits (``bad_payload``): one canonical payload."""
    top = (1 << bits) - 1
    name = f"levels{bits}"

    def size(shape: Shape) -> int:
        return (int(shape[0]) * int(shape[1]) * bits + 7) // 8

    def encode(readout, state, level) -> bytes:
        if bits == 1:                                   # levels are the bits: one packbits
            return np.packbits(np.ascontiguousarray(readout, dtype=np.uint8).reshape(-1)).tobytes()
        flat = np.ascontiguousarray(readout, dtype=np.uint8).reshape(-1, 1)
        return np.packbits(np.unpackbits(flat, axis=1)[:, 8 - bits:].reshape(-1)).tobytes()

    def decode(payload, shape, state, level) -> np.ndarray:
        if level != 0:
            raise PacketError("bad_encoding", f"{name} payload with level byte {level} (it carries none: 0)")
        n = int(shape[0]) * int(shape[1])
        stream = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
        if stream[n * bits:].any():
            raise PacketError("bad_payload", f"{name} payload has nonzero padding bits")
        if bits == 1:
            return stream[:n].reshape(shape)
        planes = stream[:n * bits].reshape(n, bits)
        return np.packbits(np.pad(planes, ((0, 0), (8 - bits, 0))), axis=1).reshape(shape)

    return PayloadCodec(
        wire_id=LEVELS_WIRE_BASE + bits, name=name,
        help=f"{bits}-bit readout levels of a model trained for them ({size((64, 64)):,} B per 64x64 map)",
        encode=encode, decode=decode, size=size, max_level=top)


for _bits in LEVELS_BITS:
    register_payload(_levels_codec(_bits))


def _encode_levels1_context(readout, state, level) -> bytes:
    return _context_code(readout > 0)


def _decode_levels1_context(payload, shape, state, level) -> np.ndarray:
    """-> 0/1 levels; a level byte other than 0 is ``bad_encoding`` (as for the levels payloads)."""
    if level != 0:
        raise PacketError("bad_encoding", f"levels1-context payload with level byte {level} (it carries none: 0)")
    return _context_bits(payload, shape, "levels1-context").astype(np.uint8)


_LEVELS1_BYTES = get_payload("levels1").size
register_payload(PayloadCodec(
    wire_id=LEVELS_WIRE_BASE + 17, name="levels1-context",
    help="the 1-bit levels of a readout layout losslessly coded under the context model, no file (the "
         "bundled lips model's 8 maps of 32x32: ~520 B per window vs 1,024; levels1 when not shorter)",
    encode=_encode_levels1_context, decode=_decode_levels1_context, size=_LEVELS1_BYTES,
    min_size=lambda shape: min(context_coder.MIN_BYTES, _LEVELS1_BYTES(shape)), max_level=1,
    fallback="levels1", reasons=("bad_context_decode",)))
register_payload(_table_codec(
    wire_id=LEVELS_WIRE_BASE + 18, name="levels1-table", fallback="levels1", levels=True,
    help="the 1-bit levels of a readout layout losslessly coded under a static table (needs the table file, "
         "fitted on that model's readouts; the bundled lips model's 8 maps of 32x32: ~380 B per window vs "
         "1,024; levels1 when not shorter)"))
# a layout's own payload -> {payload the authors' readout uses: its variant for the layout's levels}
LAYOUT_VARIANTS = {"levels1": {"context": "levels1-context", "table": "levels1-table"}}


def layout_payloads(layout: ReadoutLayout) -> tuple[str, ...]:
    """Every payload a sensor with ``layout`` may send (its own; for 1-bit levels also its coded variants,
    :data:`LAYOUT_VARIANTS`, whose fallback it is): what the host of such a model accepts."""
    own = layout_payload_name(layout)
    return (own, *LAYOUT_VARIANTS.get(own, {}).values())


def layout_payload_name(layout: ReadoutLayout) -> str:
    """The payload that carries ``layout``'s levels: ``8bit`` for 8-bit levels, else ``levels{bits}``."""
    return "8bit" if layout.bits == 8 else f"levels{layout.bits}"


def layout_image_shape(layout: ReadoutLayout) -> Shape:
    """(M * S, S): the packet image of a layout's (M, S, S) levels, the maps stacked vertically."""
    return (layout.maps * layout.side, layout.side)


def choose_layout_payload(layout: ReadoutLayout, requested: str) -> str:
    """The payload a sensor with ``layout`` sends when ``requested`` was asked for.

    The authors' layout takes any payload but the ``levels`` ones (they carry b-bit levels of a
    model trained for them); any other layout sends its own (:func:`layout_payload_name`), and
    ``requested`` must be that or ``8bit`` (the default, which stands for "the layout's"); a 1-bit
    layout also takes its coded variants (:data:`LAYOUT_VARIANTS`): ``levels1-context`` (or
    ``context``) and ``levels1-table`` (or ``table``). Anything else is a one-line InputError naming the
    layout and what to do."""
    own = layout_payload_name(layout)
    codec = get_payload(requested)
    if layout.is_authors:
        if codec.max_level < 255:                       # levels{b} and their coded variants
            takes = ", ".join(c.name for c in _BY_ID.values() if c.max_level == 255)
            raise InputError(f"payload {codec.name} carries the levels of a model trained for "
                             f"{codec.max_level.bit_length()}-bit readouts; this model reads out the authors' "
                             f"8-bit readout: use one of {takes}")
        return codec.name
    variants = LAYOUT_VARIANTS.get(own, {})
    for alias, variant in variants.items():
        if codec.name in (alias, variant):
            return variant               # the same coder on the layout's own 1-bit levels
    if codec.name not in (own, "8bit"):
        also = "".join(f", or {v} (alias {a}) for the same levels {a}-coded" for a, v in variants.items())
        raise InputError(f"payload {codec.name} cannot carry this model's readout ({layout.describe()}): "
                         f"its layout is sent as {own}; leave the payload at 8bit (the default) or give "
                         f"{own}{also}")
    return own
