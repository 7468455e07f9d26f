"""Secrets never appear in log lines or error messages, on normal work and on the error paths they can trigger."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers.daemon import Daemon
from tests.helpers.mosquitto import Mosquitto, free_port
from tests.helpers.voltaware_api_emulator import VoltawareApiEmulator
from tests.helpers.wattics_emulator import WatticsEmulator

WATTICS_PW = "W4ttics-Secret-pw"
MQTT_PW = "Mqtt-Secret-pw-77"
API_SECRET = "Api-Client-Secret-99"
SOURCE_BROKER_PW = "Source-BrokerConfig-pw-31"


def test_no_secret_in_any_log_line_or_error(broker: Mosquitto, tmp_path: Path) -> None:
    wattics = WatticsEmulator(tmp_path / "w", users={"gateway": "another-password"}).start()  # 401 on every packet
    api = VoltawareApiEmulator(tmp_path / "api", client_secret="not-what-the-gateway-has").start()
    config = tmp_path / "config.yaml"
    port = free_port()
    config.write_text(f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}}}
brokers:  # meters publishing to a broker that refuses this password
  - {{name: site, host: 127.0.0.1, port: {broker.port}, ca_file: {broker.ca_file}, username: gateway,
     password: {SOURCE_BROKER_PW}}}
subscriptions: [{{name: heat, broker: site, topic: heat/value, meter: heat, format: value}}]
meters:
  - {{name: a, type: simulated, interval: 200ms}}
  - {{name: heat, type: mqtt, value_unit: kWh}}
sinks:
  - name: wattics
    type: wattics
    url: {wattics.url}
    username: gateway
    password: {WATTICS_PW}
    ca_file: {wattics.ca_file}
    auth_retry: 200ms
    data_points: [{{id: e, meter: a}}]
  - name: voltaware
    type: voltaware
{broker.sink_lines(MQTT_PW)}
    api: {{url: "{api.url}", client_id: gw-client, client_secret: {API_SECRET}, ca_file: {api.ca_file},
           retry_base: 200ms}}
    devices: [{{meter: a, device_id: d1, metadata: {{geolocation: {{latitude: 1, longitude: 2}}}}}}]
""")
    config.chmod(0o644)  # readable by every user of the machine: warned about at start, by name and fix
    with Daemon(config).start() as d:
        time.sleep(3)  # 401s at Wattics, the broker refusing the MQTT password, the API refusing the secret
        shown = "".join(httpx.get(f"http://127.0.0.1:{port}{p}").text for p in ("/metrics", "/health"))
        shown += subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "-c", str(config)],
                                capture_output=True, text=True).stdout
        # A reload with a mistake on a secret's line: refused, logged by key, never by value.
        good = config.read_text()
        config.write_text(good.replace(f"password: {SOURCE_BROKER_PW}}}", f"password: [{SOURCE_BROKER_PW}]}}"))
        d.signal(signal.SIGHUP)
        d.wait_log(lambda e: e.get("event") == "reload refused: keeping the running configuration")
        config.write_text(good)
        d.stop()
    logs = "".join(d.raw)
    warning = next(e for e in d.events() if e.get("event") == "configuration file readable by everyone")
    assert str(config) in warning["problem"] and f"chmod o-rwx {config}" in warning["problem"]
    assert "brokers[site].password" in logs
    assert "Wattics refuses the credentials" in logs
    assert "the broker refused the connection" in logs  # the Voltaware sink's broker
    assert "broker refused the connection (credentials, client id?)" in logs  # the MQTT source's broker
    verify = subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert verify.returncode == 1  # the API refuses the client secret: said, without the secret
    # A configuration mistake on a secret's own line: the message names the key, never the value.
    config.write_text(config.read_text().replace(f"password: {WATTICS_PW}", f"password: [{WATTICS_PW}]"))
    bad = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(config)], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "sinks[wattics].password" in bad.stderr
    everything = logs + bad.stdout + bad.stderr + verify.stdout + verify.stderr + shown
    for secret in (WATTICS_PW, MQTT_PW, API_SECRET, SOURCE_BROKER_PW):
        assert secret not in everything
    wattics.stop()
    api.stop()


def test_credentials_a_platform_echoes_back_are_scrubbed_everywhere(tmp_path: Path) -> None:
    """Wattics answering 400 with the request's headers in its body (an error page that lists them): the
    Basic-auth header (base64 of user:password) and the password never reach a log line, status, a dead letter
    or verify's output."""
    import base64

    password = "Echo-Me-pw-2207"
    header = base64.b64encode(f"gateway:{password}".encode()).decode()
    wattics = WatticsEmulator(tmp_path / "w", users={"gateway": password}).start()
    wattics.answer(400, times=10**6, body="bad packet; request headers were: {headers}")
    config = tmp_path / "config.yaml"
    config.write_text(f"""\
state_dir: {tmp_path}
meters: [{{name: a, type: simulated, interval: 200ms}}]
sinks:
  - {{name: wattics, type: wattics, url: "{wattics.url}", username: gateway, password: {password},
     ca_file: {wattics.ca_file}, backoff_base: 20ms, backoff_cap: 50ms, data_points: [{{id: e, meter: a}}]}}
""")
    config.chmod(0o600)
    try:
        with Daemon(config).start() as d:
            d.wait_log(lambda e: e.get("event") == "reading rejected: moved to dead letters")
            shown = subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "-c", str(config)],
                                   capture_output=True, text=True).stdout
            d.stop()
        shown += subprocess.run([sys.executable, "-m", "gateway", "deadletter", "-c", str(config), "list"],
                                capture_output=True, text=True).stdout
        shown += subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(config)],
                                capture_output=True, text=True, timeout=60).stdout
    finally:
        wattics.stop()
    everything = "".join(d.raw) + shown
    assert "request headers were" in everything and "Authorization: Basic ***" in everything  # echoed, scrubbed
    assert password not in everything and header not in everything and header.rstrip("=") not in everything
