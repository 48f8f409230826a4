"""Health probes against real local HTTP servers: concurrency, timeouts, streaks, deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from runbook.config import HealthSettings, Probe
from runbook.errors import HealthCheckError
from runbook.probes import probe_once, run_health_check


class _Service:
    """A local service whose endpoints answer as the test sets them: status, body, delay."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, float]] = {"/health": (200, '{"status":"ok"}', 0.0)}
        self.hits: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.hits.append(self.path)
                status, body, delay = service.routes.get(self.path, (404, "", 0.0))
                time.sleep(delay)
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the probe gave up first: that is what the timeout test wants

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def service() -> Iterator[_Service]:
    svc = _Service()
    # A short poll: shutdown() waits for it, at every test's teardown (0.5 s by default).
    thread = threading.Thread(target=svc.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield svc
    svc.server.shutdown()
    svc.server.server_close()


def _settings(service: _Service, *paths: str, **kwargs: Any) -> HealthSettings:
    values: dict[str, Any] = {"consecutive_successes": 3, "interval_seconds": 0.02, "deadline_seconds": 3}
    values.update(kwargs)
    return HealthSettings(probes=[Probe(url=service.url + p, name=p) for p in paths or ("/health",)], **values)


def test_healthy_after_n_consecutive_rounds(service: _Service) -> None:
    report = run_health_check(_settings(service))
    assert report.verdict.healthy and report.rounds == 3 and service.hits == ["/health"] * 3


def test_probes_run_concurrently(service: _Service) -> None:
    for path in ("/a", "/b", "/c"):
        service.routes[path] = (200, "ok", 0.3)
    start = time.monotonic()
    report = run_health_check(_settings(service, "/a", "/b", "/c", consecutive_successes=1))
    assert report.verdict.healthy
    assert time.monotonic() - start < 0.6  # three 0.3 s probes in parallel, not 0.9 s in a row


def test_a_probe_slower_than_its_timeout_fails(service: _Service) -> None:
    service.routes["/slow"] = (200, "ok", 1.0)
    with pytest.raises(HealthCheckError) as caught:
        run_health_check(_settings(service, "/slow", probe_timeout_seconds=0.2, deadline_seconds=0.5))
    assert "/slow: no answer (ReadTimeout)" in str(caught.value)


def test_expected_text_must_be_in_the_body(service: _Service) -> None:
    settings = HealthSettings(
        probes=[Probe(url=service.url + "/health", contains='"status":"ok"')], consecutive_successes=1
    )
    assert run_health_check(settings).verdict.healthy
    service.routes["/health"] = (200, '{"status":"degraded"}', 0.0)
    with pytest.raises(HealthCheckError, match="body lacks"):
        run_health_check(settings.model_copy(update={"deadline_seconds": 0.3, "interval_seconds": 0.05}))


def test_a_json_field_is_read_whatever_the_spacing_of_the_answer(service: _Service) -> None:
    service.routes["/health"] = (200, '{"status": "ok", "checks": {"db": {"status": "ok"}}}', 0.0)
    probes = [
        Probe(url=service.url + "/health", json_field="status", equals="ok"),
        Probe(url=service.url + "/health", json_field="checks.db.status"),
    ]
    assert run_health_check(HealthSettings(probes=probes, consecutive_successes=1)).verdict.healthy


@pytest.mark.parametrize(
    ("body", "field", "equals", "detail"),
    [
        ('{"status": "ok"}', "status", "ok", ""),
        ("<html>ok</html>", "status", "ok", "not JSON"),
        ('{"state": "ok"}', "status", "ok", "no field status"),
        ('{"status": null}', "status", None, "status is null"),
        ('{"status": "degraded"}', "status", "ok", 'status is "degraded", expected "ok"'),
        ('{"checks": [{"up": true}]}', "checks.0.up", 1, "checks.0.up is true, expected 1"),
        ('{"code": 200}', "code", 200.0, ""),
        ('{"code": 200}', "code", "200", 'code is 200, expected "200": a JSON number, not a string'),
    ],
)
def test_a_json_probe_says_what_is_wrong(
    service: _Service, body: str, field: str, equals: str | float | None, detail: str
) -> None:
    service.routes["/health"] = (200, body, 0.0)
    probe = Probe(url=service.url + "/health", json_field=field, equals=equals)
    with httpx.Client() as client:
        result = probe_once(client, probe, timeout=2)
    assert (result.ok, result.status) == (detail == "", 200)
    assert result.detail.startswith(detail) and (detail or result.detail == "")


def test_a_flapping_service_is_not_healthy_until_the_streak_holds(service: _Service) -> None:
    answers = iter([500, 200, 200, 500, 200, 200, 200])

    class Flapping(dict[str, tuple[int, str, float]]):
        def get(self, key: str, default: Any = None) -> tuple[int, str, float]:
            return (next(answers, 200), "", 0.0)

    service.routes = Flapping()
    report = run_health_check(_settings(service))
    assert report.verdict.healthy and report.rounds == 7


def test_deadline_ends_with_the_last_reason(service: _Service) -> None:
    service.routes["/health"] = (503, "down", 0.0)
    start = time.monotonic()
    with pytest.raises(HealthCheckError, match=r"not healthy after 0 s .*: /health: HTTP 503 \(expected 200\)"):
        run_health_check(_settings(service, deadline_seconds=0.4, interval_seconds=0.05))
    assert time.monotonic() - start < 1.0


def test_unreachable_service_is_reported(service: _Service) -> None:
    settings = HealthSettings(
        probes=[Probe(url="http://127.0.0.1:9/health", name="closed")], deadline_seconds=0.3, interval_seconds=0.05
    )
    with pytest.raises(HealthCheckError, match=r"closed: no answer \(ConnectError\)"):
        run_health_check(settings)
