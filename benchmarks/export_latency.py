"""Per-inference latency of the exported host and full graphs in every runtime, 1 thread, side by side.

Exports a checkpoint (``pixelrnn export --format all``, in a subprocess so this process never loads
TensorFlow: tflite-runtime must be imported first), then times one inference at a time on real clips
and their simulated readouts, round-robin over the runtimes so that machine noise hits all of them
alike. Reports median and p99 in microseconds.

    python benchmarks/export_latency.py --runs 300 --write docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import tflite_runtime.interpreter as tflite_rt  # noqa: I001  (before anything that may load TensorFlow)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks._common import cpu_name, update_section  # noqa: E402
from edge.tables import markdown_table  # noqa: E402

DATA = Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data"))


def tflite_runner(interp_cls, path: Path):
    interp = interp_cls(model_path=str(path), num_threads=1)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    # the full model has two outputs (logits, readout) in some exports: take the logits
    outs = interp.get_output_details()
    out = next((o for o in outs if o["shape"][-1] != 64), out)

    def run(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]).reshape(inp["shape"]))
        interp.invoke()
        return interp.get_tensor(out["index"])
    return run


def ort_runner(path: Path):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = [o.name for o in sess.get_outputs() if o.name == "logits"] or [sess.get_outputs()[0].name]
    return lambda x: sess.run(logits, {name: x[None]})[0]


def lce_runner(path: Path):
    from larq_compute_engine import testing
    interp = testing.Interpreter(path.read_bytes(), num_threads=1)
    return lambda x: interp.predict(x[None])


def torch_runners(weights: Path):
    import torch

    from pixelrnn.checkpoint import load_model
    torch.set_num_threads(1)
    model = load_model(weights)

    def host(x):
        with torch.no_grad():
            return model.decode(torch.from_numpy(x[None])).numpy()

    def full(x):
        with torch.no_grad():
            return model(torch.from_numpy(x[None])).numpy()
    return host, full


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=Path, default=DATA / "pixelrnn_ref" / "pretrained" / "cam_noise.pt")
    ap.add_argument("--clips", type=Path, default=DATA / "pixelrnn_ref" / "cambridge_test90.npz")
    ap.add_argument("--runs", type=int, default=300, help="timed inferences per runtime and graph")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--write", type=Path, default=None, help="update the section in this markdown file")
    args = ap.parse_args()
    from ai_edge_litert.interpreter import Interpreter as LiteRT

    from firmware_sim.clips import load_clips
    from firmware_sim.simulate import simulate
    from firmware_sim.weights import SensorWeights

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pixelrnn.cli", "export", "--weights", str(args.weights),
                        "--format", "all", "--out", str(bundle)], cwd=REPO, check=True, capture_output=True)
        export_s = time.perf_counter() - t0
        clips = load_clips(args.clips).frames
        with np.load(bundle / "sensor_weights.npz", allow_pickle=False) as d:
            sensor = SensorWeights.from_npz_dict(d)
        readouts = simulate(weights=sensor, frames=clips, stages=()).readout
        th, tf_ = torch_runners(args.weights)
        runners = {
            ("host", "PyTorch"): th, ("full", "PyTorch"): tf_,
            ("host", "ONNX Runtime"): ort_runner(bundle / "host.onnx"),
            ("full", "ONNX Runtime"): ort_runner(bundle / "pixelrnn.onnx"),
            ("host", "ai-edge-litert"): tflite_runner(LiteRT, bundle / "host.tflite"),
            ("full", "ai-edge-litert"): tflite_runner(LiteRT, bundle / "pixelrnn.tflite"),
            ("host", "tflite-runtime"): tflite_runner(tflite_rt.Interpreter, bundle / "host.tflite"),
            ("full", "tflite-runtime"): tflite_runner(tflite_rt.Interpreter, bundle / "pixelrnn.tflite"),
            ("full", "LCE (bit-packed)"): lce_runner(bundle / "pixelrnn_lce.tflite"),
        }
        sizes = {p.name: p.stat().st_size for p in bundle.iterdir()}
        times: dict = {k: [] for k in runners}
        for i in range(args.warmup + args.runs):
            j = i % len(clips)
            for key, run in runners.items():
                x = readouts[j] if key[0] == "host" else clips[j]
                t = time.perf_counter_ns()
                run(x)
                dt = time.perf_counter_ns() - t
                if i >= args.warmup:
                    times[key].append(dt / 1000)
    rows = markdown_table(("graph", "runtime", "median (us)", "p99 (us)"),
                          ((graph, runtime, f"{np.median(ts):,.1f}", f"{np.percentile(ts, 99):,.1f}")
                           for (graph, runtime), ts in times.items()))
    text = "\n".join([
        f"Measured {date.today().isoformat()} on {cpu_name()} ({os.cpu_count()} cores, shared), "
        f"Python {platform.python_version()}, 1 thread per runtime, {args.runs} timed inferences each "
        f"after {args.warmup} warm-up, round-robin over runtimes; weights `{args.weights.name}`; host = "
        f"readout (64x64 uint8) -> logits, full = 16 frames -> logits.", "",
        f"Command: `python benchmarks/export_latency.py --runs {args.runs} --write docs/BENCHMARKS.md`", "",
        *rows, "",
        f"Export of all formats took {export_s:.1f} s (one `pixelrnn export --format all`, TensorFlow "
        f"start-up included). File sizes: "
        + ", ".join(f"{n} {s / 1024:.0f} KB" for n, s in sorted(sizes.items())) + ".",
        "Round-robin means every call starts with caches holding another runtime's graph: these are "
        "cold-cache latencies, including Python call overhead. The edge benchmark below calls one "
        "graph repeatedly (warm caches), as the camera loop does. "
        "LCE has no optimized x86 kernels in its Python wheel (reference kernels); its number says "
        "nothing about an aarch64 device running LCE's C++ runtime.",
    ])
    print(text)
    if args.write:
        update_section(args.write, "export_latency", text, heading="Exported graphs: latency per inference (issue 4)")
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
