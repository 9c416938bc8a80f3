"""sensor.onnx and pixelrnn.onnx for any readout layout (core.readout_layout), issue 12.

Property-based over random layouts (read-out frames, K output kernel pairs, pooling, 8/4/2/1 bits,
custom steps) and random +-1 weights and thresholds: the readout levels of PyTorch, firmware_sim
(fast and packed) and sensor.onnx / pixelrnn.onnx in ONNX Runtime are equal bit for bit, and
pixelrnn.onnx's logits equal the model's within 1e-4 (float32 sums in another order) with the same
predicted class. The pooling and quantization nodes are checked on every pooled value a sensor can
produce (|o| <= 50), and ``pixelrnn export --format all`` of a layout model writes both files.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from core.readout_layout import ReadoutLayout  # noqa: E402
from export.onnx_export import (  # noqa: E402
    DOMAIN,
    LEVELS_INPUT,
    SENSOR_OP,
    _readout_nodes,
    _sensor_constants,
    build_models,
    full_model,
    layout_decoder_params,
    readout_thresholds,
    sensor_function,
    sensor_model,
)
from firmware_sim import fast, packed  # noqa: E402
from firmware_sim.weights import SensorWeights  # noqa: E402

CLASSES = ["a", "b", "c", "d"]
STEPS = (0.0, 0.3, 1 / 3, 1.7, 7.3)        # 0: the layout's default (a power of two)


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_each(sess: ort.InferenceSession, frames: np.ndarray, output: int = 0) -> np.ndarray:
    """One window at a time (batch 1), as the device runs it."""
    return np.stack([sess.run(None, {"frames": clip[None]})[output][0] for clip in frames])


def clips(rng: np.random.Generator, t: int) -> np.ndarray:
    """Three gray clips: per-pixel noise, and 4x4 and 8x8 blocks (large |o|, so the upper levels occur)."""
    out = [rng.integers(0, 256, (t, 64, 64), dtype=np.uint8)]
    for block in (4, 8):
        low = rng.integers(0, 256, (t, 64 // block, 64 // block), dtype=np.uint8)
        out.append(np.repeat(np.repeat(low, block, axis=1), block, axis=2))
    return np.stack(out)


def make_model(seed: int, *, t: int, every: int, k: int, bits: int, pool: int, step: float, decoder: str):
    """A random PixelRNN with that readout (eval mode; thresholds, BatchNorm statistics and the
    decoder's thresh3 made non-trivial)."""
    from pixelrnn.model import ModelConfig, PixelRNN

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = ModelConfig(num_classes=len(CLASSES), classes=list(CLASSES), timesteps=t, readout_every=every,
                         out_channels=k, readout_bits=bits, readout_pool=pool, readout_step=step,
                         decoder=decoder, decoder_hidden=32)
    model = PixelRNN(config)
    with torch.no_grad():
        model.thresh1.fill_(float(rng.uniform(0, 3)))
        model.rnn_threshold.fill_(float(rng.uniform(-3, 3)))
        model.bn.running_mean.uniform_(-1.0, 1.0)
        model.bn.running_var.uniform_(0.5, 2.0)
        if hasattr(model, "thresh3"):
            model.thresh3.uniform_(-0.3, 0.3)
    return model.eval()


@st.composite
def model_cases(draw):
    t = draw(st.sampled_from([4, 8]))
    every = draw(st.sampled_from([0, 1, 2, 4]))
    bits = draw(st.sampled_from([8, 4, 2, 1]))
    return dict(t=t, every=every, k=draw(st.integers(1, 3)), bits=bits, pool=draw(st.sampled_from([1, 2, 4])),
                step=0.0 if bits == 8 else draw(st.sampled_from(STEPS)),
                decoder=draw(st.sampled_from(["authors", "mlp", "cnn"])))


@settings(max_examples=8, deadline=None)
@given(case=model_cases(), seed=st.integers(0, 2**31 - 1))
def test_pytorch_firmware_sim_and_onnx_agree_on_random_layouts(case, seed):
    model = make_model(seed % 1000, **case)
    weights = model.sensor_weights()
    frames = clips(np.random.default_rng(seed), case["t"])
    with torch.no_grad():
        binary = model.binarize_input(torch.from_numpy(frames))
        want = model.readout_levels(model.sensor(binary)[0])
        logits = model(torch.from_numpy(frames)).numpy()
    bits = binary.numpy().astype(np.int8)
    for path in (fast, packed):
        assert np.array_equal(path.run_clips(bits, weights).readout, want), path.__name__
    protos = build_models(model=model)
    for proto in protos.values():
        onnx.checker.check_model(proto, full_check=True)
    sensor, full = session(protos["sensor.onnx"]), session(protos["pixelrnn.onnx"])
    readout = run_each(sensor, frames)
    assert readout.dtype == np.uint8 and readout.shape == want.shape
    assert np.array_equal(readout, want)
    assert np.array_equal(run_each(full, frames, output=1), want)
    got = run_each(full, frames, output=0)
    np.testing.assert_allclose(got, logits, rtol=0, atol=1e-4)
    top2 = np.sort(logits, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2e-4         # the same class wherever float32 sums cannot swap it
    assert np.array_equal(got.argmax(1)[clear], logits.argmax(1)[clear])


@st.composite
def sensor_cases(draw):
    """Any read-out frames (not only every k-th, the last frame not necessarily T), any step."""
    t = draw(st.integers(1, 9))
    frames = draw(st.lists(st.integers(1, t), min_size=1, max_size=4, unique=True))
    bits = draw(st.sampled_from([8, 4, 2, 1]))
    return ReadoutLayout(frames=tuple(sorted(frames)), channels=draw(st.integers(1, 3)), bits=bits,
                         pool=draw(st.sampled_from([1, 2, 4])), timesteps=t,
                         step=0.0 if bits == 8 else draw(st.sampled_from(STEPS)))


@settings(max_examples=25, deadline=None)
@given(layout=sensor_cases(), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_sensor_onnx_equals_fast_and_packed_on_any_schedule(layout, seed, ties):
    rng = np.random.default_rng(seed)
    weights = SensorWeights.random(rng, layout=layout)
    if ties:    # integer thresholds that pre-activations hit exactly: sign(0) = +1 must hold
        weights = dataclasses.replace(weights, thresh1=float(rng.integers(0, 4)),
                                      rnn_threshold=float(2 * rng.integers(-2, 3)))
    frames = clips(rng, layout.timesteps)
    proto = sensor_model(sensor=weights)
    onnx.checker.check_model(proto, full_check=True)
    readout = run_each(session(proto), frames)
    bits = weights.frontend.binarize(frames)
    want = fast.run_clips(bits, weights).readout
    assert readout.shape == want.shape == fast.result_shape(weights, frames.shape) and readout.dtype == np.uint8
    assert np.array_equal(readout, want)
    assert np.array_equal(packed.run_clips(bits, weights).readout, want)


# -- pooling and quantization on every value a sensor can produce ---------------------------------------
def every_pooled_sum(pool: int) -> np.ndarray:
    """(1, M, 64, 64) integer o in [-50, 50] whose pool x pool blocks sum to every S in
    [-50 pool**2, 50 pool**2] (and repeat; M >= 2, so never the authors' single map)."""
    area, side = pool * pool, 64 // pool
    sums = np.arange(-50 * area, 50 * area + 1)
    maps = max(2, -(-len(sums) // (side * side)))
    sums = np.resize(sums, maps * side * side)
    q, r = np.divmod(sums + 50 * area, area)                 # area entries: q - 50, r of them one more
    blocks = (q - 50)[:, None] + (np.arange(area)[None, :] < r[:, None])
    o = blocks.reshape(maps, side, side, pool, pool).transpose(0, 1, 3, 2, 4).reshape(1, maps, 64, 64)
    assert np.abs(o).max() <= 50
    return o.astype(np.float32)


def readout_graph(layout: ReadoutLayout) -> onnx.ModelProto:
    """The sensor function's own readout nodes (and constants), fed o of all read-out frames at once."""
    m = layout.maps
    outs = [f"out_{f - 1}" for f in layout.frames]
    readout = _readout_nodes(layout, outs)
    used = {name for node in readout for name in node.input}
    nodes = [c for c in _sensor_constants(layout) if c.output[0] in used]
    nodes += [helper.make_node("Split", ["o_all"], outs, axis=1)] + readout
    inits = [onnx.numpy_helper.from_array(readout_thresholds(layout).reshape(-1, 1, 1, 1, 1), LEVELS_INPUT)]
    graph = helper.make_graph(nodes, "readout", [helper.make_tensor_value_info("o_all", TensorProto.FLOAT,
                                                                               [1, m, 64, 64])],
                              [helper.make_tensor_value_info("readout", TensorProto.UINT8, [1, *layout.shape])],
                              initializer=inits if layout.bits < 8 else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("pool", [1, 2, 4, 8])
@pytest.mark.parametrize("bits,step", [(8, 0.0), (4, 0.0), (2, 0.0), (1, 0.0), (4, 0.3), (2, 1 / 3),
                                       (4, 7.3), (1, 1.7), (4, 1e-3), (2, 1000.0)])
def test_pooling_and_levels_are_exact_for_every_reachable_value(pool, bits, step):
    o = every_pooled_sum(pool)
    m = o.shape[1]
    layout = ReadoutLayout(frames=tuple(range(1, m + 1)), bits=bits, pool=pool, step=step, timesteps=m)
    got = session(readout_graph(layout)).run(None, {"o_all": o})[0][0]
    want = layout.quantize(layout.pool_maps(o[0].astype(np.float64)))
    assert np.array_equal(got, want)
    area = pool * pool        # every reachable level occurs
    assert set(np.unique(want)) == set(np.unique(layout.quantize(np.arange(-50 * area, 50 * area + 1) / area)))


def test_level_thresholds_agree_with_the_instruction_programs():
    """Where firmware_sim.program.level_thresholds (the exact float64 thresholds, for any o) and the
    graph's (exact on the values a sensor reads out) differ, no readable value lies between them."""
    from firmware_sim.program import level_thresholds

    for layout in (ReadoutLayout(bits=4, step=0.3, pool=2), ReadoutLayout(bits=2, step=1 / 3), ReadoutLayout(bits=1),
                   ReadoutLayout(bits=4, pool=8), ReadoutLayout(bits=2, step=7.3, pool=4)):
        ours, exact = readout_thresholds(layout).astype(np.float64), np.array(level_thresholds(layout))
        area = layout.pool ** 2
        readable = np.arange(-50 * area, 50 * area + 1) / area
        assert np.array_equal((readable[:, None] >= ours).sum(1), (readable[:, None] >= exact).sum(1))
    assert readout_thresholds(ReadoutLayout(bits=4, step=1000.0)).tolist() == [-50.0] * 7 + [0.0] + [1e6] * 7


# -- structure, metadata, refusals ---------------------------------------------------------------------
def test_a_layout_sensor_is_one_local_function_with_the_layouts_output():
    model = make_model(5, t=8, every=4, k=2, bits=2, pool=2, step=0.0, decoder="mlp")
    layout = model.config.layout
    protos = build_models(model=model)
    for name in ("sensor.onnx", "pixelrnn.onnx"):
        proto = protos[name]
        assert [n.op_type for n in proto.graph.node if n.domain == DOMAIN] == [SENSOR_OP]
        (fn,) = proto.functions
        assert all(n.domain == "" for n in fn.node) and "Sigmoid" not in {n.op_type for n in fn.node}
        readout = next(o for o in proto.graph.output if o.name == "readout")
        assert [d.dim_value for d in readout.type.tensor_type.shape.dim] == [1, *layout.shape]
        assert readout.type.tensor_type.elem_type == TensorProto.UINT8
        meta = {p.key: p.value for p in proto.metadata_props}
        assert ReadoutLayout.from_dict(json.loads(meta["readout_layout"])) == layout
        assert "frames uint8 (1,8,64,64)" in meta["input_spec"] and "(1,4,32,32)" in meta["readout_spec"]
        assert meta["sensor_program_hash"] == model.sensor_weights().program_hash()
    host_inputs = protos["host.onnx"].graph.input
    assert [d.dim_value for d in host_inputs[0].type.tensor_type.shape.dim] == [1, *layout.shape]
    assert "input_spec" not in {p.key for p in protos["host.onnx"].metadata_props}


def test_mismatched_layouts_are_one_line_errors():
    model = make_model(6, t=8, every=4, k=1, bits=4, pool=1, step=0.0, decoder="authors")
    other = make_model(6, t=8, every=2, k=1, bits=4, pool=1, step=0.0, decoder="authors")
    with pytest.raises(ValueError, match="the decoder reads") as info:
        full_model(sensor=model.sensor_weights(), decoder=layout_decoder_params(other), metadata={})
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="timesteps=4") as info:
        sensor_function(timesteps=4, layout=model.config.layout)
    assert "\n" not in str(info.value)


@pytest.mark.larq
def test_export_all_of_a_layout_model_writes_sensor_and_full_onnx(tmp_path, capsys):
    pytest.importorskip("larq")      # ``all`` writes the TFLite files too
    from core.bundle import verify_bundle
    from core.cli import main
    from pixelrnn.checkpoint import save_checkpoint

    model = make_model(7, t=8, every=2, k=2, bits=1, pool=4, step=0.0, decoder="authors")
    ckpt = save_checkpoint(model, tmp_path / "m.pt")
    assert main(["export", "--weights", str(ckpt), "--out", str(tmp_path / "b"), "--format", "all"]) == 0
    printed = capsys.readouterr().out
    manifest = verify_bundle(tmp_path / "b")
    assert {"sensor.onnx", "host.onnx", "pixelrnn.onnx", "sensor_weights.npz"} <= set(manifest["files"])
    assert set(manifest["skipped"]) == {"scamp5"} and "skipped sensor.onnx" not in printed
    # the bundle's sensor.onnx feeds its host.onnx what pixelrnn.onnx computes, and equals firmware_sim
    frames = clips(np.random.default_rng(7), 8)[:2]
    load = lambda name: ort.InferenceSession(str(tmp_path / "b" / name), providers=["CPUExecutionProvider"])  # noqa: E731
    readout = run_each(load("sensor.onnx"), frames)
    weights = SensorWeights.from_npz_dict(np.load(tmp_path / "b" / "sensor_weights.npz"))
    assert np.array_equal(readout, fast.run_clips(weights.frontend.binarize(frames), weights).readout)
    host = np.stack([load("host.onnx").run(None, {"readout": r[None]})[0][0] for r in readout])
    np.testing.assert_allclose(run_each(load("pixelrnn.onnx"), frames), host, rtol=0, atol=1e-4)
