"""Request planning: a meter's registers merged into the fewest block reads.

Reading a register costs its two bytes on the wire; another request costs its frame, the answer's frame, the
silences between frames and the meter's turnaround. ``max_gap`` says what one request is worth in registers: a gap
of up to ``max_gap`` unused registers is read across rather than paying for another request. Within that rule the
plan is the cheapest there is (dynamic programming over the registers sorted by address; at most 125 registers
per request, one function code per request).

Meters are not all alike: some answer "illegal data address" to a read that spans registers they do not have.
:class:`Planner` then splits that block (first at its gaps, then register by register), remembers the split for
as long as the process runs, and leaves out a single register the meter refuses.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gateway.modbus.registers import MAX_REGISTERS, Point, decoder, registers_to_bytes
from gateway.quantities import Quantity


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
        # Built once per block (a plan lives as long as its meter's poller), used at every poll.
        return tuple((p.quantity, decoder(p), 2 * (p.address - self.address)) for p in self.points)

    def decode(self, words: Sequence[int]) -> dict[Quantity, float]:
        """Values of the block's points from the words answered; a value not available is left out."""
        data = registers_to_bytes(words)
        out: dict[Quantity, float] = {}
        for quantity, dec, offset in self._decoders:
            value = dec(data, offset)
            if value is not None:
                out[quantity] = value
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


@dataclass
class Planner:
    """A meter's plan, and what its answers taught: splits made and registers the meter does not have."""

    points: tuple[Point, ...]
    max_gap: int
    barriers: set[tuple[str, int]] = field(default_factory=set)
    unsupported: set[Point] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._blocks: list[Block] | None = None

    @property
    def blocks(self) -> list[Block]:
        if self._blocks is None:
            self._blocks = self._plan(self.points)
        return self._blocks

    def _plan(self, points: Iterable[Point]) -> list[Block]:
        return plan([p for p in points if p not in self.unsupported], self.max_gap, frozenset(self.barriers))

    def split(self, block: Block) -> tuple[str, list[Block]]:
        """After the meter refused ``block``: what was done (for the log) and the blocks that now read its points."""
        what = self._refuse(block)
        return what, self._plan(block.points)

    def _refuse(self, block: Block) -> str:
        """The meter answered "illegal data address" (or "illegal value") to ``block``: split it, or drop its point.

        Returns what was done, for the log.
        """
        self._blocks = None
        pts = sorted(block.points, key=lambda p: p.address)
        if len({p.address for p in pts}) == 1:
            self.unsupported.update(pts)
            return "register left out: the meter does not have it"
        gaps = [b for a, b in itertools.pairwise(pts) if b.address > a.end]
        if gaps:
            self.barriers.update((b.function, b.address) for b in gaps)
            return f"read split at its {len(gaps)} gap(s)"
        # Contiguous, yet refused: some meters refuse reads that cut across their own record boundaries.
        self.barriers.update((p.function, p.address) for p in pts[1:])
        return "read split register by register"
