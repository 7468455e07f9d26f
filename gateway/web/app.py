"""The listener's routes: ``/metrics`` and ``/health`` as before, and the technician's page with its JSON API.

Who may do what:

- ``/metrics``, ``/health``, the page's files, ``/api/session`` and ``/api/login``: anyone who reaches the listener.
- Everything else under ``/api/`` that only reads: anyone on loopback; signed in when the page faces the network
  (``allow_remote: true``, which then requires a password).
- Every action that changes something (``POST``): signed in, always; with no password configured the page is read
  only. Each action is logged with the client's address, the session's label and what was done.

Requests that change something must carry the ``X-Gateway-Page`` header (a browser sends it only from the page's
own script: another site cannot make it send one without asking first) besides the session's ``SameSite=Strict``
cookie. Answers carry a strict Content-Security-Policy; the page loads nothing from anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import platform
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Protocol

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__
from gateway.config import GatewayConfig
from gateway.config.loader import load_config_text
from gateway.errors import ConfigError
from gateway.health import evaluate
from gateway.logs import REDACTOR, RING
from gateway.quantities import Quantity, unit_of
from gateway.reading import Reading, iso_utc
from gateway.web import masking
from gateway.web.auth import Brake, Password, Session, Sessions

log = structlog.get_logger("gateway.web")

COOKIE = "mg_session"
HEADER = "x-gateway-page"
MAX_BODY = 512 * 1024
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "app.css": "text/css; charset=utf-8"}
_SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
                               " connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


#: What a technician can do about each problem /health reports (the problem's own detail says what is wrong).
ADVICE = {
    "sink_stalled": "check the gateway's network and the platform's credentials (Platforms: Verify); the readings"
                    " wait safely in the queue and are sent when it takes them again",
    "sink_behind": "nothing, if it is catching up after an outage; otherwise the platform takes readings more"
                   " slowly than they come: a longer interval, or fewer values",
    "meter_failing": "check the meter: powered, its unit id (address) and baud rate as configured, the RS-485 pair"
                     " (A and B swapped?), or its IP address; then Meters: Read now",
    "bus_down": "check the bus: cable, power of the converter or the Modbus TCP gateway, the serial port, the"
                " baud rate (Meters: Read now, after each change)",
    "cloud_down": "check the credentials of the vendor's cloud and the gateway's internet connection",
    "clock_unsynchronised": "check that the gateway reaches a time server (NTP); readings are held, not lost, until"
                            " the clock is set",
    "meter_clock_ahead": "set the meter's (or its cloud's) clock: its readings are stamped in the future and refused",
    "queue_lost": "the queue file was removed or replaced under the running gateway: restart the service",
    "queue_near_full": "restore delivery (see the platforms), or give the queue more room (queue.max_size)",
    "task_failing": "look at Logs for the task's error; the gateway restarts it on its own",
    "ticks_skipped": "the bus is too slow for the meters' interval: a longer interval, fewer values, or a higher"
                     " baud rate",
}


class Backend(Protocol):
    """What the page asks of the running daemon (:class:`gateway.daemon.Gateway`)."""

    config: GatewayConfig
    config_path: Path | None
    local_path: Path | None
    latest: dict[str, Reading]

    async def snapshot(self) -> dict[str, Any]: ...

    def pollers(self) -> dict[str, Any]: ...

    def meter_states(self) -> dict[str, dict[str, Any]]: ...

    def mqtt_messages(self) -> dict[str, list[dict[str, Any]]]: ...

    async def scan_bus(self, name: str, units: list[int]) -> dict[str, Any]: ...

    def sent_by_sink(self) -> dict[str, Any]: ...

    async def apply_from_page(self, text: str) -> tuple[str, list[str]]: ...

    async def verify_sink(self, name: str) -> tuple[bool, list[str]]: ...

    async def dead_letters(self, sink: str | None) -> list[dict[str, Any]]: ...

    async def dead_letter_action(self, action: str, ids: list[int] | None, sink: str | None) -> int: ...


class Page:
    """The routes, bound to the daemon and its ``monitoring`` settings."""

    def __init__(self, backend: Backend, metrics: Callable[[dict[str, Any]], bytes],
                 health: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]) -> None:
        self.backend = backend
        self.metrics = metrics
        self.health = health
        cfg = backend.config.monitoring
        self.remote = cfg.allow_remote
        self.tls = cfg.page.cert_file is not None
        self.enabled = cfg.page.enabled
        pw = cfg.page.password
        self.password = Password(pw.get_secret_value()) if pw is not None else None
        self.sessions = Sessions(cfg.page.session_timeout)
        self.brake = Brake()
        self.stopping = asyncio.Event()
        self.started = time.time()
        RING.resize(cfg.page.log_lines)
        if self.enabled and self.remote and self.password is None:
            log.warning("the page is off: it would face the network (allow_remote) and monitoring.page.password is"
                        " not set")
        elif self.enabled and self.remote and not self.tls:
            log.warning("the page faces the network over plain HTTP: its password and session travel readable on"
                        " the LAN; set monitoring.page.cert_file and key_file for HTTPS")

    # ------------------------------------------------------------ the application

    def app(self) -> Starlette:
        r = Route
        routes = [
            r("/metrics", self._metrics, methods=["GET", "HEAD"]),
            r("/health", self._health, methods=["GET", "HEAD"]),
            r("/", self._static, methods=["GET"]),
            r("/static/{name}", self._static, methods=["GET"]),
            r("/api/session", self._session, methods=["GET"]),
            r("/api/login", self._login, methods=["POST"]),
            r("/api/logout", self._logout, methods=["POST"]),
            r("/api/overview", self._guard(self._overview), methods=["GET"]),
            r("/api/meters", self._guard(self._meters), methods=["GET"]),
            r("/api/meters/{name}", self._guard(self._meter), methods=["GET"]),
            r("/api/meters/{name}/read", self._guard(self._read_now, True), methods=["POST"]),
            r("/api/events", self._guard(self._events), methods=["GET"]),
            r("/api/buses", self._guard(self._buses), methods=["GET"]),
            r("/api/buses/{name}/scan", self._guard(self._scan, True), methods=["POST"]),
            r("/api/config", self._guard(self._config), methods=["GET"]),
            r("/api/config/check", self._guard(self._check, True), methods=["POST"]),
            r("/api/config/apply", self._guard(self._apply, True), methods=["POST"]),
            r("/api/platforms", self._guard(self._platforms), methods=["GET"]),
            r("/api/platforms/{name}/verify", self._guard(self._verify, True), methods=["POST"]),
            r("/api/deadletters", self._guard(self._dead_letters), methods=["GET"]),
            r("/api/deadletters/{action}", self._guard(self._dead_letter_action, True), methods=["POST"]),
            r("/api/logs", self._guard(self._logs), methods=["GET"]),
            r("/api/logs/download", self._guard(self._logs_download), methods=["GET"]),
            r("/api/diagnostics", self._guard(self._diagnostics), methods=["GET"]),
        ]
        return Starlette(routes=routes, middleware=[Middleware(_SecurityHeaders)])

    # ------------------------------------------------------------ access

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "?"

    def _current(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _guard(self, handler: Callable[[Request, Session | None], Awaitable[Response]],
               changes: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not self.enabled:
                return _problem(404, "the page is off (monitoring.page.enabled: false)")
            if self.remote and self.password is None:
                return _problem(403, "the page is off: it faces the network (monitoring.allow_remote) and no"
                                     " password is set (monitoring.page.password_file)")
            session = self._current(request)
            if changes:
                if request.headers.get(HEADER) != "1":
                    return _problem(403, "this action is only taken from the gateway's page")
                if self.password is None:
                    return _problem(403, "the page is read only: set monitoring.page.password_file (see"
                                         " 'meter-gateway hash-password') to change things from it")
                if session is None:
                    return _problem(401, "sign in first")
            elif self.remote and session is None:
                return _problem(401, "sign in first")
            try:
                return await handler(request, session)
            except _Refused as e:
                return _problem(e.status, e.message)
        return guarded

    def _action(self, request: Request, session: Session | None, what: str, **detail: object) -> None:
        log.info("page action", client=self._client(request), session=session.label if session else None,
                 action=what, **detail)

    async def _session(self, request: Request) -> Response:
        s = self._current(request)
        return JSONResponse({"signed_in": s is not None, "password_set": self.password is not None,
                             "remote": self.remote, "enabled": self.enabled, "tls": self.tls,
                             "read_only": self.password is None, "needs_sign_in": self.remote,
                             "site": self.backend.config.site.name, "version": __version__})

    async def _login(self, request: Request) -> Response:
        client = self._client(request)
        if request.headers.get(HEADER) != "1":
            return _problem(403, "sign in from the gateway's page")
        if self.password is None or not self.enabled:
            return _problem(403, "no password is set (monitoring.page.password_file): the page is read only")
        wait = self.brake.wait(client)
        if wait > 0:
            return _problem(429, f"too many wrong passwords: try again in {wait:.0f} s",
                            {"Retry-After": str(max(1, round(wait)))})
        body = await _json_body(request, 4096)
        attempt = body.get("password") if isinstance(body, dict) else None
        if not isinstance(attempt, str) or not await asyncio.to_thread(self.password.check, attempt):
            delay = self.brake.failed(client)
            log.warning("page: wrong password", client=client, next_try_in_s=delay)
            return _problem(403, "wrong password")
        self.brake.succeeded(client)
        s = self.sessions.new(client)
        log.info("page: signed in", client=client, session=s.label)
        resp = JSONResponse({"signed_in": True})
        resp.set_cookie(COOKIE, s.token, httponly=True, samesite="strict", secure=self.tls, path="/",
                        max_age=int(self.sessions.timeout))
        return resp

    async def _logout(self, request: Request) -> Response:
        s = self._current(request)
        if s is not None:
            log.info("page: signed out", client=self._client(request), session=s.label)
        self.sessions.end(request.cookies.get(COOKIE))
        resp = JSONResponse({"signed_in": False})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # ------------------------------------------------------------ metrics, health, files

    async def _metrics(self, request: Request) -> Response:
        body = self.metrics(await self.backend.snapshot())
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _health(self, request: Request) -> Response:
        code, doc = self.health(await self.backend.snapshot())
        return Response(json.dumps(doc, indent=2) + "\n", status_code=code, media_type="application/json")

    async def _static(self, request: Request) -> Response:
        name = request.path_params.get("name", "index.html")
        if name not in _STATIC:
            return PlainTextResponse("not found\n", status_code=404)
        if not self.enabled:
            return PlainTextResponse("the page is off (monitoring.page.enabled: false); /metrics and /health"
                                     " answer\n", status_code=404)
        data = resources.files("gateway.web").joinpath("static", name).read_bytes()
        return Response(data, media_type=_STATIC[name])

    # ------------------------------------------------------------ reading

    async def _overview(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        config = self.backend.config
        problems = _scrub(evaluate(report, config.monitoring))
        covered = {m for p in problems for m in p.get("meters") or () if p.get("check") in ("bus_down", "cloud_down")}
        problems += [{"check": "meter_failing", "meter": name, "detail": _scrub(str(row.get("last_problem") or
                      "no answer"))} for name, row in report["meters"].items() if row.get("failing")
                     and name not in covered]
        problems = [{**p, "todo": ADVICE.get(str(p.get("check")), "")} for p in problems]
        return JSONResponse({
            "site": config.site.name, "timezone": config.site.timezone, "version": __version__,
            "started_ms": int(self.started * 1000), "now_ms": int(time.time() * 1000),
            "config_path": str(self.backend.config_path), "problems": problems, "report": _scrub(report),
        })

    async def _meters(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        rows = []
        for m in self.backend.config.meters:
            row = report["meters"].get(m.name, {})
            rows.append({"name": m.name, "kind": type(m).__name__.replace("MeterConfig", "").lower(),
                         "describe": _describe(m), "interval": getattr(m, "interval", None), **_scrub(row),
                         **self._latest(m.name)})
        return JSONResponse({"meters": rows})

    def _latest(self, name: str) -> dict[str, Any]:
        r = self.backend.latest.get(name)
        if r is None:
            return {"last": None}
        meter = next((m for m in self.backend.config.meters if m.name == name), None)
        value_unit = getattr(meter, "value_unit", None)
        return {"last": {"ts_ms": r.ts_ms, "ts": iso_utc(r.ts_ms), "values": [
            {"quantity": q.value, "value": v, "unit": _unit(q, value_unit)} for q, v in r.values.items()]}}

    async def _meter(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        meter = next((m for m in self.backend.config.meters if m.name == name), None)
        if meter is None:
            raise _Refused(404, f"no meter named {name!r}")
        report = await self.backend.snapshot()
        poller = self.backend.pollers().get(name)
        # An MQTT meter's messages: those that gave its readings, and the others its subscriptions got for it.
        subs = {s.name: s for s in self.backend.config.subscriptions}
        messages = [{**m, "subscription": sub, "payload": REDACTOR.scrub(str(m["payload"]))}
                    for sub, ms in self.backend.mqtt_messages().items() for m in ms
                    if name in m["meters"] or (not m["meters"] and sub in subs and _for_meter(subs[sub], m, name))]
        return JSONResponse({"name": name, "describe": _describe(meter), **_scrub(report["meters"].get(name, {})),
                             **self._latest(name), "registers": _registers(poller) if poller else None,
                             "requests_per_poll": len(poller.planner.blocks) if poller else None,
                             "errors_last_hour": poller.errors_last_hour() if poller else None,
                             "mqtt_messages": sorted(messages, key=lambda m: m["at_ms"])[-20:] if messages
                             else None})

    async def _events(self, request: Request, session: Session | None) -> Response:
        """Server-sent events: every second, the meters whose last reading or state changed since the event before
        (all of them in the first), from the daemon's memory alone (no query of the queue). ``?meter=NAME``
        follows one meter."""
        wanted = request.query_params.get("meter")
        names = [m.name for m in self.backend.config.meters if wanted in (None, m.name)]

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            sent: dict[str, tuple[object, ...]] = {}
            while not self.stopping.is_set():
                states = self.backend.meter_states()
                meters = {}
                for name in names:
                    state = states.get(name) or {}
                    last = self.backend.latest.get(name)
                    key = (last.ts_ms if last else None, state.get("failing"), state.get("last_problem"))
                    if sent.get(name) != key:
                        sent[name] = key
                        meters[name] = {"failing": bool(state.get("failing")),
                                        "last_problem": REDACTOR.scrub(str(state.get("last_problem") or "")) or None,
                                        **self._latest(name)}
                yield f"data: {json.dumps({'now_ms': int(time.time() * 1000), 'meters': meters})}\n\n"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 1.0)
                if await request.is_disconnected():
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def _buses(self, request: Request, session: Session | None) -> Response:
        from gateway.platforms.modbus.config import SerialLine
        from gateway.platforms.modbus.tools import describe_bus

        config = self.backend.config
        return JSONResponse({"buses": [{"name": b.name, "type": b.type, "where": describe_bus(b),
                                        "pauses_polling": isinstance(b, SerialLine),
                                        "meters": [m.name for m in config.meters if getattr(m, "bus", None) == b.name]}
                                       for b in config.buses]})

    async def _scan(self, request: Request, session: Session | None) -> Response:
        from gateway.errors import GatewayError
        from gateway.platforms.modbus.tools import parse_units

        name = request.path_params["name"]
        if name not in {b.name for b in self.backend.config.buses}:
            raise _Refused(404, f"no bus named {name!r}")
        body = await _json_body(request, 4096)
        spec = body.get("units", "1-16") if isinstance(body, dict) else "1-16"
        try:
            units = parse_units(str(spec))
        except GatewayError as e:
            raise _Refused(400, str(e)) from None
        self._action(request, session, "bus scan", bus=name, units=str(spec))
        try:
            result = await self.backend.scan_bus(name, units)
        except GatewayError as e:
            raise _Refused(409, str(e)) from None
        return JSONResponse(_scrub(result))

    async def _config(self, request: Request, session: Session | None) -> Response:
        path = self.backend.config_path
        text = await asyncio.to_thread(_read, path)
        return JSONResponse({"path": str(path), "local_path": str(self.backend.local_path),
                             "text": masking.mask(text), "remote": path != self.backend.local_path})

    async def _platforms(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        sent = self.backend.sent_by_sink() or {}
        out = []
        for s in self.backend.config.sinks:
            streams = [{"stream": k, **{f: v.get(f) for f in ("ts_ms", "at_ms")},
                        "packet": REDACTOR.scrub(str(v["packet"])) if v.get("packet") is not None else None}
                       for k, v in sorted((sent.get(s.name) or {}).items()) if isinstance(v, dict)]
            out.append({"name": s.name, "type": s.type, **_scrub(report["sinks"].get(s.name, {})),
                        "last_sent": streams[-50:]})
        return JSONResponse({"sinks": out})

    async def _dead_letters(self, request: Request, session: Session | None) -> Response:
        sink = request.query_params.get("sink") or None
        return JSONResponse({"dead_letters": await self.backend.dead_letters(sink)})

    async def _logs(self, request: Request, session: Session | None) -> Response:
        q = request.query_params
        try:
            after = int(q.get("after", "0"))
        except ValueError:
            after = 0
        return JSONResponse({"lines": RING.since(after, q.get("level"), q.get("component"))})

    async def _logs_download(self, request: Request, session: Session | None) -> Response:
        return Response(_log_text(), media_type="text/plain; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="meter-gateway.log"'})

    async def _diagnostics(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        text = await asyncio.to_thread(_read, self.backend.config_path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("config.yaml", masking.mask(text))
            z.writestr("status.json", REDACTOR.scrub(json.dumps(report, indent=2, default=str)))
            z.writestr("health.json", REDACTOR.scrub(json.dumps(evaluate(report, self.backend.config.monitoring),
                                                                indent=2, default=str)))
            z.writestr("recent.log", _log_text())
            z.writestr("versions.json", json.dumps(_versions(), indent=2))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self._action(request, session, "diagnostics downloaded")
        return Response(buf.getvalue(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="meter-gateway-{self.backend.config.site.name}-{stamp}.zip"'})

    # ------------------------------------------------------------ actions

    async def _read_now(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        poller = self.backend.pollers().get(name)
        if poller is None:
            raise _Refused(404, f"{name!r} is not a Modbus meter of the running configuration (read now reads a"
                                " Modbus meter)")
        self._action(request, session, "read now", meter=name)
        reading = await poller.poll()
        return JSONResponse({
            "values": [{"quantity": q.value, "value": v, "unit": _unit(q, getattr(poller.meter, "value_unit", None))}
                       for q, v in (reading.values.items() if reading else ())],
            "ts": iso_utc(reading.ts_ms) if reading else None,
            "problems": [REDACTOR.scrub(str(p)) for p in poller.last_problems],
            "registers": _registers(poller), "queued": False})

    async def _check(self, request: Request, session: Session | None) -> Response:
        text = await _text_body(request)
        running = await asyncio.to_thread(_read, self.backend.config_path)
        full, problems = masking.unmask(text, running)
        name = f"{Path(str(self.backend.local_path)).name} (page)"
        problems = [f"{name}:{p.removeprefix('line ')}" for p in problems]
        if not problems:
            base = self.backend.local_path.parent if self.backend.local_path else Path(".")
            try:
                await asyncio.to_thread(load_config_text, full, name, base)
            except ConfigError as e:
                problems = list(e.problems)
        return JSONResponse({"ok": not problems, "problems": [REDACTOR.scrub(p) for p in problems]})

    async def _apply(self, request: Request, session: Session | None) -> Response:
        text = await _text_body(request)
        running = await asyncio.to_thread(_read, self.backend.config_path)
        full, problems = masking.unmask(text, running)
        name = f"{Path(str(self.backend.local_path)).name} (page)"
        if problems:
            return JSONResponse({"result": "refused",
                                 "problems": [f"{name}:{p.removeprefix('line ')}" for p in problems]})
        self._action(request, session, "configuration apply", bytes=len(full))
        result, problems = await self.backend.apply_from_page(full)
        return JSONResponse({"result": result, "problems": [REDACTOR.scrub(p) for p in problems]})

    async def _verify(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        if name not in {s.name for s in self.backend.config.sinks}:
            raise _Refused(404, f"no sink named {name!r}")
        self._action(request, session, "verify", sink=name)
        ok, lines = await self.backend.verify_sink(name)
        return JSONResponse({"ok": ok, "lines": [REDACTOR.scrub(x) for x in lines]})

    async def _dead_letter_action(self, request: Request, session: Session | None) -> Response:
        action = request.path_params["action"]
        if action not in ("retry", "purge"):
            raise _Refused(404, "retry or purge")
        body = await _json_body(request, 64 * 1024)
        ids = body.get("ids") if isinstance(body, dict) else None
        sink = body.get("sink") if isinstance(body, dict) else None
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
            raise _Refused(400, "ids: a list of dead letter numbers")
        if sink is not None and not isinstance(sink, str):
            raise _Refused(400, "sink: a sink's name")
        if action == "purge" and not ids and not (isinstance(body, dict) and body.get("all") is True):
            raise _Refused(400, "purge deletes readings for good: name them (ids), or say all: true")
        n = await self.backend.dead_letter_action(action, ids or None, sink)
        self._action(request, session, f"dead letters {action}", sink=sink, ids=ids, count=n)
        return JSONResponse({"count": n})


class _SecurityHeaders:
    """Adds :data:`_SECURITY` to every answer that does not set them itself (pure ASGI: streams pass untouched)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in _SECURITY.items() if k.lower().encode()
                         not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, sending)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _problem(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _body(request: Request, limit: int) -> bytes:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > limit):
        raise _Refused(413, f"more than {limit} bytes")
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise _Refused(413, f"more than {limit} bytes")
    return data


