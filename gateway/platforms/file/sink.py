"""``file`` sink: JSON Lines on local disk, one line per reading; delivered means written and fsynced."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import IO

import structlog

from gateway.outcome import DELIVERED, Outcome, Retry
from gateway.platforms.file.config import FileConfig
from gateway.platforms.sink import BaseSink
from gateway.reading import Reading, json_lines
from gateway.stream import Stream

log = structlog.get_logger("gateway.platforms.file.sink")


class FileSink(BaseSink):
    #: a late period is written as what it is (its "end" and "late" keys)
    late_periods = True

    def __init__(self, config: FileConfig, gateway: object = None) -> None:
        self.name = config.name
        self.max_batch = config.max_batch
        self.path = config.path
        self.fsync = config.fsync
        self._fh: IO[str] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        text = json_lines(readings)
        try:
            await asyncio.to_thread(self._write, text)
        except OSError as e:
            self._reset()
            return [Retry(f"cannot write {self.path}: {e.strerror}", after=5.0)] * len(readings)
        return [DELIVERED] * len(readings)

    def _write(self, text: str) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open between batches
            if self._fh.tell() > 0 and not _ends_a_line(self.path):
                # A line torn by a crash (or a failed write) stays alone, broken; the next reading is not glued to
                # it but starts a line of its own (that torn reading was never acknowledged: it is sent again).
                self._fh.write("\n")
        self._fh.write(text)
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())

    def _reset(self) -> None:
        # After a failed write the file may end in a partial line: the next write opens it again, and starts a
        # fresh line.
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                fh.close()

    async def close(self) -> None:
        self._reset()


def _ends_a_line(path: os.PathLike[str] | str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
