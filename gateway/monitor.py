"""The metrics and health listener (``monitoring:``): ``/metrics`` in Prometheus' text format, ``/health`` as JSON.

Both are computed from one report, the one ``meter-gateway status`` prints (:func:`gateway.status.collect`), taken
with the running daemon's live view: a figure means the same thing everywhere. The listener is served by the event
loop itself, so any answer also proves the loop is responsive; it speaks just enough HTTP/1.1 for Prometheus, curl
and a load balancer's health check (GET and HEAD, one request per connection).

``/health`` answers 503 when something needs a person (see :func:`evaluate`), 200 otherwise; its body says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config.models import MonitoringConfig
from gateway.errors import GatewayError
from gateway.forwarder.streams import AGGREGATE_GRACE

log = structlog.get_logger("gateway.monitor")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
_READ_TIMEOUT = 5.0
_MAX_REQUEST = 8192


def base_url(config: MonitoringConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


# ---------------------------------------------------------------- health


#: A meter whose last reading stamped in the future came this recently needs a person (its clock is wrong).
FUTURE_RECENT_S = 900.0


def _held_on_purpose(interval: float) -> float:
    """How old a reading may be that a stream holds on purpose: an interval stream keeps an interval's readings
    until it closes (and up to its grace after): twice that is not yet "behind"."""
    return 2 * interval + AGGREGATE_GRACE if interval else 0.0


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
    buses: dict[str, list[str]] = {}
    for name, m in report["meters"].items():
        if m.get("bus"):
            buses.setdefault(m["bus"], []).append(name)
    for bus, meters in buses.items():
        if all(report["meters"][m]["failing"] for m in meters):
            problems.append({"check": "bus_down", "bus": bus, "meters": meters,
                             "detail": f"none of the {len(meters)} meters on bus {bus} answers"})
    clouds: dict[str, list[str]] = {}
    for name, m in report["meters"].items():
        if m.get("cloud"):
            clouds.setdefault(m["cloud"], []).append(name)
    for cloud, meters in clouds.items():
        if all(report["meters"][m]["failing"] for m in meters):
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


# ---------------------------------------------------------------- metrics


class _ReportCollector(Collector):
    """Turns the current report into metric families (set :attr:`report` before each exposition)."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {}
        self.problems: list[dict[str, Any]] = []

    def collect(self) -> Iterable[Metric]:
        r = self.report
        if not r:
            return []
        out: list[Metric] = []

        def family(kind: type[CounterMetricFamily] | type[GaugeMetricFamily], name: str, doc: str,
                   labels: list[str], rows: Iterable[tuple[list[str], float]]) -> None:
            f = kind(f"meter_gateway_{name}", doc, labels=labels)
            for values, v in rows:
                f.add_metric(values, v)
            out.append(f)

        info = GaugeMetricFamily("meter_gateway_info", "Version of the running gateway.", labels=["version"])
        info.add_metric([__version__], 1)
        out.append(info)
        meters, sinks = r["meters"], r["sinks"]
        C, G = CounterMetricFamily, GaugeMetricFamily
        family(C, "readings", "Readings confirmed into the on-disk queue since the daemon started.", ["meter"],
               (([m], v["readings"]) for m, v in meters.items()))
        family(C, "readings_refused", "Readings refused: not newer than the last one queued (a clock stepped back).",
               ["meter"], (([m], v["refused"]) for m, v in meters.items()))
        family(C, "readings_dropped", "Readings that could not be written (full disk).", ["meter"],
               (([m], v["dropped_write_failed"]) for m, v in meters.items()))
        family(C, "readings_restamped", "Readings taken before the clock was synchronised, re-stamped at sync.",
               ["meter"], (([m], v["restamped"]) for m, v in meters.items()))
        family(C, "readings_unstampable", "Readings held in an earlier boot: no true time, kept as dead letters.",
               ["meter"], (([m], v["unstampable"]) for m, v in meters.items()))
        family(C, "readings_held_evicted", "Held readings dropped at queue.max_size (the clock never synchronised).",
               ["meter"], (([m], v["held_evicted"]) for m, v in meters.items()))
        family(G, "readings_held", "Readings held until the clock is synchronised.", [], [([], r.get("held", 0))])
        family(C, "read_errors", "Failed meter reads since the daemon started, per kind.", ["meter", "kind"],
               (([m, k], n) for m, v in meters.items() for k, n in v["read_errors"].items()))
        family(C, "ticks_skipped", "Ticks of a meter's interval with no reading: the poll before still ran.",
               ["meter"], (([m], v.get("skipped_ticks", 0)) for m, v in meters.items()))
        family(G, "meter_failing", "1 while the meter does not answer.", ["meter"],
               (([m], int(v["failing"])) for m, v in meters.items()))
        family(C, "mqtt_messages", "MQTT messages per subscription and outcome since the daemon started.",
               ["subscription", "outcome"],
               (([s, k], n) for s, c in (r.get("subscriptions") or {}).items() for k, n in c.items()
                if k in ("messages", "readings", "ignored", "bad")))
        family(G, "queue_depth", "Readings waiting for the sink.", ["sink"],
               (([s], v["depth"]) for s, v in sinks.items()))
        family(G, "queue_oldest_age_seconds", "Age of the oldest reading waiting for the sink (0: none waits).",
               ["sink"], (([s], v["oldest_age_s"] or 0) for s, v in sinks.items()))
        for key, doc in (("delivered", "acknowledged by the platform"), ("retried", "failed sends, retried"),
                         ("rejected", "refused for good by the platform (dead letters)"),
                         ("evicted", "dropped at the queue's bounds before delivery"),
                         ("resent", "sent again after a restart, maybe duplicates"),
                         ("skipped", "not sent on purpose (no mapped value)")):
            family(C, f"sink_{key}", f"Readings {doc}.", ["sink"], (([s], v[key]) for s, v in sinks.items()))
        family(G, "dead_letters", "Dead letters kept for the sink.", ["sink"],
               (([s], v["dead_letters"]) for s, v in sinks.items()))
        family(G, "sink_failing", "1 while delivery to the sink fails.", ["sink"],
               (([s], int(v["failing"])) for s, v in sinks.items()))
        family(G, "sink_last_delivery_timestamp_seconds", "When the sink last acknowledged a reading.", ["sink"],
               (([s], v["last_delivery_ms"] / 1000) for s, v in sinks.items()
                if isinstance(v["last_delivery_ms"], int)))
        family(G, "queue_bytes", "Bytes the queue file uses.", [], [([], r["queue"]["bytes"])])
        family(G, "queue_max_bytes", "queue.max_size.", [], [([], r["queue"]["max_bytes"])])
        clock = r.get("clock") or {}
        family(G, "clock_synchronised", "1 while the clock is trusted for stamping readings.", [],
               [([], int(bool(clock.get("trusted"))))])
        family(G, "clock_state", "The clock's state (1 for the current one).", ["state"],
               [([str(clock.get("state"))], 1)])
        family(C, "clock_steps", "Steps of the system clock seen since the daemon started.", [],
               [([], clock.get("steps") or 0)])
        family(G, "health_problems", "Problems /health reports (503 when above 0).", [], [([], len(self.problems))])
        return out


