"""Voltaware's HTTP API (seed document 004): tokens, device metadata, device state.

Tokens: ``POST /auth/token`` with client credentials gives an access token (12 h) and a refresh token; the token is
reused until it expires; ``POST /auth/token/refresh`` renews it, and a new one is taken when renewing fails.
A 401 means the token expired or is missing: renew and try once more.

Metadata (property, appliances, geolocation) is accepted only for a device Voltaware has seen an event from, and
only with a token taken after that event: a 403 means "not registered yet" (take a fresh token, try again later).
:class:`Provisioner` PUTs a device's metadata once its first event was acknowledged, and remembers what it sent
(a hash per device, in the state directory) so that it sends again only when the configuration changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import ssl
import time
from pathlib import Path
from typing import Any

import httpx
import structlog

from gateway import __version__
from gateway.errors import ApiError
from gateway.files import write_atomic
from gateway.platforms.voltaware.config import DeviceMetadata, VoltawareApi, VoltawareConfig
from gateway.stream import stream_name

log = structlog.get_logger("gateway.platforms.voltaware.sink")

#: Renew a token this long before it expires, so that a request never carries one about to lapse.
EXPIRY_MARGIN = 60.0


class VoltawareClient:
    def __init__(self, config: VoltawareApi, clock: Any = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        ctx = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        self.http = httpx.AsyncClient(
            base_url=config.url.rstrip("/"), verify=ctx, timeout=httpx.Timeout(config.request_timeout),
            headers={"User-Agent": f"meter-gateway/{__version__}", "Accept": "application/json"},
        )
        self._access: str | None = None
        self._refresh: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()
        self.tokens_taken = 0
        self.tokens_refreshed = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    # ------------------------------------------------------------ tokens

    async def token(self, fresh: bool = False) -> str:
        async with self._lock:
            if not fresh and self._access and self.clock() < self._expires_at - EXPIRY_MARGIN:
                return self._access
            if self._refresh and not fresh:
                with contextlib.suppress(ApiError):
                    await self._take("/auth/token/refresh", {
                        "grant_type": "refresh_token", "client_id": self.config.client_id,
                        "refresh_token": self._refresh,
                    })
                    self.tokens_refreshed += 1
                    assert self._access is not None
                    return self._access
            await self._take("/auth/token", {
                "grant_type": "client_credentials", "client_id": self.config.client_id,
                "client_secret": self.config.client_secret.get_secret_value(),
            })
            self.tokens_taken += 1
            assert self._access is not None
            return self._access

    async def _take(self, path: str, body: dict[str, str]) -> None:
        resp = await self._send("POST", path, json=body)
        if resp.status_code != 200:
            raise ApiError(f"{path}: HTTP {resp.status_code} (client_id or client_secret refused?)")
        try:
            data = resp.json()
            access = str(data["access_token"])
            expires = float(data.get("expires_in_secs", 43200))
        except (ValueError, KeyError, TypeError):
            raise ApiError(f"{path}: the answer has no access_token") from None
        self._access = access
        self._expires_at = self.clock() + expires
        if isinstance(data.get("refresh_token"), str):
            self._refresh = data["refresh_token"]

    # ------------------------------------------------------------ requests

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kw)
        except httpx.TimeoutException:
            raise ApiError(f"{method} {path}: no answer within {self.config.request_timeout:g}s") from None
        except httpx.HTTPError as e:
            cause = e.__cause__ or e.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise ApiError(f"{method} {path}: TLS: the server's certificate is not trusted") from None
            raise ApiError(f"{method} {path}: {type(e).__name__}: {e}"[:300]) from None

    async def request(self, method: str, path: str, body: Any = None, fresh: bool = False) -> httpx.Response:
        """An authorised request; on 401 the token is renewed and the request tried once more."""
        for attempt in (0, 1):
            token = await self.token(fresh=fresh and attempt == 0)
            kw: dict[str, Any] = {"headers": {"Authorization": f"Bearer {token}"}}
            if body is not None:
                kw["json"] = body
            resp = await self._send(method, path, **kw)
            if resp.status_code != 401 or attempt == 1:
                return resp
            self._expires_at = 0.0  # expired or revoked: renew
        raise AssertionError("unreachable")

    async def put_metadata(self, device_id: str, kind: str, document: dict[str, Any], fresh: bool = False) -> int:
        resp = await self.request("PUT", f"/sensors/{device_id}/metadata/{kind}", document, fresh=fresh)
        return resp.status_code

    async def sensor(self, device_id: str) -> tuple[int, Any]:
        resp = await self.request("GET", f"/sensors/{device_id}")
        return resp.status_code, _json_or_text(resp)

    async def metadata(self, device_id: str, kind: str) -> tuple[int, Any]:
        resp = await self.request("GET", f"/sensors/{device_id}/metadata/{kind}")
        return resp.status_code, _json_or_text(resp)


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:500]


def metadata_hash(metadata: DeviceMetadata) -> str:
    return hashlib.sha256(json.dumps(metadata.documents(), sort_keys=True).encode()).hexdigest()


class ProvisionedState:
    """What metadata was last accepted for each device (a hash), in one small JSON file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text())
            self.hashes: dict[str, str] = {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
        except (OSError, ValueError):
            self.hashes = {}

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.hashes, sort_keys=True).encode())


