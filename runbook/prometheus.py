"""The metric check's I/O: a small Prometheus client (`query_prometheus`) and the polling loop (`run_metric_check`).

The loop reads the query every `interval_seconds` and asks runbook.health's `judge_metric` whether it held under
its threshold for `hold_seconds`. No data (empty vector, NaN) does not fail the check, and does not prove it
either. Prometheus not answering (connection refused, timeout, HTTP 503) is treated like no data until the
deadline; a query Prometheus rejects (syntax error, wrong type) fails at once.
"""

from __future__ import annotations

import math
import time
from functools import partial
from typing import Any

import httpx

from runbook import messages, progress
from runbook.errors import MetricCheckError, PrometheusUnavailableError
from runbook.health import MetricReport, MetricSample, MetricVerdict, judge_metric, recent_values
from runbook.verification_settings import MetricCheck

# Prometheus error types that say "not now" rather than "not this query".
_TRANSIENT_ERRORS = ("timeout", "canceled", "unavailable")


def query_prometheus(client: httpx.Client, base_url: str, query: str, timeout: float) -> float | None:
    """The value of an instant query now; None when there is no data (empty result or NaN).

    Raises PrometheusUnavailableError when Prometheus cannot answer now, and MetricCheckError when it
    rejects the query or the result is not one number.
    """
    url = f"{base_url.rstrip('/')}/api/v1/query"
    response = _get(client, url, base_url, query, timeout)
    payload = _api_payload(response, url)
    _check_success(payload, response.status_code, query)
    data = payload.get("data")
    return _number(_single_value(data if isinstance(data, dict) else {}, query), query)


def _get(client: httpx.Client, url: str, base_url: str, query: str, timeout: float) -> httpx.Response:
    try:
        return client.get(url, params={"query": query}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusUnavailableError(
            f"cannot reach Prometheus at {base_url}: {type(exc).__name__}{f' ({exc})' if str(exc) else ''}",
            hint="check metric.prometheus_url and that Prometheus runs",
        ) from None


def _api_payload(response: httpx.Response, url: str) -> dict[str, Any]:
    """The answer as a Prometheus API response (an object with a `status`), or the error saying it is not one."""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict) and "status" in payload:
        return payload
    error_class = PrometheusUnavailableError if response.status_code >= 500 else MetricCheckError
    raise error_class(
        f"{url} answered HTTP {response.status_code} without a Prometheus API response: {response.text[:200]!r}",
        hint="metric.prometheus_url must be the Prometheus server (http://host:9090), not a dashboard",
    )


def _check_success(payload: dict[str, Any], status_code: int, query: str) -> None:
    """An API error is transient (5xx, timeout: retried) or the query's fault (fails the check at once)."""
    if payload["status"] == "success":
        return
    kind = str(payload.get("errorType", "error"))
    detail = f"Prometheus answered HTTP {status_code} {kind}: {payload.get('error', '')}"
    if status_code >= 500 or kind in _TRANSIENT_ERRORS:
        raise PrometheusUnavailableError(detail, hint="Prometheus is overloaded or not ready; retried")
    raise MetricCheckError(f"query {query!r} rejected: {detail}", hint="fix metric.query in the configuration")


def _single_value(data: dict[str, Any], query: str) -> Any:
    """The raw value of a scalar or one-series vector result; NaN for an empty vector (no data, like 0/0)."""
    result_type, result = data.get("resultType"), data.get("result")
    if result_type == "scalar" and isinstance(result, list) and len(result) == 2:
        return result[1]
    if result_type == "vector" and isinstance(result, list):
        return _vector_value(result, query)
    raise MetricCheckError(
        f"query {query!r} gives a {result_type}, not one number", hint="use an instant vector or scalar query"
    )


def _vector_value(result: list[Any], query: str) -> Any:
    if not result:
        return math.nan
    if len(result) > 1:
        labels = ", ".join(str(r.get("metric", {}) if isinstance(r, dict) else r) for r in result[:3])
        raise MetricCheckError(
            f"query {query!r} gives {len(result)} series ({labels}), not one number",
            hint="aggregate it, e.g. sum(...) or max(...)",
        )
    sample = result[0].get("value") if isinstance(result[0], dict) else None
    return sample[1] if isinstance(sample, list) and len(sample) == 2 else None  # None: _number refuses it


