"""``meter-gateway status``: what the queue file says, read while the daemon runs (WAL lets readers in)."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from gateway.config import GatewayConfig
from gateway.config.units import format_duration
from gateway.platforms.mqtt.formats import refusal_reasons
from gateway.queue import MeterCount, SinkCount, Snapshot
from gateway.queue.watch import peek_marker
from gateway.reading import iso_utc

#: A heartbeat older than this means the daemon is not running (it writes one every 10 s).
STALE_HEARTBEAT_MS = 30_000
#: Bills of a past period a cloud source queued as late period readings (shown apart from read errors).
LATE_PERIODS = ("corrected_bills", "late_bills")
#: Counts of a meter that are not read errors (``status`` leaves them out of those).
NOT_ERRORS = frozenset({"polls", "readings", "retries", "skipped_ticks", *LATE_PERIODS})
#: Of those, what the heartbeat keeps for ``status``.
SHOWN_APART = frozenset({"skipped_ticks", *LATE_PERIODS})
#: What ``status`` shows per sink (the rest of SinkCount is in the backlog or per bound).
_SINK_COUNTS = (SinkCount.DELIVERED, SinkCount.RETRIED, SinkCount.REJECTED, SinkCount.EVICTED, SinkCount.SKIPPED,
                SinkCount.RESENT)


def backlog_streams(config: GatewayConfig) -> dict[str, list[tuple[str, str]]]:
    """Per sink, its (stream, meter) pairs: what :meth:`gateway.queue.QueueStore.snapshot` reports on."""
    return {name: [(st.cursor, st.meter) for st in streams] for name, streams in config.sink_streams().items()}


def collect(queue: Snapshot, config: GatewayConfig, now: float | None = None,
            live: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything ``status``, ``/metrics`` and ``/health`` show, from the queue's snapshot (taken with
    :func:`backlog_streams`). ``live`` is the running daemon's own view (the heartbeat it would write now); without
    it, the last heartbeat in the queue file is used."""
    now_ms = int((time.time() if now is None else now) * 1000)
    daemon = live if live is not None else queue.daemon
    beat = daemon.get("heartbeat_ms")
    running = bool(daemon.get("running")) and isinstance(beat, int) and now_ms - beat < STALE_HEARTBEAT_MS
    sink_health = daemon.get("sinks") if running else {}
    sinks: dict[str, dict[str, Any]] = {}
    c = queue.counters
    streams = config.sink_streams()
    for name, backlog in queue.backlogs.items():
        oldest = backlog.oldest_ts_ms
        health = sink_health.get(name, {}) if isinstance(sink_health, dict) else {}
        sinks[name] = {
            **dataclasses.asdict(backlog),
            "oldest_age_s": None if oldest is None else max(0, (now_ms - oldest) / 1000),
            **{what.value: c.sink(name, what) for what in _SINK_COUNTS},
            "failing": bool(health.get("failing")) if isinstance(health, dict) else False,
            "last_error": health.get("last_error") if isinstance(health, dict) else None,
            "failing_since_ms": health.get("failing_since_ms") if isinstance(health, dict) else None,
            # Readings a stream holds on purpose (one aggregated reading per interval): this long at most.
            "holds_s": max((st.interval or 0.0 for st in streams.get(name, [])), default=0.0),
        }
    meter_rows: dict[str, dict[str, Any]] = {}
    meter_health = daemon.get("meters") if running else {}
    accepted = daemon.get("accepted") if running else {}
    future_at = daemon.get("future_at") if running else {}
    for meter in config.meters:
        name = meter.name
        last = queue.last_ts.get(name, -1)
        health = meter_health.get(name) if isinstance(meter_health, dict) else None
        counts = health.get("counts", {}) if isinstance(health, dict) else {}
        meter_rows[name] = {
            "last_reading_ms": last if last >= 0 else None,
            "bus": getattr(meter, "bus", None),
            # The account on a vendor's cloud the meter is read from (Intellimeter...).
            "cloud": getattr(meter, "cloud", None),
            # Readings confirmed into the queue since the daemon started.
            "readings": accepted.get(name, 0) if isinstance(accepted, dict) else 0,
            # held, restamped, unstampable, held_evicted, refused, future (refused as stamped further ahead of the
            # clock than future_tolerance), dropped_write_failed: see gateway/queue/counters.py
            **{what.value: c.meter(name, what) for what in MeterCount},
            "future_last_ms": future_at.get(name) if isinstance(future_at, dict) else None,
            # Read health, as the running daemon saw it (Modbus meters): failed reads per kind since it started.
            "failing": bool(health.get("failing")) if isinstance(health, dict) else False,
            "last_problem": health.get("last_problem") if isinstance(health, dict) else None,
            "read_errors": {k: v for k, v in counts.items() if k not in NOT_ERRORS},
            # Bills of a past period queued as late period readings since it started (corrected, or late).
            "late_periods": {k: counts[k] for k in LATE_PERIODS if counts.get(k)},
            # Ticks of the meter's interval with no reading, because the poll before was still running.
            "skipped_ticks": counts.get("skipped_ticks", 0),
            "skipped_last_ms": health.get("skipped_at_ms") if isinstance(health, dict) else None,
            # Quantities of its profile the meter refuses for good (learned from its answers, asked again hourly).
            "left_out": health.get("left_out") or [] if isinstance(health, dict) else [],
            # How long its answers take (Modbus): median and 99th percentile of the last 200, and its timeout, in ms.
            "answer_ms": health.get("answer_ms") if isinstance(health, dict) else None,
            # What a SunSpec device said it is (manufacturer, model, version, serial; its models).
            "device": health.get("device") if isinstance(health, dict) else None,
        }
    subscriptions = daemon.get("subscriptions") if running else {}
    tasks = daemon.get("tasks") if running else {}
    clock = daemon.get("clock") if running else None
    if isinstance(clock, dict) and not clock.get("trusted") and isinstance(beat, int):
        # As of now, not as of the heartbeat (written every 10 s).
        clock = {**clock, "unsynced_s": round((clock.get("unsynced_s") or 0) + (now_ms - beat) / 1000, 1)}
    return {
        "clock": clock if isinstance(clock, dict) else None,
        "held": queue.held,
        "subscriptions": subscriptions if isinstance(subscriptions, dict) else {},
        # Background tasks that failed and were restarted since the daemon started (a source, a stream...).
        "tasks": tasks if isinstance(tasks, dict) else {},
        "daemon": {"running": running, **{k: daemon.get(k) for k in ("pid", "version", "started_ms", "heartbeat_ms")}},
        # The fleet broker (fleet:): connected or not, and why not.
        "fleet": daemon.get("fleet") if running and isinstance(daemon.get("fleet"), dict) else None,
        "queue": {"path": str(queue.path), "bytes": queue.used_bytes, "max_bytes": config.queue.max_size,
                  # The file was removed (or replaced) under the running daemon: no reading is accepted.
                  "gone": queue.gone or peek_marker(queue.path.parent),
                  # What happened to the file in earlier runs (removed under a run, WAL lost after a crash).
                  "incidents": queue.incidents},
        "sinks": sinks,
        "meters": meter_rows,
    }


