"""Where a running gateway's queue writes go: WAL frames per commit, by table.

Follows the queue file's write-ahead log while the gateway runs: every frame is one page of 4 KB written (and later
copied into the database by a checkpoint). Frames are attributed to the table or index that owns the page (SQLite's
``dbstat``, re-read once a second; page 1 is the file header, pages no table owns are the free list).

    python tests/bench/wal_pages.py /var/lib/meter-gateway/queue.db --seconds 30

The footprint benchmark runs it with ``--pages``. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import struct
import time
from collections import Counter
from pathlib import Path

_HEADER = struct.Struct(">IIIIIIII")  # magic, version, page size, checkpoint seq, salt1, salt2, cksum1, cksum2
_FRAME = struct.Struct(">IIIIII")  # page, db size after commit (0: not a commit), salt1, salt2, cksum1, cksum2


def owners(db: Path) -> dict[int, str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        return {int(p): str(n) for n, p in c.execute("SELECT name, pageno FROM dbstat")}


class WalFollower:
    """Reads the frames appended to a WAL since the last call (a new WAL generation starts over at its header)."""

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.salts: tuple[int, int] | None = None
        self.offset = 0
        self.page_size = 4096

    def frames(self) -> list[tuple[int, bool]]:
        """(page, commit) of each new frame."""
        try:
            data = self.wal.read_bytes()
        except FileNotFoundError:
            return []
        if len(data) < _HEADER.size:
            return []
        head = _HEADER.unpack_from(data)
        self.page_size = head[2]
        salts = (head[4], head[5])
        if salts != self.salts:
            self.salts, self.offset = salts, _HEADER.size
        out = []
        size = _FRAME.size + self.page_size
        while self.offset + size <= len(data):
            page, commit, s1, s2, _, _ = _FRAME.unpack_from(data, self.offset)
            if (s1, s2) != salts:
                break  # an old frame of the previous generation: the end of this one
            out.append((page, commit != 0))
            self.offset += size
        return out


def follow(db: Path, seconds: float) -> dict[str, object]:
    wal = WalFollower(Path(f"{db}-wal"))
    wal.frames()  # start from now
    by_owner: Counter[str] = Counter()
    frames = commits = 0
    pages = owners(db)
    t0 = last_map = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.05)
        if time.monotonic() - last_map > 1.0:
            pages, last_map = owners(db), time.monotonic()
        for page, commit in wal.frames():
            frames += 1
            commits += commit
            by_owner["(header)" if page == 1 else pages.get(page, "(free list)")] += 1
    elapsed = time.monotonic() - t0
    return {
        "seconds": round(elapsed, 1), "commits_per_s": round(commits / elapsed, 2),
        "frames_per_s": round(frames / elapsed, 2),
        "frames_per_commit": round(frames / commits, 2) if commits else None,
        "bytes_per_s": round(frames * (wal.page_size + _FRAME.size) / elapsed),
        "per_commit_by_owner": {k: round(v / max(commits, 1), 2) for k, v in by_owner.most_common()},
    }


def print_report(r: dict[str, object]) -> None:
    print(f"  WAL: {r['commits_per_s']} commits/s, {r['frames_per_commit']} pages per commit,"
          f" {r['bytes_per_s']} bytes/s (before the checkpoint copies them into the database)")
    per = r["per_commit_by_owner"]
    assert isinstance(per, dict)
    for owner, n in per.items():
        print(f"    {owner:<28} {n:>6} pages per commit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("db", type=Path)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    r = follow(args.db, args.seconds)
    print_report(r)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
