"""Time you can trust on a machine without a real-time clock.

A Raspberry Pi boots with its clock at 1970 or at the last time it saved, and NTP steps it later. A reading stamped
before that step carries a wrong time; sent as it is, it would bill the wrong hour. So:

- The time keeper knows whether the system clock is synchronised (``time_sync``): systemd-timesyncd's flag file
  ``/run/systemd/timesync/synchronized``, or the kernel's NTP status (``adjtimex``, which chrony and ntpd keep).
  ``require`` waits for one of them; ``auto`` does when this machine runs systemd-timesyncd and otherwise trusts the
  clock unless the kernel says it is synchronised (containers, machines with a hardware clock and no NTP); ``ignore``
  always trusts it.
- Every reading is stamped with the wall clock, whether that was trusted, and ``time.monotonic()`` (which never
  jumps). A reading taken before sync goes to the queue's *held* table with its monotonic time and the boot it
  belongs to.
- At sync, the offset between the wall clock and the monotonic clock is measured once; each held reading is
  re-stamped ``monotonic + offset`` and released to the platforms, in order. The monotonic clock counts from boot,
  so this works across a restart of the gateway, not across a reboot: held readings from an earlier boot cannot be
  given a true time and are reported (counted, logged, kept as dead letters), never sent with a wrong one.
- A step of the clock (more than :data:`STEP_THRESHOLD` between wall and monotonic) is logged with its size. A step
  back makes new readings older than the last one queued: the queue refuses them (counted) until the clock has
  caught up, so no platform ever sees readings out of order. The pollers follow a step either way at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

log = structlog.get_logger("gateway.time")

TimeSync = Literal["auto", "require", "ignore"]
#: systemd-timesyncd's runtime directory; ``synchronized`` appears in it once the clock has been synchronised.
TIMESYNC_DIR = Path("/run/systemd/timesync")
#: A change of wall minus monotonic larger than this between two checks is a step, not NTP slewing (at most 0.5 ms/s).
STEP_THRESHOLD = 1.0
#: How often the sync state and steps are looked at.
CHECK_INTERVAL = 1.0
_TIME_ERROR = 5


@functools.cache
def _adjtimex() -> Any:
    # Looked up once: find_library runs ldconfig in a subprocess, not something to do every second on the loop.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None


def kernel_synced() -> bool | None:
    """The kernel's NTP status (read-only ``adjtimex``): True when synchronised, None when it cannot be asked."""
    adjtimex = _adjtimex()
    if adjtimex is None:
        return None
    buf = ctypes.create_string_buffer(512)  # struct timex is about 208 bytes; modes=0 (zeroed) only reads
    state = adjtimex(buf)
    if state < 0:
        return None
    return bool(state != _TIME_ERROR)


def timesyncd_synced(directory: Path = TIMESYNC_DIR) -> bool | None:
    """systemd-timesyncd's verdict: None when it does not run on this machine."""
    if not directory.is_dir():
        return None
    return (directory / "synchronized").exists()


def boot_id() -> str:
    """Which boot this is: monotonic times of different boots cannot be compared."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"unknown-{os.getpid()}-{time.time_ns()}"  # never equal to an earlier run's: nothing re-stamped wrong


def system_probe(mode: TimeSync) -> Callable[[], bool | None]:
    """What decides, in ``mode``, whether the clock is synchronised: True, False, or None (cannot tell)."""
    def probe() -> bool | None:
        by_timesyncd = timesyncd_synced()
        if by_timesyncd:
            return True
        by_kernel = kernel_synced()
        if by_kernel:
            return True
        if by_timesyncd is None and mode == "auto":
            return None  # no timesyncd here: a kernel saying "unsynchronised" is the norm in containers
        return False

    return probe


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a reading was taken: wall-clock ms, whether the wall clock was trusted then, and monotonic ms."""

    ts_ms: int
    synced: bool
    mono_ms: int


