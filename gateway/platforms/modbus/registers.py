"""Registers: where a quantity lives in a meter and how its words become a number.

A register is data (from a profile file or the configuration): quantity, 0-based protocol address, function
(``input`` = FC4, ``holding`` = FC3), type, word order, scale, offset and an optional "not available" pattern.
Byte order inside a 16-bit word is always big-endian, as the Modbus specification fixes it; the word order of
32- and 64-bit values is what meters disagree on (Eastron: high word first; Carlo Gavazzi: low word first).

Decoding turns one block of register words into values, leaving out what is NaN, infinite or the meter's
"not available" pattern: such a value never enters a reading.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from gateway.f32 import shortest_decimal
from gateway.quantities import Quantity

RegisterType = Literal["int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64"]
WordOrder = Literal["big", "little"]
Function = Literal["input", "holding"]

#: Registers (16-bit words) each type takes.
WIDTH: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4, "float32": 2, "float64": 4,
}
_STRUCT: dict[str, struct.Struct] = {
    t: struct.Struct(">" + c)
    for t, c in (("int16", "h"), ("uint16", "H"), ("int32", "i"), ("uint32", "I"), ("int64", "q"), ("uint64", "Q"),
                 ("float32", "f"), ("float64", "d"))
}
FUNCTION_CODE: dict[str, int] = {"holding": 3, "input": 4}

#: The most registers one read request may ask for (Modbus application protocol, FC3/FC4).
MAX_REGISTERS = 125


@dataclass(frozen=True, slots=True)
class Point:
    """One register, every default resolved: what the planner and the decoder work with."""

    quantity: Quantity
    address: int
    function: Function
    type: RegisterType
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    not_available: frozenset[int] = field(default_factory=frozenset)
    #: A SunSpec scale factor: the register (a signed power of ten, read in the same request) the raw value is
    #: multiplied by; None for a fixed scale.
    sf_address: int | None = None

    @property
    def width(self) -> int:
        return WIDTH[self.type]

    @property
    def end(self) -> int:
        """One past the last register this point occupies."""
        return self.address + WIDTH[self.type]

    @property
    def code(self) -> int:
        return FUNCTION_CODE[self.function]

    def describe(self) -> str:
        extra = "" if self.width == 1 or self.word_order == "big" else ", low word first"
        scale = "" if self.scale == 1 and self.offset == 0 else f" x{self.scale:g}" + (
            f" {self.offset:+g}" if self.offset else "")
        return f"{self.function} 0x{self.address:04X} ({self.address}) {self.type}{extra}{scale}"


def word_bytes(point: Point, data: bytes, offset: int) -> bytes:
    """The point's bytes, most significant first, from a block's bytes (``offset`` in bytes)."""
    raw = data[offset: offset + 2 * point.width]
    if point.word_order == "little" and point.width > 1:
        raw = b"".join(raw[i: i + 2] for i in range(len(raw) - 2, -2, -2))
    return raw


def decoder(point: Point) -> Callable[[bytes, int], float | None]:
    """A function of (block bytes, byte offset) giving the point's value, or None when it is not available.

    Values carry the digits the meter has, not binary noise: a float32 becomes its shortest decimal that reads back
    as the same float32 (230.1, not 230.100006103515625), and scaling keeps that many significant digits
    (2301 x 0.1 is 230.1, not 230.10000000000002).
    """
    unpack = _STRUCT[point.type].unpack
    scale, off, sentinels = point.scale, point.offset, point.not_available
    is_f32 = point.type == "float32"
    exact = scale == 1 and off == 0

    def decode(data: bytes, offset: int) -> float | None:
        raw = word_bytes(point, data, offset)
        if sentinels and int.from_bytes(raw, "big") in sentinels:
            return None
        value = float(unpack(raw)[0])
        if not math.isfinite(value):
            return None
        digits = 15
        if is_f32:
            value, digits = shortest_decimal(value)
        if not exact:
            value = float(f"{value * scale + off:.{digits}g}")
        return value

    return decode


#: A SunSpec scale factor that is not implemented; and the range the specification allows.
SF_NOT_IMPLEMENTED = -0x8000
SF_RANGE = range(-10, 11)


def scaled_decoder(point: Point, sf_offset: int | None) -> Callable[[bytes, int], float | None]:
    """``decoder(point)``, times 10 to the power of the scale factor at ``sf_offset`` (bytes) of the same block.
    A scale factor outside the block, not implemented (0x8000) or outside -10..10 gives no value: never a value
    scaled by a guess."""
    base = decoder(point)
    if point.sf_address is None:
        return base
    if sf_offset is None:
        return lambda _data, _offset: None

    def decode(data: bytes, offset: int) -> float | None:
        sf = int.from_bytes(data[sf_offset: sf_offset + 2], "big", signed=True)
        if sf == SF_NOT_IMPLEMENTED or sf not in SF_RANGE:
            return None
        value = base(data, offset)
        if value is None:
            return None
        return float(f"{value * 10.0 ** sf:.12g}")

    return decode


def registers_to_bytes(words: Sequence[int]) -> bytes:
    return struct.pack(f">{len(words)}H", *words)

