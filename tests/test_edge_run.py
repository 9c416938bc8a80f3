"""The camera loop (edge/run_camera.py) end to end: real video, UDP vs in-process, test pattern, errors,
a camera that stops, Ctrl-C and SIGTERM (to the process group, during the imports, while the host
process starts), light imports, and the host decoder against the PyTorch model."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, REF, REPO, need
from core.readout_layout import ReadoutLayout

VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"
SCRIPT = REPO / "edge" / "run_camera.py"


def run_script(*args, models: Path, timeout=120, **kw):
    env = dict(os.environ, PIXELRNN_MODELS=str(models))
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout, **kw)


def windows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_main(argv, capsys, *, source=None):
    from edge.run_camera import main

    code = main([str(a) for a in argv], source=source)
    out = capsys.readouterr()
    return code, out.out, out.err


# -- the "must show" -------------------------------------------------------------------------
@pytest.mark.device
def test_grid_video_headless_default_model(bundled_models):
    proc = run_script("--source", need(VIDEO), "--headless", models=bundled_models)
    assert proc.returncode == 0, proc.stderr
    lines = windows(proc.stdout)
    assert len(lines) == 75 // 16
    assert [w["window"] for w in lines] == list(range(4))
    manifest = json.loads((bundled_models / "gesture" / "manifest.json").read_text())   # the default task's
    per_window = ReadoutLayout.from_dict(manifest.get("readout_layout") or {}).payload_bytes + 44
    assert all(w["label"].startswith("gesture") and 0 < w["score"] <= 1 and w["bytes"] == per_window for w in lines)
    assert "summary: end of file after 75 frames, 4 windows, 4 decisions" in proc.stderr
    assert (f"vs raw 16x64x64 65,536 ({65536 / per_window:.1f}x less) and 16x256x256 1,048,576 "
            f"({1048576 / per_window:.1f}x less)") in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.device
def test_udp_link_gives_identical_decisions(bundled_models, tmp_path):
    common = ("--source", need(VIDEO), "--headless", "--task", "lips")
    inproc = run_script(*common, "--json-out", tmp_path / "in.jsonl", models=bundled_models)
    udp = run_script(*common, "--link", "udp://127.0.0.1:0", models=bundled_models)
    assert inproc.returncode == 0 and udp.returncode == 0, (inproc.stderr, udp.stderr)
    keys = ("window", "class", "label", "score", "logits", "bytes")
    a = [{k: w[k] for k in keys} for w in windows(inproc.stdout)]
    b = [{k: w[k] for k in keys} for w in windows(udp.stdout)]
    assert len(a) == 4 and a == b
    assert "link udp://127.0.0.1:" in udp.stderr and "lost windows 0, malformed packets 0" in udp.stderr
    saved = [json.loads(line) for line in (tmp_path / "in.jsonl").read_text().splitlines()]
    assert saved[:-1] == windows(inproc.stdout)
    summary = saved[-1]["summary"]
    assert summary["windows"] == 4 and summary["drops"]["lost_windows"] == 0
    manifest = json.loads((bundled_models / "lips" / "manifest.json").read_text())
    layout = ReadoutLayout.from_dict(manifest.get("readout_layout") or {})     # absent: the authors' 4,096 B
    assert summary["bytes"]["per_window"] == layout.payload_bytes + 44 and summary["bytes"]["ratio_256"] > 250
    for stage in ("read", "preprocess", "sensor", "encode", "host", "e2e"):
        assert {"p50", "p99"} <= set(summary["latency_ms"][stage]), stage


@pytest.mark.device
@pytest.mark.parametrize("payload, limit", [("8bit", 4096), ("1bit", 512)])
def test_bytes_per_window_budget(authors_bundle, capsys, tmp_path, payload, limit):
    out = tmp_path / "run.jsonl"                # the authors' readout: 8-bit and 1-bit payloads of one 64x64 map
    code, stdout, _ = run_main(["--source", "test", "--headless", "--max-frames", 48, "--payload", payload,
                                "--model", authors_bundle / "gesture", "--json-out", out], capsys)
    assert code == 0
    assert all(w["bytes"] <= limit + 44 for w in windows(stdout)) and len(windows(stdout)) == 3
    b = json.loads(out.read_text().splitlines()[-1])["summary"]["bytes"]
    assert b["per_window"] == b["payload_per_window"] + b["header_per_window"] <= limit + 44
    assert b["ratio_64"] == pytest.approx(16 * 4096 / b["per_window"], rel=1e-3)


# -- sources and endings ---------------------------------------------------------------------------
@pytest.mark.device
def test_test_pattern_max_frames_and_auto_fallback(bundled_models, capsys):
    code, stdout, stderr = run_main(["--source", "auto", "--headless", "--max-frames", 40,
                                     "--model", bundled_models / "lips"], capsys)
    assert code == 0
    assert "no camera at index 0: using the test pattern" in stderr      # this machine has no camera
    assert len(windows(stdout)) == 2 and "--max-frames reached after 40 frames" in stderr
    assert "8 trailing frames not a full window" in stderr


@pytest.mark.device
def test_missing_video_and_bad_roi_are_one_line_errors(bundled_models):
    for args, message in ((("--source", "no/such.mp4"), "video file not found: no/such.mp4"),
                          (("--source", "test", "--roi", "1,2,3"), "roi '1,2,3': expected center"),
                          (("--source", "test", "--roi", "300,200,100,100"), "does not fit in the 320x240 frame"),
                          (("--source", "test", "--link", "udp://host:1"), "link must be 'inproc' or 'udp://"),
                          (("--source", "test", "--threads", "0"), "--threads")):
        proc = run_script(*args, "--headless", "--max-frames", 16, models=bundled_models)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
        assert proc.stdout == ""


@pytest.mark.device
def test_missing_default_model_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PIXELRNN_MODELS", str(tmp_path))
    code, _, stderr = run_main(["--source", "test", "--headless", "--task", "lips"], capsys)
    assert code == 2
    assert stderr.strip() == (f"run_camera: error: no bundled model for task lips at {tmp_path / 'lips'}: "
                              f"give a bundle folder")


class StoppingCamera:
    """A live source that delivers ``frames`` frames, then nothing, and never reopens properly."""

    live, fps, name = True, 30.0, "fake camera"

    def __init__(self, frames: int) -> None:
        self.left = frames
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def read(self):
        if self.left <= 0:
            return None
        time.sleep(0.005)                                       # a 200 fps camera
        self.left -= 1
        return np.full((48, 64, 3), 100 + self.left % 50, np.uint8)

    def release(self) -> None:
        pass


@pytest.mark.device
def test_camera_that_stops_delivering_exits_3_after_retries(bundled_models, capsys, tmp_path):
    camera = StoppingCamera(frames=40)
    code, stdout, stderr = run_main(["--headless", "--model", bundled_models / "gesture", "--retries", 2,
                                     "--retry-delay", "0.01", "--json-out", tmp_path / "o.jsonl"], capsys,
                                    source=camera)
    assert code == 3
    assert camera.opens == 3                                    # first open + 2 retries
    assert "camera lost: fake camera stopped delivering frames; gave up after 2 retries" in stderr
    assert "summary: camera lost after" in stderr and "Traceback" not in stderr
    summary = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[-1])["summary"]
    assert summary["end"] == "lost" and summary["drops"]["reconnects"] == 2
    assert summary["frames"] + summary["drops"]["capture"] == 40  # live: newest frame only, drops counted
    assert len(windows(stdout)) == summary["windows"] == summary["frames"] // 16


class HangingCamera(StoppingCamera):
    """A live source whose driver read blocks once its frames are used up (a stuck USB camera)."""

    def read(self):
        if self.left <= 0:
            time.sleep(3.0)
            return None
        return super().read()


@pytest.mark.device
def test_camera_whose_read_hangs_exits_3(bundled_models, capsys):
    code, _, stderr = run_main(["--headless", "--model", bundled_models / "gesture", "--retries", 1,
                                "--frame-timeout", "0.2"], capsys, source=HangingCamera(frames=20))
    assert code == 3
    assert "camera lost: fake camera delivered no frame for 0." in stderr and "gave up after 1 retries" in stderr


@pytest.mark.device
def test_ctrl_c_over_udp_ends_cleanly(bundled_models):
    env = dict(os.environ, PIXELRNN_MODELS=str(bundled_models))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--source", "test", "--realtime", "--headless",
                             "--link", "udp://127.0.0.1:0"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()                          # a window was decided: all running
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert json.loads(first)["window"] == 0
    assert proc.returncode == 0, stderr
    assert "summary: interrupted after" in stderr and "Traceback" not in stderr


def _pipe_lines(stream) -> queue.Queue:
    """A thread that puts each line of ``stream`` on the returned queue, then None at its end."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _drain(lines: queue.Queue, timeout: float) -> str:
    """The rest of a :func:`_pipe_lines` stream, up to its end (waits at most ``timeout``)."""
    out, deadline = [], time.monotonic() + timeout
    while (line := lines.get(timeout=max(deadline - time.monotonic(), 0.01))) is not None:
        out.append(line)
    return "".join(out)


