"""The mouth ROI (edge/roi.py): the face detector off the critical path in its own thread, tracking
between detections, the centre before the first one, a clean stop, and the synchronous mode's boxes."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import DATA, decode_video, need
from core.errors import InputError
from edge.roi import MouthOptions, MouthROI, make_roi

pytestmark = pytest.mark.device

VIDEO = DATA / "videos" / "grid_s1_bbaf2n.mpg"
FACE = (100.0, 60.0, 120.0, 120.0)          # -> mouth square centre (160, 153.6), side 66
FRAME = np.zeros((240, 320), np.uint8)


class SlowDetector:
    """A fake detector taking ``delay`` s per call; returns ``faces`` in turn (then the last one)."""

    def __init__(self, delay: float, faces=(FACE,)) -> None:
        self.delay, self.faces, self.calls = delay, list(faces), 0
        self.started = threading.Event()

    def __call__(self, gray):
        self.started.set()
        time.sleep(self.delay)
        face = self.faces[min(self.calls, len(self.faces) - 1)]
        self.calls += 1
        return face


def detector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mouth-roi-detector"]


def test_threaded_roi_never_waits_for_a_slow_detector():
    """The detector takes 50 ms; every per-frame call stays far below it (it only crops)."""
    slow = SlowDetector(0.05)
    with MouthROI(MouthOptions(detect_every=1), detector=slow, threaded=True) as roi:
        times = []
        for _ in range(40):
            t0 = time.perf_counter()
            roi(FRAME)
            times.append(time.perf_counter() - t0)
            time.sleep(0.002)
        assert slow.started.wait(2) and roi.detector_stats["replaced_frames"] > 0   # one pending frame at most
    assert max(times) < 0.025, f"slowest call {max(times) * 1e3:.1f} ms with a 50 ms detector"
    assert np.median(times) < 0.002


def test_synchronous_roi_does_wait_for_the_detector():
    """The control: synchronous detection is on the frame's call."""
    roi = MouthROI(MouthOptions(detect_every=1), detector=SlowDetector(0.05), threaded=False)
    t0 = time.perf_counter()
    roi(FRAME)
    assert time.perf_counter() - t0 >= 0.05 and roi.detections == 1 and detector_threads() == []


def test_centre_before_the_first_detection_then_tracks_the_last_box():
    slow = SlowDetector(0.05)
    with MouthROI(MouthOptions(detect_every=4, smoothing=1.0), detector=slow, threaded=True) as roi:
        assert roi(FRAME) == (40, 0, 240, 240)              # the centre square while the detector runs
        assert slow.started.wait(2) and roi.fallback_frames == 1 and roi.detections == 0
        assert roi.wait_idle(2)
        box = roi(FRAME)                                     # the finished detection is applied
        assert box == (127, 121, 66, 66) and roi.detections == 1
        for _ in range(6):                                   # tracking: the box is kept between detections
            assert roi(FRAME) == box
        assert roi.fallback_frames == 1


def test_tracking_smooths_successive_detections():
    second = (110.0, 60.0, 120.0, 120.0)                     # the face moved 10 px right
    slow = SlowDetector(0.0, faces=(FACE, second))
    with MouthROI(MouthOptions(detect_every=1, smoothing=0.5), detector=slow, threaded=True) as roi:
        roi(FRAME)
        roi.wait_idle(2)
        assert roi(FRAME) == (127, 121, 66, 66)              # first detection, and hands over this frame
        roi.wait_idle(2)
        assert roi(FRAME) == (132, 121, 66, 66)              # halfway to the new position (cx 165)


def test_threaded_defer_hands_the_due_frame_over_on_the_next_call():
    slow = SlowDetector(0.0)
    with MouthROI(MouthOptions(detect_every=1, smoothing=1.0), detector=slow, threaded=True) as roi:
        roi(FRAME, defer=True)                               # a window's last frame: nothing starts
        assert roi.wait_idle(2) and slow.calls == 0
        roi(FRAME)
        assert roi.wait_idle(2) and slow.calls == 1 and roi(FRAME) == (127, 121, 66, 66)


def test_no_face_keeps_the_centre_and_counts_fallbacks():
    with MouthROI(MouthOptions(detect_every=1), detector=lambda g: None, threaded=True) as roi:
        for _ in range(5):
            roi(FRAME)
            roi.wait_idle(2)
        assert roi(FRAME) == (40, 0, 240, 240) and roi.fallback_frames == 6 and roi.detections == 0


