"""Packet fuzzer (issue 16): mutated readout packets against ``edge.packet`` and ``edge.auth``.

Seeds are genuine packets of every registered payload (``edge.payloads.payload_names()``; the
prior's side state is a small random prior file written with ``core.prior_coder.save_prior``; the
table payloads' a small table per even-width shape, :func:`toy_table`, a table coding one shape) in
several shapes, plus end-of-stream packets. Each case mutates one seed and decodes it as a host
would (``decode_packet`` with the model id, the prior coder, the table of the seed's shape
(:func:`host_states`) and, for most cases, the host's readout shape). The oracle, per case:

* ``decode_packet`` returns a :class:`edge.packet.Packet` whose readout is an (H, W) uint8 array of
  the header's shape (None for an end packet), or raises ``PacketError`` with a reason in
  ``edge.packet.REASONS`` (or a registered codec's ``reasons``); any other exception is a crash;
* a mutation that did *not* recompute the CRC32 can only be rejected by the checks before and at
  the CRC (``short``, ``bad_magic``, ``bad_length``, ``bad_crc``); accepted, it must be
  byte-identical to its genuine seed (a no-op mutation). "Accepted after mutation" is expected only
  for mutations that deliberately recomputed the CRC (the CRC is no defence against forgery: the
  MAC is);
* an accepted prior payload that was altered must still decode to the seed's bits (the prior
  payload's own CRC32 of the bits: never a silently wrong readout);
* every case is timed (a watchdog turns a hang into a failure); the worst time per mutation kind is
  reported and must stay under ``max_case_s``.

Cases that make the host run the prior's arithmetic decoder over a 64x64 readout cost ~0.3 s each
on a 2-core machine, so they have a budget (``prior_big_budget``); smaller prior shapes are not
limited. ``decode_packet`` without ``expect_shape`` decodes a prior payload of whatever shape the
header claims (documented: its cost grows with H * W), so cases claiming a prior readout larger than
64x64 are always decoded with the host's shape, as ``edge.host`` does.

MAC layer (``LinkKey.open``): sealed genuine packets, then bit flips, byte substitutions,
truncations (of the MAC too), extensions, the wrong key, another packet's MAC, no MAC and random
bytes; any datagram that differs from every sealed genuine one must give None.

Stateful (``PacketDecoder``): streams of genuine packets mixed with mutants (corruption, replays,
CRC-valid packets of another model / stream / far sequence number), with and without the MAC: the
genuine packets' decisions (accepted, same readout) are unchanged and the counters add up
(accepted + ends + sum(rejected) == packets fed).

    python benchmarks/packet_fuzz.py [--cases 10000 | --long] [--seed 0]

The results of one run are in docs/SECURITY.md ("Packet fuzzing").

``--long`` is 100,000 packet cases (plus 20,000 MAC cases and the streams). tests/test_packet_fuzz.py
runs the same engine with 10,000 cases (``PIXELRNN_FUZZ_CASES`` to change it).
"""
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from functools import lru_cache  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.constants import ZERO_LEVEL  # noqa: E402
from core.prior_coder import load_prior, prior_shapes, save_prior  # noqa: E402
from core.table_coder import ContextTable, fit_table, load_table  # noqa: E402
from edge.auth import KEY_BYTES, MAC_BYTES, LinkKey  # noqa: E402
from edge.packet import (  # noqa: E402
    ENC_PRIOR,
    HEADER_BYTES,
    KIND_END,
    KIND_READOUT,
    MAGIC,
    OVERHEAD_BYTES,
    REASONS,
    VERSION,
    Packet,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_end,
    encode_readout,
)
from edge.payloads import get_payload, payload_names  # noqa: E402

MODEL = "0123456789abcdef"
DEFAULT_CASES = 10_000
LONG_CASES = 100_000
MAX_CASE_S = 2.0             # the bound asserted per case (the worst is reported)
HANG_S = 30.0                # the watchdog: a case running this long is a hang
SHAPES = ((64, 64), (16, 16), (8, 8), (5, 7), (1, 1), (1, 13), (13, 1), (3, 3))
BIG_AREA = 1024              # a prior decode above this many pixels counts against the budget
_HEADER = struct.Struct("!4sBBBBIIQ8sHHI")
# what a mutant whose CRC was not recomputed may be rejected for: the checks up to the CRC
PRE_CRC = frozenset({"short", "bad_magic", "bad_length", "bad_crc"})
# mutations of a seed's own payload (not a splice of another genuine payload)
PAYLOAD_KINDS = frozenset({"payload_flip", "payload_random", "length_resize"})


def all_reasons() -> frozenset[str]:
    return frozenset(REASONS) | {r for n in payload_names() for r in get_payload(n).reasons}


def recrc(body_and_crc: bytes) -> bytes:
    """``data`` with its trailing 4-byte CRC32 recomputed over everything before it."""
    body = bytes(body_and_crc[:-4])
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def frame(body: bytes) -> bytes:
    return bytes(body) + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def crc_ok(data: bytes) -> bool:
    return len(data) >= 4 and struct.unpack_from("!I", data, len(data) - 4)[0] == zlib.crc32(data[:-4]) & 0xFFFFFFFF


def header_of(data: bytes) -> tuple | None:
    return _HEADER.unpack_from(data) if len(data) >= HEADER_BYTES else None


def make_prior_file(path: Path, seed: int = 0, *, hidden: int = 4, layers: int = 2, kernel: int = 3) -> Path:
    """A small random prior (any weights are a valid prior), as tests/test_edge_prior.py makes."""
    meta = {"num_classes": 2, "hidden": hidden, "kernel": kernel, "layers": layers}
    rng = np.random.default_rng(seed)
    arrays = {n: rng.normal(0.0, 0.5, s) for n, s in prior_shapes(meta).items()}
    return save_prior(path, arrays, meta)


