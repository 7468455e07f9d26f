"""Presence and health on the fleet broker (``fleet:``), against a real mosquitto with TLS and passwords: online with
version, the last will when the daemon is killed, a clean offline at a stop, the health document and per-meter
availability (a meter that goes silent and comes back, a meter that flaps: at most one message per ``min_gap``),
nothing secret in any message, a broker that is down changing nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.platforms.modbus.simulator import SimMeter
from gateway.platforms.simulated.source import three_phase
from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.modbus import ServerThread, profiles
from tests.helpers.mosquitto import MOSQUITTO, Mosquitto, Subscriber, free_port

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (CI installs it)")

FLEET_PASSWORD = "fleet-s3cret-Xq9"
SINK_PASSWORD = "wattics-s3cret-Zr7"


def write_config(tmp_path: Path, broker: Mosquitto | None, modbus_port: int, *, fleet_port: int | None = None,
                 extra_fleet: str = "", health_every: str = "5s") -> Path:
    host_port = broker.port if broker is not None else fleet_port
    ca = broker.ca_file if broker is not None else tmp_path / "none.pem"
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
site: {{name: plant-7}}
state_dir: {tmp_path / 'state'}
time_sync: ignore
queue: {{commit_interval: 500ms}}
monitoring: {{sink_stalled_after: 3s}}
buses:
  - {{name: cabinet, type: tcp, host: 127.0.0.1, port: {modbus_port}, timeout: 300ms, retry_cap: 1s}}
meters:
  - {{name: incomer, type: modbus, bus: cabinet, unit: 1, profile: eastron_sdm630, interval: 500ms}}
  - {{name: sim, type: simulated, model: three_phase, interval: 1s}}
sinks:
  - {{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}
  - name: wattics
    type: wattics
    url: http://127.0.0.1:9/m
    allow_insecure_http: true
    username: u
    password: {SINK_PASSWORD}
    data_points: [{{id: s1, meter: sim}}]
fleet:
  host: 127.0.0.1
  port: {host_port}
  ca_file: {ca}
  username: gateway
  password: {FLEET_PASSWORD}
  prefix: acme/fleet
  min_gap: 1s
  health_every: {health_every}
{extra_fleet}""")
    return path


def wait_for(sub: Subscriber, pred: Callable[[str, Any], bool], timeout: float = 20.0) -> tuple[str, Any]:
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        msgs = sub.received()
        for topic, payload, _ in msgs[seen:]:
            try:
                value: Any = json.loads(payload)
            except ValueError:
                value = payload.decode()
            if pred(topic, value):
                return topic, value
        seen = len(msgs)
        time.sleep(0.05)
    raise AssertionError(f"not seen in {timeout} s; last: {[(t, p[:200]) for t, p, _ in sub.received()[-8:]]}")


def latest(sub: Subscriber, topic: str) -> Any:
    payloads = [p for t, p, _ in sub.received() if t == topic]
    assert payloads, f"nothing on {topic}"
    try:
        return json.loads(payloads[-1])
    except ValueError:
        return payloads[-1].decode()


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path / "broker", users={"gateway": FLEET_PASSWORD, "watcher": "watch-pw"}) as b:
        yield b.start()


@pytest.fixture
def meters() -> Any:
    with ServerThread([SimMeter(1, profiles()["eastron_sdm630"].points, three_phase)]) as server:
        yield server


