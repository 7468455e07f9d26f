"""WattzOn Link against its emulator over HTTPS with a client certificate: jobs followed by ``finished``, bills and
interval months queued once each as period readings (across restarts and SIGKILLs), corrected and late bills
queued once each as late period readings (Wegowise updates or adds the period), a state that needs a person said
once, hostile records refused, and ``check``/``verify``/``read``."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.wattzon_emulator import WattzonEmulator

THERM_WH = 100_000 * 1055.05585262 / 3600


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[WattzonEmulator]:
    e = WattzonEmulator(tmp_path / "certs").start()
    yield e
    e.stop()


def write_config(tmp_path: Path, emu: WattzonEmulator, cloud: str = "", meters: str = "",
                 cert: tuple[Path, Path] | None = None) -> Path:
    crt, key = cert or (emu.client_cert, emu.client_key)
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{name: plant, timezone: America/New_York}}
state_dir: {tmp_path}/state
time_sync: ignore
queue: {{max_age: 800d}}
clouds:
  - type: wattzon
    name: utility
    url: {emu.url}
    cert_file: {crt}
    key_file: {key}
    ca_file: {emu.ca_file}
    extract_every: 1h
    job_poll: 200ms
    fetch_every: 1h
    retry_cap: 1s
{cloud}meters:
{meters or '''  - {name: elec, type: wattzon, cloud: utility, profile_id: 516, meter_number: "67563764"}
  - {name: gas, type: wattzon, cloud: utility, profile_id: 516, meter_number: "G-1", utility: gas}
'''}sinks:
  - {{name: archive, type: file, path: {tmp_path}/archive.jsonl}}
""")
    return path


def month_bounds(year: int, month: int) -> tuple[str, str]:
    start = datetime(year, month, 1)
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return start.isoformat(), (nxt - timedelta(seconds=1)).isoformat()


def bill(year: int, month: int, usage: Any, cost: Any, meter: str = "67563764", kind: str = "electricity",
         units: str = "kWh", currency: str = "USD", bill_id: str | None = None) -> dict[str, Any]:
    start, end = month_bounds(year, month)
    return {"account_number": "42626522-7", "bill_id": bill_id or f"{meter}-{year}-{month:02d}", "cost": cost,
            "currency": currency, "end_date": end, "meter_number": meter, "name": "J. Random Person",
            "pdf": f"/link/4.0/data/bills/516/{meter}-{year}-{month:02d}/pdf",
            "service_address": "123 J. Random Road, Randomtown, RI 00007", "service_id": "353267363254",
            "start_date": start, "type": kind, "units": units, "usage": usage}


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp() * 1000)


