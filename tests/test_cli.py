"""The command line as an operator uses it."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import __version__
from gateway.cli import main
from gateway.quantities import Quantity
from gateway.queue import QueueStore
from gateway.reading import Reading

CFG = """\
state_dir: {state}
meters: [{{name: m1, type: simulated}}]
sinks: [{{name: out, type: stdout}}, {{name: arch, type: file, path: {state}/a.jsonl}}]
"""


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(CFG.format(state=tmp_path))
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_version_and_usage_errors() -> None:
    p = run("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"meter-gateway {__version__}"
    p = run("frobnicate")
    assert p.returncode == 2 and "invalid choice" in p.stderr and "Traceback" not in p.stderr
    p = run()
    assert p.returncode == 2


def test_bad_process_environment_is_a_usage_error() -> None:
    p = subprocess.run([sys.executable, "-m", "gateway", "--version"], capture_output=True, text=True,
                       env={"METER_GATEWAY_LOG_LEVEL": "loud", "PATH": "/usr/bin"})
    assert p.returncode == 2
    assert p.stderr.startswith("meter-gateway: environment METER_GATEWAY_LOG_LEVEL:")


def test_status_before_the_daemon_ever_ran(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "-c", str(cfg)]) == 0
    assert "no queue yet" in capsys.readouterr().out


def test_deadletter_list_retry_purge(cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = QueueStore(tmp_path / "queue.db")
    s.open()
    s.begin()
    s.configure({"out": ["m1"], "arch": ["m1"]})
    s.dead_letter("out", Reading("m1", 1_700_000_000_000, {Quantity.VALUE: 1.0}), "HTTP 400: bad id")
    s.dead_letter("arch", Reading("m1", 1_700_000_001_000, {Quantity.VALUE: 2.0}), "refused")
    s.commit()
    s.close()

    assert main(["deadletter", "-c", str(cfg), "list"]) == 0
    out = capsys.readouterr().out
    assert "#1 sink=out meter=m1 ts=2023-11-14T22:13:20.000Z state=dead attempts=1 reason=HTTP 400: bad id" in out
    assert "#2 sink=arch" in out

    assert main(["deadletter", "-c", str(cfg), "retry", "--sink", "out"]) == 0
    assert "1 dead letter marked for retry" in capsys.readouterr().out
    assert main(["deadletter", "-c", str(cfg), "list", "--sink", "out"]) == 0
    assert "state=retry" in capsys.readouterr().out

    assert main(["deadletter", "-c", str(cfg), "purge"]) == 2  # refuses to purge everything unasked
    assert "--all" in capsys.readouterr().err
    assert main(["deadletter", "-c", str(cfg), "purge", "--id", "2"]) == 0
    assert "1 dead letter purged" in capsys.readouterr().out
    assert main(["deadletter", "-c", str(cfg), "purge", "--all"]) == 0
    assert main(["deadletter", "-c", str(cfg), "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out


def test_demo_runs_with_no_hardware_and_prints_readings() -> None:
    p = run("demo", "--duration", "2.5", "--interval", "500ms")
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) >= 4
    assert '"meter":"demo-main"' in p.stdout and '"meter":"demo-gas"' in p.stdout
    assert '"power_active_total"' in p.stdout


def test_a_second_daemon_on_the_same_state_dir_exits_naming_the_first(tmp_path: Path) -> None:
    """Two daemons on one queue would both poll and both deliver: the second exits 1 with one line naming the
    first one's PID, and commands that only read keep working while the first runs."""
    from tests.helpers.daemon import Daemon

    path = tmp_path / "c.yaml"
    path.write_text(f"state_dir: {tmp_path}\nmeters: [{{name: m1, type: simulated, interval: 1s}}]\n"
                    f"sinks: [{{name: arch, type: file, path: {tmp_path}/a.jsonl}}]\n")
    with Daemon(path).start() as first:
        assert first.proc is not None
        second = run("run", "-c", str(path))
        status = run("status", "-c", str(path))
        first.stop()
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.strip().splitlines() == [
        f"meter-gateway: another meter-gateway (pid {first.proc.pid}) already runs on {tmp_path}: stop it first"
        " ('systemctl stop meter-gateway'), or give this one its own state_dir"]
    assert status.returncode == 0 and "daemon: running" in status.stdout
    again = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(path)], stderr=subprocess.PIPE)
    try:  # the lock went with the first process: a new one starts
        with pytest.raises(subprocess.TimeoutExpired):
            again.wait(3)
    finally:
        again.kill()
        again.wait()


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small file system of its own (mounting needs root, as CI and the development machines run)."""
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_read_only_or_full_file_system_says_which_and_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        path.write_text(CFG.format(state=ro))
        p = run("run", "-c", str(path))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"the file system holding {ro} is read-only" in p.stderr
    with tmpfs(tmp_path / "full", "size=64k") as full:
        with contextlib.suppress(OSError), (full / "filler").open("wb") as f:
            while True:
                f.write(b"x" * 4096)
                f.flush()
        path.write_text(CFG.format(state=full))
        p = run("run", "-c", str(path))
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"the disk holding {full} is full" in p.stderr, p.stderr


def test_a_state_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    path = tmp_path / "c.yaml"
    path.write_text(CFG.format(state=blocker))
    for command in ("check", "run"):  # check says it before a start would
        p = run(command, "-c", str(path))
        assert p.returncode == 2 and "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines()[0] == f"{path}:1: state_dir: {blocker} is a file, not a directory"
