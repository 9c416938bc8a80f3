"""The host stage in its own process, receiving readout packets as UDP datagrams (``--link udp://``).

Only packets travel over UDP. A ``multiprocessing`` pipe carries control and results: the child
says ``ready`` (with the port it bound) or ``error`` (one line), streams back each decision, and at
the end its counters and latency samples. The child ignores SIGINT: Ctrl-C reaches the whole
process group, and the parent ends the child in order (end packet, then ``stop``).
"""
from __future__ import annotations

import multiprocessing
import signal
from dataclasses import dataclass

from core.errors import InputError

READY_TIMEOUT = 120.0      # model load (LCE imports TensorFlow: seconds)
FINISH_TIMEOUT = 10.0


@dataclass(frozen=True)
class RemoteConfig:
    bundle_dir: str
    runtime: str
    threads: int
    host: str
    port: int
    prior: str | None = None          # --payload prior: the host loads its own copy of the prior file


def host_main(conn, config: RemoteConfig) -> None:
    """Child process: load the bundle, bind UDP, decode packets until the end packet or ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from edge.decoder import HostDecoder
        from edge.host import HostStage
        from edge.link import UdpReceiver
        from edge.models import load_bundle

        bundle = load_bundle(config.bundle_dir)          # verified again: trust nothing across processes
        decoder = HostDecoder(bundle=bundle, runtime=config.runtime, threads=config.threads)
        coder = None
        if config.prior is not None:
            from edge.sensor_stage import open_prior
            coder = open_prior(config.prior)
        receiver = UdpReceiver(config.host, config.port)
    except (InputError, OSError, ImportError, RuntimeError) as exc:
        conn.send(("error", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
        return
    stage = HostStage(decoder=decoder, expect_model=bundle.model_id, coder=coder)
    try:
        conn.send(("ready", receiver.port, decoder.describe()))
        with receiver:
            _serve(conn, receiver, stage)
            stats = stage.stats()
            stats["link"] = {"packets_in": receiver.packets_in, "bytes_in": receiver.bytes_in}
        conn.send(("done", stats))
    except (OSError, EOFError):                   # the parent is gone: nothing to report to
        pass
    except Exception as exc:  # noqa: BLE001 - reported to the parent in one line, never a traceback
        try:
            conn.send(("failed", f"{type(exc).__name__}: {str(exc).strip()[:200]}"))
        except (OSError, EOFError):
            pass


def _serve(conn, receiver, stage) -> None:
    """Decode datagrams until the end packet, or until ``stop`` arrives and the socket is drained."""
    stopping = False
    while not stage.ended:
        data = receiver.recv(timeout=0.0 if stopping else 0.05)
        if data is not None:
            decision = stage.handle(data)
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
        self._proc.start()
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
        self._proc.join(timeout=2.0)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=2.0)
        self._conn.close()

    def __enter__(self) -> "RemoteHost":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()
