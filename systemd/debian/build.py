#!/usr/bin/env python3
"""Build meter-gateway's Debian packages: one per architecture, each carrying every library the gateway needs.

    python systemd/debian/build.py                          # amd64, arm64 and armhf into dist/
    python systemd/debian/build.py --arch amd64 --revision 2

Plain ``dpkg-deb`` from this script, not dh-virtualenv or nfpm: dh-virtualenv builds on the target architecture
only (an arm package needs an arm machine or an emulator) and nfpm is not in Debian; the package is a directory tree
and four maintainer scripts, which ``dpkg-deb --root-owner-group`` turns into a .deb on any Debian machine.

The libraries are the wheels PyPI publishes for each architecture and Python version (``pip download
--only-binary=:all: --platform ...``), installed into ``/usr/lib/meter-gateway/python3.X``; the versions are the
ones the resolver picks for the gateway on x86_64, the same on every architecture. PyYAML, which has no wheel for
armhf, is built from its source as pure Python for every architecture: the gateway never uses its optional C
extension (it reads YAML with the pure loader, for line numbers), so every architecture runs the same code. The
installed system needs no network and no pip (docs/operations.md "Installing the Debian package").

Needs: Debian's ``dpkg-deb``, and pip (run it from the project's virtual environment). Prints the path of each
package built.
"""

from __future__ import annotations

import argparse
import email.parser
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
NAME = "meter-gateway"
MAINTAINER = "meter-gateway maintainers <maintainers@meter-gateway.example>"

#: Debian architecture -> the machine name in manylinux wheel tags.
ARCHES = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
#: Debian 12 (bookworm, Raspberry Pi OS) ships Python 3.11 and glibc 2.36; Debian 13 (trixie) Python 3.13.
PYTHONS = ("3.11", "3.13")
GLIBC_MAX = 36
#: Libraries installed from a pure-Python build of their source on every architecture, and how it is asked for.
PURE = {"pyyaml": {"PYYAML_FORCE_LIBYAML": "0"}}


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, cwd=cwd, text=True, capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(f"build.py: {' '.join(cmd[:6])} ... failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}\n")
        raise SystemExit(1)
    return done.stdout


def _pip(*args: str, env: dict[str, str] | None = None) -> str:
    return _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], env=env)


def _platforms(machine: str) -> list[str]:
    """The wheel tags a Debian 12 machine of this kind runs (manylinux: the glibc the wheel needs, at most 2.36)."""
    return [*(f"manylinux_2_{minor}_{machine}" for minor in range(GLIBC_MAX, 16, -1)), f"manylinux2014_{machine}"]


def _target_args(machine: str, python: str) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            "--abi", "cp" + python.replace(".", "")]
    for tag in _platforms(machine):
        args += ["--platform", tag]
    return args


