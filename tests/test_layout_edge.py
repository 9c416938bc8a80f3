"""The camera loop after the sensor with any readout layout (core.readout_layout): the levels
payloads, the packet of a layout's (M*S, S) image, the sensor stage's payload choice and byte
counts, the host decoder on (1, M, S, S), and the whole loop on real video.

Tests marked ``device`` need only numpy, ONNX Runtime and OpenCV (random sensor programs, the
bundled models); the ones on exported layout bundles need torch (tests/test_layout_export.py
builds them) and skip without it.
"""
from __future__ import annotations

import json
import shutil
import struct
import zlib

import numpy as np
import pytest

from conftest import DATA, decode_video, need
from core.bundle import BundleError, verify_bundle
from core.errors import InputError
from core.readout_layout import ReadoutLayout
from edge.packet import (
    HEADER_BYTES,
    OVERHEAD_BYTES,
    PacketDecoder,
    PacketError,
    decode_packet,
    encode_readout,
)
from edge.payloads import (
    choose_layout_payload,
    get_payload,
    layout_image_shape,
    layout_payload_name,
)
from edge.sensor_stage import frames_per_row

MODEL = "0123456789abcdef"
VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"
# (every, K, bits, pool): the three of the brief and a few more corners (M = 64 maps at most)
GRID = [(4, 2, 8, 1), (2, 1, 1, 2), (8, 3, 2, 4), (0, 1, 4, 8), (1, 4, 1, 1), (1, 4, 8, 1), (16, 4, 4, 2)]


def layout_of(every, k, bits, pool) -> ReadoutLayout:
    return ReadoutLayout.every(every, channels=k, bits=bits, pool=pool)


def recrc(data: bytes) -> bytes:
    body = data[:-4]
    return body + struct.pack("!I", zlib.crc32(body) & 0xFFFFFFFF)


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text.strip(), text
    return text


# -- the levels payloads ---------------------------------------------------------------------------------
@pytest.mark.device
@pytest.mark.parametrize("every, k, bits, pool", GRID)
def test_a_layout_travels_as_its_packed_levels(every, k, bits, pool):
    layout = layout_of(every, k, bits, pool)
    levels = np.random.default_rng(bits * 100 + pool).integers(0, layout.max_level + 1, layout.shape, dtype=np.uint8)
    image = levels.reshape(layout_image_shape(layout))
    codec = get_payload(layout_payload_name(layout))
    assert image.shape == (layout.maps * layout.side, layout.side)
    data = encode_readout(image, model_id=MODEL, stream_id=3, seq=0, encoding=codec.name)
    h, w, length = struct.unpack_from("!HHI", data, 32)
    assert (h, w) == image.shape and length == layout.payload_bytes == len(data) - OVERHEAD_BYTES
    assert data[6] == codec.wire_id and data[7] == 0
    assert data[HEADER_BYTES:-4] == layout.pack(levels)                   # exactly ReadoutLayout.pack
    dec = PacketDecoder(expect_model=MODEL, shape=image.shape, encodings=(codec.wire_id,))
    packet = dec.decode(data)
    assert packet is not None and np.array_equal(packet.readout, image)
    assert np.array_equal(layout.unpack(data[HEADER_BYTES:-4]), levels)


@pytest.mark.device
def test_levels_payloads_have_their_own_wire_ids_and_sizes():
    assert {n: get_payload(n).wire_id for n in ("levels4", "levels2", "levels1")} == \
        {"levels4": 20, "levels2": 18, "levels1": 17}
    for bits in (4, 2, 1):
        codec = get_payload(f"levels{bits}")
        assert codec.max_level == 2 ** bits - 1 and not codec.uses_level and not codec.variable
        assert codec.size((5, 7)) == (35 * bits + 7) // 8 and codec.size((1024, 64)) == 1024 * 64 * bits // 8
    assert get_payload("1bit").wire_id == 1 and get_payload("8bit").max_level == 255   # unchanged


