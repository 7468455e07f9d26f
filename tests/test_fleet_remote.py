"""Remote configuration over the fleet broker (``fleet.remote_config``), against a real mosquitto with TLS and a
gateway daemon: applied (and the queue goes on), refused with every problem and nothing changed (a mistake, a
secret, a setting that would cut the gateway off), rolled back when it does not come up healthy, an apply a crash
interrupted rolled back at the next start, the local file winning once edited, a retained message not applied
twice."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.fleet.remote import RemoteConfig
from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.mosquitto import MOSQUITTO, Mosquitto, Subscriber, free_port
from tests.test_fleet import FLEET_PASSWORD, wait_for

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (CI installs it)")

BASE = "acme/fleet/plant-7"


def config_text(tmp_path: Path, broker: Mosquitto, *, meters: str = "sim", fleet_port: int | None = None,
                extra: str = "", remote: bool = True) -> str:
    lines = "\n".join(f"  - {{name: {m}, type: simulated, model: three_phase, interval: 1s}}" for m in meters.split())
    pw = tmp_path / "fleet.pw"
    pw.write_text(FLEET_PASSWORD + "\n")
    pw.chmod(0o600)
    return f"""\
site: {{name: plant-7}}
state_dir: {tmp_path / 'state'}
time_sync: ignore
queue: {{commit_interval: 500ms}}
meters:
{lines}
sinks:
  - {{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}
{extra}fleet:
  host: 127.0.0.1
  port: {fleet_port or broker.port}
  ca_file: {broker.ca_file}
  username: gateway
  password_file: {pw}
  prefix: acme/fleet
  min_gap: 1s
  health_every: 5s
  remote_config: {str(remote).lower()}
  apply_deadline: 6s
"""


class Publisher:
    def __init__(self, broker: Mosquitto) -> None:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="ops-console")
        c.username_pw_set("watcher", broker.users["watcher"])
        c.tls_set(ca_certs=str(broker.ca_file))
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c

    def push(self, text: str | bytes) -> str:
        payload = text.encode() if isinstance(text, str) else text
        self.client.publish(f"{BASE}/config/set", payload, qos=1, retain=True).wait_for_publish(5)
        return hashlib.sha256(payload).hexdigest()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def outcome(sub: Subscriber, digest: str, timeout: float = 30) -> dict[str, Any]:
    _, value = wait_for(sub, lambda t, v: t == f"{BASE}/config/state" and isinstance(v, dict)
                        and v.get("hash") == digest, timeout=timeout)
    return value  # type: ignore[no-any-return]


@pytest.fixture
def broker(tmp_path: Path) -> Any:
    with Mosquitto(tmp_path / "broker", users={"gateway": FLEET_PASSWORD, "watcher": "watch-pw"}) as b:
        yield b.start()


def test_applied_refused_and_rolled_back(tmp_path: Path, broker: Mosquitto) -> None:
    local = tmp_path / "config.yaml"
    local.write_text(config_text(tmp_path, broker))
    sub = Subscriber(broker, topic=f"{BASE}/#")
    ops = Publisher(broker)
    with Daemon(local).start() as d:
        wait_for(sub, lambda t, v: t == f"{BASE}/state" and v.get("state") == "online")

        # Applied: a second meter; the queue goes on (the first meter's readings continue, none again).
        applied = outcome(sub, ops.push(config_text(tmp_path, broker, meters="sim sim2")))
        assert applied["result"] == "applied" and applied["problems"] == [], applied
        time.sleep(2.5)
        rows = read_jsonl(tmp_path / "archive.jsonl")
        assert {"sim", "sim2"} <= {r["meter"] for r in rows}
        sim = [r["ts_ms"] for r in rows if r["meter"] == "sim"]
        assert sim == sorted(set(sim))
        active = tmp_path / "state/remote-config/active.yaml"
        assert "sim2" in active.read_text() and "sim2" not in local.read_text()

        # Refused, every problem at once, nothing changed.
        broken = config_text(tmp_path, broker, meters="sim sim3").replace("interval: 1s}", "interval: soon}", 1)
        broken = broken.replace("min_gap: 1s", "min_gap: 1s\n  colour: blue")
        refused = outcome(sub, ops.push(broken))
        assert refused["result"] == "refused" and len(refused["problems"]) == 2, refused
        assert all(p.startswith("config/set:") for p in refused["problems"])
        assert any("interval" in p for p in refused["problems"]) and any("colour" in p for p in refused["problems"])
        assert "sim3" not in active.read_text()

        # A secret travelling through the broker is refused, and not repeated.
        leaky = config_text(tmp_path, broker, meters="sim sim2", extra=(
            "  - {name: w, type: wattics, username: u, password: hunter2-Q7, data_points: [{id: e, meter: sim}]}\n"))
        refused = outcome(sub, ops.push(leaky))
        assert refused["result"] == "refused" and "a secret cannot come through the broker" in refused["problems"][0]
        assert "hunter2-Q7" not in json.dumps(refused)

        # Settings that would cut the gateway off from the fleet, or move its queue.
        for text, why in [(config_text(tmp_path, broker, remote=False), "fleet.remote_config: must stay true"),
                          (config_text(tmp_path, broker).replace(f"state_dir: {tmp_path / 'state'}",
                                                                 f"state_dir: {tmp_path / 'other'}"), "state_dir")]:
            refused = outcome(sub, ops.push(text))
            assert refused["result"] == "refused" and any(why in p for p in refused["problems"]), refused

        # Starts, but cannot reach the fleet broker: not healthy within the deadline, rolled back.
        unreachable = config_text(tmp_path, broker, meters="sim sim4", fleet_port=free_port())
        started = time.monotonic()
        rolled = outcome(sub, ops.push(unreachable), timeout=60)
        assert rolled["result"] == "rolled_back" and "not healthy within 6 s" in rolled["problems"][0], rolled
        assert time.monotonic() - started < 30
        assert "sim2" in active.read_text() and "sim4" not in active.read_text()
        wait_for(sub, lambda t, v: t == f"{BASE}/state" and v.get("state") == "online")
        rows_before = len([r for r in read_jsonl(tmp_path / "archive.jsonl") if r["meter"] == "sim2"])
        time.sleep(2.5)
        assert len([r for r in read_jsonl(tmp_path / "archive.jsonl") if r["meter"] == "sim2"]) > rows_before
        code, _ = d.stop()
        assert code == 0

    # Started again: the applied configuration runs, and the retained (rolled back) message is not tried again.
    with Daemon(local).start() as d:
        time.sleep(3)
        assert not any(e.get("event", "").startswith("remote configuration") for e in d.events()), d.events()
        rows = read_jsonl(tmp_path / "archive.jsonl")
        assert "sim2" in {r["meter"] for r in rows[-6:]}

        # The technician edits the local file and reloads: the local file wins, and config/state says so.
        local.write_text(config_text(tmp_path, broker, meters="sim local1"))
        d.signal(signal.SIGHUP)
        _, state = wait_for(sub, lambda t, v: t == f"{BASE}/config/state" and v.get("result") == "set_aside")
        assert "edited" in state["problems"][0]
        time.sleep(2.5)
        assert "local1" in {r["meter"] for r in read_jsonl(tmp_path / "archive.jsonl")[-6:]}
        d.stop()
    ops.close()
    sub.close()


def test_an_apply_a_crash_interrupted_is_rolled_back_at_the_next_start(tmp_path: Path) -> None:
    """The new configuration took the process down (or the power went) between its swap and its health: at the
    next start the previous file runs again, and the outcome waits to be announced."""
    local = tmp_path / "config.yaml"
    local.write_text("meters: [{name: m, type: simulated}]\nsinks: [{name: out, type: stdout}]\n")
    remote = RemoteConfig(local, tmp_path / "state")
    remote.dir.mkdir(parents=True)
    (remote.dir / "previous.yaml").write_text("# applied before\n" + local.read_text())
    remote.active.write_text("meters: [{name: bad, type: simulated}]\nsinks: [{name: out, type: stdout}]\n")
    local_digest = hashlib.sha256(local.read_bytes()).hexdigest()
    remote.state_file.write_text(json.dumps({"hash": "abc", "result": "applying", "local": local_digest,
                                             "was_local": False}))
    assert remote.choose() == remote.active
    assert remote.active.read_text().startswith("# applied before")
    announced = remote.take_announcement()
    assert announced is not None and announced.result == "rolled_back" and announced.digest == "abc"
    assert remote.take_announcement() is None

    # Interrupted while the local file ran before: the local file runs again.
    remote.state_file.write_text(json.dumps({"hash": "def", "result": "applying", "local": local_digest,
                                             "was_local": True}))
    assert remote.choose() == local and not remote.active.exists()


def test_a_configuration_fetched_over_https_with_its_etag(tmp_path: Path, broker: Mosquitto) -> None:
    from http.server import BaseHTTPRequestHandler

    from tests.helpers.https import HttpsServer, reply

    token = "cfg-token-Vb81"
    served = {"body": config_text(tmp_path, broker, meters="sim fetched"), "asked": [], "not_modified": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served["body"]
            assert isinstance(body, str)
            etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:16] + '"'
            served["asked"].append((self.headers.get("Authorization"), self.headers.get("If-None-Match")))  # type: ignore[attr-defined]
            if self.headers.get("Authorization") != f"Bearer {token}":
                reply(self, 401, "no")
            elif self.headers.get("If-None-Match") == etag:
                served["not_modified"] += 1  # type: ignore[operator]
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
            else:
                reply(self, 200, body, {"ETag": etag})

        def log_message(self, *args: object) -> None:
            pass

    server = HttpsServer(tmp_path / "https", "config-ca.pem")
    server.serve(Handler)
    token_file = tmp_path / "cfg.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    source = (f"  config_source: {{url: 'https://127.0.0.1:{server.port}/plant-7.yaml', every: 1s,"
              f" ca_file: {server.ca_file}, token_file: {token_file}}}\n")
    local = tmp_path / "config.yaml"
    local.write_text(config_text(tmp_path, broker) + source)
    # What the server serves names the same source (it must stay reachable to stay in charge).
    served["body"] = str(served["body"]) + source
    sub = Subscriber(broker, topic=f"{BASE}/#")
    try:
        with Daemon(local).start() as d:
            digest = hashlib.sha256(str(served["body"]).encode()).hexdigest()
            assert outcome(sub, digest)["result"] == "applied"
            time.sleep(3)
            assert "fetched" in {r["meter"] for r in read_jsonl(tmp_path / "archive.jsonl")[-6:]}
            assert served["not_modified"] >= 1  # asked again with its ETag: nothing new, nothing applied
            assert sum(1 for e in d.events() if e.get("event") == "remote configuration applied") == 1
            assert token not in "".join(d.raw)
            d.stop()
    finally:
        server.shutdown()
        sub.close()
    assert {auth for auth, _ in served["asked"]} == {f"Bearer {token}"}  # type: ignore[attr-defined]
