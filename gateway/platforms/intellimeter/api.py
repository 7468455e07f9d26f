"""Intellimeter's REST API: OAuth 2.0 tokens (client credentials, refresh, device code) and the GET requests.

Tokens: a grant answers ``access_token``, ``refresh_token`` and ``expires_in`` as ``H:MM:SS`` (about an hour). A
token is renewed ``refresh_before`` its expiry with the ``refresh_token`` grant (the old access token and the refresh
token in the body); a refused refresh falls back to a new client-credentials grant (the device flow has no such
fallback: the account's owner must authorise again). A request answered 401 renews the token once and is sent again.
An ``expires_in`` that cannot be read leaves the token in use until a 401 says otherwise (logged once).
The device flow's tokens live in the cloud's ``token_file`` (0600) and are written back after every renewal, since
a refresh token may be single-use.

Every answer is turned into a value or a :class:`CloudError` whose ``kind`` says what the caller does: ``auth``
(credentials refused: wait ``auth_retry``, a person must act), ``not_found`` (404: the address or a path is wrong),
``transient`` (429, 5xx, timeouts, connection errors: try again with a backoff), ``bad_answer`` (an answer that is
not the JSON expected, or larger than ``max_answer``: try again later, nothing of it is used). Messages never carry
a credential.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from gateway.cloudhttp import CloudError, check_status, client, error_text, request_json
from gateway.files import write_atomic
from gateway.logs import REDACTOR
from gateway.platforms.intellimeter.config import IntellimeterCloud

log = structlog.get_logger("gateway.platforms.intellimeter.api")

#: A token answer is a few hundred bytes; one larger than this is not read further.
AUTH_ANSWER_MAX = 64 * 1024
_HMS = re.compile(r"^(\d{1,6}):([0-5]\d):([0-5]\d)$")


def parse_hms(value: object) -> float | None:
    """``"1:00:00"`` -> 3600.0; None for anything else."""
    if not isinstance(value, str):
        return None
    m = _HMS.match(value.strip())
    if m is None:
        return None
    return int(m[1]) * 3600.0 + int(m[2]) * 60.0 + int(m[3])


@dataclass(slots=True)
class Tokens:
    access: str
    refresh: str | None
    #: wall-clock time it expires; None when the answer did not say in a form we read
    expires_at: float | None
    scope: str

    def to_json(self) -> dict[str, Any]:
        return {"access_token": self.access, "refresh_token": self.refresh, "expires_at": self.expires_at,
                "scope": self.scope}


def tokens_from_grant(answer: Any, now: float) -> Tokens:
    """A grant's answer, checked: a token is a non-empty string, the rest is optional."""
    if not isinstance(answer, dict) or not isinstance(answer.get("access_token"), str) \
            or not answer["access_token"] or len(answer["access_token"]) > 8192:
        raise CloudError("bad_answer", "the token answer has no access_token")
    refresh = answer.get("refresh_token")
    lifetime = parse_hms(answer.get("expires_in"))
    if lifetime is None:
        log.warning("the token answer's expires_in is not H:MM:SS: the token is used until it is refused",
                    expires_in=str(answer.get("expires_in"))[:40])
    scope = answer.get("scope")
    return Tokens(answer["access_token"], refresh if isinstance(refresh, str) and refresh else None,
                  None if lifetime is None else now + lifetime, scope if isinstance(scope, str) else "")


def write_tokens(path: Path, tokens: Tokens) -> None:
    """Atomically, readable by its owner only."""
    write_atomic(path, json.dumps(tokens.to_json()).encode(), 0o600)


def read_tokens(path: Path) -> Tokens:
    try:
        data = json.loads(path.read_text())
        access = data["access_token"]
        if not isinstance(access, str) or not access:
            raise ValueError
        refresh = data.get("refresh_token")
        expires = data.get("expires_at")
        return Tokens(access, refresh if isinstance(refresh, str) else None,
                      float(expires) if isinstance(expires, int | float) else None, str(data.get("scope") or ""))
    except FileNotFoundError:
        raise CloudError("auth", f"no token in {path}: run meter-gateway intellimeter authorize") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CloudError("auth", f"{path} does not hold a token: run meter-gateway intellimeter authorize") from None


def scope_covers(granted: str, wanted: str) -> bool:
    """Whether every wanted scope (``meter:reads:read``) is among the granted ones (which may use ``*``)."""
    have = [g.split(":") for g in granted.split()]
    for w in wanted.split():
        parts = w.split(":")
        if not any(len(g) == len(parts) and all(a in ("*", b) for a, b in zip(g, parts, strict=True)) for g in have):
            return False
    return True


def oauth_error(r: httpx.Response) -> str:
    return error_text(r.status_code, r.content)


def oauth_code(r: httpx.Response) -> str:
    try:
        body = json.loads(r.content[:4096])
    except ValueError:
        return ""
    return body["error"] if isinstance(body, dict) and isinstance(body.get("error"), str) else ""


