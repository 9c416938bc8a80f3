"""Sensor cost of the readout layouts (issue 12): instructions, time and energy of every sensor program.

Issue 12 asks firmware_sim to report instructions, time and energy per frame for each readout
configuration; docs/MODEL.md gives them for three programs. This lists every distinct sensor program
(readout layout x hidden maps H) that the sweep specs (``--specs``, default ``configs/sweep_*.yaml``)
and the two default models (``pixelrnn/models/lips``, ``pixelrnn/models/gesture``) use, with the
readout bytes, the SCAMP-5 registers it needs, its instructions per frame and per 16-frame window,
and the window's time and energy, and which configurations use it.

    python benchmarks/layout_cost.py [--specs 'configs/sweep_*.yaml'] [--write docs/MODEL.md]

Costs are the instruction-level program's (``firmware_sim.program.frame_cost`` / ``clip_cost``) under
its cost model (``firmware_sim.ppa.CostModel``: one instruction = one 10 MHz cycle, 1.9 pJ per element
per instruction, on the program's 64x64 elements). The instruction stream has no data-dependent
branch, so the count depends on the layout, H and the array size, and on the weights only through
the gate's constant: ceil(rnn_threshold) is added to the comparand in chunks of at most 25 (a load
and an add each; 0 needs none). Every program here runs random binary weights with each chain's
threshold 1.0, one chunk, as the default models (thresholds 1.02 and 0.99) and the authors' layout
fixture (1.00) have.

Torch-free: a spec's readout settings are read from its YAML, the rest taking TrainConfig's defaults
(``READOUT_DEFAULTS``; the tests check both against ``pixelrnn.sweep``), so the second-stage specs,
whose ``init_from`` names runs not present here, are listed like the others.
"""
from __future__ import annotations

import argparse
import glob
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import cpu_name, run_script, update_section  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.readout_layout import DEFAULT_STEP, ReadoutLayout  # noqa: E402
from edge.models import load_bundle  # noqa: E402
from firmware_sim.program import (  # noqa: E402
    SCAMP5_ANALOG,
    SCAMP5_DIGITAL,
    check_hidden_fits,
    clip_cost,
    frame_cost,
    registers_needed,
)
from firmware_sim.weights import SensorWeights  # noqa: E402

DEFAULT_SPECS = "configs/sweep_*.yaml"
MODELS = {task: REPO / "pixelrnn" / "models" / task for task in ("lips", "gesture")}
TIMESTEPS = 16                   # frames per window (pixelrnn.data.TIMESTEPS)
GATE_THRESHOLD = 1.0             # every chain's rnn_threshold: one comparand chunk (module docstring)
# TrainConfig's readout settings and their defaults (pixelrnn/train_config.py)
READOUT_DEFAULTS = {"readout_every": 0, "out_channels": 1, "hidden_channels": 1, "readout_bits": 8,
                    "readout_pool": 1, "readout_step": 0.0}
HEADING = "Sensor cost of the readout layouts (issue 12)"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--specs", default=DEFAULT_SPECS, help=f"glob of sweep spec YAML files (default {DEFAULT_SPECS})")
    p.add_argument("--write", default=None, help="update the layout-cost section of this markdown file")
    return p


def spec_programs(path: Path) -> dict[str, tuple[ReadoutLayout, int]]:
    """A sweep spec's configurations -> (readout layout, H), from its YAML's ``base`` and ``configs``."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not a readable YAML sweep spec ({str(exc).splitlines()[0][:120]})") from None
    configs = data.get("configs") if isinstance(data, dict) else None
    base = (data.get("base") or {}) if isinstance(data, dict) else None
    if not (isinstance(configs, dict) and configs and isinstance(base, dict)
            and all(isinstance(v, dict) for v in configs.values())):
        raise InputError(f"{path}: not a sweep spec (needs configs: a mapping of name -> settings, base a mapping)")
    out = {}
    for name, overrides in configs.items():
        s = {**READOUT_DEFAULTS, **{k: v for k, v in {**base, **overrides}.items() if k in READOUT_DEFAULTS}}
        try:
            layout = ReadoutLayout.every(s["readout_every"], timesteps=TIMESTEPS, channels=s["out_channels"],
                                         bits=s["readout_bits"], pool=s["readout_pool"], step=s["readout_step"])
            check_hidden_fits(layout, s["hidden_channels"])
        except ValueError as exc:
            raise InputError(f"{path}: config {name!r}: {exc}") from None
        out[str(name)] = (layout, s["hidden_channels"])
    return out


def collect(spec_files: list[Path], models: dict[str, Path]) -> dict[tuple[ReadoutLayout, int], dict[str, list]]:
    """Every distinct (layout, H) -> {where it is used: [configuration names]}, the default models first."""
    programs: dict = {}
    for task, folder in models.items():
        sensor = load_bundle(folder).sensor   # verified; its layout is the manifest's readout_layout
        programs.setdefault((sensor.layout, sensor.hidden), {})[f"default {task} model"] = []
    for path in spec_files:
        for name, key in spec_programs(path).items():
            programs.setdefault(key, {}).setdefault(path.name, []).append(name)
    return programs


def program_weights(layout: ReadoutLayout, hidden: int) -> SensorWeights:
    """Random binary weights for the program, every gate threshold GATE_THRESHOLD (module docstring)."""
    w = SensorWeights.random(np.random.default_rng(0), layout=layout, hidden=hidden)
    return replace(w, rnn_threshold=GATE_THRESHOLD if hidden == 1 else (GATE_THRESHOLD,) * hidden)


def program_cost(layout: ReadoutLayout, hidden: int) -> dict:
    """Registers, instructions of a plain and a read-out frame, and the window's clip_cost (prologue included)."""
    w = program_weights(layout, hidden)
    analog, digital = registers_needed(layout, hidden=hidden)
    return {"analog": len(analog), "digital": len(digital), "plain": frame_cost(w)["instructions"],
            "read": frame_cost(w, last=True)["instructions"], "window": clip_cost(w)}


