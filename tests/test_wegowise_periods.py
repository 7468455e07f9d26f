"""Consumption per local day or month from a counter (gateway.platforms.wegowise.periods): each figure is checked
against an independent computation in the test (the counter as a known function of time, its value at each
boundary found by the test's own interpolation between the readings that straddle it)."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.platforms.wegowise.periods import Calendar, Period, PeriodBuilder

DUBLIN = ZoneInfo("Europe/Dublin")
H = 3_600_000


def ms(y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: ZoneInfo = DUBLIN) -> int:
    return round(datetime(y, mo, d, h, mi, tzinfo=tz).timestamp() * 1000)


def feed_all(b: PeriodBuilder, readings: list[tuple[int, float]]) -> list[Period]:
    out: list[Period] = []
    for t, c in readings:
        out += b.feed(t, c)
    return out


def interp(readings: list[tuple[int, float]], t: int) -> float:
    """The test's own: the counter at ``t`` from the readings on both sides of it."""
    for (t0, c0), (t1, c1) in itertools.pairwise(readings):
        if t0 <= t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    raise AssertionError("t not covered")


def test_days_from_readings_on_the_boundaries_are_exact_differences() -> None:
    start = ms(2026, 5, 1)
    readings = [(start + i * 15 * 60_000, 1000.0 + 7.5 * i + (i % 4) * 0.25) for i in range(4 * 24 * 3 + 1)]
    periods = feed_all(PeriodBuilder(Calendar("day", DUBLIN), 2 * H), readings)
    assert [(p.first_day, p.last_day) for p in periods] == [(date(2026, 5, d), date(2026, 5, d)) for d in (1, 2, 3)]
    values = dict(readings)
    for p in periods:
        assert p.consumption == pytest.approx(values[p.end_ms] - values[p.start_ms], abs=1e-9)
        assert p.spans == 1 and p.resets == 0


def test_readings_that_straddle_a_boundary_are_interpolated() -> None:
    t0 = ms(2026, 5, 1, 0, 0) - 7 * 60_000  # every 13 minutes from 23:53 the day before: never on a midnight
    readings = []
    counter = 50_000.0
    for i in range(400):
        readings.append((t0 + i * 13 * 60_000, counter))
        counter += 100.0 + 40.0 * ((i * 7) % 5)  # a varying rate
    periods = feed_all(PeriodBuilder(Calendar("day", DUBLIN), 2 * H), readings)
    assert [p.first_day for p in periods] == [date(2026, 5, 1), date(2026, 5, 2), date(2026, 5, 3)]
    for p in periods:
        expected = interp(readings, p.end_ms) - interp(readings, p.start_ms)
        assert p.consumption == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25),
                                             (date(2026, 6, 1), 24)])
def test_a_day_is_a_local_day_across_daylight_saving(day: date, hours: int) -> None:
    """At a constant 1 kW, a local day holds 23, 25 or 24 kWh: its boundaries are local midnights."""
    cal = Calendar("day", DUBLIN)
    start = cal.midnight_ms(day - timedelta(days=1)) + 5 * 60_000
    readings = [(start + i * 10 * 60_000, (i * 10 * 60_000) / H * 1000.0) for i in range(6 * 24 * 3)]
    periods = feed_all(PeriodBuilder(cal, 2 * H), readings)
    (p,) = [p for p in periods if p.first_day == day]
    assert p.last_day == day
    assert p.end_ms - p.start_ms == hours * H
    assert p.consumption == pytest.approx(hours * 1000.0, rel=1e-9)


def test_months_follow_the_calendar_and_daylight_saving() -> None:
    cal = Calendar("month", DUBLIN)
    start = ms(2026, 2, 20)
    readings = [(start + i * H, i * 500.0) for i in range(24 * 80)]  # 500 Wh an hour, hourly
    periods = feed_all(PeriodBuilder(cal, 2 * H), readings)
    assert [(p.first_day, p.last_day) for p in periods] == [(date(2026, 3, 1), date(2026, 3, 31)),
                                                           (date(2026, 4, 1), date(2026, 4, 30))]
    assert periods[0].consumption == pytest.approx((31 * 24 - 1) * 500.0)  # March loses an hour
    assert periods[1].consumption == pytest.approx(30 * 24 * 500.0)


