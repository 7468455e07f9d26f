"""The technician's page, through its HTTP API, against a running daemon reading simulated Modbus meters and
delivering to the Wattics emulator: who may do what, the brake on guessing, configuration masked / checked /
applied / rolled back, read now, dead letters, logs and the diagnostics bundle, and no secret in any answer.
(tests/test_page_browser.py drives the same page in a real browser.)"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from gateway.logs import encoded_forms
from gateway.platforms.modbus.simulator import MeterServer
from gateway.web import masking
from gateway.web.auth import Brake, Password, Sessions, hash_password, password_problem
from tests.helpers.mosquitto import MOSQUITTO, Mosquitto, free_port
from tests.helpers.wattics_emulator import WatticsEmulator
from tests.test_modbus_source import sim
from tests.test_monitor import running, until

PAGE_PASSWORD = "correct horse battery"
WATTICS_PASSWORD = "s3cret-pass"
H = {"X-Gateway-Page": "1"}


def config_text(tmp_path: Path, port: int, modbus_port: int, emu: WatticsEmulator, page: str = "",
                extra: str = "", interval: str = "500ms") -> str:
    pw = tmp_path / "page-password"
    pw.write_text(hash_password(PAGE_PASSWORD) + "\n")
    pw.chmod(0o600)
    return f"""\
state_dir: {tmp_path}/state
monitoring: {{enabled: true, port: {port}, page: {{password_file: {pw}{page}}}}}
buses: [{{name: b, type: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms}}]
meters:
  - {{name: main, type: modbus, bus: b, unit: 1, profile: eastron_sdm630, interval: {interval}}}
  - {{name: sub, type: modbus, bus: b, unit: 2, profile: eastron_sdm630, interval: {interval}}}
{extra}sinks:
  - name: wattics
    type: wattics
    url: {emu.url}
    username: gateway
    password: {WATTICS_PASSWORD}
    ca_file: {emu.ca_file}
    backoff_base: 20ms
    backoff_cap: 200ms
    data_points: [{{id: elec-1, meter: main, format: electrical}}]
  - {{name: out, type: file, path: {tmp_path}/out.jsonl}}
"""


@pytest.fixture(autouse=True)
def daemon_logging():  # type: ignore[no-untyped-def]
    """The daemon's own logging (the ring the page reads is in its chain), restored after the test."""
    import structlog

    from gateway import logs

    logs.configure("debug", "json", stream=io.StringIO())
    logs.RING.lines.clear()
    yield
    structlog.reset_defaults()


@pytest.fixture
async def site(tmp_path: Path):  # type: ignore[no-untyped-def]
    emu = WatticsEmulator(tmp_path / "certs").start()
    server = await MeterServer([sim(1), sim(2)]).start_tcp()
    try:
        yield emu, server
    finally:
        await server.stop()
        emu.stop()


async def signed_in(c: httpx.AsyncClient) -> None:
    r = await c.post("/api/login", json={"password": PAGE_PASSWORD}, headers=H)
    assert r.status_code == 200, r.text


def secret_forms() -> set[str]:
    basic = base64.b64encode(f"gateway:{WATTICS_PASSWORD}".encode()).decode()
    return {*encoded_forms(WATTICS_PASSWORD), *encoded_forms(PAGE_PASSWORD), basic}


def assert_no_secret(text: str, where: str) -> None:
    for form in secret_forms():
        assert form not in text, f"a secret ({form[:3]}...) in {where}"


# ---------------------------------------------------------------- without a daemon


def test_password_hash_round_trip_and_problems() -> None:
    stored = hash_password("a long password")
    assert stored.startswith("scrypt$") and "a long password" not in stored
    p = Password(stored)
    assert p.check("a long password") and not p.check("a long passwore") and not p.check("")
    assert Password("plain but long").check("plain but long"), "a plain password is hashed at start"
    assert password_problem("short") and password_problem("scrypt$1$2$3$x$y")
    assert password_problem(stored) is None and password_problem("long enough") is None