class IntellimeterApi:
    """One account: its HTTP client and its tokens. ``token_path``: the device flow's token file."""

    def __init__(self, cloud: IntellimeterCloud, state_dir: Path) -> None:
        self.cloud = cloud
        self.base = cloud.url.rstrip("/")
        self.token_path = cloud.token_path(state_dir) if cloud.flow == "device_code" else None
        self._tokens: Tokens | None = None
        self._lock = asyncio.Lock()
        self._client: httpx.AsyncClient | None = None
        #: requests made (each try), for the figures
        self.requests = 0
        self._scope_warned = False

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = client(self.cloud.ca_file, self.cloud.request_timeout, verify=not self.cloud.insecure)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ------------------------------------------------------------ tokens

    async def post_auth(self, body: dict[str, str]) -> httpx.Response:
        """POST to the auth endpoint (JSON body), the answer read whole up to AUTH_ANSWER_MAX bytes; transport
        failures become ``transient``."""
        self.requests += 1
        try:
            async with self._http().stream("POST", self.base + self.cloud.auth_path, json=body) as r:
                data = bytearray()
                async for chunk in r.aiter_bytes():
                    data += chunk
                    if len(data) > AUTH_ANSWER_MAX:
                        raise CloudError("bad_answer", "Intellimeter's token answer is larger than any token")
        except httpx.TimeoutException:
            raise CloudError("transient", "Intellimeter did not answer in time (auth)") from None
        except (httpx.HTTPError, OSError) as e:  # ssl.SSLError is an OSError
            raise CloudError("transient", f"cannot reach Intellimeter: {type(e).__name__}: {e}"[:300]) from None
        return httpx.Response(r.status_code, headers=r.headers, content=bytes(data))

    def _take(self, tokens: Tokens) -> Tokens:
        self._tokens = tokens
        REDACTOR.issued(f"intellimeter:{self.cloud.name}", [tokens.access, tokens.refresh or ""])
        if not self._scope_warned and tokens.scope and not scope_covers(tokens.scope, "meter:reads:read"):
            self._scope_warned = True
            log.warning("the token was granted without meter:reads:read: reads will be refused (enable the scope"
                        " for the application in Intellimeter's portal)", cloud=self.cloud.name, granted=tokens.scope)
        if self.token_path is not None:
            write_tokens(self.token_path, tokens)
        return tokens

    async def _grant(self) -> Tokens:
        if self.cloud.flow == "device_code":
            assert self.token_path is not None
            return self._take(read_tokens(self.token_path)) if self._tokens is None else self._tokens
        r = await self.post_auth({"grant_type": "client_credentials", "client_id": self.cloud.client_id,
                                  "client_secret": self.cloud.client_secret.get_secret_value(),
                                  "scope": self.cloud.scope})
        if r.status_code in (400, 401, 403):
            raise CloudError("auth", f"Intellimeter refused the client credentials: {oauth_error(r)}", r.status_code)
        self._check_status(r, "auth")
        tokens = tokens_from_grant(self._json(r), time.time())
        log.info("Intellimeter granted a token", cloud=self.cloud.name, scope=tokens.scope, expires_in_s=(
            None if tokens.expires_at is None else round(tokens.expires_at - time.time())))
        return self._take(tokens)

    async def _refresh(self, old: Tokens) -> Tokens:
        if old.refresh is None:
            if self.cloud.flow == "device_code":
                raise CloudError("auth", "the token expired and came without a refresh token: run meter-gateway"
                                         " intellimeter authorize again")
            return await self._grant()
        r = await self.post_auth({"grant_type": "refresh_token", "access_token": old.access,
                                  "refresh_token": old.refresh})
        if r.status_code in (400, 401, 403):
            why = oauth_error(r)
            if self.cloud.flow == "device_code":
                raise CloudError("auth", f"Intellimeter refused to renew the token ({why}): run meter-gateway"
                                         " intellimeter authorize again", r.status_code)
            log.info("Intellimeter refused to renew the token: asking for a new one", cloud=self.cloud.name,
                     reason=why)
            self._tokens = None
            return await self._grant()
        self._check_status(r, "auth")
        tokens = tokens_from_grant(self._json(r), time.time())
        if tokens.refresh is None:
            tokens.refresh = old.refresh
        return self._take(tokens)

    async def token(self) -> str:
        async with self._lock:
            t = self._tokens
            if t is None:
                t = await self._grant()
            if t.expires_at is not None and t.expires_at - time.time() < self.cloud.refresh_before:
                t = await self._refresh(t)
            return t.access

    async def renew(self, refused: str) -> None:
        """A request with ``refused`` was answered 401: renew (once, whoever asks first)."""
        async with self._lock:
            t = self._tokens
            if t is None or t.access != refused:
                return  # renewed meanwhile
            if self.cloud.flow == "device_code" and self.token_path is not None:
                stored = read_tokens(self.token_path)
                if stored.access != refused:  # 'authorize' was run again meanwhile
                    self._take(stored)
                    return
            await self._refresh(t)

    # ------------------------------------------------------------ requests

    @staticmethod
    def _check_status(r: httpx.Response, what: str) -> None:
        check_status(r.status_code, r.headers, r.content, what, "Intellimeter")

    def _json(self, r: httpx.Response) -> Any:
        try:
            return json.loads(r.content)
        except (ValueError, RecursionError):
            raise CloudError("bad_answer", "Intellimeter's answer is not JSON") from None

    async def get(self, path: str, params: dict[str, str], hook: Any = None) -> Any:
        """GET ``path`` with a bearer token; the answer's JSON (``hook``: json's ``object_hook``). A 401 renews the
        token once and asks again."""
        for attempt in (1, 2):
            token = await self.token()
            self.requests += 1
            status, answer = await request_json(
                self._http(), "GET", self.base + path, peer="Intellimeter", what=f"GET {path}",
                max_answer=self.cloud.max_answer, hook=hook, params=params,
                headers={"Authorization": f"Bearer {token}"})
            if status != 401:
                return answer
            if attempt == 1:
                await self.renew(token)
        raise CloudError("auth", f"GET {path}: Intellimeter refused the renewed token (401)", 401)

    async def reads(self, quantity: int, unit: str, prop: str | None, hook: Any = None) -> Any:
        params = {"by": "meter", "limit_quantity": str(quantity), "limit_unit": unit}
        if prop is not None:
            params["property"] = prop
        return await self.get(self.cloud.read_path, params, hook)

    async def meters(self, prop: str) -> Any:
        return await self.get(self.cloud.meter_path, {"property": prop})
