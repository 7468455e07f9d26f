"""``verify`` and ``read`` for WattzOn meters: ask WattzOn Link now, print what it says."""

from __future__ import annotations

from collections import Counter

from gateway.cloudhttp import CloudError
from gateway.config.models import GatewayConfig
from gateway.platforms.wattzon.api import WattzonApi
from gateway.platforms.wattzon.config import WattzonCloud, WattzonMeter
from gateway.platforms.wattzon.records import bill_reading, in_order, interval_reading, interval_rows, is_mine
from gateway.reading import Reading


def _meters_of(cloud: WattzonCloud, config: GatewayConfig) -> list[WattzonMeter]:
    return [m for m in config.meters if isinstance(m, WattzonMeter) and m.cloud == cloud.name]


def _text(v: object) -> str:
    return str(v)[:80] if isinstance(v, str | int | float | bool) else "?"


async def verify(cloud: WattzonCloud, config: GatewayConfig) -> tuple[bool, list[str]]:
    """Whether the certificate works, and per profile the bill meters and interval meters each side has that the
    other does not map."""
    meters = _meters_of(cloud, config)
    api = WattzonApi(cloud)
    lines: list[str] = []
    ok = True
    try:
        echo = await api.echo("meter-gateway")
        if not (isinstance(echo, dict) and echo.get("string") == "meter-gateway"):
            raise CloudError("bad_answer", "the echo service did not repeat what was sent")
        info = await api.certificate_info()
        if isinstance(info, dict):
            lines.append(f"certificate: accepted (client {_text(info.get('client_name'))}, enabled"
                         f" {_text(info.get('enabled'))}, expires {_text(info.get('expiration_date'))})")
            if info.get("enabled") is False:
                ok = False
                lines.append("  ! WattzOn says the certificate is not enabled")
        for pid in sorted({m.profile_id for m in meters}):
            mine = [m for m in meters if m.profile_id == pid]
            if any(m.data == "bills" for m in mine):
                records = await api.bills(pid)
                keys = {(str(r.get("type")), str(r.get("meter_number")), str(r.get("account_number")))
                        for r in records if isinstance(r, dict)}
                lines.append(f"profile {pid}: {len(records)} bill record(s)")
                for m in (m for m in mine if m.data == "bills"):
                    n = sum(1 for r in records if isinstance(r, dict) and is_mine(m, r))
                    if n == 0:
                        ok = False
                    lines.append(f"{'' if n else '! '}meter {m.name}: {n} bill(s) of {m.describe().split(': ')[0]}")
                for kind, number, account in sorted(keys):
                    if not any(m.data == "bills" and m.utility == kind.lower() and (
                            m.meter_number == number or m.account_number == account) for m in mine):
                        lines.append(f"not mapped: {kind[:20]} bills of meter_number {number[:40]} (account"
                                     f" {account[:40]}) in profile {pid}")
            if any(m.data == "intervals" for m in mine):
                months = await api.intervals(pid)
                ids = sorted({str(e.get("meter_id")) for e in months if isinstance(e, dict)})
                for m in (m for m in mine if m.data == "intervals"):
                    found = m.meter_id in ids
                    ok = ok and found
                    lines.append(f"{'' if found else '! '}meter {m.name}: interval meter_id {m.meter_id}"
                                 f" {'listed' if found else 'not in the interval list'}")
                for mid in ids:
                    if not any(m.meter_id == mid for m in mine):
                        lines.append(f"not mapped: interval meter_id {mid[:60]} in profile {pid}")
    except CloudError as e:
        lines.append(f"! {e}")
        return False, lines
    finally:
        await api.close()
    return ok, lines


async def read_latest(config: GatewayConfig, meter: WattzonMeter) -> tuple[Reading | None, list[str]]:
    """The meter's latest period in WattzOn now, as the gateway would queue it, and what was wrong."""
    cloud = next(c for c in config.clouds if isinstance(c, WattzonCloud) and c.name == meter.cloud)
    api = WattzonApi(cloud)
    problems: Counter[str] = Counter()
    try:
        if meter.data == "bills":
            records = await api.bills(meter.profile_id)
            readings = [r for rec in records if isinstance(rec, dict) and is_mine(meter, rec)
                        if (r := bill_reading(meter, rec, problems)) is not None]
        else:
            months = [e for e in await api.intervals(meter.profile_id)
                      if isinstance(e, dict) and e.get("meter_id") == meter.meter_id]
            readings = []
            if months:
                assert meter.meter_id is not None
                latest = max(str(e.get("month_id")) for e in months)
                rows = interval_rows(await api.month(meter.profile_id, meter.meter_id, latest),
                                     cloud.interval_layout)
                readings = [r for row in rows
                            if (r := interval_reading(meter, row, cloud.interval_layout, problems)) is not None]
    except (CloudError, ValueError) as e:
        return None, [str(e)]
    finally:
        await api.close()
    readings = in_order(readings, problems)
    out = [f"records refused: {k} {n}" for k, n in sorted(problems.items())]
    if not readings and not problems:
        out.append("WattzOn has nothing for this meter (see verify)")
    return (readings[-1] if readings else None), out
