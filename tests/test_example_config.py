"""runbook.example.yaml documents every key of the configuration (the README says so): checked, not hoped.

The keys the model accepts are read from the pydantic models themselves (so a new field fails this test until
the example shows it); the keys the example shows are read from its YAML, with commented lines of the form
`<indent># key: value` counted as keys at that indentation (alternatives that cannot be set together: docker's
`container` or `label`, a version probe's `json_field` or `header`, a metric's `query` or `job`).

Paths generalise what the user names: `services.*.environments.*`, list items as `[]`, and the deploy target by
its type: `services.*.environments.*.deploy<docker>.sha_label`. A secret reference is one key (its field); the
example must show both of its forms, `{env: ...}` and `{prefect_secret: ...}`, somewhere.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel

from runbook.config import RunbookConfig, SecretRef, load_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "runbook.example.yaml"

# `  # key: value   # why`, `  # - key: value`, `  #   key: value` (the next key of that list item): a key
# shown as a comment, at the indentation it has once `# ` is taken out. Lowercase keys only, so prose is not one.
_COMMENTED_KEY = re.compile(r"^(?P<indent>[ ]*)# (?P<more>[ ]*)(?P<key>(- )?[a-z][a-z0-9_]*:(\s|$))", re.MULTILINE)


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold: Optional, unions and Annotated unwrapped, None dropped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [member for arg in get_args(annotation) for member in _members(arg)]
    return [] if annotation is type(None) else [annotation]


def _models(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The settings models a field holds, each with its path suffix: `[]` list items, `.*` dict values,
    `<type>` one member of a tagged union (the deploy targets). Empty for a plain value, and for a SecretRef."""
    found: list[tuple[str, type[BaseModel]]] = []
    for member in _members(annotation):
        origin, args = get_origin(member), get_args(member)
        if origin is list and args:
            found += [("[]" + suffix, model) for suffix, model in _models(args[0])]
        elif origin is dict and len(args) == 2:
            found += [(".*" + suffix, model) for suffix, model in _models(args[1])]
        elif isinstance(member, type) and issubclass(member, BaseModel) and member is not SecretRef:
            found.append(("", member))
    if len(found) > 1:  # a union of models: told apart by their `type`
        found = [(f"{suffix}<{_tag(model)}>", model) for suffix, model in found]
    return found


def _tag(model: type[BaseModel]) -> str:
    [tag] = get_args(model.model_fields["type"].annotation)
    assert isinstance(tag, str)
    return tag


def model_keys(model: type[BaseModel] = RunbookConfig, prefix: str = "") -> set[str]:
    """Every key path the configuration accepts."""
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        keys.add(path)
        for suffix, inner in _models(info.annotation):
            keys |= model_keys(inner, f"{path}{suffix}.")
    return keys


def uncommented(text: str) -> str:
    """The example with its commented keys written out (`# key: value` -> `key: value`, same indentation)."""
    return _COMMENTED_KEY.sub(lambda m: m["indent"] + m["more"] + m["key"], text)


def example_keys(data: Any, model: type[BaseModel] = RunbookConfig, prefix: str = "") -> set[str]:
    """Every key path a parsed example shows, named as `model_keys` names them (the model guides the walk)."""
    keys: set[str] = set()
    for name, value in (data or {}).items():
        path = f"{prefix}{name}"
        keys.add(path)
        info = model.model_fields.get(name)
        if info is not None:
            keys |= _value_keys(value, _models(info.annotation), path)
    return keys


def _value_keys(value: Any, models: list[tuple[str, type[BaseModel]]], path: str) -> set[str]:
    keys: set[str] = set()
    for suffix, model in models:
        if suffix.startswith("[]") and isinstance(value, list):
            keys |= {key for item in value for key in _value_keys(item, [(suffix[2:], model)], f"{path}[]")}
        elif suffix.startswith(".*") and isinstance(value, dict):
            keys |= {key for item in value.values() for key in _value_keys(item, [(suffix[2:], model)], f"{path}.*")}
        elif suffix.startswith("<") and isinstance(value, dict) and suffix == f"<{value.get('type')}>":
            keys |= example_keys(value, model, f"{path}{suffix}.")
        elif suffix == "" and isinstance(value, dict):
            keys |= example_keys(value, model, f"{path}.")
    return keys


def secret_forms(data: Any) -> set[str]:
    """The SecretRef forms the example shows: mappings holding exactly `env` or `prefect_secret`."""
    if isinstance(data, list):
        return {form for item in data for form in secret_forms(item)}
    if not isinstance(data, dict):
        return set()
    forms = set(data) if set(data) in ({"env"}, {"prefect_secret"}) else set()
    return forms.union(*(secret_forms(value) for value in data.values()))


def missing_keys(text: str) -> list[str]:
    """The key paths of the model the example text does not show, sorted; each SecretRef form too."""
    data = yaml.safe_load(uncommented(text))
    missing = model_keys() - example_keys(data)
    missing |= {f"SecretRef form {{{form}: ...}}" for form in {"env", "prefect_secret"} - secret_forms(data)}
    return sorted(missing)


def test_the_example_as_written_is_valid() -> None:
    config = load_config(EXAMPLE)
    probe = config.environment("shop", "production").health.probes[0]
    assert (probe.json_field, probe.equals) == ("status", "ok")


def test_the_example_documents_every_key() -> None:
    missing = missing_keys(EXAMPLE.read_text(encoding="utf-8"))
    assert not missing, "runbook.example.yaml does not show these keys (add them, commented if optional):\n" + (
        "\n".join(missing)
    )


def test_a_key_removed_from_the_example_is_reported() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    without = re.sub(r"^\s*(# )?sha_label:.*\n", "", text, flags=re.MULTILINE)
    assert without != text
    assert missing_keys(without) == ["services.*.environments.*.deploy<docker>.sha_label"]
    only_env = text.replace("{prefect_secret: slack-bot-token}", "{env: SLACK_BOT_TOKEN}")
    assert missing_keys(only_env) == ["SecretRef form {prefect_secret: ...}"]


def test_the_walker_sees_nested_models_lists_maps_and_each_deploy_type() -> None:
    keys = model_keys()
    assert {
        "services.*.environments.*.health.probes[].equals",
        "services.*.environments.*.smoke[].json_field",
        "services.*.environments.*.deploy<github-actions>.workflow",
        "services.*.environments.*.deploy<webhook>.secret",
        "services.*.environments.*.rehearsal.notify",
        "registries[].insecure",
        "slack.webhook_url",
    } <= keys
    assert "github.token.env" not in keys  # a secret reference is one key, its forms are checked apart

    class Tagged(BaseModel):
        type: Literal["x"]

    assert _models(list[Tagged] | None) == [("[]", Tagged)]


def test_commented_keys_are_read_at_their_indentation() -> None:
    text = "a:\n  b: 1\n  # c: 2   # why\n  # - d: 3\n  #   e: 4\n# Prose: not a key\n"
    assert uncommented(text) == "a:\n  b: 1\n  c: 2   # why\n  - d: 3\n    e: 4\n# Prose: not a key\n"
