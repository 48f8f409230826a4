"""The Slack client: post, reply in a thread, update a message, check the token. Failures are values, never raised.

With a bot token (slack-sdk `WebClient`): the root message can be updated (`chat.update`) and replied to in its
thread. With only an incoming webhook: plain messages in the webhook's channel, no thread and no updates. Each
call comes back as a `Posted` (where it went, or why it did not); the caller decides what a failure means (for a
rollback: a warning, never a stop). The token and the webhook URL are secrets: never in a message or log line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient

from runbook.config import SlackSettings
from runbook.errors import RunbookError

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


def _web_client(settings: SlackSettings) -> WebClient:
    """A slack-sdk Web API client (bot token)."""
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


def _attempt(call: Callable[[], Any], what: str) -> tuple[Any, str | None]:
    """(the call's answer, None), or (None, why it failed): Slack trouble is a value, never an exception."""
    try:
        return call(), None
    except SlackApiError as exc:
        return None, _api_error(exc, what)
    except (SlackClientError, OSError) as exc:
        return None, f"Slack unreachable: {type(exc).__name__}"
    except RunbookError as exc:
        return None, str(exc)


def _posted(answer: Any, error: str | None) -> Posted:
    return Posted(None, None, error) if error else Posted(str(answer["channel"]), str(answer["ts"]))


class SlackPoster:
    """Posts to one channel with the configured Slack (bot token, or only an incoming webhook); one client per run."""

    def __init__(self, settings: SlackSettings, channel: str) -> None:
        self.settings = settings
        self.channel = channel

    @property
    def webhook_only(self) -> bool:
        return self.settings.token is None and self.settings.webhook_url is not None

    @cached_property
    def _client(self) -> WebClient:
        return _web_client(self.settings)

    def post(
        self, text: str, thread: Posted | None = None, *, broadcast: bool = False, channel: str | None = None
    ) -> Posted:
        """Post one message (a reply when `thread` is given); failures come back as a `Posted` with an error."""
        if self.webhook_only:
            answer, error = _attempt(lambda: self._via_webhook(text), "the message")
            return answer if error is None else Posted(None, None, error)
        kwargs: dict[str, Any] = {"channel": channel or self.channel, "text": text, "unfurl_links": False}
        if thread is not None and thread.threaded:
            kwargs["thread_ts"] = thread.ts
            kwargs["reply_broadcast"] = broadcast
        return _posted(*_attempt(lambda: self._client.chat_postMessage(**kwargs), "the message"))

    def update(self, message: Posted, text: str) -> Posted:
        """Rewrite a posted message in place (the incident's root, with the current status)."""
        if not message.threaded:
            return Posted(None, None, "no message to update (webhook mode, or the root was not posted)")
        call = lambda: self._client.chat_update(channel=str(message.channel), ts=str(message.ts), text=text)  # noqa: E731
        return _posted(*_attempt(call, "the update"))

    def check(self) -> str | None:
        """Check, without posting, that Slack would accept messages (auth.test); the problem, or None."""
        if self.webhook_only:
            assert self.settings.webhook_url is not None
            _, error = _attempt(self.settings.webhook_url.reveal, "the webhook")
            return error  # an incoming webhook cannot be tested without posting
        _, error = _attempt(lambda: self._client.auth_test(), "the token")
        return error

    def _via_webhook(self, text: str) -> Posted:
        assert self.settings.webhook_url is not None
        client = WebhookClient(
            self.settings.webhook_url.reveal().get_secret_value(),
            timeout=int(self.settings.timeout_seconds),
            retry_handlers=_retries(),
        )
        response = client.send(text=text, unfurl_links=False)
        if response.status_code != 200:
            # Plain-text error codes (channel_not_found, no_service...): safe to show, unlike the URL.
            return Posted(None, None, f"Slack webhook refused the message: HTTP {response.status_code} {response.body}")
        return Posted(WEBHOOK, None)
