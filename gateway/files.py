"""Small files the gateway keeps beside its queue (tokens, a platform's state, a remote configuration), written so
that a crash or a power cut leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write ``data`` to a file beside ``path``, fsync it, rename it over ``path`` and fsync the directory.
    ``mode`` (e.g. 0o600 for a secret) is set before the rename; without it the umask decides, as for ``open``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if mode is not None:
        os.chmod(tmp, mode)  # a file left by an earlier try keeps its old mode through O_CREAT
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
