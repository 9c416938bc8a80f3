"""Export of models with another readout layout (core.readout_layout): host.onnx equals
``PixelRNN.decode`` on the layout's levels, the bundle holds sensor.onnx and pixelrnn.onnx too, the
manifest records the layout, ``verify_bundle`` checks it against sensor_weights.npz, and the format
that cannot express a layout yet (SCAMP-5 text) is refused in one line (or skipped, with the reason,
under ``all``; TFLite and LCE of layouts: tests/test_export_layouts_tflite.py; their int8 host:
tests/test_tflite_int8_layout.py); int8 representative readouts of another shape are refused in one line;
calibration on real SCAMP-5 readouts refuses such models. (sensor.onnx and pixelrnn.onnx against
PyTorch and firmware_sim on random layouts: tests/test_export_layouts_onnx.py.)

``build_layout_bundle`` is also used by tests/test_layout_edge.py (the camera loop on these bundles).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from core.bundle import BundleError, verify_bundle  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.readout_layout import ReadoutLayout  # noqa: E402

# name -> the ModelConfig fields of its readout (each a different frames / K / bits / pool / head)
LAYOUTS = {
    "every4_k2_8bit": dict(readout_every=4, out_channels=2, readout_bits=8, readout_pool=1),
    "every2_k1_1bit_pool2": dict(readout_every=2, out_channels=1, readout_bits=1, readout_pool=2),
    "every8_k3_2bit_pool4_mlp": dict(readout_every=8, out_channels=3, readout_bits=2, readout_pool=4,
                                     decoder="mlp", decoder_hidden=32),
    "last_k1_4bit_pool8": dict(readout_every=0, out_channels=1, readout_bits=4, readout_pool=8),
    "every2_k1_1bit_pool2_cnn": dict(readout_every=2, out_channels=1, readout_bits=1, readout_pool=2,
                                     decoder="cnn", decoder_hidden=64),
    "every4_k1_8bit_cnn": dict(readout_every=4, readout_bits=8, decoder="cnn", decoder_hidden=64),
}
CLASSES = ["a", "b", "c", "d", "e"]


def make_layout_model(name: str, seed: int = 0):
    """A random small PixelRNN with the readout of ``LAYOUTS[name]`` (eval mode; BatchNorm statistics
    and the decoder's thresholds made non-trivial, so the decoder is really exercised)."""
    from pixelrnn.model import ModelConfig, PixelRNN

    torch.manual_seed(seed)
    model = PixelRNN(ModelConfig(num_classes=len(CLASSES), classes=list(CLASSES), **LAYOUTS[name]))
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1.0, 1.0)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.5, 0.5)
        if hasattr(model, "thresh3"):
            model.thresh3.uniform_(-0.3, 0.3)
    return model.eval()


def build_layout_bundle(root: Path, name: str, *, seed: int = 0, formats="onnx"):
    """(model, checkpoint path, bundle folder) of ``LAYOUTS[name]``, exported with ``formats``."""
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint

    model = make_layout_model(name, seed)
    ckpt = save_checkpoint(model, root / f"{name}.pt")
    out = root / f"{name}_bundle"
    export_model(weights=ckpt, out=out, formats=formats)
    return model, ckpt, out


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def exported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model, ckpt, out = build_layout_bundle(root, request.param, seed=len(request.param))
    return {"name": request.param, "model": model, "ckpt": ckpt, "bundle": out, "layout": model.config.layout}


@pytest.fixture(scope="module")
def one_exported(tmp_path_factory):
    """One layout's model, checkpoint and bundle, for the checks that need no more."""
    model, ckpt, out = build_layout_bundle(tmp_path_factory.mktemp("one"), "every4_k2_8bit")
    return {"model": model, "ckpt": ckpt, "bundle": out, "layout": model.config.layout}


@pytest.fixture(scope="module")
def one_bundle(one_exported):
    return one_exported["bundle"]


