"""The fleet at scale on one machine: many gateway processes against one mosquitto.

    python tests/bench/fleet_bench.py            # 50 gateways: kill 10, stop 10, push a configuration to 20
    python tests/bench/fleet_bench.py --quick    # 10 gateways: kill 2, stop 2, push to 4 (CI)

Each gateway is a real daemon process (``python -m gateway run``) with three simulated meters (every 2 s), a file
sink and a ``fleet:`` section (TLS, a password, remote configuration on), against one mosquitto started here. The
run: start them all and wait until every one is ``online``; measure the broker's messages per gateway and each
gateway's memory over a steady window; SIGKILL some (the time from the kill to the broker's ``offline`` by the last
will, as a subscriber sees it); stop some cleanly (SIGTERM: ``offline``, reason ``stopped``); push a new
configuration, retained, to others: most add a meter (applied), some are broken (refused, nothing changed), some
start but cannot reach the fleet broker (rolled back after ``apply_deadline``). Then ``meter-gateway fleet status
--json`` must agree with what happened, gateway by gateway. Prints a table and, last, one JSON object; exits 1 on a
disagreement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers.mosquitto import Mosquitto, free_port

PREFIX = "bench/fleet"
PASSWORD = "fleet-bench-pw"


def config(where: Path, gid: str, broker: Mosquitto, meters: int = 3, fleet_port: int | None = None) -> str:
    pw = where / "fleet.pw"
    if not pw.exists():
        pw.write_text(PASSWORD + "\n")
        pw.chmod(0o600)
    lines = "\n".join(f"  - {{name: m{i}, type: simulated, model: three_phase, interval: 2s, seed: {i}}}"
                      for i in range(meters))
    return f"""\
site: {{name: {gid}}}
state_dir: {where / 'state'}
time_sync: ignore
meters:
{lines}
sinks:
  - {{name: archive, type: file, path: {where / 'archive.jsonl'}, fsync: false}}
fleet:
  host: 127.0.0.1
  port: {fleet_port or broker.port}
  ca_file: {broker.ca_file}
  username: gateway
  password_file: {pw}
  prefix: {PREFIX}
  min_gap: 2s
  health_every: 30s
  remote_config: true
  apply_deadline: 10s
