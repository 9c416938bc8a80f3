"""The authenticated UDP link (edge/auth.py, issue 16): the MAC, the key file, the per-run key, the
host's stream and sequence rules, and the camera loop under attack over real sockets on 127.0.0.1
with the real host process (benchmarks/link_attacks.py's harness: an attacker process beside the
genuine sensor)."""
from __future__ import annotations

import json
import os
import stat
import sys
import time

import numpy as np
import pytest

from conftest import AUTHORS_BUNDLES, REPO
from core.errors import InputError
from edge.auth import KEY_BYTES, MAC_BYTES, RUN_NONCE_BYTES, LinkKey, load_link_key, new_run_nonce
from edge.link import LinkSpec, parse_link
from edge.packet import MAX_SEQ_JUMP, REASONS, PacketDecoder, encode_end, encode_readout

if str(REPO) not in sys.path:                 # the attack harness lives in benchmarks/ (not installed)
    sys.path.insert(0, str(REPO))
from benchmarks.link_attacks import AttackOptions, affected, forged_prior_packet, make_prior, rejection_cost, run_attack  # noqa: E402

pytestmark = pytest.mark.device

MODEL = "0123456789abcdef"
# a bundle with the authors' readout (o_16, 8 bit): the 1bit and prior payloads apply to it (the default
# models read out 1-bit levels of their own layouts since issue 12): the fixture the old default gesture became
AUTHORS_BUNDLE = AUTHORS_BUNDLES / "gesture"
WINDOWS, FPS = 4, 120.0                       # genuine windows per attacked run, test pattern pace


def readout_packet(seq: int, *, stream_id: int = 7, seed: int = 0) -> bytes:
    r = np.random.default_rng(seed).integers(0, 256, (64, 64), dtype=np.uint8)
    return encode_readout(r, model_id=MODEL, stream_id=stream_id, seq=seq)


# -- the MAC ---------------------------------------------------------------------------------------
def test_mac_seals_and_rejects_forgeries():
    key, other = LinkKey.ephemeral(), LinkKey.ephemeral()
    packet = readout_packet(0)
    datagram = key.seal(packet)
    assert len(datagram) == len(packet) + MAC_BYTES == len(packet) + 16 and key.open(datagram) == packet
    flipped = bytearray(datagram)
    flipped[100] ^= 1
    for forged in (packet, packet + bytes(16), other.seal(packet), bytes(flipped), datagram[:-1],
                   datagram[:MAC_BYTES], b""):
        assert key.open(forged) is None
    assert "secret" not in repr(key) and key.secret.hex() not in repr(key)
    with pytest.raises(InputError, match="32 bytes"):
        LinkKey(b"short")


# -- the per-run key ---------------------------------------------------------------------------------
def test_a_datagram_of_one_run_does_not_open_in_another_run_with_the_same_key_file(tmp_path):
    """Cross-run replay: the same key file and (by chance) the same stream id, another run's nonce."""
    import hashlib
    import hmac

    path = tmp_path / "link.key"
    file_key = load_link_key(path=path)
    nonce_a, nonce_b = new_run_nonce(), new_run_nonce()
    assert len(nonce_a) == RUN_NONCE_BYTES == 16 and nonce_a != nonce_b
    run_a, run_b = file_key.for_run(nonce_a), file_key.for_run(nonce_b)
    recorded = run_a.seal(readout_packet(0))                      # a genuine datagram of run A
    assert run_a.open(recorded) == readout_packet(0)
    assert run_b.open(recorded) is None                           # replayed into run B: bad MAC
    assert file_key.open(recorded) is None and run_a.open(file_key.seal(readout_packet(0))) is None
    # the same key file and nonce give the same key on both ends (the host process loads its own copy)
    host_side = load_link_key(path=path, create=False).for_run(nonce_a)
    assert host_side.secret == run_a.secret and host_side.open(recorded) == readout_packet(0)
    assert run_a.secret == hmac.digest(file_key.secret, b"pixelrnn-link-run-v1" + nonce_a, hashlib.sha256)
    assert run_a.secret != file_key.secret and len(run_a.secret) == KEY_BYTES
    assert run_a.origin == f"derived per run from {path}" and run_a.secret.hex() not in repr(run_a)
    for bad in (b"short", nonce_a + b"x", "0" * 16, None):
        with pytest.raises(InputError, match="a run nonce must be 16 bytes") as info:
            file_key.for_run(bad)
        assert "\n" not in str(info.value)


