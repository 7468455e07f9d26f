"""One way to run every background task of the daemon: sources, forwarders' streams and dead-letter retries, the
heartbeat, the clock.

A task that raises is never lost quietly: it is logged (the first failure with its traceback, unless it is one of
the gateway's own errors, whose message says it all; later ones on change), counted, shown by ``status`` and
``/health`` as failing, and started again after a pause that doubles from 1 s up to a minute. It is reported as
running again once it has run for :data:`HEALTHY_AFTER` seconds without failing. A task that returns while it was
meant to run until the stop is a failure too (it would otherwise be a silent stoppage).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from gateway.errors import GatewayError
from gateway.logs import REDACTOR

log = structlog.get_logger("gateway.supervisor")

RESTART_BASE = 1.0
RESTART_CAP = 60.0
#: A restarted task that runs this long without failing is healthy again.
HEALTHY_AFTER = 30.0


@dataclass
class TaskState:
    restarts: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    started: float = 0.0


class Supervisor:
    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.states: dict[str, TaskState] = {}
        #: Called when a task starts or stops failing (the daemon writes its heartbeat then).
        self.on_change: Callable[[], None] = lambda: None

    def spawn(self, name: str, run: Callable[[], Awaitable[None]], *, forever: bool = True) -> asyncio.Task[None]:
        """Run ``run()`` until the stop, restarting it when it raises (or returns early, when ``forever``)."""
        task = asyncio.create_task(self._keep(name, run, forever), name=name)
        self.tasks[name] = task
        return task

    async def _keep(self, name: str, run: Callable[[], Awaitable[None]], forever: bool) -> None:
        state = self.states.setdefault(name, TaskState())
        while not self.stop.is_set():
            state.started = time.monotonic()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # every failure of a background task is reported, then retried
                self._failed(name, state, e)
            else:
                if not forever or self.stop.is_set():
                    return
                self._failed(name, state, None)
            delay = min(RESTART_CAP, RESTART_BASE * 2 ** min(state.restarts - 1, 10))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), delay)

    def _failed(self, name: str, state: TaskState, error: Exception | None) -> None:
        text = REDACTOR.scrub(f"{type(error).__name__}: {error}" if error is not None else "stopped on its own")
        first = state.failing_since is None
        changed = text != state.last_error
        state.restarts += 1
        state.last_error = text
        if first:
            state.failing_since = time.monotonic()
            self.on_change()
        if first or changed:
            detail = {"exc_info": error} if error is not None and not isinstance(error, GatewayError) else {}
            log.error("background task failed; restarting it", task=name, error=text, restarts=state.restarts,
                      **detail)
        else:
            log.debug("background task failed again", task=name, error=text, restarts=state.restarts)

    def health(self) -> dict[str, dict[str, object]]:
        """Per task that failed since the start: failing now or not, restarts, the last error."""
        now = time.monotonic()
        out: dict[str, dict[str, object]] = {}
        for name, state in self.states.items():
            if state.failing_since is not None and now - state.started >= HEALTHY_AFTER \
                    and not self.tasks[name].done():
                log.info("background task running again", task=name,
                         down_s=round(state.started - state.failing_since, 1), restarts=state.restarts)
                state.failing_since = None
            if state.restarts:
                out[name] = {"failing": state.failing_since is not None, "restarts": state.restarts,
                             "last_error": state.last_error}
        return out

    async def wait(self, grace: float | None = None) -> None:
        """Wait for every task to end (after the stop), cancelling those still running after ``grace`` seconds."""
        tasks = list(self.tasks.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for t in pending:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()
