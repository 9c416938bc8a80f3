"""host.tflite, pixelrnn.tflite and pixelrnn_lce.tflite for any readout layout and decoder head (issue 12).

Four fixed layouts with random weights (K 1..2, pool 1/2, 8/2/1 bits, read-out frames every 4th or
the last, the authors' / mlp / cnn heads, and the cnn head on the authors' readout), exported through
``export_model`` into verified bundles: the sensor part's readout levels equal firmware_sim's bit for
bit, and host.tflite / pixelrnn.tflite give ``model.decode`` / ``model(frames)`` and host.onnx's /
pixelrnn.onnx's logits within 1e-4 with the same predicted class, in ai-edge-litert and
tflite-runtime; the bit-packed pixelrnn_lce.tflite (LceBconv2d) gives them in LCE's interpreter. A
property test draws random layouts and weights. The camera loop runs a layout bundle end to end on a
real GRID video with ``--runtime tflite``. SCAMP-5 text is refused in one line, and so is int8
without representative readouts (host_int8.tflite of layouts: tests/test_tflite_int8_layout.py).

Tolerance 1e-4 absolute on float32 logits: the levels and the dequantized o are exact; BatchNorm is
folded into one multiply-add and the Linear layers (up to 8192 inputs) sum in another order than
PyTorch's: measured at most 4.3e-6 on these cases (logits up to ~3), so 1e-4 leaves ~20x margin.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")   # Larq needs Keras 2; set before TensorFlow loads
try:  # tflite-runtime must be loaded before TensorFlow to run in-process (else run_tflite uses a subprocess)
    import tflite_runtime.interpreter  # noqa: F401
except ImportError:
    pass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("larq")

pytestmark = [pytest.mark.larq, pytest.mark.slow]    # TFLite and LCE conversions, ~40 s

from test_export_layouts_onnx import clips, make_model

from conftest import DATA, decode_video, need
from core.bundle import verify_bundle
from core.errors import InputError
from export.tflite import run_tflite
from firmware_sim.simulate import simulate

ATOL = 1e-4
RUNTIMES = ("ai-edge-litert", "tflite-runtime")
VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"
CASES = {   # name -> make_model's readout and head
    "t16_every4_k2_8bit_authors": dict(t=16, every=4, k=2, bits=8, pool=1, step=0.0, decoder="authors"),
    "t8_last_k1_1bit_pool2_mlp": dict(t=8, every=0, k=1, bits=1, pool=2, step=0.0, decoder="mlp"),
    "t8_every4_k2_2bit_pool2_cnn": dict(t=8, every=4, k=2, bits=2, pool=2, step=1.7, decoder="cnn"),
    "t16_authors_readout_cnn": dict(t=16, every=0, k=1, bits=8, pool=1, step=0.0, decoder="cnn"),
}


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text.strip(), text
    return text


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(model, checkpoint, bundle with the onnx, tflite and lce formats) of one case, exported once."""
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp(request.param)
    model = make_model(len(request.param), **CASES[request.param])
    ckpt = save_checkpoint(model, root / "m.pt")
    result = export_model(weights=ckpt, out=root / "bundle", formats=["onnx", "tflite", "lce"])
    return {"name": request.param, "model": model, "ckpt": ckpt, "bundle": root / "bundle", "result": result,
            "layout": model.config.layout, "t": CASES[request.param]["t"]}


def host_levels(layout, n: int = 6) -> np.ndarray:
    """Random levels as the host is fed them ((N, 64, 64) for the authors' readout), with the range's ends."""
    shape = (64, 64) if layout.is_authors else layout.shape
    levels = np.random.default_rng(layout.maps).integers(0, layout.max_level + 1, (n, *shape), dtype=np.uint8)
    levels[0], levels[1] = 0, layout.max_level
    return levels


def onnx_logits(path, inputs: np.ndarray, name: str) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {name: x[None]})[0] for x in inputs])


