"""The camera loop's live web page (edge.serve, ``--serve [HOST:]PORT``): the address and its checks,
the page, /state.json, /readout.png and the server-sent events of a real camera loop read with urllib,
the default loopback binding and the warning elsewhere, a browser that never reads (the loop must not
wait for it, and the server must still close), and a real headless Chromium drawing the page."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "img" / "serve.png"
SCREENSHOT_MAX = 200_000
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never via a proxy


def get(url: str, *, timeout: float = 10):
    return NO_PROXY.open(url, timeout=timeout)


def serve_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pixelrnn-serve") and t.is_alive()]


def read_events(response, *, want: int, kinds=("decision",), deadline_s: float = 60) -> list[tuple[str, dict]]:
    """Server-sent events of the given kinds from an open /events response, until ``want`` of them."""
    events, kind, t_end = [], None, time.monotonic() + deadline_s
    while len(events) < want and time.monotonic() < t_end:
        line = response.readline()
        if not line:
            break
        text = line.decode().rstrip("\n")
        if text.startswith("event: "):
            kind = text[len("event: "):]
        elif text.startswith("data: ") and kind in kinds:
            events.append((kind, json.loads(text[len("data: "):])))
    return events


@dataclass
class Live:
    url: str
    loop: object
    stop: threading.Event
    notes: list[str] = field(default_factory=list)
    decisions: list = field(default_factory=list)
    outcome: dict = field(default_factory=dict)


def readout_expectations(bundle: Path) -> tuple[int, tuple[int, int]]:
    """Bytes per window (8-bit payload of the layout's levels + the 44-byte header) and the (height, width) of
    /readout.png for a bundle: SensorStage.last_view's image (the authors' 64x64 map; a layout's maps in a grid,
    a row per read-out frame, a column per channel), scaled ServeOptions.readout_scale times."""
    from core.readout_layout import ReadoutLayout
    from edge.packet import OVERHEAD_BYTES
    from edge.sensor_stage import frames_per_row
    from edge.serve import ServeOptions

    layout = ReadoutLayout.from_dict(json.loads((bundle / "manifest.json").read_text()).get("readout_layout") or {})
    r, per_row = len(layout.frames), frames_per_row(len(layout.frames), layout.channels)
    h, w = (64, 64) if layout.is_authors else (r // per_row * layout.side, per_row * layout.channels * layout.side)
    scale = ServeOptions().readout_scale
    return layout.payload_bytes + OVERHEAD_BYTES, (h * scale, w * scale)


@contextmanager
def live_loop(models: Path, *, serve="0", source="test", **overrides):
    """A camera loop on ``source`` with the live page, running in a thread until the block ends."""
    from edge import CameraLoop

    loop = CameraLoop.create_from_bundle(models / "gesture", serve=serve, **overrides)
    live = Live(url="", loop=loop, stop=threading.Event())
    ready = threading.Event()

    def on_note(text: str) -> None:
        live.notes.append(text)
        if (found := re.search(r"live page at (http://\S+/)", text)) is not None:
            live.url = found.group(1)
            ready.set()

    def target() -> None:
        try:
            live.outcome["result"] = loop.run(source, on_decision=live.decisions.append, on_note=on_note,
                                              stop=live.stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            live.outcome["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, name="test-camera-loop", daemon=True)
    thread.start()
    try:
        assert ready.wait(60), "the live page never started"
        if "error" in live.outcome:
            raise live.outcome["error"]
        yield live
    finally:
        live.stop.set()
        thread.join(60)
        loop.close()
    assert not thread.is_alive(), "the camera loop did not stop"
    if "error" in live.outcome:
        raise live.outcome["error"]


# -- the address ------------------------------------------------------------------------------------
@pytest.mark.device
def test_serve_address_parsing_and_option_errors():
    from core.errors import InputError
    from edge import CameraLoopOptions
    from edge.serve import ServeOptions, is_loopback, parse_serve

    assert parse_serve("8080") == ("127.0.0.1", 8080)
    assert parse_serve(0) == ("127.0.0.1", 0)
    assert parse_serve("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_serve("[::1]:9000") == ("::1", 9000)
    assert parse_serve("localhost:0") == ("localhost", 0)
    for bad in ("", "web", "70000", "-1", "::1:80", "host name:80", ":", True, None, 1.5):
        with pytest.raises(InputError):
            parse_serve(bad)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("pi.local")
    assert CameraLoopOptions(serve="8080").serve_options == ServeOptions(host="127.0.0.1", port=8080)
    assert CameraLoopOptions().serve_options is None
    with pytest.raises(InputError) as info:
        CameraLoopOptions(serve="localhost:http")
    message = str(info.value)
    assert message.startswith("serve must be '[HOST:]PORT'") and "\n" not in message and "--" not in message
    with pytest.raises(InputError, match="history must be"):
        ServeOptions(history=0)


@pytest.mark.device
def test_publisher_never_blocks_and_keeps_bounded_history():
    """A subscriber that never drains loses events (counted); publishing stays fast; history is capped."""
    from edge.decision import Decision
    from edge.serve import LivePublisher, ServeOptions

    publisher = LivePublisher(options=ServeOptions(history=5, client_queue=4), task="gesture", classes=["a", "b"])
    stuck = publisher.subscribe()
    readout = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    t0 = time.perf_counter()
    for window in range(2000):
        publisher.decision(Decision(window=window, class_index=1, label="b", score=0.9, latency_ms=1.5,
                                    host_us=100.0, bytes=4140, logits=(0.0, 1.0)), readout=readout)
        publisher.frame(frames=16 * (window + 1), link_bytes=4140 * (window + 1))
    assert time.perf_counter() - t0 < 5
    assert stuck.qsize() == 4 and publisher.dropped_events == 2000 - 4
    state = publisher.state()
    assert state["decision"]["window"] == 1999 and len(state["history"]["latency_ms"]) == 5
    for _ in range(8):
        publisher.tick()
    assert len(publisher.state()["history"]["fps"]) == 5
    png = publisher.readout_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and publisher.readout_png() is png     # encoded once per window
    publisher.close()
    assert publisher.subscribe() is None


# -- a real camera loop, read with urllib -----------------------------------------------------------------
@pytest.mark.device
@pytest.mark.parametrize("models", ["bundled_models", "authors_bundle"])   # the default gesture model; a 64x64 one
def test_live_page_state_readout_and_events_from_a_real_loop(models, request):
    models = request.getfixturevalue(models)
    per_window, png_shape = readout_expectations(models / "gesture")
    with live_loop(models, realtime=True) as live:
        assert live.url.startswith("http://127.0.0.1:")                    # loopback by default
        assert not any("warning" in n for n in live.notes)
        page = get(live.url).read().decode()
        assert "<canvas" in page and 'id="label"' in page and "EventSource" in page
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page must load nothing remote"
        with get(live.url + "events", timeout=30) as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            decisions = [data for _, data in read_events(stream, want=3)]
            stats = read_events(stream, want=1, kinds=("stats",))
            state = json.loads(get(live.url + "state.json").read())
            png = get(live.url + "readout.png").read()
            live.stop.set()
            tail = read_events(stream, want=1, kinds=("end",), deadline_s=30)   # then the server closes it
    classes = live.loop.classes
    assert len(decisions) == 3 and all(d["label"] in classes and 0 < d["score"] <= 1 for d in decisions)
    assert [d["window"] for d in decisions] == list(range(decisions[0]["window"], decisions[0]["window"] + 3))
    by_window = {d.window: d for d in live.decisions}
    for d in decisions:                         # the page's events are the loop's decisions
        assert by_window[d["window"]].label == d["label"] and by_window[d["window"]].bytes == d["bytes"] == per_window
    assert stats and stats[0][1]["fps"] >= 0 and stats[0][1]["frames"] >= 47
    assert state["task"] == "gesture" and state["classes"] == classes and state["decision"]["label"] in classes
    assert state["history"]["latency_ms"] and state["history"]["fps"]
    image = __import__("cv2").imdecode(np.frombuffer(png, np.uint8), 0)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and image.shape == png_shape
    assert tail == [("end", {"end": "stopped"})]
    assert live.outcome["result"].end == "stopped"
    assert serve_threads() == []                # every server thread ended with the run


@pytest.mark.device
def test_serve_elsewhere_than_loopback_warns(bundled_models):
    with live_loop(bundled_models, serve="0.0.0.0:0", max_frames=16) as live:
        pass
    warnings = [n for n in live.notes if n.startswith("warning:")]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "reachable from other machines" in warnings[0]
    assert live.url.startswith("http://127.0.0.1:")
    assert serve_threads() == []


@pytest.mark.device
def test_a_client_that_never_reads_does_not_stall_the_loop(bundled_models):
    """A browser that opens /events and never reads: the loop runs at full speed and ends on time."""
    with live_loop(bundled_models, max_frames=480) as live:
        port = int(live.url.rsplit(":", 1)[1].rstrip("/"))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        t0 = time.monotonic()
        while "result" not in live.outcome and time.monotonic() - t0 < 60:
            time.sleep(0.05)
    sock.close()
    result = live.outcome["result"]
    assert result.end == "max_frames" and result.summary["windows"] == 30
    assert time.monotonic() - t0 < 60
    assert serve_threads() == []


@pytest.mark.device
def test_server_closes_while_a_client_is_stuck_in_a_write():
    """Many large events to a client that never reads: the handler blocks in a write, the queue
    fills, events are dropped, publishing stays fast, and close() still ends every thread."""
    from edge.decision import Decision
    from edge.serve import LiveServer, ServeOptions

    server = LiveServer(options=ServeOptions(client_queue=8, write_timeout=30)).start()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    deadline = time.monotonic() + 10
    while server.publisher.clients == 0:
        assert time.monotonic() < deadline, "the stream never subscribed"
        time.sleep(0.01)
    logits = tuple(float(i) for i in range(500))      # ~3.4 kB per event: the socket buffers fill
    slowest, window = 0.0, 0
    while server.publisher.dropped_events == 0 and window < 30_000:
        window += 1
        t0 = time.perf_counter()
        server.publisher.decision(Decision(window=window, class_index=0, label="x", score=1.0, latency_ms=1.0,
                                           host_us=1.0, bytes=1, logits=logits))
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.5 and server.publisher.dropped_events > 0
    t0 = time.monotonic()
    server.close()
    assert time.monotonic() - t0 < 5
    sock.close()
    assert serve_threads() == []


@pytest.mark.device
def test_run_camera_serve_flag(bundled_models, capsys):
    from edge.run_camera import main

    code = main(["--source", "test", "--headless", "--max-frames", "32", "--serve", "0",
                 "--model", str(bundled_models / "gesture")])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert re.search(r"run_camera: live page at http://127\.0\.0\.1:\d+/", out.err)
    assert len([line for line in out.out.splitlines() if line.startswith("{")]) == 2   # --headless JSON lines
    with pytest.raises(SystemExit) as info:
        main(["--serve", "not-a-port"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "--serve" in err and len(err.strip().splitlines()) == 1
    assert serve_threads() == []


# -- a real browser ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_headless_chromium_draws_the_live_page(bundled_models, tmp_path):
    """Debian's Chromium (driven by Selenium and Debian's chromedriver) loads the page while a camera
    loop runs: the label shows a class of the bundle, the three charts draw points, the readout image
    loads. The screenshot is kept at docs/img/serve.png when PIXELRNN_UPDATE_SCREENSHOT=1."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"no {CHROMIUM} and {CHROMEDRIVER} (apt-get install chromium chromium-driver: .ci/browser-deps)")
    pytest.importorskip("selenium", reason="selenium is in the [test] extra")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,800", "--hide-scrollbars", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    width = readout_expectations(bundled_models / "gesture")[1][1]           # /readout.png's, in pixels
    with live_loop(bundled_models, realtime=True) as live:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",       # the screenshot's size
                                   {"width": 1100, "height": 664, "deviceScaleFactor": 1, "mobile": False})
            driver.get(live.url)
            classes = live.loop.classes

            def drawn(d) -> bool:
                return d.execute_script("""
                    const label = document.getElementById('label').textContent;
                    const img = document.getElementById('readout');
                    const charts = ['latency', 'fps', 'link'].map(n => document.getElementById('chart-' + n));
                    const inked = charts.every(c => {
                      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                      let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++;
                      return n > 200;
                    });
                    return arguments[0].includes(label) && img.complete && img.naturalWidth === arguments[1]
                      && charts.every(c => Number(c.dataset.points || 0) >= 8) && inked;""", classes, width)

            WebDriverWait(driver, 60, poll_frequency=0.25).until(drawn)
            assert driver.find_element("id", "label").text in classes
            assert driver.find_element("id", "status").text == "live"
            png = driver.get_screenshot_as_png()
        finally:
            driver.quit()
    assert serve_threads() == []
    shot = tmp_path / "serve.png"
    shot.write_bytes(png)
    if len(png) >= SCREENSHOT_MAX:                   # recompress (still lossless) before giving up
        import cv2

        ok, buf = cv2.imencode(".png", cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 9])
        shot.write_bytes(buf.tobytes())
    assert shot.stat().st_size < SCREENSHOT_MAX, f"screenshot {shot.stat().st_size} bytes"
    if os.environ.get("PIXELRNN_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
