"""``pixelrnn train``: the command line of training; the work is done by the backends.

Settings come from ``--config FILE.yaml``, then flags override them (one flag per
:class:`~pixelrnn.train_config.TrainConfig` field). ``--backend`` picks who trains:

* ``torch`` (:mod:`pixelrnn.train_loop`): resumable, data-parallel under
  ``torchrun --nproc_per_node=N -m pixelrnn.cli train ...`` (gloo, CPU);
* ``larq`` (:mod:`pixelrnn.larq_train`): the Keras/Larq twin, saved as a PyTorch checkpoint.

``TrainConfig``, ``load_config_file``, ``code_version``, ``train``, ``build_model`` and ``predict``
are re-exported here for callers of the former single-module trainer.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from core.argtypes import bool_arg
from core.errors import InputError
from pixelrnn.train_config import TrainConfig, code_version, load_config_file, resolve_config
from pixelrnn.train_loop import build_model, predict, train

__all__ = ["TrainConfig", "add_train_args", "add_train_parser", "build_model", "code_version",
           "config_from_args", "load_config_file", "main", "predict", "train"]

# the argparse type of a flag, by the type of its TrainConfig default
_FLAG_TYPES = {int: int, float: float, str: str, bool: bool_arg}


def _run_torch(cfg: TrainConfig, args: argparse.Namespace) -> int:
    report = train(config=cfg, resume=args.resume, progress=not args.no_progress)
    if report:
        name, m = ("test", report["test"]) if report["test"] is not None else ("training-set fit (no test clips)",
                                                                              report["train_fit"])
        print(f"{name} accuracy {m['accuracy']:.4f} ({m['correct']}/{m['n']}), "
              f"simulator agrees: {report['simulator_agrees']}; wrote {cfg.out_dir}/model.pt, report.json, "
              f"confusion.png, metrics.json")
    return 0


def _run_larq(cfg: TrainConfig, args: argparse.Namespace) -> int:
    if args.resume:
        raise InputError("--resume is not supported with --backend larq")
    try:
        from pixelrnn.larq_train import train_larq
    except ImportError as exc:
        raise InputError(f"--backend larq needs TensorFlow/Larq: pip install -c constraints.txt "
                         f"-e '.[larq]' ({exc})") from None
    result = train_larq(config=cfg, progress=not args.no_progress)
    print(f"test accuracy {result['test_accuracy']:.4f}; wrote {result['checkpoint']}")
    return 0


# --backend name -> runner
BACKENDS = {"torch": _run_torch, "larq": _run_larq}


def add_train_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the flags of ``pixelrnn train`` on ``parser``: the command's own, then one per setting."""
    parser.add_argument("--config", default=None, help="YAML file of TrainConfig settings")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out-dir from last.pt")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--backend", choices=tuple(BACKENDS), default="torch",
                        help="torch (default; resumable, DDP) or larq: train the Keras/Larq twin "
                             "(needs the [larq] extra) and save it as a PyTorch checkpoint")
    for f in fields(TrainConfig):
        kind = type(f.default)
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_FLAG_TYPES[kind], default=None,
                            metavar="BOOL" if kind is bool else kind.__name__.upper(),
                            help=f"(default {f.default!r})")
    return parser


def add_train_parser(subparsers) -> None:
    """The ``train`` subcommand (registered in setup.py under ``pixelrnn.commands``)."""
    p = subparsers.add_parser(
        "train", help="train a PixelRNN on grid, avletters, avletters_ms or cambridge",
        description="Train a binarized PixelRNN (noise-aware, latent weights). Settings come from "
                    "--config FILE.yaml, then flags override them; unspecified ones take the defaults.")
    add_train_args(p)
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The settings of ``--config`` with the flags given on top."""
    overrides = {f.name: getattr(args, f.name, None) for f in fields(TrainConfig)}
    return resolve_config(path=args.config, overrides=overrides, source="flags")


def main(args: argparse.Namespace) -> int:
    """Run ``pixelrnn train`` with parsed ``args``."""
    return BACKENDS[args.backend](config_from_args(args), args)
