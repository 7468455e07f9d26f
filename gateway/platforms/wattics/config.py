"""Configuration of a ``wattics`` sink (the packets themselves are in :mod:`gateway.platforms.wattics.sink`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr

from gateway.config.common import MeterBase, Name, PositiveDuration, SinkBase, Strict, check_ca_file, check_url
from gateway.config.units import format_duration
from gateway.quantities import Quantity
from gateway.stream import ENERGY, Stream

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig

PRODUCTION_URL = "https://web-collector.wattics.com/measurements/v2/unifiedjson/"
#: What a period reading (a bill, an interval) carries that a value data point can take.
PERIOD_QUANTITIES = frozenset({Quantity.INTERVAL_ENERGY, Quantity.COST, Quantity.VALUE})
#: Units of a single value that counts up (aggregated by its last value); other units are averaged.
COUNTER_UNITS = frozenset({"m3", "l", "kWh", "Wh", "MWh", "GJ", "MJ", "pulses", "count"})


class WatticsDataPoint(Strict):
    #: The data stream id Wattics issued for this data point.
    id: Annotated[str, Field(min_length=1, max_length=200)]
    meter: Name
    format: Literal["electrical", "value"] = "electrical"
    #: For ``format: value``: the quantity sent as ``value`` (default ``value``, a single-value meter's reading).
    quantity: Quantity | None = None
    #: One packet per interval (mean of power/voltage/current, last energy) instead of one per reading.
    interval: PositiveDuration | None = None
    #: For ``format: value`` with an interval: ``last`` for counters, ``mean`` for levels; ``auto`` decides by unit.
    aggregate: Literal["auto", "mean", "last"] = "auto"
    #: For ``format: electrical``: which values go under ``aP_1`` .. ``pC_3``. ``per_phase``: each phase's own value,
    #: totals never; ``totals``: a total in the ``_1`` key where the meter has one (a single-phase or totals-only
    #: meter); ``auto``: per quantity, from what the meter's configuration says it gives (a total in ``_1`` only
    #: when the meter has no per-phase values of that quantity at all). Never from what one reading holds.
    phases: Literal["auto", "per_phase", "totals"] = "auto"


class WatticsConfig(SinkBase):
    """Wattics data push: one JSON packet per HTTPS POST, basic auth, chronological per data point."""

    type: Literal["wattics"]
    url: Annotated[str, AfterValidator(check_url)] = PRODUCTION_URL
    username: Annotated[str, Field(min_length=1)]
    password: SecretStr
    #: A private CA to trust besides the system's (TLS is always verified).
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    #: Only for local testing: allow http:// (logged as a warning at every start).
    allow_insecure_http: bool = False
    request_timeout: PositiveDuration = 20.0
    data_points: Annotated[list[WatticsDataPoint], Field(min_length=1)]
    #: A packet answered 400 this many times goes to the dead letters.
    max_bad_request: Annotated[int, Field(ge=1, le=100)] = 3
    #: Wait between tries while Wattics refuses the credentials (401/403) or the data point (404).
    auth_retry: PositiveDuration = 300.0
    #: Data points sent in parallel (each one's packets always one after the other).
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = 32
    #: Build every packet and print it on standard output instead of sending it (nothing is sent or connected).
    dry_run: bool = False

    def dry_run_requested(self) -> bool:
        return self.dry_run

    def streams(self, meters: Sequence[MeterBase]) -> list[Stream]:
        by_name = {m.name: m for m in meters}
        out = []
        for dp in self.data_points:
            last = ENERGY
            if dp.format == "value":
                q = dp.quantity or Quantity.VALUE
                unit = getattr(by_name.get(dp.meter), "value_unit", None)
                mode = dp.aggregate if dp.aggregate != "auto" else (
                    "last" if q in ENERGY or unit in COUNTER_UNITS else "mean"
                )
                last = frozenset({q}) if mode == "last" else frozenset()
            out.append(Stream(self.name, dp.meter, dp.id, dp.interval, last))
        return out

    def cross_check(self, meters: Sequence[MeterBase]) -> list[tuple[tuple[str | int, ...], str]]:
        problems = super().cross_check(meters)
        by_name = {m.name: m for m in meters}
        if self.meters is not None:
            problems.append((("meters",), "a wattics sink sends the meters named in its data_points; remove meters"))
        if urlsplit(self.url).scheme == "http" and not self.allow_insecure_http:
            problems.append((("url",), "Wattics rejects plain http; use https:// (or allow_insecure_http: true"
                                       " for a local test server)"))
        seen: dict[str, int] = {}
        for i, dp in enumerate(self.data_points):
            path: tuple[str | int, ...] = ("data_points", i)
            if dp.id in seen:
                problems.append(((*path, "id"), f"'{dp.id}' is already used by data_points[{seen[dp.id]}]"))
            seen.setdefault(dp.id, i)
            meter = by_name.get(dp.meter)
            if meter is None:
                known = ", ".join(sorted(by_name))
                problems.append(((*path, "meter"), f"no meter named '{dp.meter}' (defined: {known})"))
            elif dp.interval is not None and dp.interval < meter.interval:
                problems.append(((*path, "interval"), f"{format_duration(dp.interval)} is shorter than meter"
                                 f" '{meter.name}' is read ({format_duration(meter.interval)}); leave it out to send"
                                 " every reading"))
            if dp.format == "electrical" and dp.quantity is not None:
                problems.append(((*path, "quantity"), "only for format: value (electrical sends every quantity)"))
            if dp.format == "electrical" and dp.aggregate != "auto":
                problems.append(((*path, "aggregate"), "only for format: value"))
            if meter is not None and meter.gives_periods and (
                    dp.format == "electrical" or dp.interval is not None
                    or (dp.quantity or Quantity.VALUE) not in PERIOD_QUANTITIES):
                problems.append(((*path, "format"), f"meter '{meter.name}' gives periods (bills, intervals): send them"
                                 " as format: value with quantity: interval_energy (or cost, or value for a volume),"
                                 " without interval; each goes stamped at its period's end"))
            if dp.format == "value" and dp.quantity is Quantity.INTERVAL_ENERGY and dp.interval is not None:
                problems.append(((*path, "interval"), "interval_energy is the energy of the meter's own interval: over"
                                 " a longer one it would be a sum, which is not computed; leave out interval (every"
                                 " reading is sent)"))
            if dp.format == "value" and dp.phases != "auto":
                problems.append(((*path, "phases"), "only for format: electrical"))
        return problems

    def secrets(self) -> list[str]:
        pair = f"{self.username}:{self.password.get_secret_value()}"
        return [*super().secrets(), pair]  # the Basic-auth header carries the pair in base64

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        """Electrical data points whose meter may send totals or per-phase values: the file must say which."""
        quantities_of = gateway.quantities_of
        return [(("data_points", i, "phases"), f"meter '{dp.meter}' may send totals or one value per phase"
                 " (Tasmota devices differ): set phases: per_phase (a three-phase device) or totals (single-phase)")
                for i, dp in enumerate(self.data_points)
                if dp.format == "electrical" and dp.phases == "auto" and quantities_of(dp.meter) is None]
