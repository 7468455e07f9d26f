"""``meter-gateway intellimeter authorize``: the OAuth 2.0 device flow, for an account the gateway reads on behalf of
its owner, from a box without a screen.

1. The gateway asks Intellimeter for a device code (with the application's client id and secret).
2. It prints the address to open and the code to type there (and the address with the code already in it); the
   account's owner opens it on any phone or computer, logs in and approves.
3. Meanwhile it asks, no more often than the interval Intellimeter gave (slowing down when told to), whether the
   owner has answered; once approved, the tokens go to the cloud's ``token_file`` (default
   ``state_dir/intellimeter-<cloud>.token``), readable by its owner only (0600).

Nothing secret is printed: not the client secret, not the tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from gateway.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_RUNTIME, load
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.platforms.intellimeter.config import IntellimeterCloud

HELP = "Intellimeter: authorize the gateway to read an account (OAuth 2.0 device flow)"


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["authorize"])
    p.add_argument("--cloud", help="the intellimeter cloud to authorize (default: the only one)")


async def device_flow(cloud: IntellimeterCloud, state_dir: Path) -> str:
    from gateway.cloudhttp import CloudError
    from gateway.platforms.intellimeter.api import (
        IntellimeterApi,
        oauth_code,
        oauth_error,
        parse_hms,
        tokens_from_grant,
        write_tokens,
    )

    api = IntellimeterApi(cloud, state_dir)
    ident = {"client_id": cloud.client_id, "client_secret": cloud.client_secret.get_secret_value()}
    try:
        r = await api.post_auth({**ident, "grant_type": "device_code"})
        if r.status_code != 200:
            raise CloudError("auth", f"Intellimeter refused to start the device flow: {oauth_error(r)}")
        start = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
        if not isinstance(start, dict) or not all(isinstance(start.get(k), str) and start[k]
                                                  for k in ("device_code", "user_code", "verification_uri")):
            raise CloudError("bad_answer", "Intellimeter's device-code answer lacks device_code, user_code or"
                                           " verification_uri")
        interval = parse_hms(start.get("interval")) or 5.0
        lifetime = parse_hms(start.get("expires_in")) or 600.0
        uri = start["verification_uri"]
        print("On any phone or computer, open:")
        print(f"  {uri}")
        print(f"and enter the code {start['user_code']}, or open directly:")
        print(f"  {uri}{'&' if '?' in uri else '?'}{urlencode({'user_code': start['user_code']})}")
        print(f"Waiting for the account's owner to approve (the code expires in {round(lifetime / 60)} min) ...",
              flush=True)
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            r = await api.post_auth({**ident, "grant_type": "device_code", "device_code": start["device_code"]})
            if r.status_code == 200:
                tokens = tokens_from_grant(r.json(), time.time())
                path = cloud.token_path(state_dir)
                write_tokens(path, tokens)
                return f"Authorized: the tokens are in {path} (readable by its owner only). Restart the service."
            code = oauth_code(r)
            if code == "authorization_pending":
                continue
            if code == "slow_down":
                interval += 5.0
                continue
            if code == "access_denied":
                raise CloudError("auth", "the account's owner refused: nothing was changed")
            if code == "expired_token":
                raise CloudError("auth", "the code expired before it was approved: run authorize again")
            if r.status_code == 429 or r.status_code >= 500:
                continue  # the service's trouble: ask again at the next interval
            raise CloudError("auth", f"Intellimeter refused: {oauth_error(r)}")
        raise CloudError("auth", "the code expired before it was approved: run authorize again")
    finally:
        await api.close()


def main(args: argparse.Namespace) -> int:
    from gateway.platforms.intellimeter.config import IntellimeterCloud

    config = load(args)
    clouds = [c for c in config.clouds if isinstance(c, IntellimeterCloud)]
    if args.cloud:
        clouds = [c for c in clouds if c.name == args.cloud]
    if len(clouds) != 1:
        names = ", ".join(c.name for c in config.clouds if isinstance(c, IntellimeterCloud)) or "none"
        print(f"meter-gateway: name the intellimeter cloud to authorize with --cloud (intellimeter clouds: {names})",
              file=sys.stderr)
        return EXIT_CONFIG
    cloud = clouds[0]
    if cloud.flow != "device_code":
        print(f"meter-gateway: cloud {cloud.name} uses flow {cloud.flow}; set flow: device_code to authorize an"
              " account this way", file=sys.stderr)
        return EXIT_CONFIG
    try:
        print(asyncio.run(device_flow(cloud, config.state_dir)))
    except GatewayError as e:
        print(f"meter-gateway: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except ValueError:
        print("meter-gateway: Intellimeter's answer is not JSON", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK
