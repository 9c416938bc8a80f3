"""The payload codec registry (edge/payloads.py): a new payload type is one ``register_payload`` call,
and it then runs through the packet, the sensor and host stages, the camera loop and ``pixelrnn bench``."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.errors import InputError
from edge.packet import (
    OVERHEAD_BYTES,
    PAYLOADS,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_readout,
    max_payload_bytes,
    payload_bytes,
)
from edge.payloads import (
    PayloadCodec,
    PayloadOptions,
    get_payload,
    payload_names,
    register_payload,
    registered_payload,
    unregister_payload,
)

pytestmark = pytest.mark.device

MODEL = "0123456789abcdef"
NIBBLE_ID, ZLIB_ID = 4, 5


def recrc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


# -- two toy codecs: 4-bit levels (fixed size) and zlib with a level read from a file (variable) ------
def _encode_nibbles(readout, state, level) -> bytes:
    flat = (readout.reshape(-1) >> 4).astype(np.uint8)
    flat = np.concatenate([flat, np.zeros(flat.size % 2, np.uint8)])
    return (flat[0::2] << 4 | flat[1::2]).astype(np.uint8).tobytes()


def _decode_nibbles(payload, shape, state, level) -> np.ndarray:
    packed = np.frombuffer(payload, dtype=np.uint8)
    flat = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:shape[0] * shape[1]]
    return (flat << 4 | 8).astype(np.uint8).reshape(shape)


def nibbles(readout: np.ndarray) -> np.ndarray:
    """What the 4-bit payload delivers: the top 4 bits, centred in their step."""
    return (readout >> 4 << 4 | 8).astype(np.uint8)


NIBBLE = PayloadCodec(wire_id=NIBBLE_ID, name="4bit", help="the levels' top 4 bits (2,048 B per 64x64 window)",
                      encode=_encode_nibbles, decode=_decode_nibbles,
                      size=lambda shape: (shape[0] * shape[1] + 1) // 2)


def _decode_zlib(payload, shape, level_from_file, level) -> np.ndarray:
    if level_from_file is None:
        raise PacketError("no_zlib_level", "zlib packet, but this host has no level file")
    try:
        raw = zlib.decompress(payload)
    except zlib.error as exc:
        raise PacketError("bad_zlib", f"zlib payload does not inflate: {exc}") from None
    if len(raw) != shape[0] * shape[1]:
        raise PacketError("bad_zlib", f"zlib payload inflates to {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy()


ZLIB = PayloadCodec(wire_id=ZLIB_ID, name="zlib", help="the 8-bit levels, deflated (needs a level file)",
                    encode=lambda readout, lvl, level: zlib.compress(np.ascontiguousarray(readout).tobytes(), lvl),
                    decode=_decode_zlib, size=lambda shape: shape[0] * shape[1], min_size=lambda shape: 8,
                    open_state=lambda path: int(Path(path).read_text()), file_label="the zlib level file",
                    describe_state=lambda lvl: {"zlib_level": lvl}, fallback="8bit",
                    reasons=("no_zlib_level", "bad_zlib"))


@pytest.fixture
def nibble():
    with registered_payload(NIBBLE) as codec:
        yield codec
    assert "4bit" not in PAYLOADS


@pytest.fixture
def zlib_codec(tmp_path):
    (tmp_path / "level.txt").write_text("6")
    with registered_payload(ZLIB) as codec:
        yield codec, tmp_path / "level.txt"


@pytest.fixture(scope="module")
def bundle(authors_bundle):
    """A bundle with the authors' readout (one 64x64 8-bit map), which the 4bit, zlib and prior payloads carry."""
    from edge.models import load_bundle

    return load_bundle(authors_bundle / "gesture")


def test_a_registered_codec_frames_and_decodes_packets(nibble):
    readout = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    assert PAYLOADS["4bit"] == NIBBLE_ID and "4bit" in payload_names() and get_payload(NIBBLE_ID) is nibble
    for encoding in ("4bit", NIBBLE_ID):
        data = encode_readout(readout, model_id=MODEL, stream_id=1, seq=0, encoding=encoding)
        assert len(data) == OVERHEAD_BYTES + 2048 and data[6] == NIBBLE_ID and data[7] == 0    # no level
        p = decode_packet(data, expect_model=MODEL)
        assert p.encoding == NIBBLE_ID and np.array_equal(p.readout, nibbles(readout))
    assert payload_bytes((64, 64), "4bit") == max_payload_bytes((64, 64), NIBBLE_ID) == 2048
    odd = readout[:5, :7]                                                 # an odd number of levels
    assert np.array_equal(decode_packet(encode_readout(odd, model_id=MODEL, stream_id=1, seq=0,
                                                       encoding="4bit")).readout, nibbles(odd))
    short = recrc(data[:36] + struct.pack("!I", 2047) + data[40:-5] + b"\0" * 4)
    dec = PacketDecoder(expect_model=MODEL, shape=(64, 64))
    assert dec.decode(short) is None and dec.rejected == {"bad_length": 1}
    unregister_payload("4bit")
    try:
        with pytest.raises(PacketError) as info:
            decode_packet(data)
        assert info.value.reason == "bad_encoding"
    finally:
        register_payload(nibble)


