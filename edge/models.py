"""Model bundles for the edge: the package's bundled default per task, or a bundle folder.

The defaults live in the installed ``pixelrnn`` package at ``pixelrnn/models/<task>/`` (export
bundles: ``manifest.json``, ``sensor_weights.npz``, ``host.onnx``, ``host.tflite``, ...). They are
found from the package's location without importing ``pixelrnn.model`` (so no PyTorch);
``$PIXELRNN_MODELS`` points to another folder with the same ``<task>/`` layout. A bundle is
verified (``export.bundle.verify_bundle``: every file's size and sha256) before anything is loaded.

What a task's camera loop uses unless told otherwise (its region of interest) is in one table,
:data:`TASK_DEFAULTS`, so the script and the Python API agree.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from core.bundle import BundleError, check_sensor_scalars, verify_bundle
from core.errors import InputError
from core.npz import open_npz
from core.readout_layout import ReadoutLayout
from firmware_sim.noise import NoiseModel
from firmware_sim.weights import SensorWeights


@dataclass(frozen=True)
class TaskDefaults:
    """A task's defaults for the camera loop."""

    roi: str                   # an edge.roi mode: the crop the task's models were trained on


TASK_DEFAULTS: dict[str, TaskDefaults] = {
    "gesture": TaskDefaults(roi="center"),     # hand gestures: the centre square of the frame
    "lips": TaskDefaults(roi="mouth"),         # lip reading: the mouth under a detected face (GRID crops)
}
OTHER_TASK = TaskDefaults(roi="center")        # a bundle whose manifest names no known task
TASKS = tuple(TASK_DEFAULTS)
DEFAULT_TASK = "gesture"
SENSOR_FILE = "sensor_weights.npz"
ENV_MODELS = "PIXELRNN_MODELS"


def models_root() -> Path:
    """``$PIXELRNN_MODELS`` if set, else ``pixelrnn/models`` next to the installed package."""
    env = os.environ.get(ENV_MODELS)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("pixelrnn")
    if spec is None or not spec.submodule_search_locations:
        raise BundleError("the pixelrnn package is not installed, so there is no bundled model: "
                          "give a bundle folder")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


def task_defaults(task: str) -> TaskDefaults:
    """The defaults of ``task`` (a bundle's ``task``; an unknown or empty one gets :data:`OTHER_TASK`)."""
    return TASK_DEFAULTS.get(task, OTHER_TASK)


def default_bundle_dir(task: str) -> Path:
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return models_root() / task


@dataclass(frozen=True)
class Bundle:
    """A verified export bundle: its folder, manifest, and the sensor program it was made for."""

    path: Path
    manifest: dict
    sensor: SensorWeights

    @property
    def task(self) -> str:
        return str(self.manifest.get("task", ""))

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.manifest.get("classes", [])]

    @property
    def model_id(self) -> str:
        return self.sensor.program_hash()

    @property
    def layout(self) -> ReadoutLayout:
        """What the sensor reads out per window (the manifest's ``readout_layout``, checked against
        ``sensor_weights.npz`` by ``verify_bundle``; a bundle without one has the authors')."""
        return self.sensor.layout

    def file(self, name: str, *, hint: str = "") -> Path:
        """A file listed in the manifest (checked by verify_bundle), or a one-line BundleError."""
        if name not in self.manifest.get("files", {}):
            raise BundleError(f"bundle {self.path} has no {name}{': ' + hint if hint else ''}")
        return self.path / name


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Verify a bundle folder and load its sensor program (``allow_pickle=False``)."""
    path = Path(path)
    manifest = verify_bundle(path)
    if SENSOR_FILE not in manifest.get("files", {}):
        raise BundleError(f"bundle {path} has no {SENSOR_FILE}: re-export it with pixelrnn export")
    sensor = load_sensor_program(path / SENSOR_FILE)
    recorded = manifest.get("sensor_program_hash")
    if recorded != sensor.program_hash():
        raise BundleError(f"{path}: {SENSOR_FILE} is program {sensor.program_hash()}, the manifest says "
                          f"{recorded}: the bundle is inconsistent; re-export it")
    pre = manifest.get("preprocessing") or {}
    t, size = sensor.timesteps, sensor.frontend.size
    listed_t = pre.get("timesteps", t)
    listed_size = (pre.get("frontend") or {}).get("size", size)
    if (listed_t, listed_size) != (t, size):
        raise BundleError(f"{path}: {SENSOR_FILE} runs {t} frames at {size}x{size}, the manifest says "
                          f"{listed_t} at {listed_size}x{listed_size}: the bundle is inconsistent; re-export it")
    return Bundle(path=path, manifest=manifest, sensor=sensor)


def load_sensor_program(file: Path) -> SensorWeights:
    """A bundle's ``sensor_weights.npz`` -> SensorWeights, checked: finite thresholds and front end,
    timesteps 1..1024 and sensor size 8..1024; anything else a one-line BundleError naming the file."""
    try:
        with open_npz(file, what="sensor weights", example="pixelrnn export") as data:
            if "scalars" not in data.files:
                raise ValueError("no scalars array")
            check_sensor_scalars(data["scalars"], where=str(file))
            sensor = SensorWeights.from_npz_dict(data)
    except BundleError:
        raise
    except (InputError, ValueError, TypeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BundleError(f"{file} is not a usable sensor program ({first[:120]}); re-export the bundle") from None
    return sensor


def resolve_bundle(*, model: str | os.PathLike | None, task: str | None) -> Bundle:
    """``model`` (a bundle folder, or ``default``/None for the bundled model of ``task``) and
    ``task`` (None: the bundle's own; with a bundle, it must agree) -> a verified Bundle."""
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    if model is None or str(model) == "default":
        chosen = task or DEFAULT_TASK
        path = default_bundle_dir(chosen)
        if not (path / "manifest.json").is_file():
            raise BundleError(f"no bundled model for task {chosen} at {path}: give a bundle folder")
        bundle = load_bundle(path)
    else:
        bundle = load_bundle(model)
    if task is not None and bundle.task and bundle.task != task:
        raise InputError(f"task {task} but {bundle.path} is a {bundle.task} model")
    return bundle


def check_noise(*, noise: NoiseModel, bundle: Bundle) -> None:
    """A noise calibration is fitted to one sensor program: refuse it for another bundle's."""
    if not isinstance(noise, NoiseModel):
        raise InputError(f"noise must be a NoiseModel, got {type(noise).__name__}")
    try:
        noise.check_program(bundle.model_id)
    except ValueError as exc:
        raise InputError(str(exc)) from None
