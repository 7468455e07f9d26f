"""Configuration of a ``simulated`` meter."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import AfterValidator

from gateway.config.common import MeterBase, check_value_unit
from gateway.quantities import Quantity

if TYPE_CHECKING:
    from gateway.config.models import GatewayConfig


class SimulatedMeterConfig(MeterBase):
    """A meter that exists only in software: plausible, changing, deterministic values (demo and tests)."""

    type: Literal["simulated"]
    model: Literal["three_phase", "gas", "water", "heat", "temperature"] = "three_phase"
    seed: int = 0
    value_unit: Annotated[str, AfterValidator(check_value_unit)] | None = None

    def offered_quantities(self, gateway: GatewayConfig) -> frozenset[Quantity] | None:
        from gateway.platforms.simulated.source import values_at

        return frozenset(values_at(self, 0.0))
