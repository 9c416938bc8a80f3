"""Exact integer arithmetic coding (Witten, Neal & Cleary 1987, "Arithmetic coding for data
compression"), in pure Python (+ numpy for :func:`quantize_probs`): no torch, so the edge runtime
(``core.prior_coder``) and the training side (``pixelrnn.generative``, which re-exports this
module) share one implementation.

The coder keeps a 32-bit interval ``[low, high]`` and narrows it, for every symbol, to the
symbol's share of a cumulative-frequency table ``cum`` (``cum[0] = 0 < cum[1] < ... < cum[K] =
total``, ``total = 2**precision_bits``; symbol ``s`` owns ``[cum[s], cum[s+1])``). Whenever the
interval lies in one half of the range the leading bit is settled and shifted out (E1/E2); when it
straddles the middle within the two inner quarters it is expanded and the undecided bit is counted
as *pending* (E3, the underflow case). After renormalisation the interval spans more than a
quarter of the 32-bit range, so ``total <= 2**30`` guarantees every symbol with frequency >= 1 a
non-empty sub-interval: coding is exact and lossless (all arithmetic is on Python ints).

The code length is within ~2 bits plus byte padding of ``sum(-log2(freq/total))``; the rounding of
the interval split costs at most ~``total / 2**30`` relative. The decoder reads zero bits past the
end of the payload, so :meth:`ArithmeticEncoder.finish` drops trailing zero bytes.

:func:`quantize_probs` turns model probabilities into frequency tables; :func:`cumulative` turns a
frequency table into the ``cum`` list both coders take.
"""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import numpy as np

STATE_BITS = 32
MAX_PRECISION_BITS = STATE_BITS - 2     # total <= a quarter of the state range (see module doc)
_TOP = (1 << STATE_BITS) - 1
_HALF = 1 << (STATE_BITS - 1)
_QUARTER = 1 << (STATE_BITS - 2)
_THREE_QUARTERS = 3 * _QUARTER


def check_precision_bits(precision_bits) -> int:
    if (isinstance(precision_bits, bool) or not isinstance(precision_bits, (int, np.integer))
            or not 1 <= precision_bits <= MAX_PRECISION_BITS):
        raise ValueError(f"precision_bits must be an int in [1, {MAX_PRECISION_BITS}], got {precision_bits!r}")
    return int(precision_bits)


