"""Pi camera (picamera2) and stream sources in edge/capture.py, with a stand-in picamera2 module (no Pi
camera here): the formats picamera2 delivers, the one-line errors, the newest-frame-only capture, the
camera loop and the CLI over it; device paths and URLs handed to OpenCV. Not tried on a real Pi."""
from __future__ import annotations

import http.server
import importlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA, REPO, need

pytestmark = pytest.mark.device   # base install only: no torch, no TensorFlow

SCRIPT = REPO / "edge" / "run_camera.py"
VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"

# The stand-in: the part of picamera2's API that edge.capture uses, with its memory layouts (picamera2's
# manual: RGB888 is B,G,R; BGR888 R,G,B; XRGB8888 B,G,R,255; XBGR8888 R,G,B,255; YUV420 planar I420).
# Environment: PICAMERA2_STANDIN_CAMERAS (how many cameras, default 1), PICAMERA2_STANDIN_FPS (default 200),
# PICAMERA2_STANDIN_FAIL_AFTER (capture_array raises RuntimeError once all instances together delivered
# that many frames: a camera that stops, and stays stopped when reopened).
STANDIN = textwrap.dedent('''
    """Stand-in for picamera2 (tests only): frames are expected_bgr(index, w, h) in the requested format."""
    import os
    import time

    import numpy as np

    CALLS = []            # (method, args) of every instance, for the tests
    DELIVERED = [0]       # frames delivered by all instances together


    def expected_bgr(index, width, height):
        y, x = np.mgrid[0:height, 0:width]
        b = (x * 255 // max(1, width - 1)).astype(np.uint8)
        g = (y * 255 // max(1, height - 1)).astype(np.uint8)
        r = np.full((height, width), (37 * index) % 256, np.uint8)
        return np.dstack([b, g, r])


    class Picamera2:
        def __init__(self, camera_num=0):
            cameras = self.global_camera_info()
            if camera_num >= len(cameras):
                raise IndexError("list index out of range")
            self.camera_num = camera_num
            self.config = None
            self.started = False
            self.index = 0
            self.fail_after = int(os.environ.get("PICAMERA2_STANDIN_FAIL_AFTER", "-1"))
            CALLS.append(("init", camera_num))

        @staticmethod
        def global_camera_info():
            n = int(os.environ.get("PICAMERA2_STANDIN_CAMERAS", "1"))
            return [{"Model": "imx708", "Location": 2, "Rotation": 180, "Id": f"/base/cam{i}", "Num": i}
                    for i in range(n)]

        def _configuration(self, main, buffer_count):
            main = {"format": "XBGR8888", "size": (640, 480), **dict(main or {})}
            fps = float(os.environ.get("PICAMERA2_STANDIN_FPS", "200"))
            return {"main": main, "buffer_count": buffer_count,
                    "controls": {"FrameDurationLimits": (int(1e6 / fps), int(1e6 / fps))}}

        def create_video_configuration(self, main=None, buffer_count=6, **kw):
            return self._configuration(main, buffer_count)

        def create_preview_configuration(self, main=None, buffer_count=4, **kw):
            return self._configuration(main, buffer_count)

        def configure(self, config):
            if config["main"]["format"] not in ("RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420"):
                raise RuntimeError(f"unsupported format {config['main']['format']}")
            self.config = config
            CALLS.append(("configure", config["main"]["format"]))

        def start(self):
            if self.config is None:
                raise RuntimeError("Camera has not been configured")
            self.started = True
            CALLS.append(("start", self.camera_num))

        def capture_array(self, name="main"):
            if not self.started:
                raise RuntimeError("Camera is not running")
            if 0 <= self.fail_after <= DELIVERED[0]:
                raise RuntimeError("Camera frontend has timed out!")
            time.sleep(self.config["controls"]["FrameDurationLimits"][0] / 1e6)
            w, h = self.config["main"]["size"]
            bgr = expected_bgr(self.index, w, h)
            self.index += 1
            DELIVERED[0] += 1
            fmt = self.config["main"]["format"]
            if fmt == "RGB888":
                return bgr.copy()
            if fmt == "BGR888":
                return bgr[:, :, ::-1].copy()
            alpha = np.full((h, w, 1), 255, np.uint8)
            if fmt == "XRGB8888":
                return np.concatenate([bgr, alpha], axis=2)
            if fmt == "XBGR8888":
                return np.concatenate([bgr[:, :, ::-1], alpha], axis=2)
            import cv2
            return cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)

        def stop(self):
            self.started = False
            CALLS.append(("stop", self.camera_num))

        def close(self):
            CALLS.append(("close", self.camera_num))
''')


@pytest.fixture
def standin_dir(tmp_path_factory) -> Path:
    """A folder holding picamera2.py, the stand-in (for sys.path or PYTHONPATH)."""
    folder = tmp_path_factory.mktemp("standin")
    (folder / "picamera2.py").write_text(STANDIN)
    return folder


