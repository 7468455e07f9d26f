"""The daemon, killed with SIGKILL 20 times while it drains a Wattics backlog, loses and reorders nothing."""

from __future__ import annotations

import os
import random
import sqlite3
import time
from datetime import datetime
from pathlib import Path

from gateway.platforms.simulated.source import three_phase
from gateway.quantities import Quantity
from gateway.queue import QueueStore
from gateway.queue.counters import SinkCount, sink_key
from gateway.reading import Reading
from tests.helpers.daemon import Daemon, last_queued, read_jsonl, still_queued
from tests.helpers.wattics_emulator import WatticsEmulator

CONFIG = """\
state_dir: {state}
meters:
  - {{name: a, type: simulated, interval: 100ms}}
  - {{name: b, type: simulated, model: gas, value_unit: m3, interval: 100ms}}
sinks:
  - name: wattics
    type: wattics
    url: {url}
    username: gateway
    password_file: {state}/wattics.pw
    ca_file: {ca}
    request_timeout: 2s
    backoff_base: 20ms
    backoff_cap: 300ms
    data_points:
      - {{id: elec-a, meter: a}}
      - {{id: gas-b, meter: b, format: value}}
  - name: archive
    type: file
    path: {state}/archive.jsonl
"""


def backlog_readings(state: Path, per_meter: int) -> None:
    store = QueueStore(state / "queue.db")
    store.open()
    store.begin()
    store.configure({"wattics#elec-a": ["a"], "wattics#gas-b": ["b"], "archive": ["a", "b"]})
    start = int(time.time() * 1000) - per_meter * 1000 - 60_000
    store.append([Reading("a", start + i * 1000, three_phase(start / 1000 + i)) for i in range(per_meter)])
    store.append([Reading("b", start + i * 1000, {Quantity.VALUE: 1000.0 + i}) for i in range(per_meter)])
    store.commit()
    store.close()


def delivered_ms(emu: WatticsEmulator, point: str) -> list[int]:
    return [round(datetime.fromisoformat(p["tsISO8601"]).timestamp() * 1000) for p in emu.packets[point]]


def test_sigkill_20_times_while_draining_a_backlog(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("CRASH_SEED", "0")) or None)
    kills = int(os.environ.get("WATTICS_KILLS", "20"))
    with WatticsEmulator(tmp_path / "certs", latency=0.003).start() as emu:
        (tmp_path / "wattics.pw").write_text("s3cret-pass\n")
        cfg = tmp_path / "config.yaml"
        cfg.write_text(CONFIG.format(state=tmp_path, url=emu.url, ca=emu.ca_file))

        # A long outage left a backlog (written as the daemon would have), then a short one adds to it live.
        backlog_readings(tmp_path, per_meter=int(os.environ.get("WATTICS_BACKLOG", "1500")))
        emu.answer(503, times=10**9)
        with Daemon(cfg).start() as d:
            time.sleep(3)
            d.kill()
        assert emu.count() == 0
        emu.clear_faults()

        # Drain it, killed at random moments, while the meters keep producing.
        for _ in range(kills):
            with Daemon(cfg).start() as d:
                time.sleep(rng.uniform(0.1, 0.8))
                d.kill()

        # A last clean run until everything queued has arrived.
        with Daemon(cfg).start() as d:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.3)
                last = last_queued(tmp_path)
                got = {"a": delivered_ms(emu, "elec-a"), "b": delivered_ms(emu, "gas-b")}
                if all(got[m] and got[m][-1] >= last[m] for m in ("a", "b")):
                    break
            rc, _ = d.stop()
            assert rc == 0

    last = last_queued(tmp_path)
    # Readings taken in the instant before the stop are still queued (the next start sends them): not lost.
    waiting = {k.split('#')[1]: v for k, v in still_queued(tmp_path, 'wattics').items()}
    archive: dict[str, set[int]] = {"a": set(), "b": set()}
    for row in read_jsonl(tmp_path / "archive.jsonl"):
        archive[row["meter"]].add(row["ts_ms"])
    stats = emu.stats()
    for meter, point in (("a", "elec-a"), ("b", "gas-b")):
        got = delivered_ms(emu, point)
        assert got == sorted(got) and len(got) == len(set(got))  # the emulator keeps accepted packets only
        assert got[-1] == last[meter] or last[meter] in waiting.get(point, set()), "the last reading queued is nowhere"
        # Both sinks were fed from the same queue: what one got, the other got too (or still has queued).
        missing = archive[meter] - set(got) - waiting.get(point, set())
        assert not missing, f"{point}: {len(missing)} readings never reached Wattics, e.g. {sorted(missing)[:3]}"
    assert stats["out_of_order"] == 0
    db = sqlite3.connect(tmp_path / "queue.db")
    resent = dict(db.execute("SELECT name, value FROM counters")).get(sink_key("wattics", SinkCount.RESENT), 0)
    db.close()
    # The gateway counts what it sends again after a kill that may have gone out before: an upper bound (its record
    # of how far it sent runs a few packets ahead of what it sent).
    assert stats["duplicates"] <= resent <= stats["duplicates"] + kills * 2 * 8
    print(f"\n{kills} kills: {stats['packets']} packets delivered, {stats['duplicates']} duplicates at the"
          f" emulator, {resent} counted as re-sent by the gateway, 0 out of order, 0 lost")


def test_verify_shows_what_wattics_processed_beside_what_was_sent(tmp_path: Path) -> None:
    import subprocess
    import sys

    with WatticsEmulator(tmp_path / "certs").start() as emu:
        (tmp_path / "wattics.pw").write_text("s3cret-pass\n")
        cfg = tmp_path / "config.yaml"
        cfg.write_text(CONFIG.format(state=tmp_path, url=emu.url, ca=emu.ca_file))
        with Daemon(cfg).start() as d:
            deadline = time.monotonic() + 20
            while (len(emu.packets["elec-a"]) < 3 or len(emu.packets["gas-b"]) < 3) and time.monotonic() < deadline:
                time.sleep(0.1)
            # While it runs: the running daemon is asked for its record as of now (written every 5 min otherwise).
            before = emu.packets["elec-a"][-1]["tsISO8601"]
            live = subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(cfg)], capture_output=True,
                                  text=True, timeout=60)
            assert "from the running daemon (live)" in live.stdout, live.stdout
            shown = live.stdout.split("gateway:  ", 1)[1]
            assert shown.startswith('{"id":"elec-a"') and shown.split('"tsISO8601":"')[1][:23] >= before[:23]
            assert d.stop()[0] == 0
        requests_before = emu.stats()["requests"]
        p = subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        out = p.stdout
        assert "the daemon is not running; its record from when it last ran" in out
        last = emu.packets["elec-a"][-1]["tsISO8601"]
        assert "wattics / elec-a (meter a, electrical)" in out
        assert f'Wattics:  HTTP 200 {{"stream":"elec-a","lastPacket":{{"id":"elec-a","tsISO8601":"{last}"' in out
        assert f'gateway:  {{"id":"elec-a","tsISO8601":"{last}"' in out
        assert emu.stats()["requests"] == requests_before  # GETs only: verify sends nothing
        assert "s3cret-pass" not in out + p.stderr
    # With the platform gone: a clear line per data point and exit 1.
    p = subprocess.run([sys.executable, "-m", "gateway", "verify", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert "Wattics:  cannot connect" in p.stdout and "Traceback" not in p.stderr
