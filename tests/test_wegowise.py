"""The Wegowise sink against the Wegowise emulator over HTTPS (tests/helpers/wegowise_emulator.py), which checks
every OAuth 1.0a signature by hand: signing, exactly once per period across lost answers and restarts, meters
created once, refusals, the authorize command, and the daemon killed (SIGKILL) while a month of daily periods for
three meters is being sent, across a daylight-saving change."""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydantic import SecretStr

from gateway.config import load_config
from gateway.outcome import Delivered, Reject, Retry, Skip
from gateway.platforms.wegowise.api import WegowiseApi, WegowiseError
from gateway.platforms.wegowise.config import WegowiseConfig
from gateway.platforms.wegowise.sink import WegowiseSink
from gateway.platforms.wegowise.verify import verify
from gateway.quantities import Quantity
from gateway.queue import QueueStore
from gateway.reading import Reading
from gateway.stream import Stream
from tests.helpers.daemon import Daemon
from tests.helpers.mosquitto import free_port
from tests.helpers.wegowise_emulator import WegowiseEmulator, enc, signature_base

DUBLIN = ZoneInfo("Europe/Dublin")
E = Quantity.ENERGY_IMPORT_TOTAL


def test_the_emulators_signature_check_follows_rfc5849() -> None:
    """RFC 5849 section 1.2's example, with its published signature: the emulator's verifier is right."""
    params = [("file", "vacation.jpg"), ("size", "original"), ("oauth_consumer_key", "dpf43f3p2l4k3l03"),
              ("oauth_token", "nnch734d00sl2jdk"), ("oauth_signature_method", "HMAC-SHA1"),
              ("oauth_timestamp", "1191242096"), ("oauth_nonce", "kllo9940pd9333jh"), ("oauth_version", "1.0")]
    base = signature_base("GET", "http://photos.example.net/photos?file=vacation.jpg&size=original", params)
    key = f"{enc('kd94hf93k423kf44')}&{enc('pfkkdhi9sl3r4s00')}"
    sig = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest()).decode()
    assert sig == "tR3+Ty81lMeYAr/Fid0kMTYa/WM="


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[WegowiseEmulator]:
    e = WegowiseEmulator(tmp_path / "certs").start()
    e.grant("at-gateway", "as-s3cret")
    yield e
    e.stop()