@pytest.mark.device
def test_levels_packets_that_do_not_fit_are_rejected_with_a_counted_reason():
    layout = layout_of(8, 3, 2, 4)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4, layout_image_shape(layout), dtype=np.uint8)
    good = encode_readout(image, model_id=MODEL, stream_id=1, seq=0, encoding="levels2")
    bad = {
        "level byte": recrc(good[:7] + b"\x05" + good[8:]),
        "padding": None,
        "length": recrc(good[:36] + struct.pack("!I", layout.payload_bytes - 1) + good[40:-5] + good[-4:]),
        "shape": encode_readout(np.zeros((64, 16), np.uint8), model_id=MODEL, stream_id=1, seq=1,
                                encoding="levels2"),
        "encoding": encode_readout(image, model_id=MODEL, stream_id=1, seq=2, encoding="8bit"),
    }
    # an odd-sized image leaves padding bits in the last byte: set one
    odd = encode_readout(np.ones((5, 7), np.uint8), model_id=MODEL, stream_id=1, seq=0, encoding="levels1")
    bad["padding"] = recrc(odd[:-5] + bytes([odd[-5] | 1]) + odd[-4:])
    expect = {"level byte": "bad_encoding", "padding": "bad_payload", "length": "bad_length",
              "shape": "bad_shape", "encoding": "bad_encoding"}
    for name, data in bad.items():
        shape = (5, 7) if name == "padding" else image.shape
        codec = "levels1" if name == "padding" else "levels2"
        dec = PacketDecoder(expect_model=MODEL, shape=shape, encodings=(get_payload(codec).wire_id,))
        assert dec.decode(data) is None and dec.rejected == {expect[name]: 1}, (name, dec.rejected)
    with pytest.raises(PacketError) as info:
        decode_packet(bad["level byte"])
    assert info.value.reason == "bad_encoding" and "level byte 5" in str(info.value)
    with pytest.raises(ValueError, match="carries levels 0..3"):                       # never truncated
        encode_readout(np.full((4, 4), 4, np.uint8), model_id=MODEL, stream_id=1, seq=0, encoding="levels2")


@pytest.mark.device
def test_the_largest_layout_fits_the_packet():
    layout = layout_of(1, 4, 8, 1)                                   # 16 frames x 4 channels x 64x64, 8 bit
    image = np.random.default_rng(0).integers(0, 256, layout_image_shape(layout), dtype=np.uint8)
    assert image.shape == (4096, 64)
    packet = decode_packet(encode_readout(image, model_id=MODEL, stream_id=1, seq=0), expect_shape=image.shape)
    assert np.array_equal(packet.readout, image) and packet.nbytes == 262_144 + OVERHEAD_BYTES


# -- the sensor stage -------------------------------------------------------------------------------------
def _stage(layout: ReadoutLayout, **options):
    from edge.sensor_stage import SensorOptions, SensorStage
    from firmware_sim.weights import SensorWeights

    weights = SensorWeights.random(np.random.default_rng(layout.bits), layout=layout)
    return SensorStage(weights=weights, options=SensorOptions(stream_id=9, **options))