"""


class Watcher:
    """Every message under the prefix, with the time it arrived."""

    def __init__(self, broker: Mosquitto) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[float, str, bytes]] = []
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-watcher")
        c.username_pw_set("watcher", broker.users["watcher"])
        c.tls_set(ca_certs=str(broker.ca_file))
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"{PREFIX}/#", qos=1)
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c
        self.ready.wait(10)

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def latest(self, topic: str) -> tuple[float, Any] | None:
        with self.lock:
            for at, t, payload in reversed(self.messages):
                if t == topic:
                    try:
                        return at, json.loads(payload)
                    except ValueError:
                        return at, payload.decode()
        return None

    def count_since(self, since: float) -> int:
        with self.lock:
            return sum(1 for at, _, _ in self.messages if at >= since)

    def kinds_since(self, since: float) -> dict[str, int]:
        """Messages by kind (state, health, availability, config) since then."""
        out: dict[str, int] = {}
        with self.lock:
            for at, topic, _ in self.messages:
                if at >= since:
                    kind = topic.split("/")[-1] if not topic.endswith("/availability") else "availability"
                    out[kind] = out.get(kind, 0) + 1
        return out

    def wait(self, what: str, pred: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet bench: timed out waiting for {what}")
            time.sleep(0.2)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--gateways", type=int)
    args = p.parse_args()
    n = args.gateways or (10 if args.quick else 50)
    kill, stop = max(1, n // 5), max(1, n // 5)
    push = max(4, (2 * n) // 5)
    broken, unhealthy = max(1, push // 4), max(1, push // 10)
    good = push - broken - unhealthy
    steady_s = 12 if args.quick else 65  # health_every is 30 s: the full form sees two of its messages per gateway

    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    with Mosquitto(tmp / "broker", users={"gateway": PASSWORD, "watcher": "watch-pw"}) as broker:
        broker.start()
        watcher = Watcher(broker)
        gids = [f"gw-{i:02d}" for i in range(n)]
        procs: dict[str, subprocess.Popen[bytes]] = {}
        env = {**os.environ, "METER_GATEWAY_LOG_LEVEL": "warning"}
        started = time.monotonic()
        for gid in gids:
            where = tmp / gid
            where.mkdir()
            (where / "config.yaml").write_text(config(where, gid, broker))
            procs[gid] = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(where / "config.yaml")],
                                          env=env, stdout=subprocess.DEVNULL, stderr=open(where / "log", "wb"))  # noqa: SIM115
        try:
            def state(gid: str) -> Any:
                found = watcher.latest(f"{PREFIX}/{gid}/state")
                return found[1] if found else None

            watcher.wait("every gateway online", lambda: all((state(g) or {}).get("state") == "online"
                                                             for g in gids), 120 + 3 * n)
            all_online_s = time.monotonic() - started

            def meters_online(gid: str) -> bool:
                found = watcher.latest(f"{PREFIX}/{gid}/health")
                return bool(found) and isinstance(found[1], dict) and all(
                    m.get("availability") == "online" for m in found[1]["meters"].values())

            # The steady window starts once every meter has given readings (their first ones change availability).
            watcher.wait("every meter online", lambda: all(meters_online(g) for g in gids), 60)
            time.sleep(3)
            window_start = time.monotonic()
            time.sleep(steady_s)
            msgs_per_gw_s = watcher.count_since(window_start) / (time.monotonic() - window_start) / n
            kinds = watcher.kinds_since(window_start)
            rss = [rss_mb(procs[g].pid) for g in gids]

            # Killed: the last will.
            killed = gids[:kill]
            kill_at = {}
            for gid in killed:
                procs[gid].send_signal(signal.SIGKILL)
                kill_at[gid] = time.monotonic()
            watcher.wait("offline after the kills", lambda: all((state(g) or {}).get("state") == "offline"
                                                                for g in killed), 60)
            to_offline = []
            for gid in killed:
                found = watcher.latest(f"{PREFIX}/{gid}/state")
                assert found is not None
                to_offline.append(found[0] - kill_at[gid])
            # Stopped cleanly.
            stopped = gids[kill:kill + stop]
            for gid in stopped:
                procs[gid].send_signal(signal.SIGTERM)
            for gid in stopped:
                procs[gid].wait(30)
            watcher.wait("offline after the stops", lambda: all((state(g) or {}).get("reason") == "stopped"
                                                                for g in stopped), 30)

            # Configurations pushed, retained, to some of the rest.
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-ops")
            pub.username_pw_set("watcher", broker.users["watcher"])
            pub.tls_set(ca_certs=str(broker.ca_file))
            pub.connect("127.0.0.1", broker.port)
            pub.loop_start()
            alive = gids[kill + stop:]
            targets = alive[:push]
            expected: dict[str, tuple[str, str]] = {}
            for i, gid in enumerate(targets):
                where = tmp / gid
                if i < good:
                    text, result = config(where, gid, broker, meters=4), "applied"
                elif i < good + broken:
                    text, result = config(where, gid, broker, meters=4).replace("interval: 2s", "interval: sometimes",
                                                                                1), "refused"
                else:
                    text, result = config(where, gid, broker, meters=4, fleet_port=free_port()), "rolled_back"
                digest = hashlib.sha256(text.encode()).hexdigest()
                expected[gid] = (digest, result)
                pub.publish(f"{PREFIX}/{gid}/config/set", text.encode(), qos=1, retain=True).wait_for_publish(10)

            def decided() -> bool:
                for gid, (digest, _) in expected.items():
                    found = watcher.latest(f"{PREFIX}/{gid}/config/state")
                    if not found or not isinstance(found[1], dict) or found[1].get("hash") != digest:
                        return False
                return True

            pushed_at = time.monotonic()
            watcher.wait("every pushed configuration decided", decided, 120)
            decided_s = time.monotonic() - pushed_at
            # A rolled-back gateway reconnects with its old settings; the others publish their new meter.
            watcher.wait("health after the pushes", lambda: all(
                (state(g) or {}).get("state") == "online" for g in alive), 60)
            time.sleep(5)

            view = subprocess.run(
                [sys.executable, "-m", "gateway", "fleet", "status", "--json", "--broker", f"127.0.0.1:{broker.port}",
                 "--ca-file", str(broker.ca_file), "--username", "watcher", "--password-file",
                 str(_pw(tmp, "watch-pw")), "--prefix", PREFIX, "--wait", "3"],
                capture_output=True, text=True, timeout=60, check=True)
            rows = {r["gateway"]: r for r in json.loads(view.stdout)}
            problems = []
            for gid in gids:
                r = rows.get(gid)
                if r is None:
                    problems.append(f"{gid}: missing from the fleet view")
                    continue
                want = ("offline", "lost") if gid in killed else ("offline", "stopped") if gid in stopped \
                    else ("online", None)
                if (r["state"], r["reason"]) != want:
                    problems.append(f"{gid}: {r['state']}/{r['reason']}, expected {want}")
                if r["state"] != "online" and set(r["meters"].values()) - {"unknown"}:
                    problems.append(f"{gid}: offline but meters {r['meters']}")
                outcome = watcher.latest(f"{PREFIX}/{gid}/config/state")
                got = outcome[1].get("result") if outcome and isinstance(outcome[1], dict) else None
                if gid in expected and got != expected[gid][1]:
                    problems.append(f"{gid}: config {got}, expected {expected[gid][1]}")
                meters = 4 if gid in expected and expected[gid][1] == "applied" else 3
                if r["state"] == "online" and len(r["meters"]) != meters:
                    problems.append(f"{gid}: {len(r['meters'])} meters in its health, expected {meters}")
            pub.disconnect()
            pub.loop_stop()
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            watcher.client.disconnect()
            watcher.client.loop_stop()

    results = {"alive": len(alive) - 0, "killed": kill, "stopped": stop, "pushed": push,
               "applied": good, "refused": broken, "rolled_back": unhealthy}
    out = {
        "bench": "fleet", "gateways": n, **results,
        "all_online_s": round(all_online_s, 1),
        "broker_msgs_per_gateway_per_s": round(msgs_per_gw_s, 3), "steady_messages_by_kind": kinds,
        "rss_mb_median": round(statistics.median(rss), 1), "rss_mb_max": round(max(rss), 1),
        "kill_to_offline_s_median": round(statistics.median(to_offline), 2),
        "kill_to_offline_s_max": round(max(to_offline), 2),
        "pushed_decided_s": round(decided_s, 1),
        "view_agrees": not problems,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(f"{n} gateway processes, 3 simulated meters each, against one mosquitto (TLS); {out['machine']}")
    print(f"  all online after start:          {out['all_online_s']} s")
    print(f"  broker messages per gateway:     {out['broker_msgs_per_gateway_per_s']} /s (steady, {steady_s} s:"
          f" {', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    print(f"  memory per gateway (RSS):        median {out['rss_mb_median']} MB, max {out['rss_mb_max']} MB")
    print(f"  SIGKILL to offline (last will):  median {out['kill_to_offline_s_median']} s,"
          f" max {out['kill_to_offline_s_max']} s ({kill} killed)")
    print(f"  configurations pushed:           {push}: {good} applied, {broken} refused, {unhealthy} rolled back,"
          f" all decided in {out['pushed_decided_s']} s")
    print(f"  fleet view agrees:               {'yes' if not problems else 'NO'}")
    for line in problems:
        print(f"    {line}")
    print(json.dumps(out))
    return 1 if problems else 0


def _pw(tmp: Path, password: str) -> Path:
    path = tmp / "watcher.pw"
    path.write_text(password + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
