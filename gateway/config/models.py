"""Typed, frozen models of the configuration file. The reference is README.md's "Configuration" section.

Validation of one value lives here (types, ranges, units, time zones); checks that span the file (unique names,
references between sections) live in :meth:`GatewayConfig.cross_check`, so that each problem can name the exact
key and line it comes from.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
)

from gateway.config.units import parse_duration, parse_size
from gateway.quantities import VALUE_UNITS


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


def _check_zone(name: str) -> str:
    if not _is_zone(name):
        close = difflib.get_close_matches(name, sorted(available_timezones()), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"'{name}' is not an IANA time zone such as Europe/Dublin{hint}")
    return name


def _check_value_unit(unit: str) -> str:
    if unit not in VALUE_UNITS:
        raise ValueError(f"'{unit}' is not a known unit (expected one of {', '.join(VALUE_UNITS)})")
    return unit


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(Strict):
    name: Name = "meter-gateway"
    timezone: Annotated[str, AfterValidator(_check_zone)] = Field(default_factory=system_timezone)


class QueueConfig(Strict):
    max_size: Size = 512 * 10**6
    max_age: PositiveDuration = 30 * 86400.0
    durability: Literal["full", "normal"] = "full"


# ---------------------------------------------------------------- meters


class MeterBase(Strict):
    name: Name
    interval: PositiveDuration = 60.0


class SimulatedMeter(MeterBase):
    """A meter that exists only in software: plausible, changing, deterministic values (demo and tests)."""

    type: Literal["simulated"]
    model: Literal["three_phase", "gas", "water", "heat", "temperature"] = "three_phase"
    seed: int = 0
    value_unit: Annotated[str, AfterValidator(_check_value_unit)] | None = None


MeterConfig = Annotated[SimulatedMeter, Field(discriminator="type")]


# ---------------------------------------------------------------- sinks


class SinkBase(Strict):
    name: Name
    #: Which meters this sink receives; all meters when absent.
    meters: list[Name] | None = None
    #: Meters sent in parallel; each meter's readings are always sent one after the other.
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = 8
    backoff_base: PositiveDuration = 1.0
    backoff_cap: PositiveDuration = 300.0
    #: A send that has not answered by then counts as a failure to retry.
    send_timeout: PositiveDuration = 30.0

    def wanted_meters(self, all_meters: list[str]) -> list[str]:
        return list(all_meters) if self.meters is None else [m for m in all_meters if m in self.meters]

    def secrets(self) -> list[str]:
        return [v.get_secret_value() for v in self.__dict__.values() if isinstance(v, SecretStr) and v]


class FileSink(SinkBase):
    """JSON Lines on local disk: an archive, or a dry run before a platform is connected."""

    type: Literal["file"]
    path: Path
    #: fsync after every batch, so that "delivered" means "on disk".
    fsync: bool = True
    max_batch: Annotated[int, Field(ge=1, le=10000)] = 500


class StdoutSink(SinkBase):
    """JSON Lines on standard output (demo, debugging)."""

    type: Literal["stdout"]
    max_batch: Annotated[int, Field(ge=1, le=10000)] = 100


SinkConfig = Annotated[FileSink | StdoutSink, Field(discriminator="type")]


# ---------------------------------------------------------------- the file


class GatewayConfig(Strict):
    site: SiteConfig = Field(default_factory=SiteConfig)
    state_dir: Path = Path("/var/lib/meter-gateway")
    queue: QueueConfig = Field(default_factory=QueueConfig)
    meters: Annotated[list[MeterConfig], Field(min_length=1)]
    sinks: Annotated[list[SinkConfig], Field(min_length=1)]

    @property
    def meter_names(self) -> list[str]:
        return [m.name for m in self.meters]

    def sink_meters(self) -> dict[str, list[str]]:
        """For each sink, the meters it receives."""
        return {s.name: s.wanted_meters(self.meter_names) for s in self.sinks}

    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that span the file, each with the key path it belongs to."""
        problems: list[tuple[tuple[str | int, ...], str]] = []
        for section, items in (("meters", self.meters), ("sinks", self.sinks)):
            seen: dict[str, int] = {}
            for i, item in enumerate(items):
                if item.name in seen:
                    problems.append(
                        ((section, i, "name"), f"'{item.name}' is already used by {section}[{seen[item.name]}]"
                         " (names must be unique)")
                    )
                seen.setdefault(item.name, i)
        known = set(self.meter_names)
        for i, sink in enumerate(self.sinks):
            for j, m in enumerate(sink.meters or []):
                if m not in known:
                    problems.append(
                        (("sinks", i, "meters", j), f"no meter named '{m}' (defined: {', '.join(sorted(known))})")
                    )
            if sink.backoff_base > sink.backoff_cap:
                problems.append((("sinks", i, "backoff_base"), "is longer than backoff_cap"))
        return problems

    def secrets(self) -> list[str]:
        out: list[str] = []
        for s in self.sinks:
            out.extend(s.secrets())
        return out