def archived(tmp_path: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for line in read_jsonl(tmp_path / "archive.jsonl"):
        out.setdefault(line["meter"], []).append(line)
    return out


def wait_for(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def status(path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(path), "--json"],
                         capture_output=True, text=True, timeout=60)
    return dict(json.loads(out.stdout))


def status_when(path: Path, pred: Any, timeout: float = 20.0) -> dict[str, Any]:
    """``status`` once ``pred`` holds of it (the running daemon's heartbeat reaches the queue file with a commit),
    or the last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    report = status(path)
    while not pred(report) and time.monotonic() < deadline:
        time.sleep(0.5)
        report = status(path)
    return report


def test_bills_are_queued_once_in_order_across_jobs_restarts_and_corrections(tmp_path: Path,
                                                                            emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    p.bills = [bill(2026, m, 600.0 + m, 80.0 + m / 4) for m in range(1, 7)]
    p.bills += [bill(2026, m, 40.0 + m, 35.5, meter="G-1", kind="gas", units="therms") for m in range(1, 7)]
    p.bills.append({**bill(2026, 1, 1.0, 1.0, meter="67563764"), "type": "billing"})  # payment record: not energy
    p.extracted_bills = [bill(2026, m, 600.0 + m, 80.0 + m / 4) for m in (7, 8)]
    path = write_config(tmp_path, emu)
    with Daemon(path).start() as d:
        wait_for(lambda: len(archived(tmp_path).get("elec", [])) == 8)
        d.wait_log(lambda e: e.get("event") == "extraction job finished" and e.get("status") == "success")
        time.sleep(1)
        d.stop()
    got = archived(tmp_path)
    elec, gas = got["elec"], got["gas"]
    assert [r["start"] for r in elec] == [f"2026-{m:02d}-01T00:00:00.000Z" for m in range(1, 9)]
    assert [r["ts_ms"] for r in elec] == [ms(month_bounds(2026, m)[1]) for m in range(1, 9)]
    assert [r["values"] for r in elec] == [{"interval_energy": (600.0 + m) * 1000, "cost": 80.0 + m / 4}
                                           for m in range(1, 9)]
    assert [r["values"]["interval_energy"] for r in gas] == [round((40.0 + m) * THERM_WH, 6) for m in range(1, 7)]
    assert len(emu.jobs) == 1 and len(emu.requests("/jobs")) >= 4  # started once, followed until finished

    # A restart: no job (one per extract_every, remembered), nothing queued again. A corrected bill (March) and
    # a late one (a bill for a period before the first delivered) are logged, counted and queued after August as
    # late period readings, with their own periods.
    p.bills[2] = {**p.bills[2], "usage": 999.0, "cost": 150.0}
    p.bills.append(bill(2025, 12, 580.0, 79.0))
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("a corrected bill") and e.get("meter") == "elec")
        d.wait_log(lambda e: e.get("event", "").startswith("a late bill") and e.get("meter") == "elec")
        report = status_when(path, lambda r: len(r["meters"]["elec"]["late_periods"]) == 2)
        assert report["meters"]["elec"]["late_periods"] == {"corrected_bills": 1, "late_bills": 1}
        assert report["meters"]["elec"]["read_errors"] == {}
        wait_for(lambda: len(archived(tmp_path)["elec"]) == 10)
        d.stop()
    assert len(emu.jobs) == 1
    now = archived(tmp_path)
    assert now["gas"] == got["gas"] and now["elec"][:8] == got["elec"]
    august = ms(month_bounds(2026, 8)[1])
    assert [(r["ts_ms"], r["start"], r["end_ms"], r["late"], r["values"]) for r in now["elec"][8:]] == [
        (august + 1, "2025-12-01T00:00:00.000Z", ms(month_bounds(2025, 12)[1]), True,
         {"interval_energy": 580000.0, "cost": 79.0}),
        (august + 2, "2026-03-01T00:00:00.000Z", ms(month_bounds(2026, 3)[1]), True,
         {"interval_energy": 999000.0, "cost": 150.0})]
    assert status(path)["meters"]["elec"]["refused"] == 0
    got = now
    # Seen again, the same correction is not logged twice.
    with Daemon(path).start() as d:
        time.sleep(2)
        d.stop()
        assert not any(e.get("event", "").startswith("a corrected bill") for e in d.events())
    assert archived(tmp_path) == got


def test_interval_months_are_fetched_until_complete_and_each_interval_queued_once(tmp_path: Path,
                                                                                 emu: WattzonEmulator) -> None:
    p = emu.profile(268)
    p.script = ["queued", "interval_extract", "interval_processing", "success"]

    def rows(first: datetime, hours: int) -> list[dict[str, Any]]:
        return [{"start": int((first + timedelta(hours=h)).timestamp()),
                 "end": int((first + timedelta(hours=h + 1)).timestamp()), "usage": round(0.5 + (h % 24) / 10, 2)}
                for h in range(hours)]

    oct1, nov1 = datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    meter_id = "__mock_meter__268"
    p.months[(meter_id, "2026-10")] = {"complete": True, "rows": rows(oct1, 31 * 24)}
    p.months[(meter_id, "2026-11")] = {"complete": False, "rows": rows(nov1, 10 * 24)}
    p.extracted_months[(meter_id, "2026-11")] = {"complete": True, "rows": rows(nov1, 30 * 24)}
    path = write_config(tmp_path, emu, meters=f"""\
  - {{name: smart, type: wattzon, cloud: utility, profile_id: 268, data: intervals, meter_id: "{meter_id}",
     interval: 1h}}
""")
    with Daemon(path).start() as d:
        wait_for(lambda: len(archived(tmp_path).get("smart", [])) == 61 * 24)
        time.sleep(1)
        d.stop()
    with Daemon(path).start() as d:
        time.sleep(1.5)
        d.stop()
    got = archived(tmp_path)["smart"]
    assert [r["ts_ms"] for r in got] == [int((oct1 + timedelta(hours=h + 1)).timestamp() * 1000)
                                         for h in range(61 * 24)]
    assert all(r["ts_ms"] - r["start_ms"] == 3_600_000 for r in got)
    assert got[5]["values"] == {"interval_energy": 1000.0}
    fetched = [e[1] for e in emu.requests("/data/intervals/268/") if "/monthly/" in e[1]]
    # October once (complete, taken); November before its job (incomplete), after it, and never again.
    assert fetched.count(f"/link/4.0/data/intervals/268/{meter_id}/monthly/2026-10") == 1
    assert fetched.count(f"/link/4.0/data/intervals/268/{meter_id}/monthly/2026-11") == 2


def test_a_job_that_needs_a_person_is_said_once_and_shown_until_one_succeeds(tmp_path: Path,
                                                                            emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    p.script = ["queued", "login", "credential_error"]
    p.bills = [bill(2026, 1, 600.0, 80.0)]
    path = write_config(tmp_path, emu)
    path.write_text(path.read_text().replace("extract_every: 1h", "extract_every: 2s"))
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("WattzOn profile needs a person: extraction"
                                                            " credential_error"))
        wait_for(lambda: len(emu.jobs) >= 3, timeout=30)  # tried again every extract_every
        errors = [e for e in d.events() if e.get("event", "").startswith("WattzOn profile needs a person")]
        assert len(errors) == 1 and "username or password" in errors[0]["event"]
        report = status_when(path, lambda r: r["meters"]["elec"]["failing"])
        assert "credential_error" in report["meters"]["elec"]["last_problem"]
        assert len(archived(tmp_path)["elec"]) == 1  # the bills already there are still taken
        p.script = ["queued", "success"]
        d.wait_log(lambda e: e.get("event") == "extraction job succeeded again", timeout=30)
        d.stop()


def test_hostile_records_are_refused_and_nothing_wrong_is_queued(tmp_path: Path, emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    good = [bill(2026, m, 600.0, 80.0) for m in (1, 3, 5)]
    p.bills = [*good,
               bill(2026, 2, "600", 80.0), bill(2026, 4, 10**400, 80.0), bill(2026, 6, 100.0, 10.0, units="ccf"),
               bill(2026, 7, 100.0, 10.0, currency="EUR"), {**bill(2026, 8, 1.0, 1.0), "start_date": None},
               {**bill(2026, 9, 1.0, 1.0), "end_date": "2099-01-31T23:59:59"}, "not a bill", None,
               {**bill(2026, 10, 5.0, 5.0), "start_date": "2026-11-01T00:00:00"}]
    path = write_config(tmp_path, emu)
    emu.garble("<html>502</html>", times=2, prefix="/data/bills")  # the first two fetches: garbage
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("cannot reach WattzOn") and e.get("kind") == "bad_answer")
        d.wait_log(lambda e: e.get("event") == "WattzOn records refused: nothing of them is queued")
        errors = status_when(path, lambda r: r["meters"]["elec"]["read_errors"])["meters"]["elec"]["read_errors"]
        assert d.proc is not None and d.proc.poll() is None
        d.stop()
    got = archived(tmp_path)["elec"]
    assert [r["start"][:7] for r in got] == ["2026-01", "2026-03", "2026-05"]
    assert all(r["values"] == {"interval_energy": 600000.0, "cost": 80.0} for r in got)
    assert errors == {"bad_value": 2, "unknown_units": 1, "wrong_currency": 1, "no_period": 1, "bad_period": 1}
    assert status(path)["meters"]["elec"]["future"] >= 1  # the bill ending in 2099: refused (at each fetch)


def test_sigkill_while_months_of_intervals_are_caught_up_queues_each_once(tmp_path: Path) -> None:
    emu = WattzonEmulator(tmp_path / "certs", latency=0.05).start()
    try:
        p = emu.profile(7)
        meter_id = "M-7"
        first = datetime(2026, 5, 1, tzinfo=UTC)
        total = 0
        for k in range(6):
            start = datetime(2026, 5 + k, 1, tzinfo=UTC)
            end = datetime(2026, 6 + k, 1, tzinfo=UTC)
            n = int((end - start).total_seconds() // 900)
            p.months[(meter_id, f"2026-{5 + k:02d}")] = {"complete": True, "rows": [
                {"start": int((start + timedelta(minutes=15 * i)).timestamp()),
                 "end": int((start + timedelta(minutes=15 * (i + 1))).timestamp()), "usage": 0.25 + i % 4 / 100}
                for i in range(n)]}
            total += n
        path = write_config(tmp_path, emu, cloud="    start_jobs: false\n", meters=f"""\
  - {{name: smart, type: wattzon, cloud: utility, profile_id: 7, data: intervals, meter_id: {meter_id},
     interval: 15m}}
""")
        rng = random.Random(5)
        at_kill = []
        for _ in range(4):
            d = Daemon(path).start()
            time.sleep(rng.uniform(0.2, 1.0))
            d.signal(signal.SIGKILL)
            assert d.proc is not None
            d.proc.wait(10)
            at_kill.append(len({r["ts_ms"] for r in archived(tmp_path).get("smart", [])}))
        with Daemon(path).start() as d:
            wait_for(lambda: len({r["ts_ms"] for r in archived(tmp_path).get("smart", [])}) == total, timeout=60)
            time.sleep(1)
            d.stop()
        assert any(0 < n < total for n in at_kill), at_kill
        rows = archived(tmp_path)["smart"]
        firsts, seen, resent = [], {}, 0
        for r in rows:
            if firsts and r["ts_ms"] <= firsts[-1]:
                resent += 1
                assert seen[r["ts_ms"]] == (r["start_ms"], r["values"])  # the file sink writing it again
                continue
            firsts.append(r["ts_ms"])
            seen[r["ts_ms"]] = (r["start_ms"], r["values"])
        assert firsts == [int((first + timedelta(minutes=15 * (i + 1))).timestamp() * 1000) for i in range(total)]
        assert status(path)["meters"]["smart"]["refused"] == 0
        print(f"\n4 kills during a catch-up of 6 months of 15-minute intervals ({total} readings; archived at each"
              f" kill: {at_kill}): each queued once, in order ({resent} written again by the file sink)")
    finally:
        emu.stop()


def test_check_verify_and_read_say_what_wattzon_has(tmp_path: Path, emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    p.bills = [bill(2026, m, 600.0 + m, 80.0) for m in (9, 10)] + [bill(2026, 10, 5.0, 5.0, meter="OTHER")]
    path = write_config(tmp_path, emu, meters="""\
  - {name: elec, type: wattzon, cloud: utility, profile_id: 516, meter_number: "67563764"}
  - {name: ghost, type: wattzon, cloud: utility, profile_id: 516, meter_number: "NOPE"}
""")
    run = [sys.executable, "-m", "gateway"]
    out = subprocess.run([*run, "check", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "utility              wattzon:" in out.stdout and "meter elec: profile 516, electricity bills" in out.stdout
    assert "a bill corrected or arriving late goes to Wegowise (updated or added)" in " ".join(out.stdout.split())
    out = subprocess.run([*run, "read", "-c", str(path), "--meter", "elec"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "latest period of 2026-10-01T00:00:00.000Z .. 2026-10-31T23:59:59.000Z" in out.stdout
    assert "610000.0" in out.stdout
    out = subprocess.run([*run, "verify", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "certificate: accepted" in out.stdout and "meter elec: 2 bill(s)" in out.stdout
    assert "! meter ghost: 0 bill(s)" in out.stdout and "not mapped: electricity bills of meter_number OTHER" \
        in out.stdout
    # A certificate WattzOn did not sign: refused at the handshake, said plainly.
    stranger = emu.https.issue_client("stranger", ca=__import__("trustme").CA())
    path = write_config(tmp_path, emu, cert=stranger)
    out = subprocess.run([*run, "verify", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 1 and "! " in out.stdout and "cannot reach WattzOn" in out.stdout


def test_a_wattzon_meter_goes_only_to_a_wattics_value_data_point(tmp_path: Path, emu: WattzonEmulator) -> None:
    from gateway.config.loader import load_config_text
    from gateway.errors import ConfigError

    text = write_config(tmp_path, emu).read_text().split("sinks:")[0] + """sinks:
  - type: wattics
    name: wattics
    url: https://127.0.0.1:1/
    username: u
    password: p4ssword
    data_points:
      - {id: dp-1, meter: elec}
      - {id: dp-2, meter: elec, format: value, quantity: interval_energy}
      - {id: dp-3, meter: elec, format: value, quantity: cost}
      - {id: dp-4, meter: gas, format: value, quantity: power_active_total}
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "site.yaml")
    assert [p.split(": ", 1)[1].split(":")[0] for p in e.value.problems] == [
        "sinks[wattics].data_points[0].format", "sinks[wattics].data_points[3].format"]


