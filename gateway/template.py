"""Topic and payload templates (Voltaware gives each integration its own message format).

A template is a string, or a JSON-like structure from the YAML file, with ``{placeholder}`` in its strings.
A string that is exactly one placeholder becomes the value itself (a number stays a number); a placeholder inside
longer text is formatted into it. Placeholders: ``device_id``, ``meter``, ``site``, ``ts_iso`` (UTC,
``2026-11-23T15:00:00.000Z``), ``ts_s`` (epoch seconds), ``ts_ms`` (epoch milliseconds), ``ts_local`` (the site's
time with its offset), and every quantity name (``power_active_total``, ``energy_import_total``, ``value``...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.quantities import Quantity

PLACEHOLDER = re.compile(r"\{([A-Za-z0-9_]+)\}")
CONTEXT_NAMES = ("device_id", "meter", "site", "ts_iso", "ts_s", "ts_ms", "ts_local", "start_iso", "start_ms")
#: A period reading (a bill, an interval) is sent only by a template that uses one of these.
PERIOD_NAMES = frozenset({"start_iso", "start_ms"})
NAMES = frozenset(CONTEXT_NAMES) | {q.value for q in Quantity}


class MissingQuantity(Exception):
    """The reading lacks a quantity the template needs inside a longer text (it cannot be left out)."""


def unknown_placeholders(template: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """(key path, message) for every placeholder the template uses that does not exist."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(template, str):
        for name in PLACEHOLDER.findall(template):
            if name not in NAMES:
                out.append((path, f"unknown placeholder {{{name}}} (known: {', '.join(CONTEXT_NAMES)}, and the"
                                  " quantity names, e.g. {power_active_total})"))
    elif isinstance(template, dict):
        for k, v in template.items():
            out += unknown_placeholders(v, (*path, k))
    elif isinstance(template, list):
        for i, v in enumerate(template):
            out += unknown_placeholders(v, (*path, i))
    return out


def uses(template: Any) -> set[str]:
    if isinstance(template, str):
        return set(PLACEHOLDER.findall(template))
    if isinstance(template, dict):
        return set().union(*(uses(v) for v in template.values())) if template else set()
    if isinstance(template, list):
        return set().union(*(uses(v) for v in template)) if template else set()
    return set()


_OMIT = object()


def compile_template(template: Any) -> Callable[[Mapping[str, object]], Any]:
    """A function of the placeholder values giving the rendered structure; a key whose whole value is a missing
    quantity is left out."""
    if isinstance(template, str):
        whole = PLACEHOLDER.fullmatch(template)
        if whole:
            name = whole.group(1)
            return lambda ctx: ctx.get(name, _OMIT)

        def text(ctx: Mapping[str, object]) -> str:
            def sub(m: re.Match[str]) -> str:
                if m.group(1) not in ctx:
                    raise MissingQuantity(m.group(1))
                return str(ctx[m.group(1)])

            return PLACEHOLDER.sub(sub, template)

        return text if PLACEHOLDER.search(template) else (lambda ctx: template)
    if isinstance(template, dict):
        parts = [(k, compile_template(v)) for k, v in template.items()]

        def mapping(ctx: Mapping[str, object]) -> dict[str, Any]:
            out = {}
            for k, fn in parts:
                v = fn(ctx)
                if v is not _OMIT:
                    out[k] = v
            return out

        return mapping
    if isinstance(template, list):
        items = [compile_template(v) for v in template]
        return lambda ctx: [v for v in (fn(ctx) for fn in items) if v is not _OMIT]
    return lambda ctx: template


def render_json(fn: Callable[[Mapping[str, object]], Any], ctx: Mapping[str, object]) -> str:
    return json.dumps(fn(ctx), separators=(",", ":"))
