from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.quantities import Quantity
from gateway.queue import DiskQueue, QueueStore
from gateway.reading import Reading

_counter = itertools.count(1)


def reading(meter: str, ts_ms: int, power: float | None = None) -> Reading:
    return Reading(meter, ts_ms, {Quantity.POWER_ACTIVE_TOTAL: float(ts_ms if power is None else power)})


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    s = QueueStore(tmp_path / "queue.db")
    s.open()
    yield s
    s.close()


@pytest.fixture
async def queue(tmp_path: Path) -> AsyncIterator[DiskQueue]:
    q = DiskQueue(QueueStore(tmp_path / "queue.db"), lazy_commit=0.01)
    await q.start()
    yield q
    await q.stop()


@pytest.fixture
def broker(tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.helpers.mosquitto import MOSQUITTO, Mosquitto

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (CI installs it)")
    with Mosquitto(tmp_path / "broker").start() as b:
        yield b


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[object]:
    from tests.helpers.rig import Rig

    made: list[Rig] = []

    async def make(text: str, sink: str) -> Rig:
        rig = await Rig(text, tmp_path, sink).start()
        made.append(rig)
        return rig

    yield make
    for r in made:
        await r.stop()
