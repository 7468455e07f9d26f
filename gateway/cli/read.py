"""``meter-gateway read``: read meters once now and print their values (beside the daemon on TCP buses)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.cli.common import EXIT_OK, EXIT_RUNTIME, load
from gateway.config import GatewayConfig
from gateway.config.units import format_duration
from gateway.errors import GatewayError
from gateway.reading import iso_utc

HELP = ("read Modbus meters once now and print their values (works beside the daemon on TCP buses); a meter that"
        " publishes or lives in a cloud: by name")


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meter", action="append", dest="meters", help="only this meter (may be repeated)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--raw", action="store_true",
                   help="Modbus meters: each value's register words beside the value read every way (types, word"
                        " orders): to write or check a profile")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an MQTT meter's next message")


def _resolve(config: GatewayConfig, names: list[str] | None) -> list[Any]:
    from gateway.platforms.intellimeter.config import IntellimeterMeter
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig
    from gateway.platforms.wattzon.config import WattzonMeter

    if not names:
        modbus = [m for m in config.meters if isinstance(m, ModbusMeterConfig)]
        if not modbus:
            raise GatewayError("no Modbus meter in this configuration (for a meter that publishes to a broker,"
                               " name it: read --meter NAME)")
        return modbus
    by_name = {m.name: m for m in config.meters}
    out = []
    for n in names:
        m = by_name.get(n)
        if m is None:
            raise GatewayError(f"no meter named '{n}' (defined: {', '.join(by_name)})")
        if not isinstance(m, ModbusMeterConfig | MqttMeterConfig | IntellimeterMeter | WattzonMeter):
            raise GatewayError(f"meter '{n}' is of type {m.type}: 'read' reads Modbus, MQTT, Intellimeter and"
                               " WattzOn meters")
        out.append(m)
    return out


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.intellimeter.config import IntellimeterMeter
    from gateway.platforms.intellimeter.tools import read_latest
    from gateway.platforms.modbus import tools
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig
    from gateway.platforms.mqtt.tools import read_mqtt
    from gateway.platforms.wattzon.config import WattzonMeter
    from gateway.platforms.wattzon.tools import read_latest as read_wattzon

    config = load(args)
    meters = _resolve(config, args.meters)
    modbus = [m for m in meters if isinstance(m, ModbusMeterConfig)]
    results = asyncio.run(tools.read_meters(config, modbus)) if modbus else []
    ok = all(r.reading is not None and not r.problems for r in results)
    out: list[dict[str, Any]] = [r.to_json() | ({"registers": r.rows} if args.raw else {}) for r in results]
    text = [tools.render_read(results, config, raw=args.raw)] if results else []
    for m in meters:
        if isinstance(m, MqttMeterConfig | IntellimeterMeter | WattzonMeter):
            if isinstance(m, IntellimeterMeter):
                reading, problems = asyncio.run(read_latest(config, m))
                origin, what = f"from cloud {m.cloud}", "latest read"
            elif isinstance(m, WattzonMeter):
                reading, problems = asyncio.run(read_wattzon(config, m))
                origin, what = f"from cloud {m.cloud}", "latest period"
            else:
                if not args.json:
                    print(f"waiting up to {format_duration(args.timeout)} for a message of {m.name} ...",
                          file=sys.stderr)
                reading, problems = asyncio.run(read_mqtt(config, m, within=args.timeout))
                origin, what = "published to a broker", "message"
            ok = ok and reading is not None
            out.append({"meter": m.name, "ok": reading is not None, "problems": problems,
                        "reading": reading.to_json_dict() if reading else None})
            when = "" if reading is None else (f"{iso_utc(reading.start_ms)} .. " if reading.start_ms is not None
                                               else "") + iso_utc(reading.period_end)
            lines = [f"{m.name}  ({origin}): " + (f"{what} of {when}" if reading else "no reading")]
            if reading is not None:
                lines += tools.format_values(dict(reading.values), m.value_unit)
            lines += [f"  ! {p}" for p in problems]
            text.append("\n".join(lines))
    print(json.dumps(out, indent=2) if args.json else "\n\n".join(text))
    return EXIT_OK if ok else EXIT_RUNTIME
