"""Request planning: a meter's registers merged into the fewest block reads.

Reading a register costs its two bytes on the wire; another request costs its frame, the answer's frame, the
silences between frames and the meter's turnaround. ``max_gap`` says what one request is worth in registers: a gap
of up to ``max_gap`` unused registers is read across rather than paying for another request. Within that rule the
plan is the cheapest there is (dynamic programming over the registers sorted by address; at most 125 registers
per request, one function code per request).

Meters are not all alike: some answer "illegal data address" to a read that spans registers they do not have.
:class:`Planner` then splits that block (first at its gaps, then register by register) for the poll at hand, and
changes the plan only on evidence (see :class:`Planner`).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.f32 import shortest_decimals
from gateway.platforms.modbus.registers import MAX_REGISTERS, Point, registers_to_bytes, scaled_decoder
from gateway.quantities import Quantity


def _plain(p: Point) -> bool:
    """A float32 in the usual word order, unscaled, without a "not available" pattern: its value is the shortest
    decimal of its four bytes, or nothing when they are not a finite number."""
    return (p.type == "float32" and p.word_order == "big" and p.scale == 1 and p.offset == 0 and not p.not_available
            and p.sf_address is None)


@dataclass(frozen=True)
class Block:
    """One read request: ``count`` registers from ``address`` with one function code, and the points inside."""

    function: str
    address: int
    count: int
    points: tuple[Point, ...]

    @property
    def code(self) -> int:
        return self.points[0].code

    @property
    def used(self) -> int:
        """Registers in the block that carry a point (the rest is read across a gap)."""
        taken: set[int] = set()
        for p in self.points:
            taken.update(range(p.address, p.end))
        return len(taken)

    def describe(self) -> str:
        names = ", ".join(p.quantity.value for p in self.points)
        skipped = self.count - self.used
        gap = f"; {skipped} unused register{'s' if skipped != 1 else ''} read across" if skipped else ""
        n = len(self.points)
        return f"FC{self.code} 0x{self.address:04X} x{self.count} ({n} value{'s' if n != 1 else ''}{gap}): {names}"

    @functools.cached_property
    def _decoders(self) -> tuple[tuple[Quantity, Callable[[bytes, int], float | None], int], ...]:
        # Built once per block (a plan lives as long as its meter's poller), used at every poll; the plain float32
        # points are decoded all at once instead (_plain).
        return tuple((p.quantity, scaled_decoder(p, self._sf_offset(p)), 2 * (p.address - self.address))
                     for p in self.points if not _plain(p))

    def _sf_offset(self, p: Point) -> int | None:
        """The byte offset of the point's scale factor in this block (None: fixed scale, or not in the block)."""
        if p.sf_address is None or not self.address <= p.sf_address < self.address + self.count:
            return None
        return 2 * (p.sf_address - self.address)

    @functools.cached_property
    def _plain_points(self) -> tuple[tuple[Quantity, ...], tuple[int, ...]]:
        """The plain float32 points (most of an energy meter's map): quantities and byte offsets."""
        plain = [p for p in self.points if _plain(p)]
        return tuple(p.quantity for p in plain), tuple(2 * (p.address - self.address) for p in plain)

    def decode(self, words: Sequence[int]) -> dict[Quantity, float]:
        """Values of the block's points from the words answered; a value not available is left out."""
        data = registers_to_bytes(words)
        out: dict[Quantity, float] = {}
        quantities, offsets = self._plain_points
        if quantities:
            # Each value's four bytes, most significant first, turned around: one shortest-decimal search for all
            # (the same numbers as registers.decoder gives one by one: tests/test_f32.py).
            raw = b"".join([data[o:o + 4][::-1] for o in offsets])
            for quantity, value in zip(quantities, shortest_decimals(raw), strict=True):
                if math.isfinite(value):
                    out[quantity] = value
        for quantity, dec, offset in self._decoders:
            decoded = dec(data, offset)
            if decoded is not None:
                out[quantity] = decoded
        return out


def plan(
    points: Iterable[Point],
    max_gap: float,
    barriers: frozenset[tuple[str, int]] = frozenset(),
    max_count: int = MAX_REGISTERS,
) -> list[Block]:
    """The cheapest blocks for ``points``: requests cost ``max_gap + 0.5`` registers each, registers read cost one.

    ``barriers`` holds (function, address) pairs: no block may contain both the point at that address and a
    point before it.
    """
    blocks: list[Block] = []
    by_function: dict[str, list[Point]] = {}
    for p in points:
        by_function.setdefault(p.function, []).append(p)
    for function in sorted(by_function):
        pts = sorted(by_function[function], key=lambda p: (p.address, p.end))
        blocks += _plan_sorted(function, pts, max_gap + 0.5, barriers, max_count)
    return blocks


def _plan_sorted(
    function: str, pts: list[Point], overhead: float, barriers: frozenset[tuple[str, int]], max_count: int
) -> list[Block]:
    n = len(pts)
    best = [0.0] + [float("inf")] * n
    choice = [0] * (n + 1)
    for i in range(1, n + 1):
        end = 0
        # Blocks pts[j:i], j going down from i-1: the span only grows, so stop once it is too long.
        for j in range(i - 1, -1, -1):
            end = max(end, pts[j].end)
            span = end - pts[j].address
            if span > max_count:
                break
            cost = best[j] + overhead + span
            if cost < best[i]:
                best[i], choice[i] = cost, j
            if j and (function, pts[j].address) in barriers and pts[j - 1].address < pts[j].address:
                break
    out: list[Block] = []
    i = n
    while i > 0:
        j = choice[i]
        group = pts[j:i]
        start = group[0].address
        count = max(p.end for p in group) - start
        out.append(Block(function, start, count, tuple(group)))
        i = j
    return out[::-1]


