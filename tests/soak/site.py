"""A whole site on loopback, as a user deploys the gateway: simulated meters on Modbus TCP and on an RTU link over a
pseudo-terminal pair, a Wattics emulator (HTTPS), a TLS mosquitto standing in for Voltaware with a subscriber, and
``meter-gateway run`` as a separate process. Used by the soak (``tests/soak/soak.py``) and the footprint benchmark.

Every simulated meter holds values the harness knows: ``voltage_l1`` is 200 + unit/8 (exact in float32, so a
reading that arrives under another meter's name is caught), and ``energy_import_total`` only grows.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.platforms.modbus.simulator import SimMeter
from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity as Q
from tests.helpers.daemon import Daemon
from tests.helpers.modbus import ServerThread, profiles
from tests.helpers.mosquitto import Mosquitto, Subscriber, free_port
from tests.helpers.wattics_emulator import WatticsEmulator

PROFILE = "eastron_sdm630"
#: What the RTU meters are asked for: a small map, so four meters fit in a 1 s tick at 38400 baud.
RTU_QUANTITIES = ["voltage_l1", "power_active_total", "energy_import_total", "frequency"]
T0 = 1_790_000_000.0


def voltage(unit: int, rtu: bool) -> float:
    return 200.0 + unit / 8 + (50.0 if rtu else 0.0)


def meter_values(unit: int, rtu: bool) -> Any:
    def values(t: float) -> dict[Q, float]:
        v = three_phase(t, unit)
        v[Q.VOLTAGE_L1] = voltage(unit, rtu)
        v[Q.ENERGY_IMPORT_TOTAL] = round((t - T0) * unit, 1)
        return v

    return values


class Watcher(Subscriber):
    """The platform side of Voltaware: every event with the time it arrived."""

    def __init__(self, broker: Mosquitto) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        super().__init__(broker, topic="meters/#", client_id="soak-watcher")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        super()._on_message(client, userdata, msg)
        with self._lock:
            self.arrivals.append((time.time(), json.loads(msg.payload)))

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        with self._lock:
            return list(self.arrivals)


class Site:
    def __init__(self, workdir: Path, tcp_meters: int = 16, rtu_meters: int = 4, interval: str = "1s",
                 ledger: bool = True, seams: dict[str, Path] | None = None, queue: str = "") -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tcp_meters, self.rtu_meters = tcp_meters, rtu_meters
        self.interval = interval
        self.ledger = ledger
        self.seams = seams
        #: extra queue settings, e.g. "commit_interval: 2s"
        self.queue = queue
        self.config = self.dir / "config.yaml"
        self.monitor_port = free_port()
        self._stack = contextlib.ExitStack()
        self.gateway: Daemon | None = None

    # ------------------------------------------------------------ peers

    def start(self) -> Site:
        points = profiles()[PROFILE].points
        tcp = [SimMeter(u, points, meter_values(u, False)) for u in range(1, self.tcp_meters + 1)]
        self.tcp = self._stack.enter_context(ServerThread(tcp))
        self.rtu: ServerThread | None = None
        if self.rtu_meters:
            from tests.helpers.modbus import pty_pair

            meter_end, self.rtu_port = self._stack.enter_context(pty_pair(self.dir))
            rtu = [SimMeter(u, points, meter_values(u, True)) for u in range(1, self.rtu_meters + 1)]
            self.rtu = self._stack.enter_context(SerialServerThread(rtu, meter_end))
        self.wattics = WatticsEmulator(self.dir / "wattics").start()
        self._stack.callback(self.wattics.stop)
        self.broker = Mosquitto(self.dir / "broker").start()
        self._stack.callback(self.broker.stop)
        self.watcher = Watcher(self.broker)
        self._stack.callback(self.watcher.close)
        self.write_config()
        return self

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.__exit__(None, None, None)
        self._stack.close()

    def __enter__(self) -> Site:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ the gateway

    def meters(self) -> list[tuple[str, str, int]]:
        """(name, bus, unit) of every meter."""
        return ([(f"t{u:02d}", "tcp", u) for u in range(1, self.tcp_meters + 1)]
                + [(f"r{u:02d}", "rtu", u) for u in range(1, self.rtu_meters + 1)])

    def write_config(self, variant: int = 0) -> None:
        """The site's configuration; ``variant`` changes settings a reload must apply (sink tuning, bus timeout)."""
        meters = "".join(
            f"  - {{name: {n}, type: modbus, bus: {b}, unit: {u}, profile: {PROFILE}, interval: {self.interval}"
            + (f", quantities: [{', '.join(RTU_QUANTITIES)}]" if b == "rtu" else "") + "}\n"
            for n, b, u in self.meters())
        buses = (f"  - {{name: tcp, type: tcp, host: 127.0.0.1, port: {self.tcp.port}, max_parallel: 4,"
                 f" timeout: {'500ms' if variant % 2 == 0 else '400ms'}}}\n")
        if self.rtu is not None:
            buses += (f"  - {{name: rtu, type: serial, port: {self.rtu_port}, baudrate: 38400,"
                      f" timeout: {'300ms' if variant % 2 == 0 else '250ms'}}}\n")
        points = "".join(f"      - {{id: e-{n}, meter: {n}, format: electrical}}\n" for n, _, _ in self.meters())
        devices = "".join(f"      - {{meter: {n}, device_id: {n}}}\n" for n, _, _ in self.meters())
        ledger = (f"  - {{name: ledger, type: file, path: {self.dir}/ledger.jsonl, fsync: true}}\n"
                  if self.ledger else "")
        self.config.write_text(f"""\
state_dir: {self.dir}/state
time_sync: ignore
queue: {{{self.queue}}}
monitoring: {{enabled: true, port: {self.monitor_port}}}
buses:
{buses}meters:
{meters}sinks:
  - name: wattics
    type: wattics
    url: {self.wattics.url}
    username: gateway
    password: s3cret-pass
    ca_file: {self.wattics.ca_file}
    request_timeout: 2s
    send_timeout: 5s
    backoff_base: 100ms
    backoff_cap: {'2s' if variant % 2 == 0 else '3s'}
    auth_retry: 1s
    max_in_flight: {8 if variant % 2 == 0 else 12}
    data_points:
{points}  - name: voltaware
    type: voltaware
{self.broker.sink_lines()}    client_id: soak-gateway
    backoff_base: 100ms
    backoff_cap: 2s
    ack_timeout: 5s
    payload: {{device: "{{device_id}}", at: "{{ts_ms}}", v: "{{voltage_l1}}", e: "{{energy_import_total}}"}}
    devices:
{devices}{ledger}""")

    def start_gateway(self) -> Daemon:
        self.gateway = Daemon(self.config, seams=self.seams).start()
        return self.gateway

    # ------------------------------------------------------------ what the platforms got

    def wattics_arrivals(self) -> list[tuple[float, str, int]]:
        """(arrival time, meter, reading ms) of every packet Wattics accepted, duplicates included, in order."""
        return [(at, pid.removeprefix("e-"), round(datetime.fromisoformat(ts).timestamp() * 1000))
                for at, pid, ts in self.wattics.arrivals()]

    def wattics_packets(self) -> dict[str, list[dict[str, Any]]]:
        """Every packet Wattics accepted (once each), by meter."""
        with self.wattics.lock:
            return {pid.removeprefix("e-"): list(packets) for pid, packets in self.wattics.packets.items()}

    def offered(self, meter: str) -> frozenset[Q]:
        """The quantities the meter's configuration reads (what the Wattics keys of its data point follow)."""
        points = profiles()[PROFILE].points
        names = RTU_QUANTITIES if meter.startswith("r") else None
        return frozenset(p.quantity for p in points if names is None or p.quantity.value in names)

    def voltaware_arrivals(self) -> list[tuple[float, str, int]]:
        return [(at, str(e["device"]), int(e["at"])) for at, e in self.watcher.events()]