def test_a_variable_codec_with_a_file_and_a_fallback(zlib_codec):
    codec, level_file = zlib_codec
    state = PayloadOptions(name="zlib", file=level_file).open()
    assert state.state == 6 and state.states == {ZLIB_ID: 6} and codec.variable
    flat = np.full((64, 64), 127, np.uint8)
    data = encode_readout(flat, model_id=MODEL, stream_id=1, seq=0, encoding="zlib", coder=state.state)
    assert data[6] == ZLIB_ID and len(data) < OVERHEAD_BYTES + 100
    assert np.array_equal(decode_packet(data, states={"zlib": 6}).readout, flat)
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)     # deflates longer: 8bit
    data = encode_readout(noise, model_id=MODEL, stream_id=1, seq=1, encoding="zlib", coder=6)
    assert data[6] == 8 and np.array_equal(decode_packet(data).readout, noise)
    with pytest.raises(ValueError, match="variable size"):
        payload_bytes((64, 64), "zlib")
    good = encode_readout(flat, model_id=MODEL, stream_id=1, seq=0, encoding="zlib", coder=6)
    for data, states, reason in ((good, None, "no_zlib_level"),
                                 (recrc(good[:44] + b"\xff" + good[45:]), {ZLIB_ID: 6}, "bad_zlib")):
        dec = PacketDecoder(shape=(64, 64), states=states)
        assert dec.decode(data) is None and dec.rejected == {reason: 1}
    with pytest.raises(InputError, match="payload zlib needs the zlib level file"):
        PayloadOptions(name="zlib")
    with pytest.raises(InputError, match="takes no file"):
        PayloadOptions(name="8bit", file=level_file)


def test_registry_rejects_clashes_and_bad_entries(nibble):
    with pytest.raises(ValueError, match="wire id 8 is taken by payload '8bit'"):
        register_payload(PayloadCodec(wire_id=8, name="other", help="x", encode=_encode_nibbles,
                                      decode=_decode_nibbles, size=lambda s: 1))
    with pytest.raises(ValueError, match="name '4bit' is taken"):
        register_payload(PayloadCodec(wire_id=77, name="4bit", help="x", encode=_encode_nibbles,
                                      decode=_decode_nibbles, size=lambda s: 1))
    with pytest.raises(ValueError, match="fallback 'prior' must be"):
        register_payload(PayloadCodec(wire_id=77, name="x", help="x", encode=_encode_nibbles, decode=_decode_nibbles,
                                      size=lambda s: 1, min_size=lambda s: 0, fallback="prior"))
    for kwargs, message in (({"wire_id": 300}, "wire_id"), ({"name": "Bad Name"}, "name"), ({"help": ""}, "help"),
                            ({"encode": None}, "encode must be callable")):
        base = dict(wire_id=77, name="x", help="x", encode=_encode_nibbles, decode=_decode_nibbles, size=lambda s: 1)
        with pytest.raises(ValueError, match=message):
            PayloadCodec(**{**base, **kwargs})
    with pytest.raises(ValueError, match="fallback of prior"):
        unregister_payload("1bit")
    with pytest.raises(InputError, match=r"payload must be one of 8bit \(8\), 1bit \(1\), prior \(2\), "
                                         r"context \(3\), table \(6\), levels4 \(20\), levels2 \(18\), levels1 \(17\), "
                                         r"levels1-context \(33\), levels1-table \(34\), 4bit \(4\)"):
        get_payload("nope")
    with pytest.raises(InputError, match="payload must be one of"):
        PayloadOptions(name="nope")


def test_sensor_and_host_stages_use_the_registered_codec(nibble, bundle):
    from edge.decoder import HostDecoder
    from edge.host import HostStage
    from edge.sensor_stage import SensorOptions, SensorStage

    sensor = SensorStage(weights=bundle.sensor, options=SensorOptions(payload="4bit", stream_id=3))
    assert sensor.encoding == NIBBLE_ID and sensor.mean_payload_bytes == 2048
    images = np.random.default_rng(2).integers(0, 256, (sensor.timesteps, sensor.size, sensor.size), dtype=np.uint8)
    packets = [sensor.push(image, t_ns=1) for image in images]
    assert packets[:-1] == [None] * (sensor.timesteps - 1) and packets[-1][6] == NIBBLE_ID
    decoder = HostDecoder(bundle=bundle, runtime="onnxruntime")
    host = HostStage(decoder=decoder, expect_model=bundle.model_id)
    decision = host.handle(packets[-1])
    assert decision is not None and decision["bytes"] == OVERHEAD_BYTES + 2048
    want = decoder(nibbles(sensor.last_readout))
    assert decision["logits"] == [round(float(v), 5) for v in want]
    assert host.stats()["malformed"] == {}


