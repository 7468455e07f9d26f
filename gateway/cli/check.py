"""``meter-gateway check``: validate the configuration and print what the gateway will do with it."""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli.common import EXIT_OK, load
from gateway.config.units import format_duration, format_size

HELP = "validate the configuration and print a summary"


def arguments(p: argparse.ArgumentParser) -> None:
    return None


def main(args: argparse.Namespace) -> int:
    from gateway.config.loader import secrets_readable_by_others
    from gateway.monitor import base_url
    from gateway.platforms.file.config import FileConfig
    from gateway.platforms.modbus import tools
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig
    from gateway.platforms.mqtt.tools import describe_broker, describe_subscription
    from gateway.queue import queue_path

    c = load(args)
    q = c.queue
    print(f"{args.config}: OK")
    exposed = secrets_readable_by_others(Path(args.config), c)
    if exposed:
        print(f"warning: {exposed}")
    print(f"site:    {c.site.name} (time zone {c.site.timezone})")
    print(f"queue:   {queue_path(c)} (at most {format_size(q.max_size)}, {format_duration(q.max_age)};"
          f" durability {q.durability})")
    print(f"clock:   time_sync {c.time_sync}")
    print(f"monitor: {base_url(c.monitoring)}/metrics and /health" if c.monitoring.enabled else "monitor: off")
    buses = {b.name: b for b in c.buses}
    if c.buses:
        print(f"buses:   {len(c.buses)}")
        for b in c.buses:
            print(f"  {b.name:<20} {tools.describe_bus(b)}")
    if c.brokers:
        print(f"brokers: {len(c.brokers)}")
        for broker in c.brokers:
            print(f"  {broker.name:<20} {describe_broker(broker)}")
        print(f"subscriptions: {len(c.subscriptions)}")
        for sub in c.subscriptions:
            print(f"  {sub.name:<20} {describe_subscription(sub)}")
    if c.clouds:
        print(f"clouds:  {len(c.clouds)}")
        for cloud in c.clouds:
            lines = cloud.describe(c)
            print(f"  {cloud.name:<20} {cloud.type}: {lines[0] if lines else ''}")
            for line in lines[1:]:
                print(f"  {'':<20} {line}")
    print(f"meters:  {len(c.meters)}")
    for m in c.meters:
        where = f", {m.describe()}" if isinstance(m, ModbusMeterConfig) else ""
        every = "" if isinstance(m, MqttMeterConfig) else f", every {format_duration(m.interval)}"
        from_cloud = getattr(m, "cloud", None)
        if from_cloud:
            every = f", from cloud {from_cloud}, a read every {format_duration(m.interval)}"
        print(f"  {m.name:<20} {m.type} {getattr(m, 'model', '')}{where}{every}")
        if isinstance(m, ModbusMeterConfig):
            for line in tools.describe_plan(m, buses[m.bus]):
                print(f"  {'':<20} {line}")
    print(f"sinks:   {len(c.sinks)}")
    for name, meters in c.sink_meters().items():
        sc = next(s for s in c.sinks if s.name == name)
        where = f" -> {sc.path}" if isinstance(sc, FileConfig) else ""
        print(f"  {name:<20} {sc.type}{where}; {len(meters)} meter(s): {', '.join(meters)}")
        for line in sc.describe(c):
            print(f"  {'':<20} {line}")
    return EXIT_OK
