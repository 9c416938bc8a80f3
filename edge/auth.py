"""Link authentication: a MAC under a shared secret on every packet of a network (UDP) link.

Threat model (docs/SECURITY.md has the longer version and the measurements). The readout packet
(:mod:`edge.packet`) has a CRC32, which catches corruption but not forgery: anyone who can reach
the host's UDP port and knows the format and the model id (public, in the bundle's manifest.json)
could make packets the host would decode. So every datagram on a UDP link carries a MAC:
HMAC-SHA256 (standard library ``hmac``, SHA-256 by name) of the whole packet under a 32-byte key,
**truncated to its first 16 bytes** (128 bits: a blind forgery succeeds with probability 2^-128
per try), appended after the packet as a link-layer trailer; the packet format itself is
unchanged. The host checks the MAC with ``hmac.compare_digest`` *before* any other work, so a
forged datagram costs one HMAC (microseconds) whatever payload it claims (a forged prior-coded
payload would otherwise cost a full arithmetic decode, about 0.3 s).

What the MAC protects against: forged or altered packets from anyone without the key (readouts
that would become decisions, end-of-stream packets that would stop the host, sequence numbers that
would make the genuine packets stale, costly payloads). Replays of genuine packets within a run are
rejected by the host's sequence rules (:class:`edge.packet.PacketDecoder`): one stream per run, a
sequence number at or below the last accepted one is ``stale_seq``, a jump of more than
``max_seq_jump`` windows is ``seq_jump``. Replays across runs fail the MAC: every run MACs with its
own key (below), so a datagram recorded in one run is ``bad_mac`` in any other.

What it does not protect against: eavesdropping (packets are not encrypted: anyone who can read
the link reads the readouts); a compromised sensor, host or any process that can read the key file
(it holds the key: its packets are authentic); flooding the host's port at line rate (each forged
datagram is cheap to reject, but enough of them still take the CPU and the socket buffer, and
genuine datagrams can be dropped: that is a denial of service the link cannot prevent).

The key: a key file (32 random bytes from :mod:`secrets`, created if absent, mode 0600, written
atomically; an existing file that group or others may access is refused), loaded by both the
sensor side and the host process. Its secret is never the MAC key itself: each run draws a random
16-byte nonce (:func:`new_run_nonce`), hands it to the host process with the stream id, and both
ends MAC with the run key ``HMAC-SHA256(secret, "pixelrnn-link-run-v1" + nonce)``
(:meth:`LinkKey.for_run`). Without a file, an ephemeral key is made for one run and handed to the
host process through the ``multiprocessing`` pipe (never through a file or the command line); it
is already this run's own, so it is used as is. The in-process link carries no MAC: its packets
never leave the process.
"""
from __future__ import annotations

import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from core.atomic import atomic_open
from core.errors import InputError

__all__ = ["KEY_BYTES", "MAC_BYTES", "RUN_NONCE_BYTES", "LinkKey", "check_run_nonce", "load_link_key",
           "new_run_nonce"]

KEY_BYTES = 32               # the shared secret: 256 random bits
MAC_BYTES = 16               # HMAC-SHA256 truncated to 128 bits
RUN_NONCE_BYTES = 16         # a run's nonce: 128 random bits (runs never share a run key by chance)
_DIGEST_NAME = "sha256"        # the name: hmac.digest takes its one-shot OpenSSL path
_RUN_LABEL = b"pixelrnn-link-run-v1"   # domain separation: a run key is never a MAC of a packet


