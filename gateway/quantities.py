"""The closed list of quantities a reading can carry, with their canonical units.

Every source maps what it reads onto these names, and every sink maps these names onto its platform's keys.
The position of a quantity in :data:`ALL` is its wire code in the on-disk queue: append new quantities at the
end and never reorder, or stored readings would decode as the wrong quantity.
"""

from __future__ import annotations

from enum import StrEnum


class Quantity(StrEnum):
    # Power per phase and total.
    POWER_ACTIVE_L1 = "power_active_l1"
    POWER_ACTIVE_L2 = "power_active_l2"
    POWER_ACTIVE_L3 = "power_active_l3"
    POWER_ACTIVE_TOTAL = "power_active_total"
    POWER_REACTIVE_L1 = "power_reactive_l1"
    POWER_REACTIVE_L2 = "power_reactive_l2"
    POWER_REACTIVE_L3 = "power_reactive_l3"
    POWER_REACTIVE_TOTAL = "power_reactive_total"
    POWER_APPARENT_L1 = "power_apparent_l1"
    POWER_APPARENT_L2 = "power_apparent_l2"
    POWER_APPARENT_L3 = "power_apparent_l3"
    POWER_APPARENT_TOTAL = "power_apparent_total"
    # Voltage line-to-neutral and line-to-line.
    VOLTAGE_L1 = "voltage_l1"
    VOLTAGE_L2 = "voltage_l2"
    VOLTAGE_L3 = "voltage_l3"
    VOLTAGE_L1_L2 = "voltage_l1_l2"
    VOLTAGE_L2_L3 = "voltage_l2_l3"
    VOLTAGE_L3_L1 = "voltage_l3_l1"
    # Current per phase and neutral.
    CURRENT_L1 = "current_l1"
    CURRENT_L2 = "current_l2"
    CURRENT_L3 = "current_l3"
    CURRENT_N = "current_n"
    # Energy counters in Wh.
    ENERGY_IMPORT_L1 = "energy_import_l1"
    ENERGY_IMPORT_L2 = "energy_import_l2"
    ENERGY_IMPORT_L3 = "energy_import_l3"
    ENERGY_IMPORT_TOTAL = "energy_import_total"
    ENERGY_EXPORT_L1 = "energy_export_l1"
    ENERGY_EXPORT_L2 = "energy_export_l2"
    ENERGY_EXPORT_L3 = "energy_export_l3"
    ENERGY_EXPORT_TOTAL = "energy_export_total"
    # Grid.
    FREQUENCY = "frequency"
    POWER_FACTOR_L1 = "power_factor_l1"
    POWER_FACTOR_L2 = "power_factor_l2"
    POWER_FACTOR_L3 = "power_factor_l3"
    POWER_FACTOR_TOTAL = "power_factor_total"
    # A single-value meter (gas, water, heat, temperature, pulses): its unit is declared by the meter.
    VALUE = "value"
    # Energy over the meter's own interval ending at the reading's instant, in Wh (a cloud's read, e.g. Intellimeter's
    # ``kwh_interval``): not a counter, so never aggregated as one.
    INTERVAL_ENERGY = "interval_energy"
    # What a period cost (a utility bill), in the currency the meter declares.
    COST = "cost"
    # An inverter's DC (PV) side: power, voltage, current.
    DC_POWER = "dc_power"
    DC_VOLTAGE = "dc_voltage"
    DC_CURRENT = "dc_current"


ALL: tuple[Quantity, ...] = tuple(Quantity)

#: The international-table British thermal unit, in joules; a (US) therm is 100,000 of them.
JOULES_PER_BTU = 1055.05585262
WH_PER_THERM = 100_000 * JOULES_PER_BTU / 3600
CODE: dict[Quantity, int] = {q: i for i, q in enumerate(ALL)}

_PREFIX_UNITS = (
    ("dc_power", "W"),
    ("dc_voltage", "V"),
    ("dc_current", "A"),
    ("power_active_", "W"),
    ("power_reactive_", "VAr"),
    ("power_apparent_", "VA"),
    ("voltage_", "V"),
    ("current_", "A"),
    ("energy_", "Wh"),
    ("power_factor_", ""),
)


def unit_of(q: Quantity) -> str:
    """The canonical unit of a quantity; ``value`` and ``cost`` have none of their own (the meter declares it: a
    unit, a currency)."""
    if q is Quantity.FREQUENCY:
        return "Hz"
    if q is Quantity.VALUE:
        return ""
    if q is Quantity.INTERVAL_ENERGY:
        return "Wh"
    if q is Quantity.COST:
        return ""
    for prefix, unit in _PREFIX_UNITS:
        if q.value.startswith(prefix):
            return unit
    raise AssertionError(f"no unit for {q}")  # pragma: no cover - the table covers the closed list


#: Units a single-value meter may declare for ``value``.
VALUE_UNITS: tuple[str, ...] = (
    "m3", "l", "kWh", "Wh", "MWh", "GJ", "MJ", "degC", "K", "%", "pulses", "count", "Pa", "bar", "ppm", "lux",
)
