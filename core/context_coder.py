"""A JBIG-style context model for binary maps (the ``context`` readout payload), numpy + stdlib only.

Every pixel, in raster order, is coded under a probability that depends only on a few pixels already
coded, its *context*, and is learnt while coding: per context, integer counts ``n0``, ``n1`` of the
symbols seen so far, and

    freq(0) = clip((n0 + 1) * 2**16 // (n0 + n1 + 2), 2, 2**16 - 2)     (out of 2**16)

(Laplace's rule of succession, in integers). Pixels go to the arithmetic coder (:mod:`core.arith`,
16-bit frequencies) two at a time: a horizontal pair (a, b) = (x, x+1), x even, is one symbol
2a + b of the 4-symbol table ``[0, F00, F0, F0 + F10, 2**16]`` with ``F0 = freq_a(0)``,
``F00 = max(F0 * freq_b(0 | a=0) >> 16, 1)``, ``F10 = max((2**16 - F0) * freq_b(0 | a=1) >> 16, 1)``,
where b's context holds a as its W pixel and, if it is a's own context, a's count update (so the
pair costs what the two binary steps would, to within the rounding); an odd width's last pixel is
coded alone. Half the coder calls: the encoder's cost is mostly those calls.

Counts start at zero in every payload (a lost packet loses nothing else) and are never halved: they
are bounded by the number of pixels, at most :data:`MAX_PIXELS`, so every product fits in 64 bits
and the numpy encoder and the pure-Python decoder compute the same integers on any machine. No
floating point anywhere: the sensor and the host cannot diverge; a corrupted payload is caught by
the CRC32 of the symbols it carries.

Template (fixed, chosen on validation bits; see docs/BENCHMARKS.md, "Readout payload codecs"):

* spatial: the four causal neighbours W, NW, N, NE of the pixel in its own map (outside the map: 0);
* stacked maps (a readout layout's (M*S, S) packet image, :func:`stacked_rows`): the template never
  reads across a map boundary; instead, for maps after the first, the pixels at (y, x) and
  (y, x+1) of the *previous* map join the context (as in JBIG2's refinement coding: the maps of one
  window are o at successive frames and look alike), with one more bit saying "has a previous map".
  Counts are kept across the maps of one payload (they share statistics).

The context is 7 bits: ``first << 6 | ref(y, x) << 5 | ref(y, x+1) << 4 | NW << 3 | N << 2 | NE << 1 | W``
(``first`` = 1 for maps after the first; a single map uses contexts 0..15 only).

Validation (GRID readouts, the 800 non-test windows; ideal code length): the 4-pixel template codes
a 64x64 window of the authors' readout in 418 B (JBIG's 10-pixel 3-line template: 452 B, its
2-line one 450 B, JBIG2's 16-pixel template 483 B: 4,096 pixels are too few to learn 1,024+
contexts), the 8 x 32x32 maps of the default lips model in 523 B (without the previous map: 783 B).

Payload: 1 byte :data:`MODEL_ID` (this template and estimator), the 4-byte big-endian CRC32 of the
symbols (uint8, row-major, as :func:`core.prior_coder.symbols_crc`), then the arithmetic code.

Cost: the encoder knows the whole map, so it computes every context, count and table with numpy
(counts of a context before a pixel: a search in the pixels sorted by context and position) and then
makes one coder call per pair; the decoder goes pair by pair on Python ints (row buffers, local
names, no numpy scalars in the loop). About 7 ms to encode and 8 ms to decode a 64x64 map on one
x86 core (docs/BENCHMARKS.md).
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from core.arith import ArithmeticDecoder, ArithmeticEncoder

__all__ = ["MODEL_ID", "PRECISION_BITS", "HEADER_BYTES", "MIN_BYTES", "MAX_PIXELS", "NUM_CONTEXTS",
           "ContextMismatch", "check_map_shape", "stacked_rows", "contexts", "encode_bits", "decode_bits"]

MODEL_ID = 1                       # the template and estimator of this module; another one is a new id
PRECISION_BITS = 16
_TOTAL = 1 << PRECISION_BITS
CRC_BYTES = 4
HEADER_BYTES = 1 + CRC_BYTES       # model id + CRC32 of the symbols
MIN_BYTES = HEADER_BYTES           # the code itself may be empty (e.g. an all-zero map)
MAX_PIXELS = 1 << 24               # counts < 2**24: (n0 + 1) * 2**16 stays far inside int64
NUM_CONTEXTS = 1 << 7
_HEADER = struct.Struct("!BI")


class ContextMismatch(ValueError):
    """A payload whose decoded symbols fail its CRC (corrupted, or coded with another map split)."""


# --- validation -----------------------------------------------------------------------------------
def check_map_shape(shape, *, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of a map shape of positive ints with at most ``max_pixels`` pixels, or a
    ValueError naming the problem (this coder's bound by default; :mod:`core.table_coder` passes its own)."""
    if not isinstance(shape, (tuple, list)) or len(shape) != 2 or not all(
            isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 1 for n in shape):
        raise ValueError(f"shape must be (height, width) with positive ints, got {shape!r}")
    h, w = int(shape[0]), int(shape[1])
    if h * w > max_pixels:
        raise ValueError(f"a map of {h}x{w} has more than {max_pixels:,} pixels")
    return h, w


