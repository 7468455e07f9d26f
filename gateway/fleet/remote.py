"""Remote configuration (``fleet.remote_config: true``): a configuration published, retained, on the gateway's own
``<prefix>/<gateway id>/config/set`` topic is checked exactly as ``check`` does, applied atomically, and kept only if
the gateway comes up healthy with it; the outcome is published, retained, on ``config/state``.

- **Refused, nothing changed**: not UTF-8 or over 256 KB; any problem ``check`` would report (every line, with
  ``config/set`` as the file name); a secret value in it (a password travels as a file on the gateway or an
  environment variable, never through the broker); a change of ``state_dir`` (the queue stays where it is); a
  configuration without ``fleet.remote_config: true`` or with another gateway id (it would cut the gateway off from
  the fleet).
- **Applied**: written to ``state_dir/remote-config/active.yaml`` (the file it replaces kept as ``previous.yaml``),
  then swapped in like a reload (the queue is never reset or moved); healthy within ``fleet.apply_deadline``
  (sources and platforms started without a failing task, the fleet broker reached again) or **rolled back** to the
  previous file.
- **The local file wins when it is edited**: at a start or a reload, a local file that changed since the remote
  configuration was applied is what runs (the remote one is set aside, and ``config/state`` says so).

The same message delivered again (retained messages come back at every connect) is recognised by its hash and not
applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from gateway.config import GatewayConfig, load_config
from gateway.config.loader import load_config_text
from gateway.config.problems import SECRET_FIELDS
from gateway.config.yamlfile import format_path, parse_yaml
from gateway.errors import ConfigError
from gateway.files import write_atomic
from gateway.fleet.config import ConfigSource
from gateway.reading import iso_utc

log = structlog.get_logger("gateway.fleet.remote")

MAX_SIZE = 256 * 1024
SOURCE_NAME = "config/set"
#: How long a new configuration must run without trouble before it is called healthy.
SETTLE = 5.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def remote_dir(state_dir: Path) -> Path:
    return state_dir / "remote-config"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    write_atomic(path, data, 0o640)


def secret_values(text: str) -> list[str]:
    """A problem line per secret given as a value (``password: ...``) rather than a file or the environment."""
    data, lines = parse_yaml(text, SOURCE_NAME)
    out = []
    for path, line in sorted(lines.items(), key=lambda item: item[1]):
        if not path or path[-1] not in SECRET_FIELDS:
            continue
        value: Any = data
        for key in path:
            value = value.get(key) if isinstance(value, dict) else (
                value[key] if isinstance(value, list) and isinstance(key, int) and key < len(value) else None)
        if value not in (None, ""):
            out.append(f"{SOURCE_NAME}:{line}: {format_path(path, data)}: a secret cannot come through the broker;"
                       f" put it in a file on the gateway ({path[-1]}_file) or in its environment")
    return out


@dataclass
class Outcome:
    result: str  # applied, refused, rolled_back, set_aside
    digest: str
    problems: list[str] = field(default_factory=list)

    def payload(self, gateway_id: str) -> bytes:
        from gateway import __version__

        return json.dumps({"result": self.result, "hash": self.digest, "problems": self.problems,
                           "gateway": gateway_id, "version": __version__,
                           "ts": iso_utc(int(time.time() * 1000))}).encode()


def load_file(path: Path, local_path: Path) -> GatewayConfig:
    """A configuration file, local or remote; secret files named relatively are found beside the local file."""
    if path == local_path:
        return load_config(path)
    return load_config_text(path.read_text(encoding="utf-8"), str(path), base_dir=local_path.parent)


class RemoteConfig:
    """The remote configuration's files and decisions. ``swap`` applies a checked configuration to the running
    daemon (raising if it cannot), ``healthy`` says whether the daemon runs without trouble, ``publish`` sends the
    outcome to ``config/state``, ``running`` is the configuration that runs now."""

    def __init__(self, local_path: Path, state_dir: Path) -> None:
        self.local_path = local_path
        self.dir = remote_dir(state_dir)
        self.state_dir = state_dir
        self.swap: Callable[[GatewayConfig, Path], Awaitable[None]] | None = None
        self.healthy: Callable[[], bool] = lambda: True
        self.publish: Callable[[Outcome], None] = lambda outcome: None
        self.running: Callable[[], GatewayConfig] | None = None
        self._lock = asyncio.Lock()
        #: One apply at a time, from the broker or the page.
        self._applying = asyncio.Lock()
        self._pending: bytes | None = None
        #: Applies under way (a task the loop holds only weakly must be held here).
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> Path:
        return self.dir / "active.yaml"

    @property
    def previous(self) -> Path:
        return self.dir / "previous.yaml"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def _state(self) -> dict[str, Any]:
        try:
            value = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _save_state(self, **values: object) -> None:
        _write_atomic(self.state_file, json.dumps({**self._state(), **values}).encode())

    def _local_digest(self) -> str | None:
        try:
            return sha256(self.local_path.read_bytes())
        except OSError:
            return None

    # ------------------------------------------------------------ which file runs

    def choose(self) -> Path:
        """The file to run, at a start or a reload. An apply that a crash interrupted (the new configuration may
        have taken the process down) is rolled back first; a local file edited since the remote configuration was
        applied wins. What was decided is announced on ``config/state`` once the fleet broker is reached."""
        state = self._state()
        if state.get("result") == "applying":
            self._restore_previous(state)
            self._save_state(result="rolled_back")
            log.warning("remote configuration rolled back: the gateway stopped while it was being applied")
            self._announce(Outcome("rolled_back", str(state.get("hash")), ["the gateway stopped (a crash?) while"
                                                                           " this configuration was being applied"]))
        if not self.active.exists():
            return self.local_path
        if state.get("local") != self._local_digest():
            with contextlib.suppress(OSError):
                os.replace(self.active, self.dir / "set-aside.yaml")
            self._save_state(local=None)
            log.warning("remote configuration set aside: the local file was edited after it was applied")
            self._announce(Outcome("set_aside", str(state.get("hash")), ["the local file was edited after the remote"
                                                                         " configuration was applied"]))
            return self.local_path
        return self.active

    def _announce(self, outcome: Outcome) -> None:
        self._save_state(announce={"result": outcome.result, "hash": outcome.digest, "problems": outcome.problems})

    def take_announcement(self) -> Outcome | None:
        a = self._state().get("announce")
        if not isinstance(a, dict):
            return None
        self._save_state(announce=None)
        return Outcome(str(a.get("result")), str(a.get("hash")), [str(x) for x in a.get("problems") or []])

    def _restore_previous(self, state: dict[str, Any]) -> Path:
        if state.get("was_local") or not self.previous.exists():
            with contextlib.suppress(OSError):
                os.replace(self.active, self.dir / "rolled-back.yaml")
            return self.local_path
        _write_atomic(self.active, self.previous.read_bytes())
        return self.active

    # ------------------------------------------------------------ a message on config/set

    def submit(self, payload: bytes) -> None:
        """Called for every message; the latest one waiting is the one applied."""
        if not payload:
            return
        self._pending = payload
        task = asyncio.get_running_loop().create_task(self._next())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _next(self) -> None:
        async with self._lock:
            payload, self._pending = self._pending, None
            if payload is None:
                return
            try:
                await self.apply(payload)
            except Exception as e:  # a disk that refuses the state file, say: said, and the daemon goes on
                log.error("remote configuration not handled", error=f"{type(e).__name__}: {e}"[:300])

    async def apply(self, payload: bytes, page: bool = False) -> Outcome:
        """Check, apply and keep or roll back ``payload``. From the fleet broker by default; ``page``: from the
        technician's page, whose user signed in on the gateway itself, so a secret may be in the text and the
        fleet settings may change (the file name in problems is the local file's, marked as coming from the page)."""
        digest = sha256(payload)
        if not page and self._state().get("hash") == digest:
            return Outcome("unchanged", digest)  # the same message again (retained, redelivered at a connect)
        async with self._applying:
            outcome = await self._apply(payload, digest, page)
        self._save_state(hash=digest, result=outcome.result)
        (log.info if outcome.result == "applied" else log.warning)(
            ("configuration from the page " if page else "remote configuration ") + outcome.result.replace("_", " "),
            hash=digest[:12], problems=outcome.problems)
        self.publish(outcome)
        return outcome

    async def _apply(self, payload: bytes, digest: str, page: bool = False) -> Outcome:
        assert self.swap is not None and self.running is not None
        running = self.running()
        deadline = running.fleet.apply_deadline if running.fleet else 60.0
        source = f"{self.local_path.name} (page)" if page else SOURCE_NAME
        if len(payload) > MAX_SIZE:
            return Outcome("refused", digest, [f"{source}: {len(payload)} bytes, more than {MAX_SIZE}"])
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return Outcome("refused", digest, [f"{source}: not UTF-8 text"])
        try:
            problems = [] if page else secret_values(text)
        except ConfigError as e:
            return Outcome("refused", digest, list(e.problems))
        try:
            new = await asyncio.to_thread(load_config_text, text, source, self.local_path.parent)
        except ConfigError as e:
            return Outcome("refused", digest, [*problems, *e.problems])
        problems += self._guard(new, running, source, fleet=not page)
        if problems:
            return Outcome("refused", digest, problems)
        # The file that runs now is kept to go back to; the new one is in place, and the apply recorded as under
        # way (a crash from here on is rolled back at the next start), before it runs.
        current = self.active if self.active.exists() else self.local_path
        try:
            _write_atomic(self.previous, current.read_bytes())
            _write_atomic(self.active, payload)
            self._save_state(hash=digest, result="applying", local=self._local_digest(),
                             was_local=current == self.local_path)
        except OSError as e:
            return Outcome("refused", digest, [f"cannot write {self.dir}: {e.strerror}"])
        try:
            await self.swap(new, self.active)
            if await self._comes_up_healthy(deadline):
                return Outcome("applied", digest)
            why = f"not healthy within {deadline:g} s (a task failing, or the fleet broker not reached)"
        except Exception as e:  # whatever went wrong while swapping in, the previous file comes back
            why = f"could not be applied: {type(e).__name__}: {e}"[:300]
        path = self._restore_previous(self._state())
        await self.swap(await asyncio.to_thread(load_file, path, self.local_path), path)
        return Outcome("rolled_back", digest, [why])

    def _guard(self, new: GatewayConfig, running: GatewayConfig, source: str = SOURCE_NAME,
               fleet: bool = True) -> list[str]:
        out = []
        if new.state_dir != self.state_dir:
            out.append(f"{source}: state_dir: {new.state_dir} is not {self.state_dir}: the queue stays where"
                       " it is (change state_dir in the local file, and restart)")
        if not fleet:
            return out
        if new.fleet is None or not new.fleet.remote_config:
            out.append(f"{source}: fleet.remote_config: must stay true: this configuration would cut the"
                       " gateway off from remote configuration (change that on the gateway itself)")
        if new.gateway_id != running.gateway_id:
            out.append(f"{source}: the gateway id would become '{new.gateway_id}' (it is"
                       f" '{running.gateway_id}'): its topics would move (change that on the gateway itself)")
        return out

    async def _comes_up_healthy(self, deadline: float) -> bool:
        start = time.monotonic()
        await asyncio.sleep(min(SETTLE, deadline))
        while True:
            if self.healthy():
                return True
            if time.monotonic() - start >= deadline:
                return False
            await asyncio.sleep(0.5)


async def poll_source(source: ConfigSource, remote: RemoteConfig, stop: asyncio.Event) -> None:
    """Fetch ``source.url`` every ``source.every`` (``If-None-Match`` with the last ETag: an unchanged file is a
    304) and hand a new body to ``remote``, like a message on ``config/set``. A failure is logged once per kind of
    failure (and when it ends); the next fetch is at the next interval."""
    import httpx

    from gateway.cloudhttp import client
    from gateway.logs import REDACTOR

    etag: str | None = None
    trouble: str | None = None
    headers = {"Accept": "application/yaml, text/yaml, text/plain"}
    if source.token is not None:
        headers["Authorization"] = f"Bearer {source.token.get_secret_value()}"
    async with client(source.ca_file, timeout=30.0) as http:
        while not stop.is_set():
            problem = None
            try:
                asked = {**headers, **({"If-None-Match": etag} if etag else {})}
                async with http.stream("GET", source.url, headers=asked) as answer:
                    if answer.status_code == 200:
                        body = b""
                        async for chunk in answer.aiter_bytes():
                            body += chunk
                            if len(body) > MAX_SIZE:
                                break
                        if len(body) > MAX_SIZE:
                            problem = f"the answer is larger than {MAX_SIZE} bytes"
                        else:
                            etag = answer.headers.get("etag")
                            remote.submit(body)
                    elif answer.status_code != 304:
                        problem = f"HTTP {answer.status_code}"
            except (httpx.HTTPError, OSError) as e:
                problem = REDACTOR.scrub(f"{type(e).__name__}: {e}")[:200]
            if problem != trouble:
                if problem is None:
                    log.info("configuration address answers again", url=source.url)
                else:
                    log.warning("configuration address not readable; tried again at the next interval",
                                url=source.url, error=problem)
                trouble = problem
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), source.every)
