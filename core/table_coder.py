"""A static context table for binary readout maps (the ``table`` and ``levels1-table`` payloads), numpy + stdlib.

Why: a sensor program's readout has a strong fixed pattern per pixel position, which the adaptive
context model (:mod:`core.context_coder`, empty counts in every payload) cannot learn in one window
and a translation-equivariant learned prior (:mod:`core.prior_coder`) cannot learn at all. A table
of one probability per (pixel position, causal context), counted once on training windows of the
same sensor program and shipped to both ends as a side file, codes fewer bytes than either at the
context model's speed (docs/BENCHMARKS.md, "Readout payload codecs (issue 17)").

What: :class:`ContextTable` holds, for every pixel of an (H, W) map and every context ``c`` of its
template, ``freq0 = P(bit = 0) * 2**16`` as a uint16 in ``[2, 2**16 - 2]``. The context is built from
named taps (:data:`TAPS`), the first tap the most significant bit and ``W`` (the left neighbour)
always the last, bit 0; outside the map a tap reads 0. A stacked image of M maps of S rows (a
readout layout's (M*S, S) packet image, :func:`core.context_coder.stacked_rows`) never reads across
a map boundary; its taps ``P`` / ``PE`` read the *previous* map at (y, x) / (y, x+1) (0 in the first
map). Templates (:func:`default_taps`), chosen on the validation fold (ideal code length, GRID
readouts): one map ``N, NE, W`` (343 B for the authors' 64x64; NW, NN or fewer taps do not help);
stacked maps ``P, N, NE, W`` (366 B for the lips model's 8 maps of 32x32; without ``P``: 410 B;
``PE`` too: 365 B for a table twice the size).

Fitting (:func:`fit_table`) counts ones and visits per (position, context) on training maps and
shrinks towards the context's frequency over all positions: ``p1 = (ones + s * g) / (seen + s)``,
``g = (ones_c + 0.5) / (seen_c + 1)``, ``s`` = :data:`DEFAULT_STRENGTH` (validation: 1 to 4 within
0.2%). Floating point is used only there; coding reads the stored integers.

Coding: pixels go to the arithmetic coder (:mod:`core.arith`, 16-bit) two at a time, as in
:mod:`core.context_coder`: a horizontal pair (a, b) is one symbol ``2a + b`` of the table
``[0, F00, Fa, Fa + F10, 2**16]``, ``F00 = max(Fa * Fb0 >> 16, 1)``, ``F10 = max((2**16 - Fa) * Fb1 >> 16, 1)``
(``Fb0`` / ``Fb1``: b's freq0 with its W tap = 0 / 1); maps must have an even width (every readout
map does: 64 / pool). Integers only, so the sensor and the host cannot diverge on any machine.

Payload: the 8-byte table id (:attr:`ContextTable.table_id`, sha256 of a tag, the shape, the taps
and the table), the 4-byte big-endian CRC32 of the bits (:func:`core.prior_coder.symbols_crc`),
then the code. A payload coded with another table is :class:`WrongTable`; one whose bits fail the
CRC is :class:`TableMismatch`: never a silently wrong readout.

Table file (:func:`save_table` / :func:`load_table`): an ``.npz`` with ``format``, ``shape``,
``taps``, ``freq0`` and optionally ``program_hash`` (the sensor program whose readouts it was
counted on) and ``windows`` (how many); written atomically, read with ``allow_pickle=False``;
every problem a one-line :class:`core.errors.InputError`.

Cost: the encoder knows the whole map, so every context and pair table is computed with numpy and
only the coder call is per pair; the decoder goes pair by pair on Python ints (per row, one list
comprehension per tap gives the context bits of the rows above and of the previous map; per pair,
three table look-ups and the coder call), as :mod:`core.context_coder` does.
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.arith import ArithmeticDecoder, ArithmeticEncoder
from core.context_coder import check_map_shape, stacked_rows
from core.errors import InputError
from core.prior_coder import symbols_crc

__all__ = ["FORMAT", "TAPS", "PRECISION_BITS", "TABLE_ID_BYTES", "CRC_BYTES", "HEADER_BYTES", "MAX_PIXELS",
           "DEFAULT_STRENGTH", "TableMismatch", "WrongTable", "ContextTable", "default_taps", "contexts",
           "fit_table", "encode_bits", "decode_bits", "payload_table_id", "save_table", "load_table"]

FORMAT = "pixelrnn.edge.table/v1"
PRECISION_BITS = 16
_TOTAL = 1 << PRECISION_BITS
FREQ_MIN, FREQ_MAX = 2, _TOTAL - 2        # so every pair table is strictly increasing (module docstring)
TABLE_ID_BYTES = 8
CRC_BYTES = 4
HEADER_BYTES = TABLE_ID_BYTES + CRC_BYTES  # the code itself may be empty
MAX_PIXELS = 1 << 20
DEFAULT_STRENGTH = 2.0
# name -> (map offset, row offset, column offset): causal neighbours; W must be the template's last tap
TAPS = {"N": (0, -1, 0), "NE": (0, -1, 1), "NW": (0, -1, -1), "NN": (0, -2, 0), "W": (0, 0, -1),
        "P": (-1, 0, 0), "PE": (-1, 0, 1)}
SINGLE_TAPS = ("N", "NE", "W")
STACKED_TAPS = ("P", "N", "NE", "W")
_HEADER = struct.Struct("!8sI")
_HINT = "pixelrnn fit-table writes one"
_FILE_KEYS = ("format", "shape", "taps", "freq0", "program_hash", "windows")


class TableMismatch(ValueError):
    """A payload whose decoded bits fail its CRC: corrupted (or a table that hashes alike but differs)."""


class WrongTable(ValueError):
    """A payload coded with another table (its table id is not this table's)."""


# --- validation -----------------------------------------------------------------------------------
def _check_shape(shape) -> tuple[int, int]:
    h, w = check_map_shape(shape, max_pixels=MAX_PIXELS)
    if w % 2:
        raise ValueError(f"the table coder codes maps of even width (pixel pairs), got {h}x{w}")
    return h, w


def _check_taps(taps) -> tuple[str, ...]:
    if isinstance(taps, str) or not isinstance(taps, (tuple, list)) or not taps:
        raise ValueError(f"taps must be a non-empty list of names from {', '.join(TAPS)}, got {taps!r}")
    taps = tuple(taps)
    unknown = [t for t in taps if t not in TAPS]
    if unknown:
        raise ValueError(f"unknown tap {unknown[0]!r}: taps are named {', '.join(TAPS)}")
    if len(set(taps)) != len(taps) or taps[-1] != "W" or "W" in taps[:-1]:
        raise ValueError(f"taps must be distinct and end with W (the one tap in the pixel's own row), got {list(taps)}")
    if len(taps) > 8:
        raise ValueError(f"at most 8 taps (256 contexts per pixel), got {len(taps)}")
    return taps


def _check_bits(bits, what: str = "bits") -> np.ndarray:
    if not isinstance(bits, np.ndarray):
        raise ValueError(f"{what} must be a numpy array, got {type(bits).__name__}")
    if bits.size == 0 or bits.dtype.kind not in "iub":
        raise ValueError(f"{what} must be a non-empty integer or bool array, got {bits.dtype} {bits.shape}")
    if bits.dtype != np.bool_ and (int(bits.min()) < 0 or int(bits.max()) > 1):
        raise ValueError(f"{what} must hold 0 and 1 only")
    return bits.astype(np.uint8)


def default_taps(shape) -> tuple[str, ...]:
    """The template for a map of ``shape``: ``N, NE, W`` for one map, ``P, N, NE, W`` for stacked maps."""
    h, _ = _check_shape(shape)
    return STACKED_TAPS if stacked_rows(shape) < h else SINGLE_TAPS


# --- the table ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)
class ContextTable:
    """``freq0[y * W + x, c]``: P(bit = 0) * 2**16 of pixel (y, x) in context ``c`` (uint16 in [2, 2**16 - 2]),
    for maps of ``shape`` under ``taps``. ``program_hash``: the sensor program it was counted for
    (informational); ``windows``: how many training windows. Compared by identity; :attr:`table_id`
    says whether two tables code alike."""

    shape: tuple[int, int]
    taps: tuple[str, ...]
    freq0: np.ndarray
    program_hash: str = ""
    windows: int = 0

    def __repr__(self) -> str:
        return (f"ContextTable({self.table_hash}, shape={self.shape}, taps={self.taps}, "
                f"program_hash={self.program_hash!r}, windows={self.windows})")

    def __post_init__(self) -> None:
        shape = _check_shape(self.shape)
        taps = _check_taps(self.taps)
        f = self.freq0
        want = (shape[0] * shape[1], 1 << len(taps))
        if not isinstance(f, np.ndarray) or f.dtype != np.uint16 or f.shape != want:
            got = f"{f.dtype} {f.shape}" if isinstance(f, np.ndarray) else type(f).__name__
            raise ValueError(f"freq0 must be uint16 of shape {want} for {shape[0]}x{shape[1]} maps and taps "
                             f"{','.join(taps)}, got {got}")
        if int(f.min()) < FREQ_MIN or int(f.max()) > FREQ_MAX:
            raise ValueError(f"freq0 must lie in [{FREQ_MIN}, {FREQ_MAX}]")
        if not isinstance(self.program_hash, str) or not isinstance(self.windows, (int, np.integer)):
            raise ValueError("program_hash must be a string and windows an int")
        f = np.array(f, dtype=np.uint16, order="C")
        f.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "taps", taps)
        object.__setattr__(self, "freq0", f)
        object.__setattr__(self, "windows", int(self.windows))
        h = hashlib.sha256(FORMAT.encode())
        h.update(f"\0{shape[0]}x{shape[1]}\0{','.join(taps)}\0".encode())
        h.update(f.astype("<u2").tobytes())
        object.__setattr__(self, "_id", h.digest()[:TABLE_ID_BYTES])          # derived, set once:
        object.__setattr__(self, "_flat", f.reshape(-1).astype(np.int64))     # the encoder's (numpy)
        object.__setattr__(self, "_list", self._flat.tolist())                # the decoder's (Python ints)

    @property
    def table_id(self) -> bytes:
        """8 bytes: sha256 of the format tag, shape, taps and table (little-endian uint16); what a payload carries."""
        return self._id

    @property
    def table_hash(self) -> str:
        """:attr:`table_id` in hex (16 characters), for run summaries."""
        return self._id.hex()

    @property
    def map_rows(self) -> int:
        """Rows per stacked map (:func:`core.context_coder.stacked_rows` of the shape)."""
        return stacked_rows(self.shape)


