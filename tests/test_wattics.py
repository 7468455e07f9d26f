"""Wattics sink against the HTTPS emulator: packets, every kind of answer, intervals, restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.config import load_config_text
from gateway.errors import ConfigError
from gateway.platforms.simulated.source import three_phase
from gateway.platforms.wattics.sink import electrical_keys, electrical_packet, local_iso, retry_after
from gateway.quantities import Quantity as Q
from gateway.queue import SinkCount
from gateway.reading import Reading
from tests.helpers.rig import Rig, RigFactory, until
from tests.helpers.wattics_emulator import WatticsEmulator

BASE_MS = 1_795_000_000_000 - 1_795_000_000_000 % 300_000  # on a 5-minute boundary


def config_text(url: str, ca: Path | str, extra_sink: str = "", points: str | None = None, tz: str = "UTC") -> str:
    points = points or (
        "      - {id: elec-1, meter: main, format: electrical}\n"
        "      - {id: gas-1, meter: gas, format: value}\n"
    )
    return f"""\
site: {{timezone: {tz}}}
meters:
  - {{name: main, type: simulated, interval: 10s}}
  - {{name: gas, type: simulated, model: gas, value_unit: m3, interval: 10s}}
sinks:
  - name: wattics
    type: wattics
    url: {url}
    username: gateway
    password: s3cret-pass
    ca_file: {ca}
    request_timeout: 1s
    backoff_base: 20ms
    backoff_cap: 200ms
    auth_retry: 300ms
{extra_sink}    data_points:
{points}"""


@pytest.fixture
def emu(tmp_path: Path) -> AsyncIterator[WatticsEmulator]:
    e = WatticsEmulator(tmp_path / "certs").start()
    yield e
    e.stop()


@pytest.fixture
def rig_factory(rigs: RigFactory) -> Callable[[str], Awaitable[Rig]]:
    return lambda text: rigs(text, "wattics")


def elec(ts_ms: int) -> Reading:
    return Reading("main", ts_ms, three_phase(ts_ms / 1000))


def gas(ts_ms: int, value: float) -> Reading:
    return Reading("gas", ts_ms, {Q.VALUE: value})


# ---------------------------------------------------------------- packets


def test_electrical_packet_keys_and_units() -> None:
    values = three_phase(1_800_000_000.0)
    p = electrical_packet("dp", "ts", values, electrical_keys(frozenset(values)))
    assert p["aP_1"] == values[Q.POWER_ACTIVE_L1] and p["aP_3"] == values[Q.POWER_ACTIVE_L3]
    assert p["rP_2"] == values[Q.POWER_REACTIVE_L2] and p["apP_2"] == values[Q.POWER_APPARENT_L2]
    assert p["v_1"] == values[Q.VOLTAGE_L1] and p["c_3"] == values[Q.CURRENT_L3]
    assert p["pC_2"] == values[Q.ENERGY_IMPORT_L2]  # Wh, as Wattics wants
    assert p["v_12"] == values[Q.VOLTAGE_L1_L2] and p["v_23"] == values[Q.VOLTAGE_L2_L3]
    assert p["v_13"] == values[Q.VOLTAGE_L3_L1]
    assert set(p) == {"id", "tsISO8601", "v_12", "v_13", "v_23"} | {
        f"{k}_{i}" for k in ("aP", "rP", "apP", "v", "c", "pC") for i in (1, 2, 3)
    }


def test_a_meter_with_totals_only_uses_the_phase_1_keys_and_lacking_quantities_are_left_out() -> None:
    values = {Q.POWER_ACTIVE_TOTAL: 1200.0, Q.ENERGY_IMPORT_TOTAL: 5e6}
    p = electrical_packet("dp", "ts", values, electrical_keys(frozenset(values)))
    assert p == {"id": "dp", "tsISO8601": "ts", "aP_1": 1200.0, "pC_1": 5e6}


def test_the_keys_follow_the_meter_not_the_reading() -> None:
    """A three-phase meter's reading that lacks its per-phase energies (a partial poll) sends no pC key at all: the
    total never goes under pC_1, where it would read as three times phase 1's energy."""
    offered = frozenset(three_phase(0.0))
    partial = {Q.POWER_ACTIVE_L1: 100.0, Q.ENERGY_IMPORT_TOTAL: 9e6}
    p = electrical_packet("dp", "ts", partial, electrical_keys(offered))
    assert p == {"id": "dp", "tsISO8601": "ts", "aP_1": 100.0}
    # Unknown meter shape (Tasmota): per-phase keys unless the data point says the meter gives totals.
    assert electrical_packet("dp", "ts", partial, electrical_keys(None, "per_phase")) == p
    assert electrical_packet("dp", "ts", partial, electrical_keys(None, "totals"))["pC_1"] == 9e6
    # A per-phase meter whose data point says totals: totals only, never a phase under another's key.
    assert "aP_1" not in electrical_packet("dp", "ts", partial, electrical_keys(offered, "totals"))


