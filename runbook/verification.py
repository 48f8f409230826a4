"""Verification after a rollback: the error-rate metric holds under a threshold, and the smoke checks pass.

Two checks, each a settings model (validated with the rest of the configuration), a pure judgement and the
I/O that feeds it:

- **Metric check** (`MetricCheck`, `judge_metric`, `query_prometheus`, `run_metric_check`): a PromQL query,
  by default the service's 5xx ratio over a short window, is polled every `interval_seconds`; the check passes
  once the value has stayed strictly under `threshold` for `hold_seconds` (every sample in that time under
  it, at least two samples), and fails (`MetricCheckError`) at `deadline_seconds`, or earlier once the hold
  can no longer fit before the deadline.

  **No data** (the query returns an empty vector, or NaN, which is what 0/0 gives when the service had no
  traffic in the window) is `MetricSample.value = None`. It is *not failing*: it does not break a streak,
  since no traffic is no error. It is *not proving* either: the hold clock stops while there is no data,
  so only time between consecutive samples under the threshold counts. A service with no traffic at all
  therefore never passes: the check ends at the deadline with a reason saying there was no data.
  Prometheus not answering (connection refused, timeout, HTTP 503) is treated like no data until the
  deadline; a query Prometheus rejects (syntax error, wrong type) fails at once.

- **Smoke checks** (`SmokeCheck`, `json_path_present`, `run_smoke_checks`): a few user-facing requests
  (status, a text in the body, a field in the JSON answer), run concurrently; all of them run, then a
  `SmokeCheckError` lists every failure.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from pydantic import Field, field_validator, model_validator

from runbook.errors import MetricCheckError, PrometheusUnavailableError, SmokeCheckError
from runbook.settings_base import MAX_INTERVAL_SECONDS, MAX_REQUEST_SECONDS, MAX_WAIT_SECONDS, dotted_path
from runbook.settings_base import Settings as _Model
from runbook.settings_base import http_url as _http_url

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_RECENT = 5  # values quoted in a failure message


def _promql_string(value: str) -> str:
    """A PromQL double-quoted string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def error_ratio_query(job: str, window: str) -> str:
    """The share of 5xx answers of a Prometheus job over a window (the default metric-check query).

    `sum(rate(5xx)) or vector(0)`: most client libraries only create a `code="500"` series on the first 500,
    and without `or vector(0)` a service that never failed would have no ratio at all. A job with no traffic
    gives 0/0 = NaN (or an empty result), which the check reads as no data.
    """
    job_label = f"job={_promql_string(job)}"
    errors = f'sum(rate(http_requests_total{{{job_label},code=~"5.."}}[{window}]))'
    total = f"sum(rate(http_requests_total{{{job_label}}}[{window}]))"
    return f"({errors} or vector(0)) / {total}"


