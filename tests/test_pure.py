"""The decisions, tested directly: SHA validation, last known good, health judgement, messages, post-mortem."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from runbook import messages
from runbook.errors import HealthCheckError, InvalidShaError
from runbook.health import ProbeResult, judge
from runbook.incident import AlertContext
from runbook.journal import Journal, describe_error
from runbook.postmortem import artifact_key, postmortem_facts, render_markdown, timings_table
from runbook.repository import was_healthy
from runbook.running import commit_sha, json_path_value, never_went_live
from runbook.shas import last_known_good_candidates, normalize_sha

A, B, C, D = ("a" * 40, "b" * 40, "c" * 40, "d" * 40)


@pytest.mark.parametrize("value", ["a1b2c3d", "A1B2C3D", " a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0 "])
def test_valid_shas_are_normalized(value: str) -> None:
    assert normalize_sha(value) == value.strip().lower()


@pytest.mark.parametrize("value", ["", "a1b2c3", "g1b2c3d", "a" * 41, "main", "a1b2c3d; rm -rf /"])
def test_invalid_shas_say_what_to_do(value: str) -> None:
    with pytest.raises(InvalidShaError) as caught:
        normalize_sha(value)
    assert "7 to 40 hexadecimal" in str(caught.value)


def test_last_known_good_is_the_newest_healthy_commit_older_than_the_running_one() -> None:
    history = [D, C, B, A]  # newest first, from the running commit D
    assert last_known_good_candidates(history, D, {A, B, D}) == [B, A]
    assert last_known_good_candidates(history, D, {D}) == []
    # A commit newer than the running one is never offered, even if once healthy.
    assert last_known_good_candidates([C, B, A], C, {D, A}) == [A]


def test_a_deployment_is_known_good_when_its_last_word_is_success() -> None:
    assert was_healthy(["success"]) and was_healthy(["inactive", "success", "in_progress"])
    assert not was_healthy(["failure", "inactive", "success"])  # rolled back from: marked bad after
    assert not was_healthy(["in_progress"]) and not was_healthy([]) and not was_healthy(["inactive"])


def test_a_deployment_never_went_live_only_when_no_status_says_it_may_have() -> None:
    assert never_went_live([]) and never_went_live(["queued"]) and never_went_live(["error", "pending", "queued"])
    # CI's post-deploy check writes `failure` on a release that is live: it still counts as running.
    assert not never_went_live(["failure", "in_progress"]) and not never_went_live(["failure"])
    assert not never_went_live(["in_progress"]) and not never_went_live(["inactive", "success"])
    assert not never_went_live(["failure", "error"]) and not never_went_live(["success", "error"])
    # The runbook's own rollout, closed `error` after its `in_progress` intent: it knows nothing was deployed.
    assert never_went_live(["error", "in_progress", "queued"])


def test_a_version_is_read_from_a_dotted_json_path_as_a_commit_sha() -> None:
    doc = {"sha": "A1B2C3D", "build": {"sha": "a1b2c3d4e5", "shas": ["f" * 40]}, "n": 7}
    assert json_path_value(doc, "build.sha") == "a1b2c3d4e5" and json_path_value(doc, "build.shas.0") == "f" * 40
    assert json_path_value(doc, "build.id") is None and json_path_value(doc, "n.x") is None
    assert commit_sha(" A1B2C3D ") == "a1b2c3d" and commit_sha("a1b2c3") is None and commit_sha("main") is None
    assert commit_sha(7) is None and commit_sha("f" * 41) is None


def _round(*oks: bool) -> list[ProbeResult]:
    return [
        ProbeResult(f"p{i}", ok, 200 if ok else 500, 0.01, "" if ok else "expected 200") for i, ok in enumerate(oks)
    ]


def test_health_needs_consecutive_healthy_rounds() -> None:
    assert judge([_round(True, True)] * 3, 3).healthy
    verdict = judge([_round(True, True), _round(True, False), _round(True, True), _round(True, True)], 3)
    assert not verdict.healthy and verdict.streak == 2
    failing = judge([_round(True, False)], 1)
    assert not failing.healthy and failing.reason == "p1: HTTP 500 (expected 200)"
    assert not judge([], 1).healthy
    assert not judge([[]], 1).healthy  # a round with no probe proves nothing


def test_seed_messages_in_french_and_english() -> None:
    fr = messages.IncidentContext("shop", "production", reason="5xx", mentions=("<@U1>",))
    assert messages.incident_message(fr).startswith("<@U1> Incident en production détecté. Investigation en cours.")
    assert "Déclenchement de la procédure de rollback vers la version `abc1234`." in messages.rollback_started_message(
        fr, "abc1234"
    )
    done = messages.recovered_message(fr, A, "sha256:" + "0" * 64, 12.34)
    assert done.startswith("Rollback terminé. Le système est de nouveau opérationnel.")
    assert "12.3 s" in done and "`aaaaaaa`" in done
    en = messages.IncidentContext("shop", "production", language="en")
    failure = messages.failure_message(en, "verify-image", "image x:y not found")
    assert "failed at step *verify-image*: image x:y not found" in failure and "registry" in failure


def test_error_descriptions_never_dump_foreign_exceptions() -> None:
    leaky = RuntimeError("https://user:hunter2@registry.example.com/v2/ failed")
    assert "hunter2" not in describe_error(leaky)
    assert describe_error(HealthCheckError("not healthy", hint="escalate")) == "not healthy: escalate"


def _record(outcome: str) -> Journal:
    start = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    record = Journal("shop", "production", "alert", "5xx spike", "INC-7", start, start + timedelta(seconds=5))
    record.from_sha, record.to_sha, record.sha_source = D, C, "last known good"
    record.running_source = "version probe"
    record.image, record.digest = "ghcr.io/acme/shop:" + C, "sha256:" + "1" * 64
    with record.step("resolve-sha") as step:
        step.detail = "ccccccc (last known good)"
    if outcome == "recovered":
        record.healthy_at = start + timedelta(seconds=42)
        record.outcome = "recovered"
        record.health_summary = ["3 consecutive healthy rounds of 3 in 0.30 s"]
    else:
        with pytest.raises(HealthCheckError), record.step("health-check"):
            raise HealthCheckError("not healthy after 300 s", hint="escalate")
        record.fail("health-check", "not healthy after 300 s")
    record.links["deploy"] = "https://github.com/acme/shop/actions/runs/1"
    record.ended_at = start + timedelta(seconds=50)
    return record


def test_postmortem_of_a_recovery_has_every_section() -> None:
    record = _record("recovered")
    record.alert = AlertContext(
        name="HighErrorRate",
        labels={"service": "shop", "severity": "critical"},
        link="http://prometheus/graph?g0",
        starts_at=record.detected_at,
    )
    record.approval = "alice: looks right"
    record.metric_summary = ["ratio 0.001 < 0.01 for 30 s", "samples: 0.002, 0.001, 0.001"]
    record.smoke_summary = ["cart: HTTP 200 in 12 ms"]
    record.retries = ["03:00:12 registry: HTTP 429; retrying in 1.0 s"]
    record.attempt = 2
    markdown = render_markdown(record)
    for section in (
        "## Summary",
        "## Alert",
        "## Versions",
        "## Timeline",
        "## Steps",
        "## Health results",
        "## Error rate (metric check)",
        "## Smoke checks (key features)",
        "## Approval",
        "## Retries",
        "## Links",
        "## Review checklist",
    ):
        assert section in markdown, section
    assert "Time to recovery:** 42.0 s" in markdown and f"`{C}`" in markdown
    assert f"| from (running before) | `{D}`<br>read from: version probe |" in markdown
    assert "Trigger:** alert" in markdown and "INC-7" in markdown and "actions/runs/1" in markdown
    assert "`service=shop`" in markdown and "HighErrorRate" in markdown and "approved by alice" in markdown
    assert "Attempt:** 2" in markdown and "HTTP 429; retrying" in markdown and "samples: 0.002" in markdown


def test_postmortem_of_a_failure_names_the_step() -> None:
    record = _record("failed")
    markdown = render_markdown(record)
    assert "FAILED at step `health-check`" in markdown and "not recovered" in markdown
    assert "Reason of failure:** not healthy after 300 s" in markdown and "## Retries" in markdown
    assert "## Alert" not in markdown and "## Approval" not in markdown  # only what happened
    assert [row["step"] for row in timings_table(record)] == ["resolve-sha", "health-check"]
    assert [row["state"] for row in timings_table(record)] == ["completed", "failed"]


def test_what_the_postmortem_says_is_read_back_as_written() -> None:
    """`runbook status`/`history` read the post-mortem (nothing structured holds these facts): both ways, one module."""
    recovered, failed = _record("recovered"), _record("failed")
    common = {"trigger": "alert", "from_sha": D, "to_sha": C, "digest": "sha256:" + "1" * 64}
    assert postmortem_facts(render_markdown(recovered)) == {**common, "ttr": "42.0"}
    assert postmortem_facts(render_markdown(failed)) == {**common, "failure": "not healthy after 300 s"}
    assert postmortem_facts("") == {}


def test_artifact_keys_are_prefect_safe() -> None:
    assert artifact_key("shop_v2", "Prod.EU") == "rollback-shop-v2-prod-eu"
