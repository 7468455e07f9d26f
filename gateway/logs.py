"""Logging with structlog: JSON lines when stderr is not a terminal (journald, docker), colour on a terminal.

Every event passes :class:`Redactor` last before rendering: any configured secret found in any value is replaced
by ``***``, so a secret that slips into an exception message from a library still never reaches a log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

LEVELS = ("debug", "info", "warning", "error")


class Redactor:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()

    def set(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole; very short ones would hide ordinary text.
        self.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = self.scrub(value)
            elif not isinstance(value, int | float | bool | type(None)):
                text = str(value)
                scrubbed = self.scrub(text)
                if scrubbed != text:
                    event[key] = scrubbed
        return event


REDACTOR = Redactor()


class _Writer:
    """Writes each rendered line to the stream (``sys.stderr`` as it is at the time of writing, by default).

    A log line that cannot be written (stream closed, pipe gone) is dropped: logging must never stop the work.
    """

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream

    def msg(self, message: str) -> None:
        stream = self._stream or sys.stderr
        try:
            stream.write(message + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    if fmt == "auto":
        try:
            fmt = "console" if out.isatty() else "json"
        except ValueError:
            fmt = "json"
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [structlog.processors.dict_tracebacks, REDACTOR, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.format_exc_info, REDACTOR, structlog.dev.ConsoleRenderer(colors=True)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *args: _Writer(stream),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: show their warnings, in the same stream.
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s", force=True)
