"""``wegowise`` sink: each mapped meter's counter becomes consumption per local day or month
(:mod:`gateway.platforms.wegowise.periods`), and each closed period one raw data point of its Wegowise meter.

Readings arrive one stream per meter, in order. Each is fed to the meter's period builder; a reading that closes a
period is acknowledged only once the period is on Wegowise (or refused for good), so a failure leaves the reading
in the queue and the period is computed again from it. The builder's state is written to ``state_dir`` (atomically,
with an fsync) whenever a period has been sent; between two periods it lives in memory: after a crash the readings
the queue hands again are fed again, and readings it no longer has are covered by the counter itself (the next
segment is simply longer; consumption is never lost, only the spread within the open period is coarser).

Exactly once per period: the raw data points this sink created are recorded (period -> Wegowise id and body). A
period not in that record is looked up in what Wegowise holds for the meter before it is posted, so a POST whose
answer was lost, or a crash before the record was written, never makes a second one; a period whose value differs
from what Wegowise holds is updated (PUT) if this sink created it, and left alone (with a warning) if not: the
sink deletes and changes nothing it did not create.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from gateway.config.models import GatewayConfig
from gateway.errors import SinkError
from gateway.files import write_atomic
from gateway.logs import REDACTOR
from gateway.outcome import DELIVERED, Delivered, Outcome, Reject, Retry, Skip
from gateway.platforms.sink import BaseSink, Preview
from gateway.platforms.wegowise.api import WegowiseApi, WegowiseError
from gateway.platforms.wegowise.bills import bill_period, overlaps
from gateway.platforms.wegowise.config import MAX_PER_HOUR, WegowiseConfig, WegowiseMeter
from gateway.platforms.wegowise.datum import datum, datum_id, period_key, same_values
from gateway.platforms.wegowise.periods import Calendar, Period, PeriodBuilder
from gateway.quantities import Quantity
from gateway.reading import Reading
from gateway.stream import Stream

log = structlog.get_logger("gateway.platforms.wegowise.sink")

#: Raw data points kept in the record per meter (a day's periods for three years).
RECORD_KEEP = 1100


@dataclass
class MeterState:
    entry: WegowiseMeter
    quantity: Quantity
    unit: str
    builder: PeriodBuilder
    path: Path
    #: the Wegowise meter id (configured, or created and kept)
    meter_id: int | None
    #: period key -> {"id": Wegowise id, "body": what was sent}, for the raw data points this sink created
    record: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: when (the sink's clock, s) a reading of this meter was last fed: the meter is quiet since
    fed_at: float = 0.0
    #: the period a POST was sent for whose answer has not been recorded: Wegowise may hold it
    posting: str | None = None
    #: the Wegowise meter was seen to be of the configured data type (once per run)
    checked: bool = False

    def save(self) -> None:
        data = {"meter_id": self.meter_id, "builder": self.builder.state(),
                "record": dict(list(self.record.items())[-RECORD_KEEP:]), "posting": self.posting}
        write_atomic(self.path, json.dumps(data).encode())


def _until_retry(out: list[Outcome], readings: Sequence[Reading]) -> list[Outcome]:
    """An outcome for every reading: those after a Retry are tried again with it (the forwarder stops there)."""
    return out + [out[-1]] * (len(readings) - len(out))


class WegowiseSink(BaseSink):
    #: a corrected bill updates its period (PUT), a late one adds it
    late_periods = True
    max_batch = 500

    def __init__(self, config: WegowiseConfig, gateway: GatewayConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self._grace_task: asyncio.Task[None] | None = None
        self.name = config.name
        self.max_in_flight = config.max_in_flight
        self.gateway = gateway
        self.calendar = Calendar(config.period, ZoneInfo(gateway.site.timezone))
        self.dir = gateway.state_dir / "wegowise" / config.name
        meters = {m.name: m for m in gateway.meters}
        self.meters: dict[str, MeterState] = {}
        for e in config.meter_map:
            m = meters.get(e.meter)
            self.meters[e.meter] = MeterState(e, config.quantity_of(e, m), config.unit_of(e, m),
                                              PeriodBuilder(self.calendar, 0),
                                              self.dir / f"{e.meter}.json", e.id)
        for st in self.meters.values():
            st.builder = self._builder(st)
        self.api: WegowiseApi | None = None
        self.log = log.bind(sink=config.name)
        self._locks: dict[str, asyncio.Lock] = {}

    # ------------------------------------------------------------ life

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name, st in self.meters.items():
            self._load(name, st)
        token_file = self.config.token_path(self.gateway.state_dir)
        try:
            token = json.loads(token_file.read_text())
            pair = (str(token["token"]), str(token["secret"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise SinkError(f"sink {self.name}: no Wegowise access token in {token_file}: run meter-gateway"
                            f" wegowise authorize -c <config> --sink {self.name}") from None
        REDACTOR.add(pair)  # a peer's error page may echo the request's OAuth header
        self.api = WegowiseApi(self.config, *pair)
        now = self.clock()
        for st in self.meters.values():
            st.fed_at = now  # quiet counts from the start: the queue may hold what it has not handed yet
        if self.config.grace is not None:
            self._grace_task = asyncio.create_task(self._grace_loop(self.config.grace))
        if any(st.entry.tariff is None for st in self.meters.values()):  # once the sink starts, not at each try
            self.log.warning("meters without a tariff: their raw data points carry total_charge 0.00, which"
                             " Wegowise shows as a cost of zero",
                             meters=[n for n, st in self.meters.items() if st.entry.tariff is None])

    def _builder(self, st: MeterState, state: dict[str, Any] | None = None) -> PeriodBuilder:
        limit = st.entry.max_per_hour or MAX_PER_HOUR.get(st.unit)
        return PeriodBuilder(self.calendar, round(self.config.max_gap * 1000), state, limit)

    def _load(self, name: str, st: MeterState) -> None:
        try:
            data = json.loads(st.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warning("state of a meter unreadable: starting its periods afresh (Wegowise is asked before"
                             " anything is sent again)", meter=name, error=str(e))
            return
        saved = datum_id(data.get("meter_id"))
        if isinstance(data.get("builder"), dict):
            st.builder = self._builder(st, data["builder"])
        if st.entry.id is None:
            st.meter_id = saved
        elif saved is not None and saved != st.entry.id:
            # The record says what went to the other meter: it must not make this one skip a period.
            self.log.warning("meter_map id changed: periods from now on go to the new Wegowise meter; those sent to"
                             " the old one are not sent again", meter=name, was=saved, now=st.entry.id)
            return
        if isinstance(data.get("posting"), str):
            st.posting = data["posting"]
        if isinstance(data.get("record"), dict):
            st.record = data["record"]

    async def close(self) -> None:
        if self._grace_task is not None:
            self._grace_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._grace_task
        if self.api is not None:
            await self.api.close()

    async def _grace_loop(self, grace: float) -> None:
        while True:
            await asyncio.sleep(min(60.0, grace / 4))
            try:
                await self.close_idle()
            except Exception as e:  # a bug here must not end the grace closes for good, silently
                self.log.error("closing periods at grace failed; tried again at the next look", error=repr(e))

    async def close_idle(self) -> None:
        """Send, with what is known, each open period whose end is ``grace`` past and whose meter has sent nothing
        for as long (a backlog being caught up keeps sending, so its periods are not closed early)."""
        grace = self.config.grace
        if grace is None:
            return
        now = self.clock()
        for name, st in self.meters.items():
            async with self._lock(name):
                if now - st.fed_at < grace:
                    continue
                trial = st.builder.copy()  # kept only if what it closes is on Wegowise
                p = trial.close_idle(round(now * 1000), round(grace * 1000))
                if p is None:
                    continue
                outcome = await self._deliver(name, st, p)
                if isinstance(outcome, Retry):
                    continue  # tried again at the next look
                st.builder = trial
                await asyncio.to_thread(st.save)

    # ------------------------------------------------------------ readings

    def _lock(self, meter: str) -> asyncio.Lock:
        return self._locks.setdefault(meter, asyncio.Lock())

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        st = self.meters[stream.meter]
        out: list[Outcome] = []
        async with self._lock(stream.meter):
            for r in readings:
                value = r.values.get(st.quantity)
                if r.start_ms is not None:  # a bill: one raw datum of its own dates
                    out.append(await self._pass_through(stream.meter, st, r))
                    if isinstance(out[-1], Retry):
                        return _until_retry(out, readings)
                    continue
                if value is None:
                    out.append(Skip(f"no {st.quantity.value} in this reading"))
                    continue
                trial = st.builder.copy()  # kept only if what it closes is on Wegowise
                periods = trial.feed(r.ts_ms, value)
                st.fed_at = self.clock()
                self._note(stream.meter, trial)
                outcome: Outcome = DELIVERED
                for p in periods:
                    o = await self._deliver(stream.meter, st, p)
                    if isinstance(o, Retry):
                        return _until_retry([*out, o], readings)
                    if not isinstance(outcome, Reject):
                        outcome = o  # a period refused for good sends its reading to the dead letters
                st.builder = trial
                if periods:
                    await asyncio.to_thread(st.save)
                out.append(outcome)
        return out

    def _note(self, meter: str, b: PeriodBuilder) -> None:
        if b.implausible_seen is not None:
            before, after, rate = b.implausible_seen
            self.log.warning("counter rose faster than any consumption (a misread, or a meter exchanged): that step is"
                             " not counted", meter=meter, before=before, after=after, per_hour=rate)
        if b.misread_seen is not None:
            wrong, after = b.misread_seen
            self.log.warning("counter read once out of line and then back (a misread): that reading is not counted",
                             meter=meter, misread=wrong, next=after)
        if b.reset_seen is not None:
            before, after = b.reset_seen
            self.log.warning("counter went backwards (meter replaced, reset or rolled over): nothing counted for"
                             " that step, counting goes on from the new value", meter=meter, before=before,
                             after=after)
        if b.first_partial is not None:
            self.log.info("first period incomplete (began before the first reading): not sent; periods start at"
                          " the next boundary", meter=meter, from_ms=b.first_partial)

    async def _pass_through(self, meter: str, st: MeterState, r: Reading) -> Outcome:
        """A period reading (a WattzOn bill) as one raw datum: its own dates (the UTC days of its start and of its
        last instant), its usage converted to the data type's unit, its own cost as total_charge."""
        p = bill_period(r)
        if p is None:
            return Skip("a period without interval_energy: nothing for Wegowise")
        key = period_key(datum(p, st.unit, st.entry))
        # A bill re-issued over another span (a corrected bill whose start or end moved) replaces the one bill it
        # overlaps: two raw data over the same days would count their consumption twice.
        over = [k for k, v in st.record.items() if k != key and overlaps(v.get("span"), p)]
        if len(over) > 1:
            self.log.warning("a bill overlapping several bills already on Wegowise: not sent (which it replaces is"
                             " for a person to settle)", meter=meter, period=key, overlaps=over)
            return Skip(f"bill {key} overlaps {len(over)} bills already on Wegowise ({', '.join(over)})")
        outcome = await self._deliver(meter, st, p, r.values.get(Quantity.COST), replaces_key=over[0] if over else None)
        if not isinstance(outcome, Retry):
            await asyncio.to_thread(st.save)
        return outcome

    async def _deliver(self, meter: str, st: MeterState, p: Period, cost: float | None = None,
                       replaces_key: str | None = None) -> Outcome:
        body = datum(p, st.unit, st.entry, cost)
        key = period_key(body)
        if p.spans > 1:
            self.log.warning("readings too far apart to split the consumption between periods: sent as one",
                             meter=meter, start=body["start_date"], end=body["end_date"], periods=p.spans)
        if p.resets:
            self.log.info("period holds a counter reset", meter=meter, period=key, resets=p.resets)
        if p.short_ms:
            self.log.warning("period sent after the grace time without a reading at or after its end: what its last"
                             " stretch consumed is missing, and is added (the period updated) when the meter sends"
                             " again", meter=meter, period=key, missing_s=round(p.short_ms / 1000))
        mine = st.record.get(key)
        replaced: str | None = None
        span = [p.start_ms, p.end_ms]
        if replaces_key is not None and mine is None:
            mine, replaced = st.record[replaces_key], replaces_key
            self.log.warning("a bill over another span than the one sent before for those days: that raw datum is"
                             " updated to this bill's dates and values", meter=meter, was=replaces_key, now=key)
        elif p.replaces is not None and mine is None:
            first, last = self.calendar.dates(*p.replaces)
            old = f"{first.isoformat()}/{last.isoformat()}"
            if old in st.record:
                # The short period sent at grace grows into this one: the same raw datum, new dates and value.
                mine, replaced = st.record[old], old
                self.log.warning("readings too far apart to complete the period sent at grace: it is updated to"
                                 " span the periods up to the next reading", meter=meter, was=old, now=key)
        if mine is not None and mine.get("body") == body:
            return Delivered(json.dumps(body))  # sent before (the reading comes again after a restart)
        assert self.api is not None
        try:
            meter_id = await self._meter_id(meter, st)
            if mine is None:
                held = await self._held(meter_id, key, body["start_date"], sure=st.posting != key)
                if held:
                    d = held[0]
                    if same_values(d, body):
                        self.log.info("period already on Wegowise: not sent again", meter=meter, period=key)
                        self._remember(st, key, datum_id(d.get("id")), body, span)
                        return Delivered(json.dumps(body))
                    self.log.warning("Wegowise holds another value for this period, not created by the gateway"
                                     " (an import, an edit): left as it is", meter=meter, period=key,
                                     held={k: d.get(k) for k in body}, computed=body)
                    return Skip(f"period {key} held by Wegowise with another value")
                st.posting = key  # on disk before the POST: after a crash, the list is asked whatever "latest" says
                await asyncio.to_thread(st.save)
                created = await self.api.create_datum(meter_id, body)
                st.posting = None
                self._remember(st, key, datum_id(created.get("id")), body, span)
            else:
                found_id = datum_id(mine.get("id"))
                if found_id is None:  # created, but its answer held no usable id: found by its period
                    old = replaced or key
                    found_id = next((datum_id(d.get("id")) for d in await self.api.raw_data(meter_id)
                                     if period_key(d) == old and datum_id(d.get("id")) is not None), None)
                    if found_id is None:
                        raise WegowiseError("transient", f"the raw datum of {old} is not found on Wegowise to update")
                await self.api.update_datum(meter_id, found_id, body)
                self.log.info("period's value changed: updated on Wegowise", meter=meter, period=key,
                              before=mine.get("body"), now=body)
                if replaced is not None:
                    st.record.pop(replaced, None)
                self._remember(st, key, found_id, body, span)
        except WegowiseError as e:
            return self._failed(meter, st, key, e)
        return Delivered(json.dumps(body))

    async def _held(self, meter_id: int, key: str, start_date: str, sure: bool) -> list[dict[str, Any]]:
        """What Wegowise holds for the period ``key``. When no POST for it may have gone out unrecorded (``sure``),
        its latest raw datum is asked first: when that ends before the period starts (the usual case: periods go
        out in order), nothing is held for it and the whole list (a datum a day for years) need not be fetched.
        (Wegowise does not say whether "latest" is by date or by creation: after an unrecorded POST the list is
        always asked.)"""
        assert self.api is not None
        if sure:
            latest = await self.api.latest(meter_id)
            end = latest.get("end_date") if latest is not None else None
            if latest is None or (isinstance(end, str) and end < start_date):
                return []
        return [d for d in await self.api.raw_data(meter_id) if period_key(d) == key]

    def _remember(self, st: MeterState, key: str, wegowise_id: Any, body: dict[str, str], span: list[int]) -> None:
        st.record.pop(key, None)
        # the newest last: the record is trimmed from its start; the span (ms) tells overlapping bills apart
        st.record[key] = {"id": wegowise_id, "body": body, "span": span}

    def _failed(self, meter: str, st: MeterState, key: str, e: WegowiseError) -> Outcome:
        if e.kind == "auth":
            return Retry(str(e), after=self.config.auth_retry)
        if e.kind == "not_found":
            return Retry(f"Wegowise meter {st.meter_id} not found: check meter_map (id) or whether the meter was"
                         f" deleted on Wegowise ({e})", after=self.config.auth_retry)
        if e.kind == "mismatch":
            return Retry(str(e), after=self.config.auth_retry)
        if e.kind == "invalid":
            self.log.error("Wegowise refused the period: it is not sent (the reading that closed it goes to the"
                           " dead letters)", meter=meter, period=key, reason=str(e))
            return Reject(f"period {key}: {e}")
        return Retry(str(e))

    async def _meter_id(self, meter: str, st: MeterState) -> int:
        if st.meter_id is not None:
            if not st.checked:
                await self._check_meter(meter, st, st.meter_id)
            return st.meter_id
        new = st.entry.create
        assert new is not None and self.api is not None
        # Created before, but the id never kept (a crash between the two)? Found by its account number.
        for m in await self.api.meters():
            found = datum_id(m.get("id"))
            if m.get("account_number") == new.account_number and m.get("data_type") == st.entry.data_type \
                    and found is not None:
                st.meter_id, st.checked = found, True
                self.log.info("Wegowise meter found by its account number", meter=meter, wegowise_id=m["id"])
                break
        else:
            body: dict[str, Any] = {"account_number": new.account_number, "data_type": st.entry.data_type}
            for k in ("utility_company_id", "other_utility_company", "nickname", "notes"):
                v = getattr(new, k)
                if v is not None:
                    body[k] = str(v) if k == "utility_company_id" else v
            created = await self.api.create_meter(body)
            new_id = datum_id(created.get("id"))
            if new_id is None:  # created or not: the next try finds it by its account number before creating one
                raise WegowiseError("transient", "POST /meters: the answer holds no meter id")
            st.meter_id, st.checked = new_id, True
            self.log.info("Wegowise meter created", meter=meter, wegowise_id=st.meter_id)
        await asyncio.to_thread(st.save)
        return st.meter_id

    async def _check_meter(self, meter: str, st: MeterState, meter_id: int) -> None:
        """The Wegowise meter exists and measures what the configuration says: kWh sent to a gas meter would be
        refused period after period, or worse, taken."""
        assert self.api is not None
        try:
            held = await self.api.meter(meter_id)
        except WegowiseError as e:
            if e.kind == "not_found":
                raise WegowiseError("not_found", f"Wegowise meter {meter_id} not found", 404) from None
            raise
        kind = held.get("data_type")
        if kind != st.entry.data_type:
            raise WegowiseError("mismatch", f"Wegowise meter {meter_id} is {kind!r}, meter_map says"
                                f" {st.entry.data_type}: fix the id or the data_type")
        st.checked = True

    # ------------------------------------------------------------ dry run

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip:
        st = self.meters[stream.meter]
        value = reading.values.get(st.quantity)
        if value is None:
            return Skip(f"no {st.quantity.value} in this reading")
        bill = bill_period(reading)
        periods = [bill] if bill is not None else st.builder.feed(reading.ts_ms, value)
        if not periods:
            return Skip("no period closed by this reading")
        where = st.meter_id if st.meter_id is not None else "(created at the first period)"
        # A late period (a corrected bill) updates the raw datum this sink sent for it, if it sent one.
        return {"sink": self.name, "would": "POST or PUT" if reading.late else "POST",
                "url": f"{self.config.url.rstrip('/')}{self.config.api_path}/meters/{where}/raw_data",
                "bodies": [datum(p, st.unit, st.entry, reading.values.get(Quantity.COST) if bill else None)
                           for p in periods]}