def contexts(bits: np.ndarray, *, taps, map_rows: int | None = None) -> np.ndarray:
    """Context (int64, ``taps`` in order, W as bit 0) of every pixel of (H, W) or (N, H, W) maps, all at
    once; ``map_rows``: rows per stacked map (None: the whole height is one map)."""
    b = _check_bits(bits)
    taps = _check_taps(taps)
    if b.ndim not in (2, 3):
        raise ValueError(f"bits must be (H, W) or (N, H, W), got shape {b.shape}")
    one = b.ndim == 2
    b = b[None] if one else b
    n, h, w = b.shape
    s = h if map_rows is None else int(map_rows)
    if s < 1 or h % s:
        raise ValueError(f"map_rows={map_rows} does not divide the height {h}")
    m = h // s
    pad = np.zeros((n, m + 1, s + 2, w + 2), dtype=np.int64)     # a zero map before, 2 rows above, 1 column each side
    pad[:, 1:, 2:, 1:-1] = b.reshape(n, m, s, w)
    ctx = np.zeros((n, m, s, w), dtype=np.int64)
    for t in taps:
        dm, dy, dx = TAPS[t]
        ctx = (ctx << 1) | pad[:, 1 + dm:1 + dm + m, 2 + dy:2 + dy + s, 1 + dx:1 + dx + w]
    ctx = ctx.reshape(n, h, w)
    return ctx[0] if one else ctx