def test_presence_health_and_the_last_will_when_killed(tmp_path: Path, broker: Mosquitto,
                                                      meters: ServerThread) -> None:
    sub = Subscriber(broker, topic="acme/fleet/#")
    base = "acme/fleet/plant-7"
    with Daemon(write_config(tmp_path, broker, meters.port, health_every="2s")).start() as d:
        _, online = wait_for(sub, lambda t, v: t == f"{base}/state" and v.get("state") == "online")
        assert online["gateway"] == "plant-7" and online["version"] and online["started"] and online["since"]
        _, health = wait_for(sub, lambda t, v: t == f"{base}/health" and
                             v["meters"]["incomer"]["availability"] == "online" and
                             v["meters"]["sim"]["availability"] == "online")
        assert health["meters"]["incomer"]["last_good_ms"] > 0
        assert set(health["sinks"]) == {"archive", "wattics"} and health["clock"]["trusted"] is True
        wait_for(sub, lambda t, v: t == f"{base}/meters/incomer/availability" and v == "online")

        # The platform that is down becomes the worst problem; its backlog is there.
        _, health = wait_for(sub, lambda t, v: t == f"{base}/health" and v["worst"] == "sink_stalled")
        assert health["status"] == "attention" and health["sinks"]["wattics"]["depth"] > 0
        assert health["backlog"] >= health["sinks"]["wattics"]["depth"]

        # A meter goes silent: offline, in the document and on its own topic; then back.
        meters.call(lambda s: s.silent.add(1))
        wait_for(sub, lambda t, v: t == f"{base}/meters/incomer/availability" and v == "offline")
        assert latest(sub, f"{base}/health")["meters"]["incomer"]["availability"] == "offline"
        meters.call(lambda s: s.silent.discard(1))
        wait_for(sub, lambda t, v: t == f"{base}/meters/incomer/availability" and v == "online")

        # Killed: the broker publishes the last will.
        killed = time.monotonic()
        d.kill()
        _, gone = wait_for(sub, lambda t, v: t == f"{base}/state" and v.get("state") == "offline", timeout=10)
        took = time.monotonic() - killed
        assert gone["reason"] == "lost", gone
        print(f"\nfrom SIGKILL to offline: {took:.2f} s")
        assert took < 5

    # What a newcomer to the broker finds: the state (offline) and the last health document, retained; the meters'
    # availability only until it expires (MQTT 5: 2.5 x health_every, 5 s here), never a stale "online" after.
    late = Subscriber(broker, topic="acme/fleet/#", client_id="late-watcher")
    wait_for(late, lambda t, v: t == f"{base}/state" and v.get("state") == "offline")
    wait_for(late, lambda t, v: t == f"{base}/health")
    late.close()
    time.sleep(6)
    later = Subscriber(broker, topic="acme/fleet/#", client_id="later-watcher")
    wait_for(later, lambda t, v: t == f"{base}/state" and v.get("state") == "offline")
    time.sleep(1)
    assert not [t for t, _, _ in later.received() if t.endswith("/availability")], later.received()
    later.close()

    everything = b"".join(p for _, p, _ in sub.received() + late.received())
    for secret in (FLEET_PASSWORD, SINK_PASSWORD):
        assert secret.encode() not in everything
    sub.close()


def test_a_clean_stop_says_offline_and_meters_unknown(tmp_path: Path, broker: Mosquitto,
                                                     meters: ServerThread) -> None:
    sub = Subscriber(broker, topic="acme/fleet/#")
    base = "acme/fleet/plant-7"
    with Daemon(write_config(tmp_path, broker, meters.port)).start() as d:
        wait_for(sub, lambda t, v: t == f"{base}/meters/sim/availability" and v == "online")
        code, took = d.stop()
        assert code == 0 and took < 10
    assert latest(sub, f"{base}/state")["state"] == "offline"
    assert latest(sub, f"{base}/state")["reason"] == "stopped"
    assert latest(sub, f"{base}/meters/sim/availability") == "unknown"
    assert latest(sub, f"{base}/meters/incomer/availability") == "unknown"
    sub.close()


def test_a_flapping_meter_costs_at_most_one_health_message_per_min_gap(tmp_path: Path, broker: Mosquitto,
                                                                      meters: ServerThread) -> None:
    sub = Subscriber(broker, topic="acme/fleet/#")
    base = "acme/fleet/plant-7"
    with Daemon(write_config(tmp_path, broker, meters.port)).start():
        wait_for(sub, lambda t, v: t == f"{base}/meters/incomer/availability" and v == "online")
        before = len(sub.received())
        started = time.monotonic()
        for _ in range(6):  # silent for 1.2 s, back for 1 s: the meter's availability flaps for 13 s
            meters.call(lambda s: s.silent.add(1))
            time.sleep(1.2)
            meters.call(lambda s: s.silent.discard(1))
            time.sleep(1.0)
        window = time.monotonic() - started
        msgs = sub.received()[before:]
    health = [m for m in msgs if m[0] == f"{base}/health"]
    incomer = [m for m in msgs if m[0] == f"{base}/meters/incomer/availability"]
    print(f"\n{window:.1f} s of flapping: {len(health)} health messages, {len(incomer)} availability messages")
    # One look per min_gap (1 s): one health message and one availability message at most per look (+1 for the
    # look in progress at either end).
    assert len(health) <= window / 1.0 + 2
    assert len(incomer) <= window / 1.0 + 2
    assert len(incomer) >= 4, "the meter did not flap: the test proves nothing"
    sub.close()