def write_config(tmp_path: Path, emu: WegowiseEmulator, meter_map: str, extra: str = "",
                 meters: tuple[str, ...] = ("m1",), secret: str = "cs-s3cret") -> Path:
    dead = free_port()  # nothing listens: the meters never answer, the queue's readings are all there is
    lines = "".join(f"  - {{name: {m}, type: modbus, bus: b, unit: {i + 1}, profile: eastron_sdm630,"
                    f" interval: 15m}}\n" for i, m in enumerate(meters))
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{name: plant, timezone: Europe/Dublin}}
state_dir: {tmp_path}/state
time_sync: ignore
queue: {{max_age: 400d}}
buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {dead}, timeout: 200ms}}]
meters:
{lines}sinks:
  - name: wegowise
    type: wegowise
    url: {emu.url}
    consumer_key: ck-gateway
    consumer_secret: {secret}
    ca_file: {emu.ca_file}
    backoff_base: 50ms
    backoff_cap: 500ms
    auth_retry: 2s
    meter_map:
{meter_map}{extra}""")
    (tmp_path / "state").mkdir(exist_ok=True)
    token = tmp_path / "state" / "wegowise-wegowise.token"
    token.write_text(json.dumps({"token": "at-gateway", "secret": "as-s3cret"}))
    return path


def sink_of(path: Path) -> WegowiseSink:
    config = load_config(path)
    (sc,) = config.sinks
    assert isinstance(sc, WegowiseConfig)
    return WegowiseSink(sc, config)


def ms(d: date, h: int = 0, mi: int = 0) -> int:
    return round(datetime(d.year, d.month, d.day, h, mi, tzinfo=DUBLIN).timestamp() * 1000)


def hourly(meter: str, start: date, days: int, rate: float = 1000.0) -> list[Reading]:
    t0 = ms(start)
    return [Reading(meter, t0 + i * 3_600_000, {E: 5_000.0 + i * rate}) for i in range(days * 24 + 1)]


async def electric(tmp_path: Path, emu: WegowiseEmulator) -> tuple[int, Path, WegowiseSink]:
    """An Electric meter on Wegowise, the configuration mapping m1 to it, and the sink started."""
    mid = emu.add_meter("Electric", "E-1")
    path = write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}}}\n")
    sink = sink_of(path)
    await sink.start()
    return mid, path, sink


async def test_signed_requests_pass_and_a_wrong_secret_is_refused(tmp_path: Path, emu: WegowiseEmulator) -> None:
    good = sink_of(write_config(tmp_path, emu, "      - {meter: m1, id: 1}\n"))
    api = WegowiseApi(good.config, "at-gateway", "as-s3cret")
    assert await api.meters() == []
    await api.close()
    bad = WegowiseApi(good.config.model_copy(update={"consumer_secret": SecretStr("wrong")}), "at-gateway", "as-s3cret")
    with pytest.raises(WegowiseError) as e:
        await bad.meters()
    await bad.close()
    assert e.value.kind == "auth" and "authorize" in str(e.value)
    assert emu.refused_auth == ["signature does not match"]
    assert "wrong" not in str(e.value) and "as-s3cret" not in str(e.value)


async def test_days_are_posted_once_each_across_a_lost_answer_and_a_restart(tmp_path: Path,
                                                                          emu: WegowiseEmulator) -> None:
    mid = emu.add_meter("Electric", "E-1")
    path = write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}, tariff: {{price: 0.25, per: kWh,"
                                       " fixed: 1.5}}\n")
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 3)
    sink = sink_of(path)
    await sink.start()
    out = await sink.send(stream, readings[:30])  # closes 1 May
    assert all(isinstance(o, Delivered) for o in out)
    emu.lose_answer()  # 2 May is created, but its answer never arrives
    out = await sink.send(stream, readings[30:])
    # The reading of 3 May 00:00 closes 2 May: it and every reading after it are tried again (one outcome each).
    assert len(out) == len(readings) - 30 and all(isinstance(o, Delivered) for o in out[:48 - 30])
    assert all(isinstance(o, Retry) for o in out[48 - 30:])
    await sink.close()

    again = sink_of(path)  # a restart: the queue hands the unacknowledged readings again
    await again.start()
    out = await again.send(stream, readings[30:])
    assert all(isinstance(o, Delivered) for o in out)
    await again.close()
    data = sorted(emu.data(mid), key=lambda d: d["start_date"])
    assert [(d["start_date"], d["end_date"], d["kwh"], d["total_charge"]) for d in data] == [
        ("2026-05-01", "2026-05-01", "24.000", "7.50"), ("2026-05-02", "2026-05-02", "24.000", "7.50"),
        ("2026-05-03", "2026-05-03", "24.000", "7.50")]
    assert emu.duplicates() == []
    assert emu.posts() == 3
    ok, lines = await verify(again.config, load_config(path))
    assert ok, lines
    assert lines[1] == (f"  m1 -> Wegowise meter {mid}: latest held 2026-05-03/2026-05-03 kwh 24.000; gateway sent"
                        " last 2026-05-03/2026-05-03 kwh 24.000: same")
    with emu.lock:
        emu.raw[mid].clear()  # the data deleted on Wegowise
    ok, lines = await verify(again.config, load_config(path))
    assert not ok and "latest held no raw data" in lines[1]


async def test_refusals_retry_or_reject_as_they_should(tmp_path: Path, emu: WegowiseEmulator) -> None:
    _mid, _path, sink = await electric(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 2)
    await sink.send(stream, readings[:10])
    emu.answer(401)
    (*_, last) = await sink.send(stream, readings[10:26])
    assert isinstance(last, Retry) and last.after == 2.0 and "authorize" in last.reason
    emu.answer(503)
    (*_, last) = await sink.send(stream, readings[10:26])
    assert isinstance(last, Retry) and last.after is None and "503" in last.reason
    emu.answer(422, method="POST")
    out = await sink.send(stream, readings[10:26])
    assert isinstance(out[-2], Reject) and "422" in out[-2].reason  # the reading of 2 May 00:00 closed 1 May
    assert isinstance(out[-1], Delivered)
    await sink.close()
    other = tmp_path / "other"
    other.mkdir()
    missing = sink_of(write_config(other, emu, "      - {meter: m1, id: 999}\n"))
    await missing.start()
    (*_, last) = await missing.send(stream, readings[:30])
    assert isinstance(last, Retry) and "999 not found" in last.reason
    await missing.close()


async def test_a_refused_period_goes_aside_and_the_next_ones_go_on(tmp_path: Path, emu: WegowiseEmulator) -> None:
    mid, _path, sink = await electric(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 3)
    await sink.send(stream, readings[:24])
    emu.validation_status = 422
    real = emu.handle

    def refuse_first_post(method: str, p: str, body: Any) -> tuple[int, Any]:
        if method == "POST" and body and body.get("start_date") == "2026-05-01":
            return 422, {"errors": "Must specify usage or total cost"}
        return real(method, p, body)

    emu.handle = refuse_first_post  # type: ignore[method-assign]
    out = await sink.send(stream, readings[24:])
    (rejected,) = [o for o in out if isinstance(o, Reject)]
    assert "Must specify usage or total cost" in rejected.reason and "2026-05-01" in rejected.reason
    assert sorted(d["start_date"] for d in emu.data(mid)) == ["2026-05-02", "2026-05-03"]
    await sink.close()


async def test_a_meter_is_created_once_even_if_its_id_was_never_kept(tmp_path: Path, emu: WegowiseEmulator) -> None:
    path = write_config(tmp_path, emu, "      - {meter: m1, data_type: Electric, create: {account_number: SUB-7,"
                                       " other_utility_company: Site power, nickname: Unit 7}}\n")
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 2)
    sink = sink_of(path)
    await sink.start()
    await sink.send(stream, readings[:30])
    await sink.close()
    (meter,) = emu.meters.values()
    assert (meter["account_number"], meter["nickname"]) == ("SUB-7", "Unit 7")
    (tmp_path / "state" / "wegowise" / "wegowise" / "m1.json").unlink()  # as if the gateway died before keeping it
    again = sink_of(path)
    await again.start()
    await again.send(stream, readings[20:])
    await again.close()
    assert len(emu.meters) == 1, "found again by its account number, not created twice"
    assert sorted(d["start_date"] for d in emu.data(meter["id"])) == ["2026-05-01", "2026-05-02"]
    assert emu.duplicates() == []


async def test_a_changed_value_is_updated_and_someone_elses_is_left_alone(tmp_path: Path,
                                                                        emu: WegowiseEmulator) -> None:
    mid = emu.add_meter("Electric", "E-1")
    path = write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}}}\n")
    stream = Stream("wegowise", "m1")
    sink = sink_of(path)
    await sink.start()
    await sink.send(stream, hourly("m1", date(2026, 5, 1), 1))
    (mine,) = emu.data(mid)
    # The same day computed again from other readings (some no longer in the queue): the value is corrected.
    sink2 = sink_of(path)
    await sink2.start()
    sink2.meters["m1"].builder = type(sink2.meters["m1"].builder)(sink2.calendar, 3_600_000)
    await sink2.send(stream, hourly("m1", date(2026, 5, 1), 1, rate=900.0))
    (updated,) = emu.data(mid)
    assert updated["id"] == mine["id"] and updated["kwh"] == "21.600"
    # A day Wegowise already holds from elsewhere (an import), with another value: not touched, not doubled.
    with emu.lock:
        emu.raw[mid][5] = {"id": 5, "start_date": "2026-05-02", "end_date": "2026-05-02", "kwh": "99.0",
                           "total_charge": "1.0"}
    out = await sink2.send(stream, hourly("m1", date(2026, 5, 2), 1)[1:])
    assert isinstance(out[-1], Skip)
    assert [d["kwh"] for d in emu.data(mid) if d["start_date"] == "2026-05-02"] == ["99.0"]
    await sink.close()
    await sink2.close()


async def test_a_bill_reissued_over_another_span_replaces_the_one_it_overlaps(tmp_path: Path,
                                                                            emu: WegowiseEmulator) -> None:
    mid, path, sink = await electric(tmp_path, emu)
    stream = Stream("wegowise", "m1")

    def utc(y: int, m: int, d: int) -> int:
        return round(datetime(y, m, d, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)

    def bill(start: int, end: int, kwh: float, cost: float, late_at: int | None = None) -> Reading:
        return Reading("m1", late_at or end, {Quantity.INTERVAL_ENERGY: kwh * 1000, Quantity.COST: cost},
                       start_ms=start, end_ms=end if late_at else None)

    jan, feb, mar = utc(2026, 1, 1), utc(2026, 2, 1), utc(2026, 3, 1)
    # Two bills that meet at an instant (one ends when the next starts): neither replaces the other.
    out = await sink.send(stream, [bill(jan, feb, 610.0, 80.0), bill(feb, mar, 590.0, 78.5)])
    assert all(isinstance(o, Delivered) for o in out)
    ids = {d["start_date"]: d["id"] for d in emu.data(mid)}
    assert sorted(ids) == ["2026-01-01", "2026-02-01"]
    # January re-issued from the 5th (a corrected bill, queued after March): its raw datum moves to the new span.
    out = await sink.send(stream, [bill(utc(2026, 1, 5), feb, 540.0, 71.0, late_at=mar + 1)])
    assert isinstance(out[0], Delivered)
    data = sorted(emu.data(mid), key=lambda d: d["start_date"])
    assert [(d["id"], d["start_date"], d["end_date"], d["kwh"], d["total_charge"]) for d in data] == [
        (ids["2026-01-01"], "2026-01-05", "2026-01-31", "540.000", "71.00"),
        (ids["2026-02-01"], "2026-02-01", "2026-02-28", "590.000", "78.50")]
    # A bill over both: which one it replaces is not the gateway's to guess; nothing changes.
    out = await sink.send(stream, [bill(utc(2026, 1, 20), utc(2026, 2, 10), 300.0, 40.0, late_at=mar + 2)])
    assert isinstance(out[0], Skip) and "overlaps 2 bills" in out[0].reason
    assert sorted(emu.data(mid), key=lambda d: d["start_date"]) == data
    # February re-issued to the 2nd of March: newer than anything queued, so an on-time bill, and it still replaces
    # February's datum. After a restart the spans are still known (kept with the record).
    await sink.close()
    again = sink_of(path)
    await again.start()
    out = await again.send(stream, [bill(feb, utc(2026, 3, 3), 601.0, 79.0)])
    assert isinstance(out[0], Delivered)
    assert [(d["id"], d["end_date"], d["kwh"]) for d in sorted(emu.data(mid), key=lambda d: d["start_date"])][1] \
        == (ids["2026-02-01"], "2026-03-02", "601.000")
    assert emu.duplicates() == [] and len(emu.data(mid)) == 2
    await again.close()


def test_authorize_walks_the_three_legs_and_keeps_the_token_private(tmp_path: Path, emu: WegowiseEmulator) -> None:
    path = write_config(tmp_path, emu, "      - {meter: m1, id: 1}\n")
    token = tmp_path / "state" / "wegowise-wegowise.token"
    token.unlink()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "wegowise", "authorize", "-c", str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    url = ""
    while not url:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        if "oauth_token=" in line:
            url = line.strip()
    request_token = re.search(r"oauth_token=([\w-]+)", url)
    assert request_token is not None and url.startswith(f"{emu.url}/oauth/authorize?")
    verifier = emu.approve(request_token.group(1))
    out, err = proc.communicate(verifier + "\n", timeout=30)
    assert proc.returncode == 0, err
    saved = json.loads(token.read_text())
    assert emu.tokens[saved["token"]] == saved["secret"]
    assert os.stat(token).st_mode & 0o777 == 0o600
    assert saved["secret"] not in out + err and "cs-s3cret" not in out + err


# ------------------------------------------------------------ the daemon, killed while a month goes out


def expected_days(readings: list[tuple[int, float]], first: date, last: date) -> dict[str, float]:
    """The test's own: each local day's share of every rise between consecutive readings (nothing for a fall)."""
    out = {}
    d = first
    while d <= last:
        s, e = ms(d), ms(d + timedelta(days=1))
        total = 0.0
        for (t0, c0), (t1, c1) in itertools.pairwise(readings):
            overlap = min(e, t1) - max(s, t0)
            if overlap > 0:
                total += max(0.0, c1 - c0) * overlap / (t1 - t0)
        out[d.isoformat()] = total / 1000  # Wh -> kWh
        d += timedelta(days=1)
    return out


def month_of(meter: int) -> list[tuple[int, float]]:
    """October 2026 (25 hours on the 25th), every 15 minutes at :07, a varying rate; meter 3 is replaced on the
    14th (its counter starts again from 12)."""
    t0, end = ms(date(2026, 10, 1), 0, 7), ms(date(2026, 11, 1), 0, 7)
    out, c = [], 1_000_000.0 * meter
    for i in range((end - t0) // 900_000 + 1):  # 745 hours: the 25th has 25
        t = t0 + i * 900_000
        out.append((t, c))
        c += 50.0 * meter + 30.0 * ((i * 7 + meter) % 5)
        if meter == 3 and t >= ms(date(2026, 10, 14), 13) and t < ms(date(2026, 10, 14), 13, 15):
            c = 12.0
    return out


def test_sigkill_while_a_month_of_days_goes_out_sends_each_day_once(tmp_path: Path) -> None:
    emu = WegowiseEmulator(tmp_path / "certs", latency=0.01).start()
    try:
        emu.grant("at-gateway", "as-s3cret")
        ids = {m: emu.add_meter("Electric", f"E-{m}") for m in ("m1", "m2", "m3")}
        path = write_config(tmp_path, emu, "".join(f"      - {{meter: {m}, id: {i}}}\n" for m, i in ids.items()),
                            meters=("m1", "m2", "m3"))
        months = {f"m{k}": month_of(k) for k in (1, 2, 3)}
        store = QueueStore(tmp_path / "state" / "queue.db")
        store.open()
        store.begin()
        store.configure({"wegowise": list(months)})
        for m, rs in months.items():
            store.append([Reading(m, t, {E: c}) for t, c in rs])
        store.commit()
        store.close()

        kills = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            d = Daemon(path).start()
            if kills < 4:
                before = sum(len(emu.data(i)) for i in ids.values())
                while sum(len(emu.data(i)) for i in ids.values()) < before + 8 and time.monotonic() < deadline:
                    time.sleep(0.02)
                d.signal(signal.SIGKILL)
                assert d.proc is not None
                d.proc.wait(10)
                kills += 1
                continue
            while sum(len(emu.data(i)) for i in ids.values()) < 3 * 30 and time.monotonic() < deadline:
                time.sleep(0.2)
            d.stop()
            break
        assert kills == 4
        assert emu.duplicates() == []
        for m, i in ids.items():
            held = {d["start_date"]: d for d in emu.data(i)}
            want = expected_days(months[m], date(2026, 10, 2), date(2026, 10, 31))
            assert sorted(held) == sorted(want), m  # 1 October began before the first reading: not sent
            for day, kwh in want.items():
                assert held[day]["end_date"] == day
                assert float(held[day]["kwh"]) == pytest.approx(kwh, abs=0.0011), (m, day)
        assert float(emu.data(ids["m1"])[0]["kwh"]) > 0
        hours_25 = {d["start_date"]: float(d["kwh"]) for d in emu.data(ids["m1"])}["2026-10-25"]
        assert hours_25 == pytest.approx(expected_days(months["m1"], date(2026, 10, 25), date(2026, 10, 25))
                                         ["2026-10-25"], abs=0.0011)
    finally:
        emu.stop()


def test_check_says_what_each_meter_becomes_and_refuses_what_cannot_be_sent(tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    secret = tmp_path / "consumer.secret"
    secret.write_text("cs-from-a-file\n")
    secret.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{name: plant, timezone: Europe/Dublin}}
state_dir: {tmp_path}/state
meters:
  - {{name: m1, type: simulated, interval: 15m}}
  - {{name: gas, type: simulated, model: gas, interval: 15m, value_unit: m3}}
sinks:
  - name: wg
    type: wegowise
    url: https://wegowise.example
    consumer_key: ck
    consumer_secret_file: {secret}
    meter_map:
      - {{meter: m1, id: 12, tariff: {{price: 0.3, per: kWh, fixed: 0.5}}}}
      - {{meter: gas, data_type: Gas, btu_per_m3: 36000, create: {{account_number: G-1, utility_company_id: 231}}}}
""")
    assert main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "m1 -> Wegowise meter 12: Electric kwh from energy_import_total (Wh), one raw datum a day" in out
    assert "gas -> a new Wegowise meter (account G-1): Gas btu from value (m3)" in out
    assert "periods: local days in Europe/Dublin; the next one due is" in out
    assert "missing: run meter-gateway wegowise authorize --sink wg" in out
    assert "cs-from-a-file" not in out
    text = path.read_text().replace(", btu_per_m3: 36000", "").replace("utility_company_id: 231", "nickname: x")
    path.write_text(text + "      - {meter: m1, id: 13}\n")
    assert main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:14: sinks[wg].meter_map[1].btu_per_m3: gas metered in m3")
    assert any("meter_map[1].create: Wegowise needs utility_company_id or other_utility_company" in e for e in err)
    assert any(e.startswith(f"{path}:15: sinks[wg].meter_map[2].meter: 'm1' is already mapped") for e in err)


