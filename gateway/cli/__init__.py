"""The ``meter-gateway`` command. Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.

One module per command (``gateway/cli/<command>.py``) with its ``HELP``, its ``arguments(parser)`` and its
``main(args) -> exit code``; a command that takes no configuration file says ``CONFIGURED = False``. A new command is
a module and its name in :data:`COMMANDS`. What a command computes that the daemon also shows comes from the same
code (:func:`gateway.status.collect`, the queue's own methods).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from gateway import __version__
from gateway.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME
from gateway.errors import ConfigError, GatewayError
from gateway.settings import ProcessSettings

#: In the order ``--help`` lists them.
COMMANDS = ("run", "check", "status", "deadletter", "future", "verify", "read", "scan", "profiles",
            "set-address", "set-baudrate", "demo", "wegowise", "intellimeter", "fleet", "hash-password")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 on usage errors, as we want; keep it one line
        self.exit(EXIT_CONFIG, f"{self.prog}: {message} (see --help)\n")


def _command(name: str) -> ModuleType:
    return importlib.import_module(f"gateway.cli.{name.replace('-', '_')}")


def build_parser(settings: ProcessSettings) -> argparse.ArgumentParser:
    p = _Parser(prog="meter-gateway", description="Reads energy meters and delivers every reading to platforms.")
    p.add_argument("--version", action="version", version=f"meter-gateway {__version__}")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=settings.log_level)
    p.add_argument("--log-format", choices=("auto", "json", "console"), default=settings.log_format)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        command = _command(name)
        sp = sub.add_parser(name, help=command.HELP)
        if getattr(command, "CONFIGURED", True):
            sp.add_argument("-c", "--config", default=settings.config, help=f"YAML file (default {settings.config})")
        command.arguments(sp)
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
        code: int = _command(args.command).main(args)
        return code
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