def test_the_host_process_config_carries_the_run_nonce(tmp_path):
    """RemoteConfig: a key file needs the run's nonce, and the child derives the sensor's run key from them."""
    from edge.remote import RemoteConfig

    path = tmp_path / "link.key"
    file_key = load_link_key(path=path)
    nonce = new_run_nonce()
    common = dict(bundle_dir="b", runtime="onnxruntime", threads=1, host="127.0.0.1", port=0)
    config = RemoteConfig(**common, link_key=str(path), run_nonce=nonce)
    assert config.load_key().secret == file_key.for_run(nonce).secret
    ephemeral = LinkKey.ephemeral()
    assert RemoteConfig(**common, key=ephemeral).load_key() is ephemeral         # already the run's own
    assert ephemeral.secret.hex() not in repr(RemoteConfig(**common, key=ephemeral))
    for kw, match in ((dict(link_key=str(path)), "needs the run's nonce"),
                      (dict(link_key=str(path), run_nonce=b"x" * 15), "a run nonce must be 16 bytes, got 15 bytes"),
                      (dict(link_key=str(path), run_nonce=nonce.hex()), "a run nonce must be 16 bytes, got str"),
                      (dict(key=ephemeral, run_nonce=nonce), "run_nonce goes with a key file only")):
        with pytest.raises(InputError, match=match) as info:
            RemoteConfig(**common, **kw)
        assert "\n" not in str(info.value)
    from edge.pipeline import PipelineOptions

    with pytest.raises(InputError, match="run_nonce is used only with a link_key file"):
        PipelineOptions(run_nonce=nonce)
    with pytest.raises(InputError, match="a run nonce must be 16 bytes"):
        PipelineOptions(link_key=path, run_nonce=b"")


