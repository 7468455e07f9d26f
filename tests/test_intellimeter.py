"""Intellimeter against its emulator over real HTTPS: tokens (grant, refresh before expiry, a refused refresh, a
401), the daemon catching up a backlog and never queuing a read twice (restarts, SIGKILLs), a lying cloud, the
device flow, and ``check``/``read``/``verify``."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.cloudhttp import CloudError
from gateway.config import load_config
from gateway.config.models import MonitoringConfig
from gateway.health import evaluate
from gateway.platforms.intellimeter.api import IntellimeterApi
from gateway.platforms.intellimeter.config import IntellimeterCloud
from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.intellimeter_emulator import IntellimeterEmulator

SECRET = "im-s3cret"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[IntellimeterEmulator]:
    e = IntellimeterEmulator(tmp_path / "certs").start()
    yield e
    e.stop()


def write_config(tmp_path: Path, emu: IntellimeterEmulator, cloud: str = "", meters: str = "",
                 secret: str = SECRET) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{name: plant, timezone: America/Toronto}}
state_dir: {tmp_path}/state
time_sync: ignore
queue: {{max_age: 90d}}
clouds:
  - type: intellimeter
    name: im
    url: {emu.url}
    client_id: im-client
    client_secret: {secret}
    ca_file: {emu.ca_file}
    interval: 1s
    first_reach_back: 40d
    max_reach_back: 60d
    late_reads: 30s
    retry_cap: 1s
    auth_retry: 1s
{cloud}meters:
{meters or '''  - {name: a, type: intellimeter, cloud: im, meter_id: A1}
  - {name: b, type: intellimeter, cloud: im, serial_number: SER-B}
  - {name: w, type: intellimeter, cloud: im, meter_id: W1, utility: water}
'''}sinks:
  - {{name: archive, type: file, path: {tmp_path}/archive.jsonl}}
""")
    return path


def cloud_of(path: Path) -> IntellimeterCloud:
    cloud = load_config(path).clouds[0]
    assert isinstance(cloud, IntellimeterCloud)
    return cloud


def status(path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(path), "--json"],
                         capture_output=True, text=True, timeout=60)
    return dict(json.loads(out.stdout))


def site(emu: IntellimeterEmulator, days: float, step_s: float = 900.0) -> dict[str, list[tuple[str, float]]]:
    """Meters A1 (property p1), B (p2, known by its serial number) and a water meter W1 (p1), each with ``days`` of
    reads up to now. Returns each one's (stamp, counter)."""
    emu.add_meter("A1", "SER-A", "p1")
    emu.add_meter("B7", "SER-B", "p2")
    emu.add_meter("W1", "SER-W", "p1", utility="W", units="m3")
    emu.add_meter("X9", "SER-X", "p2")  # in the cloud, mapped by nobody
    n = int(days * 86400 / step_s)
    start = emu.now_local() - timedelta(seconds=step_s * n)
    return {mid: emu.add_series(mid, start, step_s, n, kwh0=100.0 * (i + 1))
            for i, mid in enumerate(("A1", "B7", "W1", "X9"))}


def archived(tmp_path: Path) -> dict[str, list[tuple[int, dict[str, float]]]]:
    out: dict[str, list[tuple[int, dict[str, float]]]] = {}
    for line in read_jsonl(tmp_path / "archive.jsonl"):
        out.setdefault(line["meter"], []).append((line["ts_ms"], line["values"]))
    return out


