"""The daemon as systemd runs it: signals, reload, sd_notify, SIGKILL and restart, status while running."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from tests.helpers.daemon import Daemon, last_queued, queued_by_meter, read_jsonl, still_queued

CONFIG = """\
state_dir: {state}
meters:
{meters}
sinks:
  - name: archive
    type: file
    path: {state}/archive.jsonl
    backoff_base: 50ms
    backoff_cap: 500ms
"""


def meter(name: str, interval: str = "200ms", model: str = "three_phase") -> str:
    return f"  - {{name: {name}, type: simulated, model: {model}, interval: {interval}}}\n"


def write_config(tmp_path: Path, meters: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(state=tmp_path, meters=meters))
    return path


def by_meter(rows: list[dict[str, object]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        out[str(r["meter"])].append(int(r["ts_ms"]))  # type: ignore[call-overload]
    return out


def wait_rows(path: Path, n: int, timeout: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = read_jsonl(path)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"only {len(read_jsonl(path))} rows in {path}, wanted {n}")


def test_sigterm_stops_cleanly_within_10s_and_every_reading_is_delivered(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, meter("a") + meter("b", model="gas"))
    with Daemon(cfg).start() as d:
        wait_rows(tmp_path / "archive.jsonl", 10)
        rc, took = d.stop()
        assert rc == 0 and took < 10
        assert any(e.get("event") == "stopped" for e in d.events())
    rows = by_meter(read_jsonl(tmp_path / "archive.jsonl"))
    for ts in rows.values():
        assert ts == sorted(ts) and len(ts) == len(set(ts))
    # Readings taken in the instant before the stop may still be queued: the next start sends them.
    queued = queued_by_meter(tmp_path, "archive")
    for name, ts in rows.items():
        everything = sorted(set(ts) | set(queued.get(name, [])))
        assert all(b - a == 200 for a, b in itertools.pairwise(everything)), "a reading is missing"
    out = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(cfg), "--json"],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["sinks"]["archive"]["depth"] == sum(len(v) for v in queued.values())
    assert report["sinks"]["archive"]["delivered"] == sum(len(v) for v in rows.values())
    assert report["daemon"]["running"] is False


def test_sd_notify_ready_watchdog_stopping_on_a_real_socket(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    cfg = write_config(tmp_path, meter("a", "1s"))
    messages: list[str] = []
    with Daemon(cfg, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}).start() as d:
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            messages.append(sock.recv(4096).decode())
        rc, _ = d.stop()
        assert rc == 0
        sock.settimeout(2)
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
    sock.close()
    flat = [line for m in messages for line in m.splitlines()]
    assert "READY=1" in flat
    assert flat.count("WATCHDOG=1") >= 3  # every 0.2 s (half of WATCHDOG_USEC)
    assert "STOPPING=1" in flat
    assert flat.index("READY=1") < flat.index("STOPPING=1")


def test_sighup_with_a_good_config_applies_it_without_losing_a_reading(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, meter("a"))
    archive = tmp_path / "archive.jsonl"
    with Daemon(cfg).start() as d:
        wait_rows(archive, 5)
        write_config(tmp_path, meter("a") + meter("b", model="water"))
        d.signal(signal.SIGHUP)
        d.wait_log(lambda e: e.get("event") == "configuration reloaded")
        deadline = time.monotonic() + 10
        while "b" not in by_meter(read_jsonl(archive)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        rc, _ = d.stop()
        assert rc == 0
    rows = by_meter(read_jsonl(archive))
    assert "b" in rows
    a = rows["a"]
    # Sources keep reading while the forwarders are replaced and are swapped between two ticks: no hole.
    gaps = [b - x for x, b in itertools.pairwise(a)]
    assert all(g == 200 for g in gaps), [(i, g) for i, g in enumerate(gaps) if g != 200]


def test_sighup_with_a_bad_config_is_refused_and_the_running_one_kept(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, meter("a"))
    archive = tmp_path / "archive.jsonl"
    with Daemon(cfg).start() as d:
        wait_rows(archive, 3)
        cfg.write_text(cfg.read_text() + "bogus_key: 1\n  bad indentation: [\n")
        d.signal(signal.SIGHUP)
        refused = d.wait_log(lambda e: e.get("event") == "reload refused: invalid configuration")
        assert str(cfg) in refused["problem"]
        n = len(read_jsonl(archive))
        wait_rows(archive, n + 5)  # still reading and delivering
        rc, _ = d.stop()
        assert rc == 0


def test_sigkill_and_restart_keeps_order_and_delivers_the_last_confirmed(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, meter("a", "100ms") + meter("b", "100ms", "heat"))
    archive = tmp_path / "archive.jsonl"
    for _ in range(4):
        with Daemon(cfg).start() as d:
            wait_rows(archive, len(read_jsonl(archive)) + 6)
            d.kill()
    with Daemon(cfg).start() as d:
        time.sleep(0.5)
        rc, _ = d.stop()
        assert rc == 0
    rows = by_meter(read_jsonl(archive))
    last = last_queued(tmp_path)
    waiting = still_queued(tmp_path, "archive").get("archive", set())
    for m in ("a", "b"):
        ts = rows[m]
        unique = sorted(set(ts))
        # Re-sent readings (killed between delivery and acknowledgement) repeat an earlier one; never a new one
        # arriving after a newer one.
        high = -1
        seen: set[int] = set()
        for t in ts:
            assert t in seen or t > high
            seen.add(t)
            high = max(high, t)
        # The last confirmed reading was delivered, or is still queued (taken in the instant before the stop).
        assert unique[-1] == last[m] or last[m] in waiting, "the last confirmed reading is nowhere"


def test_status_while_running_shows_sinks_and_meters(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, meter("a"))
    with Daemon(cfg).start() as d:
        wait_rows(tmp_path / "archive.jsonl", 3)
        time.sleep(0.3)
        p = subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(cfg)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "daemon: running, pid" in p.stdout
        assert "archive" in p.stdout and "\na " in p.stdout
        check = [sys.executable, "-m", "gateway", "status", "-c", str(cfg), "--check"]
        assert subprocess.run(check, capture_output=True, text=True).returncode == 0  # the container is healthy
        d.stop()
    assert subprocess.run(check, capture_output=True, text=True).returncode == 1  # not running: unhealthy


def test_an_unusable_state_dir_is_a_one_line_runtime_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG.format(state=blocker / "sub", meters=meter("a")))
    p = subprocess.run([sys.executable, "-m", "gateway", "run", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=30, env={**os.environ})
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("meter-gateway: ")


def test_a_clean_restart_sends_nothing_again_and_does_not_say_it_does(tmp_path: Path) -> None:
    """After a SIGTERM everything sent was acknowledged: what the next start sends (the backlog a slow platform
    left) goes for the first time, and the log must not claim it is sent again (whoever reads it after a planned
    restart would look for a problem), nor count it as re-sent."""
    from tests.helpers.daemon import Daemon
    from tests.helpers.wattics_emulator import WatticsEmulator

    emu = WatticsEmulator(tmp_path / "certs", latency=0.15).start()  # slower than the meter: a backlog builds
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
meters: [{{name: a, type: simulated, interval: 100ms}}]
sinks:
  - {{name: wattics, type: wattics, url: "{emu.url}", username: gateway, password: s3cret-pass,
     ca_file: {emu.ca_file}, data_points: [{{id: e, meter: a}}]}}
""")
    path.chmod(0o600)
    try:
        runs = []
        for _ in range(2):
            with Daemon(path).start() as d:
                time.sleep(2.0)
                rc, _ = d.stop()
                assert rc == 0
                runs.append(d.events())
    finally:
        emu.stop()
    assert not [e for e in runs[1] if "sending again" in str(e.get("event"))]
    assert emu.stats()["duplicates"] == 0
    status = subprocess.run([sys.executable, "-m", "gateway", "status", "--json", "-c", str(path)],
                            capture_output=True, text=True)
    assert json.loads(status.stdout)["sinks"]["wattics"]["resent"] == 0


