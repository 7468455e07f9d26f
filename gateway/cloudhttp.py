"""What the cloud sources (Intellimeter, WattzOn Link) share to ask a REST API for JSON: one error type whose
``kind`` says what the caller does, and a GET/POST that bounds the answer's size and never trusts its shape.

Kinds: ``auth`` (credentials refused: a person must act; try again slowly), ``not_found`` (404: an address, a path
or an id is wrong), ``transient`` (429, 5xx, timeouts, connection errors: try again with a backoff; a
``Retry-After`` in seconds is kept), ``bad_answer`` (not the JSON expected, not UTF-8, larger than allowed: nothing
of it is used). Messages never carry a credential (the caller's redactor scrubs what a peer echoes).
"""

from __future__ import annotations

import json
import math
import ssl
from pathlib import Path
from typing import Any

import httpx

from gateway.errors import PeerError
from gateway.logs import REDACTOR


class CloudError(PeerError):
    def __init__(self, kind: str, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.retry_after = retry_after


def client(ca_file: Path | None, timeout: float, cert: tuple[Path, Path] | None = None,
           verify: bool = True) -> httpx.AsyncClient:
    """An HTTP client for a cloud's API: the system's CAs plus ``ca_file``, host names checked, a client
    certificate (``cert``: certificate and key files) when the platform authenticates by one; no redirects, no proxy
    from the environment. ``verify`` False only for plain http (nothing to verify)."""
    ctx = ssl.create_default_context()
    if ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    if cert is not None:
        try:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        except (OSError, ssl.SSLError) as e:
            raise CloudError("auth", f"cannot use the client certificate {cert[0]} with {cert[1]}:"
                                     f" {type(e).__name__}") from None
    return httpx.AsyncClient(verify=ctx if verify else True, timeout=timeout, follow_redirects=False,
                             trust_env=False, headers={"User-Agent": "meter-gateway"})


def json_number(v: object, limit: float, signed: bool = False) -> float | None:
    """A JSON number as a float: finite, under ``limit`` in size, not negative unless ``signed``; else None (a
    string, a boolean, a number too big for a float)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    if not math.isfinite(f) or abs(f) >= limit or (f < 0 and not signed):
        return None
    return f


def error_text(status: int, content: bytes) -> str:
    """An error answer's ``error`` (and ``error_description``), short and scrubbed; else the status."""
    try:
        body = json.loads(content[:4096])
    except ValueError:
        return f"HTTP {status}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        desc = body.get("error_description") or body.get("detail")
        text = body["error"][:80] + (f" ({desc[:160]})" if isinstance(desc, str) and desc else "")
        return REDACTOR.scrub(text)
    return f"HTTP {status}"


def check_status(status: int, headers: httpx.Headers, content: bytes, what: str, peer: str) -> None:
    """Nothing for a 2xx; a :class:`CloudError` of the right kind otherwise."""
    if 200 <= status < 300:
        return
    if status == 404:
        raise CloudError("not_found", f"{what}: {peer} answered 404: {error_text(status, content)}", status)
    if status == 429 or status >= 500:
        retry = headers.get("Retry-After", "")
        raise CloudError("transient", f"{what}: {peer} answered {status}", status,
                         float(retry) if retry.isdigit() else None)
    if status in (401, 403):
        raise CloudError("auth", f"{what}: {peer} answered {status}: {error_text(status, content)}", status)
    raise CloudError("bad_answer", f"{what}: {peer} answered {status}: {error_text(status, content)}", status)


async def request_json(client: httpx.AsyncClient, method: str, url: str, *, peer: str, what: str, max_answer: int,
                       hook: Any = None, **kwargs: Any) -> tuple[int, Any]:
    """(status, JSON) of a 2xx answer; a 401 comes back as (401, None) for the caller to renew its credentials;
    anything else raises :class:`CloudError`. The answer is read up to ``max_answer`` bytes, and its bytes are let
    go before it is parsed (``hook``: json's ``object_hook``)."""
    try:
        async with client.stream(method, url, **kwargs) as r:
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > max_answer:
                    raise CloudError("bad_answer", f"{what}: {peer}'s answer is larger than max_answer"
                                                   f" ({max_answer} bytes)")
    except httpx.TimeoutException:
        raise CloudError("transient", f"{what}: {peer} did not answer in time") from None
    except ssl.SSLError as e:  # with TLS 1.3 a refused client certificate arrives as an alert on the first read
        raise CloudError("transient", f"cannot reach {peer}: TLS: {e.reason or e} (with a client certificate:"
                                      " is it the one the platform signed?)"[:300]) from None
    except (httpx.HTTPError, OSError) as e:
        raise CloudError("transient", f"cannot reach {peer}: {type(e).__name__}: {e}"[:300]) from None
    if r.status_code == 401:
        return 401, None
    check_status(r.status_code, r.headers, bytes(body[:4096]), what, peer)
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise CloudError("bad_answer", f"{what}: {peer}'s answer is not UTF-8") from None
    del body
    try:
        return r.status_code, json.loads(text, object_hook=hook)
    except (ValueError, RecursionError):
        raise CloudError("bad_answer", f"{what}: {peer}'s answer is not JSON") from None
