"""Packet fuzzing (issue 16): mutated readout packets, sealed datagrams and PacketDecoder streams.

The engine is ``benchmarks/packet_fuzz.py`` (seeds, mutations, the oracle; its docstring says what
each checks). Deterministic (fixed seeds): a failure prints a reproducer, a ``decode_packet`` call on
the exact bytes. The default run is 10,000 packet cases; ``PIXELRNN_FUZZ_CASES=100000`` runs the long
mode (or ``python benchmarks/packet_fuzz.py --long``). ``pytest -s`` prints the table.

Torch-free (``device``); about 30 s on 2 shared cores (``slow``).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from conftest import REPO
from edge.packet import REASONS, PacketError, decode_packet
from edge.payloads import PayloadCodec, registered_payload

if str(REPO) not in sys.path:                 # the fuzzer lives in benchmarks/ (not installed)
    sys.path.insert(0, str(REPO))
from benchmarks import packet_fuzz as pf  # noqa: E402

pytestmark = [pytest.mark.device, pytest.mark.slow]

CASES = int(os.environ.get("PIXELRNN_FUZZ_CASES", pf.DEFAULT_CASES))
SEED = int(os.environ.get("PIXELRNN_FUZZ_SEED", 0))
# every rejection the built-in payloads can produce on bad bytes; bad_payload is the generic reason
# for a codec's ValueError, which the built-in codecs never raise on a length-checked payload
DEEP_REASONS = {"short", "bad_magic", "bad_version", "bad_kind", "bad_encoding", "bad_length", "bad_crc",
                "bad_shape", "wrong_model", "no_prior", "wrong_prior", "bad_prior_decode"}


@pytest.fixture(scope="module")
def hosts(tmp_path_factory) -> pf.Hosts:
    return pf.open_hosts(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module")
def seeds(hosts) -> list[pf.Seed]:
    return pf.make_seeds(hosts.coder, seed=SEED)


def _fail(failures, problems=()) -> str:
    lines = [f.reproducer()[:1500] for f in failures[:10]] + list(problems)[:10]
    return f"{len(failures) + len(problems)} fuzz failures; first ones:\n" + "\n".join(lines)


def test_seeds_cover_every_payload_and_end(seeds):
    from edge.payloads import get_payload, payload_names

    encodings = {s.encoding for s in seeds if not s.is_end}
    assert {get_payload(n).wire_id for n in payload_names()} <= encodings
    assert any(s.is_end for s in seeds)
    assert {s.host_shape for s in seeds} >= set(pf.SHAPES)


def test_packet_fuzz(hosts, seeds):
    report = pf.run_packet_fuzz(hosts, cases=CASES, seed=SEED, seeds=seeds)
    print("\n" + pf.table(report))
    total = report.total()
    print(f"{report.cases} cases in {report.seconds:.1f} s; worst {1000 * total.max_s:.0f} ms ({total.worst}); "
          f"{report.prior_big_decodes} 64x64 prior decodes")
    assert report.cases == CASES
    assert not report.failures, _fail(report.failures)
    assert total.crashes == total.accepted_unexpected == total.silent_wrong == 0
    assert total.max_s < pf.MAX_CASE_S, f"worst case {total.max_s:.2f} s: {total.worst}"
    # every case is accounted for, every reason documented, and the mutations reach the deep checks
    assert sum(total.rejected.values()) + total.accepted == total.cases
    assert set(total.rejected) <= pf.all_reasons() and pf.all_reasons() >= set(REASONS)
    if CASES >= 2_000:                               # (a tiny PIXELRNN_FUZZ_CASES may not get everywhere)
        missing = DEEP_REASONS - report.reasons_seen
        assert not missing, f"the mutations never reached {sorted(missing)}"
        assert all(s.cases > 0 for s in report.stats.values())
        assert total.accepted_recomputed > 0       # CRC-valid forgeries do decode: the MAC's job
        assert report.prior_big_decodes >= 1       # the 64x64 prior decoder ran on garbage


def test_mac_fuzz(seeds):
    stats, failures = pf.run_mac_fuzz(seeds, cases=max(2_000, CASES // 5), seed=SEED)
    print(f"\nMAC: {stats.cases} cases, {stats.rejected['bad_mac']} rejected, {stats.accepted_genuine} genuine "
          f"opened, worst {1000 * stats.max_s:.2f} ms")
    assert not failures, _fail(failures)
    assert stats.rejected["bad_mac"] + stats.accepted_genuine == stats.cases
    assert stats.accepted_genuine > 0 and stats.rejected["bad_mac"] > stats.cases // 2


def test_packet_decoder_streams(hosts, seeds):
    rounds = max(9, CASES // 2000)
    totals, problems = pf.run_stream_fuzz(hosts, seeds, rounds=rounds, seed=SEED)
    print("\n" + pf.stream_table(totals))
    assert not problems, _fail([], problems)
    for name in ("corrupt", "mac"):
        assert totals[name]["genuine_changed"] == 0 and totals[name]["genuine"] > 0
    assert {"stale_seq", "seq_jump", "wrong_stream", "wrong_model", "bad_crc"} <= set(totals["corrupt"]["rejected"])
    assert set(totals["mac"]["rejected"]) == {"bad_mac"}
    for name, t in totals.items():          # "ends": the decoders' own counter (PacketDecoder.ends)
        assert t["accepted"] + t["ends"] + sum(t["rejected"].values()) == t["fed"]
        if name != "open":                   # every round's genuine end is accepted, nothing else
            assert t["ends"] == rounds, (name, t["ends"], rounds)


# --- the fuzzer finds what it should: a planted bug ---------------------------------------------
def _buggy_decode(payload, shape, state, level):
    if any(payload):                                    # genuine payloads are all zeros
        raise IndexError("planted bug")                 # not a PacketError / ValueError: a crash
    return np.zeros(shape, np.uint8)


def test_fuzzer_reports_a_planted_crash(hosts):
    codec = PayloadCodec(wire_id=250, name="fuzz-buggy", help="a codec with a planted bug",
                         encode=lambda r, s, lv: bytes(r.size), decode=_buggy_decode,
                         size=lambda shape: int(shape[0]) * int(shape[1]))
    with registered_payload(codec):
        report = pf.run_packet_fuzz(hosts, cases=600, seed=SEED, seeds=pf.make_seeds(hosts.coder, seed=SEED))
        crashes = [f for f in report.failures if "IndexError" in f.problem]
        assert crashes, "the fuzzer missed a codec that raises IndexError"
        # the reproducer is the exact bytes: decoding them again raises the same
        with pytest.raises(IndexError):
            decode_packet(crashes[0].data, expect_model=pf.MODEL, coder=hosts.coder,
                          expect_shape=crashes[0].host_shape)
    assert "bytes.fromhex(" in crashes[0].reproducer()


def test_oracle_flags_an_accepted_stale_crc_mutant(seeds):
    """check_case: an altered packet accepted without a recomputed CRC is a failure (the CRC32 collision
    the oracle guards against), a rejection past the CRC for such a mutant too."""
    s = next(x for x in seeds if not x.is_end and x.encoding == 8)
    stats, failures = pf.KindStats(), []
    packet = decode_packet(s.packet, expect_model=pf.MODEL)
    m = pf.Mutant(s.packet + b"", False, s.host_shape)
    pf.check_case("t", 0, s, m, packet, None, 0.0, stats, failures, pf.all_reasons())
    assert stats.accepted_genuine == 1 and not failures
    altered = pf.Mutant(pf.recrc(s.packet[:-5] + bytes([s.packet[-5] ^ 1]) + s.packet[-4:]), False, s.host_shape)
    pf.check_case("t", 1, s, altered, decode_packet(altered.data, expect_model=pf.MODEL), None, 0.0, stats,
                  failures, pf.all_reasons())
    assert stats.accepted_unexpected == 1 and len(failures) == 1
    pf.check_case("t", 2, s, altered, None, PacketError("wrong_model", "x"), 0.0, stats, failures, pf.all_reasons())
    assert stats.wrong_reason == 1
    pf.check_case("t", 3, s, altered, None, KeyError("x"), 0.0, stats, failures, pf.all_reasons())
    assert stats.crashes == 1 and len(failures) == 3
