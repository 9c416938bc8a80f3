"""A live web page for the camera loop (``--serve [HOST:]PORT``): what a headless Pi shows a browser.

The loop feeds a :class:`LivePublisher` (one cheap call per frame, one per decision); a
:class:`LiveServer` (the standard library's threading HTTP server in daemon threads) serves:

* ``/``             the page (:mod:`edge.serve_page`: inline CSS/JS, charts drawn on <canvas>, no CDN);
* ``/events``       server-sent events: ``decision`` (one per window), ``stats`` (every
                    ``stats_interval`` s: fps, link kB/s, counters) and ``end`` (the run is over);
* ``/readout.png``  the last readout, scaled up ``readout_scale`` times (encoded once per window, on a
                    request, never in the loop);
* ``/state.json``   the last decision and stats and the rolling history the charts start from.

Memory is bounded: the history keeps the last ``history`` points per chart, each browser gets a
queue of ``client_queue`` events, at most ``max_clients`` follow ``/events`` at once. Publishing
never blocks: an event for a client whose queue is full is dropped (and counted), a client that
stops reading is cut off after ``write_timeout`` s. :meth:`LiveServer.close` ends every thread it
started (the sockets are shut down so no handler waits on a browser). The page is read-only and
unauthenticated: bound to 127.0.0.1 by default, with a warning note when bound elsewhere.
"""
from __future__ import annotations

import ipaddress
import json
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from urllib.parse import urlsplit

import numpy as np

from core.errors import InputError
from edge.decision import Decision
from edge.serve_page import PAGE