class Monitor:
    def __init__(self, config: MonitoringConfig, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _ReportCollector()
        self.registry.register(self._collector)
        self.registry.register(ProcessCollector(registry=None))
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._handle, self.config.host, self.config.port)
        except OSError as e:
            raise GatewayError(f"cannot listen for monitoring on {self.config.host}:{self.config.port}:"
                               f" {e.strerror}") from None
        log.info("monitoring listening", url=f"{base_url(self.config)}/metrics")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            status, ctype, body = await self._answer(head)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:  # a bug answering must not take the listener down
            log.exception("monitoring request failed")
            status, ctype, body = 500, "text/plain", b"internal error\n"
        method = head.split(b" ", 1)[0]
        reason = HTTPStatus(status).phrase
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                     "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode())
        if method != b"HEAD":
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    async def _answer(self, head: bytes) -> tuple[int, str, bytes]:
        if len(head) > _MAX_REQUEST:
            return 400, "text/plain", b"request too large\n"
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target not in (b"/metrics", b"/health"):
            return 404, "text/plain", b"not found: try /metrics or /health\n"
        if method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n"
        report = await self.snapshot()
        if target == b"/health":
            code, doc = health_document(report, self.config)
            return code, "application/json", (json.dumps(doc, indent=2) + "\n").encode()
        self._collector.report = report
        self._collector.problems = evaluate(report, self.config)
        return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(self.registry)
