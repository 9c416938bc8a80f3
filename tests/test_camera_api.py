"""The camera loop's Python API (edge.api): options, task defaults, the two running modes agreeing,
closing, errors that name options (not flags), Decision's JSON form, and the script without
sys.path rewriting."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, REPO, decode_video, need

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"
JSON_KEYS = ["window", "class", "label", "score", "latency_ms", "host_us", "bytes", "logits"]
TIMING = ("latency_ms", "host_us")           # differ from run to run; everything else must not


@pytest.fixture
def bundled(monkeypatch):
    """The package's bundled default models (pixelrnn/models/<task>), not $PIXELRNN_MODELS."""
    from edge.models import models_root

    monkeypatch.delenv("PIXELRNN_MODELS", raising=False)
    root = models_root()
    for task in ("lips", "gesture"):
        if not (root / task / "manifest.json").is_file():
            pytest.skip(f"no bundled {task} model at {root / task}")
    return root


@pytest.fixture(scope="module")
def grid_frames() -> list[np.ndarray]:
    frames = decode_video(need(VIDEO))
    assert len(frames) >= 16, f"{VIDEO} decoded to {len(frames)} frames"
    return frames


def untimed(decision) -> dict:
    return {k: v for k, v in decision.to_dict().items() if k not in TIMING}


# -- task defaults ---------------------------------------------------------------------------------
def test_bundled_lips_model_gets_the_mouth_roi(bundled):
    from edge import CameraLoop, CameraLoopOptions

    with CameraLoop.create_from_options(CameraLoopOptions(task="lips")) as loop:
        assert loop.task == "lips" and loop.roi == "mouth"
    with CameraLoop.create_from_options(CameraLoopOptions()) as loop:          # the default task
        assert loop.task == "gesture" and loop.roi == "center"
    with CameraLoop.create_from_bundle(bundled / "lips", roi="10,20,30,30") as loop:
        assert loop.roi == (10, 20, 30, 30)                                      # an explicit roi wins


def test_run_pipeline_applies_the_task_roi(bundled):
    """A lips bundle driven through edge.pipeline without a roi gets the mouth ROI, not the centre."""
    from edge.capture import TestPattern
    from edge.models import load_bundle
    from edge.pipeline import PipelineOptions, run_pipeline

    got = []
    result = run_pipeline(source=TestPattern(frames=16), bundle=load_bundle(bundled / "lips"),
                          options=PipelineOptions(), on_decision=got.append)
    assert result.summary["roi"]["mode"] == "mouth" and result.summary["windows"] == 1
    assert len(got) == 1 and type(got[0]).__name__ == "Decision"


def test_summary_reports_the_mouth_detector_and_step_mode_closes_it(bundled, grid_frames):
    """The run summary says how the mouth ROI's face detector ran (thread or synchronous, its
    counters), the printed summary has an roi line, and closing a CameraLoop used frame by frame
    stops the detector thread it started."""
    import threading

    from edge import CameraLoop, CameraLoopOptions
    from edge.roi import MouthOptions
    from edge.run_camera import format_summary

    def detector_threads():
        return [t for t in threading.enumerate() if t.name == "mouth-roi-detector" and t.is_alive()]

    before = len(detector_threads())
    loop = CameraLoop.create_from_options(CameraLoopOptions(task="lips", mouth=MouthOptions(threaded=True)))
    for frame in grid_frames[:16]:
        loop.process_frame(frame)
    assert len(detector_threads()) == before + 1
    roi = loop._stream.pre.roi              # held, as a caller's reference would: no garbage collection
    loop.close()
    assert len(detector_threads()) == before and roi._closed      # closed by close(), not by the GC

    with CameraLoop.create_from_options(CameraLoopOptions(task="lips", mouth=MouthOptions(threaded=True))) as loop:
        result = loop.run(str(VIDEO))
    roi = result.summary["roi"]
    # how many runs the low-priority detector thread gets through before a file ends depends on the load
    assert roi["mode"] == "mouth" and roi["detector"] == "thread" and roi["errors"] == 0
    assert all(isinstance(roi[k], int) and roi[k] >= 0 for k in ("runs", "replaced_frames", "face_detections"))
    assert roi["busy_ms"] >= 0 and roi["face_detections"] <= roi["runs"]
    assert "  roi: mouth (face detector thread: " in format_summary(result)
    with CameraLoop.create_from_options(CameraLoopOptions(task="gesture", max_frames=16)) as loop:
        result = loop.run("test")
    assert result.summary["roi"] == {"mode": "center", "fallback_frames": 0}
    assert "  roi: center\n" in format_summary(result) + "\n"


# -- the two running modes -----------------------------------------------------------------------------
def test_process_frame_decides_every_16_frames_and_matches_run(bundled, grid_frames):
    from edge import CameraLoop, CameraLoopOptions, Decision

    with CameraLoop.create_from_options(CameraLoopOptions(task="lips")) as loop:
        stepped = {i: loop.process_frame(frame) for i, frame in enumerate(grid_frames)}
        decided = [i for i, d in stepped.items() if d is not None]
        assert decided == [i for i in range(len(grid_frames)) if i % 16 == 15]
        streamed: list[Decision] = []
        result = loop.run(str(VIDEO), on_decision=streamed.append)
    assert result.end == "eof" and result.summary["roi"]["mode"] == "mouth"
    assert result.summary["frames"] == len(grid_frames)
    decisions = [stepped[i] for i in decided]
    assert all(isinstance(d, Decision) for d in decisions + streamed)
    assert [d.window for d in decisions] == list(range(len(decided)))
    assert [untimed(d) for d in decisions] == [untimed(d) for d in streamed]


