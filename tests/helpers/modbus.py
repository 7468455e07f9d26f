"""Modbus peers for tests: simulated meters on a real pymodbus server, over TCP or a pseudo-terminal RTU link."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import select
import shutil
import subprocess
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.config.profiles import Profile, load_all
from gateway.platforms.modbus.simulator import MeterServer, SimMeter

SOCAT = shutil.which("socat")


@functools.cache
def profiles() -> dict[str, Profile]:
    """The built-in profiles, loaded once per test process (they are frozen; 35 files take a fifth of a second)."""
    found, problems = load_all()
    assert not problems, problems
    return found


@contextlib.contextmanager
def pty_pair(where: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals (a null-modem cable): what one end writes, the other reads."""
    if SOCAT is None:
        pytest.skip("socat is not installed (CI installs it)")
    a, b = where / "bus-meter", where / "bus-gateway"
    proc = subprocess.Popen([SOCAT, f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not (a.exists() and b.exists()):
            if time.monotonic() > deadline:
                raise AssertionError("socat did not create the pseudo-terminals")
            time.sleep(0.02)
        yield str(a), str(b)
    finally:
        proc.terminate()
        proc.wait(5)


class RateCheckedLine:
    """Two pseudo-terminals joined by a relay that carries bytes only while both ends are set to the same speed,
    as on a real RS-485 line (a UART set to another rate reads garbage; here, nothing): what a plain pair cannot
    show, whether a meter really took a new baud rate. The ends are ``meter`` and ``gateway`` (paths)."""

    def __init__(self, where: Path) -> None:
        self.meter, self.gateway = str(where / "bus-meter"), str(where / "bus-gateway")
        (self._m1, self._s1), (self._m2, self._s2) = os.openpty(), os.openpty()
        for fd in (self._s1, self._s2):
            tty.setraw(fd)
        os.symlink(os.ttyname(self._s1), self.meter)
        os.symlink(os.ttyname(self._s2), self.gateway)
        #: bytes dropped because the two ends were at different speeds
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def speeds(self) -> tuple[int, int]:
        """The termios speed constants (``termios.B9600``...) the two ends are set to: the meter's, the gateway's."""
        return termios.tcgetattr(self._s1)[5], termios.tcgetattr(self._s2)[5]

    def _relay(self) -> None:
        other = {self._m1: self._m2, self._m2: self._m1}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(other), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                meter, gateway = self.speeds()
                if meter == gateway:
                    os.write(other[fd], data)
                else:
                    self.dropped += len(data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for fd in (self._m1, self._s1, self._m2, self._s2):
            os.close(fd)
        for link in (self.meter, self.gateway):
            os.unlink(link)


class ServerThread:
    """A :class:`MeterServer` on its own event loop in a thread, for tests whose own code blocks (a daemon process
    watched with sleeps). Faults are changed through :meth:`call`, on the server's loop."""

    def __init__(self, meters: list[SimMeter], framer: str = "socket") -> None:
        self.server = MeterServer(meters)
        self.framer = framer
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, fn: Callable[[MeterServer], object]) -> None:
        asyncio.run_coroutine_threadsafe(self._call(fn), self.loop).result(5)

    async def _call(self, fn: Callable[[MeterServer], object]) -> None:
        fn(self.server)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        start = self.server.start_tcp(framer=self.framer)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(start, self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
