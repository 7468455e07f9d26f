"""The batch form of the float32 shortest-decimal search gives, value for value, what the one-value search gives
(it is what the queue reads back and what the Modbus decoder yields: the two must agree), and a chunk decoded as a
whole gives what its readings decoded one by one give."""

from __future__ import annotations

import math
import random
import struct

from gateway.f32 import shortest_decimal, shortest_decimals
from gateway.quantities import ALL
from gateway.queue.codec import chunk_readings, decode_chunk, encode_chunk, encode_values, reading_of, split

_F = struct.Struct("<f")
EDGES = [0.0, -0.0, math.inf, -math.inf, math.nan, 3.4028234663852886e38, -3.4028234663852886e38, 1e-45,
         1.1754943508222875e-38, 230.1, 1800000.25, 16777217.0, 0.1, 99999.99, 123456.789]


def f32(x: float) -> float:
    return float(_F.unpack(_F.pack(x))[0])


def varied(rng: random.Random, n: int) -> list[float]:
    out = []
    for _ in range(n):
        k = rng.random()
        if k < 0.3:  # any bit pattern: subnormals, NaNs with payloads, huge and tiny values
            out.append(float(struct.unpack("<f", struct.pack("<I", rng.getrandbits(32)))[0]))
        elif k < 0.7:  # a meter's decimals, 0 to 4 places, up to the float32 range of integers and past it
            out.append(f32(round(rng.uniform(-2e8, 2e8) * 10 ** -rng.randint(0, 6), rng.randint(0, 4))))
        else:
            out.append(f32(rng.choice(EDGES)))
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))


def test_the_batch_search_finds_the_same_decimals_as_the_one_value_search() -> None:
    rng = random.Random(20261203)
    values = varied(rng, 60_000)
    for start in range(0, len(values), 37):
        part = values[start:start + 37]
        got = shortest_decimals(struct.pack(f"<{len(part)}f", *part))
        for x, g in zip(part, got, strict=True):
            assert same(g, shortest_decimal(x)[0]), (x, g, shortest_decimal(x))


def test_a_chunk_decoded_whole_equals_its_readings_decoded_one_by_one() -> None:
    rng = random.Random(7)
    quantities = ALL[:12]
    rows = []
    for i in range(60):
        values = dict(zip(quantities, varied(rng, len(quantities)), strict=True))
        if i % 7 == 0:  # one that no float32 holds: that quantity is float64 in the whole chunk
            values[quantities[3]] = 0.1 + 0.2
        rows.append((1_000 * i, i % 2, encode_values(values)))
    for part in split(rows):
        data = encode_chunk(part)
        first = part[0][0]
        expected = [reading_of("m", ts, flags, v) for ts, flags, v in decode_chunk(data, first)]
        for after, limit in ((-1, 10_000), (part[len(part) // 2][0], 10_000), (-1, 2)):
            got = chunk_readings("m", data, first, after, limit)
            want = [r for r in expected if r.ts_ms > after][:limit]
            assert [(r.ts_ms, r.clock_synced) for r in got] == [(r.ts_ms, r.clock_synced) for r in want]
            for g, w in zip(got, want, strict=True):
                assert g.values.keys() == w.values.keys()
                assert all(same(g.values[q], w.values[q]) for q in w.values)


def test_a_modbus_block_decodes_its_float32_points_at_once_as_one_by_one() -> None:
    """The block decoder's batch path (plain float32 points) gives what the per-point decoder gives, beside points
    it leaves to that decoder (other word order, scaled, with a "not available" pattern, other types)."""
    from gateway.platforms.modbus.plan import Block
    from gateway.platforms.modbus.registers import Point, decoder

    rng = random.Random(3)
    kinds = [dict(type="float32"), dict(type="float32"), dict(type="float32", word_order="little"),
             dict(type="float32", scale=0.1), dict(type="float32", not_available=frozenset({0xFFFFFFFF})),
             dict(type="int16"), dict(type="uint32", scale=0.01)]
    points, address = [], 0
    for i, q in enumerate(ALL[:40]):
        kind = kinds[i % len(kinds)] if i % 3 else kinds[0]
        p = Point(quantity=q, address=address, function="input", **kind)  # type: ignore[arg-type]
        points.append(p)
        address = p.end + (1 if i % 5 == 0 else 0)  # a gap now and then
    block = Block("input", 0, address, tuple(points))
    for _ in range(300):
        words = [rng.getrandbits(16) for _ in range(address)]
        if rng.random() < 0.3:  # meter-like values for the float32 points
            for p, v in zip(points, varied(rng, len(points)), strict=True):
                if p.type == "float32" and p.word_order == "big":
                    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
                    words[p.address:p.end] = [hi, lo]
        got = block.decode(words)
        data = struct.pack(f">{len(words)}H", *words)
        want = {p.quantity: v for p in points if (v := decoder(p)(data, 2 * p.address)) is not None}
        assert got.keys() == want.keys()
        assert all(same(got[q], want[q]) for q in want)