def test_decision_to_dict_is_the_script_json(bundled, grid_frames):
    from edge import CameraLoop, Decision

    with CameraLoop.create_from_bundle(bundled / "lips") as loop:
        decision = [d for f in grid_frames[:16] if (d := loop.process_frame(f)) is not None][0]
    data = decision.to_dict()
    assert list(data) == JSON_KEYS
    assert json.loads(json.dumps(data)) == data and isinstance(data["logits"], list)
    assert data["class"] == decision.class_index and data["label"] in loop.classes
    assert Decision.from_dict(data) == decision
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.score = 1.0


# -- lifecycle and errors ------------------------------------------------------------------------------
def test_context_manager_closes(bundled):
    from edge import CameraLoop

    frame = np.zeros((48, 64, 3), np.uint8)
    with CameraLoop.create_from_bundle(bundled / "gesture") as loop:
        assert loop.process_frame(frame) is None and not loop.closed
    assert loop.closed
    with pytest.raises(RuntimeError, match="CameraLoop is closed"):
        loop.process_frame(frame)
    with pytest.raises(RuntimeError, match="CameraLoop is closed"):
        loop.run("test")
    loop.close()                                                                 # twice is fine


@pytest.mark.parametrize("overrides, option", [
    ({"task": "faces"}, "task"), ({"threads": 0}, "threads"), ({"link": "udp://host:1"}, "link"),
    ({"roi": "1,2,3"}, "roi"), ({"roi": (0, 0, -1, 5)}, "roi"), ({"noise": "loud"}, "noise"),
    ({"max_frames": 0}, "max_frames"), ({"retries": -1}, "retries"), ({"runtime": "tpu"}, "runtime"),
    ({"payload": "2bit"}, "payload"), ({"level": 200}, "level"), ({"frame_timeout": 0}, "frame_timeout"),
    ({"realtime": "yes"}, "realtime"), ({"seed": 1.5}, "seed"),
])
def test_bad_options_name_the_option_not_a_flag(overrides, option):
    from core.errors import InputError
    from edge import CameraLoopOptions

    with pytest.raises(InputError) as info:
        CameraLoopOptions(**overrides)
    message = str(info.value)
    assert "--" not in message and option.replace("_", " ") in message.replace("_", " ")
    assert "\n" not in message


def test_bad_loops_are_one_line_input_errors(bundled, tmp_path):
    from core.errors import InputError
    from edge import CameraLoop, CameraLoopOptions

    calib = tmp_path / "noise.json"
    calib.write_text(json.dumps({"model_id": "0123456789abcdef", "noise": {"out_sigma": 0.5}}))
    cases = [
        (lambda: CameraLoop.create_from_options(CameraLoopOptions(task="lips", noise=str(calib))),
         "noise calibration is for model 0123456789abcdef"),
        (lambda: CameraLoop.create_from_bundle(bundled / "lips", task="gesture"), "is a lips model"),
        (lambda: CameraLoop.create_from_bundle(bundled / "lips", speed=2), "unknown option(s) speed"),
        (lambda: CameraLoop.create_from_bundle(tmp_path / "nothing"), "nothing"),
        (lambda: CameraLoop.create_from_options({"task": "lips"}), "options must be a CameraLoopOptions"),
    ]
    for make, message in cases:
        with pytest.raises(InputError) as info:
            make()
        assert message in str(info.value) and "--" not in str(info.value)


def test_process_frame_checks_its_input(bundled):
    from core.errors import InputError
    from edge import CameraLoop

    frame = np.zeros((48, 64, 3), np.uint8)
    with CameraLoop.create_from_bundle(bundled / "gesture") as loop:
        with pytest.raises(InputError, match="frame must be"):
            loop.process_frame([[0]])
        loop.process_frame(frame, t_ns=1_000)
        with pytest.raises(InputError, match="t_ns must increase"):
            loop.process_frame(frame, t_ns=1_000)
    with CameraLoop.create_from_bundle(bundled / "gesture", link="udp://127.0.0.1:0") as loop:
        with pytest.raises(InputError, match="needs link 'inproc'"):
            loop.process_frame(frame)


# -- the package and the script ---------------------------------------------------------------------
def test_edge_exports_the_api():
    import edge

    assert edge.__all__ == ["CameraLoop", "CameraLoopOptions", "Decision", "RunResult"]
    assert all(hasattr(edge, name) for name in edge.__all__)


def test_no_edge_module_shadows_another_module():
    """Run as a script, edge/ is sys.path[0]: none of its modules may share a top-level name with
    the standard library or an installed package (that is why nothing rewrites sys.path)."""
    names = {p.stem for p in (REPO / "edge").glob("*.py")} - {"__init__"}
    installed = set(importlib.metadata.packages_distributions())
    assert not names & set(sys.stdlib_module_names) and not names & installed, names & (
        set(sys.stdlib_module_names) | installed)


def test_script_runs_from_the_repo_root(bundled):
    proc = subprocess.run([sys.executable, str(Path("edge") / "run_camera.py"), "--source", "test",
                           "--max-frames", "16", "--headless"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 1 and list(lines[0]) == JSON_KEYS and "Traceback" not in proc.stderr
