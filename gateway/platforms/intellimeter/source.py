"""``intellimeter`` meters: one source per Intellimeter account, fetching every meter's reads on an interval.

Each fetch asks for the span since the oldest point still needed: per meter, its last queued read (asked of the
queue at start, then followed from what the queue accepts), or, once a fetch has succeeded, ``late_reads`` before
that fetch (reads that reach the cloud late are still taken). The span is bounded by ``max_reach_back``; what lies
before is not fetched, and that is logged and shown per meter. A meter's reads newer than its last queued one are
handed to the queue in time order, in chunks; the queue refuses any reading not newer than the last it holds for
the meter, so a read fetched twice (an overlap, a restart mid-way through a catch-up) is never queued twice. A
fetch that fails leaves the span where it was: the next one asks for it again.

The document has no end bound for a request (only how far back), so a catch-up is one answer per property
(``properties``, or one for all): parsing keeps only each read's few fields, and each meter's readings are made,
handed over and let go one meter at a time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import structlog

from gateway.cloudhttp import CloudError
from gateway.config.units import format_duration
from gateway.platforms.intellimeter.api import IntellimeterApi
from gateway.platforms.intellimeter.config import IntellimeterCloud, IntellimeterMeter, properties
from gateway.platforms.intellimeter.reads import BadAnswer, Mapper, RawRead, object_hook, reads_of
from gateway.platforms.source import BaseSource, Emit
from gateway.reading import Reading, iso_utc
from gateway.schedule import next_tick, sleep_until

log = structlog.get_logger("gateway.platforms.intellimeter.source")

#: Readings handed to the queue in one append.
CHUNK = 500
#: Added to every span asked for: the cloud's clock and ours may differ this much.
MARGIN_S = 120.0


@dataclass(slots=True)
class MeterState:
    counts: Counter[str] = field(default_factory=Counter)
    last_problem: str | None = None
    #: wall time the meter was last given a new reading (or the source started)
    fresh_at: float = field(default_factory=time.time)
    failing: bool = False
    #: a span of its reads that was not fetched (older than max_reach_back): (from ms, to ms)
    gap: tuple[int, int] | None = None


class IntellimeterSource(BaseSource):
    def __init__(self, cloud: IntellimeterCloud, meters: list[IntellimeterMeter], tz: ZoneInfo,
                 api: IntellimeterApi) -> None:
        super().__init__()
        self.cloud = cloud
        self.name = f"cloud:{cloud.name}"
        self.meters = meters
        self.api = api
        self.mapper = Mapper(meters, tz)
        self._hook = object_hook(frozenset(m.volume_field for m in meters))
        self.log = log.bind(cloud=cloud.name)
        #: per meter: the last reading the queue holds (-1: none)
        self.last: dict[str, int] = {}
        #: per meter: fetch reads after this (ms), once a fetch has succeeded
        self.since: dict[str, int] = {}
        self.state = {m.name: MeterState() for m in meters}
        #: the cloud's own trouble (auth, unreachable, garbage): every meter is failing while it lasts
        self.cloud_problem: str | None = None
        self.cloud_failures = 0
        #: Intellimeter meter ids in answers that no meter of the configuration maps (for status and verify)
        self.unmapped: set[str] = set()
        self._problem_logged: set[tuple[str, str]] = set()
        self.ok_once = False

    # ------------------------------------------------------------ the loop

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        if self.cloud.insecure:
            self.log.warning("plain http: the client secret and the bearer tokens cross the network in clear"
                             " (allow_insecure_http is set)", url=self.cloud.url)
        try:
            for m in self.meters:
                self.last[m.name] = await self.last_queued(m.name)
            while not stop.is_set():
                delay = await self.poll_once(emit)
                if not await sleep_until(time.time() + delay, stop):
                    break
        finally:
            await self.api.close()

    async def poll_once(self, emit: Emit) -> float:
        """One fetch of every property; the seconds until the next."""
        try:
            await self.poll(emit)
        except CloudError as e:
            self.cloud_failures += 1
            self._cloud_failed(e)
            if e.kind == "auth":
                return self.cloud.auth_retry
            backoff = min(self.cloud.retry_cap, 5.0 * 2 ** min(self.cloud_failures - 1, 10))
            return float(max(backoff, min(e.retry_after or 0.0, self.cloud.retry_cap)))
        self.cloud_failures = 0
        self._cloud_ok()
        now = time.time()
        return next_tick(now, self.cloud.interval) - now

    def span(self, now_ms: int) -> tuple[int, str] | None:
        """(limit_quantity, limit_unit) of the next fetch; None: only the latest reads (nothing to catch up)."""
        starts = []
        first = int(self.cloud.first_reach_back * 1000)
        for m in self.meters:
            if m.name in self.since:
                starts.append(self.since[m.name])
            elif self.last.get(m.name, -1) >= 0:
                starts.append(self.last[m.name])
            elif first:
                starts.append(now_ms - first)
        if not starts:
            return None
        floor = now_ms - int(self.cloud.max_reach_back * 1000)
        for m in self.meters:
            start = self.since.get(m.name, self.last.get(m.name, -1))
            if 0 <= start < floor and self.state[m.name].gap is None:
                self._gap(m.name, start, floor)
        reach = (now_ms - max(min(starts), floor)) / 1000 + MARGIN_S
        if reach <= 7 * 86400:
            return math.ceil(reach / 60), "Minute"
        return math.ceil(reach / 3600), "Hour"

    async def poll(self, emit: Emit) -> None:
        started = time.time()
        now_ms = int(started * 1000)
        span = self.span(now_ms)
        quantity, unit = span if span is not None else (0, "Hour")
        for prop in properties(self.cloud):
            answer = await self.api.reads(quantity, unit, prop, self._hook)
            try:
                reads = reads_of(answer)
            except BadAnswer as e:
                raise CloudError("bad_answer", f"Intellimeter's reads are not as documented: {e}") from None
            del answer
            await self._take(reads, emit)
            del reads
        late = now_ms - int(self.cloud.late_reads * 1000)
        for m in self.meters:
            self.since[m.name] = max(self.last.get(m.name, -1), late)
            st = self.state[m.name]
            if st.gap is not None and self.last.get(m.name, -1) >= st.gap[1]:
                st.gap = None
        self._set_failing(started)

    async def _take(self, reads: list[tuple[str, RawRead]], emit: Emit) -> None:
        grouped: dict[str, list[RawRead]] = {}
        by_name = {m.name: m for m in self.meters}
        not_reads = 0
        for _, read in reads:
            if read.stamp is None:
                not_reads += 1
                continue
            meter = self.mapper.meter_of(read)
            if meter is None:
                meter_id = read.meter[:64] if isinstance(read.meter, str) else None
                if meter_id is not None and meter_id not in self.unmapped and len(self.unmapped) < 1000:
                    self.unmapped.add(meter_id)
                    self.log.info("Intellimeter has a meter no meter of the configuration maps (see verify)",
                                  meter_id=meter_id)
                continue
            grouped.setdefault(meter.name, []).append(read)
        if not_reads:
            self.log.warning("items of Intellimeter's answer are not reads: left out", count=not_reads)
        for name, raw in grouped.items():
            meter = by_name[name]
            problems: Counter[str] = Counter()
            ids = self.mapper.ids_of_serial.get(name, set())
            if len(ids) > 1:
                problems["ambiguous_serial"] += len(raw)
                self._problems(name, problems, f"serial number {meter.serial_number} is on {len(ids)} Intellimeter"
                                               " meters: none of its reads is taken (give meter_id)")
                continue
            readings = self.mapper.readings(meter, raw, problems)
            del raw
            if problems:
                self._problems(name, problems, None)
            await self._hand_over(name, [r for r in readings if r.ts_ms > self.last.get(name, -1)], emit)
        grouped.clear()

    async def _hand_over(self, name: str, readings: list[Reading], emit: Emit) -> None:
        for i in range(0, len(readings), CHUNK):
            chunk = readings[i:i + CHUNK]
            result = await emit(chunk, prompt=True)
            if result.dropped:
                return  # the queue cannot write: the next fetch asks for them again
            refused = {id(r) for r, _ in result.refused}
            accepted = [r for r in chunk if id(r) not in refused]
            st = self.state[name]
            st.counts["readings"] += len(accepted)
            if accepted:
                self.last[name] = max(self.last.get(name, -1), accepted[-1].ts_ms)
                st.fresh_at = time.time()
            if refused:  # the queue holds newer (or the reading is ahead of the clock): follow the queue
                self.last[name] = max(self.last.get(name, -1), await self.last_queued(name))

    # ------------------------------------------------------------ health

    def _problems(self, meter: str, problems: Counter[str], text: str | None) -> None:
        st = self.state[meter]
        st.counts.update(problems)
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(problems.items()))
        st.last_problem = text or f"reads refused: {kinds}"
        for kind in problems:
            if (meter, kind) not in self._problem_logged:
                self._problem_logged.add((meter, kind))
                self.log.warning("Intellimeter reads refused: nothing of them is queued", meter=meter, reason=kind,
                                 count=problems[kind], detail=text)

    def _gap(self, meter: str, start: int, floor: int) -> None:
        st = self.state[meter]
        st.gap = (start, floor)
        st.counts["not_fetched_spans"] += 1
        st.last_problem = (f"reads from {iso_utc(start)} to {iso_utc(floor)} are not fetched: older than"
                           f" max_reach_back ({format_duration(self.cloud.max_reach_back)})")
        self.log.warning("reads older than max_reach_back are not fetched", meter=meter, since=iso_utc(start),
                         until=iso_utc(floor))

    def _cloud_failed(self, e: CloudError) -> None:
        text = f"{e.kind}: {e}"
        if text != self.cloud_problem:
            (self.log.error if e.kind in ("auth", "not_found") else self.log.warning)(
                "cannot fetch Intellimeter's reads: every meter of this cloud waits", kind=e.kind, error=str(e))
            self.cloud_problem = text
            for st in self.state.values():
                st.counts[f"cloud_{e.kind}"] += 1
            self._set_failing()

    def _cloud_ok(self) -> None:
        self.ok_once = True
        if self.cloud_problem is not None:
            self.log.info("Intellimeter answers again", after=self.cloud_problem)
            self.cloud_problem = None
            self._set_failing()

    def stale(self, meter: IntellimeterMeter, now: float) -> bool:
        """No new read of the meter for three of its intervals (plus the reads' lateness and a fetch interval)."""
        limit = 3 * meter.interval + self.cloud.late_reads + self.cloud.interval
        return self.ok_once and now - self.state[meter.name].fresh_at > limit

    def _set_failing(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        changed = False
        for m in self.meters:
            st = self.state[m.name]
            failing = self.cloud_problem is not None or self.stale(m, now)
            if failing != st.failing:
                changed = True
                st.failing = failing
                if failing and self.cloud_problem is None:
                    last = self.last.get(m.name, -1)
                    st.last_problem = ("Intellimeter has no read of this meter" + (
                        f" newer than {iso_utc(last)}" if last >= 0 else " (is meter_id right? see verify)"))
                    self.log.warning("no new read of this meter in Intellimeter", meter=m.name,
                                     last=iso_utc(last) if last >= 0 else None)
        if changed:
            self.on_change()

    def health(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for m in self.meters:
            st = self.state[m.name]
            out[m.name] = {
                "failing": st.failing,
                "last_problem": self.cloud_problem if self.cloud_problem else st.last_problem,
                "counts": dict(st.counts),
            }
        return out
