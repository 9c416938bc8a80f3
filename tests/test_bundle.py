"""``export_model`` and the bundle: verified checksums, all-or-nothing writes, one-line errors."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conftest import REF, need
from core.errors import InputError
from export.api import FORMATS, export_model, parse_formats
from export.bundle import MANIFEST, BundleError, verify_bundle
from export.cli import add_export_parser, split_formats
from firmware_sim.weights import SensorWeights
from pixelrnn.checkpoint import CheckpointError, save_checkpoint
from pixelrnn.model import ModelConfig, PixelRNN

ONNX_FILES = {"sensor.onnx", "host.onnx", "pixelrnn.onnx"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small checkpoint of our own format (no real data needed)."""
    torch.manual_seed(0)
    model = PixelRNN(ModelConfig(num_classes=4, classes=["one", "two", "three", "four"], task="lips")).eval()
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture(scope="module")
def bundle(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "bundle"
    result = export_model(weights=checkpoint, out=out, formats=["onnx", "scamp5"])
    return out, result


def listing(folder):
    return sorted(os.listdir(folder))


def one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert message and "\n" not in message
    return message


def test_fresh_export_verifies_and_describes_itself(bundle, checkpoint):
    out, result = bundle
    manifest = verify_bundle(out)
    assert set(result.files) == ONNX_FILES | {"weights_scamp5.txt", "sensor_weights.npz", MANIFEST}
    assert set(manifest["files"]) == set(result.files) - {MANIFEST}
    assert all(result.files[name] == (out / name).stat().st_size for name in result.files)
    assert result.formats == ("onnx", "scamp5") and result.seconds > 0
    assert manifest["classes"] == ["one", "two", "three", "four"] and manifest["task"] == "lips"
    pre = manifest["preprocessing"]
    assert pre["input_shape"] == [1, 16, 64, 64] and pre["iw"] == 10 and pre["zero_level"] == 127
    assert pre["timesteps"] == 16 and set(pre["frontend"]) == {"mean", "std", "theta0", "size"}
    with np.load(out / "sensor_weights.npz", allow_pickle=False) as data:
        sensor = SensorWeights.from_npz_dict(data)
    assert manifest["sensor_program_hash"] == sensor.program_hash()
    assert {"pixelrnn-edge", "python", "numpy", "onnx", "onnxruntime", "torch"} <= set(manifest["versions"])
    assert manifest["created"] and manifest["source_weights"] == checkpoint.name
    for name in ONNX_FILES:
        onnx.checker.check_model(str(out / name), full_check=True)
    assert not [n for n in listing(out.parent) if n != "bundle"], "no staging folder left behind"


def test_tampered_missing_and_unreadable(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle[0], copy)
    data = bytearray((copy / "host.onnx").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "host.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="host.onnx .*tampered or corrupt") as err:
        verify_bundle(copy)
    one_line(err)
    (copy / "sensor.onnx").unlink()
    shutil.copy(bundle[0] / "host.onnx", copy / "host.onnx")
    with pytest.raises(BundleError, match="sensor.onnx is missing") as err:
        verify_bundle(copy)
    one_line(err)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="manifest.json is unreadable") as err:
        verify_bundle(copy)
    one_line(err)
    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        verify_bundle(copy)
    assert issubclass(BundleError, InputError)


def test_manifest_cannot_point_outside_the_bundle(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle[0], copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["../secret"] = {"sha256": "0" * 64, "bytes": 1}
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outside the bundle"):
        verify_bundle(copy)


def test_reexport_replaces_a_previous_bundle_and_drops_stale_files(checkpoint, tmp_path):
    out = tmp_path / "b"
    export_model(weights=checkpoint, out=out, formats="onnx")
    export_model(weights=checkpoint, out=out, formats="scamp5")
    assert listing(out) == [MANIFEST, "sensor_weights.npz", "weights_scamp5.txt"]
    verify_bundle(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a previous export bundle") as err:
        export_model(weights=checkpoint, out=out, formats="scamp5")
    one_line(err)
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("kwargs,match", [
    ({"formats": "onnx2"}, "unknown export format 'onnx2'; choose from onnx, tflite, lce, scamp5, all"),
    ({"formats": ["onnx", "ONNX"]}, "unknown export format 'ONNX'"),
    ({"formats": "onnx,scamp5"}, "unknown export format 'onnx,scamp5'"),
    ({"formats": []}, "no export format given"),
    ({"formats": 3}, "formats must be"),
    ({"int8": True}, "int8 applies only to the tflite format"),
    ({"formats": "scamp5", "int8": "yes"}, "int8 must be True or False"),
    ({"formats": "tflite", "int8": True}, "int8 needs representative readouts"),
    ({"formats": "onnx", "representative": "r.npz"}, "used only with --int8"),
])
def test_bad_arguments_are_refused_before_anything_is_written(checkpoint, tmp_path, kwargs, match):
    with pytest.raises(InputError, match=match) as err:
        export_model(weights=checkpoint, out=tmp_path / "out", **kwargs)
    one_line(err)
    assert listing(tmp_path) == []


def test_all_expands_and_order_is_canonical():
    assert parse_formats("all") == FORMATS
    assert parse_formats(["scamp5", "onnx", "scamp5"]) == ("onnx", "scamp5")


@pytest.mark.parametrize("damage", ["junk", "truncated"])
def test_corrupt_checkpoint_is_a_one_line_error(tmp_path, damage):
    bad = tmp_path / "in" / "bad.pt"
    bad.parent.mkdir()
    if damage == "junk":
        bad.write_bytes(b"definitely not a checkpoint")
    else:
        data = need(REF / "pretrained" / "lips_no_noise.pt").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    with pytest.raises(CheckpointError) as err:
        export_model(weights=bad, out=out_parent / "b", formats="all")
    assert "bad.pt" in one_line(err)
    assert listing(out_parent) == []


def test_unwritable_outputs(checkpoint, tmp_path):
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder") as err:
        export_model(weights=checkpoint, out=afile / "bundle")
    one_line(err)
    with pytest.raises(InputError, match="exists and is not a folder"):
        export_model(weights=checkpoint, out=afile)
    with pytest.raises(InputError, match="does not exist"):
        export_model(weights=checkpoint, out=tmp_path / "no" / "such" / "bundle")
    assert listing(tmp_path) == ["file.txt"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_parent(checkpoint, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(InputError, match="cannot write to") as err:
            export_model(weights=checkpoint, out=parent / "bundle")
        one_line(err)
        assert listing(parent) == []
    finally:
        parent.chmod(0o755)


def test_permission_denied_is_a_one_line_error(checkpoint, tmp_path, monkeypatch):
    import core.atomic

    def denied(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(core.atomic.tempfile, "mkdtemp", denied)  # what a read-only parent gives non-root
    with pytest.raises(InputError, match=r"cannot write to .* \(Permission denied\)") as err:
        export_model(weights=checkpoint, out=tmp_path / "bundle")
    one_line(err)
    assert listing(tmp_path) == []


def test_failure_midway_leaves_nothing_behind(checkpoint, tmp_path, monkeypatch):
    import export.scamp5

    def broken(*, model, path):
        path.write_text("half")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(export.scamp5, "write_scamp5_text", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_model(weights=checkpoint, out=tmp_path / "b", formats=["onnx", "scamp5"])
    assert listing(tmp_path) == []
    # an existing previous bundle stays exactly as it was
    monkeypatch.undo()
    export_model(weights=checkpoint, out=tmp_path / "b", formats="scamp5")
    before = {n: (tmp_path / "b" / n).read_bytes() for n in listing(tmp_path / "b")}
    monkeypatch.setattr(export.scamp5, "write_scamp5_text", broken)
    with pytest.raises(RuntimeError):
        export_model(weights=checkpoint, out=tmp_path / "b", formats="scamp5")
    assert {n: (tmp_path / "b" / n).read_bytes() for n in listing(tmp_path / "b")} == before
    assert listing(tmp_path) == ["b"]


def test_tflite_without_tensorflow_is_a_one_line_error(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "export.tflite", None)  # import fails as if TF/Larq were absent
    with pytest.raises(InputError, match=r"format tflite needs TensorFlow/Larq: pip install -c "
                                         r"constraints.txt -e '\.\[larq\]'") as err:
        export_model(weights=checkpoint, out=tmp_path / "b", formats="tflite")
    one_line(err)
    assert listing(tmp_path) == []


def test_cli_prints_files_sizes_and_time(checkpoint, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["export", "--weights", str(checkpoint), "--format", "scamp5",
                              "--out", str(tmp_path / "b")])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "weights_scamp5.txt" in out and "KB" in out and "manifest.json" in out
    assert out.strip().splitlines()[-1].startswith("exported scamp5 to ") and out.rstrip().endswith(" s")
    assert split_formats(None) == ["onnx"]
    assert split_formats(["onnx,scamp5", "lce"]) == ["onnx", "scamp5", "lce"]
    args = parser.parse_args(["export", "--weights", str(checkpoint), "--format", "bogus",
                              "--out", str(tmp_path / "c")])
    with pytest.raises(ValueError, match="unknown export format 'bogus'"):
        args.func(args)
