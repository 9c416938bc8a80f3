"""The host stage in its own process, receiving readout packets as UDP datagrams (``--link udp://``).

Only packets travel over UDP. A ``multiprocessing`` pipe carries control and results: the child
says ``ready`` (with the port it bound) or ``error`` (one line), streams back each decision, and at
the end its counters and latency samples.

Signals: Ctrl-C or SIGTERM to the whole process group (a terminal, ``kill -TERM -PGID``, systemd
stopping the unit) reach the child too, while the parent ends it in order (end packet, then
``stop``) and waits for its counters. So the child ignores SIGINT, and on SIGTERM keeps serving for
``TERM_GRACE_S`` more seconds, then stops by itself (drains the socket, reports its counters if the
parent is still there). The parent starts it with both signals blocked (the spawned child inherits
the mask and unblocks them once its handlers are in): a signal during the child's start-up, a fresh
interpreter's imports, neither kills it nor prints a traceback.

Every datagram must carry the link's MAC (:mod:`edge.auth`, threat model there): the child checks
it first, with ``hmac.compare_digest``, and a datagram that fails is counted ``bad_mac`` and
dropped before any parsing (a forged prior-coded payload costs one HMAC, not a decode). The key is
this run's key derived from the key file (``link_key``, loaded by the child itself) and the run's
nonce (``run_nonce``), or an ephemeral key the parent made for this run; either reaches the child
in the config, through the ``multiprocessing`` pipe. The child takes one stream, the parent's
sensor's (``stream_id``), and an end-of-stream only for it (:class:`edge.packet.PacketDecoder`).
"""
from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import dataclass, field

from core.errors import InputError
from edge.auth import LinkKey, check_run_nonce, load_link_key
from edge.stats import Latency

READY_TIMEOUT = 120.0      # model load (LCE imports TensorFlow: seconds)
FINISH_TIMEOUT = 10.0
TERM_GRACE_S = 5.0         # after SIGTERM the child serves this long (the parent's end packet, stop)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_term = {"deadline": None}   # the child's: when to stop serving after a SIGTERM (time.monotonic)


@dataclass(frozen=True)
class RemoteConfig:
    """What the host process runs. The link key: ``link_key`` (a key file the child loads; it must
    exist) with ``run_nonce`` (this run's nonce: the child MACs with the run key derived from both,
    :meth:`edge.auth.LinkKey.for_run`), or ``key`` (an ephemeral :class:`edge.auth.LinkKey`,
    pickled through the pipe, used as is), exactly one."""

    bundle_dir: str
    runtime: str
    threads: int
    host: str
    port: int
    prior: str | None = None          # the payload's file (the prior): the host loads its own copy
    payload: str = "8bit"             # the payload name (edge.payloads): which side state to open
    link_key: str | None = None       # the key file: the child loads its own copy
    key: LinkKey | None = field(default=None, repr=False)   # or the run's ephemeral key
    stream_id: int | None = None      # the sensor's stream: the only one the host takes (None: any)
    run_nonce: bytes | None = None    # with link_key: this run's nonce (edge.auth.new_run_nonce)

    def __post_init__(self) -> None:
        if (self.link_key is None) == (self.key is None):
            raise InputError("the host process needs exactly one link key: a key file or an ephemeral key")
        if self.key is not None and not isinstance(self.key, LinkKey):
            raise InputError(f"key must be an edge.auth.LinkKey, got {type(self.key).__name__}")
        if self.link_key is not None and self.run_nonce is None:
            raise InputError("a key file needs the run's nonce (run_nonce): the host derives the run key from both")
        if self.key is not None and self.run_nonce is not None:
            raise InputError("run_nonce goes with a key file only: an ephemeral key is already the run's own")
        if self.run_nonce is not None:
            check_run_nonce(self.run_nonce)
        if self.stream_id is not None and not (isinstance(self.stream_id, int) and 0 <= self.stream_id < 1 << 32):
            raise InputError(f"stream_id must be an integer in [0, 2^32) or None, got {self.stream_id!r}")

    def load_key(self) -> LinkKey:
        """The run's link key: the ephemeral one, or the one derived from the key file (which must
        exist and be private) and ``run_nonce``."""
        if self.key is not None:
            return self.key
        return load_link_key(path=self.link_key, create=False).for_run(self.run_nonce)


def _on_sigterm(signum, frame) -> None:
    """The child's SIGTERM: keep serving until a deadline (the parent may be ending the run in order)."""
    if _term["deadline"] is None:
        _term["deadline"] = time.monotonic() + TERM_GRACE_S


def _term_expired() -> bool:
    return _term["deadline"] is not None and time.monotonic() >= _term["deadline"]