def _number(raw: Any, query: str) -> float | None:
    """The sample's value as a float; NaN (0/0: no traffic) is no data."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise MetricCheckError(f"query {query!r}: Prometheus answered an unreadable value {raw!r}") from None
    return None if math.isnan(value) else value


def run_metric_check(check: MetricCheck) -> MetricReport:
    """Poll the query until it held under the threshold, or raise MetricCheckError at the deadline."""
    poll = _MetricPoll(check)
    with httpx.Client() as client:
        while True:
            poll.read(client)
            verdict = judge_metric(poll.samples, check.threshold, check.hold_seconds)
            poll.report_progress(verdict)
            if verdict.ok:
                return poll.report(verdict)
            if poll.cannot_pass(verdict):
                raise poll.gave_up(verdict)
            time.sleep(check.interval_seconds)


class _MetricPoll:
    """One run of the metric check: its samples so far, its clock and its deadline."""

    def __init__(self, check: MetricCheck) -> None:
        self.check = check
        self.query = check.promql
        self.start = time.monotonic()
        self.deadline = self.start + check.deadline_seconds
        self.samples: list[MetricSample] = []

    def report(self, verdict: MetricVerdict) -> MetricReport:
        return MetricReport(tuple(self.samples), verdict, time.monotonic() - self.start, self.query)

    def read(self, client: httpx.Client) -> None:
        """One more sample; Prometheus not answering is a sample without a value, a rejected query an error."""
        timeout = max(0.1, min(self.check.timeout_seconds, self.deadline - time.monotonic()))
        try:
            value = query_prometheus(client, self.check.prometheus_url, self.query, timeout)
            self.samples.append(MetricSample(time.monotonic() - self.start, value))
        except PrometheusUnavailableError as exc:
            self.samples.append(MetricSample(time.monotonic() - self.start, None, exc.message))
        except MetricCheckError as exc:
            verdict = MetricVerdict(False, exc.message)
            raise MetricCheckError(exc.message, hint=exc.hint, report=self.report(verdict)) from None

    def report_progress(self, verdict: MetricVerdict) -> None:
        """How far the hold is (runbook/progress.py): the seconds held of `hold_seconds`, and the last value."""
        check = self.check
        held = min(verdict.held_seconds, check.hold_seconds)
        fraction = 1.0 if verdict.ok else held / check.hold_seconds if check.hold_seconds else 0.0
        detail = partial(
            messages.progress_metric,
            value=self.samples[-1].value,
            threshold=check.threshold,
            held=held,
            hold=check.hold_seconds,
            ratio=check.query is None,  # the default query: the share of 5xx answers
        )
        progress.report(fraction, detail)

    def cannot_pass(self, verdict: MetricVerdict) -> bool:
        """Whether the next sample comes after the deadline, or the hold can no longer complete before it."""
        check = self.check
        now = time.monotonic()
        last = self.samples[-1]
        # The earliest the hold could be complete: it goes on from the last sample if that one was good,
        # else from the next one, at least an interval away.
        good = last.value is not None and last.value < check.threshold
        resume = self.start + last.at if good else now + check.interval_seconds
        earliest = resume + check.hold_seconds - verdict.held_seconds
        return now + check.interval_seconds > self.deadline or earliest > self.deadline

    def gave_up(self, verdict: MetricVerdict) -> MetricCheckError:
        check, query = self.check, self.query
        recent = recent_values(self.samples)
        if all(s.error for s in self.samples):
            return MetricCheckError(
                f"Prometheus at {check.prometheus_url} did not answer within {check.deadline_seconds:g} s "
                f"(query {query}); last values (newest last): {recent}; {verdict.reason}",
                hint="check metric.prometheus_url and that Prometheus runs, or check the metric by hand",
                report=self.report(verdict),
            )
        return MetricCheckError(
            f"{query} did not stay under {check.threshold:g} for {check.hold_seconds:g} s within "
            f"{check.deadline_seconds:g} s; last values (newest last): {recent}; {verdict.reason}",
            hint="the version was deployed but its error rate did not settle; look at its logs",
            report=self.report(verdict),
        )