async def _json_body(request: Request, limit: int) -> Any:
    try:
        return json.loads(await _body(request, limit) or b"{}")
    except ValueError:
        raise _Refused(400, "the body is not JSON") from None


async def _text_body(request: Request) -> str:
    body = await _json_body(request, MAX_BODY)
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str):
        raise _Refused(400, "text: the configuration file's content")
    return text


def _read(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _Refused(500, f"cannot read {path}: {e}") from None


def _scrub(value: Any) -> Any:
    """A report's strings (problems quoting a peer's answer...) with every secret replaced."""
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _for_meter(sub: Any, message: dict[str, Any], meter: str) -> bool:
    """Whether a message that gave no reading was meant for ``meter``: the subscription's one meter, or the meter
    its topic names at the subscription's ``meter_level``."""
    if sub.meter is not None:
        return bool(sub.meter == meter)
    levels = str(message["topic"]).split("/")
    return sub.meter_level is not None and len(levels) >= sub.meter_level and levels[sub.meter_level - 1] == meter


def _unit(q: Quantity, value_unit: str | None) -> str:
    if q in (Quantity.VALUE,):
        return value_unit or ""
    try:
        return unit_of(q)
    except AssertionError:
        return ""


def _describe(meter: Any) -> str:
    describe = getattr(meter, "describe", None)
    return REDACTOR.scrub(str(describe())) if callable(describe) else type(meter).__name__


def _registers(poller: Any) -> list[dict[str, Any]]:
    """Each value's registers as last answered: address, function, raw words, word order, the value decoded as
    configured and with the other word order (a wrong order shows as an absurd number beside a plausible one)."""
    from gateway.platforms.modbus.registers import decoder, registers_to_bytes

    out = []
    for block in poller.planner.blocks:
        words = poller.last_words.get((block.function, block.address))
        for p in block.points:
            row: dict[str, Any] = {"quantity": p.quantity.value, "address": p.address, "function": p.code,
                                   "type": p.type, "word_order": p.word_order, "scale": p.scale, "words": None,
                                   "value": None, "other_order": None}
            if words is not None and len(words) == block.count:
                off = p.address - block.address
                row["words"] = [f"0x{w:04X}" for w in words[off:off + p.width]]
                data = registers_to_bytes(words)
                row["value"] = decoder(p)(data, 2 * off)
                if p.width > 1:
                    other = replace(p, word_order="little" if p.word_order == "big" else "big")
                    row["other_order"] = decoder(other)(data, 2 * off)
            out.append(row)
    return out


def _log_text() -> str:
    return "\n".join(f"{ln['ts']} {ln['level']:<7} {ln['component']}: {ln['event']} {ln['fields']}".rstrip()
                     for ln in RING.since(0, limit=100_000)) + "\n"


def _versions() -> dict[str, str]:
    out = {"meter-gateway": __version__, "python": platform.python_version(), "os": platform.platform()}
    for pkg in ("pymodbus", "paho-mqtt", "httpx", "pydantic", "starlette", "uvicorn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    with contextlib.suppress(OSError):
        out["os_release"] = next((ln.split("=", 1)[1].strip('"') for ln in Path("/etc/os-release").read_text()
                                  .splitlines() if ln.startswith("PRETTY_NAME=")), "")
    return out
