"""Read a YAML file into plain Python data plus the line each key stands on.

PyYAML's composer gives every node its position; walking the nodes ourselves (instead of ``yaml.safe_load``) lets
us report duplicate keys, which YAML loaders silently resolve to the last one, and keep ``key path -> line``
for error messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError

KeyPath = tuple[str | int, ...]

#: A configuration is a few hundred values; aliases (``*name``) repeat a part without copying it in the file, so
#: 600 bytes can stand for billions of values (an "alias bomb"). The walk stops past this many.
MAX_VALUES = 200_000
#: A configuration file larger than this is not one (checked before parsing).
MAX_BYTES = 4_000_000


def read_config_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([f"{path}: the configuration file does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path}: is a directory, not a configuration file"]) from None
    except PermissionError:
        raise ConfigError([f"{path}: cannot be read (permission denied)"]) from None
    except OSError as e:
        raise ConfigError([f"{path}: cannot be read ({e.strerror})"]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{path}: more than {MAX_BYTES // 1_000_000} MB: not a configuration file"])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            [f"{path}:{line}: the file is not UTF-8 text (byte 0x{raw[e.start]:02x}); save it as UTF-8"]
        ) from None


def parse_yaml(text: str, filename: str) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """The document as a dict, and the 1-based line of every key path in it."""
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        raise ConfigError([f"{filename}:1: the file is empty (expected at least 'meters:' and 'sinks:')"])
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        raise ConfigError([_syntax_error(e, filename)]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{filename}:1: YAML syntax error: {e}"]) from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError([f"{filename}:1: the file is empty (expected at least 'meters:' and 'sinks:')"])
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(
            [f"{filename}:{node.start_mark.line + 1}: the file must be a mapping of keys such as 'meters:' and"
             " 'sinks:', not a single value or a list"]
        )
    lines: dict[KeyPath, int] = {(): 1}
    problems: list[str] = []
    budget = [MAX_VALUES]
    try:
        data = _walk(node, (), lines, problems, filename, loader, budget)
    except _TooLarge as e:
        raise ConfigError([f"{filename}:{e.line}: the file stands for more than {MAX_VALUES:,} values (aliases"
                           " '*name' repeated within each other?); a configuration is far smaller"]) from None
    if problems:
        raise ConfigError(problems)
    assert isinstance(data, dict)
    return data, lines


#: PyYAML's words for the common mistakes, and what they mean to a person editing the file (the first match).
_SYNTAX_WORDS = (
    ("found character '\\t'", "a tab: indent with spaces, not tabs"),
    ("expected <block end>", "this line is indented differently from the lines above it (keys of one section"
                             " start in the same column; list items with '- ' in the same column)"),
    ("mapping values are not allowed here", "a second ': ' on this line (put a value holding ': ' in quotes) or"
                                            " a key indented under a line that already has a value"),
    ("could not find expected ':'", "a line without 'key: value' (a missing ':' or a space after it), or a"
                                    " continuation of the line above"),
    ("did not find expected key", "this line does not line up with the keys above it (indentation)"),
    ("did not find expected '-' indicator", "a list item that does not line up with the '- ' above it"),
    ("found undefined alias", "'*name' refers to an anchor '&name' that is not defined"),
    ("expected ',' or '}'", "an inline { ... } is not closed, or a comma is missing between its entries"),
    ("expected ',' or ']'", "an inline [ ... ] is not closed, or a comma is missing between its items"),
    ("found unexpected end of stream", "a quote that is never closed"),
    ("while scanning a quoted scalar", "a quote that is never closed"),
)


def _syntax_error(e: yaml.MarkedYAMLError, filename: str) -> str:
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else 1
    what = " ".join(x for x in (e.context, e.problem) if x)
    for words, meaning in _SYNTAX_WORDS:
        if words in what:
            return f"{filename}:{line}: YAML syntax error: {meaning} (the parser: {what})"
    return f"{filename}:{line}: YAML syntax error: {what}"


class _TooLarge(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _walk(
    node: yaml.Node,
    path: KeyPath,
    lines: dict[KeyPath, int],
    problems: list[str],
    filename: str,
    loader: yaml.SafeLoader,
    budget: list[int],
) -> Any:
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLarge(node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys ("<<: *defaults")
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):  # never built: it could be an alias bomb
                problems.append(f"{filename}:{line}: {format_path(path) or 'top level'}: a key must be text, not"
                                " a list or a mapping")
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str):
                problems.append(f"{filename}:{line}: {format_path(path) or 'top level'}: key {key!r} must be text")
                continue
            if key in out:
                problems.append(
                    f"{filename}:{line}: {format_path((*path, key))}: duplicate key (first given on line"
                    f" {lines[(*path, key)]}; remove one)"
                )
                continue
            lines[(*path, key)] = line
            out[key] = _walk(value_node, (*path, key), lines, problems, filename, loader, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            items.append(_walk(item, (*path, i), lines, problems, filename, loader, budget))
        return items
    return loader.construct_object(node, deep=True)


def format_path(path: KeyPath, data: Any = None) -> str:
    """``sinks[archive].path``: list items are named by their ``name:`` (a register by its ``quantity:``)."""
    out = ""
    cur = data
    prev: str | int = ""
    for part in path:
        if isinstance(part, int):
            label = str(part)
            if isinstance(cur, list) and 0 <= part < len(cur):
                item = cur[part]
                if isinstance(item, dict):
                    named = item.get(_LABELS.get(str(prev), "name"))
                    label = named if isinstance(named, str) else label
                cur = item
            else:
                cur = None
            out += f"[{label}]"
        else:
            out += f".{part}" if out else part
            cur = cur.get(part) if isinstance(cur, dict) else None
        prev = part
    return out


#: The key that names an item of a list, by the list's key (meters, sinks, buses: ``name``).
_LABELS = {"registers": "quantity", "probe": "quantity"}