def check_archive(tmp_path: Path, emu: IntellimeterEmulator, kills: int = 0) -> int:
    """Every read of the mapped meters is in the archive with its value, in order; a reading written again is only
    the file sink re-sending, after a kill, what it wrote before the queue committed its acknowledgement (a sink
    delivers at least once: acknowledgements are committed with the next commit). Returns how many."""
    got = archived(tmp_path)
    resent = 0
    for name, mid, quantity, scale in (("a", "A1", "energy_import_total", 1000), ("b", "B7", "energy_import_total",
                                                                                   1000), ("w", "W1", "value", 1)):
        want = [round(kwh * scale, 6) for _, f in emu.meters[mid].reads for kwh in [f["kwh"]]]
        rows = got.get(name, [])
        firsts: list[tuple[int, dict[str, float]]] = []
        written: dict[int, dict[str, float]] = {}
        for ts, values in rows:
            if firsts and ts <= firsts[-1][0]:
                resent += 1
                assert written.get(ts) == values, (name, ts)  # the same reading again, never another value
                continue
            firsts.append((ts, values))
            written[ts] = values
        assert [v[quantity] for _, v in firsts] == want, name
        if quantity == "energy_import_total":
            assert all(v["interval_energy"] == 250.0 for _, v in firsts)
        assert len({ts for ts, _ in firsts}) == len(firsts)
    assert "X9" not in got
    assert resent == 0 or kills > 0
    return resent


# ---------------------------------------------------------------- tokens


async def test_tokens_are_refreshed_before_expiry_and_a_refused_refresh_asks_again(tmp_path: Path,
                                                                                  emu: IntellimeterEmulator) -> None:
    emu.token_life = 4.0
    site(emu, 0.1)
    api = IntellimeterApi(cloud_of(write_config(tmp_path, emu, "    refresh_before: 3s\n")), tmp_path)
    try:
        first = await api.token()
        assert emu.grants == ["client_credentials"]
        await asyncio.sleep(1.2)  # 2.8 s left of 4: under refresh_before
        second = await api.token()
        assert second != first and emu.grants == ["client_credentials", "refresh_token"]
        assert "p1" in await api.reads(0, "Hour", None)
        # Every token void and the refresh token forgotten: a 401, a refused refresh, then a new grant; the read
        # is sent again once and answered.
        emu.revoke()
        emu.refresh.clear()
        assert "p2" in await api.reads(0, "Hour", None)
        assert emu.grants[-2:] == ["refresh_token", "client_credentials"]
        assert [s for _, p, s, _ in emu.log if p == "/api/v1/read"] == [200, 401, 200]
    finally:
        await api.close()


async def test_refused_credentials_and_a_missing_scope_are_auth_errors_without_the_secret(
        tmp_path: Path, emu: IntellimeterEmulator) -> None:
    api = IntellimeterApi(cloud_of(write_config(tmp_path, emu, secret="wrong-s3cret")), tmp_path)
    with pytest.raises(CloudError) as e:
        await api.reads(0, "Hour", None)
    await api.close()
    assert e.value.kind == "auth" and "invalid_client" in str(e.value) and "s3cret" not in str(e.value)
    emu.app_scopes = {"meter:meters:read"}
    api = IntellimeterApi(cloud_of(write_config(tmp_path, emu)), tmp_path)
    with pytest.raises(CloudError) as e:
        await api.reads(0, "Hour", None)
    await api.close()
    assert e.value.kind == "auth" and e.value.status == 403


async def test_a_stalled_or_failing_answer_is_transient_and_a_404_says_the_address(tmp_path: Path,
                                                                                   emu: IntellimeterEmulator) -> None:
    site(emu, 0.1)
    api = IntellimeterApi(cloud_of(write_config(tmp_path, emu, "    request_timeout: 1s\n")), tmp_path)
    try:
        emu.garble('{"access_token": "' + "x" * 200_000 + '"}', path="/api/v1/auth")  # not read beyond 64 KB
        with pytest.raises(CloudError) as e:
            await api.token()
        assert e.value.kind == "bad_answer"
        await api.token()
        for fault, kind in ((lambda: emu.stall(3.0, path="/api/v1/read"), "transient"),
                            (lambda: emu.answer(429, path="/api/v1/read"), "transient"),
                            (lambda: emu.answer(503, path="/api/v1/read"), "transient"),
                            (lambda: emu.answer(404, path="/api/v1/read"), "not_found"),
                            (lambda: emu.garble('{"p1": {"not": "a list"}}', path="/api/v1/read"), None)):
            fault()
            t0 = time.monotonic()
            if kind is None:  # JSON, but not the document's shape: refused by the source as a whole
                from gateway.platforms.intellimeter.reads import BadAnswer, reads_of

                with pytest.raises(BadAnswer):
                    reads_of(await api.reads(0, "Hour", None))
                continue
            with pytest.raises(CloudError) as e:
                await api.reads(0, "Hour", None)
            assert e.value.kind == kind and time.monotonic() - t0 < 2.5, (kind, str(e.value))
        assert "p1" in await api.reads(0, "Hour", None)  # and then it answers again
    finally:
        await api.close()


