"""Configuration of a ``voltaware`` sink: the MQTT connection, the message templates, the devices and their
metadata (validated against the rules of Voltaware's HTTP API document, seed 004)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, model_validator

from gateway.config.common import MeterBase, Name, PositiveDuration, SinkBase, Strict, check_ca_file, check_url
from gateway.stream import Stream
from gateway.template import NAMES, unknown_placeholders, uses

API_URL = "https://smart-meter-reseller-api.voltaware.com"

# The topic and payload Voltaware expects are given per integration and are not public (FACTS.md): this default
# is only a starting point, to be matched to the integration sheet Voltaware issues.
DEFAULT_TOPIC = "meters/{device_id}/events"
DEFAULT_PAYLOAD: dict[str, Any] = {
    "device_id": "{device_id}",
    "timestamp": "{ts_iso}",
    "active_power_w": "{power_active_total}",
    "reactive_power_var": "{power_reactive_total}",
    "voltage_v": "{voltage_l1}",
    "current_a": "{current_l1}",
    "energy_import_wh": "{energy_import_total}",
    "energy_export_wh": "{energy_export_total}",
}

GENERATOR = Literal["SOLAR", "HYDROELECTRICITY", "WIND", "BATTERY", "OTHER", "NONE"]
Amount = Annotated[int, Field(ge=1)]


def _check_device_id(value: str) -> str:
    if any(c in value for c in "/+#") or not value.strip():
        raise ValueError(f"'{value}' cannot be a device id (no '/', '+' or '#': it goes into MQTT topics)")
    return value


# ---------------------------------------------------------------- metadata: property


class Person(Strict):
    age_range: Literal["ZERO_TO_FIVE", "SIX_TO_EIGHTEEN", "ADULT", "PENSIONER"]
    amount: Amount


class HomeProperty(Strict):
    property_type: Literal["HOME"]
    home_type: Literal["FLAT", "HOUSE"]
    home_usage_type: Literal["PRIMARY", "SECONDARY"]
    home_size: Annotated[float, Field(gt=0)]
    bedroom_amount: Annotated[int, Field(ge=1)]
    power_generator_source: GENERATOR
    people_amount: Annotated[int, Field(ge=1)]
    people_amount_in_day_time: Annotated[int, Field(ge=0)]
    #: Required, but may be empty.
    people: list[Person]
    version: Literal["1.0"] = "1.0"

    @model_validator(mode="after")
    def _day_time(self) -> HomeProperty:
        if self.people_amount_in_day_time > self.people_amount:
            raise ValueError("people_amount_in_day_time is larger than people_amount")
        return self


class BusinessProperty(Strict):
    # The document's table says INDUSTRIAL, its example INDUSTRY: both are accepted and sent as written.
    property_type: Literal["OFFICE", "COMMERCIAL", "INDUSTRIAL", "INDUSTRY"]
    power_generator_source: GENERATOR
    version: Literal["1.0"] = "1.0"


Property = Annotated[HomeProperty | BusinessProperty, Field(discriminator="property_type")]


# ---------------------------------------------------------------- metadata: appliances (every field required)


class _Appliance(Strict):
    amount: Amount


class AmountOnly(_Appliance):
    key: Literal["DEHUMIDIFIER", "DISHWASHER", "ELECTRIC_LAWN_MOWER", "ELECTRIC_SHOWER", "HUMIDIFIER", "JACUZZI",
                 "KETTLE", "POOL_PUMP", "WASHING_MACHINE"]


class AirConditioner(_Appliance):
    key: Literal["AC"]
    type: Literal["CENTRALISED", "MINI_SPLIT", "WINDOW", "OTHER", "I_DONT_KNOW"]
    usage_type: Literal["SUMMER", "WINTER", "BOTH"]


class ElectricBoiler(_Appliance):
    key: Literal["ELECTRIC_BOILER"]
    usage_type: Literal["SPACE_HEATING", "WATER_HEATING", "BOTH"]
    coupled_with_solar_thermal_system: Literal["YES", "NO", "NOT_SURE"]
    water_tank: bool


class ElectricHeating(_Appliance):
    key: Literal["ELECTRIC_HEATING"]
    type: Literal["HEAT_PUMP", "HEAT_STORAGE", "RADIATOR", "UNDERFLOOR", "OTHER"]


class GasHeating(_Appliance):
    key: Literal["GAS_HEATING"]
    any_electric_heater: bool


class ElectricOven(_Appliance):
    key: Literal["ELECTRIC_OVEN"]
    type: Literal["MICROWAVE", "MINI", "REGULAR"]


class ElectricStove(_Appliance):
    key: Literal["ELECTRIC_STOVE"]
    type: Literal["ELECTRIC", "INDUCTION"]


class ElectricVehicle(_Appliance):
    key: Literal["ELECTRIC_VEHICLE"]
    type: Literal["BIKE", "CAR", "MOTORBIKE", "SCOOTER"]
    wattages: list[Annotated[int, Field(gt=0)]]

    @model_validator(mode="after")
    def _one_wattage_per_vehicle(self) -> ElectricVehicle:
        if len(self.wattages) != self.amount:
            raise ValueError(f"wattages has {len(self.wattages)} value(s) for amount {self.amount}: give one"
                             " wattage per vehicle")
        return self


class Fridge(_Appliance):
    key: Literal["FRIDGE"]
    type: Literal["FRIDGE", "FREEZER", "FRIDGE_AND_FREEZER", "SMALL_ELECTRIC_WINE_CELLAR",
                  "LARGE_ELECTRIC_WINE_CELLAR"]


class TumbleDryer(_Appliance):
    key: Literal["TUMBLE_DRYER"]
    type: Literal["CONDENSER", "HEAT_PUMP", "VENTED", "I_DONT_KNOW"]
    usage_types: Annotated[list[Literal["AUTUMN", "SPRING", "SUMMER", "WINTER"]], Field(min_length=1)]


class OtherAppliance(_Appliance):
    key: Literal["OTHER"]
    name: Annotated[str, Field(min_length=1, max_length=200)]


Appliance = Annotated[
    AmountOnly | AirConditioner | ElectricBoiler | ElectricHeating | GasHeating | ElectricOven | ElectricStove
    | ElectricVehicle | Fridge | TumbleDryer | OtherAppliance,
    Field(discriminator="key"),
]


class Geolocation(Strict):
    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]


class DeviceMetadata(Strict):
    property: Property | None = None
    appliances: list[Appliance] | None = None
    geolocation: Geolocation | None = None

    def documents(self) -> dict[str, dict[str, Any]]:
        """The bodies to PUT, by metadata kind, as the API wants them."""
        out: dict[str, dict[str, Any]] = {}
        if self.property is not None:
            out["property"] = self.property.model_dump(mode="json")
        if self.appliances is not None:
            out["appliances"] = {"appliances": [a.model_dump(mode="json") for a in self.appliances],
                                 "version": "1.0"}
        if self.geolocation is not None:
            out["geolocation"] = self.geolocation.model_dump(mode="json")
        return out


# ---------------------------------------------------------------- the sink


class VoltawareDevice(Strict):
    meter: Name
    device_id: Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_check_device_id)]
    metadata: DeviceMetadata | None = None


class VoltawareApi(Strict):
    url: Annotated[str, AfterValidator(check_url)] = API_URL
    client_id: Annotated[str, Field(min_length=1)]
    client_secret: SecretStr
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    request_timeout: PositiveDuration = 20.0
    #: Metadata not accepted yet (403 before the device is registered, errors) is tried again after this,
    #: doubling up to retry_cap.
    retry_base: PositiveDuration = 30.0
    retry_cap: PositiveDuration = 3600.0


def default_client_id(sink: str) -> str:
    # Stable across restarts and unique per gateway: the broker keeps one session per client id.
    return f"meter-gateway-{socket.gethostname()}-{sink}"[:64]


class VoltawareConfig(SinkBase):
    """Voltaware: one MQTT event per reading, TLS, QoS 2 by default; device metadata through the HTTP API."""

    type: Literal["voltaware"]
    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(ge=1, le=65535)] = 8883
    username: Annotated[str, Field(min_length=1)]
    password: SecretStr
    ca_file: Annotated[Path, AfterValidator(check_ca_file)] | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    client_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    keepalive: PositiveDuration = 60.0
    qos: Literal[0, 1, 2] = 2
    topic: Annotated[str, Field(min_length=1)] = DEFAULT_TOPIC
    payload: dict[str, Any] | list[Any] | str = Field(default_factory=lambda: dict(DEFAULT_PAYLOAD))
    #: A quantity the payload names but the reading lacks: leave its key out, or do not send the reading.
    missing: Literal["omit", "skip"] = "omit"
    devices: Annotated[list[VoltawareDevice], Field(min_length=1)]
    #: Readings of one device published back to back before waiting for their acknowledgements.
    window: Annotated[int, Field(ge=1, le=1000)] = 256
    #: How long to wait for the broker's acknowledgements before counting a send as failed (it stays in flight).
    ack_timeout: PositiveDuration = 20.0
    max_in_flight: Annotated[int, Field(ge=1, le=1024)] = 16
    api: VoltawareApi | None = None
    #: Build every packet and print it on standard output instead of sending it (nothing is sent or connected).
    dry_run: bool = False

    def dry_run_requested(self) -> bool:
        return self.dry_run

    @property
    def effective_client_id(self) -> str:
        return self.client_id or default_client_id(self.name)

    def streams(self, meters: Sequence[MeterBase]) -> list[Stream]:
        return [Stream(self.name, d.meter, d.device_id) for d in self.devices]

    def secrets(self) -> list[str]:
        out = super().secrets()
        if self.api is not None:
            out.append(self.api.client_secret.get_secret_value())
        return out

    def cross_check(self, meters: Sequence[MeterBase]) -> list[tuple[tuple[str | int, ...], str]]:
        problems = super().cross_check(meters)
        known = {m.name for m in meters}
        if self.meters is not None:
            problems.append((("meters",), "a voltaware sink sends the meters named in its devices; remove meters"))
        problems += [(("topic", *p), m) for p, m in unknown_placeholders(self.topic)]
        if any(c in self.topic for c in "+#"):
            problems.append((("topic",), "a topic to publish to cannot hold the wildcards + or #"))
        quantities_in_topic = uses(self.topic) & (NAMES - {"device_id", "meter", "site"})
        if quantities_in_topic:
            problems.append((("topic",), f"only {{device_id}}, {{meter}} and {{site}} can go into the topic, not"
                                         f" {', '.join('{' + q + '}' for q in sorted(quantities_in_topic))}"))
        problems += [(("payload", *p), m) for p, m in unknown_placeholders(self.payload)]
        if (self.client_cert is None) != (self.client_key is None):
            problems.append((("client_cert" if self.client_key is None else "client_key",),
                             "give both client_cert and client_key, or neither"))
        seen: dict[str, int] = {}
        for i, d in enumerate(self.devices):
            if d.device_id in seen:
                problems.append((("devices", i, "device_id"), f"'{d.device_id}' is already used by"
                                                               f" devices[{seen[d.device_id]}]"))
            seen.setdefault(d.device_id, i)
            if d.meter not in known:
                problems.append((("devices", i, "meter"), f"no meter named '{d.meter}' (defined:"
                                                           f" {', '.join(sorted(known))})"))
            if d.metadata is not None and self.api is None:
                problems.append((("devices", i, "metadata"), "sending metadata needs the api: section (client_id"
                                                              " and client_secret issued by Voltaware)"))
        return problems