def session(path: Path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and text.strip(), text
    return text


# -- host.onnx ---------------------------------------------------------------------------------------
def test_host_onnx_equals_pytorch_decode(exported):
    layout, model = exported["layout"], exported["model"]
    sess = session(exported["bundle"] / "host.onnx")
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("readout", "tensor(uint8)", [1, *layout.shape])
    assert out.name == "logits" and out.shape == [1, len(CLASSES)]
    rng = np.random.default_rng(1)
    levels = rng.integers(0, layout.max_level + 1, (8, *layout.shape), dtype=np.uint8)
    levels[0], levels[1] = 0, layout.max_level                                      # the range's ends
    got = np.stack([sess.run(None, {"readout": lv[None]})[0][0] for lv in levels])
    with torch.no_grad():
        want = model.decode(torch.from_numpy(levels)).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    meta = {p.key: p.value for p in onnx.load(str(exported["bundle"] / "host.onnx")).metadata_props}
    assert ReadoutLayout.from_dict(json.loads(meta["readout_layout"])) == layout
    assert meta["sensor_program_hash"] == model.sensor_weights().program_hash()


def test_manifest_records_the_layout_and_all_three_onnx_files(exported):
    layout, bundle = exported["layout"], exported["bundle"]
    manifest = verify_bundle(bundle)
    assert ReadoutLayout.from_dict(manifest["readout_layout"]) == layout and not layout.is_authors
    assert set(manifest["files"]) == {"sensor.onnx", "host.onnx", "pixelrnn.onnx", "sensor_weights.npz"}
    assert manifest["formats"] == ["onnx"] and "skipped" not in manifest
    assert f"(1,{','.join(map(str, layout.shape))})" in manifest["preprocessing"]["readout"]
    from edge.models import load_bundle

    loaded = load_bundle(bundle)
    assert loaded.layout == layout and loaded.sensor.program_hash() == manifest["sensor_program_hash"]


def test_the_authors_layout_is_written_as_such(tmp_path):
    """An authors'-layout model writes its layout too (the default), and its sensor program is stored
    exactly as before layouts existed (no layout entry, (5, 5) output kernels)."""
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint
    from pixelrnn.model import ModelConfig, PixelRNN

    torch.manual_seed(0)
    ckpt = save_checkpoint(PixelRNN(ModelConfig(num_classes=3)).eval(), tmp_path / "authors.pt")
    export_model(weights=ckpt, out=tmp_path / "b", formats="onnx")
    manifest = verify_bundle(tmp_path / "b")
    assert ReadoutLayout.from_dict(manifest["readout_layout"]).is_authors and "skipped" not in manifest
    assert {"sensor.onnx", "host.onnx", "pixelrnn.onnx"} <= set(manifest["files"])
    with np.load(tmp_path / "b" / "sensor_weights.npz", allow_pickle=False) as data:
        assert "layout" not in data.files and data["w_oi"].shape == (5, 5)


# -- bad manifests -------------------------------------------------------------------------------------
BAD_LAYOUTS = [
    ({"frames": [16], "channels": 1, "bits": 3, "pool": 1, "step": 0.0, "timesteps": 16}, "readout bits"),
    ("o at 16", "must be a mapping"),
    ({"frames": [17], "timesteps": 16}, "readout frames"),
    ({"frame": [16]}, "unknown readout layout keys"),
    ({"frames": [16], "channels": "2"}, "readout channels"),
    ({"frames": [8], "timesteps": 8}, "is for 8 frames"),
]


def _with_manifest(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    edit(manifest)
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


@pytest.mark.parametrize("bad, message", BAD_LAYOUTS)
def test_a_bad_readout_layout_is_a_one_line_bundle_error(one_bundle, tmp_path, bad, message):
    bundle = _with_manifest(one_bundle, tmp_path / "b", lambda m: m.__setitem__("readout_layout", bad))
    with pytest.raises(BundleError) as info:
        verify_bundle(bundle)
    text = one_line(info)
    assert message in text and "readout_layout" in text and "re-export" in text


def test_a_layout_that_disagrees_with_the_sensor_program_is_refused(exported, tmp_path):
    layout = exported["layout"]
    other = ReadoutLayout.every(4, channels=layout.channels, bits=4 if layout.bits != 4 else 2, pool=layout.pool)
    cases = {"other": lambda m: m.__setitem__("readout_layout", other.to_dict()),
             "absent": lambda m: m.pop("readout_layout"),
             "authors": lambda m: m.__setitem__("readout_layout", ReadoutLayout().to_dict())}
    from edge import CameraLoop

    for case, edit in cases.items():
        bundle = _with_manifest(exported["bundle"], tmp_path / case, edit)
        for check in (verify_bundle, CameraLoop.create_from_bundle):
            with pytest.raises(BundleError) as info:
                check(bundle)
            text = one_line(info)
            assert "inconsistent" in text and layout.describe() in text, (case, text)


# -- formats that cannot express a layout ----------------------------------------------------------------
@pytest.mark.parametrize("formats", ["scamp5", ["onnx", "scamp5"], ["lce", "scamp5"]])
def test_formats_that_cannot_express_a_layout_are_refused(exported, tmp_path, formats):
    from export.api import export_model

    out = tmp_path / "refused"
    with pytest.raises(InputError) as info:
        export_model(weights=exported["ckpt"], out=out, formats=formats)
    text = one_line(info)
    name = formats if isinstance(formats, str) else formats[1]
    assert f"format {name} cannot express this model's readout layout" in text
    assert exported["layout"].describe() in text and "--format onnx" in text
    assert not out.exists() and not list(tmp_path.glob(".refused*"))           # nothing left behind


def test_int8_representative_readouts_of_another_shape_are_refused(exported, tmp_path):
    """int8 is no longer refused for a layout (tests/test_tflite_int8_layout.py quantizes them); the
    authors' 64x64 readouts (or, for the authors' readout with another head, 32x32 maps) are not
    representative of it: one line naming the shape expected and the shape given, before any
    conversion, nothing written."""
    from export.api import export_model

    layout = exported["layout"]
    wrong, expected = ((4, 32, 32), "(N, 64, 64)") if layout.is_authors else \
        ((4, 64, 64), "(N, " + ", ".join(map(str, layout.shape)) + ")")
    bad = tmp_path / "wrong_shape.npz"
    np.savez(bad, readouts=np.zeros(wrong, np.uint8))
    with pytest.raises(InputError) as info:
        export_model(weights=exported["ckpt"], out=tmp_path / "q", formats=["tflite"], int8=True,
                     representative=bad)
    text = one_line(info)
    assert expected in text and f"got {wrong}" in text, text
    if not layout.is_authors:
        assert layout.describe() in text and "--readout-only" in text, text
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q*"))


@pytest.mark.larq
@pytest.mark.slow       # TFLite and LCE conversions
def test_all_skips_what_cannot_express_the_layout_with_the_reason(one_exported, tmp_path):
    """One layout (each TFLite/LCE conversion takes seconds; tests/test_export_layouts_tflite.py covers
    the files on several)."""
    pytest.importorskip("larq")      # ``all`` writes the TFLite and LCE files too
    exported = one_exported
    from export.api import export_model

    result = export_model(weights=exported["ckpt"], out=tmp_path / "all", formats="all")
    manifest = verify_bundle(tmp_path / "all")
    assert result.formats == ("onnx", "tflite", "lce") and manifest["formats"] == ["onnx", "tflite", "lce"]
    assert set(manifest["skipped"]) == {"scamp5"} and manifest["skipped"] == result.skipped
    assert exported["layout"].describe() in manifest["skipped"]["scamp5"]
    assert set(manifest["files"]) == {"sensor.onnx", "host.onnx", "pixelrnn.onnx", "host.tflite", "pixelrnn.tflite",
                                      "pixelrnn_lce.tflite", "sensor_weights.npz"}


def test_a_tflite_runtime_on_an_onnx_only_bundle_says_how_to_get_host_tflite(one_bundle):
    from edge.decoder import HostDecoder
    from edge.models import load_bundle

    with pytest.raises(BundleError) as info:
        HostDecoder(bundle=load_bundle(one_bundle), runtime="ai-edge-litert")
    assert "host.tflite" in one_line(info) and "export the bundle with the tflite format" in str(info.value)


@pytest.mark.larq
@pytest.mark.slow       # TFLite and LCE conversions
def test_export_command_prints_what_was_skipped(one_exported, tmp_path, capsys):
    pytest.importorskip("larq")
    exported = one_exported
    import argparse

    from export.cli import add_export_parser

    parser = argparse.ArgumentParser(prog="pixelrnn")
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--weights", str(exported["ckpt"]), "--out", str(tmp_path / "cli"),
                              "--format", "all"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "skipped scamp5:" in printed and "skipped tflite" not in printed and "skipped lce" not in printed
    assert all(name in printed for name in ("sensor.onnx", "host.onnx", "pixelrnn.onnx", "host.tflite",
                                            "pixelrnn_lce.tflite"))


# -- calibration on real SCAMP-5 readouts: the authors' layout only ----------------------------------------
def test_calibration_refuses_another_layout(exported, tmp_path):
    from calib.decoder import calibrate_decoder
    from calib.int8 import Int8Options, quantize_bundle
    from calib.noise import calibrate_noise

    describe = exported["layout"].describe()
    calls = {"calib decoder": lambda: calibrate_decoder(weights=exported["ckpt"], readouts=tmp_path / "r.npz",
                                                        out=tmp_path / "d.pt"),
             "calib noise": lambda: calibrate_noise(weights=exported["ckpt"], readouts=tmp_path / "r.npz",
                                                    clips=tmp_path / "c.npz", out=tmp_path / "n.json"),
             "calib int8": lambda: quantize_bundle(bundle=exported["bundle"], readouts=tmp_path / "r.npz",
                                                   options=Int8Options(tflite=False))}
    for command, call in calls.items():
        with pytest.raises(InputError) as info:
            call()
        text = one_line(info)
        assert text.startswith(f"{command} calibrates on real SCAMP-5 readouts") and describe in text, text


def test_a_cnn_head_on_the_authors_readout_exports_host_onnx_with_the_authors_input(tmp_path):
    """The authors' readout (o_16, 64x64, 8 bit) with the cnn head: host.onnx keeps the (1, 64, 64)
    input the camera loop feeds for that readout, and equals model.decode (1e-4: float32 sums);
    sensor.onnx and pixelrnn.onnx read out that (1, 64, 64) map too."""
    from export.api import export_model
    from pixelrnn.checkpoint import save_checkpoint
    from pixelrnn.model import ModelConfig, PixelRNN

    torch.manual_seed(3)
    model = PixelRNN(ModelConfig(num_classes=len(CLASSES), classes=list(CLASSES), decoder="cnn", decoder_hidden=64))
    model.eval()
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    export_model(weights=ckpt, out=tmp_path / "b", formats="onnx")
    sess = session(tmp_path / "b" / "host.onnx")
    assert sess.get_inputs()[0].shape == [1, 64, 64]
    levels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    got = np.concatenate([sess.run(None, {"readout": lv[None]})[0] for lv in levels])
    with torch.no_grad():
        want = model.decode(torch.from_numpy(levels)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    manifest = verify_bundle(tmp_path / "b")
    assert {"sensor.onnx", "pixelrnn.onnx"} <= set(manifest["files"]) and "skipped" not in manifest
    full = session(tmp_path / "b" / "pixelrnn.onnx")
    assert [o.shape for o in full.get_outputs()] == [[1, len(CLASSES)], [1, 64, 64]]
