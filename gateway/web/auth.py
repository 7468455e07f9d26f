"""The page's password, sessions and the brake on guessing.

- **The password** is kept as an scrypt hash (``scrypt$<n>$<r>$<p>$<salt>$<hash>``, base64 parts), the form
  ``meter-gateway hash-password`` prints; a plain password in the configuration (better in ``password_file``) is
  hashed when the page starts and only the hash is kept. scrypt is in Python's standard library (OpenSSL's), and is
  made to be slow to guess on the hardware attackers have.
- **Sessions** are random 256-bit tokens in an ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` over HTTPS),
  forgotten after ``session_timeout`` without a request, and all forgotten at a restart. At most 64 live at once.
- **Guessing is slowed down**: after a wrong password, a client waits 1 s, then 2, 4... up to 60 s before its next
  try is even looked at (answered 429 with ``Retry-After``); all clients together get at most 10 wrong tries a
  minute, so spreading the guesses over many addresses does not help either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

_PREFIX = "scrypt"
_N, _R, _P = 2**14, 8, 1
#: Sessions alive at once: the oldest is forgotten past this.
MAX_SESSIONS = 64
#: Wrong passwords, all clients together, in a minute.
GLOBAL_FAILURES_PER_MINUTE = 10
MAX_DELAY = 60.0


def hash_password(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    b64 = base64.b64encode
    return f"{_PREFIX}${_N}${_R}${_P}${b64(salt).decode()}${b64(digest).decode()}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _PREFIX:
        return None
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except ValueError:
        return None
    if n < 2**10 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16 or len(digest) < 16:
        return None
    return n, r, p, salt, digest


def password_problem(value: str) -> str | None:
    """What is wrong with a configured password (a hash that does not parse, a password too short), or None."""
    if value.startswith(_PREFIX + "$"):
        return None if _parse(value) else "looks like a hash but is not one 'meter-gateway hash-password' prints"
    if len(value) < 8:
        return "at least 8 characters (better: the hash 'meter-gateway hash-password' prints, in password_file)"
    return None


class Password:
    """The configured password, as a hash only."""

    def __init__(self, configured: str) -> None:
        self.stored = configured if configured.startswith(_PREFIX + "$") else hash_password(configured)
        parsed = _parse(self.stored)
        if parsed is None:
            raise ValueError("not a password hash")
        self._parsed = parsed

    def check(self, attempt: str) -> bool:
        """Slow on purpose (tens of milliseconds): call it off the event loop."""
        n, r, p, salt, digest = self._parsed
        got = hashlib.scrypt(attempt.encode()[:1024], salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024,
                             dklen=len(digest))
        return hmac.compare_digest(got, digest)


@dataclass(slots=True)
class Session:
    token: str
    client: str
    created: float
    seen: float

    @property
    def label(self) -> str:
        """Names the session in log lines without giving away its token."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:8]


class Sessions:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._by_token: dict[str, Session] = {}
        self._clock = time.monotonic

    def new(self, client: str) -> Session:
        now = self._clock()
        self._expire(now)
        while len(self._by_token) >= MAX_SESSIONS:
            oldest = min(self._by_token.values(), key=lambda s: s.seen)
            del self._by_token[oldest.token]
        s = Session(secrets.token_urlsafe(32), client, now, now)
        self._by_token[s.token] = s
        return s

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        now = self._clock()
        self._expire(now)
        s = self._by_token.get(token)
        if s is not None:
            s.seen = now
        return s

    def end(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._by_token.items() if now - s.seen > self.timeout]:
            del self._by_token[token]


class Brake:
    """Per client, and for all clients together, how long before the next password is looked at."""

    def __init__(self) -> None:
        self._clients: dict[str, tuple[int, float]] = {}  # failures in a row, not before (monotonic)
        self._recent: list[float] = []

    def wait(self, client: str, now: float | None = None) -> float:
        """Seconds this client must still wait (0: go ahead)."""
        now = time.monotonic() if now is None else now
        self._recent = [t for t in self._recent if now - t < 60.0]
        until = self._clients.get(client, (0, 0.0))[1]
        if len(self._recent) >= GLOBAL_FAILURES_PER_MINUTE:
            until = max(until, self._recent[0] + 60.0)
        return max(0.0, until - now)

    def failed(self, client: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        n = self._clients.get(client, (0, 0.0))[0] + 1
        delay = min(MAX_DELAY, 2.0 ** (n - 1))
        self._clients[client] = (n, now + delay)
        self._recent.append(now)
        if len(self._clients) > 1024:  # a flood of addresses: forget the oldest
            for key in list(self._clients)[:512]:
                del self._clients[key]
        return delay

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)
