"""``pixelrnn bench`` (edge/bench.py): every stage and percentile, every runtime, device info, plot."""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import REPO
from core.errors import InputError
from edge.bench import STAGES, BenchOptions, add_bench_parser
from edge.device import device_info

pytestmark = pytest.mark.device

PERCENTILE_KEYS = {"n", "unit", "p50", "p90", "p99", "mean", "std", "min", "max"}


def parse(argv):
    parser = argparse.ArgumentParser(prog="pixelrnn")
    add_bench_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench", *map(str, argv)])


@pytest.mark.slow
def test_bench_reports_every_stage_runtime_and_the_device(authors_bundle, tmp_path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    plot = ["--plot", str(png)] if importlib.util.find_spec("matplotlib") else []   # not in the base install
    code = ("import sys, argparse\n"
            "from edge.bench import add_bench_parser\n"
            "p = argparse.ArgumentParser(prog='pixelrnn'); add_bench_parser(p.add_subparsers(dest='command'))\n"
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")
    # a bundle with the authors' readout, exported for every runtime (the default bundles are ONNX-only)
    proc = subprocess.run([sys.executable, "-c", code, "bench", "--model", str(authors_bundle / "gesture"),
                           "--runtime", "all", "--threads", "1", "--warmup", "2", "--runs", "12",
                           "--loop-frames", "48", "--json", str(out), *plot],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert not plot or png.stat().st_size > 10_000
    assert set(results["stages"]) == set(STAGES)
    for name, stats in results["stages"].items():
        assert set(stats) == PERCENTILE_KEYS and stats["min"] <= stats["p50"] <= stats["p99"] <= stats["max"], name
    assert results["stages"]["sensor_frame"]["n"] == 12 * 16
    measured = {b: r for b, r in results["runtimes"].items() if r["available"]}
    assert {"onnxruntime", "ai-edge-litert"} <= set(measured)
    for backend, r in measured.items():
        assert "error" not in r, (backend, r)
        t1 = r["threads"]["1"]
        assert set(t1["host"]) == PERCENTILE_KEYS and set(t1["e2e"]) == PERCENTILE_KEYS
        assert t1["load_ms"] > 0 and t1["first_inference_ms"] > 0 and r["peak_rss_mb"] > 10
        assert r["loop"]["frames"] == 48 and r["loop"]["fps"] > 0 and r["loop"]["windows"] == 3
        assert t1["e2e"]["p50"] > t1["host"]["p50"]
    device = results["device"]
    assert {"cpu", "cores", "os", "python", "versions"} <= set(device) and "onnxruntime" in device["versions"]
    assert results["packet"]["bytes_per_window"] == 4140 and results["packet"]["ratio_256"] > 250
    assert set(results["goals"]) == {"headroom", "host_p99_us", "e2e_p99_ms"}
    assert "goals: headroom" in proc.stdout and "onnxruntime" in proc.stdout


def test_bench_arguments_are_validated(bundled_models, tmp_path):
    with pytest.raises(SystemExit):
        parse(["--threads", "0"])
    for kwargs, message in (({"runtimes": ("nope",)}, "unknown runtime"), ({"runs": 0}, "--runs"),
                            ({"source": str(tmp_path / "none.mp4")}, "video file not found"),
                            ({"pin_core": 9999}, "--pin-core")):
        with pytest.raises(InputError, match=message):
            BenchOptions(**kwargs)
    args = parse(["--model", bundled_models / "lips", "--json", tmp_path / "no" / "b.json"])
    with pytest.raises(InputError, match="does not exist"):
        args.func(args)


def test_plot_without_matplotlib_is_a_one_line_error(monkeypatch, tmp_path):
    from edge.bench import plot_histograms

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match="needs matplotlib"):
        plot_histograms({"stages": {}, "runtimes": {}}, tmp_path / "x.png")


def test_device_info_is_guarded():
    info = device_info()
    assert info["cores"] >= 1 and info["python"] == ".".join(map(str, sys.version_info[:3]))
