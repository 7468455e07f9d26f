"""The daemon: queue, forwarders and sources started in that order, stopped in reverse, reloaded on SIGHUP.

Stopping (SIGTERM, SIGINT): sources stop first, so every reading already read is committed; forwarders get a
grace period for sends in flight; the queue commits what is pending. The whole takes well under 10 s.
Reloading (SIGHUP): the new file is validated first; an invalid one is logged and the running configuration kept.
A valid one replaces the forwarders while the sources keep reading, then the sources if the meters changed; the
queue stays open throughout, so no reading is lost and no tick is skipped.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway import __version__, status
from gateway.config import GatewayConfig
from gateway.config.loader import secrets_readable_by_others
from gateway.errors import ConfigError, GatewayError
from gateway.fleet.link import FleetLink
from gateway.forwarder import Forwarder
from gateway.heartbeat import Heartbeat
from gateway.logs import REDACTOR
from gateway.platforms.all import create_sink, create_sources
from gateway.platforms.source import BaseSource, Source
from gateway.queue import AppendResult, DiskQueue, MeterCount, QueueStore, Released, open_store
from gateway.queue.counters import meter_key
from gateway.reading import Reading, iso_utc
from gateway.sdnotify import SdNotify
from gateway.statelock import StateLock
from gateway.supervisor import Supervisor
from gateway.timekeeper import TimeKeeper

if TYPE_CHECKING:
    from gateway.monitor import Monitor

log = structlog.get_logger("gateway.daemon")

#: How long sends in flight may take to finish at a stop or reload.
SEND_GRACE = 5.0


class Gateway:
    def __init__(self, config: GatewayConfig, config_path: Path | None, notify: SdNotify | None = None,
                 keeper: TimeKeeper | None = None, store: QueueStore | None = None,
                 local_path: Path | None = None) -> None:
        self.config = config
        #: The file that runs: the local one, or a configuration applied remotely (gateway/fleet/remote.py).
        self.config_path = config_path
        #: The technician's file (run -c).
        self.local_path = local_path or config_path
        self.notify = notify or SdNotify()
        self.keeper = keeper or TimeKeeper(config.time_sync)
        self._keeper_stop = asyncio.Event()
        self._helpers_stop = asyncio.Event()
        #: The heartbeat, the clock and the watchdog; the sources have one of their own, each forwarder too.
        self._helpers = Supervisor(self._helpers_stop)
        self._sources_sup = Supervisor(asyncio.Event())
        self.queue = DiskQueue(store or open_store(config), lazy_commit=config.queue.commit_interval)
        self.forwarders: list[Forwarder] = []
        self.sources: list[Source] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._started = time.time()
        self._refusing: dict[str, int] = {}
        #: Readings refused as stamped in the future, per meter, and when the last one came (ms).
        self._future: dict[str, int] = {}
        self._future_at: dict[str, int] = {}
        #: Readings confirmed into the queue per meter since start (for /metrics and status).
        self._accepted: Counter[str] = Counter()
        self.monitor: Monitor | None = None
        #: Per sink, what each stream delivered last: from the previous run at start, kept across a reload.
        self._last_sent: dict[str, Any] | None = None
        self.heartbeat = Heartbeat(self.queue, self._info, self.last_sent_by_sink)
        self._beat_now = self.heartbeat.now
        #: Presence and health on the fleet broker, remote configuration (``fleet:``).
        self.fleet = FleetLink(lambda: self.config, self.local_path, self.snapshot, self._beat_now.set, self._swap,
                               lambda: any(t.get("failing") for t in self._task_health().values()))
        #: A reload (SIGHUP) and a remote configuration swap one at a time.
        self._swapping = asyncio.Lock()
        #: Each meter's last reading as taken (the technician's page shows its values), stamped in the future excepted.
        self.latest: dict[str, Reading] = {}

    # ------------------------------------------------------------ entry

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        # 'verify' asks for what each stream delivered last, as of now (the record is otherwise written every 5 min).
        loop.add_signal_handler(signal.SIGUSR1, self.heartbeat.ask_sent)
        exposed = secrets_readable_by_others(self.config_path, self.config) if self.config_path else None
        if exposed:
            log.warning("configuration file readable by everyone", problem=exposed)
        await self.queue.start()
        if self.queue.moved_aside is not None:
            self.notify.send(f"STATUS=queue was corrupt, moved to {self.queue.moved_aside}")
        try:
            await self._start_monitor()  # first: a port in use stops the start before anything runs
        except GatewayError:
            await self.queue.stop()
            raise
        await self._start_forwarders()
        await self._start_clock()
        self._start_sources()
        self.fleet.start()
        self._helpers.spawn("heartbeat", lambda: self.heartbeat.run(self._helpers_stop))
        self._helpers.spawn("clock", lambda: self.keeper.run(self._keeper_stop))
        if self.notify.watchdog_interval:
            interval = self.notify.watchdog_interval
            self._helpers.spawn("watchdog", lambda: self._watchdog(interval))
        self.notify.send("READY=1", f"STATUS=running: {len(self.config.meters)} meters, {len(self.forwarders)} sinks")
        log.info("gateway running", version=__version__, meters=len(self.config.meters),
                 sinks=[f.name for f in self.forwarders], queue=str(self.queue.path))
        while not self._stop.is_set():
            waiters = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self.reload()
        self.notify.send("STOPPING=1")
        log.info("stopping")
        if self.monitor is not None:
            await self.monitor.stop()
        goodbye = asyncio.create_task(self.fleet.stop())  # "offline" goes out while the pipeline stops
        await self._stop_pipeline()
        await goodbye
        # Stopped by their flags, not only by cancelling: in Python 3.11, cancelling asyncio.wait_for at the moment
        # its event is set (a meter starting to fail as the sources stop) can be lost, and the loop would go on.
        self._keeper_stop.set()
        self._helpers_stop.set()
        self._beat_now.set()
        await self._helpers.wait(0)
        await self.heartbeat.write(running=False)
        await self.queue.stop()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ pipeline

    async def _start_monitor(self) -> None:
        if self.config.monitoring.enabled:
            from gateway.monitor import Monitor  # prometheus-client only when monitoring is on
            from gateway.web.backend import GatewayBackend

            self.monitor = Monitor(self.config.monitoring, GatewayBackend(self))
            await self.monitor.start()

    async def snapshot(self) -> dict[str, Any]:
        """The report of ``status``, with this process's live view instead of its last heartbeat."""
        live, config = self._info(running=True), self.config
        return status.collect(await self.queue.snapshot(status.backlog_streams(config)), config, live=live)

    async def _start_clock(self) -> None:
        """Report held readings an earlier boot left (their time is lost), then decide whether the clock is trusted
        before the first reading is stamped."""
        self._released(await self.queue.release_held(None))
        self.keeper.on_trusted = self._release_held
        self.keeper.on_change = self._beat_now.set
        self.keeper.check()

    def _release_held(self, offset_ms: int) -> None:
        # Queued now, synchronously: every reading stamped as trusted from here on is appended after it.
        future = self.queue.release_held(offset_ms)

        def done(f: asyncio.Future[Released]) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                log.error("held readings could not be released; retrying in 10 s", error=str(f.exception()))
                asyncio.get_running_loop().call_later(10.0, self._release_held, offset_ms)
                return
            self._released(f.result())

        future.add_done_callback(done)

    @staticmethod
    def _released(out: Released) -> None:
        for meter, n in out.restamped.items():
            log.info("held readings re-stamped from the monotonic clock and released", meter=meter, readings=n)
        for meter, n in out.refused.items():
            log.warning("held readings refused after re-stamping: not newer than the last queued", meter=meter,
                        readings=n)
        for meter, n in out.unstampable.items():
            log.error("readings taken before the clock was synchronised in an earlier boot: their time cannot be"
                      " known, so they are not sent; kept as dead letters (meter-gateway deadletter list)",
                      meter=meter, readings=n)

    async def _start_forwarders(self) -> None:
        config = self.config
        REDACTOR.set(config.secrets())
        streams = config.sink_streams()
        cursors: dict[str, list[str]] = {}
        for stream in (st for sl in streams.values() for st in sl):
            cursors.setdefault(stream.cursor, []).append(stream.meter)
        inactive = await self.queue.configure(cursors)
        for name in inactive:
            log.warning("stream known to the queue is not in the configuration: its cursor is kept but ignored",
                        stream=name)
        if self._last_sent is None:  # what the previous run delivered last, for verify
            self._last_sent = await self.queue.last_sent()
        self.forwarders = []
        for sc in config.sinks:
            fwd = Forwarder(create_sink(sc, config), sc, self.queue, streams[sc.name])
            before = self._last_sent.get(sc.name)
            if isinstance(before, dict):
                fwd.last_sent.update(before)
            await fwd.start()
            self.forwarders.append(fwd)

    def _start_sources(self) -> None:
        stop = asyncio.Event()
        self._sources_sup = Supervisor(stop)
        self._sources_sup.on_change = self._beat_now.set
        self.sources = create_sources(self.config, self.keeper)
        for s in self.sources:
            s.on_change = self._beat_now.set
            if isinstance(s, BaseSource):
                s.last_queued = self.queue.last_ts
            self._sources_sup.spawn(f"source:{s.name}", functools.partial(s.run, self._emit, stop))

    async def _stop_pipeline(self) -> None:
        await self._stop_sources()
        await self._stop_forwarders()
        await self.queue.flush()

    async def _stop_sources(self) -> None:
        """Sources stop after emitting what they hold, so every reading already read is committed."""
        self._sources_sup.stop.set()
        self.queue.commit_now()  # their last readings may be waiting for company: the swap is between two ticks
        await self._sources_sup.wait(SEND_GRACE)

    async def _stop_forwarders(self) -> None:
        await asyncio.gather(*(f.stop(SEND_GRACE) for f in self.forwarders))
        self._last_sent = {f.name: dict(f.last_sent) for f in self.forwarders}
        self.forwarders = []

    async def _emit(self, readings: Sequence[Reading], prompt: bool = False) -> AppendResult:
        ahead = self._ahead_of_clock(readings)
        if ahead:
            refused = {id(r) for r, _ in ahead}
            readings = [r for r in readings if id(r) not in refused]
        for r in readings:  # the live view: as read (the queue's commit, up to commit_interval later, is not awaited)
            self.latest[r.meter] = r
        result = await self.queue.append(readings, prompt=prompt) if readings else AppendResult()
        if not result.dropped:
            self._accepted.update(r.meter for r in readings)
            self._accepted.subtract(r.meter for r, _ in result.refused)
        refused_meters = set()
        for reading, why in result.refused:
            refused_meters.add(reading.meter)
            count = self._refusing.get(reading.meter, 0)
            self._refusing[reading.meter] = count + 1
            # Logged on change: the first refusal at warning, the rest at debug until the meter is accepted again.
            (log.warning if count == 0 else log.debug)(
                "reading refused: not newer than the last one queued for this meter", meter=reading.meter, reason=why
            )
        for meter in {r.meter for r in readings} - refused_meters:
            if meter in self._future:
                log.info("readings of this meter are no longer ahead of the clock", meter=meter,
                         refused=self._future.pop(meter))
            if meter in self._refusing:
                log.info("readings accepted again", meter=meter, refused=self._refusing.pop(meter))
        if result.dropped:
            log.debug("readings dropped: queue cannot write", count=result.dropped)
        result.refused += ahead
        return result

    def _ahead_of_clock(self, readings: Sequence[Reading]) -> list[tuple[Reading, str]]:
        """Readings stamped further ahead of the synchronised clock than ``future_tolerance`` (a device's clock in
        2099): refused, counted per meter (``future``) and logged on change. Queued, such a reading would make
        every later reading of its meter "not newer". Judged only while the clock is trusted."""
        if not self.keeper.trusted:
            return []
        limit = int((self.keeper.wall() + self.config.future_tolerance) * 1000)
        out = [(r, f"stamped {iso_utc(r.ts_ms)}, ahead of the clock by more than future_tolerance")
               for r in readings if r.ts_ms > limit]
        counts = Counter(r.meter for r, _ in out)
        for reading, why in out:
            meter = reading.meter
            (log.warning if meter not in self._future else log.debug)(
                "reading refused: stamped in the future (the device's clock is wrong?)", meter=meter, reason=why)
            self._future[meter] = self._future.get(meter, 0) + 1
            self._future_at[meter] = int(time.time() * 1000)
        for meter, n in counts.items():
            self.queue.count(meter_key(meter, MeterCount.FUTURE), n)
        return out

    # ------------------------------------------------------------ reload

    async def reload(self) -> None:
        if self.config_path is None or self.local_path is None:
            log.warning("reload asked, but the gateway was not started from a file")
            return
        from gateway.fleet.remote import load_file

        path = self.fleet.choose(self.config_path)
        try:
            new = await asyncio.to_thread(load_file, path, self.local_path)
        except ConfigError as e:
            for line in e.problems:
                log.error("reload refused: invalid configuration", problem=line)
            log.error("reload refused: keeping the running configuration", path=str(path))
            return
        except Exception as e:  # whatever the file holds, a reload never takes the daemon down
            log.error("reload refused: the file could not be read; keeping the running configuration",
                      path=str(path), error=REDACTOR.scrub(f"{type(e).__name__}: {e}")[:300])
            return
        await self._swap(new, path)

    async def _swap(self, new: GatewayConfig, path: Path) -> None:
        """Run with ``new`` (checked): forwarders replaced while the sources read on, then the sources if the meters
        changed, the fleet connection and the monitor if theirs did. The queue is never reset or moved."""
        async with self._swapping:
            await self._swap_now(new, path)

    async def _swap_now(self, new: GatewayConfig, path: Path) -> None:
        if (new.state_dir, new.queue, new.time_sync) != (self.config.state_dir, self.config.queue,
                                                          self.config.time_sync):
            log.warning("state_dir, queue and time_sync change only at a restart; keeping the running ones")
            new = new.model_copy(update={"state_dir": self.config.state_dir, "queue": self.config.queue,
                                         "time_sync": self.config.time_sync})
        self.notify.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        # Sources keep reading into the queue while the forwarders are replaced, then are swapped between two
        # ticks: a reload leaves no hole in the data.
        await self._stop_forwarders()
        old, self.config, self.config_path = self.config, new, path
        await self._start_forwarders()
        # Meters compare with their resolved registers, so an edited profile file counts as a change too.
        if (new.meters, new.site, new.buses, new.brokers, new.subscriptions) != (
                old.meters, old.site, old.buses, old.brokers, old.subscriptions):
            await self._stop_sources()
            self._start_sources()
        await self.fleet.reconfigure(new)
        if new.monitoring != old.monitoring:
            if self.monitor is not None:
                await self.monitor.stop()
                self.monitor = None
            try:
                await self._start_monitor()
            except GatewayError as e:
                log.error("monitoring listener not restarted", error=str(e))
        self.notify.send("READY=1", f"STATUS=running: {len(new.meters)} meters, {len(self.forwarders)} sinks")
        log.info("configuration reloaded", meters=len(new.meters), sinks=[f.name for f in self.forwarders])

    # ------------------------------------------------------------ liveness

    async def _watchdog(self, interval: float) -> None:
        # Runs on the event loop: if the loop is stuck, systemd stops hearing from us and restarts the service.
        while True:
            self.notify.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def last_sent_by_sink(self) -> dict[str, Any] | None:
        """What each stream delivered last, per sink; between a stop of the forwarders and the next start (a stop,
        a reload), what they had when they stopped."""
        if not self.forwarders:
            return self._last_sent
        return {f.name: dict(f.last_sent) for f in self.forwarders}

    def _sink_health(self) -> dict[str, object]:
        return {f.name: {"failing": f.last_error is not None, "last_error": f.last_error,
                         "failing_since_ms": f.failing_since_ms} for f in self.forwarders}

    def _info(self, running: bool) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_ms": int(self._started * 1000),
            "heartbeat_ms": int(time.time() * 1000),
            "running": running,
            "sinks": self._sink_health(),
            "meters": {name: h for s in self.sources for name, h in s.health().items()},
            "subscriptions": {name: c for s in self.sources for name, c in s.subscriptions().items()},
            "clock": self.keeper.health(),
            "accepted": dict(self._accepted),
            "tasks": self._task_health(),
            "future_at": dict(self._future_at),
            "fleet": self.fleet.health(),
        }

    def _task_health(self) -> dict[str, dict[str, object]]:
        """Background tasks that failed since the start (restarted by their supervisor), by task name."""
        out = {**self._helpers.health(), **self._sources_sup.health(), **self.fleet.supervisor.health()}
        for f in self.forwarders:
            out.update(f.supervisor.health())
        return out


async def run_daemon(config: GatewayConfig, config_path: Path | None, notify: SdNotify | None = None,
                     keeper: TimeKeeper | None = None, store: QueueStore | None = None,
                     local_path: Path | None = None) -> int:
    with StateLock(config.state_dir):  # one daemon per queue (see gateway/statelock.py)
        return await Gateway(config, config_path, notify, keeper, store, local_path).run()