def test_camera_loop_runs_a_registered_payload(nibble, zlib_codec, bundle):
    from edge.capture import TestPattern
    from edge.pipeline import PipelineOptions, run_pipeline
    from edge.sensor_stage import SensorOptions

    _, level_file = zlib_codec
    for payload, prior in (("4bit", None), ("zlib", level_file)):
        decisions = []
        options = PipelineOptions(sensor=SensorOptions(payload=payload, prior=prior), roi="center", max_frames=32)
        s = run_pipeline(source=TestPattern(), bundle=bundle, options=options,
                         on_decision=decisions.append).summary
        assert s["payload"] == payload and s["windows"] == 2 and s["decisions"] == 2 and s["malformed"] == {}
        sizes = [d["bytes"] if isinstance(d, dict) else d.bytes for d in decisions]
        assert s["bytes"]["payload_per_window"] == pytest.approx(np.mean(sizes) - OVERHEAD_BYTES, abs=0.05)
        if payload == "4bit":
            assert s["bytes"]["payload_per_window"] == 2048 and "4bit" not in s
        else:
            assert s["zlib"] == {"file": str(level_file), "zlib_level": 6, "fallback_8bit_windows": 0}
            assert s["bytes"]["payload_per_window"] < 4096


# -- pixelrnn bench: the real bytes of every payload -------------------------------------------------
@pytest.fixture(scope="module")
def prior_file(tmp_path_factory) -> Path:
    from core.prior_coder import prior_shapes, save_prior

    meta = {"num_classes": 2, "hidden": 4, "kernel": 3, "layers": 1}
    rng = np.random.default_rng(0)
    arrays = {n: rng.normal(0.0, 0.5, s) for n, s in prior_shapes(meta).items()}
    return save_prior(tmp_path_factory.mktemp("prior") / "prior.npz", arrays, meta)


def expected_prior_mean(bundle, prior_file: Path, windows: int) -> float:
    """The mean prior payload over the stages job's windows, recomputed in this process."""
    from edge.capture import TestPattern
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor, SensorOptions, SensorStage

    sensor = SensorStage(weights=bundle.sensor, options=SensorOptions(payload="prior", prior=prior_file, stream_id=1))
    pre = Preprocessor(make_roi("center"), size=sensor.size)
    source = TestPattern()
    source.open()
    while sensor.windows < windows:
        sensor.push(pre(source.read(), last_of_window=sensor.next_is_last), t_ns=1)
    return sensor.mean_payload_bytes


@pytest.mark.slow
def test_bench_reports_the_real_mean_of_the_prior_payload(bundle, prior_file):
    from edge.bench import BenchOptions, run_bench
    from edge.bench_report import format_table

    options = BenchOptions(model=str(bundle.path), runtimes=("onnxruntime",), warmup=1, runs=3, loop_frames=16,
                           payload="prior", prior=str(prior_file))
    results, _ = run_bench(options=options)
    p = results["packet"]
    assert "stages_error" not in results and "error" not in results["runtimes"]["onnxruntime"], results
    assert p["payload"] == "prior" and p["variable"] and p["windows"] == 4
    assert p["payload_bytes"] == pytest.approx(expected_prior_mean(bundle, prior_file, 4), abs=0.05)
    assert p["payload_bytes"] != payload_bytes((64, 64), "1bit")          # not the 1-bit size it used to report
    assert p["bytes_per_window"] == pytest.approx(p["payload_bytes"] + OVERHEAD_BYTES)
    assert p["state"]["prior_hash"] and "mean over 4 windows" in format_table(results)
    with pytest.raises(InputError, match="payload prior needs the prior file"):
        BenchOptions(payload="prior")


@pytest.mark.slow
def test_bench_exits_nonzero_when_nothing_was_measured(tmp_path, capsys):
    import argparse

    from edge.bench import add_bench_parser

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    parser = argparse.ArgumentParser(prog="pixelrnn")
    add_bench_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "bench.json"
    out.write_text('{"earlier": "good result"}')
    args = parser.parse_args(["bench", "--task", "gesture", "--runtime", "onnxruntime", "--source", str(junk),
                              "--warmup", "0", "--runs", "1", "--loop-frames", "16", "--json", str(out)])
    assert args.func(args) == 1
    err = capsys.readouterr().err
    assert "nothing was measured" in err and "--json not written" in err
    assert out.read_text() == '{"earlier": "good result"}'          # not replaced by an empty result
