"""Typed, frozen models of the configuration file. The reference is docs/configuration.md.

Validation of one value lives with its model (types, ranges, units, time zones); checks that span the file (unique
names, references between sections) live in :meth:`GatewayConfig.cross_check`, so that each problem can name the
exact key and line it comes from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import AfterValidator, Field, PrivateAttr, SecretStr, model_validator

from gateway.config.common import (
    CloudBase,
    Duration,
    MeterBase,
    Name,
    PositiveDuration,
    SinkBase,
    Size,
    Strict,
    check_zone,
    system_timezone,
)
from gateway.fleet.config import FleetConfig
from gateway.platforms.all import SINKS, SOURCES
from gateway.platforms.modbus.config import BusBase, BusConfig, ModbusMeterConfig, SerialLine, meter_problems
from gateway.platforms.mqtt.config import BrokerConfig, MqttMeterConfig, SubscriptionConfig
from gateway.quantities import Quantity
from gateway.stream import Stream

__all__ = ["GatewayConfig", "MeterBase", "MeterConfig", "SinkBase", "SinkConfig"]


class SiteConfig(Strict):
    name: Name = "meter-gateway"
    timezone: Annotated[str, AfterValidator(check_zone)] = Field(default_factory=system_timezone)


class QueueConfig(Strict):
    max_size: Size = 512 * 10**6
    max_age: PositiveDuration = 30 * 86400.0
    durability: Literal["full", "normal"] = "full"
    #: How long writes that nobody waits for promptly (Modbus readings, acknowledgements) may wait to share a commit.
    commit_interval: Annotated[Duration, Field(ge=0.0, le=60.0)] = 5.0


class PageConfig(Strict):
    """The technician's page, served with ``/metrics`` and ``/health`` (see docs/page.md)."""

    enabled: bool = True
    #: Needed for every action that changes something (apply a configuration, retry or purge dead letters, read a
    #: meter now), and for any page at all when the page faces the network (``allow_remote``). Either the hash
    #: ``meter-gateway hash-password`` prints (``scrypt$...``) or, better in a file (``password_file``), the same.
    password: SecretStr | None = None
    #: A signed-in browser is signed out after this long without a request.
    session_timeout: Annotated[PositiveDuration, Field(le=7 * 86400.0)] = 1800.0
    #: HTTPS with the user's own certificate (PEM files); plain HTTP otherwise.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Log lines kept in memory for the page's log view and the diagnostics bundle.
    log_lines: Annotated[int, Field(ge=100, le=20000)] = 2000

    @model_validator(mode="after")
    def _pairs(self) -> PageConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together (HTTPS needs both)")
        if self.password is not None:
            from gateway.web.auth import password_problem

            problem = password_problem(self.password.get_secret_value())
            if problem:
                raise ValueError(f"password: {problem}")
        return self


