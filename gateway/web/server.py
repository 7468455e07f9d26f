"""The listener, inside the daemon's own event loop: Starlette's routes served by uvicorn's HTTP/1.1 protocol (h11).

Why these two: the page may face a LAN, so the HTTP parsing is a well-kept library's, not ours; both are pure Python
(nothing to compile for an ARM board, nothing new in the Debian package's per-architecture wheels), and together
they add about 7 MB of resident memory where aiohttp measured 14 MB on this project's site (docs/page.md).

uvicorn is made to run a process of its own; here it runs as a part of the daemon's loop, so the daemon keeps what
is the daemon's: its signals (uvicorn's own signal handling is not used), the listening socket (bound here, so that
a port in use is one error line rather than uvicorn's exit), and its logs (uvicorn's access log is off). Only the
methods ``startup`` and ``shutdown`` of :class:`uvicorn.Server` are used, not its main loop (which would wake the
process ten times a second to keep a Date header fresh: none is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from pathlib import Path

import uvicorn
from starlette.applications import Starlette

from gateway.errors import GatewayError


class Listener:
    def __init__(self, app: Starlette, host: str, port: int, cert_file: Path | None = None,
                 key_file: Path | None = None) -> None:
        self.host, self.port = host, port
        self.config = uvicorn.Config(
            app, host=host, port=port, loop="none", http="h11", ws="none", lifespan="off", log_config=None,
            access_log=False, proxy_headers=False, server_header=False, date_header=False, limit_concurrency=64,
            timeout_keep_alive=5, timeout_graceful_shutdown=2,
            ssl_certfile=str(cert_file) if cert_file else None, ssl_keyfile=str(key_file) if key_file else None)
        self.server = uvicorn.Server(self.config)
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        try:
            self.config.load()
        except (OSError, ssl.SSLError) as e:
            raise GatewayError(f"the page's certificate cannot be used ({self.config.ssl_certfile},"
                               f" {self.config.ssl_keyfile}): {getattr(e, 'strerror', None) or e}") from None
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, reuse_port=False)
        except OSError as e:
            raise GatewayError(f"cannot listen for monitoring on {self.host}:{self.port}: {e.strerror}") from None
        sock.setblocking(False)
        self._sock = sock
        self.server.lifespan = self.config.lifespan_class(self.config)  # "off": what uvicorn's own run sets up
        await self.server.startup(sockets=[sock])

    async def stop(self) -> None:
        if self._sock is None:
            return
        self.server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.shutdown(sockets=[self._sock]), 5.0)
        self._sock.close()
        self._sock = None
