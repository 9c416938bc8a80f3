"""Decision parity between architectures (used by .ci/aarch64-check; runs on the base install).

    python .ci/aarch64_parity.py make FRAMES.npz [--data DIR]   # on the host: store decoded uint8 frames
    python .ci/aarch64_parity.py run FRAMES.npz OUT.json        # on each architecture: the decisions
    python .ci/aarch64_parity.py compare X86.json ARM.json      # exit 1 on a difference (see below)

The frames are decoded once, on the host, and stored as uint8 arrays, so no video decoder takes part.
Each case feeds them through ``CameraLoop.process_frame`` (front end, simulated sensor, readout
packet, host decoder) with fixed timestamps and no noise, and records per window: the readout the
host decoded (its SHA-256), the decoder's raw float32 logits (bit patterns) and the Decision
without its timings. Compared bit for bit:

- every runtime: the readouts (the simulated sensor's output: the same bytes) and the classes;
- ``onnxruntime`` (the camera loop's default runtime) on a host decoder without convolutions (the
  authors' head: one 1x1 scale, tanh and one matrix product): the decisions (class, label, score, logits
  as the loop reports them) and the raw float32 logits, bit for bit.

A host decoder with convolutions (the small CNN head, ``decoder: cnn``, of the default gesture model)
runs onnxruntime's convolution kernels, which are written per instruction set (AVX2 on x86_64, NEON on
ARM) and sum in another order: measured 2026-12-06, its raw logits differed by up to 1.9e-6 between x86_64
and a Cortex-A72 under qemu, with every class equal. Its readouts and classes are compared bit for bit,
its raw logits within ``LOGIT_TOLERANCE``, as for ``ai-edge-litert``.

``ai-edge-litert`` runs TFLite's XNNPACK kernels (SSE/AVX on x86, NEON on ARM: another summation
order), so its raw logits may differ in the last bits, and a reported logit (rounded to 5 decimals)
by one in the last digit: those are printed, and fail only beyond ``LOGIT_TOLERANCE``.

Cases (frame sets x models x runtimes): the two bundled default models (``gesture``, ``lips``) and
``authors``, the test fixture with the authors' readout (tests/fixtures/authors_bundle/gesture: one
64x64 8-bit map), which has TFLite files (the default bundles are ONNX-only since issue 12):
- ``grid``: GRID lip frames, 64x64 gray, from $PIXELRNN_DATA/grid_s1_digits.npz (if present): the ROI
  is the whole 64x64 frame, so the front end only copies them (no resize, no face detector);
- ``pattern``: frames of the camera loop's test pattern, 320x240 BGR: the front end's gray
  conversion and area resize (OpenCV) take part too.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FRAMES = 96                      # six 16-frame windows per case
FRAME_NS = 33_333_333            # fixed timestamps: 30 frames/s from t = 1 s
RUNTIMES = ("onnxruntime", "ai-edge-litert")
EXACT_RUNTIMES = ("onnxruntime",)   # decisions and raw logits bit for bit (heads without convolutions); the
                                    # others, and convolutional heads, within LOGIT_TOLERANCE
CONV_NODE = b'"\x04Conv'            # an ONNX NodeProto's op_type (field 4, length 4) "Conv", as serialized
LOGIT_TOLERANCE = 1e-4              # ai-edge-litert: measured up to 9e-6 (x86_64 vs a Cortex-A72 under qemu)
UNTIMED = ("window", "class", "label", "score", "bytes", "logits")
MODELS = {"gesture": None, "lips": None,          # None: the package's bundled default of that task
          "authors": REPO / "tests" / "fixtures" / "authors_bundle" / "gesture"}


def make(out: Path, data: Path, frames: int) -> None:
    sys.path.insert(0, str(REPO))
    from edge.capture import TestPattern

    sets = {}
    grid = data / "grid_s1_digits.npz"
    if grid.is_file():
        with np.load(grid, allow_pickle=False) as d:
            clips = d["frames"]                             # (N, 16, 64, 64) uint8
        sets["grid"] = np.ascontiguousarray(clips[:-(-frames // 16)].reshape(-1, 64, 64)[:frames], dtype=np.uint8)
    else:
        print(f"aarch64_parity: no {grid}: the GRID frame set is left out")
    pattern = TestPattern(frames=frames)
    pattern.open()
    sets["pattern"] = np.stack([pattern.read() for _ in range(frames)]).astype(np.uint8)
    np.savez_compressed(out, **sets)
    print("aarch64_parity: stored " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in sets.items()))


def has_convolution(onnx_file: Path) -> bool:
    """Whether the ONNX graph has a Conv node (read from its bytes: the base install has no ``onnx``)."""
    return CONV_NODE in Path(onnx_file).read_bytes()


def exact(case: dict) -> bool:
    """Whether this case's decisions and raw logits must agree bit for bit across architectures."""
    return case["runtime"] in EXACT_RUNTIMES and not case.get("host_convolution", False)


def cases(names: list[str]) -> list[dict]:
    out = []
    for frames in names:
        for model in MODELS:
            task = "lips" if model == "lips" else "gesture"
            if task == "lips" and frames == "pattern":
                continue                    # no face in the pattern: the lips task's mouth ROI needs one
            for runtime in RUNTIMES:
                out.append({"frames": frames, "model": model, "task": task, "runtime": runtime,
                            "roi": "0,0,64,64" if frames == "grid" else "center"})
    return out


