"""export: a checkpoint -> a device bundle (ONNX, TFLite/LCE, SCAMP-5 weight text, manifest.json).

Public entry point: :func:`export.api.export_model` (and ``pixelrnn export``); a device checks a
bundle with :func:`export.bundle.verify_bundle` before loading it.
"""
