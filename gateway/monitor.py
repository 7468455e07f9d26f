"""The metrics and health listener (``monitoring:``): ``/metrics`` in Prometheus' text format, ``/health`` as JSON.

Both are computed from one report, the one ``meter-gateway status`` prints (:func:`gateway.status.collect`), taken
with the running daemon's live view: a figure means the same thing everywhere. The listener is served by the event
loop itself, so any answer also proves the loop is responsive; it speaks just enough HTTP/1.1 for Prometheus, curl
and a load balancer's health check (GET and HEAD, one request per connection).

``/health`` answers 503 when something needs a person (see :func:`gateway.health.evaluate`), 200 otherwise; its
body says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from gateway.health import evaluate, health_document

log = structlog.get_logger("gateway.monitor")

Snapshot = Callable[[], Awaitable[dict[str, Any]]]
_READ_TIMEOUT = 5.0
_MAX_REQUEST = 8192


def base_url(config: MonitoringConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    return f"http://{host}:{config.port}"


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
