"""The ``meta`` table: small JSON records the daemon keeps in the queue file, written in its transactions.

``schema`` (the file's version), ``daemon`` (the last heartbeat: :mod:`gateway.heartbeat`), ``last_sent`` and
``last_sent_at`` (what each stream delivered last, for ``verify`` and the next start), ``queue_incidents`` (what
happened to the file in earlier runs: removed under a run, WAL lost after a crash).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any


def put(db: sqlite3.Connection, key: str, value: dict[str, object]) -> None:
    db.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value=excluded.value",
               (key, json.dumps(value)))


def get(db: sqlite3.Connection, key: str) -> dict[str, Any] | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return None if row is None else dict(json.loads(row[0]))


def incidents(db: sqlite3.Connection) -> list[Any]:
    items = (get(db, "queue_incidents") or {}).get("items")
    return list(items) if isinstance(items, list) else []


def last_sent(db: sqlite3.Connection) -> dict[str, Any]:
    """Per sink, what each of its streams delivered last (stream -> record), as the daemon last wrote it (every few
    minutes and at a stop). Files of earlier versions kept it inside the heartbeat."""
    kept = get(db, "last_sent")
    if kept is not None:
        return kept
    sinks = (get(db, "daemon") or {}).get("sinks")
    if not isinstance(sinks, dict):
        return {}
    return {name: h["streams"] for name, h in sinks.items()
            if isinstance(h, dict) and isinstance(h.get("streams"), dict)}
