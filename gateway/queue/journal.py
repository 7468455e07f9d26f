"""Readings handed to the kernel the moment they reach the queue, so that a process crash loses none of them.

The queue commits readings every ``commit_interval`` (5 s by default): one fsync for many readings, which is what an
SD card's write budget allows. Until that commit, a reading lived only in the process's memory, and a crash (a
SIGKILL, the OOM killer, a bug in a C library) lost up to ``commit_interval`` of readings. So each append is also
written at once, with one ``write()`` and no fsync, to a *journal segment* beside the queue file
(``queue.db.journal.<n>``). A ``write()`` that returned is in the kernel's page cache: it survives the process.

A new segment is started at a queue transaction once the current one is ROTATE_AFTER old, and a segment is deleted
as soon as every reading written to it is settled (committed, refused or counted as dropped). Its pages, never
flushed, are then dropped by the kernel without reaching the storage: Linux counts them as
``cancelled_write_bytes``, and the SD card never sees them (the kernel writes dirty pages back once they are about
30 s old; a segment lives ROTATE_AFTER plus one ``commit_interval``). Rotating no more often than that keeps the
file system's own bookkeeping (a file created and deleted) to one file every ten seconds, however often the queue
commits (an MQTT batch commits at once). At start, segments left by a crash are
replayed into the queue before anything else runs: a reading already committed is not newer than the last one queued
for its meter (or is already held, for the clock) and is skipped, so a replay is idempotent.

A power cut is another matter: the page cache is lost with it, and what the queue promises there stays what
``durability: full`` commits give (at most ``commit_interval`` of readings). Each record carries a CRC32: a segment
the power cut left with garbage or zeros at its end replays up to its last whole record.

A segment starts with ``MGJ1``, ``u16`` length and the boot id it was written in (a held reading is dated by
that boot's monotonic clock). Each record: ``u32 length`` of what follows, ``u32 crc32`` of it, then ``u8 flags``
(1: clock synchronised, 2: monotonic time present), ``i64 ts_ms``, ``i64 mono_ms``, ``u16`` length of the meter's
name, the name (UTF-8), and the values as :func:`gateway.queue.codec.encode_reading` writes them (a period's
start, and a late period's end, included).
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from gateway.queue.codec import decode_period, encode_reading
from gateway.reading import Reading

log = structlog.get_logger("gateway.queue")

#: A segment starts with this and the boot it was written in (held readings are dated by that boot's clock).
_MAGIC = b"MGJ1"
_BOOT = struct.Struct("<H")
_HEAD = struct.Struct("<II")
_BODY = struct.Struct("<BqqH")
_SYNCED, _HAS_MONO = 1, 2
#: A segment takes new readings for this long (seconds), then the next one does.
ROTATE_AFTER = 10.0
#: A record longer than this is garbage (a reading is a few hundred bytes).
_MAX_RECORD = 1 << 16


def encode(readings: Sequence[Reading], blobs: Sequence[bytes] | None = None) -> bytes:
    """Records of ``readings``; ``blobs``: their values already encoded (the queue encodes them once, for both)."""
    out = []
    for i, r in enumerate(readings):
        name = r.meter.encode()
        flags = (_SYNCED if r.clock_synced else 0) | (_HAS_MONO if r.mono_ms is not None else 0)
        values = blobs[i] if blobs is not None else encode_reading(r)
        body = _BODY.pack(flags, r.ts_ms, r.mono_ms or 0, len(name)) + name + values
        out.append(_HEAD.pack(len(body), zlib.crc32(body)) + body)
    return b"".join(out)


def header(boot: str) -> bytes:
    raw = boot.encode()[:255]
    return _MAGIC + _BOOT.pack(len(raw)) + raw


def boot_of(data: bytes) -> tuple[str | None, int]:
    """The boot a segment was written in, and where its records start (None: not a segment)."""
    if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + _BOOT.size:
        return None, 0
    (n,) = _BOOT.unpack_from(data, len(_MAGIC))
    start = len(_MAGIC) + _BOOT.size
    try:
        return data[start:start + n].decode(), start + n
    except UnicodeDecodeError:
        return None, 0


def decode(data: bytes, pos: int = 0) -> Iterator[Reading]:
    """The whole records of a segment from ``pos``, in order; stops at the first torn or damaged one."""
    end = len(data)
    while pos + _HEAD.size <= end:
        size, crc = _HEAD.unpack_from(data, pos)
        body = data[pos + _HEAD.size:pos + _HEAD.size + size]
        if size > _MAX_RECORD or len(body) != size or zlib.crc32(body) != crc or size < _BODY.size:
            return
        flags, ts_ms, mono_ms, n = _BODY.unpack_from(body)
        try:
            values, start, late_end = decode_period(body[_BODY.size + n:])
            reading = Reading(body[_BODY.size:_BODY.size + n].decode(), ts_ms, values, bool(flags & _SYNCED),
                              mono_ms if flags & _HAS_MONO else None, start, late_end)
        except (UnicodeDecodeError, struct.error, KeyError, ValueError, TypeError):
            return
        yield reading
        pos += _HEAD.size + size


class Journal:
    """The segments of one queue file. :meth:`write` is called on the event loop, the rest in the writer thread."""

    def __init__(self, queue_path: Path, boot: str, rotate_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.boot = boot
        self.rotate_after = ROTATE_AFTER if rotate_after is None else rotate_after
        self.clock = clock
        self._opened_at = 0.0
        self.directory = queue_path.parent
        self.prefix = f"{queue_path.name}.journal."
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._current = 0
        #: segment -> readings written to it and not yet settled
        self._waiting: dict[int, int] = {}
        #: something was written to the current segment since it was opened
        self._used = False
        self._failing = False

    # ------------------------------------------------------------ start and stop

    def left_over(self) -> list[Path]:
        """Segments found on disk (before :meth:`open`: what a crash left), oldest first."""
        found = []
        for p in self.directory.glob(f"{self.prefix}*"):
            suffix = p.name[len(self.prefix):]
            if suffix.isdigit():
                found.append((int(suffix), p))
        return [p for _, p in sorted(found)]

    @staticmethod
    def read(paths: Sequence[Path]) -> list[tuple[str, list[Reading]]]:
        """Per segment, the boot it was written in and its readings."""
        out: list[tuple[str, list[Reading]]] = []
        for p in paths:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            boot, start = boot_of(data)
            if boot is not None:
                out.append((boot, list(decode(data, start))))
        return out

    def open(self, after: Sequence[Path] = ()) -> None:
        """Start a new segment, numbered after any left over."""
        last = max((int(p.name[len(self.prefix):]) for p in after), default=0)
        self._current = last + 1  # never one of the files left over: they are deleted once put back
        self._start_segment()

    def close(self) -> None:
        """At a clean stop, with everything settled: no segment is left."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if not any(self._waiting.values()):
                self._unlink(self._current)
                self._waiting.clear()

    @staticmethod
    def discard(paths: Sequence[Path]) -> None:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()

    # ------------------------------------------------------------ while running

    def write(self, readings: Sequence[Reading], blobs: Sequence[bytes] | None = None) -> int | None:
        """Hand readings to the kernel; returns the segment to :meth:`settle` them against (None: not journaled,
        the reading is as safe as the queue's commit makes it). ``blobs``: as for :func:`encode`."""
        data = encode(readings, blobs)
        with self._lock:
            if self._fd is None:
                return None
            try:
                os.write(self._fd, data)
            except OSError as e:
                if not self._failing:
                    self._failing = True
                    log.error("queue journal cannot be written: readings are safe once committed only",
                              path=str(self._path(self._current)), error=e.strerror)
                return None
            if self._failing:
                self._failing = False
                log.warning("queue journal written again", path=str(self._path(self._current)))
            self._waiting[self._current] = self._waiting.get(self._current, 0) + len(readings)
            self._used = True
            return self._current

    def rotate(self) -> None:
        """A transaction starts: what is written from now on goes to a new segment (when the current one holds
        anything and is ROTATE_AFTER old), so that the current one can go once this transaction settles it."""
        with self._lock:
            if self._fd is None or not self._used or self.clock() - self._opened_at < self.rotate_after:
                return
            os.close(self._fd)
            self._fd = None
            old, self._current = self._current, self._current + 1
            self._start_segment()
            if not self._waiting.get(old):  # settled already: nothing in it is needed any more
                self._waiting.pop(old, None)
                self._unlink(old)

    def settle(self, segment: int | None, n: int) -> None:
        """``n`` readings written to ``segment`` are committed, refused or counted as dropped."""
        if segment is None:
            return
        with self._lock:
            left = self._waiting.get(segment, 0) - n
            if left > 0 or segment == self._current:  # the current segment goes at the next rotation
                self._waiting[segment] = max(0, left)
                return
            self._waiting.pop(segment, None)
            self._unlink(segment)

    # ------------------------------------------------------------ plumbing

    def _path(self, segment: int) -> Path:
        return self.directory / f"{self.prefix}{segment}"

    def _start_segment(self) -> None:
        self._used = False
        self._opened_at = self.clock()
        try:
            self._fd = os.open(self._path(self._current), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC
                               | os.O_CLOEXEC, 0o600)
            os.write(self._fd, header(self.boot))
        except OSError as e:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
            self._fd = None
            log.error("queue journal cannot be created: readings are safe once committed only",
                      path=str(self._path(self._current)), error=e.strerror)

    def _unlink(self, segment: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(segment).unlink()