def test_a_failing_detector_keeps_the_box_and_is_counted():
    def broken(gray):
        raise RuntimeError("driver fell over")

    with MouthROI(MouthOptions(detect_every=1), detector=broken, threaded=True) as roi:
        roi(FRAME)
        roi.wait_idle(2)
        assert roi(FRAME) == (40, 0, 240, 240) and roi.detector_stats["errors"] >= 1


def test_thread_stops_on_close_and_when_collected():
    before = set(threading.enumerate())
    roi = MouthROI(MouthOptions(detect_every=1), detector=SlowDetector(0.05), threaded=True)
    assert detector_threads() == []                          # started lazily, on the first frame
    roi(FRAME)
    assert len(detector_threads()) == 1
    roi.close()
    roi.close()                                              # idempotent
    assert detector_threads() == [] and set(threading.enumerate()) <= before
    with pytest.raises(InputError, match="closed"):
        roi(FRAME)
    forgotten = MouthROI(MouthOptions(detect_every=1), detector=SlowDetector(0.01), threaded=True)
    forgotten(FRAME)
    del forgotten                                            # never closed: the finalizer stops it
    deadline = time.monotonic() + 2
    while detector_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert detector_threads() == []


def test_make_roi_chooses_the_mode_per_source():
    assert make_roi("mouth").threaded is False                          # a file / frames fed by hand
    assert make_roi("mouth", live=True).threaded is True                 # a camera or a paced source
    assert make_roi("mouth", mouth=MouthOptions(threaded=False), live=True).threaded is False
    assert make_roi("mouth", mouth=MouthOptions(threaded=True)).threaded is True
    for roi in (make_roi("center"), make_roi((1, 2, 3, 4))):
        roi.close()
    with pytest.raises(InputError, match="threaded"):
        MouthOptions(threaded="yes")
    with pytest.raises(InputError, match="nice"):
        MouthOptions(nice=40)


def _grid_frames():
    from firmware_sim.frontend import to_gray

    return [to_gray(frame) for frame in decode_video(need(VIDEO))]


def _reference_boxes(frames, *, defer_every=16):
    """The synchronous algorithm as it was before the detector thread (a copy, for the comparison)."""
    import cv2

    from edge.roi import FACE_CASCADE, mouth_box
    from firmware_sim.frontend import center_square

    opts = MouthOptions()
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + FACE_CASCADE)
    state, since, boxes = None, opts.detect_every - 1, []
    for i, gray in enumerate(frames):
        defer = i % defer_every == defer_every - 1
        since += 1
        if since >= opts.detect_every and not (defer and state is not None):
            since = 0
            h, w = gray.shape
            scale = min(1.0, opts.detect_width / w)
            small = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            side = max(20, int(opts.min_face * small.shape[0]))
            faces = cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
            if len(faces):
                x, y, fw, fh = max(faces, key=lambda f: f[2] * f[3])
                new = np.array(mouth_box((x / scale, y / scale, fw / scale, fh / scale)))
                state = new if state is None else (1 - opts.smoothing) * state + opts.smoothing * new
        h, w = gray.shape
        if state is None:
            boxes.append(center_square(w, h))
            continue
        cx, cy, side = state
        s = int(round(min(side, w, h)))
        boxes.append((int(round(min(max(cx - s / 2, 0), w - s))), int(round(min(max(cy - s / 2, 0), h - s))), s, s))
    return boxes


def test_synchronous_mode_gives_the_same_boxes_as_before_on_the_grid_video():
    frames = _grid_frames()
    roi = make_roi("mouth")                                  # a file: synchronous
    got = [roi(g, defer=i % 16 == 15) for i, g in enumerate(frames)]
    assert len(got) == 75 and got == _reference_boxes(frames) and roi.fallback_frames == 0
    assert detector_threads() == []


def test_threaded_mode_on_the_grid_video_lands_on_the_mouth():
    frames = _grid_frames()
    with make_roi("mouth", live=True) as roi:
        boxes = []
        for g in frames:
            boxes.append(roi(g))
            assert roi.wait_idle(10)     # a camera's frame interval leaves the (low-priority) detector time
    x, y, w, h = np.median(np.array(boxes[41:48]), axis=0)
    assert abs(x - 117) <= 4 and abs(y - 170) <= 4 and abs(w - 78) <= 4 and w == h
    assert roi.detections >= 1 and detector_threads() == []
