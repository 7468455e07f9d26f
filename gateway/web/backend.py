"""What the technician's page asks of the running daemon (:class:`Backend`), answered from the
daemon's parts: its sources' pollers and messages, its forwarders' last packets, its queue's dead letters, the remote
configuration's apply, the scan command's search on a running bus."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.config import GatewayConfig
from gateway.logs import REDACTOR
from gateway.reading import Reading, iso_utc

if TYPE_CHECKING:
    from gateway.daemon import Gateway


class Backend(Protocol):
    """What the page asks of the running daemon; :class:`GatewayBackend` answers it."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def config_path(self) -> Path | None: ...

    @property
    def local_path(self) -> Path | None: ...

    @property
    def latest(self) -> dict[str, Reading]: ...

    async def snapshot(self) -> dict[str, Any]: ...

    def pollers(self) -> dict[str, Any]: ...

    def meter_states(self) -> dict[str, dict[str, Any]]: ...

    def mqtt_messages(self) -> dict[str, list[dict[str, Any]]]: ...

    async def scan_bus(self, name: str, units: list[int]) -> dict[str, Any]: ...

    def sent_by_sink(self) -> dict[str, Any]: ...

    async def apply_from_page(self, text: str) -> tuple[str, list[str]]: ...

    async def verify_sink(self, name: str) -> tuple[bool, list[str]]: ...

    async def dead_letters(self, sink: str | None) -> list[dict[str, Any]]: ...

    async def dead_letter_action(self, action: str, ids: list[int] | None, sink: str | None) -> int: ...


class GatewayBackend:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        #: Configurations being applied from the page: each in a task of its own, which the request only waits for
        #: (an apply that restarts the listener must not be cancelled with the request that asked for it).
        self._page_applies: set[asyncio.Task[Any]] = set()
        #: One scan from the page at a time.
        self._scanning = asyncio.Lock()

    @property
    def config(self) -> GatewayConfig:
        return self.gw.config

    @property
    def config_path(self) -> Path | None:
        return self.gw.config_path

    @property
    def local_path(self) -> Path | None:
        return self.gw.local_path

    @property
    def latest(self) -> dict[str, Reading]:
        return self.gw.latest

    async def snapshot(self) -> dict[str, Any]:
        return await self.gw.snapshot()

    def pollers(self) -> dict[str, Any]:
        """The running Modbus meters' pollers, by meter name."""
        return {p.meter.name: p for s in self.gw.sources for p in getattr(s, "pollers", ())}

    def sent_by_sink(self) -> dict[str, Any]:
        return self.gw.last_sent_by_sink() or {}

    def meter_states(self) -> dict[str, dict[str, Any]]:
        """Each meter's read health as its source sees it now (in memory: no query of the queue)."""
        return {name: h for s in self.gw.sources for name, h in s.health().items()}

    async def apply_from_page(self, text: str) -> tuple[str, list[str]]:
        remote = self.gw.fleet.remote
        if remote is None:
            return "refused", ["the gateway was not started from a file: nothing to apply to"]
        task = asyncio.get_running_loop().create_task(remote.apply(text.encode(), page=True))
        self._page_applies.add(task)
        task.add_done_callback(self._page_applies.discard)
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a disk that refuses the state file, say: said on the page, the daemon goes on
            return "failed", [REDACTOR.scrub(f"the configuration could not be handled: {type(e).__name__}: {e}")[:300]]
        return outcome.result, outcome.problems

    def mqtt_messages(self) -> dict[str, list[dict[str, Any]]]:
        """Per MQTT subscription, its last messages and what became of each."""
        out: dict[str, list[dict[str, Any]]] = {}
        for s in self.gw.sources:
            recent = getattr(s, "recent_messages", None)
            if recent is not None:
                out.update(recent())
        return out

    async def scan_bus(self, name: str, units: list[int]) -> dict[str, Any]:
        """The ``scan`` command's search on a configured bus, while the daemon runs. A serial line (RS-485, or RTU
        over a TCP converter) has one conversation at a time: its meters' polling is paused for the scan's duration
        and resumed after (the ticks missed are counted as skipped); a Modbus TCP bus is scanned over a connection
        of its own, beside the polling."""
        from gateway.config import profiles
        from gateway.platforms.modbus import tools
        from gateway.platforms.modbus.config import SerialLine
        from gateway.platforms.modbus.source import ModbusSource

        bus_cfg = next(b for b in self.gw.config.buses if b.name == name)
        running = next((s.bus for s in self.gw.sources if isinstance(s, ModbusSource) and s.bus.name == name), None)
        found, problems = profiles.load_all(self.gw.config.profiles_dir)
        pause = running is not None and isinstance(bus_cfg, SerialLine)
        started = time.monotonic()
        async with self._scanning:
            if pause and running is not None:
                async with running.paused():
                    hits = await tools.scan(bus_cfg, units, found)
            else:
                hits = await tools.scan(bus_cfg, units, found)
        return {"bus": name, "paused_polling": pause, "took_s": round(time.monotonic() - started, 1),
                "units": len(units), "profile_problems": problems,
                "hits": [{"unit": h.unit, "fits": [f[0] for f in h.fits]} for h in hits],
                "text": tools.render_scan(hits, bus_cfg, len(units))}

    async def verify_sink(self, name: str) -> tuple[bool, list[str]]:
        from gateway.platforms.all import SINKS

        sink = next(s for s in self.gw.config.sinks if s.name == name)
        verify = SINKS[sink.type].verify
        if verify is None:
            return True, [f"{name}: this platform has no verification"]
        return await verify(sink, self.sent_by_sink().get(name) or {}, self.gw.config)

    async def dead_letters(self, sink: str | None) -> list[dict[str, Any]]:
        letters = await self.gw.queue.dead_letters(sink, limit=500)
        return [{"id": d.id, "sink": d.sink, "meter": d.reading.meter, "ts": iso_utc(d.reading.ts_ms),
                 "reason": REDACTOR.scrub(d.reason), "at": iso_utc(d.at_ms), "state": d.state,
                 "attempts": d.attempts} for d in letters]

    async def dead_letter_action(self, action: str, ids: list[int] | None, sink: str | None) -> int:
        if action == "retry":
            return await self.gw.queue.retry_dead_letters(ids, sink)
        return await self.gw.queue.purge_dead_letters(ids, sink)
