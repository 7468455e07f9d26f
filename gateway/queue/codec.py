"""How readings are laid out on disk: each reading's values, and a meter's readings of one commit as a chunk.

**Values.** A 64-bit mask of the quantities present, then one float per quantity, in code order
(:mod:`gateway.quantities`). Each value is a float32 when it survives the round trip exactly, a float64 otherwise
(bit 63 of the mask says a second mask follows, of the float64 ones). A float32 reads back as its shortest decimal,
the way the Modbus decoder gives a meter's float32 register (230.1, not 230.100006103515625), so what a meter sends
takes four bytes a value: a three-phase reading of 35 values takes 156 bytes instead of 288, and decoding needs no
parser.

**Periods.** A period reading's start (ms since the epoch) is stored as one more float64, first among the floats;
bit 62 of the mask says it is there (no quantity has code 62). A late period reading's end (its ``ts_ms`` is its
place in the queue) follows as another float64, said by bit 61. Readings with and without a start or an end never
share a chunk (their masks differ).

**Chunks.** A meter's readings of one transaction are one row: the masks once, then per reading its offset in ms
from the chunk's first reading (uint32), its flags (uint8) and its floats. Readings share a chunk only when they
carry the same quantities, and a chunk stays under :data:`CHUNK_MAX_BYTES` (one 1 KB page).
"""

from __future__ import annotations

import functools
import operator
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence

from gateway.f32 import shortest_decimal, shortest_of
from gateway.quantities import ALL, CODE, Quantity
from gateway.reading import Reading

#: The reading's time came from a trusted (synchronised) clock.
FLAG_CLOCK_SYNCED = 1
#: The reading was taken before the clock was trusted; its time was worked out from the monotonic clock.
FLAG_RESTAMPED = 2

#: A reading as the chunk codec sees it: (ts_ms, flags, encoded values).
Row = tuple[int, int, bytes]

#: Set in the mask of a period reading: its start comes first among the floats, as a float64.
_PERIOD = 1 << 62
#: Set in the mask of a late period reading: its end follows its start, as a float64.
_LATE = 1 << 61
assert len(ALL) < 61, "quantity codes must stay below the mask's flag bits"
#: The keys of a period's start and a late period's end among decoded values (not quantities: taken out before a
#: Reading is made).
_START = "period_start"
_END = "period_end"

_MASK = struct.Struct("<Q")


# ------------------------------------------------------------ values


def encode_values(values: Mapping[Quantity, float], start_ms: int | None = None,
                  end_ms: int | None = None) -> bytes:
    """A reading's values (and a period reading's start, a late period reading's end)."""
    blob = _encoder(tuple(values))(values)
    if start_ms is None:
        return blob
    mask, wide = value_masks(blob)
    layout = _layout(mask, wide)[0]
    raw = layout.unpack_from(blob, layout_size(mask, wide)[0])  # float32s as stored: packed again, the same bits
    if end_ms is None:
        return _pack(mask | _PERIOD, wide | _PERIOD, [float(start_ms), *raw])
    late = _PERIOD | _LATE
    return _pack(mask | late, wide | late, [float(start_ms), float(end_ms), *raw])


def encode_reading(r: Reading) -> bytes:
    return encode_values(r.values, r.start_ms, r.end_ms)


#: Set in the mask when a second mask follows, of the quantities stored as float64; the others are float32, read
#: back as their shortest decimal (no quantity has code 63).
_MIXED = 1 << 63
_F32 = struct.Struct("<f")


def shortest_f32(x: float) -> float:
    """The shortest decimal that is the same float32 as ``x`` (``x`` itself when that takes more than 9 digits)."""
    return shortest_decimal(x)[0]


def _fits_f32(x: float) -> bool:
    try:
        return shortest_f32(_F32.unpack(_F32.pack(x))[0]) == x  # NaN is never equal to itself: float64 keeps it
    except OverflowError:
        return False