def test_bills_reach_wegowise_as_raw_data_of_their_own_dates_once(tmp_path: Path, emu: WattzonEmulator) -> None:
    from tests.helpers.wegowise_emulator import WegowiseEmulator

    wego = WegowiseEmulator(tmp_path / "wego-certs").start()
    try:
        wego.grant("at-gateway", "as-s3cret")
        elec_id, gas_id = wego.add_meter("Electric", "E-1"), wego.add_meter("Gas", "G-1")
        p = emu.profile(516)
        p.bills = [bill(2026, m, 600.0 + m, 80.0 + m / 4) for m in range(1, 4)]
        p.bills += [bill(2026, m, 40.0 + m, 35.5, meter="G-1", kind="gas", units="therms") for m in range(1, 3)]
        path = write_config(tmp_path, emu)
        path.write_text(path.read_text().split("sinks:")[0] + f"""sinks:
  - name: wegowise
    type: wegowise
    url: {wego.url}
    consumer_key: ck-gateway
    consumer_secret: cs-s3cret
    ca_file: {wego.ca_file}
    backoff_base: 50ms
    backoff_cap: 500ms
    meter_map:
      - {{meter: elec, id: {elec_id}, data_type: Electric}}
      - {{meter: gas, id: {gas_id}, data_type: Gas}}
""")
        (tmp_path / "state").mkdir(exist_ok=True)
        (tmp_path / "state" / "wegowise-wegowise.token").write_text(
            json.dumps({"token": "at-gateway", "secret": "as-s3cret"}))
        out = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stderr
        assert "one raw datum per bill with its own dates (UTC)" in out.stdout
        for _ in range(2):  # a restart sends nothing again
            with Daemon(path).start() as d:
                wait_for(lambda: len(wego.data(elec_id)) == 3 and len(wego.data(gas_id)) == 2)
                time.sleep(1)
                d.stop()
        elec = sorted(wego.data(elec_id), key=lambda x: x["start_date"])
        assert [(x["start_date"], x["end_date"], x["kwh"], x["total_charge"]) for x in elec] == [
            ("2026-01-01", "2026-01-31", "601.000", "80.25"), ("2026-02-01", "2026-02-28", "602.000", "80.50"),
            ("2026-03-01", "2026-03-31", "603.000", "80.75")]
        gas = sorted(wego.data(gas_id), key=lambda x: x["start_date"])
        assert [x["btu"] for x in gas] == ["4100000.000", "4200000.000"]  # therms x 100,000 btu
        assert wego.duplicates() == []

        # The utility corrects February and a bill for December 2025 turns up late: both are queued after March
        # (late period readings); Wegowise updates February's raw datum in place and gets December as a new one.
        ids = {x["start_date"]: x["id"] for x in elec}
        p.bills[1] = {**p.bills[1], "usage": 702.5, "cost": 95.0}
        p.bills.append(bill(2025, 12, 580.0, 79.0))
        for _ in range(2):  # again after a restart: nothing changes, nothing is sent twice
            with Daemon(path).start() as d:
                wait_for(lambda: len(wego.data(elec_id)) == 4
                         and any(x["kwh"] == "702.500" for x in wego.data(elec_id)))
                time.sleep(1)
                d.stop()
        elec = sorted(wego.data(elec_id), key=lambda x: x["start_date"])
        assert [(x["start_date"], x["end_date"], x["kwh"], x["total_charge"]) for x in elec] == [
            ("2025-12-01", "2025-12-31", "580.000", "79.00"), ("2026-01-01", "2026-01-31", "601.000", "80.25"),
            ("2026-02-01", "2026-02-28", "702.500", "95.00"), ("2026-03-01", "2026-03-31", "603.000", "80.75")]
        assert {x["start_date"]: x["id"] for x in elec if x["start_date"] != "2025-12-01"} == ids
        assert [(m, path) for m, path, st in wego.log if m == "PUT" and st == 200] == [
            ("PUT", f"/api/v1/wego_data/meters/{elec_id}/raw_data/{ids['2026-02-01']}")]
        assert wego.duplicates() == [] and len(wego.data(gas_id)) == 2
        report = status(path)
        assert report["meters"]["elec"]["read_errors"] == {} and report["meters"]["elec"]["refused"] == 0
    finally:
        wego.stop()