@pytest.mark.device
@pytest.mark.parametrize("every, k, bits, pool", GRID[:4])
def test_sensor_stage_sends_the_layout_in_its_own_payload(every, k, bits, pool):
    layout = layout_of(every, k, bits, pool)
    stage = _stage(layout)
    assert stage.codec.name == layout_payload_name(layout) and stage.mean_payload_bytes == layout.payload_bytes
    frames = np.random.default_rng(1).integers(0, 256, (32, 64, 64), dtype=np.uint8)
    packets = [p for p in (stage.push(f, t_ns=i + 1) for i, f in enumerate(frames)) if p is not None]
    assert len(packets) == 2 and stage.windows == 2
    for p in packets:
        assert len(p) == OVERHEAD_BYTES + layout.payload_bytes and p[6] == stage.codec.wire_id
        assert struct.unpack_from("!HH", p, 32) == layout_image_shape(layout)
    assert stage.payload_bytes == 2 * layout.payload_bytes and stage.last_readout.shape == layout_image_shape(layout)
    view = stage.last_view                             # a grid of frame blocks, each a frame's K maps side by side
    r, s = len(layout.frames), layout.side
    per_row = frames_per_row(r, k)
    assert view.shape == (r // per_row * s, per_row * k * s) and view.dtype == np.uint8
    maps = stage.last_readout.reshape(r, k, s, s).astype(np.uint16) * 255 // layout.max_level
    for f in range(r):                  # frame f, channel c: block (f // per_row, f % per_row * k + c)
        for c in range(k):
            y, x = f // per_row * s, (f % per_row * k + c) * s
            np.testing.assert_array_equal(view[y:y + s, x:x + s], maps[f, c])
    info = stage.layout_summary()["readout_layout"]
    assert ReadoutLayout.from_dict({k_: info[k_] for k_ in ReadoutLayout().to_dict()}) == layout
    assert layout_of(8, 3, 2, 4).payload_bytes == 384 and layout_of(2, 1, 1, 2).payload_bytes == 1024


@pytest.mark.device
def test_a_payload_that_cannot_carry_the_layout_is_a_one_line_error():
    layout = layout_of(2, 1, 1, 2)
    with pytest.raises(InputError) as info:
        _stage(layout, payload="1bit")
    text = one_line(info)
    assert layout.describe() in text and "levels1" in text and "8bit (the default)" in text
    with pytest.raises(InputError) as info:
        _stage(layout, payload="levels4")
    assert layout.describe() in one_line(info)
    assert _stage(layout, payload="levels1").codec.name == "levels1"
    assert choose_layout_payload(layout_of(4, 2, 8, 1), "8bit") == "8bit"
    with pytest.raises(InputError) as info:                                     # prior: the authors' only
        choose_layout_payload(layout_of(4, 2, 8, 1), "prior")
    assert "its layout is sent as 8bit" in one_line(info)
    with pytest.raises(InputError) as info:
        choose_layout_payload(ReadoutLayout(), "levels2")
    assert "authors' 8-bit readout" in one_line(info)
    assert [choose_layout_payload(ReadoutLayout(), p) for p in ("8bit", "1bit", "prior")] == ["8bit", "1bit", "prior"]


@pytest.mark.device
def test_a_readout_too_big_for_a_udp_datagram_is_refused_before_the_run(tmp_path):
    from edge.capture import TestPattern
    from edge.link import LinkSpec
    from edge.models import Bundle
    from edge.pipeline import PipelineOptions, run_pipeline
    from firmware_sim.weights import SensorWeights

    layout = layout_of(1, 4, 8, 1)                                             # 262,144 B per window
    weights = SensorWeights.random(np.random.default_rng(0), layout=layout)
    bundle = Bundle(path=tmp_path, manifest={}, sensor=weights)
    with pytest.raises(InputError) as info:
        run_pipeline(source=TestPattern(frames=16), bundle=bundle,
                     options=PipelineOptions(link=LinkSpec(kind="udp"), roi="center"))
    assert "does not fit one UDP datagram" in one_line(info) and layout.describe() in str(info.value)


@pytest.mark.device
def test_bench_reports_a_layouts_bytes_per_window():
    from edge.bench import packet_report
    from edge.bench_report import packet_line
    from edge.payloads import PayloadOptions

    layout = layout_of(8, 3, 2, 4)
    p = packet_report(PayloadOptions(name="levels2").open(), {"windows": 4}, size=64, timesteps=16, layout=layout)
    assert p["payload"] == "levels2" and p["payload_bytes"] == 384 and p["bytes_per_window"] == 384 + OVERHEAD_BYTES
    assert p["ratio_64"] == 16 * 4096 / (384 + OVERHEAD_BYTES) and p["readout_layout"]["packet_shape"] == [96, 16]
    assert f"{384 + OVERHEAD_BYTES} bytes per window (levels2, fixed; readout {layout.describe()})" in packet_line(p)
    authors = packet_report(PayloadOptions().open(), {}, size=64, timesteps=16)
    assert authors["bytes_per_window"] == 4140 and "readout_layout" not in authors


@pytest.mark.device
def test_the_overlay_keeps_a_grid_of_maps_in_proportion():
    from edge.display import draw_overlay

    frame = np.zeros((240, 320, 3), np.uint8)
    grid = np.full((32, 96), 200, np.uint8)                                    # 2 frames x 3 channels of 16
    img = draw_overlay(frame, decision=None, fps=1.0, link_bps=0.0, readout=grid, roi=None)
    corner = img[-120:, -120:, 0]                                              # the view's 120x120 corner
    lit = np.argwhere(corner == 200)
    assert len(lit) == 120 * 40 and lit[:, 0].min() == 80 and lit[:, 1].min() == 0     # 3:1, bottom right


# -- bundles: the manifest's layout -------------------------------------------------------------------------
@pytest.mark.device
def test_a_bundle_without_a_layout_has_the_authors_and_a_wrong_one_is_refused(authors_bundle, bundled_models,
                                                                             tmp_path):
    from edge.models import load_bundle

    src = authors_bundle / "gesture"
    assert "readout_layout" not in json.loads((src / "manifest.json").read_text())      # absent: the authors'
    assert load_bundle(src).layout.is_authors
    for task in ("lips", "gesture"):            # the default models (issue 12) state their own layouts
        stated = json.loads((bundled_models / task / "manifest.json").read_text())["readout_layout"]
        assert load_bundle(bundled_models / task).layout == ReadoutLayout.from_dict(stated)
    for name, layout, ok in (("authors", ReadoutLayout(), True), ("other", layout_of(4, 2, 8, 1), False),
                             ("bad", {"bits": 5}, False)):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest["readout_layout"] = layout.to_dict() if isinstance(layout, ReadoutLayout) else layout
        (dst / "manifest.json").write_text(json.dumps(manifest))
        if ok:
            assert verify_bundle(dst)["readout_layout"] == ReadoutLayout().to_dict()
            continue
        with pytest.raises(BundleError) as info:
            verify_bundle(dst)
        assert "readout_layout" in one_line(info)


# -- the whole loop on exported layout bundles (torch builds them) ---------------------------------------------
@pytest.fixture(scope="module", params=["every4_k2_8bit", "every2_k1_1bit_pool2", "every8_k3_2bit_pool4_mlp"])
def layout_bundle(request, tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from test_layout_export import build_layout_bundle

    root = tmp_path_factory.mktemp(request.param)
    model, _, path = build_layout_bundle(root, request.param, seed=3)
    return {"name": request.param, "model": model, "path": path, "layout": model.config.layout}


def test_sensor_packets_host_decoder_equal_the_model(layout_bundle):
    """frames -> SensorStage -> packet bytes -> PacketDecoder -> HostDecoder (ONNX Runtime): the
    logits of ``model(frames)`` within 1e-4, the same class, a payload of exactly the layout's size."""
    import torch

    from edge.decoder import HostDecoder
    from edge.host import HostStage
    from edge.models import load_bundle
    from edge.sensor_stage import SensorOptions, SensorStage

    layout, model = layout_bundle["layout"], layout_bundle["model"]
    bundle = load_bundle(layout_bundle["path"])
    stage = SensorStage(weights=bundle.sensor, options=SensorOptions(stream_id=5))
    decoder = HostDecoder(bundle=bundle, runtime="onnxruntime")
    assert decoder.input_shape == (1, *layout.shape) and decoder.shape == layout_image_shape(layout)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:64, :64]
    clips = np.stack([rng.integers(0, 256, (16, 64, 64)),
                      np.stack([(xx * 4 + t * 9) % 256 for t in range(16)]),             # a moving ramp
                      np.stack([np.where((xx - 8 - 2 * t) ** 2 + (yy - 32) ** 2 < 150, 230, 30) for t in range(16)])
                      ]).astype(np.uint8)
    with torch.no_grad():
        want = model(torch.from_numpy(clips)).numpy()
    dec = PacketDecoder(expect_model=bundle.model_id, shape=decoder.shape, encodings=decoder.encodings)
    got = []
    for clip in clips:
        packets = [stage.push(frame, t_ns=1) for frame in clip]
        assert all(p is None for p in packets[:-1]) and packets[-1] is not None
        data = packets[-1]
        assert len(data) - OVERHEAD_BYTES == layout.payload_bytes                # bytes that crossed
        packet = dec.decode(data)
        assert packet is not None and packet.readout.shape == layout_image_shape(layout)
        assert packet.readout.max() <= layout.max_level
        got.append(decoder(packet.readout))
    got = np.stack(got)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1)) and dec.rejected == {}
    # the host stage takes this layout's payload and shape only
    host = HostStage(decoder=decoder, expect_model=bundle.model_id)
    wrong = {"levels4" if layout.bits != 4 else "levels2": "bad_encoding"}
    if layout.bits != 8:
        wrong["8bit"] = "bad_encoding"
    for name, reason in wrong.items():
        image = np.zeros(layout_image_shape(layout), np.uint8)
        data = encode_readout(image, model_id=bundle.model_id, stream_id=5, seq=10, encoding=name)
        assert host.handle(data) is None and host.packets.rejected[reason] >= 1
    square = encode_readout(np.zeros((64, 64), np.uint8), model_id=bundle.model_id, stream_id=5, seq=11,
                            encoding=layout_payload_name(layout))
    assert host.handle(square) is None and host.packets.rejected["bad_shape"] == 1


