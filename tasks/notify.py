"""Step 5 (seed 4): tell the team in Slack, in one thread; Slack trouble never stops a rollback.

With a bot token (slack-sdk WebClient): the root message (the incident) is kept up to date with
`chat.update`, the seed's messages are replies in its thread, the ending is broadcast to the channel.
With only an incoming webhook: plain messages in the webhook's channel, no thread and no updates.
A failure to post is returned as a `Posted` with an error, logged as a warning, and kept for the
post-mortem; it never fails the task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prefect import get_run_logger, task
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from runbook.config import RunbookConfig, SlackSettings
from runbook.errors import RunbookError
from tasks.policy import NO_CACHE, RUN_ONCE

WEBHOOK = "incoming-webhook"


@dataclass(frozen=True)
class Posted:
    """The outcome of one Slack post: where it went, or why it did not."""

    channel: str | None
    ts: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def threaded(self) -> bool:
        """Whether replies and updates can refer to it (a Web API message, not a webhook post)."""
        return self.ok and self.ts is not None and self.channel not in (None, WEBHOOK)


log = logging.getLogger("runbook.slack")


class _SaysRetries:
    """Logs each retry on `runbook.slack` (slack-sdk itself only says so at DEBUG), for the post-mortem."""

    def prepare_for_next_attempt(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        why = f"HTTP {response.status_code}" if response is not None else type(error).__name__
        log.info("%s: retry %d of the %s call", why, state.current_attempt + 1, request.url.rsplit("/", 1)[-1])
        super().prepare_for_next_attempt(  # type: ignore[misc]
            state=state, request=request, response=response, error=error
        )


class _RateLimitRetries(_SaysRetries, RateLimitErrorRetryHandler):
    """429: wait for Retry-After, then retry (slack-sdk does not by default)."""


class _ConnectionRetries(_SaysRetries, ConnectionErrorRetryHandler):
    """A dropped connection: retry once."""


def _retries() -> list[RetryHandler]:
    # Never the webhook's URL in a log line: it is a secret; `request.url` is only read for its last part.
    return [_ConnectionRetries(max_retry_count=1), _RateLimitRetries(max_retry_count=2)]


def slack_client(config: RunbookConfig) -> WebClient:
    """A slack-sdk Web API client (bot token)."""
    settings = config.slack
    if settings.token is None:
        raise RunbookError("no Slack bot token is configured", hint="set slack.token in the configuration")
    return WebClient(
        token=settings.token.reveal().get_secret_value(),
        base_url=settings.base_url,
        timeout=int(settings.timeout_seconds),
        retry_handlers=_retries(),
    )


def _api_error(exc: SlackApiError, what: str) -> str:
    # The error code only ("invalid_auth", "ratelimited"): never the request, which holds the token.
    status = exc.response.status_code
    return f"Slack refused {what}: {exc.response.get('error') if status == 200 else f'HTTP {status}'}"


def _via_webhook(settings: SlackSettings, text: str) -> Posted:
    assert settings.webhook_url is not None
    client = WebhookClient(
        settings.webhook_url.reveal().get_secret_value(),
        timeout=int(settings.timeout_seconds),
        retry_handlers=_retries(),
    )
    response = client.send(text=text, unfurl_links=False)
    if response.status_code != 200:
        # Plain-text error codes (channel_not_found, no_service...): safe to show, unlike the URL.
        return Posted(None, None, f"Slack webhook refused the message: HTTP {response.status_code} {response.body}")
    return Posted(WEBHOOK, None)


def post(
    config: RunbookConfig, channel: str, text: str, thread: Posted | None = None, broadcast: bool = False
) -> Posted:
    """Post one message (a reply when `thread` is given); failures come back as a `Posted` with an error."""
    try:
        if config.slack.token is None and config.slack.webhook_url is not None:
            return _via_webhook(config.slack, text)
        kwargs: dict[str, object] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread is not None and thread.threaded:
            kwargs["thread_ts"] = thread.ts
            kwargs["reply_broadcast"] = broadcast
        response = slack_client(config).chat_postMessage(**kwargs)  # type: ignore[arg-type]
    except SlackApiError as exc:
        return Posted(None, None, _api_error(exc, "the message"))
    except (SlackClientError, OSError) as exc:
        return Posted(None, None, f"Slack unreachable: {type(exc).__name__}")
    except RunbookError as exc:
        return Posted(None, None, str(exc))
    return Posted(str(response["channel"]), str(response["ts"]))


def update(config: RunbookConfig, message: Posted, text: str) -> Posted:
    """Rewrite a posted message in place (the incident's root, with the current status)."""
    if not message.threaded:
        return Posted(None, None, "no message to update (webhook mode, or the root was not posted)")
    try:
        response = slack_client(config).chat_update(channel=str(message.channel), ts=str(message.ts), text=text)
    except SlackApiError as exc:
        return Posted(None, None, _api_error(exc, "the update"))
    except (SlackClientError, OSError) as exc:
        return Posted(None, None, f"Slack unreachable: {type(exc).__name__}")
    except RunbookError as exc:
        return Posted(None, None, str(exc))
    return Posted(str(response["channel"]), str(response["ts"]))


def _logged(posted: Posted, text: str) -> Posted:
    if not posted.ok:
        first_line = text.splitlines()[0] if text else ""
        get_run_logger().warning("%s; the rollback goes on without it. Message was: %s", posted.error, first_line)
    return posted


def _channel(config: RunbookConfig, service_name: str) -> str:
    return config.service(service_name).slack.channel


@task(name="notify-incident", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=60)
def notify_incident(config: RunbookConfig, service_name: str, text: str) -> Posted:
    """Seed message 1, the root of the incident's thread (once per flow run, even when retried)."""
    return _logged(post(config, _channel(config, service_name), text), text)


@task(name="notify-status", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_status(config: RunbookConfig, root: Posted, text: str) -> Posted:
    """Update the root message with the current status (chat.update)."""
    return _logged(update(config, root, text), text)


@task(name="notify-rollback-started", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=60)
def notify_rollback_started(config: RunbookConfig, service_name: str, root: Posted, text: str) -> Posted:
    """Seed message 2, in the thread: the rollback starts towards a SHA."""
    return _logged(post(config, _channel(config, service_name), text, root), text)


@task(name="notify-outcome", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_outcome(config: RunbookConfig, service_name: str, root: Posted, text: str) -> Posted:
    """Seed message 3 (or the escalation), in the thread and broadcast to the channel."""
    return _logged(post(config, _channel(config, service_name), text, root, broadcast=True), text)


@task(name="notify-thread", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_thread(config: RunbookConfig, service_name: str, thread: Posted, text: str) -> Posted:
    """A reply in another run's thread (the automatic rollback's); in the service's channel when it has none."""
    channel = str(thread.channel) if thread.threaded else _channel(config, service_name)
    return _logged(post(config, channel, text, thread), text)


@task(name="notify-channel", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_channel(config: RunbookConfig, service_name: str, text: str) -> Posted:
    """One message in the service's channel, outside any incident thread (rehearsal reports)."""
    return _logged(post(config, _channel(config, service_name), text), text)


@task(name="check-slack", cache_policy=NO_CACHE, timeout_seconds=60)
def check_slack(config: RunbookConfig) -> str | None:
    """Check, without posting, that Slack would accept messages (auth.test); the problem, or None."""
    if config.slack.token is None and config.slack.webhook_url is not None:
        try:
            config.slack.webhook_url.reveal()
        except RunbookError as exc:
            return str(exc)
        return None  # an incoming webhook cannot be tested without posting
    try:
        slack_client(config).auth_test()
    except SlackApiError as exc:
        return _api_error(exc, "the token")
    except (SlackClientError, OSError) as exc:
        return f"Slack unreachable: {type(exc).__name__}"
    except RunbookError as exc:
        return str(exc)
    return None