async def test_each_kind_of_failing_answer_is_told_apart(tmp_path: Path, emu: WattzonEmulator) -> None:
    from gateway.cloudhttp import CloudError
    from gateway.config import load_config
    from gateway.platforms.wattzon.api import WattzonApi

    emu.profile(516).bills = [bill(2026, 1, 600.0, 80.0)]
    cloud = load_config(write_config(tmp_path, emu)).clouds[0]
    api = WattzonApi(cloud)  # type: ignore[arg-type]
    try:
        for status, kind in ((403, "auth"), (401, "auth"), (429, "transient"), (503, "transient"),
                             (400, "bad_answer")):
            emu.answer(status, prefix="/jobs")
            with pytest.raises(CloudError) as e:
                await api.start_job(516, "bill")
            assert e.value.kind == kind, (status, str(e.value))
        with pytest.raises(CloudError) as e:
            await api.start_job(999, "bill")  # no such profile: 404, the id is wrong
        assert e.value.kind == "not_found" and "Profile not found" in str(e.value)
        emu.garble('{"job_id": 5}', prefix="/jobs")
        with pytest.raises(CloudError) as e:
            await api.start_job(516, "bill")
        assert e.value.kind == "bad_answer"
        assert len(await api.bills(516)) == 1 and await api.bills(516) == await api.bills(516)
        assert await api.intervals(516) == []  # none extracted yet: WattzOn's 404 is an empty list
    finally:
        await api.close()