def _check_rows(map_rows, height: int) -> int:
    if map_rows is None:
        return height
    if isinstance(map_rows, (bool, np.bool_)) or not isinstance(map_rows, (int, np.integer)) or map_rows < 1:
        raise ValueError(f"map_rows must be a positive int or None, got {map_rows!r}")
    if height % int(map_rows):
        raise ValueError(f"map_rows={map_rows} does not divide the height {height} (maps of equal height)")
    return int(map_rows)


def _check_bits(bits) -> np.ndarray:
    if not isinstance(bits, np.ndarray):
        raise ValueError(f"bits must be a numpy array, got {type(bits).__name__}")
    if bits.ndim != 2 or bits.size == 0:
        raise ValueError(f"bits must be a non-empty (H, W) array, got shape {bits.shape}")
    if bits.dtype.kind not in "iub":
        raise ValueError(f"bits must have an integer or bool dtype, got {bits.dtype}")
    check_map_shape(bits.shape)
    if bits.dtype != np.bool_ and (int(bits.min()) < 0 or int(bits.max()) > 1):
        raise ValueError("bits must hold 0 and 1 only")
    return bits.astype(np.uint8)


def stacked_rows(shape) -> int:
    """Rows of one map in a packet image of ``shape``: an (M*S, S) image with M > 1 (a readout
    layout's maps stacked vertically, ``edge.payloads.layout_image_shape``) is M maps of S rows;
    any other shape is one map. The ``context`` payload's rule, so no extra byte is sent."""
    h, w = check_map_shape(shape)
    return w if h > w and h % w == 0 else h


# --- contexts -------------------------------------------------------------------------------------
def contexts(bits: np.ndarray, *, map_rows: int | None = None) -> np.ndarray:
    """The (H, W) int64 context of every pixel (module docstring), all at once: what the encoder
    uses and the decoder rebuilds pixel by pixel. ``map_rows``: rows per stacked map (None: one)."""
    b = _check_bits(bits)
    h, w = b.shape
    s = _check_rows(map_rows, h)
    m = h // s
    maps = b.reshape(m, s, w).astype(np.int64)
    pad = np.zeros((m, s + 1, w + 2), dtype=np.int64)        # one zero row above, one column each side
    pad[:, 1:, 1:-1] = maps
    ctx = (pad[:, :-1, :-2] << 3) | (pad[:, :-1, 1:-1] << 2) | (pad[:, :-1, 2:] << 1) | pad[:, 1:, :-2]
    if m > 1:
        ref = np.zeros((m, s, w + 1), dtype=np.int64)
        ref[1:, :, :w] = maps[:-1]
        ctx[1:] |= 64 | (ref[1:, :, :w] << 5) | (ref[1:, :, 1:] << 4)
    return ctx.reshape(h, w)


