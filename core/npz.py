"""Reading ``.npz`` archives the one safe way: ``allow_pickle=False``, and every problem one line.

Clip files, readout files, representative sets and data sets are all ``.npz`` archives of named
arrays. :func:`open_npz` opens one for reading and turns what can go wrong (a missing file, a
single ``.npy`` array where an archive is expected, a truncated or corrupt archive, also while an
array is read inside the ``with`` block) into a one-line :class:`core.errors.InputError`.
"""
from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.errors import InputError

__all__ = ["ArrayStream", "NpzWriter", "check_npz_output", "open_npz", "write_zip"]

_UNREADABLE = (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError)


def _unreadable(path: Path, exc: BaseException) -> InputError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return InputError(f"{path} is not a readable .npz file ({first[:120]})")


@contextmanager
def open_npz(path: str | os.PathLike, *, what: str, example: str, missing_hint: str = "") -> Iterator:
    """``with open_npz(path, what="clips", example="np.savez(path, frames=...)") as data:`` read
    arrays from ``data`` (an ``NpzFile``). ``what`` names the file in messages, ``example`` says how
    to save a proper archive, ``missing_hint`` is added when the file does not exist."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{what} must be a file path, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}{missing_hint}")
    try:
        data = np.load(path, allow_pickle=False)
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path} is a single .npy array, not an .npz archive: save the {what} with {example}")
    try:
        with data:
            yield data
    except InputError:
        raise
    except _UNREADABLE as exc:
        raise _unreadable(path, exc) from None


def check_npz_output(path: str | os.PathLike) -> Path:
    """An output archive's path: it must end in .npz and its folder must exist (one-line errors)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"output {path} must end in .npz")
    if not path.parent.is_dir():
        raise InputError(f"output folder does not exist: {path.parent}")
    return path


