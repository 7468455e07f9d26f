"""The ``meter-gateway`` command. Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway import __version__
from gateway.config import GatewayConfig, load_config, load_config_text
from gateway.config.units import format_duration, format_size
from gateway.errors import ConfigError, GatewayError
from gateway.logs import REDACTOR
from gateway.queue import QueueStore
from gateway.reading import iso_utc
from gateway.settings import ProcessSettings

EXIT_OK, EXIT_RUNTIME, EXIT_CONFIG = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors, as we want; keep it one line
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see --help)\n")


def build_parser(settings: ProcessSettings) -> argparse.ArgumentParser:
    p = _Parser(prog="meter-gateway", description="Reads energy meters and delivers every reading to platforms.")
    p.add_argument("--version", action="version", version=f"meter-gateway {__version__}")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=settings.log_level)
    p.add_argument("--log-format", choices=("auto", "json", "console"), default=settings.log_format)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", default=settings.config, help=f"YAML file (default {settings.config})")

    with_config(sub.add_parser("run", help="run the gateway (the systemd service runs this)"))
    with_config(sub.add_parser("check", help="validate the configuration and print a summary"))
    st = sub.add_parser("status", help="queue depth, delivery and meters, also while the daemon runs")
    with_config(st)
    st.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    st.add_argument("--check", action="store_true",
                    help="exit 1 unless the daemon runs and no sink is failing (container HEALTHCHECK)")
    dl = sub.add_parser("deadletter", help="readings a platform refused: list, retry or purge them")
    with_config(dl)
    dl.add_argument("action", choices=("list", "retry", "purge"))
    dl.add_argument("--sink", help="only this sink's dead letters")
    dl.add_argument("--id", type=int, nargs="+", dest="ids", help="only these dead letters")
    dl.add_argument("--all", action="store_true", help="with purge: every dead letter (of --sink, if given)")
    fu = sub.add_parser("future", help="queued readings stamped in the future (a device clock that was wrong): list"
                                       " them, or move them to the dead letters so the meter's readings go again")
    with_config(fu)
    fu.add_argument("--move", action="store_true",
                    help="move them to the dead letters (the daemon must be stopped: 'systemctl stop meter-gateway')")
    with_config(sub.add_parser("verify", help="ask each platform what it received last, beside what was sent"))
    rd = sub.add_parser("read", help="read Modbus meters once now and print their values (works beside the daemon"
                                     " on TCP buses)")
    with_config(rd)
    rd.add_argument("--meter", action="append", dest="meters", help="only this meter (may be repeated)")
    rd.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    rd.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an MQTT meter's next message")
    sc = sub.add_parser("scan", help="which Modbus unit ids answer on a line, and which built-in profile fits each")
    where = sc.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="DEVICE", help="a serial port, e.g. /dev/ttyUSB0")
    where.add_argument("--host", help="a Modbus TCP device or an RTU-over-TCP converter")
    sc.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    sc.add_argument("--rtu-over-tcp", action="store_true", help="the host is a serial-to-TCP converter (RTU framing)")
    sc.add_argument("--baudrate", type=int, default=9600)
    sc.add_argument("--parity", choices=("N", "E", "O"), default="N")
    sc.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    sc.add_argument("--units", default="1-247", help="unit ids to try: 1-247, 1-10, 1,2,5 (default 1-247)")
    sc.add_argument("--timeout", default="300ms", help="wait per unit id (default 300ms)")
    sc.add_argument("--profiles-dir", help="your own profiles too")
    pr = sub.add_parser("profiles", help="the built-in meter profiles, or one profile's registers")
    pr.add_argument("name", nargs="?", help="a profile's name")
    pr.add_argument("--profiles-dir", help="your own profiles too")
    demo = sub.add_parser("demo", help="simulated Modbus meters on localhost, read and printed; needs no hardware")
    demo.add_argument("--duration", type=float, default=0, help="stop after this many seconds (default: Ctrl-C)")
    demo.add_argument("--interval", default="2s", help="poll interval of the simulated meters (default 2s)")
    demo.add_argument("--state-dir", help="where the demo keeps its queue (default: a temporary directory)")
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        settings = ProcessSettings()
    except ValidationError as e:
        for err in e.errors(include_url=False):
            name = "METER_GATEWAY_" + "_".join(str(x) for x in err["loc"]).upper()
            print(f"meter-gateway: environment {name}: {err['msg']}", file=sys.stderr)
        return EXIT_CONFIG
    args = build_parser(settings).parse_args(argv)
    from gateway import logs

    logs.configure(args.log_level, args.log_format)
    try:
        handler = {"run": cmd_run, "check": cmd_check, "status": cmd_status, "deadletter": cmd_deadletter,
                   "future": cmd_future,
                   "demo": cmd_demo, "verify": cmd_verify, "read": cmd_read, "scan": cmd_scan,
                   "profiles": cmd_profiles}[args.command]
        return handler(args)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        n = len(e.problems)
        print(f"meter-gateway: {n} problem{'s' if n != 1 else ''} in the configuration; nothing was changed",
              file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as e:
        print(f"meter-gateway: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return EXIT_OK


def _load(args: argparse.Namespace) -> GatewayConfig:
    config = load_config(Path(args.config))
    REDACTOR.set(config.secrets())  # what a command prints of a peer's answer is scrubbed like a log line
    return config


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon

    config = _load(args)
    return asyncio.run(run_daemon(config, Path(args.config)))


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.config.loader import secrets_readable_by_others
    from gateway.monitor import base_url
    from gateway.platforms.file.config import FileConfig
    from gateway.platforms.modbus import tools
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig
    from gateway.platforms.mqtt.tools import describe_broker, describe_subscription
    from gateway.queue import queue_path

    c = _load(args)
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
    print(f"meters:  {len(c.meters)}")
    for m in c.meters:
        where = f", {m.describe()}" if isinstance(m, ModbusMeterConfig) else ""
        every = "" if isinstance(m, MqttMeterConfig) else f", every {format_duration(m.interval)}"
        print(f"  {m.name:<20} {m.type} {getattr(m, 'model', '')}{where}{every}")
        if isinstance(m, ModbusMeterConfig):
            for line in tools.describe_plan(m, buses[m.bus]):
                print(f"  {'':<20} {line}")
    print(f"sinks:   {len(c.sinks)}")
    for name, meters in c.sink_meters().items():
        sc = next(s for s in c.sinks if s.name == name)
        where = f" -> {sc.path}" if isinstance(sc, FileConfig) else ""
        print(f"  {name:<20} {sc.type}{where}; {len(meters)} meter(s): {', '.join(meters)}")
    return EXIT_OK


def _open_store(config: GatewayConfig) -> QueueStore | None:
    from gateway.queue import open_store, queue_path

    if not queue_path(config).exists():
        return None
    store = open_store(config)
    store.open(repair=False)
    return store


def cmd_status(args: argparse.Namespace) -> int:
    from gateway import status

    config = _load(args)
    store = _open_store(config)
    if store is None:
        from gateway.queue.watch import peek_marker

        lost = peek_marker(config.state_dir)
        if lost is not None:
            print(f"queue:  LOST: {lost.get('path')} was {lost.get('what', 'removed')} while the gateway (pid"
                  f" {lost.get('pid')}) ran; no reading is accepted; restart the service (and find out why the file"
                  " went)")
            return EXIT_RUNTIME
        print(f"daemon: not running; no queue yet at {config.state_dir / 'queue.db'}")
        return EXIT_RUNTIME if args.check else EXIT_OK
    try:
        report = status.collect(store.snapshot(status.backlog_streams(config)), config)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else status.render(report))
    if args.check:
        healthy = report["daemon"]["running"] and not any(s["failing"] for s in report["sinks"].values())
        return EXIT_OK if healthy else EXIT_RUNTIME
    return EXIT_OK


def cmd_deadletter(args: argparse.Namespace) -> int:
    config = _load(args)
    store = _open_store(config)
    if store is None:
        print("no dead letters (no queue yet)")
        return EXIT_OK
    try:
        if args.action == "list":
            letters = [d for d in store.dead_letters(args.sink) if not args.ids or d.id in args.ids]
            if not letters:
                print("no dead letters")
            for d in letters:
                print(f"#{d.id} sink={d.sink} meter={d.reading.meter} ts={iso_utc(d.reading.ts_ms)} state={d.state}"
                      f" attempts={d.attempts} reason={d.reason}")
            return EXIT_OK
        if args.action == "purge" and not (args.ids or args.all):
            print("meter-gateway: purge deletes readings for good: name them with --id, or give --all",
                  file=sys.stderr)
            return EXIT_CONFIG
        store.begin()
        if args.action == "retry":
            n = store.mark_dead_letters(args.ids, "retry", args.sink)
        else:
            n = store.purge_dead_letters(args.ids, args.sink)
        store.commit()
        verb = "marked for retry (the running daemon sends them within seconds)" if args.action == "retry" \
            else "purged"
        print(f"{n} dead letter{'s' if n != 1 else ''} {verb}")
        return EXIT_OK
    finally:
        store.close()


def cmd_future(args: argparse.Namespace) -> int:
    """A reading stamped in 2099 that was queued (before the gateway refused such readings, or while its clock was
    not yet trusted) makes every later reading of its meter "not newer": this finds them and moves them aside."""
    import time

    from gateway.statelock import StateLock

    config = _load(args)
    cutoff = int((time.time() + config.future_tolerance) * 1000)
    lock = StateLock(config.state_dir)
    if args.move:
        lock.acquire()  # the daemon keeps the meters' last timestamps in memory: it must not run meanwhile
    try:
        store = _open_store(config)
        if store is None:
            print("no queue yet: nothing stamped in the future")
            return EXIT_OK
        try:
            ahead = store.ahead_of(cutoff)
            if not ahead:
                print(f"no queued reading is stamped after {iso_utc(cutoff)} (now + future_tolerance)")
                return EXIT_OK
            for meter, stamps in ahead.items():
                shown = ", ".join(iso_utc(ts) for ts in stamps[:3]) + (" ..." if len(stamps) > 3 else "")
                print(f"{meter}: {len(stamps)} queued reading(s) stamped in the future: {shown}")
            if not args.move:
                print("stop the daemon and run this again with --move to move them to the dead letters"
                      " ('meter-gateway deadletter list' shows them then)")
                return EXIT_OK
            store.begin()
            cursors: dict[str, list[str]] = {}
            for stream in (st for sl in config.sink_streams().values() for st in sl):
                cursors.setdefault(stream.cursor, []).append(stream.meter)
            store.configure(cursors)
            moved = store.quarantine_after(cutoff, f"stamped in the future (after {iso_utc(cutoff)}): the"
                                                   " device's clock was wrong")
            store.commit()
        finally:
            store.close()
    finally:
        lock.release()
    for meter, n in moved.items():
        print(f"{meter}: {n} reading(s) moved to the dead letters; its readings are accepted again")
    return EXIT_OK


def _last_sent_now(config: GatewayConfig) -> tuple[dict[str, Any], str]:
    """What each stream delivered last, and how fresh that is: asked of the running daemon (SIGUSR1 makes it write
    its live record at once), else its record from its last run."""
    import os
    import signal
    import time

    from gateway.status import STALE_HEARTBEAT_MS

    store = _open_store(config)
    if store is None:
        return {}, "nothing yet (no queue)"
    try:
        daemon = store.get_meta("daemon") or {}
        beat, pid = daemon.get("heartbeat_ms"), daemon.get("pid")
        running = bool(daemon.get("running")) and isinstance(beat, int) and isinstance(pid, int) \
            and time.time() * 1000 - beat < STALE_HEARTBEAT_MS
        asked_ms = int(time.time() * 1000)
        answered = False
        if running:
            assert isinstance(pid, int)
            try:
                os.kill(pid, signal.SIGUSR1)
            except OSError:
                running = False
            deadline = time.monotonic() + 5.0
            while running and time.monotonic() < deadline:
                at = (store.get_meta("last_sent_at") or {}).get("ms")
                if isinstance(at, int) and at >= asked_ms:
                    answered = True
                    break
                time.sleep(0.1)
        at = (store.get_meta("last_sent_at") or {}).get("ms")
        sent = store.last_sent()
    finally:
        store.close()
    when = iso_utc(at) if isinstance(at, int) else "unknown time"
    age = f"{max(0, round(time.time() - at / 1000))} s old" if isinstance(at, int) else "age unknown"
    if answered:
        return sent, f"as of {when}, from the running daemon (live)"
    if running:
        return sent, f"as of {when} ({age}): the running daemon did not answer within 5 s (not this user's?)"
    return sent, f"as of {when} ({age}): the daemon is not running; its record from when it last ran"


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.platforms.all import SINKS

    config = _load(args)
    sent_by_sink, how = _last_sent_now(config)
    print(f"gateway's record of what it delivered last: {how}")
    checks = [(s, verify) for s in config.sinks if (verify := SINKS[s.type].verify) is not None]
    if not checks:
        print("no platform sink to verify in this configuration")
        return EXIT_OK
    all_ok = True
    for sink, verify in checks:
        ok, lines = asyncio.run(verify(sink, sent_by_sink.get(sink.name) or {}))
        all_ok = all_ok and ok
        print(REDACTOR.scrub("\n".join(lines)))
    return EXIT_OK if all_ok else EXIT_RUNTIME


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


def cmd_demo(args: argparse.Namespace) -> int:
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


def _resolve(config: GatewayConfig, names: list[str] | None) -> list[Any]:
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig

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
        if not isinstance(m, ModbusMeterConfig | MqttMeterConfig):
            raise GatewayError(f"meter '{n}' is of type {m.type}: 'read' reads Modbus and MQTT meters")
        out.append(m)
    return out


def cmd_read(args: argparse.Namespace) -> int:
    from gateway.platforms.modbus import tools
    from gateway.platforms.modbus.config import ModbusMeterConfig
    from gateway.platforms.mqtt.config import MqttMeterConfig
    from gateway.platforms.mqtt.tools import read_mqtt

    config = _load(args)
    meters = _resolve(config, args.meters)
    modbus = [m for m in meters if isinstance(m, ModbusMeterConfig)]
    results = asyncio.run(tools.read_meters(config, modbus)) if modbus else []
    ok = all(r.reading is not None and not r.problems for r in results)
    out: list[dict[str, Any]] = [r.to_json() for r in results]
    text = [tools.render_read(results, config)] if results else []
    for m in meters:
        if isinstance(m, MqttMeterConfig):
            if not args.json:
                print(f"waiting up to {format_duration(args.timeout)} for a message of {m.name} ...", file=sys.stderr)
            reading, problems = asyncio.run(read_mqtt(config, m, within=args.timeout))
            ok = ok and reading is not None
            out.append({"meter": m.name, "ok": reading is not None, "problems": problems,
                        "reading": reading.to_json_dict() if reading else None})
            lines = [f"{m.name}  (published to a broker): " + (
                f"message of {iso_utc(reading.ts_ms)}" if reading else "no reading")]
            if reading is not None:
                lines += tools.format_values(dict(reading.values), m.value_unit)
            lines += [f"  ! {p}" for p in problems]
            text.append("\n".join(lines))
    print(json.dumps(out, indent=2) if args.json else "\n\n".join(text))
    return EXIT_OK if ok else EXIT_RUNTIME


def _units(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise GatewayError(f"--units {spec!r}: expected numbers and ranges such as 1-247 or 1,2,5")
        out += list(range(int(lo), int(hi or lo) + 1))
    if not out or not all(0 <= u <= 255 for u in out):
        raise GatewayError(f"--units {spec!r}: unit ids are 0 to 255 (1 to 247 on a serial line)")
    return out


def cmd_scan(args: argparse.Namespace) -> int:
    from gateway.config import profiles
    from gateway.platforms.modbus import tools
    from gateway.platforms.modbus.config import RtuOverTcpBus, SerialBus, TcpBus

    timeout = args.timeout
    units = _units(args.units)
    bus: SerialBus | TcpBus | RtuOverTcpBus
    try:
        if args.serial:
            bus = SerialBus(name="rs485", type="serial", port=args.serial, baudrate=args.baudrate,
                            parity=args.parity, stopbits=args.stopbits, timeout=timeout)
        elif args.rtu_over_tcp:
            bus = RtuOverTcpBus(name="converter", type="rtu_over_tcp", host=args.host, port=args.port,
                                timeout=timeout, baudrate=args.baudrate)
        else:
            bus = TcpBus(name="modbus-tcp", type="tcp", host=args.host, port=args.port, timeout=timeout)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        msg = str((err.get("ctx") or {}).get("error", err["msg"]))
        raise GatewayError(f"scan --{str(err['loc'][0]).replace('_', '-')}: {msg}") from None
    found, problems = profiles.load_all(Path(args.profiles_dir) if args.profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"scanning {len(units)} unit ids on {tools.describe_bus(bus)} ...", file=sys.stderr)
    hits = asyncio.run(tools.scan(bus, units, found))
    print(tools.render_scan(hits, bus, len(units)))
    return EXIT_OK if hits else EXIT_RUNTIME


def cmd_profiles(args: argparse.Namespace) -> int:
    from gateway.config import profiles
    from gateway.platforms.modbus import tools

    found, problems = profiles.load_all(Path(args.profiles_dir) if args.profiles_dir else None)
    for line in problems:
        print(line, file=sys.stderr)
    if args.name:
        if args.name not in found:
            raise GatewayError(f"no profile named '{args.name}' (known: {', '.join(sorted(found))})")
        print(tools.render_profile(found[args.name]))
    else:
        print(tools.render_profiles(found))
    return EXIT_RUNTIME if problems else EXIT_OK
