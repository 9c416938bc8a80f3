"""``python -m pixelrnn.cli`` (e.g. under ``torchrun``): the ``pixelrnn`` command, see :mod:`core.cli`."""
from __future__ import annotations

import sys

from core.cli import get_args_parser, main

__all__ = ["get_args_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
