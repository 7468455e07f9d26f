"""``meter-gateway fleet status``: every gateway on a fleet broker, one line each, from the retained states.

The broker is given with ``--broker`` (and ``--ca-file``, ``--username``, ``--password-file``), or taken from the
configuration's ``fleet:`` section. A gateway whose state is ``offline`` shows its meters as ``unknown``, whatever
they last said: a dead gateway cannot update them.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from pathlib import Path
from typing import Any

from gateway.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from gateway.errors import ConfigError

HELP = "every gateway on the fleet broker: online or offline, version, worst problem, backlog, clock"

SORTS = ("name", "state", "backlog", "problem")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status"])
    p.add_argument("--broker", help="HOST[:PORT] of the fleet broker (default: the configuration's fleet: section)")
    p.add_argument("--prefix", help="topic prefix (default: the configuration's, or meter-gateway)")
    p.add_argument("--ca-file", type=Path, help="CA certificates the broker's certificate is checked against")
    p.add_argument("--insecure", action="store_true", help="plain MQTT, no TLS (a local test broker only)")
    p.add_argument("--username")
    p.add_argument("--password-file", type=Path, help="a file holding only the password")
    p.add_argument("--sort", choices=SORTS, default="name")
    p.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    p.add_argument("--watch", action="store_true", help="go on: one line per gateway whose line changes")
    p.add_argument("--wait", type=float, default=2.0, help="seconds to gather the retained states (default 2)")


# ---------------------------------------------------------------- what the broker holds -> rows


MAX_METERS = 1000
MAX_GATEWAYS = 100_000


def _text(value: object, limit: int) -> str | None:
    """A short printable string, or None."""
    if not isinstance(value, str):
        return None
    return "".join(c if c.isprintable() else "?" for c in value[:limit]) or None


def _availability(value: object) -> str:
    return value if isinstance(value, str) and value in ("online", "offline", "unknown") else "unknown"


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


class Fleet:
    """The retained states, by gateway id."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.gateways: dict[str, dict[str, Any]] = {}

    def take(self, topic: str, payload: bytes) -> str | None:
        """One message; returns the gateway it concerns (None: not one of ours, or unreadable)."""
        if not topic.startswith(self.prefix + "/"):
            return None
        parts = topic[len(self.prefix) + 1:].split("/")
        if len(parts) < 2 or not parts[0] or (parts[0] not in self.gateways and len(self.gateways) >= MAX_GATEWAYS):
            return None
        gid, kind = parts[0], parts[1:]
        g = self.gateways.setdefault(gid, {"state": None, "health": None, "meters": {}})
        if kind == ["state"] or kind == ["health"]:
            try:
                value = json.loads(payload) if payload else None
            except ValueError:
                value = None
            g[kind[0]] = value if isinstance(value, dict) else None
        elif len(kind) == 3 and kind[0] == "meters" and kind[2] == "availability":
            if payload and (kind[1] in g["meters"] or len(g["meters"]) < MAX_METERS):
                g["meters"][kind[1]] = payload.decode(errors="replace")[:16]
            else:
                g["meters"].pop(kind[1], None)
        else:
            return None
        return gid

    def row(self, gid: str) -> dict[str, Any]:
        """One gateway's line. Whatever anyone published under the prefix is taken only as the type and length
        each field should have (a broker is shared; a message may not come from a gateway)."""
        g = self.gateways[gid]
        state, health = g["state"] or {}, g["health"] or {}
        online = state.get("state") == "online"
        listed = _dict(health.get("meters"))
        meters = {**{_text(m, 64): _availability(v.get("availability")) for m, v in list(listed.items())[:MAX_METERS]
                     if isinstance(v, dict)},
                  **{_text(m, 64): _availability(v) for m, v in list(g["meters"].items())[:MAX_METERS]}}
        if not online:
            meters = dict.fromkeys(meters, "unknown")
        clock = _dict(health.get("clock"))
        problems = _list(health.get("problems"))
        backlog = health.get("backlog")
        return {
            "gateway": _text(gid, 64),
            "state": state.get("state") if state.get("state") in ("online", "offline") else "unknown",
            "reason": _text(state.get("reason"), 16),
            # When it came online; when it went offline after a clean stop. After a crash only the broker knew.
            "since": _text(state.get("since"), 32) if online or state.get("reason") == "stopped" else None,
            "last_health": _text(health.get("ts"), 32),
            "version": _text(state.get("version"), 24) or _text(health.get("version"), 24),
            "worst": _text(health.get("worst"), 40) if online else None,
            "problems": [_text(p.get("detail"), 300) for p in problems[:20] if isinstance(p, dict)] if online else [],
            "backlog": backlog if isinstance(backlog, int) and not isinstance(backlog, bool) and backlog >= 0 else None,
            "clock": _text(clock.get("state"), 24) if online else None,
            "meters_online": sum(1 for v in meters.values() if v == "online"),
            "meters": meters,
        }

    def rows(self, sort: str = "name") -> list[dict[str, Any]]:
        rows = [self.row(gid) for gid in self.gateways if self.gateways[gid]["state"] or self.gateways[gid]["health"]]
        keys = {
            "name": lambda r: r["gateway"] or "",
            "state": lambda r: (r["state"] == "online", r["gateway"] or ""),
            "backlog": lambda r: (-(r["backlog"] or 0), r["gateway"] or ""),
            "problem": lambda r: (r["state"] == "online" and r["worst"] is None, r["worst"] or "", r["gateway"] or ""),
        }
        return sorted(rows, key=keys[sort])


