"""Readout payload codecs side by side on the same bits (issue 17, "the prior payload").

    python benchmarks/payload_compare.py --readouts R.npz [--prior P.npz] [--table T.npz] [--multi M.npz
        [--multi-table MT.npz]] [--split test] [--rounds 3] [--pin-core 1] [--write docs/BENCHMARKS.md]

The bits are the 1-bit payload's: the signs of o, ``readout >= 127`` for 8-bit readouts (a
``pixelrnn simulate --readout-only`` output, key ``readout``), or the levels themselves for a
layout of 1-bit levels (its (N, M, S, S) maps stacked into (M*S, S) images, as the packet carries
them). ``--split test`` codes fold 0 of the stratified 5 folds (seed 0), the windows a prior
trained by ``pixelrnn generate train --data R.npz`` never saw (folds 2-4 train it).

Codecs, all on the same bits, every window encoded, decoded and compared bit for bit:

* ``raw``: ``np.packbits`` (the ``1bit`` payload, 512 B per 64x64 map);
* ``zlib`` (level 9) and ``zstd`` (level 19, ``zstandard``; "not installed" without it) of those bytes;
* ``PNG 1-bit``: a minimal PNG (IHDR bit depth 1, grayscale, filter byte 0 on every row, one zlib
  level-9 IDAT); the whole file and the IDAT payload are both counted;
* ``context``: the registered ``context`` payload (:mod:`core.context_coder`, adaptive, no file);
* ``prior``: the registered ``prior`` payload with ``--prior`` (the learned Gated PixelCNN prior);
* ``table``: the registered ``table`` payload (``levels1-table`` for a layout's stacked maps,
  :mod:`core.table_coder`): a static 16-bit probability per (pixel position, causal context) counted
  on folds 2-4 by ``pixelrnn fit-table`` (``--table`` / ``--multi-table``; without them the same fit
  is made here); like the prior it needs a side file and is specific to one sensor program.

Payload bytes are what a packet would carry (``context``: 1-byte model id + CRC32 + code;
``prior`` and ``table``: 8-byte id + CRC32 + code), without the 44-byte packet frame. Times are
per window, one thread (BLAS and OpenMP pinned to 1), median and p99 over every window and round
(the prior: one round), wall clock (``time.perf_counter``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, update_section  # noqa: E402
from core.constants import ZERO_LEVEL  # noqa: E402
from core.readouts import stratified_folds  # noqa: E402
from core.table_coder import ContextTable, fit_table, load_table  # noqa: E402
from edge.payloads import DEFAULT_LEVEL, encode_payload, get_payload  # noqa: E402
from edge.tables import markdown_table  # noqa: E402

try:
    import zstandard
except ImportError:                  # optional: only this benchmark uses it (constraints.txt)
    zstandard = None

__all__ = ["Codec", "load_bits", "training_bits", "png_1bit", "read_png_1bit", "codecs", "measure", "section",
           "main"]

HEADING = "Readout payload codecs (issue 17)"
SECTION = "payload_compare"
GOALS = {"encode_ms": 10.0, "decode_ms": 50.0, "bytes": 382.0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- data -----------------------------------------------------------------------------------------
def load_bits(path: Path, *, split: str, limit: int = 0) -> tuple[np.ndarray, int, str]:
    """(bits (N, H, W) uint8, rows per stacked map, description) of a readouts file's ``split``
    (``limit`` > 0: its first windows only)."""
    with np.load(path, allow_pickle=False) as data:
        key = "readout" if "readout" in data.files else "readouts"
        readout, labels = data[key], data["labels"] if "labels" in data.files else None
    if readout.dtype != np.uint8 or readout.ndim not in (3, 4):
        raise SystemExit(f"{path}: {key} must be (N, H, W) or (N, M, S, S) uint8, got {readout.dtype} {readout.shape}")
    bits = (readout >= ZERO_LEVEL) if int(readout.max()) > 1 else readout.astype(bool)
    rows = bits.shape[-2]
    if bits.ndim == 4:                                  # a layout's maps, stacked as the packet carries them
        bits = bits.reshape(bits.shape[0], -1, bits.shape[-1])
    if split != "all":
        if labels is None:
            raise SystemExit(f"{path} has no labels: use --split all")
        folds = stratified_folds(labels, k=5, seed=0)
        bits = bits[{"test": folds == 0, "val": folds == 1, "train": folds >= 2}[split]]
    if limit:
        bits = bits[:limit]
    what = f"{len(bits)} windows of {bits.shape[1]}x{bits.shape[2]}"
    if bits.shape[1] != rows:
        what += f" ({bits.shape[1] // rows} maps of {rows}x{bits.shape[2]} stacked)"
    return bits.astype(np.uint8), rows, what


def training_bits(path: Path) -> np.ndarray:
    """Folds 2-4 (what a prior trained on ``path`` saw, what ``pixelrnn fit-table`` counts)."""
    return load_bits(path, split="train")[0]


# -- PNG 1-bit ------------------------------------------------------------------------------------
def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + tag + data + struct.pack("!I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_1bit(bits: np.ndarray) -> tuple[bytes, int]:
    """(a 1-bit grayscale PNG of ``bits``, the size of its IDAT data): no filtering (filter byte 0
    on every row, the usual choice below 8 bits per pixel), one zlib level-9 stream."""
    h, w = bits.shape
    rows = np.packbits(bits, axis=1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    idat = zlib.compress(raw, 9)
    ihdr = struct.pack("!IIBBBBB", w, h, 1, 0, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""), len(idat)


def read_png_1bit(data: bytes) -> np.ndarray:
    """The bits of a PNG written by :func:`png_1bit` (this writer's subset only)."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos, chunks = len(PNG_SIGNATURE), {}
    while pos < len(data):
        (n,) = struct.unpack_from("!I", data, pos)
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if struct.unpack_from("!I", data, pos + 8 + n)[0] != zlib.crc32(tag + body) & 0xFFFFFFFF:
            raise ValueError(f"bad CRC in chunk {tag!r}")
        chunks[tag] = chunks.get(tag, b"") + body
        pos += 12 + n
    w, h, depth, color, _, _, interlace = struct.unpack("!IIBBBBB", chunks[b"IHDR"])
    if (depth, color, interlace) != (1, 0, 0):
        raise ValueError("only 1-bit grayscale, non-interlaced")
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, 1 + (w + 7) // 8)
    if raw[:, 0].any():
        raise ValueError("only filter type 0")
    return np.unpackbits(raw[:, 1:], axis=1, count=w)


# -- codecs ---------------------------------------------------------------------------------------
@dataclass
class Codec:
    """One column of the comparison: ``encode(bits) -> bytes`` and ``decode(bytes, shape) -> bits``;
    ``extra(bits, payload) -> int`` another size to report (PNG: the IDAT payload)."""

    name: str
    encode: object
    decode: object
    rounds: int = 0                  # 0: the run's --rounds
    header: int = 0                  # leading bytes of ``encode``'s output not counted (the wire id)
    extra_label: str = ""
    extra: object = None
    note: str = ""
    sizes: list = field(default_factory=list)
    extras: list = field(default_factory=list)
    id_bytes: int = 0                # of the counted bytes: a side file's id (the prior's, the table's)
    enc_ms: list = field(default_factory=list)
    dec_ms: list = field(default_factory=list)
    enc_cpu: list = field(default_factory=list)
    dec_cpu: list = field(default_factory=list)
    exact: bool = True
    wire_id: int | None = None       # a registered payload: windows sent as its fallback are counted
    fallbacks: int = 0


def _unpack(payload: bytes, shape) -> np.ndarray:
    return np.unpackbits(np.frombuffer(payload, np.uint8), count=shape[0] * shape[1]).reshape(shape)


def _payload_codec(name: str, state) -> tuple:
    """encode/decode through the registry (``encode_payload``: the codec, or its fallback). The
    encoded bytes start with the wire id used, which the packet carries in its header (not counted);
    the payload splits stacked maps itself (``core.context_coder.stacked_rows``). A payload of a
    layout's 1-bit levels (``levels1-table``) takes the bits as its levels and no level byte."""
    codec = get_payload(name)
    leveled = codec.max_level == 1
    level = 0 if leveled else DEFAULT_LEVEL

    def encode(bits):
        levels = bits if leveled else np.where(bits, ZERO_LEVEL + DEFAULT_LEVEL, ZERO_LEVEL - DEFAULT_LEVEL)
        used, payload = encode_payload(codec, levels.astype(np.uint8), state=state, level=DEFAULT_LEVEL)
        return bytes([used.wire_id]) + payload      # (the wire id travels in the packet header: not counted)

    def decode(data, shape):
        used = get_payload(data[0])
        levels = used.decode(data[1:], shape, state if used.open_state else None, level)
        return levels.astype(np.uint8) if leveled else (levels >= ZERO_LEVEL).astype(np.uint8)

    return encode, decode


def codecs(*, prior_path: Path | None, table: ContextTable | None) -> list[Codec]:
    """The codecs of one data set (the table and the prior only where given)."""
    out = [Codec("raw (np.packbits, the 1bit payload)", lambda b: np.packbits(b).tobytes(), _unpack),
           Codec("zlib level 9", lambda b: zlib.compress(np.packbits(b).tobytes(), 9),
                 lambda p, s: _unpack(zlib.decompress(p), s))]
    if zstandard is not None:
        zc, zd = zstandard.ZstdCompressor(level=19), zstandard.ZstdDecompressor()
        out.append(Codec("zstd level 19", lambda b: zc.compress(np.packbits(b).tobytes()),
                         lambda p, s: _unpack(zd.decompress(p), s)))
    else:
        out.append(Codec("zstd level 19", None, None, note="not installed (pip install zstandard)"))
    out.append(Codec("PNG 1-bit (whole file)", lambda b: png_1bit(b)[0], lambda p, s: read_png_1bit(p),
                     extra_label="IDAT", extra=lambda b, p: png_1bit(b)[1]))
    enc, dec = _payload_codec("context", None)
    out.append(Codec("context (JBIG-style adaptive, `--payload context`)", enc, dec, header=1,
                     wire_id=get_payload("context").wire_id))
    if table is not None:
        name = "levels1-table" if table.map_rows < table.shape[0] else "table"
        enc_t, dec_t = _payload_codec(name, table)
        out.append(Codec(f"table (static, position x {'/'.join(table.taps)}, `--payload table`"
                         f"{'' if name == 'table' else ', sent as levels1-table'}, {table.table_hash})", enc_t, dec_t,
                         header=1, id_bytes=8, wire_id=get_payload(name).wire_id))
    if prior_path is not None:
        from core.prior_coder import load_prior

        coder = load_prior(prior_path)
        enc_p, dec_p = _payload_codec("prior", coder)
        out.append(Codec(f"learned prior (`--payload prior`, {coder.prior_hash})", enc_p, dec_p, rounds=1,
                         header=1, id_bytes=8, wire_id=get_payload("prior").wire_id))
    return out


def measure(cs: list[Codec], bits: np.ndarray, *, rounds: int) -> None:
    """Every window through every codec (window-major, so machine load hits all alike); wall and
    CPU time (``time.process_time``: this process only, without other jobs' time slices)."""
    clock, cpu = time.perf_counter, time.process_time
    for i, b in enumerate(bits):
        for c in cs:
            if c.encode is None:
                continue
            for r in range(c.rounds or rounds):
                t0, u0 = clock(), cpu()
                payload = c.encode(b)
                t1, u1 = clock(), cpu()
                back = c.decode(payload, b.shape)
                t2, u2 = clock(), cpu()
                c.enc_ms.append(1e3 * (t1 - t0))
                c.dec_ms.append(1e3 * (t2 - t1))
                c.enc_cpu.append(1e3 * (u1 - u0))
                c.dec_cpu.append(1e3 * (u2 - u1))
                if r == 0:
                    size = len(payload) - c.header
                    c.fallbacks += c.wire_id is not None and payload[0] != c.wire_id
                    c.sizes.append(size)
                    if c.extra is not None:
                        c.extras.append(c.extra(b, payload))
                    c.exact &= bool(np.array_equal(back, b))
        if (i + 1) % 50 == 0:
            print(f"  {i + 1}/{len(bits)} windows", file=sys.stderr, flush=True)


def _fmt(v: float) -> str:
    return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"


def _times(wall: list, cpu: list) -> str:
    return f"{_fmt(np.median(wall))} / {_fmt(np.percentile(wall, 99))} ({_fmt(np.percentile(cpu, 99))})"


def table_lines(cs: list[Codec], raw_bytes: int) -> list[str]:
    rows = []
    for c in cs:
        if c.encode is None:
            rows.append([c.name, c.note, "", "", "", "", ""])
            continue
        s = np.array(c.sizes, float)
        size = f"**{s.mean():,.1f}**"
        if c.extras:
            size += f" ({c.extra_label} {np.mean(c.extras):,.1f})"
        fell = f" ({c.fallbacks} windows fell back to {get_payload(c.wire_id).fallback})" if c.fallbacks else ""
        rows.append([c.name + fell, size,
                     f"{s.min():,.0f} / {s.max():,.0f}", f"{raw_bytes / s.mean():.2f}x",
                     _times(c.enc_ms, c.enc_cpu), _times(c.dec_ms, c.dec_cpu), "yes" if c.exact else "**no**"])
    return markdown_table(["codec", "mean B/window", "min / max B", "vs raw", "encode ms p50 / p99 (CPU p99)",
                           "decode ms p50 / p99 (CPU p99)", "round trip exact"], rows, align="lrrrrrc")


def _by_name(cs: list[Codec], start: str) -> Codec | None:
    return next((c for c in cs if c.name.startswith(start) and c.encode is not None), None)


def goals_lines(cs: list[Codec], *, single: bool, raw_bytes: int) -> list[str]:
    """Which codecs meet which goal of issue 17, and how the learned prior fares against the anchors."""
    out = []
    if single:
        out += ["Goals, per 64x64 window on one core: encode <= 10 ms, decode <= 50 ms (met at the median; the "
                "p99s of a shared machine are given too) and bytes no more than today's prior payload (382 B of "
                "code and CRC, the figure of docs/RESULTS.md, + its 8-byte prior id in a packet):", ""]
    else:
        out += [f"Goals for this layout: the same times (for {8 * raw_bytes:,} pixels per window, not 4,096), bytes "
                f"below today's payload of these maps (`levels1`, {raw_bytes:,} B):", ""]
    for c in cs:
        if c.encode is None:
            continue
        enc, dec, size = np.median(c.enc_ms), np.median(c.dec_ms), float(np.mean(c.sizes))
        line = [f"encode {'**yes**' if enc <= GOALS['encode_ms'] else 'no'} ({_times(c.enc_ms, c.enc_cpu)} ms)",
                f"decode {'**yes**' if dec <= GOALS['decode_ms'] else 'no'} ({_times(c.dec_ms, c.dec_cpu)} ms)"]
        if single:
            code = size - c.id_bytes
            what = f"{size:,.1f} B" + (f", {code:,.1f} B without its {c.id_bytes}-byte id" if c.id_bytes else "")
            if c.name.startswith("learned prior"):
                line.append(f"bytes: today's payload, the reference ({what}; docs/RESULTS.md: 382.2 B)")
            else:
                line.append(f"bytes {'**yes**' if code <= GOALS['bytes'] else 'no'} ({what})")
        else:
            line.append(f"bytes {'**yes**' if size < raw_bytes else 'no'} ({size:,.1f} B)")
        out.append(f"- {c.name}: " + "; ".join(line))
    prior, context = _by_name(cs, "learned prior"), _by_name(cs, "context")
    anchors = [c for c in cs if c.encode is not None and c.name.split()[0] in ("zlib", "zstd", "PNG", "context")]
    if prior is not None and anchors:
        best = min(anchors, key=lambda c: np.mean(c.sizes))
        p, b = float(np.mean(prior.sizes)), float(np.mean(best.sizes))
        verdict = "beats every anchor" if p < b else "does NOT beat every anchor"
        out += ["", f"The learned prior {verdict}: {p:,.1f} B/window vs the best anchor, {best.name.split(' (')[0]}, "
                    f"{b:,.1f} B ({100 * abs(b - p) / b:.1f}% {'fewer' if p < b else 'more'} bytes), at "
                    f"{np.median(prior.enc_ms) / np.median(best.enc_ms):,.0f}x its encode and "
                    f"{np.median(prior.dec_ms) / np.median(best.dec_ms):,.0f}x its decode time (medians)."]
        table = _by_name(cs, "table")
        if table is not None:
            t = float(np.mean(table.sizes))
            out.append(f"The table payload codes {t:,.1f} B/window: {100 * abs(p - t) / p:.1f}% "
                       f"{'fewer' if t < p else 'more'} bytes than the learned prior, at "
                       f"{np.median(prior.enc_ms) / np.median(table.enc_ms):,.0f}x less encode and "
                       f"{np.median(prior.dec_ms) / np.median(table.dec_ms):,.0f}x less decode time (medians).")
    elif context is not None:
        out += ["", f"The context model codes these maps in {np.mean(context.sizes):,.1f} B/window, "
                    f"{raw_bytes / np.mean(context.sizes):.2f}x less than `levels1`."]
        table = _by_name(cs, "table")
        if table is not None:
            t, c = float(np.mean(table.sizes)), float(np.mean(context.sizes))
            out.append(f"The table payload (`levels1-table`) codes them in {t:,.1f} B/window, "
                       f"{raw_bytes / t:.2f}x less than `levels1` and {100 * abs(c - t) / c:.1f}% "
                       f"{'fewer' if t < c else 'more'} bytes than the context model.")
    return out


def section(results: list[tuple[str, list[Codec], int]], *, command: str, prep: list[str], machine: str,
            conclusion: list[str]) -> str:
    lines = [f"Command: `{command}`  ", f"Machine: {machine}  ", f"Date: {datetime.date.today().isoformat()}"]
    if prep:
        lines += ["", "Inputs (made before, with):", "", "```bash", *prep, "```"]
    for title, cs, raw_bytes in results:
        lines += ["", f"**{title}**", "", *table_lines(cs, raw_bytes), "",
                  *goals_lines(cs, single=raw_bytes == 512, raw_bytes=raw_bytes)]
    if conclusion:
        lines += ["", *conclusion]
    return "\n".join(lines)


def _machine(pinned: int | None) -> str:
    import numpy

    zs = f"zstandard {zstandard.__version__}" if zstandard is not None else "zstandard not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    core = f"pinned to CPU {pinned}" if pinned is not None else "not pinned"
    return (f"{cpu_name()}, {os.cpu_count()} cores shared with other jobs ({core}; 1-min load average "
            f"{load:.1f} at the start), 1 thread, {platform.platform()}, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}, {zs}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readouts", type=Path, required=True, help="pixelrnn simulate --readout-only output (64x64)")
    ap.add_argument("--prior", type=Path, default=None, help="a prior file trained on --readouts' folds 2-4")
    ap.add_argument("--multi", type=Path, default=None, help="readouts of a multi-map layout (stacked maps)")
    ap.add_argument("--split", choices=("test", "val", "train", "all"), default="test")
    ap.add_argument("--limit", type=int, default=0, help="> 0: the first N windows only")
    ap.add_argument("--rounds", type=int, default=3, help="timing rounds of the fast codecs (default 3)")
    ap.add_argument("--table", type=Path, default=None,
                    help="table file for --readouts (pixelrnn fit-table); default: the same fit made here")
    ap.add_argument("--multi-table", type=Path, default=None,
                    help="table file for --multi (pixelrnn fit-table); default: the same fit made here")
    ap.add_argument("--no-table", action="store_true", help="skip the table rows")
    ap.add_argument("--pin-core", type=int, default=None, help="run on this CPU only (os.sched_setaffinity)")
    ap.add_argument("--prep", action="append", default=[], help="a command that made the inputs (for the record)")
    ap.add_argument("--conclusion", type=Path, default=None, help="markdown appended under the tables")
    ap.add_argument("--write", type=Path, default=None, help="markdown file to update (section payload_compare)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.limit < 0:
        raise SystemExit("--rounds must be >= 1 and --limit >= 0")
    if args.pin_core is not None:
        os.sched_setaffinity(0, {args.pin_core})
    machine = _machine(args.pin_core)
    results = []
    for path, multi, table_file in ((args.readouts, False, args.table), (args.multi, True, args.multi_table)):
        if path is None:
            continue
        bits, rows, what = load_bits(path, split=args.split, limit=args.limit)
        table = None
        if not args.no_table:
            table = load_table(table_file) if table_file is not None else fit_table(training_bits(path))
            if table.shape != bits.shape[1:]:
                raise SystemExit(f"{table_file}: a table for {table.shape} readouts, {path} holds {bits.shape[1:]}")
        cs = codecs(prior_path=None if multi else args.prior, table=table)
        print(f"{path.name}: {what}", file=sys.stderr)
        measure(cs, bits, rounds=args.rounds)
        raw_bytes = (bits.shape[1] * bits.shape[2] + 7) // 8
        title = f"{path.name}, split {args.split}: {what}; raw {raw_bytes} B per window"
        if multi:
            title += " (no prior exists for this layout)"
        results.append((title, cs, raw_bytes))
        print("\n".join(table_lines(cs, raw_bytes)))
    given = list(argv if argv is not None else sys.argv[1:])
    shown = [a for i, a in enumerate(given) if a != "--prep" and (i == 0 or given[i - 1] != "--prep")]
    command = " ".join(["python benchmarks/payload_compare.py", *shown, "[--prep ...]" if args.prep else ""]).strip()
    conclusion = args.conclusion.read_text(encoding="utf-8").strip().splitlines() if args.conclusion else []
    text = section(results, command=command, prep=args.prep, machine=machine, conclusion=conclusion)
    if args.write:
        update_section(args.write, SECTION, text, heading=HEADING)
        print(f"wrote section {SECTION!r} of {args.write}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
