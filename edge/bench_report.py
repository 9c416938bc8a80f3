"""The report of ``pixelrnn bench``: the issue's goals, a plain-text table, latency histograms."""
from __future__ import annotations

import os
from pathlib import Path

from core.errors import InputError
from edge.tables import text_table

GOALS = {"headroom": 3.0, "host_p99_us": 100.0, "e2e_p99_ms": 5.0}


def goals(results: dict) -> dict:
    """The issue's three goals, from the ONNX Runtime results (threads = the first value). The e2e
    figure is the larger of the isolated critical path's p99 and, if measured, the p99 in the
    camera loop paced at the source's rate (what a live camera sees)."""
    ort = results["runtimes"].get("onnxruntime", {})
    if not ort.get("threads"):
        return {"error": "onnxruntime was not measured"}
    first = next(iter(ort["threads"].values()))
    headroom = ort["loop"]["headroom"]
    host = first["host"]["p99"]
    e2e = first["e2e"]["p99"] / 1e3
    paced = ort.get("loop_realtime", {}).get("latency_ms", {}).get("e2e", {})
    if "p99" in paced:
        e2e = max(e2e, paced["p99"])
    return {"headroom": {"value": headroom, "goal": GOALS["headroom"], "met": headroom >= GOALS["headroom"]},
            "host_p99_us": {"value": host, "goal": GOALS["host_p99_us"], "met": host <= GOALS["host_p99_us"]},
            "e2e_p99_ms": {"value": e2e, "goal": GOALS["e2e_p99_ms"], "met": e2e <= GOALS["e2e_p99_ms"]}}


def format_table(results: dict) -> str:
    """A plain-text report of a results dict."""
    d, m = results["device"], results["model"]
    lines = [f"device: {d['cpu']}, {d.get('cores_usable', d['cores'])} usable core(s), {d['os']}, "
             f"Python {d['python']}",
             f"model: {m['task']} {m['model_id']} ({m['path']})"]
    lines += text_table(("stage", "p50 us", "p90 us", "p99 us", "mean us", "max us"),
                        ([name] + [f"{s[k]:.1f}" for k in ("p50", "p90", "p99", "mean", "max")]
                         for name, s in results["stages"].items()), align="lrrrrr")
    if "stages_error" in results:
        lines.append(f"stages: error: {results['stages_error']}")
    rows = []
    for backend, r in results["runtimes"].items():
        if not r.get("available") or "error" in r:
            note = f"skipped: {r['reason']}" if not r.get("available") else f"error: {r['error']}"
            rows.append([backend, note, "", "", "", "", "", ""])
            continue
        for threads, e in r["threads"].items():
            h, x = e["host"], e["e2e"]
            rows.append([backend, threads, f"{e['load_ms']:.1f}", f"{e['first_inference_ms']:.2f}",
                         f"{h['p50']:.1f}/{h['p99']:.1f}", f"{x['p50']:.1f}/{x['p99']:.1f}",
                         f"{r['loop']['fps']:.1f}", f"{r['peak_rss_mb']:.1f}"])
    lines += text_table(("runtime", "thr", "load ms", "1st ms", "host p50/p99 us", "e2e p50/p99 us", "loop fps",
                         "RSS MB"), rows, align="lrrrrrrr")
    lines.append(packet_line(results["packet"]))
    g = results.get("goals", {})
    if "error" not in g:
        def met(key: str) -> str:
            return "met" if g[key]["met"] else "NOT met"

        lines.append(f"goals: headroom {g['headroom']['value']:.1f}x (>= 3: {met('headroom')}); "
                     f"host p99 {g['host_p99_us']['value']:.1f} us (<= 100: {met('host_p99_us')}); "
                     f"e2e p99 {g['e2e_p99_ms']['value']:.3f} ms (<= 5: {met('e2e_p99_ms')})")
    return "\n".join(lines)


def packet_line(p: dict) -> str:
    """One line on the readout link: bytes per window (measured mean for a variable-size payload)."""
    if p["bytes_per_window"] is None:
        return (f"packet: {p['payload']}: size not measured (variable size, at most "
                f"{p['max_payload_bytes']:,} B payload)")
    size = f"{p['bytes_per_window']:,}" if isinstance(p["bytes_per_window"], int) else f"{p['bytes_per_window']:,.1f}"
    kind = (f"mean over {p['windows']} windows, {p.get('fallback_windows', 0)} sent in the fallback"
            if p["variable"] else "fixed")
    layout = f"; readout {p['readout_layout']['describe']}" if p.get("readout_layout") else ""
    return (f"packet: {size} bytes per window ({p['payload']}, {kind}{layout}); raw 16x64x64 "
            f"{p['raw_64']:,} ({p['ratio_64']:.1f}x), 16x256x256 {p['raw_256']:,} ({p['ratio_256']:.1f}x)")


def plot_histograms(raw: dict, path: str | os.PathLike) -> Path:
    """A PNG of latency histograms (matplotlib, imported here: it is not in the base install)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("the latency plot needs matplotlib (pip install matplotlib); it is not in the base "
                         "install") from None
    import numpy as np

    def panel(ax, series: dict[str, np.ndarray], title: str) -> None:
        series = {k: v for k, v in series.items() if v.size}
        ax.set_title(title)
        ax.set_xlabel("microseconds (log scale)")
        if not series:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
            return
        low = max(min(float(v.min()) for v in series.values()), 0.05)
        high = max(float(v.max()) for v in series.values()) * 1.01
        bins = np.logspace(np.log10(low), np.log10(max(high, low * 1.1)), 80)
        for label, us in series.items():
            ax.hist(np.clip(us, low, None), bins=bins, alpha=0.5, label=label)
        ax.set_xscale("log")
        ax.legend(fontsize=7)

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    for ax, (title, key) in zip(axes[0], (("host decoder per window", "host"),
                                          ("end to end after a window's last frame", "e2e"))):
        panel(ax, {f"{backend} x{threads}": np.asarray(samples[key]) * 1e6
                   for backend, per_threads in raw["runtimes"].items()
                   for threads, samples in per_threads.items()}, title)
    for ax, names, title in zip(axes[1], (("capture", "preprocess", "sensor_frame", "sensor_readout_frame"),
                                          ("packet_encode", "packet_decode", "link_inproc", "link_udp")),
                                ("per frame", "per packet")):
        panel(ax, {name: np.asarray(raw["stages"].get(name, [])) * 1e6 for name in names}, title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
