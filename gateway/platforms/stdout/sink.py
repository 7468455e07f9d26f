"""``stdout`` sink: JSON Lines on standard output, for the demo and for debugging."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gateway.outcome import DELIVERED, Outcome, Retry
from gateway.platforms.sink import BaseSink
from gateway.platforms.stdout.config import StdoutConfig
from gateway.reading import Reading, json_lines
from gateway.stream import Stream


class StdoutSink(BaseSink):
    #: a late period is written as what it is (its "end" and "late" keys)
    late_periods = True

    def __init__(self, config: StdoutConfig, gateway: object = None) -> None:
        self.name = config.name
        self.max_batch = config.max_batch

    async def start(self) -> None:
        return None

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        text = json_lines(readings)
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except (OSError, ValueError) as e:  # closed pipe, closed stream
            return [Retry(f"cannot write to standard output: {e}", after=5.0)] * len(readings)
        return [DELIVERED] * len(readings)

    async def close(self) -> None:
        return None
