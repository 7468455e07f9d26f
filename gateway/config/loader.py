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
import difflib
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from gateway.config.models import GatewayConfig
from gateway.config.yamlfile import KeyPath, format_path, parse_yaml, read_config_text
from gateway.errors import ConfigError

ENV_PREFIX = "METER_GATEWAY_"
SECRET_FIELDS = frozenset({"password", "client_secret", "token", "api_key", "key_password"})


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
            problems += _pydantic_problems(e, data, origins, filename, GatewayConfig, skip=dropped)
            if not _drop_wrong_keys(e, work, dropped):
                break
    if config is not None:
        problems += [problem_line(origins, path, filename, data, msg) for path, msg in config.cross_check()]
        try:
            config = resolve_modbus_meters(config, work, origins, filename, base_dir or Path("."))
        except ConfigError as e:
            problems += e.problems
    if problems or config is None:
        raise ConfigError(sorted(dict.fromkeys(problems), key=_sort_key))
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
        path, _ = _strip_tags(err["loc"], data, GatewayConfig)
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


@runtime_checkable
class _Checked(Protocol):
    def cross_check(self) -> list[tuple[tuple[str | int, ...], str]]: ...


M = TypeVar("M", bound=BaseModel)


def validate(
    model: type[M], data: dict[str, Any], origins: dict[KeyPath, str], filename: str, cross_check: bool = True
) -> M:
    """``data`` as a ``model``, then its own ``cross_check()``; every problem one line, raised as ConfigError."""
    try:
        obj = model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_pydantic_problems(e, data, origins, filename, model)) from None
    if cross_check and isinstance(obj, _Checked) and (cross := obj.cross_check()):
        raise ConfigError([problem_line(origins, path, filename, data, msg) for path, msg in cross])
    return obj


# ---------------------------------------------------------------- problems


def problem_line(origins: dict[KeyPath, str], path: KeyPath, filename: str, data: Any, msg: str) -> str:
    where = f"{filename}:1"
    for n in range(len(path), -1, -1):
        if path[:n] in origins:
            where = origins[path[:n]]
            break
    return f"{where}: {format_path(path, data) or 'top level'}: {msg}"


def _pydantic_problems(
    e: ValidationError, data: Any, origins: dict[KeyPath, str], filename: str, root: type[BaseModel],
    skip: set[KeyPath] | None = None,
) -> list[str]:
    """One line per error; none for the keys of ``skip`` (already reported, then left out to check the rest)."""
    out: list[str] = []
    for err in e.errors(include_url=False):
        path, model = _strip_tags(err["loc"], data, root)
        if skip and path in skip:
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, str((err.get("ctx") or {}).get("discriminator", "type")).strip("'"))
        out.append(problem_line(origins, path, filename, data, _message(err, path, model)))
    # Line order reads best; pydantic reports by schema order.
    return sorted(dict.fromkeys(out), key=_sort_key)


def _sort_key(line: str) -> tuple[int, str]:
    try:
        return int(line.split(":", 2)[1]), line
    except (IndexError, ValueError):
        return 0, line


def _strip_tags(
    loc: tuple[int | str, ...], data: Any, root: type[BaseModel]
) -> tuple[KeyPath, type[BaseModel] | None]:
    """Map pydantic's error location onto the file's key path (dropping union tags such as ``'file'``).

    Also returns the model class that owns the last key, so an unknown key can list the valid ones.
    """
    path: list[str | int] = []
    cur = data
    model: Any = root
    for i, part in enumerate(loc):
        if isinstance(cur, dict) and isinstance(part, str) and part not in cur and part in cur.values():
            continue  # discriminated-union tag (the value of type:, key:...), not a key
        if (isinstance(part, str) and part.startswith("function-")) or part in ("list[...]", "dict[...]"):
            continue
        path.append(part)
        if i < len(loc) - 1:
            model = _field_model(model, part, cur)
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
        else:
            cur = None
    return tuple(path), model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_model(model: Any, part: str | int, raw: Any) -> Any:
    """The type found one step further down ``model`` (best effort, for listing valid keys)."""
    if isinstance(model, type) and issubclass(model, BaseModel) and isinstance(part, str):
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann: Any = field.annotation
        nxt = raw.get(part) if isinstance(raw, dict) else None
        return _unwrap(ann, nxt)
    if isinstance(part, int) and isinstance(model, list | tuple):
        item = raw[part] if isinstance(raw, list) and 0 <= part < len(raw) else None
        return _unwrap(model[0], item)
    return None


def _unwrap(ann: Any, raw: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(ann)[0], raw)
    if origin is list:
        return [typing.get_args(ann)[0]]
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(ann) if a is not type(None)]
        tag = raw.get("type") if isinstance(raw, dict) else None
        for opt in options:
            inner = _unwrap(opt, raw)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                tf = inner.model_fields.get("type")
                if tf is None or tag is None or tag in typing.get_args(tf.annotation):
                    return inner
        return _unwrap(options[0], raw) if options else None
    return ann


_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "text", "list_type": "a list (- item lines)",
    "dict_type": "a mapping (key: value lines)", "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)", "path_type": "a file path",
}


def _message(err: Any, path: KeyPath, model: type[BaseModel] | None) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    secret = bool(path) and isinstance(path[-1], str) and path[-1] in SECRET_FIELDS
    got = "" if secret else _show(err.get("input"))
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        valid = sorted(model.model_fields) if model else []
        key = path[-1] if path else ""
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"unknown key ({hint}expected one of: {', '.join(valid)})" if valid else "unknown key"
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected one of: {ctx.get('expected_tags', '')})"
    if kind == "union_tag_not_found":
        return f"required key {ctx.get('discriminator', 'type')} is missing"
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {got}" if got else f"expected {_TYPE_WORDS[kind]}"
    if kind == "literal_error":
        return f"{got} is not allowed (expected one of: {ctx.get('expected', '')})"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "")
        return f"{got} is out of range (expected a value {op} {bound})"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length', 1)} item(s)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"is too long (at most {ctx.get('max_length')} characters)"
    if kind == "string_pattern_mismatch":
        return f"{got} is not a valid name (letters, digits, '_', '.', '-'; starting with a letter or digit)"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    msg = str(err["msg"])
    return f"{msg[0].lower()}{msg[1:]}" + (f" (got {got})" if got else "")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ---------------------------------------------------------------- environment and secret files


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
