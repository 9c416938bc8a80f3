"""The device a benchmark ran on: CPU, cores, OS, Python and package versions; on a Raspberry Pi
also temperature, clock and throttling flags. Every probe is guarded: missing ones are omitted."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00\n ")
    except OSError:
        return None


def _vcgencmd(*args: str) -> str | None:
    exe = shutil.which("vcgencmd")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_info() -> dict:
    """CPU, cores, OS, Python and package versions; on a Raspberry Pi also temperature, clock and
    throttling flags (vcgencmd, else sysfs). Every probe is guarded: missing ones are omitted."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in cpuinfo.splitlines():
            if line.startswith(key) and ":" in line:
                cpu = line.split(":", 1)[1].strip()
                break
        else:
            continue
        break
    info = {"cpu": cpu, "machine": platform.machine(), "cores": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(), "versions": {}}
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        try:
            info["load_average_1min"] = round(os.getloadavg()[0], 2)   # other work on the machine
        except OSError:
            pass
    for dist in ("numpy", "opencv-python-headless", "opencv-python", "onnxruntime", "ai-edge-litert",
                 "tflite-runtime", "larq-compute-engine", "pixelrnn-edge"):
        try:
            info["versions"][dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    board = _read("/proc/device-tree/model")
    if board:
        info["board"] = board
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if freq and freq.isdigit():
        info["cpu0_mhz"] = int(freq) / 1000
    temp = _read("/sys/class/thermal/thermal_zone0/temp")
    if temp and temp.lstrip("-").isdigit():
        info["temperature_c"] = int(temp) / 1000
    if board and "raspberry pi" in board.lower():
        pi = {"temp": _vcgencmd("measure_temp"), "arm_clock": _vcgencmd("measure_clock", "arm"),
              "throttled": _vcgencmd("get_throttled")}
        info["raspberry_pi"] = {k: v for k, v in pi.items() if v is not None}
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB: VmHWM from /proc/self/status on Linux (reset
    by exec; ``getrusage``'s ru_maxrss is not: a spawned child would report its parent's peak),
    else ``resource.getrusage``; 0 where neither exists."""
    status = _read("/proc/self/status")
    if status:
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    try:
        import resource
    except ImportError:
        return 0.0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20   # kB on Linux, bytes on macOS
