"""The container image, built from the Dockerfile and run with podman: the demo, the daemon as a non-root user with
a mounted configuration and a state volume, its HEALTHCHECK (healthy, then unhealthy when a platform is down), and
``stop`` as a clean SIGTERM. The base image is the Debian 12 root the packaging tests make (this machine pulls no
images); ``BASE`` defaults to the official Python image. Run: ``pytest -m packaging tests/packaging -n 0``."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.packaging.conftest import ROOT, need, run

pytestmark = pytest.mark.packaging

HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass
class Podman:
    base: list[str]  # podman and its global options (this test's own storage)
    image: str

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], check=check, timeout=timeout)


@pytest.fixture(scope="module")
def podman(bookworm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    need("podman")
    where = tmp_path_factory.mktemp("podman")
    conf = where / "containers.conf"
    # Lower limits than podman's defaults: a container cannot raise them without CAP_SYS_RESOURCE, which a
    # sandboxed CI machine may not give; runc where crun refuses cgroup v1/v2 hybrid hosts.
    runtime = 'runtime = "runc"\n' if shutil.which("runc") else ""
    conf.write_text(f'[engine]\n{runtime}[containers]\ndefault_ulimits = ["nofile=1024:4096", "nproc=4096:4096"]\n')
    base = ["env", f"CONTAINERS_CONF={conf}", "podman", "--root", str(where / "storage"), "--runroot",
            str(where / "run")]
    p = Podman(base, "localhost/meter-gateway:test")
    try:
        tar = subprocess.Popen(["tar", "-C", str(bookworm), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*base, "import", "-", "localhost/debian-bookworm:test"], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        tar.wait()
        assert imported.returncode == 0, imported.stderr
        build = ["build", "--format", "docker", "--build-arg", "BASE=localhost/debian-bookworm:test", "-t", p.image]
        if HOST_CA.exists():
            # Debian's pip trusts the system's CA bundle: the host's, for a registry behind a TLS-inspecting proxy.
            build += ["--volume", f"{HOST_CA}:{HOST_CA}:ro"]
        p(*build, str(ROOT), timeout=900)
        yield p
    finally:
        subprocess.run([*base, "system", "reset", "--force"], capture_output=True, timeout=300)
        shutil.rmtree(where, ignore_errors=True)


def _config(tmp_path: Path, sink: str) -> Path:
    d = tmp_path / "etc"
    d.mkdir()
    (d / "config.yaml").write_text(
        "site: {name: container-test}\nstate_dir: /var/lib/meter-gateway\ntime_sync: ignore\n"
        "meters:\n  - {name: sim, type: simulated, model: three_phase, interval: 1s}\n"
        f"sinks:\n  - {sink}\n")
    (d / "config.yaml").chmod(0o644)
    d.chmod(0o755)
    return d


def _health(p: Podman, name: str) -> int:
    return p("healthcheck", "run", name, check=False).returncode


def test_image_demo_version_and_user(podman: Podman) -> None:
    assert podman("run", "--rm", podman.image, "--version").stdout.strip().startswith("meter-gateway ")
    demo = podman("run", "--rm", podman.image, "demo", "--duration", "3", "--interval", "1s", timeout=120)
    assert demo.stdout.count('"meter":"demo-main"') >= 2, demo.stdout[-2000:]
    info = json.loads(podman("image", "inspect", podman.image).stdout)[0]
    assert info["Config"]["User"] == "meter-gateway"
    # Kept in the image because it is built in Docker's format (OCI images have no health check).
    health = info.get("Healthcheck") or info["Config"].get("Healthcheck")
    assert health["Test"] == ["CMD", "meter-gateway", "status", "--check"], info


def test_daemon_with_mounted_config_and_state_is_healthy_and_stops_cleanly(podman: Podman, tmp_path: Path) -> None:
    etc = _config(tmp_path, "{name: archive, type: file, path: /var/lib/meter-gateway/archive.jsonl}")
    podman("volume", "create", "mg-state")
    mounts = ["-v", f"{etc}:/etc/meter-gateway:ro", "-v", "mg-state:/var/lib/meter-gateway"]
    podman("run", "-d", "--name", "mg", *mounts, podman.image)
    try:
        assert podman("exec", "mg", "id", "-u").stdout.strip() == "10001"
        deadline = time.monotonic() + 30
        while _health(podman, "mg") != 0:
            assert time.monotonic() < deadline, podman("logs", "mg").stderr[-2000:]
            time.sleep(1)
        time.sleep(3)
        started = time.monotonic()
        podman("stop", "-t", "20", "mg", timeout=60)
        took = time.monotonic() - started
        state = json.loads(podman("inspect", "mg").stdout)[0]["State"]
        logs = podman("logs", "mg")
        assert state["ExitCode"] == 0, state
        assert took < 10, f"stop took {took:.1f} s: SIGTERM was not a clean stop"
        assert '"event": "stopped"' in logs.stdout + logs.stderr
    finally:
        podman("rm", "-f", "mg", check=False)
    # The state outlives the container: what was delivered is on the volume, for the next container.
    report = json.loads(podman("run", "--rm", *mounts, podman.image, "status", "--json").stdout)
    assert report["daemon"]["running"] is False
    assert report["sinks"]["archive"]["delivered"] >= 3 and report["sinks"]["archive"]["depth"] == 0
    lines = podman("run", "--rm", *mounts, "--entrypoint", "cat", podman.image,
                   "/var/lib/meter-gateway/archive.jsonl").stdout.splitlines()
    assert len(lines) == report["sinks"]["archive"]["delivered"]


def test_healthcheck_reports_a_platform_that_is_down(podman: Podman, tmp_path: Path) -> None:
    etc = _config(tmp_path, "{name: wattics, type: wattics, url: 'http://127.0.0.1:9/m', allow_insecure_http: true,"
                            " username: u, password: p, data_points: [{id: s1, meter: sim}]}")
    podman("run", "-d", "--name", "mg-down", "-v", f"{etc}:/etc/meter-gateway:ro", podman.image)
    try:
        # The check fails once the sink is failing; the container is called unhealthy after the image's start
        # period (30 s) and three failed checks in a row.
        started = time.monotonic()
        first_failure = None
        while True:
            if _health(podman, "mg-down") != 0 and first_failure is None:
                first_failure = time.monotonic() - started
            status = json.loads(podman("inspect", "mg-down").stdout)[0]["State"]["Health"]["Status"]
            if status == "unhealthy":
                break
            assert time.monotonic() - started < 90, f"{status} after 90 s with its only platform down"
            time.sleep(2)
        assert first_failure is not None and first_failure < 30, first_failure
    finally:
        podman("rm", "-f", "mg-down", check=False)
