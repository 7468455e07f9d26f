"""The queue file watched from outside: removed while the daemon runs, or its write-ahead log lost after a crash.

SQLite keeps writing into a file that was unlinked (``rm -r /var/lib/meter-gateway`` while the service runs):
every commit "works", and the next start finds no file and begins an empty queue. So, before each transaction, the
file at the queue's path must still be the file that was opened (same device and inode). When it is not, the queue
stops accepting readings (they would vanish at the next restart: they are counted as dropped), the backlog already
in the open file keeps being delivered, and the loss is said in the log, by ``status`` and ``/health``, and in a
marker file beside where the queue was (``queue-lost.json``), which the next start reports and counts.

A queue in WAL mode whose ``-wal`` file is missing although the last run did not stop cleanly (its
``queue.db.running`` flag is still there) has lost what was committed since the last checkpoint: reported the
same way at the next start (how many readings is unknown).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("gateway.queue")

MARKER = "queue-lost.json"


class FileWatch:
    def __init__(self, path: Path) -> None:
        self.path = path
        #: Present while a daemon has the queue open; left behind by a run that did not stop cleanly.
        self.running_flag = Path(f"{path}.running")
        self._identity: tuple[int, int] | None = None
        #: Set once the file is found gone: what happened, for status and /health.
        self.gone: dict[str, Any] | None = None

    def opened(self) -> None:
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self.gone = None

    def is_gone(self, undelivered: Callable[[], int] | None = None) -> bool:
        """True once the file at the path is not the one open (removed, or replaced by another). ``undelivered``
        counts what the open file still holds, for the log (asked only when the file is found gone)."""
        if self.gone is not None:
            return True
        if self._identity is None:
            return False
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                return False
            what = "replaced by another file"
        except FileNotFoundError:
            what = "removed"
        except OSError:
            return False  # cannot tell (a transient error): the next transaction looks again
        held: int | None = None
        if undelivered is not None:
            with contextlib.suppress(Exception):
                held = undelivered()
        self.gone = {"what": what, "at_ms": int(time.time() * 1000), "abandoned": held, "pid": os.getpid()}
        log.error(f"the queue file was {what} while the gateway ran: no reading is accepted any more (each is"
                  " counted as dropped); what it holds is still delivered, but a restart starts an empty queue",
                  path=str(self.path), undelivered=held)
        with contextlib.suppress(OSError):  # beside where the queue was, for the next start to report
            self.path.parent.mkdir(parents=True, exist_ok=True)
            (self.path.parent / MARKER).write_text(json.dumps({**self.gone, "path": str(self.path)}))
        return True


def wal_missing(path: Path) -> bool:
    """Before SQLite opens ``path``: the database is there but its write-ahead log is not."""
    return path.exists() and not Path(f"{path}-wal").exists()


def peek_marker(state_dir: Path) -> dict[str, Any] | None:
    """The marker of a queue file removed under a run, left in place (``status`` beside the daemon)."""
    try:
        record = json.loads((state_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def take_marker(state_dir: Path) -> dict[str, Any] | None:
    """The record a run left when its queue file was removed under it (and removes it: reported once)."""
    record = peek_marker(state_dir)
    with contextlib.suppress(OSError):
        (state_dir / MARKER).unlink()
    return record
