"""Run ``meter-gateway run`` as a separate process, as systemd would, and watch its JSON log lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Daemon:
    def __init__(self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 seams: dict[str, Path] | None = None) -> None:
        """``seams``: ``timesync_flag`` and ``page_cap_file`` (see tests/helpers/seamed_gateway.py)."""
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.args = args
        self.launcher = ["-m", "gateway"]
        if seams:
            self.launcher = [str(Path(__file__).with_name("seamed_gateway.py"))]
            for name, path in seams.items():
                self.launcher += [f"--{name.replace('_', '-')}", str(path)]
            self.launcher.append("--")
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()

    def start(self, wait_for: str = "gateway running", timeout: float = 20.0) -> Daemon:
        self.proc = subprocess.Popen(
            [sys.executable, *self.launcher, "--log-format", "json", "--log-level", "debug", *self.args,
             "run", "-c", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_log(lambda e: e.get("event") == wait_for, timeout)
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.raw.append(line)
                try:
                    self.lines.append(json.loads(line))
                except json.JSONDecodeError:
                    self.lines.append({"event": line.rstrip(), "unparsed": True})

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def wait_log(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events():
                if pred(e):
                    return e
            if self.proc is not None and self.proc.poll() is not None:
                time.sleep(0.2)
                for e in self.events():
                    if pred(e):
                        return e
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{''.join(self.raw)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"log line not seen in {timeout}s:\n{''.join(self.raw)[-3000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        # A line torn by SIGKILL was never acknowledged, so it is sent again whole: skip it.
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def still_queued(state: Path, sink: str) -> dict[str, set[int]]:
    """Per stream cursor of ``sink``, the readings the queue still holds for it: taken in the instant before a stop,
    they go at the next start and are not lost."""
    out: dict[str, set[int]] = {}
    for (cursor, _), ts in queued(state, sink).items():
        out.setdefault(cursor, set()).update(ts)
    return out


def queued_by_meter(state: Path, sink: str) -> dict[str, set[int]]:
    """Like :func:`still_queued`, per meter."""
    out: dict[str, set[int]] = {}
    for (_, meter), ts in queued(state, sink).items():
        out.setdefault(meter, set()).update(ts)
    return out


def queued(state: Path, sink: str | None = None) -> dict[tuple[str, str], set[int]]:
    """Per (stream cursor, meter) of ``sink`` (of every sink by default), the timestamps of the readings the queue
    still holds for it, read from the file as another process would."""
    import sqlite3

    from gateway.queue.codec import decode_chunk

    db = sqlite3.connect(state / "queue.db", timeout=10)
    try:
        names = dict(db.execute("SELECT id, name FROM meters"))
        cursors = db.execute("SELECT sink, meter_id, ts_ms FROM cursors WHERE ? IS NULL OR sink = ?"
                             " OR sink LIKE ? || '#%'", (sink, sink, sink)).fetchall()
        chunks = db.execute("SELECT meter_id, data, first_ts FROM readings").fetchall()
    finally:
        db.close()
    out: dict[tuple[str, str], set[int]] = {}
    for cursor, mid, after in cursors:
        ts = {t for m, data, first in chunks if m == mid for t, _, _ in decode_chunk(data, first) if t > after}
        if ts:
            out[(cursor, names[mid])] = ts
    return out


def last_queued(state: Path) -> dict[str, int]:
    """Per meter, the timestamp of the last reading confirmed into the queue (what the queue refuses to go behind):
    worked out as the queue does when it opens, from the newest chunk, the cursors and the stored last_ts."""
    import sqlite3

    db = sqlite3.connect(state / "queue.db", timeout=10)
    try:
        return dict(db.execute(
            "SELECT name, max(last_ts, coalesce((SELECT max(ts_ms) FROM readings r WHERE r.meter_id = m.id), -1),"
            " coalesce((SELECT max(ts_ms) FROM cursors c WHERE c.meter_id = m.id), -1)) FROM meters m"))
    finally:
        db.close()
