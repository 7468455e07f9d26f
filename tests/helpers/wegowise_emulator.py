"""A Wegowise Data API server for data-only accounts, built from the document (seed 000) and Wegowise's OAuth 1.0a,
over HTTPS with a throwaway CA.

Rules enforced:

- **OAuth 1.0a, HMAC-SHA1, verified here by hand** (RFC 5849 section 3.4, independently of the library the gateway
  signs with): the signature over the method, the base URI and the normalised parameters (query, OAuth parameters,
  a form-encoded body), keyed by the consumer secret and the token secret; the timestamp within
  ``time_window`` seconds; a nonce used once per consumer, token and timestamp; a known consumer key and token.
  A failure answers 401 with a reason.
- The three-legged flow: ``POST /oauth/request_token`` (signed by the consumer alone, with ``oauth_callback``),
  ``/oauth/authorize?oauth_token=...`` (the user's page: here :meth:`approve` plays the user and returns the
  verifier), ``POST /oauth/access_token`` (signed with the request token and ``oauth_verifier``).
- Meters (``/api/v1/wego_data/meters``): list, show, create (``account_number`` and ``data_type`` required, one of
  ``utility_company_id`` or ``other_utility_company``), update. Raw data per meter: list, show, ``latest_datum``,
  create, update (PUT), delete, with the document's schema per data type: required fields present and strings.
- A raw datum for a period already held (same meter, start and end) is accepted, as the document does not say it
  is refused, and kept: duplicates are visible to the tests (:meth:`duplicates`).

Faults for the tests: ``answer(status, times)`` instead of handling, ``lose_answer(times)`` handles the request and
then closes the connection without answering (a POST whose outcome the client cannot know).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.helpers.https import HttpsServer, reply

API = "/api/v1/wego_data"
DATA_TYPES = ("Electric", "Gas", "Oil", "Water", "Steam", "Total_energy")
#: Required fields per data type (seed 000's schemas), all strings.
REQUIRED = {
    "Electric": ("start_date", "end_date", "kwh", "total_charge"),
    "Gas": ("start_date", "end_date", "btu", "total_charge"),
    "Oil": ("start_date", "end_date", "btu", "total_charge"),
    "Steam": ("start_date", "end_date", "btu", "total_charge"),
    "Water": ("start_date", "end_date", "total_charge"),
    "Propane": ("start_date", "end_date", "btu", "total_charge"),
}
FIELDS = ("start_date", "end_date", "kwh", "btu", "gallons", "total_charge", "delivery_charge", "fixed_charge",
          "fuel_charge", "demand_charge", "peak_charge", "late_charge", "off_peak_charge", "peak_kwh",
          "off_peak_kwh", "demand_kw")


def enc(s: str) -> str:
    """RFC 5849 section 3.6: percent-encode everything but unreserved characters."""
    return quote(s, safe="~-._")


def signature_base(method: str, url: str, params: list[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port
    default = (parts.scheme == "https" and port in (None, 443)) or (parts.scheme == "http" and port in (None, 80))
    base_uri = f"{parts.scheme.lower()}://{host.lower()}{'' if default else f':{port}'}{parts.path or '/'}"
    normalised = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in params))
    return "&".join((method.upper(), enc(base_uri), enc(normalised)))


def parse_authorization(header: str) -> dict[str, str] | None:
    if not header.startswith("OAuth "):
        return None
    out: dict[str, str] = {}
    for item in header[6:].split(","):
        item = item.strip()
        if not item or "=" not in item:
            continue
        k, v = item.split("=", 1)
        out[unquote(k.strip())] = unquote(v.strip().strip('"'))
    return out


@dataclass
class Fault:
    kind: str  # "answer", "lose"
    times: int
    status: int = 500
    #: only requests of this method (e.g. "POST"); None: any
    method: str | None = None
    body: str = ""


class WegowiseEmulator:
    def __init__(self, cert_dir: Path, consumer: tuple[str, str] = ("ck-gateway", "cs-s3cret"),
                 validation_status: int = 422, time_window: float = 300.0, latency: float = 0.0) -> None:
        #: seconds each request waits before it is handled (to land a kill mid-way)
        self.latency = latency
        #: what "latest" means for latest_datum (the document does not say): the latest end date, or the newest
        self.latest_by = "end_date"
        self.consumer_key, self.consumer_secret = consumer
        self.validation_status = validation_status
        self.time_window = time_window
        self.lock = threading.Lock()
        #: access tokens: token -> secret
        self.tokens: dict[str, str] = {}
        #: request tokens: token -> [secret, verifier or None]
        self.request_tokens: dict[str, list[str | None]] = {}
        self.nonces: set[tuple[str, str, str, str]] = set()
        self.meters: dict[int, dict[str, Any]] = {}
        self.raw: dict[int, dict[int, dict[str, Any]]] = {}
        #: (method, path, status) of every request handled
        self.log: list[tuple[str, str, int]] = []
        self.refused_auth: list[str] = []
        self.faults: deque[Fault] = deque()
        self._next_id = 1000
        self.https = HttpsServer(cert_dir, "wegowise-ca.pem")
        self.ca_file = self.https.ca_file

    # ------------------------------------------------------------ control

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}"

    def start(self) -> WegowiseEmulator:
        self.https.serve(_handler(self))
        return self

    def stop(self) -> None:
        self.https.shutdown()

    def grant(self, token: str = "at-gateway", secret: str = "as-s3cret") -> tuple[str, str]:
        """An access token for the user, as the three-legged flow would give."""
        with self.lock:
            self.tokens[token] = secret
        return token, secret

    def approve(self, request_token: str) -> str:
        """The user opens the authorisation page and approves: the verifier shown to them."""
        with self.lock:
            entry = self.request_tokens[request_token]
            entry[1] = secrets.token_hex(6)
            return str(entry[1])

    def add_meter(self, data_type: str = "Electric", account_number: str = "A-1", **extra: Any) -> int:
        with self.lock:
            return self._create_meter({"data_type": data_type, "account_number": account_number,
                                       "other_utility_company": "Site", **extra})["id"]

    def answer(self, status: int, times: int = 1, method: str | None = None) -> None:
        with self.lock:
            self.faults.append(Fault("answer", times, status, method))

    def garble(self, body: str, times: int = 1, method: str | None = None, status: int = 200) -> None:
        """Handle the request, then answer ``status`` with ``body`` instead of the real answer (a platform that
        lies: a body that is not JSON, an object where a list belongs, ids that are not ids)."""
        with self.lock:
            self.faults.append(Fault("garble", times, status, method, body))

    def lose_answer(self, times: int = 1, method: str | None = "POST") -> None:
        with self.lock:
            self.faults.append(Fault("lose", times, method=method))

    def data(self, meter_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(d) for d in self.raw.get(meter_id, {}).values()]

    def duplicates(self) -> list[tuple[int, str, str]]:
        """(meter, start, end) held more than once."""
        with self.lock:
            seen: dict[tuple[int, str, str], int] = {}
            for m, data in self.raw.items():
                for d in data.values():
                    k = (m, d["start_date"], d["end_date"])
                    seen[k] = seen.get(k, 0) + 1
            return [k for k, n in seen.items() if n > 1]

    def posts(self) -> int:
        with self.lock:
            return sum(1 for m, p, s in self.log if m == "POST" and p.endswith("/raw_data") and s == 201)

    # ------------------------------------------------------------ the rules

    def _fault(self, method: str) -> Fault | None:
        with self.lock:
            f = next((f for f in self.faults if f.method in (None, method)), None)
            if f is None:
                return None
            f.times -= 1
            if f.times <= 0:
                self.faults.remove(f)
            return f

    def verify(self, method: str, url: str, headers: Any, body: bytes,
               token_kind: str = "access") -> tuple[str | None, dict[str, str]]:
        """(why refused or None, the OAuth parameters)."""
        oauth = parse_authorization(headers.get("Authorization", ""))
        if oauth is None:
            return "no OAuth Authorization header", {}
        if oauth.get("oauth_signature_method") != "HMAC-SHA1":
            return "signature method must be HMAC-SHA1", oauth
        if oauth.get("oauth_version", "1.0") != "1.0":
            return "oauth_version must be 1.0", oauth
        if oauth.get("oauth_consumer_key") != self.consumer_key:
            return "unknown consumer key", oauth
        try:
            ts = int(oauth.get("oauth_timestamp", ""))
        except ValueError:
            return "bad timestamp", oauth
        if abs(time.time() - ts) > self.time_window:
            return "timestamp outside the window", oauth
        nonce = oauth.get("oauth_nonce", "")
        if not nonce:
            return "no nonce", oauth
        token = oauth.get("oauth_token", "")
        with self.lock:
            if token_kind == "access":
                token_secret = self.tokens.get(token)
            elif token_kind == "request":
                entry = self.request_tokens.get(token)
                token_secret = entry[0] if entry else None
            else:
                token_secret = ""
            key = (self.consumer_key, token, str(ts), nonce)
            replay = key in self.nonces
            self.nonces.add(key)
        if token_secret is None:
            return "unknown token", oauth
        if replay:
            return "nonce used before", oauth
        params = [(k, v) for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)]
        params += [(k, v) for k, v in oauth.items() if k != "oauth_signature" and k != "realm"]
        if headers.get("Content-Type", "").split(";")[0].strip() == "application/x-www-form-urlencoded":
            params += parse_qsl(body.decode(), keep_blank_values=True)
        base = signature_base(method, url, params)
        signing_key = f"{enc(self.consumer_secret)}&{enc(token_secret)}"
        expected = base64.b64encode(hmac.new(signing_key.encode(), base.encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(expected, oauth.get("oauth_signature", "")):
            return "signature does not match", oauth
        return None, oauth

    def _create_meter(self, body: dict[str, Any]) -> dict[str, Any]:
        self._next_id += 1
        meter = {"id": self._next_id, "coverage": "none", "account_number": body["account_number"],
                 "data_type": body["data_type"], "nickname": body.get("nickname"), "notes": body.get("notes"),
                 "utility_company": {"id": body.get("utility_company_id"),
                                     "name": body.get("other_utility_company")}}
        self.meters[meter["id"]] = meter
        self.raw[meter["id"]] = {}
        return meter

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        parts = [p for p in path.split("/") if p]
        base = [p for p in API.split("/") if p]
        if parts[:3] != base[:3] or len(parts) < 4 or parts[3] != "meters":
            return 404, {"errors": "Not found"}
        rest = parts[4:]
        with self.lock:
            if not rest:
                if method == "GET":
                    return 200, list(self.meters.values())
                if method == "POST":
                    if not isinstance(body, dict) or not isinstance(body.get("account_number"), str) \
                            or not body["account_number"]:
                        return self.validation_status, {"errors": "Account number is invalid"}
                    if body.get("data_type") not in DATA_TYPES:
                        return self.validation_status, {"errors": "Data type is invalid"}
                    if not body.get("utility_company_id") and not body.get("other_utility_company"):
                        return self.validation_status, {"errors": "Utility company must be specified"}
                    return 201, self._create_meter(body)
                return 405, {"errors": "Method not allowed"}
            try:
                meter_id = int(rest[0])
            except ValueError:
                return 404, {"errors": "Meter not found"}
            meter = self.meters.get(meter_id)
            if meter is None:
                return 404, {"errors": "Meter not found"}
            if len(rest) == 1:
                if method == "GET":
                    return 200, meter
                if method == "PUT" and isinstance(body, dict):
                    meter.update({k: v for k, v in body.items() if k in ("notes", "nickname")})
                    return 200, meter
                return 405, {"errors": "Method not allowed"}
            data = self.raw[meter_id]
            if rest[1] == "latest_datum" and method == "GET":
                if not data:
                    return 404, {"errors": "No data"}
                if self.latest_by == "id":
                    return 200, max(data.values(), key=lambda d: d["id"])
                return 200, max(data.values(), key=lambda d: (d["end_date"], d["id"]))
            if rest[1] != "raw_data":
                return 404, {"errors": "Not found"}
            if len(rest) == 2:
                if method == "GET":
                    return 200, sorted(data.values(), key=lambda d: d["end_date"], reverse=True)
                if method == "POST":
                    problem = self._check_datum(meter["data_type"], body)
                    if problem:
                        return self.validation_status, {"errors": problem}
                    self._next_id += 1
                    datum = {f: None for f in FIELDS} | {k: body[k] for k in body if k in FIELDS}
                    datum["id"] = self._next_id
                    data[datum["id"]] = datum
                    return 201, datum
                return 405, {"errors": "Method not allowed"}
            try:
                datum_id = int(rest[2])
            except ValueError:
                return 404, {"errors": "Raw datum not found"}
            datum = data.get(datum_id)
            if datum is None:
                return 404, {"errors": "Raw datum not found"}
            if method == "GET":
                return 200, datum
            if method == "PUT":
                problem = self._check_datum(meter["data_type"], body)
                if problem:
                    return self.validation_status, {"errors": problem}
                datum.update({k: body[k] for k in body if k in FIELDS})
                return 200, datum
            if method == "DELETE":
                del data[datum_id]
                return 204, None
            return 405, {"errors": "Method not allowed"}

    def _check_datum(self, data_type: str, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "a raw datum is a JSON object"
        for f in REQUIRED.get(data_type, ("start_date", "end_date", "total_charge")):
            if f not in body:
                return f"{f} is required"
        for k, v in body.items():
            if k in FIELDS and v is not None and not isinstance(v, str):
                return f"{k} must be a string"
        for f in ("start_date", "end_date"):
            try:
                time.strptime(body[f], "%Y-%m-%d")
            except (TypeError, ValueError):
                return f"{f} must be a date (YYYY-MM-DD)"
        if body["end_date"] < body["start_date"]:
            return "end_date is before start_date"
        return None

    def token_endpoint(self, path: str, method: str, url: str, headers: Any, body: bytes) -> tuple[int, str]:
        if path == "/oauth/request_token":
            why, oauth = self.verify(method, url, headers, body, token_kind="none")
            if why:
                return 401, why
            if "oauth_callback" not in oauth:
                return 400, "oauth_callback is required"
            token, secret = "rt-" + secrets.token_hex(4), secrets.token_hex(8)
            with self.lock:
                self.request_tokens[token] = [secret, None]
            return 200, f"oauth_token={token}&oauth_token_secret={secret}&oauth_callback_confirmed=true"
        if path == "/oauth/access_token":
            why, oauth = self.verify(method, url, headers, body, token_kind="request")
            if why:
                return 401, why
            with self.lock:
                entry = self.request_tokens.pop(oauth.get("oauth_token", ""), None)
            if entry is None or entry[1] is None or entry[1] != oauth.get("oauth_verifier"):
                return 401, "verifier does not match"
            token, secret = "at-" + secrets.token_hex(4), secrets.token_hex(8)
            with self.lock:
                self.tokens[token] = secret
            return 200, f"oauth_token={token}&oauth_token_secret={secret}"
        return 404, "not found"


def _handler(emu: WegowiseEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _serve(self, method: str) -> None:
            if emu.latency:
                time.sleep(emu.latency)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = f"https://127.0.0.1:{emu.https.port}{self.path}"
            path = urlsplit(self.path).path
            fault = emu._fault(method)
            if fault is not None and fault.kind == "answer":
                emu.log.append((method, path, fault.status))
                reply(self, fault.status, json.dumps({"errors": f"emulated {fault.status}"}))
                return
            if path.startswith("/oauth/"):
                status, text = emu.token_endpoint(path, method, url, self.headers, raw)
                emu.log.append((method, path, status))
                reply(self, status, text)
                return
            why, _ = emu.verify(method, url, self.headers, raw)
            if why:
                emu.refused_auth.append(why)
                emu.log.append((method, path, 401))
                reply(self, 401, json.dumps({"errors": f"Unauthorized: {why}"}))
                return
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    emu.log.append((method, path, 400))
                    reply(self, 400, json.dumps({"errors": "body is not JSON"}))
                    return
            status, answer = emu.handle(method, path, body)
            emu.log.append((method, path, status))
            if fault is not None and fault.kind == "garble":
                reply(self, fault.status, fault.body)
                return
            if fault is not None and fault.kind == "lose":
                self.close_connection = True
                self.connection.close()  # done, but the answer never reaches the client
                return
            if status == 204:
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            reply(self, status, json.dumps(answer))

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

    return Handler