def wire_bytes(blocks: Sequence[Block], framing: str = "rtu") -> int:
    """Bytes on the wire for one poll: each request and its answer, with RTU (address, CRC) or TCP (MBAP) framing.

    RTU request: unit, function, address(2), count(2), CRC(2) = 8; answer: unit, function, byte count, data, CRC(2).
    TCP: the 7-byte MBAP header replaces unit and CRC: request 12, answer 9 + data.
    """
    req, resp = (8, 5) if framing == "rtu" else (12, 9)
    return sum(req + resp + 2 * b.count for b in blocks)


#: Polls in a row a meter must refuse the same read (while answering others) before the plan changes for it ...
LEARN_STRIKES = 3
#: ... spread over at least this many seconds: a meter (or a gateway in front of it) busy for a few seconds
#: refuses reads it will answer again, and must not lose registers for it.
LEARN_AFTER_S = 60.0
#: What was learned is forgotten after this long and asked again (a meter's firmware updated, a refusal that was a
#: long hiccup); what refuses again is learned again at once.
RECHECK_S = 3600.0

#: Evidence about a meter's map: ("barrier", function, address) or ("unsupported", function, address).
Key = tuple[str, str, int]


@dataclass
class Planner:
    """A meter's plan, and what its answers taught: reads it refuses across record boundaries (split there) and
    registers it does not have (left out).

    A refused read is split and asked again at once, so no value waits; but the plan itself changes only with
    evidence: the same read refused in :data:`LEARN_STRIKES` polls in a row over at least :data:`LEARN_AFTER_S`
    seconds, while the meter answered its other reads. A meter that refuses everything teaches nothing (it is
    failing, and reported so). What was learned is asked again every :data:`RECHECK_S` seconds.
    """

    points: tuple[Point, ...]
    max_gap: int
    barriers: set[tuple[str, int]] = field(default_factory=set)
    unsupported: set[Point] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._blocks: list[Block] | None = None
        #: Evidence not yet acted on: key -> (polls in a row it was seen, monotonic time it was first seen).
        self._evidence: dict[Key, tuple[int, float]] = {}
        #: Keys learned once (after a recheck, one refusal learns them again).
        self._confirmed: set[Key] = set()
        self._learned_at: float | None = None

    @property
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            self._blocks = self._plan(self.points, frozenset(self.barriers))
        return self._blocks

    def _plan(self, points: Iterable[Point], barriers: frozenset[tuple[str, int]]) -> list[Block]:
        return plan([p for p in points if p not in self.unsupported], self.max_gap, barriers)

    def parts(self, block: Block) -> tuple[str, list[Block], list[Key]]:
        """After the meter refused ``block`` ("illegal data address" or "illegal value"): what to ask instead now
        (split at its gaps, else register by register; nothing for a single register), what was done (for the
        log) and the evidence the refusal is."""
        pts = sorted(block.points, key=lambda p: p.address)
        if len({p.address for p in pts}) == 1:
            return "register refused", [], [("unsupported", p.function, p.address) for p in pts]
        gaps = [b for a, b in itertools.pairwise(pts) if b.address > a.end]
        # Contiguous, yet refused: some meters refuse reads that cut across their own record boundaries.
        cut = gaps or pts[1:]
        what = f"read split at its {len(gaps)} gap(s)" if gaps else "read split register by register"
        barriers = {(p.function, p.address) for p in cut}
        return what, self._plan(block.points, frozenset(self.barriers | barriers)), [
            ("barrier", f, a) for f, a in sorted(barriers)]

    def observe(self, refused: Iterable[Key], now: float) -> list[str]:
        """After a poll in which the meter answered (some of) its reads: ``refused`` is the evidence of its
        refusals; what was not refused again is no evidence any more. Returns what the plan learned, for the
        log."""
        if self._learned_at is not None and now - self._learned_at >= RECHECK_S:
            self.barriers.clear()
            self.unsupported.clear()
            self._blocks, self._learned_at = None, None
        seen = {k for k in refused if not self._applied(k)}
        self._evidence = {k: v for k, v in self._evidence.items() if k in seen}
        learned: list[str] = []
        for key in sorted(seen):
            strikes, since = self._evidence.get(key, (0, now))
            strikes += 1
            if key in self._confirmed or (strikes >= LEARN_STRIKES and now - since >= LEARN_AFTER_S):
                learned.append(self._learn(key, now))
                self._evidence.pop(key, None)
            else:
                self._evidence[key] = (strikes, since)
        return learned

    def _applied(self, key: Key) -> bool:
        kind, function, address = key
        if kind == "barrier":
            return (function, address) in self.barriers
        return any(p.function == function and p.address == address for p in self.unsupported)

    def _learn(self, key: Key, now: float) -> str:
        kind, function, address = key
        self._confirmed.add(key)
        self._blocks = None
        if self._learned_at is None:
            self._learned_at = now
        if kind == "barrier":
            self.barriers.add((function, address))
            return f"reads split before {function} 0x{address:04X}"
        gone = [p for p in self.points if p.function == function and p.address == address]
        self.unsupported.update(gone)
        return f"{function} 0x{address:04X} left out ({', '.join(p.quantity.value for p in gone)})"

    @property
    def left_out(self) -> list[str]:
        """Quantities of the profile this meter does not give (registers it refuses), for ``status``."""
        return sorted({p.quantity.value for p in self.unsupported})