def _wheel_name(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def version() -> str:
    text = (ROOT / "gateway" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    if not found:
        raise SystemExit("build.py: no __version__ in gateway/__init__.py")
    return found.group(1)


def source_date_epoch() -> int:
    """The last commit's time, so two builds of one commit give the same files (or now, outside a checkout)."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return int(os.environ["SOURCE_DATE_EPOCH"])
    done = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, text=True, capture_output=True)
    return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else int(time.time())


class Wheelhouse:
    """The gateway's wheel and, per Python version, the pinned set of libraries it needs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.project = self._build_project()
        self.pins = {python: self._resolve(python) for python in PYTHONS}
        self.pure: dict[str, Path] = {}

    def _build_project(self) -> Path:
        out = self.work / "project"
        _pip("wheel", "--no-deps", "-q", "-w", str(out), str(ROOT))
        (wheel,) = out.glob("meter_gateway-*.whl")
        return wheel

    def _resolve(self, python: str) -> dict[str, str]:
        """Names and versions the resolver picks for this Python, where every library has a wheel (x86_64)."""
        out = self.work / f"resolve-{python}"
        _pip("download", "-q", "-d", str(out), *_target_args("x86_64", python), str(self.project))
        pins = dict(_wheel_name(p) for p in out.glob("*.whl"))
        pins.pop("meter-gateway", None)
        return pins

    def fetch(self, machine: str, python: str) -> list[Path]:
        """Every wheel for one architecture and Python version: PyPI's, and the pure-Python builds."""
        out = self.work / f"wheels-{machine}-{python}"
        out.mkdir(parents=True, exist_ok=True)
        pins = self.pins[python]
        wanted = [f"{n}=={v}" for n, v in sorted(pins.items()) if n not in PURE]
        _pip("download", "-q", "--no-deps", "-d", str(out), *_target_args(machine, python), *wanted)
        # Only what was asked for: a kept --work directory may hold other versions from an earlier build.
        fetched = [p for p in out.glob("*.whl") if _wheel_name(p) in pins.items() and _wheel_name(p)[0] not in PURE]
        return [self.project, *fetched, *(self._pure(n, pins[n]) for n in sorted(set(pins) & set(PURE)))]

    def _pure(self, name: str, ver: str) -> Path:
        if name not in self.pure:
            out = self.work / f"pure-{name}"
            _pip("download", "-q", "--no-deps", "--no-binary=:all:", "-d", str(out), f"{name}=={ver}")
            (sdist,) = out.glob("*.tar.gz")
            _pip("wheel", "-q", "--no-deps", "-w", str(out), str(sdist), env=PURE[name])
            (wheel,) = out.glob("*-py3-none-any.whl")
            self.pure[name] = wheel
        return self.pure[name]


def install_libraries(wheels: list[Path], machine: str, python: str, target: Path) -> None:
    _pip("install", "-q", "--no-deps", "--no-index", "--no-compile", "--target", str(target),
         *_target_args(machine, python), *map(str, wheels))
    # Console scripts carry the build machine's interpreter path; /usr/bin/meter-gateway is the one entry point.
    shutil.rmtree(target / "bin", ignore_errors=True)
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache)
    for path in list(target.rglob("*")):
        if path.name == "direct_url.json":  # the build machine's path to the wheel
            path.unlink()
        elif path.is_file():
            path.chmod(0o644)
            if path.suffix == ".py":
                text = path.read_bytes()
                if text.startswith(b"#!"):  # a library module is not a script; a blank line keeps line numbers
                    path.write_bytes(text[text.index(b"\n"):] if b"\n" in text else b"")


def glibc_needed(lib: Path) -> str:
    """The newest glibc any compiled library asks for (its wheel's lowest manylinux tag), as a Debian version."""
    need = (2, 17)
    for wheel_file in lib.glob("python3.*/*.dist-info/WHEEL"):
        floors = []
        for line in wheel_file.read_text().splitlines():
            tag = line.partition("Tag:")[2].strip()
            found = re.search(r"manylinux_(\d+)_(\d+)_", tag)
            if found:
                floors.append((int(found.group(1)), int(found.group(2))))
            elif "manylinux2014" in tag:
                floors.append((2, 17))
        if floors:
            need = max(need, min(floors))
    return f"{need[0]}.{need[1]}"


def bundled_licenses(lib: Path) -> list[tuple[str, str, str]]:
    """(name, version, licence) of every library in the package, from its own metadata."""
    found = []
    for meta in sorted(lib.glob("python3.*/*.dist-info/METADATA")):
        msg = email.parser.Parser().parsestr(meta.read_text(errors="replace"), headersonly=True)
        licence = msg.get("License-Expression") or ""
        if not licence:
            classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or []
                           if c.startswith("License ::")]
            licence = ", ".join(classifiers) or (msg.get("License") or "see its METADATA").splitlines()[0][:80]
        entry = (msg["Name"], msg["Version"], licence)
        if entry not in found:
            found.append(entry)
    return found


def write_docs(root: Path, ver: str, revision: int, when: int) -> None:
    doc = root / "usr/share/doc" / NAME
    (doc / "examples").mkdir(parents=True)
    (doc / "docs").mkdir()
    shutil.copy(ROOT / "config" / "example.yaml", doc / "examples" / "config.yaml")
    for page in sorted((ROOT / "docs").glob("*.md")):
        shutil.copy(page, doc / "docs" / page.name)
    shutil.copy(ROOT / "README.md", doc / "README.md")
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    debian_changelog = (f"{NAME} ({ver}-{revision}) unstable; urgency=medium\n\n"
                        f"  * Release {ver}; what changed: /usr/share/doc/{NAME}/changelog.gz\n\n"
                        f" -- {MAINTAINER}  {stamp}\n")
    _gzip(doc / "changelog.Debian.gz", debian_changelog.encode(), when)
    _gzip(doc / "changelog.gz", (ROOT / "CHANGELOG.md").read_bytes(), when)
    licences = bundled_licenses(root / "usr/lib" / NAME)
    lines = ["Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
             f"Upstream-Name: {NAME}", "", "Files: *",
             f"Copyright: {time.gmtime(when).tm_year} meter-gateway developers",
             "License: proprietary", " The gateway's own code is not licensed for redistribution outside the",
             " organisation that built this package.", "", "Comment: bundled libraries",
             " The libraries below are installed, unmodified, under /usr/lib/meter-gateway/python3.*/; each carries",
             " its licence text in its *.dist-info directory there."]
    lines += [f" {name} {version}: {licence}" for name, version, licence in licences if name != NAME]
    (doc / "copyright").write_text("\n".join(lines) + "\n")


def _gzip(path: Path, data: bytes, when: int) -> None:
    with path.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=when) as z:
        z.write(data)


def unit_file() -> str:
    text = (ROOT / "systemd" / "meter-gateway.service").read_text()
    old = "ExecStart=/opt/meter-gateway/bin/meter-gateway "
    if old not in text:
        raise SystemExit("build.py: the unit's ExecStart is not the one this script rewrites")
    text = text.replace(old, "ExecStart=/usr/bin/meter-gateway ")
    # The unit's opening comment tells how to install it by hand; the package has done that.
    body = text[text.index("[Unit]"):]
    return (f"# meter-gateway as a systemd service, installed by its Debian package.\n"
            f"# Reload the configuration without a restart: systemctl reload meter-gateway\n\n{body}")


