"""An Intellimeter REST API server built from the document (seed 003), over HTTPS with a throwaway CA.

Rules enforced:

- ``POST /api/v1/auth`` (JSON body): ``client_credentials`` (a known client id and secret; the scopes granted are
  those asked for that the application has enabled), ``refresh_token`` (the old access token and its refresh token;
  both are void afterwards, as the document says of the old token), ``device_code`` (start: a device code, a user
  code, a verification URI, an ``interval`` and ``expires_in`` as ``H:MM:SS``; polling: ``authorization_pending``,
  ``slow_down`` when polled faster than the interval, ``access_denied``, ``expired_token``, or the tokens once
  approved), all errors as 400 with ``error`` and ``error_description``; a bad client is 401.
- Tokens expire after ``token_life`` seconds (``expires_in`` says so as ``H:MM:SS``); an expired, void or unknown
  bearer token is 401; a token without the endpoint's scope is 403.
- ``GET /api/v1/read?by=meter`` with ``limit_quantity`` (an integer, default 0: only each meter's latest read) and
  ``limit_unit`` (Second, Minute, Hour, Day or Week, default Hour), and ``property``: ``{property: [read...]}``, each
  read with the document's fields, ``time_stamping`` in the emulator's local time without offset. Other ``by``
  values and malformed limits are 400.
- ``GET /api/v1/meter?property=ID``: the property's meters.

Faults for the tests: ``answer(status, times)``, ``garble(body, times)``, ``stall(seconds, times)``; ``latency``
before every answer; ``revoke()`` voids every token (the next request meets a 401).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from tests.helpers.https import HttpsServer, reply

UNITS = {"Second": 1, "Minute": 60, "Hour": 3600, "Day": 86400, "Week": 7 * 86400}


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class Fault:
    kind: str  # answer, garble, stall
    times: int
    status: int = 500
    body: str = ""
    seconds: float = 0.0
    path: str | None = None


@dataclass
class Token:
    scope: str
    expires: float
    refresh: str
    void: bool = False


@dataclass
class DeviceCode:
    user_code: str
    expires: float
    interval: float
    state: str = "pending"  # pending, approved, denied, used
    last_poll: float = 0.0


@dataclass
class Meter:
    id: str
    serial_number: str
    property: str
    utility: str = "E"
    units: str = "kWh"
    name: str = ""
    suite: str = "s1"
    #: (local stamp, fields) in time order
    reads: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


class IntellimeterEmulator:
    def __init__(self, cert_dir: Path, tz: str = "America/Toronto",
                 client: tuple[str, str] = ("im-client", "im-s3cret"),
                 app_scopes: str = "meter:reads:read meter:meters:read", token_life: float = 3600.0,
                 device_interval: float = 1.0, latency: float = 0.0) -> None:
        self.tz = ZoneInfo(tz)
        self.client_id, self.client_secret = client
        self.app_scopes = set(app_scopes.split())
        self.token_life = token_life
        self.device_interval = device_interval
        self.latency = latency
        self.lock = threading.Lock()
        self.tokens: dict[str, Token] = {}
        self.refresh: dict[str, str] = {}  # refresh token -> access token
        self.codes: dict[str, DeviceCode] = {}
        self.meters: dict[str, Meter] = {}
        self.faults: deque[Fault] = deque()
        #: (method, path, status, query) of every request
        self.log: list[tuple[str, str, int, dict[str, list[str]]]] = []
        #: grant types asked for, in order
        self.grants: list[str] = []
        self.https = HttpsServer(cert_dir, "intellimeter-ca.pem")
        self.ca_file = self.https.ca_file
        self._live: threading.Thread | None = None
        self._live_stop = threading.Event()

    # ------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}"

    def start(self) -> IntellimeterEmulator:
        self.https.serve(_handler(self))
        return self

    def stop(self) -> None:
        self.stop_live()
        self.https.shutdown()

    def stop_live(self) -> None:
        self._live_stop.set()
        if self._live is not None:
            self._live.join(5)

    def add_meter(self, meter_id: str, serial: str, prop: str = "p1", utility: str = "E", units: str = "kWh",
                  name: str = "") -> Meter:
        m = Meter(meter_id, serial, prop, utility, units, name or f"Suite {meter_id}")
        with self.lock:
            self.meters[meter_id] = m
        return m

    def add_read(self, meter_id: str, stamp: str, kwh: Any, kwh_interval: Any = 0.0, **extra: Any) -> None:
        with self.lock:
            m = self.meters[meter_id]
            m.reads.append((stamp, {"kwh": kwh, "kwh_interval": kwh_interval, **extra}))
            m.reads.sort(key=lambda r: r[0])

    def add_series(self, meter_id: str, start: datetime, step_s: float, n: int, kwh0: float = 1000.0,
                   per_step: float = 0.25) -> list[tuple[str, float]]:
        """``n`` reads from the naive local ``start``, every ``step_s``: (stamp, kwh) of each."""
        out = []
        for i in range(n):
            stamp = (start + timedelta(seconds=step_s * i)).strftime("%Y-%m-%dT%H:%M:%S")
            kwh = round(kwh0 + per_step * i, 3)
            out.append((stamp, kwh))
        with self.lock:
            m = self.meters[meter_id]
            m.reads.extend((s, {"kwh": k, "kwh_interval": per_step}) for s, k in out)
            m.reads.sort(key=lambda r: r[0])
        return out

    def now_local(self) -> datetime:
        return datetime.now(self.tz).replace(tzinfo=None, microsecond=0)

    def live(self, step_s: float, per_step: float = 0.25) -> None:
        """Every ``step_s``, a new read of every meter stamped now (local time), its counter one step higher."""
        def loop() -> None:
            while not self._live_stop.wait(step_s):
                stamp = self.now_local().strftime("%Y-%m-%dT%H:%M:%S")
                with self.lock:
                    for m in self.meters.values():
                        last = m.reads[-1][1]["kwh"] if m.reads else 0.0
                        if m.reads and m.reads[-1][0] >= stamp:
                            continue
                        m.reads.append((stamp, {"kwh": round(last + per_step, 3), "kwh_interval": per_step}))
        self._live = threading.Thread(target=loop, daemon=True)
        self._live.start()

    def answer(self, status: int, times: int = 1, path: str | None = None) -> None:
        self.faults.append(Fault("answer", times, status=status, path=path))

    def garble(self, body: str, times: int = 1, path: str | None = None, status: int = 200) -> None:
        self.faults.append(Fault("garble", times, status=status, body=body, path=path))

    def stall(self, seconds: float, times: int = 1, path: str | None = None) -> None:
        self.faults.append(Fault("stall", times, seconds=seconds, path=path))

    def revoke(self) -> None:
        with self.lock:
            for t in self.tokens.values():
                t.void = True

    def approve(self, user_code: str, deny: bool = False) -> None:
        with self.lock:
            for c in self.codes.values():
                if c.user_code == user_code:
                    c.state = "denied" if deny else "approved"

    def requests(self, path: str) -> list[dict[str, list[str]]]:
        return [q for _, p, _, q in self.log if p == path]

    def _fault(self, path: str) -> Fault | None:
        with self.lock:
            for f in list(self.faults):
                if f.path is None or f.path == path:
                    f.times -= 1
                    if f.times <= 0:
                        self.faults.remove(f)
                    return f
        return None

    # ------------------------------------------------------------ the API

    def _issue(self, scope: str) -> dict[str, Any]:
        access, refresh = secrets.token_hex(16), secrets.token_hex(16)
        self.tokens[access] = Token(scope, time.monotonic() + self.token_life, refresh)
        self.refresh[refresh] = access
        return {"access_token": access, "expires_in": hms(self.token_life), "refresh_token": refresh,
                "scope": scope, "token_type": "bearer"}

    def auth(self, body: Any) -> tuple[int, Any]:
        def err(code: str, desc: str, status: int = 400) -> tuple[int, Any]:
            return status, {"error": code, "error_description": desc}

        if not isinstance(body, dict):
            return err("invalid_request", "expected a JSON object")
        grant = body.get("grant_type")
        self.grants.append(str(grant))
        with self.lock:
            if grant == "refresh_token":
                old, refresh = body.get("access_token"), body.get("refresh_token")
                if refresh not in self.refresh or self.refresh[refresh] != old:
                    return err("invalid_grant", "unknown refresh token")
                tok = self.tokens[old]
                tok.void = True
                del self.refresh[refresh]
                return 200, self._issue(tok.scope)
            if body.get("client_id") != self.client_id or body.get("client_secret") != self.client_secret:
                return err("invalid_client", "unknown client", 401)
            if grant == "client_credentials":
                asked = str(body.get("scope") or "").split()
                return 200, self._issue(" ".join(s for s in asked if s in self.app_scopes))
            if grant == "device_code":
                code = body.get("device_code")
                if code is None:
                    dc = secrets.token_hex(8)
                    user = secrets.token_hex(3).upper()
                    self.codes[dc] = DeviceCode(user, time.monotonic() + 600, self.device_interval)
                    return 200, {"device_code": dc, "expires_in": "0:10:00", "interval": hms(self.device_interval),
                                 "user_code": user, "verification_uri": f"{self.url}/device"}
                c = self.codes.get(code)
                now = time.monotonic()
                if c is None or now > c.expires or c.state == "used":
                    return err("expired_token", "The device code you have requested either does not exist, or is"
                                                " expired.")
                if now - c.last_poll < c.interval:
                    c.last_poll = now
                    return err("slow_down", "polled faster than the interval")
                c.last_poll = now
                if c.state == "pending":
                    return err("authorization_pending", "Keep polling.")
                if c.state == "denied":
                    return err("access_denied", "The client has rejected the request. Stop polling.")
                c.state = "used"
                return 200, self._issue(" ".join(sorted(self.app_scopes)))
            return err("unsupported_grant_type", f"grant_type {grant!r}")

    def _bearer(self, headers: Any, scope: str) -> int:
        value = headers.get("Authorization") or ""
        if not value.startswith("Bearer "):
            return 401
        with self.lock:
            tok = self.tokens.get(value[7:])
            if tok is None or tok.void or time.monotonic() > tok.expires:
                return 401
            return 200 if scope in tok.scope.split() else 403

    def read(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        by = query.get("by", [""])[0]
        if by != "meter":
            return 400, {"error": f"by={by!r} is not emulated"}
        try:
            qty = int(query.get("limit_quantity", ["0"])[0])
        except ValueError:
            return 400, {"error": "limit_quantity is not an integer"}
        unit = query.get("limit_unit", ["Hour"])[0]
        if unit not in UNITS or qty < 0:
            return 400, {"error": "bad limit"}
        prop = query.get("property", [None])[0]
        since = (self.now_local() - timedelta(seconds=qty * UNITS[unit])).strftime("%Y-%m-%dT%H:%M:%S")
        out: dict[str, list[dict[str, Any]]] = {}
        with self.lock:
            for m in self.meters.values():
                if prop is not None and m.property != prop:
                    continue
                reads = m.reads[-1:] if qty == 0 else [r for r in m.reads if r[0] >= since]
                out.setdefault(m.property, []).extend(
                    {"floor": None, **fields, "meter": m.id, "name": m.name, "panel": None,
                     "serial_number": m.serial_number, "suite": m.suite, "time_stamping": stamp, "units": m.units,
                     "utility": m.utility} for stamp, fields in reads)
        return 200, out

    def meter_list(self, query: dict[str, list[str]]) -> tuple[int, Any]:
        prop = query.get("property", [None])[0]
        with self.lock:
            return 200, [{"floor": None, "id": m.id, "name": m.name, "panel": None, "property": m.property,
                          "serial_number": m.serial_number, "suite": m.suite, "suite_name": "Suite",
                          "units": m.units.lower(), "utility": m.utility}
                         for m in self.meters.values() if m.property == prop]


def _handler(emu: IntellimeterEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            if emu.latency:
                time.sleep(emu.latency)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            fault = emu._fault(path)
            if fault is not None and fault.kind == "stall":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "answer":
                emu.log.append((method, path, fault.status, query))
                reply(self, fault.status, json.dumps({"error": f"emulated {fault.status}"}))
                return
            if method == "POST" and path == "/api/v1/auth":
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                status, answer = emu.auth(body)
            elif method == "GET" and path in ("/api/v1/read", "/api/v1/meter"):
                scope = "meter:reads:read" if path.endswith("read") else "meter:meters:read"
                status = emu._bearer(self.headers, scope)
                answer = {"error": "unauthorized"} if status == 401 else {"error": "forbidden: scope"}
                if status == 200:
                    status, answer = emu.read(query) if path.endswith("read") else emu.meter_list(query)
            else:
                status, answer = 404, {"error": "not found"}
            emu.log.append((method, path, status, query))
            if fault is not None and fault.kind == "garble":
                reply(self, fault.status, fault.body)
                return
            reply(self, status, json.dumps(answer))

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