@pytest.mark.parametrize(
    ("zone", "utc", "local"),
    [
        # Europe/Dublin: summer time ends 2026-10-25 01:00 UTC (02:00 IST -> 01:00 GMT).
        ("Europe/Dublin", "2026-10-25T00:59:59.999+00:00", "2026-10-25T01:59:59.999+01:00"),
        ("Europe/Dublin", "2026-10-25T01:00:00.000+00:00", "2026-10-25T01:00:00.000+00:00"),
        ("Europe/Dublin", "2026-03-29T00:59:59.500+00:00", "2026-03-29T00:59:59.500+00:00"),
        ("Europe/Dublin", "2026-03-29T01:00:00.000+00:00", "2026-03-29T02:00:00.000+01:00"),
        # Australia/Sydney (the document's example offset +11:00): DST ends 2026-04-05 03:00 local.
        ("Australia/Sydney", "2026-04-04T15:59:59.070+00:00", "2026-04-05T02:59:59.070+11:00"),
        ("Australia/Sydney", "2026-04-04T16:00:00.070+00:00", "2026-04-05T02:00:00.070+10:00"),
        ("America/New_York", "2026-11-01T06:00:00.000+00:00", "2026-11-01T01:00:00.000-05:00"),
    ],
)
def test_timestamps_are_local_with_offset_and_milliseconds_across_dst(zone: str, utc: str, local: str) -> None:
    ts_ms = round(datetime.fromisoformat(utc).timestamp() * 1000)
    assert local_iso(ts_ms, ZoneInfo(zone)) == local


def test_the_hour_repeated_at_the_end_of_summer_time_stays_chronological() -> None:
    tz = ZoneInfo("Europe/Dublin")
    start = round(datetime.fromisoformat("2026-10-25T00:30:00+00:00").timestamp() * 1000)
    stamps = [local_iso(start + i * 600_000, tz) for i in range(12)]
    # Local wall time repeats 01:30-02:00, but each stamp with its offset is a later instant.
    instants = [datetime.fromisoformat(s).timestamp() for s in stamps]
    assert instants == sorted(instants) and len(set(instants)) == 12
    assert "2026-10-25T01:30:00.000+01:00" in stamps and "2026-10-25T01:30:00.000+00:00" in stamps


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after("7") == 7.0
    assert retry_after(None) is None and retry_after("soon") is None
    later = datetime.now().astimezone().timestamp() + 30
    from email.utils import formatdate

    assert 25 <= (retry_after(formatdate(later, usegmt=True)) or 0) <= 31


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("points", "extra", "fragment"),
    [
        ("      - {id: e, meter: nope}\n", "", "sinks[wattics].data_points[0].meter: no meter named 'nope'"),
        ("      - {id: e, meter: main}\n      - {id: e, meter: gas, format: value}\n", "",
         "data_points[1].id: 'e' is already used by data_points[0]"),
        ("      - {id: e, meter: main, interval: 5s}\n", "",
         "data_points[0].interval: 5s is shorter than meter 'main' is read (10s)"),
        ("      - {id: e, meter: gas, format: value, quantity: volume}\n", "", "data_points[0].quantity:"),
        ("      - {id: e, meter: main, quantity: value}\n", "", "only for format: value"),
        ("      - {id: e, meter: main}\n", "    meters: [main]\n", "sinks[wattics].meters: a wattics sink sends"),
    ],
)
def test_wattics_config_mistakes(tmp_path: Path, points: str, extra: str, fragment: str) -> None:
    ca = tmp_path / "ca.pem"
    WatticsEmulator(tmp_path)  # writes a CA file
    ca = tmp_path / "wattics-ca.pem"
    with pytest.raises(ConfigError) as e:
        load_config_text(config_text("https://127.0.0.1:1/x/", ca, extra, points), "test.yaml")
    assert len(e.value.problems) == 1 and fragment in e.value.problems[0], e.value.problems
    assert e.value.problems[0].startswith("test.yaml:")


