"""``wattics`` sink: Wattics data push, one JSON packet per HTTPS POST (seed document 002, FACTS.md).

The packet formats live here and nowhere else:

- electrical: ``{"id", "tsISO8601", "aP_1".."aP_3", "rP_*", "apP_*", "v_1".."v_3", "c_*", "pC_*" (Wh),
  "v_12", "v_13", "v_23"}``; a quantity the meter lacks is left out; a meter with totals only uses the ``_1`` key;
- single value: ``{"id", "tsISO8601", "value"}``.

``tsISO8601`` is the site's local time with its offset and milliseconds (``2016-02-10T21:45:31.070+11:00``).
How each answer is treated is in :meth:`WatticsSink._outcome`.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import structlog

from gateway import __version__
from gateway.config.models import GatewayConfig
from gateway.errors import HttpError, SinkError
from gateway.http11 import Http11Client, Response
from gateway.outcome import Delivered, Outcome, Reject, Retry, Skip
from gateway.platforms.sink import BaseSink, Preview
from gateway.platforms.wattics.config import WatticsConfig
from gateway.quantities import Quantity as Q
from gateway.reading import Reading, local_iso
from gateway.stream import Stream, stream_name

log = structlog.get_logger("gateway.platforms.wattics.sink")

# (key prefix, per-phase quantities, the total used as phase 1 when the meter has no per-phase values)
_PHASED: tuple[tuple[str, tuple[Q, Q, Q], Q | None], ...] = (
    ("aP", (Q.POWER_ACTIVE_L1, Q.POWER_ACTIVE_L2, Q.POWER_ACTIVE_L3), Q.POWER_ACTIVE_TOTAL),
    ("rP", (Q.POWER_REACTIVE_L1, Q.POWER_REACTIVE_L2, Q.POWER_REACTIVE_L3), Q.POWER_REACTIVE_TOTAL),
    ("apP", (Q.POWER_APPARENT_L1, Q.POWER_APPARENT_L2, Q.POWER_APPARENT_L3), Q.POWER_APPARENT_TOTAL),
    ("v", (Q.VOLTAGE_L1, Q.VOLTAGE_L2, Q.VOLTAGE_L3), None),
    ("c", (Q.CURRENT_L1, Q.CURRENT_L2, Q.CURRENT_L3), None),
    ("pC", (Q.ENERGY_IMPORT_L1, Q.ENERGY_IMPORT_L2, Q.ENERGY_IMPORT_L3), Q.ENERGY_IMPORT_TOTAL),
)
_LINE_VOLTAGES = (("v_12", Q.VOLTAGE_L1_L2), ("v_13", Q.VOLTAGE_L3_L1), ("v_23", Q.VOLTAGE_L2_L3))


#: For each key of an electrical packet, the one quantity sent under it.
KeyMap = tuple[tuple[str, Q], ...]


def electrical_keys(offered: frozenset[Q] | None, phases: str = "auto") -> KeyMap:
    """The key -> quantity map of a data point, decided once from what its meter gives (``offered``, from the
    configuration) and the data point's ``phases``: a total goes in the ``_1`` key only for a meter that gives no
    per-phase value of that quantity (or with ``phases: totals``), so a reading that lacks its per-phase values
    (a partial poll) leaves those keys out instead of sending the total under a phase's key."""
    out: list[tuple[str, Q]] = []
    for prefix, per_phase, total in _PHASED:
        has_phases = offered is None or any(q in offered for q in per_phase)
        use_total = total is not None and (
            phases == "totals" or (phases == "auto" and not has_phases)) and (offered is None or total in offered)
        if use_total and total is not None:
            out.append((f"{prefix}_1", total))
        else:
            out += [(f"{prefix}_{i}", q) for i, q in enumerate(per_phase, 1)]
    out += _LINE_VOLTAGES
    return tuple(out)


def electrical_packet(point_id: str, ts: str, values: Mapping[Q, float], keys: KeyMap) -> dict[str, object]:
    packet: dict[str, object] = {"id": point_id, "tsISO8601": ts}
    for key, q in keys:
        if q in values:
            packet[key] = values[q]
    return packet


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's CAs, plus ``ca_file`` if given. Verification and host name checks are always on."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    return ctx


