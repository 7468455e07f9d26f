"""Sources produce readings and hand them to ``emit``; they know nothing of where readings go.

``emit`` returns once the readings are committed to the on-disk queue (or known dropped), so a source that reads
a meter which buffers values itself (an MQTT session, a logger) may acknowledge them upstream only then.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from gateway.config.models import GatewayConfig
from gateway.queue import AppendResult
from gateway.reading import Reading
from gateway.timekeeper import TimeKeeper


class Emit(Protocol):
    """Hand readings to the queue; returns once they are committed. ``prompt``: the source holds something upstream
    until then (an MQTT broker's message), so commit now; otherwise the commit may wait a moment for company."""

    def __call__(self, readings: Sequence[Reading], prompt: bool = False) -> Awaitable[AppendResult]: ...


class Source(Protocol):
    name: str

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        """Produce readings until ``stop`` is set; return promptly after it is (after emitting a reading in hand)."""
        ...


class Committer:
    """Hands one meter's readings to the queue without waiting for the disk, so that a commit (which may wait a
    moment for company) never makes the next tick late. Each append is queued when its task starts, and tasks start
    in the order they were made: the queue writes them in order."""

    def __init__(self, emit: Emit, log: Any) -> None:
        self.emit = emit
        self.log = log
        self._pending: set[asyncio.Task[None]] = set()

    def submit(self, reading: Reading) -> None:
        async def commit() -> None:
            try:
                await self.emit([reading])
            except Exception:  # the queue counts and logs what it drops; this is anything else
                self.log.exception("reading could not be handed to the queue", ts_ms=reading.ts_ms)

        task = asyncio.create_task(commit(), name=f"commit:{reading.meter}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Every reading submitted is committed (a stop, a reload)."""
        if self._pending:
            await asyncio.gather(*self._pending)


@runtime_checkable
class ReportsHealth(Protocol):
    """A source that can say, per meter, how reading it goes (for ``status``), and calls ``on_change`` when a
    meter starts or stops failing."""

    on_change: Callable[[], None]

    def health(self) -> dict[str, dict[str, object]]: ...


def create_sources(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    """One source per simulated meter, one per Modbus bus that has meters (it schedules that line), one per MQTT
    broker that has subscriptions (one connection)."""
    from zoneinfo import ZoneInfo

    from gateway.config.models import ModbusMeter, MqttMeter, SimulatedMeter
    from gateway.sources.modbus import ModbusSource
    from gateway.sources.mqtt import MqttSource
    from gateway.sources.simulated import SimulatedSource

    sources: list[Source] = []
    on_bus: dict[str, list[ModbusMeter]] = {}
    for meter in config.meters:
        if isinstance(meter, SimulatedMeter):
            sources.append(SimulatedSource(meter, keeper))
        elif isinstance(meter, ModbusMeter):
            on_bus.setdefault(meter.bus, []).append(meter)
    sources += [ModbusSource(bus, on_bus[bus.name], keeper) for bus in config.buses if bus.name in on_bus]
    mqtt_meters = {m.name for m in config.meters if isinstance(m, MqttMeter)}
    tz = ZoneInfo(config.site.timezone)
    for broker in config.brokers:
        subs = [s for s in config.subscriptions if s.broker == broker.name]
        if subs:
            sources.append(MqttSource(broker, subs, mqtt_meters, tz, keeper))
    return sources