@pytest.fixture
def picamera2(standin_dir, monkeypatch):
    """The stand-in imported as ``picamera2`` for this test (removed again after it)."""
    monkeypatch.syspath_prepend(str(standin_dir))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    for var in ("PICAMERA2_STANDIN_CAMERAS", "PICAMERA2_STANDIN_FPS", "PICAMERA2_STANDIN_FAIL_AFTER"):
        monkeypatch.delenv(var, raising=False)
    module = importlib.import_module("picamera2")
    yield module
    sys.modules.pop("picamera2", None)


# -- make_source ------------------------------------------------------------------------------------
def test_make_source_picamera_specs(picamera2):
    from edge.capture import PiCameraSource, make_source

    for spec, num in (("picamera", 0), ("picamera:0", 0), ("picamera:1", 1)):
        source, note = make_source(spec)
        assert isinstance(source, PiCameraSource) and source.camera_num == num and note == ""
        assert source.live and source.name == f"Pi camera {num}"


@pytest.mark.parametrize("spec", ["picamera:", "picamera:x", "picamera:-1", "picamera:1.5"])
def test_bad_picamera_spec_is_a_source_error(picamera2, spec):
    from edge.capture import SourceError, make_source

    with pytest.raises(SourceError, match="expected 'picamera' or 'picamera:N'"):
        make_source(spec)


def test_missing_picamera2_is_a_one_line_error(monkeypatch):
    from edge.capture import PICAMERA2_MISSING, SourceError, make_source

    monkeypatch.setitem(sys.modules, "picamera2", None)          # import picamera2 -> ImportError
    with pytest.raises(SourceError) as info:
        make_source("picamera")
    assert str(info.value) == PICAMERA2_MISSING
    assert "apt install python3-picamera2" in PICAMERA2_MISSING and "--system-site-packages" in PICAMERA2_MISSING


