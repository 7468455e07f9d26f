"""The ``fleet:`` section: where this gateway reports its presence and health."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr

from gateway.config.common import Name, PositiveDuration, Strict, check_ca_file, check_url


def check_prefix(value: str) -> str:
    if not value or any(c in value for c in "+#") or value.startswith("/") or value.endswith("/") or "//" in value:
        raise ValueError(f"'{value}' cannot be a topic prefix (no '+' or '#', no empty level, no '/' at either end)")
    return value


TopicPrefix = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(check_prefix)]


class ConfigSource(Strict):
    """A configuration fetched over HTTPS on an interval, instead of (or beside) the broker's config/set."""

    url: Annotated[str, AfterValidator(check_url)]
    #: Asked this often; an unchanged file (ETag) costs a 304.
    every: PositiveDuration = 300.0
    #: CA certificates for the server's certificate (default: the system's).
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    #: Sent as "Authorization: Bearer <token>" (token_file: or the environment keeps it out of the file).
    token: SecretStr | None = None


class FleetConfig(Strict):
    host: Annotated[str, Field(min_length=1)]
    #: Default 8883 with TLS, 1883 without.
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: TLS, verified against the system's CAs or ``ca_file``. Plain MQTT only with ``allow_insecure``.
    tls: bool = True
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: A broker without TLS or without credentials: a local test broker only (a warning at every start).
    allow_insecure: bool = False
    prefix: TopicPrefix = "meter-gateway"
    #: This gateway's name in the topics; default: the site's name.
    gateway_id: Name | None = None
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive: PositiveDuration = 30.0
    #: MQTT 5 lets a meter's retained availability expire when its gateway stops refreshing it (a dead gateway
    #: leaves no stale "online" behind); 3.1.1 for a broker that does not speak 5.
    mqtt_version: Literal["5", "3.1.1"] = "5"
    #: The health document is published this often, and on every change ...
    health_every: PositiveDuration = 60.0
    #: ... but never more often than this, however often something changes (a flapping meter).
    min_gap: PositiveDuration = 10.0
    #: Take configurations published on <prefix>/<gateway id>/config/set (see gateway/fleet/remote.py).
    remote_config: bool = False
    #: A configuration applied remotely that does not run healthy within this is rolled back.
    apply_deadline: PositiveDuration = 60.0
    #: Also fetch the configuration from an HTTPS address (with remote_config).
    config_source: ConfigSource | None = None

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.tls else 1883)

    def effective_client_id(self, gateway_id: str) -> str:
        return self.client_id or f"meter-gateway-{gateway_id}-{socket.gethostname()}"[:64]

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        out: list[tuple[tuple[str, ...], str]] = []
        if (self.client_cert is None) != (self.client_key is None):
            out.append((("client_cert",), "give client_cert and client_key together"))
        if not self.tls and not self.allow_insecure:
            out.append((("tls",), "the fleet broker is reached over TLS; plain MQTT only with allow_insecure: true"
                                  " (a local test broker)"))
        if self.ca_file is not None and not self.tls:
            out.append((("ca_file",), "given, but tls is false"))
        if not self.username and self.client_cert is None and not self.allow_insecure:
            out.append((("username",), "required (or a client certificate): a fleet broker without credentials"
                                       " lets anyone speak for this gateway; allow_insecure: true for a test broker"))
        if self.password is not None and not self.username:
            out.append((("username",), "required with a password"))
        if self.remote_config and self.allow_insecure:
            out.append((("remote_config",), "needs TLS and credentials: not with allow_insecure (anyone reaching the"
                                            " broker could configure this gateway)"))
        if self.config_source is not None:
            if not self.remote_config:
                out.append((("config_source",), "needs remote_config: true"))
            if not self.config_source.url.startswith("https://"):
                out.append((("config_source", "url"), "must be https:// (a configuration read over plain HTTP could"
                                                      " be changed on the way)"))
        if self.min_gap > self.health_every:
            out.append((("min_gap",), "longer than health_every"))
        return out