def fit_table(bits: np.ndarray, *, taps=None, strength: float = DEFAULT_STRENGTH,
              program_hash: str = "") -> ContextTable:
    """Count a :class:`ContextTable` on training maps ``bits`` (N, H, W) of 0/1 (module docstring);
    ``taps``: None for :func:`default_taps`. Fit on training windows only, never on test ones."""
    b = _check_bits(bits)
    if b.ndim != 3:
        raise ValueError(f"bits must be (N, H, W) training maps, got shape {b.shape}")
    n, h, w = b.shape
    _check_shape((h, w))
    taps = default_taps((h, w)) if taps is None else _check_taps(taps)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength < 1e6:
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    c = 1 << len(taps)
    ctx = contexts(b, taps=taps, map_rows=stacked_rows((h, w)))
    key = (np.arange(h * w, dtype=np.int64).reshape(h, w) * c + ctx).ravel()
    one = b.ravel().astype(bool)
    ones = np.bincount(key[one], minlength=h * w * c)
    seen = np.bincount(key, minlength=h * w * c)
    g = (np.bincount(ctx.ravel()[one], minlength=c) + 0.5) / (np.bincount(ctx.ravel(), minlength=c) + 1.0)
    p1 = (ones + strength * np.tile(g, h * w)) / (seen + strength)
    f0 = np.clip(np.rint((1.0 - p1) * _TOTAL), FREQ_MIN, FREQ_MAX).astype(np.uint16)
    return ContextTable(shape=(h, w), taps=taps, freq0=f0.reshape(h * w, c), program_hash=program_hash, windows=n)