def test_a_stop_while_the_platform_holds_every_request_takes_one_grace(tmp_path: Path) -> None:
    """SIGTERM with Wattics answering nothing: sends in flight get one grace (5 s) in all, then the daemon exits 0;
    what was in flight is sent again at the next start."""
    from gateway.daemon import SEND_GRACE
    from tests.helpers.daemon import Daemon
    from tests.helpers.wattics_emulator import WatticsEmulator

    emu = WatticsEmulator(tmp_path / "certs").start()
    emu.stall(60, times=1000)
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
queue: {{commit_interval: 200ms}}
meters: [{{name: a, type: simulated, interval: 200ms}}, {{name: b, type: simulated, interval: 200ms}}]
sinks:
  - {{name: wattics, type: wattics, url: "{emu.url}", username: gateway, password: s3cret-pass,
     ca_file: {emu.ca_file}, data_points: [{{id: e, meter: a}}, {{id: f, meter: b}}]}}
""")
    path.chmod(0o600)
    try:
        with Daemon(path).start() as d:
            time.sleep(1.5)
            assert emu.requests >= 2, d.events()  # both data points have a request held by the platform
            rc, took = d.stop()
    finally:
        emu.stop()
    assert rc == 0
    assert SEND_GRACE <= took < SEND_GRACE + 3.0, took


def test_a_reload_with_an_alias_bomb_keeps_the_running_configuration(tmp_path: Path) -> None:
    from tests.helpers.daemon import Daemon

    path = tmp_path / "config.yaml"
    good = (f"state_dir: {tmp_path / 'state'}\nmeters: [{{name: a, type: simulated, interval: 200ms}}]\n"
            f"sinks: [{{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}]\n")
    path.write_text(good)
    bomb = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
        f"{a}: &{a} [{', '.join([f'*{b}'] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi", strict=True))
    with Daemon(path).start() as d:
        path.write_text(bomb + good)
        t0 = time.monotonic()
        d.signal(signal.SIGHUP)
        refused = d.wait_log(lambda e: e.get("event") == "reload refused: keeping the running configuration")
        took = time.monotonic() - t0
        assert d.proc is not None and d.proc.poll() is None
        rc, _ = d.stop()
    assert rc == 0 and took < 10 and refused["level"] == "error"
    assert any("stands for more than 200,000 values" in str(e.get("problem")) for e in d.events())