def test_plain_http_is_refused_unless_allowed(tmp_path: Path) -> None:
    WatticsEmulator(tmp_path)
    ca = tmp_path / "wattics-ca.pem"
    with pytest.raises(ConfigError) as e:
        load_config_text(config_text("http://127.0.0.1:1/x/", ca), "test.yaml")
    assert "test.yaml:8: sinks[wattics].url: Wattics rejects plain http" in e.value.problems[0]
    load_config_text(config_text("http://127.0.0.1:1/x/", ca, "    allow_insecure_http: true\n"), "test.yaml")


def test_a_missing_or_bad_ca_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate")
    for ca, fragment in ((tmp_path / "none.pem", "does not exist"), (tmp_path / "junk.pem", "is not a PEM file")):
        with pytest.raises(ConfigError) as e:
            load_config_text(config_text("https://127.0.0.1:1/x/", ca), "test.yaml")
        assert f"test.yaml:11: sinks[wattics].ca_file: '{ca}' {fragment}" in e.value.problems[0]


def test_the_password_never_appears_in_config_errors(tmp_path: Path) -> None:
    text = config_text("https://127.0.0.1:1/x/", tmp_path / "none.pem").replace("password: s3cret-pass",
                                                                               "password: [s3cret-pass]")
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "test.yaml")
    assert "s3cret-pass" not in str(e.value)
    assert any("sinks[wattics].password: " in p for p in e.value.problems)


# ---------------------------------------------------------------- delivery against the emulator


async def test_every_packet_arrives_once_in_order_on_kept_alive_connections(emu: WatticsEmulator,
                                                                            rig_factory: Any) -> None:
    rig = await rig_factory(config_text(emu.url, emu.ca_file))
    for i in range(30):
        await rig.queue.append([elec(BASE_MS + i * 10_000), gas(BASE_MS + i * 10_000, 100.0 + i)])
    await until(lambda: emu.count() == 60)
    assert [p["value"] for p in emu.packets["gas-1"]] == [100.0 + i for i in range(30)]
    assert [p["tsISO8601"] for p in emu.packets["elec-1"]] == [
        local_iso(BASE_MS + i * 10_000, ZoneInfo("UTC")) for i in range(30)
    ]
    s = emu.stats()
    assert s["duplicates"] == 0 and s["out_of_order"] == 0 and s["refused"] == 0
    assert s["connections"] <= 2  # one per data point in flight, kept alive, not one per packet


async def test_many_data_points_share_at_most_max_in_flight_connections(emu: WatticsEmulator,
                                                                         rig_factory: Any) -> None:
    """A site of many data points holds no more kept-alive connections than sends that may run at once: each
    data point's packets still arrive once and in order."""
    points = "".join(f"      - {{id: e{i}, meter: main, format: electrical}}\n" for i in range(10))
    rig = await rig_factory(config_text(emu.url, emu.ca_file, extra_sink="    max_in_flight: 2\n", points=points))
    for i in range(20):
        await rig.queue.append([elec(BASE_MS + i * 10_000)])
    await until(lambda: emu.count() == 200, within=30)
    for i in range(10):
        assert [p["tsISO8601"] for p in emu.packets[f"e{i}"]] == [
            local_iso(BASE_MS + k * 10_000, ZoneInfo("UTC")) for k in range(20)]
    s = emu.stats()
    assert s["duplicates"] == 0 and s["out_of_order"] == 0
    assert s["connections"] <= 2, f"{s['connections']} connections for 2 sends at a time"


async def test_server_errors_and_retry_after_are_retried_until_200(emu: WatticsEmulator, rig_factory: Any) -> None:
    emu.answer(500, times=2)
    emu.answer(503, times=1, retry_after="1")
    emu.answer(502)
    emu.answer(504)
    emu.answer(429, retry_after="1")
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    t0 = time.monotonic()
    await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(5)])
    await until(lambda: emu.count() == 5)
    assert time.monotonic() - t0 >= 2.0  # both Retry-After: 1 honoured
    assert [p["tsISO8601"] for p in emu.packets["e"]] == [local_iso(BASE_MS + i * 10_000, ZoneInfo("UTC"))
                                                          for i in range(5)]
    assert emu.stats()["duplicates"] == 0


