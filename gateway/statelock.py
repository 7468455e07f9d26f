"""One daemon per state directory: ``run`` takes an exclusive lock on ``state_dir/lock`` before it opens the queue.

Two daemons on one queue would both read the meters and both deliver (every packet twice at the platform). The lock
is an ``flock`` on a file holding the owner's PID: the kernel releases it when the process ends, however it ends
(SIGKILL, a power cut), so there is no stale lock to clean up. Commands that only read (``status``, ``deadletter
list``) do not take it; commands that rewrite the queue's history (``queue future --remove``) need it free.

Taking the lock is also the first write into ``state_dir``: a read-only file system, a full disk or missing
permissions are reported here in a technician's words, before SQLite would say "unable to open database file".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from gateway.errors import GatewayError

LOCK_NAME = "lock"


def writable_problem(path: Path, e: OSError) -> str:
    """What an OSError on ``path`` in the state directory means for a technician, and what to do."""
    where = path.parent if path.suffix or path.name == LOCK_NAME else path
    if e.errno == errno.EROFS:
        return (f"the file system holding {where} is read-only (mounted read-only, or an SD card the kernel"
                " remounted read-only after errors: check 'dmesg' and 'mount')")
    if e.errno == errno.ENOSPC:
        return f"the disk holding {where} is full: free space there ('df -h {where}')"
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"no permission to write in {where} (it must belong to the service's user: 'sudo chown -R"
                f" meter-gateway: {where}')")
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"state_dir {where} is not a directory (a file of that name is in the way)"
    return f"cannot write in {where}: {e.strerror or e}"


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise GatewayError naming the process that holds it (or why the directory is
        unusable)."""
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise GatewayError(writable_problem(self.path, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"pid {pid}" if pid else "another process"
            raise GatewayError(f"another meter-gateway ({who}) already runs on {self.state_dir}: stop it first"
                               " ('systemctl stop meter-gateway'), or give this one its own state_dir") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            os.close(fd)
            raise GatewayError(writable_problem(self.path, e)) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    return None
