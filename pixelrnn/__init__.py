"""pixelrnn: the PixelRNN model (PyTorch), its checkpoints and its training.

The one place the model is defined. The sensor's math lives in ``firmware_sim`` (numpy); the
model here reproduces it exactly in PyTorch so it can be trained, and hands its binary weights to
the simulator with :meth:`PixelRNN.sensor_weights`.
"""
from core import __version__

__all__ = ["__version__"]
