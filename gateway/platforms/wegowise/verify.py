"""``meter-gateway verify`` for Wegowise: per mapped meter, the latest raw datum Wegowise holds beside the last period
the gateway sent. Sends nothing."""

from __future__ import annotations

from gateway.config.models import GatewayConfig
from gateway.errors import SinkError
from gateway.platforms.wegowise.api import WegowiseError
from gateway.platforms.wegowise.config import USAGE_FIELD, WegowiseConfig
from gateway.platforms.wegowise.datum import period_key, same_values
from gateway.platforms.wegowise.sink import WegowiseSink


async def verify(config: WegowiseConfig, gateway: GatewayConfig) -> tuple[bool, list[str]]:
    """Per mapped meter: the latest raw data point Wegowise holds, beside the last period the gateway sent (from its
    record in state_dir). Sends nothing."""
    sink = WegowiseSink(config, gateway)
    lines = [f"wegowise sink {config.name} ({config.url}):"]
    try:
        await sink.start()
    except SinkError as e:
        return False, [*lines, f"  {e}"]
    ok = True
    assert sink.api is not None
    try:
        for name, st in sink.meters.items():
            field_name = USAGE_FIELD[st.entry.data_type]
            mine = max(st.record.items(), default=None)
            sent = (f"{mine[0]} {field_name} {mine[1]['body'].get(field_name)}" if mine else "nothing yet")
            if st.meter_id is None:
                lines.append(f"  {name}: no Wegowise meter yet (created at its first period); sent: {sent}")
                continue
            try:
                latest = await sink.api.latest(st.meter_id)
            except WegowiseError as e:
                ok = False
                lines.append(f"  {name} -> Wegowise meter {st.meter_id}: {e}")
                continue
            held = (f"{latest.get('start_date')}/{latest.get('end_date')} {field_name} {latest.get(field_name)}"
                    if latest else "no raw data")
            agree = mine is None or (latest is not None and period_key(latest) == mine[0]
                                      and same_values(latest, mine[1]["body"]))
            ok = ok and (agree or (latest is not None and period_key(latest) > (mine[0] if mine else "")))
            verdict = "same" if agree and mine else ("Wegowise holds a later period (an import?)" if latest and mine
                                                    and period_key(latest) > mine[0] else "differ" if mine else "")
            lines.append(f"  {name} -> Wegowise meter {st.meter_id}: latest held {held}; gateway sent last {sent}"
                         + (f": {verdict}" if verdict else ""))
    finally:
        await sink.close()
    return ok, lines