class SerialServerThread(ServerThread):
    """The RTU meters, answering on one end of the pseudo-terminal pair."""

    def __init__(self, meters: list[SimMeter], device: str) -> None:
        super().__init__(meters)
        self.device = device

    def __enter__(self) -> SerialServerThread:
        import asyncio

        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start_serial(self.device, 38400), self.loop).result(10)
        return self


def proc_stats(pid: int) -> dict[str, int]:
    """CPU ticks (user+system, all threads), resident and peak memory, bytes written to storage (``write_bytes``:
    pages dirtied, and ``cancelled_write_bytes``: those dropped before they reached the storage, a file truncated or
    deleted first, as the queue's journal segments are)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {
        "cpu_ticks": int(fields[11]) + int(fields[12]),
        "rss_kb": int(status["VmRSS"].split()[0]),
        "hwm_kb": int(status["VmHWM"].split()[0]),
        # The resident set's two halves: the process's own memory, and pages of mapped files (the interpreter's
        # and the libraries' code, shared with any other process that maps them, and reclaimable).
        "rss_anon_kb": int(status["RssAnon"].split()[0]),
        "rss_file_kb": int(status["RssFile"].split()[0]),
        "write_bytes": int(io["write_bytes"]),
        "cancelled_write_bytes": int(io["cancelled_write_bytes"]),
    }


def device_written(path: Path) -> int | None:
    """Bytes written to the block device holding ``path``, by everything on this machine (file system metadata and
    its journal included): an upper bound of what the gateway costs the storage, noisy on a shared machine."""
    st = os.stat(path)
    try:
        fields = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat").read_text().split()
        return int(fields[6]) * 512
    except (OSError, IndexError, ValueError):
        return None


@contextlib.contextmanager
def counting_fsyncs(pid: int) -> Iterator[dict[str, int]]:
    """Count fsync/fdatasync calls of ``pid`` (all threads) with strace while the block runs."""
    import shutil

    out: dict[str, int] = {}
    strace = shutil.which("strace")
    if strace is None:
        yield out
        return
    log = Path(f"/tmp/fsyncs-{pid}-{time.time_ns()}")
    proc = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", str(log), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached to every thread
    t0 = time.monotonic()
    try:
        yield out
    finally:
        elapsed = time.monotonic() - t0
        proc.terminate()
        proc.wait(10)
        text = log.read_text() if log.exists() else ""
        log.unlink(missing_ok=True)
        out["fsyncs"] = sum(1 for line in text.splitlines() if "fsync(" in line or "fdatasync(" in line)
        out["seconds"] = round(elapsed, 1)


def wait(pred: Any, within: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return False

