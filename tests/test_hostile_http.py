"""A platform that lies over HTTPS: generated answers (hypothesis) from a real TLS server, against the Wattics sink
and its forwarder with a real on-disk queue.

The four properties: the forwarder keeps running (no task fails), the other data point is unaffected, a reading is
taken as delivered only after a well-formed 2xx for it (never after a redirect, an informational answer, a made-up
status, a truncated or garbled answer), and the sink says what is wrong while it lasts.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.platforms.simulated.source import three_phase
from gateway.reading import Reading
from tests.helpers.https import HttpsServer
from tests.helpers.rig import Rig, until

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

#: (what the server answers, whether the platform took the packet). A 200 whose answer is garbled after its status
#: line (truncated body, bad chunks, a huge header) counts as taken: the gateway may take it as delivered or send
#: it again (a duplicate, never a loss); every other answer must never count as a delivery.
ANSWERS: list[tuple[bytes | None, bool]] = [
    (OK, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", True),
    (b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:1/elsewhere\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 999 Made Up\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 429 Slow Down\r\nRetry-After: -5\r\nContent-Length: 0\r\n\r\n", False),
    (b"HTTP/1.1 503 Busy\r\nRetry-After: soon\r\nContent-Length: 4\r\n\r\nbusy", False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{}", True),  # then the connection closes: truncated
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nnot a chunk\r\n", True),
    (b"SPAM SPAM SPAM\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nX-Junk: " + b"j" * 70_000 + b"\r\nContent-Length: 2\r\n\r\n{}", True),
    (b"HTTP/1.1 400 Bad\r\nContent-Length: 11\r\n\r\n\xff\xfe\x00binary!", False),
    (None, False),  # the connection closes without an answer
]


class LyingPlatform:
    """Answers each POST with the next answer of ``script`` (then honestly); records what it accepted."""

    def __init__(self, cert_dir: Path) -> None:
        self.https = HttpsServer(cert_dir, "ca.pem")
        self.script: list[int] = []
        self.accepted: dict[str, set[str]] = {}
        self.lock = threading.Lock()

    def start(self, script: list[int]) -> LyingPlatform:
        self.script = list(script)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                packet = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                with owner.lock:
                    answer, accepts = ANSWERS[owner.script.pop(0)] if owner.script else (OK, True)
                    if accepts:
                        owner.accepted.setdefault(packet["id"], set()).add(packet["tsISO8601"])
                if answer is None:
                    self.close_connection = True
                    return
                self.wfile.write(answer)
                self.wfile.flush()
                if answer is not OK:
                    self.close_connection = True

        self.https.serve(Handler)
        return self

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https.port}/measurements/v2/unifiedjson/"


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(script=st.lists(st.integers(0, len(ANSWERS) - 1), min_size=1, max_size=12))
def test_a_lying_platform_never_makes_a_reading_count_as_delivered(tmp_path_factory: Any, script: list[int]) -> None:
    asyncio.run(_against(tmp_path_factory.mktemp("lying"), script))


async def _against(tmp: Path, script: list[int]) -> None:
    platform = LyingPlatform(tmp / "certs").start(script)
    text = f"""\
meters: [{{name: a, type: simulated, interval: 10s}}, {{name: b, type: simulated, interval: 10s}}]
sinks:
  - name: wattics
    type: wattics
    url: "{platform.url}"
    username: u
    password: p
    ca_file: {platform.https.ca_file}
    request_timeout: 500ms
    backoff_base: 10ms
    backoff_cap: 50ms
    data_points: [{{id: ea, meter: a}}, {{id: eb, meter: b}}]
"""
    rig = await Rig(text, tmp, "wattics").start()
    try:
        base = 1_795_000_000_000
        readings = [Reading(m, base + i * 10_000, three_phase(base / 1000 + i * 10, 1)) for i in range(4)
                    for m in ("a", "b")]
        await rig.queue.append(readings)
        await until(lambda: rig.fwd is not None and all(
            rig.fwd.last_sent.get(f"wattics#{dp}", {}).get("ts_ms") == base + 30_000 for dp in ("ea", "eb")),
            within=60)
        assert rig.fwd is not None
        assert not rig.fwd.supervisor.health(), "no forwarder task failed"
        letters = await rig.queue.dead_letters("wattics")
    finally:
        await rig.stop()
        platform.https.shutdown()
    # The streams went past every reading: each one the platform took, or refused three times with 400 (then it is
    # a dead letter, counted and kept); none went past on a redirect, a made-up status or a broken answer.
    from zoneinfo import ZoneInfo

    from gateway.reading import local_iso

    for dp, meter in (("ea", "a"), ("eb", "b")):
        dead = {d.reading.ts_ms for d in letters if d.sink == f"wattics#{dp}"}
        for r in (r for r in readings if r.meter == meter):
            assert local_iso(r.ts_ms, ZoneInfo(rig.config.site.timezone)) in platform.accepted.get(dp, set()) \
                or r.ts_ms in dead, (dp, r.ts_ms, script)