def test_a_fleet_broker_that_is_down_changes_nothing_else(tmp_path: Path, meters: ServerThread) -> None:
    port = free_port()  # nothing listens there
    broker = Mosquitto(tmp_path / "broker", users={"gateway": FLEET_PASSWORD, "watcher": "watch-pw"})
    path = write_config(tmp_path, broker, meters.port)
    path.write_text(path.read_text().replace(f"port: {broker.port}\n", f"port: {port}\n"))
    with Daemon(path).start() as d:
        d.wait_log(lambda e: e.get("event", "").startswith("fleet broker unreachable"), timeout=20)
        time.sleep(2)
        rows = read_jsonl(tmp_path / "archive.jsonl")
        assert {r["meter"] for r in rows} == {"incomer", "sim"}
        out = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(path), "--json"],
                             capture_output=True, text=True, timeout=30, check=True)
        report = json.loads(out.stdout)
        assert report["fleet"]["connected"] is False and report["fleet"]["last_error"]
        assert not report["tasks"]  # nothing failing: the fleet task waits for its broker
        # The broker comes up: presence follows, without a restart.
        broker.port = port
        broker._write_config()
        with broker.start():
            sub = Subscriber(broker, topic="acme/fleet/#")
            wait_for(sub, lambda t, v: t == "acme/fleet/plant-7/state" and v.get("state") == "online", timeout=70)
            sub.close()
        code, _ = d.stop()
        assert code == 0


def fleet_cli(broker: Mosquitto, tmp_path: Path, *extra: str) -> list[str]:
    pw = tmp_path / "watcher.pw"
    pw.write_text("watch-pw\n")
    return [sys.executable, "-m", "gateway", "fleet", "status", "--broker", f"127.0.0.1:{broker.port}", "--ca-file",
            str(broker.ca_file), "--username", "watcher", "--password-file", str(pw), "--prefix", "acme/fleet",
            *extra]


def test_the_fleet_view_agrees_with_what_happened(tmp_path: Path, broker: Mosquitto, meters: ServerThread) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write_config(tmp_path / "a", broker, meters.port)
    b = write_config(tmp_path / "b", broker, meters.port)
    b.write_text(b.read_text().replace("site: {name: plant-7}", "site: {name: plant-8}"))
    sub = Subscriber(broker, topic="acme/fleet/#")
    with Daemon(a).start(), Daemon(b).start() as db:
        for gid in ("plant-7", "plant-8"):
            wait_for(sub, lambda t, v, gid=gid: t == f"acme/fleet/{gid}/meters/sim/availability" and v == "online")
        watch = subprocess.Popen(fleet_cli(broker, tmp_path, "--watch"), stdout=subprocess.PIPE, text=True)
        try:
            db.kill()
            wait_for(sub, lambda t, v: t == "acme/fleet/plant-8/state" and v.get("state") == "offline")
            assert watch.stdout is not None
            lines: list[str] = []
            deadline = time.monotonic() + 15
            while not any("plant-8" in x and "OFFLINE (lost)" in x for x in lines):
                assert time.monotonic() < deadline, lines
                lines.append(watch.stdout.readline())
        finally:
            watch.terminate()
            watch.wait(10)
        assert lines[0].startswith("GATEWAY")

        out = subprocess.run(fleet_cli(broker, tmp_path, "--json", "--sort", "state"), capture_output=True,
                             text=True, timeout=30, check=True)
        rows = json.loads(out.stdout)
        assert [r["gateway"] for r in rows] == ["plant-8", "plant-7"]  # offline first
        dead, alive = rows
        assert dead["state"] == "offline" and dead["reason"] == "lost" and dead["worst"] is None
        assert set(dead["meters"].values()) == {"unknown"}, dead  # never a stale "online"
        assert alive["state"] == "online" and alive["version"] and alive["since"]
        assert alive["meters"] == {"incomer": "online", "sim": "online"} and alive["meters_online"] == 2
        assert alive["clock"] and isinstance(alive["backlog"], int)
        table = subprocess.run(fleet_cli(broker, tmp_path), capture_output=True, text=True, timeout=30, check=True)
        assert "plant-7" in table.stdout and "2/2 meters online" in table.stdout
        assert "OFFLINE (lost)" in table.stdout and "2 meters unknown" in table.stdout
    sub.close()


