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
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway import __version__
from gateway.config.loader import load_config_text
from gateway.errors import ConfigError
from gateway.health import evaluate
from gateway.logs import REDACTOR, RING
from gateway.platforms.modbus.tools import unit_label
from gateway.reading import iso_utc
from gateway.web import masking
from gateway.web.auth import Brake, Password, Session, Sessions
from gateway.web.backend import Backend
from gateway.web.http import Refused, SecurityHeaders, json_body, problem, text_body
from gateway.web.views import ADVICE, describe, for_meter, log_text, read_text, registers, scrub, versions

log = structlog.get_logger("gateway.web")

COOKIE = "mg_session"
HEADER = "x-gateway-page"
_STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
           "app.css": "text/css; charset=utf-8"}


class Page:
    """The routes, bound to the daemon (through :class:`~gateway.web.backend.Backend`) and its ``monitoring``
    settings."""

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
        return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])

    # ------------------------------------------------------------ access

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "?"

    def _current(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    def _guard(self, handler: Callable[[Request, Session | None], Awaitable[Response]],
               changes: bool = False) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not self.enabled:
                return problem(404, "the page is off (monitoring.page.enabled: false)")
            if self.remote and self.password is None:
                return problem(403, "the page is off: it faces the network (monitoring.allow_remote) and no"
                                     " password is set (monitoring.page.password_file)")
            session = self._current(request)
            if changes:
                if request.headers.get(HEADER) != "1":
                    return problem(403, "this action is only taken from the gateway's page")
                if self.password is None:
                    return problem(403, "the page is read only: set monitoring.page.password_file (see"
                                         " 'meter-gateway hash-password') to change things from it")
                if session is None:
                    return problem(401, "sign in first")
            elif self.remote and session is None:
                return problem(401, "sign in first")
            try:
                return await handler(request, session)
            except Refused as e:
                return problem(e.status, e.message)
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
            return problem(403, "sign in from the gateway's page")
        if self.password is None or not self.enabled:
            return problem(403, "no password is set (monitoring.page.password_file): the page is read only")
        wait = self.brake.wait(client)
        if wait > 0:
            return problem(429, f"too many wrong passwords: try again in {wait:.0f} s",
                            {"Retry-After": str(max(1, round(wait)))})
        body = await json_body(request, 4096)
        attempt = body.get("password") if isinstance(body, dict) else None
        if not isinstance(attempt, str) or not await asyncio.to_thread(self.password.check, attempt):
            delay = self.brake.failed(client)
            log.warning("page: wrong password", client=client, next_try_in_s=delay)
            return problem(403, "wrong password")
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
        problems = scrub(evaluate(report, config.monitoring))
        covered = {m for p in problems for m in p.get("meters") or () if p.get("check") in ("bus_down", "cloud_down")}
        problems += [{"check": "meter_failing", "meter": name, "detail": scrub(str(row.get("last_problem") or
                      "no answer"))} for name, row in report["meters"].items() if row.get("failing")
                     and name not in covered]
        problems = [{**p, "todo": ADVICE.get(str(p.get("check")), "")} for p in problems]
        return JSONResponse({
            "site": config.site.name, "timezone": config.site.timezone, "version": __version__,
            "started_ms": int(self.started * 1000), "now_ms": int(time.time() * 1000),
            "config_path": str(self.backend.config_path), "problems": problems, "report": scrub(report),
        })

    async def _meters(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        rows = []
        for m in self.backend.config.meters:
            row = report["meters"].get(m.name, {})
            rows.append({"name": m.name, "kind": type(m).__name__.replace("MeterConfig", "").lower(),
                         "describe": describe(m), "interval": getattr(m, "interval", None), **scrub(row),
                         **self._latest(m.name)})
        return JSONResponse({"meters": rows})

    def _latest(self, name: str) -> dict[str, Any]:
        r = self.backend.latest.get(name)
        if r is None:
            return {"last": None}
        meter = next((m for m in self.backend.config.meters if m.name == name), None)
        value_unit = getattr(meter, "value_unit", None)
        return {"last": {"ts_ms": r.ts_ms, "ts": iso_utc(r.ts_ms), "values": [
            {"quantity": q.value, "value": v, "unit": unit_label(q, value_unit)} for q, v in r.values.items()]}}

    async def _meter(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        meter = next((m for m in self.backend.config.meters if m.name == name), None)
        if meter is None:
            raise Refused(404, f"no meter named {name!r}")
        report = await self.backend.snapshot()
        poller = self.backend.pollers().get(name)
        # An MQTT meter's messages: those that gave its readings, and the others its subscriptions got for it.
        subs = {s.name: s for s in self.backend.config.subscriptions}
        messages = [{**m, "subscription": sub, "payload": REDACTOR.scrub(str(m["payload"]))}
                    for sub, ms in self.backend.mqtt_messages().items() for m in ms
                    if name in m["meters"] or (not m["meters"] and sub in subs and for_meter(subs[sub], m, name))]
        return JSONResponse({"name": name, "describe": describe(meter), **scrub(report["meters"].get(name, {})),
                             **self._latest(name), "registers": registers(poller) if poller else None,
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
            raise Refused(404, f"no bus named {name!r}")
        body = await json_body(request, 4096)
        spec = body.get("units", "1-16") if isinstance(body, dict) else "1-16"
        try:
            units = parse_units(str(spec))
        except GatewayError as e:
            raise Refused(400, str(e)) from None
        self._action(request, session, "bus scan", bus=name, units=str(spec))
        try:
            result = await self.backend.scan_bus(name, units)
        except GatewayError as e:
            raise Refused(409, str(e)) from None
        return JSONResponse(scrub(result))

    async def _config(self, request: Request, session: Session | None) -> Response:
        path = self.backend.config_path
        text = await asyncio.to_thread(read_text, path)
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
            out.append({"name": s.name, "type": s.type, **scrub(report["sinks"].get(s.name, {})),
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
        return Response(log_text(), media_type="text/plain; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="meter-gateway.log"'})

    async def _diagnostics(self, request: Request, session: Session | None) -> Response:
        report = await self.backend.snapshot()
        text = await asyncio.to_thread(read_text, self.backend.config_path)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("config.yaml", masking.mask(text))
            z.writestr("status.json", REDACTOR.scrub(json.dumps(report, indent=2, default=str)))
            z.writestr("health.json", REDACTOR.scrub(json.dumps(evaluate(report, self.backend.config.monitoring),
                                                                indent=2, default=str)))
            z.writestr("recent.log", log_text())
            z.writestr("versions.json", json.dumps(versions(), indent=2))
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        self._action(request, session, "diagnostics downloaded")
        return Response(buf.getvalue(), media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="meter-gateway-{self.backend.config.site.name}-{stamp}.zip"'})

    # ------------------------------------------------------------ actions

    async def _read_now(self, request: Request, session: Session | None) -> Response:
        name = request.path_params["name"]
        poller = self.backend.pollers().get(name)
        if poller is None:
            raise Refused(404, f"{name!r} is not a Modbus meter of the running configuration (read now reads a"
                                " Modbus meter)")
        self._action(request, session, "read now", meter=name)
        reading = await poller.poll()
        return JSONResponse({
            "values": [{"quantity": q.value, "value": v, "unit": unit_label(q, poller.meter.value_unit)}
                       for q, v in (reading.values.items() if reading else ())],
            "ts": iso_utc(reading.ts_ms) if reading else None,
            "problems": [REDACTOR.scrub(str(p)) for p in poller.last_problems],
            "registers": registers(poller), "queued": False})

    async def _check(self, request: Request, session: Session | None) -> Response:
        text = await text_body(request)
        running = await asyncio.to_thread(read_text, self.backend.config_path)
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
        text = await text_body(request)
        running = await asyncio.to_thread(read_text, self.backend.config_path)
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
            raise Refused(404, f"no sink named {name!r}")
        self._action(request, session, "verify", sink=name)
        ok, lines = await self.backend.verify_sink(name)
        return JSONResponse({"ok": ok, "lines": [REDACTOR.scrub(x) for x in lines]})

    async def _dead_letter_action(self, request: Request, session: Session | None) -> Response:
        action = request.path_params["action"]
        if action not in ("retry", "purge"):
            raise Refused(404, "retry or purge")
        body = await json_body(request, 64 * 1024)
        ids = body.get("ids") if isinstance(body, dict) else None
        sink = body.get("sink") if isinstance(body, dict) else None
        if ids is not None and not (isinstance(ids, list) and all(isinstance(i, int) for i in ids)):
            raise Refused(400, "ids: a list of dead letter numbers")
        if sink is not None and not isinstance(sink, str):
            raise Refused(400, "sink: a sink's name")
        if action == "purge" and not ids and not (isinstance(body, dict) and body.get("all") is True):
            raise Refused(400, "purge deletes readings for good: name them (ids), or say all: true")
        n = await self.backend.dead_letter_action(action, ids or None, sink)
        self._action(request, session, f"dead letters {action}", sink=sink, ids=ids, count=n)
        return JSONResponse({"count": n})