async def test_the_dry_run_prints_the_raw_data_points_a_reading_closes(tmp_path: Path, emu: WegowiseEmulator,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.platforms.all import create_sink

    path = write_config(tmp_path, emu, "      - {meter: m1, id: 12, tariff: {price: 0.5, per: kWh}}\n",
                        extra="    dry_run: true\n")
    config = load_config(path)
    sink = create_sink(config.sinks[0], config)
    await sink.start()
    out = await sink.send(Stream("wegowise", "m1"), hourly("m1", date(2026, 5, 1), 2, rate=500.0))
    await sink.close()
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["bodies"] for p in printed] == [
        [{"start_date": "2026-05-01", "end_date": "2026-05-01", "kwh": "12.000", "total_charge": "6.00"}],
        [{"start_date": "2026-05-02", "end_date": "2026-05-02", "kwh": "12.000", "total_charge": "6.00"}]]
    assert printed[0]["url"] == f"{emu.url}/api/v1/wego_data/meters/12/raw_data"
    assert sum(isinstance(o, Delivered) for o in out) == 2 and emu.log == [], "nothing sent, nothing connected"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def graced(tmp_path: Path, emu: WegowiseEmulator) -> tuple[int, WegowiseSink, Clock]:
    """A Wegowise meter, and a started sink with grace: 2h on a clock of the test's, at 1 May 22:30."""
    mid = emu.add_meter("Electric", "E-1")
    path = write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}}}\n", extra="    grace: 2h\n    max_gap: 6h\n")
    config = load_config(path)
    (sc,) = config.sinks
    assert isinstance(sc, WegowiseConfig)
    clock = Clock(ms(date(2026, 5, 1), 22, 30) / 1000)
    sink = WegowiseSink(sc, config, clock)
    await sink.start()
    return mid, sink, clock


