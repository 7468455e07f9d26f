"""Consumption per calendar period (a local day, or a local month) from a cumulative counter.

A meter gives its counter (energy in Wh, or a volume) at the instants it was read; a platform such as Wegowise wants
what was consumed between two local midnights. The counter's value at a boundary is rarely read: it lies between
the last reading before and the first one after. Both are used as a *segment*: the increase between two consecutive
readings, spread evenly over the time between them. A period's consumption is the sum of its share of every segment
it overlaps. Read at the boundary, or on both sides of it, that is the difference of the counter between the
period's boundaries, interpolated linearly where readings straddle one.

- **A period is closed** once a reading at or after its end exists: its end is covered. Until then it stays open,
  whatever the clock says (a meter that stopped answering sends its period late, never short).
- **The first period** is sent only if a reading lies on its start boundary: otherwise what was consumed between
  its start and the first reading is unknown, and a short value under the period's dates would be wrong. It is
  skipped (``first_partial``) and the next boundary starts the first period sent.
- **A long gap** between two readings (longer than ``max_gap``) is a segment whose spread over time is unknown:
  a boundary inside it cannot be valued, so the periods it touches become one period spanning them all (its dates
  say so: a raw datum from the first day to the last), never values invented by spreading the gap evenly.
- **A misread** (a reading far off that the next one contradicts: up, then back down to no less than before) is
  taken back, as long as no boundary lies between it and the reading before: the consumption follows the readings
  on either side of it (a counter does not go back by a little). Its value is reported (``misread_seen``).
- **A rise faster than ``max_per_hour``** (a misread far too high, a meter exchanged for one that counts from
  further on) is not consumption: it counts nothing, and is reported (``implausible_seen``).
- **A counter that goes backwards** (a meter replaced, a counter rolled over or reset) contributes nothing for the
  segment over which it went back (what was consumed between those two readings is unknown; at most one poll's
  worth), and counting goes on from the new value. Never a negative consumption. Each is counted in ``resets`` of
  the period it falls in, and logged by the caller.

Boundaries are local midnights in the site's time zone, found with :mod:`zoneinfo`: a day is 23 or 25 hours long
across a daylight-saving change, and a midnight that does not exist (a zone whose clocks jump at midnight) is the
instant the clock jumps. The builder's state is a few numbers (:meth:`PeriodBuilder.state`), so it can be kept
on disk and taken up again after a restart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

PeriodKind = Literal["day", "month"]


class Calendar:
    """The boundaries of local days or months in one time zone, as epoch milliseconds."""

    def __init__(self, kind: PeriodKind, tz: ZoneInfo) -> None:
        self.kind = kind
        self.tz = tz

    def midnight_ms(self, d: date) -> int:
        """The instant local date ``d`` begins."""
        return round(datetime(d.year, d.month, d.day, tzinfo=self.tz).timestamp() * 1000)

    def local_date(self, ts_ms: int) -> date:
        return datetime.fromtimestamp(ts_ms / 1000, self.tz).date()

    def _next_start(self, d: date) -> date:
        if self.kind == "day":
            return d + timedelta(days=1)
        return date(d.year + (d.month == 12), d.month % 12 + 1, 1)

    def boundary_after(self, ts_ms: int) -> int:
        """The first boundary strictly after ``ts_ms``."""
        d = self.local_date(ts_ms)
        start = d if self.kind == "day" else d.replace(day=1)
        b = self.midnight_ms(self._next_start(start))
        # Around a change of offset, the local date of an instant and its midnight can disagree by an hour.
        while b <= ts_ms:
            b = self.midnight_ms(self._next_start(self.local_date(b)))
        return b

    def is_boundary(self, ts_ms: int) -> bool:
        d = self.local_date(ts_ms)
        return self.midnight_ms(d if self.kind == "day" else d.replace(day=1)) == ts_ms

    def dates(self, start_ms: int, end_ms: int) -> tuple[date, date]:
        """The first and the last local day of the period ``[start_ms, end_ms)``."""
        return self.local_date(start_ms), self.local_date(end_ms - 1)


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int
    #: the first and last local day it covers (both included)
    first_day: date
    last_day: date
    #: in the counter's unit
    consumption: float
    #: how many calendar periods it spans: more than 1 across a gap longer than ``max_gap``
    spans: int = 1
    #: times the counter went backwards within it
    resets: int = 0
    #: closed by the grace time with no reading at or after its end: the consumption of this last stretch of it
    #: (from its last reading to its end) is missing, until the next reading brings it (a corrected period)
    short_ms: int = 0
    #: (start, end) of a period sent before that this one replaces: a short period that the next reading, too far
    #: away to split, turns into one spanning both
    replaces: tuple[int, int] | None = None


class PeriodBuilder:
    """Feed one meter's counter readings in time order; closed periods come out."""

    def __init__(self, calendar: Calendar, max_gap_ms: int, state: dict[str, Any] | None = None,
                 max_per_hour: float | None = None) -> None:
        self.calendar = calendar
        self.max_gap_ms = max_gap_ms
        #: a rise faster than this (counter units an hour) is not consumption: a misread or a meter exchanged for
        #: one that counts from further on (not counted; reported in ``implausible_seen``)
        self.max_per_hour = max_per_hour
        self.implausible_seen: tuple[float, float, float] | None = None
        #: the last reading fed: (ms, counter)
        self.last: tuple[int, float] | None = None
        #: where the open period began (None: before the first boundary, the first partial period)
        self.open_start: int | None = None
        self.acc = 0.0
        self.spans = 1
        self.resets = 0
        #: what the last feed found, for the caller's log: a backwards step (before, after), a skipped first period
        self.reset_seen: tuple[float, float] | None = None
        #: the boundary periods start from, when the first (partial) period was just skipped
        self.first_partial: int | None = None
        #: the last period closed by the grace time: (start, end, consumption, spans, resets), until a reading after
        #: its end arrives
        self.graced: tuple[int, int, float, int, int] | None = None
        #: the period the next one emitted replaces (see Period.replaces)
        self.replacing: tuple[int, int] | None = None
        #: the reading before the last one and the open period's consumption then, while the last segment crossed
        #: no boundary: (ms, counter, consumption), to take the last reading back if it proves a misread
        self.undo: tuple[int, float, float] | None = None
        #: what the last feed took back as a misread: (its value, the value after it)
        self.misread_seen: tuple[float, float] | None = None
        if state:
            self.last = (int(state["last"][0]), float(state["last"][1])) if state.get("last") else None
            self.open_start = state.get("open_start")
            self.acc = float(state.get("acc", 0.0))
            self.spans = int(state.get("spans", 1))
            self.resets = int(state.get("resets", 0))
            g = state.get("graced")
            self.graced = (int(g[0]), int(g[1]), float(g[2]), int(g[3]), int(g[4])) if g else None
            r = state.get("replacing")
            self.replacing = (int(r[0]), int(r[1])) if r else None
            u = state.get("undo")
            self.undo = (int(u[0]), float(u[1]), float(u[2])) if u else None

    def copy(self) -> PeriodBuilder:
        """A builder to try a reading on, and to keep or drop (every field is a number or a tuple: a shallow copy
        is a full one)."""
        return copy.copy(self)

    def state(self) -> dict[str, Any]:
        return {"last": list(self.last) if self.last else None, "open_start": self.open_start, "acc": self.acc,
                "spans": self.spans, "resets": self.resets, "graced": list(self.graced) if self.graced else None,
                "replacing": list(self.replacing) if self.replacing else None,
                "undo": list(self.undo) if self.undo else None}

    def close_idle(self, now_ms: int, grace_ms: int) -> Period | None:
        """The open period, closed without a reading at or after its end, once ``grace_ms`` have passed since its
        end: what its last stretch consumed is missing (``short_ms``), until a reading after it arrives (then the
        period comes out again from :meth:`feed`, complete: the caller updates what it sent)."""
        if self.last is None or self.open_start is None or self.graced is not None:
            return None
        end = self.calendar.boundary_after(self.last[0])
        if now_ms < end + grace_ms:
            return None
        first, last = self.calendar.dates(self.open_start, end)
        p = Period(self.open_start, end, first, last, self.acc, self.spans, self.resets, end - self.last[0],
                   self.replacing)
        self.graced = (self.open_start, end, self.acc, self.spans, self.resets)
        self.open_start, self.acc, self.spans, self.resets, self.replacing = end, 0.0, 1, 0, None
        return p

    def feed(self, ts_ms: int, counter: float) -> list[Period]:
        """The periods this reading closes (usually none, one at a boundary, several after a stop)."""
        self.reset_seen = self.first_partial = self.misread_seen = self.implausible_seen = None
        if self.last is None:
            self.last = (ts_ms, counter)
            self.open_start = ts_ms if self.calendar.is_boundary(ts_ms) else None
            return []
        lt, lc = self.last
        if ts_ms <= lt:
            return []  # already fed (a restart sends again what was not acknowledged)
        if counter < lc and self.undo is not None and counter >= self.undo[1]:
            # Up, then back down to no less than before: the last reading was a misread (a counter does not go
            # back by a little). Taken back, and this reading follows the one before it.
            t0, c0, before = self.undo
            self.acc = before  # restored, not subtracted: a misread of 3.4e38 would swallow the rest
            self.last, self.undo = (t0, c0), None
            periods = self.feed(ts_ms, counter)
            self.misread_seen = (lc, counter)
            return periods
        rise = counter - lc
        if rise < 0:
            self.reset_seen = (lc, counter)
            self.resets += 1
            rise = 0.0
        span = ts_ms - lt
        if self.max_per_hour is not None and rise > self.max_per_hour * span / 3_600_000:
            self.implausible_seen = (lc, counter, rise * 3_600_000 / span)
            rise = 0.0
        known = span <= self.max_gap_ms
        out: list[Period] = []
        done = lt  # the part of the segment already given to a period
        if self.graced is not None:
            g_start, g_end, g_acc, g_spans, g_resets = self.graced
            g_resets += self.resets  # a reset seen in this segment belongs with the stretch it is counted in
            self.resets = 0
            if ts_ms < g_end or known:
                # The stretch the graced period lacked: all of this segment, or its share before the end.
                upto = min(ts_ms, g_end)
                g_acc += rise * (upto - lt) / span
                done = upto
                first, last = self.calendar.dates(g_start, g_end)
                if ts_ms < g_end:
                    self.graced = (g_start, g_end, g_acc, g_spans, g_resets)
                    self.last = (ts_ms, counter)
                    return [Period(g_start, g_end, first, last, g_acc, g_spans, g_resets, g_end - ts_ms)]
                out.append(Period(g_start, g_end, first, last, g_acc, g_spans, g_resets))
                self.graced = None
            else:
                # Too far away to split at the graced period's end: it runs on, and what comes out replaces it.
                self.open_start, self.acc, self.spans, self.resets = g_start, g_acc, g_spans, g_resets
                self.replacing, self.graced = (g_start, g_end), None
        b = self.calendar.boundary_after(done)
        while b <= ts_ms:
            if known or b == ts_ms:
                self.acc += rise * (b - done) / span
                done = b
                if self.open_start is not None:
                    first, last = self.calendar.dates(self.open_start, b)
                    out.append(Period(self.open_start, b, first, last, self.acc, self.spans, self.resets,
                                      replaces=self.replacing))
                else:
                    self.first_partial = b
                self.open_start, self.acc, self.spans, self.resets, self.replacing = b, 0.0, 1, 0, None
            elif self.open_start is not None:
                self.spans += 1  # a boundary inside a gap: the open period runs on across it
            b = self.calendar.boundary_after(b)
        acc_before = self.acc
        self.acc += rise * (ts_ms - done) / span
        crossed = done != lt or self.calendar.boundary_after(lt) <= ts_ms
        self.undo = (lt, lc, acc_before) if not crossed and self.reset_seen is None and self.graced is None else None
        self.last = (ts_ms, counter)
        return out