def run(frames_file: Path, out: Path) -> None:
    os.environ.pop("PIXELRNN_MODELS", None)          # the package's bundled models
    import cv2
    import onnxruntime

    from edge import CameraLoop, CameraLoopOptions
    from edge.decoder import HostDecoder
    from edge.models import resolve_bundle

    seen: list[tuple[str, list[str]]] = []           # (readout sha256, raw logits) per decoder call
    call = HostDecoder.__call__

    def recording_call(self, readout):
        logits = call(self, readout)
        seen.append((hashlib.sha256(np.ascontiguousarray(readout).tobytes()).hexdigest(),
                     [float(v).hex() for v in np.asarray(logits, dtype=np.float32)]))
        return logits

    HostDecoder.__call__ = recording_call

    with np.load(frames_file, allow_pickle=False) as d:
        sets = {k: d[k] for k in d.files}
    results = []
    for case in cases(sorted(sets)):
        bundle = resolve_bundle(model=MODELS[case["model"]], task=case["task"])
        if case["runtime"] != "onnxruntime" and "tflite" not in bundle.manifest.get("formats", []):
            continue                                 # the bundle has no file for that runtime
        case["host_convolution"] = has_convolution(bundle.path / "host.onnx")
        options = CameraLoopOptions(task=case["task"], runtime=case["runtime"], roi=case["roi"], seed=0)
        decisions = []
        seen.clear()
        with CameraLoop(bundle=bundle, options=options) as loop:
            for i, frame in enumerate(sets[case["frames"]]):
                decision = loop.process_frame(frame, t_ns=1_000_000_000 + i * FRAME_NS)
                if decision is not None:
                    d = decision.to_dict()
                    d["score"] = float(d["score"]).hex()
                    d["logits"] = [float(v).hex() for v in d["logits"]]
                    decisions.append({k: d[k] for k in UNTIMED})
        if len(seen) != len(decisions):
            raise SystemExit(f"aarch64_parity: {len(seen)} decoder calls for {len(decisions)} decisions")
        for d, (readout, raw) in zip(decisions, seen):
            d["readout_sha256"], d["raw_logits"] = readout, raw
        case["decisions"] = decisions
        results.append(case)
    info = {"machine": platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
            "opencv": cv2.__version__, "onnxruntime": onnxruntime.__version__}
    out.write_text(json.dumps({"info": info, "cases": results}, indent=1))
    n = sum(len(c["decisions"]) for c in results)
    print(f"aarch64_parity: {info['machine']}: {n} decisions in {len(results)} cases -> {out}")


def _floats(values: list[str]) -> np.ndarray:
    return np.array([float.fromhex(v) for v in values])


def compare(a_file: Path, b_file: Path) -> int:
    a, b = (json.loads(Path(f).read_text()) for f in (a_file, b_file))
    print(f"aarch64_parity: A {a['info']}\naarch64_parity: B {b['info']}")
    key = lambda c: (c["frames"], c.get("model", c["task"]), c["runtime"])    # noqa: E731
    cases_a, cases_b = {key(c): c for c in a["cases"]}, {key(c): c for c in b["cases"]}
    failures, compared = [], 0
    if cases_a.keys() != cases_b.keys():
        failures.append(f"different cases: {sorted(cases_a)} vs {sorted(cases_b)}")
    for k in sorted(cases_a.keys() & cases_b.keys()):
        name, da, db = "/".join(k), cases_a[k]["decisions"], cases_b[k]["decisions"]
        if len(da) != len(db) or not da:
            failures.append(f"{name}: {len(da)} vs {len(db)} decisions")
            continue
        compared += len(da)
        plain = lambda d: {f: d[f] for f in UNTIMED}          # noqa: E731
        readouts = sum(x["readout_sha256"] == y["readout_sha256"] for x, y in zip(da, db))
        decisions = sum(plain(x) == plain(y) for x, y in zip(da, db))
        classes = sum(x["class"] == y["class"] for x, y in zip(da, db))
        raw = sum(x["raw_logits"] == y["raw_logits"] for x, y in zip(da, db))
        worst = max(float(np.max(np.abs(_floats(x["raw_logits"]) - _floats(y["raw_logits"])))) for x, y in zip(da, db))
        n = len(da)
        print(f"  {name}: {n} windows (classes {[d['class'] for d in da]}): readouts {readouts}/{n} equal, "
              f"decisions {decisions}/{n} equal, raw float32 logits {raw}/{n} equal bit for bit"
              + ("" if raw == n else f" (max |difference| {worst:.3g})"))
        if readouts != n:
            failures.append(f"{name}: {n - readouts} readouts differ (the sensor simulation or the front end)")
        if classes != n:
            failures.append(f"{name}: {n - classes} classes differ")
        if exact(cases_a[k]):
            if decisions != n:
                failures.append(f"{name}: {n - decisions} decisions differ")
            if raw != n:
                failures.append(f"{name}: {n - raw} raw logits differ")
        elif worst > LOGIT_TOLERANCE:
            failures.append(f"{name}: raw logits differ by up to {worst:.3g} (more than {LOGIT_TOLERANCE})")
    for line in failures:
        print(f"aarch64_parity: DIFFERENT: {line}")
    strict = ", ".join(EXACT_RUNTIMES)
    print(f"aarch64_parity: {compared} decisions compared in {len(cases_a)} cases: "
          + (f"readouts and classes equal; {strict} (heads without convolutions): decisions and raw logits "
             f"equal bit for bit; other runtimes and convolutional heads: raw logits within {LOGIT_TOLERANCE}"
             if not failures else "NOT equal"))
    return 1 if failures or not compared else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("out", type=Path)
    p.add_argument("--data", type=Path, default=Path(os.environ.get("PIXELRNN_DATA", REPO.parent / "shared" / "data")))
    p.add_argument("--frames", type=int, default=FRAMES)
    p = sub.add_parser("run")
    p.add_argument("frames", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("compare")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "make":
        make(args.out, args.data, args.frames)
    elif args.cmd == "run":
        run(args.frames, args.out)
    else:
        return compare(args.a, args.b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
