"""What the page shows, shaped from the daemon's parts: the advice per problem, a report with its secrets scrubbed,
a Modbus meter's registers decoded both ways, the log ring as text, the versions for the diagnostics bundle."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.logs import REDACTOR, RING
from gateway.web.http import Refused

#: What a technician can do about each problem /health reports (the problem's own detail says what is wrong).
ADVICE = {
    "sink_stalled": "check the gateway's network and the platform's credentials (Platforms: Verify); the readings"
                    " wait safely in the queue and are sent when it takes them again",
    "sink_behind": "nothing, if it is catching up after an outage; otherwise the platform takes readings more"
                   " slowly than they come: a longer interval, or fewer values",
    "meter_failing": "check the meter: powered, its unit id (address) and baud rate as configured, the RS-485 pair"
                     " (A and B swapped?), or its IP address; then Meters: Read now",
    "bus_down": "check the bus: cable, power of the converter or the Modbus TCP gateway, the serial port, the"
                " baud rate (Meters: Read now, after each change)",
    "cloud_down": "check the credentials of the vendor's cloud and the gateway's internet connection",
    "clock_unsynchronised": "check that the gateway reaches a time server (NTP); readings are held, not lost, until"
                            " the clock is set",
    "meter_clock_ahead": "set the meter's (or its cloud's) clock: its readings are stamped in the future and refused",
    "queue_lost": "the queue file was removed or replaced under the running gateway: restart the service",
    "queue_near_full": "restore delivery (see the platforms), or give the queue more room (queue.max_size)",
    "task_failing": "look at Logs for the task's error; the gateway restarts it on its own",
    "ticks_skipped": "the bus is too slow for the meters' interval: a longer interval, fewer values, or a higher"
                     " baud rate",
}


def read_text(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Refused(500, f"cannot read {path}: {e}") from None


def scrub(value: Any) -> Any:
    """A report's strings (problems quoting a peer's answer...) with every secret replaced."""
    if isinstance(value, str):
        return REDACTOR.scrub(value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def for_meter(sub: Any, message: dict[str, Any], meter: str) -> bool:
    """Whether a message that gave no reading was meant for ``meter``: the subscription's one meter, or the meter
    its topic names at the subscription's ``meter_level``."""
    if sub.meter is not None:
        return bool(sub.meter == meter)
    levels = str(message["topic"]).split("/")
    return sub.meter_level is not None and len(levels) >= sub.meter_level and levels[sub.meter_level - 1] == meter


def describe(meter: Any) -> str:
    describe = getattr(meter, "describe", None)
    return REDACTOR.scrub(str(describe())) if callable(describe) else type(meter).__name__


def registers(poller: Any) -> list[dict[str, Any]]:
    """Each value's registers as last answered (the Modbus tools' rows, shared with ``read --raw``)."""
    from gateway.platforms.modbus.tools import register_rows

    return register_rows(poller)


def log_text() -> str:
    return "\n".join(f"{ln['ts']} {ln['level']:<7} {ln['component']}: {ln['event']} {ln['fields']}".rstrip()
                     for ln in RING.since(0, limit=100_000)) + "\n"


def versions() -> dict[str, str]:
    out = {"meter-gateway": __version__, "python": platform.python_version(), "os": platform.platform()}
    for pkg in ("pymodbus", "paho-mqtt", "httpx", "pydantic", "starlette", "uvicorn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    with contextlib.suppress(OSError):
        out["os_release"] = next((ln.split("=", 1)[1].strip('"') for ln in Path("/etc/os-release").read_text()
                                  .splitlines() if ln.startswith("PRETTY_NAME=")), "")
    return out
