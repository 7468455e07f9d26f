"""A mosquitto broker started by a test on a free port: TLS with a throwaway CA, a password file, persistence.

The machine's own broker on 127.0.0.1:1883 is never touched. Where mosquitto is not installed, tests that need
a broker are skipped (CI installs it, so CI always runs them).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import trustme
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
PASSWD = shutil.which("mosquitto_passwd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    def __init__(self, workdir: Path, users: dict[str, str] | None = None, tls: bool = True,
                 require_client_cert: bool = False) -> None:
        if MOSQUITTO is None or PASSWD is None:
            raise RuntimeError("mosquitto is not installed")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.users = users if users is not None else {"gateway": "mqtt-s3cret", "watcher": "watch-pw"}
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file = self.dir / "broker-ca.pem"
        if tls:
            ca = trustme.CA()
            cert = ca.issue_cert("127.0.0.1", "localhost")
            ca.cert_pem.write_to_path(str(self.ca_file))
            cert.cert_chain_pems[0].write_to_path(str(self.dir / "server.pem"))
            cert.private_key_pem.write_to_path(str(self.dir / "server.key"))
            self.client_ca = ca
            client = ca.issue_cert("meter-gateway-client")
            self.client_cert = self.dir / "client.pem"
            self.client_key = self.dir / "client.key"
            client.cert_chain_pems[0].write_to_path(str(self.client_cert))
            client.private_key_pem.write_to_path(str(self.client_key))
        self._write_config()

    def _write_config(self) -> None:
        pw = self.dir / "passwd"
        pw.unlink(missing_ok=True)
        for i, (user, password) in enumerate(self.users.items()):
            subprocess.run([PASSWD, "-b", *(["-c"] if i == 0 else []), str(pw), user, password], check=True,
                           capture_output=True)
        os.chmod(pw, 0o600)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {pw}",
            "persistence true",
            f"persistence_location {self.dir}/",
            "log_dest none",
            "max_inflight_messages 0",
            "max_queued_messages 100000",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # do not drop to a user that cannot read the test's files
        if self.tls:
            lines += [f"cafile {self.ca_file}", f"certfile {self.dir / 'server.pem'}",
                      f"keyfile {self.dir / 'server.key'}"]
            if self.require_client_cert:
                lines.append("require_certificate true")
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def sink_lines(self, password: str = "mqtt-s3cret", indent: str = "    ") -> str:
        """The connection keys of a ``voltaware`` sink pointing at this broker (five lines of YAML)."""
        keys = [("host", "127.0.0.1"), ("port", str(self.port)), ("ca_file", str(self.ca_file)),
                ("username", "gateway"), ("password", password)]
        return "".join(f"{indent}{k}: {v}\n" for k, v in keys)

    def start(self) -> Mosquitto:
        assert MOSQUITTO is not None
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"mosquitto exited: {err}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL)


class Subscriber:
    """A persistent-session QoS 2 subscriber that records what arrives: (topic, payload, qos)."""

    def __init__(self, broker: Mosquitto, topic: str = "#", user: str = "watcher",
                 client_id: str = "test-watcher") -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self._lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        c.username_pw_set(user, broker.users[user])
        if broker.tls:
            c.tls_set(ca_certs=str(broker.ca_file))
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda cl, u, f, rc, p: (cl.subscribe(topic, qos=2), None)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect_async("127.0.0.1", broker.port, keepalive=10)
        c.loop_start()
        self.client = c
        if not self.subscribed.wait(10):
            raise RuntimeError("subscriber could not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.qos))

    def received(self) -> list[tuple[str, bytes, int]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
