"""Attacks on the UDP readout link (issue 16): decisions affected and end-to-end latency under each.

Each attack runs the real camera loop (``edge.pipeline.run_pipeline``: the test pattern paced at
``--fps``, the sensor stage in this process, the host in its child process over UDP on 127.0.0.1
with a key file) while an attacker *process* sends datagrams to the host's port: a local process
that knows the packet format, the model id (public, manifest.json) and, worst case, the stream id.
Decisions are compared window by window with the same run without an attack (the test pattern and
the noise-free sensor are deterministic). Optionally written into a section of docs/SECURITY.md
(between ``<!-- link-attacks:begin -->`` and ``<!-- link-attacks:end -->``).

    python benchmarks/link_attacks.py [--windows 20] [--fps 30] [--write docs/SECURITY.md]

The attacks (:data:`ATTACKS`); those marked "MACed" hold the key, as a buggy sender would:

* ``forged_readouts``: readouts of the genuine stream, next sequence numbers, no MAC / a random MAC;
* ``forged_end``: end-of-stream for another stream id, no MAC; ``maced_end``: the same, MACed;
* ``seq_jump``: a readout with sequence number 2^32-1, no MAC; ``maced_seq_jump``: MACed;
* ``prior_flood``: prior-coded readouts (the host has the prior), no MAC, ``--flood-rate`` per second;
* ``replayed_run``: what an earlier run with the same key file and stream id sent (readouts in
  sequence from 0, then its end), MACed under that run's key: the replay across runs that the
  per-run key (``edge.auth.LinkKey.for_run``) stops.

The MACed attacks use this run's key (a buggy sender of this run): the harness fixes the run's
nonce (``PipelineOptions.run_nonce``) and hands it to the attacker with the key file.

tests/test_link_auth.py runs :func:`run_attack` too (few windows, fast pacing).
"""
from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.errors import InputError  # noqa: E402
from edge.auth import LinkKey, load_link_key, new_run_nonce  # noqa: E402
from edge.capture import CaptureOptions, TestPattern  # noqa: E402
from edge.link import LinkSpec  # noqa: E402
from edge.models import load_bundle  # noqa: E402
from edge.packet import ENC_1BIT, ENC_PRIOR, decode_packet, encode_end, encode_readout  # noqa: E402
from edge.pipeline import PipelineOptions, run_pipeline  # noqa: E402
from edge.sensor_stage import SensorOptions  # noqa: E402

HEADING = "Measured: attacks on the UDP link"
# a bundle with the authors' readout (64x64 8-bit and 1-bit/prior payloads), which the forged packets below
# imitate: the test fixture that the previous default gesture model became (the default models read out
# their own 1-bit layouts since issue 12)
AUTHORS_BUNDLE = REPO / "tests" / "fixtures" / "authors_bundle" / "gesture"
ATTACKS = {
    "none": "no attack (baseline)",
    "forged_readouts": "forged readouts of the genuine stream (right format and model id), no MAC / random MAC",
    "forged_end": "forged end-of-stream for another stream id, no MAC",
    "maced_end": "end-of-stream for another stream id with a valid MAC (buggy sender)",
    "seq_jump": "readout with sequence number 2^32-1 of the genuine stream, no MAC",
    "maced_seq_jump": "readout with sequence number 2^32-1 with a valid MAC (buggy sender)",
    "prior_flood": "flood of forged prior-coded readouts (the host has the prior), no MAC",
    "replayed_run": "an earlier run's datagrams (same key file and stream id, its run key): readouts, end",
}
ATTACK_RATE = 100.0            # datagrams per second for all but the flood
PRIOR_META = {"num_classes": 2, "hidden": 16, "kernel": 5, "layers": 4}   # the size prior_coder.py quotes


@dataclass(frozen=True)
class AttackOptions:
    """One attacked run: ``windows`` genuine windows of the test pattern paced at ``fps``."""

    attack: str = "none"
    bundle: str | os.PathLike = AUTHORS_BUNDLE
    windows: int = 6
    fps: float = 30.0
    payload: str = "8bit"               # prior_flood needs "prior" (and ``prior``)
    prior: str | os.PathLike | None = None
    key_file: str | os.PathLike | None = None   # None: a fresh key file in a temporary folder
    flood_rate: float = 1000.0          # prior_flood: forged datagrams per second
    stream_id: int = 0x5EC0_0001

    def __post_init__(self) -> None:
        if self.attack not in ATTACKS:
            raise InputError(f"attack must be one of {', '.join(ATTACKS)}, got {self.attack!r}")
        if not (isinstance(self.windows, int) and 1 <= self.windows <= 10_000):
            raise InputError(f"windows must be an integer 1..10000, got {self.windows!r}")
        if not (isinstance(self.fps, (int, float)) and 1 <= self.fps <= 1000):
            raise InputError(f"fps must be 1..1000, got {self.fps!r}")
        if self.attack == "prior_flood" and (self.payload != "prior" or self.prior is None):
            raise InputError("the prior_flood attack needs payload 'prior' and a prior file")
        if not (isinstance(self.flood_rate, (int, float)) and 1 <= self.flood_rate <= 100_000):
            raise InputError(f"flood_rate must be 1..100000 datagrams/s, got {self.flood_rate!r}")


