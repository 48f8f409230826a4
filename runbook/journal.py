"""The run journal: what happened during one rollback, in order, kept for the post-mortem."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from runbook.errors import RunbookError
from runbook.incident import AlertContext


def utcnow() -> datetime:
    """Now, timezone-aware (UTC)."""
    return datetime.now(UTC)


@dataclass
class StepRecord:
    """One step of the procedure with its timing and outcome."""

    name: str
    started_at: datetime
    ended_at: datetime | None = None
    seconds: float = 0.0
    state: str = "running"  # running, completed, failed, skipped
    detail: str = ""


@dataclass
class Journal:
    """Everything the post-mortem needs, filled in as the run goes."""

    service: str
    environment: str
    trigger: str
    reason: str
    incident: str | None
    detected_at: datetime
    started_at: datetime
    dry_run: bool = False
    run_url: str | None = None
    alert: AlertContext | None = None  # the alert that started the run (from the flow run's context)
    attempt: int = 1  # the flow run's attempt: above 1 after a Retry
    from_sha: str | None = None
    running_source: str | None = None  # where from_sha was read: "version probe", "GitHub Deployments"...
    to_sha: str | None = None
    sha_source: str | None = None
    image: str | None = None
    digest: str | None = None
    healthy_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str = "running"  # running, recovered, failed, dry-run
    failure_step: str | None = None
    failure_reason: str | None = None
    approval: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    timeline: list[tuple[datetime, str]] = field(default_factory=list)
    health_summary: list[str] = field(default_factory=list)
    metric_summary: list[str] = field(default_factory=list)
    smoke_summary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    links: dict[str, str] = field(default_factory=dict)

    def alert_line(self) -> str | None:
        """`name (link)` of the triggering alert, for messages."""
        return self.alert.line() if self.alert else None

    def note(self, event: str) -> None:
        """Add a line to the timeline, stamped now."""
        self.timeline.append((utcnow(), event))

    def warn(self, warning: str) -> None:
        """Keep a warning for the post-mortem (and the timeline)."""
        self.warnings.append(warning)
        self.note(f"warning: {warning}")

    @contextmanager
    def step(self, name: str) -> Iterator[StepRecord]:
        """Time one step; a failure is recorded with the project's own message, then re-raised."""
        record = StepRecord(name=name, started_at=utcnow())
        self.steps.append(record)
        self.note(f"{name} started")
        start = time.perf_counter()
        try:
            yield record
        except BaseException as exc:
            record.state = "failed"
            record.detail = record.detail or _describe(exc)
            self.note(f"{name} failed: {record.detail}")
            raise
        else:
            if record.state == "running":
                record.state = "completed"
            self.note(f"{name} {record.state}" + (f": {record.detail}" if record.detail else ""))
        finally:
            record.seconds = time.perf_counter() - start
            record.ended_at = utcnow()

    def fail(self, step: str, reason: str) -> None:
        """Mark the run failed at a step."""
        self.outcome = "failed"
        self.failure_step = step
        self.failure_reason = reason

    @property
    def time_to_recovery(self) -> float | None:
        """Seconds from detection to healthy, when it recovered."""
        if self.healthy_at is None:
            return None
        return (self.healthy_at - self.detected_at).total_seconds()


def _describe(exc: BaseException) -> str:
    # Only this project's own messages are shown as they are; anything else is named by its type,
    # so an unexpected exception cannot leak a URL with credentials or a token into the record.
    if isinstance(exc, RunbookError):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "the step ran past its time limit"
    return f"unexpected {type(exc).__name__} (details in the run's logs)"


def describe_error(exc: BaseException) -> str:
    """A message safe to publish for any exception."""
    return _describe(exc)