class Provisioner:
    """PUTs each device's metadata after its first acknowledged event, retrying 403 (not yet registered) and
    failures with backoff; logs on change."""

    def __init__(self, sink: str, client: VoltawareClient, devices: dict[str, DeviceMetadata], state: Path,
                 retry_base: float = 30.0, retry_cap: float = 3600.0) -> None:
        self.client = client
        self.devices = devices
        self.state = ProvisionedState(state)
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.log = log.bind(sink=sink)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rng = random.Random()

    def needed(self, device_id: str) -> bool:
        meta = self.devices.get(device_id)
        return meta is not None and self.state.hashes.get(device_id) != metadata_hash(meta)

    def event_acknowledged(self, device_id: str) -> None:
        """A device's event reached the broker: provision it if its metadata is new or changed."""
        if device_id in self._tasks or not self.needed(device_id):
            return
        self._tasks[device_id] = asyncio.create_task(self._provision(device_id), name=f"metadata:{device_id}")

    async def close(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        await self.client.aclose()

    async def _provision(self, device_id: str) -> None:
        meta = self.devices[device_id]
        wanted = metadata_hash(meta)
        attempt = 0
        # The first try after the device's first event takes a fresh token (the API caches devices per token).
        fresh = True
        while True:
            try:
                problem = await self._put_all(device_id, meta, fresh)
            except ApiError as e:
                problem = str(e)
            if problem is None:
                self.state.hashes[device_id] = wanted
                await asyncio.to_thread(self.state.save)
                self.log.info("device metadata sent", device=device_id, attempts=attempt + 1)
                self._tasks.pop(device_id, None)
                return
            attempt += 1
            (self.log.warning if attempt == 1 else self.log.debug)(
                "device metadata not accepted yet; retrying", device=device_id, reason=problem, attempt=attempt
            )
            fresh = "403" in problem
            delay = self._rng.uniform(0.5, 1.0) * min(self.retry_cap, self.retry_base * 2 ** (attempt - 1))
            await asyncio.sleep(delay)

    async def _put_all(self, device_id: str, meta: DeviceMetadata, fresh: bool) -> str | None:
        for kind, document in meta.documents().items():
            status = await self.client.put_metadata(device_id, kind, document, fresh=fresh)
            fresh = False
            if status == 403:
                return f"HTTP 403 on {kind}: the device is not registered yet (no event seen with this token)"
            if status not in (200, 201, 204):
                return f"HTTP {status} on {kind}"
        return None


async def verify(config: VoltawareConfig, last_sent: dict[str, Any]) -> tuple[bool, list[str]]:
    """For each device: what the API says of it (``GET /sensors/{id}``) and whether its metadata is in place,
    beside the last event the gateway delivered. Sends nothing."""
    lines: list[str] = []
    ok = True
    client = VoltawareClient(config.api) if config.api is not None else None
    try:
        for d in config.devices:
            lines.append(f"{config.name} / {d.device_id} (meter {d.meter})")
            if client is None:
                lines.append("  Voltaware: no api: section, so the device's state cannot be asked")
            else:
                try:
                    status, body = await client.sensor(d.device_id)
                    if status == 200 and isinstance(body, dict):
                        lines.append(f"  Voltaware: connection {body.get('connection_state')}, first event"
                                     f" {body.get('first_event')}, last event {body.get('last_event')}")
                    else:
                        ok = False
                        lines.append(f"  Voltaware: HTTP {status} {json.dumps(body)[:300]}")
                    for kind, wanted in (d.metadata.documents() if d.metadata else {}).items():
                        status, got = await client.metadata(d.device_id, kind)
                        state = "in place" if status == 200 and got == wanted else (
                            "different from the configuration" if status == 200 else f"missing (HTTP {status})")
                        ok = ok and state == "in place"
                        lines.append(f"  metadata {kind}: {state}")
                except ApiError as e:
                    ok = False
                    lines.append(f"  Voltaware: {e}")
            record = last_sent.get(stream_name(config.name, d.device_id))
            packet = record.get("packet") if isinstance(record, dict) else None
            lines.append(f"  gateway:   {packet if packet else 'nothing delivered yet'}")
    finally:
        if client is not None:
            await client.aclose()
    return ok, lines
