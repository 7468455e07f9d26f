"""Modbus peers for tests: simulated meters on a real pymodbus server, over TCP or a pseudo-terminal RTU link."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.modbus.profiles import Profile, load_all

SOCAT = shutil.which("socat")


def profiles() -> dict[str, Profile]:
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
