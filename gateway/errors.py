"""The gateway's own exception types.

Library errors (sqlite3, httpx, paho, pymodbus, PyYAML, pydantic) are wrapped at the boundary into these,
so callers handle a handful of types and the CLI can turn each into a one-line message and an exit code::

    GatewayError                 base; str() is a one-line message meant for a person
    ├── ConfigError              the configuration file is wrong (exit 2); .problems holds every line
    ├── QueueError               the on-disk queue cannot be used
    │   └── QueueFullError       the disk (or the queue's own bound) refused a write
    ├── SinkError                a sink could not be set up (sending reports outcomes, never raises)
    ├── PeerError                a platform's server could not be reached or answered nonsense
    │   ├── HttpError            an HTTP request got no answer (connection refused, TLS, reset...)
    │   │   └── HttpTimeout      ... none within the timeout
    │   └── ApiError             a platform's REST API failed (no answer, a refused credential, an answer not
    │                            understood): the caller retries or reports it, never a traceback
    └── ModbusError              a Modbus read gave no usable answer; .kind names why, for counters and logs
        ├── ModbusTimeout        no answer within the bus timeout (a dead meter, a CRC error, a wrong unit id)
        ├── ModbusExceptionReply the meter answered with a Modbus exception; .code (1-4, ...)
        ├── ModbusBadAnswer      an answer that does not fit the request (too few registers, wrong unit)
        └── ModbusBusError       the bus cannot be used: port missing or busy, connection refused or dropped
"""

from __future__ import annotations

from typing import ClassVar


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


class PeerError(GatewayError):
    """A platform's server could not be reached or answered nonsense; ``str()`` is a line fit for a log (no
    credential, no request body)."""


class HttpError(PeerError):
    """The request got no HTTP answer. ``str()`` says why."""


class HttpTimeout(HttpError):
    pass


class ApiError(PeerError):
    """A platform's REST API could not be reached or answered nonsense."""


class ModbusError(GatewayError):
    kind = "error"


class ModbusTimeout(ModbusError):
    kind = "timeout"


class ModbusExceptionReply(ModbusError):
    kind = "exception"

    NAMES: ClassVar[dict[int, str]] = {
        1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "device failure",
        5: "acknowledge", 6: "device busy", 10: "gateway path unavailable", 11: "gateway target did not answer",
    }

    def __init__(self, code: int, what: str) -> None:
        self.code = code
        super().__init__(f"{what}: exception {code} ({self.NAMES.get(code, 'unknown')})")


class ModbusBadAnswer(ModbusError):
    kind = "bad_answer"


class ModbusBusError(ModbusError):
    kind = "bus"
