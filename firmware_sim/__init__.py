"""firmware_sim: the PixelRNN sensor program on a simulated pixel-processor array (PPA).

Two paths give identical results: an instruction-level simulator of the array (``ppa`` +
``program``), which counts instructions and estimates time and energy, and a vectorized numpy
path (``fast``) for throughput. Both import only numpy (the camera loop runs them on a Pi).
"""
from firmware_sim.encoding import IW, decode_analog, encode_analog, encode_binary
from firmware_sim.frontend import FrontEnd
from firmware_sim.mosaic import from_mosaic, to_mosaic
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights

__all__ = ["IW", "FrontEnd", "NoiseModel", "SensorWeights", "decode_analog", "encode_analog",
           "encode_binary", "from_mosaic", "to_mosaic"]
