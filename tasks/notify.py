"""Step 5 (seed 4): tell the team in Slack, in one thread; Slack trouble never stops a rollback."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger, task
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from runbook.config import RunbookConfig
from runbook.errors import RunbookError
from runbook.messages import IncidentContext
from tasks._policy import NO_CACHE, RUN_ONCE


@dataclass(frozen=True)
class Posted:
    """The outcome of one Slack post: where it went, or why it did not."""

    channel: str | None
    ts: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def slack_client(config: RunbookConfig) -> WebClient:
    """A slack-sdk client; 429s are retried after Retry-After (slack-sdk does not by default)."""
    settings = config.slack
    token = settings.token.reveal().get_secret_value() if settings.token else None
    if token is None:
        raise RunbookError("no Slack token is configured", hint="set slack.token in the configuration")
    return WebClient(
        token=token,
        base_url=settings.base_url,
        timeout=int(settings.timeout_seconds),
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=1),
            RateLimitErrorRetryHandler(max_retry_count=2),
        ],
    )


def post(
    config: RunbookConfig, channel: str, text: str, thread: Posted | None = None, broadcast: bool = False
) -> Posted:
    """Post one message (a reply when `thread` is given); failures come back as a `Posted` with an error."""
    thread_ts = thread.ts if thread and thread.ok else None
    try:
        client = slack_client(config)
        kwargs: dict[str, object] = {"channel": channel, "text": text, "unfurl_links": False}
        if thread_ts:
            kwargs["thread_ts"] = thread_ts
            kwargs["reply_broadcast"] = broadcast
        response = client.chat_postMessage(**kwargs)  # type: ignore[arg-type]
    except SlackApiError as exc:
        # The error code only ("invalid_auth", "ratelimited"): never the request, which holds the token.
        status = exc.response.status_code
        code = exc.response.get("error") if status == 200 else f"HTTP {status}"
        error = f"Slack refused the message: {code}"
    except (SlackClientError, OSError) as exc:
        error = f"Slack unreachable: {type(exc).__name__}"
    except RunbookError as exc:
        error = str(exc)
    else:
        return Posted(str(response["channel"]), str(response["ts"]))
    return Posted(None, None, error)


def _posted(posted: Posted, text: str) -> Posted:
    if not posted.ok:
        first_line = text.splitlines()[0] if text else ""
        get_run_logger().warning("%s; the rollback goes on without it. Message was: %s", posted.error, first_line)
    return posted


def _channel(config: RunbookConfig, ctx: IncidentContext) -> str:
    return config.service(ctx.service).slack.channel


@task(name="notify-incident", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=60)
def notify_incident(config: RunbookConfig, ctx: IncidentContext, text: str) -> Posted:
    """Seed message 1, the root of the incident's thread (once per flow run, even when retried)."""
    return _posted(post(config, _channel(config, ctx), text), text)


@task(name="notify-rollback-started", cache_policy=RUN_ONCE, persist_result=True, timeout_seconds=60)
def notify_rollback_started(config: RunbookConfig, ctx: IncidentContext, thread: Posted, text: str) -> Posted:
    """Seed message 2, in the thread: the rollback starts towards a SHA."""
    return _posted(post(config, _channel(config, ctx), text, thread), text)


@task(name="notify-outcome", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_outcome(config: RunbookConfig, ctx: IncidentContext, thread: Posted, text: str) -> Posted:
    """Seed message 3 (or the escalation), in the thread and broadcast to the channel."""
    return _posted(post(config, _channel(config, ctx), text, thread, broadcast=True), text)


@task(name="check-slack", cache_policy=NO_CACHE, timeout_seconds=60)
def check_slack(config: RunbookConfig) -> str | None:
    """Check, without posting, that the Slack token works (auth.test); the problem, or None."""
    try:
        slack_client(config).auth_test()
    except SlackApiError as exc:
        status = exc.response.status_code
        return f"Slack refused the token: {exc.response.get('error') if status == 200 else f'HTTP {status}'}"
    except (SlackClientError, OSError) as exc:
        return f"Slack unreachable: {type(exc).__name__}"
    except RunbookError as exc:
        return str(exc)
    return None


@task(name="notify-channel", cache_policy=NO_CACHE, timeout_seconds=60)
def notify_channel(config: RunbookConfig, service_name: str, text: str) -> Posted:
    """One message in the service's channel, outside any incident thread (rehearsal reports)."""
    return _posted(post(config, config.service(service_name).slack.channel, text), text)
