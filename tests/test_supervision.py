"""Every background task of the daemon is supervised the same way: an exception injected into each one is
reported (log, ``status``, ``/health``) and the task runs again; none dies quietly.

The daemon runs in the test's event loop (its own code, not a mock), with faults injected by replacing one method
of one object: a source, a forwarder's stream, its dead-letter retries, the heartbeat, the clock.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import gateway.supervisor as supervisor_module
from gateway import status
from gateway.errors import QueueFullError
from gateway.forwarder import Forwarder
from gateway.forwarder.streams import PlainStream
from gateway.platforms.simulated.source import SimulatedSource
from gateway.timekeeper import TimeKeeper
from tests.helpers.mosquitto import free_port
from tests.test_monitor import running, until


def failing_once(original: Callable[..., Any], error: Exception, times: int = 1) -> Callable[..., Any]:
    left = [times]

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            await asyncio.sleep(0.05)
            raise error
        return await original(*args, **kwargs)

    return wrapper


@pytest.fixture(autouse=True)
def quick_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor_module, "RESTART_BASE", 0.05)
    monkeypatch.setattr(supervisor_module, "HEALTHY_AFTER", 0.5)


async def test_a_fault_in_each_background_task_is_reported_and_the_task_runs_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SimulatedSource, "run", failing_once(SimulatedSource.run, RuntimeError("source bug")))
    monkeypatch.setattr(PlainStream, "run", failing_once(PlainStream.run, KeyError("stream bug")))
    # The bug of issue 15: the dead-letter retries died on the queue-full error and were never restarted.
    monkeypatch.setattr(Forwarder, "_dead_letter_retries",
                        failing_once(Forwarder._dead_letter_retries, QueueFullError("the disk is full"), times=2))
    monkeypatch.setattr(TimeKeeper, "run", failing_once(TimeKeeper.run, OSError("adjtimex refused")))
    monkeypatch.setattr("gateway.forwarder.DEADLETTER_POLL", 0.05)
    port = free_port()
    out = tmp_path / "out.jsonl"
    text = f"""\
state_dir: {tmp_path}
monitoring: {{enabled: true, port: {port}}}
meters: [{{name: a, type: simulated, interval: 100ms}}]
sinks: [{{name: file, type: file, path: {out}}}]
"""
    async with running(tmp_path, text) as gw:
        monkeypatch.setattr(gw.heartbeat, "write", failing_once(gw.heartbeat.write, ValueError("heartbeat bug")))
        gw._beat_now.set()
        await until(lambda: len(gw._task_health()) == 5)
        report = await gw.snapshot()
        async with httpx.AsyncClient() as c:
            health = (await c.get(f"http://127.0.0.1:{port}/health")).json()
        failing_then = {name for name, t in report["tasks"].items() if t["failing"]}
        # Each one runs again: readings keep arriving in the file, and every task is healthy once it has run a while.
        lines = len(out.read_text().splitlines()) if out.exists() else 0
        await until(lambda: out.exists() and len(out.read_text().splitlines()) > lines + 5)
        await asyncio.sleep(0.6)
        gw._beat_now.set()
        await until(lambda: not any(t["failing"] for t in gw._task_health().values()))
        final = gw._task_health()
    assert failing_then == {"source:a", "fwd:file:a", "fwd:file:deadletters", "clock", "heartbeat"}
    assert {p["task"] for p in health["problems"] if p["check"] == "task_failing"} <= failing_then
    assert any(p["check"] == "task_failing" for p in health["problems"])
    assert final["fwd:file:deadletters"]["restarts"] == 2
    assert "the disk is full" in str(final["fwd:file:deadletters"]["last_error"])
    assert all(t["restarts"] >= 1 for t in final.values())
    shown = status.render(report)
    assert "BACKGROUND TASK" in shown and "source bug" in shown and json.dumps(report)  # status shows them