# -- seeds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seed:
    """A genuine packet, what the host makes of it, and the host shape it is decoded against."""

    name: str
    packet: bytes
    host_shape: tuple[int, int]
    readout: np.ndarray | None          # the genuine decoded readout (None: end packet)
    stream_id: int
    seq: int

    @property
    def encoding(self) -> int:
        return self.packet[6]

    @property
    def is_end(self) -> bool:
        return self.packet[5] == KIND_END


@lru_cache(maxsize=None)
def toy_table(shape: tuple[int, int]) -> ContextTable | None:
    """The table payloads' side state for readouts of ``shape``: a table fitted on a few random maps
    (any table is valid); None for an odd width, which the table coder does not code."""
    if shape[1] % 2:
        return None
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    return fit_table((rng.random((8, *shape)) < 0.1).astype(np.uint8))      # mostly 0: zero maps code short


def side_state(codec, shape: tuple[int, int], coder):
    """What a sender (and its host) of ``shape`` readouts holds for ``codec``: nothing, the prior's
    coder, or the toy table of that shape (a table codes one shape: None where it cannot)."""
    if codec.open_state is None:
        return None
    return toy_table(tuple(shape)) if codec.open_state is load_table else coder


def host_states(coder, shape: tuple[int, int]) -> dict[int, object]:
    """A host's side states: the prior's ``coder`` (None: no prior) and the table of its model's ``shape``."""
    out = {}
    for name in payload_names():
        codec = get_payload(name)
        state = side_state(codec, shape, coder)
        if state is not None:
            out[codec.wire_id] = state
    return out


