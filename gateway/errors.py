"""The gateway's own exception types.

Library errors (sqlite3, httpx, paho, pymodbus, PyYAML, pydantic) are wrapped at the boundary into these,
so callers handle a handful of types and the CLI can turn each into a one-line message and an exit code::

    GatewayError                 base; str() is a one-line message meant for a person
    ├── ConfigError              the configuration file is wrong (exit 2); .problems holds every line
    ├── QueueError               the on-disk queue cannot be used
    │   └── QueueFullError       the disk (or the queue's own bound) refused a write
    └── SinkError                a sink could not be set up (sending reports outcomes, never raises)
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of all errors the gateway raises on purpose."""


class ConfigError(GatewayError):
    """One or more problems in a configuration file, each a line ``FILE:LINE: key.path: message``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class QueueError(GatewayError):
    """The on-disk queue failed in a way the caller must know about."""


class QueueFullError(QueueError):
    """The file system is full (SQLITE_FULL) or the write would exceed the queue's bound."""


class SinkError(GatewayError):
    """A sink could not be created or started."""
