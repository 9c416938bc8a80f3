"""The ``pixelrnn`` command: one entry point whose subcommands are registered by the rooms they belong to.

Each room declares its subcommands in ``setup.py`` under the entry-point group ``pixelrnn.commands``
(``name = module:function [extra]``, the function adds the subparser). This dispatcher imports no
room by name, so the layering holds (docs/DESIGN.md, "Rooms and arrows"); a subcommand whose
dependencies are not installed (e.g. ``train`` on a device's base install) stays listed and says,
in one line, which extra to install. Adding a subcommand: the function in its room, one line in
``setup.py``, and ``pip install -e .`` again.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from core import __version__

GROUP = "pixelrnn.commands"
EXIT_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2 (argparse prints the usage over several)."""

    def error(self, message: str):
        message = " ".join(str(message).split())   # one line, whatever a type function raised
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def _one_line_everywhere(parser: argparse.ArgumentParser) -> None:
    """Make every (nested) subparser a :class:`_Parser`, whatever class its room created it with, so
    a usage error anywhere (``pixelrnn calib int8``, ``pixelrnn generate train --model x``) is one line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if not isinstance(child, _Parser) and type(child) is argparse.ArgumentParser:
                    child.__class__ = _Parser
                _one_line_everywhere(child)


def commands() -> list:
    """The registered subcommands (entry points), sorted by name; empty if the package is not installed."""
    return sorted(entry_points(group=GROUP), key=lambda ep: ep.name)


def _unavailable(subparsers, name: str, extras: list[str], reason: str) -> None:
    """A subcommand whose dependencies are not installed: it explains, in one line, what to install."""
    p = subparsers.add_parser(name, help=f"(unavailable: {reason})", add_help=False, prefix_chars="\x00")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    hint = (f"pip install -c constraints.txt -e '.[{','.join(extras)}]'" if extras
            else "reinstall pixelrnn-edge")

    def run(args):
        raise OSError(f"'{name}' needs packages that are not installed ({reason}): {hint}")
    p.set_defaults(func=run)


def get_args_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pixelrnn", description="PixelRNN edge: in-pixel binarized RNNs")
    parser.add_argument("--version", action="version", version=f"pixelrnn-edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    found = commands()
    if not found:
        raise OSError("no pixelrnn subcommands are registered: install the package "
                      "(pip install -c constraints.txt -e .)")
    for ep in found:
        try:
            register = ep.load()
        except ImportError as exc:   # e.g. torch absent on a device that has only the base install
            _unavailable(sub, ep.name, list(ep.extras), f"no module {exc.name!r}" if exc.name else str(exc))
            continue
        register(sub)
    _one_line_everywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = get_args_parser()
    except OSError as exc:
        print(f"pixelrnn: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pixelrnn: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:  # InputError, CheckpointError and argument validation
        print(f"pixelrnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (OSError, MemoryError) as exc:
        if os.environ.get("PIXELRNN_DEBUG"):
            raise
        print(f"pixelrnn {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


if __name__ == "__main__":
    sys.exit(main())
