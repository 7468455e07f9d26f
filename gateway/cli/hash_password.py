"""``meter-gateway hash-password``: the line to put in ``monitoring.page.password_file`` (or ``password``)."""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway.cli.common import EXIT_CONFIG, EXIT_OK

HELP = "print the hash of a password for the technician's page (monitoring.page.password_file)"
CONFIGURED = False


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stdin", action="store_true", help="read the password from the first line of standard input")


def main(args: argparse.Namespace) -> int:
    from gateway.web.auth import hash_password, password_problem

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("password for the page: ")
        if getpass.getpass("again: ") != password:
            print("meter-gateway: the two passwords differ; nothing printed", file=sys.stderr)
            return EXIT_CONFIG
    problem = password_problem(password)
    if problem or password.startswith("scrypt$"):
        print(f"meter-gateway: password: {problem or 'choose another'}", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return EXIT_OK
