"""Slack (runbook/slack.py) through slack-sdk against the Slack stand-in: threads, broadcast, 429, failures."""

from __future__ import annotations

import os

import pytest

from runbook import messages
from runbook.config import RunbookConfig
from runbook.slack import Posted, SlackPoster
from sandbox.world import CHANNEL, SLACK_TOKEN_VAR, Sandbox


def post(
    config: RunbookConfig, channel: str, text: str, thread: Posted | None = None, broadcast: bool = False
) -> Posted:
    """One message through the run's Slack client (runbook/slack.py), as the notify tasks send it."""
    return SlackPoster(config.slack, channel).post(text, thread, broadcast=broadcast)


def test_a_thread_with_the_ending_broadcast(sandbox: Sandbox, config: RunbookConfig) -> None:
    ctx = messages.IncidentContext("shop", "production")
    root = post(config, CHANNEL, messages.incident_message(ctx))
    reply = post(config, CHANNEL, messages.rollback_started_message(ctx, "a1b2c3d"), root)
    end = post(config, CHANNEL, "done", root, broadcast=True)
    assert root.ok and reply.ok and end.ok and root.channel == "C0INCIDENT1"
    thread = sandbox.slack.thread(root.ts or "")
    assert [m.text for m in thread][1:] == [messages.rollback_started_message(ctx, "a1b2c3d"), "done"]
    assert [m.reply_broadcast for m in thread] == [False, False, True]


def test_rate_limited_once_is_retried_after_retry_after(sandbox: Sandbox, config: RunbookConfig) -> None:
    sandbox.slack.rate_limit_next(1, retry_after=0)
    posted = post(config, CHANNEL, "hello")
    assert posted.ok and [m.text for m in sandbox.slack.messages] == ["hello"]
    assert sandbox.slack.requests["chat.postMessage"] == 2


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("down", "Slack refused the message: HTTP 503"),
        ("bad-token", "Slack refused the message: invalid_auth"),
        ("bad-channel", "Slack refused the message: channel_not_found"),
        ("no-token", "the secret in environment variable RUNBOOK_SANDBOX_SLACK_TOKEN is not set"),
        ("closed", "Slack unreachable"),
    ],
)
def test_failures_come_back_as_values_without_secrets(
    sandbox: Sandbox, config: RunbookConfig, monkeypatch: pytest.MonkeyPatch, setup: str, expected: str
) -> None:
    channel = CHANNEL
    if setup == "down":
        sandbox.slack.set_down(True)
    elif setup == "bad-token":
        monkeypatch.setenv(SLACK_TOKEN_VAR, "xoxb-wrong-token-value")
    elif setup == "bad-channel":
        channel = "#nowhere"
    elif setup == "no-token":
        monkeypatch.delenv(SLACK_TOKEN_VAR)
    elif setup == "closed":
        closed = config.slack.model_copy(update={"base_url": "http://127.0.0.1:9/api/"})
        config = config.model_copy(update={"slack": closed})
    posted = post(config, channel, "hello")
    assert not posted.ok and posted.error and expected in posted.error
    assert sandbox.slack.messages == []
    for secret in ("xoxb-wrong-token-value", sandbox.slack_token, os.environ.get(SLACK_TOKEN_VAR) or "xoxb-"):
        assert secret not in posted.error
