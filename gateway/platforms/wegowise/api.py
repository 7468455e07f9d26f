"""The Wegowise Data API over HTTPS, every request signed with OAuth 1.0a (HMAC-SHA1).

The signature is oauthlib's (a well-kept, pure-Python implementation of RFC 5849, the one requests-oauthlib is
built on): the parameters' normalisation and encoding rules are where hand-written signatures go wrong, and a
pure-Python library adds no compiled dependency to a Raspberry Pi's install. Bodies are JSON, which OAuth 1.0a
leaves out of the signature (only form-encoded bodies are signed).

Every answer is turned into a value or a :class:`WegowiseError` whose ``kind`` says what the caller does:
``auth`` (401/403: the credentials), ``not_found`` (404), ``invalid`` (400/422: Wegowise's message says why; sending
the same again would not help), ``transient`` (429, 5xx, timeouts, connection errors, an answer that is not the
JSON expected: try again later). Messages never carry a credential.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Generator
from typing import Any
from urllib.parse import parse_qsl

import httpx
from oauthlib.oauth1 import Client as OAuthClient

from gateway.errors import SinkError
from gateway.platforms.wegowise.config import WegowiseConfig


class WegowiseError(SinkError):
    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class OAuth1(httpx.Auth):
    """Signs each request with oauthlib; a JSON body is not part of the signature, a form body is."""

    def __init__(self, consumer_key: str, consumer_secret: str, token: str | None = None,
                 token_secret: str | None = None, verifier: str | None = None, callback: str | None = None) -> None:
        self._client = OAuthClient(consumer_key, client_secret=consumer_secret, resource_owner_key=token,
                                   resource_owner_secret=token_secret, verifier=verifier, callback_uri=callback)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        form = request.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
        body = request.content.decode() if form and request.content else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body is not None else {}
        method: Any = request.method  # the stubs want a literal; httpx gives the method as a str
        _, signed, _ = self._client.sign(str(request.url), method, body, headers)
        request.headers["Authorization"] = signed["Authorization"]
        yield request


def ssl_context(config: WegowiseConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if config.ca_file is not None:
        ctx.load_verify_locations(cafile=str(config.ca_file))
    return ctx


class WegowiseApi:
    def __init__(self, config: WegowiseConfig, token: str, token_secret: str) -> None:
        self.config = config
        self.base = config.url.rstrip("/") + config.api_path
        self._http = httpx.AsyncClient(
            auth=OAuth1(config.consumer_key, config.consumer_secret.get_secret_value(), token, token_secret),
            verify=ssl_context(config), timeout=config.request_timeout,
            headers={"Accept": "application/json"})

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        what = f"{method} {path}"
        try:
            r = await self._http.request(method, self.base + path, json=body)
        except httpx.TimeoutException:
            raise WegowiseError("transient", f"{what}: no answer within {self.config.request_timeout:g}s") from None
        except httpx.HTTPError as e:
            raise WegowiseError("transient", f"{what}: {e.__class__.__name__}") from None
        if r.status_code in (200, 201):
            try:
                return r.json()
            except ValueError:
                raise WegowiseError("transient", f"{what}: HTTP {r.status_code} with a body that is not JSON",
                                    r.status_code) from None
        if r.status_code == 204:
            return None
        reason = _reason(r)
        if r.status_code in (401, 403):
            raise WegowiseError("auth", f"{what}: HTTP {r.status_code}, credentials refused ({reason}): run"
                                " meter-gateway wegowise authorize, or check consumer_key/consumer_secret",
                                r.status_code)
        if r.status_code == 404:
            raise WegowiseError("not_found", f"{what}: HTTP 404 ({reason})", 404)
        if r.status_code in (400, 422):
            raise WegowiseError("invalid", f"{what}: HTTP {r.status_code}: {reason}", r.status_code)
        raise WegowiseError("transient", f"{what}: HTTP {r.status_code} ({reason})", r.status_code)

    async def meters(self) -> list[dict[str, Any]]:
        return _list(await self._call("GET", "/meters"), "GET /meters")

    async def meter(self, meter_id: int) -> dict[str, Any]:
        return _obj(await self._call("GET", f"/meters/{meter_id}"), f"GET /meters/{meter_id}")

    async def create_meter(self, body: dict[str, Any]) -> dict[str, Any]:
        return _obj(await self._call("POST", "/meters", body), "POST /meters")

    async def raw_data(self, meter_id: int) -> list[dict[str, Any]]:
        return _list(await self._call("GET", f"/meters/{meter_id}/raw_data"), f"GET /meters/{meter_id}/raw_data")

    async def latest(self, meter_id: int) -> dict[str, Any] | None:
        try:
            return _obj(await self._call("GET", f"/meters/{meter_id}/latest_datum"), "latest_datum")
        except WegowiseError as e:
            if e.kind == "not_found":
                return None  # a meter with no data yet answers 404 too: the caller checks the meter itself
            raise

    async def create_datum(self, meter_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return _obj(await self._call("POST", f"/meters/{meter_id}/raw_data", body), "POST raw_data")

    async def update_datum(self, meter_id: int, datum_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return _obj(await self._call("PUT", f"/meters/{meter_id}/raw_data/{datum_id}", body), "PUT raw_data")


def _reason(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return (r.text or "").strip()[:120] or "no message"
    if isinstance(body, dict):
        for k in ("errors", "error"):
            if k in body:
                return str(body[k])[:300]
        return json.dumps(body)[:300]
    return str(body)[:300]


def _list(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise WegowiseError("transient", f"{what}: answered something other than a list of objects")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WegowiseError("transient", f"{what}: answered something other than an object")
    return value


async def token_request(config: WegowiseConfig, path: str, token: str | None = None, token_secret: str | None = None,
                        verifier: str | None = None, callback: str | None = None) -> dict[str, str]:
    """One leg of the three-legged flow: POST to ``path``, the form-encoded answer as a dict."""
    auth = OAuth1(config.consumer_key, config.consumer_secret.get_secret_value(), token, token_secret, verifier,
                  callback)
    async with httpx.AsyncClient(auth=auth, verify=ssl_context(config), timeout=config.request_timeout) as http:
        try:
            r = await http.post(config.url.rstrip("/") + path)
        except httpx.HTTPError as e:
            raise WegowiseError("transient", f"POST {path}: {e.__class__.__name__}") from None
    if r.status_code != 200:
        raise WegowiseError("auth" if r.status_code in (401, 403) else "transient",
                            f"POST {path}: HTTP {r.status_code} ({_reason(r)})", r.status_code)
    answer = dict(parse_qsl(r.text))
    if "oauth_token" not in answer or "oauth_token_secret" not in answer:
        raise WegowiseError("transient", f"POST {path}: the answer holds no token")
    return answer