def test_the_bundle_holds_both_tflite_files_and_verifies(case):
    manifest = verify_bundle(case["bundle"])
    assert manifest["formats"] == ["onnx", "tflite", "lce"] and "skipped" not in manifest
    assert {"host.tflite", "pixelrnn.tflite", "pixelrnn_lce.tflite", "host.onnx"} <= set(manifest["files"])
    assert case["result"].formats == ("onnx", "tflite", "lce")


@pytest.mark.parametrize("runtime", RUNTIMES + ("lce",))      # the edge host's lce runtime runs host.tflite too
def test_host_tflite_equals_decode_and_host_onnx(case, runtime):
    model, layout = case["model"], case["layout"]
    levels = host_levels(layout)
    got = run_tflite(case["bundle"] / "host.tflite", levels, runtime=runtime)
    with torch.no_grad():
        want = model.decode(torch.from_numpy(levels)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=case["name"])
    np.testing.assert_allclose(got, onnx_logits(case["bundle"] / "host.onnx", levels, "readout"), rtol=0, atol=ATOL)
    assert np.array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_pixelrnn_tflite_equals_the_model_and_pixelrnn_onnx(case, runtime):
    model = case["model"]
    frames = clips(np.random.default_rng(5), case["t"])
    got = run_tflite(case["bundle"] / "pixelrnn.tflite", frames, runtime=runtime)
    with torch.no_grad():
        want = model(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=case["name"])
    np.testing.assert_allclose(got, onnx_logits(case["bundle"] / "pixelrnn.onnx", frames, "frames"), rtol=0, atol=ATOL)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_pixelrnn_lce_is_bit_packed_and_equals_the_model(case):
    model = case["model"]
    path = case["bundle"] / "pixelrnn_lce.tflite"
    assert b"LceBconv2d" in path.read_bytes()                          # the binary convolutions are packed
    frames = clips(np.random.default_rng(6), case["t"])
    got = run_tflite(path, frames, runtime="lce")
    with torch.no_grad():
        want = model(torch.from_numpy(frames)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=case["name"])
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_the_tflite_sensor_reads_out_firmware_sims_levels_bit_for_bit(case, tmp_path):
    """pixelrnn.tflite's sensor part alone (export.tflite_layout.sensor_tflite) on gray clips whose
    large |o| reach the upper levels: equal to firmware_sim's readout, every level."""
    from export.tflite_layout import sensor_tflite

    sensor, layout = case["model"].sensor_weights(), case["layout"]
    path = tmp_path / "sensor.tflite"
    path.write_bytes(sensor_tflite(sensor))
    frames = clips(np.random.default_rng(9), case["t"])
    got = run_tflite(path, frames).reshape(len(frames), *layout.shape)
    want = simulate(weights=sensor, frames=frames, stages=()).readout.reshape(len(frames), *layout.shape)
    assert np.array_equal(got, want.astype(np.float32)), case["name"]
    assert len(np.unique(want)) > 1


@st.composite
def layout_cases(draw):
    bits = draw(st.sampled_from([8, 2, 1]))
    return dict(t=8, every=draw(st.sampled_from([0, 4])), k=draw(st.integers(1, 2)), bits=bits,
                pool=draw(st.sampled_from([1, 2])), step=0.0 if bits == 8 else draw(st.sampled_from([0.0, 1.7])),
                decoder=draw(st.sampled_from(["authors", "mlp", "cnn"])))


