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
from gateway.config import GatewayConfig, load_config
from gateway.config.units import format_duration, format_size
from gateway.errors import ConfigError, GatewayError
from gateway.queue import QueueStore
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
    with_config(sub.add_parser("verify", help="ask each platform what it received last, beside what was sent"))
    demo = sub.add_parser("demo", help="run with simulated meters and print readings; needs no hardware")
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
                   "demo": cmd_demo, "verify": cmd_verify}[args.command]
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
    return load_config(Path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.daemon import run_daemon

    config = _load(args)
    return asyncio.run(run_daemon(config, Path(args.config)))


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.daemon import queue_path

    c = _load(args)
    q = c.queue
    print(f"{args.config}: OK")
    print(f"site:    {c.site.name} (time zone {c.site.timezone})")
    print(f"queue:   {queue_path(c)} (at most {format_size(q.max_size)}, {format_duration(q.max_age)};"
          f" durability {q.durability})")
    print(f"meters:  {len(c.meters)}")
    for m in c.meters:
        print(f"  {m.name:<20} {m.type} {m.model}, every {format_duration(m.interval)}")
    print(f"sinks:   {len(c.sinks)}")
    for name, meters in c.sink_meters().items():
        sc = next(s for s in c.sinks if s.name == name)
        where = f" -> {sc.path}" if sc.type == "file" else ""
        print(f"  {name:<20} {sc.type}{where}; {len(meters)} meter(s): {', '.join(meters)}")
    return EXIT_OK


def _open_store(config: GatewayConfig) -> QueueStore | None:
    from gateway.daemon import open_store, queue_path

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
        print(f"daemon: not running; no queue yet at {config.state_dir / 'queue.db'}")
        return EXIT_RUNTIME if args.check else EXIT_OK
    try:
        report = status.collect(store, config)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else status.render(report))
    if args.check:
        healthy = report["daemon"]["running"] and not any(s["failing"] for s in report["sinks"].values())
        return EXIT_OK if healthy else EXIT_RUNTIME
    return EXIT_OK


def cmd_deadletter(args: argparse.Namespace) -> int:
    from gateway.reading import iso_utc

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


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.config.voltaware import VoltawareSink
    from gateway.config.wattics import WatticsSink
    from gateway.sinks import voltaware_api, wattics

    config = _load(args)
    store = _open_store(config)
    daemon: dict[str, Any] = {}
    if store is not None:
        try:
            daemon = store.get_meta("daemon") or {}
        finally:
            store.close()
    checks = [s for s in config.sinks if isinstance(s, WatticsSink | VoltawareSink)]
    if not checks:
        print("no platform sink to verify in this configuration")
        return EXIT_OK
    all_ok = True
    for sink in checks:
        health = (daemon.get("sinks") or {}).get(sink.name) or {}
        sent = health.get("streams") or {}
        if isinstance(sink, WatticsSink):
            ok, lines = asyncio.run(wattics.verify(sink, sent))
        else:
            ok, lines = asyncio.run(voltaware_api.verify(sink, sent))
        all_ok = all_ok and ok
        print("\n".join(lines))
    return EXIT_OK if all_ok else EXIT_RUNTIME


DEMO_CONFIG = """\
# The demo: two simulated meters, readings printed on stdout and archived as JSON Lines.
site: {{name: demo}}
state_dir: {state_dir}
meters:
  - {{name: demo-main, type: simulated, model: three_phase, interval: {interval}}}
  - {{name: demo-gas, type: simulated, model: gas, interval: {interval}}}
sinks:
  - {{name: console, type: stdout}}
  - {{name: archive, type: file, path: {archive}}}
"""


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.daemon import Gateway

    with tempfile.TemporaryDirectory(prefix="meter-gateway-demo-") as tmp:
        state_dir = Path(args.state_dir or tmp)
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "demo.yaml"
        path.write_text(
            DEMO_CONFIG.format(
                state_dir=json.dumps(str(state_dir)),
                archive=json.dumps(str(state_dir / "archive.jsonl")),
                interval=args.interval,
            )
        )
        config = load_config(path)
        print(f"meter-gateway demo: 2 simulated meters every {args.interval}; config {path}; Ctrl-C stops",
              file=sys.stderr)

        async def demo() -> int:
            gw = Gateway(config, path)
            if args.duration:
                asyncio.get_running_loop().call_later(args.duration, gw.stop)
            return await gw.run()

        return asyncio.run(demo())