def _readouts(rng: np.random.Generator, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    h, w = shape
    r, c = np.mgrid[:h, :w]
    return {"random": rng.integers(0, 256, shape, dtype=np.uint8),
            "zeros": np.zeros(shape, np.uint8),
            "full": np.full(shape, 255, np.uint8),
            "stripes": np.where(((r + c) // 3) % 2 == 0, 180, 60).astype(np.uint8)}


def make_seeds(coder, *, seed: int = 0) -> list[Seed]:
    """Genuine packets of every registered payload x shapes x readouts, and end packets."""
    rng = np.random.default_rng(seed)
    seeds: list[Seed] = []
    for shape in SHAPES:
        readouts = _readouts(rng, shape)
        states = host_states(coder, shape)
        for name in payload_names():
            codec = get_payload(name)
            state = side_state(codec, shape, coder)
            if codec.open_state is not None and state is None:
                continue                                      # no table codes this shape: the sensor refuses it
            big = shape == (64, 64) and codec.variable        # a 64x64 prior code costs ~0.3 s each way
            for rkind in (("random", "stripes") if big else tuple(readouts)):
                for level in ((1, 50, 127) if codec.uses_level and rkind == "random" and not big else (50,)):
                    stream = int(rng.integers(0, 1 << 32))
                    seq = int(rng.choice([0, 1, 7, (1 << 32) - 1, int(rng.integers(0, 1 << 32))]))
                    t_ns = int(rng.integers(0, 1 << 63))
                    # a payload of b-bit levels (max_level < 255) carries levels 0..max_level only
                    levels = readouts[rkind]
                    if codec.max_level < 255:
                        levels = levels % np.uint8(codec.max_level + 1)
                    pkt = encode_readout(levels, model_id=MODEL, stream_id=stream, seq=seq, t_ns=t_ns,
                                         encoding=name, level=level, coder=state)
                    used = get_payload(pkt[6]).name
                    # what the host makes of it: known for the built-in payloads, else decoded
                    host = (readouts[rkind] if used == "8bit" else np.where(
                        readouts[rkind] >= ZERO_LEVEL, ZERO_LEVEL + level, ZERO_LEVEL - level).astype(np.uint8)
                        if used in ("1bit", "prior") else None)
                    if host is None or shape[0] * shape[1] <= 256:   # (a 64x64 prior decode costs ~0.3 s)
                        decoded = decode_packet(pkt, expect_model=MODEL, states=states, expect_shape=shape)
                        if host is not None and not np.array_equal(decoded.readout, host):
                            raise AssertionError(f"genuine {name} {shape} packet decodes to another readout")
                        host = decoded.readout
                    tag = name if used == name else f"{name}->{used}"
                    seeds.append(Seed(f"{tag} {shape[0]}x{shape[1]} {rkind} level {level}", pkt, shape,
                                      host, stream, seq))
    for i, (stream, seq) in enumerate(((0, 0), (1, 5), ((1 << 32) - 1, (1 << 32) - 1),
                                       (int(rng.integers(0, 1 << 32)), 1000))):
        pkt = encode_end(model_id=MODEL, stream_id=stream, seq=seq, t_ns=int(rng.integers(0, 1 << 63)))
        seeds.append(Seed(f"end {i} seq {seq}", pkt, SHAPES[i % len(SHAPES)], None, stream, seq))
    return seeds


# -- mutations ------------------------------------------------------------------------------------
@dataclass
class Mutant:
    data: bytes
    recomputed: bool              # the mutation deliberately recomputed the CRC32
    host_shape: tuple[int, int] | None
    host: str = "prior"           # the host's prior: "prior" (the sender's), "none", "other"
    note: str = ""


def _rand_bytes(r: random.Random, n: int) -> bytes:
    return r.getrandbits(8 * n).to_bytes(n, "big") if n > 0 else b""


def _u32(r: random.Random) -> int:
    return r.getrandbits(32)


def mut_bitflip(r, s, ctx=None):
    d = bytearray(s.packet)
    for _ in range(r.choice((1, 1, 2, 3, 8))):
        i = r.randrange(len(d) * 8)
        d[i >> 3] ^= 0x80 >> (i & 7)
    return Mutant(bytes(d), False, s.host_shape)


def mut_byte_sub(r, s, ctx=None):
    d = bytearray(s.packet)
    for _ in range(r.choice((1, 1, 2, 4))):
        d[r.randrange(len(d))] = r.randrange(256)
    return Mutant(bytes(d), False, s.host_shape)


def mut_truncate(r, s, ctx=None):
    n = len(s.packet)
    cut = r.choice((0, 1, OVERHEAD_BYTES - 1, OVERHEAD_BYTES, n - 1, n - 4, r.randrange(n)))
    return Mutant(s.packet[:max(0, min(cut, n - 1))], False, s.host_shape)


def mut_extend(r, s, ctx=None):
    tail = r.choice((b"\x00", _rand_bytes(r, r.randint(1, 64)), s.packet[-4:], b"\x00" * 1000))
    return Mutant(s.packet + tail, False, s.host_shape)


def mut_random_bytes(r, s, ctx=None):
    n = r.choice((0, 1, 43, 44, 45, r.randrange(2 * len(s.packet) + 1)))
    data = _rand_bytes(r, n)
    if r.random() < 0.5 and n >= 8:
        data = MAGIC + bytes([VERSION]) + data[5:]
    return Mutant(data, False, s.host_shape)


# header fields: (name, struct index, interesting values(seed header, rng))
def _field_values(name: str, hdr: tuple, r: random.Random) -> list:
    h, w, length = hdr[9], hdr[10], hdr[11]
    return {
        "version": [0, 2, 255, r.randrange(256)],
        "kind": [1 - hdr[2] if hdr[2] in (0, 1) else 0, 2, 255, r.randrange(256)],
        "encoding": [*(get_payload(n).wire_id for n in payload_names()), 0, 3, 7, 9, 255, r.randrange(256)],
        "level": [0, 1, 126, 127, 128, 255, r.randrange(256)],
        "stream": [0, (1 << 32) - 1, hdr[5] ^ 1, _u32(r)],
        "seq": [0, 1, hdr[6] + 1 & 0xFFFFFFFF, (1 << 32) - 1, _u32(r)],
        "t_ns": [0, (1 << 64) - 1, r.getrandbits(64)],
        "model": [bytes(8), bytes([hdr[8][0] ^ 1]) + hdr[8][1:], _rand_bytes(r, 8)],
        "height": [0, 1, max(0, h - 1), h + 1, w, 4096, 4097, 65535, r.randrange(1, 70)],
        "width": [0, 1, max(0, w - 1), w + 1, h, 4096, 4097, 65535, r.randrange(1, 70)],
        "length": [0, max(0, length - 1), length + 1, (1 << 32) - 1, r.randrange(2 * length + 80)],
    }[name]


_FIELD_INDEX = {"version": 1, "kind": 2, "encoding": 3, "level": 4, "stream": 5, "seq": 6, "t_ns": 7,
                "model": 8, "height": 9, "width": 10, "length": 11}


def _rewrite(packet: bytes, **fields) -> bytes:
    hdr = list(_HEADER.unpack_from(packet))
    for name, value in fields.items():
        hdr[_FIELD_INDEX[name]] = value
    return _HEADER.pack(*hdr) + packet[HEADER_BYTES:]


def _mut_header(fname):
    def mutate(r, s, ctx=None):
        hdr = _HEADER.unpack_from(s.packet)
        value = r.choice(_field_values(fname, hdr, r))
        return Mutant(recrc(_rewrite(s.packet, **{fname: value})), True, s.host_shape, note=f"{fname}={value!r}")
    mutate.__name__ = f"hdr_{fname}"
    return mutate


def mut_length_resize(r, s, ctx=None):
    """Length field and payload resized together (CRC recomputed): reaches the size checks and the
    codecs with payloads of the wrong size."""
    payload = s.packet[HEADER_BYTES:-4]
    n = len(payload)
    new = r.choice((0, 1, 11, 12, 13, max(0, n - 1), n + 1, n // 2, 2 * n, r.randrange(2 * n + 80)))
    if new <= n:
        payload = payload[:new]
    else:
        payload = payload + (_rand_bytes(r, new - n) if r.random() < 0.5 else bytes(new - n))
    return Mutant(frame(_rewrite(s.packet, length=len(payload))[:HEADER_BYTES] + payload), True, s.host_shape,
                  note=f"length {n}->{len(payload)}")


def mut_payload_flip(r, s, ctx=None):
    """Bit flips / byte substitutions inside the payload, CRC recomputed: the codec's own decoder
    gets the bytes (a prior payload's id, its bits' CRC32 or its arithmetic code)."""
    payload = bytearray(s.packet[HEADER_BYTES:-4])
    if not payload:
        return mut_bitflip(r, s, ctx)
    region = r.choice(("any", "id", "crc", "code"))
    lo, hi = {"id": (0, 8), "crc": (8, 12), "code": (12, len(payload))}.get(region, (0, len(payload)))
    lo, hi = min(lo, len(payload) - 1), min(max(hi, lo + 1), len(payload))
    for _ in range(r.choice((1, 1, 2, 5))):
        i = r.randrange(lo, hi)
        if r.random() < 0.5:
            payload[i] ^= 1 << r.randrange(8)
        else:
            payload[i] = r.randrange(256)
    return Mutant(frame(s.packet[:HEADER_BYTES] + bytes(payload)), True, s.host_shape, note=region)


def mut_payload_random(r, s, ctx=None):
    """The payload replaced by random bytes (same length), CRC recomputed; a prior payload keeps its
    prior id half the time, so the arithmetic decoder runs on garbage."""
    payload = s.packet[HEADER_BYTES:-4]
    new = _rand_bytes(r, len(payload))
    if s.encoding == ENC_PRIOR and r.random() < 0.5:
        new = payload[:8] + new[8:]
    return Mutant(frame(s.packet[:HEADER_BYTES] + new), True, s.host_shape)


def mut_splice(r, s, ctx):
    """Header of this seed, payload of another (length field fixed), CRC recomputed."""
    other = r.choice(ctx.seeds)
    payload = other.packet[HEADER_BYTES:-4]
    return Mutant(frame(_rewrite(s.packet, length=len(payload))[:HEADER_BYTES] + payload), True, s.host_shape,
                  note=f"payload of {other.name}")


def mut_random_framed(r, s, ctx=None):
    """A well-framed packet (magic, version, kind, a registered encoding, a small shape, a length the
    codec accepts) with a random payload and a right CRC: straight into a codec's decoder."""
    name = r.choice(payload_names())
    codec = get_payload(name)
    h, w = r.randint(1, 16), r.randint(1, 16)
    low, high = codec.size_range((h, w))
    n = r.randint(low, high)
    payload = _rand_bytes(r, n)
    if codec.wire_id == ENC_PRIOR and ctx is not None and r.random() < 0.5:
        payload = ctx.prior_id + payload[8:]          # the host's prior id: the decoder runs on garbage
    hdr = _HEADER.pack(MAGIC, VERSION, KIND_READOUT, codec.wire_id, r.randint(1, 127), _u32(r), _u32(r),
                       r.getrandbits(64), bytes.fromhex(MODEL), h, w, n)
    return Mutant(frame(hdr + payload), True, (h, w), note=f"{name} {h}x{w} {n} B")


def mut_host_state(r, s, ctx=None):
    """A genuine prior packet (or any seed, one time in four) decoded by a host without the prior,
    or with another prior."""
    if ctx is not None and ctx.prior_seeds and r.random() < 0.75:
        s = r.choice(ctx.prior_seeds)
    return Mutant(s.packet, False, s.host_shape, host=r.choice(("none", "other")))


@dataclass(frozen=True)
class Context:
    """What some mutations draw from: all seeds, the prior seeds, the host's prior id."""

    seeds: list
    prior_seeds: list
    prior_id: bytes

    @classmethod
    def of(cls, seeds, coder) -> "Context":
        return cls(seeds, [s for s in seeds if s.encoding == ENC_PRIOR and not s.is_end], bytes(coder.prior_id))


MUTATORS = {
    "bitflip": mut_bitflip, "byte_sub": mut_byte_sub, "truncate": mut_truncate, "extend": mut_extend,
    "random_bytes": mut_random_bytes,
    **{f"hdr_{f}": _mut_header(f) for f in _FIELD_INDEX},
    "length_resize": mut_length_resize, "payload_flip": mut_payload_flip, "payload_random": mut_payload_random,
    "splice": mut_splice, "random_framed": mut_random_framed, "host_state": mut_host_state,
}


# -- the oracle -----------------------------------------------------------------------------------
@dataclass
class KindStats:
    cases: int = 0
    rejected: Counter = field(default_factory=Counter)
    accepted_genuine: int = 0          # byte-identical to the seed (a no-op mutation)
    accepted_recomputed: int = 0       # accepted after a mutation that recomputed the CRC: expected
    accepted_unexpected: int = 0       # accepted, altered, CRC not recomputed: must be 0
    wrong_reason: int = 0              # a reason outside REASONS, or past the CRC without a right CRC
    bad_result: int = 0                # an accepted Packet whose readout is not (H, W) uint8 of the header
    silent_wrong: int = 0              # an altered prior payload accepted with other bits than the seed's
    crashes: int = 0                   # an exception other than PacketError, or a hang
    max_s: float = 0.0
    worst: str = ""

    @property
    def accepted(self) -> int:
        return self.accepted_genuine + self.accepted_recomputed + self.accepted_unexpected

    @property
    def failures(self) -> int:
        return self.accepted_unexpected + self.wrong_reason + self.bad_result + self.silent_wrong + self.crashes


@dataclass
class Failure:
    kind: str
    case: int
    seed: str
    problem: str
    data: bytes
    host_shape: tuple[int, int] | None
    host: str
    seed_shape: tuple[int, int] | None = None     # the host's model shape (its table's)

    def reproducer(self) -> str:
        coder = {"prior": "load_prior(PRIOR)", "none": "None", "other": "load_prior(OTHER_PRIOR)"}[self.host]
        return (f"# {self.kind} case {self.case} (seed {self.seed}): {self.problem}\n"
                f"decode_packet(bytes.fromhex({self.data.hex()!r}), expect_model={MODEL!r}, "
                f"states=host_states({coder}, {self.seed_shape!r}), expect_shape={self.host_shape!r})")


@dataclass
class FuzzReport:
    stats: dict[str, KindStats]
    failures: list[Failure]
    mac: KindStats | None = None
    streams: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    prior_big_decodes: int = 0

    @property
    def cases(self) -> int:
        return sum(s.cases for s in self.stats.values())

    @property
    def reasons_seen(self) -> set[str]:
        return {r for s in self.stats.values() for r in s.rejected}

    def total(self) -> KindStats:
        out = KindStats()
        for s in self.stats.values():
            out.cases += s.cases
            out.rejected.update(s.rejected)
            for a in ("accepted_genuine", "accepted_recomputed", "accepted_unexpected", "wrong_reason",
                      "bad_result", "silent_wrong", "crashes"):
                setattr(out, a, getattr(out, a) + getattr(s, a))
            if s.max_s > out.max_s:
                out.max_s, out.worst = s.max_s, s.worst
        return out


class Hang(BaseException):
    """Raised by the watchdog inside a case that ran past ``HANG_S``."""


@contextlib.contextmanager
def watchdog(seconds: float):
    """SIGALRM after ``seconds`` raises :class:`Hang` in the case (main thread on POSIX only; elsewhere
    the per-case time is still measured and checked)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def fire(signum, frame):
        raise Hang(f"case ran past {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    try:
        yield lambda: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _bits(readout: np.ndarray) -> np.ndarray:
    return readout >= ZERO_LEVEL


def check_case(kind: str, case: int, seed: Seed, m: Mutant, result, exc, elapsed: float, stats: KindStats,
               failures: list[Failure], reasons: frozenset[str]) -> None:
    """Apply the oracle to one decoded (or rejected) case; count it in ``stats``."""
    stats.cases += 1
    if elapsed > stats.max_s:
        stats.max_s, stats.worst = elapsed, f"case {case}, seed {seed.name}{', ' + m.note if m.note else ''}"

    def fail(problem: str) -> None:
        failures.append(Failure(kind, case, seed.name, problem, m.data, m.host_shape, m.host, seed.host_shape))

    if exc is not None:
        if isinstance(exc, PacketError):
            stats.rejected[exc.reason] += 1
            if exc.reason not in reasons:
                stats.wrong_reason += 1
                fail(f"rejected with undocumented reason {exc.reason!r}: {exc}")
            elif not m.recomputed and m.host == "prior" and exc.reason not in PRE_CRC:
                stats.wrong_reason += 1
                fail(f"a mutant with a stale CRC got past the CRC check: {exc.reason} ({exc})")
            elif m.host != "prior" and m.data == seed.packet and seed.encoding == ENC_PRIOR and not seed.is_end \
                    and exc.reason not in ("no_prior", "wrong_prior"):
                stats.wrong_reason += 1
                fail(f"genuine prior packet on a host with prior {m.host!r}: {exc.reason}")
            return
        stats.crashes += 1
        fail(f"{type(exc).__name__}: {exc}")
        return
    hdr = header_of(m.data)
    ok = isinstance(result, Packet) and hdr is not None
    if ok and result.kind == KIND_END:
        ok = result.readout is None and hdr[2] == KIND_END
    elif ok:
        ok = (isinstance(result.readout, np.ndarray) and result.readout.dtype == np.uint8
              and result.readout.ndim == 2 and result.readout.shape == (hdr[9], hdr[10]) == result.shape
              and result.seq == hdr[6] and result.stream_id == hdr[5])
    if not ok:
        stats.bad_result += 1
        fail(f"accepted, but the result is not a Packet with an (H, W) uint8 readout of the header's shape: "
             f"{result!r}"[:300])
        return
    if m.data == seed.packet:
        stats.accepted_genuine += 1
        if m.host != "prior" and seed.encoding == ENC_PRIOR and not seed.is_end:
            stats.bad_result += 1
            fail(f"prior packet accepted by a host with prior {m.host!r}")
        return
    if not m.recomputed:
        stats.accepted_unexpected += 1
        fail("an altered packet whose CRC was not recomputed was accepted (CRC32 collision?)")
        return
    stats.accepted_recomputed += 1
    # an altered prior payload that decodes must give the seed's bits (its own CRC32 of the bits)
    if (kind in PAYLOAD_KINDS and hdr[3] == ENC_PRIOR and seed.encoding == ENC_PRIOR and seed.readout is not None
            and m.data[HEADER_BYTES:-4] != seed.packet[HEADER_BYTES:-4] and result.readout.shape == seed.readout.shape
            and m.data[HEADER_BYTES:HEADER_BYTES + 8] == seed.packet[HEADER_BYTES:HEADER_BYTES + 8]
            and not np.array_equal(_bits(result.readout), _bits(seed.readout))):
        stats.silent_wrong += 1
        fail("an altered prior payload decoded to other bits than the genuine packet's")


# -- the packet fuzzer ----------------------------------------------------------------------------
@dataclass
class Hosts:
    coder: object
    other: object

    def coder_for(self, host: str):
        return {"prior": self.coder, "none": None, "other": self.other}[host]


def open_hosts(workdir: Path) -> Hosts:
    coder = load_prior(make_prior_file(Path(workdir) / "fuzz_prior.npz", 0))
    other = load_prior(make_prior_file(Path(workdir) / "fuzz_prior_other.npz", 1))
    return Hosts(coder, other)


def _big_prior_decode(m: Mutant, shape_used) -> bool:
    """Whether the host would run the prior's arithmetic decoder over more than BIG_AREA pixels."""
    hdr = header_of(m.data)
    if hdr is None or m.host != "prior" or hdr[0] != MAGIC or hdr[1] != VERSION or hdr[2] != KIND_READOUT:
        return False
    if hdr[3] != ENC_PRIOR or len(m.data) != OVERHEAD_BYTES + hdr[11] or not crc_ok(m.data):
        return False
    h, w = hdr[9], hdr[10]
    return h * w > BIG_AREA and (shape_used is None or (h, w) == tuple(shape_used))


def run_packet_fuzz(hosts: Hosts, *, cases: int = DEFAULT_CASES, seed: int = 0, seeds: list[Seed] | None = None,
                    prior_big_budget: int | None = None, no_shape_share: float = 0.25, hang_s: float = HANG_S,
                    progress=None) -> FuzzReport:
    """``cases`` mutated packets, deterministically from ``seed``; the oracle in :func:`check_case`."""
    if prior_big_budget is None:
        prior_big_budget = max(8, cases // 1000)
    seeds = make_seeds(hosts.coder, seed=seed) if seeds is None else seeds
    ctx = Context.of(seeds, hosts.coder)
    r = random.Random(seed)
    kinds = list(MUTATORS)
    reasons = all_reasons()
    stats = {k: KindStats() for k in kinds}
    failures: list[Failure] = []
    big = 0
    t_start = time.perf_counter()
    with watchdog(hang_s) as arm:
        for case in range(cases):
            kind = kinds[case % len(kinds)]            # every kind gets the same share
            while True:
                s = r.choice(seeds)
                m = MUTATORS[kind](r, s, ctx)
                shape_used = m.host_shape
                hdr = header_of(m.data)
                if kind != "random_framed" and r.random() < no_shape_share and not (
                        hdr is not None and hdr[3] == ENC_PRIOR and hdr[9] * hdr[10] > 64 * 64):
                    shape_used = None       # decode_packet without expect_shape (the header's shape)
                if _big_prior_decode(m, shape_used):
                    if big >= prior_big_budget:
                        continue               # budget spent: draw another seed
                    big += 1
                break
            m.host_shape = shape_used
            result = exc = None
            t0 = time.perf_counter()
            try:
                arm()
                result = decode_packet(m.data, expect_model=MODEL, expect_shape=shape_used,
                                       states=host_states(hosts.coder_for(m.host), s.host_shape))
            except Hang as h:
                exc = h
            except Exception as e:  # noqa: BLE001 - the oracle classifies it
                exc = e
            finally:
                if hasattr(signal, "setitimer"):
                    signal.setitimer(signal.ITIMER_REAL, 0)
            elapsed = time.perf_counter() - t0
            check_case(kind, case, s, m, result, exc, elapsed, stats[kind], failures, reasons)
            if progress and (case + 1) % 10_000 == 0:
                progress(f"{case + 1} cases, {time.perf_counter() - t_start:.1f} s")
    return FuzzReport(stats, failures, seconds=time.perf_counter() - t_start, prior_big_decodes=big)


# -- the MAC layer --------------------------------------------------------------------------------
def run_mac_fuzz(seeds: list[Seed], *, cases: int = 2_000, seed: int = 0) -> tuple[KindStats, list[Failure]]:
    """Mutated sealed datagrams through ``LinkKey.open``: only a sealed genuine datagram opens, to its
    exact packet; everything else is None (an exception is a crash)."""
    r = random.Random(seed + 1)
    key = LinkKey(_rand_bytes(r, KEY_BYTES), "fuzz")
    wrong = LinkKey(_rand_bytes(r, KEY_BYTES), "fuzz-wrong")
    near = LinkKey(bytes([key.secret[0] ^ 1]) + key.secret[1:], "fuzz-near")
    sealed = {key.seal(s.packet): s.packet for s in seeds}
    genuine = list(sealed)
    stats, failures = KindStats(), []
    for case in range(cases):
        d = r.choice(genuine)
        packet = sealed[d]
        op = case % 11
        if op == 0:
            x = bytearray(d)
            for _ in range(r.choice((1, 2, 8))):
                i = r.randrange(len(x) * 8)
                x[i >> 3] ^= 0x80 >> (i & 7)
            m = bytes(x)
        elif op == 1:
            x = bytearray(d)
            x[r.randrange(len(x))] = r.randrange(256)
            m = bytes(x)
        elif op == 2:
            m = d[:r.randrange(len(d))]                                  # truncated anywhere
        elif op == 3:
            m = packet + key.mac(packet)[:r.randrange(MAC_BYTES)]        # truncated MAC
        elif op == 4:
            m = d + _rand_bytes(r, r.randint(1, 32))                     # extended
        elif op == 5:
            m = r.choice((wrong, near)).seal(packet)                     # wrong key
        elif op == 6:
            other = r.choice(genuine)
            m = packet + other[-MAC_BYTES:]                              # another packet's MAC
        elif op == 7:
            m = packet                                                   # no MAC
        elif op == 8:
            m = _rand_bytes(r, r.choice((0, 1, MAC_BYTES, MAC_BYTES + 1, r.randrange(2 * len(d) + 1))))
        elif op == 9:
            m = recrc(_rewrite(packet, seq=_u32(r))) + d[-MAC_BYTES:]    # CRC-valid rewrite, old MAC
        else:
            m = d                                                        # genuine: must open
        t0 = time.perf_counter()
        try:
            out, exc = key.open(m if case % 3 else bytearray(m)), None
        except Exception as e:  # noqa: BLE001
            out, exc = None, e
        elapsed = time.perf_counter() - t0
        stats.cases += 1
        if elapsed > stats.max_s:
            stats.max_s, stats.worst = elapsed, f"case {case} op {op}"
        problem = None
        if exc is not None:
            stats.crashes += 1
            problem = f"LinkKey.open raised {type(exc).__name__}: {exc}"
        elif m in sealed:
            if out == sealed[m]:
                stats.accepted_genuine += 1
            else:
                stats.bad_result += 1
                problem = "a sealed genuine datagram did not open to its packet"
        elif out is None:
            stats.rejected["bad_mac"] += 1
        else:
            stats.accepted_unexpected += 1
            problem = "an altered datagram was accepted by LinkKey.open"
        if problem:
            failures.append(Failure(f"mac op {op}", case, "", problem, m, None, "prior"))
    return stats, failures


# -- PacketDecoder streams ------------------------------------------------------------------------
def _genuine_stream(r: random.Random, hosts: Hosts, shape, payload: str, n: int, stream: int):
    rng = np.random.default_rng(r.getrandbits(32))
    codec = get_payload(payload)
    packets = [encode_readout(rng.integers(0, 256, shape, dtype=np.uint8), model_id=MODEL, stream_id=stream, seq=i,
                              t_ns=i, encoding=payload, coder=side_state(codec, shape, hosts.coder))
               for i in range(n)]
    return packets, encode_end(model_id=MODEL, stream_id=stream, seq=n, t_ns=n)


def _stream_mutant(r: random.Random, seeds: list[Seed], genuine: list[bytes], sent: list[bytes], stream: int,
                   *, forged: bool) -> bytes:
    """A packet the stateful host must reject: corruption (stale CRC), a replay of a genuine packet
    already accepted, or (``forged``) a CRC-valid packet of another model / stream / a far sequence
    number / a stale sequence number."""
    while True:
        choice = r.randrange(9 if forged else 5)
        if choice == 0 and sent:
            return r.choice(sent)                      # a replay of a genuine packet already accepted: stale_seq
        if choice <= 3:
            s = r.choice(seeds)
            kind = r.choice(("bitflip", "byte_sub", "truncate", "extend", "random_bytes"))
            m = MUTATORS[kind](r, _stream_seed(genuine, s, r)).data
        elif choice == 4:
            base = r.choice(genuine)
            m = base[:r.randrange(len(base))]
        elif choice == 5:
            base = r.choice(genuine)
            m = recrc(_rewrite(base, model=_rand_bytes(r, 8)))                 # another model
        elif choice == 6:
            base = r.choice(genuine)
            m = recrc(_rewrite(base, stream=stream ^ (1 + r.randrange(1 << 31))))   # another stream (ends too)
        elif choice == 7:
            base = r.choice(genuine)
            m = recrc(_rewrite(base, seq=(1 << 32) - 1 - r.randrange(100)))   # far ahead: seq_jump
        elif sent:
            base = r.choice(genuine)
            m = recrc(_rewrite(base, seq=r.randrange(len(sent))))          # at or below the last accepted
        else:
            continue
        if m not in genuine:
            return m


def _stream_seed(genuine, s, r):
    """A seed whose packet is one of the stream's genuine packets half the time (mutants of the
    stream itself), else any seed."""
    if r.random() < 0.5:
        pkt = r.choice(genuine)
        return Seed("stream", pkt, s.host_shape, None, 0, 0)
    return s


def run_stream_fuzz(hosts: Hosts, seeds: list[Seed], *, rounds: int = 6, seed: int = 0, windows: int = 30,
                    mutants_per_gap: int = 3) -> tuple[dict[str, dict], list[str]]:
    """Three scenarios per round (payload and shape vary): ``corrupt`` (PacketDecoder with
    ``expect_stream``, genuine + stale-CRC mutants + replays + CRC-valid packets of another model /
    stream / far seq), ``mac`` (the same through ``LinkKey.open``, plus CRC-valid forgeries without the
    key), ``open`` (no ``expect_stream``, any mutant: only the accounting is checked, since a CRC-valid
    forgery is taken by design without the MAC). Returns per-scenario totals and problems."""
    r = random.Random(seed + 2)
    key = LinkKey(_rand_bytes(r, KEY_BYTES), "fuzz")
    totals: dict[str, dict] = {k: {"fed": 0, "accepted": 0, "ends": 0, "rejected": Counter(), "genuine": 0,
                                   "genuine_changed": 0}
                               for k in ("corrupt", "mac", "open")}
    problems: list[str] = []
    combos = [(shape, p) for p in payload_names() for shape in ((8, 8), (12, 10), (5, 7))
              if get_payload(p).open_state is None or side_state(get_payload(p), shape, hosts.coder) is not None]
    ctx = Context.of(seeds, hosts.coder)
    for rnd in range(rounds):
        shape, payload = combos[rnd % len(combos)]
        stream = r.getrandbits(32)
        genuine, end = _genuine_stream(r, hosts, shape, payload, windows, stream)
        ref = PacketDecoder(expect_model=MODEL, shape=shape, states=host_states(hosts.coder, shape),
                            expect_stream=stream)
        want = [ref.decode(p) for p in genuine]
        want_end = ref.decode(end)
        assert all(w is not None for w in want) and want_end is not None, "genuine stream rejected"
        for scenario in ("corrupt", "mac", "open"):
            tot = totals[scenario]
            dec = PacketDecoder(expect_model=MODEL, shape=shape, states=host_states(hosts.coder, shape),
                                expect_stream=None if scenario == "open" else stream)
            fed = ends = 0
            sent: list[bytes] = []
            feed: list[tuple[bytes, int | None]] = []           # (datagram or packet, genuine index)
            for i, p in enumerate([*genuine, end]):
                for _ in range(r.randrange(mutants_per_gap + 1)):
                    if scenario == "open":
                        s = r.choice(seeds)
                        kind = r.choice(list(MUTATORS))
                        mm = MUTATORS[kind](r, s, ctx)
                        if _big_prior_decode(mm, shape):
                            continue
                        feed.append((mm.data, None))
                    else:
                        feed.append((_stream_mutant(r, seeds, [*genuine, end], sent, stream,
                                                    forged=True), None))
                feed.append((p, i))
                sent.append(p)
            for data, gi in feed:
                fed += 1
                try:
                    if scenario == "mac":
                        datagram = key.seal(data) if gi is not None else (
                            data + _rand_bytes(r, MAC_BYTES) if r.random() < 0.5 else data)
                        body = key.open(datagram)
                        if body is None:
                            dec.reject("bad_mac", nbytes=len(datagram))
                            out = None
                        else:
                            out = dec.decode(body)
                    else:
                        out = dec.decode(data)
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{scenario} round {rnd}: PacketDecoder raised {type(e).__name__}: {e} "
                                    f"on {data.hex()[:120]}...")
                    continue
                if out is not None and out.is_end:
                    ends += 1
                if gi is None:
                    if out is not None and scenario != "open":
                        problems.append(f"{scenario} round {rnd}: a mutant was accepted: {data.hex()[:120]}...")
                    continue
                tot["genuine"] += 1
                expect = want_end if gi == len(genuine) else want[gi]
                same = out is not None and out.is_end == expect.is_end and out.seq == expect.seq and (
                    expect.readout is None or np.array_equal(out.readout, expect.readout))
                if not same:
                    tot["genuine_changed"] += 1
                    if scenario != "open":
                        problems.append(f"{scenario} round {rnd}: genuine packet {gi} decided differently "
                                        f"({'rejected' if out is None else 'other result'}; "
                                        f"rejections so far {dict(dec.rejected)})")
            if dec.ends != ends:
                problems.append(f"{scenario} round {rnd}: the decoder counted {dec.ends} ends, {ends} were returned")
            if dec.accepted + dec.ends + sum(dec.rejected.values()) != fed:
                problems.append(f"{scenario} round {rnd}: counters do not add up: accepted {dec.accepted} + "
                                f"ends {dec.ends} + rejected {sum(dec.rejected.values())} != fed {fed}")
            if scenario != "open" and (dec.accepted != len(genuine) or dec.lost != 0):
                problems.append(f"{scenario} round {rnd}: accepted {dec.accepted} of {len(genuine)}, lost {dec.lost}")
            tot["fed"] += fed
            tot["accepted"] += dec.accepted
            tot["ends"] += dec.ends
            tot["rejected"].update(dec.rejected)
    return totals, problems


# -- the report -----------------------------------------------------------------------------------
def _reasons_text(c: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def table(report: FuzzReport) -> str:
    rows = ["| mutation | cases | rejected (reason: count) | accepted: genuine bytes / CRC recomputed "
            "| accepted unexpectedly | other failures | crashes | max ms |",
            "|---|---:|---|---:|---:|---:|---:|---:|"]

    def row(name, s):
        other = s.wrong_reason + s.bad_result + s.silent_wrong
        rows.append(f"| {name} | {s.cases} | {_reasons_text(s.rejected)} | {s.accepted_genuine} / "
                    f"{s.accepted_recomputed} | {s.accepted_unexpected} | {other} | {s.crashes} | "
                    f"{1000 * s.max_s:.1f} |")

    for name, s in report.stats.items():
        row(name, s)
    row("**all packet cases**", report.total())
    if report.mac is not None:
        row("MAC layer (`LinkKey.open`)", report.mac)
    return "\n".join(rows)


def stream_table(streams: dict[str, dict]) -> str:
    rows = ["| PacketDecoder scenario | fed | accepted readouts | ends | rejected (reason: count) | genuine decided "
            "differently |", "|---|---:|---:|---:|---|---:|"]
    for name, t in streams.items():
        rows.append(f"| {name} | {t['fed']} | {t['accepted']} | {t['ends']} | {_reasons_text(t['rejected'])} | "
                    f"{t['genuine_changed']} of {t['genuine']} |")
    return "\n".join(rows)


def run_all(*, cases: int, seed: int = 0, workdir: Path | None = None, mac_cases: int | None = None,
            stream_rounds: int | None = None, progress=None) -> tuple[FuzzReport, list[str]]:
    """The packet, MAC and stream fuzzers; (report, stream problems)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="packet_fuzz_")))
        hosts = open_hosts(workdir)
        t0 = time.perf_counter()
        seeds = make_seeds(hosts.coder, seed=seed)
        report = run_packet_fuzz(hosts, cases=cases, seed=seed, seeds=seeds, progress=progress)
        report.mac, mac_failures = run_mac_fuzz(seeds, cases=mac_cases if mac_cases is not None else cases // 5,
                                                seed=seed)
        report.failures.extend(mac_failures)
        report.streams, problems = run_stream_fuzz(
            hosts, seeds, rounds=stream_rounds if stream_rounds is not None else max(9, cases // 2000), seed=seed)
        report.seconds = time.perf_counter() - t0
    return report, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=None, help=f"packet cases (default {DEFAULT_CASES})")
    ap.add_argument("--long", action="store_true", help=f"the long mode: {LONG_CASES} packet cases")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cases = args.cases if args.cases is not None else (LONG_CASES if args.long else DEFAULT_CASES)
    t0 = time.perf_counter()
    report, problems = run_all(cases=cases, seed=args.seed, progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t0
    argv_text = " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from benchmarks._common import cpu_name
    head = (f"Command: `python benchmarks/packet_fuzz.py {argv_text}`; machine: {cpu_name()} "
            f"({os.cpu_count()} cores, shared), Python {platform.python_version()}; date "
            f"{datetime.date.today().isoformat()}; seed {args.seed}; {wall:.0f} s wall. "
            f"{report.cases} packet cases ({report.prior_big_decodes} of them decode a >32x32 prior payload), "
            f"{report.mac.cases} MAC cases, "
            f"{sum(t['fed'] for t in report.streams.values())} packets through PacketDecoder streams.")
    total = report.total()
    text = "\n\n".join([head, table(report), stream_table(report.streams),
                        f"Worst case: {1000 * total.max_s:.0f} ms ({total.worst}). Failures: "
                        f"{len(report.failures) + len(problems)}."])
    print(text)
    for f in report.failures[:20]:
        print(f.reproducer()[:2000])
    for p in problems[:20]:
        print(p)
    return 1 if report.failures or problems or total.max_s > MAX_CASE_S else 0


if __name__ == "__main__":
    raise SystemExit(main())
