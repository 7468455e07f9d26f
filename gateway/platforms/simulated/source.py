"""``simulated`` meters: plausible, changing, deterministic values, so the whole pipeline runs with no hardware.

Values are functions of the timestamp and the meter's seed only: the same instant always gives the same reading,
which lets tests check what arrives at a platform against what the meter "held". Energy and volume counters are
the exact integrals of the power and flow curves, so they rise monotonically and agree with the power readings.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

import structlog

from gateway.platforms.source import BaseSource, Committer, Emit
from gateway.quantities import Quantity as Q
from gateway.reading import Reading
from gateway.schedule import next_tick, sleep_until
from gateway.timekeeper import TimeKeeper

if TYPE_CHECKING:
    from gateway.platforms.simulated.config import SimulatedMeterConfig

DAY = 86400.0
TAU = 2 * math.pi

#: Counters start at 2020-01-01, so a gas meter shows tens of thousands of m3, not millions.
COUNTER_EPOCH = 1577836800.0

def _wave(t: float, mean: float, amp: float, period: float, phase: float) -> float:
    return mean + amp * math.sin(TAU * t / period + phase)


def _wave_integral(t: float, mean: float, amp: float, period: float, phase: float) -> float:
    """Exact integral of :func:`_wave` from 0 to t."""
    return mean * t - amp * period / TAU * (math.cos(TAU * t / period + phase) - math.cos(phase))


def three_phase(t: float, seed: int = 0) -> dict[Q, float]:
    out: dict[Q, float] = {}
    p_total = q_total = s_total = e_total = 0.0
    volts = []
    for i, (p, q, s, v, c, e, pf) in enumerate(
        (
            (Q.POWER_ACTIVE_L1, Q.POWER_REACTIVE_L1, Q.POWER_APPARENT_L1, Q.VOLTAGE_L1, Q.CURRENT_L1,
             Q.ENERGY_IMPORT_L1, Q.POWER_FACTOR_L1),
            (Q.POWER_ACTIVE_L2, Q.POWER_REACTIVE_L2, Q.POWER_APPARENT_L2, Q.VOLTAGE_L2, Q.CURRENT_L2,
             Q.ENERGY_IMPORT_L2, Q.POWER_FACTOR_L2),
            (Q.POWER_ACTIVE_L3, Q.POWER_REACTIVE_L3, Q.POWER_APPARENT_L3, Q.VOLTAGE_L3, Q.CURRENT_L3,
             Q.ENERGY_IMPORT_L3, Q.POWER_FACTOR_L3),
        )
    ):
        phase = i * TAU / 3 + seed
        # A daily load curve plus a 10-minute ripple; always positive, so energy only rises.
        watts = _wave(t, 2000 + 300 * i, 800, DAY, phase) + _wave(t, 0, 150, 600, seed + i)
        wh = (_wave_integral(t, 2000 + 300 * i, 800, DAY, phase) + _wave_integral(t, 0, 150, 600, seed + i)) / 3600
        volt = _wave(t, 230, 3, 3600, phase)
        power_factor = _wave(t, 0.93, 0.03, 7200, phase)
        va = watts / power_factor
        var = math.sqrt(max(va * va - watts * watts, 0.0))
        out |= {p: round(watts, 2), q: round(var, 2), s: round(va, 2), v: round(volt, 2),
                c: round(va / volt, 3), e: round(wh, 1), pf: round(power_factor, 3)}
        p_total += watts
        q_total += var
        s_total += va
        e_total += wh
        volts.append(volt)
    sqrt3 = math.sqrt(3)
    out |= {
        Q.POWER_ACTIVE_TOTAL: round(p_total, 2), Q.POWER_REACTIVE_TOTAL: round(q_total, 2),
        Q.POWER_APPARENT_TOTAL: round(s_total, 2), Q.ENERGY_IMPORT_TOTAL: round(e_total, 1),
        Q.POWER_FACTOR_TOTAL: round(p_total / s_total, 3),
        Q.VOLTAGE_L1_L2: round(sqrt3 * (volts[0] + volts[1]) / 2, 2),
        Q.VOLTAGE_L2_L3: round(sqrt3 * (volts[1] + volts[2]) / 2, 2),
        Q.VOLTAGE_L3_L1: round(sqrt3 * (volts[2] + volts[0]) / 2, 2),
        Q.CURRENT_N: round(abs(out[Q.CURRENT_L1] - out[Q.CURRENT_L2]) * 0.2, 3),
        Q.FREQUENCY: round(_wave(t, 50.0, 0.03, 900, seed), 3),
    }
    return out


def single_value(model: str, t: float, seed: int = 0) -> dict[Q, float]:
    if model == "temperature":
        return {Q.VALUE: round(_wave(t, 20.0, 4.0, DAY, seed), 2)}
    # Counters: the integral of a positive flow (per hour), from an arbitrary start.
    per_hour = {"gas": (1.2, 0.8), "water": (90.0, 60.0), "heat": (6.0, 4.0)}[model]
    total = _wave_integral(t - COUNTER_EPOCH, per_hour[0], per_hour[1], DAY, seed) / 3600
    return {Q.VALUE: round(total, 4)}


def values_at(config: SimulatedMeterConfig, t: float) -> dict[Q, float]:
    if config.model == "three_phase":
        return three_phase(t, config.seed)
    return single_value(config.model, t, config.seed)


class SimulatedSource(BaseSource):
    def __init__(self, config: SimulatedMeterConfig, keeper: TimeKeeper | None = None) -> None:
        super().__init__()
        self.config = config
        self.name = config.name
        self.keeper = keeper or TimeKeeper("ignore")
        self.clock = self.keeper.wall
        self.log = structlog.get_logger("gateway.platforms.simulated.source").bind(meter=config.name)

    async def run(self, emit: Emit, stop: asyncio.Event) -> None:
        committer = Committer(emit, self.log)
        try:
            await self._run(committer, stop)
        finally:
            await committer.drain()

    async def _run(self, committer: Committer, stop: asyncio.Event) -> None:
        interval = self.config.interval
        while not stop.is_set():
            tick = next_tick(self.clock(), interval)
            if not await sleep_until(tick, stop, self.clock, horizon=interval):
                return
            stamp = self.keeper.stamp()
            reading = Reading(self.name, round(tick * 1000), values_at(self.config, tick), stamp.synced,
                              stamp.mono_ms)
            committer.submit(reading)