async def test_wrong_credentials_keep_everything_and_recover(emu: WatticsEmulator, rig_factory: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    emu.users = {"gateway": "another-password"}
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(3)])
    await asyncio.sleep(1.0)
    assert emu.count() == 0
    assert rig.fwd.last_error == "HTTP 401: Wattics refuses the credentials"
    assert (await rig.queue.backlog("wattics", [("wattics#e", "main")])).depth == 3
    emu.users = {"gateway": "s3cret-pass"}
    await until(lambda: emu.count() == 3)
    out = capsys.readouterr()
    logs = out.out + out.err
    assert logs.count("Wattics refuses the credentials: check username and password") == 1
    assert "Wattics accepts the credentials again" in logs
    assert "s3cret-pass" not in logs and "another-password" not in logs


async def test_an_unregistered_data_point_waits_without_holding_up_the_others(emu: WatticsEmulator,
                                                                              rig_factory: Any) -> None:
    emu.known_ids = {"gas-1"}
    rig = await rig_factory(config_text(emu.url, emu.ca_file))
    await rig.queue.append([elec(BASE_MS), gas(BASE_MS, 1.0)])
    await rig.queue.append([elec(BASE_MS + 10_000), gas(BASE_MS + 10_000, 2.0)])
    await until(lambda: len(emu.packets["gas-1"]) == 2)
    await asyncio.sleep(0.5)
    assert "elec-1" not in emu.packets
    assert "404" in (rig.fwd.last_error or "")
    emu.known_ids = None
    await until(lambda: len(emu.packets["elec-1"]) == 2)


async def test_a_bad_request_goes_to_the_dead_letters_after_three_tries(emu: WatticsEmulator,
                                                                        rig_factory: Any) -> None:
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS)])
    await until(lambda: emu.count() == 1)
    emu.answer(400, times=3, body="field aP_1 out of range")
    await rig.queue.append([elec(BASE_MS + 10_000), elec(BASE_MS + 20_000)])
    await until(lambda: emu.count() == 2)
    letters = await rig.queue.dead_letters("wattics")
    assert [(d.sink, d.reading.ts_ms) for d in letters] == [("wattics#e", BASE_MS + 10_000)]
    assert letters[0].reason == "HTTP 400 3 times: field aP_1 out of range"
    assert emu.packets["e"][-1]["tsISO8601"] == local_iso(BASE_MS + 20_000, ZoneInfo("UTC"))


async def test_a_platform_refusing_every_packet_logs_on_change_not_per_reading(emu: WatticsEmulator,
                                                                               rig_factory: Any) -> None:
    import structlog

    emu.answer(400, times=10**6, body="bad packet")
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    with structlog.testing.capture_logs() as logs:
        await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(20)])
        await until(lambda: len(emu.refused) >= 60, within=30)
        await until(lambda: rig.fwd is not None and rig.fwd.last_error is not None)
        emu.clear_faults()
        await rig.queue.append([elec(BASE_MS + 300_000)])
        await until(lambda: emu.count() == 1)
    loud = [(e["event"], e["log_level"]) for e in logs if e["log_level"] in ("info", "warning", "error")]
    assert loud == [("delivery failing: readings are kept and retried", "warning"),
                    ("reading rejected: moved to dead letters", "warning"),
                    ("readings delivered again after rejections", "info"),
                    ("delivery recovered", "info")], loud
    letters = await rig.queue.dead_letters("wattics")
    assert len(letters) == 20


async def test_a_stalled_answer_or_a_dropped_connection_is_retried(emu: WatticsEmulator, rig_factory: Any) -> None:
    emu.stall(1.5)  # past the 1 s request timeout; processed late, so the retry is a duplicate
    emu.drop(2)
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(4)])
    await until(lambda: emu.count() == 4)
    assert emu.stats()["out_of_order"] == 0
    assert emu.stats()["duplicates"] <= 1


async def test_an_untrusted_certificate_is_never_accepted(emu: WatticsEmulator, rig_factory: Any,
                                                          tmp_path: Path) -> None:
    other = WatticsEmulator(tmp_path / "other")  # a CA that did not sign the emulator's certificate
    rig = await rig_factory(config_text(emu.url, other.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS)])
    await asyncio.sleep(0.8)
    assert emu.count() == 0
    assert (rig.fwd.last_error or "").startswith("TLS: the server's certificate is not trusted")