def build(arch: str, wheelhouse: Wheelhouse, out: Path, revision: int, when: int) -> Path:
    machine = ARCHES[arch]
    ver = version()
    with tempfile.TemporaryDirectory(prefix=f"mgdeb-{arch}-") as tmp:
        root = Path(tmp) / "root"
        lib = root / "usr/lib" / NAME
        for python in PYTHONS:
            install_libraries(wheelhouse.fetch(machine, python), machine, python, lib / f"python{python}")
        (root / "usr/bin").mkdir(parents=True)
        shutil.copy(HERE / NAME, root / "usr/bin" / NAME)
        (root / "usr/bin" / NAME).chmod(0o755)
        unit_dir = root / "lib/systemd/system"
        unit_dir.mkdir(parents=True)
        (unit_dir / f"{NAME}.service").write_text(unit_file())
        etc = root / "etc" / NAME
        etc.mkdir(parents=True)
        shutil.copy(HERE / "config.yaml", etc / "config.yaml")
        (etc / "config.yaml").chmod(0o644)  # postinst makes it 0640 root:meter-gateway (the group is made there)
        overrides = root / "usr/share/lintian/overrides"
        overrides.mkdir(parents=True)
        # The package is not uploaded to Debian's archive, so there is no bug of its upload to close.
        (overrides / NAME).write_text(f"{NAME}: initial-upload-closes-no-bugs\n")
        man = root / "usr/share/man/man1"
        man.mkdir(parents=True)
        _gzip(man / f"{NAME}.1.gz", (HERE / f"{NAME}.1").read_bytes(), when)
        write_docs(root, ver, revision, when)

        control_dir = root / "DEBIAN"
        control_dir.mkdir()
        for script in ("postinst", "prerm", "postrm"):
            shutil.copy(HERE / script, control_dir / script)
            (control_dir / script).chmod(0o755)
        (control_dir / "conffiles").write_text(f"/etc/{NAME}/config.yaml\n")
        md5 = []
        size = 0
        for path in sorted(p for p in root.rglob("*") if p.is_file() and control_dir not in p.parents):
            rel = path.relative_to(root).as_posix()
            size += path.stat().st_size
            if not rel.startswith("etc/"):
                md5.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {rel}")
        (control_dir / "md5sums").write_text("\n".join(md5) + "\n")
        pythons = " | ".join(f"python{p}" for p in PYTHONS)
        (control_dir / "control").write_text(
            f"Package: {NAME}\nVersion: {ver}-{revision}\nArchitecture: {arch}\nMaintainer: {MAINTAINER}\n"
            f"Installed-Size: {size // 1024 + 1}\n"
            f"Depends: python3 (>= {PYTHONS[0]}), {pythons}, libc6 (>= {glibc_needed(lib)}), adduser\n"
            "Section: net\nPriority: optional\n"
            "Description: reads energy meters and delivers every reading to cloud platforms\n"
            " An edge daemon for a Raspberry Pi or an industrial PC: it reads electricity,\n"
            " gas, water and heat meters over Modbus (RTU, TCP, RTU over TCP) and MQTT,\n"
            " and meter data from vendors' clouds, keeps every reading in an on-disk\n"
            " queue, and delivers each one, in order, to Wattics, Voltaware, Wegowise or\n"
            " a file, across outages, restarts and full disks.\n"
            " .\n"
            f" The package carries the libraries it needs (for Python {' and '.join(PYTHONS)})\n"
            " and installs without a network.\n")
        for path in root.rglob("*"):
            os.utime(path, (when, when), follow_symlinks=False)
        out.mkdir(parents=True, exist_ok=True)
        deb = out / f"{NAME}_{ver}-{revision}_{arch}.deb"
        _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
             env={"SOURCE_DATE_EPOCH": str(when)})
    return deb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="amd64,arm64,armhf", help="comma-separated: amd64, arm64, armhf")
    p.add_argument("--out", type=Path, default=ROOT / "dist")
    p.add_argument("--revision", type=int, default=1, help="the Debian revision (VERSION-REVISION)")
    p.add_argument("--work", type=Path, help="keep downloads here (default: a temporary directory)")
    args = p.parse_args(argv)
    arches = [a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = [a for a in arches if a not in ARCHES]
    if unknown:
        p.error(f"unknown architecture {', '.join(unknown)} (known: {', '.join(ARCHES)})")
    if not shutil.which("dpkg-deb"):
        p.error("dpkg-deb is missing (Debian's dpkg package)")
    when = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="mgdeb-work-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        wheelhouse = Wheelhouse(work)
        for arch in arches:
            print(build(arch, wheelhouse, args.out, args.revision, when))
    return 0


if __name__ == "__main__":
    sys.exit(main())
