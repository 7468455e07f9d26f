"""The daemon with a Voltaware sink, killed with SIGKILL while the broker restarts too: nothing lost."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.daemon import Daemon, read_jsonl, still_queued
from tests.helpers.mosquitto import Mosquitto
from tests.helpers.voltaware_api_emulator import Registrar, VoltawareApiEmulator

CONFIG = """\
state_dir: {state}
queue: {{commit_interval: 1s}}  # these runs last seconds: readings reach the sinks within one
meters:
  - {{name: a, type: simulated, interval: 100ms}}
sinks:
  - name: voltaware
    type: voltaware
    host: 127.0.0.1
    port: {port}
    ca_file: {ca}
    username: gateway
    password_file: {state}/mqtt.pw
    client_id: fault-gateway
    backoff_base: 50ms
    backoff_cap: 500ms
    ack_timeout: 2s
    payload: {{device: "{{device_id}}", at: "{{ts_ms}}", w: "{{power_active_total}}"}}
    api: {{url: "{api}", client_id: gw-client, client_secret: api-s3cret, ca_file: {api_ca},
           retry_base: 200ms, retry_cap: 1s}}
    devices:
      - meter: a
        device_id: dev-a
        metadata: {{geolocation: {{latitude: 53.35, longitude: -6.26}}}}
  - name: archive
    type: file
    path: {state}/archive.jsonl
"""


def test_sigkill_of_the_gateway_and_restarts_of_the_broker_lose_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    api = VoltawareApiEmulator(tmp_path / "api").start()
    sub = Registrar(broker, api)
    (tmp_path / "mqtt.pw").write_text("mqtt-s3cret\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(state=tmp_path, port=broker.port, ca=broker.ca_file, api=api.url,
                                 api_ca=api.ca_file))
    for round_ in range(8):
        with Daemon(cfg).start() as d:
            time.sleep(rng.uniform(0.3, 1.0))
            if round_ % 2:
                broker.stop(signal.SIGTERM)  # the broker restarts under the running gateway
                time.sleep(rng.uniform(0.2, 0.8))
                broker.start()
                time.sleep(rng.uniform(0.2, 0.6))
            d.kill()
    with Daemon(cfg).start() as d:
        started_ms = time.time() * 1000
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            archived = {r["ts_ms"] for r in read_jsonl(tmp_path / "archive.jsonl")}
            got = {json.loads(p)["at"] for _, p, _ in sub.received()}
            # Everything archived has arrived, and this clean run delivered something itself (for verify).
            if archived and archived <= got and max(got) > started_ms:
                break
            time.sleep(0.2)
        assert d.stop()[0] == 0
    arrivals = [json.loads(p)["at"] for _, p, _ in sub.received()]
    archived = {r["ts_ms"] for r in read_jsonl(tmp_path / "archive.jsonl")}
    waiting = still_queued(tmp_path, "voltaware").get("voltaware#dev-a", set())
    missing = archived - set(arrivals) - waiting
    assert not missing, f"{len(missing)} readings never reached the broker's subscriber, e.g. {sorted(missing)[:3]}"
    firsts = list(dict.fromkeys(arrivals))
    assert firsts == sorted(firsts), "a new reading arrived after a newer one"
    duplicates = len(arrivals) - len(firsts)
    assert all(q == 2 for _, _, q in sub.received())
    assert api.metadata[("dev-a", "geolocation")] == {"latitude": 53.35, "longitude": -6.26}
    print(f"\n8 gateway kills, 4 broker restarts: {len(firsts)} readings delivered, {duplicates} duplicates, 0 lost")

    p = subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "voltaware / dev-a (meter a)" in p.stdout
    assert "metadata geolocation: in place" in p.stdout
    assert '  gateway:   {"device":"dev-a","at":' in p.stdout
    assert "api-s3cret" not in p.stdout + p.stderr and "mqtt-s3cret" not in p.stdout + p.stderr
    sub.close()
    api.stop()
