"""Re-export of :mod:`edge.arith`, the arithmetic coder (moved there so the torch-free edge
runtime can use it; this module keeps ``pixelrnn.generative.arith`` imports working)."""
from edge.arith import (MAX_PRECISION_BITS, STATE_BITS, ArithmeticDecoder, ArithmeticEncoder,  # noqa: F401
                        check_precision_bits, cumulative, quantize_probs)

__all__ = ["MAX_PRECISION_BITS", "STATE_BITS", "ArithmeticDecoder", "ArithmeticEncoder", "check_precision_bits",
           "cumulative", "quantize_probs"]
