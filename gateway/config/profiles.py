"""Meter profiles: one YAML file per meter model, built in (``gateway/profiles/``) or the technician's own
(``profiles_dir``; a file there with the name of a built-in one replaces it).

A profile's name is its file name without ``.yaml``. Every mistake in a profile file is one line naming that file,
the line and the register (``eastron_sdm630.yaml:14: registers[voltage_l1].type: ...``), like the configuration.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.models import GatewayConfig
from gateway.config.problems import problem_line, validate
from gateway.config.yamlfile import KeyPath, parse_yaml, read_config_text
from gateway.errors import ConfigError
from gateway.platforms.modbus.config import ModbusMeterConfig, ProfileFile, RegisterDefaults
from gateway.platforms.modbus.config import plain_name as plain
from gateway.platforms.modbus.registers import Point
from gateway.quantities import Quantity

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path
    spec: ProfileFile
    points: tuple[Point, ...]

    @property
    def title(self) -> str:
        return f"{self.spec.manufacturer} {self.spec.model}"

    @property
    def names(self) -> tuple[str, ...]:
        """The model and its aliases (rebadges and siblings read with this very map)."""
        return (self.spec.model, *self.spec.aliases)

    def known_as(self, name: str) -> bool:
        """Whether ``name`` is this profile's name, model or one of its aliases, written any which way
        ("Kostal KEM-P", "kostal kem p", "KEMP"), with or without the manufacturer in front."""
        wanted = plain(name)
        if wanted == plain(self.name):
            return True
        maker = plain(self.spec.manufacturer)
        return any(wanted in (plain(n), maker + plain(n)) for n in self.names)


def find(name: str, profiles: dict[str, Profile]) -> list[Profile]:
    """The profiles known under ``name`` (a profile name, a model or an alias)."""
    return [p for _, p in sorted(profiles.items()) if p.known_as(name)]


def available(profiles_dir: Path | None = None) -> dict[str, Path]:
    """Profile name -> file: the built-in ones, then ``profiles_dir``'s (which win on a clash)."""
    found = {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.yaml"))}
    if profiles_dir is not None and profiles_dir.is_dir():
        found |= {p.stem: p for p in sorted(profiles_dir.glob("*.yaml"))}
    return found


def load_profile(name: str, path: Path) -> Profile:
    """One profile file, validated; ConfigError with one line per problem otherwise."""
    filename = str(path)
    data, lines = parse_yaml(read_config_text(path), filename)
    origins: dict[KeyPath, str] = {p: f"{filename}:{n}" for p, n in lines.items()}
    spec = validate(ProfileFile, data, origins, filename)
    points = tuple(p for r in spec.registers if (p := r.resolve(spec.defaults)[0]) is not None)
    return Profile(name, path, spec, points)


def load_all(profiles_dir: Path | None = None) -> tuple[dict[str, Profile], list[str]]:
    """Every available profile that loads, and the problems of those that do not."""
    out: dict[str, Profile] = {}
    problems: list[str] = []
    for name, path in available(profiles_dir).items():
        try:
            out[name] = load_profile(name, path)
        except ConfigError as e:
            problems += e.problems
    return out, problems


def resolve_modbus_meters(
    config: GatewayConfig, data: dict[str, Any], origins: dict[KeyPath, str], filename: str, base_dir: Path
) -> GatewayConfig:
    """Every Modbus meter with its registers resolved (profile, inline registers, ``quantities``), or ConfigError."""
    modbus = [(i, m) for i, m in enumerate(config.meters) if isinstance(m, ModbusMeterConfig)]
    if not modbus:
        return config
    profiles_dir = config.profiles_dir
    if profiles_dir is not None and not profiles_dir.is_absolute():
        profiles_dir = base_dir / profiles_dir
    problems: list[str] = []
    if profiles_dir is not None and not profiles_dir.is_dir():
        problems.append(problem_line(origins, ("profiles_dir",), filename, data,
                                     f"'{profiles_dir}' is not a directory"))
    files = available(profiles_dir)
    loaded: dict[str, Profile] = {}
    meters = list(config.meters)
    for i, meter in modbus:
        profile: Profile | None = None
        if meter.sunspec:
            meters[i] = meter.resolved((), None)  # discovered from the device when it is first read
            continue
        if meter.profile is not None:
            if meter.profile not in files:
                problems.append(problem_line(origins, ("meters", i, "profile"), filename, data,
                                             _unknown_profile(meter.profile, files, profiles_dir)))
                continue
            if meter.profile not in loaded:
                try:
                    loaded[meter.profile] = load_profile(meter.profile, files[meter.profile])
                except ConfigError as e:
                    problems += e.problems
                    continue
            profile = loaded[meter.profile]
        points, located = _resolve(meter, profile)
        if located:
            problems += [problem_line(origins, ("meters", i, *path), filename, data, msg) for path, msg in located]
            continue
        meters[i] = meter.resolved(points, profile.spec.value_unit if profile else None)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))
    return config.model_copy(update={"meters": meters})


