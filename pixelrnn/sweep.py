"""``pixelrnn sweep``: train configurations x seeds through Optuna, resumable, on one machine or many.

Why Optuna: its studies live in an RDB (SQLite on one machine; PostgreSQL or MySQL shared by many),
so several ``pixelrnn sweep`` processes on any number of machines pointed at one ``--storage`` URL
share the work, and a resumed sweep only runs the points that have not completed. Ray Tune would
also do it, but brings a cluster runtime we do not need for a grid of CPU jobs.

How a point is claimed (no two processes train the same point): a process picks the first point that
is neither complete nor running and records it in its own new trial (its params), under an exclusive
lock on ``OUT/.sweep.lock`` (one machine: the pick and the record are one step). It then looks for
another running trial of the same point (several machines on one server storage, whose OUT folders
are not shared) and gives its own up if there is one (PRUNED, ``duplicate_of``): each process records
its point before it looks, so the later of two always sees the earlier (both may give up; the point
is picked again on the next pass). A killed process stops its trial's heartbeat (``--heartbeat``
seconds); after three missed beats another process fails that trial and the point is free again.
Optuna's own queue (``enqueue_trial``) is not enough here: on SQLite two processes can take the same
queued trial, and its GridSampler hands concurrent processes the same point.

A spec file (YAML) names the grid::

    study: grid-frontier              # the study's name in the storage
    base: {dataset: grid, epochs: 10} # TrainConfig settings every run shares
    configs:                          # name -> settings on top of base
      authors: {}
      f2-1bit: {readout_every: 2, readout_bits: 1}
    seeds: [0, 1, 2]
    folds: [0, 1, 2, 3, 4]            # optional: cross-validation (cambridge), one run per fold
    out_dir: runs/sweep/grid-frontier # optional: where runs go (default runs/sweep/<study>; --out-dir wins)

A stored study's grid cannot change; to add seeds to a finished sweep, write a spec with a new study name and
the first one's ``out_dir``: its finished runs are adopted, not trained again.

``init_from`` may name ``{seed}`` (and, with folds, ``{fold}``): each point then starts from its own earlier
run, e.g. ``runs/sweep/<study>/<config>/seed{seed}/model.pt`` for a second stage that fine-tunes every seed
of a first, so the spread over seeds stays the spread of the whole two-stage recipe.

Each point trains with :func:`pixelrnn.train_loop.train` into ``OUT/<config>/seed<k>`` (with
``folds``: ``OUT/<config>/seed<k>/fold<f>``; resumed from its ``last.pt`` if a previous process was
stopped); the trial's value is the best validation accuracy (the selection criterion); test accuracy
and readout bytes are kept as trial attributes for the report, never used to choose. ``--summary``
prints one row per configuration; with folds, a seed's figure is the mean over its folds (the
cross-validation accuracy) and the spread is over seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import string
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from core.atomic import write_json_atomic
from core.errors import InputError
from pixelrnn.data import CV_DATASETS, FOLDS
from pixelrnn.train_config import TrainConfig, load_config_file

__all__ = ["SweepSpec", "add_sweep_parser", "load_spec", "main", "mean_std", "run_sweep", "summarize"]


@dataclass
class SweepSpec:
    """A grid of named TrainConfig overrides x seeds (see the module docstring)."""

    study: str
    configs: dict[str, dict]
    seeds: list[int]
    base: dict = field(default_factory=dict)
    folds: list[int] = field(default_factory=list)    # empty: no cross-validation axis
    out_dir: str = ""                                  # where runs go; empty: runs/sweep/<study>

    def __post_init__(self) -> None:
        if not (isinstance(self.study, str) and self.study.strip()):
            raise InputError("sweep spec: study must be a non-empty name")
        if not (isinstance(self.configs, dict) and self.configs):
            raise InputError("sweep spec: configs must be a non-empty mapping of name -> settings")
        if not (isinstance(self.seeds, list) and self.seeds
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)
                and len(set(self.seeds)) == len(self.seeds)):
            raise InputError(f"sweep spec: seeds must be a list of distinct integers >= 0, got {self.seeds!r}")
        if not isinstance(self.base, dict):
            raise InputError("sweep spec: base must be a mapping of settings")
        if not (isinstance(self.folds, list)
                and all(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < FOLDS for f in self.folds)
                and len(set(self.folds)) == len(self.folds)):
            raise InputError(f"sweep spec: folds must be a list of distinct integers 0..{FOLDS - 1}, "
                             f"got {self.folds!r}")
        if not isinstance(self.out_dir, str):
            raise InputError(f"sweep spec: out_dir must be a folder path, got {self.out_dir!r}")
        set_by_sweep = ("seed", "out_dir", "fold") if self.folds else ("seed", "out_dir")
        for name, overrides in self.configs.items():
            if not (isinstance(name, str) and name and "/" not in name):
                raise InputError(f"sweep spec: config name {name!r} must be a non-empty string without '/'")
            if not isinstance(overrides, dict):
                raise InputError(f"sweep spec: config {name!r} must be a mapping of settings")
            for key in set_by_sweep:
                if key in overrides or key in self.base:
                    raise InputError(f"sweep spec: {key} is set by the sweep; remove it from {name!r}/base")
            seeds = self.seeds if _per_point({**self.base, **overrides}.get("init_from")) else self.seeds[:1]
            for fold, seed in ((f, k) for f in self.folds or [None] for k in seeds):
                cfg = self.train_config(name, seed, Path("."), fold=fold)   # every point must be valid
                if self.folds and cfg.dataset not in CV_DATASETS:
                    raise InputError(f"sweep spec: folds are for the cross-validated data sets "
                                     f"({', '.join(CV_DATASETS)}); config {name!r} trains on {cfg.dataset}")

    @property
    def out(self) -> Path:
        """The folder the runs go to (the spec's ``out_dir``, else ``runs/sweep/<study>``)."""
        return Path(self.out_dir or f"runs/sweep/{self.study}")

    def grid(self) -> dict[str, list]:
        """The Optuna search space: config x seed (x fold)."""
        grid = {"config": list(self.configs), "seed": list(self.seeds)}
        return {**grid, "fold": list(self.folds)} if self.folds else grid

    def points(self) -> list[tuple]:
        """Every (config, seed) or (config, seed, fold) point, in grid order."""
        pts = [(name, seed) for name in self.configs for seed in self.seeds]
        return [(*p, f) for p in pts for f in self.folds] if self.folds else pts

    def train_config(self, name: str, seed: int, out: Path, *, fold: int | None = None) -> TrainConfig:
        run = out / name / f"seed{seed}"
        values = {**self.base, **self.configs[name], "seed": seed, "out_dir": str(run)}
        if fold is not None:
            values.update(fold=fold, out_dir=str(run / f"fold{fold}"))
        if _per_point(values.get("init_from")):
            values["init_from"] = _per_point_path(values["init_from"], seed=seed, fold=fold, name=name)
            if not Path(values["init_from"]).is_file():
                raise InputError(f"sweep spec: config {name!r} seed {seed}: init_from {values['init_from']!r} does "
                                 f"not exist; this spec is a second stage: run the sweep that writes it first")
        return TrainConfig.from_dict(values, source=f"sweep config {name!r}" + (f" fold {fold}" if fold is not None
                                                                                 else ""))

    def point_config(self, point: tuple, out: Path) -> TrainConfig:
        name, seed, *fold = point
        return self.train_config(name, seed, out, fold=fold[0] if fold else None)

    def point_of(self, params: dict) -> tuple:
        """A trial's params -> its point (the grid's keys, in order)."""
        return tuple(params.get(k) for k in self.grid())


def _per_point(init_from) -> bool:
    """Whether an ``init_from`` setting is a per-point template (it names ``{seed}`` or ``{fold}``)."""
    return isinstance(init_from, str) and "{" in init_from


def _per_point_path(template: str, *, seed: int, fold: int | None, name: str) -> str:
    """``init_from`` with ``{seed}`` (and ``{fold}``) filled in for one point."""
    allowed = {"seed": seed} if fold is None else {"seed": seed, "fold": fold}
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise InputError(f"sweep spec: config {name!r}: init_from {template!r} is not a valid template ({exc}); "
                         f"write {{seed}} where the seed goes") from None
    unknown = sorted(fields - set(allowed))
    if unknown:
        known, bad = (", ".join("{" + k + "}" for k in keys) for keys in (allowed, unknown))
        raise InputError(f"sweep spec: config {name!r}: init_from may name only {known}, not {bad}")
    return template.format(**allowed)


def load_spec(path: str | Path) -> SweepSpec:
    data = load_config_file(path)
    known = ("study", "base", "configs", "seeds", "folds", "out_dir")
    unknown = set(data) - set(known)
    if unknown:
        raise InputError(f"{path}: unknown sweep keys {sorted(unknown)} (known: {', '.join(known)})")
    return SweepSpec(study=data.get("study", ""), configs=data.get("configs") or {},
                     seeds=data.get("seeds") or [], base=data.get("base") or {}, folds=data.get("folds") or [],
                     out_dir="" if data.get("out_dir") is None else data["out_dir"])


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise InputError(f"pixelrnn sweep needs Optuna: pip install -c constraints.txt -e '.[train]' ({exc})") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _study(spec: SweepSpec, storage: str, *, heartbeat: int = 60, sampler=None):
    """The spec's study in ``storage`` (created if new), with a trial heartbeat every ``heartbeat`` s."""
    optuna = _optuna()
    try:
        rdb = _rdb(optuna, storage, heartbeat)
        return optuna.create_study(study_name=spec.study, storage=rdb, load_if_exists=True, direction="maximize",
                                   sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    except (ValueError, ImportError, RuntimeError) as exc:     # bad URL, missing driver
        raise InputError(f"--storage {storage!r}: {str(exc).splitlines()[0][:200]}") from None


def _rdb(optuna, storage: str, heartbeat: int):
    """Optuna's RDB storage at ``storage``. Processes started together on a new database race to
    create its tables (one of them hits the other's rows): the loser waits and opens it again."""
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            with warnings.catch_warnings():        # the heartbeat arguments are "experimental" since 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(storage, heartbeat_interval=heartbeat, grace_period=3 * heartbeat)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)


def _record(trial_or_attrs, report: dict) -> dict:
    attrs = {"test_accuracy": float(report["test"]["accuracy"]), "readout_bytes": int(report.get("readout_bytes") or 0),
             "best_epoch": int(report["best_epoch"]), "simulator_agrees": bool(report["simulator_agrees"])}
    if trial_or_attrs is not None:
        for key, value in attrs.items():
            trial_or_attrs.set_user_attr(key, value)
    return attrs


def _same_grid(spec: SweepSpec, study, *, storage: str, out: Path) -> None:
    """Refuse a spec whose grid (configs, seeds, folds) differs from the one its study was started with: Optuna
    cannot change a stored study's choices, and would fail every new trial with a traceback."""
    grid = spec.grid()
    for t in study.get_trials(deepcopy=False):
        for key, dist in t.distributions.items():
            old, new = list(getattr(dist, "choices", ())), grid.get(key)
            if new is not None and old != list(new):
                raise InputError(f"sweep spec: study {spec.study!r} in {storage} was started with {key}s {old}, this "
                                 f"spec has {list(new)}, and a stored study's grid cannot change: give the spec a new "
                                 f"study name and 'out_dir: {out}' (its finished runs are adopted, not trained "
                                 f"again)")


def adopt_finished(spec: SweepSpec, study, out: Path) -> int:
    """Record in the study the points whose run folder already holds a report.json but which the
    storage does not know as complete (a process that died after training, or runs made with
    ``pixelrnn train`` into the sweep's folders with the same settings): they are never trained again."""
    import optuna

    done = _completed(spec, study)
    grid = spec.grid()
    dists = {key: optuna.distributions.CategoricalDistribution(values) for key, values in grid.items()}
    adopted = 0
    for point in spec.points():
        cfg = spec.point_config(point, out)
        report_path = Path(cfg.out_dir) / "report.json"
        if point in done or not report_path.is_file():
            continue
        report = json.loads(report_path.read_text())
        if _settings(report.get("config")) != cfg.to_dict() or report.get("val_accuracy") is None:
            print(f"sweep {spec.study}: {report_path} was made with other settings; not adopted", flush=True)
            continue
        study.add_trial(optuna.trial.create_trial(params=dict(zip(grid, point)), distributions=dists,
                                                  value=float(report["val_accuracy"]),
                                                  user_attrs=_record(None, report)))
        adopted += 1
    return adopted


def _settings(recorded) -> dict | None:
    """A report's settings, with those added to TrainConfig since it was written at their defaults (a new
    setting's default is what runs did before it existed, e.g. ``val_split: fixed``)."""
    if not isinstance(recorded, dict):
        return None
    return {**{f.name: f.default for f in fields(TrainConfig)}, **recorded}


def _by_point(spec: SweepSpec, study, state) -> dict[tuple, list]:
    """The study's trials in ``state`` that have a point, by point."""
    found: dict[tuple, list] = {}
    for t in study.get_trials(deepcopy=False, states=(state,)):
        if t.params:
            found.setdefault(spec.point_of(t.params), []).append(t)
    return found


def _completed(spec: SweepSpec, study) -> dict[tuple, object]:
    """The study's completed trials by point (the last one of a point done twice)."""
    import optuna

    return {point: trials[-1] for point, trials in _by_point(spec, study, optuna.trial.TrialState.COMPLETE).items()}


def _run_point(cfg: TrainConfig, *, progress: bool) -> tuple[dict, bool]:
    """Train one point (or reuse / resume its folder) -> (its report.json, whether it trained now)."""
    from pixelrnn.train_loop import train

    out = Path(cfg.out_dir)
    report = out / "report.json"
    if report.is_file():
        done = json.loads(report.read_text())
        if _settings(done.get("config")) != cfg.to_dict():
            raise InputError(f"{out} holds a finished run with other settings; move it away or use another "
                             f"--out-dir")
        return done, False
    result = train(config=cfg, resume=(out / "last.pt").is_file(), progress=progress)
    if not result:
        raise RuntimeError(f"{out}: training stopped before its last epoch")
    return result, True


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (released by the kernel if the process dies)."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _point_sampler():
    """An Optuna sampler that returns the point the sweep picked: the sweep chooses, Optuna records.
    (Built on call: Optuna is an optional dependency.)"""
    import optuna

    class PointSampler(optuna.samplers.BaseSampler):
        point: dict = {}

        def infer_relative_search_space(self, study, trial):
            return {}

        def sample_relative(self, study, trial, search_space):
            return {}

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.point[param_name]

    return PointSampler()


def run_sweep(*, spec: SweepSpec, storage: str, out: Path, n_trials: int | None = None,
              progress: bool = True, heartbeat: int = 60) -> int:
    """Run the points not yet completed in ``storage`` (claimed as the module docstring says);
    returns how many trained in this call. Stops when every point is complete, when ``n_trials``
    trained, or when every point left is running in another process."""
    optuna = _optuna()
    if not (isinstance(heartbeat, int) and heartbeat >= 1):
        raise InputError(f"--heartbeat must be a whole number of seconds >= 1, got {heartbeat!r}")
    out.mkdir(parents=True, exist_ok=True)          # runs and the claim lock live here
    sampler = _point_sampler()
    study = _study(spec, storage, heartbeat=heartbeat, sampler=sampler)
    _same_grid(spec, study, storage=storage, out=out)
    adopt_finished(spec, study, out)
    running = optuna.trial.TrialState.RUNNING
    ran = 0

    def objective(trial) -> float:
        nonlocal ran
        with _locked(out / ".sweep.lock"):
            taken = set(_by_point(spec, study, running)) | set(_completed(spec, study))
            free = [p for p in spec.points() if p not in taken]
            if not free:
                raise optuna.TrialPruned("every point is complete or running")
            sampler.point = dict(zip(spec.grid(), free[0]))
            point = tuple(trial.suggest_categorical(key, values) for key, values in spec.grid().items())
        where = f" fold {point[2]}" if spec.folds else ""
        rivals = [t.number for t in _by_point(spec, study, running).get(point, []) if t.number != trial.number]
        if rivals:                       # another machine picked it at the same moment
            trial.set_user_attr("duplicate_of", rivals[0])
            print(f"sweep {spec.study}: {point[0]} seed {point[1]}{where} is taken by trial {rivals[0]} "
                  f"(another process); skipped", flush=True)
            raise optuna.TrialPruned("taken by another process")
        cfg = spec.point_config(point, out)
        done = (Path(cfg.out_dir) / "report.json").is_file()
        print(f"sweep {spec.study}: {point[0]} seed {point[1]}{where} -> {cfg.out_dir}"
              + (" (finished before: its report is reused)" if done else ""), flush=True)
        report, trained = _run_point(cfg, progress=progress)
        _record(trial, report)
        ran += trained
        return float(report["val_accuracy"])

    for _ in range(4 * len(spec.points()) + 4):     # each pass trains a point (or gives one up)
        with warnings.catch_warnings():              # Optuna marks it experimental since 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)     # a killed process's trial: failed, its point free
        todo = set(spec.points()) - set(_completed(spec, study))
        if not todo or (n_trials is not None and ran >= n_trials):
            break
        if todo <= set(_by_point(spec, study, running)):
            print(f"sweep {spec.study}: the {len(todo)} point(s) left are running in other processes", flush=True)
            break
        study.optimize(objective, n_trials=1, catch=())
    return ran


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value): the spread over seeds."""
    m = sum(values) / len(values)
    return m, (math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0)


def summarize(*, spec: SweepSpec, storage: str, out: Path) -> list[dict]:
    """One row per configuration: seeds done, readout bytes, validation and test mean +- std (%).

    With folds, only seeds whose every fold is done count; a seed's value is its mean over the folds
    (equal-sized stratified folds, so also the pooled cross-validation accuracy)."""
    study = _study(spec, storage)
    adopt_finished(spec, study, out)
    done = _completed(spec, study)
    rows = []
    for name in spec.configs:
        per_seed = {}
        for seed in spec.seeds:
            trials = [done.get((name, seed, f)) for f in spec.folds] if spec.folds else [done.get((name, seed))]
            if all(t is not None for t in trials):
                per_seed[seed] = trials
        if not per_seed:
            rows.append({"config": name, "seeds": 0})
            continue
        val_of = {s: 100 * sum(t.value for t in ts) / len(ts) for s, ts in per_seed.items()}
        test_of = {s: 100 * sum(t.user_attrs["test_accuracy"] for t in ts) / len(ts) for s, ts in per_seed.items()}
        val, test = mean_std(list(val_of.values())), mean_std(list(test_of.values()))
        trials = [t for ts in per_seed.values() for t in ts]
        rows.append({"config": name, "seeds": len(per_seed), "folds": len(spec.folds), "settings": spec.configs[name],
                     "readout_bytes": trials[0].user_attrs["readout_bytes"],
                     "val_mean": val[0], "val_std": val[1], "test_mean": test[0], "test_std": test[1],
                     "val_per_seed": val_of, "test_per_seed": test_of,
                     "simulator_agrees": all(t.user_attrs["simulator_agrees"] for t in trials)})
    return rows


def add_sweep_parser(subparsers) -> None:
    """The ``sweep`` subcommand (registered in setup.py under ``pixelrnn.commands``)."""
    p = subparsers.add_parser(
        "sweep", help="train a grid of configurations x seeds through Optuna (resumable, multi-machine)",
        description="Run the (configuration, seed) points of a sweep spec that are not done yet. Point "
                    "several processes, on one machine or many, at the same --storage to share the work.")
    p.add_argument("--spec", required=True, help="YAML sweep spec (study, base, configs, seeds)")
    p.add_argument("--storage", default=None,
                   help="Optuna RDB URL (default sqlite:///OUT/sweep.db); e.g. postgresql://host/db for many machines")
    p.add_argument("--out-dir", default=None,
                   help="where runs go (default: the spec's out_dir, else runs/sweep/<study>)")
    p.add_argument("--n-trials", type=int, default=None, help="run at most this many points in this process")
    p.add_argument("--heartbeat", type=int, default=60,
                   help="seconds between a running point's heartbeats; after 3 missed ones (a killed process) "
                        "another process takes the point again (default 60)")
    p.add_argument("--summary", action="store_true", help="print the per-configuration table and exit")
    p.add_argument("--json-out", default=None, help="with --summary: also write the rows as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    out = Path(args.out_dir) if args.out_dir else spec.out
    if args.n_trials is not None and args.n_trials < 1:
        raise InputError(f"--n-trials must be >= 1, got {args.n_trials}")
    out.mkdir(parents=True, exist_ok=True)
    storage = args.storage or f"sqlite:///{out / 'sweep.db'}"
    if args.summary:
        rows = summarize(spec=spec, storage=storage, out=out)
        print("| config | bytes/window | seeds | val % | test % |\n| --- | --- | --- | --- | --- |")
        for r in rows:
            if r["seeds"]:
                print(f"| {r['config']} | {r['readout_bytes']} | {r['seeds']} | "
                      f"{r['val_mean']:.1f} ± {r['val_std']:.1f} | {r['test_mean']:.1f} ± {r['test_std']:.1f} |")
            else:
                print(f"| {r['config']} | - | 0 | - | - |")
        if args.json_out:
            write_json_atomic(Path(args.json_out), {"study": spec.study, "rows": rows})
        return 0
    ran = run_sweep(spec=spec, storage=storage, out=out, n_trials=args.n_trials, progress=not args.no_progress,
                    heartbeat=args.heartbeat)
    print(f"sweep {spec.study}: ran {ran} point(s); storage {storage}")
    return 0
