"""The readout link between the sensor stage and the host: in-process queue or UDP datagrams.

Every byte and packet that crosses is counted on the sending side (``bytes_out``) and the
receiving side (``bytes_in``). Over UDP one packet is one datagram (a 64x64 8-bit readout is
4,140 bytes, well under the 65,507-byte datagram limit on loopback); the IPv4 and UDP headers
(28 bytes per datagram) belong to this demo transport and are not counted as link bytes.

A UDP link is always authenticated (:mod:`edge.auth`, threat model there and in
docs/SECURITY.md): :class:`UdpSender` appends a 16-byte MAC to every packet (the datagram is
packet + MAC, and ``bytes_out`` counts both); the host process checks it before anything else
(``edge.remote``). :class:`UdpReceiver` only receives datagrams. The in-process link carries no MAC.
The default address is loopback (127.0.0.1); :attr:`LinkSpec.loopback` tells a caller to warn
when the host would listen on another interface.
"""
from __future__ import annotations

import ipaddress
import socket
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import InputError
from edge.auth import MAC_BYTES, LinkKey

MAX_DATAGRAM = 65_507
RECV_BUFFER = 1 << 20


@dataclass(frozen=True)
class LinkSpec:
    """``inproc`` or ``udp`` with an IPv4 address and port (port 0: the host picks a free one)."""

    kind: str = "inproc"
    host: str = "127.0.0.1"
    port: int = 0

    @property
    def url(self) -> str:
        return "inproc" if self.kind == "inproc" else f"udp://{self.host}:{self.port}"

    @property
    def loopback(self) -> bool:
        """True for the in-process link and UDP on a loopback address (reachable from this machine only)."""
        return self.kind == "inproc" or ipaddress.IPv4Address(self.host).is_loopback


def parse_link(spec: str) -> LinkSpec:
    """``inproc`` or ``udp://IPV4:PORT`` -> :class:`LinkSpec`; anything else is a one-line InputError."""
    if not isinstance(spec, str):
        raise InputError(f"link must be a string, got {type(spec).__name__}")
    if spec == "inproc":
        return LinkSpec()
    hint = "expected inproc or udp://127.0.0.1:PORT"
    parts = urlsplit(spec)
    if parts.scheme != "udp" or parts.path or parts.query or parts.fragment:
        raise InputError(f"link {spec!r}: {hint}")
    try:
        port = parts.port
        host = parts.hostname
        address = ipaddress.IPv4Address(host or "")
    except ValueError:
        raise InputError(f"link {spec!r}: {hint} (an IPv4 address and a port 0..65535)") from None
    if port is None:
        raise InputError(f"link {spec!r}: no port; {hint}")
    return LinkSpec(kind="udp", host=str(address), port=port)


class InprocLink:
    """A FIFO of packets inside one process: the sensor stage sends, the host stage receives."""

    def __init__(self) -> None:
        self._queue: deque[bytes] = deque()
        self.packets_out = self.bytes_out = self.packets_in = self.bytes_in = 0

    def send(self, packet: bytes) -> None:
        self._queue.append(bytes(packet))
        self.packets_out += 1
        self.bytes_out += len(packet)

    def recv(self) -> bytes | None:
        """The oldest packet, or None if none is waiting."""
        if not self._queue:
            return None
        packet = self._queue.popleft()
        self.packets_in += 1
        self.bytes_in += len(packet)
        return packet

    def close(self) -> None:
        self._queue.clear()

    def __enter__(self) -> "InprocLink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UdpSender:
    """Sends each packet as one datagram to ``(host, port)``, sealed with ``key``'s MAC
    (:meth:`edge.auth.LinkKey.seal`): a network link is never unauthenticated."""

    def __init__(self, host: str, port: int, *, key: LinkKey) -> None:
        if not (isinstance(port, int) and 1 <= port <= 65535):
            raise InputError(f"UDP port must be 1..65535, got {port!r}")
        if not isinstance(key, LinkKey):
            raise InputError(f"key must be an edge.auth.LinkKey, got {type(key).__name__}")
        self.address = (host, port)
        self.key = key
        self.packets_out = self.bytes_out = self.send_errors = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, packet: bytes) -> None:
        if len(packet) + MAC_BYTES > MAX_DATAGRAM:
            raise ValueError(f"packet of {len(packet)} bytes (+ {MAC_BYTES}-byte MAC) does not fit one UDP datagram")
        datagram = self.key.seal(packet)
        try:
            self._sock.sendto(datagram, self.address)
        except OSError:               # e.g. ECONNREFUSED from an earlier ICMP: counted, not fatal
            self.send_errors += 1
            return
        self.packets_out += 1
        self.bytes_out += len(datagram)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "UdpSender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class UdpReceiver:
    """Binds ``(host, port)`` (port 0: any free port, see ``port``) and receives datagrams as they
    are (MAC included: the host process checks it, :meth:`edge.auth.LinkKey.open`)."""

    def __init__(self, host: str, port: int) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            self._sock.bind((host, port))
        except OSError as exc:
            self._sock.close()
            raise InputError(f"cannot listen on udp://{host}:{port} ({exc.strerror or exc})") from None
        self.host, self.port = self._sock.getsockname()[:2]
        self.packets_in = self.bytes_in = 0

    def recv(self, timeout: float | None) -> bytes | None:
        """One datagram, or None after ``timeout`` seconds without one."""
        self._sock.settimeout(timeout)
        try:
            data = self._sock.recv(MAX_DATAGRAM + 1)
        except (socket.timeout, BlockingIOError):
            return None
        self.packets_in += 1
        self.bytes_in += len(data)
        return data

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "UdpReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
