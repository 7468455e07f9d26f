"""The shortest decimal of a float32: what a meter's float32 register means (230.1, not 230.100006103515625).

Used by the Modbus decoder (a register's value) and by the queue's value codec (a value read back from four bytes):
one search, so a value decoded from a meter and one read back from the queue are the same number.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

_F32 = struct.Struct("<f")
_SPECS = tuple((digits, f".{digits}g") for digits in range(6, 10))
_LONGER = tuple(spec for digits, spec in _SPECS if digits > 6)


def shortest_decimal(x: float) -> tuple[float, int]:
    """The shortest decimal (6 to 9 significant digits) that is the same float32 as ``x``, and its digits; ``x``
    itself and 9 when none is (``x`` is not a float32). ``x`` must be finite and within float32 range."""
    raw = _F32.pack(x)
    for digits, spec in _SPECS:
        candidate = float(format(x, spec))
        if _F32.pack(candidate) == raw:
            return candidate, digits
    return x, 9


@functools.lru_cache(maxsize=64)  # one per count of values; 256 held 0.9 MB at 200 meters (a chunk's counts vary)
def _many(n: int) -> tuple[struct.Struct, str]:
    return struct.Struct(f"<{n}f"), "%.6g " * n


def shortest_decimals(raw: bytes) -> list[float]:
    """:func:`shortest_decimal` of each float32 of ``raw`` (little-endian, as packed): the same numbers, found
    with 6 digits for all the values at once (most of a meter's values take 6: a few C calls rather than a Python
    loop over the values), then with more digits for those that need them."""
    n = len(raw) // 4
    packer, spec = _many(n)
    exact = packer.unpack(raw)
    out = list(map(float, (spec % exact).split()))
    try:
        back = packer.pack(*out)
        if back == raw:
            return out
        todo = [i for i, (a, b) in enumerate(zip(packer.unpack(back), exact, strict=True)) if a != b]
    except OverflowError:  # a value near the float32 limit, rounded up past it
        todo = [i for i in range(n) if not _same(out[i], raw, i)]
    pack = _F32.pack
    for i in todo:  # the few values 6 digits do not give back (energy totals): one by one
        x, want = exact[i], raw[4 * i:4 * i + 4]
        for longer in _LONGER:
            candidate = float(format(x, longer))
            try:
                if pack(candidate) == want:
                    out[i] = candidate
                    break
            except OverflowError:
                pass
        else:  # none within 9 digits (NaN): the value itself
            out[i] = x
    return out


def shortest_of(values: Sequence[float]) -> list[float]:
    """:func:`shortest_decimals` of ``values`` taken as float32 (OverflowError: one is beyond float32's range)."""
    return shortest_decimals(_many(len(values))[0].pack(*values))


def _same(x: float, raw: bytes, i: int) -> bool:
    """Is ``x`` the float32 at position ``i`` of ``raw``?"""
    try:
        return _F32.pack(x) == raw[4 * i:4 * i + 4]
    except OverflowError:
        return False
