"""What needs a person: one evaluation of the status report, behind ``/health``, the container's health check (through
``status``) and the fleet's health document. Each problem is a ``check`` name, the figures behind it and a
``detail`` in plain words.
"""

from __future__ import annotations

import time
from typing import Any

from gateway import __version__
from gateway.config.models import MonitoringConfig
from gateway.forwarder.streams import AGGREGATE_GRACE

#: A meter whose last reading stamped in the future came this recently needs a person (its clock is wrong).
FUTURE_RECENT_S = 900.0


def _held_on_purpose(interval: float) -> float:
    """How old a reading may be that a stream holds on purpose: an interval stream keeps an interval's readings
    until it closes (and up to its grace after): twice that is not yet "behind"."""
    return 2 * interval + AGGREGATE_GRACE if interval else 0.0


def _all_failing(report: dict[str, Any], shared: str) -> list[tuple[str, list[str]]]:
    """Each bus (or cloud: ``shared``) none of whose meters answers, with its meters."""
    groups: dict[str, list[str]] = {}
    for name, m in report["meters"].items():
        if m.get(shared):
            groups.setdefault(m[shared], []).append(name)
    return [(key, meters) for key, meters in groups.items() if all(report["meters"][m]["failing"] for m in meters)]


def evaluate(report: dict[str, Any], config: MonitoringConfig, now: float | None = None) -> list[dict[str, Any]]:
    """What needs a person, one entry per problem (empty: healthy)."""
    now = time.time() if now is None else now
    problems: list[dict[str, Any]] = []
    daemon = report["daemon"]
    started = (daemon.get("started_ms") or now * 1000) / 1000
    for name, s in report["sinks"].items():
        last = s["last_delivery_ms"] / 1000 if isinstance(s["last_delivery_ms"], int) else started
        quiet = now - max(last, started)
        age = s["oldest_age_s"] or 0
        if s["depth"] and age > config.sink_stalled_after and quiet > config.sink_stalled_after:
            problems.append({
                "check": "sink_stalled", "sink": name, "depth": s["depth"], "quiet_s": round(quiet),
                "detail": f"nothing delivered for {round(quiet)} s while {s['depth']} readings wait"
                          + (f": {s['last_error']}" if s["last_error"] else ""),
            })
        elif s["depth"] and age > max(config.sink_behind_after, _held_on_purpose(s.get("holds_s") or 0.0)):
            problems.append({
                "check": "sink_behind", "sink": name, "depth": s["depth"], "oldest_age_s": round(age),
                "detail": f"the oldest of {s['depth']} readings waiting for {name} is {round(age)} s old: it"
                          " delivers, but more slowly than readings come (or is catching up a backlog)"
                          + (f"; last error: {s['last_error']}" if s["last_error"] else ""),
            })
    for bus, meters in _all_failing(report, "bus"):
        problems.append({"check": "bus_down", "bus": bus, "meters": meters,
                         "detail": f"none of the {len(meters)} meters on bus {bus} answers"})
    for cloud, meters in _all_failing(report, "cloud"):
        why = report["meters"][meters[0]].get("last_problem")
        problems.append({"check": "cloud_down", "cloud": cloud, "meters": meters,
                         "detail": f"no meter of cloud {cloud} gets new reads" + (f": {why}" if why else "")})
    for name, m in report["meters"].items():
        last = m.get("future_last_ms")
        if isinstance(last, int) and now - last / 1000 < FUTURE_RECENT_S:
            problems.append({"check": "meter_clock_ahead", "meter": name, "refused": m.get("future"),
                             "detail": f"meter {name} sends readings stamped in the future (its clock is wrong):"
                                       " they are refused"})
    skipping = sorted(name for name, m in report["meters"].items()
                      if isinstance(m.get("skipped_last_ms"), int) and not m["failing"]
                      and now - m["skipped_last_ms"] / 1000 < config.ticks_skipped_within)
    if skipping:
        problems.append({"check": "ticks_skipped", "meters": skipping,
                         "skipped": sum(report["meters"][m].get("skipped_ticks", 0) for m in skipping),
                         "detail": f"{len(skipping)} meter(s) answer too slowly for their interval: polls run past"
                                   " the next tick and those readings are not taken (a bus or a machine too busy:"
                                   " a longer interval, fewer meters per bus, a faster baud rate)"})
    for name, t in (report.get("tasks") or {}).items():
        if t.get("failing"):
            problems.append({"check": "task_failing", "task": name, "restarts": t.get("restarts"),
                             "detail": f"background task {name} keeps failing (restarted {t.get('restarts')} times):"
                                       f" {t.get('last_error')}"})
    q = report["queue"]
    if q.get("gone"):
        problems.append({"check": "queue_lost", "detail": f"the queue file was {q['gone'].get('what', 'removed')}"
                                                          " while the gateway ran: no reading is accepted; restart"
                                                          " the service (and see why the file went)"})
    if q["bytes"] > config.queue_full_ratio * q["max_bytes"]:
        problems.append({"check": "queue_near_full", "bytes": q["bytes"], "max_bytes": q["max_bytes"],
                         "detail": f"the queue uses {q['bytes'] / q['max_bytes']:.0%} of queue.max_size; at the"
                                   " bound the oldest readings are dropped"})
    clock = report.get("clock") or {}
    if not clock.get("trusted", True) and (clock.get("unsynced_s") or 0) > config.clock_unsynced_after:
        problems.append({"check": "clock_unsynchronised", "unsynced_s": clock.get("unsynced_s"),
                         "held": report.get("held", 0),
                         "detail": f"the clock has not been synchronised for {round(clock['unsynced_s'])} s;"
                                   f" {report.get('held', 0)} readings are held until it is"})
    return problems


def health_document(report: dict[str, Any], config: MonitoringConfig) -> tuple[int, dict[str, Any]]:
    problems = evaluate(report, config)
    return (503 if problems else 200), {
        "status": "attention" if problems else "ok",
        "problems": problems,
        "version": __version__,
        "clock": (report.get("clock") or {}).get("state"),
        "held": report.get("held", 0),
        "sinks": {n: {k: s[k] for k in ("depth", "oldest_age_s", "last_delivery_ms", "failing")}
                  for n, s in report["sinks"].items()},
        "meters_failing": sorted(n for n, m in report["meters"].items() if m["failing"]),
    }