def test_camera_loop_on_a_real_video(layout_bundle):
    """CameraLoop.create_from_bundle on a layout bundle: a decision per 16 frames of a decoded real
    video, with the logits of the model on the same preprocessed frames."""
    import torch

    from edge import CameraLoop
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor

    frames = decode_video(need(VIDEO))
    layout, model = layout_bundle["layout"], layout_bundle["model"]
    with CameraLoop.create_from_bundle(layout_bundle["path"]) as loop:
        assert loop.roi == "center"
        decisions = [d for d in (loop.process_frame(f) for f in frames) if d is not None]
    windows = len(frames) // 16
    assert windows >= 2 and len(decisions) == windows
    pre = Preprocessor(make_roi("center"), size=64)
    images = np.stack([pre(f) for f in frames[:windows * 16]]).reshape(windows, 16, 64, 64)
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    got = np.array([d.logits for d in decisions])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert [d.label for d in decisions] == [model.config.class_names[k] for k in want.argmax(1)]
    assert all(d.bytes == layout.payload_bytes + OVERHEAD_BYTES for d in decisions)
    assert [d.window for d in decisions] == list(range(windows))


def test_run_summary_counts_the_layouts_bytes(layout_bundle):
    from edge import CameraLoop

    layout = layout_bundle["layout"]
    with CameraLoop.create_from_bundle(layout_bundle["path"], max_frames=48) as loop:
        result = loop.run("test")
    s = result.summary
    per_window = layout.payload_bytes + OVERHEAD_BYTES
    assert s["windows"] == 3 and s["decisions"] == 3 and s["malformed"] == {}
    assert s["payload"] == layout_payload_name(layout)
    b = s["bytes"]
    assert b["payload_per_window"] == layout.payload_bytes and b["per_window"] == per_window
    assert b["sent"] == 3 * per_window + OVERHEAD_BYTES                              # + the end packet
    assert b["ratio_64"] == round(16 * 4096 / per_window, 2)
    assert s["readout_layout"]["describe"] == layout.describe()
    if layout.bits == 1:            # and over UDP, to a host process that loads the bundle itself
        got = []
        with CameraLoop.create_from_bundle(layout_bundle["path"], max_frames=32, link="udp://127.0.0.1:0") as loop:
            s = loop.run("test", on_decision=got.append).summary
        assert len(got) == 2 and s["malformed"] == {} and s["drops"]["lost_windows"] == 0
        assert s["bytes"]["payload_per_window"] == layout.payload_bytes and s["payload"] == "levels1"
    with pytest.raises(InputError) as info:
        CameraLoop.create_from_bundle(layout_bundle["path"], payload="prior", prior="x.npz").process_frame(
            np.zeros((64, 64), np.uint8))
    assert layout.describe() in one_line(info)


@pytest.mark.slow
def test_bench_on_a_layout_bundle(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from test_layout_export import build_layout_bundle

    from edge.bench import BenchOptions, run_bench

    model, _, path = build_layout_bundle(tmp_path, "every8_k3_2bit_pool4_mlp", seed=3)
    results, _ = run_bench(options=BenchOptions(model=str(path), runtimes=("onnxruntime",),
                                                warmup=1, runs=4, loop_frames=32))
    p, layout = results["packet"], model.config.layout
    assert "stages_error" not in results, results.get("stages_error")
    assert p["payload"] == "levels2" and p["bytes_per_window"] == layout.payload_bytes + OVERHEAD_BYTES
    r = results["runtimes"]["onnxruntime"]
    assert "error" not in r, r
    assert r["loop"]["windows"] == 2 and r["threads"]["1"]["host"]["n"] == 4