# --- coding ---------------------------------------------------------------------------------------
def _pair_tables(f, fa_idx, fb_idx) -> np.ndarray:
    """(..., 5) cumulative tables of pairs (a, b): a at index ``fa_idx``, b at ``fb_idx`` with its W bit 0."""
    fa, fb0, fb1 = f[fa_idx], f[fb_idx], f[fb_idx | 1]
    f00 = np.maximum(fa * fb0 >> PRECISION_BITS, 1)
    f10 = np.maximum((_TOTAL - fa) * fb1 >> PRECISION_BITS, 1)
    return np.stack([np.zeros_like(fa), f00, fa, fa + f10, np.full_like(fa, _TOTAL)], axis=-1)


def _check_table(table) -> ContextTable:
    if not isinstance(table, ContextTable):
        raise ValueError(f"table must be a core.table_coder.ContextTable, got {type(table).__name__}")
    return table


def encode_bits(bits: np.ndarray, *, table: ContextTable) -> bytes:
    """Code an (H, W) map of 0/1 of the table's shape -> table id + CRC32 + arithmetic code."""
    table = _check_table(table)
    b = _check_bits(bits)
    if b.shape != table.shape:
        raise ValueError(f"the table codes {table.shape[0]}x{table.shape[1]} maps, got bits of shape {b.shape}")
    h, w = b.shape
    c = 1 << len(table.taps)
    idx = (np.arange(h * w, dtype=np.int64) * c + contexts(b, taps=table.taps, map_rows=table.map_rows).ravel())
    sym = b.ravel().astype(np.int64)
    enc = ArithmeticEncoder(precision_bits=PRECISION_BITS)
    enc.encode_all(2 * sym[0::2] + sym[1::2], _pair_tables(table._flat, idx[0::2], idx[1::2] & ~1))
    return _HEADER.pack(table.table_id, symbols_crc(b)) + enc.finish()


