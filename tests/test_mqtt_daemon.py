"""The daemon taking readings from a broker, killed with SIGKILL again and again while a device keeps publishing.

A message is acknowledged to the broker only once its reading is committed, and the session persists: every message
the broker accepted must reach the archive, in order, however the kills fall (between receiving and committing, or
between committing and acknowledging: then the broker delivers it again and the queue refuses the repeat).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.mosquitto import Mosquitto
from tests.test_mqtt_source import NumberedDevice


def test_every_message_the_broker_accepted_survives_sigkill_of_the_gateway(broker: Mosquitto, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
brokers:
  - {{name: site, host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}, username: gateway,
     password: {broker.users['gateway']}, client_id: gw-kill-test}}
subscriptions:
  - {{name: plc, broker: site, topic: plc/+/data, meter_level: 2, values: {{power_active_total: n}},
     timestamp: {{path: ts}}}}
meters: [{{name: plc1, type: mqtt}}]
sinks: [{{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}]
""")
    rng = random.Random(6)
    logs: list[dict[str, object]] = []
    device = NumberedDevice(broker, "device-kill", pause=0.005, timeout=5)
    kills = 0
    with Daemon(path).start() as first:
        # The session and its subscription exist from the first connection on: only then may the device publish
        # (a message the broker accepts before anybody subscribed is for nobody).
        first.wait_log(lambda e: e.get("event") == "broker connected")
        time.sleep(0.3)
        device.start()
        time.sleep(1.0)
        logs += first.events()
    for _ in range(12):
        with Daemon(path).start() as d:
            time.sleep(rng.uniform(0.2, 0.9))
            d.kill()
            kills += 1
            logs += d.events()
    device.stop()
    accepted = device.accepted
    with Daemon(path).start() as d:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = {int(r["values"]["power_active_total"]) for r in read_jsonl(tmp_path / "archive.jsonl")}
            if set(accepted) <= got:
                break
            time.sleep(0.2)
        rc, _ = d.stop()
        assert rc == 0
    rows = read_jsonl(tmp_path / "archive.jsonl")
    got_list = [int(r["values"]["power_active_total"]) for r in rows]
    missing = sorted(set(accepted) - set(got_list))
    # Readings a platform did not take (evicted by the queue's bounds) or the queue refused are counted and logged:
    # name them if anything is missing.
    noted = [e for e in logs if "refused" in str(e.get("event")) or "dropped" in str(e.get("event"))]
    assert not missing, f"{len(missing)} accepted messages never reached the archive: {missing[:20]}; {noted[:5]}"
    newest = -1
    seen: set[int] = set()
    for n in got_list:
        assert n > newest or n in seen, f"{n} arrived after {newest}: out of order"
        seen.add(n)
        newest = max(newest, n)
    assert len(accepted) > 300 and kills == 12
