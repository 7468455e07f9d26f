"""``wattzon`` meters: one source per WattzOn Link account. It starts extraction jobs, follows them, and fetches
each profile's bills and interval data as period readings.

Jobs: per profile and mode (``bill``, ``interval``) that a meter needs, one every ``extract_every``; when it was
started is kept in ``state_dir/wattzon-<cloud>.json``, so a restart does not start another. A job is followed
every ``job_poll`` until ``finished`` (the status word alone never decides: WattzOn's list is open). A finished
job whose state needs a person (``credential_error``, ``action_needed``, ``incomplete_parameters``) is logged once,
with what to do, and its profile's meters report it until a later job succeeds.

Data: after each job, at start, and every ``fetch_every``. Bills: each of a meter's records becomes a period
reading; those newer (by end) than the meter's last queued reading are handed to the queue in order, and the
queue refuses any reading not newer than its last, so a bill seen again (``cached``, re-extracted) is never queued
twice. A bill for a period already queued that says something else (corrected), or that arrives after a later one
(late), is queued as a *late period reading*: just after the meter's newest reading, with its own start and end
(:class:`gateway.reading.Reading`), logged and counted; Wegowise updates or adds the period, the platforms that
cannot skip it (counted). What was queued per bill (its end, id and values) is kept in the state file to tell
these apart. Intervals: the month list is read; a month not
yet taken whole is fetched (one month in memory at a time), its intervals newer than the last queued are queued,
and once WattzOn marks it ``complete`` and it was taken, it is not fetched again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.cloudhttp import CloudError
from gateway.files import write_atomic
from gateway.platforms.source import BaseSource, Emit
from gateway.platforms.wattzon.api import NEEDS_PERSON, WattzonApi
from gateway.platforms.wattzon.config import WattzonCloud, WattzonMeter
from gateway.platforms.wattzon.records import bill_reading, in_order, interval_reading, interval_rows, is_mine
from gateway.reading import Reading, iso_utc
from gateway.schedule import sleep_until

log = structlog.get_logger("gateway.platforms.wattzon.source")

#: Bills remembered per meter (their end, id and values): twenty years of monthly bills.
BILLS_KEPT = 240


@dataclass(slots=True)
class MeterState:
    counts: Counter[str] = field(default_factory=Counter)
    last_problem: str | None = None


def _values_key(r: Reading) -> list[Any]:
    """What is kept of a queued bill, as it reads back from the JSON state file."""
    return [r.start_ms, sorted([q.value, v] for q, v in r.values.items())]


class WattzonSource(BaseSource):
    def __init__(self, cloud: WattzonCloud, meters: list[WattzonMeter], state_dir: Path,
                 api: WattzonApi | None = None) -> None:
        super().__init__()
        self.cloud = cloud
        self.name = f"cloud:{cloud.name}"
        self.meters = meters
        self.api = api or WattzonApi(cloud)
        self.path = cloud.state_path(state_dir)
        self.log = log.bind(cloud=cloud.name)
        self.last: dict[str, int] = {}
        self.state = {m.name: MeterState() for m in meters}
        #: (profile, mode) -> {"started": wall s, "job_id": str | None, "status": str}
        self.jobs: dict[str, dict[str, Any]] = {}
        #: meter -> {end ms (str): [bill id, start, values]}
        self.bills: dict[str, dict[str, Any]] = {}
        #: meter -> months taken whole
        self.months: dict[str, list[str]] = {}
        self.cloud_problem: str | None = None
        #: profile -> what a person must do (a finished job's state, a profile WattzOn does not know)
        self.person: dict[int, str] = {}
        self._fetch_due: set[tuple[int, str]] = {(m.profile_id, m.mode) for m in meters}
        self._fetched_at = time.time()
        self._started = self._fetched_at
        #: a fetch of data has succeeded since the start (before, a quiet meter says nothing)
        self._fetched_once = False
        self._failures = 0
        #: the meters last seen quiet (see :meth:`quiet`)
        self._quiet: set[str] = set()

    # ------------------------------------------------------------ state file

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            self.log.warning("the WattzOn state file cannot be read: jobs may start again, nothing is queued twice",
                             path=str(self.path), error=type(e).__name__)
            return
        if isinstance(data, dict):
            jobs, bills, months = data.get("jobs"), data.get("bills"), data.get("months")
            self.jobs = jobs if isinstance(jobs, dict) else {}
            self.bills = bills if isinstance(bills, dict) else {}
            self.months = months if isinstance(months, dict) else {}

    def _save(self) -> None:
        write_atomic(self.path, json.dumps({"jobs": self.jobs, "bills": self.bills, "months": self.months}).encode())

    # ------------------------------------------------------------ the loop

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        self._load()
        try:
            for m in self.meters:
                self.last[m.name] = await self.last_queued(m.name)
            while not stop.is_set():
                try:
                    await self.step(emit)
                    self._failures = 0
                    self._cloud_ok()
                    self._note_quiet()
                    delay = self._next_wake()
                except CloudError as e:
                    self._failures += 1
                    self._cloud_failed(e)
                    delay = min(self.cloud.retry_cap, 5.0 * 2 ** min(self._failures - 1, 10))
                    if e.retry_after:
                        delay = max(delay, min(e.retry_after, self.cloud.retry_cap))
                if not await sleep_until(time.time() + delay, stop):
                    break
        finally:
            await self.api.close()

    def _pairs(self) -> list[tuple[int, str]]:
        return sorted({(m.profile_id, m.mode) for m in self.meters})

    def _job(self, key: str) -> dict[str, Any]:
        """A job's record, as the state file had it or fresh (a record that is not what this code writes: fresh)."""
        job = self.jobs.get(key)
        if not isinstance(job, dict) or not isinstance(job.get("started", 0.0), int | float) or not isinstance(
                job.get("job_id"), str | None):
            job = self.jobs[key] = {"started": 0.0, "job_id": None, "status": ""}
        return job

    def _next_wake(self) -> float:
        now = time.time()
        wakes = [self._fetched_at + self.cloud.fetch_every]
        for pid, mode in self._pairs():
            job = self._job(f"{pid}:{mode}")
            if job.get("job_id"):
                wakes.append(now + self.cloud.job_poll)
            elif self.cloud.start_jobs:
                wakes.append(float(job.get("started", 0.0)) + self.cloud.extract_every)
        return max(1.0, min(min(wakes) - now, 60.0))

    async def step(self, emit: Emit) -> None:
        now = time.time()
        for pid, mode in self._pairs():
            key = f"{pid}:{mode}"
            job = self._job(key)
            if job.get("job_id"):
                await self._follow(pid, mode, job, now)
            elif self.cloud.start_jobs and now - float(job.get("started", 0.0)) >= self.cloud.extract_every:
                try:
                    job_id: str | None = await self.api.start_job(pid, mode)
                except CloudError as e:
                    if e.kind != "not_found":
                        raise
                    job_id = None  # this profile's trouble, not the cloud's: tried again at the next extract_every
                    self._needs_person(pid, f"WattzOn cannot start a job for profile {pid} ({e}): is profile_id"
                                            " right, and does its utility have an agent?")
                self.jobs[key] = {"started": now, "job_id": job_id, "status": "started" if job_id else "not_found"}
                self._save()
                if job_id:
                    self.log.info("extraction job started", profile=pid, mode=mode, job_id=job_id)
        if now - self._fetched_at >= self.cloud.fetch_every:
            self._fetch_due.update(self._pairs())
        for pid, mode in sorted(self._fetch_due):
            if mode == "bill":
                await self._take_bills(pid, emit)
            else:
                await self._take_intervals(pid, emit)
            self._fetch_due.discard((pid, mode))
            self._fetched_at = time.time()
            self._fetched_once = True

    async def _follow(self, pid: int, mode: str, job: dict[str, Any], now: float) -> None:
        try:
            finished, status, detail = await self.api.job(str(job["job_id"]))
        except CloudError as e:
            if e.kind != "not_found":
                raise
            finished, status, detail = True, "job_not_found", "WattzOn no longer knows the job"
        job["status"] = status
        timed_out = not finished and now - float(job.get("started", now)) > self.cloud.job_timeout
        if not (finished or timed_out):
            return
        job_id = job.pop("job_id")
        self._save()
        self._fetch_due.add((pid, mode))
        if timed_out:
            self.log.warning("extraction job still running after job_timeout: no longer followed; its data is"
                             " fetched", profile=pid, mode=mode, job_id=job_id, status=status)
            return
        if status in NEEDS_PERSON:
            self._needs_person(pid, f"extraction {status}: {NEEDS_PERSON[status]}", mode=mode, job_id=job_id,
                               detail=detail)
            return
        if status in ("success", "partial_success"):
            if pid in self.person:
                self.log.info("extraction job succeeded again", profile=pid, was=self.person.pop(pid))
                self.on_change()
            (self.log.info if status == "success" else self.log.warning)(
                "extraction job finished", profile=pid, mode=mode, job_id=job_id, status=status)
        else:
            self.log.warning("extraction job finished without success: tried again at the next extract_every",
                             profile=pid, mode=mode, job_id=job_id, status=status, detail=detail)

    # ------------------------------------------------------------ bills

    async def _take_bills(self, pid: int, emit: Emit) -> None:
        records = await self.api.bills(pid)
        for meter in (m for m in self.meters if m.profile_id == pid and m.mode == "bill"):
            problems: Counter[str] = Counter()
            mine = [r for r in records if isinstance(r, dict) and is_mine(meter, r)]
            ids = {id(r): r.get("bill_id") for r in mine}
            made = [(bill_reading(meter, r, problems), ids[id(r)]) for r in mine]
            bill_of = {id(r): str(b)[:100] for r, b in made if r is not None}
            readings = in_order([r for r, _ in made if r is not None], problems)
            kept = self.bills.setdefault(meter.name, {})
            last = self.last.get(meter.name, -1)
            late: list[tuple[Reading, str]] = []
            for r in readings:
                if r.ts_ms > last:
                    continue
                was = kept.get(str(r.ts_ms))
                if was is not None and was[1:] == _values_key(r):
                    continue  # the same bill again
                late.append((r, "corrected" if was is not None else "late"))
            queued, ok = await self._hand_over(meter, [r for r in readings if r.ts_ms > last], emit)
            for r in queued:
                kept[str(r.ts_ms)] = [bill_of[id(r)], *_values_key(r)]
            for r, what in late if ok else []:
                # Queued after the meter's newest reading, its own period kept with it (a late period reading).
                assert r.start_ms is not None
                moved = Reading(meter.name, self.last.get(meter.name, -1) + 1, r.values, start_ms=r.start_ms,
                                end_ms=r.ts_ms)
                taken, ok = await self._hand_over(meter, [moved], emit)
                if not taken:
                    break  # not written (a full disk): tried again at the next fetch
                was = kept.get(str(r.ts_ms))
                kept[str(r.ts_ms)] = [bill_of[id(r)], *_values_key(r)]
                self._save()  # a crash before this queues it once more: Wegowise sees the same value, no change
                self.state[meter.name].counts[f"{what}_bills"] += 1
                self.on_change()  # status shows it at once
                self.log.warning(f"a {what} bill for a period already passed: queued after the meter's newer"
                                 " readings; a platform that can add or replace a past period (Wegowise) gets it,"
                                 " the others skip it (counted)", meter=meter.name, bill_id=bill_of[id(r)],
                                 start=iso_utc(r.start_ms), end=iso_utc(r.ts_ms),
                                 values={q.value: v for q, v in r.values.items()},
                                 earlier=None if was is None else was[2])
            for end in sorted(kept, key=int)[:-BILLS_KEPT]:
                del kept[end]
            self._save()
            self._count(meter, problems)

    # ------------------------------------------------------------ intervals

    async def _take_intervals(self, pid: int, emit: Emit) -> None:
        months = await self.api.intervals(pid)
        for meter in (m for m in self.meters if m.profile_id == pid and m.mode == "interval"):
            taken = self.months.setdefault(meter.name, [])
            mine = sorted((str(e["month_id"]), e.get("complete") is True) for e in months
                          if isinstance(e, dict) and e.get("meter_id") == meter.meter_id
                          and isinstance(e.get("month_id"), str) and 0 < len(e["month_id"]) <= 20)
            for month_id, complete in mine:
                if month_id in taken:
                    continue
                problems: Counter[str] = Counter()
                assert meter.meter_id is not None
                answer = await self.api.month(pid, meter.meter_id, month_id)
                try:
                    rows = interval_rows(answer, self.cloud.interval_layout)
                except ValueError as e:
                    raise CloudError("bad_answer", f"month {month_id} of {meter.meter_id}: {e}") from None
                del answer
                readings = in_order([r for row in rows if (r := interval_reading(
                    meter, row, self.cloud.interval_layout, problems)) is not None], problems)
                del rows
                last = self.last.get(meter.name, -1)
                _, ok = await self._hand_over(meter, [r for r in readings if r.ts_ms > last], emit)
                if complete and ok:
                    taken.append(month_id)
                    del taken[:-600]  # fifty years of months
                    self._save()
                self._count(meter, problems)

    # ------------------------------------------------------------ common

    async def _hand_over(self, meter: WattzonMeter, readings: list[Reading],
                         emit: Emit) -> tuple[list[Reading], bool]:
        """Hand readings to the queue in order, 500 at a time: those it took, and False if some could not be
        written (the next fetch asks for them again)."""
        queued: list[Reading] = []
        for i in range(0, len(readings), 500):
            chunk = readings[i:i + 500]
            result = await emit(chunk, prompt=True)
            if result.dropped:
                return queued, False
            refused = {id(r) for r, _ in result.refused}
            taken = [r for r in chunk if id(r) not in refused]
            queued += taken
            self.state[meter.name].counts["readings"] += len(taken)
            if taken:
                self.last[meter.name] = max(self.last.get(meter.name, -1), taken[-1].ts_ms)
            if refused:
                self.last[meter.name] = max(self.last.get(meter.name, -1), await self.last_queued(meter.name))
        return queued, True

    def _count(self, meter: WattzonMeter, problems: Counter[str]) -> None:
        if not problems:
            return
        st = self.state[meter.name]
        new = [k for k in problems if st.counts[k] == 0]
        st.counts.update(problems)
        st.last_problem = "records refused: " + ", ".join(f"{k} {n}" for k, n in sorted(problems.items()))
        if new:
            self.log.warning("WattzOn records refused: nothing of them is queued", meter=meter.name,
                             reasons=dict(problems))

    def _cloud_failed(self, e: CloudError) -> None:
        text = f"{e.kind}: {e}"
        if text != self.cloud_problem:
            (self.log.error if e.kind in ("auth", "not_found") else self.log.warning)(
                "cannot reach WattzOn Link: every meter of this cloud waits", kind=e.kind, error=str(e))
            self.cloud_problem = text
            self.on_change()

    def _cloud_ok(self) -> None:
        if self.cloud_problem is not None:
            self.log.info("WattzOn Link answers again", after=self.cloud_problem)
            self.cloud_problem = None
            self.on_change()

    def _needs_person(self, pid: int, text: str, **more: Any) -> None:
        """Said once (at error) until it changes; the profile's meters show it until a job succeeds."""
        if self.person.get(pid) != text:
            self.log.error("WattzOn profile needs a person: " + text, profile=pid, **more)
            self.person[pid] = text
            self.on_change()

    def quiet(self, m: WattzonMeter, now: float) -> str | None:
        """A meter with no new period for two of its intervals (plus a job's and a fetch's wait), once data was
        fetched: said, since a utility that stops issuing bills, or an account that lost its link, is silent."""
        last = self.last.get(m.name, -1)
        since = last / 1000 if last >= 0 else self._started
        if not self._fetched_once or now - since <= 2 * m.interval + self.cloud.extract_every + self.cloud.fetch_every:
            return None
        what = "bill" if m.data == "bills" else "interval"
        return (f"WattzOn has no new {what} of this meter" + (f" since {iso_utc(last)}" if last >= 0 else
                                                               " (are profile_id and the meter's keys right? verify)"))

    def _note_quiet(self) -> None:
        """A meter that became quiet (or spoke again) is shown by the next heartbeat at once, not at its turn."""
        now = time.time()
        quiet = {m.name for m in self.meters if self.quiet(m, now) is not None}
        if quiet != self._quiet:
            self._quiet = quiet
            self.on_change()

    def health(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        now = time.time()
        for m in self.meters:
            st = self.state[m.name]
            problem = self.cloud_problem or self.person.get(m.profile_id) or self.quiet(m, now)
            out[m.name] = {"failing": problem is not None, "last_problem": problem or st.last_problem,
                           "counts": dict(st.counts)}
        return out

