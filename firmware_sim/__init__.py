"""firmware_sim: the PixelRNN sensor program on a simulated pixel-processor array (PPA).

Three paths give identical results: an instruction-level simulator of the array (``ppa`` +
``program``), which counts instructions and estimates time and energy, the vectorized numpy
oracle (``fast``) and the table look-up engine (``packed``) for throughput. What leaves the sensor
per window is the weights' readout layout (:class:`core.readout_layout.ReadoutLayout`; the
authors' by default). All of it imports only numpy (the camera loop runs it on a Pi).
"""
from firmware_sim.encoding import IW, decode_analog, encode_analog, encode_binary
from firmware_sim.frontend import FrontEnd
from firmware_sim.mosaic import from_mosaic, to_mosaic
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights

__all__ = ["IW", "FrontEnd", "NoiseModel", "SensorWeights", "decode_analog", "encode_analog",
           "encode_binary", "from_mosaic", "to_mosaic"]