# ---------------------------------------------------------------- the daemon


def test_a_backlog_is_caught_up_once_and_a_restart_queues_nothing_twice(tmp_path: Path,
                                                                       emu: IntellimeterEmulator) -> None:
    site(emu, 2.0)  # 192 reads per meter
    path = write_config(tmp_path, emu)
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event") == "Intellimeter has a meter no meter of the configuration maps"
                   " (see verify)" and e.get("meter_id") == "X9")
        deadline = time.monotonic() + 30
        while sum(len(v) for v in archived(tmp_path).values()) < 3 * 192 and time.monotonic() < deadline:
            time.sleep(0.2)
        emu.live(1.0)  # new reads every second from now on
        time.sleep(3)
        d.stop()
    time.sleep(1.5)  # reads made while the gateway is away
    emu.stop_live()
    total = sum(len(emu.meters[m].reads) for m in ("A1", "B7", "W1"))
    with Daemon(path).start() as d:
        deadline = time.monotonic() + 30
        while sum(len(v) for v in archived(tmp_path).values()) < total and time.monotonic() < deadline:
            time.sleep(0.2)
        d.stop()
    assert check_archive(tmp_path, emu) == 0
    report = status(path)
    for m in ("a", "b", "w"):
        assert report["meters"][m]["refused"] == 0, m  # each read was handed to the queue once
    assert len(archived(tmp_path)["a"]) > 192


def test_sigkill_while_a_month_is_caught_up_loses_nothing_and_queues_nothing_twice(tmp_path: Path) -> None:
    emu = IntellimeterEmulator(tmp_path / "certs", latency=0.3).start()
    try:
        site(emu, 30.0)  # 2,880 reads per meter
        path = write_config(tmp_path, emu, "    properties: [p1, p2]\n")
        rng = random.Random(17)
        kills = 0
        archived_at_kill = []
        for _ in range(4):
            d = Daemon(path).start()
            time.sleep(rng.uniform(0.3, 1.2))  # in the middle of the catch-up: between or during the answers
            d.signal(signal.SIGKILL)
            assert d.proc is not None
            d.proc.wait(10)
            kills += 1
            archived_at_kill.append(len({(m, ts) for m, rows in archived(tmp_path).items() for ts, _ in rows}))
        assert any(0 < n < 3 * 2880 for n in archived_at_kill), archived_at_kill  # a kill landed mid-way
        with Daemon(path).start() as d:
            deadline = time.monotonic() + 60
            while sum(len(v) for v in archived(tmp_path).values()) < 3 * 2880 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            d.stop()
        resent = check_archive(tmp_path, emu, kills)
        report = status(path)
        assert all(report["meters"][m]["refused"] == 0 for m in ("a", "b", "w"))
        print(f"\n{kills} kills during a 30-day catch-up (readings archived at each kill: {archived_at_kill}):"
              f" 3 x 2,880 reads archived once each in order ({resent} written again by the file sink after a kill)")
    finally:
        emu.stop()


