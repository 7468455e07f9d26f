"""Intellimeter reads to readings: local times across daylight-saving changes, and what is refused."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.platforms.intellimeter.config import IntellimeterMeter
from gateway.platforms.intellimeter.reads import BadAnswer, Mapper, instants, object_hook, reads_of
from gateway.quantities import Quantity as Q

TZ = ZoneInfo("America/Toronto")


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


def meter(**kw: object) -> IntellimeterMeter:
    return IntellimeterMeter.model_validate({"type": "intellimeter", "name": "m1", "cloud": "im",
                                             "meter_id": "5754eba3", **kw})


def parse(answer: object, fields: frozenset[str] = frozenset({"kwh"})) -> list:
    return [r for _, r in reads_of(json.loads(json.dumps(answer), object_hook=object_hook(fields)))]


def read(stamp: str, kwh: object = 100.5, interval: object = 0.25, **kw: object) -> dict:
    return {"floor": None, "kwh": kwh, "kwh_interval": interval, "meter": "5754eba3", "name": "Suite 1",
            "panel": None, "serial_number": "12-345-S1", "suite": "2fbac398", "time_stamping": stamp,
            "units": "kWh", "utility": "E", **kw}


def readings(reads: list[dict], m: IntellimeterMeter | None = None) -> tuple[list, Counter]:
    m = m or meter()
    problems: Counter[str] = Counter()
    return Mapper([m], TZ).readings(m, parse({"p1": reads}, frozenset({m.volume_field})), problems), problems


def test_a_local_stamp_is_the_instant_of_the_cloud_timezone() -> None:
    assert instants("2021-04-09T10:20:00", TZ) == (ms(2021, 4, 9, 14, 20), ms(2021, 4, 9, 14, 20))  # EDT
    assert instants("2021-01-09T10:20:00", TZ) == (ms(2021, 1, 9, 15, 20),) * 2  # EST
    assert instants("2021-04-09T10:20:00Z", TZ) == (ms(2021, 4, 9, 10, 20),) * 2  # an offset is taken as said
    assert instants("2021-04-09T10:20:00+02:00", TZ) == (ms(2021, 4, 9, 8, 20),) * 2


def test_a_local_time_that_does_not_exist_or_is_not_a_time_is_refused() -> None:
    assert instants("2021-03-14T02:30:00", TZ) is None  # clocks went from 02:00 to 03:00
    for bad in ("2021-02-30T10:00:00", "yesterday", "2021-04-09", "2021-04-09T25:00:00", "",
                "2021-04-09T10:20:00+99:00"):
        assert instants(bad, TZ) is None, bad


def test_the_repeated_hour_is_ordered_by_the_counter() -> None:
    out, problems = readings([read("2021-11-07T01:30:00", kwh=200.0), read("2021-11-07T01:30:00", kwh=199.0),
                              read("2021-11-07T01:15:00", kwh=198.0), read("2021-11-07T02:00:00", kwh=201.0)])
    assert not problems
    assert [(r.ts_ms, r.values[Q.ENERGY_IMPORT_TOTAL]) for r in out] == [
        (ms(2021, 11, 7, 5, 15), 198000.0),  # 01:15 EDT: given once, the first pass
        (ms(2021, 11, 7, 5, 30), 199000.0),  # 01:30 EDT, the lower counter
        (ms(2021, 11, 7, 6, 30), 200000.0),  # 01:30 EST, the higher
        (ms(2021, 11, 7, 7, 0), 201000.0),
    ]


def test_values_become_watt_hours_and_a_bad_one_is_refused_or_left_out() -> None:
    out, problems = readings([read("2021-04-09T10:20:00", kwh=24263.301, interval=0.005)])
    assert dict(out[0].values) == {Q.ENERGY_IMPORT_TOTAL: 24263301.0, Q.INTERVAL_ENERGY: 5.0}
    hostile = [read("2021-04-09T10:25:00", kwh="24263.4"), read("2021-04-09T10:30:00", kwh=-1),
               read("2021-04-09T10:35:00", kwh=True, interval=None), read("2021-04-09T10:40:00", kwh=10**400),
               read("2021-04-09T10:45:00", kwh=1e13, interval="x")]
    out, problems = readings(hostile)
    # Each one's counter is unusable; those with a usable interval energy keep it alone, never a wrong total.
    assert all(Q.ENERGY_IMPORT_TOTAL not in r.values for r in out)
    assert [r.values for r in out] == [{Q.INTERVAL_ENERGY: 250.0}] * 3
    assert problems == Counter({"bad_value": 5, "no_value": 2, "bad_interval_value": 1})


def test_json_numbers_too_big_for_a_float_are_refused() -> None:
    text = ('{"p1": [{"meter": "5754eba3", "time_stamping": "2021-04-09T10:20:00", "kwh": 1e999,'
            ' "kwh_interval": 1e999, "units": "kWh", "utility": "E"}]}')
    m = meter()
    problems: Counter[str] = Counter()
    raw = [r for _, r in reads_of(json.loads(text, object_hook=object_hook(frozenset({"kwh"}))))]
    assert Mapper([m], TZ).readings(m, raw, problems) == []
    assert problems["no_value"] == 1


def test_a_read_of_another_utility_or_unit_is_refused() -> None:
    out, problems = readings([read("2021-04-09T10:20:00", utility="W"), read("2021-04-09T10:25:00", units="m3"),
                              read("2021-04-09T10:30:00", utility=None, units=None)])
    assert len(out) == 1 and problems == Counter({"wrong_utility": 1, "wrong_units": 1})
    water = meter(utility="water")
    out, problems = readings([read("2021-04-09T10:20:00", kwh=12.5, utility="W", units="m3"),
                              read("2021-04-09T10:25:00", kwh=12.6, utility="W", units=None),
                              read("2021-04-09T10:30:00", kwh=12.7, utility="E", units="m3")], water)
    assert [dict(r.values) for r in out] == [{Q.VALUE: 12.5}]
    assert problems == Counter({"wrong_units": 1, "wrong_utility": 1})


def test_a_water_meter_reads_its_volume_from_the_field_configured() -> None:
    water = meter(utility="gas", volume_field="m3_total")
    out, problems = readings([read("2021-04-09T10:20:00", kwh=1.0, utility="G", units="m3", m3_total=55.25),
                              read("2021-04-09T10:25:00", kwh=1.0, utility="G", units="m3")], water)
    assert [dict(r.values) for r in out] == [{Q.VALUE: 55.25}]
    assert problems == Counter({"no_value": 1})


def test_the_same_read_twice_is_one_reading_and_two_different_ones_are_none() -> None:
    out, problems = readings([read("2021-04-09T10:20:00"), read("2021-04-09T10:20:00")])
    assert len(out) == 1 and not problems
    out, problems = readings([read("2021-04-09T10:20:00", kwh=1.0), read("2021-04-09T10:20:00", kwh=2.0)])
    assert out == [] and problems == Counter({"conflicting": 2})


def test_an_answer_of_another_shape_is_refused_whole_and_stray_items_are_left_out() -> None:
    for bad in ([read("2021-04-09T10:20:00")], {"p1": {"a": 1}}, "reads", None):
        with pytest.raises(BadAnswer):
            parse(bad)
    rows = parse({"p1": [read("2021-04-09T10:20:00"), 5, {"meter": "x"}, None]})
    assert len(rows) == 4 and sum(r.stamp is None for r in rows) == 3


def test_a_serial_number_maps_the_read_and_an_unknown_meter_maps_nothing() -> None:
    m = meter(meter_id=None, serial_number="12-345-S1")
    mapper = Mapper([m], TZ)
    rows = parse({"p1": [read("2021-04-09T10:20:00"), read("2021-04-09T10:20:00", meter="other",
                                                           serial_number="S-9")]})
    assert [mapper.meter_of(r) for r in rows] == [m, None]


def test_tokens_issued_over_months_keep_the_redactor_small() -> None:
    from gateway.logs import Redactor

    r = Redactor()
    r.set(["config-s3cret"])
    for i in range(2000):  # a token an hour for almost three months
        r.issued("intellimeter:im", [f"access-token-{i:05d}", f"refresh-token-{i:05d}"])
    text = "config-s3cret access-token-01999 refresh-token-01998 access-token-01997"
    assert r.scrub(text) == "*** *** *** access-token-01997"  # the current pair and the one before
    assert len(r.secrets) < 60
    r.set(["config-s3cret"])  # a reload keeps what was issued
    assert r.scrub("access-token-01999") == "***"


def test_reaching_back_further_than_the_queue_keeps_readings_is_a_config_error() -> None:
    from gateway.config.loader import load_config_text
    from gateway.errors import ConfigError

    text = """\
queue: {max_age: 10d}
clouds:
  - {type: intellimeter, name: im, url: "https://im.example", client_id: c, client_secret: s3cret-value,
     max_reach_back: 14d, first_reach_back: 20d}
meters:
  - {type: intellimeter, name: a, cloud: im}
  - {type: intellimeter, name: b, cloud: other, meter_id: B}
sinks: [{type: stdout, name: out}]
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "site.yaml")
    got = "\n".join(e.value.problems)
    assert "site.yaml:4: clouds[im].max_reach_back: is longer than queue.max_age (10d)" in got
    assert "clouds[im].first_reach_back: is longer than max_reach_back (14d)" in got
    assert "meters[a].meter_id: give meter_id or serial_number" in got
    assert "meters[b].cloud: no cloud named 'other' (defined in clouds: im)" in got
    assert "s3cret-value" not in got