def describe(layout: ReadoutLayout) -> str:
    """The layout in words: which frames, K maps, bits, size (pooling)."""
    frames, t = layout.frames, layout.timesteps
    every = frames[0]
    if frames == (t,):
        when = "last frame"
    elif frames == tuple(range(every, t + 1, every)):
        suffix = "th" if every % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(every % 10, "th")
        when = "every frame" if every == 1 else f"every {every}{suffix} frame"
    else:
        when = "frames " + ",".join(map(str, frames))
    size = f"{layout.side}x{layout.side}" + (f" ({layout.pool}x{layout.pool} mean)" if layout.pool > 1 else "")
    step = f", step {layout.step:g}" if layout.step != DEFAULT_STEP[layout.bits] else ""
    k = layout.channels
    return (f"{when} x {k} map{'s' if k > 1 else ''}, {layout.bits} bit{step}, {size}"
            + (" (the authors')" if layout.is_authors else ""))


def table(programs: dict) -> str:
    lines = [f"| readout layout | H | readout bytes / window | analog registers (of {SCAMP5_ANALOG}) | "
             f"digital registers (of {SCAMP5_DIGITAL}) | instructions / plain frame | instructions / read-out frame | "
             f"instructions / {TIMESTEPS}-frame window | us / window | uJ / window | used by |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = sorted(programs, key=lambda k: (k[0].payload_bytes, k[1], len(k[0].frames), k[0].channels, k[0].bits,
                                            k[0].pool, k[0].step))
    for layout, hidden in order:
        c = program_cost(layout, hidden)
        win = c["window"]
        users = "; ".join(f"{where}: {', '.join(names)}" if names else where
                          for where, names in programs[(layout, hidden)].items())
        lines.append(f"| {describe(layout)} | {hidden} | {layout.payload_bytes:,} | {c['analog']} | {c['digital']} | "
                     f"{c['plain']:,} | {c['read']:,} | {win['instructions']:,} | {win['time_us']:,.1f} | "
                     f"{win['energy_uj']:.1f} | {users} |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    spec_files = [Path(p) for p in sorted(glob.glob(args.specs))]
    if not spec_files:
        raise InputError(f"--specs {args.specs!r} matches no file")
    programs = collect(spec_files, MODELS)
    command = "python benchmarks/layout_cost.py" + (f" --specs '{args.specs}'" if args.specs != DEFAULT_SPECS else "")
    body = (f"Measured {date.today().isoformat()} on {cpu_name()} (the counts do not depend on the machine).\n\n"
            f"Command: `{command}{f' --write {args.write}' if args.write else ''}`\n\n"
            f"Every distinct sensor program of {len(spec_files)} sweep specs and the two default models "
            f"({len(programs)} programs). Instructions from `firmware_sim.program.frame_cost` (a plain frame, a "
            f"read-out frame) and `clip_cost` (a {TIMESTEPS}-frame window, its (2 + H)-instruction prologue "
            "included); time at 10 MHz, energy at 1.9 pJ per element per instruction on the program's 64x64 "
            "elements (x16 if all 256x256 SCAMP-5 elements are clocked); the ADC's readout time is not modelled. "
            "Random binary weights, every gate threshold 1.0 (one comparand chunk, as the default models'); "
            "a threshold in (-1, 0] saves 2 instructions per chain per frame, one beyond +-25 costs 1 to 3 more.\n\n"
            + table(programs))
    print(body)
    if args.write:
        update_section(Path(args.write), "layout-cost", body, heading=HEADING)
    return 0


if __name__ == "__main__":
    run_script("layout_cost", get_args_parser(), main)
