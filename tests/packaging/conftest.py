"""Fixtures of the packaging tests (``pytest -m packaging tests/packaging -n 0``; root, Debian 12, a Debian mirror and
PyPI reachable): the Debian packages built by ``systemd/debian/build.py``, and a Debian 12 root made by
``debootstrap``, kept pristine for the tests to copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("METER_GATEWAY_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def need(*tools: str) -> None:
    """These tests are asked for by name: a missing tool is a failure that says what to install, not a skip."""
    if os.geteuid() != 0:
        pytest.fail("the packaging tests need root (dpkg in a chroot, a container engine)")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"the packaging tests need {', '.join(missing)} (.ci/run installs them with apt)")


def run(cmd: list[str], timeout: float = 600, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done  # type: ignore[no-any-return]


@dataclass
class Packages:
    version: str  # upstream, from gateway/__init__.py
    debs: dict[str, Path]  # "amd64", "arm64", "armhf", and "amd64-rebuilt" (the next Debian revision)


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    need("dpkg-deb")
    out = tmp_path_factory.mktemp("debs")
    work = tmp_path_factory.mktemp("deb-work")
    build = [sys.executable, str(ROOT / "systemd/debian/build.py"), "--out", str(out), "--work", str(work)]
    printed = run([*build, "--arch", "amd64,arm64,armhf"], timeout=1200).stdout.split()
    rebuilt = run([*build, "--arch", "amd64", "--revision", "2"], timeout=600).stdout.split()
    debs = {Path(p).name.rsplit("_", 1)[1].removesuffix(".deb"): Path(p) for p in printed}
    debs["amd64-rebuilt"] = Path(rebuilt[-1])
    sys.path.insert(0, str(ROOT / "systemd/debian"))
    try:
        import build as builder  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    return Packages(version=builder.version(), debs=debs)


@pytest.fixture(scope="session")
def bookworm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A minimal Debian 12 with Python (and venv, for the container tests' base image), as a fresh SD card has."""
    need("debootstrap")
    root = tmp_path_factory.mktemp("bookworm") / "root"
    run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,adduser", "bookworm", str(root),
         MIRROR], timeout=900)
    return root


class Chroot:
    """A copy of the pristine root, with /proc mounted while the test runs."""

    def __init__(self, pristine: Path, where: Path) -> None:
        self.root = where / "root"
        run(["cp", "-a", str(pristine), str(self.root)])
        run(["mount", "-t", "proc", "proc", str(self.root / "proc")])

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run(["chroot", str(self.root), "/bin/sh", "-c", script], check=check, timeout=timeout,
                   env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"})

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.root / "proc")], capture_output=True)


@pytest.fixture
def chroot(bookworm: Path, tmp_path: Path) -> Iterator[Chroot]:
    c = Chroot(bookworm, tmp_path)
    try:
        yield c
    finally:
        c.close()
        if not os.path.ismount(c.root / "proc"):  # never remove through a mount of the host's /proc
            shutil.rmtree(c.root, ignore_errors=True)
