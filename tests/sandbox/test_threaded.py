"""The in-thread servers of the sandbox (and the tests' own) share one lifecycle: `ThreadedServer`."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from sandbox.app import SandboxApp
from sandbox.github_standin import GitHubStandIn
from sandbox.metrics_app import MetricsApp
from sandbox.slack_standin import SlackStandIn
from sandbox.threaded import ThreadedServer
from tests.support.alert_app import Served
from tests.support.token_server import TokenServer

SERVERS: dict[str, Callable[[], ThreadedServer]] = {
    "github": lambda: GitHubStandIn(token="t"),
    "slack": lambda: SlackStandIn(token="xoxb-t"),
    "app": lambda: SandboxApp(version="0" * 40),
    "metrics": lambda: MetricsApp(traffic_per_second=50),
    "token": lambda: TokenServer(),
    "uvicorn": lambda: Served(FastAPI()),
}


def _threads() -> set[str]:
    return {thread.name for thread in threading.enumerate()}


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_serves_on_127_0_0_1_while_started_and_releases_everything_after(kind: str) -> None:
    server = SERVERS[kind]()
    with pytest.raises(RuntimeError, match="is not started"):
        _ = server.url
    before = _threads()

    with server:
        assert server.running and server.url == f"http://127.0.0.1:{server.port}"
        assert server.start() is server  # starting a running server changes nothing
        answer = httpx.get(f"{server.url}/nowhere", timeout=5)
        assert answer.status_code < 500, answer.text  # it answers, whatever it thinks of the path (Slack: 200)
        port = server.port

    assert not server.running
    with pytest.raises(RuntimeError, match="is not started"):
        _ = server.port
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    assert _threads() <= before  # the server's thread (and the metrics app's traffic) ended
    server.stop()  # twice is fine


@pytest.mark.parametrize("kind", ["app", "metrics", "uvicorn"])
def test_stop_before_start_does_nothing_and_a_stopped_server_starts_again(kind: str) -> None:
    server = SERVERS[kind]()
    server.stop()
    with server:
        first = server.url
    with server:
        assert httpx.get(f"{server.url}/nowhere", timeout=5).status_code == 404
        assert server.url.startswith("http://127.0.0.1:") and first.startswith("http://127.0.0.1:")


class _Broken(ThreadedServer):
    """Binds, then its thread dies at once: `start()` must say so rather than wait for it to serve."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def _bind(self) -> int:
        return 9

    def _serve(self) -> None:
        raise OSError("cannot serve")

    def _ready(self) -> bool:
        return False

    def _shutdown(self) -> None:
        pass

    def _close(self) -> None:
        self.closed += 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_server_whose_thread_dies_fails_to_start_fast_and_is_cleaned_up() -> None:
    server = _Broken()
    with pytest.raises(RuntimeError, match="stopped before serving"):
        server.start()
    assert not server.running and server.closed == 1
