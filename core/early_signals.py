"""Ctrl-C and SIGTERM that arrive while a command is still starting.

A command's imports take about a second (numpy, OpenCV, a runtime), and its own signal handlers
are installed only after them. Meanwhile a signal is lost (a shell that runs background jobs with
SIGINT ignored: Python keeps the inherited SIG_IGN) or ends the process with a KeyboardInterrupt
traceback (Python's default handler). So a command calls :func:`record` first thing, before its
heavy imports: SIGINT and SIGTERM are then only noted; its main, once its own handlers are in,
calls :func:`take` and ends at once as interrupted if one came. Importing this module does nothing:
only a command calls :func:`record` (``edge/run_camera.py`` run as a script, ``pixelrnn-camera``).
"""
from __future__ import annotations

import signal
import threading

__all__ = ["SIGNALS", "record", "take"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[int] = []


def _note(signum, frame) -> None:
    _received.append(signum)


def record() -> None:
    """Note SIGINT and SIGTERM from now on instead of acting on them (until the command installs
    its own handlers). Main thread only (Python's rule for handlers); elsewhere it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        signal.signal(signum, _note)


def take() -> int | None:
    """The first signal noted since :func:`record` (None: none), forgetting them all."""
    first = _received[0] if _received else None
    _received.clear()
    return first
