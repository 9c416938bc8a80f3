"""The ``pixelrnn`` command: one entry point, subcommands registered by the room they belong to."""
from __future__ import annotations

import argparse
import os
import sys

from pixelrnn import __version__


def get_args_parser() -> argparse.ArgumentParser:
    from firmware_sim.cli import add_simulate_parser
    from pixelrnn.evaluate import add_evaluate_parser
    from export.cli import add_export_parser
    from pixelrnn.train import add_train_parser

    parser = argparse.ArgumentParser(prog="pixelrnn", description="PixelRNN edge: in-pixel binarized RNNs")
    parser.add_argument("--version", action="version", version=f"pixelrnn-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_simulate_parser(sub)
    add_evaluate_parser(sub)
    add_train_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pixelrnn: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # InputError, CheckpointError and argument validation
        print(f"pixelrnn {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as exc:
        if os.environ.get("PIXELRNN_DEBUG"):
            raise
        print(f"pixelrnn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