def test_a_lying_cloud_never_stops_the_daemon_nor_gets_a_wrong_value_queued(tmp_path: Path,
                                                                           emu: IntellimeterEmulator) -> None:
    site(emu, 0.25)
    path = write_config(tmp_path, emu, meters="""\
  - {name: a, type: intellimeter, cloud: im, meter_id: A1}
  - {name: b, type: intellimeter, cloud: im, serial_number: SER-B}
  - {name: w, type: intellimeter, cloud: im, meter_id: W1, utility: gas}
""")
    with Daemon(path).start() as d:
        deadline = time.monotonic() + 20
        while len(archived(tmp_path).get("a", [])) < 24 and time.monotonic() < deadline:
            time.sleep(0.2)
        now = emu.now_local()
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S")
        emu.add_read("A1", "2099-01-01T00:00:00", 999999.0)  # a stamp from 2099
        emu.add_read("B7", stamp, 1e300 * 10, 0.25)  # too big for a float: inf
        emu.garble("<html>busy</html>", times=2, path="/api/v1/read")
        d.wait_log(lambda e: e.get("event", "").startswith("cannot fetch Intellimeter's reads")
                   and e.get("kind") == "bad_answer")
        d.wait_log(lambda e: e.get("event") == "Intellimeter answers again")
        d.wait_log(lambda e: e.get("event") == "Intellimeter reads refused: nothing of them is queued"
                   and e.get("meter") == "w" and e.get("reason") == "wrong_utility")
        d.wait_log(lambda e: e.get("event", "").startswith("reading refused: stamped in the future")
                   and e.get("meter") == "a")
        emu.answer(503, times=1000, path="/api/v1/read")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the heartbeat reaches the queue file with its next commit
            report = status(path)
            if report["meters"]["a"]["failing"] and "transient" in report["meters"]["a"]["last_problem"]:
                break
            time.sleep(0.5)
        assert report["meters"]["a"]["failing"] and "transient" in report["meters"]["a"]["last_problem"]
        down = [p for p in evaluate(report, MonitoringConfig()) if p["check"] == "cloud_down"]
        assert down and down[0]["cloud"] == "im" and "503" in down[0]["detail"], down  # /health says it
        assert report["meters"]["a"]["future"] >= 1
        assert report["meters"]["w"]["read_errors"].get("wrong_utility", 0) >= 1
        assert d.proc is not None and d.proc.poll() is None
        emu.faults.clear()
        d.wait_log(lambda e: e.get("event") == "Intellimeter answers again" and e.get("after", "").startswith(
            "transient"))
        d.stop()
    got = archived(tmp_path)
    assert "w" not in got  # a water meter configured as gas: none of its reads
    assert all(ts < 4_000_000_000_000 for ts, _ in got["a"])
    assert all(v.get("energy_import_total", 0) < 1e12 for _, v in got["b"])
    assert [v["energy_import_total"] for _, v in got["a"]] == [
        round(f["kwh"] * 1000, 6) for s, f in emu.meters["A1"].reads if not s.startswith("2099")]


# ---------------------------------------------------------------- the device flow


