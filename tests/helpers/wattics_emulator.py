"""A Wattics data-push emulator: HTTPS on loopback with a throwaway certificate, enforcing the platform's rules.

Rules (seed document 002 and FACTS.md): POST to the endpoint, basic auth, ``Content-Type: application/json``, the
JSON on one line, known keys only and no nulls, ``tsISO8601`` as ``yyyy-mm-ddThh:mm:ss.sss+hh:mm``, one packet
per request, chronological per ``id``: a packet not newer than the last accepted one for its id is discarded and
recorded: ``duplicates`` when that packet was accepted before (sent again), ``out_of_order`` when it is new but older
than one accepted (the platform drops it: a hole).
``GET <endpoint>?stream=<id>`` answers the last packet processed for that id (an invented shape: the real one is
not documented).

Faults to order: ``answer(status, times, retry_after, body)``, ``stall(seconds, times)``, ``drop(times)`` (close the
connection without answering), ``latency`` (added to every answer).

    python -m tests.helpers.wattics_emulator DIR [--latency 0.02]   (prints "PORT"; stats at GET /_stats)
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import socket
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.helpers.https import HttpsServer, reply

PATH = "/measurements/v2/unifiedjson/"
TS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{2}:\d{2}$")
PHASED = ("aP", "rP", "apP", "v", "c", "pC")
ELECTRICAL = {"id", "tsISO8601", "v_12", "v_13", "v_23"} | {f"{p}_{i}" for p in PHASED for i in (1, 2, 3)}
VALUE = {"id", "tsISO8601", "value"}


@dataclass
class Fault:
    kind: str  # "answer", "stall", "drop"
    times: int
    status: int = 200
    retry_after: str | None = None
    body: str = ""
    seconds: float = 0.0
    until: float = float("inf")  # time.monotonic() past which the fault is over, however many times are left


class WatticsEmulator:
    def __init__(self, cert_dir: Path, users: dict[str, str] | None = None, known_ids: set[str] | None = None,
                 latency: float = 0.0) -> None:
        self.users = users if users is not None else {"gateway": "s3cret-pass"}
        self.known_ids = known_ids
        self.latency = latency
        self.lock = threading.Lock()
        self.packets: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.last_ts: dict[str, float] = {}
        self.seen: dict[str, set[float]] = defaultdict(set)
        self.duplicates: list[tuple[str, str]] = []
        self.out_of_order: list[tuple[str, str]] = []
        self.refused: list[tuple[int, str]] = []
        self.requests = 0
        self.last_accept_at = 0.0
        self.first_accept_at = 0.0
        self.faults: deque[Fault] = deque()
        #: (when, data point, tsISO8601) of every packet answered 200, duplicates included, in arrival order.
        self._arrivals: list[tuple[float, str, str]] = []
        #: False: answer "Connection: close" and close, as a server without keep-alive does
        self.keepalive = True
        #: set as a cookie on the first answer; requests carrying it back are counted
        self.cookie: str | None = None
        self.with_cookie = 0
        #: False: keep no packet's content (a long benchmark's millions), only that it came
        self.keep_packets = True
        self.https = HttpsServer(cert_dir, "wattics-ca.pem")
        self.ca_file = self.https.ca_file

    # ------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}{PATH}"

    @property
    def connections(self) -> int:
        return self.https.connections

    def start(self, port: int = 0) -> WatticsEmulator:
        self.https.serve(_handler(self), port)
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a server that goes away does."""
        self.https.shutdown()

    def answer(self, status: int, times: int = 1, retry_after: str | None = None, body: str = "") -> None:
        with self.lock:
            self.faults.append(Fault("answer", times, status, retry_after, body))

    def answer_for(self, status: int, seconds: float) -> None:
        """Answer ``status`` to every request for ``seconds``: a platform down for a while."""
        with self.lock:
            self.faults.append(Fault("answer", 2**62, status, until=time.monotonic() + seconds))

    def stall(self, seconds: float, times: int = 1) -> None:
        with self.lock:
            self.faults.append(Fault("stall", times, seconds=seconds))

    def garbage(self, times: int = 1) -> None:
        """Answer bytes that are not HTTP."""
        with self.lock:
            self.faults.append(Fault("garbage", times))

    def drop(self, times: int = 1) -> None:
        with self.lock:
            self.faults.append(Fault("drop", times))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def _next_fault(self) -> Fault | None:
        with self.lock:
            while self.faults and self.faults[0].until < time.monotonic():
                self.faults.popleft()
            if not self.faults:
                return None
            fault = self.faults[0]
            fault.times -= 1
            if fault.times <= 0:
                self.faults.popleft()
            return fault

    def arrivals(self) -> list[tuple[float, str, str]]:
        with self.lock:
            return list(self._arrivals)

    def count(self) -> int:
        with self.lock:
            return sum(len(v) for v in self.packets.values())

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {
                "packets": sum(len(v) for v in self.packets.values()),
                "per_id": {k: len(v) for k, v in self.packets.items()},
                "duplicates": len(self.duplicates),
                "out_of_order": len(self.out_of_order),
                "refused": len(self.refused),
                "requests": self.requests,
                "connections": self.connections,
                "last_accept_at": self.last_accept_at,
                "first_accept_at": self.first_accept_at,
            }

    def lag(self, since: float) -> dict[str, Any]:
        """Delivery lag of the packets accepted since ``since`` (Unix time): arrival less the packet's time, in s."""
        with self.lock:
            recent = [(at, ts) for at, _, ts in self._arrivals if at >= since]
        lags = sorted(at - datetime.fromisoformat(ts).timestamp() for at, ts in recent)
        if not lags:
            return {"n": 0}
        return {"n": len(lags), "p50": lags[len(lags) // 2], "p99": lags[min(len(lags) - 1, len(lags) * 99 // 100)],
                "max": lags[-1]}

    def __enter__(self) -> WatticsEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ the rules

    def check(self, headers: Any, body: bytes) -> tuple[int, str, dict[str, Any] | None]:
        if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return 400, "Content-Type must be application/json", None
        if b"\n" in body or b"\r" in body:
            return 400, "the packet must be on one line", None
        try:
            packet = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return 400, "not JSON", None
        if not isinstance(packet, dict) or "id" not in packet or "tsISO8601" not in packet:
            return 400, "a packet needs id and tsISO8601", None
        keys = set(packet)
        if not (keys <= ELECTRICAL or keys <= VALUE):
            return 400, f"unknown keys {sorted(keys - ELECTRICAL - VALUE)}", None
        for k, v in packet.items():
            if k in ("id", "tsISO8601"):
                if not isinstance(v, str) or not v:
                    return 400, f"{k} must be a non-empty string", None
            elif isinstance(v, bool) or not isinstance(v, int | float):
                return 400, f"{k} must be a number, got {v!r}", None
        if not TS.match(packet["tsISO8601"]):
            return 400, f"bad tsISO8601 {packet['tsISO8601']!r}", None
        if self.known_ids is not None and packet["id"] not in self.known_ids:
            return 404, f"unknown data point {packet['id']}", None
        return 200, "", packet

    def accept(self, packet: dict[str, Any]) -> None:
        ts = datetime.fromisoformat(packet["tsISO8601"]).timestamp()
        pid = packet["id"]
        with self.lock:
            self._arrivals.append((time.time(), pid, packet["tsISO8601"]))
            last = self.last_ts.get(pid)
            if ts in self.seen[pid]:
                self.duplicates.append((pid, packet["tsISO8601"]))  # sent again: the platform has it already
            elif last is not None and ts < last:
                self.out_of_order.append((pid, packet["tsISO8601"]))  # new, but older than one accepted: lost
            else:
                self.last_ts[pid] = ts
                self.seen[pid].add(ts)
                self.packets[pid].append(packet if self.keep_packets else {})
                self.last_accept_at = time.time()
                self.first_accept_at = self.first_accept_at or self.last_accept_at


def _handler(emu: WatticsEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
            extra = dict(headers or {})
            if emu.cookie:
                extra["Set-Cookie"] = f"{emu.cookie}; Path=/; HttpOnly"
            if not emu.keepalive:
                extra["Connection"] = "close"
                self.close_connection = True
            reply(self, code, body, extra)

        def _authorised(self) -> bool:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Basic "):
                return False
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
            return emu.users.get(user) == pw

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/_stats":
                self._reply(200, json.dumps(emu.stats()))
                return
            if parts.path == "/_lag":
                self._reply(200, json.dumps(emu.lag(float(parse_qs(parts.query).get("since", ["0"])[0]))))
                return
            if not self._authorised():
                self._reply(401, "unauthorised", {"WWW-Authenticate": 'Basic realm="wattics"'})
                return
            stream = parse_qs(parts.query).get("stream", [""])[0]
            with emu.lock:
                last = emu.packets.get(stream, [None])[-1]
            if emu.known_ids is not None and stream not in emu.known_ids:
                self._reply(404, "unknown stream")
                return
            self._reply(200, json.dumps({"stream": stream, "lastPacket": last}))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            with emu.lock:
                emu.requests += 1
            if urlsplit(self.path).path != PATH:
                self._reply(404, "no such endpoint")
                return
            fault = emu._next_fault()
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault is not None and fault.kind == "garbage":
                self.close_connection = True
                self.wfile.write(b"SPAM SPAM SPAM\r\n\r\n")
                return
            if emu.cookie and emu.cookie in self.headers.get("Cookie", ""):
                with emu.lock:
                    emu.with_cookie += 1
            if emu.latency:
                time.sleep(emu.latency)
            if not self._authorised():
                with emu.lock:
                    emu.refused.append((401, ""))
                self._reply(401, "unauthorised", {"WWW-Authenticate": 'Basic realm="wattics"'})
                return
            if fault is not None and fault.kind == "answer" and fault.status != 200:
                with emu.lock:
                    emu.refused.append((fault.status, ""))
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                # "{headers}" in a body echoes the request's headers, as some servers' error pages do.
                body_text = (fault.body or f"emulated {fault.status}").replace("{headers}", str(self.headers))
                self._reply(fault.status, body_text, headers)
                return
            code, why, packet = emu.check(self.headers, body)
            if packet is None:
                with emu.lock:
                    emu.refused.append((code, why))
                self._reply(code, why)
                return
            if fault is not None and fault.kind == "stall":
                time.sleep(fault.seconds)  # processed late: the client may have given up, and will send again
            emu.accept(packet)
            self._reply(200, '{"status":"ok"}')

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--light", action="store_true", help="keep no packet's content, only counts (long runs)")
    args = ap.parse_args()
    # Many handler threads wake at once after the added latency; a short GIL switch interval keeps the one that
    # holds the GIL from delaying the others by the default 5 ms each (the emulator, not the gateway, is measured
    # otherwise).
    sys.setswitchinterval(0.0002)
    emu = WatticsEmulator(args.dir, latency=args.latency)
    emu.keep_packets = not args.light
    emu.start()
    print(emu.url.split(":")[2].split("/")[0], flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
