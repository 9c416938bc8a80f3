"""PixelRNN at the edge: the camera loop (capture, simulated sensor, readout link, host decoder).

The Python API is :mod:`edge.api` (``CameraLoop``, ``CameraLoopOptions``, ``Decision``,
``RunResult``); ``edge/run_camera.py`` is the command line over it. The API names are imported on
first use, so importing one module of the package (``edge.camera_entry``, the ``pixelrnn-camera``
command, notes Ctrl-C before anything heavy loads) does not import the whole camera loop.
"""
from __future__ import annotations

__all__ = ["CameraLoop", "CameraLoopOptions", "Decision", "RunResult"]


def __getattr__(name: str):
    """``edge.CameraLoop`` etc.: :mod:`edge.api`'s, imported on first use."""
    if name in __all__:
        import edge.api

        return getattr(edge.api, name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
