"""Problems in a file, each one line: ``FILE:LINE: key.path: what is wrong (what was expected)``.

Used for the configuration file and for meter profile files alike: :func:`validate` turns data into a model and
reports every pydantic error and every ``cross_check()`` problem with the line its key came from.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from gateway.config.yamlfile import KeyPath, format_path
from gateway.errors import ConfigError

#: Keys whose value a problem line never shows.
SECRET_FIELDS = frozenset({"password", "client_secret", "consumer_secret", "token", "api_key", "key_password"})


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
        raise ConfigError(pydantic_problems(e, data, origins, filename, model)) from None
    if cross_check and isinstance(obj, _Checked) and (cross := obj.cross_check()):
        raise ConfigError([problem_line(origins, path, filename, data, msg) for path, msg in cross])
    return obj


def problem_line(origins: dict[KeyPath, str], path: KeyPath, filename: str, data: Any, msg: str) -> str:
    where = f"{filename}:1"
    for n in range(len(path), -1, -1):
        if path[:n] in origins:
            where = origins[path[:n]]
            break
    return f"{where}: {format_path(path, data) or 'top level'}: {msg}"


def pydantic_problems(
    e: ValidationError, data: Any, origins: dict[KeyPath, str], filename: str, root: type[BaseModel],
    skip: set[KeyPath] | None = None,
) -> list[str]:
    """One line per error; none for the keys of ``skip`` (already reported, then left out to check the rest)."""
    out: list[str] = []
    for err in e.errors(include_url=False):
        path, model = strip_tags(err["loc"], data, root)
        if skip and path in skip:
            continue
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            path = (*path, str((err.get("ctx") or {}).get("discriminator", "type")).strip("'"))
        out.append(problem_line(origins, path, filename, data, _message(err, path, model)))
    # Line order reads best; pydantic reports by schema order.
    return sorted(dict.fromkeys(out), key=sort_key)


def sort_key(line: str) -> tuple[int, str]:
    try:
        return int(line.split(":", 2)[1]), line
    except (IndexError, ValueError):
        return 0, line


def strip_tags(
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
