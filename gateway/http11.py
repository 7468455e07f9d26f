"""A lean HTTP/1.1 client for sinks that post one small packet after another: one kept-alive TLS connection,
asyncio streams for the bytes, h11 for the protocol.

Why not httpx here: measured on the CI machine, an httpx POST costs 1.6 ms of CPU, this 0.26 ms; with 20 Wattics
data points in parallel over 20 ms answers, httpx alone would cap the backlog drain near 600 packets/s, under the
1,000/s that per-point ordering allows. h11 (httpx's own HTTP/1.1 engine, sans-I/O) keeps the protocol handling
correct; this module only opens, reuses and closes connections. httpx stays for requests off the hot path.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import contextlib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import httpx

from gateway.errors import HttpError, HttpTimeout

#: A connection unused for longer than this is closed rather than reused (servers drop idle ones).
IDLE_EXPIRY = 30.0
#: Larger answers are cut: a platform's answer is a status and a few words.
MAX_BODY = 64 * 1024

#: asyncio gives every TLS connection a 256 KiB read buffer (``SSLProtocol.max_size``): with one kept-alive
#: connection per Wattics data point, that was 8 MB of a 32-meter site's memory (measured with
#: tests/bench/memory_report.py), to read answers of a few hundred bytes. A TLS record holds at most 16 KiB, so 32 KiB
#: still reads any record whole. It applies to this process's asyncio TLS connections, all to platforms that answer
#: in a few words (Wattics, Voltaware's REST API).
TLS_READ_BUFFER = 32 * 1024
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Http11Client:
    def __init__(self, url: str, ctx: ssl.SSLContext | None, timeout: float, headers: list[tuple[str, str]],
                 cookies: httpx.Cookies | None = None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ctx if parts.scheme == "https" else None
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = self.host if parts.port is None else f"{self.host}:{parts.port}"
        self.headers = [("Host", host_header), *headers]
        self.timeout = timeout
        self.cookies = cookies if cookies is not None else httpx.Cookies()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn: h11.Connection | None = None
        self._last_used = 0.0
        self._lock = asyncio.Lock()

    async def post(self, body: bytes) -> Response:
        async with self._lock:  # one request at a time on the connection
            fresh = await self._ensure_connection()
            try:
                return await self._exchange(body)
            except _StaleConnection:
                await self._close()
                if fresh:
                    raise HttpError("connection lost: the server closed it without answering") from None
            # A kept-alive connection the server had dropped: once more on a new one.
            await self._ensure_connection()
            try:
                return await self._exchange(body)
            except _StaleConnection:
                await self._close()
                raise HttpError("connection lost: the server closed it without answering") from None

    async def aclose(self) -> None:
        async with self._lock:
            await self._close()

    # ------------------------------------------------------------ plumbing

    async def _ensure_connection(self) -> bool:
        usable = (
            self._conn is not None
            and self._conn.our_state is h11.IDLE
            and self._conn.their_state is h11.IDLE
            and time.monotonic() - self._last_used < IDLE_EXPIRY
        )
        if usable:
            return False
        await self._close()
        try:
            async with asyncio.timeout(self.timeout):
                self._reader, self._writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None,
                    limit=MAX_BODY,
                )
        except TimeoutError:
            raise HttpTimeout(f"cannot connect: no answer within {self.timeout:g}s") from None
        except ssl.SSLCertVerificationError as e:
            raise HttpError(f"TLS: the server's certificate is not trusted ({e.verify_message})") from None
        except ssl.SSLError as e:
            raise HttpError(f"TLS: {e.reason or e}") from None
        except OSError as e:
            raise HttpError(f"cannot connect: {e.strerror or e}") from None
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_BODY)
        return True

    async def _exchange(self, body: bytes) -> Response:
        assert self._conn is not None and self._reader is not None and self._writer is not None
        conn = self._conn
        headers = [*self.headers, ("Content-Length", str(len(body)))]
        cookie = self._cookie_header()
        if cookie:
            headers.append(("Cookie", cookie))
        got_any = False
        try:
            async with asyncio.timeout(self.timeout):
                data = conn.send(h11.Request(method="POST", target=self.target, headers=headers))
                data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
                self._writer.write(data)
                await self._writer.drain()
                status, reason, resp_headers, chunks = 0, "", {}, []
                size = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        chunk = await self._reader.read(65536)
                        if not chunk and not got_any:
                            raise _StaleConnection
                        got_any = True
                        conn.receive_data(chunk)
                        continue
                    if isinstance(event, h11.Response):
                        status, reason = event.status_code, event.reason.decode("latin-1")
                        resp_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                    elif isinstance(event, h11.Data):
                        if size < MAX_BODY:
                            chunks.append(bytes(event.data[: MAX_BODY - size]))
                        size += len(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        raise HttpError("connection lost in the middle of the answer")
        except _StaleConnection:
            raise
        except TimeoutError:
            await self._close()
            raise HttpTimeout(f"no answer within {self.timeout:g}s") from None
        except h11.RemoteProtocolError as e:
            await self._close()
            raise HttpError(f"bad HTTP answer: {e}") from None
        except (ssl.SSLError, OSError) as e:
            await self._close()
            if not got_any and isinstance(e, ConnectionResetError | BrokenPipeError):
                raise _StaleConnection from None
            raise HttpError(f"connection lost: {getattr(e, 'strerror', None) or e}") from None
        except HttpError:
            await self._close()
            raise
        response = Response(status, reason, resp_headers, b"".join(chunks))
        if "set-cookie" in resp_headers:
            self._keep_cookies(event_headers=resp_headers)
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._last_used = time.monotonic()
        else:  # Connection: close, or an HTTP/1.0 answer
            await self._close()
        return response

    def _cookie_header(self) -> str:
        return "; ".join(f"{name}={value}" for name, value in self.cookies.items())

    def _keep_cookies(self, event_headers: dict[str, str]) -> None:
        # h11 folds nothing; one Set-Cookie is enough for the sessions platforms use (stickiness, sessions).
        fake = httpx.Response(200, headers={"set-cookie": event_headers["set-cookie"]},
                              request=httpx.Request("POST", self.url))
        self.cookies.extract_cookies(fake)

    async def _close(self) -> None:
        writer, self._writer, self._reader, self._conn = self._writer, None, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


class _StaleConnection(Exception):
    """The server closed a kept-alive connection before answering anything."""
