"""The settings of the checks after a rollback: the error-rate metric (`MetricCheck`) and the smoke checks
(`SmokeCheck`). Validated with the rest of the configuration; no I/O here (runbook.prometheus and runbook.smoke
run them, runbook.health judges what they read).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from runbook.settings_base import (
    MAX_INTERVAL_SECONDS,
    MAX_REQUEST_SECONDS,
    MAX_WAIT_SECONDS,
    Settings,
    UrlStr,
    dotted_path,
)

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


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


class MetricCheck(Settings):
    """A Prometheus query that must stay under a threshold for a while after the rollback.

    `query` defaults to the 5xx ratio of `job` over `window` (see `error_ratio_query`); give one or the
    other. A value counts as good when it is strictly below `threshold`.
    """

    prometheus_url: UrlStr
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
    def _base_url(cls, value: str) -> str:
        return value.rstrip("/")

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


class SmokeCheck(Settings):
    """One user-facing request after the rollback and what its answer must look like."""

    name: str | None = None
    url: UrlStr
    method: Literal["GET", "POST", "HEAD"] = "GET"
    body: dict[str, Any] | None = Field(default=None, description="JSON body, POST only")
    expect_status: int = Field(default=200, ge=100, le=599)
    contains: str | None = Field(default=None, description="text the body must contain")
    json_field: str | None = Field(
        default=None, description="dotted path that must be in the JSON answer, not null: 'data.items.0.id'"
    )
    timeout_seconds: float = Field(default=5.0, gt=0, le=MAX_REQUEST_SECONDS)

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
