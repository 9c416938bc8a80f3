"""The ``pixelrnn`` command: one entry point, subcommands registered by the room they belong to."""
from __future__ import annotations

import argparse
import os
import sys

from pixelrnn import __version__


# (subcommand, module, function registering its parser, extra that provides its imports)
SUBCOMMANDS = (
    ("simulate", "firmware_sim.cli", "add_simulate_parser", "train"),
    ("evaluate", "pixelrnn.evaluate", "add_evaluate_parser", "train"),
    ("train", "pixelrnn.train", "add_train_parser", "train"),
    ("export", "export.cli", "add_export_parser", "train"),
    ("calib", "calib.cli", "add_calib_parser", "train"),
    ("bench", "edge.bench", "add_bench_parser", None),
    ("generate", "pixelrnn.generative.cli", "add_generate_parser", "generative"),
)


def _unavailable(subparsers, name: str, extra: str | None, reason: str) -> None:
    """A subcommand whose dependencies are not installed: it explains, in one line, what to install."""
    p = subparsers.add_parser(name, help=f"(unavailable: {reason})", add_help=False, prefix_chars="\x00")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    hint = f"pip install -c constraints.txt -e '.[{extra}]'" if extra else "reinstall pixelrnn-edge"

    def run(args):
        raise OSError(f"'{name}' needs packages that are not installed ({reason}): {hint}")
    p.set_defaults(func=run)


def get_args_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="pixelrnn", description="PixelRNN edge: in-pixel binarized RNNs")
    parser.add_argument("--version", action="version", version=f"pixelrnn-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module, function, extra in SUBCOMMANDS:
        try:
            register = getattr(importlib.import_module(module), function)
        except ImportError as exc:   # e.g. torch absent on a device that has only the base install
            _unavailable(sub, name, extra, f"no module {exc.name!r}" if exc.name else str(exc))
            continue
        register(sub)
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