class TimeKeeper:
    """The clock every source stamps with. Thread-safe for :meth:`stamp` and :meth:`wall` (paho's thread)."""

    def __init__(
        self,
        mode: TimeSync = "auto",
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        probe: Callable[[], bool | None] | None = None,
    ) -> None:
        self.mode = mode
        self.wall = wall
        self.mono = mono
        self.probe = probe if probe is not None else system_probe(mode)
        #: "synchronised", "unsynchronised", "trusted" (cannot tell; taken as right), "ignored" (time_sync: ignore)
        self.state = "ignored" if mode == "ignore" else "unknown"
        #: Wall minus monotonic (ms) measured when the clock became trusted; None before.
        self.offset_ms: int | None = None
        #: Called with the offset once the clock is trusted (at the first check if it already is).
        self.on_trusted: Callable[[int], None] = lambda offset: None
        #: Called when the state changes (the daemon then writes its heartbeat).
        self.on_change: Callable[[], None] = lambda: None
        self.steps = 0
        self.last_step_s: float | None = None
        self.unsynced_since = mono()
        self._lock = threading.Lock()
        self._trusted = mode == "ignore"
        self._skew = wall() - mono()
        self._checked = False

    @property
    def trusted(self) -> bool:
        return self._trusted

    def stamp(self) -> Stamp:
        with self._lock:
            wall, mono, trusted = self.wall(), self.mono(), self._trusted
        return Stamp(round(wall * 1000), trusted, round(mono * 1000))

    def unsynced_for(self) -> float:
        """Seconds the clock has not been trusted (0 when it is)."""
        return 0.0 if self._trusted else self.mono() - self.unsynced_since

    def check(self) -> None:
        """Look at the sync state and for steps; call at least every few seconds (:meth:`run` does)."""
        wall, mono = self.wall(), self.mono()
        skew = wall - mono
        step = skew - self._skew
        self._skew = skew
        if abs(step) > STEP_THRESHOLD:
            self.steps += 1
            self.last_step_s = round(step, 3)
            direction = "forward" if step > 0 else "backward"
            if self._trusted and step < 0:
                log.warning("system clock stepped backward: readings are refused until it is past the last one"
                            " queued, so that none goes out of order", step_s=round(step, 3))
            else:
                (log.warning if self._trusted else log.info)(f"system clock stepped {direction}",
                                                             step_s=round(step, 3))
        if self.mode == "ignore":
            if not self._checked:
                self._checked = True
                self._become_trusted(wall, mono)
            return
        verdict = self.probe()
        first = not self._checked
        self._checked = True
        if self._trusted:
            if verdict is False and self.state == "synchronised":
                # A synchronised clock that loses its source drifts slowly: keep stamping, say so.
                self.state = "unsynchronised"
                log.warning("clock no longer reported synchronised; readings keep being stamped with it")
                self.on_change()
            elif verdict and self.state != "synchronised" and self.offset_ms is not None:
                self.state = "synchronised"
                self.on_change()
            return
        if verdict is None:
            self.state = "trusted"
            log.info("cannot tell whether the clock is synchronised (no systemd-timesyncd, and the kernel does not"
                     " report NTP sync): readings are stamped with the system clock as it is; set time_sync: require"
                     " to hold them until the kernel reports sync (chrony, ntpd)")
            self._become_trusted(wall, mono)
        elif verdict:
            self.state = "synchronised"
            if not first:
                log.info("clock synchronised: held readings are re-stamped and released",
                         unsynced_s=round(mono - self.unsynced_since, 1))
            self._become_trusted(wall, mono)
        elif first:
            self.state = "unsynchronised"
            log.warning("clock not synchronised: readings are held in the queue until it is, then re-stamped",
                        clock=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall)))
            self.on_change()

    def _become_trusted(self, wall: float, mono: float) -> None:
        offset = round(wall * 1000) - round(mono * 1000)
        with self._lock:
            self.offset_ms = offset
            # Release first, then trust: a reading stamped as trusted is appended after the release, never before.
            self.on_trusted(offset)
            self._trusted = True
        self.on_change()

    async def run(self, stop: asyncio.Event, every: float = CHECK_INTERVAL) -> None:
        while not stop.is_set():
            try:
                self.check()
            except Exception:  # a probe failing must not stop the checks
                log.exception("clock check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)

    def health(self) -> dict[str, object]:
        return {
            "state": self.state,
            "mode": self.mode,
            "trusted": self._trusted,
            "unsynced_s": round(self.unsynced_for(), 1),
            "steps": self.steps,
            "last_step_s": self.last_step_s,
        }