class WatticsSink(BaseSink):
    max_batch = 1  # one packet per request, and per data point one at a time

    def __init__(self, config: WatticsConfig, gateway: GatewayConfig) -> None:
        self.config = config
        self.name = config.name
        self.tz = ZoneInfo(gateway.site.timezone)
        self.points = {dp.id: dp for dp in config.data_points}
        self.keys = {dp.id: electrical_keys(gateway.quantities_of(dp.meter), dp.phases) for dp in config.data_points}
        # Kept-alive connections, at most max_in_flight (the sends that may run at once: data points go in
        # parallel, each one's packets in order). A send takes an idle one, or opens one; a site of 1,000 data
        # points does not hold 1,000 TLS connections (each with its buffers) for a handful of sends at a time.
        self._idle: list[Http11Client] = []
        self._clients: set[Http11Client] = set()
        self._cookies = httpx.Cookies()
        self._ssl: ssl.SSLContext | None = None
        self._bad_requests: dict[tuple[str, int], int] = {}
        self._auth_refused = False
        self._missing_points: set[str] = set()
        self.log = log.bind(sink=config.name)

    async def start(self) -> None:
        if urlsplit(self.config.url).scheme == "http":
            self.log.warning("sending to Wattics over plain http: allowed by allow_insecure_http, for tests only",
                             url=self.config.url)
        self._ssl = ssl_context(str(self.config.ca_file) if self.config.ca_file else None)

    async def close(self) -> None:
        clients, self._clients, self._idle = list(self._clients), set(), []
        for client in clients:
            await client.aclose()

    def _take(self) -> Http11Client:
        """An idle kept-alive connection, or a new one."""
        if self._idle:
            return self._idle.pop()  # the most recently used: the likeliest to be alive
        if self._ssl is None:
            raise SinkError("the Wattics sink is not started")
        auth = base64.b64encode(f"{self.config.username}:{self.config.password.get_secret_value()}".encode()).decode()
        headers = [
            ("Content-Type", "application/json"),
            ("Authorization", f"Basic {auth}"),
            ("User-Agent", f"meter-gateway/{__version__}"),
        ]
        client = Http11Client(self.config.url, self._ssl, self.config.request_timeout, headers, self._cookies)
        self._clients.add(client)
        return client

    async def _give_back(self, client: Http11Client) -> None:
        if client in self._clients and len(self._idle) < self.config.max_in_flight:
            self._idle.append(client)
            return
        self._clients.discard(client)
        await client.aclose()

    def preview(self, stream: Stream, reading: Reading) -> Preview | Skip:
        packet = self.packet(stream, reading)
        if packet is None:
            return Skip(f"no value for data point {stream.key}")
        return {"sink": self.name, "would": "POST", "url": self.config.url, "body": packet}

    def packet(self, stream: Stream, reading: Reading) -> dict[str, object] | None:
        dp = self.points[stream.key]
        ts = local_iso(reading.ts_ms, self.tz)
        if dp.format == "value":
            q = dp.quantity or Q.VALUE
            return {"id": dp.id, "tsISO8601": ts, "value": reading.values[q]} if q in reading.values else None
        if reading.start_ms is not None:
            return None  # a period's usage is no electrical packet (check refuses such a data point)
        packet = electrical_packet(dp.id, ts, reading.values, self.keys[dp.id])
        return packet if len(packet) > 2 else None

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]:
        return [await self._post(stream, r) for r in readings]

    async def _post(self, stream: Stream, reading: Reading) -> Outcome:
        packet = self.packet(stream, reading)
        if packet is None:
            dp = self.points[stream.key]
            what = f"no {dp.quantity or Q.VALUE}" if dp.format == "value" else "no electrical quantity"
            return Reject(f"reading of {reading.meter} has {what} for data point {dp.id}")
        body = json.dumps(packet, separators=(",", ":"))
        client = self._take()
        try:
            resp = await client.post(body.encode())
        except HttpError as e:
            return Retry(str(e))
        finally:
            await self._give_back(client)
        return self._outcome(stream.key, reading.ts_ms, resp, body)

    def _outcome(self, point: str, ts_ms: int, resp: Response, body: str) -> Outcome:
        code = resp.status
        key = (point, ts_ms)
        if 200 <= code < 300:
            self._bad_requests.pop(key, None)
            if self._auth_refused:
                self._auth_refused = False
                self.log.info("Wattics accepts the credentials again")
            if point in self._missing_points:
                self._missing_points.discard(point)
                self.log.info("Wattics accepts the data point again", data_point=point)
            return Delivered(body)
        if code in (401, 403):
            if not self._auth_refused:
                self._auth_refused = True
                self.log.error(
                    "Wattics refuses the credentials: check username and password; readings are kept",
                    status=code, retry_every_s=self.config.auth_retry,
                )
            return Retry(f"HTTP {code}: Wattics refuses the credentials", after=self.config.auth_retry)
        if code == 404:
            if point not in self._missing_points:
                self._missing_points.add(point)
                self.log.error("Wattics does not know this data point: is it registered? readings are kept",
                               data_point=point, retry_every_s=self.config.auth_retry)
            return Retry(f"HTTP 404: data point {point} is not registered at Wattics", after=self.config.auth_retry)
        if code == 400:
            n = self._bad_requests.get(key, 0) + 1
            if n >= self.config.max_bad_request:
                self._bad_requests.pop(key, None)
                return Reject(f"HTTP 400 {n} times: {_snippet(resp)}")
            self._bad_requests[key] = n
            return Retry(f"HTTP 400 ({n} of {self.config.max_bad_request}): {_snippet(resp)}")
        after = retry_after(resp.headers.get("retry-after")) if code in (429, 503) else None
        return Retry(f"HTTP {code}: {_snippet(resp)}", after=after)


