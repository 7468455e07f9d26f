"""paho-mqtt beside asyncio, for the MQTT source and the Voltaware sink: one way to make a client, one way back to
the event loop.

paho runs its network loop in a thread of its own and calls back from it. Nothing is done in that thread beyond
handing the call to the event loop (:class:`LoopCaller`); once the loop is closed (a stop), late callbacks are
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from gateway.errors import GatewayError


def new_client(
    client_id: str,
    *,
    clean: bool,
    tls: bool,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    username: str | None = None,
    password: str | None = None,
    manual_ack: bool = False,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
) -> mqtt.Client:
    """A client with paho's version-2 callbacks, TLS verified against ``ca_file`` (or the system's CAs),
    reconnecting with a delay from 1 s to 60 s."""
    # MQTT 5 has no clean session flag (a clean start is asked for at connect, paho's default).
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=None if protocol == MQTTProtocolVersion.MQTTv5 else clean,
                         manual_ack=manual_ack, protocol=protocol)
    if tls:
        ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        if client_cert is not None and client_key is not None:
            try:
                ctx.load_cert_chain(str(client_cert), str(client_key))
            except (OSError, ssl.SSLError) as e:
                raise GatewayError(f"cannot load the client certificate {client_cert}: {e}") from None
        client.tls_set_context(ctx)
    if username:
        client.username_pw_set(username, password)
    client.reconnect_delay_set(1, 60)
    return client


class LoopCaller:
    """Calls from paho's thread, made on the event loop it was bound to."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> asyncio.AbstractEventLoop:
        """Bind to the running loop (call from it); returns it."""
        self.loop = asyncio.get_running_loop()
        return self.loop

    def __call__(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)
