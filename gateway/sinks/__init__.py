"""Sinks turn readings into a platform's packets and send them. They know nothing of buffering or retries.

A sink receives a batch of readings of one stream (one meter, or one data point fed by a meter), in timestamp order
(at most ``max_batch``), and returns one outcome per reading, in the same order. The forwarder acts on the outcomes
in order: a ``Retry`` stops the batch there (the rest is sent again later), a ``Reject`` moves one reading aside
and the batch goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.config.models import GatewayConfig, SinkBase
from gateway.errors import SinkError
from gateway.outcome import Outcome
from gateway.reading import Reading
from gateway.stream import Stream


class Sink(Protocol):
    name: str
    max_batch: int

    async def start(self) -> None: ...

    async def send(self, stream: Stream, readings: Sequence[Reading]) -> list[Outcome]: ...

    async def close(self) -> None: ...


SinkFactory = Callable[[Any, GatewayConfig], Sink]
_REGISTRY: dict[str, SinkFactory] = {}


def register(type_name: str) -> Callable[[SinkFactory], SinkFactory]:
    def deco(factory: SinkFactory) -> SinkFactory:
        _REGISTRY[type_name] = factory
        return factory

    return deco


def create_sink(config: SinkBase, gateway: GatewayConfig) -> Sink:
    # Importing the modules fills the registry.
    import importlib

    for module in ("file", "stdout", "voltaware", "wattics"):
        importlib.import_module(f"gateway.sinks.{module}")

    type_name = str(getattr(config, "type", ""))
    factory = _REGISTRY.get(type_name)
    if factory is None:
        raise SinkError(f"sink {config.name}: no sink of type '{type_name}'")
    sink = factory(config, gateway)
    if getattr(config, "dry_run", False):
        from gateway.sinks.dryrun import DryRunSink

        return DryRunSink(sink)  # type: ignore[arg-type]
    return sink
