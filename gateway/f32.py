"""The shortest decimal of a float32: what a meter's float32 register means (230.1, not 230.100006103515625).

Used by the Modbus decoder (a register's value) and by the queue's value codec (a value read back from four bytes):
one search, so a value decoded from a meter and one read back from the queue are the same number.
"""

from __future__ import annotations

import struct

_F32 = struct.Struct("<f")
_SPECS = tuple((digits, f".{digits}g") for digits in range(6, 10))


def shortest_decimal(x: float) -> tuple[float, int]:
    """The shortest decimal (6 to 9 significant digits) that is the same float32 as ``x``, and its digits; ``x``
    itself and 9 when none is (``x`` is not a float32). ``x`` must be finite and within float32 range."""
    raw = _F32.pack(x)
    for digits, spec in _SPECS:
        candidate = float(format(x, spec))
        if _F32.pack(candidate) == raw:
            return candidate, digits
    return x, 9
