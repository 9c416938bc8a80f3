"""The on-screen overlay: the camera frame with the ROI, label, score, fps, link bytes/s and a
small view of the last readout. ``draw_overlay`` is pure drawing (works with headless OpenCV);
:class:`Display` opens a window if this OpenCV build and the session have a GUI, else says why."""
from __future__ import annotations

import numpy as np

from edge.decision import Decision

WINDOW = "PixelRNN edge"
VIEW_SIDE = 128            # readout view, pixels (64x64 scaled 2x)


def draw_overlay(frame: np.ndarray, *, decision: Decision | None, fps: float, link_bps: float,
                 readout: np.ndarray | None, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """A BGR copy of ``frame`` with the overlay drawn on it."""
    import cv2

    img = np.ascontiguousarray(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)).copy()
    if roi is not None:
        x, y, w, h = roi
        cv2.rectangle(img, (x, y), (x + w, y + h), (0, 255, 255), 1)
    if readout is not None:
        side = min(VIEW_SIDE, img.shape[0] // 2, img.shape[1] // 2)
        rh, rw = readout.shape[:2]
        if rh == rw:
            vh = vw = side
        else:                              # a readout layout's grid of maps: keep its aspect ratio
            scale = side / max(rh, rw)
            vh, vw = max(1, round(rh * scale)), max(1, round(rw * scale))
        view = cv2.resize(readout, (vw, vh), interpolation=cv2.INTER_NEAREST)
        img[-vh:, -vw:] = cv2.cvtColor(view, cv2.COLOR_GRAY2BGR)
    label = f"{decision.label} {decision.score:.2f}" if decision is not None else "waiting for a window"
    lines = [label, f"{fps:5.1f} fps   link {link_bps / 1e3:6.2f} kB/s"]
    for i, text in enumerate(lines):
        org = (8, 22 + 22 * i)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return img


class Display:
    """A window for the overlay. ``available`` is False (with ``reason``) when there is no GUI."""

    def __init__(self) -> None:
        self.available = False
        self.reason = ""

    def open(self) -> "Display":
        import os

        import cv2

        if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            self.reason = "no display ($DISPLAY is not set)"
            return self
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE)
        except cv2.error:
            self.reason = "this OpenCV build has no GUI (opencv-python-headless)"
            return self
        self.available = True
        return self

    def show(self, image: np.ndarray) -> bool:
        """Show ``image``; False when the user pressed q or Esc."""
        import cv2

        cv2.imshow(WINDOW, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        if self.available:
            import cv2

            try:
                cv2.destroyWindow(WINDOW)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self.available = False

    def __enter__(self) -> "Display":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()
