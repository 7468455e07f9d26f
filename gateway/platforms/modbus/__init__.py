"""``modbus``: meters on Modbus lines (RTU on RS-485, TCP, RTU over TCP), polled on a clock-aligned interval
(docs/modbus.md).

Here: ``config.py`` (buses, meters, registers, profile files), ``registers.py`` (decoding), ``plan.py`` (which
requests a poll sends, and what the meter's refusals teach), ``bus.py`` (one line, one request at a time),
``source.py`` (one source per bus), ``simulator.py`` (a meter as a pymodbus server, for the demo and tests),
``tools.py`` (``read``, ``scan``, ``check``'s plan). Profile files are resolved by :mod:`gateway.config.profiles`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.platforms.modbus.config import ModbusMeterConfig
from gateway.platforms.plugin import SourcePlatform

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig
    from gateway.platforms.source import Source
    from gateway.timekeeper import TimeKeeper


def _create(config: GatewayConfig, keeper: TimeKeeper) -> list[Source]:
    """One source per bus that has meters: it schedules that line."""
    from gateway.platforms.modbus.source import ModbusSource

    on_bus: dict[str, list[ModbusMeterConfig]] = {}
    for meter in config.meters:
        if isinstance(meter, ModbusMeterConfig):
            on_bus.setdefault(meter.bus, []).append(meter)
    return [ModbusSource(bus, on_bus[bus.name], keeper) for bus in config.buses if bus.name in on_bus]


PLATFORM = SourcePlatform("modbus", ModbusMeterConfig, _create)