async def test_grace_sends_a_short_period_and_completes_it_when_the_meter_is_back(tmp_path: Path,
                                                                                emu: WegowiseEmulator) -> None:
    mid, sink, clock = await graced(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    first = hourly("m1", date(2026, 5, 1), 1)[:23]  # until 22:00, then the meter goes quiet
    await sink.send(stream, first)
    clock.t = ms(date(2026, 5, 2), 1, 30) / 1000
    await sink.close_idle()
    assert emu.data(mid) == [], "its end is not 2 h past yet"
    clock.t = ms(date(2026, 5, 2), 2, 30) / 1000
    await sink.close_idle()
    (short,) = emu.data(mid)
    assert (short["start_date"], short["kwh"]) == ("2026-05-01", "22.000")
    await sink.close_idle()
    assert len(emu.data(mid)) == 1, "sent once"
    t0 = ms(date(2026, 5, 2), 3)
    back = [Reading("m1", t0 + i * 3_600_000, {E: 5_000.0 + 22_000.0 + 5_000.0 + i * 1000.0}) for i in range(23)]
    out = await sink.send(stream, back)
    assert all(isinstance(o, Delivered) for o in out)
    held = {d["start_date"]: d for d in emu.data(mid)}
    assert held["2026-05-01"]["id"] == short["id"], "the same raw datum, updated"
    assert held["2026-05-01"]["kwh"] == "24.000"  # 22 known + 2 of the 5 kWh from 22:00 to 03:00
    assert held["2026-05-02"]["kwh"] == "24.000"  # 3 + 21
    assert emu.duplicates() == []
    await sink.close()


async def test_a_short_period_then_a_long_silence_becomes_one_datum_not_two(tmp_path: Path,
                                                                          emu: WegowiseEmulator) -> None:
    mid, sink, clock = await graced(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    await sink.send(stream, hourly("m1", date(2026, 5, 1), 1)[:23])
    clock.t = ms(date(2026, 5, 2), 3) / 1000
    await sink.close_idle()
    (short,) = emu.data(mid)
    await sink.close()
    again = WegowiseSink(sink.config, sink.gateway, clock)  # a restart in between
    await again.start()
    t0 = ms(date(2026, 5, 3), 15)  # back after 41 hours: how the energy was spread is unknown
    out = await again.send(stream, [Reading("m1", t0 + i * 3_600_000, {E: 60_000.0 + i * 1000.0}) for i in range(20)])
    assert all(isinstance(o, Delivered) for o in out)
    (merged,) = emu.data(mid)
    assert (merged["id"], merged["start_date"], merged["end_date"]) == (short["id"], "2026-05-01", "2026-05-03")
    assert merged["kwh"] == f"{(60_000.0 + 9 * 1000.0 - 5_000.0) / 1000:.3f}"  # to 4 May 00:00 (09:00 after 15:00)
    await again.close()


async def test_a_lying_wegowise_never_stops_the_sink_nor_gets_a_period_twice(tmp_path: Path,
                                                                            emu: WegowiseEmulator) -> None:
    """Answers that are not what the document shows: the sink retries with a reason that says what came, keeps no
    wrong id, and still sends each period once."""
    mid, path, sink = await electric(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 3)
    await sink.send(stream, readings[:10])
    emu.garble("<html>maintenance</html>", method="GET")  # the lookup answers a page
    (*_, last) = await sink.send(stream, readings[10:30])
    assert isinstance(last, Retry) and "not JSON" in last.reason
    emu.garble('[{"id": 1}]', method="GET")  # a list where the latest datum (an object) belongs
    (*_, last) = await sink.send(stream, readings[10:30])
    assert isinstance(last, Retry) and "other than an object" in last.reason
    emu.garble('{"id": "abc", "start_date": 7}', method="POST")  # created, with an answer holding no usable id
    out = await sink.send(stream, readings[10:30])
    assert isinstance(out[-1], Delivered)
    assert sink.meters["m1"].record["2026-05-01/2026-05-01"]["id"] is None
    with emu.lock:  # data that is not the document's shape, beside the real one
        emu.raw[mid][77] = {"id": "x", "start_date": None, "end_date": "2026-04-30"}
    again = sink_of(path)  # a restart, and the same day computed from other readings: updated, found by its period
    await again.start()
    again.meters["m1"].builder = type(again.meters["m1"].builder)(again.calendar, 3_600_000)
    out = await again.send(stream, hourly("m1", date(2026, 5, 1), 3, rate=900.0))
    assert all(isinstance(o, Delivered) for o in out), [o for o in out if not isinstance(o, Delivered)]
    days = sorted((d["start_date"], d["kwh"]) for d in emu.data(mid) if d["id"] != "x")
    assert days == [("2026-05-01", "21.600"), ("2026-05-02", "21.600"), ("2026-05-03", "21.600")]
    assert emu.duplicates() == []
    await sink.close()
    await again.close()


async def test_an_answer_that_echoes_the_oauth_header_is_scrubbed(tmp_path: Path, emu: WegowiseEmulator) -> None:
    from gateway.logs import REDACTOR

    mid = emu.add_meter("Electric", "E-1")
    sink = sink_of(write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}}}\n"))
    REDACTOR.set(load_config(tmp_path / "config.yaml").secrets())
    await sink.start()
    echo = ('{"errors": "bad request: Authorization: OAuth oauth_consumer_key=\\"ck-gateway\\", oauth_token='
            '\\"at-gateway\\" with secret as-s3cret and cs-s3cret"}')
    emu.garble(echo, status=500, method="GET")
    (*_, last) = await sink.send(Stream("wegowise", "m1"), hourly("m1", date(2026, 5, 1), 2))
    assert isinstance(last, Retry)
    shown = REDACTOR.scrub(last.reason)  # what the forwarder keeps and logs
    assert "500" in shown
    for secret in ("at-gateway", "as-s3cret", "cs-s3cret"):
        assert secret in last.reason and secret not in shown
    await sink.close()
    REDACTOR.set([])