def test_the_first_period_is_sent_only_from_a_reading_on_its_start() -> None:
    cal = Calendar("day", DUBLIN)
    late = PeriodBuilder(cal, 2 * H)
    periods = feed_all(late, [(ms(2026, 5, 1, 9) + i * H, i * 10.0) for i in range(40)])
    assert [p.first_day for p in periods] == [date(2026, 5, 2)], "1 May began before the first reading"
    on_time = PeriodBuilder(cal, 2 * H)
    periods = feed_all(on_time, [(ms(2026, 5, 1) + i * H, i * 10.0) for i in range(30)])
    assert [p.first_day for p in periods] == [date(2026, 5, 1)]
    assert periods[0].consumption == pytest.approx(240.0)


def test_a_counter_going_backwards_is_never_a_negative_consumption() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, 90_000.0 + i * 100.0) for i in range(13)]  # 00:00..12:00: 1,200
    readings += [(t + (13 + i) * H, 20.0 + i * 100.0) for i in range(12)]  # replaced at 12:00-13:00: 0 for that hour
    periods = feed_all(b, readings)
    (p,) = periods
    assert p.consumption == pytest.approx(1200.0 + 1100.0)
    assert p.resets == 1
    assert all(q.consumption >= 0 for q in periods)


def test_a_gap_longer_than_max_gap_makes_one_period_of_the_days_it_touches() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, i * 10.0) for i in range(24 + 10)]  # 1 May, then 2 May until 09:00
    silent_until = ms(2026, 5, 4, 15)
    counter = readings[-1][1] + 3_000.0  # consumed during the silence: how, unknown
    readings += [(silent_until + i * H, counter + i * 10.0) for i in range(40)]
    periods = feed_all(b, readings)
    assert [(p.first_day, p.last_day, p.spans) for p in periods] == [
        (date(2026, 5, 1), date(2026, 5, 1), 1), (date(2026, 5, 2), date(2026, 5, 4), 3),
        (date(2026, 5, 5), date(2026, 5, 5), 1)]
    merged = periods[1]
    assert merged.consumption == pytest.approx(interp(readings, merged.end_ms) - interp(readings, merged.start_ms))


def test_state_taken_up_again_gives_the_same_periods() -> None:
    cal = Calendar("day", DUBLIN)
    t = ms(2026, 5, 1) - 20 * 60_000
    readings = [(t + i * 37 * 60_000, 5.0 + i * (3.0 + i % 3)) for i in range(300)]
    whole = feed_all(PeriodBuilder(cal, 2 * H), readings)
    first = PeriodBuilder(cal, 2 * H)
    part = feed_all(first, readings[:150])
    again = PeriodBuilder(cal, 2 * H, first.state())
    part += feed_all(again, readings[100:])  # what was not acknowledged comes again: fed once only
    assert part == whole


def test_a_midnight_that_does_not_exist_is_the_instant_the_clock_jumps() -> None:
    """Chile moves its clocks at midnight: 6 September 2026 begins at 01:00 (the old 00:00)."""
    tz = ZoneInfo("America/Santiago")
    cal = Calendar("day", tz)
    start = cal.midnight_ms(date(2026, 9, 4))
    readings = [(start + i * H, i * 1000.0) for i in range(24 * 5)]
    periods = feed_all(PeriodBuilder(cal, 2 * H), readings)
    lengths = {p.first_day: (p.end_ms - p.start_ms) // H for p in periods}
    assert lengths[date(2026, 9, 5)] + lengths[date(2026, 9, 6)] == 47
    assert all(p.first_day == p.last_day for p in periods)
    assert sum(p.consumption for p in periods) == pytest.approx(
        interp(readings, periods[-1].end_ms) - interp(readings, periods[0].start_ms))


def test_a_period_closed_by_the_grace_time_comes_out_again_complete() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 6 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, i * 100.0) for i in range(23)]  # 1 May 00:00 .. 22:00, then silence
    assert feed_all(b, readings) == []
    assert b.close_idle(ms(2026, 5, 2, 1), 2 * H) is None, "not yet: 2 h after its end"
    short = b.close_idle(ms(2026, 5, 2, 2), 2 * H)
    assert short is not None and short.first_day == date(2026, 5, 1)
    assert short.consumption == pytest.approx(2200.0) and short.short_ms == 2 * H
    assert b.close_idle(ms(2026, 5, 2, 5), 2 * H) is None, "closed once"
    later = [(ms(2026, 5, 2, 3) + i * H, 2200.0 + 500.0 + i * 100.0) for i in range(30)]  # back at 03:00
    periods = feed_all(b, later)
    full = interp(readings + later, ms(2026, 5, 2)) - 0.0
    assert [(p.first_day, p.short_ms) for p in periods] == [(date(2026, 5, 1), 0), (date(2026, 5, 2), 0)]
    assert periods[0].consumption == pytest.approx(full)
    assert periods[1].consumption == pytest.approx(interp(readings + later, ms(2026, 5, 3)) - full)