def _fleet(report: dict[str, Any]) -> list[str]:
    f = report.get("fleet")
    if not isinstance(f, dict):
        return []
    if f.get("connected"):
        return [f"fleet:  connected to {f['broker']} as {f['gateway_id']} ({f['published']} messages published)"]
    return [f"fleet:  NOT connected to {f['broker']}: {f.get('last_error') or 'connecting'} (presence and health are"
            " not published; readings are not affected)"]


def _clock(report: dict[str, Any]) -> str:
    clock, held = report.get("clock"), report.get("held", 0)
    held_text = f"; {held} readings held until it is (then re-stamped and sent)" if held else ""
    if not clock:
        return "unknown (daemon not running)" + held_text
    state = clock.get("state")
    if state == "unsynchronised" and not clock.get("trusted"):
        return f"NOT synchronised for {format_duration(round(clock.get('unsynced_s') or 0))}" + held_text
    text = {"synchronised": "synchronised", "trusted": "taken as right (cannot tell whether it is synchronised)",
            "ignored": "not checked (time_sync: ignore)",
            "unsynchronised": "synchronised once, no longer reported so"}.get(str(state), str(state))
    if clock.get("steps"):
        text += f"; stepped {clock['steps']} times, last by {clock.get('last_step_s')} s"
    return text + held_text


def _queue_trouble(report: dict[str, Any]) -> str:
    q = report["queue"]
    out = ""
    gone = q.get("gone")
    if gone:
        n = gone.get("abandoned")
        out += (f"\n        LOST: the queue file was {gone.get('what', 'removed')} while the gateway ran; no reading is"
                f" accepted until it restarts{f'; {n} undelivered readings in it are abandoned then' if n else ''}")
    for incident in q.get("incidents") or []:
        n = incident.get("abandoned")
        out += (f"\n        earlier: {incident.get('what')}"
                f"{f' ({n} readings abandoned)' if isinstance(n, int) else ''}")
    return out