def test_authorize_follows_the_device_flow_and_keeps_the_tokens_private(tmp_path: Path,
                                                                       emu: IntellimeterEmulator) -> None:
    site(emu, 0.1)
    path = write_config(tmp_path, emu, "    flow: device_code\n")
    (tmp_path / "state").mkdir()
    p = subprocess.Popen([sys.executable, "-m", "gateway", "intellimeter", "authorize", "-c", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    lines = [p.stdout.readline() for _ in range(4)]
    code = lines[2].split("enter the code ")[1].split(",")[0]
    time.sleep(2.5)  # the owner takes a while: the gateway keeps asking, no faster than the interval
    emu.approve(code)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    token = tmp_path / "state" / "intellimeter-im.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert SECRET not in "".join(lines) + out + err
    assert json.loads(token.read_text())["access_token"] not in "".join(lines) + out + err
    polls = [g for g in emu.grants if g == "device_code"]
    assert len(polls) >= 3 and "slow_down" not in err
    with Daemon(path).start():
        deadline = time.monotonic() + 20
        while len(archived(tmp_path).get("a", [])) < 9 and time.monotonic() < deadline:
            time.sleep(0.2)
    assert len(archived(tmp_path)["a"]) == 9
    # Denied: nothing is written, and the command says so.
    token.unlink()
    p = subprocess.Popen([sys.executable, "-m", "gateway", "intellimeter", "authorize", "-c", str(path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    lines = [p.stdout.readline() for _ in range(4)]
    emu.approve(lines[2].split("enter the code ")[1].split(",")[0], deny=True)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "refused" in err and not token.exists()


# ---------------------------------------------------------------- the commands


def test_check_read_and_verify_say_what_the_cloud_has(tmp_path: Path, emu: IntellimeterEmulator) -> None:
    site(emu, 0.1)
    path = write_config(tmp_path, emu, meters="""\
  - {name: a, type: intellimeter, cloud: im, meter_id: A1}
  - {name: b, type: intellimeter, cloud: im, serial_number: SER-B}
  - {name: ghost, type: intellimeter, cloud: im, meter_id: NOPE}
""")
    run = [sys.executable, "-m", "gateway"]
    out = subprocess.run([*run, "check", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "im                   intellimeter: every 1s: GET" in out.stdout
    assert "meter b: serial number SER-B, electricity" in out.stdout and SECRET not in out.stdout
    out = subprocess.run([*run, "read", "-c", str(path), "--meter", "a"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    last_kwh = emu.meters["A1"].reads[-1][1]["kwh"]
    assert "latest read of" in out.stdout and f"{last_kwh * 1000:g}" in out.stdout.replace(",", "")
    out = subprocess.run([*run, "verify", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "credentials: accepted" in out.stdout
    assert "! meter ghost: Intellimeter has no meter with meter_id NOPE" in out.stdout
    assert "not mapped: Intellimeter meter X9" in out.stdout and "not mapped: Intellimeter meter W1" in out.stdout
    assert SECRET not in out.stdout + out.stderr


def test_plain_http_is_refused_unless_asked_and_then_warned(tmp_path: Path, emu: IntellimeterEmulator) -> None:
    path = write_config(tmp_path, emu)
    text = path.read_text().replace(emu.url, "http://134.122.43.196:5000").replace(f"    ca_file: {emu.ca_file}\n", "")
    path.write_text(text)
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    line = next(x for x in out.stderr.splitlines() if "clouds[im].url" in x)
    assert line.startswith(f"{path}:8:") and "in clear" in line and SECRET not in out.stderr
    path.write_text(text.replace("    interval: 1s\n", "    interval: 1s\n    allow_insecure_http: true\n"))
    out = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_token_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    from gateway.platforms.intellimeter.api import Tokens, write_tokens

    path = tmp_path / "t.token"
    write_tokens(path, Tokens("acc", "ref", None, ""))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_interval_energy_is_never_averaged_over_a_wattics_interval(tmp_path: Path, emu: IntellimeterEmulator) -> None:
    from gateway.config.loader import load_config_text
    from gateway.errors import ConfigError

    text = write_config(tmp_path, emu).read_text().split("sinks:")[0] + """sinks:
  - type: wattics
    name: wattics
    url: https://127.0.0.1:1/
    username: u
    password: p4ssword
    data_points:
      - {id: dp-1, meter: a, format: value, quantity: interval_energy, interval: 15m}
      - {id: dp-2, meter: a, format: value, quantity: interval_energy}
      - {id: dp-3, meter: a, format: value, quantity: energy_import_total, interval: 15m}
"""
    with pytest.raises(ConfigError) as e:
        load_config_text(text, "site.yaml")
    assert len(e.value.problems) == 1
    assert "sinks[wattics].data_points[0].interval: interval_energy is the energy of the meter's own interval" \
        in e.value.problems[0]


def test_a_meter_the_cloud_has_no_read_of_is_reported_failing(tmp_path: Path, emu: IntellimeterEmulator) -> None:
    site(emu, 0.1)
    path = write_config(tmp_path, emu, meters="""\
  - {name: a, type: intellimeter, cloud: im, meter_id: A1, interval: 1s}
  - {name: ghost, type: intellimeter, cloud: im, meter_id: NOPE, interval: 1s}
""")
    path.write_text(path.read_text().replace("late_reads: 30s", "late_reads: 0s"))
    emu.live(1.0)
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event") == "no new read of this meter in Intellimeter" and e.get("meter") ==
                   "ghost", timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            report = status(path)
            if report["meters"]["ghost"]["failing"]:
                break
            time.sleep(0.5)
        assert "is meter_id right? see verify" in report["meters"]["ghost"]["last_problem"]
        assert not report["meters"]["a"]["failing"]  # its reads keep coming
        assert not [p for p in evaluate(report, MonitoringConfig()) if p["check"] == "cloud_down"]
        d.stop()
