"""The Debian package, proven on a Debian 12 root made by debootstrap: install, the first start refused until the
configuration passes check, a demo, a queue with readings across an upgrade to a rebuilt package, remove, purge.
The arm packages carry arm code; lintian has nothing to say. Run: ``pytest -m packaging tests/packaging -n 0``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.packaging.conftest import Chroot, Packages, need, run

pytestmark = pytest.mark.packaging

CONFIG = """\
site:
  name: chroot-test
state_dir: /var/lib/meter-gateway
time_sync: ignore
meters:
  - {name: sim, type: simulated, model: three_phase, interval: 1s}
sinks:
  # A platform that is down: every reading stays in the queue.
  - name: wattics
    type: wattics
    url: http://127.0.0.1:9/measurements
    allow_insecure_http: true
    username: u
    password: p
    data_points:
      - {id: s1, meter: sim}
"""


def _run_daemon(c: Chroot, seconds: float) -> None:
    """The daemon as the service runs it (the service user, its groups), stopped with SIGTERM as systemd stops it.
    chroot and setpriv exec, so the signal reaches the daemon itself."""
    proc = subprocess.Popen(["chroot", str(c.root), "setpriv", "--reuid=meter-gateway", "--regid=meter-gateway",
                             "--init-groups", "--", "meter-gateway", "run"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    time.sleep(seconds)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and '"event": "stopped"' in out, out[-2000:]


def _depth(c: Chroot) -> int:
    status = json.loads(c.sh("meter-gateway status --json").stdout)
    return int(status["sinks"]["wattics"]["depth"])


def _stat(c: Chroot, path: str) -> str:
    return c.sh(f"stat -c '%a %U %G' {path}").stdout.strip()


def test_install_upgrade_remove_purge_on_debian_12(packages: Packages, chroot: Chroot) -> None:
    c = chroot
    for name in ("amd64", "amd64-rebuilt"):
        (c.path("/tmp") / packages.debs[name].name).write_bytes(packages.debs[name].read_bytes())
    first, rebuilt = (f"/tmp/{packages.debs[n].name}" for n in ("amd64", "amd64-rebuilt"))

    # A fresh install: no network is needed (the chroot has no pip; the package brings its libraries), and the
    # service is not started with the starting configuration, which says what to do instead.
    out = c.sh(f"dpkg -i {first}").stdout
    assert "the service is not started" in out and "meters: must have at least 1 item(s)" in out, out
    assert "sudo meter-gateway check && sudo systemctl enable --now meter-gateway" in out
    assert c.sh("command -v meter-gateway").stdout.strip() == "/usr/bin/meter-gateway"
    assert c.sh("python3 -m pip --version", check=False).returncode != 0  # nothing came from pip
    user = c.sh("getent passwd meter-gateway").stdout.strip().split(":")
    assert user[5:] == ["/var/lib/meter-gateway", "/usr/sbin/nologin"], user
    assert "dialout" in c.sh("id -nG meter-gateway").stdout.split()
    assert _stat(c, "/etc/meter-gateway/config.yaml") == "640 root meter-gateway"
    assert _stat(c, "/var/lib/meter-gateway") == "750 meter-gateway meter-gateway"
    assert c.path("/lib/systemd/system/meter-gateway.service").read_text().count(
        "ExecStart=/usr/bin/meter-gateway run") == 1
    # Compiled at install for the Python present, by postinst (the service user cannot write there).
    assert c.sh("find /usr/lib/meter-gateway/python3.11 -name '*.pyc' | wc -l").stdout.strip() != "0"

    # One version everywhere.
    deb_version = c.sh("dpkg-query -W -f '${Version}' meter-gateway").stdout.strip()
    assert deb_version == f"{packages.version}-1"
    assert c.sh("meter-gateway --version").stdout.strip() == f"meter-gateway {packages.version}"

    # The demo, as an unprivileged user.
    demo = c.sh("cd /tmp && runuser -u meter-gateway -- meter-gateway demo --duration 3 --interval 1s", timeout=60)
    assert demo.stdout.count('"meter":"demo-main"') >= 2, demo.stdout[-2000:]

    # The technician's configuration, then readings that wait in the queue for a platform that is down.
    c.path("/etc/meter-gateway/config.yaml").write_text(CONFIG)
    c.sh("runuser -u meter-gateway -- meter-gateway check")
    _run_daemon(c, 5)
    before = _depth(c)
    assert before >= 3

    # Upgrade to a rebuilt package: the changed configuration is kept (not even asked about), so is the queue.
    out = c.sh(f"dpkg -i {rebuilt}").stdout
    assert "passes check" in out, out
    assert c.sh("dpkg-query -W -f '${Version}' meter-gateway").stdout.strip() == f"{packages.version}-2"
    assert c.path("/etc/meter-gateway/config.yaml").read_text() == CONFIG
    assert _stat(c, "/etc/meter-gateway/config.yaml") == "640 root meter-gateway"
    assert _depth(c) == before
    _run_daemon(c, 3)  # the new version opens the old queue and goes on appending to it
    assert _depth(c) > before

    # A system whose Python the package was not built for is told so, plainly.
    c.sh("mv /usr/lib/meter-gateway/python3.11 /usr/lib/meter-gateway/python3.99")
    other = c.sh("meter-gateway --version", check=False)
    c.sh("mv /usr/lib/meter-gateway/python3.99 /usr/lib/meter-gateway/python3.11")
    assert other.returncode == 1
    assert re.search(r"built for python3\.13, python3\.99 and this system has python3\.11", other.stderr), other

    # remove keeps the configuration and the queue, and leaves no compiled file behind.
    c.sh("dpkg -r meter-gateway")
    assert c.path("/etc/meter-gateway/config.yaml").read_text() == CONFIG
    assert c.path("/var/lib/meter-gateway/queue.db").exists()
    assert not c.path("/usr/bin/meter-gateway").exists() and not c.path("/usr/lib/meter-gateway").exists()
    assert "config-files" in c.sh("dpkg-query -W -f '${Status}' meter-gateway").stdout

    # purge removes them.
    c.sh("dpkg -P meter-gateway")
    assert not c.path("/etc/meter-gateway").exists() and not c.path("/var/lib/meter-gateway").exists()
    assert c.sh("dpkg-query -W meter-gateway", check=False).returncode != 0


@pytest.mark.parametrize(("arch", "machine"), [("arm64", "ARM aarch64"), ("armhf", "ARM, EABI5"),
                                                ("amd64", "x86-64")])
def test_each_package_carries_code_for_its_architecture(packages: Packages, arch: str, machine: str,
                                                        tmp_path: Path) -> None:
    need("file")
    deb = packages.debs[arch]
    assert run(["dpkg-deb", "-f", str(deb), "Architecture"]).stdout.strip() == arch
    run(["dpkg-deb", "-x", str(deb), str(tmp_path)])
    compiled = sorted(tmp_path.rglob("*.so"))
    listing = {so.relative_to(tmp_path).as_posix(): run(["file", "-b", str(so)]).stdout.strip() for so in compiled}
    print(f"\n{deb.name}: {deb.stat().st_size / 1e6:.1f} MB, {sum(1 for _ in tmp_path.rglob('*'))} entries")
    for name, kind in listing.items():
        print(f"  {name}: {kind}")
    for python in ("3.11", "3.13"):
        assert any(f"python{python}/pydantic_core/" in name for name in listing), listing
    wrong = {name: kind for name, kind in listing.items() if machine not in kind or not kind.startswith("ELF")}
    assert not wrong, wrong
    # Every library for every Python version, PyYAML as pure Python (the same code on every architecture).
    for python in ("3.11", "3.13"):
        lib = tmp_path / f"usr/lib/meter-gateway/python{python}"
        for package in ("gateway", "pydantic", "pymodbus", "paho", "httpx", "structlog", "yaml", "serial"):
            assert (lib / package / "__init__.py").exists(), (python, package)
        assert not list((lib / "yaml").glob("*.so"))


def test_lintian_has_nothing_to_say(packages: Packages) -> None:
    need("lintian")
    out = run(["lintian", "--tag-display-limit", "0", str(packages.debs["amd64"])], check=False)
    tags = [line for line in (out.stdout + out.stderr).splitlines() if re.match(r"^[EWI]: ", line)]
    assert not tags, "\n".join(tags)