# -- streaming: one array read in row chunks, an archive written chunk by chunk -------------------
class ArrayStream:
    """One array of an open .npz archive, read along its first axis in chunks, never whole.

    ``shape`` and ``dtype`` come from the array's .npy header (nothing else is read until
    :meth:`chunks`). A stored member (``np.savez``) is mapped from the file a chunk at a time, its
    CRC-32 checked as the zip reader does; a deflated one is read sequentially; an array in Fortran
    order (rare: ``np.save`` of a transposed view) cannot be, and is loaded whole, then sliced.
    """

    def __init__(self, data, name: str, *, path: str | os.PathLike) -> None:
        self.path, self.name, self._data = Path(path), name, data
        try:
            self._fp = data.zip.open(f"{name}.npy")
            version = np.lib.format.read_magic(self._fp)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, self._fortran, dtype = read_header(self._fp)
            self._member = data.zip.getinfo(f"{name}.npy")
            # bytes of the .npy header in the member (None: not seekable, read it sequentially)
            self._header_len = self._fp.tell() if self._fp.seekable() else None
        except _UNREADABLE as exc:
            raise _unreadable(self.path, exc) from None
        if dtype.hasobject:
            raise InputError(f"{self.path}: array {name!r} holds Python objects; save plain numeric arrays")
        if not shape:
            raise InputError(f"{self.path}: array {name!r} is a scalar, expected an array of rows")
        self.shape, self.dtype = tuple(shape), dtype

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """Consecutive (<= rows, ...) slices of the array, in order, each read when asked for."""
        if not (isinstance(rows, int) and rows >= 1):
            raise ValueError(f"rows must be an integer >= 1, got {rows!r}")
        n = self.shape[0]
        try:
            if self._fortran:
                whole = self._data[self.name]
                for start in range(0, n, rows):
                    yield whole[start:start + rows]
                return
            row = self.shape[1:]
            row_bytes = int(np.prod(row, dtype=np.int64)) * self.dtype.itemsize
            if self._member.compress_type == zipfile.ZIP_STORED and self._header_len is not None and row_bytes and n:
                yield from self._mapped_chunks(rows, row_bytes)
                return
            for start in range(0, n, rows):
                count = min(rows, n - start)
                buf = bytearray(count * row_bytes)
                view, got = memoryview(buf), 0
                while got < len(buf):
                    part = self._fp.readinto(view[got:])
                    if not part:
                        raise EOFError(f"array {self.name!r} ends after {start + got // max(row_bytes, 1)} "
                                       f"of {n} rows (truncated)")
                    got += part
                yield np.frombuffer(buf, dtype=self.dtype).reshape((count, *row))
        except _UNREADABLE as exc:
            raise _unreadable(self.path, exc) from None

    def _mapped_chunks(self, rows: int, row_bytes: int) -> Iterator[np.ndarray]:
        """A stored (uncompressed) member's rows mapped from the file a chunk at a time: no copies
        through the zip reader (about 4x faster). The CRC-32 is checked as the zip reader would,
        once the last row is read; a truncated archive is an error before the first chunk."""
        member, n = self._member, self.shape[0]
        with open(self.path, "rb") as fh:
            fh.seek(member.header_offset)
            local = fh.read(30)
            size = os.fstat(fh.fileno()).st_size
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for {member.filename!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = member.header_offset + 30 + name_len + extra_len        # the member's first byte
        if member.file_size != self._header_len + n * row_bytes:
            raise ValueError(f"array {self.name!r}: member size {member.file_size} does not match its header")
        data = start + self._header_len
        if data + n * row_bytes > size:
            raise EOFError(f"array {self.name!r} ends after {max(size - data, 0) // row_bytes} of {n} rows (truncated)")
        crc = zlib.crc32(np.memmap(self.path, np.uint8, "r", offset=start, shape=(self._header_len,)))
        for first in range(0, n, rows):
            count = min(rows, n - first)
            # copy-on-write: the caller may write into its chunk, the file never changes
            chunk = np.memmap(self.path, np.uint8, "c", offset=data + first * row_bytes, shape=(count * row_bytes,))
            crc = zlib.crc32(chunk, crc)
            if first + count == n and crc != member.CRC:
                raise zipfile.BadZipFile(f"Bad CRC-32 for file {member.filename!r}")
            yield np.asarray(chunk).view(self.dtype).reshape((count, *self.shape[1:]))


class NpzWriter:
    """Write a compressed .npz archive array by array (:meth:`add`) or chunk by chunk along the
    first axis (:meth:`append`), with memory bounded by one chunk, atomically.

    Chunks are spooled to raw files in a private folder next to the output (zip members must be
    written one at a time, and a simulation produces its arrays interleaved), then copied into the
    archive, in the order the arrays were first given, when the ``with`` block ends cleanly; then
    the archive is renamed over ``path``. On an error nothing is written and the spool is removed;
    a spool left by a killed process is removed by the next writer of the same output.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = check_npz_output(path)
        self._spool: Path | None = None
        self._arrays: dict[str, dict] = {}

    def __enter__(self) -> "NpzWriter":
        from core.atomic import make_temp_dir

        try:
            self._spool = make_temp_dir(self.path.parent, self.path.name, suffix=".parts")
        except PermissionError as exc:
            raise InputError(f"cannot write to {self.path.parent} ({exc.strerror})") from None
        return self

    def add(self, name: str, array) -> None:
        """A whole array (any shape, 0-d included)."""
        array = np.asarray(array)
        self._write(name, array, shape=array.shape, rows=False)

    def append(self, name: str, chunk) -> None:
        """The next rows of array ``name``: same dtype and row shape as its earlier chunks."""
        chunk = np.asarray(chunk)
        if chunk.ndim == 0:
            raise ValueError(f"append({name!r}): a chunk needs a first axis")
        self._write(name, chunk, shape=chunk.shape, rows=True)

    def _write(self, name: str, array: np.ndarray, *, shape: tuple, rows: bool) -> None:
        if self._spool is None:
            raise RuntimeError("NpzWriter: use it in a with block")
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r}: object arrays are not written (allow_pickle=False)")
        record = self._arrays.get(name)
        if record is None:
            record = self._arrays[name] = {"dtype": array.dtype, "shape": shape, "rows": rows,
                                           "file": self._spool / f"{len(self._arrays)}.raw"}
            mode = "wb"
        elif not rows or not record["rows"]:
            raise ValueError(f"array {name!r} was already written whole")
        elif array.dtype != record["dtype"] or shape[1:] != record["shape"][1:]:
            raise ValueError(f"array {name!r}: chunk {array.dtype}{shape[1:]} after {record['dtype']}"
                             f"{record['shape'][1:]}")
        else:
            record["shape"] = (record["shape"][0] + shape[0], *shape[1:])
            mode = "ab"
        with open(record["file"], mode) as fh:
            fh.write(np.ascontiguousarray(array).tobytes())

    def __exit__(self, exc_type, exc, tb) -> None:
        from core.atomic import atomic_open

        spool, self._spool = self._spool, None
        try:
            if exc_type is None:
                with atomic_open(self.path, "wb") as fh:
                    write_zip(fh, ((name, record) for name, record in self._arrays.items()))
        finally:
            shutil.rmtree(spool, ignore_errors=True)


def _member_header(dtype: np.dtype, shape: tuple) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}


def write_zip(fh, members) -> None:
    """Write .npy members into a new zip archive on ``fh`` (deflated, zip64). ``members`` yields
    ``(name, array)`` or ``(name, spool record)`` from :class:`NpzWriter`. A failed write (a full
    disk) abandons the archive: no central directory, and nothing left for the zip file's finaliser
    to retry (``np.savez_compressed`` leaves it, which prints a second "Exception ignored" traceback)."""
    zf = zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
    try:
        for name, value in members:
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(value, dict):
                    header = _member_header(value["dtype"], value["shape"])
                    try:
                        np.lib.format.write_array_header_1_0(member, header)
                    except ValueError:                       # a header over 64 KiB: format 2.0
                        np.lib.format.write_array_header_2_0(member, header)
                    with open(value["file"], "rb") as raw:
                        shutil.copyfileobj(raw, member, 1 << 20)
                else:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    except BaseException:
        zf.fp = None
        raise
    zf.close()
