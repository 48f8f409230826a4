"""Verification: the metric judgement (pure), then the metric check against a real Prometheus scraping a real
app, and the smoke checks against that app.

One Prometheus for the module (its first scrape comes ~5 s after start: the scrape manager applies targets on a
5 s tick). Every test leaves the app healthy.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from runbook.errors import HealthCheckError, MetricCheckError, SmokeCheckError
from runbook.health import MetricSample, json_path_present, judge_metric
from runbook.prometheus import query_prometheus, run_metric_check
from runbook.smoke import run_smoke_checks
from runbook.verification_settings import MetricCheck, SmokeCheck, error_ratio_query
from sandbox.metrics_app import MetricsApp
from sandbox.process import free_port as _free_port
from sandbox.prometheus import PrometheusServer

JOB = "shop"

# --- pure: the judgement -------------------------------------------------------------------------------


def _samples(*values: float | None, step: float = 1.0) -> list[MetricSample]:
    return [MetricSample(i * step, v) for i, v in enumerate(values)]


def test_held_under_the_threshold_for_the_hold_time() -> None:
    samples = _samples(0.0, 0.002, 0.0, 0.005)
    verdict = judge_metric(samples, threshold=0.01, hold_seconds=3)
    assert verdict.ok and verdict.held_seconds == 3 and verdict.reason == "under 0.01 for 3.0 s (4 samples)"
    not_yet = judge_metric(samples, threshold=0.01, hold_seconds=3.5)
    assert not not_yet.ok and not_yet.reason == "under 0.01 for 3.0 of 3.5 s so far"


def test_a_value_at_or_over_the_threshold_restarts_the_hold() -> None:
    samples = _samples(0.0, 0.0, 0.0, 0.01, 0.0, 0.0)
    verdict = judge_metric(samples, threshold=0.01, hold_seconds=2)
    assert not verdict.ok and verdict.held_seconds == 1
    assert judge_metric([*samples, MetricSample(6, 0.0)], 0.01, 2).ok
    broken = judge_metric(_samples(0.0, 0.0, 0.0, 0.5), 0.01, 2)
    assert not broken.ok and broken.reason == "0.5 is not under 0.01"


def test_no_data_neither_breaks_nor_proves_the_hold() -> None:
    only_gaps = judge_metric(_samples(None, None, None), 0.01, 1)
    assert not only_gaps.ok and "no data in 3 sample(s)" in only_gaps.reason and "no traffic" in only_gaps.reason
    paused = judge_metric(_samples(0.0, None, 0.0), 0.01, 1)  # the time around the gap is not held time
    assert not paused.ok and paused.held_seconds == 0
    resumed = judge_metric(_samples(0.0, None, 0.0, 0.0), 0.01, 1)  # ... but the streak survived it
    assert resumed.ok and resumed.held_seconds == 1
    waiting = judge_metric(_samples(0.0, 0.0, None), 0.01, 5)
    assert (
        not waiting.ok
        and waiting.reason == "under 0.01 for 1.0 of 5 s so far; no data (no traffic?): the hold is paused"
    )


def test_at_least_two_samples_even_without_hold_time() -> None:
    assert judge_metric([], 0.01, 0).reason == "no sample yet"
    assert not judge_metric(_samples(0.0), 0.01, 0).ok
    assert judge_metric(_samples(0.0, 0.0, step=0.1), 0.01, 0).ok


def test_prometheus_errors_are_named_in_the_reason() -> None:
    verdict = judge_metric([MetricSample(0, None, "cannot reach Prometheus at http://x: ConnectError")], 0.01, 1)
    assert (
        verdict.reason == "no answer from Prometheus in 1 sample(s): cannot reach Prometheus at http://x: ConnectError"
    )


@pytest.mark.parametrize(
    ("path", "present"),
    [
        ("data", True),
        ("data.items", True),
        ("data.items.0.id", True),
        ("data.items.1.id", False),
        ("data.items.0.name", False),
        ("data.items.x", False),
        ("data.items.-1", False),
        ("data.total", False),  # null counts as missing
        ("data.items.0.id.more", False),
        ("", False),
    ],
)
def test_json_path_present(path: str, present: bool) -> None:
    doc = {"data": {"items": [{"id": 1}], "total": None}}
    assert json_path_present(doc, path) is present


def test_json_path_on_a_top_level_array() -> None:
    assert json_path_present([{"id": 0}], "0.id") and not json_path_present([], "0")


# --- pure: the settings ----------------------------------------------------------------------------------


def test_default_query_is_the_5xx_ratio_of_the_job() -> None:
    check = MetricCheck(prometheus_url="http://127.0.0.1:9090/", job="shop")
    assert check.prometheus_url == "http://127.0.0.1:9090"
    assert check.promql == (
        '(sum(rate(http_requests_total{job="shop",code=~"5.."}[1m])) or vector(0)) '
        '/ sum(rate(http_requests_total{job="shop"}[1m]))'
    )
    assert error_ratio_query('we"ird', "5s").count('job="we\\"ird"') == 2
    assert MetricCheck(prometheus_url="http://p", query="up").promql == "up"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give 'job'"),
        ({"job": "shop", "window": "1 minute"}, "Prometheus duration"),
        ({"job": "shop", "hold_seconds": 300}, "shorter than 'deadline_seconds'"),
        ({"job": "shop", "threshold": 0}, "greater than 0"),
        ({"job": "shop", "service": "shop"}, "Extra inputs are not permitted"),
        ({"job": "shop", "prometheus_url": "prometheus:9090"}, "must start with http"),
    ],
)
def test_metric_check_settings_are_validated(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        MetricCheck.model_validate({"prometheus_url": "http://127.0.0.1:9090", **values})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"body": {"a": 1}}, "POST only"),
        ({"method": "HEAD", "contains": "x"}, "no body"),
        ({"json_field": "data..id"}, "dotted path"),
        ({"expect_status": 99}, "greater than or equal to 100"),
    ],
)
def test_smoke_check_settings_are_validated(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SmokeCheck.model_validate({"url": "http://127.0.0.1/", **values})


# --- a real Prometheus scraping a real app --------------------------------------------------------------


class World:
    def __init__(self, app: MetricsApp, prometheus: PrometheusServer) -> None:
        self.app = app
        self.prometheus = prometheus
        self.client = httpx.Client()

    def ratio(self, window: str = "5s") -> float | None:
        return query_prometheus(self.client, self.prometheus.base_url, error_ratio_query(JOB, window), 2)

    def wait_for_ratio(self, predicate: Callable[[float], bool], timeout: float = 15) -> float:
        deadline = time.monotonic() + timeout
        while True:
            value = self.ratio()
            if value is not None and predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"5xx ratio still {value} after {timeout} s")
            time.sleep(0.2)

    def check(self, **kwargs: Any) -> MetricCheck:
        values: dict[str, Any] = {
            "prometheus_url": self.prometheus.base_url,
            "job": JOB,
            "window": "5s",
            "hold_seconds": 2,
            "interval_seconds": 0.5,
            "deadline_seconds": 15,
            "timeout_seconds": 2,
        }
        values.update(kwargs)
        return MetricCheck(**values)


@pytest.fixture(scope="module")
def module_world() -> Iterator[World]:
    with MetricsApp(traffic_per_second=20) as app, PrometheusServer({JOB: app.target}) as prometheus:
        prometheus.wait_for_target_up(timeout=20)
        world = World(app, prometheus)
        try:
            world.wait_for_ratio(lambda v: v == 0)  # two scrapes in the window: the ratio exists
            yield world
        finally:
            world.client.close()


@pytest.fixture
def world(module_world: World) -> Iterator[World]:
    yield module_world
    module_world.app.failing = False


def test_a_healthy_service_passes_the_metric_check(world: World) -> None:
    report = run_metric_check(world.check())
    assert report.verdict.ok and report.verdict.held_seconds >= 2
    assert len(report.samples) >= 5 and all(s.value == 0 for s in report.samples)
    assert 2 <= report.seconds < 5
    assert report.summary()[0].startswith("under 0.01 for ")


def test_a_failing_service_fails_naming_the_query_the_values_and_the_threshold(world: World) -> None:
    world.app.failing = True
    world.wait_for_ratio(lambda v: v > 0.9)
    check = world.check(deadline_seconds=4)
    start = time.monotonic()
    with pytest.raises(MetricCheckError) as caught:
        run_metric_check(check)
    message = str(caught.value)
    assert check.promql in message
    assert "did not stay under 0.01 for 2 s within 4 s" in message
    assert re.search(r"last values \(newest last\): (0\.9\d*|1), (0\.9\d*|1), ", message), message
    assert re.search(r"(0\.9\d*|1) is not under 0\.01", message), message
    assert isinstance(caught.value, HealthCheckError)
    report = caught.value.report
    assert report is not None and not report.verdict.ok
    assert all(s.value is not None and s.value > 0.9 for s in report.samples)
    # The hold cannot fit before the deadline any more: no need to wait for it.
    assert time.monotonic() - start < 4


def test_a_service_that_recovers_passes_within_the_deadline(world: World) -> None:
    world.app.failing = True
    world.wait_for_ratio(lambda v: v > 0.9)
    switch = threading.Timer(1.0, lambda: setattr(world.app, "failing", False))
    switch.start()
    try:
        report = run_metric_check(world.check(deadline_seconds=20))
    finally:
        switch.cancel()
    assert report.verdict.ok
    values = [s.value for s in report.samples]
    assert values[0] is not None and values[0] > 0.9  # it saw the failure, then the way down
    assert all(v is not None and v < 0.01 for v in values[-4:])
    assert report.seconds < 20


def test_a_query_prometheus_rejects_fails_at_once(world: World) -> None:
    start = time.monotonic()
    with pytest.raises(MetricCheckError, match=r"query 'sum\(rate\(' rejected: Prometheus answered HTTP 400 bad_data"):
        run_metric_check(world.check(query="sum(rate(", deadline_seconds=30))
    assert time.monotonic() - start < 2


def test_a_query_with_several_series_is_refused(world: World) -> None:
    with pytest.raises(MetricCheckError, match=r"gives 2 series .* aggregate it"):
        run_metric_check(world.check(query=f'http_requests_total{{job="{JOB}"}}'))


def test_no_data_never_passes(world: World) -> None:
    check = world.check(job="no-such-job", hold_seconds=1, interval_seconds=0.2, deadline_seconds=1.5)
    with pytest.raises(MetricCheckError) as caught:
        run_metric_check(check)
    assert "last values (newest last): no data, no data" in str(caught.value)
    assert "no traffic, or no such series" in str(caught.value)


def test_unreachable_prometheus_is_reported(world: World) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    check = world.check(prometheus_url=url, hold_seconds=0.5, interval_seconds=0.2, deadline_seconds=1)
    start = time.monotonic()
    with pytest.raises(MetricCheckError) as caught:
        run_metric_check(check)
    message = str(caught.value)
    assert message.startswith(f"Prometheus at {url} did not answer within 1 s (query {check.promql});")
    assert "no answer from Prometheus in " in message and f"cannot reach Prometheus at {url}: ConnectError" in message
    assert "last values (newest last): no answer" in message
    assert time.monotonic() - start < 1.5


def test_a_url_that_is_not_prometheus_is_reported(world: World) -> None:
    with pytest.raises(MetricCheckError, match=r"answered HTTP 404 without a Prometheus API response"):
        run_metric_check(world.check(prometheus_url=world.app.url))


# --- smoke checks against the app -----------------------------------------------------------------------


def test_smoke_checks_pass(world: World) -> None:
    url = world.app.url
    report = run_smoke_checks(
        [
            SmokeCheck(name="cart", url=f"{url}/api/cart", json_field="data.items.0.id"),
            SmokeCheck(name="login", url=f"{url}/login", contains="Sign in"),
            SmokeCheck(
                url=f"{url}/api/cart", method="POST", body={"sku": "A1"}, expect_status=201, json_field="data.added.sku"
            ),
            SmokeCheck(url=f"{url}/login", method="HEAD"),
        ]
    )
    assert report.ok and [r.name for r in report.results] == [
        "cart",
        "login",
        f"POST {url}/api/cart",
        f"HEAD {url}/login",
    ]
    assert [r.status for r in report.results] == [200, 200, 201, 200]
    assert all(r.ms > 0 and r.reason == "" for r in report.results)
    assert run_smoke_checks([]).results == ()


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        ({"url": "/nope"}, "HTTP 404, expected HTTP 200"),
        ({"url": "/login", "contains": "Welcome"}, "HTTP 200, body lacks 'Welcome'"),
        ({"url": "/api/cart", "json_field": "data.items.0.price"}, "HTTP 200, JSON answer lacks 'data.items.0.price'"),
        ({"url": "/login", "json_field": "data"}, "HTTP 200, body is not JSON, so it has no 'data'"),
    ],
)
def test_a_failed_smoke_check_says_why(world: World, check: dict[str, Any], reason: str) -> None:
    with pytest.raises(SmokeCheckError) as caught:
        run_smoke_checks([SmokeCheck.model_validate({**check, "name": "it", "url": world.app.url + check["url"]})])
    assert str(caught.value).startswith(f"1 of 1 smoke checks failed: it: {reason}:")


def test_every_smoke_check_runs_and_every_failure_is_listed(world: World) -> None:
    url = world.app.url
    before = world.app.hits.copy()
    checks = [
        SmokeCheck(name="cart", url=f"{url}/api/cart", json_field="data.items.0.id"),
        SmokeCheck(name="missing", url=f"{url}/missing"),
        SmokeCheck(name="login", url=f"{url}/login", contains="Sign out"),
        SmokeCheck(name="field", url=f"{url}/api/cart", json_field="data.coupon"),
        SmokeCheck(name="down", url=f"http://127.0.0.1:{_free_port()}/", timeout_seconds=1),
    ]
    with pytest.raises(SmokeCheckError) as caught:
        run_smoke_checks(checks)
    message = str(caught.value)
    assert message.startswith(
        "4 of 5 smoke checks failed: missing: HTTP 404, expected HTTP 200; login: HTTP 200, "
        "body lacks 'Sign out'; field: HTTP 200, JSON answer lacks 'data.coupon'; "
        "down: no answer (ConnectError)"
    )
    assert "cart:" not in message
    report = caught.value.report
    assert report is not None and [r.ok for r in report.results] == [True, False, False, False, False]
    hits = world.app.hits - before
    assert hits["/api/cart"] == 2 and hits["/missing"] == 1 and hits["/login"] == 1


def test_smoke_checks_fail_while_the_service_fails(world: World) -> None:
    world.app.failing = True
    with pytest.raises(SmokeCheckError, match=r"^1 of 1 smoke checks failed: cart: HTTP 500, expected HTTP 200"):
        run_smoke_checks([SmokeCheck(name="cart", url=f"{world.app.url}/api/cart")])