def _freq0(n0, n):
    """freq(0) of a context seen ``n`` times, ``n0`` of them 0 (ints or int64 arrays, same result)."""
    return np.clip((n0 + 1) * _TOTAL // (n + 2), 2, _TOTAL - 2)


# --- coding ---------------------------------------------------------------------------------------
def encode_bits(bits: np.ndarray, *, map_rows: int | None = None) -> bytes:
    """Code an (H, W) map of 0/1 (any integer or bool dtype) -> model id + CRC32 + arithmetic code.
    ``map_rows``: rows per stacked map (None: one map); the decoder must be given the same."""
    b = _check_bits(bits)
    h, w = b.shape
    ctx = contexts(b, map_rows=map_rows).ravel()
    sym = b.ravel().astype(np.int64)
    size = sym.size
    # counts of context c before pixel i: pixels sorted by (context, position), running sum of ones
    order = np.argsort(ctx, kind="stable")
    keys = ctx[order] * size + order
    ones = np.concatenate([[0], np.cumsum(sym[order])])

    def before(c, i):                              # (zeros, total) of context c over pixels < i
        lo = np.searchsorted(keys, c * size)
        hi = np.searchsorted(keys, c * size + i)
        n = hi - lo
        return n - (ones[hi] - ones[lo]), n

    pos = np.arange(size).reshape(h, w)
    first = pos[:, 0:w - 1:2].ravel()              # pixel a of every pair (a, b) = (x, x + 1), x even
    a, ca = sym[first], ctx[first]
    n0a, na = before(ca, first)
    fa = _freq0(n0a, na)
    fb = []
    for branch in (0, 1):                          # freq(b = 0) had a been ``branch``: b's W bit is a
        cb = (ctx[first + 1] & ~1) | branch
        m0, m = before(cb, first)
        same = cb == ca                            # a's own context: counted with a = branch
        fb.append(_freq0(np.where(same, n0a + 1 - branch, m0), np.where(same, na + 1, m)))
    f00 = np.maximum(fa * fb[0] >> PRECISION_BITS, 1)
    f10 = np.maximum((_TOTAL - fa) * fb[1] >> PRECISION_BITS, 1)
    tables = np.stack([np.zeros_like(fa), f00, fa, fa + f10, np.full_like(fa, _TOTAL)], axis=1).tolist()
    symbols = (2 * a + sym[first + 1]).reshape(h, -1)
    if w % 2:                                      # an odd width: the last pixel of a row on its own
        last = pos[:, -1]
        n0, n = before(ctx[last], last)
        tables = [tables[r * (w // 2):(r + 1) * (w // 2)] + [[0, f, _TOTAL]]
                  for r, f in enumerate(_freq0(n0, n).tolist())]
        tables = [t for row in tables for t in row]
        symbols = np.concatenate([symbols, sym[last][:, None]], axis=1)
    enc = ArithmeticEncoder(precision_bits=PRECISION_BITS)
    put = enc.encode
    for s, table in zip(symbols.ravel().tolist(), tables):
        put(s, table)
    crc = zlib.crc32(b.tobytes()) & 0xFFFFFFFF
    return _HEADER.pack(MODEL_ID, crc) + enc.finish()


def decode_bits(payload: bytes, *, shape, map_rows: int | None = None) -> np.ndarray:
    """Decode a payload of :func:`encode_bits` -> (H, W) uint8 0/1. ValueError for a payload that is
    too short or names another model; :class:`ContextMismatch` when the symbols fail the CRC."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ValueError(f"payload must be bytes, got {type(payload).__name__}")
    h, w = check_map_shape(shape)
    s = _check_rows(map_rows, h)
    payload = bytes(payload)
    if len(payload) < HEADER_BYTES:
        raise ValueError(f"context payload of {len(payload)} bytes is shorter than its {HEADER_BYTES}-byte header")
    model, crc = _HEADER.unpack_from(payload)
    if model != MODEL_ID:
        raise ValueError(f"context payload of model {model}, this decoder reads model {MODEL_ID}")
    decode = ArithmeticDecoder(payload[HEADER_BYTES:], precision_bits=PRECISION_BITS).decode
    total, low, high, shift = _TOTAL, 2, _TOTAL - 2, PRECISION_BITS
    n0s, ns = [0] * NUM_CONTEXTS, [0] * NUM_CONTEXTS
    rows: list[list[int]] = []
    zero_hi = [0] * w
    for m in range(h // s):
        above = [0] * (w + 3)                   # the row above, padded: above[x + 1] is pixel x
        for y in range(s):
            if m:
                ref = rows[(m - 1) * s + y] + [0]
                hi = [64 | ref[x] << 5 | ref[x + 1] << 4 for x in range(w)]
            else:
                hi = zero_hi
            row = [0] * w
            t = above[1] << 1 | above[2]        # NW, N, NE of x = 0 (NW is the left padding)
            left = 0
            for x in range(0, w - 1, 2):        # pairs (a, b) = pixels x, x + 1: one 4-symbol table
                ca = hi[x] | t << 1 | left
                t = (t << 1 & 7) | above[x + 3]
                cb = hi[x + 1] | t << 1
                n0 = n0s[ca]
                n = ns[ca]
                fa = (n0 + 1) * total // (n + 2)
                fa = low if fa < low else high if fa > high else fa
                if cb == ca:                    # b's context had a been 0 is a's: counted with a = 0
                    f0 = (n0 + 2) * total // (n + 3)
                else:
                    f0 = (n0s[cb] + 1) * total // (ns[cb] + 2)
                f0 = low if f0 < low else high if f0 > high else f0
                if cb | 1 == ca:
                    f1 = (n0 + 1) * total // (n + 3)
                else:
                    f1 = (n0s[cb | 1] + 1) * total // (ns[cb | 1] + 2)
                f1 = low if f1 < low else high if f1 > high else f1
                f00 = fa * f0 >> shift or 1
                pair = decode([0, f00, fa, fa + ((total - fa) * f1 >> shift or 1), total])
                a = pair >> 1
                left = pair & 1
                if not a:
                    n0s[ca] = n0 + 1
                ns[ca] = n + 1
                cb |= a
                if not left:
                    n0s[cb] += 1
                ns[cb] += 1
                row[x] = a
                row[x + 1] = left
                t = (t << 1 & 7) | above[x + 4]
            if w % 2:                           # an odd width: the last pixel on its own
                ctx = hi[w - 1] | t << 1 | left
                n0 = n0s[ctx]
                n = ns[ctx]
                f = (n0 + 1) * total // (n + 2)
                left = decode([0, low if f < low else high if f > high else f, total])
                if not left:
                    n0s[ctx] = n0 + 1
                ns[ctx] = n + 1
                row[w - 1] = left
            rows.append(row)
            above = [0] + row + [0, 0]
    out = np.array(rows, dtype=np.uint8).reshape(h, w)
    if zlib.crc32(out.tobytes()) & 0xFFFFFFFF != crc:
        raise ContextMismatch("decoded map fails its CRC: the payload is corrupted (or was coded as another "
                              "map split)")
    return out