def test_brake_doubles_per_client_and_caps_all_clients() -> None:
    b = Brake()
    assert b.wait("a", 0.0) == 0
    assert b.failed("a", 0.0) == 1.0 and b.wait("a", 0.5) == 0.5
    assert b.failed("a", 1.0) == 2.0 and b.failed("a", 3.0) == 4.0
    assert b.wait("b", 3.0) == 0, "another client is not slowed by one client's failures"
    for i in range(10):
        b.failed(f"c{i}", 10.0)
    assert b.wait("fresh", 10.0) == 50.0, "ten wrong passwords a minute from anywhere: everyone waits"
    b.succeeded("a")
    assert b.wait("a", 100.0) == 0


def test_sessions_expire_without_requests() -> None:
    s = Sessions(timeout=0.05)
    token = s.new("127.0.0.1").token
    assert s.get(token) is not None
    time.sleep(0.1)
    assert s.get(token) is None and s.get("made-up") is None


def test_masking_keeps_secrets_by_key_and_name() -> None:
    running = """\
sinks:
  - name: a
    password: first-secret
  - name: b
    password: "second-secret"
fleet: {host: x, password: third-secret}
"""
    shown = masking.mask(running)
    for secret in ("first-secret", "second-secret", "third-secret"):
        assert secret not in shown
    assert shown.count('"********"') == 3
    # the sinks reordered, a key added: each secret follows its sink's name
    edited = """\
sinks:
  - name: b
    password: "********"
  - name: a
    username: u
    password: "********"
fleet: {host: x, password: "********"}
"""
    back, problems = masking.unmask(edited, running)
    assert problems == []
    import yaml

    data = yaml.safe_load(back)
    by_name = {s["name"]: s["password"] for s in data["sinks"]}
    assert by_name == {"a": "first-secret", "b": "second-secret"} and data["fleet"]["password"] == "third-secret"
    # a masked value with nothing to keep is a problem with its line
    _, problems = masking.unmask('sinks:\n  - name: new\n    password: "********"\n', running)
    assert len(problems) == 1 and problems[0].startswith("line 3: sinks.new.password")


# ---------------------------------------------------------------- against a running daemon