def test_an_unknown_profile_or_a_vanished_job_troubles_only_its_own_meters(tmp_path: Path,
                                                                          emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    p.script = ["queued"] * 1000 + ["success"]  # a job that runs and runs
    # Recent bills: elec is not quiet (a meter whose last bill is months old is reported so: another test).
    today = datetime.now(UTC)
    recent = [(d.year, d.month) for d in (today - timedelta(days=62), today - timedelta(days=31))]
    p.bills = [bill(y, m, 600.0, 80.0) for y, m in recent]
    path = write_config(tmp_path, emu, meters="""\
  - {name: elec, type: wattzon, cloud: utility, profile_id: 516, meter_number: "67563764"}
  - {name: lost, type: wattzon, cloud: utility, profile_id: 999, meter_number: "X"}
""")
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("WattzOn profile needs a person: WattzOn cannot start a"
                                                            " job for profile 999"))
        wait_for(lambda: len(archived(tmp_path).get("elec", [])) == 2)
        report = status_when(path, lambda r: r["meters"]["lost"]["failing"])
        assert report["meters"]["lost"]["failing"] and "profile_id" in report["meters"]["lost"]["last_problem"]
        assert not report["meters"]["elec"]["failing"]
        wait_for(lambda: len(emu.requests("/jobs/")) >= 2)  # the job is followed ...
        emu.jobs.clear()  # ... until WattzOn forgets it
        d.wait_log(lambda e: e.get("event", "").startswith("extraction job finished without success")
                   and e.get("status") == "job_not_found")
        assert d.proc is not None and d.proc.poll() is None
        d.stop()


def test_a_meter_wattzon_has_nothing_new_for_is_reported_quiet(tmp_path: Path, emu: WattzonEmulator) -> None:
    p = emu.profile(516)
    p.script = ["success"]
    p.bills = [bill(2026, 11, 600.0, 80.0)]  # ended three days ago: within a month's bill
    path = write_config(tmp_path, emu, meters="""\
  - {name: elec, type: wattzon, cloud: utility, profile_id: 516, meter_number: "67563764"}
  - {name: ghost, type: wattzon, cloud: utility, profile_id: 516, meter_number: "NOPE", interval: 1s}
""")
    path.write_text(path.read_text().replace("extract_every: 1h", "extract_every: 1s")
                    .replace("fetch_every: 1h", "fetch_every: 1s"))
    with Daemon(path).start() as d:
        report = status_when(path, lambda r: r["meters"]["ghost"]["failing"])
        assert "WattzOn has no new bill of this meter" in report["meters"]["ghost"]["last_problem"]
        assert not report["meters"]["elec"]["failing"]
        d.stop()
