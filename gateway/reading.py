"""A reading: one meter, one instant, a set of quantities.

The queue stores readings in a compact binary form: a 64-bit mask of present quantities followed by one float per
present quantity, in code order. Each value is a float32 when it survives the round trip exactly, a float64
otherwise (bit 63 of the mask says a second mask follows, of the float64 ones). A float32 reads back as its shortest
decimal, the way the Modbus decoder gives a meter's float32 register (230.1, not 230.100006103515625), so what a
meter sends takes four bytes a value: a three-phase reading of 35 values takes 156 bytes instead of 288 (the queue
keeps the masks once per chunk of readings), and decoding needs no parser.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from gateway.quantities import ALL, CODE, Quantity

_MASK = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Reading:
    """What a meter said at one instant.

    ``ts_ms`` is UTC milliseconds since the epoch. ``clock_synced`` tells whether the system clock was trusted when
    the reading was taken; a reading taken before is held in the queue and re-stamped from ``mono_ms`` (the
    monotonic clock then) once it is (:mod:`gateway.timekeeper`).
    """

    meter: str
    ts_ms: int
    values: Mapping[Quantity, float]
    clock_synced: bool = True
    mono_ms: int | None = None

    def __post_init__(self) -> None:
        values = self.values
        if not all(type(q) is Quantity for q in values):
            raise TypeError(f"{self.meter}: keys must be Quantity members, got {list(values)}")
        if not all(map(math.isfinite, values.values())):
            bad = {q.value: v for q, v in values.items() if not math.isfinite(v)}
            raise ValueError(f"{self.meter}: {bad}: only finite values enter a reading")

    @classmethod
    def trusted(cls, meter: str, ts_ms: int, values: dict[Quantity, float], clock_synced: bool) -> Reading:
        """A reading read back from the queue: it was checked when it went in, so skip the checks."""
        r = object.__new__(cls)
        object.__setattr__(r, "meter", meter)
        object.__setattr__(r, "ts_ms", ts_ms)
        object.__setattr__(r, "values", values)
        object.__setattr__(r, "clock_synced", clock_synced)
        object.__setattr__(r, "mono_ms", None)
        return r

    @property
    def timestamp(self) -> datetime:
        return datetime.fromtimestamp(self.ts_ms / 1000, tz=UTC)

    def to_json_dict(self) -> dict[str, object]:
        return {
            "meter": self.meter,
            "ts": iso_utc(self.ts_ms),
            "ts_ms": self.ts_ms,
            "clock_synced": self.clock_synced,
            "values": {q.value: v for q, v in sorted(self.values.items(), key=lambda kv: CODE[kv[0]])},
        }


def json_lines(readings: Iterable[Reading]) -> str:
    """One compact JSON object per reading, each on its own line (the file and stdout sinks' format)."""
    return "".join(json.dumps(r.to_json_dict(), separators=(",", ":")) + "\n" for r in readings)


def local_iso(ts_ms: int, tz: ZoneInfo) -> str:
    """``2016-02-10T21:45:31.070+11:00``: local time in ``tz``, milliseconds, offset (never ``Z``)."""
    dt = datetime.fromtimestamp(ts_ms // 1000, tz=UTC).replace(microsecond=ts_ms % 1000 * 1000).astimezone(tz)
    return dt.isoformat(timespec="milliseconds")


def iso_utc(ts_ms: int) -> str:
    """``2026-11-23T15:00:00.000Z``."""
    dt = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def encode_values(values: Mapping[Quantity, float]) -> bytes:
    return _encoder(tuple(values))(values)


#: Set in the mask when a second mask follows, of the quantities stored as float64; the others are float32, read
#: back as their shortest decimal (no quantity has code 63).
_MIXED = 1 << 63
_F32 = struct.Struct("<f")


_SPECS = tuple(f".{digits}g" for digits in range(6, 10))
#: Memos of the two checks below (a meter's values repeat: voltages, power factors, idle powers), emptied when full.
#: ``_short`` is keyed by the float32's bytes, as 0.0 and -0.0 are equal keys with different answers.
_short: dict[bytes, float] = {}
_fits: dict[float, bool] = {}
_MEMO_MAX = 1 << 16


def shortest_f32(x: float) -> float:
    """The shortest decimal that is the same float32 as ``x`` (``x`` itself when that takes more than 9 digits)."""
    raw = _F32.pack(x)
    short = _short.get(raw)
    if short is None:
        short = x
        for spec in _SPECS:
            candidate = float(format(x, spec))
            if _F32.pack(candidate) == raw:
                short = candidate
                break
        if len(_short) >= _MEMO_MAX:
            _short.clear()
        _short[raw] = short
    return short


def _fits_f32(x: float) -> bool:
    fits = _fits.get(x)  # NaN is never found (nor equal to itself): float64 keeps it
    if fits is None:
        try:
            fits = shortest_f32(_F32.unpack(_F32.pack(x))[0]) == x
        except OverflowError:
            fits = False
        if len(_fits) >= _MEMO_MAX:
            _fits.clear()
        _fits[x] = fits
    return fits


@functools.lru_cache(maxsize=1024)
def _encoder(keys: tuple[Quantity, ...]) -> Callable[[Mapping[Quantity, float]], bytes]:
    # A meter sends the same quantities in the same order every time: build its encoder once.
    mask = 0
    for q in keys:
        mask |= 1 << CODE[q]
    order = _present(mask)
    prefix = _MASK.pack(mask)
    if not order:
        return lambda values: prefix
    codes = [CODE[q] for q in order]
    getter = operator.itemgetter(*order)

    def encode(values: Mapping[Quantity, float]) -> bytes:
        got = getter(values)
        vals = got if len(order) > 1 else (got,)
        wide = 0
        for code, v in zip(codes, vals, strict=True):
            if not _fits_f32(v):
                wide |= 1 << code
        return _pack(mask, wide, vals)

    return encode


def _pack(mask: int, wide: int, ordered: Sequence[float]) -> bytes:
    """Values in code order, those of ``wide`` as float64. Nothing as float32: the plain all-float64 form, shorter
    by a mask (and the form of earlier versions)."""
    if wide == mask:
        return _MASK.pack(mask) + _floats(len(ordered)).pack(*ordered)
    return _MASK.pack(mask | _MIXED) + _MASK.pack(wide) + _layout(mask, wide)[0].pack(*ordered)


def decode_values(blob: bytes) -> dict[Quantity, float]:
    mask, wide = value_masks(blob)
    layout, present, narrow = _layout(mask, wide)
    values = list(layout.unpack_from(blob, layout_size(mask, wide)[0]))
    for i in narrow:
        values[i] = shortest_f32(values[i])
    return dict(zip(present, values, strict=True))


def value_masks(blob: bytes) -> tuple[int, int]:
    """(quantities present, those stored as float64) of encoded values."""
    (mask,) = _MASK.unpack_from(blob)
    if not mask & _MIXED:  # all float64 (also the form of earlier versions)
        return mask, mask
    return mask & ~_MIXED, _MASK.unpack_from(blob, _MASK.size)[0]


def with_wide(blob: bytes, wide: int) -> bytes:
    """The same values encoded with the float64 set ``wide`` (a superset of theirs: widening loses nothing)."""
    mask, had = value_masks(blob)
    if had == wide:
        return blob
    values = decode_values(blob)
    return _pack(mask, wide, [values[q] for q in _present(mask)])


def layout_size(mask: int, wide: int) -> tuple[int, int]:
    """(bytes of masks, bytes of floats) of values with these quantities present and float64."""
    return (_MASK.size if wide == mask else 2 * _MASK.size), _layout(mask, wide)[0].size


@functools.cache
def _layout(mask: int, wide: int) -> tuple[struct.Struct, tuple[Quantity, ...], tuple[int, ...]]:
    """The struct of the values of one mask and float64 mask, the quantities, and the float32 positions."""
    present = _present(mask)
    kinds = ["d" if wide >> CODE[q] & 1 else "f" for q in present]
    return struct.Struct("<" + "".join(kinds)), present, tuple(i for i, k in enumerate(kinds) if k == "f")


@functools.cache
def _present(mask: int) -> tuple[Quantity, ...]:
    # A meter sends the same set of quantities every time: a handful of masks, each computed once.
    return tuple(q for q in ALL if mask >> CODE[q] & 1)


@functools.cache
def _floats(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")