@dataclass
class AttackResult:
    attack: str
    decisions: list = field(default_factory=list)       # edge.decision.Decision, in arrival order
    summary: dict = field(default_factory=dict)         # the run summary (edge.pipeline)
    sent: int = 0                                       # attacker datagrams sent


def free_port() -> int:
    """A free UDP port on 127.0.0.1 (the host binds it right after; fine on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forged_prior_packet(*, model_id: str, stream_id: int, seq: int, prior_id: bytes, rng) -> bytes:
    """A prior-coded 64x64 readout packet with a valid frame and CRC and a random arithmetic code of
    the largest size accepted: the host would decode all of it before the symbol CRC fails."""
    base = encode_readout(np.zeros((64, 64), np.uint8), model_id=model_id, stream_id=stream_id, seq=seq,
                          t_ns=time.monotonic_ns(), encoding=ENC_1BIT)
    payload = bytes(prior_id) + rng.bytes(4 + 1000)
    header = bytearray(base[:40])
    header[6] = ENC_PRIOR
    struct.pack_into("!I", header, 36, len(payload))
    body = bytes(header) + payload
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def attack_datagrams(attack: str, *, model_id: str, stream_id: int, key: LinkKey | None, prior_id: bytes | None,
                     rng, count: int = 64) -> list[bytes]:
    """``count`` datagrams of ``attack`` (built ahead, so sending them costs the attacker little CPU)."""
    readout = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    other = stream_id ^ 0xFFFF_FFFF
    out = []
    for seq in range(count):
        if attack == "forged_readouts":
            packet = encode_readout(readout, model_id=model_id, stream_id=stream_id, seq=seq,
                                    t_ns=time.monotonic_ns())
            out.append(packet if seq % 2 else packet + rng.bytes(16))          # no MAC / a random one
        elif attack in ("forged_end", "maced_end"):
            packet = encode_end(model_id=model_id, stream_id=other, seq=0)
            out.append(key.seal(packet) if attack == "maced_end" else packet)
        elif attack in ("seq_jump", "maced_seq_jump"):
            packet = encode_readout(readout, model_id=model_id, stream_id=stream_id, seq=2**32 - 1,
                                    t_ns=time.monotonic_ns())
            out.append(key.seal(packet) if attack == "maced_seq_jump" else packet)
        elif attack == "prior_flood":
            out.append(forged_prior_packet(model_id=model_id, stream_id=stream_id, seq=seq, prior_id=prior_id,
                                           rng=rng))
        elif attack == "replayed_run":      # ``key``: the earlier run's; its readouts in order, then its end
            packet = (encode_end(model_id=model_id, stream_id=stream_id, seq=seq) if seq == count - 1 else
                      encode_readout(readout, model_id=model_id, stream_id=stream_id, seq=seq,
                                     t_ns=time.monotonic_ns()))
            out.append(key.seal(packet))
    return out


def attacker_main(attack: str, port: int, model_id: str, stream_id: int, key_file: str | None,
                  run_nonce: bytes, prior_id: bytes | None, rate: float, stop, sent) -> None:
    """Attacker process: send ``rate`` datagrams per second to 127.0.0.1:``port`` until ``stop``.
    It holds the key file and this run's nonce (so, this run's key) and, for ``replayed_run``,
    MACs under another nonce's key: an earlier run's."""
    if attack == "replayed_run":
        run_nonce = new_run_nonce()                  # the earlier run's
    key = load_link_key(path=key_file, create=False).for_run(run_nonce) if key_file else None
    rng = np.random.default_rng(1)
    pool = attack_datagrams(attack, model_id=model_id, stream_id=stream_id, key=key, prior_id=prior_id, rng=rng)
    period, count = 1.0 / rate, 0
    t_next = time.perf_counter()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not stop.is_set():
            try:
                sock.sendto(pool[count % len(pool)], ("127.0.0.1", port))
                count += 1
            except OSError:                    # nothing listening yet, or the buffer is full
                pass
            t_next += period
            delay = t_next - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                t_next = time.perf_counter()   # far behind: do not burst
    sent.value = count


def run_attack(options: AttackOptions) -> AttackResult:
    """One run of the camera loop over UDP under ``options.attack``."""
    bundle = load_bundle(options.bundle)
    with tempfile.TemporaryDirectory(prefix="pxrn-attack-") as tmp:
        key_file = Path(options.key_file) if options.key_file is not None else Path(tmp) / "link.key"
        load_link_key(path=key_file)                                     # created here if absent
        port = free_port()
        run_nonce = new_run_nonce()                  # fixed here: the MACed attacks hold this run's key
        sensor = SensorOptions(payload=options.payload, prior=options.prior, stream_id=options.stream_id)
        pipeline = PipelineOptions(link=LinkSpec("udp", "127.0.0.1", port), link_key=key_file, sensor=sensor,
                                   capture=CaptureOptions(realtime=True), run_nonce=run_nonce)
        prior_id = None
        if options.prior is not None:
            prior_id = bytes(sensor.payload_options.open().state.prior_id)
        result = AttackResult(attack=options.attack)
        ctx = multiprocessing.get_context("spawn")
        stop, sent = ctx.Event(), ctx.Value("q", 0)
        attacker = None
        if options.attack != "none":
            rate = options.flood_rate if options.attack == "prior_flood" else ATTACK_RATE
            attacker = ctx.Process(target=attacker_main, name="pixelrnn-attacker", daemon=True,
                                   args=(options.attack, port, bundle.sensor.program_hash(), options.stream_id,
                                         str(key_file), run_nonce, prior_id, rate, stop, sent))
            attacker.start()
        try:
            source = TestPattern(fps=options.fps, frames=16 * options.windows)
            run = run_pipeline(source=source, bundle=bundle, options=pipeline,
                               on_decision=result.decisions.append)
        finally:
            stop.set()
            if attacker is not None:
                attacker.join(timeout=5.0)
                if attacker.is_alive():
                    attacker.terminate()
                    attacker.join(timeout=2.0)
        result.summary, result.sent = run.summary, int(sent.value)
    return result


def affected(baseline: list, decisions: list) -> int:
    """Windows whose decision differs from the baseline's (missing, extra or other logits)."""
    want = {d.window: (d.class_index, d.logits) for d in baseline}
    got = {d.window: (d.class_index, d.logits) for d in decisions}
    extra = len(decisions) - len(got)                                    # the same window decided twice
    return sum(want.get(w) != got.get(w) for w in set(want) | set(got)) + extra


