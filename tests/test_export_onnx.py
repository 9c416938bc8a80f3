"""The hand-built ONNX models equal the simulator (sensor, byte for byte) and PyTorch (decoder)."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from onnx import helper

from conftest import need
from export.onnx_export import DOMAIN, SENSOR_OP, build_models, sensor_function, sensor_model, threshold_level
from firmware_sim.frontend import FrontEnd
from firmware_sim.simulate import simulate
from firmware_sim.weights import SensorWeights

CLIPS = {"gesture": "cambridge_test90.npz", "lips": "tulips_test10.npz"}


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the machine is shared; one clip at a time is fast enough
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_each(sess: ort.InferenceSession, name: str, batch: np.ndarray, output: int = 0) -> np.ndarray:
    """The models take one window (batch 1), as the device does: run clip by clip."""
    return np.stack([sess.run(None, {name: item[None]})[output][0] for item in batch])


@pytest.fixture(scope="module", params=["gesture", "lips"])
def case(request, ref_dir, authors_models):
    task = request.param
    model = authors_models[task]
    with np.load(need(ref_dir / CLIPS[task]), allow_pickle=False) as data:
        frames = data["frames"]
    protos = build_models(model=model)
    reference = simulate(weights=model.sensor_weights(), frames=frames, stages=()).readout
    return {"task": task, "model": model, "frames": frames, "protos": protos, "reference": reference,
            "sessions": {name: session(p) for name, p in protos.items()}}


def test_sensor_readout_equals_firmware_sim_byte_for_byte(case):
    readout = run_each(case["sessions"]["sensor.onnx"], "frames", case["frames"])
    assert readout.dtype == np.uint8 and readout.shape == case["reference"].shape
    assert np.array_equal(readout, case["reference"])


def test_host_logits_match_pytorch_decode(case):
    logits = run_each(case["sessions"]["host.onnx"], "readout", case["reference"])
    with torch.no_grad():
        expected = case["model"].decode(torch.from_numpy(case["reference"])).numpy()
    # Same readout, same float32 parameters: the differences are float32 rounding from a different
    # summation order in the 4096-term Linear dot products (and BatchNorm folded differently).
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


def test_full_model_predicts_like_pytorch_and_emits_the_readout(case):
    sess = case["sessions"]["pixelrnn.onnx"]
    assert [o.name for o in sess.get_outputs()] == ["logits", "readout"]
    logits = run_each(sess, "frames", case["frames"], output=0)
    readout = run_each(sess, "frames", case["frames"], output=1)
    with torch.no_grad():
        expected = case["model"](torch.from_numpy(case["frames"])).numpy()
    assert np.array_equal(readout, case["reference"])
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)
    assert np.array_equal(logits.argmax(1), expected.argmax(1))


def test_models_pass_the_full_checker_and_carry_metadata(case):
    model = case["model"]
    for name, proto in case["protos"].items():
        onnx.checker.check_model(proto, full_check=True)
        meta = {p.key: p.value for p in proto.metadata_props}
        assert proto.producer_name == "pixelrnn-edge", name
        assert json.loads(meta["classes"]) == model.config.class_names
        assert meta["task"] == case["task"] and meta["iw"] == "10" and meta["zero_level"] == "127"
        assert meta["sensor_program_hash"] == model.sensor_weights().program_hash()
        assert json.loads(meta["frontend"]) == model.sensor_weights().frontend.to_dict()
        assert "frames uint8 (1,16,64,64)" in meta["input_spec"] and meta["pixelrnn_version"]


def test_sensor_is_one_local_function_of_standard_ops(case):
    for name in ("sensor.onnx", "pixelrnn.onnx"):
        proto = case["protos"][name]
        sensor_nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
        assert [n.op_type for n in sensor_nodes] == [SENSOR_OP]
        assert {o.domain: o.version for o in proto.opset_import}.get(DOMAIN) == 1
        (fn,) = proto.functions
        assert (fn.domain, fn.name) == (DOMAIN, SENSOR_OP)
        ops = {n.op_type for n in fn.node}
        assert all(n.domain == "" for n in fn.node), "function body must use only default-domain ops"
        assert "Sigmoid" not in ops and {"GreaterOrEqual", "Where", "Conv", "MaxPool"} <= ops
    assert len(case["protos"]["sensor.onnx"].graph.node) == 1
    assert not case["protos"]["host.onnx"].functions


def _random_weights(seed: int, *, ties: bool, timesteps: int = 16) -> SensorWeights:
    rng = np.random.default_rng(seed)
    base = SensorWeights.random(rng)
    if ties:  # exact integer thresholds hit pre-activations exactly: sign(0) = +1 must hold
        thresh1, gate = float(rng.integers(0, 4)), float(2 * rng.integers(-2, 3))
    else:
        # 1 + 1e-12 rounds to 1.0 in float32: the export must still decide as float64 does
        thresh1, gate = 1.0 + 1e-12, float(rng.uniform(-4, 4))
    frontend = FrontEnd(mean=float(rng.uniform(0.3, 0.6)), std=float(rng.uniform(0.1, 0.4)),
                        theta0=float(rng.uniform(-0.5, 0.5)))
    return SensorWeights(conv1=base.conv1, thresh1=thresh1, w_fi=base.w_fi, w_fh=base.w_fh,
                         w_oi=base.w_oi, w_oh=base.w_oh, rnn_threshold=gate, frontend=frontend,
                         timesteps=timesteps)


@pytest.mark.parametrize("seed,ties,timesteps", [(0, True, 16), (1, False, 16), (2, True, 16),
                                                 (3, False, 5), (4, True, 1)])
def test_random_weights_sensor_equals_firmware_sim(seed, ties, timesteps):
    weights = _random_weights(seed, ties=ties, timesteps=timesteps)
    rng = np.random.default_rng(100 + seed)
    # blocky random video: pooled values and gate sums cover the whole range, including ties
    coarse = rng.integers(0, 256, size=(4, timesteps, 16, 16), dtype=np.uint8)
    frames = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)
    frames[:2] = rng.integers(0, 256, size=(2, timesteps, 64, 64), dtype=np.uint8)
    proto = sensor_model(sensor=weights)
    onnx.checker.check_model(proto, full_check=True)
    readout = run_each(session(proto), "frames", frames)
    assert np.array_equal(readout, simulate(weights=weights, frames=frames, stages=()).readout)


def _frontend_model(fe: FrontEnd) -> onnx.ModelProto:
    """The sensor function's own front-end nodes, cut out at the binary input ``x_bin``."""
    fn = sensor_function(timesteps=16)
    nodes = []
    for node in fn.node:
        nodes.append(node)
        if "x_bin" in node.output:
            break
    scalar = lambda name, v: onnx.numpy_helper.from_array(np.asarray(v, np.float32), name)  # noqa: E731
    graph = helper.make_graph(
        nodes, "frontend", [helper.make_tensor_value_info("frames", onnx.TensorProto.UINT8, [1, 16, 64, 64])],
        [helper.make_tensor_value_info("x_bin", onnx.TensorProto.FLOAT, [1, 16, 64, 64])],
        initializer=[scalar("input_mean", fe.mean), scalar("input_std", fe.std), scalar("theta0", fe.theta0)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("fe", [FrontEnd(), FrontEnd(mean=116.57 / 255, std=1 / 4.4185),
                                FrontEnd(mean=113.37 / 255, std=1 / 4.4185), FrontEnd(theta0=0.3127),
                                FrontEnd(mean=0.5, std=0.25, theta0=-0.5)])
def test_frontend_binarizes_every_gray_level_like_firmware_sim(fe):
    frames = np.resize(np.arange(256, dtype=np.uint8), (1, 16, 64, 64))
    x_bin = session(_frontend_model(fe)).run(None, {"frames": frames})[0]
    assert np.array_equal(x_bin.astype(np.int8), fe.binarize(frames))


def test_threshold_levels_are_exact_integers():
    assert [threshold_level(v) for v in (0.9976, 1.0, 1.0 + 1e-12, -0.5, -2.0)] == [1.0, 1.0, 2.0, -0.0, -2.0]
    assert threshold_level(1e300) == 1e6 and threshold_level(-1e300) == -1e6  # no float32 overflow
