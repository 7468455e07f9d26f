"""``meter-gateway demo``: simulated Modbus meters on localhost, read by the gateway like meters in a cabinet;
needs no hardware."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from gateway.config import load_config, load_config_text

HELP = "simulated Modbus meters on localhost, read and printed; needs no hardware"
CONFIGURED = False  # takes no configuration file


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--interval", default="2s", help="poll interval of the simulated meters (default 2s)")
    p.add_argument("--state-dir", help="where the demo keeps its queue (default: a temporary directory)")


DEMO_CONFIG = """\
# The demo: a simulated Eastron SDM630 and a simulated gas meter, each a real Modbus TCP server on localhost,
# read by the gateway like meters in a cabinet. Readings are printed and archived as JSON Lines, and what Wattics and
# Voltaware would receive is printed too (dry run: nothing leaves the machine).
site: {{name: demo}}
state_dir: {state_dir}
# Readings reach the platforms at once (a site keeps the default 5 s, which spares its SD card).
queue: {{commit_interval: 200ms}}
buses:
  - {{name: cabinet, type: tcp, host: 127.0.0.1, port: {power_port}}}
  - {{name: gas-logger, type: tcp, host: 127.0.0.1, port: {gas_port}}}
meters:
  - {{name: demo-main, type: modbus, bus: cabinet, unit: 1, profile: eastron_sdm630, interval: {interval}}}
  - name: demo-gas
    type: modbus
    bus: gas-logger
    unit: 1
    interval: {interval}
    value_unit: m3
    registers:
      - {{quantity: value, address: 0, function: holding, type: uint32, scale: 0.001, note: "volume, litres"}}
sinks:
  - {{name: console, type: stdout}}
  - {{name: archive, type: file, path: {archive}}}
  # The platforms in dry run: each packet is built as it would be sent, and printed instead.
  - name: wattics
    type: wattics
    dry_run: true
    username: demo-site
    password: not-used-in-a-dry-run
    data_points:
      - {{id: demo-electrical, meter: demo-main}}
      - {{id: demo-gas-volume, meter: demo-gas, format: value}}
  - name: voltaware
    type: voltaware
    dry_run: true
    host: broker-issued-by-voltaware
    username: demo-site
    password: not-used-in-a-dry-run
    devices: [{{meter: demo-main, device_id: "0001"}}]
"""


def main(args: argparse.Namespace) -> int:
    from gateway.daemon import Gateway
    from gateway.platforms.modbus.simulator import MeterServer, SimMeter
    from gateway.platforms.simulated.source import single_value, three_phase
    from gateway.statelock import StateLock

    with tempfile.TemporaryDirectory(prefix="meter-gateway-demo-") as tmp:
        state_dir = Path(args.state_dir or tmp)
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "demo.yaml"

        async def demo() -> int:
            from gateway.platforms.modbus.config import ModbusMeterConfig

            def text(power_port: int, gas_port: int) -> str:
                return DEMO_CONFIG.format(state_dir=json.dumps(str(state_dir)),
                                          archive=json.dumps(str(state_dir / "archive.jsonl")),
                                          interval=args.interval, power_port=power_port, gas_port=gas_port)

            # The simulated meters hold exactly the registers the configuration reads (its profile and its inline
            # register); the ports are known once the servers listen.
            draft = load_config_text(text(502, 502), str(path))
            meters = {m.name: m for m in draft.meters if isinstance(m, ModbusMeterConfig)}
            servers = [
                await MeterServer([SimMeter(1, meters["demo-main"].points, three_phase)]).start_tcp(),
                await MeterServer([SimMeter(1, meters["demo-gas"].points,
                                            lambda t: single_value("gas", t))]).start_tcp(),
            ]
            try:
                path.write_text(text(servers[0].port, servers[1].port))
                config = load_config(path)
                print(f"meter-gateway demo: simulated SDM630 on 127.0.0.1:{servers[0].port} and gas meter on"
                      f" 127.0.0.1:{servers[1].port} (Modbus TCP), read every {args.interval}; config {path};"
                      " Ctrl-C stops", file=sys.stderr)
                with StateLock(config.state_dir):
                    gw = Gateway(config, path)
                    if args.duration:
                        asyncio.get_running_loop().call_later(args.duration, gw.stop)
                    return await gw.run()
            finally:
                for srv in servers:
                    await srv.stop()

        return asyncio.run(demo())
