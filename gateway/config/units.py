"""Human units in the configuration: durations (``30s``, ``5m``, ``1h30m``, ``250ms``) and sizes (``512MB``)."""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_DURATION_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$", re.IGNORECASE)
_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "kib": 2**10, "ki": 2**10,
    "m": 10**6, "mb": 10**6, "mib": 2**20, "mi": 2**20,
    "g": 10**9, "gb": 10**9, "gib": 2**30, "gi": 2**30,
    "t": 10**12, "tb": 10**12, "tib": 2**40, "ti": 2**40,
}

DURATION_HINT = "a duration such as 500ms, 30s, 5m, 1h or 1h30m"
SIZE_HINT = "a size such as 64KB, 512MB, 2GB or 1GiB"


def parse_duration(value: object) -> float:
    """Seconds from a human duration. Bare numbers are refused: ``60`` could mean seconds or minutes."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected {DURATION_HINT}")
    if not _DURATION_WHOLE.match(value):
        raise ValueError(f"'{value}' is not {DURATION_HINT}")
    return sum(float(n) * _DURATION_SECONDS[u.lower()] for n, u in _DURATION_PART.findall(value))


def parse_size(value: object) -> int:
    """Bytes from a human size; KB/MB/GB are powers of 1000, KiB/MiB/GiB powers of 1024."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_HINT}")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not (m := _SIZE.match(value)):
        raise ValueError(f"'{value}' is not {SIZE_HINT}")
    return int(float(m.group(1)) * _SIZE_FACTORS[m.group(2).lower()])


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:.0f}{unit}"
    return f"{seconds:g}s"


def format_size(n: int) -> str:
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= factor:
            return f"{n / factor:.3g}{unit}"
    return f"{n}B"