class MetricCheck(_Model):
    """A Prometheus query that must stay under a threshold for a while after the rollback.

    `query` defaults to the 5xx ratio of `job` over `window` (see `error_ratio_query`); give one or the
    other. A value counts as good when it is strictly below `threshold`.
    """

    prometheus_url: str
    query: str | None = Field(default=None, description="PromQL giving one number; default: the 5xx ratio of `job`")
    job: str | None = Field(default=None, description="the service's Prometheus job label, for the default query")
    window: str = Field(default="1m", description="rate() window of the default query, a Prometheus duration")
    threshold: float = Field(default=0.01, gt=0, description="good when strictly under this (0.01 = 1 % of 5xx)")
    hold_seconds: float = Field(default=30.0, ge=0, le=MAX_WAIT_SECONDS)
    interval_seconds: float = Field(default=5.0, gt=0, le=MAX_INTERVAL_SECONDS)
    deadline_seconds: float = Field(default=300.0, gt=0, le=MAX_WAIT_SECONDS)
    timeout_seconds: float = Field(default=5.0, gt=0, le=MAX_REQUEST_SECONDS)

    @field_validator("prometheus_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value).rstrip("/")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        if not _DURATION.fullmatch(value):
            raise ValueError("must be a Prometheus duration such as '30s', '1m' or '1m30s'")
        return value

    @model_validator(mode="after")
    def _query_or_job(self) -> MetricCheck:
        if self.query is None and not self.job:
            raise ValueError("give 'job' (for the default 5xx-ratio query) or a 'query'")
        if self.query is not None and not self.query.strip():
            raise ValueError("'query' is empty")
        if self.hold_seconds >= self.deadline_seconds:
            raise ValueError("'hold_seconds' must be shorter than 'deadline_seconds', or the check can never pass")
        return self

    @property
    def promql(self) -> str:
        """The query actually sent."""
        if self.query is not None:
            return self.query
        assert self.job is not None  # the validator requires one of them
        return error_ratio_query(self.job, self.window)


class SmokeCheck(_Model):
    """One user-facing request after the rollback and what its answer must look like."""

    name: str | None = None
    url: str
    method: Literal["GET", "POST", "HEAD"] = "GET"
    body: dict[str, Any] | None = Field(default=None, description="JSON body, POST only")
    expect_status: int = Field(default=200, ge=100, le=599)
    contains: str | None = Field(default=None, description="text the body must contain")
    json_field: str | None = Field(
        default=None, description="dotted path that must be in the JSON answer, not null: 'data.items.0.id'"
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=MAX_REQUEST_SECONDS)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("json_field")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        return None if value is None else dotted_path(value, "'data.items.0.id'")

    @model_validator(mode="after")
    def _coherent(self) -> SmokeCheck:
        if self.body is not None and self.method != "POST":
            raise ValueError("'body' is sent with method POST only")
        if self.method == "HEAD" and (self.contains is not None or self.json_field is not None):
            raise ValueError("a HEAD answer has no body: drop 'contains'/'json_field' or use GET")
        return self

    @property
    def label(self) -> str:
        return self.name or f"{self.method} {self.url}"


# --- the pure part --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSample:
    """One reading of the query, `at` seconds after the check started; `value` None is no data."""

    at: float
    value: float | None
    error: str | None = None  # why there is no value when Prometheus did not answer


@dataclass(frozen=True)
class MetricVerdict:
    """Whether the metric held, why (or why not yet), and for how long it has held so far."""

    ok: bool
    reason: str
    held_seconds: float = 0.0


def _fmt(sample: MetricSample) -> str:
    if sample.value is not None:
        return f"{sample.value:.4g}"
    return "no answer" if sample.error else "no data"


def judge_metric(samples: Sequence[MetricSample], threshold: float, hold_seconds: float) -> MetricVerdict:
    """Held when the latest samples stayed strictly under `threshold` for `hold_seconds`, with 2+ samples.

    A value at or over the threshold restarts the hold. No data (None) neither breaks the streak nor counts
    toward it: the time between a no-data sample and its neighbours is not held time.
    """
    held = 0.0
    good = 0  # samples under the threshold in the current streak
    previous_good: float | None = None  # when the previous sample was good; None after no data
    for sample in samples:
        if sample.value is None:
            previous_good = None
        elif sample.value >= threshold:
            held, good, previous_good = 0.0, 0, None
        else:
            if previous_good is not None:
                held += sample.at - previous_good
            good += 1
            previous_good = sample.at
    if not samples:
        return MetricVerdict(False, "no sample yet")
    if good >= 2 and held >= hold_seconds:
        return MetricVerdict(True, f"under {threshold:g} for {held:.1f} s ({good} samples)", held)
    last = samples[-1]
    if all(s.value is None for s in samples):
        if last.error:
            return MetricVerdict(False, f"no answer from Prometheus in {len(samples)} sample(s): {last.error}")
        return MetricVerdict(
            False, f"no data in {len(samples)} sample(s): no traffic, or no such series; no data proves nothing"
        )
    if last.value is not None and last.value >= threshold:
        return MetricVerdict(False, f"{last.value:.4g} is not under {threshold:g}", held)
    progress = f"under {threshold:g} for {held:.1f} of {hold_seconds:g} s so far"
    if last.value is None:
        why = f"no answer from Prometheus ({last.error})" if last.error else "no data (no traffic?)"
        return MetricVerdict(False, f"{progress}; {why}: the hold is paused", held)
    return MetricVerdict(False, progress, held)


def json_path_present(doc: Any, path: str) -> bool:
    """Whether a dotted path (`data.items.0.id`) leads to a non-null value in a parsed JSON document.

    A segment is a key of an object, or the index (0, 1, ...) of an array; keys containing dots cannot be
    addressed.
    """
    if not path:
        return False
    node = doc
    for part in path.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                return False
            node = node[int(part)]
        else:
            return False
    return node is not None


# --- the metric check -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricReport:
    """How the metric check went: every sample read, the final verdict, the time it took."""

    samples: tuple[MetricSample, ...]
    verdict: MetricVerdict
    seconds: float
    query: str = ""

    def summary(self) -> list[str]:
        recent = ", ".join(_fmt(s) for s in self.samples[-_RECENT:])
        return [
            f"{self.verdict.reason} in {self.seconds:.1f} s ({len(self.samples)} samples)",
            f"query: {self.query}",
            f"last values: {recent or '-'}",
        ]


def query_prometheus(client: httpx.Client, base_url: str, query: str, timeout: float) -> float | None:
    """The value of an instant query now; None when there is no data (empty result or NaN).

    Raises PrometheusUnavailableError when Prometheus cannot answer now, and MetricCheckError when it
    rejects the query or the result is not one number.
    """
    url = f"{base_url.rstrip('/')}/api/v1/query"
    try:
        response = client.get(url, params={"query": query}, timeout=timeout)
    except httpx.HTTPError as exc:
        raise PrometheusUnavailableError(
            f"cannot reach Prometheus at {base_url}: {type(exc).__name__}{f' ({exc})' if str(exc) else ''}",
            hint="check metric.prometheus_url and that Prometheus runs",
        ) from None
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if not isinstance(payload, dict) or "status" not in payload:
        error_class = PrometheusUnavailableError if response.status_code >= 500 else MetricCheckError
        raise error_class(
            f"{url} answered HTTP {response.status_code} without a Prometheus API response: {response.text[:200]!r}",
            hint="metric.prometheus_url must be the Prometheus server (http://host:9090), not a dashboard",
        )
    if payload["status"] != "success":
        kind = str(payload.get("errorType", "error"))
        detail = f"Prometheus answered HTTP {response.status_code} {kind}: {payload.get('error', '')}"
        if response.status_code >= 500 or kind in ("timeout", "canceled", "unavailable"):
            raise PrometheusUnavailableError(detail, hint="Prometheus is overloaded or not ready; retried")
        raise MetricCheckError(f"query {query!r} rejected: {detail}", hint="fix metric.query in the configuration")
    data = payload.get("data")
    if not isinstance(data, dict):
        data = {}
    result_type, result = data.get("resultType"), data.get("result")
    raw: Any = None
    if result_type == "scalar" and isinstance(result, list) and len(result) == 2:
        raw = result[1]
    elif result_type == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            labels = ", ".join(str(r.get("metric", {}) if isinstance(r, dict) else r) for r in result[:3])
            raise MetricCheckError(
                f"query {query!r} gives {len(result)} series ({labels}), not one number",
                hint="aggregate it, e.g. sum(...) or max(...)",
            )
        sample = result[0].get("value") if isinstance(result[0], dict) else None
        raw = sample[1] if isinstance(sample, list) and len(sample) == 2 else None
    else:
        raise MetricCheckError(
            f"query {query!r} gives a {result_type}, not one number", hint="use an instant vector or scalar query"
        )
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise MetricCheckError(f"query {query!r}: Prometheus answered an unreadable value {raw!r}") from None
    return None if math.isnan(value) else value


def run_metric_check(check: MetricCheck) -> MetricReport:
    """Poll the query until it held under the threshold, or raise MetricCheckError at the deadline."""
    query = check.promql
    start = time.monotonic()
    deadline = start + check.deadline_seconds
    samples: list[MetricSample] = []

    def report(verdict: MetricVerdict) -> MetricReport:
        return MetricReport(tuple(samples), verdict, time.monotonic() - start, query)

    with httpx.Client() as client:
        while True:
            timeout = max(0.1, min(check.timeout_seconds, deadline - time.monotonic()))
            try:
                value = query_prometheus(client, check.prometheus_url, query, timeout)
                samples.append(MetricSample(time.monotonic() - start, value))
            except PrometheusUnavailableError as exc:
                samples.append(MetricSample(time.monotonic() - start, None, exc.message))
            except MetricCheckError as exc:
                verdict = MetricVerdict(False, exc.message)
                raise MetricCheckError(exc.message, hint=exc.hint, report=report(verdict)) from None
            verdict = judge_metric(samples, check.threshold, check.hold_seconds)
            if verdict.ok:
                return report(verdict)
            now = time.monotonic()
            last = samples[-1]
            # The earliest the hold could be complete: it goes on from the last sample if that one was good,
            # else from the next one, at least an interval away.
            good = last.value is not None and last.value < check.threshold
            resume = start + last.at if good else now + check.interval_seconds
            earliest = resume + check.hold_seconds - verdict.held_seconds
            if now + check.interval_seconds > deadline or earliest > deadline:
                recent = ", ".join(_fmt(s) for s in samples[-_RECENT:])
                if all(s.error for s in samples):
                    raise MetricCheckError(
                        f"Prometheus at {check.prometheus_url} did not answer within {check.deadline_seconds:g} s "
                        f"(query {query}); last values (newest last): {recent}; {verdict.reason}",
                        hint="check metric.prometheus_url and that Prometheus runs, or check the metric by hand",
                        report=report(verdict),
                    )
                raise MetricCheckError(
                    f"{query} did not stay under {check.threshold:g} for {check.hold_seconds:g} s within "
                    f"{check.deadline_seconds:g} s; last values (newest last): {recent}; {verdict.reason}",
                    hint="the version was deployed but its error rate did not settle; look at its logs",
                    report=report(verdict),
                )
            time.sleep(check.interval_seconds)


# --- the smoke checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeResult:
    """The answer (or non-answer) to one smoke check."""

    name: str
    url: str
    status: int | None
    ms: float
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class SmokeReport:
    """Every smoke check's result, in the configured order."""

    results: tuple[SmokeResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[SmokeResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def summary(self) -> list[str]:
        return [
            f"{r.name}: {'ok' if r.ok else 'FAILED'} (HTTP {r.status if r.status is not None else '-'}, "
            f"{r.ms:.0f} ms){' ' + r.reason if r.reason else ''}"
            for r in self.results
        ]


def smoke_once(client: httpx.Client, check: SmokeCheck) -> SmokeResult:
    """One smoke request; any failure is a result, never an exception."""

    def result(ok: bool, status: int | None, reason: str = "") -> SmokeResult:
        return SmokeResult(check.label, check.url, status, (time.perf_counter() - start) * 1000, ok, reason)

    start = time.perf_counter()
    try:
        response = client.request(check.method, check.url, json=check.body, timeout=check.timeout_seconds)
    except httpx.HTTPError as exc:
        return result(False, None, f"no answer ({type(exc).__name__})")
    status = response.status_code
    if status != check.expect_status:
        return result(False, status, f"expected HTTP {check.expect_status}")
    if check.contains is not None and check.contains not in response.text:
        return result(False, status, f"body lacks {check.contains!r}")
    if check.json_field is not None:
        try:
            doc = response.json()
        except ValueError:
            return result(False, status, f"body is not JSON, so it has no {check.json_field!r}")
        if not json_path_present(doc, check.json_field):
            return result(False, status, f"JSON answer lacks {check.json_field!r}")
    return result(True, status)


def run_smoke_checks(checks: Sequence[SmokeCheck]) -> SmokeReport:
    """Run every smoke check concurrently; raise SmokeCheckError listing each failure after all ran."""
    if not checks:
        return SmokeReport(())
    with (
        httpx.Client(follow_redirects=True) as client,
        ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool,
    ):
        report = SmokeReport(tuple(pool.map(lambda c: smoke_once(client, c), checks)))
    failures = report.failures
    if failures:
        listed = "; ".join(
            f"{r.name}: {f'HTTP {r.status}, ' if r.status is not None else ''}{r.reason}" for r in failures
        )
        raise SmokeCheckError(
            f"{len(failures)} of {len(report.results)} smoke checks failed: {listed}",
            hint="the service is up but user paths are broken; check them by hand before closing the incident",
            report=report,
        )
    return report
