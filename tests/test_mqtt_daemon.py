"""The daemon taking readings from a broker, killed with SIGKILL again and again while a device keeps publishing.

A message is acknowledged to the broker only once its reading is committed, and the session persists: every message
the broker accepted must reach the archive, in order, however the kills fall (between receiving and committing, or
between committing and acknowledging: then the broker delivers it again and the queue refuses the repeat).
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

from tests.helpers.daemon import Daemon, read_jsonl
from tests.helpers.mosquitto import Mosquitto
from tests.test_mqtt_source import Publisher

BASE = 1_782_907_200


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
    accepted: list[int] = []
    done = threading.Event()

    def device() -> None:
        pub = Publisher(broker, "device-kill")
        i = 0
        while not done.is_set():
            try:
                if pub.publish("plc/plc1/data", json.dumps({"n": i, "ts": BASE + i}), timeout=5):
                    accepted.append(i)
            except RuntimeError:
                pass
            i += 1
            time.sleep(0.005)
        pub.close()

    rng = random.Random(6)
    thread = threading.Thread(target=device)
    kills = 0
    with Daemon(path).start():
        thread.start()
        time.sleep(1.0)
    for _ in range(6):
        with Daemon(path).start() as d:
            time.sleep(rng.uniform(0.3, 1.5))
            d.kill()
            kills += 1
    done.set()
    thread.join(10)
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
    assert not missing, f"{len(missing)} accepted messages never reached the archive: {missing[:20]}"
    newest = -1
    seen: set[int] = set()
    for n in got_list:
        assert n > newest or n in seen, f"{n} arrived after {newest}: out of order"
        seen.add(n)
        newest = max(newest, n)
    assert len(accepted) > 300 and kills == 6
