"""An emulator of Voltaware's HTTP API (seed document 004) over loopback HTTPS.

- ``POST /auth/token`` (client credentials) and ``POST /auth/token/refresh``; tokens expire after
  ``expires_in_secs`` (short in tests); a missing, unknown or expired token gets 401.
- A device exists for the API once it sent an event (the test calls :meth:`register`, e.g. from an MQTT
  subscriber). As the document warns, a token remembers the devices that existed when it was issued: with an
  older token, metadata for a newly registered device still gets 403.
- ``PUT``/``GET /sensors/{id}/metadata/{property,appliances,geolocation}`` with the document's rules (enums,
  required fields per property type, bedroom_amount >= 1, people present, one wattage per vehicle, valid
  coordinates); ``GET /sensors``, ``GET /sensors/{id}``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.helpers.https import HttpsServer, reply
from tests.helpers.mosquitto import Mosquitto, Subscriber

GEN = {"SOLAR", "HYDROELECTRICITY", "WIND", "BATTERY", "OTHER", "NONE"}
APPLIANCE_FIELDS: dict[str, dict[str, set[Any] | type]] = {
    "AC": {"type": {"CENTRALISED", "MINI_SPLIT", "WINDOW", "OTHER", "I_DONT_KNOW"},
           "usage_type": {"SUMMER", "WINTER", "BOTH"}},
    "ELECTRIC_BOILER": {"usage_type": {"SPACE_HEATING", "WATER_HEATING", "BOTH"},
                        "coupled_with_solar_thermal_system": {"YES", "NO", "NOT_SURE"}, "water_tank": bool},
    "ELECTRIC_HEATING": {"type": {"HEAT_PUMP", "HEAT_STORAGE", "RADIATOR", "UNDERFLOOR", "OTHER"}},
    "GAS_HEATING": {"any_electric_heater": bool},
    "ELECTRIC_OVEN": {"type": {"MICROWAVE", "MINI", "REGULAR"}},
    "ELECTRIC_STOVE": {"type": {"ELECTRIC", "INDUCTION"}},
    "ELECTRIC_VEHICLE": {"type": {"BIKE", "CAR", "MOTORBIKE", "SCOOTER"}, "wattages": list},
    "FRIDGE": {"type": {"FRIDGE", "FREEZER", "FRIDGE_AND_FREEZER", "SMALL_ELECTRIC_WINE_CELLAR",
                        "LARGE_ELECTRIC_WINE_CELLAR"}},
    "TUMBLE_DRYER": {"type": {"CONDENSER", "HEAT_PUMP", "VENTED", "I_DONT_KNOW"}, "usage_types": list},
    "OTHER": {"name": str},
}
for _k in ("DEHUMIDIFIER", "DISHWASHER", "ELECTRIC_LAWN_MOWER", "ELECTRIC_SHOWER", "HUMIDIFIER", "JACUZZI",
           "KETTLE", "POOL_PUMP", "WASHING_MACHINE"):
    APPLIANCE_FIELDS[_k] = {}


def check_property(doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("version") != "1.0":
        return "version 1.0 required"
    kind = doc.get("property_type")
    if kind in ("OFFICE", "COMMERCIAL", "INDUSTRIAL", "INDUSTRY"):
        return None if doc.get("power_generator_source") in GEN else "power_generator_source"
    if kind != "HOME":
        return "property_type"
    rules = [
        doc.get("home_type") in ("FLAT", "HOUSE"), doc.get("home_usage_type") in ("PRIMARY", "SECONDARY"),
        isinstance(doc.get("home_size"), int | float), isinstance(doc.get("bedroom_amount"), int)
        and doc["bedroom_amount"] >= 1, doc.get("power_generator_source") in GEN,
        isinstance(doc.get("people_amount"), int) and doc["people_amount"] >= 1,
        isinstance(doc.get("people_amount_in_day_time"), int) and doc["people_amount_in_day_time"] >= 0,
        isinstance(doc.get("people"), list),
    ]
    if not all(rules):
        return "a HOME property field is missing or wrong"
    for p in doc["people"]:
        if p.get("age_range") not in ("ZERO_TO_FIVE", "SIX_TO_EIGHTEEN", "ADULT", "PENSIONER") or not isinstance(
            p.get("amount"), int
        ):
            return "people[]"
    return None


def check_appliances(doc: Any) -> str | None:
    if not isinstance(doc, dict) or doc.get("version") != "1.0" or not isinstance(doc.get("appliances"), list):
        return "appliances and version 1.0 required"
    for a in doc["appliances"]:
        fields = APPLIANCE_FIELDS.get(a.get("key"))
        if fields is None or not isinstance(a.get("amount"), int):
            return f"appliance {a.get('key')}"
        if set(a) != {"key", "amount", *fields}:
            return f"appliance {a['key']}: every field is required, no others"
        for name, rule in fields.items():
            ok = isinstance(a[name], rule) if isinstance(rule, type) else a[name] in rule
            if not ok:
                return f"appliance {a['key']}.{name}"
        if a["key"] == "ELECTRIC_VEHICLE" and len(a["wattages"]) != a["amount"]:
            return "wattages: one per vehicle"
    return None


def check_geolocation(doc: Any) -> str | None:
    try:
        lat, lon = float(doc["latitude"]), float(doc["longitude"])
    except (KeyError, TypeError, ValueError):
        return "latitude and longitude required"
    return None if -90 <= lat <= 90 and -180 <= lon <= 180 else "not a valid location"


CHECKS = {"property": check_property, "appliances": check_appliances, "geolocation": check_geolocation}


class VoltawareApiEmulator:
    def __init__(self, cert_dir: Path, client_id: str = "gw-client", client_secret: str = "api-s3cret",
                 expires_in: int = 43200) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.lock = threading.Lock()
        self.https = HttpsServer(cert_dir, "voltaware-api-ca.pem")
        self.ca_file = self.https.ca_file
        self.tokens: dict[str, tuple[float, frozenset[str]]] = {}  # token -> (expires at, devices it knows)
        self.refresh_tokens: set[str] = set()
        self.registered: dict[str, str] = {}  # device -> first event time
        self.metadata: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, int]] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}"

    def start(self) -> VoltawareApiEmulator:
        self.https.serve(_handler(self))
        return self

    def stop(self) -> None:
        self.https.shutdown()

    def register(self, device: str) -> None:
        with self.lock:
            self.registered.setdefault(device, datetime.now(UTC).isoformat(timespec="milliseconds"))

    def expire_all_tokens(self) -> None:
        with self.lock:
            self.tokens = {t: (0.0, devs) for t, (_, devs) in self.tokens.items()}

    def count(self, method: str, path_start: str, status: int | None = None) -> int:
        with self.lock:
            return sum(1 for m, p, s in self.calls if m == method and p.startswith(path_start)
                       and (status is None or s == status))

    def _issue(self) -> dict[str, Any]:
        access, refresh = secrets.token_hex(8), secrets.token_hex(8)
        self.tokens[access] = (time.monotonic() + self.expires_in, frozenset(self.registered))
        self.refresh_tokens.add(refresh)
        return {"access_token": access, "token_type": "Bearer", "expires_in_secs": self.expires_in,
                "refresh_token": refresh}


def _handler(emu: VoltawareApiEmulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: Any = "") -> None:
            with emu.lock:
                emu.calls.append((self.command, self.path, code))
            reply(self, code, body if isinstance(body, str) else json.dumps(body))

        def _body(self) -> Any:
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                return json.loads(data)
            except ValueError:
                return None

        def _token(self) -> frozenset[str] | None:
            auth = self.headers.get("Authorization", "")
            with emu.lock:
                entry = emu.tokens.get(auth.removeprefix("Bearer "))
            if entry is None or entry[0] < time.monotonic():
                return None
            return entry[1]

        def do_POST(self) -> None:
            body = self._body() or {}
            if self.path == "/auth/token":
                ok = (body.get("grant_type") == "client_credentials" and body.get("client_id") == emu.client_id
                      and body.get("client_secret") == emu.client_secret)
                with emu.lock:
                    answer = emu._issue() if ok else None
                self._answer(200, answer) if ok else self._answer(401, "bad client credentials")
            elif self.path == "/auth/token/refresh":
                with emu.lock:
                    ok = body.get("grant_type") == "refresh_token" and body.get("refresh_token") in emu.refresh_tokens
                    answer = emu._issue() if ok else None
                if answer:
                    answer.pop("refresh_token")
                self._answer(200, answer) if ok else self._answer(401, "bad refresh token")
            else:
                self._answer(404, "no such endpoint")

        def do_PUT(self) -> None:
            known = self._token()
            parts = self.path.strip("/").split("/")
            body = self._body()
            if known is None:
                self._answer(401, "token missing or expired")
            elif len(parts) != 4 or parts[0] != "sensors" or parts[2] != "metadata" or parts[3] not in CHECKS:
                self._answer(404, "no such endpoint")
            elif parts[1] not in known:
                self._answer(403, "device not registered for this token")
            elif (problem := CHECKS[parts[3]](body)) is not None:
                self._answer(400, problem)
            else:
                with emu.lock:
                    emu.metadata[(parts[1], parts[3])] = body
                self._answer(204)

        def do_GET(self) -> None:
            known = self._token()
            parts = self.path.strip("/").split("/")
            if known is None:
                self._answer(401, "token missing or expired")
            elif parts == ["sensors"]:
                self._answer(200, sorted(known))
            elif len(parts) == 2 and parts[0] == "sensors":
                if parts[1] not in emu.registered:
                    self._answer(404, "not found")
                else:
                    self._answer(200, {"connection_state": None, "firmware": None,
                                       "first_event": emu.registered[parts[1]], "last_event": emu.registered[parts[1]]})
            elif len(parts) == 4 and parts[2] == "metadata":
                with emu.lock:
                    doc = emu.metadata.get((parts[1], parts[3]))
                self._answer(200, doc) if doc is not None else self._answer(404, "not found")
            else:
                self._answer(404, "no such endpoint")

    return Handler


class Registrar(Subscriber):
    """The platform side: a device becomes known to the API when its first event reaches the broker."""

    def __init__(self, broker: Mosquitto, api: VoltawareApiEmulator, delay: float = 0.0) -> None:
        self.api = api
        self.delay = delay
        super().__init__(broker)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        super()._on_message(client, userdata, msg)  # type: ignore[arg-type]
        device = msg.topic.split("/")[1]  # type: ignore[attr-defined]  # the default topic: meters/{device_id}/events
        if self.delay:
            threading.Timer(self.delay, self.api.register, args=(device,)).start()
        else:
            self.api.register(device)
