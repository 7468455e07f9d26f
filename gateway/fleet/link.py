"""The daemon's side of the fleet: the presence on the fleet broker and the remote configuration, started,
reconfigured and stopped with the daemon, under a supervisor of their own (the goodbye at a stop is waited for while
the pipeline stops)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config import GatewayConfig
from gateway.supervisor import Supervisor

if TYPE_CHECKING:
    from gateway.fleet.presence import Presence
    from gateway.fleet.remote import Outcome, RemoteConfig


class FleetLink:
    def __init__(self, config: Callable[[], GatewayConfig], local_path: Path | None,
                 snapshot: Callable[[], Awaitable[dict[str, Any]]], changed: Callable[[], None],
                 swap: Callable[[GatewayConfig, Path], Awaitable[None]], tasks_failing: Callable[[], bool]) -> None:
        self.config = config
        self.local_path = local_path
        self.snapshot = snapshot
        self.changed = changed
        self.swap = swap
        self.tasks_failing = tasks_failing
        self.presence: Presence | None = None
        self.remote: RemoteConfig | None = None
        self._stop = asyncio.Event()
        self.supervisor = Supervisor(self._stop)
        #: The last remote configuration's outcome, for config/state (published again by a new fleet connection).
        self._config_state: bytes | None = None

    def start(self) -> None:
        config = self.config()
        if self.remote is None:
            self._start_remote(config)
        if config.fleet is None:
            return
        from gateway.fleet.presence import Presence  # paho's client for the fleet only when a fleet is configured

        self._stop = asyncio.Event()
        self.supervisor = Supervisor(self._stop)
        self.supervisor.on_change = self.changed
        presence = self.presence = Presence(config, self.snapshot)
        presence.on_change = self.changed
        if self.remote is not None and config.fleet.remote_config:
            presence.on_config = self.remote.submit
        if self._config_state is not None:
            presence.publish_config_state(self._config_state)
        if self.remote is not None and config.fleet.remote_config and config.fleet.config_source is not None:
            from gateway.fleet.remote import poll_source

            self.supervisor.spawn("fleet-config-source", functools.partial(
                poll_source, config.fleet.config_source, self.remote, self._stop))
        self.supervisor.spawn("fleet", functools.partial(presence.run, self._stop))

    async def stop(self) -> None:
        from gateway.fleet.presence import GOODBYE_TIMEOUT

        self._stop.set()
        await self.supervisor.wait(GOODBYE_TIMEOUT + 2.0)
        self.presence = None

    async def reconfigure(self, new: GatewayConfig) -> None:
        """After a swap: the same fleet settings keep the connection (the meters may have changed); others restart
        it."""
        if self.remote is None:
            self._start_remote(new)
        if self.presence is not None and self.presence.same_connection(new):
            self.presence.update(new)
        elif self.presence is not None or new.fleet is not None:
            await self.stop()
            self.start()

    def choose(self, current: Path) -> Path:
        """The file a reload runs: with remote configuration, the remote one unless the local file was edited."""
        if self.remote is None:
            return current
        path = self.remote.choose()
        announced = self.remote.take_announcement()
        if announced is not None:
            self.publish(announced)
        return path

    def health(self) -> dict[str, Any] | None:
        return self.presence.health() if self.presence is not None else None

    def healthy(self) -> bool:
        """Running without trouble: no background task failing, the fleet broker reached."""
        return not self.tasks_failing() and (self.presence is None or self.presence.connected)

    def publish(self, outcome: Outcome) -> None:
        self._config_state = outcome.payload(self.config().gateway_id)
        if self.presence is not None:
            self.presence.publish_config_state(self._config_state)

    def _start_remote(self, config: GatewayConfig) -> None:
        # Always: a configuration applied from the technician's page takes the same way as one from the broker.
        if self.local_path is None:
            return
        from gateway.fleet.remote import RemoteConfig

        remote = self.remote = RemoteConfig(self.local_path, config.state_dir)
        remote.swap = self.swap
        remote.healthy = self.healthy
        remote.publish = self.publish
        remote.running = self.config
        announced = remote.take_announcement()
        if announced is not None:
            self.publish(announced)