def test_picamera2_without_libcamera_names_what_is_missing(tmp_path, monkeypatch):
    (tmp_path / "picamera2.py").write_text("import libcamera_missing_here  # noqa\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    from edge.capture import SourceError, make_source

    with pytest.raises(SourceError, match="libcamera_missing_here is missing.*--system-site-packages"):
        make_source("picamera")
    sys.modules.pop("picamera2", None)


def test_missing_camera_number_lists_the_cameras(picamera2):
    from edge.capture import CameraLost, PiCameraSource

    with pytest.raises(CameraLost, match=r"Pi camera 1 does not exist \(libcamera lists 0: imx708\)"):
        PiCameraSource(1).open()


def test_no_camera_at_all(picamera2, monkeypatch):
    from edge.capture import CameraLost, PiCameraSource

    monkeypatch.setenv("PICAMERA2_STANDIN_CAMERAS", "0")
    with pytest.raises(CameraLost, match=r"Pi camera 0 does not exist \(libcamera lists none\)"):
        PiCameraSource(0).open()


# -- formats and lifecycle ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["RGB888", "BGR888", "XRGB8888", "XBGR8888", "YUV420"])
def test_formats_come_out_as_bgr(picamera2, fmt):
    from edge.capture import PiCameraSource

    source = PiCameraSource(0, size=(64, 48), fmt=fmt)
    source.open()
    try:
        for index in range(3):
            frame = source.read()
            want = picamera2.expected_bgr(index, 64, 48)
            assert frame.shape == (48, 64, 3) and frame.dtype == np.uint8 and frame.flags.c_contiguous
            if fmt == "YUV420":      # chroma is subsampled 2x2: a smooth image comes back within a few levels
                assert np.abs(frame.astype(int) - want).mean() < 4
            else:
                np.testing.assert_array_equal(frame, want)
    finally:
        source.release()
    assert source.fps == pytest.approx(200, rel=0.01)      # from the configuration's FrameDurationLimits


def test_open_configures_starts_and_release_stops_and_closes(picamera2):
    from edge.capture import PiCameraSource

    source = PiCameraSource(0)
    source.open()
    assert source.read().shape == (480, 640, 3)
    source.release()
    source.release()                                       # twice is fine
    assert source.read() is None
    assert picamera2.CALLS == [("init", 0), ("configure", "RGB888"), ("start", 0), ("stop", 0), ("close", 0)]


def test_bad_format_and_size_are_source_errors(picamera2):
    from edge.capture import PiCameraSource, SourceError

    with pytest.raises(SourceError, match="format must be one of RGB888"):
        PiCameraSource(0, fmt="MJPEG")
    with pytest.raises(SourceError, match="size must be"):
        PiCameraSource(0, size=(8, 8))


def test_a_camera_that_stops_is_reopened_then_lost(picamera2, monkeypatch):
    from edge.capture import END_LOST, Capture, CaptureOptions, End, Frame, PiCameraSource

    monkeypatch.setenv("PICAMERA2_STANDIN_FAIL_AFTER", "2")   # 2 frames, then nothing, reopened or not
    with Capture(PiCameraSource(0, size=(32, 32)), CaptureOptions(retries=2, retry_delay=0.01)) as cap:
        items = []
        while not items or not isinstance(items[-1], End):
            item = cap.get(timeout=5.0)
            assert item is not None, "capture hung"
            items.append(item)
        time.sleep(0.05)
    assert items[-1].reason == END_LOST and "Pi camera 0 stopped delivering frames" in items[-1].message
    assert cap.reconnects == 2 and sum(isinstance(i, Frame) for i in items) == 2
    assert picamera2.CALLS.count(("close", 0)) == 3       # the first open and the 2 reopens, all closed


def test_only_the_newest_frame_is_kept(picamera2, monkeypatch):
    from edge.capture import Capture, Frame, PiCameraSource

    monkeypatch.setenv("PICAMERA2_STANDIN_FPS", "500")
    with Capture(PiCameraSource(0, size=(32, 32))) as cap:
        first = cap.get(timeout=5.0)
        time.sleep(0.2)                                     # a slow consumer: ~100 frames arrive meanwhile
        second = cap.get(timeout=5.0)
    assert isinstance(first, Frame) and isinstance(second, Frame)
    assert second.index - first.index > 10 and cap.drops > 10


# -- the camera loop and the CLI ------------------------------------------------------------------
def test_camera_loop_runs_on_the_pi_camera(picamera2, bundled_models):
    from edge import CameraLoop

    decisions = []
    with CameraLoop.create_from_bundle(bundled_models / "gesture", max_frames=32) as loop:
        result = loop.run("picamera", on_decision=decisions.append)
    assert result.end == "max_frames" and len(decisions) == 2
    assert [d.window for d in decisions] == [0, 1]
    assert ("close", 0) in picamera2.CALLS


def test_cli_with_the_standin_on_pythonpath(standin_dir, bundled_models):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(standin_dir), os.environ.get("PYTHONPATH", "")]),
               PIXELRNN_MODELS=str(bundled_models))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--source", "picamera", "--max-frames", "32", "--headless"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len([line for line in proc.stdout.splitlines() if line.strip()]) == 2
    assert "--max-frames reached after 32 frames" in proc.stderr and "Pi camera 0" in proc.stderr
    assert "Traceback" not in proc.stderr

    missing = subprocess.run([sys.executable, str(SCRIPT), "--source", "picamera:3", "--max-frames", "16",
                              "--headless", "--retries", "0"],
                             capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1, missing.stderr
    assert "Pi camera 3 does not exist (libcamera lists 0: imx708)" in missing.stderr


def test_cli_without_picamera2_is_exit_2(bundled_models, tmp_path):
    blocker = tmp_path / "picamera2.py"                 # shadows any installed picamera2: import fails
    blocker.write_text("raise ImportError('stand-in: not installed', name='picamera2')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PIXELRNN_MODELS=str(bundled_models))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--source", "picamera", "--headless"],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("run_camera: error: picamera2 is not installed: on Pi OS, apt install python3-picamera2 "
                           "and make the venv with --system-site-packages\n")


# -- device paths and URLs ---------------------------------------------------------------------------
def test_device_paths_and_urls_go_to_opencv(tmp_path):
    from edge.capture import CameraSource, SourceError, make_source

    source, _ = make_source("rtsp://user:secret@192.0.2.1:8554/stream")
    assert isinstance(source, CameraSource) and source.live and source.kind == "url"
    assert source.name == "rtsp://user:***@192.0.2.1:8554/stream"       # no password in messages
    assert make_source("http://192.0.2.1/video.mjpg")[0].kind == "url"
    if Path("/dev/null").exists():                                        # a character device, not a camera
        assert make_source("/dev/null")[0].kind == "device"
    with pytest.raises(SourceError, match="camera device not found: /dev/video99"):
        make_source("/dev/video99")
    with pytest.raises(SourceError, match="not a camera device"):
        make_source("/dev/")
    with pytest.raises(SourceError, match="reads rtsp, rtsps, rtmp, http, https URLs, not gst://"):
        make_source("gst://videotestsrc")


def test_a_url_that_does_not_open_is_camera_lost():
    from edge.capture import CameraLost, CameraSource

    with pytest.raises(CameraLost, match=r"rtsp://127\.0\.0\.1:9/none does not open"):
        CameraSource("rtsp://127.0.0.1:9/none").open()               # port 9 (discard): connection refused


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_url_reads_frames_through_ffmpeg():
    import cv2

    if "FFMPEG:                      YES" not in cv2.getBuildInformation():
        pytest.skip("this OpenCV build has no FFmpeg")
    video = need(VIDEO)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: _Quiet(*a, directory=str(video.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        from edge.capture import CameraSource

        source = CameraSource(f"http://127.0.0.1:{server.server_address[1]}/{video.name}")
        source.open()
        frames = [source.read() for _ in range(5)]
        source.release()
    finally:
        server.shutdown()
        server.server_close()
    assert all(f is not None and f.shape == (288, 360, 3) for f in frames)