async def test_the_whole_list_is_fetched_only_when_the_latest_datum_does_not_settle_it(tmp_path: Path,
                                                                                     emu: WegowiseEmulator) -> None:
    mid = emu.add_meter("Electric", "E-1")
    sink = sink_of(write_config(tmp_path, emu, f"      - {{meter: m1, id: {mid}}}\n"))
    await sink.start()
    await sink.send(Stream("wegowise", "m1"), hourly("m1", date(2026, 5, 1), 10))
    gets = [p for m, p, _ in emu.log if m == "GET"]
    assert len(emu.data(mid)) == 10
    assert gets.count(f"/api/v1/wego_data/meters/{mid}/latest_datum") == 10
    assert f"/api/v1/wego_data/meters/{mid}/raw_data" not in gets, "periods in order: the latest settles each"
    await sink.close()


async def test_a_lost_answer_is_settled_by_the_list_whatever_latest_means(tmp_path: Path,
                                                                          emu: WegowiseEmulator) -> None:
    """If "latest" is the newest created, an old bill imported after a POST whose answer was lost would hide it:
    the sink asks the whole list for a period it may have posted."""
    emu.latest_by = "id"
    mid, path, sink = await electric(tmp_path, emu)
    stream = Stream("wegowise", "m1")
    readings = hourly("m1", date(2026, 5, 1), 2)
    emu.lose_answer()
    (*_, last) = await sink.send(stream, readings)
    assert isinstance(last, Retry)
    await sink.close()
    with emu.lock:  # meanwhile, a bill of last year is imported
        emu._next_id += 1
        emu.raw[mid][emu._next_id] = {"id": emu._next_id, "start_date": "2025-01-01", "end_date": "2025-01-31",
                                      "kwh": "400.0", "total_charge": "60.0"}
    again = sink_of(path)  # after a restart too
    await again.start()
    out = await again.send(stream, readings)
    assert all(isinstance(o, Delivered) for o in out)
    assert emu.duplicates() == [] and len(emu.data(mid)) == 3
    await again.close()


