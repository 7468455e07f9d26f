"""What became of one reading a sink tried to send. Outcomes are values, not exceptions."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    """The platform acknowledged the reading. ``sent`` is what went out (a packet), for status and checks."""

    sent: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    """Not delivered this time: try the same reading again later.

    ``after`` is the delay the platform asked for (Retry-After), if any; the forwarder never waits less.
    """

    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """The platform will never accept this reading: it goes to the dead letters and the meter's stream goes on."""

    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    """Not sent on purpose (the configuration says so, e.g. a template needs a quantity the reading lacks):
    the stream moves past it, and it is counted as skipped."""

    reason: str


Outcome = Delivered | Retry | Reject | Skip
DELIVERED = Delivered()

#: A late period reading (:class:`gateway.reading.Reading`) for a sink that cannot add or replace a past period: the
#: forwarder never hands it one.
SKIP_LATE = Skip("a late period reading (a bill corrected, or arriving after later ones): this platform keeps what"
                 " it was sent and cannot add a past period")