def render(report: dict[str, Any], now: float | None = None) -> str:
    now_ms = int((time.time() if now is None else now) * 1000)

    def ago(ms: object) -> str:
        if not isinstance(ms, int):
            return "never"
        return f"{iso_utc(ms)} ({format_duration(max(0, round((now_ms - ms) / 1000)))} ago)"

    d = report["daemon"]
    lines = [
        f"daemon: running, pid {d['pid']}, version {d['version']}, last heartbeat {ago(d['heartbeat_ms'])}"
        if d["running"] else "daemon: not running (no recent heartbeat)",
        f"queue:  {report['queue']['path']} ({report['queue']['bytes'] / 1e6:.1f} MB used)" + _queue_trouble(report),
        f"clock:  {_clock(report)}",
        *_fleet(report),
        "",
        f"{'SINK':<20} {'DEPTH':>8} {'OLDEST':>10} {'DELIVERED':>10} {'RETRIED':>8} {'RESENT':>7} {'DEAD':>6}"
        f" {'EVICTED':>8}  LAST DELIVERY",
    ]
    for name, s in report["sinks"].items():
        oldest = "-" if s["oldest_age_s"] is None else format_duration(round(s["oldest_age_s"]))
        lines.append(
            f"{name:<20} {s['depth']:>8} {oldest:>10} {s['delivered']:>10} {s['retried']:>8} {s['resent']:>7}"
            f" {s['dead_letters']:>6} {s['evicted']:>8}  {ago(s['last_delivery_ms'])}"
        )
        if s["failing"]:
            lines.append(f"{'':<20} failing: {s['last_error']}")
    lines += ["", f"{'METER':<20} {'REFUSED':>8} {'DROPPED':>8} {'READ ERRORS':>12} {'ANSWER P50/P99':>15}"
                  "  LAST READING"]
    for name, m in report["meters"].items():
        errors = sum(m["read_errors"].values())
        answer = m.get("answer_ms")
        answers = f"{answer['p50']:g}/{answer['p99']:g} ms" if isinstance(answer, dict) else "-"
        lines.append(f"{name:<20} {m['refused']:>8} {m['dropped_write_failed']:>8} {errors:>12} {answers:>15}"
                     f"  {ago(m['last_reading_ms'])}")
        if isinstance(m.get("device"), dict) and m["device"].get("sunspec"):
            lines.append(f"{'':<20} {m['device']['sunspec']}")
        if isinstance(answer, dict) and answer["p99"] > answer["timeout"] / 2:
            lines.append(f"{'':<20} answers slowly: 1 answer in 100 takes {answer['p99']:g} ms or more, of a"
                         f" {answer['timeout']:g} ms timeout (raise the meter's timeout, or look at the wiring)")
        if m["failing"]:
            lines.append(f"{'':<20} not answering: {m['last_problem']}")
        if m["future"]:
            lines.append(f"{'':<20} {m['future']} readings refused: stamped in the future (last"
                         f" {ago(m['future_last_ms'])}); see 'meter-gateway future'")
        if m["left_out"]:
            lines.append(f"{'':<20} left out (the meter refuses them): {', '.join(m['left_out'])}")
        if m["skipped_ticks"]:
            last = f" (last {ago(m['skipped_last_ms'])})" if isinstance(m["skipped_last_ms"], int) else ""
            lines.append(f"{'':<20} {m['skipped_ticks']} ticks skipped since the start{last}: polls ran past the"
                         " next tick, those readings not taken")
    subs = report.get("subscriptions") or {}
    if subs:
        lines += ["", f"{'SUBSCRIPTION':<20} {'MESSAGES':>9} {'READINGS':>9} {'IGNORED':>8} {'REFUSED':>8}"
                      "  WHY REFUSED"]
        for name, c in subs.items():
            why = refusal_reasons(c)
            lines.append(f"{name:<20} {c.get('messages', 0):>9} {c.get('readings', 0):>9} {c.get('ignored', 0):>8}"
                         f" {c.get('bad', 0):>8}  {why}")
    tasks = report.get("tasks") or {}
    if tasks:
        lines += ["", f"{'BACKGROUND TASK':<40} {'RESTARTS':>8}  STATE"]
        for name, t in tasks.items():
            state = f"FAILING: {t.get('last_error')}" if t.get("failing") else f"running (last: {t.get('last_error')})"
            lines.append(f"{name:<40} {t.get('restarts', 0):>8}  {state}")
    return "\n".join(lines)
