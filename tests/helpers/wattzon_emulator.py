"""A WattzOn Link API 4.0 server built from the document (seed 001), over HTTPS that requires a client certificate
signed by its own CA (as WattzOn signs its customers' CSRs).

Rules enforced:

- No client certificate, or one of another CA: the TLS handshake fails (nothing is answered).
- ``GET /link/4.0/echo?string=``, ``GET /link/4.0/certificates/info``, ``GET /link/4.0/profiles/{id}``.
- ``POST /link/4.0/jobs`` (``profile_id``, ``mode`` bill|interval): 404 for an unknown profile; a job then goes
  through the states of its profile's ``script`` (one per status request), ``finished`` only at the last; status
  words as the document shows them (``AgentState.success``). A successful bill job publishes the bills waiting in
  ``extracted_bills`` (with ``cached`` false; those already there become ``cached`` true); an interval job, the
  months waiting in ``extracted_months``.
- ``GET /link/4.0/data/bills/{profile}``: the bills (a bare list, as the document's example; ``bills_wrapped``:
  under ``data``, as its output section says); 404 "Bills not found" while there are none.
- ``GET /link/4.0/data/intervals/{profile}``: ``{"intervals": [period...]}`` (meter_id, month_id, first_interval,
  last_interval, complete, extraction_time, job_id_extracted); ``.../{meter_id}/monthly/{YYYY-MM}?format=json``:
  ``{"intervals": [{"start", "end", "usage", "units"}]}`` (the document does not show the normalised layout: this
  is the gateway's default one; ``layout`` changes the names).

Faults: ``answer(status, times, prefix)``, ``garble(body, times, prefix)``; ``latency`` before every answer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.helpers.https import HttpsServer, reply

BASE = "/link/4.0"


@dataclass
class Profile:
    id: int
    bills: list[dict[str, Any]] = field(default_factory=list)
    extracted_bills: list[dict[str, Any]] = field(default_factory=list)
    #: (meter_id, month_id) -> {"complete": bool, "rows": [...]}
    months: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    extracted_months: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    script: list[str] = field(default_factory=lambda: ["queued", "login", "bill_extract", "success"])


@dataclass
class Fault:
    kind: str
    times: int
    status: int = 500
    body: str = ""
    prefix: str = ""


class WattzonEmulator:
    def __init__(self, cert_dir: Path, latency: float = 0.0) -> None:
        self.latency = latency
        self.lock = threading.Lock()
        self.profiles: dict[int, Profile] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.faults: deque[Fault] = deque()
        self.log: list[tuple[str, str, int]] = []
        self.bills_wrapped = False
        self.layout = {"list": "intervals", "start": "start", "end": "end", "usage": "usage", "units": "units"}
        self.https = HttpsServer(cert_dir, "wattzon-ca.pem", client_certs=True)
        self.ca_file = self.https.ca_file
        self.client_cert, self.client_key = self.https.issue_client("gateway")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}"

    def start(self) -> WattzonEmulator:
        self.https.serve(_handler(self))
        return self

    def stop(self) -> None:
        self.https.shutdown()

    def profile(self, pid: int) -> Profile:
        with self.lock:
            return self.profiles.setdefault(pid, Profile(pid))

    def answer(self, status: int, times: int = 1, prefix: str = "") -> None:
        self.faults.append(Fault("answer", times, status=status, prefix=prefix))

    def garble(self, body: str, times: int = 1, prefix: str = "") -> None:
        self.faults.append(Fault("garble", times, body=body, prefix=prefix))

    def requests(self, prefix: str) -> list[tuple[str, str, int]]:
        return [e for e in self.log if e[1].startswith(BASE + prefix)]

    def _fault(self, path: str) -> Fault | None:
        with self.lock:
            for f in list(self.faults):
                if path.startswith(BASE + f.prefix):
                    f.times -= 1
                    if f.times <= 0:
                        self.faults.remove(f)
                    return f
        return None

    # ------------------------------------------------------------ the API

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        parts = [unquote(p) for p in path[len(BASE):].strip("/").split("/")]
        with self.lock:
            if parts == ["echo"]:
                return 200, {"string": (query.get("string") or [""])[0]}
            if parts == ["certificates", "info"]:
                return 200, {"client_name": "meter-gateway tests", "enabled": True,
                             "expiration_date": "2030-01-01T00:00:00", "created_date": "2026-01-01T00:00:00"}
            if len(parts) == 2 and parts[0] == "profiles":
                p = self.profiles.get(int(parts[1])) if parts[1].isdigit() else None
                return (200, {"utility_provider_id": 3150, "label": f"p{p.id}"}) if p else (404, {"error": "Profile"
                                                                                                   " not found"})
            if parts == ["jobs"] and method == "POST":
                if not isinstance(body, dict) or not isinstance(body.get("profile_id"), int):
                    return 400, {"error": "Error loading the JSON"}
                if body["profile_id"] not in self.profiles:
                    return 404, {"error": "Profile not found"}
                job = str(uuid.uuid4())
                self.jobs[job] = {"profile_id": body["profile_id"], "mode": body.get("mode", "bill"), "i": 0,
                                  "script": list(self.profiles[body["profile_id"]].script)}
                return 200, {"job_id": job, "profile_id": body["profile_id"]}
            if len(parts) == 2 and parts[0] == "jobs":
                j = self.jobs.get(parts[1])
                if j is None:
                    return 404, {"error": "Job not found"}
                state = j["script"][min(j["i"], len(j["script"]) - 1)]
                finished = j["i"] >= len(j["script"]) - 1
                if finished and not j.get("done"):
                    j["done"] = True
                    self._extracted(j, state)
                j["i"] += 1
                return 200, {"job_id": parts[1], "job_status": f"AgentState.{state}", "finished": finished,
                             "detail": ""}
            if len(parts) == 3 and parts[:2] == ["data", "bills"]:
                p = self.profiles.get(int(parts[2])) if parts[2].isdigit() else None
                if p is None:
                    return 404, {"error": "Profile not found"}
                if not p.bills:
                    return 404, {"error": "Bills not found"}
                return 200, {"data": p.bills} if self.bills_wrapped else p.bills
            if len(parts) == 3 and parts[:2] == ["data", "intervals"]:
                p = self.profiles.get(int(parts[2])) if parts[2].isdigit() else None
                if p is None:
                    return 404, {"error": "Profile not found"}
                if not p.months:
                    return 404, {"error": "No intervals found"}
                return 200, {"intervals": [
                    {"meter_id": mid, "month_id": ym, "complete": m["complete"],
                     "first_interval": m["rows"][0]["start"] if m["rows"] else None,
                     "last_interval": m["rows"][-1]["start"] if m["rows"] else None,
                     "extraction_time": int(time.time()), "source_file_size": 1000, "job_id_extracted": "j"}
                    for (mid, ym), m in sorted(p.months.items())]}
            if len(parts) == 6 and parts[:2] == ["data", "intervals"] and parts[4] == "monthly":
                p = self.profiles.get(int(parts[2])) if parts[2].isdigit() else None
                if (query.get("format") or ["source"])[0] != "json":
                    return 400, {"error": "Format not supported"}
                m = p.months.get((parts[3], parts[5])) if p else None
                if m is None:
                    return 404, {"error": "Interval not found"}
                lay = self.layout
                rows = [{lay["start"]: r["start"], lay["end"]: r["end"], lay["usage"]: r["usage"],
                         lay["units"]: r.get("units", "kWh")} for r in m["rows"]]
                return 200, {lay["list"]: rows} if lay["list"] else rows
        return 404, {"error": "not found"}

    def _extracted(self, job: dict[str, Any], state: str) -> None:
        if state not in ("success", "partial_success"):
            return
        p = self.profiles[job["profile_id"]]
        if job["mode"] == "bill":
            for b in p.bills:
                b["cached"] = True
            p.bills.extend({**b, "cached": False} for b in p.extracted_bills)
            p.extracted_bills.clear()
        else:
            p.months.update(p.extracted_months)
            p.extracted_months.clear()


def _handler(emu: WattzonEmulator) -> type[BaseHTTPRequestHandler]:
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
            path = parts.path.rstrip("/")
            fault = emu._fault(path)
            if fault is not None and fault.kind == "answer":
                emu.log.append((method, path, fault.status))
                reply(self, fault.status, json.dumps({"error": f"emulated {fault.status}"}))
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, answer = emu.handle(method, path, parse_qs(parts.query), body)
            emu.log.append((method, path, status))
            if fault is not None and fault.kind == "garble":
                reply(self, 200, fault.body)
                return
            reply(self, status, json.dumps(answer))

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler
