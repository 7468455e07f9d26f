"""The three programs of the peers benchmark, each set up as a user of it would set it up for the footprint site
(32 SDM630 meters on Modbus TCP, read every second; one platform over HTTPS, one over MQTT with TLS).

Every program reads the same 35 values of each meter and sends them on; what each sends, and where, follows the
program's own habits (documented in docs/performance.md, "Against the peers", so a reader can judge the fairness):

- meter-gateway: the footprint benchmark's configuration (Wattics electrical packets, Voltaware events, QoS 2).
- ThingsBoard IoT Gateway: its Modbus connector with one slave per meter and one timeseries entry per value (as its
  documentation and examples do), SQLite storage (the durable choice), its MQTT upstream on the site's TLS broker
  (ThingsBoard's own gateway API topics), everything else at the defaults of the configuration it ships.
- Node-RED with node-red-contrib-modbus: one Modbus client node for the line, three Modbus-Read nodes per meter
  (the same three blocks meter-gateway reads), a join per meter, a function that builds the Wattics packet and the
  MQTT event, an HTTP request node (basic auth, TLS with the site's CA) and an MQTT out node (QoS 2, TLS).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, ClassVar

from gateway.platforms.modbus.config import TCP_MAX_GAP
from gateway.platforms.modbus.plan import Planner
from gateway.platforms.wattics.sink import electrical_keys
from tests.helpers.daemon import Daemon
from tests.helpers.modbus import profiles
from tests.helpers.mosquitto import Subscriber, free_port
from tests.soak.site import PROFILE, Site

#: Pinned: what was measured is what a reader installs.
THINGSBOARD = "thingsboard-gateway==3.8.5"
NODE_RED = "node-red@4.1.15"
#: The newest release installable from the npm registry alone: 5.45 and later fetch their Modbus library
#: (@openp4nr/modbus-serial) from the vendor's own server, outside the registry.
NODE_RED_MODBUS = "node-red-contrib-modbus@5.23.3"


def install(prefix: Path) -> None:
    """Install both peers under ``prefix`` (skipped where already there)."""
    tb = prefix / "thingsboard"
    if not (tb / "bin" / "thingsboard-gateway").exists():
        subprocess.run([sys.executable, "-m", "venv", str(tb)], check=True)
        subprocess.run([str(tb / "bin" / "pip"), "install", "-q", THINGSBOARD], check=True)
    nr = prefix / "node-red"
    if not (nr / "node_modules" / "node-red" / "red.js").exists():
        nr.mkdir(parents=True, exist_ok=True)
        if not (nr / "package.json").exists():
            (nr / "package.json").write_text('{"name": "peers-node-red", "private": true}\n')
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(nr), NODE_RED, NODE_RED_MODBUS],
                       check=True)


def blocks() -> list[tuple[int, int]]:
    """(address, count) of the input-register blocks meter-gateway reads from an SDM630: the same requests for
    Node-RED, so the Modbus traffic is the same."""
    return [(b.address, b.count) for b in Planner(profiles()[PROFILE].points, TCP_MAX_GAP).blocks]


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


class Program:
    name = ""
    setup = ""

    def __init__(self, site: Site, workdir: Path, prefix: Path) -> None:
        self.site, self.dir, self.prefix = site, workdir, prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.output: deque[str] = deque(maxlen=100)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        raise NotImplementedError

    def delivered(self) -> int:
        """Readings the platform has received from it so far, duplicates included."""
        return len(self.received())

    def received(self) -> list[tuple[str, int]]:
        """(meter, reading time in ms) of every reading the platform received from it, in arrival order: Wattics
        packets for meter-gateway and Node-RED, entries of telemetry messages for the ThingsBoard gateway."""
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL, as a crash: the whole process group."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def relaunch(self) -> None:
        """Start again after a kill, on the same files (its storage, its configuration)."""
        self._popen(self._argv, self._env)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def _popen(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        """What the program prints goes to a pipe drained by the harness, as a service's output goes to journald:
        the bytes written that are measured are the program's own files (its storage, its log files)."""
        self._argv, self._env = argv, env
        self.proc = subprocess.Popen(argv, cwd=self.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()

    def _drain(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.output.append(line.decode(errors="replace"))

    def tail(self) -> str:
        return "".join(self.output)[-3000:]


class MeterGateway(Program):
    name = "meter-gateway"
    setup = "Wattics + Voltaware (MQTT, QoS 2), SQLite queue"

    def start(self) -> None:
        self._base = len(self.site.wattics.arrivals())
        self.relaunch()

    def relaunch(self) -> None:
        # as a service runs it: log lines at info (the soak and the footprint benchmark log at debug)
        d = Daemon(self.site.config, args=("--log-level", "info")).start()
        self.proc = d.proc  # type: ignore[assignment]
        self._daemon = d

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(20)

    def received(self) -> list[tuple[str, int]]:
        return [(m, ms) for _, m, ms in self.site.wattics_arrivals()[self._base:]]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._daemon.stop()


class SessionLimits(Subscriber):
    """ThingsBoard's side of the one exchange its gateway waits for before it sends anything: on connect the gateway
    asks for its session limits (an RPC ``getSessionLimits`` on ``v1/devices/me/rpc/request/N``) and holds its
    telemetry until the answer comes. The answer here sets no rate limit (the most favourable one for the peer);
    its shape is ThingsBoard's (``maxPayloadSize``, ``maxInflightMessages``, ``rateLimits``, ``gatewayRateLimits``)."""

    ANSWER: ClassVar[dict[str, Any]] = {"maxPayloadSize": 65536, "maxInflightMessages": 100,
              "rateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""},
              "gatewayRateLimits": {"messages": "", "telemetryMessages": "", "telemetryDataPoints": ""}}

    def __init__(self, site: Site) -> None:
        super().__init__(site.broker, topic="v1/devices/me/rpc/request/+", client_id="peers-tb-server")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        try:
            method = json.loads(msg.payload).get("method")
        except (ValueError, AttributeError):
            return
        if method == "getSessionLimits":
            n = msg.topic.rsplit("/", 1)[1]
            client.publish(f"v1/devices/me/rpc/response/{n}", json.dumps(self.ANSWER), qos=1)


class ThingsBoard(Program):
    name = "ThingsBoard IoT Gateway"
    setup = "Modbus connector, SQLite storage, MQTT upstream (TLS)"

    def start(self) -> None:
        site = self.site
        shipped = self.prefix / "thingsboard" / "lib"
        conf_src = next(shipped.glob("python3*/site-packages/thingsboard_gateway/config"))
        conf = self.dir / "config"
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(conf_src, conf)
        main = json.loads((conf / "tb_gateway.json").read_text())
        main["thingsboard"].update({
            "host": "127.0.0.1", "port": site.broker.port, "remoteConfiguration": False,
            "security": {"type": "usernamePassword", "clientId": "peers-thingsboard", "username": "gateway",
                         "password": site.broker.users["gateway"], "caCert": str(site.broker.ca_file)},
        })
        main["storage"] = {"type": "sqlite", "data_file_path": str(self.dir / "data") + "/",
                           "messages_ttl_check_in_hours": 1, "messages_ttl_in_days": 7}
        main["connectors"] = [{"type": "modbus", "name": "Meters", "configuration": "modbus.json"}]
        (conf / "tb_gateway.json").write_text(json.dumps(main, indent=2))
        points = profiles()[PROFILE].points
        slaves = [{
            "host": "127.0.0.1", "port": site.tcp.port, "type": "tcp", "method": "socket", "unitId": unit,
            "deviceName": name, "deviceType": "SDM630", "timeout": 1, "byteOrder": "BIG", "wordOrder": "BIG",
            "retries": True, "retryOnEmpty": True, "retryOnInvalid": True, "pollPeriod": 1000,
            "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 30000,
            "attributes": [], "attributeUpdates": [], "rpc": [],
            "timeseries": [{"tag": p.quantity.value, "type": "32float", "functionCode": 4, "objectsCount": 2,
                            "address": p.address} for p in points],
        } for name, _, unit in site.meters()]
        (conf / "modbus.json").write_text(json.dumps({"master": {"slaves": slaves}}, indent=2))
        self.watcher = Subscriber(site.broker, topic="v1/gateway/telemetry", client_id="peers-tb-watcher")
        self.server = SessionLimits(site)
        self._popen([str(self.prefix / "thingsboard" / "bin" / "thingsboard-gateway")],
                    env={"TB_GW_CONFIG_DIR": str(conf)})

    def received(self) -> list[tuple[str, int]]:
        out = []
        for _, payload, _ in self.watcher.received():
            try:
                body = json.loads(payload)
            except ValueError:
                continue
            for device, entries in body.items() if isinstance(body, dict) else ():
                for e in entries if isinstance(entries, list) else [entries]:
                    out.append((device, int(e.get("ts", 0)) if isinstance(e, dict) else 0))
        return out

    def stop(self) -> None:
        super().stop()
        self.watcher.close()
        self.server.close()


FUNCTION = """\
const keys = %(keys)s;
const f = (regs, i) => { const b = Buffer.alloc(4); b.writeUInt16BE(regs[i], 0); b.writeUInt16BE(regs[i + 1], 2);
                         return b.readFloatBE(0); };
const now = new Date();
const packet = {id: "e-" + msg.topic, tsISO8601: now.toISOString().replace("Z", "+00:00")};
for (const [key, block, offset, scale] of keys) {
    const regs = msg.payload["b" + block];
    if (regs) packet[key] = f(regs, offset) * scale;
}
const ev = msg.payload["b0"] ? {device: msg.topic, at: now.getTime(), v: f(msg.payload["b0"], 0),
                                e: f(msg.payload["b0"], %(energy)d) * 1000} : null;
return [{payload: packet, headers: {"content-type": "application/json"}},
        ev && {topic: "meters/" + msg.topic + "/events", payload: JSON.stringify(ev)}];
"""


class NodeRed(Program):
    name = "Node-RED + node-red-contrib-modbus"
    setup = "Modbus-Read nodes, HTTP request + MQTT out (TLS), no persistence"

    def start(self) -> None:
        site = self.site
        bl = blocks()
        points = profiles()[PROFILE].points
        where = {p.quantity: p for p in points}

        def locate(address: int) -> tuple[int, int]:
            for i, (a, c) in enumerate(bl):
                if a <= address < a + c:
                    return i, address - a
            raise ValueError(address)

        keys = []
        for key, q in electrical_keys(frozenset(where)):
            i, off = locate(where[q].address)
            keys.append([key, i, off, where[q].scale])
        energy = next(p.address for p in points if p.quantity.value == "energy_import_total")
        func = FUNCTION % {"keys": json.dumps(keys), "energy": energy}
        nodes: list[dict[str, Any]] = [
            {"id": "tab", "type": "tab", "label": "meters"},
            {"id": "client", "type": "modbus-client", "name": "line", "clienttype": "tcp", "bufferCommands": True,
             "stateLogEnabled": False, "queueLogEnabled": False, "failureLogEnabled": True, "tcpHost": "127.0.0.1",
             "tcpPort": str(site.tcp.port), "tcpType": "DEFAULT", "unit_id": "1", "commandDelay": "1",
             "clientTimeout": "1000", "reconnectOnTimeout": True, "reconnectTimeout": "2000",
             "parallelUnitIdsAllowed": False},
            {"id": "tls-http", "type": "tls-config", "name": "wattics", "cert": "", "key": "",
             "ca": str(site.wattics.ca_file), "verifyservercert": True},
            {"id": "tls-mqtt", "type": "tls-config", "name": "voltaware", "cert": "", "key": "",
             "ca": str(site.broker.ca_file), "verifyservercert": True},
            {"id": "broker", "type": "mqtt-broker", "name": "voltaware", "broker": "127.0.0.1",
             "port": str(site.broker.port), "tls": "tls-mqtt", "clientid": "peers-node-red", "autoConnect": True,
             "usetls": True, "protocolVersion": "4", "keepalive": "60", "cleansession": True},
            {"id": "http", "type": "http request", "z": "tab", "method": "POST", "ret": "txt", "paytoqs": "ignore",
             "url": site.wattics.url, "tls": "tls-http", "persist": True, "authType": "basic", "senderr": False,
             "wires": [[]]},
            {"id": "mqtt", "type": "mqtt out", "z": "tab", "topic": "", "qos": "2", "retain": "false",
             "broker": "broker", "wires": []},
        ]
        for name, _, unit in site.meters():
            for i, (address, count) in enumerate(bl):
                nodes.append({
                    "id": f"read-{name}-{i}", "type": "modbus-read", "z": "tab", "name": f"{name} block {i}",
                    "topic": f"b{i}", "showStatusActivities": False, "showErrors": True, "unitid": str(unit),
                    "dataType": "InputRegister", "adr": str(address), "quantity": str(count), "rate": "1",
                    "rateUnit": "s", "delayOnStart": False, "startDelayTime": "", "server": "client",
                    "useIOFile": False, "ioFile": "", "useIOForPayload": False, "emptyMsgOnFail": False,
                    "wires": [[f"join-{name}"], []]})
            nodes.append({"id": f"join-{name}", "type": "join", "z": "tab", "mode": "custom", "build": "object",
                          "property": "payload", "propertyType": "msg", "key": "topic", "joiner": "\\n",
                          "joinerType": "str", "accumulate": False, "timeout": "0.9", "count": str(len(bl)),
                          "wires": [[f"topic-{name}"]]})
            nodes.append({"id": f"topic-{name}", "type": "change", "z": "tab", "rules": [
                {"t": "set", "p": "topic", "pt": "msg", "to": name, "tot": "str"}], "wires": [[f"fn-{name}"]]})
            nodes.append({"id": f"fn-{name}", "type": "function", "z": "tab", "name": f"{name} packets",
                          "func": func, "outputs": 2, "wires": [["http"], ["mqtt"]]})
        user = self.dir / "user"
        user.mkdir(exist_ok=True)
        (user / "flows.json").write_text(json.dumps(nodes, indent=1))
        (user / "flows_cred.json").write_text(json.dumps({
            "http": {"user": "gateway", "password": "s3cret-pass"},
            "broker": {"user": "gateway", "password": site.broker.users["gateway"]}}))
        (user / "settings.js").write_text(
            "module.exports = {flowFile: 'flows.json', credentialSecret: false, uiHost: '127.0.0.1',"
            " logging: {console: {level: 'info'}}};\n")
        self.port = free_port()
        self._base = len(site.wattics.arrivals())
        node = shutil.which("node") or "node"
        self._popen([node, str(self.prefix / "node-red" / "node_modules" / "node-red" / "red.js"), "--userDir",
                     str(user), "--port", str(self.port), "--settings", str(user / "settings.js")])

    def received(self) -> list[tuple[str, int]]:
        return [(m, ms) for _, m, ms in self.site.wattics_arrivals()[self._base:]]


PROGRAMS: dict[str, type[Program]] = {"gateway": MeterGateway, "thingsboard": ThingsBoard, "node-red": NodeRed}


def settle(program: Program, n: int, within: float = 90.0) -> bool:
    """Wait until the platforms have received three rounds of readings from it."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if program.proc is not None and program.proc.poll() is not None:
            return False
        if program.delivered() >= 3 * n:
            return True
        time.sleep(0.5)
    return False
