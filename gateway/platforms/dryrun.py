"""A platform sink in dry run (``dry_run: true``): every packet is built exactly as it would be sent, printed on
standard output as one JSON line, and counted as delivered. Nothing is sent and no connection is opened: for the
demo, and for a technician who wants to see what a platform will receive before it is connected. Any sink with a
``preview`` (see :mod:`gateway.platforms.sink`) can run dry.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import structlog

from gateway.errors import SinkError
from gateway.outcome import DELIVERED, Outcome, Retry, Skip
from gateway.platforms.sink import BaseSink, Preview, Sink
from gateway.reading import Reading
from gateway.stream import Stream

log = structlog.get_logger("gateway.platforms.dryrun")


class DryRunSink(BaseSink):
    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_batch = inner.max_batch
        self.late_periods = inner.late_periods

    async def start(self) -> None:
        log.warning("dry run: nothing is sent; each packet is printed on standard output", sink=self.name)

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip:
        shown = self.inner.preview(stream, reading)
        if shown is None:
            raise SinkError(f"sink {self.name}: this platform cannot run dry (it has no preview)")
        return shown

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        lines = []
        for r in readings:
            shown = self.preview(stream, r)
            if isinstance(shown, Skip):
                outcomes.append(shown)
                continue
            lines.append(json.dumps(shown, separators=(",", ":")) + "\n")
            outcomes.append(DELIVERED)
        try:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()
        except (OSError, ValueError) as e:  # closed pipe, closed stream
            return [Retry(f"cannot write to standard output: {e}", after=5.0)] * len(readings)
        return outcomes

    async def close(self) -> None:
        return None
