"""The standalone transaction log: append-only, checksummed frames, group commit.

File layout (format 1): ``b"BKNRLOG\\0"`` + ``<u32 format><u64 base>`` where ``base`` is the
sequence number of the first record; then one frame per record:
``<u32 length><u32 crc32(payload)><u32 crc32(length, crc)>`` + payload (a transaction record).
The header checksum lets a scan tell a damaged length field (corruption) from a record that
was only partly written when the process died (a torn tail).

Group commit: ``append`` (called under the store lock, so log order is apply order) only
buffers the frame. ``wait_durable`` is called after the store lock is released: the first
waiter becomes the syncer, writes everything buffered so far and fsyncs once; the waiters that
arrived meanwhile are released by that same fsync.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

from bknr_cluster.errors import CorruptData, StoreError

MAGIC = b"BKNRLOG\x00"
FORMAT = 1
_HEADER = struct.Struct("<IQ")
HEADER_SIZE = len(MAGIC) + _HEADER.size
_FRAME = struct.Struct("<III")


def frame(payload: bytes) -> bytes:
    length = len(payload)
    crc = zlib.crc32(payload)
    return _FRAME.pack(length, crc, zlib.crc32(struct.pack("<II", length, crc))) + payload


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ScanResult:
    """Records of one log file. ``torn`` describes a truncated tail (None if the file is clean)."""

    def __init__(self, base: int, records: list[tuple[int, bytes]], good_end: int, torn: str | None):
        self.base = base
        self.records = records          # (offset, payload)
        self.good_end = good_end        # file length that holds exactly the valid records
        self.torn = torn


def scan(path: str, is_last: bool) -> ScanResult:
    """Read a log file. A bad tail of the last file is reported as torn; any other damage
    raises ``CorruptData`` naming the file and byte offset."""
    with open(path, "rb") as f:
        data = f.read()
    size = len(data)

    def bad(offset: int, what: str) -> CorruptData:
        return CorruptData(f"{path}: {what} at offset {offset}; refusing to open "
                           "(restore from a backup or move the file away)")

    if size < HEADER_SIZE:
        if is_last:
            return ScanResult(-1, [], 0, f"incomplete file header ({size} bytes)")
        raise bad(0, "incomplete file header")
    if data[:len(MAGIC)] != MAGIC:
        raise bad(0, "not a bknr transaction log (bad magic)")
    fmt, base = _HEADER.unpack_from(data, len(MAGIC))
    if fmt != FORMAT:
        raise bad(len(MAGIC), f"log format {fmt} is not supported")
    records: list[tuple[int, bytes]] = []
    pos = HEADER_SIZE
    torn: str | None = None
    while pos < size:
        rest = size - pos
        if rest < _FRAME.size:
            torn = f"partial record header at offset {pos}"
            break
        length, crc, hcrc = _FRAME.unpack_from(data, pos)
        if zlib.crc32(struct.pack("<II", length, crc)) != hcrc:
            if data.count(0, pos) == rest:          # zero-filled tail: nothing was written here
                torn = f"zero-filled tail at offset {pos}"
                break
            raise bad(pos, "record header fails its checksum")
        end = pos + _FRAME.size + length
        if end > size:
            torn = f"record at offset {pos} is incomplete ({size - pos} of {end - pos} bytes)"
            break
        payload = data[pos + _FRAME.size:end]
        if zlib.crc32(payload) != crc:
            if end == size:
                torn = f"last record at offset {pos} fails its checksum"
                break
            raise bad(pos, "record fails its checksum")
        records.append((pos, payload))
        pos = end
    if torn is not None and not is_last:
        raise bad(pos, f"damaged record in a log that is not the newest ({torn})")
    return ScanResult(base, records, pos, torn)


class TxLog:
    """One open log file accepting appends."""

    def __init__(self, path: str, base: int, count: int, sync: bool, *, create: bool,
                 good_end: int = 0):
        self.path = path
        self.base = base
        self.sync = sync
        if create:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, MAGIC + _HEADER.pack(FORMAT, base))
            os.fsync(fd)
            fsync_dir(os.path.dirname(path) or ".")
        else:
            fd = os.open(path, os.O_WRONLY)
            os.ftruncate(fd, good_end)      # drop a torn tail before appending after it
            os.fsync(fd)
            os.lseek(fd, good_end, os.SEEK_SET)
        self._fd = fd
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[bytes] = []
        self._appended = count
        self._durable = count
        self._syncing = False
        self.failed: BaseException | None = None

    @property
    def next_seq(self) -> int:
        return self.base + self._appended

    def append(self, record: bytes) -> int:
        """Buffer a record; returns the ticket to pass to ``wait_durable``."""
        with self._cond:
            self._pending.append(frame(record))
            self._appended += 1
            return self._appended

    def wait_durable(self, ticket: int) -> None:
        """Return once the record with this ticket is on disk (fsync'd when ``sync``)."""
        cond = self._cond
        with cond:
            while self._durable < ticket:
                if self.failed is not None:
                    raise StoreError(f"transaction log {self.path} failed: {self.failed}")
                if self._syncing:
                    cond.wait()
                    continue
                self._syncing = True
                batch, self._pending = self._pending, []
                upto = self._appended
                cond.release()
                try:
                    self._write(b"".join(batch))
                except BaseException as exc:
                    self.failed = exc
                finally:
                    cond.acquire()
                    self._syncing = False
                    cond.notify_all()
                if self.failed is None:
                    self._durable = upto
            if self.failed is not None and self._durable < ticket:
                raise StoreError(f"transaction log {self.path} failed: {self.failed}")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.sync:
            os.fdatasync(self._fd)

    def flush(self) -> None:
        with self._cond:
            ticket = self._appended
        self.wait_durable(ticket)

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if self.failed is None:
                    self.flush()
            finally:
                os.close(self._fd)
                self._fd = -1
