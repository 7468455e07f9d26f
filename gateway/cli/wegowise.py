"""``meter-gateway wegowise authorize``: the OAuth 1.0a three-legged flow that gives the gateway its access token.

1. A request token is asked for with the consumer key and secret (``oob``: the user is shown a verifier instead of
   being sent back to a web address, as suits a box without a browser).
2. The technician opens the printed address in any browser, logs in to Wegowise, approves, and pastes the verifier.
3. The request token and verifier are exchanged for the access token and secret, written to the sink's
   ``token_file`` (default ``state_dir/wegowise-<sink>.token``), readable by its owner only (0600).

Nothing secret is printed: not the consumer secret, not the token secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from gateway.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, load
from gateway.errors import GatewayError
from gateway.files import write_atomic

HELP = "Wegowise: authorize the gateway (gives the access token the sink uses)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["authorize"])
    p.add_argument("--sink", help="the wegowise sink to authorize (default: the only one)")


def write_token(path: Path, token: str, secret: str) -> None:
    write_atomic(path, json.dumps({"token": token, "secret": secret}).encode(), 0o600)


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.wegowise.api import token_request
    from gateway.platforms.wegowise.config import WegowiseConfig

    config = load(args)
    sinks = [s for s in config.sinks if isinstance(s, WegowiseConfig)]
    if args.sink:
        sinks = [s for s in sinks if s.name == args.sink]
    if len(sinks) != 1:
        names = ", ".join(s.name for s in config.sinks if isinstance(s, WegowiseConfig)) or "none"
        print(f"meter-gateway: name the wegowise sink to authorize with --sink (wegowise sinks: {names})",
              file=sys.stderr)
        return EXIT_CONFIG
    sink = sinks[0]
    try:
        first = asyncio.run(token_request(sink, sink.request_token_path, callback="oob"))
        url = f"{sink.url.rstrip('/')}{sink.authorize_path}?oauth_token={first['oauth_token']}"
        print("Open this address in a browser, log in to Wegowise and approve the gateway:")
        print(f"  {url}")
        print("Then type the verifier Wegowise shows: ", end="", flush=True)
        verifier = sys.stdin.readline().strip()
        if not verifier:
            print("\nmeter-gateway: no verifier given; nothing was changed", file=sys.stderr)
            return EXIT_RUNTIME
        final = asyncio.run(token_request(sink, sink.access_token_path, first["oauth_token"],
                                          first["oauth_token_secret"], verifier=verifier))
    except GatewayError as e:
        print(f"meter-gateway: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    path = sink.token_path(config.state_dir)
    write_token(path, final["oauth_token"], final["oauth_token_secret"])
    print(f"Authorized: the access token is in {path} (readable by its owner only). Restart the service to use it.")
    return EXIT_OK
