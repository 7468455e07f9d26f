"""Configuration of a WattzOn Link account (``clouds:``, ``type: wattzon``) and of the meters read from it: a
utility account's bills, or a utility meter's interval data, each as period readings.

What WattzOn's document leaves unknown is a setting here: the layout of the normalised interval JSON (not shown in
the document) is ``interval_layout``, with a documented default.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator, Field

from gateway.config.common import (
    CloudBase,
    MeterBase,
    MeterInterval,
    Name,
    PositiveDuration,
    Size,
    Strict,
    check_ca_file,
    check_url,
)
from gateway.config.units import format_duration
from gateway.quantities import Quantity

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig

#: The document's base URL "for most customers".
DEFAULT_URL = "https://api.wattzon.com"


def _readable(path: Path) -> Path:
    try:
        with path.open("rb"):
            pass
    except OSError as e:
        raise ValueError(f"cannot read '{path}' ({e.strerror})") from None
    return path


class IntervalLayout(Strict):
    """Where the fields of one interval are in the normalised JSON of a month (``?format=json``). The document does
    not show that layout: these are the names the gateway expects unless told otherwise."""

    #: the key of the list of intervals in the answer ("" when the answer is the list itself)
    list: str = "intervals"
    #: start and end of an interval: a Unix timestamp (seconds) or an ISO 8601 time (UTC when it has no offset)
    start: str = "start"
    end: str = "end"
    #: the energy used in the interval
    usage: str = "usage"
    #: its unit (kWh, Wh, MWh); when absent from the answer, ``default_units``
    units: str = "units"
    default_units: Literal["kWh", "Wh", "MWh"] = "kWh"


class WattzonCloud(CloudBase):
    """A WattzOn Link account: the API, the client certificate, and how extraction jobs are run."""

    type: Literal["wattzon"]
    url: Annotated[str, AfterValidator(check_url)] = DEFAULT_URL
    #: The client certificate WattzOn signed, and its private key (PEM).
    cert_file: Annotated[Path, AfterValidator(_readable)]
    key_file: Annotated[Path, AfterValidator(_readable)]
    #: A private CA to trust besides the system's (TLS is always verified).
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    #: Start extraction jobs (``false`` when WattzOn 3in1 or someone else runs them: the data is only fetched).
    start_jobs: bool = True
    #: How often a job is started per profile and mode (bill, interval).
    extract_every: PositiveDuration = 86400.0
    #: How often a running job's state is asked for.
    job_poll: PositiveDuration = 30.0
    #: A job still running after this is no longer followed (its data is fetched anyway).
    job_timeout: PositiveDuration = 6 * 3600.0
    #: How often bills and interval lists are fetched besides after each job (new data extracted by others).
    fetch_every: PositiveDuration = 6 * 3600.0
    interval_layout: IntervalLayout = Field(default_factory=IntervalLayout)
    request_timeout: PositiveDuration = 60.0
    #: A larger answer is refused.
    max_answer: Size = 64 * 2**20
    #: Longest wait between tries while WattzOn cannot be reached or answers errors.
    retry_cap: PositiveDuration = 300.0
    base_path: str = "/link/4.0"

    @property
    def insecure(self) -> bool:
        return self.url.startswith("http://")

    def state_path(self, state_dir: Path) -> Path:
        return state_dir / f"wattzon-{self.name}.json"

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = []
        if self.insecure:
            out.append((("url",), "WattzOn authenticates the gateway by its TLS client certificate: https:// only"))
        if not any(isinstance(m, WattzonMeter) and m.cloud == self.name for m in gateway.meters):
            out.append((("name",), f"no meter reads from cloud '{self.name}' (give a meter type: wattzon,"
                                   f" cloud: {self.name})"))
        return out

    def describe(self, gateway: GatewayConfig) -> list[str]:
        meters = [m for m in gateway.meters if isinstance(m, WattzonMeter) and m.cloud == self.name]
        jobs = (f"a job per profile and mode every {format_duration(self.extract_every)}, followed every"
                f" {format_duration(self.job_poll)}" if self.start_jobs else "no jobs started (start_jobs: false)")
        lines = [f"{self.url.rstrip('/')}{self.base_path}: {jobs}; data fetched after each job and every"
                 f" {format_duration(self.fetch_every)}",
                 f"client certificate {self.cert_file}"]
        lines += [f"meter {m.name}: {m.describe()}" for m in meters]
        return lines


class WattzonMeter(MeterBase):
    """A utility account's bills, or one utility meter's interval data, from a WattzOn Link profile."""

    type: Literal["wattzon"]
    cloud: Name
    profile_id: Annotated[int, Field(ge=0)]
    #: ``bills``: each bill of this account/meter; ``intervals``: each interval of a meter's interval data.
    data: Literal["bills", "intervals"] = "bills"
    #: Bills: which records are this meter's (``meter_number``, else ``account_number``; one of the two).
    meter_number: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    account_number: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    #: Bills: the record type taken (``electricity`` or ``gas``).
    utility: Literal["electricity", "gas"] = "electricity"
    #: Intervals: WattzOn's ``meter_id`` in the interval list.
    meter_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    #: Bills: the currency of ``cost``; a bill in another is refused.
    currency: Annotated[str, Field(min_length=3, max_length=3)] = "USD"
    #: How often a new period is expected (bills: about a month): with none for twice this (plus extract_every and
    #: fetch_every) after data was fetched, the meter is reported failing.
    interval: MeterInterval = 31 * 86400.0

    @property
    def gives_periods(self) -> bool:
        return True

    @property
    def value_unit(self) -> str | None:
        return None

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        if self.data == "bills":
            return frozenset({Quantity.INTERVAL_ENERGY, Quantity.COST})
        return frozenset({Quantity.INTERVAL_ENERGY})

    @property
    def mode(self) -> str:
        """The extraction job's mode this meter needs."""
        return "bill" if self.data == "bills" else "interval"

    def describe(self) -> str:
        if self.data == "bills":
            key = f"meter_number {self.meter_number}" if self.meter_number else f"account_number {self.account_number}"
            return (f"profile {self.profile_id}, {self.utility} bills of {key}: usage -> interval_energy (Wh), cost"
                    f" -> cost ({self.currency}), over each bill's period; a bill corrected or arriving late goes"
                    " to Wegowise (updated or added) and the file/stdout sinks, Wattics and Voltaware keep the"
                    " first value")
        return f"profile {self.profile_id}, intervals of meter_id {self.meter_id}: usage -> interval_energy (Wh)"

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = []
        if self.data == "bills":
            if (self.meter_number is None) == (self.account_number is None):
                out.append((("meter_number",), "bills: give meter_number or account_number (one of the two) to say"
                                               " which bill records are this meter's"))
            if self.meter_id is not None:
                out.append((("meter_id",), "only for data: intervals"))
        else:
            if self.meter_id is None:
                out.append((("meter_id",), "intervals: give meter_id (as in WattzOn's interval list)"))
            if self.meter_number is not None or self.account_number is not None:
                out.append((("meter_number",), "only for data: bills"))
        clouds = {c.name: c for c in gateway.clouds}
        cloud = clouds.get(self.cloud)
        if cloud is None:
            known = ", ".join(sorted(clouds)) or "none"
            out.append((("cloud",), f"no cloud named '{self.cloud}' (defined in clouds: {known})"))
        elif not isinstance(cloud, WattzonCloud):
            out.append((("cloud",), f"cloud '{self.cloud}' is of type {cloud.type}, not wattzon"))
        return out