# -- the key file ----------------------------------------------------------------------------------
def test_key_file_is_created_0600_reused_and_a_shared_one_refused(tmp_path, capsys):
    path = tmp_path / "link.key"
    key = load_link_key(path=path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_bytes() == key.secret
    assert len(key.secret) == KEY_BYTES and key.origin == str(path)
    assert load_link_key(path=path).secret == key.secret                     # reused, not replaced
    assert list(tmp_path.iterdir()) == [path]                                 # no temp file left
    os.chmod(path, 0o644)
    with pytest.raises(InputError) as info:
        load_link_key(path=path)
    message = str(info.value)
    assert "\n" not in message and "mode 0644" in message and f"chmod 600 {path}" in message
    assert "--" not in message                                               # a library error names no flag
    os.chmod(path, 0o600)
    (tmp_path / "short.key").write_bytes(b"x" * 5)
    os.chmod(tmp_path / "short.key", 0o600)
    with pytest.raises(InputError, match="exactly 32 bytes"):
        load_link_key(path=tmp_path / "short.key")
    with pytest.raises(InputError, match="does not exist"):
        load_link_key(path=tmp_path / "absent.key", create=False)
    # the CLI: the same refusal as one line, exit 2, in the flag's words
    from edge.run_camera import main

    os.chmod(path, 0o640)
    code = main(["--source", "test", "--headless", "--max-frames", "16", "--model", str(AUTHORS_BUNDLE),
                 "--link", "udp://127.0.0.1:0", "--link-key", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--link-key: link key file" in err and "chmod 600" in err
    code = main(["--source", "test", "--headless", "--model", str(AUTHORS_BUNDLE), "--link-key", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "--link-key is only used with --link udp://" in err and err.count("\n") == 1


def test_link_key_option_validation():
    from edge.api import CameraLoopOptions

    with pytest.raises(InputError, match="link_key is used only with a udp link"):
        CameraLoopOptions(link_key="k.key")
    with pytest.raises(InputError, match="link_key must be a key file path"):
        CameraLoopOptions(link="udp://127.0.0.1:0", link_key=3)
    assert CameraLoopOptions(link="udp://127.0.0.1:0", link_key="k.key").pipeline_options(roi="center").link_key


def test_binding_beyond_loopback_is_warned_about():
    from edge.pipeline import PipelineOptions, _link_key

    notes = []
    _link_key(PipelineOptions(link=parse_link("udp://0.0.0.0:9000")), notes.append)     # nothing is bound
    assert any(n.startswith("warning: the host listens on udp://0.0.0.0:9000") for n in notes)
    assert any("random key made for this run" in n for n in notes)
    notes.clear()
    _link_key(PipelineOptions(link=parse_link("udp://127.0.0.1:9000")), notes.append)
    assert not any("warning" in n for n in notes)
    assert LinkSpec().loopback and not LinkSpec("udp", "10.0.0.1", 1).loopback and LinkSpec("udp").loopback


# -- the host's stream and sequence rules ------------------------------------------------------------
def test_a_sequence_jump_is_bounded_and_cannot_make_genuine_packets_stale():
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(readout_packet(2**32 - 1)) is None                     # as if from a buggy sender
    assert dec.decode(readout_packet(0)) is not None and dec.decode(readout_packet(1)) is not None
    assert dec.decode(readout_packet(1 + MAX_SEQ_JUMP + 2)) is None          # more than the window ahead
    assert dec.decode(readout_packet(1 + MAX_SEQ_JUMP + 1)) is not None      # exactly the window: a gap
    assert dec.decode(readout_packet(5)) is None                             # a replay of an old window
    assert dict(dec.rejected) == {"seq_jump": 2, "stale_seq": 1} and dec.lost == MAX_SEQ_JUMP
    assert {"seq_jump", "wrong_stream", "wrong_stream_end", "bad_mac"} <= set(REASONS)


def test_end_of_stream_only_for_the_stream_it_ends():
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(readout_packet(0)) is not None
    assert dec.decode(encode_end(model_id=MODEL, stream_id=8, seq=1)) is None          # another stream
    assert dec.decode(encode_end(model_id=MODEL, stream_id=7, seq=0)) is None          # fewer than accepted
    assert dec.decode(encode_end(model_id=MODEL, stream_id=7, seq=2**32 - 1)) is None  # would fake a huge loss
    assert dec.ends == 0                                                               # none taken so far
    end = dec.decode(encode_end(model_id=MODEL, stream_id=7, seq=3))
    assert end is not None and end.is_end and dec.ends == 1
    dec.end_lost(end)
    assert dict(dec.rejected) == {"wrong_stream_end": 1, "stale_seq": 1, "seq_jump": 1} and dec.lost == 2
    # a host that knows its stream (the UDP host: its sensor's) takes nothing else
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64), expect_stream=7)
    assert dec.decode(encode_end(model_id=MODEL, stream_id=9, seq=0)) is None
    assert dec.decode(readout_packet(0, stream_id=9)) is None
    assert dec.decode(readout_packet(0)) is not None
    assert dict(dec.rejected) == {"wrong_stream_end": 1, "wrong_stream": 1}
    dec.reject("bad_mac", nbytes=10)
    assert dec.rejected["bad_mac"] == 1
    with pytest.raises(ValueError, match="reason must be one of"):
        dec.reject("nope")


# -- the camera loop over UDP under attack -----------------------------------------------------------
@pytest.fixture(scope="module")
def baseline():
    return run_attack(AttackOptions(windows=WINDOWS, fps=FPS))


@pytest.mark.slow
@pytest.mark.parametrize("attack, reason", [
    ("forged_readouts", "bad_mac"),       # (1) right format and model id, no MAC / a random MAC
    ("forged_end", "bad_mac"),            # (2) an end for another stream, no MAC
    ("maced_end", "wrong_stream_end"),    # (2) ... with a valid MAC: still not this stream's end
    ("seq_jump", "bad_mac"),              # (3) seq 2^32-1, no MAC
    ("maced_seq_jump", "seq_jump"),       # (3) ... with a valid MAC (a buggy sender)
    ("replayed_run", "bad_mac"),          # an earlier run's datagrams (same key file, same stream id)
])
def test_attacks_change_no_decision(baseline, attack, reason):
    assert len(baseline.decisions) == WINDOWS and baseline.summary["malformed"] == {}
    res = run_attack(AttackOptions(attack=attack, windows=WINDOWS, fps=FPS))
    s = res.summary
    assert res.sent > 0 and s["malformed"].get(reason, 0) >= 1, (res.sent, s["malformed"])
    assert set(s["malformed"]) == {reason}                    # nothing forged got further than its check
    assert affected(baseline.decisions, res.decisions) == 0 and len(res.decisions) == WINDOWS
    assert [d.window for d in res.decisions] == list(range(WINDOWS))
    assert s["end"] == "eof" and s["drops"]["lost_windows"] == 0 and s["decisions"] == WINDOWS
    print(f"{attack}: {res.sent} forged datagrams, e2e p50/p99 {s['latency_ms']['e2e']['p50']:.1f}/"
          f"{s['latency_ms']['e2e']['p99']:.1f} ms (baseline {baseline.summary['latency_ms']['e2e']['p50']:.1f}/"
          f"{baseline.summary['latency_ms']['e2e']['p99']:.1f})")


@pytest.fixture(scope="module")
def small_prior(tmp_path_factory):
    return make_prior(tmp_path_factory.mktemp("prior") / "prior.npz", {"num_classes": 2, "hidden": 8,
                                                                       "kernel": 3, "layers": 2})


def test_forged_prior_packets_are_rejected_in_microseconds(small_prior):
    """(4) per forged prior datagram: one HMAC, against the arithmetic decode it would cost without."""
    from edge.models import load_bundle

    cost = rejection_cost(prior=small_prior, model_id=load_bundle(AUTHORS_BUNDLE).sensor.program_hash(), repeats=500,
                          decodes=2)
    assert cost["mac_check_us_p50"] < 250, cost                   # well under 1 ms (typically ~10 us)
    assert cost["decode_ms_p50"] * 1e3 > 20 * cost["mac_check_us_p50"], cost
    # the forged packet itself is well formed: only the MAC (or the decode) stops it
    data = forged_prior_packet(model_id=MODEL, stream_id=1, seq=0, prior_id=bytes(8), rng=np.random.default_rng(0))
    assert PacketDecoder(expect_model=MODEL, shape=(64, 64)).decode(data) is None


@pytest.mark.slow
def test_prior_flood_leaves_genuine_decisions_unchanged(small_prior):
    """(4) a flood of forged prior-coded packets (1000/s) while the genuine prior-coded windows flow."""
    opts = dict(windows=3, fps=60.0, payload="prior", prior=small_prior)
    base = run_attack(AttackOptions(**opts))
    t0 = time.perf_counter()
    res = run_attack(AttackOptions(attack="prior_flood", flood_rate=1000.0, **opts))
    wall = time.perf_counter() - t0
    auth = res.summary["link_auth"]
    assert affected(base.decisions, res.decisions) == 0 and len(res.decisions) == 3
    assert set(res.summary["malformed"]) == {"bad_mac"} and auth["bad_mac"] >= 100
    assert auth["bad_mac_check_us"]["p50"] < 1000, auth          # the host's own timing, per datagram
    print(f"prior flood: {auth['bad_mac']} rejected, MAC check p50 {auth['bad_mac_check_us']['p50']:.1f} us; "
          f"e2e p50 {res.summary['latency_ms']['e2e']['p50']:.0f} ms vs {base.summary['latency_ms']['e2e']['p50']:.0f}"
          f" ms without the flood; run {wall:.1f} s")


# -- (6) the camera loop over UDP with a key file decides as in-process --------------------------------
@pytest.mark.slow
def test_udp_with_a_key_file_gives_the_inproc_decisions(tmp_path, capsys):
    from edge.run_camera import main

    common = ["--source", "test", "--headless", "--max-frames", "48", "--model", str(AUTHORS_BUNDLE)]
    runs = {}
    for name, extra in (("inproc", []), ("udp", ["--link", "udp://127.0.0.1:0", "--link-key", tmp_path / "k"]),
                        ("udp_ephemeral", ["--link", "udp://127.0.0.1:0"])):
        out = tmp_path / f"{name}.jsonl"
        code = main([*common, *map(str, extra), "--json-out", str(out)])
        err = capsys.readouterr().err
        assert code == 0, err
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        runs[name] = (lines[:-1], lines[-1]["summary"], err)
    keys = ("window", "class", "label", "score", "logits", "bytes")
    want = [{k: w[k] for k in keys} for w in runs["inproc"][0]]
    assert len(want) == 3
    for name in ("udp", "udp_ephemeral"):
        windows, summary, err = runs[name]
        assert [{k: w[k] for k in keys} for w in windows] == want, name
        assert summary["malformed"] == {} and summary["drops"]["lost_windows"] == 0
        assert summary["link_auth"]["mac"] == "hmac-sha256/128" and summary["link_auth"]["bad_mac"] == 0
        assert summary["bytes"]["sent"] == sum(w["bytes"] + MAC_BYTES for w in windows) + 44 + MAC_BYTES
    assert runs["udp"][1]["link_auth"]["key"] == f"derived per run from {tmp_path / 'k'}"
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert "no link key file" not in runs["udp"][2]
    assert "no link key file: the UDP link is authenticated with a random key" in runs["udp_ephemeral"][2]
    assert runs["udp_ephemeral"][1]["link_auth"]["key"] == "ephemeral"
    assert runs["inproc"][1]["link_auth"] is None