class MonitoringConfig(Strict):
    """The metrics and health listener (``/metrics``, ``/health``) and the technician's page; off unless
    ``enabled``."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9480
    #: Binding beyond loopback exposes the gateway's figures to the network: only when asked for explicitly.
    allow_remote: bool = False
    #: /health says 503 when a sink has delivered nothing for this long while readings wait for it.
    sink_stalled_after: PositiveDuration = 900.0
    #: ... when the clock has not been synchronised for this long (readings are held meanwhile).
    clock_unsynced_after: PositiveDuration = 600.0
    #: ... when the queue file uses more than this share of queue.max_size.
    queue_full_ratio: Annotated[float, Field(gt=0, le=1)] = 0.9
    #: ... when the oldest reading waiting for a sink that still delivers is older than this (it takes readings more
    #: slowly than they come, or is catching up): at least twice the longest interval of the sink's streams
    sink_behind_after: PositiveDuration = 3600.0
    #: ... when a meter that answers skipped a tick this recently (its poll ran past the next tick: a reading not
    #: taken, because its bus or the machine is too busy for its interval).
    ticks_skipped_within: PositiveDuration = 900.0
    page: PageConfig = Field(default_factory=PageConfig)

    @model_validator(mode="after")
    def _loopback_unless_asked(self) -> MonitoringConfig:
        if not self.allow_remote and not _is_loopback(self.host):
            raise ValueError(f"host {self.host} is not loopback: metrics and health would be reachable from the"
                             " network; set allow_remote: true if that is intended")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


# ---------------------------------------------------------------- meters and sinks: one model per platform

# The ``type:`` of a meter or a sink picks its model among the platforms' (gateway/platforms/all.py). For the type
# checker a meter is a MeterBase and a sink a SinkBase; code that needs a platform's own fields checks its class.
if TYPE_CHECKING:
    MeterConfig = MeterBase
    SinkConfig = SinkBase
    CloudConfig = CloudBase
else:
    MeterConfig = Annotated[Union[tuple(p.config for p in SOURCES.values())], Field(discriminator="type")]  # noqa: UP007
    CloudConfig = Annotated[Union[tuple(p.cloud for p in SOURCES.values() if p.cloud)],  # noqa: UP007
                            Field(discriminator="type")]
    SinkConfig = Annotated[Union[tuple(p.config for p in SINKS.values())], Field(discriminator="type")]  # noqa: UP007


# ---------------------------------------------------------------- the file


class GatewayConfig(Strict):
    site: SiteConfig = Field(default_factory=SiteConfig)
    state_dir: Path = Path("/var/lib/meter-gateway")
    #: When the system clock is trusted (see gateway/timekeeper.py and docs/reliability.md "Time").
    time_sync: Literal["auto", "require", "ignore"] = "auto"
    #: A reading stamped further ahead of the gateway's synchronised clock than this (a device whose own clock is
    #: wrong) is refused: queued, it would block every later reading of its meter as "not newer".
    future_tolerance: PositiveDuration = 300.0
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    #: Where the technician's own meter profiles are (YAML files, one per model), besides the built-in ones.
    profiles_dir: Path | None = None
    buses: list[BusConfig] = Field(default_factory=list)
    #: MQTT brokers, and what to take from them: meters that publish their readings.
    brokers: list[BrokerConfig] = Field(default_factory=list)
    subscriptions: list[SubscriptionConfig] = Field(default_factory=list)
    #: Accounts on vendors' clouds that meters are read from (Intellimeter...).
    clouds: list[CloudConfig] = Field(default_factory=list)
    meters: Annotated[list[MeterConfig], Field(min_length=1)]
    sinks: Annotated[list[SinkConfig], Field(min_length=1)]
    #: The integrator's central broker, where this gateway's presence and health are published (off by default).
    fleet: FleetConfig | None = None

    #: The files secrets were read from (``password_file``...): set when the file is loaded, for the mode check.
    _secret_files: tuple[Path, ...] = PrivateAttr(default=())

    @property
    def secret_files(self) -> tuple[Path, ...]:
        return self._secret_files

    @property
    def meter_names(self) -> list[str]:
        return [m.name for m in self.meters]

    def sink_streams(self) -> dict[str, list[Stream]]:
        """For each sink, its streams (one per meter it receives, or per data point)."""
        return {s.name: s.streams(self.meters) for s in self.sinks}

    def sink_meters(self) -> dict[str, list[str]]:
        """For each sink, the meters it receives."""
        return {name: list(dict.fromkeys(st.meter for st in streams)) for name, streams in self.sink_streams().items()}

    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that span the file, each with the key path it belongs to."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        Named = MeterBase | SinkBase | BusBase | BrokerConfig | SubscriptionConfig | CloudBase
        sections: tuple[tuple[str, Sequence[Named]], ...] = (
            ("buses", self.buses), ("brokers", self.brokers), ("subscriptions", self.subscriptions),
            ("clouds", self.clouds), ("meters", self.meters), ("sinks", self.sinks))
        for section, items in sections:
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                if item.name in seen:
                    problems.append(
                        ((section, i, "name"), f"'{item.name}' is already used by {section}[{seen[item.name]}]"
                         " (names must be unique)")
                    )
                seen.setdefault(item.name, i)
        if self.state_dir.exists() and not self.state_dir.is_dir():
            problems.append((("state_dir",), f"{self.state_dir} is a file, not a directory"))
        buses = {b.name: b for b in self.buses}
        units: dict[tuple[str, int], str] = {}
        for i, m in enumerate(self.meters):
            if isinstance(m, ModbusMeterConfig):
                problems += [(("meters", i, *path), msg) for path, msg in meter_problems(m, buses)]
                other = units.setdefault((m.bus, m.unit), m.name)
                if other != m.name:
                    problems.append((("meters", i, "unit"), f"unit {m.unit} on bus '{m.bus}' is already meter"
                                                            f" '{other}' (one unit id per device on a bus)"))
        mqtt_meters = {m.name for m in self.meters if isinstance(m, MqttMeterConfig)}
        broker_names = {b.name for b in self.brokers}
        for i, b in enumerate(self.brokers):
            problems += [(("brokers", i, *path), msg) for path, msg in b.problems()]
        value_units = {m.name: m.value_unit for m in self.meters if isinstance(m, MqttMeterConfig)}
        for i, sub in enumerate(self.subscriptions):
            problems += [(("subscriptions", i, *path), msg) for path, msg in sub.problems(broker_names, mqtt_meters)]
            if sub.meter is not None and sub.meter in value_units and value_units[sub.meter] is None \
                    and sub.reads_value:
                problems.append((("subscriptions", i, "meter"), f"meter '{sub.meter}' gets a single value: give it"
                                                                " value_unit (m3, l, kWh, degC, ...)"))
        for i, bus in enumerate(self.buses):
            if isinstance(bus, SerialLine):
                problems += [(("buses", i, *path), msg) for path, msg in bus.timing_problems()]
        for i, cloud in enumerate(self.clouds):
            problems += [(("clouds", i, *path), msg) for path, msg in cloud.problems_with(self)]
        for i, meter in enumerate(self.meters):
            problems += [(("meters", i, *path), msg) for path, msg in meter.problems_with(self)]
        for i, sink in enumerate(self.sinks):
            problems += [(("sinks", i, *path), msg) for path, msg in sink.cross_check(self.meters)]
            problems += [(("sinks", i, *path), msg) for path, msg in sink.problems_with(self)]
        if self.fleet is not None:
            problems += [(("fleet", *path), msg) for path, msg in self.fleet.problems()]
        return problems

    @property
    def gateway_id(self) -> str:
        """This gateway's name on the fleet broker."""
        return (self.fleet.gateway_id if self.fleet else None) or self.site.name

    def quantities_of(self, meter: str) -> frozenset[Quantity] | None:
        """Every quantity ``meter`` can give, from its configuration alone (its profile's registers, its
        subscriptions' mappings, its model); None when the configuration cannot tell (a Tasmota device sends
        totals or per-phase values as it is built). What a sink sends under a key follows from this, never from
        which values one reading happens to hold."""
        m = next((m for m in self.meters if m.name == meter), None)
        return frozenset() if m is None else m.offered_quantities(self)  # no such meter: reported on its own

    def secrets(self) -> list[str]:
        out: list[str] = [b.password.get_secret_value() for b in self.brokers if b.password]
        if self.monitoring.page.password is not None:
            out.append(self.monitoring.page.password.get_secret_value())
        if self.fleet is not None and self.fleet.password is not None:
            out.append(self.fleet.password.get_secret_value())
        if self.fleet is not None and self.fleet.config_source is not None and self.fleet.config_source.token:
            out.append(self.fleet.config_source.token.get_secret_value())
        for c in self.clouds:
            out.extend(c.secrets())
        for s in self.sinks:
            out.extend(s.secrets())
        return out
