"""Recorded wire payloads: loading them and checking that a body has their exact key shape."""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

# The JSON files sit next to this module (and ship as package data), so a plain Path is enough.
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
# Keys whose values are free-form data chosen by the API caller, not part of the response shape.
OPAQUE_KEYS: frozenset[str] = frozenset({"payload"})


def load_fixture(area: str, name: str) -> Any:
    """Return the parsed JSON fixture `fixtures/<area>/<name>` (".json" is appended when missing)."""
    file_name = name if name.endswith(".json") else f"{name}.json"
    path = FIXTURES_DIR / area / file_name
    return json.loads(path.read_text(encoding="utf-8"))


def keys_match(template: Any, body: Any, *, opaque: Collection[str] = OPAQUE_KEYS, path: str = "$") -> list[str]:
    """List every place where `body` does not have the same keys as `template` (empty list = same shape).

    Dicts must have exactly the template's keys, recursively. Every element of a list is compared with
    the template's first element (an empty template list accepts any elements). Scalar values are not
    compared: only the shape is the contract. A dict or list where the template has something else (or
    the reverse) is reported, except that `null` is accepted in either direction because GitHub sends
    `null` for absent objects (e.g. `performed_via_github_app`). The values of `opaque` keys are the
    caller's own free-form data (a deployment's `payload`), so only their presence is checked.
    """
    if isinstance(template, dict):
        if body is None:
            return []
        if not isinstance(body, dict):
            return [f"{path}: expected an object, got {type(body).__name__}"]
        problems = [f"{path}: missing key {key!r}" for key in template if key not in body]
        problems += [f"{path}: extra key {key!r}" for key in body if key not in template]
        for key in template:
            if key in body and key not in opaque:
                problems += keys_match(template[key], body[key], opaque=opaque, path=f"{path}.{key}")
        return problems
    if isinstance(template, list):
        if body is None:
            return []
        if not isinstance(body, list):
            return [f"{path}: expected an array, got {type(body).__name__}"]
        if not template:
            return []
        problems = []
        for index, element in enumerate(body):
            problems += keys_match(template[0], element, opaque=opaque, path=f"{path}[{index}]")
        return problems
    if isinstance(body, dict | list) and template is not None:
        return [f"{path}: expected a scalar, got {type(body).__name__}"]
    return []
