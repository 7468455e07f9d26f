"""Configuration of a ``wegowise`` sink: each mapped meter's consumption per local day or month, sent as raw data
points of a Wegowise meter in a data-only account (docs/wegowise.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr

from gateway.config.common import (
    MeterBase,
    Name,
    PositiveDuration,
    QuantityName,
    SinkBase,
    Strict,
    check_ca_file,
    check_url,
)
from gateway.config.units import format_duration
from gateway.quantities import JOULES_PER_BTU, Quantity
from gateway.stream import Stream

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig

#: What each data type's raw datum carries as usage, and from what the gateway computes it.
USAGE_FIELD = {"Electric": "kwh", "Gas": "btu", "Water": "gallons"}
#: 1 Wh in BTU (the International Table BTU, 1055.05585262 J).
BTU_PER_WH = 3600.0 / JOULES_PER_BTU
#: 1 m3 in US gallons (231 cubic inches).
GALLONS_PER_M3 = 1 / 0.003785411784
#: 1 therm = 100,000 BTU.
BTU_PER_THERM = 100_000.0


class Tariff(Strict):
    """What a period costs, for the raw datum's ``total_charge``: ``price`` per unit of ``per`` consumed, plus
    ``fixed`` per period (a standing charge)."""

    price: Annotated[float, Field(ge=0)]
    per: Literal["kWh", "m3", "therm", "gallon"]
    fixed: Annotated[float, Field(ge=0)] = 0.0


class NewMeter(Strict):
    """The Wegowise meter to create when the gateway meter has none yet (once: its id is kept in state_dir)."""

    account_number: Annotated[str, Field(min_length=1, max_length=100)]
    utility_company_id: Annotated[int, Field(ge=1)] | None = None
    other_utility_company: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    nickname: Annotated[str, Field(max_length=200)] | None = None
    notes: Annotated[str, Field(max_length=2000)] | None = None


class WegowiseMeter(Strict):
    #: the gateway meter
    meter: Name
    #: the Wegowise meter id its periods go to; or ``create:`` to have the gateway create it
    id: Annotated[int, Field(ge=1)] | None = None
    create: NewMeter | None = None
    data_type: Literal["Electric", "Gas", "Water"] = "Electric"
    #: the counter the consumption comes from (default: energy_import_total; a single-value meter's ``value``)
    quantity: QuantityName | None = None
    #: Gas metered by volume (m3): its energy content, BTU per m3 (from the gas supplier's bill: calorific value)
    btu_per_m3: Annotated[float, Field(gt=0)] | None = None
    tariff: Tariff | None = None
    #: a rise of the counter faster than this, in its unit an hour, is not consumption (a misread, a meter exchanged):
    #: by default 10 MWh an hour for energy, 1,000 m3 an hour for a volume
    max_per_hour: Annotated[float, Field(gt=0)] | None = None


#: The default of ``max_per_hour`` by the counter's unit.
MAX_PER_HOUR = {"Wh": 1e7, "kWh": 1e4, "m3": 1e3, "l": 1e6}


class WegowiseConfig(SinkBase):
    """Wegowise Data API (data-only account): consumption per period as raw data points, OAuth 1.0a."""

    type: Literal["wegowise"]
    #: where the API lives (``https://host``; the paths below are appended)
    url: Annotated[str, AfterValidator(check_url)]
    consumer_key: Annotated[str, Field(min_length=1)]
    consumer_secret: SecretStr
    #: the access token and secret ``meter-gateway wegowise authorize`` stored (default: in state_dir)
    token_file: Path | None = None
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    #: ``day`` or ``month``, local to the site's time zone
    period: Literal["day", "month"] = "day"
    #: two readings further apart than this do not say how the consumption between them was spread: the periods
    #: they straddle are sent as one (must be at least twice each meter's interval)
    max_gap: PositiveDuration = 3600.0
    #: a period whose end no reading has covered this long after it (and whose meter has sent nothing for as long)
    #: is sent with what is known, and updated when the next reading brings the rest; none: wait for that reading
    grace: PositiveDuration | None = None
    meter_map: Annotated[list[WegowiseMeter], Field(min_length=1)]
    request_timeout: PositiveDuration = 30.0
    #: wait between tries while Wegowise refuses the credentials (401) or a meter (404)
    auth_retry: PositiveDuration = 900.0
    #: OAuth 1.0a endpoints (request token from Wegowise's API pages; the other two by the protocol's custom)
    request_token_path: str = "/oauth/request_token"
    authorize_path: str = "/oauth/authorize"
    access_token_path: str = "/oauth/access_token"
    api_path: str = "/api/v1/wego_data"
    max_in_flight: Annotated[int, Field(ge=1, le=64)] = 4
    #: print the raw data points instead of sending them (nothing is connected)
    dry_run: bool = False

    def dry_run_requested(self) -> bool:
        return self.dry_run

    def token_path(self, state_dir: Path) -> Path:
        return self.token_file or state_dir / f"wegowise-{self.name}.token"

    def describe(self, gateway: GatewayConfig) -> list[str]:
        """For ``check``: the periods each meter will produce, the next one due, and whether a token is there."""
        import time
        from zoneinfo import ZoneInfo

        from gateway.platforms.wegowise.periods import Calendar

        cal = Calendar(self.period, ZoneInfo(gateway.site.timezone))
        now = round(time.time() * 1000)
        end = cal.boundary_after(now)
        start = cal.midnight_ms(cal.local_date(now) if self.period == "day" else cal.local_date(now).replace(day=1))
        first, last = cal.dates(start, end)
        when = first.isoformat() if first == last else f"{first.isoformat()} to {last.isoformat()}"
        meters = {m.name: m for m in gateway.meters}
        lines = []
        for e in self.meter_map:
            m = meters.get(e.meter)
            q = self.quantity_of(e, m)
            target = f"Wegowise meter {e.id}" if e.id is not None else \
                f"a new Wegowise meter (account {e.create.account_number if e.create else '?'})"
            cost = (f"{e.tariff.price:g} per {e.tariff.per} + {e.tariff.fixed:g} a period" if e.tariff
                    else "no tariff: total_charge 0.00")
            if m is not None and m.gives_periods:
                lines.append(f"{e.meter} -> {target}: {e.data_type} {USAGE_FIELD[e.data_type]} from each period's"
                             f" {q.value} (Wh), one raw datum per bill with its own dates (UTC); total_charge from"
                             f" its cost ({cost} when it has none)")
                continue
            lines.append(f"{e.meter} -> {target}: {e.data_type} {USAGE_FIELD[e.data_type]} from {q.value}"
                         f" ({self.unit_of(e, m) or '?'}), one raw datum a {self.period}; {cost}")
        lines.append(f"periods: local {self.period}s in {gateway.site.timezone}; the next one due is {when},"
                     f" sent once a reading at or after its end arrives")
        token = self.token_path(gateway.state_dir)
        lines.append(f"token:   {token}" + ("" if token.exists() else
                                             f" (missing: run meter-gateway wegowise authorize --sink {self.name})"))
        return lines

    def streams(self, meters: Sequence[MeterBase]) -> list[Stream]:
        known = {m.name for m in meters}
        return [Stream(self.name, m.meter) for m in self.meter_map if m.meter in known]

    def quantity_of(self, entry: WegowiseMeter, meter: MeterBase | None) -> Quantity:
        if entry.quantity is not None:
            return entry.quantity
        if meter is not None and meter.gives_periods:
            return Quantity.INTERVAL_ENERGY  # a bill's usage, passed through as one raw datum
        if meter is not None and getattr(meter, "value_unit", None):
            return Quantity.VALUE
        return Quantity.ENERGY_IMPORT_TOTAL

    def unit_of(self, entry: WegowiseMeter, meter: MeterBase | None) -> str:
        """The unit of the counter: Wh for energy quantities, else the single-value meter's ``value_unit``."""
        q = self.quantity_of(entry, meter)
        if q is Quantity.VALUE:
            return str(getattr(meter, "value_unit", "") or "")
        return "Wh" if q.value.startswith("energy_") or q is Quantity.INTERVAL_ENERGY else ""

    def cross_check(self, meters: Sequence[MeterBase]) -> list[tuple[tuple[str | int, ...], str]]:
        problems = super().cross_check(meters)
        by_name = {m.name: m for m in meters}
        if self.meters is not None:
            problems.append((("meters",), "a wegowise sink sends the meters named in its meter_map; remove meters"))
        seen: dict[str, int] = {}
        for i, e in enumerate(self.meter_map):
            path: tuple[str | int, ...] = ("meter_map", i)
            if e.meter in seen:
                problems.append(((*path, "meter"), f"'{e.meter}' is already mapped by meter_map[{seen[e.meter]}]"))
            seen.setdefault(e.meter, i)
            meter = by_name.get(e.meter)
            if meter is None:
                known = ", ".join(sorted(by_name))
                problems.append(((*path, "meter"), f"no meter named '{e.meter}' (defined: {known})"))
                continue
            if (e.id is None) == (e.create is None):
                problems.append((path, "give the Wegowise meter's id, or create: to have the gateway create it"))
            new = e.create
            if new is not None and (new.utility_company_id is None) == (new.other_utility_company is None):
                problems.append(((*path, "create"), "Wegowise needs utility_company_id or other_utility_company"))
            if meter.gives_periods:
                if e.data_type == "Water":
                    problems.append(((*path, "data_type"), f"meter '{e.meter}' gives bills of energy: Electric or"
                                     " Gas"))
                if e.quantity not in (None, Quantity.INTERVAL_ENERGY):
                    problems.append(((*path, "quantity"), f"meter '{e.meter}' gives periods: its usage is"
                                     " interval_energy (leave quantity out)"))
                continue
            if self.max_gap < 2 * meter.interval:
                problems.append((("max_gap",), f"{format_duration(self.max_gap)} is shorter than twice meter"
                                 f" '{meter.name}''s interval ({format_duration(meter.interval)}): every period would"
                                 " be merged with the next"))
            unit = self.unit_of(e, meter)
            wants = {"Electric": ("Wh", "kWh"), "Gas": ("Wh", "kWh", "m3"), "Water": ("m3", "l")}[e.data_type]
            if unit not in wants:
                problems.append(((*path, "quantity"), f"{e.data_type} needs a counter in {' or '.join(wants)};"
                                 f" meter '{e.meter}' gives {unit or 'no counter'}"))
            if e.data_type == "Gas" and unit == "m3" and e.btu_per_m3 is None:
                problems.append(((*path, "btu_per_m3"), "gas metered in m3: give its energy content (BTU per m3,"
                                 " from the supplier's calorific value) so that Wegowise gets btu"))
            t = e.tariff
            if t is not None:
                ok = {"Electric": ("kWh",), "Gas": ("kWh", "therm", "m3"), "Water": ("m3", "gallon")}[e.data_type]
                if t.per not in ok:
                    problems.append(((*path, "tariff", "per"), f"a {e.data_type} tariff is per {' or '.join(ok)}"))
                if t.per == "m3" and e.data_type == "Gas" and unit != "m3":
                    problems.append(((*path, "tariff", "per"), "this gas meter counts energy: a tariff per kWh or"
                                     " therm"))
        return problems
