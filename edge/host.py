"""The host stage: readout packets -> class decisions, with the decoder (:mod:`edge.decoder`) on a
chosen runtime."""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge.decoder import HostDecoder, softmax_top
from edge.packet import PacketDecoder
from edge.stats import Latency


@dataclass
class HostStage:
    """Packets in, decisions out: checks each packet (:class:`edge.packet.PacketDecoder`), decodes
    accepted readouts, and times the host work and the end-to-end latency (from the ``t_ns`` of
    the window's last frame, a ``time.monotonic_ns()`` shared by processes on one machine).
    ``states``: payload side state, ``{payload name or wire id: state}`` (an opened
    :class:`edge.payloads.PayloadState`'s ``states``); ``coder``: shorthand for the prior's coder."""

    decoder: HostDecoder
    expect_model: str
    coder: object = None
    states: Mapping | None = None
    packets: PacketDecoder = field(init=False)
    packet_latency: Latency = field(default_factory=Latency)   # per readout: checks + payload decoding
    host_latency: Latency = field(default_factory=Latency)
    e2e_latency: Latency = field(default_factory=Latency)
    ended: bool = False

    def __post_init__(self) -> None:
        self.packets = PacketDecoder(expect_model=self.expect_model, shape=self.decoder.shape, coder=self.coder,
                                     states=self.states, encodings=getattr(self.decoder, "encodings", None))

    def handle(self, data: bytes) -> dict | None:
        """One packet -> a decision dict (see :meth:`decision`), or None (rejected / end)."""
        t0 = time.perf_counter()
        packet = self.packets.decode(data)
        if packet is None:
            return None
        if packet.is_end:
            self.packets.end_lost(packet)
            self.ended = True
            return None
        self.packet_latency.add(time.perf_counter() - t0)
        logits = self.decoder(packet.readout)
        k, score = softmax_top(logits)
        t_done = time.monotonic_ns()
        host_s = time.perf_counter() - t0
        self.host_latency.add(host_s)
        e2e_s = (t_done - packet.t_ns) / 1e9 if packet.t_ns else None
        if e2e_s is not None:
            self.e2e_latency.add(e2e_s)
        return {"window": packet.seq, "class": k, "label": self.decoder.classes[k], "score": round(score, 6),
                "latency_ms": round(e2e_s * 1e3, 3) if e2e_s is not None else None,
                "host_us": round(host_s * 1e6, 1), "bytes": packet.nbytes,
                "logits": [round(float(v), 5) for v in logits]}

    def stats(self) -> dict:
        """Counters and raw latency samples (seconds), to merge into the run summary."""
        return {"accepted": self.packets.accepted, "ends": self.packets.ends, "lost": self.packets.lost,
                "malformed": dict(self.packets.rejected), "bytes_in": self.packets.bytes_in,
                "host_s": list(self.host_latency.samples), "e2e_s": list(self.e2e_latency.samples),
                "packet_s": list(self.packet_latency.samples),
                "decoder": self.decoder.describe()}