def _wait_for(condition, timeout: float, what: str):
    """Poll ``condition()`` every 5 ms until it is truthy (its value), failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)
    return value


def _spawned_host(pid: int) -> int | None:
    """The pid of ``pid``'s multiprocessing spawn child once it runs its own interpreter, else None."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                return int(entry.name)
        except (OSError, IndexError, ValueError):       # gone meanwhile
            continue
    return None


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (its /proc status SigCgt mask)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def _imports_numpy(pid: int) -> bool:
    """Whether process ``pid`` has loaded numpy's core extension (its imports are well under way)."""
    try:
        return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _start_camera(cmd: list, models: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, PIXELRNN_MODELS=str(models))
    return subprocess.Popen([sys.executable, *map(str, cmd)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


@pytest.mark.device
def test_sigterm_to_the_process_group_keeps_the_host_counters(bundled_models, tmp_path):
    """``kill -TERM -PGID`` or systemd stopping the unit: the host process gets SIGTERM too, keeps
    serving while the camera loop ends in order, and its counters reach the run summary."""
    out = tmp_path / "run.jsonl"
    proc = _start_camera([SCRIPT, "--source", "test", "--realtime", "--headless", "--link", "udp://127.0.0.1:0",
                          "--json-out", out], bundled_models, start_new_session=True)
    try:
        stdout, stderr = _pipe_lines(proc.stdout), _pipe_lines(proc.stderr)
        first = [json.loads(stdout.get(timeout=300)) for _ in range(3)]    # three windows decided: all running
        time.sleep(0.2)                                                    # between windows
        os.killpg(proc.pid, signal.SIGTERM)                                # the parent and the host process
        proc.wait(timeout=120)
        err = _drain(stderr, 30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert [w["window"] for w in first] == [0, 1, 2]
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "summary: interrupted after" in err, err
    assert "host process failed" not in err and "did not report its statistics" not in err, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    s = lines[-1]["summary"]
    assert s["end"] == "interrupted" and s["windows"] >= 3 and s["decisions"] == s["windows"]
    assert s["host"] == {"accepted": s["windows"], "ends": 1}, s["host"]           # the end packet too
    assert s["link_auth"]["packets_in"] == s["windows"] + 1 and s["link_auth"]["bad_mac"] == 0
    assert s["bytes"]["received_by_host"] == s["bytes"]["sent"] - 16 * (s["windows"] + 1)    # less the MACs
    assert s["drops"]["lost_windows"] == 0
    assert s["latency_ms"]["e2e"]["n"] == s["windows"] and s["malformed"] == {}


@pytest.mark.device
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_the_host_process_starts_ends_the_run_cleanly(bundled_models, signum):
    """A signal to the process group while the host process's fresh interpreter is still importing:
    it neither kills the host process nor prints a traceback there; the run ends as interrupted,
    in order, with its summary (the first signal only stops the loop: edge.run_camera._Signals).
    The host survived if it decoded the end packet and reported its statistics to the parent
    (which otherwise notes "the host process failed" or "did not report its statistics"); whether
    it is still alive a moment later depends on the machine's speed (a quiet one ends the run first)."""
    proc = _start_camera([SCRIPT, "--source", "test", "--headless", "--link", "udp://127.0.0.1:0"],
                         bundled_models, start_new_session=True)
    try:
        host = _wait_for(lambda: _spawned_host(proc.pid), 300, "the host process")
        os.killpg(proc.pid, signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, stderr
    assert "host process failed" not in stderr and "did not report its statistics" not in stderr, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert "summary: interrupted after 0 frames" in stderr and stdout == "", stderr   # ended in order
    _wait_for(lambda: not Path(f"/proc/{host}").exists(), 30, "the host process to end")


@pytest.mark.device
def test_the_host_process_serves_on_after_sigterm_then_stops_by_itself(bundled_models):
    """SIGTERM to the host process alone: it keeps serving for TERM_GRACE_S (the parent may be
    ending the run in order), then drains, reports its counters and exits by itself."""
    from edge.auth import LinkKey
    from edge.link import UdpSender
    from edge.models import load_bundle
    from edge.remote import TERM_GRACE_S, RemoteConfig, RemoteHost
    from edge.sensor_stage import SensorOptions, SensorStage

    bundle = load_bundle(bundled_models / "gesture")
    sensor = SensorStage(weights=bundle.sensor, options=SensorOptions(stream_id=5))
    packet = None
    while packet is None:
        packet = sensor.push(np.zeros((sensor.size, sensor.size), np.uint8), t_ns=time.monotonic_ns())
    key = LinkKey.ephemeral()
    config = RemoteConfig(bundle_dir=str(bundle.path), runtime="onnxruntime", threads=1, host="127.0.0.1",
                          port=0, key=key, stream_id=5)
    decisions = []
    with RemoteHost(config) as remote, UdpSender("127.0.0.1", remote.port, key=key) as tx:
        os.kill(remote._proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        tx.send(packet)                                               # after the SIGTERM: still decided
        while remote.stats is None and time.monotonic() - t0 < TERM_GRACE_S + 60:
            decisions += remote.poll()
            time.sleep(0.05)
        waited = time.monotonic() - t0
        remote._proc.join(timeout=30)
        exitcode = remote._proc.exitcode
    assert [d["window"] for d in decisions] == [0] and remote.failure is None
    assert remote.stats is not None and waited >= TERM_GRACE_S - 0.5, waited      # served on, then stopped
    assert remote.stats["accepted"] == 1 and remote.stats["ends"] == 0 and remote.stats["link"]["packets_in"] == 1
    assert exitcode == 0                                              # exited by itself, not killed


@pytest.mark.device
@pytest.mark.parametrize("entry", ["script", "pixelrnn-camera"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_imports_ends_the_command_cleanly(bundled_models, entry, signum):
    """Started with SIGINT ignored (a shell's background job), a signal that comes while the command
    still imports (about a second, before main() installs its handlers) ends it at once: one line,
    exit 0. Sent once, as soon as the process catches the signal (/proc SigCgt: the early handler
    is in, neither SIGINT, ignored, nor SIGTERM is caught before it) or has loaded numpy (imports
    under way: a command that installs its handlers only after them ignores the SIGINT or dies)."""
    cmd = [SCRIPT] if entry == "script" else ["-c", "import sys; from edge.camera_entry import main; sys.exit(main())"]
    proc = _start_camera([*cmd, "--source", "test", "--headless"], bundled_models,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        _wait_for(lambda: _catches(proc.pid, signum) or _imports_numpy(proc.pid) or proc.poll() is not None,
                  120, "the early handler or the imports")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=90)         # a lost signal: runs on (no --max-frames)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and stdout == "" and stderr == "run_camera: interrupted\n", (stdout, stderr)


# -- pieces ------------------------------------------------------------------------------------------
@pytest.mark.device
def test_edge_imports_stay_light(bundled_models, authors_bundle):
    """edge/ and firmware_sim/ must run on a Pi base install: no torch, no tensorflow."""
    code = f"""
import sys
from edge import (api, bench, capture, decision, device, display, host, link, models, packet, pipeline,
                  remote, roi, run_camera, sensor_stage, stats)
from edge.models import load_bundle
from edge.decoder import HostDecoder
bundle = load_bundle({str(authors_bundle / 'gesture')!r})             # a bundle with TFLite files
HostDecoder(bundle=bundle, runtime="ai-edge-litert")(__import__("numpy").zeros((64, 64), "uint8"))
assert run_camera.main(["--source", "test", "--headless", "--max-frames", "32", "--model",
                        {str(bundled_models / 'gesture')!r}]) == 0
heavy = [m for m in ("torch", "tensorflow", "matplotlib", "onnx", "pixelrnn.model") if m in sys.modules]
assert not heavy, heavy
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.larq                   # edge_models: exported through torch and TensorFlow/Larq
def test_host_decoder_matches_the_pytorch_model(edge_models):
    torch = pytest.importorskip("torch")

    from edge.decoder import HostDecoder
    from edge.models import load_bundle
    from firmware_sim.simulate import simulate
    from pixelrnn.checkpoint import load_model

    model = load_model(need(REF / "pretrained" / "lips_no_noise.pt")).eval()
    bundle = load_bundle(edge_models / "lips")
    with np.load(need(REF / "tulips_test10.npz"), allow_pickle=False) as d:
        frames = d["frames"][:6]
    readouts = simulate(weights=bundle.sensor, frames=frames, stages=()).readout
    readouts = np.concatenate([readouts, np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8)])
    with torch.no_grad():
        want = model.decode(torch.from_numpy(readouts)).numpy()
    for runtime in ("onnxruntime", "ai-edge-litert"):
        decoder = HostDecoder(bundle=bundle, runtime=runtime)
        got = np.stack([decoder(r) for r in readouts])
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0, err_msg=runtime)


@pytest.mark.device
def test_mouth_roi_reproduces_the_grid_training_crop():
    """On the GRID video the mouth ROI lands within a few pixels of the training crop (117, 170, 78)."""
    import cv2

    from edge.roi import MouthROI
    from firmware_sim.frontend import to_gray

    cap = cv2.VideoCapture(str(need(VIDEO)))
    roi, boxes = MouthROI(), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        boxes.append(roi(to_gray(frame)))
    cap.release()
    x, y, w, h = np.median(np.array(boxes[41:48]), axis=0)
    assert abs(x - 117) <= 4 and abs(y - 170) <= 4 and abs(w - 78) <= 4 and w == h
    assert roi.fallback_frames == 0 and roi.detections >= 75 // 8


@pytest.mark.device
def test_live_capture_keeps_only_the_latest_frame():
    from edge.capture import Capture, CaptureOptions, End, Frame

    class Fast:
        live, fps, name = True, None, "fast camera"

        def __init__(self):
            self.n = 0

        def open(self):
            pass

        def read(self):
            time.sleep(0.001)
            self.n += 1
            return np.zeros((8, 8), np.uint8) if self.n <= 200 else None

        def release(self):
            pass

    got = []
    with Capture(Fast(), CaptureOptions(retries=0)) as cap:
        while True:
            item = cap.get(timeout=5)
            if isinstance(item, End):
                break
            assert isinstance(item, Frame)
            got.append(item.index)
            time.sleep(0.01)                                       # a slow consumer
    assert item.reason == "lost"
    assert len(got) < 100 and cap.drops + len(got) == 200 and got == sorted(got)


@pytest.mark.device
def test_overlay_draws_without_a_gui():
    from edge.decision import Decision
    from edge.display import draw_overlay

    frame = np.zeros((240, 320, 3), np.uint8)
    decision = Decision(window=0, class_index=2, label="two", score=0.8, latency_ms=1.0, host_us=50.0,
                        bytes=4140, logits=(0.0, 0.1, 0.9))
    out = draw_overlay(frame, decision=decision, fps=30.0, link_bps=66240.0,
                       readout=np.full((64, 64), 200, np.uint8), roi=(10, 10, 100, 100))
    assert out.shape == frame.shape and out[-10, -10].tolist() == [200, 200, 200] and frame.sum() == 0


@pytest.mark.device
def test_decision_refuses_nan_so_the_json_stays_strict():
    """Issue 16: a NaN score or logit never reaches the printed JSON (it is not JSON)."""
    from core.errors import InputError
    from edge.decision import Decision

    good = {"window": 0, "class": 1, "label": "b", "score": 0.5, "latency_ms": None, "host_us": 3.0,
            "bytes": 4096, "logits": [0.1, 0.2]}
    assert json.loads(json.dumps(Decision.from_dict(good).to_dict(), allow_nan=False))["score"] == 0.5
    for key, value in (("score", float("nan")), ("logits", [0.1, float("inf")]), ("latency_ms", float("nan"))):
        with pytest.raises(InputError, match="NaN or infinite|finite number"):
            Decision.from_dict({**good, key: value})


@pytest.mark.device
@pytest.mark.parametrize("edit,match", [
    (lambda m: m.update(task=5), "task must be a non-empty name"),
    (lambda m: m.update(classes=["a"]), "classes must be a list of 2..1000"),
    (lambda m: m.update(classes=[f"c{i}" for i in range(1001)]), "classes must be a list of 2..1000"),
    (lambda m: m.update(classes=[""] * 10), "class names must be non-empty strings"),
    (lambda m: m["preprocessing"].update(timesteps=10 ** 9), "timesteps must be an integer 1..1024"),
    (lambda m: m["preprocessing"]["frontend"].update(size=100000), "sensor size must be an integer 8..1024"),
])
def test_manifest_fields_are_type_and_bound_checked(bundled_models, tmp_path, edit, match):
    import shutil

    from core.bundle import BundleError
    from edge.models import load_bundle

    bundle = tmp_path / "b"
    shutil.copytree(bundled_models / "lips", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=match):
        load_bundle(bundle)


@pytest.mark.device
def test_corrupt_host_model_is_a_one_line_bundle_error(bundled_models, tmp_path):
    import hashlib
    import shutil

    from core.errors import InputError
    from edge.decoder import HostDecoder
    from edge.models import load_bundle

    bundle = tmp_path / "b"
    shutil.copytree(bundled_models / "lips", bundle)
    (bundle / "host.onnx").write_bytes((bundle / "host.onnx").read_bytes()[:4000])
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / "host.onnx").read_bytes()
    manifest["files"]["host.onnx"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"host\.onnx: onnxruntime cannot load it .*truncated or corrupt") as info:
        HostDecoder(bundle=load_bundle(bundle), runtime="onnxruntime")
    assert "\n" not in str(info.value)
