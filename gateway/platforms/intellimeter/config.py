"""Configuration of an Intellimeter account (``clouds:``, ``type: intellimeter``) and of the meters read from it.

What Intellimeter's document leaves unknown is a setting here, with the document's value (or none) as the default:
the address of the API (the document shows a bare ``http://`` address of a beta server), the paths, how far back a
request may reach, which field carries a water or gas meter's volume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr

from gateway.config.common import (
    CloudBase,
    Duration,
    MeterBase,
    MeterInterval,
    Name,
    PositiveDuration,
    Size,
    check_ca_file,
    check_url,
    check_zone,
)
from gateway.config.units import format_duration
from gateway.quantities import Quantity

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig

#: The scopes the source needs: reads, and the meter list (``verify``).
DEFAULT_SCOPE = "meter:reads:read meter:meters:read"
UTILITY_CODE = {"electricity": "E", "water": "W", "gas": "G"}


class IntellimeterCloud(CloudBase):
    """An Intellimeter account: the API, its credentials, and how its reads are fetched."""

    type: Literal["intellimeter"]
    #: The API's address (scheme, host, port); the paths below are appended. No default: the document's is a beta.
    url: Annotated[str, AfterValidator(check_url)]
    client_id: Annotated[str, Field(min_length=1, max_length=500)]
    client_secret: SecretStr
    #: ``client_credentials``: the account of the application's owner. ``device_code``: an account that granted
    #: access with ``meter-gateway intellimeter authorize`` (the tokens are then in ``token_file``).
    flow: Literal["client_credentials", "device_code"] = "client_credentials"
    scope: Annotated[str, Field(min_length=1)] = DEFAULT_SCOPE
    #: Where ``authorize`` stores the device flow's tokens (default ``state_dir/intellimeter-<name>.token``, 0600).
    token_file: Path | None = None
    #: A private CA to trust besides the system's (TLS is always verified).
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    #: Plain http sends the bearer token and the client secret in clear: refused unless this is set (then a warning
    #: at every start says so).
    allow_insecure_http: bool = False
    #: How often the reads are fetched.
    interval: PositiveDuration = 300.0
    #: The time zone of ``time_stamping`` (the property's local time, without offset); default: the site's.
    timezone: Annotated[str, AfterValidator(check_zone)] | None = None
    #: Only these properties (one request each, so that a catch-up answer is one property's); default: every one.
    properties: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    #: How far back the first fetch reaches for a meter with nothing queued yet (0: its latest read only).
    first_reach_back: Duration = 0.0
    #: How far back a fetch may reach after an outage: reads older than this are not fetched (logged and counted).
    max_reach_back: PositiveDuration = 7 * 86400.0
    #: How late a read may appear in the cloud after its time: each fetch reaches back this far past the last one.
    late_reads: Duration = 3600.0
    #: A token is renewed this long before it expires.
    refresh_before: PositiveDuration = 300.0
    request_timeout: PositiveDuration = 60.0
    #: An answer larger than this is refused (a catch-up of every meter over max_reach_back must fit).
    max_answer: Size = 64 * 2**20
    #: Wait between tries while Intellimeter refuses the credentials.
    auth_retry: PositiveDuration = 300.0
    #: Longest wait between tries while it cannot be reached or answers with an error.
    retry_cap: PositiveDuration = 300.0
    auth_path: str = "/api/v1/auth"
    read_path: str = "/api/v1/read"
    meter_path: str = "/api/v1/meter"

    def token_path(self, state_dir: Path) -> Path:
        return self.token_file or state_dir / f"intellimeter-{self.name}.token"

    @property
    def insecure(self) -> bool:
        return urlsplit(self.url).scheme == "http"

    def zone(self, gateway: GatewayConfig) -> str:
        return self.timezone or gateway.site.timezone

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = []
        if self.insecure and not self.allow_insecure_http:
            out.append((("url",), "plain http would send the client secret and the bearer token in clear: use"
                                  " https:// (or set allow_insecure_http: true, knowing what it exposes)"))
        if self.insecure and self.ca_file is not None:
            out.append((("ca_file",), "only for https://"))
        if self.first_reach_back > self.max_reach_back:
            out.append((("first_reach_back",),
                        f"is longer than max_reach_back ({format_duration(self.max_reach_back)})"))
        if self.max_reach_back > gateway.queue.max_age:
            out.append((("max_reach_back",), f"is longer than queue.max_age ({format_duration(gateway.queue.max_age)}):"
                                             " reads that old would be dropped as soon as they are queued; raise"
                                             " queue.max_age or lower max_reach_back"))
        if not any(isinstance(m, IntellimeterMeter) and m.cloud == self.name for m in gateway.meters):
            out.append((("name",), f"no meter reads from cloud '{self.name}' (give a meter type: intellimeter,"
                                   f" cloud: {self.name})"))
        return out

    def describe(self, gateway: GatewayConfig) -> list[str]:
        meters = [m for m in gateway.meters if isinstance(m, IntellimeterMeter) and m.cloud == self.name]
        where = ", ".join(self.properties) if self.properties else "every property"
        lines = [f"every {format_duration(self.interval)}: GET {self.url.rstrip('/')}{self.read_path}?by=meter"
                 f" ({where}), reaching back to each meter's last queued read"
                 f" (at most {format_duration(self.max_reach_back)}; reads up to {format_duration(self.late_reads)}"
                 " late are taken)",
                 f"times:   {self.zone(gateway)} (Intellimeter stamps local time without offset)",
                 f"auth:    OAuth 2.0 {self.flow.replace('_', ' ')}, scope '{self.scope}'"]
        if self.flow == "device_code":
            token = self.token_path(gateway.state_dir)
            lines.append(f"token:   {token}" + ("" if token.exists() else
                                                " (missing: run meter-gateway intellimeter authorize)"))
        for m in meters:
            lines.append(f"meter {m.name}: {m.describe()}")
        return lines


def properties(cloud: IntellimeterCloud) -> list[str | None]:
    """What each fetch asks for: one request per configured property, or one (None) for every property."""
    return [*cloud.properties] if cloud.properties else [None]


class IntellimeterMeter(MeterBase):
    """A meter whose reads come from an Intellimeter account."""

    type: Literal["intellimeter"]
    cloud: Name
    #: Intellimeter's id of the meter (``meter`` in a read), or its serial number: one of the two.
    meter_id: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    serial_number: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    #: What the meter measures; a read of another utility or unit is refused.
    utility: Literal["electricity", "water", "gas"] = "electricity"
    #: How often Intellimeter has a new read of it (how long without one before the meter is reported failing is
    #: three times this, plus the cloud's late_reads).
    interval: MeterInterval = 900.0
    #: The field of a water or gas read that holds the meter's volume in m3. The document shows only ``kwh`` (for
    #: every utility); a read without this field is refused.
    volume_field: Annotated[str, Field(min_length=1)] = "kwh"

    @property
    def value_unit(self) -> str | None:
        return None if self.utility == "electricity" else "m3"

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        if self.utility == "electricity":
            return frozenset({Quantity.ENERGY_IMPORT_TOTAL, Quantity.INTERVAL_ENERGY})
        return frozenset({Quantity.VALUE})

    def describe(self) -> str:
        key = f"meter id {self.meter_id}" if self.meter_id else f"serial number {self.serial_number}"
        if self.utility == "electricity":
            what = "kwh -> energy_import_total (Wh), kwh_interval -> interval_energy (Wh)"
        else:
            what = f"{self.volume_field} -> value (m3)"
        return f"{key}, {self.utility}: {what}"

    def problems_with(self, gateway: GatewayConfig) -> list[tuple[tuple[str | int, ...], str]]:
        out: list[tuple[tuple[str | int, ...], str]] = []
        if (self.meter_id is None) == (self.serial_number is None):
            out.append((("meter_id",), "give meter_id or serial_number (one of the two) to say which Intellimeter"
                                       " meter this is"))
        clouds = {c.name: c for c in gateway.clouds}
        cloud = clouds.get(self.cloud)
        if cloud is None:
            known = ", ".join(sorted(clouds)) or "none"
            out.append((("cloud",), f"no cloud named '{self.cloud}' (defined in clouds: {known})"))
        elif not isinstance(cloud, IntellimeterCloud):
            out.append((("cloud",), f"cloud '{self.cloud}' is of type {cloud.type}, not intellimeter"))
        for other in gateway.meters:
            if other is self:
                break
            if isinstance(other, IntellimeterMeter) and other.cloud == self.cloud and (
                    (self.meter_id and other.meter_id == self.meter_id)
                    or (self.serial_number and other.serial_number == self.serial_number)):
                out.append((("meter_id" if self.meter_id else "serial_number",),
                            f"meter '{other.name}' already reads this Intellimeter meter"))
        return out

