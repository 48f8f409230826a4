"""SlackStandIn driven by the real slack-sdk WebClient: threads, updates, errors, 429, outages, hangs and latency."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.error import URLError

import httpx
import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from sandbox.slack_standin import SlackStandIn

TOKEN = "xoxb-test-token-not-secret"
CHANNEL = "#incidents-prod"
CHANNEL_ID = "C0INCIDENT1"


@pytest.fixture
def echoed() -> list[str]:
    return []


@pytest.fixture
def slack(echoed: list[str]) -> Iterator[SlackStandIn]:
    with SlackStandIn(token=TOKEN, channels={CHANNEL: CHANNEL_ID, "ops": "C0OPS00001"}, echo=echoed.append) as s:
        yield s


@pytest.fixture
def client(slack: SlackStandIn) -> WebClient:
    return WebClient(token=TOKEN, base_url=slack.base_url)


def test_base_url_ends_with_api(slack: SlackStandIn) -> None:
    assert slack.base_url.startswith("http://127.0.0.1:")
    assert slack.base_url.endswith("/api/")


def test_auth_test(client: WebClient) -> None:
    response = client.auth_test()
    assert response["ok"] is True
    assert response["user_id"]


def test_thread_with_replies_broadcast_and_update(slack: SlackStandIn, client: WebClient, echoed: list[str]) -> None:
    root = client.chat_postMessage(channel=CHANNEL, text="Rollback of shop started")
    assert root["channel"] == CHANNEL_ID  # the id, even when posting to "#name"
    assert isinstance(root["ts"], str)
    assert root["message"]["text"] == "Rollback of shop started"
    reply = client.chat_postMessage(channel=root["channel"], thread_ts=root["ts"], text="Image verified")
    broadcast = client.chat_postMessage(
        channel="incidents-prod", thread_ts=root["ts"], text="Rolled back", reply_broadcast=True
    )
    updated = client.chat_update(channel=root["channel"], ts=root["ts"], text="Rollback of shop: done")
    assert (updated["ts"], updated["text"]) == (root["ts"], "Rollback of shop: done")

    thread = slack.thread(root["ts"])
    assert [m.ts for m in thread] == [root["ts"], reply["ts"], broadcast["ts"]]
    assert root["ts"] < reply["ts"] < broadcast["ts"]
    assert [m.thread_ts for m in thread] == [None, root["ts"], root["ts"]]
    assert [m.reply_broadcast for m in thread] == [False, False, True]
    assert thread[0].updates == ["Rollback of shop: done"]
    assert thread[0].current_text == "Rollback of shop: done"
    assert echoed == [
        "[#incidents-prod] Rollback of shop started",
        "  └ Image verified",
        "  └ Rolled back (also sent to the channel)",
        "  ↻ updated: Rollback of shop: done",
    ]
    assert slack.requests == {"chat.postMessage": 3, "chat.update": 1}


def test_other_channel_and_form_encoded_post(slack: SlackStandIn) -> None:
    # slack-sdk posts JSON; older code and curl post forms: both must work.
    response = httpx.post(
        f"{slack.base_url}chat.postMessage",
        data={"channel": "C0OPS00001", "text": "from a form", "token": TOKEN},
    )
    assert response.json()["ok"] is True
    assert response.json()["channel"] == "C0OPS00001"
    assert slack.messages[-1].channel_id == "C0OPS00001"


def test_blocks_without_text_and_no_text(slack: SlackStandIn) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    # Raw HTTP: slack-sdk itself warns (UserWarning) when `text` is missing.
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*bold*"}}]
    ok = httpx.post(f"{slack.base_url}chat.postMessage", headers=headers, json={"channel": CHANNEL, "blocks": blocks})
    assert ok.json()["ok"] is True
    empty = httpx.post(f"{slack.base_url}chat.postMessage", headers=headers, json={"channel": CHANNEL})
    assert empty.json() == {"ok": False, "error": "no_text"}


def test_invalid_auth(slack: SlackStandIn) -> None:
    wrong = WebClient(token="xoxb-wrong", base_url=slack.base_url)
    with pytest.raises(SlackApiError) as raised:
        wrong.chat_postMessage(channel=CHANNEL, text="hello")
    assert raised.value.response.status_code == 200
    assert raised.value.response["error"] == "invalid_auth"
    assert slack.messages == []


def test_channel_not_found(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel="#nope", text="hello")
    assert raised.value.response["error"] == "channel_not_found"


def test_update_of_unknown_ts_is_message_not_found(client: WebClient) -> None:
    client.chat_postMessage(channel=CHANNEL, text="hello")
    with pytest.raises(SlackApiError) as raised:
        client.chat_update(channel=CHANNEL_ID, ts="1.000001", text="changed")
    assert raised.value.response["error"] == "message_not_found"


def test_429_without_retry_handler_raises(slack: SlackStandIn, client: WebClient) -> None:
    slack.rate_limit_next(1, retry_after=7)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel=CHANNEL, text="hello")
    assert raised.value.response.status_code == 429
    assert raised.value.response["error"] == "ratelimited"
    assert raised.value.response.headers["Retry-After"] == "7"
    assert slack.messages == []
    # Only the next n requests are limited.
    assert client.chat_postMessage(channel=CHANNEL, text="hello")["ok"] is True


def test_429_with_retry_handler_succeeds_after_one_retry(slack: SlackStandIn, client: WebClient) -> None:
    client.retry_handlers.append(RateLimitErrorRetryHandler(max_retry_count=1))
    slack.rate_limit_next(1, retry_after=0)  # the handler sleeps Retry-After + random() < 1 s
    response = client.chat_postMessage(channel=CHANNEL, text="hello")
    assert response["ok"] is True
    assert slack.requests["chat.postMessage"] == 2
    assert [m.text for m in slack.messages] == ["hello"]


def test_down_answers_503(slack: SlackStandIn, client: WebClient) -> None:
    slack.set_down(True)
    with pytest.raises((SlackApiError, URLError)) as raised:
        client.chat_postMessage(channel=CHANNEL, text="hello")
    if isinstance(raised.value, SlackApiError):
        assert raised.value.response.status_code == 503
    raw = httpx.post(f"{slack.base_url}chat.postMessage")
    assert raw.status_code == 503
    assert raw.headers["content-type"].startswith("text/plain")
    slack.set_down(False)
    assert client.chat_postMessage(channel=CHANNEL, text="back")["ok"] is True


def test_ts_values_are_unique_increasing_strings(client: WebClient) -> None:
    stamps = [client.chat_postMessage(channel=CHANNEL, text=f"m{n}")["ts"] for n in range(20)]
    assert len(set(stamps)) == 20
    assert stamps == sorted(stamps, key=lambda ts: tuple(int(part) for part in ts.split(".")))
    assert all(isinstance(ts, str) and len(ts.split(".")[1]) == 6 for ts in stamps)


def test_default_channel(echoed: list[str]) -> None:
    with SlackStandIn(token=TOKEN) as slack:
        body = httpx.post(
            f"{slack.base_url}chat.postMessage",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            content=json.dumps({"channel": "#incidents-prod", "text": "hi"}),
        ).json()
        assert body["channel"] == "C0INCIDENT1"


def test_a_hang_makes_the_client_time_out_and_changes_nothing(slack: SlackStandIn) -> None:
    slack.set_hang(3)
    client = WebClient(token=TOKEN, base_url=slack.base_url, timeout=1)
    with pytest.raises(TimeoutError):
        client.chat_postMessage(channel=CHANNEL, text="hello")
    with pytest.raises(TimeoutError):
        WebhookClient(slack.webhook_url, timeout=1).send(text="hello")
    assert slack.messages == []
    assert slack.requests == {"chat.postMessage": 1, "incoming-webhook": 1}
    slack.set_hang(None)
    assert client.chat_postMessage(channel=CHANNEL, text="back")["ok"] is True
    assert [m.text for m in slack.messages] == ["back"]


def test_a_hang_shorter_than_the_timeout_answers_503(slack: SlackStandIn, client: WebClient) -> None:
    slack.set_hang(0.1)
    with pytest.raises(SlackApiError) as raised:
        client.chat_postMessage(channel=CHANNEL, text="hello")
    assert raised.value.response.status_code == 503
    assert slack.messages == []


def test_latency_delays_then_serves(slack: SlackStandIn, client: WebClient) -> None:
    slack.latency_seconds = 0.2
    started = time.monotonic()
    root = client.chat_postMessage(channel=CHANNEL, text="slow")
    assert WebhookClient(slack.webhook_url).send(text="slow too").status_code == 200
    assert time.monotonic() - started >= 0.4  # each call waited its latency, then was served
    assert [m.text for m in slack.messages] == ["slow", "slow too"]
    assert root["ts"] == slack.messages[0].ts
