"""``meter-gateway verify``: ask each platform what it received last, beside what the gateway delivered last."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME, load, open_beside
from gateway.config import GatewayConfig
from gateway.logs import REDACTOR
from gateway.reading import iso_utc

HELP = "ask each platform what it received last, beside what was sent"


def arguments(p: argparse.ArgumentParser) -> None:
    return None


def _last_sent_now(config: GatewayConfig) -> tuple[dict[str, Any], str]:
    """What each stream delivered last, and how fresh that is: asked of the running daemon (SIGUSR1 makes it write
    its live record at once), else its record from its last run."""
    import os
    import signal
    import time

    from gateway.status import STALE_HEARTBEAT_MS

    store = open_beside(config)
    if store is None:
        return {}, "nothing yet (no queue)"
    try:
        daemon = store.get_meta("daemon") or {}
        beat, pid = daemon.get("heartbeat_ms"), daemon.get("pid")
        running = bool(daemon.get("running")) and isinstance(beat, int) and isinstance(pid, int) \
            and time.time() * 1000 - beat < STALE_HEARTBEAT_MS
        asked_ms = int(time.time() * 1000)
        answered = False
        if running:
            assert isinstance(pid, int)
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                running = False
            deadline = time.monotonic() + 5.0
            while running and time.monotonic() < deadline:
                at = (store.get_meta("last_sent_at") or {}).get("ms")
                if isinstance(at, int) and at >= asked_ms:
                    answered = True
                    break
                time.sleep(0.1)
        at = (store.get_meta("last_sent_at") or {}).get("ms")
        sent = store.last_sent()
    finally:
        store.close()
    when = iso_utc(at) if isinstance(at, int) else "unknown time"
    age = f"{max(0, round(time.time() - at / 1000))} s old" if isinstance(at, int) else "age unknown"
    if answered:
        return sent, f"as of {when}, from the running daemon (live)"
    if running:
        return sent, f"as of {when} ({age}): the running daemon did not answer within 5 s (not this user's?)"
    return sent, f"as of {when} ({age}): the daemon is not running; its record from when it last ran"


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.all import SINKS, SOURCES

    config = load(args)
    all_ok = True
    for cloud in config.clouds:
        verify_cloud = SOURCES[cloud.type].verify
        if verify_cloud is not None:
            ok, lines = asyncio.run(verify_cloud(cloud, config))
            all_ok = all_ok and ok
            print(REDACTOR.scrub("\n".join([f"cloud {cloud.name} ({cloud.type}):", *(f"  {x}" for x in lines)])))
    checks = [(s, verify) for s in config.sinks if (verify := SINKS[s.type].verify) is not None]
    if not checks:
        print("no platform sink to verify in this configuration")
        return EXIT_OK if all_ok else EXIT_RUNTIME
    sent_by_sink, how = _last_sent_now(config)
    print(f"gateway's record of what it delivered last: {how}")
    for sink, verify in checks:
        ok, lines = asyncio.run(verify(sink, sent_by_sink.get(sink.name) or {}, config))
        all_ok = all_ok and ok
        print(REDACTOR.scrub("\n".join(lines)))
    return EXIT_OK if all_ok else EXIT_RUNTIME