def test_the_fleet_view_says_plainly_when_it_cannot_look(tmp_path: Path, broker: Mosquitto) -> None:
    wrong = tmp_path / "wrong.pw"
    wrong.write_text("not-the-password")
    cmd = fleet_cli(broker, tmp_path)
    cmd[cmd.index("--password-file") + 1] = str(wrong)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("meter-gateway: fleet: the broker refused"), out.stderr
    assert "Traceback" not in out.stderr and "not-the-password" not in out.stderr
    out = subprocess.run([*fleet_cli(broker, tmp_path)[:-4], "--broker", f"127.0.0.1:{free_port()}"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot reach" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(("fleet", "expected"), [
    ("{host: central.example, tls: false, username: u, password: p}",
     "fleet.tls: the fleet broker is reached over TLS; plain MQTT only with allow_insecure: true"),
    ("{host: central.example}", "fleet.username: required (or a client certificate)"),
    ("{host: central.example, username: u, prefix: 'a/#'}", "fleet.prefix: 'a/#' cannot be a topic prefix"),
    ("{host: central.example, username: u, gateway_id: 'a/b'}", "fleet.gateway_id:"),
    ("{host: central.example, username: u, min_gap: 2m, health_every: 1m}", "fleet.min_gap: longer than health_every"),
    ("{host: central.example, username: u, ca_file: /nonexistent.pem}", "fleet.ca_file: '/nonexistent.pem' does not"),
    ("{host: central.example, username: u, remote_config: true, config_source: {url: 'http://cfg.example/a.yaml'}}",
     "fleet.config_source.url: must be https://"),
    ("{host: central.example, username: u, config_source: {url: 'https://cfg.example/a.yaml'}}",
     "fleet.config_source: needs remote_config: true"),
    ("{host: central.example, allow_insecure: true, remote_config: true}", "fleet.remote_config: needs TLS"),
])
def test_fleet_mistakes_are_one_line_each(tmp_path: Path, fleet: str, expected: str) -> None:
    from gateway.config import load_config
    from gateway.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(f"meters: [{{name: m, type: simulated}}]\nsinks: [{{name: out, type: stdout}}]\nfleet: {fleet}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert len(e.value.problems) == 1, e.value.problems
    assert e.value.problems[0].startswith(f"{path}:3: {expected}"), e.value.problems[0]


def test_a_secret_in_the_fleet_section_is_known_to_the_redactor(tmp_path: Path) -> None:
    from gateway.config import load_config

    pw = tmp_path / "fleet.pw"
    pw.write_text("fleet-file-s3cret\n")
    pw.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text("site: {name: plant-9}\nmeters: [{name: m, type: simulated}]\nsinks: [{name: out, type: stdout}]\n"
                    f"fleet: {{host: central.example, username: gw, password_file: {pw}}}\n")
    config = load_config(path)
    assert "fleet-file-s3cret" in config.secrets() and config.gateway_id == "plant-9"
    assert config.fleet is not None and config.fleet.effective_port == 8883


def test_the_fleet_view_takes_what_anyone_published_only_as_it_should_be(tmp_path: Path, broker: Mosquitto) -> None:
    """A shared broker: under the prefix, messages that no gateway sent. The view prints, and each field is of
    its type and length or empty."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="prankster")
    c.username_pw_set("watcher", "watch-pw")
    c.tls_set(ca_certs=str(broker.ca_file))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    junk = {
        "acme/fleet/list/state": b"[1, 2, 3]",
        "acme/fleet/list/health": b'{"backlog": "lots", "meters": [1], "problems": {"a": 1}, "clock": 7,'
                                  b' "worst": "' + b"\\u0007" * 5000 + b'"}',
        "acme/fleet/typed/state": b'{"state": "online", "version": 5, "since": {"x": 1}}',
        "acme/fleet/typed/health": b'{"backlog": 1e400, "meters": {"m": {"availability": "maybe"}, "n": 5},'
                                   b' "worst": "sink_stalled", "problems": [{"detail": 12}, "x"]}',
        "acme/fleet/typed/meters/q/availability": b"\xff\xfe",
        "acme/fleet/binary/state": b"\x00\x01\x02",
        "acme/fleet/deep/a/b/c/d": b"{}",
    }
    for topic, payload in junk.items():
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()
    out = subprocess.run(fleet_cli(broker, tmp_path, "--json"), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = {r["gateway"]: r for r in json.loads(out.stdout)}
    typed = rows["typed"]
    assert typed["state"] == "online" and typed["version"] is None and typed["since"] is None
    assert typed["backlog"] is None and typed["problems"] == [None]
    assert typed["meters"] == {"m": "unknown", "q": "unknown"}
    assert rows["list"]["state"] == "unknown" and rows["list"]["backlog"] is None
    for sort in ("name", "state", "backlog", "problem"):
        table = subprocess.run(fleet_cli(broker, tmp_path, "--sort", sort), capture_output=True, text=True, timeout=30)
        assert table.returncode == 0 and "Traceback" not in table.stderr, table.stderr
        assert "\x07" not in table.stdout
