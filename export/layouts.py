"""What a model with another readout layout or decoder head cannot be exported to yet, and the
one-line refusals that say so (used by :mod:`export.api` and :mod:`export.scamp5`, which each import
this module, so neither imports the other).

int8 is no longer among them: ``host_int8.tflite`` of a layout is the layout's decoder quantized on
readouts of the layout's shape (:func:`export.tflite_layout.host_int8_tflite`).
"""
from __future__ import annotations

# what a model with another readout layout or decoder head cannot be exported to yet, and why
LAYOUT_REASONS = {
    "scamp5": "the SCAMP-5 weight text holds one output kernel pair and the authors' 64x64 8-bit decoder",
}


def layout_what(layout, decoder: str) -> str:
    """How a refusal names what is not the authors': the readout layout, or else the decoder head."""
    if layout.is_authors:       # another head on the authors' readout: the layout path exports it
        return f"the {decoder} decoder head"
    return f"this model's readout layout ({layout.describe()})"


def layout_refusal(fmt: str, layout, decoder: str = "authors") -> str:
    """The one-line reason why ``fmt`` (a key of :data:`LAYOUT_REASONS`) cannot express a model with
    ``layout`` and ``decoder``, and what to export instead."""
    what = layout_what(layout, decoder)
    return (f"format {fmt} cannot express {what} yet: {LAYOUT_REASONS[fmt]}; "
            "export with --format onnx, tflite or lce (sensor, host and full graphs)")


# what a model with H > 1 hidden maps (``hidden_channels``) cannot be exported to yet, and why
HIDDEN_REASONS = {
    "scamp5": "the SCAMP-5 weight text holds one hidden map (one W_fi, W_fh and rnn_threshold)",
}


def hidden_refusal(fmt: str, hidden: int) -> str:
    """The one-line reason why ``fmt`` (a key of :data:`HIDDEN_REASONS`) cannot express a model with
    ``hidden`` > 1 hidden maps, and what to export instead."""
    return (f"format {fmt} cannot express hidden_channels={hidden} yet: {HIDDEN_REASONS[fmt]}; "
            "export with --format onnx (sensor, host and full graphs)")