def _wide_bits(codes: Sequence[int], vals: Sequence[float]) -> int:
    """The mask bits of the values a float32 would not give back as themselves. All values are checked at once
    (:func:`shortest_of`); only a reading with a value past the float32 range is checked one by one."""
    try:
        fits = [v == b for v, b in zip(vals, shortest_of(vals), strict=True)]  # NaN is never equal: float64
    except OverflowError:
        fits = [_fits_f32(v) for v in vals]
    wide = 0
    for code, ok in zip(codes, fits, strict=True):
        if not ok:
            wide |= 1 << code
    return wide


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
        return _pack(mask, _wide_bits(codes, vals), vals)

    return encode


def _pack(mask: int, wide: int, ordered: Sequence[float]) -> bytes:
    """Values in code order, those of ``wide`` as float64. Nothing as float32: the plain all-float64 form, shorter
    by a mask (and the form of earlier versions)."""
    if wide == mask:
        return _MASK.pack(mask) + _floats(len(ordered)).pack(*ordered)
    return _MASK.pack(mask | _MIXED) + _MASK.pack(wide) + _layout(mask, wide)[0].pack(*ordered)


def decode_values(blob: bytes) -> dict[Quantity, float]:
    """A reading's values (without a period's start and end: :func:`decode_period`)."""
    return decode_period(blob)[0]


def decode_period(blob: bytes) -> tuple[dict[Quantity, float], int | None, int | None]:
    """A reading's values, its start if it is a period reading, its end if it is a late one."""
    values = _decode_all(blob)
    start = values.pop(_START, None)  # type: ignore[call-overload]
    end = values.pop(_END, None)  # type: ignore[call-overload]
    return values, None if start is None else int(start), None if end is None else int(end)


def _decode_all(blob: bytes) -> dict[Quantity, float]:
    mask, wide = value_masks(blob)
    layout, present, narrow = _layout(mask, wide)
    values = list(layout.unpack_from(blob, layout_size(mask, wide)[0]))
    _shorten(values, narrow, 1)
    return dict(zip(present, values, strict=True))


def _shorten(values: list[float], narrow: Sequence[int], readings: int) -> None:
    """Replace the float32 values (positions ``narrow`` in each of ``readings`` runs of equal length laid end to
    end) by their shortest decimals, all in one :func:`shortest_of`."""
    if not narrow:
        return
    if len(narrow) * readings == len(values):
        values[:] = shortest_of(values)
        return
    width = len(values) // readings
    at = [k * width + i for k in range(readings) for i in narrow]
    for i, v in zip(at, shortest_of([values[i] for i in at]), strict=True):
        values[i] = v


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
    values = _decode_all(blob)
    return _pack(mask, wide, [values[q] for q in _present(mask)])


def layout_size(mask: int, wide: int) -> tuple[int, int]:
    """(bytes of masks, bytes of floats) of values with these quantities present and float64."""
    return (_MASK.size if wide == mask else 2 * _MASK.size), _layout(mask, wide)[0].size


@functools.cache
def _layout(mask: int, wide: int) -> tuple[struct.Struct, tuple[Quantity, ...], tuple[int, ...]]:
    """The struct of the values of one mask and float64 mask, the quantities, and the float32 positions."""
    present = _present(mask)
    kinds = ["d" if q is _START or q is _END or wide >> CODE[q] & 1 else "f" for q in present]
    return struct.Struct("<" + "".join(kinds)), present, tuple(i for i, k in enumerate(kinds) if k == "f")


@functools.cache
def _present(mask: int) -> tuple[Quantity, ...]:
    """The keys of the floats, in order: a period's start first (see _START), a late period's end, then the
    quantities in code order."""
    # A meter sends the same set of quantities every time: a handful of masks, each computed once.
    start: tuple[Quantity, ...] = (_START,) if mask & _PERIOD else ()  # type: ignore[assignment]
    end: tuple[Quantity, ...] = (_END,) if mask & _LATE else ()  # type: ignore[assignment]
    return start + end + tuple(q for q in ALL if mask >> CODE[q] & 1)


@functools.cache
def _floats(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}d")


# ------------------------------------------------------------ chunks


#: A reading inside a chunk: milliseconds after the chunk's first reading, flags; then its values without their
#: masks, which the chunk holds once (a meter sends the same quantities every time; one that does not starts a
#: new chunk).
_RECORD = struct.Struct("<IB")