DEFAULT_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
GRACE_S = 0.5                     # close(): time for the browsers' handlers to write the ``end`` event
JOIN_S = 2.0                      # close(): then the longest wait for any one thread
KEEPALIVE_S = 1.0                 # an idle /events stream gets a comment line this often
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def parse_serve(spec: str | int) -> tuple[str, int]:
    """``"[HOST:]PORT"`` (or a port number) -> (host, port); the host defaults to 127.0.0.1, port 0
    means any free port. IPv6 hosts go in brackets: ``[::1]:8080``. Bad text: InputError."""
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        host, port_text = DEFAULT_HOST, str(int(spec))
    elif isinstance(spec, str) and spec.strip():
        text = spec.strip()
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host = DEFAULT_HOST
        elif host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise InputError(f"an IPv6 host goes in brackets ([::1]:8080), got {spec!r}")
    else:
        raise InputError(f"expected [HOST:]PORT, got {spec!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InputError(f"expected [HOST:]PORT with PORT 0..65535 (0: any free port), got {spec!r}")
    if not host or any(c.isspace() or c in "/[]@" for c in host):
        raise InputError(f"expected [HOST:]PORT with a host name or IP address, got {spec!r}")
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    """True when ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False          # a host name other than localhost: assume it is reachable from outside


@dataclass(frozen=True)
class ServeOptions:
    """Where the live page listens and how much it keeps."""

    host: str = DEFAULT_HOST        # 127.0.0.1: this machine only; 0.0.0.0: every interface (a warning note)
    port: int = 0                   # 0: any free port (the note gives the URL)
    history: int = 240              # points kept per chart (and sent in /state.json)
    stats_interval: float = 0.5     # seconds between stats events
    client_queue: int = 64          # events queued per browser before new ones are dropped for it
    max_clients: int = 8            # /events streams at once; more get 503
    write_timeout: float = 5.0      # a browser that takes longer to accept a write is disconnected
    readout_scale: int = 4          # /readout.png: 64x64 readout -> 256x256 (nearest neighbour)

    def __post_init__(self) -> None:
        def positive_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        def seconds(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and 0.01 <= v <= 60

        checks = (
            (isinstance(self.host, str) and bool(self.host),
             f"host must be a host name or IP address, got {self.host!r}"),
            (isinstance(self.port, int) and not isinstance(self.port, bool) and 0 <= self.port <= 65535,
             f"port must be 0..65535 (0: any free port), got {self.port!r}"),
            (positive_int(self.history), f"history must be an integer >= 1, got {self.history!r}"),
            (seconds(self.stats_interval), f"stats_interval must be 0.01..60 s, got {self.stats_interval!r}"),
            (positive_int(self.client_queue), f"client_queue must be an integer >= 1, got {self.client_queue!r}"),
            (positive_int(self.max_clients), f"max_clients must be an integer >= 1, got {self.max_clients!r}"),
            (seconds(self.write_timeout), f"write_timeout must be 0.01..60 s, got {self.write_timeout!r}"),
            (positive_int(self.readout_scale) and self.readout_scale <= 16,
             f"readout_scale must be an integer 1..16, got {self.readout_scale!r}"),
        )
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def from_spec(cls, spec: str | int, **overrides) -> "ServeOptions":
        """Options for ``"[HOST:]PORT"`` (see :func:`parse_serve`)."""
        host, port = parse_serve(spec)
        return cls(host=host, port=port, **overrides)


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class LivePublisher:
    """What the camera loop tells the page, kept thread-safe and bounded. The loop calls
    :meth:`frame` per frame (two attribute stores) and :meth:`decision` per window (one JSON
    encoding, a non-blocking put per browser); the server's threads read the rest."""

    def __init__(self, *, options: ServeOptions, task: str = "", classes: list[str] | tuple[str, ...] = (),
                 readout: str = "") -> None:
        if not isinstance(options, ServeOptions):
            raise InputError(f"options must be a ServeOptions, got {type(options).__name__}")
        self.options = options
        self.task = str(task)
        self.readout = str(readout)      # what leaves the sensor per window, in words (the page's caption)
        self.classes = [str(c) for c in classes]
        self._lock = threading.Lock()
        self._clients: set[queue.Queue] = set()
        self._history = {name: deque(maxlen=options.history) for name in ("latency_ms", "fps", "link_kBps")}
        self._decision: dict | None = None
        self._stats: dict | None = None
        self._readout: tuple[int, np.ndarray] | None = None
        self._png: tuple[int, bytes] | None = None
        self._frames = 0                 # written by the loop, read by the stats tick
        self._link_bytes = 0
        self._decisions = 0
        self._t0 = time.perf_counter()
        self._last_tick = (self._t0, 0, 0)
        self.dropped_events = 0
        self.end: str | None = None
        self.closed = threading.Event()

    # -- the loop's side (cheap, never blocks) ---------------------------------------------------------
    def frame(self, *, frames: int, link_bytes: int) -> None:
        """Frames processed and link bytes sent so far (the stats tick turns them into rates)."""
        self._frames = frames
        self._link_bytes = link_bytes

    def decision(self, decision: Decision, *, readout: np.ndarray | None = None) -> None:
        """One window's decision and (optionally) its readout, to every browser and the history."""
        data = decision.to_dict()
        data["logits"] = [round(v, 4) for v in data["logits"]]
        data["t"] = round(time.perf_counter() - self._t0, 3)
        event = _sse("decision", data)
        kept = None if readout is None else np.array(readout, dtype=np.uint8, copy=True)
        with self._lock:
            self._decision = data
            self._decisions += 1
            if decision.latency_ms is not None:
                self._history["latency_ms"].append(round(float(decision.latency_ms), 3))
            if kept is not None:
                self._readout = (decision.window, kept)
            self._fan_out(event)

    def finish(self, *, end: str) -> None:
        """The run is over (``end``: its reason): a last stats event, then ``end`` to every browser."""
        self.tick()
        with self._lock:
            self.end = str(end)
            self._fan_out(_sse("end", {"end": self.end}))

    # -- the server's side ------------------------------------------------------------------------------
    def tick(self) -> dict:
        """Turn the counters into rates since the last tick, keep them, send a ``stats`` event."""
        now, frames, link_bytes = time.perf_counter(), self._frames, self._link_bytes
        with self._lock:
            t_last, frames_last, bytes_last = self._last_tick
            dt = max(now - t_last, 1e-9)
            stats = {"t": round(now - self._t0, 3), "frames": frames, "decisions": self._decisions,
                     "fps": round((frames - frames_last) / dt, 2),
                     "link_kBps": round((link_bytes - bytes_last) / dt / 1e3, 3),
                     "link_bytes": link_bytes, "clients": len(self._clients),
                     "dropped_events": self.dropped_events}
            self._last_tick = (now, frames, link_bytes)
            self._stats = stats
            self._history["fps"].append(stats["fps"])
            self._history["link_kBps"].append(stats["link_kBps"])
            self._fan_out(_sse("stats", stats))
        return stats

    def subscribe(self) -> queue.Queue | None:
        """A new browser's event queue, or None when ``max_clients`` already follow."""
        with self._lock:
            if len(self._clients) >= self.options.max_clients or self.closed.is_set():
                return None
            q: queue.Queue = queue.Queue(maxsize=self.options.client_queue)
            self._clients.add(q)
            return q

    @property
    def clients(self) -> int:
        """Browsers following /events now."""
        with self._lock:
            return len(self._clients)

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            self._clients.discard(q)

    def state(self) -> dict:
        """/state.json: task, classes, the last decision and stats, the charts' history."""
        with self._lock:
            return {"task": self.task, "classes": self.classes, "readout": self.readout,
                    "decision": self._decision, "stats": self._stats,
                    "end": self.end, "history_points": self.options.history,
                    "history": {name: list(values) for name, values in self._history.items()}}

    def readout_png(self) -> bytes | None:
        """The last readout as a PNG (scaled up), encoded at most once per window; None before any."""
        import cv2

        with self._lock:
            readout, png = self._readout, self._png
        if readout is None:
            return None
        window, image = readout
        if png is not None and png[0] == window:
            return png[1]
        if image.ndim == 2 and 0 < image.max() <= 1:       # a 0/1 image: make it visible
            image = image * np.uint8(255)
        scale = self.options.readout_scale
        big = cv2.resize(image, (image.shape[1] * scale, image.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        ok, buf = cv2.imencode(".png", big)
        if not ok:
            return None
        data = buf.tobytes()
        with self._lock:
            self._png = (window, data)
        return data

    def close(self) -> None:
        """No more events: wake every stream so its handler ends."""
        self.closed.set()
        with self._lock:
            for q in self._clients:
                try:
                    q.put_nowait(None)
                except queue.Full:
                    pass              # its handler sees ``closed`` at its next wake-up

    def _fan_out(self, event: bytes) -> None:     # with the lock held
        for q in self._clients:
            try:
                q.put_nowait(event)
            except queue.Full:
                self.dropped_events += 1          # a slow browser loses this event; the loop goes on


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    server_version = "pixelrnn-edge"
    sys_version = ""

    def setup(self) -> None:
        self.timeout = self.server.options.write_timeout      # reads and writes on this connection
        super().setup()

    def log_message(self, format, *args) -> None:      # quiet: the loop's stdout is JSON lines
        pass

    def version_string(self) -> str:
        return self.server_version

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        if not self._host_allowed():
            self._send(403, b"forbidden host\n", "text/plain; charset=utf-8", head=head)
            return
        path = urlsplit(self.path).path
        publisher = self.server.publisher
        if path in ("/", "/index.html"):
            self._send(200, PAGE.encode(), "text/html; charset=utf-8", head=head)
        elif path == "/state.json":
            self._send(200, json.dumps(publisher.state()).encode(), "application/json", head=head)
        elif path == "/readout.png":
            png = publisher.readout_png()
            if png is None:
                self._send(404, b"no readout yet\n", "text/plain; charset=utf-8", head=head)
            else:
                self._send(200, png, "image/png", head=head)
        elif path == "/events" and not head:
            self._stream()
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head=head)

    def _host_allowed(self) -> bool:
        """Bound to loopback, only loopback Host headers (a page elsewhere can't rebind a name to it)."""
        if not is_loopback(self.server.options.host):
            return True
        host = (self.headers.get("Host") or "").strip()
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        return not host or is_loopback(name)

    def _headers(self, code: int, content_type: str, length: int | None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()

    def _send(self, code: int, body: bytes, content_type: str, *, head: bool = False) -> None:
        self._headers(code, content_type, len(body))
        if not head:
            self.wfile.write(body)

    def _stream(self) -> None:
        publisher = self.server.publisher
        q = publisher.subscribe()
        if q is None:
            self._send(503, b"too many live viewers, or the run is over\n", "text/plain; charset=utf-8")
            return
        try:
            self._headers(200, "text/event-stream", None)
            self.wfile.write(b"retry: 1000\n\n")
            while True:               # queued events first (the last is ``end``), then the close sentinel
                try:
                    event = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    if publisher.closed.is_set():
                        break
                    event = b": keepalive\n\n"
                if event is None:
                    break
                self.wfile.write(event)
        except (OSError, ValueError):       # the browser went away, or was too slow (timeout)
            pass
        finally:
            publisher.unsubscribe(q)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    """The HTTP server, its handler threads tracked so :meth:`close_all` can end them."""

    daemon_threads = True

    def __init__(self, *, options: ServeOptions, publisher: LivePublisher) -> None:
        self.options = options
        self.publisher = publisher
        self.connections: dict[socket.socket, threading.Thread] = {}
        self._conn_lock = threading.Lock()
        if ":" in options.host:
            self.address_family = socket.AF_INET6
        super().__init__((options.host, options.port), _Handler)

    def server_bind(self) -> None:       # HTTPServer's would look the host name up (slow with no DNS)
        TCPServer.server_bind(self)
        self.server_name, self.server_port = self.options.host, self.server_address[1]

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address),
                                  name="pixelrnn-serve-client", daemon=True)
        with self._conn_lock:
            self.connections[request] = thread
        thread.start()

    def shutdown_request(self, request) -> None:
        with self._conn_lock:
            self.connections.pop(request, None)
        super().shutdown_request(request)

    def close_all(self, *, grace: float, timeout: float) -> list[threading.Thread]:
        """Give the handlers ``grace`` seconds in all to finish (their last events written), then shut
        the remaining connections down and wait for each thread; the threads still alive."""
        with self._conn_lock:
            open_now = list(self.connections.items())
        t_end = time.monotonic() + grace
        for _, thread in open_now:
            thread.join(max(0.0, t_end - time.monotonic()))
        for sock, thread in open_now:
            if thread.is_alive():
                try:
                    sock.shutdown(socket.SHUT_RDWR)     # unblocks a read or a write to a stuck browser
                except OSError:
                    pass
        for _, thread in open_now:
            thread.join(timeout)
        return [t for _, t in open_now if t.is_alive()]


class LiveServer:
    """Serve a :class:`LivePublisher` over HTTP for one run. ``with LiveServer(...) as server:``
    binds and starts (its URL in a note, a warning note when reachable from other machines);
    leaving the block ends the page's threads. Feed ``server.publisher`` from the loop."""

    def __init__(self, *, options: ServeOptions, task: str = "", classes: list[str] | tuple[str, ...] = (),
                 readout: str = "", on_note: Callable[[str], None] = lambda s: None) -> None:
        if not isinstance(options, ServeOptions):
            raise InputError(f"options must be a ServeOptions, got {type(options).__name__}")
        if not callable(on_note):
            raise InputError(f"on_note must be callable, got {type(on_note).__name__}")
        self.options = options
        self.publisher = LivePublisher(options=options, task=task, classes=classes, readout=readout)
        self._on_note = on_note
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the live server is not started")
        host = self.options.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
        shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
        return f"http://{shown}:{self._server.server_address[1]}/"

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the live server is not started")
        return self._server.server_address[1]

    def start(self) -> "LiveServer":
        if self._server is not None:
            return self
        try:
            self._server = _Server(options=self.options, publisher=self.publisher)
        except OSError as exc:
            raise InputError(f"cannot serve the live page on {self.options.host}:{self.options.port}: "
                             f"{exc.strerror or exc}") from None
        self._threads = [
            threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                             name="pixelrnn-serve", daemon=True),
            threading.Thread(target=self._tick, name="pixelrnn-serve-stats", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        self._on_note(f"live page at {self.url} (events /events, readout /readout.png, state /state.json)")
        if not is_loopback(self.options.host):
            self._on_note(f"warning: the live page listens on {self.options.host}:{self.port}, reachable from "
                          "other machines; it has no password and no encryption: anyone who can reach it sees "
                          "the decisions and readouts")
        return self

    def _tick(self) -> None:
        while not self.publisher.closed.wait(self.options.stats_interval):
            self.publisher.tick()

    def close(self) -> None:
        """Stop serving: wake and cut off every browser, stop the threads (each waited for at most
        a couple of seconds, so a stuck client can never hang the caller). Closing twice is fine."""
        server, self._server = self._server, None
        if server is None:
            return
        self.publisher.close()
        server.shutdown()                      # serve_forever returns within its poll interval
        server.close_all(grace=GRACE_S, timeout=JOIN_S)
        server.server_close()
        for thread in self._threads:
            thread.join(JOIN_S)
        self._threads = []

    def __enter__(self) -> "LiveServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
