"""A queue, one sink and its forwarder in the test's own event loop: the delivery path without the daemon."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from gateway.config import GatewayConfig, load_config_text
from gateway.forwarder import Forwarder
from gateway.platforms.all import create_sink
from gateway.platforms.sink import Sink
from gateway.queue import DiskQueue, QueueStore


class Rig:
    def __init__(self, text: str, state: Path, sink: str) -> None:
        self.config: GatewayConfig = load_config_text(text, "test.yaml")
        self.sink_cfg = next(s for s in self.config.sinks if s.name == sink)
        self.streams = self.config.sink_streams()[sink]
        self.queue = DiskQueue(QueueStore(state / "queue.db"), lazy_commit=0.01)
        self.sink: Sink | None = None
        self.fwd: Forwarder | None = None

    async def start(self, forward: bool = True) -> Rig:
        await self.queue.start()
        await self.queue.configure({s.cursor: [s.meter] for s in self.streams})
        if forward:
            await self.forward()
        return self

    async def forward(self) -> Rig:
        self.sink = create_sink(self.sink_cfg, self.config)
        self.fwd = Forwarder(self.sink, self.sink_cfg, self.queue, self.streams, rng=random.Random(3))
        await self.fwd.start()
        return self

    async def stop(self) -> None:
        if self.fwd is not None:
            await self.fwd.stop(2)
            self.fwd = None
        await self.queue.stop()

    async def depth(self) -> int:
        pairs = [(s.cursor, s.meter) for s in self.streams]
        return int((await self.queue.backlog(self.sink_cfg.name, pairs)).depth)


async def until(cond: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


#: A test's factory of started rigs: ``await rigs(config_text, sink_name)``; stopped when the test ends.
RigFactory = Callable[[str, str], Awaitable[Rig]]
