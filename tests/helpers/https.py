"""An HTTPS server on loopback with a throwaway CA (trustme), for the platform emulators."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme


class HttpsServer:
    def __init__(self, cert_dir: Path, ca_name: str, client_certs: bool = False) -> None:
        """``client_certs``: every client must present a certificate of this server's own client CA
        (:meth:`issue_client`), as a platform that authenticates clients by certificate does."""
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert_dir.mkdir(parents=True, exist_ok=True)
        self.cert_dir = cert_dir
        self.ca_file = cert_dir / ca_name
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(self._ctx)
        self.client_ca: trustme.CA | None = None
        if client_certs:
            self.client_ca = trustme.CA()
            self._ctx.verify_mode = ssl.CERT_REQUIRED
            self.client_ca.configure_trust(self._ctx)
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self.connections = 0
        self.open_sockets: set[socket.socket] = set()

    def issue_client(self, name: str, ca: trustme.CA | None = None) -> tuple[Path, Path]:
        """A client certificate and its key (PEM files), signed by the server's client CA (or by ``ca``)."""
        signer = ca or self.client_ca
        assert signer is not None
        leaf = signer.issue_cert(f"{name}.clients.example")
        cert, key = self.cert_dir / f"{name}.crt", self.cert_dir / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return cert, key

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def serve(self, handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
        owner = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True
            # The default backlog of 5 drops the SYNs of many clients connecting at once: they come back 1 s later.
            request_queue_size = 128

            def get_request(self) -> tuple[socket.socket, Any]:
                sock, addr = super().get_request()
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # The TLS handshake happens in the handler's thread, at its first read.
                tls = owner._ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                with owner._lock:
                    owner.connections += 1
                    owner.open_sockets.add(tls)
                return tls, addr

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # clients that time out and go away are part of the tests

        self._server = Server(("127.0.0.1", port), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def shutdown(self) -> None:
        """Stop listening and cut every open connection, as a server that goes away does."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            sockets, self.open_sockets = self.open_sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def reply(handler: BaseHTTPRequestHandler, code: int, body: str, headers: dict[str, str] | None = None) -> None:
    """Headers and body in one write: two small writes would meet the client's delayed ACK (40 ms each)."""
    data = body.encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json" if body[:1] in "{[" else "text/plain")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
    handler.flush_headers()