#: Largest chunk, in bytes. A row longer than about 990 bytes (with 1 KB pages) spills into overflow pages,
#: rewritten whole; within it, a page holds one chunk.
CHUNK_MAX_BYTES = 900


def split(rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
    """Consecutive runs of readings that can share a chunk: the same quantities, within CHUNK_MAX_BYTES and 2^32 ms,
    each run re-encoded with one set of float64 values (a value that does not fit a float32 in one reading, an
    energy total say, makes that quantity float64 in the whole chunk: a chunk holds its masks once)."""
    start, present, wide = 0, -1, 0
    for i, (ts, _, v) in enumerate(rows):
        mask, w = value_masks(v)
        union = wide | w
        if i > start:
            head, floats = layout_size(mask, union)
            size = head + (i + 1 - start) * (_RECORD.size + floats)
            if mask != present or size > CHUNK_MAX_BYTES or ts - rows[start][0] >= 2**32:
                yield widened(rows[start:i], wide)
                start, union = i, w
        present, wide = mask, union
    yield widened(rows[start:], wide)


def widened(rows: Sequence[Row], wide: int) -> Sequence[Row]:
    return [(ts, flags, with_wide(v, wide)) for ts, flags, v in rows]


def encode_chunk(rows: Sequence[Row]) -> bytes:
    """One chunk of readings made by :func:`split`, as (ts_ms, flags, encoded values)."""
    first, head = rows[0][0], layout_size(*value_masks(rows[0][2]))[0]
    return rows[0][2][:head] + b"".join(_RECORD.pack(ts - first, flags) + v[head:] for ts, flags, v in rows)


def decode_chunk(data: bytes, first_ts: int) -> Iterator[Row]:
    """(ts_ms, flags, encoded values) of each reading of a chunk, in order."""
    head, size = layout_size(*value_masks(data))
    masks = data[:head]
    pos, end = head, len(data)
    while pos < end:
        delta, flags = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        yield first_ts + delta, flags, masks + data[pos:pos + size]
        pos += size


def reading_of(meter: str, ts_ms: int, flags: int, values: bytes) -> Reading:
    decoded, start, end = decode_period(values)
    return Reading.trusted(meter, ts_ms, decoded, bool(flags & FLAG_CLOCK_SYNCED), start, end)


@functools.cache
def _records(mask: int, wide: int) -> struct.Struct:
    """A chunk's reading record with its values: offset, flags, then the floats (one unpack for a whole chunk)."""
    return struct.Struct(_RECORD.format + _layout(mask, wide)[0].format[1:])


def chunk_readings(meter: str, data: bytes, first_ts: int, after_ts: int, limit: int) -> list[Reading]:
    """The readings of a chunk after ``after_ts``, at most ``limit``, decoded together: the chunk's records in
    one unpack, its float32 values' shortest decimals in one :func:`shortest_of`."""
    mask, wide = value_masks(data)
    head = layout_size(mask, wide)[0]
    _, present, narrow = _layout(mask, wide)
    rows = [row for row in _records(mask, wide).iter_unpack(memoryview(data)[head:])
            if first_ts + row[0] > after_ts][:limit]
    if not rows:
        return []
    width = len(present)
    values = [v for row in rows for v in row[2:]]
    _shorten(values, narrow, len(rows))
    trusted = Reading.trusted
    if mask & _PERIOD:  # each reading's first float is its start; a late one's second is its end
        skip = 2 if mask & _LATE else 1
        return [trusted(meter, first_ts + row[0], dict(zip(present[skip:], values[k * width + skip:(k + 1) * width],
                                                            strict=True)),
                        bool(row[1] & FLAG_CLOCK_SYNCED), int(values[k * width]),
                        int(values[k * width + 1]) if skip == 2 else None)
                for k, row in enumerate(rows)]
    return [trusted(meter, first_ts + row[0], dict(zip(present, values[k * width:(k + 1) * width], strict=True)),
                    bool(row[1] & FLAG_CLOCK_SYNCED))
            for k, row in enumerate(rows)]
