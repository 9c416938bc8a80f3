"""Calibration to a real sensor and to int8 (issue 6).

- ``calib.decoder``: fit the off-sensor decoder to real readouts of a physical sensor (the in-pixel
  weights are in silicon and stay fixed), scored by stratified cross-validation;
- ``calib.noise`` (with ``calib.distance``): fit the simulator's noise model so simulated readouts
  match the real ones in distribution, and write a calibration file for ``--noise FILE``;
- ``calib.int8``: static int8 quantization of a bundle's host decoder, calibrated on real readouts;
- ``core.readouts``: loading and validation of readout files, and the shared stratified splits.

Commands: ``pixelrnn calib decoder|noise|int8`` (``calib.cli``).
"""
