"""PixelRNN at the edge: the camera loop (capture, simulated sensor, readout link, host decoder).

The Python API is :mod:`edge.api` (``CameraLoop``, ``CameraLoopOptions``, ``Decision``,
``RunResult``); ``edge/run_camera.py`` is the command line over it.
"""
from edge.api import CameraLoop, CameraLoopOptions, Decision, RunResult

__all__ = ["CameraLoop", "CameraLoopOptions", "Decision", "RunResult"]