@dataclass(frozen=True)
class LinkKey:
    """The shared secret of one link, and where it came from (``origin``: a file path,
    ``ephemeral``, or ``derived per run from ...`` for a run key, :meth:`for_run`). The secret
    never shows in ``repr``. Picklable (the host process gets a copy through the
    ``multiprocessing`` pipe)."""

    secret: bytes = field(repr=False)
    origin: str = "ephemeral"

    def __post_init__(self) -> None:
        if not (isinstance(self.secret, bytes) and len(self.secret) == KEY_BYTES):
            raise InputError(f"a link key must be {KEY_BYTES} bytes, got "
                             f"{len(self.secret) if isinstance(self.secret, bytes) else type(self.secret).__name__}")

    @classmethod
    def ephemeral(cls) -> "LinkKey":
        """A fresh random key for one run, kept in memory only."""
        return cls(secrets.token_bytes(KEY_BYTES), "ephemeral")

    def for_run(self, nonce: bytes) -> "LinkKey":
        """The key of the run with ``nonce`` (:func:`new_run_nonce`): HMAC-SHA256(secret,
        ``pixelrnn-link-run-v1`` + nonce). Both ends derive it from the shared key file, so a
        datagram recorded in one run fails the MAC in every other (another nonce, another key)."""
        check_run_nonce(nonce)
        return LinkKey(hmac.digest(self.secret, _RUN_LABEL + nonce, _DIGEST_NAME),
                       f"derived per run from {self.origin}")

    def mac(self, packet: bytes) -> bytes:
        """The 16-byte tag of ``packet``: HMAC-SHA256 under the key, truncated."""
        return hmac.digest(self.secret, packet, _DIGEST_NAME)[:MAC_BYTES]

    def seal(self, packet: bytes) -> bytes:
        """``packet`` with its tag appended: what goes on the wire."""
        return bytes(packet) + self.mac(packet)

    def open(self, datagram: bytes) -> bytes | None:
        """The packet inside an authentic ``datagram``, or None (too short, or the tag does not
        match). Constant-time comparison; nothing of the packet is parsed before it."""
        if len(datagram) <= MAC_BYTES:
            return None
        view = memoryview(datagram)
        body, tag = view[:-MAC_BYTES], view[-MAC_BYTES:]
        if not hmac.compare_digest(hmac.digest(self.secret, body, _DIGEST_NAME)[:MAC_BYTES], tag):
            return None
        return body.tobytes()


def new_run_nonce() -> bytes:
    """A fresh random nonce for one run (:meth:`LinkKey.for_run`); it is not secret."""
    return secrets.token_bytes(RUN_NONCE_BYTES)


def check_run_nonce(nonce: object) -> None:
    """A run nonce must be ``RUN_NONCE_BYTES`` bytes: anything else is a one-line InputError."""
    if not (isinstance(nonce, bytes) and len(nonce) == RUN_NONCE_BYTES):
        got = f"{len(nonce)} bytes" if isinstance(nonce, bytes) else type(nonce).__name__
        raise InputError(f"a run nonce must be {RUN_NONCE_BYTES} bytes, got {got}")


def load_link_key(*, path: str | os.PathLike, create: bool = True) -> LinkKey:
    """The key in the key file ``path``; with ``create``, a new random key is written there first
    if the file does not exist (mode 0600, atomically). A file that group or others may access, a
    file of the wrong size or something other than a regular file is a one-line InputError."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InputError(f"link key must be a file path, got {path!r}")
    if not isinstance(create, bool):
        raise InputError(f"create must be True or False, got {create!r}")
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        if not create:
            raise InputError(f"link key file {path} does not exist")
        if not path.parent.is_dir():
            raise InputError(f"link key file {path}: folder {path.parent} does not exist")
        with atomic_open(path, "wb") as fh:             # a mkstemp file: mode 0600 from the start
            fh.write(secrets.token_bytes(KEY_BYTES))
    return _read_key(path)


def _read_key(path: Path) -> LinkKey:
    """Read a key file, refusing one that others could read or change (checked on the open file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"cannot read link key file {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"link key file {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise InputError(f"link key file {path} is accessible by group or others (mode {mode:04o}): "
                             f"run chmod 600 {path}")
        secret = fh.read(KEY_BYTES + 1)
    if len(secret) != KEY_BYTES:
        raise InputError(f"link key file {path} must hold exactly {KEY_BYTES} bytes, it has "
                         f"{'more' if len(secret) > KEY_BYTES else len(secret)}")
    return LinkKey(secret, str(path))
