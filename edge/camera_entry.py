"""The ``pixelrnn-camera`` console command (setup.py): notes Ctrl-C and SIGTERM from its first
moment (:mod:`core.early_signals`), then imports the camera loop, about a second, and runs it
(:func:`edge.run_camera.main` ends at once as interrupted if a signal came meanwhile).
``python edge/run_camera.py`` does the same at the top of the script."""
from __future__ import annotations

from core.early_signals import record


def main() -> int:
    """Record early signals, then run the camera command on ``sys.argv``; its exit code."""
    record()
    from edge.run_camera import main as run_camera_main  # the heavy imports, after record()

    return run_camera_main()
