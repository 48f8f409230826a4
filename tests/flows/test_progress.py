"""Long waits made visible: a slow deploy's progress on the Prefect run page and in the Slack root's status.

The sandbox's workflow run is slowed to a few seconds and `slack.progress_seconds` set to 1: the run's progress
artifact is read back from the Prefect API, the root's history from the Slack stand-in. The reporting itself
(runbook/progress.py) and the loops' words (runbook/messages) are pure, tested with plain asserts.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

from runbook import messages, progress
from runbook.messages import Language
from sandbox.world import REPOSITORY, Sandbox
from tasks.progress import StepProgress
from tests.support.rollback import postmortem_of, run_rollback

ARTIFACT = uuid4()


def progress_artifacts(state: Any) -> list[Any]:
    """The progress artifacts of a flow run, as the Prefect API has them now."""
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), type=ArtifactFilterType(any_=["progress"])
            )
        )


@pytest.mark.usefixtures("prefect_server")
def test_a_slow_deploy_shows_how_far_it_is_on_the_run_page_and_in_the_root_until_the_final_status(
    sandbox: Sandbox,
) -> None:
    sandbox.github.run_step_seconds = 1.25  # queued 1.25 s, then in progress 1.25 s
    data = sandbox.config_data()
    data["slack"].update(language="en", progress_seconds=1)
    state = run_rollback(sandbox, sandbox.write_config(data, "progress.yaml"))
    assert state.is_completed(), state.message
    run_id = sandbox.github.workflow_runs(REPOSITORY)[0]["id"]

    # The deploy lasted over 2 s: one progress artifact, its last state written when the step ended. The health check
    # took a fraction of a second: none (its outcome is in the post-mortem).
    [artifact] = progress_artifacts(state)
    assert artifact.data == 100.0
    assert artifact.description.startswith(f"deploying: workflow run {run_id} ended (success) after ")

    # The root: rolling back, then how far the deploy is (once it lasted 1 s, at most once a second), recovered last.
    statuses = [update.splitlines()[-1] for update in sandbox.slack.messages[0].updates]
    good = sandbox.commits.last_known_good[:7]
    assert statuses[0] == f"*Status:* rolling back to `{good}`"
    assert statuses[-1].startswith(":white_check_mark: *Status:* recovered in "), statuses
    during = statuses[1:-1]
    deploy_seconds = state.result().step_seconds["deploy"]  # about 2.5 s
    assert 1 <= len(during) <= int(deploy_seconds), statuses  # the first once it lasted 1 s, then at most once a second
    assert all(s.startswith(f"*Status:* rolling back to `{good}`: deploying: workflow run {run_id} ") for s in during)
    assert any(f"deploying: workflow run {run_id} in progress (" in s for s in during), statuses
    assert len(sandbox.slack.messages) == 3  # no message more: the root rewritten, nothing posted
    markdown = postmortem_of(state)  # best effort: neither noted nor warned in the journal
    assert "status: progress" not in markdown and "status (progress)" not in markdown


def health(passed: int) -> progress.Detail:
    return partial(messages.progress_health, passed=passed, required=20, probe=None, answer="-")


def test_the_artifact_is_written_at_most_every_interval_and_its_last_state_as_soon_as_the_step_ends() -> None:
    writes: list[tuple[float, UUID | None, float, str]] = []

    def write(artifact: UUID | None, percent: float, description: str) -> UUID:
        writes.append((time.monotonic(), artifact, percent, description))
        return ARTIFACT

    steps = StepProgress(every=0.8, write=write)
    with steps.shown("health-check"):
        start = time.monotonic()
        for passed in range(15):  # 0.9 s of rounds: written once the step has lasted 0.8 s, at once
            progress.report(passed / 20, health(passed))
            time.sleep(0.06)
        for passed in range(15, 19):  # within 0.8 s of that write: kept, not written
            progress.report(passed / 20, health(passed))
            time.sleep(0.02)
        progress.report(None, health(19))  # how far cannot be told: shown where it was
        time.sleep(0.05)
    ended = time.monotonic()
    steps.close()

    assert len(writes) == 2, writes
    (first_at, created, first_percent, _), (last_at, updated, percent, description) = writes
    assert first_at - start >= 0.8 and (created, updated) == (None, ARTIFACT)
    assert last_at - ended < 0.2, "the last state waited for the next write's turn"
    assert (percent, description) == (first_percent, "checking health: 19 of 20 rounds in a row passed")


def test_a_step_never_waits_for_a_write_nor_the_run_end_longer_than_its_bound() -> None:
    stuck = threading.Event()
    calls: list[str] = []

    def write(artifact: UUID | None, percent: float, description: str) -> UUID:
        calls.append(description)
        if len(calls) == 1:
            raise RuntimeError("the Prefect API is down")  # a debug log line, nothing more
        stuck.wait(5)  # the API hangs
        return ARTIFACT

    steps = StepProgress(every=0.05, write=write)
    slowest = 0.0
    try:
        with steps.shown("deploy"):
            for passed in range(10):
                began = time.monotonic()
                progress.report(passed / 20, health(passed))
                slowest = max(slowest, time.monotonic() - began)
                time.sleep(0.03)
        began = time.monotonic()
        steps.close(timeout=0.2)
        assert time.monotonic() - began < 0.5
        assert slowest < 0.02 and len(calls) == 2  # the failed write, then the one that hangs; the step went on
    finally:
        stuck.set()


def test_a_report_goes_to_the_listeners_of_the_step_in_progress_and_nowhere_outside_one() -> None:
    heard: list[progress.Progress] = []
    progress.report(0.5, partial(messages.progress_health, passed=1, required=2, probe=None, answer="-"))  # no one

    def broken(_: progress.Progress) -> None:
        raise RuntimeError("a listener's bug")

    with progress.following(broken, heard.append):
        progress.report(1.5, partial(messages.progress_health, passed=3, required=3, probe=None, answer="-"))
        progress.report(None, partial(messages.progress_workflow_run, run=7, status="queued", seconds=125))
    progress.report(0.1, partial(messages.progress_health, passed=0, required=3, probe=None, answer="-"))

    assert [(p.fraction, p.text()) for p in heard] == [
        (1.0, "checking health: 3 of 3 rounds in a row passed"),  # clamped; the broken listener did not stop it
        (None, "deploying: workflow run 7 in progress (queued), 2 min 5 s"),
    ]
    assert heard[1].text("fr") == "déploiement : run 7 du workflow en cours (queued), 2 min 5 s"
    assert 0 <= heard[0].seconds <= heard[1].seconds < 1


@pytest.mark.parametrize(
    ("language", "value", "ratio", "expected"),
    [
        ("en", 0.002, True, "error rate 0.2 % < 1 %: held 20 of 30 s"),
        ("fr", 0.002, True, "taux d'erreur 0.2 % < 1 % : tenu 20 s sur 30"),
        ("en", 0.05, False, "error rate 0.05 ≥ 0.01: the hold of 30 s starts again"),
        ("en", None, True, "error rate: no value (no data, or Prometheus not answering): held 20 of 30 s, paused"),
    ],
)
def test_the_error_rate_hold_in_words(language: Language, value: float | None, ratio: bool, expected: str) -> None:
    assert messages.progress_metric(language, value, 0.01, 20.4, 30, ratio) == expected


def test_durations_and_failing_probes_in_words() -> None:
    assert [messages.elapsed(s) for s in (0.4, 59.9, 60, 125)] == ["0 s", "59 s", "1 min", "2 min 5 s"]
    failing = messages.progress_health("en", 0, 3, "health", "HTTP 500")
    assert failing == "checking health: `health` fails (HTTP 500), 0 of 3 rounds in a row passed"
