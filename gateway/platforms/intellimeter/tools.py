"""``verify`` and ``read`` for Intellimeter meters: ask the cloud now, print what it says."""

from __future__ import annotations

from collections import Counter
from zoneinfo import ZoneInfo

from gateway.cloudhttp import CloudError
from gateway.config.models import GatewayConfig
from gateway.platforms.intellimeter.api import IntellimeterApi, scope_covers
from gateway.platforms.intellimeter.config import UTILITY_CODE, IntellimeterCloud, IntellimeterMeter, properties
from gateway.platforms.intellimeter.reads import BadAnswer, Mapper, object_hook, reads_of
from gateway.reading import Reading


def _meters_of(cloud: IntellimeterCloud, config: GatewayConfig) -> list[IntellimeterMeter]:
    return [m for m in config.meters if isinstance(m, IntellimeterMeter) and m.cloud == cloud.name]


def _text(v: object) -> str:
    return str(v)[:80] if isinstance(v, str | int | float) else "?"


async def verify(cloud: IntellimeterCloud, config: GatewayConfig) -> tuple[bool, list[str]]:
    """Whether the credentials work, and the meters each side has that the other does not map."""
    meters = _meters_of(cloud, config)
    api = IntellimeterApi(cloud, config.state_dir)
    lines: list[str] = []
    try:
        await api.token()
        granted = api._tokens.scope if api._tokens else ""
        lines.append(f"credentials: accepted (scope granted: '{granted or 'not said'}')")
        if granted and not scope_covers(granted, "meter:reads:read"):
            lines.append("  ! meter:reads:read is not granted: reads will be refused")
        hook = object_hook(frozenset(m.volume_field for m in meters))
        props = list(cloud.properties or [])
        if not props:
            props = [str(p) for p, _ in reads_of(await api.reads(0, "Hour", None, hook))]
            props = list(dict.fromkeys(props))
        known: dict[str, dict[str, object]] = {}
        for prop in props:
            answer = await api.meters(prop)
            if not isinstance(answer, list):
                raise CloudError("bad_answer", f"the meter list of property {prop[:40]} is not a list")
            for item in answer:
                if isinstance(item, dict) and isinstance(item.get("id"), str):
                    known[item["id"]] = {**item, "property": prop}
    except (CloudError, BadAnswer) as e:
        lines.append(f"! {e}")
        return False, lines
    finally:
        await api.close()
    lines.append(f"Intellimeter knows {len(known)} meter(s) in {len(props)} propert{'y' if len(props) == 1 else 'ies'}")
    ok = True
    mapped: set[str] = set()
    for m in meters:
        found = [k for k, v in known.items() if k == m.meter_id or (m.serial_number and
                                                                    v.get("serial_number") == m.serial_number)]
        if not found:
            ok = False
            key = f"meter_id {m.meter_id}" if m.meter_id else f"serial_number {m.serial_number}"
            lines.append(f"! meter {m.name}: Intellimeter has no meter with {key}")
            continue
        if len(found) > 1:
            ok = False
            lines.append(f"! meter {m.name}: serial number {m.serial_number} is on {len(found)} meters"
                         f" ({', '.join(found)}): give meter_id")
        item = known[found[0]]
        mapped.update(found)
        utility = item.get("utility")
        if isinstance(utility, str) and utility.upper() != UTILITY_CODE[m.utility]:
            ok = False
            lines.append(f"! meter {m.name}: Intellimeter says utility {utility[:8]}, the configuration"
                         f" {m.utility}")
        else:
            lines.append(f"meter {m.name}: Intellimeter meter {found[0]} ({_text(item.get('name'))},"
                         f" serial {_text(item.get('serial_number'))}, units {_text(item.get('units'))})")
    for k, v in sorted(known.items()):
        if k not in mapped:
            lines.append(f"not mapped: Intellimeter meter {k[:64]} ({_text(v.get('name'))}, serial"
                         f" {_text(v.get('serial_number'))}, utility {_text(v.get('utility'))}, property"
                         f" {_text(v.get('property'))})")
    return ok, lines


async def read_latest(config: GatewayConfig, meter: IntellimeterMeter) -> tuple[Reading | None, list[str]]:
    """The meter's latest read in the cloud now, as the gateway would queue it, and what was wrong."""
    cloud = next(c for c in config.clouds if isinstance(c, IntellimeterCloud) and c.name == meter.cloud)
    api = IntellimeterApi(cloud, config.state_dir)
    mapper = Mapper([meter], ZoneInfo(cloud.zone(config)))
    problems: Counter[str] = Counter()
    readings: list[Reading] = []
    try:
        for prop in properties(cloud):
            answer = await api.reads(0, "Hour", prop, object_hook(frozenset({meter.volume_field})))
            mine = [r for _, r in reads_of(answer) if mapper.meter_of(r) is meter]
            readings += mapper.readings(meter, mine, problems)
    except (CloudError, BadAnswer) as e:
        return None, [str(e)]
    finally:
        await api.close()
    out = [f"reads refused: {k} {n}" for k, n in sorted(problems.items())]
    if not readings and not problems:
        out.append("Intellimeter has no read of this meter (see verify)")
    return (max(readings, key=lambda r: r.ts_ms) if readings else None), out