def host_main(conn, config: RemoteConfig) -> None:
    """Child process: load the bundle, bind UDP, decode packets until the end packet, ``stop``, or
    ``TERM_GRACE_S`` after a SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)   # blocked by RemoteHost.start: handlers are in
    try:
        from edge.decoder import HostDecoder
        from edge.host import HostStage
        from edge.link import UdpReceiver
        from edge.models import load_bundle

        bundle = load_bundle(config.bundle_dir)          # verified again: trust nothing across processes
        decoder = HostDecoder(bundle=bundle, runtime=config.runtime, threads=config.threads)
        from edge.payloads import PayloadOptions
        states = PayloadOptions(name=config.payload, file=config.prior).open().states
        key = config.load_key()
        receiver = UdpReceiver(config.host, config.port)
    except (InputError, OSError, ImportError, RuntimeError) as exc:
        conn.send(("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return
    stage = HostStage(decoder=decoder, expect_model=bundle.model_id, states=states)
    stage.packets.expect_stream = config.stream_id      # a PacketDecoder field: this run's stream only
    rejects = Latency()
    try:
        conn.send(("ready", receiver.port, decoder.describe()))
        with receiver:
            _serve(conn, receiver, stage, key, rejects)
            stats = stage.stats()
            stats["link"] = {"packets_in": receiver.packets_in, "bytes_in": receiver.bytes_in,
                             "bad_mac": rejects.count, "bad_mac_check_us": rejects.summary(unit="us")}
        conn.send(("done", stats))
    except (OSError, EOFError):                   # the parent is gone: nothing to report to
        pass
    except Exception as exc:  # noqa: BLE001 - reported to the parent in one line, never a traceback
        try:
            conn.send(("failed", f"{type(exc).__name__}: {str(exc).strip()[:200]}"))
        except (OSError, EOFError):
            pass


def _serve(conn, receiver, stage, key: LinkKey, rejects: Latency) -> None:
    """Decode datagrams until the end packet, or until ``stop`` arrives (or the SIGTERM grace
    ends) and the socket is drained. The MAC is checked first; a datagram that fails costs one
    HMAC (timed into ``rejects``)."""
    stopping = False
    while not stage.ended:
        stopping = stopping or _term_expired()
        data = receiver.recv(timeout=0.0 if stopping else 0.05)
        if data is not None:
            t0 = time.perf_counter()
            packet = key.open(data)
            if packet is None:
                stage.packets.reject("bad_mac", nbytes=len(data))
                rejects.add(time.perf_counter() - t0)
                continue
            decision = stage.handle(packet)
            if decision is not None:
                conn.send(("decision", decision))
            continue
        if stopping:
            return
        if conn.poll():
            conn.recv()                              # the only message a parent sends is "stop"
            stopping = True


class RemoteHost:
    """Parent-side handle of the host process; a context manager that always ends the child."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        ctx = multiprocessing.get_context("spawn")       # a clean interpreter: no inherited runtimes
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=host_main, args=(child, config), name="pixelrnn-host", daemon=True)
        self._child = child
        self.port: int | None = None
        self.decoder: dict = {}
        self.stats: dict | None = None
        self.failure: str | None = None

    def start(self) -> "RemoteHost":
        _start_with_signals_blocked(self._proc)
        self._child.close()
        if not self._conn.poll(READY_TIMEOUT):
            raise RuntimeError(f"the host process did not start within {READY_TIMEOUT:.0f} s")
        try:
            msg = self._conn.recv()
        except EOFError:
            raise RuntimeError("the host process exited while starting") from None
        if msg[0] == "error":
            raise InputError(f"host process: {msg[1]}")
        _, self.port, self.decoder = msg
        return self

    def poll(self) -> list[dict]:
        """Decisions that arrived so far (non-blocking)."""
        out = []
        try:
            while self._conn.poll():
                msg = self._conn.recv()
                if msg[0] == "decision":
                    out.append(msg[1])
                elif msg[0] == "done":
                    self.stats = msg[1]
                elif msg[0] == "failed":
                    self.failure, self.stats = msg[1], {}
        except (EOFError, OSError):
            pass
        return out

    def finish(self, timeout: float = FINISH_TIMEOUT) -> list[dict]:
        """Ask the child to stop after draining; return the remaining decisions."""
        out = self.poll()
        if self.stats is None:
            try:
                self._conn.send("stop")
            except (OSError, ValueError):
                pass
        while self.stats is None:
            try:
                if not self._conn.poll(timeout):
                    break
            except (EOFError, OSError):
                break
            got = self.poll()
            out.extend(got)
            if not got and self.stats is None and not self._proc.is_alive():
                break
        return out

    def close(self) -> None:
        """Wait briefly for the child, then kill it (SIGTERM would only start its grace period)."""
        if self._proc.pid is not None:                   # started (start may have failed before)
            self._proc.join(timeout=2.0)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(timeout=2.0)
        self._child.close()
        self._conn.close()

    def __enter__(self) -> "RemoteHost":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()


def _start_with_signals_blocked(proc) -> None:
    """Start ``proc`` with SIGINT and SIGTERM held back. Blocked in this thread: the spawned child
    inherits the mask and unblocks them in :func:`host_main` once its handlers are in. In the main
    thread the Python handlers are also swapped for one that only notes the signal: another thread
    of this process may take it, and Python then runs the handler in the main thread, so e.g. a
    KeyboardInterrupt could land inside ``Process.start`` and leave a child that was spawned but
    never given its work (it would print a traceback). Afterwards the handlers and this thread's
    mask are restored and a noted signal is raised again: its handler runs once the child is
    started. Without ``pthread_sigmask`` (not POSIX), a plain start. ``proc``: a spawn-context process."""
    if not hasattr(signal, "pthread_sigmask"):
        proc.start()
        return
    from multiprocessing import resource_tracker

    # the spawn start method's helper process: started inside Process.start, it would unblock
    # both signals after its own start (it blocks them the same way), so start it first
    resource_tracker.ensure_running()
    held: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for signum in _SIGNALS:
            if signal.getsignal(signum) is not None:         # None: not set from Python, left alone
                handlers[signum] = signal.signal(signum, lambda n, frame: held.append(n))
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        proc.start()
    finally:
        try:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)   # signals pending here are delivered now
    for signum in dict.fromkeys(held):
        signal.raise_signal(signum)                            # to the handler that was in place