def quantize_probs(probs, *, precision_bits: int = 16) -> np.ndarray:
    """Map probabilities (K,) or (B, K) to int64 frequencies: every row sums to exactly
    ``2**precision_bits`` and every frequency is >= 1.

    Deterministic procedure, row by row (pure numpy float64, no data-dependent branches):

    1. ``p = probs / probs.sum()`` (float64; rows must be finite, >= 0, with a positive sum);
    2. ``scaled = p * (total - K)``; ``freq = floor(scaled) + 1`` -- one count reserved for every
       symbol, so an improbable symbol still costs at most ``precision_bits`` bits;
    3. the ``d = total - sum(freq)`` counts left over (``0 <= d <= K``) go one each to the symbols
       with the largest fractional parts ``scaled - floor(scaled)``, ties to the lower index
       (largest-remainder rounding; ``d // K`` more to every symbol in the degenerate case d = K).

    The same float64 input gives the same table on every call, which is what the encoder and
    the decoder of a coder rely on.
    """
    bits = check_precision_bits(precision_bits)
    arr = np.asarray(probs)
    if arr.dtype.kind != "f":
        raise ValueError(f"probs must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise ValueError(f"probs must have shape (K,) or (B, K) with K >= 1, got {arr.shape}")
    total = 1 << bits
    k = arr.shape[-1]
    if k > total:
        raise ValueError(f"K={k} symbols need precision_bits >= {(k - 1).bit_length()}, got {bits}")
    p = arr.reshape(-1, k).astype(np.float64, copy=False)
    sums = p.sum(axis=1, keepdims=True)
    # NaN fails every comparison; an inf (or an overflowing sum) makes a row sum infinite
    if not (p.min() >= 0 and sums.min() > 0 and sums.max() < np.inf):
        raise ValueError("probs must be finite and >= 0 with a positive sum in every row")
    scaled = (p / sums) * float(total - k)
    base = np.floor(scaled)
    freqs = base.astype(np.int64) + 1
    q, rem = np.divmod(total - freqs.sum(axis=1, keepdims=True), k)   # left over: 0 <= . <= K
    order = np.argsort(base - scaled, axis=1, kind="stable")          # largest fraction first, ties: lower index
    freqs += q + (np.argsort(order, axis=1) < rem)                    # rank of each symbol < rem
    return freqs.reshape(arr.shape)


def cumulative(freqs, *, precision_bits: int = 16) -> list[int]:
    """Frequencies (K,) (ints >= 1 summing to ``2**precision_bits``) -> ``[0, f0, f0+f1, ..., total]``."""
    bits = check_precision_bits(precision_bits)
    f = np.asarray(freqs)
    if f.ndim != 1 or f.size == 0 or f.dtype.kind not in "iu":
        raise ValueError(f"freqs must be a non-empty 1-D integer array, got {f.dtype} {f.shape}")
    if (f < 1).any() or int(f.sum()) != 1 << bits:
        raise ValueError(f"freqs must all be >= 1 and sum to 2**{bits}")
    return list(accumulate(f.tolist(), initial=0))


def _check_table(cum, total: int) -> int:
    """Cheap per-symbol checks; returns K."""
    n = len(cum)
    if n < 2 or cum[0] != 0 or cum[-1] != total:
        raise ValueError(f"cum must be [0, ..., {total}] with K+1 >= 2 entries")
    return n - 1


class ArithmeticEncoder:
    """Encode symbols one at a time; :meth:`finish` returns the payload bytes."""

    def __init__(self, *, precision_bits: int = 16):
        self.precision_bits = check_precision_bits(precision_bits)
        self.total = 1 << self.precision_bits
        self.num_symbols = 0
        self._low, self._high, self._pending = 0, _TOP, 0
        self._out = bytearray()
        self._acc, self._nacc = 0, 0
        self._done = False

    def _bits(self, bit: int, pending: int) -> None:
        """Write ``bit`` followed by ``pending`` opposite bits."""
        acc, nacc, out = self._acc, self._nacc, self._out
        for b in (bit,) + (1 - bit,) * pending:
            acc = (acc << 1) | b
            nacc += 1
            if nacc == 8:
                out.append(acc)
                acc = nacc = 0
        self._acc, self._nacc = acc, nacc

    def _code(self, ranges) -> None:
        """Narrow the interval to each checked ``(lo, hi)`` in turn, renormalising (the one coding loop)."""
        low, high, pending, total, emit = self._low, self._high, self._pending, self.total, self._bits
        for lo, hi in ranges:
            rng = high - low + 1
            high = low + rng * hi // total - 1
            low = low + rng * lo // total
            while True:
                if high < _HALF:
                    emit(0, pending)
                    pending = 0
                elif low >= _HALF:
                    emit(1, pending)
                    pending = 0
                    low -= _HALF
                    high -= _HALF
                elif low >= _QUARTER and high < _THREE_QUARTERS:
                    pending += 1
                    low -= _QUARTER
                    high -= _QUARTER
                else:
                    break
                low <<= 1
                high = (high << 1) | 1
        self._low, self._high, self._pending = low, high, pending

    def encode(self, symbol: int, cum) -> None:
        """Code ``symbol`` (0 <= symbol < K) with the cumulative table ``cum`` (K+1 ints)."""
        if self._done:
            raise ValueError("encoder is finished")
        k = _check_table(cum, self.total)
        if isinstance(symbol, bool) or not isinstance(symbol, (int, np.integer)) or not 0 <= symbol < k:
            raise ValueError(f"symbol must be an int in [0, {k}), got {symbol!r}")
        lo, hi = int(cum[symbol]), int(cum[symbol + 1])
        if not 0 <= lo < hi <= self.total:
            raise ValueError(f"symbol {symbol} has an empty or invalid range [{lo}, {hi}) in cum")
        self._code(((lo, hi),))
        self.num_symbols += 1

    def encode_all(self, symbols, cums) -> None:
        """Code ``symbols[i]`` with the table ``cums[i]`` for every i, in order: the same bytes as that
        many :meth:`encode` calls, with the tables checked at once as an (n, K+1) integer array. For
        coders that know every table in advance (the encoder of a static or precomputed model)."""
        if self._done:
            raise ValueError("encoder is finished")
        tab, sym = np.asarray(cums), np.asarray(symbols)
        if tab.ndim != 2 or tab.shape[1] < 2 or tab.dtype.kind not in "iu" or sym.shape != tab.shape[:1] \
                or sym.dtype.kind not in "iu":
            raise ValueError(f"cums must be an (n, K+1) integer array and symbols (n,) integers, got "
                             f"{tab.dtype} {tab.shape} and {sym.dtype} {sym.shape}")
        if not len(sym):
            return
        if (tab[:, 0] != 0).any() or (tab[:, -1] != self.total).any():
            raise ValueError(f"every cum must be [0, ..., {self.total}]")
        if sym.min() < 0 or sym.max() >= tab.shape[1] - 1:
            raise ValueError(f"symbols must lie in [0, {tab.shape[1] - 1})")
        rows = np.arange(len(sym))
        lo, hi = tab[rows, sym], tab[rows, sym + 1]
        if (lo >= hi).any() or lo.min() < 0 or hi.max() > self.total:
            raise ValueError("a symbol has an empty or invalid range in its cum")
        self._code(zip(lo.tolist(), hi.tolist()))
        self.num_symbols += len(sym)

    def finish(self) -> bytes:
        """Flush (2 bits + pending bits select a point inside the final interval whatever bits
        follow), pad to a byte and drop trailing zero bytes (the decoder reads zeros there)."""
        if self._done:
            raise ValueError("encoder is already finished")
        self._done = True
        self._bits(0 if self._low < _QUARTER else 1, self._pending + 1)
        self._pending = 0
        if self._nacc:
            self._out.append(self._acc << (8 - self._nacc))
        return bytes(self._out).rstrip(b"\x00")


class ArithmeticDecoder:
    """Decode symbols from a payload; call :meth:`decode` with the same tables, in the same order."""

    def __init__(self, data: bytes, *, precision_bits: int = 16):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ValueError(f"data must be bytes, got {type(data).__name__}")
        self.precision_bits = check_precision_bits(precision_bits)
        self.total = 1 << self.precision_bits
        self._data = bytes(data)
        self._nbits = 8 * len(self._data)
        self._pos = 0
        self._low, self._high = 0, _TOP
        value = 0
        for _ in range(STATE_BITS):
            value = (value << 1) | self._bit()
        self._value = value

    def _bit(self) -> int:
        pos = self._pos
        self._pos = pos + 1
        if pos >= self._nbits:
            return 0
        return (self._data[pos >> 3] >> (7 - (pos & 7))) & 1

    def decode(self, cum) -> int:
        """The next symbol, given the table ``cum`` the encoder used for it."""
        k = _check_table(cum, self.total)
        low, high, value = self._low, self._high, self._value
        rng = high - low + 1
        target = ((value - low + 1) * self.total - 1) // rng     # in [0, total)
        symbol = bisect_right(cum, target) - 1
        if not 0 <= symbol < k or not cum[symbol] <= target < cum[symbol + 1]:
            raise ValueError("cum is not a strictly increasing cumulative table")
        lo, hi = int(cum[symbol]), int(cum[symbol + 1])
        high = low + rng * hi // self.total - 1
        low = low + rng * lo // self.total
        while True:
            if high < _HALF:
                pass
            elif low >= _HALF:
                low -= _HALF
                high -= _HALF
                value -= _HALF
            elif low >= _QUARTER and high < _THREE_QUARTERS:
                low -= _QUARTER
                high -= _QUARTER
                value -= _QUARTER
            else:
                break
            low <<= 1
            high = (high << 1) | 1
            value = (value << 1) | self._bit()
        self._low, self._high, self._value = low, high, value
        return symbol