async def test_a_changed_meter_id_does_not_inherit_what_went_to_the_old_one(tmp_path: Path,
                                                                           emu: WegowiseEmulator) -> None:
    old, new = emu.add_meter("Electric", "E-1"), emu.add_meter("Electric", "E-2")
    stream = Stream("wegowise", "m1")
    sink = sink_of(write_config(tmp_path, emu, f"      - {{meter: m1, id: {old}}}\n"))
    await sink.start()
    await sink.send(stream, hourly("m1", date(2026, 5, 1), 1))
    await sink.close()
    moved = sink_of(write_config(tmp_path, emu, f"      - {{meter: m1, id: {new}}}\n"))
    await moved.start()
    # The same day handed again (a restart re-sends what the queue still holds), then the next one.
    moved.meters["m1"].builder = type(moved.meters["m1"].builder)(moved.calendar, 3_600_000)
    await moved.send(stream, hourly("m1", date(2026, 5, 1), 2))
    assert [d["start_date"] for d in emu.data(old)] == ["2026-05-01"]
    assert sorted(d["start_date"] for d in emu.data(new)) == ["2026-05-01", "2026-05-02"]
    await moved.close()


async def test_a_meter_of_another_data_type_gets_nothing(tmp_path: Path, emu: WegowiseEmulator) -> None:
    gas = emu.add_meter("Gas", "G-1")
    sink = sink_of(write_config(tmp_path, emu, f"      - {{meter: m1, id: {gas}}}\n"))  # Electric by default
    await sink.start()
    (*_, last) = await sink.send(Stream("wegowise", "m1"), hourly("m1", date(2026, 5, 1), 2))
    assert isinstance(last, Retry) and last.after == 2.0
    assert f"Wegowise meter {gas} is 'Gas', meter_map says Electric" in last.reason
    assert emu.data(gas) == []
    await sink.close()