def rejection_cost(*, prior: str | os.PathLike, model_id: str, repeats: int = 2000, decodes: int = 3) -> dict:
    """Per forged prior datagram: the host's MAC check (median, us) and what decoding it would cost
    if it got past the MAC (median, ms): the work the MAC saves."""
    from edge.payloads import PayloadOptions

    coder = PayloadOptions(name="prior", file=prior).open().state
    rng = np.random.default_rng(0)
    key = LinkKey.ephemeral()
    packets = [forged_prior_packet(model_id=model_id, stream_id=1, seq=i, prior_id=bytes(coder.prior_id), rng=rng)
               for i in range(repeats)]
    mac_s = []
    for data in packets:
        datagram = data + rng.bytes(16)
        t0 = time.perf_counter()
        assert key.open(datagram) is None
        mac_s.append(time.perf_counter() - t0)
    decode_s = []
    for data in packets[:decodes]:
        t0 = time.perf_counter()
        try:
            decode_packet(data, expect_model=model_id, coder=coder, expect_shape=(64, 64))
        except ValueError:
            pass
        decode_s.append(time.perf_counter() - t0)
    return {"mac_check_us_p50": float(np.median(mac_s) * 1e6),
            "mac_check_us_p99": float(np.percentile(mac_s, 99) * 1e6),
            "decode_ms_p50": float(np.median(decode_s) * 1e3), "bytes": len(packets[0]) + 16}


def make_prior(path: Path, meta: dict = PRIOR_META, seed: int = 0) -> Path:
    """A random prior in the prior file format (the coding cost depends on its size, not its weights)."""
    from core.prior_coder import prior_shapes, save_prior

    rng = np.random.default_rng(seed)
    return save_prior(path, {n: rng.normal(0.0, 0.5, s) for n, s in prior_shapes(meta).items()}, meta)