def test_a_graced_period_followed_by_a_long_gap_is_replaced_by_one_spanning_both() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, i * 100.0) for i in range(23)]
    feed_all(b, readings)
    short = b.close_idle(ms(2026, 5, 2, 6), 2 * H)
    assert short is not None
    state = b.state()
    b = PeriodBuilder(cal, 2 * H, state)  # across a restart
    later = [(ms(2026, 5, 3, 15) + i * H, 9_000.0 + i * 100.0) for i in range(20)]
    periods = feed_all(b, later)
    (p,) = periods
    assert (p.first_day, p.last_day, p.spans) == (date(2026, 5, 1), date(2026, 5, 3), 3)
    assert p.replaces == (short.start_ms, short.end_ms)
    assert p.consumption == pytest.approx(interp(readings + later, p.end_ms))


def test_a_misread_that_goes_up_and_back_is_taken_back() -> None:
    """A counter read once far too high (a garbled register) and then right again: the jump is not consumption."""
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, 1000.0 + i * 100.0) for i in range(25)]
    readings[7] = (readings[7][0], 3.4e38)  # float32's largest: a misread
    periods = feed_all(b, readings)
    (p,) = periods
    assert p.consumption == pytest.approx(2400.0) and p.resets == 0
    low = PeriodBuilder(cal, 2 * H)  # a misread low is a step back that the next reading makes up: same total
    readings = [(t + i * H, 1000.0 + i * 100.0) for i in range(25)]
    readings[7] = (readings[7][0], 1500.0)
    (p,) = feed_all(low, readings)
    assert p.consumption == pytest.approx(2400.0)


def test_a_real_reset_is_not_a_misread() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H)
    t = ms(2026, 5, 1)
    readings = [(t + i * H, 90_000.0 + i * 100.0) for i in range(13)]
    readings += [(t + (13 + i) * H, 20.0 + i * 100.0) for i in range(12)]
    (p,) = feed_all(b, readings)
    assert p.consumption == pytest.approx(1200.0 + 1100.0) and p.resets == 1


def test_a_rise_faster_than_any_consumption_is_not_counted_even_across_a_boundary() -> None:
    cal = Calendar("day", DUBLIN)
    b = PeriodBuilder(cal, 2 * H, max_per_hour=1e7)  # 10 MWh an hour
    t = ms(2026, 5, 1)
    readings = [(t + i * H, 1000.0 + i * 100.0) for i in range(49)]
    readings[24] = (readings[24][0] + 1, 3.4e38)  # just past midnight: the misread's segment crosses the boundary
    periods = feed_all(b, readings)
    assert [p.first_day for p in periods] == [date(2026, 5, 1), date(2026, 5, 2)]
    assert all(0 <= p.consumption <= 2400.0 for p in periods), [p.consumption for p in periods]
    # The steps into and out of the misread count nothing (a day sent cannot be taken back): 2 of 48 hours lost,
    # never 3.4e38 Wh.
    assert sum(p.consumption for p in periods) == pytest.approx(4800.0 - 200.0, abs=1.0)