@settings(max_examples=4, deadline=None)
@given(spec=layout_cases(), seed=st.integers(0, 2**31 - 1))
def test_random_layouts_read_out_exactly_and_decode_as_the_model(spec, seed):
    """Property: for random layouts and weights, the TFLite sensor's levels are firmware_sim's and
    host.tflite on them gives ``model.decode``'s logits (1e-4) and class."""
    from export.onnx_export import layout_decoder_params
    from export.tflite_layout import host_tflite, sensor_tflite

    model = make_model(seed, **spec)
    sensor, layout = model.sensor_weights(), model.config.layout
    frames = clips(np.random.default_rng(seed), spec["t"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"sensor": Path(tmp) / "sensor.tflite", "host": Path(tmp) / "host.tflite"}
        paths["sensor"].write_bytes(sensor_tflite(sensor))
        paths["host"].write_bytes(host_tflite(layout_decoder_params(model)))
        levels = run_tflite(paths["sensor"], frames).reshape(len(frames), *layout.shape)
        want = simulate(weights=sensor, frames=frames, stages=()).readout.reshape(levels.shape)
        assert np.array_equal(levels, want.astype(np.float32)), spec
        readout = want.reshape(len(frames), *host_levels(layout).shape[1:])
        got = run_tflite(paths["host"], readout)
    with torch.no_grad():
        logits = model.decode(torch.from_numpy(readout)).numpy()
    np.testing.assert_allclose(got, logits, rtol=0, atol=ATOL, err_msg=str(spec))
    assert np.array_equal(got.argmax(1), logits.argmax(1))


def test_scamp5_and_int8_without_readouts_are_refused_in_one_line(case, tmp_path):
    """SCAMP-5 text cannot express the layout or head; int8 can (tests/test_tflite_int8_layout.py),
    but only calibrated on readouts: without them export_tflite refuses (uniform random levels
    calibrate a layout's decoder badly), before writing anything."""
    from export.api import export_model
    from export.tflite import export_tflite

    what = "cnn decoder head" if case["layout"].is_authors else case["layout"].describe()
    with pytest.raises(InputError) as info:
        export_model(weights=case["ckpt"], out=tmp_path / "x", formats=["tflite", "scamp5"])
    text = one_line(info)
    assert "format scamp5 cannot express" in text and what in text, text
    with pytest.raises(InputError) as info:
        export_tflite(model=case["model"], out_dir=tmp_path / "y", formats={"tflite"}, int8=True)
    text = one_line(info)
    assert "needs representative readouts" in text and what in text, text
    assert not list(tmp_path.iterdir())                               # nothing written


def test_all_writes_tflite_and_lce_and_skips_scamp5(tmp_path):
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint

    model = make_model(1, **CASES["t8_last_k1_1bit_pool2_mlp"])
    result = export_model(weights=save_checkpoint(model, tmp_path / "m.pt"), out=tmp_path / "all", formats="all")
    manifest = verify_bundle(tmp_path / "all")
    assert result.formats == ("onnx", "tflite", "lce") and manifest["formats"] == ["onnx", "tflite", "lce"]
    assert set(manifest["skipped"]) == {"scamp5"} == set(result.skipped)
    assert model.config.layout.describe() in manifest["skipped"]["scamp5"]
    assert {"host.tflite", "pixelrnn.tflite", "pixelrnn_lce.tflite"} <= set(manifest["files"])


def test_camera_loop_on_a_real_video_with_the_tflite_runtime(tmp_path):
    """CameraLoop on a layout bundle exported with ``--format tflite`` only, host on the ``tflite``
    runtime (and ai-edge-litert by name): a decision per 16 frames of a real GRID video, with the
    model's logits (1e-4) and class on the same preprocessed frames."""
    from edge import CameraLoop
    from edge.roi import make_roi
    from edge.sensor_stage import Preprocessor
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint

    frames = decode_video(need(VIDEO))
    model = make_model(2, **CASES["t16_every4_k2_8bit_authors"])
    export_model(weights=save_checkpoint(model, tmp_path / "m.pt"), out=tmp_path / "b", formats="tflite")
    windows = len(frames) // 16
    pre = Preprocessor(make_roi("center"), size=64)
    images = np.stack([pre(f) for f in frames[:windows * 16]]).reshape(windows, 16, 64, 64)
    with torch.no_grad():
        want = model(torch.from_numpy(images)).numpy()
    for runtime in ("tflite", "ai-edge-litert"):
        with CameraLoop.create_from_bundle(tmp_path / "b", runtime=runtime) as loop:
            decisions = [d for d in (loop.process_frame(f) for f in frames) if d is not None]
        assert windows >= 2 and len(decisions) == windows, runtime
        np.testing.assert_allclose(np.array([d.logits for d in decisions]), want, rtol=0, atol=ATOL, err_msg=runtime)
        assert [d.label for d in decisions] == [model.config.class_names[k] for k in want.argmax(1)]