def table(rows: list[dict]) -> str:
    lines = ["| attack | attacker datagrams | decisions affected | rejected (reason: count) | e2e p50 ms "
             "| e2e p99 ms |",
             "|---|---:|---:|---|---:|---:|"]
    for r in rows:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(r["malformed"].items())) or "-"
        lines.append(f"| {r['attack']} ({r['payload']}) | {r['sent']} | {r['affected']} of {r['windows']} | "
                     f"{reasons} | {r['p50']:.1f} | {r['p99']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="genuine windows per run (default 20)")
    parser.add_argument("--fps", type=float, default=30.0, help="test pattern pace (default 30)")
    parser.add_argument("--flood-rate", type=float, default=1000.0, help="prior_flood datagrams/s (default 1000)")
    parser.add_argument("--attacks", default=",".join(a for a in ATTACKS if a != "none"))
    parser.add_argument("--write", type=Path, default=None, help="update this markdown file's link-attacks section")
    args = parser.parse_args(argv)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="pxrn-prior-") as tmp:
        prior = make_prior(Path(tmp) / "prior.npz")
        baselines: dict[str, list] = {}
        for attack in ["none", *attacks]:
            payloads = ("8bit", "prior") if attack == "none" else ("prior",) if attack == "prior_flood" else ("8bit",)
            for payload in payloads:
                try:
                    opts = AttackOptions(attack=attack, windows=args.windows, fps=args.fps, payload=payload,
                                         prior=prior if payload == "prior" else None, flood_rate=args.flood_rate)
                    res = run_attack(opts)
                except InputError as exc:
                    print(f"link_attacks: error: {exc}", file=sys.stderr)
                    return 2
                if attack == "none":
                    baselines[payload] = res.decisions
                e2e = res.summary["latency_ms"]["e2e"]
                row = {"attack": attack, "payload": payload, "sent": res.sent, "windows": args.windows,
                       "affected": affected(baselines[payload], res.decisions), "malformed": res.summary["malformed"],
                       "p50": e2e.get("p50", float("nan")), "p99": e2e.get("p99", float("nan")),
                       "mac_check_us": res.summary["link_auth"]["bad_mac_check_us"]}
                rows.append(row)
                print(f"link_attacks: {attack:16s} {payload:5s} sent {row['sent']:6d} affected {row['affected']} "
                      f"e2e p50 {row['p50']:.1f} p99 {row['p99']:.1f} ms  {row['malformed']}", file=sys.stderr)
        cost = rejection_cost(prior=prior, model_id=load_bundle(AUTHORS_BUNDLE).sensor.program_hash())
    text = table(rows)
    print(text)
    print(f"forged prior datagram ({cost['bytes']} bytes): MAC check {cost['mac_check_us_p50']:.1f} us p50 "
          f"({cost['mac_check_us_p99']:.1f} p99); decoding it without the MAC {cost['decode_ms_p50']:.0f} ms")
    if args.write:
        from benchmarks._common import cpu_name, update_section

        command = "python benchmarks/link_attacks.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        flood = next((r for r in rows if r["attack"] == "prior_flood"), None)
        notes = [f"Command: `{command.strip()}`; machine: {cpu_name()} ({os.cpu_count()} cores, shared), "
                 f"Python {platform.python_version()}; date {datetime.date.today()}. Lips model, test pattern "
                 f"paced at {args.fps:g} fps, {args.windows} genuine windows per run, host process over UDP on "
                 f"127.0.0.1 with a key file; the attacker is a separate process at {ATTACK_RATE:g} datagrams/s "
                 f"({args.flood_rate:g}/s for the flood). Prior: random weights, "
                 f"hidden {PRIOR_META['hidden']}, {PRIOR_META['layers']} layers, kernel {PRIOR_META['kernel']}.",
                 "",
                 text,
                 "",
                 f"One forged prior datagram ({cost['bytes']} bytes) costs the host a MAC check of "
                 f"{cost['mac_check_us_p50']:.1f} us (median; p99 {cost['mac_check_us_p99']:.1f} us); without the MAC "
                 f"it would be decoded first: {cost['decode_ms_p50']:.0f} ms each."]
        if flood is not None and flood["mac_check_us"]:
            notes.append(f"In the flood run the host timed its own MAC rejections at "
                         f"{flood['mac_check_us'].get('p50', 0):.1f} us p50 / {flood['mac_check_us'].get('p99', 0):.1f}"
                         f" us p99 ({flood['mac_check_us'].get('n', 0)} datagrams).")
        update_section(args.write, "link-attacks", "\n".join(notes), heading=HEADING)
        print(f"wrote the link-attacks section of {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
