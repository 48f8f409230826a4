"""Slack's texts: every language has the same keys and `{fields}`, every key the code uses exists, and the
rendering functions (the rehearsal's summary included) speak the configured language."""

from __future__ import annotations

import ast
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from runbook import messages
from runbook.config import SlackSettings
from runbook.messages import CATALOGUES, Language

ROOT = Path(__file__).resolve().parent.parent
LANGUAGES: tuple[Language, ...] = get_args(Language)
REFERENCE: Language = "fr"  # the seed's language: every other one is compared with it
SHA = "3f2a1bc" + "0" * 33


def _fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _keys_called_in(path: Path) -> set[str]:
    """The literal keys of every `text("key", ...)` / `messages.text("key", ...)` call in one file."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        first = node.args[0]
        if name == "text" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            keys.add(first.value)
    return keys


def test_every_language_is_registered_with_its_own_module() -> None:
    assert set(CATALOGUES) == set(LANGUAGES) >= {"fr", "en"}
    assert REFERENCE in LANGUAGES
    for language in LANGUAGES:
        assert (ROOT / "runbook" / "messages" / f"{language}.py").is_file()


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_has_exactly_the_same_keys(language: Language) -> None:
    reference, other = CATALOGUES[REFERENCE], CATALOGUES[language]
    assert sorted(set(reference) - set(other)) == [], f"missing in {language}"
    assert sorted(set(other) - set(reference)) == [], f"only in {language}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_template_has_the_same_fields_and_renders(language: Language) -> None:
    for key, template in CATALOGUES[language].items():
        assert template.strip() == template and template, key
        assert _fields(template) == _fields(CATALOGUES[REFERENCE][key]), key
        rendered = template.format(**{field: f"<{field}>" for field in _fields(template)})
        assert "{" not in rendered and "}" not in rendered, key


def test_every_key_the_code_uses_exists_and_every_key_is_used() -> None:
    sources = [ROOT / "runbook" / "messages" / "__init__.py"]
    sources += [p for folder in ("runbook", "flows", "tasks") for p in (ROOT / folder).rglob("*.py")]
    used = set().union(*(_keys_called_in(p) for p in sources))
    assert {"incident", "failed", "rehearsal_ready", "rehearsal_failed_check"} <= used  # the scan sees the calls
    assert sorted(used - set(CATALOGUES[REFERENCE])) == []
    # The rest are the per-step actions, looked up as `action.<step>` with `action.generic` as the fallback.
    unused = set(CATALOGUES[REFERENCE]) - used
    assert "action.generic" in unused and all(key.startswith("action.") for key in unused), sorted(unused)


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_rendering_function_fills_every_template(language: Language) -> None:
    ctx = messages.IncidentContext(
        "shop",
        "production",
        reason="5xx",
        incident="INC-1",
        mentions=("<@U1>",),
        run_url="http://ui/run-1",
        language=language,
        alert="HighLatency (http://alerts/1)",
        previous=messages.previous_rollback_line(language, SHA, datetime(2026, 8, 20, 10, 17, tzinfo=UTC), "http://r"),
    )
    rendered = [
        messages.incident_message(ctx),
        messages.incident_message(ctx, messages.status_rolling_back(ctx, SHA)),
        messages.status_recovered(ctx, SHA, 12.34),
        messages.status_failed(ctx, "deploy"),
        messages.rollback_started_message(ctx, SHA, "http://github/compare"),
        messages.recovered_message(ctx, SHA, "sha256:" + "0" * 64, 12.34, "http://github/actions/runs/1"),
        messages.held_message(language, SHA, "http://ui/run-1", "HighLatency", "http://ui/start"),
        messages.rehearsal_summary(language, "preflight", "shop", "production", True, []),
        messages.rehearsal_summary(language, "drill", "shop", "staging", False, [("image", "not found")]),
    ]
    steps = [key.removeprefix("action.") for key in CATALOGUES[language] if key.startswith("action.")]
    rendered += [messages.failure_message(ctx, step, "it broke") for step in [*steps, "unknown-step"]]
    for message in rendered:
        assert message and "{" not in message and "}" not in message, message
    other: Language = "en" if language == "fr" else "fr"
    assert messages.incident_message(ctx) != messages.incident_message(
        messages.IncidentContext("shop", "production", language=other)
    )


def test_a_failure_at_an_unknown_step_gets_the_generic_action_in_its_language() -> None:
    for language in LANGUAGES:
        ctx = messages.IncidentContext("shop", "production", language=language)
        assert messages.failure_message(ctx, "some-step", "r").endswith(CATALOGUES[language]["action.generic"])
        assert messages.failure_message(ctx, "deploy", "r").endswith(CATALOGUES[language]["action.deploy"])


def test_text_fills_one_template_and_an_unknown_key_fails_loudly() -> None:
    assert (
        messages.text("rollback_started", "en", sha="abc1234")
        == "Starting the rollback procedure to version `abc1234`."
    )
    with pytest.raises(KeyError):
        messages.text("no-such-key", "fr")


def test_the_rehearsal_summary_in_english() -> None:
    ready = messages.rehearsal_summary("en", "preflight", "shop", "production", True, [])
    assert ready == "Rollback rehearsal (preflight) of `shop` in `production`: ready."
    failed = [("health probes", "p1: HTTP 500 (expected 200)"), ("image", "not found")]
    not_ready = messages.rehearsal_summary("en", "drill", "shop", "staging", False, failed)
    assert not_ready == (
        "Rollback rehearsal (drill) of `shop` in `staging`: NOT READY.\n"
        "- health probes: p1: HTTP 500 (expected 200)\n"
        "- image: not found"
    )


def test_the_rehearsal_summary_in_french() -> None:
    ready = messages.rehearsal_summary("fr", "preflight", "shop", "production", True, [])
    assert ready == "Répétition du rollback (preflight) de `shop` en `production` : prêt."
    failed = [("health probes", "p1: HTTP 500 (expected 200)"), ("image", "not found")]
    not_ready = messages.rehearsal_summary("fr", "drill", "shop", "staging", False, failed)
    assert not_ready == (
        "Répétition du rollback (drill) de `shop` en `staging` : PAS PRÊT.\n"
        "- health probes : p1: HTTP 500 (expected 200)\n"
        "- image : not found"
    )


def test_the_configuration_accepts_exactly_the_registered_languages() -> None:
    for language in LANGUAGES:
        assert SlackSettings(language=language).language == language
    assert SlackSettings().language == "fr"
    with pytest.raises(ValidationError):
        SlackSettings.model_validate({"language": "de"})
