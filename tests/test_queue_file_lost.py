"""The queue file removed under the running daemon, or its write-ahead log removed after a crash: never silent.

The real daemon, a real state directory removed with ``rm -r`` as a technician might, then the next start."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers.daemon import Daemon
from tests.helpers.mosquitto import free_port


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"""\
state_dir: {tmp_path / 'state'}
queue: {{commit_interval: 0s}}
monitoring: {{enabled: true, port: {port}}}
meters: [{{name: a, type: simulated, interval: 100ms}}]
sinks: [{{name: archive, type: file, path: {tmp_path / 'archive.jsonl'}}}]
""")
    return path


def status(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "status", "-c", str(path)], capture_output=True,
                          text=True, timeout=30)


def test_a_state_directory_removed_under_the_daemon_is_detected_said_and_counted(tmp_path: Path) -> None:
    port = free_port()
    path = config(tmp_path, port)
    with Daemon(path).start() as d:
        time.sleep(1.0)
        shutil.rmtree(tmp_path / "state")
        gone = d.wait_log(lambda e: str(e.get("event", "")).startswith("the queue file was removed"))
        health = httpx.get(f"http://127.0.0.1:{port}/health")
        shown = status(path)
        time.sleep(0.5)
        assert d.proc is not None and d.proc.poll() is None  # it keeps running, and says so
        d.stop()
    assert gone["level"] == "error"
    assert health.status_code == 503 and "queue_lost" in [p["check"] for p in health.json()["problems"]]
    assert shown.returncode == 1 and "LOST" in shown.stdout and "was removed while the gateway" in shown.stdout
    dropped = [e for e in d.events() if e.get("event") == "readings dropped: queue cannot write"]
    assert dropped  # readings after the loss were counted as dropped, not committed into the vanished file
    with Daemon(path).start() as d2:
        reported = d2.wait_log(lambda e: str(e.get("event", "")).startswith("the previous run's queue file was"))
        shown = status(path)
        d2.stop()
    assert reported["level"] == "error" and isinstance(reported["abandoned"], int)
    assert "earlier: queue file removed while the gateway ran" in shown.stdout


def test_a_write_ahead_log_removed_after_a_crash_is_reported_at_the_next_start(tmp_path: Path) -> None:
    path = config(tmp_path, free_port())
    with Daemon(path).start() as d:
        time.sleep(1.0)
        d.kill()
    wal = tmp_path / "state" / "queue.db-wal"
    assert wal.exists()
    wal.unlink()
    (tmp_path / "state" / "queue.db-shm").unlink(missing_ok=True)
    with Daemon(path).start() as d2:
        reported = d2.wait_log(lambda e: str(e.get("event", "")).startswith("the queue's write-ahead log"))
        shown = status(path)
        d2.stop()
    assert reported["level"] == "error"
    assert "earlier: write-ahead log missing after an unclean stop" in shown.stdout
    # A clean stop leaves no write-ahead log and is not mistaken for one lost.
    with Daemon(path).start() as d3:
        d3.stop()
    assert not any("write-ahead log" in str(e.get("event")) for e in d3.events())
