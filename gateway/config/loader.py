"""Load the configuration: YAML with line numbers, environment overrides, secret files, validation.

Every problem becomes one line ``FILE:LINE: key.path: what is wrong (what was expected)``; all problems of a
file are reported at once, as a :class:`~gateway.errors.ConfigError`.

Environment overrides are named ``METER_GATEWAY_<SECTION>__<NAME>__<KEY>``: a list section (``meters``,
``sinks``) is addressed by the item's ``name`` (``-`` written as ``_``), a mapping section by its key, so
``METER_GATEWAY_SINKS__WATTICS__PASSWORD`` sets ``password`` of the sink named ``wattics``. pydantic-settings'
own environment source only addresses nested mappings, not list items by name, hence this small overlay.

A secret may also come from a file: ``password_file: /run/credentials/meter-gateway.service/wattics`` (``%d`` stands
for ``$CREDENTIALS_DIRECTORY``, as with systemd's ``LoadCredential=``). The file's content, less its trailing
newline, becomes ``password``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.models import GatewayConfig
from gateway.config.problems import SECRET_FIELDS, problem_line, pydantic_problems, sort_key, strip_tags
from gateway.config.yamlfile import KeyPath, format_path, parse_yaml, read_config_text
from gateway.errors import ConfigError

ENV_PREFIX = "METER_GATEWAY_"


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    path = Path(path)
    return load_config_text(read_config_text(path), str(path), base_dir=path.parent, environ=environ)


def secrets_readable_by_others(path: Path, config: GatewayConfig) -> str | None:
    """A one-line warning when the file holds a secret in clear, or names a secret file, that every user of the
    machine can read."""
    for secret_file in config.secret_files:
        with contextlib.suppress(OSError):
            if secret_file.stat().st_mode & stat.S_IROTH:
                return (f"{secret_file} holds a secret and every user of this machine can read it; fix: chmod o-rwx"
                        f" {secret_file} (as installed: chown root:meter-gateway {secret_file} && chmod 640"
                        f" {secret_file})")
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    if not any(len(secret) >= 4 and secret in text for secret in config.secrets()):  # as the log redactor
        return None
    return (f"{path} holds passwords and every user of this machine can read it; fix: chmod o-rwx {path}"
            f" (as installed: chown root:meter-gateway {path} && chmod 640 {path}), or move the secrets to"
            " password_file / environment variables")


def load_config_text(
    text: str,
    filename: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    data, lines = parse_yaml(text, filename)
    origins: dict[KeyPath, str] = {p: f"{filename}:{n}" for p, n in lines.items()}
    env = os.environ if environ is None else environ
    problems = _apply_env(data, origins, env, filename)
    problems += _shell_variables(data, origins, filename)
    secret_files: list[Path] = []
    problems += _resolve_secret_files(data, origins, base_dir or Path("."), env, filename, files=secret_files)
    from gateway.config.profiles import resolve_modbus_meters

    # Every problem at once, in file order: a key whose value is wrong is reported, then left out (its default
    # stands in) so that the rest of the file is checked too, across sections (a wrong duration and a data point
    # naming an unknown meter come out together). Only a missing required key stops the checks that need it.
    work = copy.deepcopy(data)
    config = None
    dropped: set[KeyPath] = set()
    for _ in range(4):
        try:
            config = GatewayConfig.model_validate(work)
            break
        except ValidationError as e:
            problems += pydantic_problems(e, data, origins, filename, GatewayConfig, skip=dropped)
            if not _drop_wrong_keys(e, work, dropped):
                break
    if config is not None:
        problems += [problem_line(origins, path, filename, data, msg) for path, msg in config.cross_check()]
        try:
            config = resolve_modbus_meters(config, work, origins, filename, base_dir or Path("."))
        except ConfigError as e:
            problems += e.problems
    if problems or config is None:
        raise ConfigError(sorted(dict.fromkeys(problems), key=sort_key))
    config._secret_files = tuple(secret_files)
    return config


_SHELL_VARIABLE = re.compile(r"\$\{[^}]*\}|^\$[A-Za-z_][A-Za-z0-9_]*$")


def _shell_variables(data: Any, origins: dict[KeyPath, str], filename: str) -> list[str]:
    """``password: "${WATTICS_PASSWORD}"`` is taken as written by YAML: refused, with the gateway's own way to take
    a value from the environment (or a file), rather than sent to a platform as the password."""
    out: list[str] = []

    def walk(node: Any, path: KeyPath, env: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k), (*env, str(k).upper()))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                name = v.get("name") if isinstance(v, dict) else None
                walk(v, (*path, i), (*env, str(name).upper() if isinstance(name, str) else str(i)))
        elif isinstance(node, str) and _SHELL_VARIABLE.search(node):
            var = ENV_PREFIX + "__".join(env)
            out.append(problem_line(origins, path, filename, data, f"'{node}' is not expanded (the file is taken"
                                    f" as written): set the environment variable {var} instead, or use a *_file"
                                    " key for a secret"))

    walk(data, (), ())
    return out

def _drop_wrong_keys(e: ValidationError, data: dict[str, Any], dropped: set[KeyPath]) -> bool:
    """Remove from ``data`` every key a validation error is about, where the key is there and optional to the
    model (so the next try checks the rest); False when nothing could be removed (a required key is missing)."""
    removed = False
    for err in e.errors(include_url=False):
        path, _ = strip_tags(err["loc"], data, GatewayConfig)
        if err["type"] == "missing" or not path or not isinstance(path[-1], str):
            continue
        parent: Any = data
        for part in path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                parent = None
                break
        if isinstance(parent, dict) and path[-1] in parent:
            del parent[path[-1]]
            dropped.add(path)
            removed = True
    return removed


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def _apply_env(data: dict[str, Any], origins: dict[KeyPath, str], env: Mapping[str, str], filename: str) -> list[str]:
    problems: list[str] = []
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX) or "__" not in var[len(ENV_PREFIX):]:
            continue
        parts = [p for p in var[len(ENV_PREFIX):].split("__")]
        if any(not p for p in parts):
            problems.append(f"environment {var}: empty name between '__' separators")
            continue
        cur: Any = data
        path: list[str | int] = []
        ok = True
        for part in parts[:-1]:
            if isinstance(cur, dict):
                key = next((k for k in cur if _norm(k) == _norm(part)), part.lower())
                if key not in cur:
                    cur[key] = {}
                path.append(key)
                cur = cur[key]
            elif isinstance(cur, list):
                names = [_norm(str(it.get("name"))) if isinstance(it, dict) else None for it in cur]
                idx = names.index(_norm(part)) if _norm(part) in names else None
                if idx is None:
                    where = format_path(tuple(path), data)
                    problems.append(f"environment {var}: {filename} has no entry named '{part.lower()}' in {where}")
                    ok = False
                    break
                path.append(idx)
                cur = cur[idx]
            else:
                problems.append(f"environment {var}: {format_path(tuple(path), data)} is not a section")
                ok = False
                break
        if not ok:
            continue
        if not isinstance(cur, dict):
            problems.append(f"environment {var}: {format_path(tuple(path), data)} is not a section")
            continue
        leaf = next((k for k in cur if _norm(k) == _norm(parts[-1])), parts[-1].lower())
        cur[leaf] = env[var]
        # The environment wins over the file: drop the other form of the same secret.
        twin = leaf[:-5] if leaf.endswith("_file") else f"{leaf}_file"
        cur.pop(twin, None)
        origins[(*path, leaf)] = f"environment {var}"
    return problems


def _resolve_secret_files(
    node: Any, origins: dict[KeyPath, str], base_dir: Path, env: Mapping[str, str], filename: str,
    path: KeyPath = (), files: list[Path] | None = None, root: Any = None,
) -> list[str]:
    """Each ``*_file`` key of a secret replaced by the file's content; the files read are added to ``files``."""
    problems: list[str] = []
    files = [] if files is None else files
    root = node if root is None else root
    if isinstance(node, list):
        for i, item in enumerate(node):
            problems += _resolve_secret_files(item, origins, base_dir, env, filename, (*path, i), files, root)
        return problems
    if not isinstance(node, dict):
        return problems
    for key in list(node):
        value = node[key]
        stem = key[:-5] if key.endswith("_file") else None
        if stem in SECRET_FIELDS:
            where = origins.get((*path, key), f"{filename}:1")
            label = format_path((*path, key), root)
            problem = None
            secret = ""
            if stem in node:
                problem = f"give either {stem} or {key}, not both"
            elif not isinstance(value, str) or not value:
                problem = f"expected the path of a file holding the {stem}"
            else:
                secret_path = _expand(value, base_dir, env)
                try:
                    secret = secret_path.read_text(encoding="utf-8").rstrip("\r\n")
                except (OSError, UnicodeDecodeError) as e:
                    why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
                    problem = f"cannot read '{secret_path}' ({why})"
                else:
                    files.append(secret_path)
                    if not secret:
                        problem = f"'{secret_path}' is empty"
            if problem is not None:
                problems.append(f"{where}: {label}: {problem}")
                # A stand-in, so that the rest of the file is still checked (every problem reported at once).
                secret = node.get(stem) or "unreadable"
            del node[key]
            node[stem] = secret
            origins[(*path, stem)] = where
        elif isinstance(value, dict | list):
            problems += _resolve_secret_files(value, origins, base_dir, env, filename, (*path, key), files, root)
    return problems


def _expand(value: str, base_dir: Path, env: Mapping[str, str]) -> Path:
    if "%d" in value:
        value = value.replace("%d", env.get("CREDENTIALS_DIRECTORY", "/run/credentials/meter-gateway.service"))
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p
