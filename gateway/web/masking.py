"""A configuration file as the page shows it, secrets masked, and a masked file put back together for applying.

A secret is the value of a key named ``password``, ``client_secret``, ``token``... (the same keys ``check`` treats
as secrets); the page shows ``"********"`` instead. When a file comes back from the page with ``"********"`` still
in such a key, the value the running file has under the same key (list items named by their ``name``, so reordering
the sinks does not move a secret to another sink) is put back. Whatever else in the text matches a configured secret
(a password in a URL...) is replaced by ``***`` when shown, as in the logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import yaml

from gateway.config.problems import SECRET_FIELDS
from gateway.logs import REDACTOR

MASK = "********"
Path = tuple[str, ...]


def _secret_scalars(text: str) -> Iterator[tuple[Path, yaml.ScalarNode]]:
    """Every scalar under a secret key, with a path that names list items by their ``name``."""
    node = yaml.SafeLoader(text).get_single_node()

    def walk(n: yaml.Node, path: Path) -> Iterator[tuple[Path, yaml.ScalarNode]]:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = str(k.value)
                if key in SECRET_FIELDS and isinstance(v, yaml.ScalarNode):
                    yield (*path, key), v
                else:
                    yield from walk(v, (*path, key))
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                name = next((str(v.value) for k, v in item.value if k.value == "name"
                             and isinstance(v, yaml.ScalarNode)), None) if isinstance(item, yaml.MappingNode) else None
                yield from walk(item, (*path, f"name={name}" if name else f"#{i}"))

    if node is not None:
        yield from walk(node, ())


def _replace(text: str, spans: list[tuple[int, int, str]]) -> str:
    for start, end, new in sorted(spans, reverse=True):
        text = text[:start] + new + text[end:]
    return text


def mask(text: str) -> str:
    """``text`` with every secret value shown as ``"********"``; a file that does not parse is only scrubbed."""
    try:
        spans = [(n.start_mark.index, n.end_mark.index, json.dumps(MASK)) for _, n in _secret_scalars(text)
                 if n.value not in ("", None)]
    except yaml.YAMLError:
        spans = []
    return REDACTOR.scrub(_replace(text, spans))


def unmask(text: str, running: str) -> tuple[str, list[str]]:
    """``text`` with each ``"********"`` replaced by the running file's value under the same key, and a problem line
    per masked value that has none there."""
    try:
        known = {path: n.value for path, n in _secret_scalars(running)}
    except yaml.YAMLError:
        known = {}
    try:
        found = [(path, n) for path, n in _secret_scalars(text) if n.value == MASK]
    except yaml.YAMLError:
        return text, []  # check reports the syntax error with its line
    spans, problems = [], []
    for path, n in found:
        if path in known:
            spans.append((n.start_mark.index, n.end_mark.index, json.dumps(known[path])))
        else:
            where = ".".join(p.removeprefix("name=") for p in path)
            problems.append(f"line {n.start_mark.line + 1}: {where}: still {MASK}, and the running configuration"
                            " has no value there to keep: type the secret, or use a *_file key")
    return _replace(text, spans), problems
