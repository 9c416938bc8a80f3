"""The decision-parity helper of .ci/aarch64-check (.ci/aarch64_parity.py) on this machine: it must keep
working with the camera loop's API (the check itself needs root and qemu, so it runs rarely), a run must
agree with itself, and the comparison must catch a changed readout, class or onnxruntime logit."""
from __future__ import annotations

import copy
import importlib.util
import json

import pytest

from conftest import REPO

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("aarch64_parity", REPO / ".ci" / "aarch64_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def result(parity, tmp_path_factory):
    from edge.decoder import HostDecoder

    tmp = tmp_path_factory.mktemp("parity")
    call = HostDecoder.__call__
    try:
        parity.make(tmp / "frames.npz", tmp / "no-data", frames=32)     # the test pattern only: no data needed
        parity.run(tmp / "frames.npz", tmp / "a.json")
    finally:
        HostDecoder.__call__ = call                                     # run() wraps it to record raw logits
    return tmp / "a.json"


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def test_a_run_agrees_with_itself(parity, result, capsys):
    data = json.loads(result.read_text())
    runtimes = {c["runtime"] for c in data["cases"]}
    assert "onnxruntime" in runtimes
    for case in data["cases"]:
        assert len(case["decisions"]) == 2                             # 32 frames: two 16-frame windows
        for d in case["decisions"]:
            assert len(d["readout_sha256"]) == 64 and len(d["raw_logits"]) == len(d["logits"])
    assert parity.compare(result, result) == 0
    assert "NOT equal" not in capsys.readouterr().out


def test_a_changed_readout_class_or_logit_is_caught(parity, result, tmp_path, capsys):
    data = json.loads(result.read_text())
    exact = next(i for i, c in enumerate(data["cases"]) if parity.exact(c))
    for change in ("readout", "class", "raw"):
        other = copy.deepcopy(data)
        d = other["cases"][exact]["decisions"][0]
        if change == "readout":
            d["readout_sha256"] = "0" * 64
        elif change == "class":
            d["class"] += 1
        else:                                                           # one ulp in one raw logit
            import numpy as np
            v = np.float32(float.fromhex(d["raw_logits"][0]))
            d["raw_logits"][0] = float(np.nextafter(v, np.float32(np.inf))).hex()
        assert parity.compare(result, _write(tmp_path / f"{change}.json", other)) == 1, change
        assert "NOT equal" in capsys.readouterr().out


def test_other_runtimes_may_differ_in_the_last_bits_only(parity, result, tmp_path):
    data = json.loads(result.read_text())
    loose = [i for i, c in enumerate(data["cases"]) if not parity.exact(c)]
    if not loose:
        pytest.skip("no model with a tflite file")
    for shift, expect in ((1e-6, 0), (1e-3, 1)):
        other = copy.deepcopy(data)
        d = other["cases"][loose[0]]["decisions"][0]
        d["raw_logits"][0] = (float.fromhex(d["raw_logits"][0]) + shift).hex()
        assert parity.compare(result, _write(tmp_path / f"{shift}.json", other)) == expect


def test_a_convolutional_head_is_found_and_compared_within_the_tolerance(parity, result, tmp_path):
    """The default gesture model's CNN head has Conv nodes, the authors' head (lips, the fixture) none:
    onnxruntime's convolution kernels differ per instruction set, so that case's logits may differ in
    the last bits (measured 1.9e-6 between x86_64 and aarch64) but not beyond the tolerance, and its
    classes and readouts not at all."""
    from edge.models import resolve_bundle

    assert parity.has_convolution(resolve_bundle(model=None, task="gesture").path / "host.onnx")
    assert not parity.has_convolution(resolve_bundle(model=None, task="lips").path / "host.onnx")
    assert not parity.has_convolution(parity.MODELS["authors"] / "host.onnx")
    data = json.loads(result.read_text())
    conv = next(i for i, c in enumerate(data["cases"]) if c["runtime"] == "onnxruntime" and c["host_convolution"])
    assert not parity.exact(data["cases"][conv])
    for change, expect in (("1e-6", 0), ("1e-3", 1), ("class", 1), ("readout", 1)):
        other = copy.deepcopy(data)
        d = other["cases"][conv]["decisions"][0]
        if change == "class":
            d["class"] += 1
        elif change == "readout":
            d["readout_sha256"] = "0" * 64
        else:
            d["raw_logits"][0] = (float.fromhex(d["raw_logits"][0]) + float(change)).hex()
        assert parity.compare(result, _write(tmp_path / f"{change}.json", other)) == expect, change