def make_client(config: WatticsConfig, ctx: ssl.SSLContext) -> httpx.AsyncClient:
    """An httpx client for requests off the hot path (the technician's check)."""
    return httpx.AsyncClient(
        auth=httpx.BasicAuth(config.username, config.password.get_secret_value()),
        verify=ctx,
        timeout=httpx.Timeout(config.request_timeout),
        headers={"User-Agent": f"meter-gateway/{__version__}"},
    )


def _snippet(resp: Response, limit: int = 300) -> str:
    text = resp.text.strip().replace("\n", " ")
    return (text[:limit] + "...") if len(text) > limit else (text or resp.reason or "no body")


def _describe(e: httpx.HTTPError) -> str:
    cause = e.__cause__ or e.__context__
    if isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e):
        return f"TLS: the server's certificate is not trusted ({getattr(cause, 'verify_message', None) or e})"
    kinds: dict[type[Exception], str] = {
        httpx.ConnectError: "cannot connect", httpx.RemoteProtocolError: "bad HTTP answer",
        httpx.ReadError: "connection lost", httpx.WriteError: "connection lost",
    }
    kind = kinds.get(type(e), type(e).__name__)
    detail = str(e) or (type(cause).__name__ if cause else "")
    return f"{kind}: {detail}"[:300]


async def verify(config: WatticsConfig, last_sent: Mapping[str, object]) -> tuple[bool, list[str]]:
    """For each data point, what Wattics says it processed last (``GET ?stream=<id>``), beside what the gateway
    delivered last (``last_sent``: stream cursor -> record, from the daemon's heartbeat). Sends nothing."""
    lines: list[str] = []
    ok = True
    ctx = ssl_context(str(config.ca_file) if config.ca_file else None)
    async with make_client(config, ctx) as client:
        for dp in config.data_points:
            cursor = stream_name(config.name, dp.id)
            lines.append(f"{config.name} / {dp.id} (meter {dp.meter}, {dp.format})")
            try:
                resp = await client.get(config.url, params={"stream": dp.id})
            except httpx.TimeoutException:
                ok = False
                lines.append(f"  Wattics:  no answer within {config.request_timeout:g}s")
            except httpx.HTTPError as e:
                ok = False
                lines.append(f"  Wattics:  {_describe(e)}")
            else:
                ok = ok and resp.status_code == 200
                lines.append(f"  Wattics:  HTTP {resp.status_code} {_shown(resp)}")
            record = last_sent.get(cursor)
            packet = record.get("packet") if isinstance(record, dict) else None
            lines.append(f"  gateway:  {packet if packet else 'nothing delivered yet'}")
    return ok, lines


def _shown(resp: httpx.Response) -> str:
    """The answer as Wattics gave it: its shape is not documented, so parse defensively and show it raw."""
    try:
        text = json.dumps(resp.json(), separators=(",", ":"))
    except ValueError:
        text = resp.text.strip().replace("\n", " ")
    return text if len(text) <= 600 else text[:600] + "..."