def line(r: dict[str, Any]) -> str:
    if r["state"] == "online":
        state = f"online since {r['since'] or '?'}"
    elif r["state"] == "offline":
        when = r["since"] or (f"last health {r['last_health']}" if r["last_health"] else "?")
        state = f"OFFLINE ({r['reason'] or '?'}) {when}"
    else:
        state = "unknown"
    meters = f"{r['meters_online']}/{len(r['meters'])} meters online" if r["state"] == "online" else \
        f"{len(r['meters'])} meters unknown"
    backlog = "-" if r["backlog"] is None else str(r["backlog"])
    return (f"{r['gateway']:<24} {state:<44} {r['version'] or '-':<9} {r['worst'] or '-':<22} {backlog:>8}"
            f"  {r['clock'] or '-':<14} {meters}")


HEADER = f"{'GATEWAY':<24} {'STATE':<44} {'VERSION':<9} {'WORST PROBLEM':<22} {'BACKLOG':>8}  {'CLOCK':<14} METERS"


# ---------------------------------------------------------------- the command


def _host_port(text: str) -> tuple[str, str]:
    """``host``, ``host:port``, ``[v6 address]:port``."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError(f"--broker {text}: expected HOST or HOST:PORT")
    return host, port


def _connection(args: argparse.Namespace) -> dict[str, Any]:
    """host, port, tls, ca_file, username, password, prefix: from the flags, else the configuration."""
    if args.broker:
        host, port = _host_port(args.broker)
        password = None
        if args.password_file is not None:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        tls = not args.insecure
        return {"host": host, "port": int(port) if port else (8883 if tls else 1883), "tls": tls,
                "ca_file": args.ca_file, "username": args.username, "password": password,
                "prefix": args.prefix or "meter-gateway"}
    from gateway.cli.common import load

    config = load(args)
    f = config.fleet
    if f is None:
        raise ConfigError([f"{args.config}: fleet: not configured; give the broker with --broker HOST[:PORT]"])
    return {"host": f.host, "port": f.effective_port, "tls": f.tls, "ca_file": f.ca_file, "username": f.username,
            "password": f.password.get_secret_value() if f.password else None, "prefix": args.prefix or f.prefix}


def main(args: argparse.Namespace) -> int:
    from gateway.pahobridge import new_client

    try:
        conn = _connection(args)
    except (OSError, ValueError) as e:
        print(f"meter-gateway: fleet: {e}", file=sys.stderr)
        return EXIT_CONFIG
    fleet = Fleet(conn["prefix"])
    inbox: queue.Queue[tuple[str, bytes] | BaseException] = queue.Queue()
    client = new_client(f"meter-gateway-fleet-view-{int(time.time() * 1000) % 10**8}", clean=True, tls=conn["tls"],
                        ca_file=conn["ca_file"], username=conn["username"], password=conn["password"])

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if getattr(rc, "is_failure", False):
            inbox.put(ConnectionError(f"the broker refused the connection: {rc}"))
            return
        p = conn["prefix"]
        c.subscribe([(f"{p}/+/state", 1), (f"{p}/+/health", 1), (f"{p}/+/meters/+/availability", 1)])

    client.on_connect = on_connect
    client.on_message = lambda c, u, msg: inbox.put((msg.topic, bytes(msg.payload)))
    try:
        client.connect(conn["host"], conn["port"], keepalive=30)
    except OSError as e:
        print(f"meter-gateway: fleet: cannot reach {conn['host']}:{conn['port']}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    client.loop_start()
    try:
        deadline = time.monotonic() + max(0.2, args.wait)
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = inbox.get(timeout=left)
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                print(f"meter-gateway: fleet: {item}", file=sys.stderr)
                return EXIT_RUNTIME
            fleet.take(*item)
        rows = fleet.rows(args.sort)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(HEADER)
            for r in rows:
                print(line(r))
            if not rows:
                print(f"(no gateway under {conn['prefix']}/ on {conn['host']}:{conn['port']})")
        sys.stdout.flush()
        if not args.watch:
            return EXIT_OK
        shown = {r["gateway"]: json.dumps(r) if args.json else line(r) for r in rows}
        while True:
            item = inbox.get()
            if isinstance(item, BaseException):
                print(f"meter-gateway: fleet: {item}", file=sys.stderr)
                return EXIT_RUNTIME
            gid = fleet.take(*item)
            if gid is None or not (fleet.gateways[gid]["state"] or fleet.gateways[gid]["health"]):
                continue
            r = fleet.row(gid)
            text = json.dumps(r) if args.json else line(r)
            if shown.get(gid) != text:
                shown[gid] = text
                print(text if args.json else f"{time.strftime('%H:%M:%S')} {text}", flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        client.disconnect()
        client.loop_stop()