async def test_interval_aggregation_sends_means_and_last_counters_at_the_interval_end(
    emu: WatticsEmulator, rig_factory: Any
) -> None:
    points = "      - {id: e5, meter: main, interval: 5m}\n      - {id: g5, meter: gas, format: value, interval: 5m}\n"
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points=points))
    readings = [(BASE_MS + i * 10_000) for i in range(1, 61)]  # 10 minutes of 10 s readings after BASE
    for ts in readings:
        await rig.queue.append([elec(ts), gas(ts, ts / 1e9)])
    await until(lambda: len(emu.packets["e5"]) == 2 and len(emu.packets["g5"]) == 2)
    utc = ZoneInfo("UTC")
    first = [elec(ts) for ts in readings[:30]]
    p = emu.packets["e5"][0]
    assert p["tsISO8601"] == local_iso(BASE_MS + 300_000, utc)
    mean_p1 = sum(r.values[Q.POWER_ACTIVE_L1] for r in first) / 30
    assert p["aP_1"] == pytest.approx(mean_p1)
    assert p["pC_1"] == first[-1].values[Q.ENERGY_IMPORT_L1]  # counters: the last value, not the mean
    assert [g["value"] for g in emu.packets["g5"]] == [readings[29] / 1e9, readings[59] / 1e9]
    assert emu.packets["e5"][1]["tsISO8601"] == local_iso(BASE_MS + 600_000, utc)


async def test_a_restart_in_the_middle_of_a_backlog_sends_the_rest_once(emu: WatticsEmulator, tmp_path: Path,
                                                                         rig_factory: Any) -> None:
    emu.latency = 0.005
    text = config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n")
    rig = await rig_factory(text)
    await rig.queue.append([elec(BASE_MS + i * 1000) for i in range(300)])
    await until(lambda: emu.count() >= 60)
    await rig.stop()
    n = emu.count()
    assert n < 300
    await rig_factory(text)
    await until(lambda: emu.count() + len(emu.duplicates) >= 300)
    await asyncio.sleep(0.3)
    got = [datetime.fromisoformat(p["tsISO8601"]).timestamp() for p in emu.packets["e"]]
    assert got == [(BASE_MS + i * 1000) / 1000 for i in range(300)]
    assert len(emu.duplicates) <= 1 and not emu.out_of_order


async def test_a_server_without_keep_alive_and_one_answering_garbage(emu: WatticsEmulator, rig_factory: Any) -> None:
    emu.keepalive = False
    emu.garbage(2)
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(5)])
    await until(lambda: emu.count() == 5)
    assert emu.stats()["connections"] >= 5  # a new connection after every "Connection: close"
    assert emu.stats()["out_of_order"] == 0


async def test_cookies_set_by_the_platform_are_sent_back(emu: WatticsEmulator, rig_factory: Any) -> None:
    emu.cookie = "AWSALB=sticky-42"
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS + i * 10_000) for i in range(4)])
    await until(lambda: emu.count() == 4)
    assert emu.with_cookie == 3  # every request after the first answer


async def test_a_connection_the_server_dropped_while_idle_is_replaced_without_a_retry(
    emu: WatticsEmulator, rig_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await rig_factory(config_text(emu.url, emu.ca_file, points="      - {id: e, meter: main}\n"))
    await rig.queue.append([elec(BASE_MS)])
    await until(lambda: emu.count() == 1)
    # The server goes away and comes back on the same port: the kept-alive connection is dead.
    port = int(emu.url.split(":")[2].split("/")[0])
    emu.stop()
    emu.start(port)
    await asyncio.sleep(0.2)
    await rig.queue.append([elec(BASE_MS + 10_000)])
    await until(lambda: emu.count() == 2)
    await rig.queue.flush()
    assert (await rig.queue.counters()).sink("wattics", SinkCount.RETRIED) == 0
    assert emu.stats()["connections"] == 2


def test_a_meter_whose_phases_the_file_cannot_tell_needs_phases(tmp_path: Path) -> None:
    """A Tasmota device sends one total or one value per phase as it is built: the data point must say which, so
    that a key always carries the same quantity."""
    text = """\
brokers: [{name: site, host: 127.0.0.1}]
subscriptions: [{name: pow, broker: site, topic: tele/pow/SENSOR, meter: pow, format: tasmota}]
meters: [{name: pow, type: mqtt}]
sinks:
  - {name: w, type: wattics, username: u, password: p, data_points: [{id: e, meter: pow{}}]}
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text.replace("{}", ""), "test.yaml")
    assert e.value.problems == ["test.yaml:5: sinks[w].data_points[0].phases: meter 'pow' may send totals or one"
                                " value per phase (Tasmota devices differ): set phases: per_phase (a three-phase"
                                " device) or totals (single-phase)"]
    config = load_config_text(text.replace("{}", ", phases: totals"), "test.yaml")
    assert config.sinks[0].data_points[0].phases == "totals"  # type: ignore[union-attr]
