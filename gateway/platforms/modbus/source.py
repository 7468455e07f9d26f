"""``modbus`` meters: one source per bus, one poller per meter, each on its own clock-aligned interval.

A poll reads the meter's planned blocks one after the other while holding the bus (a serial line carries one
request at a time), then releases the bus before the reading is committed to the queue. The reading is stamped
when the first answer arrived (when the values were taken). Values that are NaN, infinite or "not available" are
left out; a block answered with an exception, a bad answer or nothing puts no value in the reading, and no other
value takes its place; a poll that yields no value yields no reading.

A meter that does not answer (timeouts) is backed off: tried at its next tick, then at one tick in 2,
4, ... up to the bus's ``retry_cap``, so a dead meter costs its bus one timeout now and then, never its own timeout
at every poll of every meter; its own ``timeout`` bounds what that one costs the others on a shared line. State
changes are logged once each: the first failure at warning, the rest at debug, and one line when the meter answers
again with how long it was down.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable

import structlog

from gateway.errors import ModbusBadAnswer, ModbusBusError, ModbusError, ModbusExceptionReply, ModbusTimeout
from gateway.platforms.modbus import sunspec
from gateway.platforms.modbus.bus import Bus
from gateway.platforms.modbus.config import BusBase, ModbusMeterConfig
from gateway.platforms.modbus.plan import Block, Key, Planner
from gateway.platforms.source import BaseSource, Committer, Emit
from gateway.quantities import Quantity
from gateway.reading import Reading
from gateway.schedule import next_tick, sleep_until
from gateway.timekeeper import Stamp, TimeKeeper

log = structlog.get_logger("gateway.platforms.modbus.source")

#: Exception codes that mean "not this block": split it and ask again.
SPLIT_CODES = frozenset({2, 3})
#: Refusals in a poll before any answer after which the meter is taken as refusing everything (the poll ends).
BLIND_REFUSALS = 3
#: Answer times kept per meter for its median and 99th percentile (the last 200 requests).
ANSWER_SAMPLES = 200


class MeterPoller:
    def __init__(
        self, meter: ModbusMeterConfig, bus: Bus, keeper: TimeKeeper | None = None, report_health: bool = True
    ) -> None:
        self.meter = meter
        self.report_health = report_health
        #: Called when the meter starts or stops failing (the daemon then writes its heartbeat for ``status``).
        self.on_change: Callable[[], None] = lambda: None
        #: The failed reads of the last poll.
        self.last_problems: list[ModbusError] = []
        self.bus = bus
        self.keeper = keeper or TimeKeeper("ignore")
        self.clock = self.keeper.wall
        self.planner = Planner(meter.points, meter.effective_max_gap(bus.config))
        self.log = log.bind(meter=meter.name, bus=bus.name, unit=meter.unit)
        #: Polls done, readings produced, and failed reads per kind (timeout, exception, bad_answer, bus).
        self.counts: Counter[str] = Counter()
        #: Polls in a row that did not answer (the backoff), and that failed in any way (for the recovery line).
        self.failures = 0
        self.failed_polls = 0
        self.retry_at = 0.0
        self.down_since: float | None = None
        self.missed_at: float | None = None
        #: when (wall clock, ms) a tick was last skipped while the meter answered
        self.skipped_at_ms: int | None = None
        self._last_kind = ""
        #: The words each block answered last, by (function, address): the technician's page shows the registers
        #: behind each value. One list per block, replaced at every poll.
        self.last_words: dict[tuple[str, int], list[int]] = {}
        #: Failed reads per kind, per minute of the last hour (minute number, counts): "over the last hour".
        self._errors_by_minute: deque[tuple[int, Counter[str]]] = deque(maxlen=60)
        self.timeout = meter.effective_timeout(bus.config)
        #: How long its last answers took (seconds, request sent to answer decoded): a slow meter shows in status.
        self.answer_times: deque[float] = deque(maxlen=ANSWER_SAMPLES)

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        committer = Committer(emit, self.log)
        try:
            await self._run(committer, stop)
        finally:
            await committer.drain()  # every reading taken is committed before the source returns

    async def _run(self, committer: Committer, stop: asyncio.Event) -> None:
        interval = self.meter.interval
        last_tick: float | None = None
        last_mono = 0.0
        polled_at = 0.0  # monotonic, when the last poll began
        while not stop.is_set():
            tick = next_tick(self.clock(), interval)
            # Skipped only if the poll really took that long: a clock stepped forward skips no tick.
            if last_tick is not None and tick - last_tick > 1.5 * interval \
                    and self.keeper.mono() - last_mono > interval:
                self._skipped(last_tick + interval, round((tick - last_tick) / interval) - 1,
                              slowed_by_trouble=self.bus.troubled_at >= polled_at)
            last_tick = tick
            if not await sleep_until(tick, stop, self.clock, horizon=interval):
                return
            last_mono = self.keeper.mono()
            if tick < self.retry_at:
                continue
            healthy = not self.failures
            polled_at = time.monotonic()
            reading = await self.poll()
            asked = 0
            while reading is None and healthy and self.failures and asked < self.meter.retries:
                # It answered last time: one lost frame (noise, a CRC error) should not cost a reading. Asked again
                # once the bus was handed to the meters waiting for it, so they are delayed by one timeout at most.
                asked += 1
                self.counts["retries"] += 1
                reading = await self.poll()
            if reading is not None:
                committer.submit(reading)
            if self.failures:
                cap = max(self.bus.config.retry_cap, interval)
                self.retry_at = tick + min(cap, interval * 2 ** min(self.failures - 1, 20))

    def _skipped(self, first_tick: float, ticks: int, slowed_by_trouble: bool = False) -> None:
        """No reading at these ticks: the poll before them ran past them (a busy bus or machine). Counted, and
        logged with the ticks it concerns: at warning the first time, at debug after that.

        Only a meter that answers, too slowly for its interval, is marked for /health: a failing one says so
        itself, and one that waited for the line while a neighbour's request went unanswered (a timeout, a broken
        connection) was slowed by that neighbour, whose failure /health reports."""
        self.counts["skipped_ticks"] += ticks
        if not self.failures and not slowed_by_trouble:
            self.skipped_at_ms = round(time.time() * 1000)
        first = self.counts["skipped_ticks"] == ticks
        (self.log.warning if first else self.log.debug)(
            "a poll ran past the next tick: ticks skipped (interval too short for this bus?)", skipped=ticks,
            first_skipped_ms=round(first_tick * 1000), interval_s=self.meter.interval)

    async def poll(self) -> Reading | None:
        """Read every block once; the reading (or None), with health and counters updated.

        A reading is stamped when the meter's first answer arrived: when its values were taken, not when its last
        request ended (which may be a timeout seconds later). A poll some of whose requests failed yields the values
        that did answer, each under its own quantity; the missing ones stay missing (never filled from another)."""
        self.counts["polls"] += 1
        values: dict[Quantity, float] = {}
        problems: list[ModbusError] = []
        refused: list[ModbusExceptionReply] = []  # before the first answer
        evidence: list[Key] = []
        silent = False
        stamp: Stamp | None = None
        async with self.bus.session() as conn:
            pending: deque[Block] = deque(self.planner.blocks)
            while pending:
                block = pending.popleft()
                try:
                    words = await conn.read(self.meter.unit, block, self.timeout)
                    self.answer_times.append(conn.answer_s)
                except ModbusExceptionReply as e:
                    if e.code not in SPLIT_CODES:
                        problems.append(e)
                        continue
                    if stamp is None:
                        refused.append(e)
                        if len(refused) > BLIND_REFUSALS:
                            break  # it refuses everything: the meter is failing, its map is not to blame
                    what, parts, keys = self.planner.parts(block)
                    evidence += keys
                    self.log.debug("meter refused a read: asked in parts", refused=str(e), action=what)
                    pending.extendleft(reversed(parts))
                    continue
                except ModbusTimeout as e:
                    problems.append(e)
                    silent = True
                    break  # a meter that does not answer now will not answer the next block either
                except ModbusBusError as e:
                    problems.append(e)  # the bus reconnects with its own backoff; the meter is not to blame
                    break
                except ModbusError as e:
                    problems.append(e)
                    continue
                if stamp is None:
                    stamp = self.keeper.stamp()
                values |= block.decode(words)
                self.last_words[(block.function, block.address)] = words
        if stamp is None:
            problems += refused[-1:]  # refusals of a meter that answered nothing else: the meter refuses
        if stamp is not None and not silent and not any(isinstance(p, ModbusBusError) for p in problems):
            self._learn(evidence)
        for p in problems:
            self.counts[p.kind] += 1
        if problems:
            minute = int(time.monotonic() // 60)
            if not self._errors_by_minute or self._errors_by_minute[-1][0] != minute:
                self._errors_by_minute.append((minute, Counter()))
            self._errors_by_minute[-1][1].update(p.kind for p in problems)
        self.last_problems = problems
        if self.report_health:
            self._update_health(problems, silent, bool(values))
        if not values or stamp is None:
            return None
        self.counts["readings"] += 1
        return Reading(self.meter.name, stamp.ts_ms, values, stamp.synced, stamp.mono_ms)

    def errors_last_hour(self) -> dict[str, int]:
        """Failed reads per kind (timeout, exception, bad_answer, bus...) in the last 60 minutes."""
        now = int(time.monotonic() // 60)
        total: Counter[str] = Counter()
        for minute, counts in self._errors_by_minute:
            if now - minute < 60:
                total.update(counts)
        return dict(total)

    def _learn(self, evidence: list[Key]) -> None:
        before = len(self.planner.unsupported)  # every poll: kept cheap
        learned = self.planner.observe(evidence, time.monotonic())
        if not learned:
            return
        left_out = self.planner.left_out
        grew = len(self.planner.unsupported) > before
        level = self.log.warning if grew else self.log.info
        (level if self.report_health else self.log.debug)(
            "meter keeps refusing these reads while answering the others: plan changed (asked again hourly)",
            changes=learned, left_out=left_out or None)
        if grew:
            self.on_change()

    def answer_ms(self) -> dict[str, float] | None:
        """The median and 99th percentile of its last answers' times, in ms (None before any answer)."""
        times = sorted(self.answer_times)
        if not times:
            return None
        return {"p50": round(times[len(times) // 2] * 1000, 1), "p99": round(times[int(len(times) * 0.99)] * 1000, 1),
                "timeout": round(self.timeout * 1000)}

    def health(self) -> dict[str, object]:
        """For ``status``: failing or not, since when, the last problem, the counters and the answer times."""
        down = self.down_since is not None
        return {
            "answer_ms": self.answer_ms(),
            "failing": down,
            "down_s": round(time.monotonic() - self.down_since, 1) if self.down_since is not None else None,
            "last_problem": str(self.last_problems[0]) if down and self.last_problems else None,
            "counts": dict(self.counts),
            "skipped_at_ms": self.skipped_at_ms,
            "left_out": self.planner.left_out,
        }

    def _update_health(self, problems: list[ModbusError], silent: bool, partly: bool = False) -> None:
        if not problems:
            if self.down_since is not None:
                self.log.info("meter answering again", down_s=round(time.monotonic() - self.down_since, 1),
                              failed_polls=self.failed_polls)
                self.on_change()
            self.failures, self.retry_at, self.down_since, self.missed_at, self._last_kind = 0, 0.0, None, None, ""
            self.failed_polls = 0
            return
        self.failed_polls += 1
        first = problems[0]
        kind = f"{first.kind} {getattr(first, 'code', '')}"  # "exception 2": a new code is a new problem
        if silent:
            self.failures += 1
            if self.failures == 1:
                self.missed_at = time.monotonic()
                self.log.debug("meter did not answer; asking once more", kind=first.kind, detail=str(first))
                return
        if self.down_since is None:
            self.down_since = self.missed_at or time.monotonic()
            self.log.warning("meter read partly failed: its other values are queued, these are missing" if partly
                             else "meter read failed: no value from it is queued until it answers",
                             kind=first.kind, detail=str(first), failed_reads=len(problems))
            self.on_change()
        elif kind != self._last_kind:
            self.log.info("meter read still failing, differently", kind=first.kind, detail=str(first))
        else:
            self.log.debug("meter read still failing", kind=first.kind, detail=str(first))
        self._last_kind = kind


class SunSpecPoller(MeterPoller):
    """A SunSpec device: its chain discovered at the first poll (and again after it failed), then its model read
    like any meter's plan. The device's identity (model 1) is in ``health()`` for ``status`` and the page."""

    def __init__(
        self, meter: ModbusMeterConfig, bus: Bus, keeper: TimeKeeper | None = None, report_health: bool = True
    ) -> None:
        super().__init__(meter, bus, keeper, report_health)
        self.device: sunspec.Device | None = None

    async def poll(self) -> Reading | None:
        if self.device is None and not await self._discover():
            return None
        reading = await super().poll()
        if reading is None and self.failures:
            self.device = None  # a device replaced or re-addressed: found again when it answers
        return reading

    async def _discover(self) -> bool:
        try:
            async with self.bus.session() as conn:
                device = await sunspec.discover(conn, self.meter.unit, self.timeout, self.meter.sunspec_model)
        except ModbusError as e:
            return self._failed(e)
        if device.model is None:
            wanted = f"model {self.meter.sunspec_model}" if self.meter.sunspec_model else "a meter or inverter model"
            return self._failed(ModbusBadAnswer(f"SunSpec device without {wanted} the gateway reads:"
                                                f" {device.describe()}"))
        wanted_q = frozenset(self.meter.quantities) if self.meter.quantities is not None else None
        _, body, length = device.model
        found = sunspec.points(device, wanted_q)
        if not found:
            # A model too short for any of its values (or none of the quantities asked for): said, not a meter that
            # silently gives nothing.
            return self._failed(ModbusBadAnswer(f"SunSpec model {device.model[0]} of {length} registers holds none of"
                                                f" the values read: {device.describe()}"))
        self.planner = sunspec.ModelPlanner(found, body, length)
        self.device = device
        self.log.info("SunSpec device found", device=device.describe())
        return True

    def _failed(self, problem: ModbusError) -> bool:
        """A discovery that failed counts as a failed poll: counted, and the meter said failing (logged once)."""
        self.counts["polls"] += 1
        self.counts[problem.kind] += 1
        self.last_problems = [problem]
        if self.report_health:
            self._update_health([problem], silent=isinstance(problem, ModbusTimeout))
        return False

    def health(self) -> dict[str, object]:
        out = super().health()
        if self.device is not None:
            out["device"] = {**self.device.identity, "sunspec": self.device.describe()}
        return out


def poller_for(meter: ModbusMeterConfig, bus: Bus, keeper: TimeKeeper | None = None,
               report_health: bool = True) -> MeterPoller:
    cls = SunSpecPoller if meter.sunspec else MeterPoller
    return cls(meter, bus, keeper, report_health)


class ModbusSource(BaseSource):
    """Every meter of one bus."""

    def __init__(self, bus: BusBase, meters: list[ModbusMeterConfig], keeper: TimeKeeper | None = None) -> None:
        self.name = f"bus:{bus.name}"
        self.bus = Bus(bus)
        self.pollers = [poller_for(m, self.bus, keeper) for m in meters]
        self.on_change: Callable[[], None] = lambda: None
        for p in self.pollers:
            p.on_change = lambda: self.on_change()

    def health(self) -> dict[str, dict[str, object]]:
        return {p.meter.name: p.health() for p in self.pollers}

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for p in self.pollers:
                    tg.create_task(p.run(emit, stop), name=f"meter:{p.meter.name}")
        finally:
            self.bus.close()
