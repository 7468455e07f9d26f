"""Logging with structlog: JSON lines when stderr is not a terminal (journald, docker), colour on a terminal.

Every event passes :class:`Redactor` last before rendering: any configured secret found in any value is replaced
by ``***``, so a secret that slips into an exception message from a library still never reaches a log.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import sys
from collections import deque
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO
from urllib.parse import quote

import structlog

#: Credentials in HTTP headers a peer may echo back (an error page listing the request's headers), whatever they
#: decode to: ``Authorization: Basic dXNlcjpwYXNz`` becomes ``Authorization: Basic ***``.
_AUTH_HEADER = re.compile(r"(?i)\b(basic|bearer|digest|token)(\s+|%20)[A-Za-z0-9+/=._~%-]{6,}")


def encoded_forms(secret: str) -> set[str]:
    """A secret as it may travel: plain, URL-encoded, JSON-escaped and in base64 (alone; a Basic-auth pair is
    given to the redactor whole, see :meth:`~gateway.config.common.SinkBase.secrets`)."""
    return {secret, quote(secret, safe=""), json.dumps(secret)[1:-1], base64.b64encode(secret.encode()).decode(),
            base64.b64encode(secret.encode()).decode().rstrip("=")}


class Redactor:
    def __init__(self) -> None:
        self.secrets: tuple[str, ...] = ()
        self._given: tuple[str, ...] = ()
        #: per owner: the credentials it was issued last, and those before
        self._issued: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def set(self, secrets: Iterable[str]) -> None:
        self._given = tuple(secrets)
        self._rebuild()

    def add(self, secrets: Iterable[str]) -> None:
        """More secrets than the configuration's: credentials a platform issued at run time (tokens)."""
        self._given = (*self._given, *secrets)
        self._rebuild()

    def issued(self, owner: str, secrets: Iterable[str]) -> None:
        """Credentials ``owner`` was issued now (a renewed token). They replace those it was issued the time before
        last, so that a token renewed every hour for months does not grow the list."""
        before = self._issued.get(owner, ((), ()))[0]
        self._issued[owner] = (tuple(s for s in secrets if s), before)
        self._rebuild()

    def _rebuild(self) -> None:
        secrets = [*self._given, *(s for now, before in self._issued.values() for s in (*now, *before))]
        # Longest first, so a secret containing another is replaced whole; very short ones would hide ordinary text.
        forms = {form for s in secrets for form in encoded_forms(s)}
        self.secrets = tuple(sorted({s for s in forms if len(s) >= 4}, key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` (from a peer, or an error that may quote one) with every known secret and every credential
        header replaced by ``***``: for what is logged and what is stored (``status``, dead letters)."""
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "***")
        return _AUTH_HEADER.sub(r"\1\2***", text)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
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


class LogRing:
    """The daemon's recent log lines, in memory, for the technician's page and its diagnostics bundle: bounded
    (``monitoring.page.log_lines``), each line scrubbed (it comes after :data:`REDACTOR`) and cut to 2,000
    characters. Every line gets a sequence number, so a page following the log asks for what came after the last one
    it has."""

    def __init__(self, size: int = 2000) -> None:
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0

    def resize(self, size: int) -> None:
        if size != self.lines.maxlen:
            self.lines = deque(self.lines, maxlen=size)

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        self.seq += 1
        fields = " ".join(f"{k}={_short(v)}" for k, v in event.items()
                          if k not in ("event", "level", "timestamp", "exception"))
        exc = event.get("exception")
        if exc:
            fields += f" exception={_short(exc)}"
        self.lines.append({"seq": self.seq, "ts": str(event.get("timestamp", "")), "level": str(event.get("level",
                           method)), "component": getattr(logger, "name", "") or "", "event": _short(event.get(
                           "event", "")), "fields": fields[:2000]})
        return event

    def since(self, after: int = 0, level: str | None = None, component: str | None = None,
              limit: int = 500) -> list[dict[str, Any]]:
        floor = logging.getLevelNamesMapping().get((level or "debug").upper(), 0)
        out = [ln for ln in self.lines if ln["seq"] > after
               and logging.getLevelNamesMapping().get(ln["level"].upper(), 0) >= floor
               and (not component or ln["component"].startswith(component))]
        return out[-limit:]


def _short(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= 1000 else text[:1000] + "..."


RING = LogRing()


class _Writer:
    """Writes each rendered line to the stream (``sys.stderr`` as it is at the time of writing, by default).

    A log line that cannot be written (stream closed, pipe gone) is dropped: logging must never stop the work.
    """

    def __init__(self, stream: TextIO | None, name: str = "") -> None:
        self._stream = stream
        #: The component (the name given to ``structlog.get_logger``), for the page's log filter.
        self.name = name

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
        processors += [structlog.processors.dict_tracebacks, REDACTOR, RING, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.processors.format_exc_info, REDACTOR, RING, structlog.dev.ConsoleRenderer(colors=True)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=lambda *args: _Writer(stream, str(args[0]) if args else ""),
        cache_logger_on_first_use=False,
    )
    # Libraries log through the standard library: show their warnings, in the same stream.
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s: %(message)s", force=True)