def payload_table_id(payload) -> bytes:
    """The table id a payload of :func:`encode_bits` carries (its first 8 bytes)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) < HEADER_BYTES:
        raise ValueError(f"table payload of {len(payload)} bytes is shorter than its {HEADER_BYTES}-byte header")
    return bytes(payload[:TABLE_ID_BYTES])


def decode_bits(payload: bytes, *, table: ContextTable) -> np.ndarray:
    """Decode a payload of :func:`encode_bits` -> (H, W) uint8 0/1 of the table's shape. :class:`WrongTable`
    for another table's payload, :class:`TableMismatch` when the bits fail the CRC, ValueError if too short."""
    table = _check_table(table)
    wanted = payload_table_id(payload)
    if wanted != table.table_id:
        raise WrongTable(f"payload coded with table {wanted.hex()}, this table is {table.table_hash}")
    payload = bytes(payload)
    _, crc = _HEADER.unpack_from(payload)
    decode = ArithmeticDecoder(payload[HEADER_BYTES:], precision_bits=PRECISION_BITS).decode
    h, w = table.shape
    s, c, f, total, shift = table.map_rows, 1 << len(table.taps), table._list, _TOTAL, PRECISION_BITS
    static = [(TAPS[t], len(table.taps) - 1 - i) for i, t in enumerate(table.taps[:-1])]   # ((dm, dy, dx), bit)
    zero = [0] * (w + 2)
    maps: list[list[list[int]]] = []           # per map its rows, each padded with a zero column each side
    for m in range(h // s):
        prev = maps[-1] if maps else None
        rows: list[list[int]] = []
        for y in range(s):
            start = (m * s + y) * w * c
            base = list(range(start, start + w * c, c))          # table row of each pixel, then its context bits
            for (dm, dy, dx), bit in static:
                src = (prev if dm else rows) if y + dy >= 0 else None
                if src is not None:
                    base = [b | v << bit for b, v in zip(base, src[y + dy][1 + dx:1 + dx + w])]
            row = zero[:]
            left = 0
            for x in range(0, w, 2):          # pairs (a, b): a's W bit is ``left``, b's is a
                fa = f[base[x] | left]
                ib = base[x + 1]
                fb1 = f[ib | 1]
                pair = decode([0, fa * f[ib] >> shift or 1, fa, fa + ((total - fa) * fb1 >> shift or 1), total])
                left = pair & 1
                row[x + 1] = pair >> 1
                row[x + 2] = left
            rows.append(row)
        maps.append(rows)
    bits = np.array([row[1:-1] for rows in maps for row in rows], dtype=np.uint8)
    if symbols_crc(bits) != crc:
        raise TableMismatch("decoded map fails its CRC: the payload is corrupted")
    return bits


# --- the table file -------------------------------------------------------------------------------
def save_table(path: str | os.PathLike, *, table: ContextTable) -> Path:
    """Write ``table`` as a table file (``.npz``, atomically, mode 0644); one-line InputError for a bad path."""
    from core.atomic import atomic_open
    from core.npz import check_npz_output, write_zip

    table = _check_table(table)
    path = check_npz_output(path)
    content = {"format": np.array(FORMAT), "shape": np.array(table.shape, dtype=np.int64),
               "taps": np.array(table.taps), "freq0": table.freq0,
               "program_hash": np.array(table.program_hash), "windows": np.array(table.windows, dtype=np.int64)}
    with atomic_open(path, "wb", shared=True) as fh:
        write_zip(fh, content.items())
    return path


def load_table(path: str | os.PathLike) -> ContextTable:
    """Read a table file of :func:`save_table`; a missing, damaged or wrong file is a one-line InputError
    naming the problem and the fix."""
    from core.npz import open_npz

    try:
        with open_npz(path, what="table", example="core.table_coder.save_table", missing_hint=f" ({_HINT})") as data:
            missing = [k for k in ("format", "shape", "taps", "freq0") if k not in data.files]
            if missing:
                raise InputError(f"{path} is not a table file: no {missing[0]!r} array ({_HINT})")
            arrays = {k: data[k] for k in data.files if k in _FILE_KEYS}
    except InputError as exc:                     # a damaged archive: say what makes a good one
        text = str(exc)
        raise InputError(text if _HINT in text else f"{text}; {_HINT}") from None
    tag = arrays["format"]
    if tag.shape != () or tag.dtype.kind != "U" or str(tag) != FORMAT:
        raise InputError(f"{path} is not a table file of format {FORMAT!r} ({_HINT})")
    shape, taps = arrays["shape"], arrays["taps"]
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or taps.ndim != 1 or taps.dtype.kind != "U":
        raise InputError(f"{path}: shape must be 2 integers and taps a list of names ({_HINT})")
    program = arrays.get("program_hash", np.array(""))
    windows = arrays.get("windows", np.array(0))
    try:
        return ContextTable(shape=tuple(int(n) for n in shape), taps=tuple(str(t) for t in taps),
                            freq0=arrays["freq0"], program_hash=str(program) if program.shape == () else "",
                            windows=int(windows) if windows.shape == () and windows.dtype.kind in "iu" else 0)
    except ValueError as exc:
        raise InputError(f"{path}: damaged table file: {exc} ({_HINT})") from None