def _unknown_profile(name: str, files: dict[str, Path], profiles_dir: Path | None) -> str:
    """What to say about a profile name that is no file's: the profile it is an alias of, or the closest names."""
    every, _ = load_all(profiles_dir)
    owners = find(name, every)
    if owners:
        which = " or ".join(f"'{p.name}' ({p.title})" for p in owners)
        return f"'{name}' is a model name, read by profile {which}: write that profile's name here"
    close = difflib.get_close_matches(name, list(files), n=2)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    return f"no profile named '{name}' ({hint}'meter-gateway profiles' lists them with the models they read)"


def _resolve(meter: ModbusMeterConfig, profile: Profile | None) -> tuple[tuple[Point, ...], list[tuple[KeyPath, str]]]:
    """The meter's points (profile, then inline registers replacing the profile's per quantity, then the
    ``quantities`` filter), and the problems (key path within the meter, message) that stop that."""
    problems: list[tuple[KeyPath, str]] = []
    defaults = profile.spec.defaults if profile else RegisterDefaults()
    by_quantity = {p.quantity: p for p in profile.points} if profile else {}
    for j, r in enumerate(meter.registers):
        point, errs = r.resolve(defaults)
        problems += [(("registers", j, *k), m) for k, m in errs]
        if point is not None:
            by_quantity[point.quantity] = point
    for k, q in enumerate(meter.quantities or []):
        if q not in by_quantity and q not in {r.quantity for r in meter.registers}:
            listed = ", ".join(sorted(x.value for x in by_quantity))
            problems.append((("quantities", k), f"'{q.value}' is not read by this meter (it reads: {listed})"))
    if meter.quantities is not None:
        by_quantity = {q: p for q, p in by_quantity.items() if q in meter.quantities}
    if not problems and Quantity.VALUE in by_quantity and not (
            meter.value_unit or (profile and profile.spec.value_unit)):
        problems.append((("value_unit",), "required: the unit of this meter's value (m3, l, kWh, degC, ...)"))
    return tuple(sorted(by_quantity.values(), key=lambda p: (p.function, p.address))), problems


def meter_for(profile: Profile, name: str, unit: int, bus: str = "bus", quantities: Iterable[Quantity] | None = None,
              interval: str = "1m") -> ModbusMeterConfig:
    """A Modbus meter reading ``profile`` (or only ``quantities`` of it), as the configuration would resolve it:
    for tools that probe a line, and for tests and benchmarks."""
    wanted = None if quantities is None else list(quantities)
    meter = ModbusMeterConfig.model_validate({"name": name, "type": "modbus", "bus": bus, "unit": unit,
                                        "profile": profile.name, "interval": interval, "quantities": wanted})
    points, problems = _resolve(meter, profile)
    if problems:
        raise ConfigError([f"{name}: {'.'.join(map(str, path))}: {msg}" for path, msg in problems])
    return meter.resolved(points, profile.spec.value_unit)
