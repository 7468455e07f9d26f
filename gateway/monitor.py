"""The metrics and health listener (``monitoring:``): ``/metrics`` in Prometheus' text format, ``/health`` as JSON.

Both are computed from one report, the one ``meter-gateway status`` prints (:func:`gateway.status.collect`), taken
with the running daemon's live view: a figure means the same thing everywhere. The listener is served in the event
loop itself, so any answer also proves the loop is responsive; the same listener serves the technician's page
(:mod:`gateway.web`).

``/health`` answers 503 when something needs a person (see :func:`gateway.health.evaluate`), 200 otherwise; its
body says which.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import __version__
from gateway.config.models import MonitoringConfig
from gateway.health import evaluate, health_document

if TYPE_CHECKING:
    from gateway.web.app import Page
    from gateway.web.backend import Backend
    from gateway.web.server import Listener

log = structlog.get_logger("gateway.monitor")


def base_url(config: MonitoringConfig) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    scheme = "https" if config.page.cert_file is not None else "http"
    return f"{scheme}://{host}:{config.port}"


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
    """The listener: ``/metrics``, ``/health`` and the technician's page (gateway/web), in the daemon's loop."""

    def __init__(self, config: MonitoringConfig, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.registry = CollectorRegistry(auto_describe=False)
        self._collector = _ReportCollector()
        self.registry.register(self._collector)
        self.registry.register(ProcessCollector(registry=None))
        self.page: Page | None = None
        self._listener: Listener | None = None

    def metrics(self, report: dict[str, Any]) -> bytes:
        self._collector.report = report
        self._collector.problems = evaluate(report, self.config)
        return generate_latest(self.registry)

    def health(self, report: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return health_document(report, self.config)

    async def start(self) -> None:
        from gateway.web.app import Page
        from gateway.web.server import Listener

        self.page = Page(self.backend, self.metrics, self.health)
        page = self.config.page
        self._listener = Listener(self.page.app(), self.config.host, self.config.port, page.cert_file,
                                  page.key_file)
        await self._listener.start()
        log.info("monitoring listening", url=f"{base_url(self.config)}/metrics",
                 page=f"{base_url(self.config)}/" if page.enabled else None)

    async def stop(self) -> None:
        if self.page is not None:
            self.page.stopping.set()  # the pages following live values end their streams
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
