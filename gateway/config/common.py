"""Building blocks of the configuration models: strictness, human units, names, and the bases of meters and sinks."""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
)

from gateway.config.units import format_duration, parse_duration, parse_size
from gateway.quantities import ALL, VALUE_UNITS, Quantity
from gateway.stream import Stream

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig


def _positive(v: float) -> float:
    if v <= 0:
        raise ValueError("must be longer than zero")
    return v


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
Size = Annotated[int, BeforeValidator(parse_size), Field(gt=0)]
Name = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="letters, digits, '_', '.', '-'; starting with a letter or digit",
    ),
]


def system_timezone() -> str:
    """The system's IANA time zone name, or UTC when it cannot be told."""
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz and _is_zone(tz):
        return tz
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            name = target.split("zoneinfo/", 1)[1]
            if _is_zone(name):
                return name
    except OSError:
        pass
    try:
        name = Path("/etc/timezone").read_text().strip()
        if _is_zone(name):
            return name
    except OSError:
        pass
    return "UTC"


def _is_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_zone(name: str) -> str:
    if not _is_zone(name):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"'{name}' is not an IANA time zone such as Europe/Dublin{hint}")
    return name


def check_value_unit(unit: str) -> str:
    if unit not in VALUE_UNITS:
        raise ValueError(f"'{unit}' is not a known unit (expected one of {', '.join(VALUE_UNITS)})")
    return unit


def check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"'{url}' is not a URL such as https://host/path")
    if parts.username or parts.password:
        raise ValueError("put the credentials in username/password, not in the URL")
    return url


def check_ca_file(path: Path) -> Path:
    try:
        ssl.create_default_context().load_verify_locations(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"'{path}' does not exist") from None
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"'{path}' is not a PEM file of CA certificates ({e.__class__.__name__})") from None
    return path


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: No meter is read more often than this: a shorter interval is a typo (``1ms`` for ``1m``).
MIN_INTERVAL = 0.1


def _meter_interval(v: float) -> float:
    if v < MIN_INTERVAL:
        raise ValueError(f"{format_duration(v)} is shorter than any meter can be read or answer (at least 100ms);"
                         " did you mean minutes (1m) or seconds (1s)?")
    return v


MeterInterval = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive),
                          AfterValidator(_meter_interval)]


class MeterBase(Strict):
    #: the platform (gateway/platforms/all.py); each model narrows it to its own Literal
    type: str
    name: Name
    interval: MeterInterval = 60.0

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        """Every quantity this meter can give, from the configuration alone; None when it cannot tell."""
        return frozenset()

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems between this meter and the rest of the file (its cloud...), as (key path, message)."""
        return []

    @property
    def gives_periods(self) -> bool:
        """Its readings cover periods (bills, intervals of a utility's data), each with a start and an end."""
        return False



class CloudBase(Strict):
    """An account on a vendor's cloud that meters are read from (``clouds:``); its meters name it in ``cloud:``."""

    #: the platform (gateway/platforms/all.py); each model narrows it to its own Literal
    type: str
    name: Name

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that need the whole configuration, as (key path within the cloud, message)."""
        return []

    def describe(self, gateway: GatewayConfig) -> list[str]:
        """Lines ``check`` prints under the cloud (what it will ask for)."""
        return []

    def secrets(self) -> list[str]:
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr) and v]


class SinkBase(Strict):
    #: the platform (gateway/platforms/all.py); each model narrows it to its own Literal
    type: str
    name: Name
    #: Which meters this sink receives; all meters when absent.
    meters: list[Name] | None = None
    #: Meters sent in parallel; each meter's readings are always sent one after the other.
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = 8
    backoff_base: PositiveDuration = 1.0
    backoff_cap: PositiveDuration = 300.0
    #: A send that has not answered by then counts as a failure to retry.
    send_timeout: PositiveDuration = 30.0

    def streams(self, meters: Sequence[MeterBase]) -> list[Stream]:
        """The streams this sink receives: by default one per meter (all meters, or those listed)."""
        return [Stream(self.name, m.name) for m in meters if self.meters is None or m.name in self.meters]

    def cross_check(self, meters: Sequence[MeterBase]) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems between this sink and the rest of the file, as (key path within the sink, message)."""
        known = {m.name for m in meters}
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for j, m in enumerate(self.meters or []):
            if m not in known:
                problems.append((("meters", j), f"no meter named '{m}' (defined: {', '.join(sorted(known))})"))
        if self.backoff_base > self.backoff_cap:
            problems.append((("backoff_base",), "is longer than backoff_cap"))
        return problems

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that need the whole configuration (what a meter can give...), as (key path, message)."""
        return []

    def dry_run_requested(self) -> bool:
        """Print what would be sent instead of sending it (platforms with a preview have ``dry_run:``)."""
        return False

    def describe(self, gateway: GatewayConfig) -> list[str]:
        """Lines ``check`` prints under the sink (what it will do with each meter), if the platform has any."""
        return []

    def secrets(self) -> list[str]:
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr) and v]


def _quantity(value: object) -> object:
    if isinstance(value, str) and value not in Quantity.__members__.values():
        close = difflib.get_close_matches(value, [q.value for q in ALL], n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ValueError(f"'{value}' is not a quantity ({hint}see docs/configuration.md 'Quantities')")
    return value


QuantityName = Annotated[Quantity, BeforeValidator(_quantity)]


def nonzero(v: float) -> float:
    if v == 0:
        raise ValueError("must not be 0 (a scale of 0 turns every value into the offset)")
    return v
