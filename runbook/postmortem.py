"""The post-mortem: the run journal rendered as Markdown and as a table of step timings. Pure."""

from __future__ import annotations

from datetime import datetime

from runbook.journal import Journal

REVIEW_CHECKLIST = (
    "Root cause of the faulty deploy identified",
    "Fix forward planned (or the faulty change reverted on the branch)",
    "Follow-up issues filed (tests, alerts, runbook gaps)",
    "Timeline and time to recovery checked with the people involved",
)


def _ts(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if moment else "-"


def _sha(sha: str | None) -> str:
    return f"`{sha}`" if sha else "-"


def artifact_key(service: str, environment: str, suffix: str = "") -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    raw = f"rollback-{service}-{environment}" + (f"-{suffix}" if suffix else "")
    return "".join(c if c.isalnum() or c == "-" else "-" for c in raw.lower())


def render_markdown(record: Journal) -> str:
    """The whole post-mortem as Markdown: summary, versions, trigger, timeline, recovery, health, links."""
    outcome = {
        "recovered": "Recovered",
        "failed": f"FAILED at step `{record.failure_step}`",
        "dry-run": "Dry run (nothing changed)",
        "running": "Unfinished",
    }.get(record.outcome, record.outcome)
    ttr = record.time_to_recovery
    lines = [
        f"# Rollback of `{record.service}` in `{record.environment}`: {outcome}",
        "",
        "## Summary",
        f"- **Outcome:** {outcome}",
    ]
    if record.failure_reason:
        lines.append(f"- **Reason of failure:** {record.failure_reason}")
    lines += [
        f"- **Time to recovery:** {f'{ttr:.1f} s' if ttr is not None else 'not recovered'}",
        f"- **Trigger:** {record.trigger}",
        f"- **Reason given:** {record.reason or '-'}",
        f"- **Incident:** {record.incident or '-'}",
    ]
    if record.attempt > 1:
        lines.append(f"- **Attempt:** {record.attempt} (the run was retried; the SHA, thread and deploy were reused)")
    if record.alert:
        labels = ", ".join(f"`{k}={v}`" for k, v in sorted((record.alert.get("labels") or {}).items()))
        lines += [
            "",
            "## Alert",
            f"- **Name:** {record.alert.get('name') or '-'}",
            f"- **Labels:** {labels or '-'}",
            f"- **Link:** {record.alert.get('link') or '-'}",
            f"- **Started at:** {record.alert.get('starts_at') or _ts(record.detected_at)}",
        ]
    lines += [
        "",
        "## Versions",
        "| | commit | image |",
        "|---|---|---|",
        f"| from (running before) | {_sha(record.from_sha)}"
        f"{f'<br>read from: {record.running_source}' if record.running_source else ''} | - |",
        f"| to (rolled back to) | {_sha(record.to_sha)} | {f'`{record.image}`' if record.image else '-'}"
        f"<br>{f'`{record.digest}`' if record.digest else ''} |",
        "",
        f"Target chosen by: {record.sha_source or '-'}",
        "",
        "## Timeline",
    ]
    events = [(record.detected_at, "incident detected"), (record.started_at, "rollback run started"), *record.timeline]
    if record.healthy_at:
        events.append((record.healthy_at, "**service healthy again**"))
    if record.ended_at:
        events.append((record.ended_at, "run ended"))
    # In time order; the sort is stable, so events of the same instant keep the order they happened in.
    lines += [f"- {_ts(moment)} {event}" for moment, event in sorted(events, key=lambda item: item[0])]
    lines += ["", "## Steps", "| step | state | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.state} | {s.seconds:.2f} | {s.detail.replace('|', '/') or '-'} |" for s in record.steps]
    lines += ["", "## Health results"]
    lines += [f"- {line}" for line in record.health_summary] or ["- no health check ran"]
    if record.metric_summary:
        lines += ["", "## Error rate (metric check)"]
        lines += [f"- {line}" for line in record.metric_summary]
    if record.smoke_summary:
        lines += ["", "## Smoke checks (key features)"]
        lines += [f"- {line}" for line in record.smoke_summary]
    if record.approval:
        lines += ["", "## Approval", f"- approved by {record.approval}"]
    lines += ["", "## Retries"]
    lines += [f"- {line}" for line in record.retries] or ["- none: every call answered the first time"]
    if record.warnings:
        lines += ["", "## Warnings"]
        lines += [f"- {w}" for w in record.warnings]
    lines += ["", "## Links"]
    lines += [f"- {name}: {url}" for name, url in record.links.items()] or ["- none"]
    lines += ["", "## Review checklist"]
    lines += [f"- [ ] {item}" for item in REVIEW_CHECKLIST]
    return "\n".join(lines) + "\n"


def timings_table(record: Journal) -> list[dict[str, str | float]]:
    """One row per step, for Prefect's table artifact."""
    return [
        {
            "step": s.name,
            "state": s.state,
            "started_at": _ts(s.started_at),
            "ended_at": _ts(s.ended_at),
            "seconds": round(s.seconds, 3),
        }
        for s in record.steps
    ]