async def test_who_may_do_what(tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    emu, server = site
    port = free_port()
    async with running(tmp_path, config_text(tmp_path, port, server.port, emu)) as gw, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        # loopback: reading needs no session; /metrics and /health as before; a platform failing says since when
        emu.answer(503, times=10**6)
        await until(lambda: any(f.last_error for f in gw.forwarders), 10)
        wattics = (await c.get("/api/overview")).json()["report"]["sinks"]["wattics"]
        assert wattics["failing"] and "503" in wattics["last_error"]
        assert 0 <= time.time() * 1000 - wattics["failing_since_ms"] < 10_000
        emu.clear_faults()
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/health")).json()["status"] in ("ok", "problem")
        r = await c.get("/")
        assert r.status_code == 200 and "script-src 'self'" in r.headers["content-security-policy"]
        # every change needs the session, and the page's header
        assert (await c.post("/api/config/check", json={"text": "x"}, headers=H)).status_code == 401
        await signed_in(c)
        assert (await c.post("/api/config/check", json={"text": "x"})).status_code == 403, "no page header"
        # the brake: a wrong password, then the next try refused before it is looked at
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as other:
            r = await other.post("/api/login", json={"password": "guess-one"}, headers=H)
            assert r.status_code == 403 and "mg_session" not in r.headers.get("set-cookie", "")
            r = await other.post("/api/login", json={"password": PAGE_PASSWORD}, headers=H)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            await asyncio.sleep(1.05)
            r = await other.post("/api/login", json={"password": PAGE_PASSWORD}, headers=H)
            assert r.status_code == 200
        # too big a body
        r = await c.post("/api/config/check", content=b"{" + b" " * 600_000 + b"}", headers=H)
        assert r.status_code == 413
        # the page's own actions are logged with who did them
        assert any(x["event"] == "page: signed in" for x in gw_log(gw))


def gw_log(gw: object) -> list[dict[str, object]]:
    from gateway.logs import RING

    return list(RING.lines)


async def test_a_remote_page_needs_a_password(tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    emu, server = site
    port = free_port()
    text = config_text(tmp_path, port, server.port, emu).replace(
        f"monitoring: {{enabled: true, port: {port}, page: {{password_file: {tmp_path}/page-password}}}}",
        f"monitoring: {{enabled: true, port: {port}, host: 127.0.0.1, allow_remote: true}}")
    async with running(tmp_path, text), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        r = await c.get("/api/meters")
        assert r.status_code == 403 and "no password" in r.json()["error"]
        assert (await c.get("/metrics")).status_code == 200, "Prometheus scrapes as before"
    text = config_text(tmp_path, port, server.port, emu).replace("enabled: true, port:",
                                                                  "enabled: true, allow_remote: true, port:")
    async with running(tmp_path, text), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        assert (await c.get("/api/meters")).status_code == 401, "remote: reading needs a session too"
        await signed_in(c)
        assert (await c.get("/api/meters")).status_code == 200


async def test_configuration_check_apply_and_rollback(tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (CI installs it)")
    emu, server = site
    port = free_port()
    with Mosquitto(tmp_path / "broker").start() as broker:
        fleet = f"fleet: {{host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}," \
                " username: gateway, password: mqtt-s3cret, apply_deadline: 3s}\n"
        original = config_text(tmp_path, port, server.port, emu, extra=fleet)
        async with running(tmp_path, original) as gw:
            local = tmp_path / "config.yaml"
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                await signed_in(c)
                shown = (await c.get("/api/config")).json()
                assert WATTICS_PASSWORD not in shown["text"] and "mqtt-s3cret" not in shown["text"]
                assert shown["text"].count('"********"') == 2
                try:
                    await until(lambda: gw.fleet.healthy(), 10)
                except AssertionError:
                    raise AssertionError((gw.fleet.health(), gw._task_health())) from None

                # a mistake: every problem with its line, nothing changed
                bad = shown["text"].replace("interval: 500ms}", "interval: fast}", 1)
                r = (await c.post("/api/config/check", json={"text": bad}, headers=H)).json()
                assert not r["ok"] and r["problems"][0].startswith("config.yaml (page):5: meters[main].interval")
                r = (await c.post("/api/config/apply", json={"text": bad}, headers=H)).json()
                assert r["result"] == "refused" and "config.yaml (page):5:" in r["problems"][0]
                assert local.read_text() == original and gw.config_path == local

                # a good one, the masked password kept: applied, the platform still takes readings
                good = shown["text"].replace("name: sub, type: modbus, bus: b, unit: 2, profile: eastron_sdm630,"
                                             " interval: 500ms", "name: sub, type: modbus, bus: b, unit: 2, profile:"
                                             " eastron_sdm630, interval: 1s")
                assert (await c.post("/api/config/check", json={"text": good}, headers=H)).json()["ok"]
                r = (await c.post("/api/config/apply", json={"text": good}, headers=H)).json()
                assert r == {"result": "applied", "problems": []}
                assert gw.config.meters[1].interval == 1.0 and gw.config_path != local
                assert local.read_text() == original, "the technician's file is left as it is"
                applied = gw.config_path.read_text() if gw.config_path else ""
                assert WATTICS_PASSWORD in applied, "the masked secret was put back"
                before = emu.count()
                await until(lambda: emu.count() >= before + 3, 10)  # the password kept: the platform takes them

                # one that does not come up healthy (its fleet broker cannot be reached): rolled back
                dead = good.replace(f"port: {broker.port},", f"port: {free_port()},")
                r = (await c.post("/api/config/apply", json={"text": dead}, headers=H)).json()
                assert r["result"] == "rolled_back" and "not healthy" in r["problems"][0]
                assert gw.config.fleet is not None and gw.config.fleet.port == broker.port
                assert gw.config.meters[1].interval == 1.0, "back to the configuration before"
                before = emu.count()
                await until(lambda: emu.count() >= before + 3, 10)
            actions = [x for x in gw_log(gw) if x["event"] == "page action"]
            assert any("configuration apply" in str(x["fields"]) for x in actions)
            assert all("session=" in str(x["fields"]) and "client=127.0.0.1" in str(x["fields"]) for x in actions)


async def test_read_now_registers_dead_letters_and_downloads(tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    emu, server = site
    port = free_port()
    emu.answer(400, times=6, body="bad packet: value out of range")  # two readings refused for good (3 tries each)
    async with running(tmp_path, config_text(tmp_path, port, server.port, emu)) as gw:
        await until(lambda: any(f.name == "wattics" and f.last_sent for f in gw.forwarders), 15)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            m = (await c.get("/api/meters/main")).json()
            regs = {r["quantity"]: r for r in m["registers"]}
            v1 = regs["voltage_l1"]
            assert v1["words"] and len(v1["words"]) == 2 and v1["function"] == 4 and v1["word_order"] == "big"
            assert 200 < v1["value"] < 260 and not (200 < (v1["other_order"] or 0) < 260)
            assert m["requests_per_poll"] >= 1
            # The same words read every way (read --raw's rows), and how fast the meter answers.
            assert v1["every_way"]["float32 big"] == v1["value"]
            assert 0 < m["answer_ms"]["p50"] <= m["answer_ms"]["p99"] < m["answer_ms"]["timeout"]
            values = {v["quantity"]: v for v in m["last"]["values"]}
            assert values["voltage_l1"]["unit"] == "V"

            assert (await c.post("/api/meters/main/read", headers=H)).status_code == 401
            await signed_in(c)
            r = (await c.post("/api/meters/main/read", headers=H)).json()
            assert r["ts"] and r["queued"] is False and not r["problems"]
            server.silent = {2}
            r = (await c.post("/api/meters/sub/read", headers=H)).json()
            assert r["ts"] is None and "no answer" in r["problems"][0]
            server.silent = set()

            await until(lambda: len(gw_dead(gw)) >= 2, 15)
            dl = (await c.get("/api/deadletters")).json()["dead_letters"]
            assert len(dl) >= 2 and "value out of range" in dl[0]["reason"]
            r = await c.post("/api/deadletters/purge", json={}, headers=H)
            assert r.status_code == 400, "purge names what it deletes"
            n = (await c.post("/api/deadletters/retry", json={"ids": [dl[0]["id"]]}, headers=H)).json()["count"]
            assert n == 1
            n = (await c.post("/api/deadletters/purge", json={"ids": [dl[1]["id"]]}, headers=H)).json()["count"]
            assert n == 1
            await until(lambda: len(gw_dead(gw)) == len(dl) - 2, 15)  # one purged, one delivered on its retry

            # logs: the ring, filtered; the download and the bundle, without a secret
            logs = (await c.get("/api/logs", params={"level": "warning"})).json()["lines"]
            assert logs and all(x["level"] in ("warning", "error", "critical") for x in logs)
            assert any(x["event"] == "page action" for x in (await c.get("/api/logs")).json()["lines"])
            text = (await c.get("/api/logs/download")).text
            assert "gateway running" in text
            bundle = zipfile.ZipFile(io.BytesIO((await c.get("/api/diagnostics")).content))
            assert set(bundle.namelist()) == {"config.yaml", "status.json", "health.json", "recent.log",
                                              "versions.json"}
            versions = json.loads(bundle.read("versions.json"))
            assert versions["meter-gateway"] and versions["pymodbus"] and versions["python"]
            everything = {name: bundle.read(name).decode() for name in bundle.namelist()}
            for path in ("/", "/api/overview", "/api/meters", "/api/meters/main", "/api/config", "/api/platforms",
                         "/api/deadletters", "/api/logs", "/api/logs/download", "/metrics", "/health"):
                everything[path] = (await c.get(path)).text
            for where, content in everything.items():
                assert_no_secret(content, where)
            assert "********" in everything["config.yaml"]
            sent = (await c.get("/api/platforms")).json()["sinks"][0]["last_sent"]
            assert sent and json.loads(sent[0]["packet"])["id"] == "elec-1", "the body actually sent"


def gw_dead(gw: object) -> list[object]:
    import sqlite3

    db = sqlite3.connect(f"file:{gw.queue.path}?mode=ro", uri=True)  # type: ignore[attr-defined]
    try:
        return db.execute("SELECT id FROM deadletters").fetchall()
    finally:
        db.close()


async def test_scan_from_the_page_tcp_beside_polling_serial_paused(tmp_path: Path) -> None:
    """A Modbus TCP bus is scanned over a connection of its own while its meters are read; a serial line (a real
    RTU link on a pseudo-terminal pair) has its polling paused for the scan and resumed after."""
    from tests.helpers.modbus import pty_pair

    port = free_port()
    tcp_server = await MeterServer([sim(1), sim(2)]).start_tcp()
    pw = tmp_path / "page-password"
    pw.write_text(hash_password(PAGE_PASSWORD))
    try:
        with pty_pair(tmp_path) as (meter_end, gateway_end):
            rtu_server = await MeterServer([sim(3)]).start_serial(meter_end, baudrate=38400)
            try:
                text = f"""\
state_dir: {tmp_path}/state
monitoring: {{enabled: true, port: {port}, page: {{password_file: {pw}}}}}
buses:
  - {{name: tcp, type: tcp, host: 127.0.0.1, port: {tcp_server.port}, timeout: 300ms}}
  - {{name: rs485, type: serial, port: {gateway_end}, baudrate: 38400, timeout: 300ms}}
meters:
  - {{name: a, type: modbus, bus: tcp, unit: 1, profile: eastron_sdm630, interval: 500ms}}
  - {{name: c, type: modbus, bus: rs485, unit: 3, profile: eastron_sdm630, interval: 1s}}
sinks: [{{name: out, type: file, path: {tmp_path}/out.jsonl}}]
"""
                async with running(tmp_path, text) as gw, \
                        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
                    await signed_in(c)
                    buses = {b["name"]: b for b in (await c.get("/api/buses")).json()["buses"]}
                    assert buses["rs485"]["pauses_polling"] and not buses["tcp"]["pauses_polling"]
                    await until(lambda: "a" in gw.latest and "c" in gw.latest, 10)
                    before = gw.latest["a"].ts_ms
                    r = (await c.post("/api/buses/tcp/scan", json={"units": "1-4"}, headers=H)).json()
                    assert [h["unit"] for h in r["hits"]] == [1, 2] and r["hits"][0]["fits"][0] == "eastron_sdm630"
                    assert not r["paused_polling"] and "profile: eastron_sdm630" in r["text"]
                    assert gw.latest["a"].ts_ms > before, ("the TCP meters were read during the scan", r, before)

                    r = (await c.post("/api/buses/rs485/scan", json={"units": "2-4"}, headers=H)).json()
                    assert r["paused_polling"] and [h["unit"] for h in r["hits"]] == [3]
                    after_scan = gw.latest["c"].ts_ms
                    await until(lambda: gw.latest["c"].ts_ms > after_scan, 5)  # polling resumed
                    await asyncio.sleep(1.2)
                    polled = gw.monitor.backend.pollers()["c"]
                    assert polled.counts["skipped_ticks"] >= 1, "the ticks the scan took are counted"
                    problems = (await c.get("/health")).json()["problems"]
                    assert not [p for p in problems if p["check"] == "ticks_skipped"], "not blamed on the meter"
                    bad = await c.post("/api/buses/tcp/scan", json={"units": "1-x"}, headers=H)
                    assert bad.status_code == 400 and "1-247" in bad.json()["error"]
                    events = [x["event"] for x in gw_log(gw)]
                    assert "polling paused: the line is lent (a scan)" in events and "polling resumed" in events
            finally:
                await rtu_server.stop()
    finally:
        await tcp_server.stop()


async def test_mqtt_meter_messages_and_modbus_errors_over_the_last_hour(
        tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (CI installs it)")
    import paho.mqtt.client as mqtt

    emu, server = site
    port = free_port()
    with Mosquitto(tmp_path / "broker").start() as broker:
        extra = f"""\
brokers:
  - {{name: site, host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}, username: gateway,
     password: {broker.users['gateway']}}}
subscriptions:
  - {{name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {{power_active_total: n}},
     timestamp: {{path: ts}}}}
"""
        text = config_text(tmp_path, port, server.port, emu, extra=extra).replace(
            "  - {name: sub, type: modbus", "  - {name: plc1, type: mqtt}\n  - {name: sub, type: modbus", 1)
        async with running(tmp_path, text) as gw, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
            pub.tls_set(ca_certs=str(broker.ca_file))
            pub.username_pw_set("gateway", broker.users["gateway"])
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            await asyncio.sleep(1.0)
            pub.publish("plc/plc1/data", b'{"n": [1]}', qos=1)  # refused before any reading came for plc1
            pub.publish("plc/plc1/data", json.dumps({"n": 1234.5, "ts": "2026-01-01T00:00:00Z"}), qos=1)
            pub.publish("plc/plc1/data", b'{"n": "lots"}', qos=1)
            pub.publish("plc/other/data", b'{"n": "x"}', qos=1)  # another meter's: not on plc1's page
            await until(lambda: sum(len(v) for v in gw.monitor.backend.mqtt_messages().values()) >= 4, 10)
            pub.loop_stop()
            m = (await c.get("/api/meters/plc1")).json()
            outcomes = [x["outcome"] for x in m["mqtt_messages"]]
            assert len(outcomes) == 3 and outcomes[1] == "1 reading", outcomes
            assert outcomes[0].startswith("refused:") and outcomes[2].startswith("refused:"), outcomes
            assert m["registers"] is None and '"lots"' in m["mqtt_messages"][2]["payload"]

            server.silent = {2}
            await until(lambda: gw.monitor.backend.pollers()["sub"].errors_last_hour().get("timeout", 0) >= 2, 10)
            m = (await c.get("/api/meters/sub")).json()
            assert m["errors_last_hour"]["timeout"] >= 2 and m["failing"]


async def test_https_with_the_users_certificate_and_a_warning_for_plain_http(
        tmp_path: Path, site) -> None:  # type: ignore[no-untyped-def]
    import ssl

    import trustme

    emu, server = site
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "page.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "page.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    text = config_text(tmp_path, port, server.port, emu, page=f", cert_file: {tmp_path}/page.pem,"
                                                           f" key_file: {tmp_path}/page.key")
    async with running(tmp_path, text) as gw:
        trust = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trust) as c:
            assert (await c.get("/health")).status_code == 200
            r = await c.post("/api/login", json={"password": PAGE_PASSWORD}, headers=H)
            assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the HTTPS port gets nothing
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
                await plain.get("/health")
        assert not any("plain HTTP" in str(x["event"]) for x in gw_log(gw))
    text = config_text(tmp_path, port, server.port, emu).replace("enabled: true, port:",
                                                                  "enabled: true, allow_remote: true, port:")
    async with running(tmp_path, text) as gw:
        assert any("faces the network over plain HTTP" in str(x["event"]) for x in gw_log(gw))
