"""Whole-system fault soak: the gateway as a user deploys it, with faults injected at random, then counted.

16 meters on Modbus TCP and 4 on an RTU link over a pseudo-terminal pair, a Wattics emulator (HTTPS), a TLS mosquitto
standing in for Voltaware with a subscriber, and ``meter-gateway run`` at a 1 s poll interval (see ``site.py``).
For ``--duration`` seconds, one fault every few seconds, at random (``--seed``): SIGKILL of the gateway and restart,
SIGTERM and restart, Wattics answering 500/503/401 for a while, Wattics stalling, the broker stopped and restarted, a
meter going silent and coming back, the queue's file system full then freed (a real SQLITE_FULL: the queue file's
page cap is lowered to its current size while the gateway runs, and Wattics is down meanwhile, so that the backlog
needs room), and a SIGHUP with a changed configuration.

Then the faults are healed, the gateway drains its queue and is stopped, and the harness counts, from what the
platforms received and what the gateway confirmed (a ``file`` sink, the ledger, receives every reading the queue
confirmed): lost (must be 0), out of order (must be 0), duplicates (and the longest run of them), readings from the
wrong meter (must be 0: each simulated meter holds a voltage that names it), what was dropped on purpose and why,
restarts survived, and the time from a restart to the first delivery.

    python tests/soak/soak.py --duration 600 [--seed 7]

Prints a table; the last line is one JSON object. Exit status 1 if anything was lost, reordered or misattributed.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.platforms.wattics.sink import electrical_keys
from gateway.quantities import Quantity as Q
from gateway.queue.counters import MeterCount, SinkCount, meter_key, sink_key
from tests.helpers.daemon import queued, read_jsonl
from tests.soak.site import Site, meter_values, voltage, wait

FAULTS = ("sigkill", "sigterm", "wattics_errors", "wattics_stall", "broker_restart", "meter_silent", "disk_full",
          "sighup")


class Soak:
    def __init__(self, workdir: Path, duration: float, seed: int, tcp: int = 16, rtu: int = 4,
                 faults: tuple[str, ...] = FAULTS) -> None:
        self.rng = random.Random(seed)
        self.kinds = faults
        self.seed = seed
        self.duration = duration
        self.cap_file = workdir / "page-cap"
        self.site = Site(workdir, tcp_meters=tcp, rtu_meters=rtu,
                         seams={"page_cap_file": self.cap_file})
        self.faults: dict[str, int] = defaultdict(int)
        #: (when, whether a platform fault could delay the first delivery) of every start of the gateway
        self.spawns: list[tuple[float, bool]] = []
        #: until when a platform fault (or a stopped broker) may delay deliveries: restarts then are not timed
        self.platform_trouble_until = 0.0
        #: (when, fault) of every fault injected, to explain a slow restart
        self.timeline: list[tuple[float, str]] = []
        self.variant = 0
        self.timers: list[threading.Timer] = []

    # ------------------------------------------------------------ faults

    def start_gateway(self) -> None:
        self.spawns.append((time.time(), time.time() < self.platform_trouble_until))
        self.site.start_gateway()

    def later(self, seconds: float, fn: Any) -> None:
        t = threading.Timer(seconds, fn)
        t.daemon = True
        t.start()
        self.timers.append(t)

    def inject(self, fault: str) -> None:
        site, rng = self.site, self.rng
        d = site.gateway
        assert d is not None
        self.faults[fault] += 1
        self.timeline.append((time.time(), fault))
        if fault == "sigkill":
            d.kill()
            self.start_gateway()
        elif fault == "sigterm":
            d.stop(timeout=20)
            self.start_gateway()
        elif fault == "wattics_errors":
            site.wattics.answer(rng.choice((500, 503, 401)), times=rng.randint(5, 60))
            self.platform_trouble_until = max(self.platform_trouble_until, time.time() + 15)
        elif fault == "wattics_stall":
            site.wattics.stall(rng.uniform(1.0, 4.0), times=rng.randint(1, 4))
            self.platform_trouble_until = max(self.platform_trouble_until, time.time() + 20)
        elif fault == "broker_restart":
            site.broker.stop(signal.SIGTERM)
            down = rng.uniform(1.0, 4.0)
            self.platform_trouble_until = max(self.platform_trouble_until, time.time() + down + 15)
            time.sleep(down)
            site.broker.start()
        elif fault == "meter_silent":
            server, units = ((site.tcp, site.tcp_meters) if site.rtu is None or rng.random() < 0.6
                             else (site.rtu, site.rtu_meters))
            unit = rng.randint(1, units)
            server.call(lambda s: s.silent.add(unit))
            self.later(rng.uniform(2.0, 8.0), lambda: server.call(lambda s: s.silent.discard(unit)))
        elif fault == "disk_full":
            db = sqlite3.connect(f"file:{site.dir}/state/queue.db?mode=ro", uri=True, timeout=10)
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.close()
            self.cap_file.write_text(str(pages + 1))
            spell = rng.uniform(5.0, 15.0)
            self.later(spell, lambda: self.cap_file.unlink(missing_ok=True))
            # A queue that keeps up rewrites its delivered pages in place and needs no new room: a full disk
            # refuses nothing. It bites when a backlog must grow, so Wattics is down for the same spell.
            site.wattics.answer_for(503, spell)
            self.platform_trouble_until = max(self.platform_trouble_until, time.time() + spell + 15)
        elif fault == "sighup":
            self.variant += 1
            site.write_config(self.variant)
            d.signal(signal.SIGHUP)

    def heal(self) -> None:
        for t in self.timers:
            t.cancel()
        site = self.site
        site.wattics.clear_faults()
        self.cap_file.unlink(missing_ok=True)
        site.tcp.call(lambda s: s.silent.clear())
        if site.rtu is not None:
            site.rtu.call(lambda s: s.silent.clear())
        if site.broker.proc is None or site.broker.proc.poll() is not None:
            site.broker.start()

    # ------------------------------------------------------------ the run

    def run(self) -> dict[str, Any]:
        site = self.site
        site.start()
        try:
            self.start_gateway()
            started = time.time()
            end = time.monotonic() + self.duration
            while time.monotonic() < end:
                time.sleep(self.rng.uniform(2.0, 6.0))
                self.inject(self.rng.choice(self.kinds))
            self.heal()
            healed = time.time()
            time.sleep(3.0)  # meters answer again: a few more readings through healed platforms
            site.tcp.call(lambda s: s.silent.update(s.units))  # then no new readings: the queue can drain
            if site.rtu is not None:
                site.rtu.call(lambda s: s.silent.update(s.units))
            # The readings of the last seconds reach the file within commit_interval (5 s): judged before, the
            # queue looks drained while they wait in memory (a run once stopped with 80 of them left for Wattics).
            time.sleep(6.0)
            drained = wait(self.drained, 180, step=1.0)
            d = site.gateway
            assert d is not None
            try:
                rc, _ = d.stop(timeout=20)
            except subprocess.TimeoutExpired:
                print("the gateway did not stop within 20 s of SIGTERM; its last log lines:\n"
                      + "".join(d.raw[-40:]), file=sys.stderr)
                d.kill()
                rc = -9
            return self.count(started, healed, drained, rc)
        finally:
            site.close()

    def drained(self) -> bool:
        """Every sink has delivered what the queue holds: nothing waits in any stream."""
        return not self.waiting()

    def waiting(self) -> dict[str, set[tuple[str, int]]]:
        """Per sink, the (meter, ts) the queue still holds for it."""
        out: dict[str, set[tuple[str, int]]] = defaultdict(set)
        for (cursor, meter), stamps in queued(self.site.dir / "state").items():
            out[cursor.split("#", 1)[0]].update((meter, ts) for ts in stamps)
        return out

    # ------------------------------------------------------------ counting

    def count(self, started: float, healed: float, drained: bool, rc: int) -> dict[str, Any]:
        site = self.site
        rtu_names = {n for n, b, _ in site.meters() if b == "rtu"}
        units = {n: u for n, _, u in site.meters()}
        ledger = read_jsonl(site.dir / "ledger.jsonl")
        confirmed: set[tuple[str, int]] = set()
        wrong_meter = 0
        energy: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for r in ledger:
            key = (str(r["meter"]), int(r["ts_ms"]))
            confirmed.add(key)
            values = r["values"]
            if values.get("voltage_l1") != voltage(units[key[0]], key[0] in rtu_names):
                wrong_meter += 1
            if "energy_import_total" in values:
                energy[key[0]].append((key[1], values["energy_import_total"]))
        energy_backwards = sum(1 for seq in energy.values()
                               for (_, a), (_, b) in itertools.pairwise(sorted(seq)) if b < a)
        # Values, not only counts: every value of every reading (the ledger) and every key of every Wattics packet
        # must be what the simulated meter held for that quantity while it was read.
        wrong_values: list[str] = []
        for r in ledger:
            meter = str(r["meter"])
            for q, v in r["values"].items():
                if not held_then(units[meter], meter in rtu_names, int(r["ts_ms"]), Q(q), v):
                    wrong_values.append(f"{meter} {r['ts_ms']} {q}={v}")
        for meter, packets in site.wattics_packets().items():
            keys = electrical_keys(site.offered(meter))
            for packet in packets:
                ts = round(datetime.fromisoformat(packet["tsISO8601"]).timestamp() * 1000)
                for key, q in keys:
                    if key in packet and not held_then(units[meter], meter in rtu_names, ts, q, packet[key]):
                        wrong_values.append(f"wattics {meter} {packet['tsISO8601']} {key}={packet[key]}")
        queued = self.waiting()
        confirmed |= queued.get("ledger", set())  # confirmed, not yet in the ledger file
        platforms = {"wattics": site.wattics_arrivals(), "voltaware": site.voltaware_arrivals()}
        per_platform: dict[str, dict[str, Any]] = {}
        for name, arrivals in platforms.items():
            seen: set[tuple[str, int]] = set()
            high: dict[str, int] = {}
            run: dict[str, int] = defaultdict(int)
            longest = duplicates = out_of_order = 0
            for _, meter, ts in arrivals:
                key = (meter, ts)
                if key in seen:
                    duplicates += 1
                    run[meter] += 1
                    longest = max(longest, run[meter])
                    continue
                run[meter] = 0
                if ts < high.get(meter, -1):
                    out_of_order += 1
                high[meter] = max(high.get(meter, -1), ts)
                seen.add(key)
            waiting = queued.get(name, set())
            lost = confirmed - seen - waiting
            per_platform[name] = {
                "delivered": len(seen), "lost": len(lost), "lost_examples": sorted(lost)[:3],
                "still_queued": len(waiting), "out_of_order": out_of_order, "duplicates": duplicates,
                "longest_duplicate_run": longest, "not_in_ledger": len(seen - confirmed),
            }
        counters = dict(sqlite3.connect(f"file:{site.dir}/state/queue.db?mode=ro", uri=True)
                        .execute("SELECT name, value FROM counters").fetchall())
        dropped: dict[str, int] = defaultdict(int)
        # Read from outside, like an auditor: the names the queue gives its counters (gateway/queue/counters.py).
        for meter, _, _ in site.meters():
            for what in (MeterCount.DROPPED_WRITE_FAILED, MeterCount.REFUSED, MeterCount.HELD_EVICTED,
                         MeterCount.UNSTAMPABLE):
                dropped[what.value] += counters.get(meter_key(meter, what), 0)
        for sink in ("wattics", "voltaware"):
            for what in (SinkCount.EVICTED_MAX_AGE, SinkCount.EVICTED_MAX_SIZE):
                dropped[f"evicted ({what.value.rsplit('.', 1)[1]}, {sink})"] += counters.get(sink_key(sink, what), 0)
        dropped = defaultdict(int, {k: v for k, v in dropped.items() if v})
        first_delivery = []
        slowest: dict[str, Any] | None = None
        all_arrivals = sorted(at for arrivals in platforms.values() for at, _, _ in arrivals)
        for spawn, troubled in self.spawns[1:]:
            if troubled:
                continue
            after = next((at for at in all_arrivals if at > spawn), None)
            if after is not None:
                first_delivery.append(after - spawn)
                if slowest is None or after - spawn > slowest["s"]:
                    # What happened around it: the faults from 20 s before the restart to its first delivery.
                    slowest = {"s": round(after - spawn, 2), "faults_around": [
                        f"{fault} at {at - spawn:+.1f} s" for at, fault in self.timeline if spawn - 20 <= at <= after]}
        restarts = self.faults["sigkill"] + self.faults["sigterm"]
        result = {
            "bench": "soak", "seed": self.seed, "duration_s": round(healed - started), "meters": len(site.meters()),
            "faults": dict(self.faults), "restarts": restarts, "exit_code_last_stop": rc, "drained": drained,
            "confirmed": len(confirmed), "platforms": per_platform, "wrong_meter": wrong_meter,
            "energy_backwards": energy_backwards, "dropped_on_purpose": dict(dropped),
            "wrong_values": len(wrong_values), "wrong_value_examples": wrong_values[:5],
            "restart_to_first_delivery_s": _percentiles(first_delivery), "slowest_restart": slowest,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        }
        return result


#: A reading is stamped when its first answer arrived; the meter took that block's values a moment before (the
#: request's way there), and its last block's up to a poll's span later.
BEFORE_S, POLL_SPAN_S = 0.5, 3.0


def held_then(unit: int, rtu: bool, ts_ms: int, q: Q, value: float) -> bool:
    """Whether ``value`` is what the meter held for ``q`` while the poll stamped ``ts_ms`` ran: between the least and
    the most it held then, within float32's precision. A quantity the simulation has no curve for is held as 0 (the
    register is never written)."""
    lo, hi = _held_range(unit, rtu, ts_ms).get(q, (0.0, 0.0))
    slack = max(abs(lo), abs(hi)) * 2e-7 + 1e-9  # float32 keeps 24 bits; the meter's digits are rounded to them
    return lo - slack <= value <= hi + slack


@functools.cache
def _held_range(unit: int, rtu: bool, ts_ms: int) -> dict[Q, tuple[float, float]]:
    """Per quantity, the least and the most the meter held from just before ``ts_ms`` to a poll's span after it
    (sampled every 50 ms: the curves turn within a few seconds)."""
    curve = meter_values(unit, rtu)
    t0, steps = ts_ms / 1000 - BEFORE_S, round((BEFORE_S + POLL_SPAN_S) / 0.05)
    samples = [curve(t0 + i * 0.05) for i in range(steps + 1)]
    return {q: (min(s[q] for s in samples), max(s[q] for s in samples)) for q in samples[0]}


def _percentiles(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p99": None, "n": 0}
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, round(0.99 * (len(xs) - 1)))]
    return {"p50": round(statistics.median(xs), 2), "p99": round(p99, 2), "n": len(xs)}


def failures(r: dict[str, Any]) -> list[str]:
    out = [f"{p}: {v['lost']} lost, e.g. {v['lost_examples']}" for p, v in r["platforms"].items() if v["lost"]]
    out += [f"{p}: {v['out_of_order']} out of order" for p, v in r["platforms"].items() if v["out_of_order"]]
    out += [f"{p}: {v['not_in_ledger']} delivered but never confirmed" for p, v in r["platforms"].items()
            if v["not_in_ledger"]]
    if r["wrong_meter"]:
        out.append(f"{r['wrong_meter']} readings carry another meter's values")
    if r["energy_backwards"]:
        out.append(f"{r['energy_backwards']} energy totals went backwards")
    if r.get("wrong_values"):
        out.append(f"{r['wrong_values']} values differ from what the meter held, e.g. {r['wrong_value_examples']}")
    if not r["drained"]:
        out.append("the queue did not drain within 180 s after the faults stopped")
    if r["exit_code_last_stop"] != 0:
        out.append(f"the last SIGTERM exited {r['exit_code_last_stop']}")
    return out


def render(r: dict[str, Any]) -> str:
    lines = [f"soak: {r['duration_s']} s of faults, seed {r['seed']}, {r['meters']} meters at 1 s, {r['machine']}",
             "faults: " + ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items())),
             f"readings confirmed into the queue: {r['confirmed']}; restarts survived: {r['restarts']}",
             "",
             f"{'platform':<10} {'delivered':>9} {'lost':>5} {'out of order':>12} {'duplicates':>10}"
             f" {'longest run':>11} {'still queued':>12}"]
    for name, p in r["platforms"].items():
        lines.append(f"{name:<10} {p['delivered']:>9} {p['lost']:>5} {p['out_of_order']:>12} {p['duplicates']:>10}"
                     f" {p['longest_duplicate_run']:>11} {p['still_queued']:>12}")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(r["dropped_on_purpose"].items()) if v) or "none"
    fd = r["restart_to_first_delivery_s"]
    lines += ["", f"dropped on purpose: {dropped}",
              f"readings with another meter's values: {r['wrong_meter']}; energy totals going backwards:"
              f" {r['energy_backwards']}; values other than the meter held (ledger and every Wattics key):"
              f" {r.get('wrong_values', 0)}",
              f"restart to first delivery: p50 {fd['p50']} s, p99 {fd['p99']} s ({fd['n']} restarts)"]
    if (slow := r.get("slowest_restart")) is not None:
        lines.append(f"slowest restart: {slow['s']} s; faults around it: {', '.join(slow['faults_around'])}")
    return "\n".join(lines)


def run_soak(workdir: Path, duration: float, seed: int, faults: tuple[str, ...] = FAULTS) -> dict[str, Any]:
    return Soak(workdir, duration, seed, faults=faults).run()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of faults (default 600)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--faults", default=",".join(FAULTS), help=f"which to inject (default all: {','.join(FAULTS)})")
    args = ap.parse_args()
    kinds = tuple(args.faults.split(","))
    if not set(kinds) <= set(FAULTS):
        ap.error(f"--faults: unknown {sorted(set(kinds) - set(FAULTS))}")
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    with tempfile.TemporaryDirectory(dir=os.environ.get("SOAK_DIR", "/var/tmp")) as tmp:
        result = run_soak(Path(tmp), args.duration, seed, kinds)
    print(render(result))
    bad = failures(result)
    for line in bad:
        print("FAIL:", line)
    print(json.dumps(result))
    raise SystemExit(1 if bad else 0)


if __name__ == "__main__":
    main()
