"""Configuration of MQTT brokers and subscriptions: meters that publish their readings to a broker.

A broker is one connection (host, TLS, credentials, a stable client id with a persistent session). A subscription
is a topic filter on a broker, the format of its messages, and which meter a message belongs to: a fixed meter, or
the meter named by one level of the topic (``tele/+/SENSOR`` with ``meter_level: 2``). Meters that publish are
declared in ``meters:`` with ``type: mqtt``, so that sinks can name them like any other meter.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr

from gateway.config.common import (
    MeterBase,
    Name,
    PositiveDuration,
    QuantityName,
    Size,
    Strict,
    check_ca_file,
    check_value_unit,
    nonzero,
)
from gateway.quantities import Quantity

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig



class BrokerConfig(Strict):
    name: Name
    host: Annotated[str, Field(min_length=1)]
    #: Default 1883, or 8883 with TLS.
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    #: TLS, verified against the system's CAs or ``ca_file`` (which implies TLS).
    tls: bool = False
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: Stable across restarts: the broker keeps the session (and queued messages) under this id.
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive: PositiveDuration = 60.0
    #: A message larger than this is refused (counted, logged), never parsed.
    max_payload: Size = 64 * 1024

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.client_cert is not None

    @property
    def effective_port(self) -> int:
        return self.port or (8883 if self.uses_tls else 1883)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"meter-gateway-{socket.gethostname()}-{self.name}"[:64]

    def problems(self) -> list[tuple[tuple[str, ...], str]]:
        out: list[tuple[tuple[str, ...], str]] = []
        if (self.client_cert is None) != (self.client_key is None):
            out.append((("client_cert",), "give client_cert and client_key together"))
        if self.password is not None and not self.username:
            out.append((("username",), "required with a password"))
        return out


class ValueMapping(Strict):
    """Where one quantity is in a JSON message: a dotted path (``ENERGY.Power``, ``em:0.a_voltage``, list items by
    index: ``Power.0``), and how to bring it to the quantity's unit."""

    path: Annotated[str, Field(min_length=1)]
    scale: Annotated[float, AfterValidator(nonzero)] = 1.0
    offset: float = 0.0


def _mapping(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


#: ``power_active_total: ENERGY.Power`` is short for ``power_active_total: {path: ENERGY.Power}``.
MappingIn = Annotated[ValueMapping, BeforeValidator(_mapping)]


class TimestampSpec(Strict):
    """Where the reading's time is in a JSON message. ``auto`` takes ISO 8601 text (without an offset: the site's
    time zone) and numbers (seconds, or milliseconds when above 1e11)."""

    path: Annotated[str, Field(min_length=1)]
    format: Literal["auto", "iso", "epoch_s", "epoch_ms"] = "auto"


class SubscriptionConfig(Strict):
    name: Name
    broker: Name
    #: A topic filter; ``+`` matches one level, ``#`` the rest.
    topic: Annotated[str, Field(min_length=1, max_length=512)]
    #: The meter every message is for ...
    meter: Name | None = None
    #: ... or the level of the topic that names the meter (1 = the first level).
    meter_level: Annotated[int, Field(ge=1, le=32)] | None = None
    format: Literal["json", "value", "tasmota", "shelly_gen2"] = "json"
    #: ``json``: quantity -> path (or {path, scale, offset}).
    values: dict[QuantityName, MappingIn] | None = None
    #: ``json``: the time of the reading; without it, the time the message arrived.
    timestamp: TimestampSpec | None = None
    #: ``value``: the quantity a plain number payload is, and how to scale it.
    quantity: QuantityName | None = None
    scale: Annotated[float, AfterValidator(nonzero)] = 1.0
    offset: float = 0.0
    qos: Literal[0, 1, 2] = 1

    @property
    def reads_value(self) -> bool:
        """Whether messages give the single-value quantity ``value`` (whose unit the meter must declare)."""
        if self.format == "value":
            return self.quantity in (None, Quantity.VALUE)
        return self.format == "json" and Quantity.VALUE in (self.values or {})

    def problems(self, brokers: set[str], meters: set[str]) -> list[tuple[tuple[str, ...], str]]:
        out: list[tuple[tuple[str, ...], str]] = []
        if self.broker not in brokers:
            defined = ", ".join(sorted(brokers)) or "none: add a brokers: section"
            out.append((("broker",), f"no broker named '{self.broker}' (defined: {defined})"))
        if (self.meter is None) == (self.meter_level is None):
            out.append((("meter",), "give meter (the meter of every message) or meter_level (the topic level"
                                    " that names it), one of the two"))
        elif self.meter is not None and self.meter not in meters:
            out.append((("meter",), f"no meter named '{self.meter}' of type mqtt (add it to meters:)"))
        levels = self.topic.split("/")
        if any(("+" in lv and lv != "+") or ("#" in lv and lv != "#") for lv in levels) or "#" in levels[:-1]:
            out.append((("topic",), f"'{self.topic}' is not a valid filter ('+' stands alone in a level; '#' only"
                                    " last)"))
        if self.meter_level is not None and "#" not in levels and self.meter_level > len(levels):
            out.append((("meter_level",), f"{self.meter_level} is beyond the topic's {len(levels)} levels"))
        if self.format == "json" and not self.values:
            out.append((("values",), "required for format: json (quantity: path in the message)"))
        if self.format != "json" and (self.values or self.timestamp):
            out.append((("values",), f"only for format: json (format {self.format} knows its fields)"))
        if self.format != "value" and self.quantity is not None:
            out.append((("quantity",), "only for format: value"))
        return out


class MqttMeterConfig(MeterBase):
    """A meter that publishes its readings to a broker; ``subscriptions:`` say which messages are its."""

    type: Literal["mqtt"]
    value_unit: Annotated[str, AfterValidator(check_value_unit)] | None = None

    @property
    def model(self) -> str:
        return "published to a broker"

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        """What its subscriptions' mappings can give; None when a format cannot tell (Tasmota)."""
        from gateway.platforms.mqtt.formats import quantities_of

        out: set[Quantity] = set()
        for sub in gateway.subscriptions:
            if sub.meter == self.name or sub.meter_level is not None:
                got = quantities_of(sub)
                if got is None:
                    return None
                out |= got
        return frozenset(out)
