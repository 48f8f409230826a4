"""The post-mortem: the run journal rendered as Markdown and as a table of step timings. Pure."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
    lines: list[str] = []
    for section in _SECTIONS:
        lines += section(record)
    return "\n".join(lines) + "\n"


def _outcome(record: Journal) -> str:
    return {
        "recovered": "Recovered",
        "failed": f"FAILED at step `{record.failure_step}`",
        "dry-run": "Dry run (nothing changed)",
        "running": "Unfinished",
    }.get(record.outcome, record.outcome)


def _bullets(items: Iterable[str], empty: str | None = None) -> list[str]:
    """`- item` lines, or the single `- empty` line when there is no item and `empty` is given."""
    lines = [f"- {item}" for item in items]
    return lines or ([f"- {empty}"] if empty is not None else [])


def _optional(title: str, items: Sequence[str]) -> list[str]:
    """A section that appears only when it has something to list."""
    return ["", f"## {title}", *_bullets(items)] if items else []


def _summary(record: Journal) -> list[str]:
    outcome = _outcome(record)
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
    return lines


def _alert(record: Journal) -> list[str]:
    alert = record.alert
    if alert is None:
        return []
    labels = ", ".join(f"`{k}={v}`" for k, v in sorted(alert.labels.items()))
    return [
        "",
        "## Alert",
        f"- **Name:** {alert.name or '-'}",
        f"- **Labels:** {labels or '-'}",
        f"- **Link:** {alert.link or '-'}",
        f"- **Started at:** {_ts(alert.starts_at)}",
    ]


def _versions(record: Journal) -> list[str]:
    source = f"<br>read from: {record.running_source}" if record.running_source else ""
    image = f"`{record.image}`" if record.image else "-"
    digest = f"`{record.digest}`" if record.digest else ""
    return [
        "",
        "## Versions",
        "| | commit | image |",
        "|---|---|---|",
        f"| from (running before) | {_sha(record.from_sha)}{source} | - |",
        f"| to (rolled back to) | {_sha(record.to_sha)} | {image}<br>{digest} |",
        "",
        f"Target chosen by: {record.sha_source or '-'}",
    ]


def _timeline(record: Journal) -> list[str]:
    events = [(record.detected_at, "incident detected"), (record.started_at, "rollback run started"), *record.timeline]
    if record.healthy_at:
        events.append((record.healthy_at, "**service healthy again**"))
    if record.ended_at:
        events.append((record.ended_at, "run ended"))
    # In time order; the sort is stable, so events of the same instant keep the order they happened in.
    in_order = sorted(events, key=lambda item: item[0])
    return ["", "## Timeline", *_bullets(f"{_ts(moment)} {event}" for moment, event in in_order)]


def _steps(record: Journal) -> list[str]:
    rows = [f"| {s.name} | {s.state} | {s.seconds:.2f} | {s.detail.replace('|', '/') or '-'} |" for s in record.steps]
    return ["", "## Steps", "| step | state | seconds | detail |", "|---|---|---|---|", *rows]


def _health(record: Journal) -> list[str]:
    return ["", "## Health results", *_bullets(record.health_summary, "no health check ran")]


def _metric(record: Journal) -> list[str]:
    return _optional("Error rate (metric check)", record.metric_summary)


def _smoke(record: Journal) -> list[str]:
    return _optional("Smoke checks (key features)", record.smoke_summary)


def _approval(record: Journal) -> list[str]:
    return ["", "## Approval", f"- approved by {record.approval}"] if record.approval else []


def _retries(record: Journal) -> list[str]:
    return ["", "## Retries", *_bullets(record.retries, "none: every call answered the first time")]


def _warnings(record: Journal) -> list[str]:
    return _optional("Warnings", record.warnings)


def _links(record: Journal) -> list[str]:
    return ["", "## Links", *_bullets((f"{name}: {url}" for name, url in record.links.items()), "none")]


def _checklist(record: Journal) -> list[str]:
    return ["", "## Review checklist", *(f"- [ ] {item}" for item in REVIEW_CHECKLIST)]


# The post-mortem's sections, in the order they are written.
_SECTIONS: tuple[Callable[[Journal], list[str]], ...] = (
    _summary,
    _alert,
    _versions,
    _timeline,
    _steps,
    _health,
    _metric,
    _smoke,
    _approval,
    _retries,
    _warnings,
    _links,
    _checklist,
)


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


@dataclass(frozen=True)
class ServiceRow:
    """One service of an incident, for its post-mortem: how it ended, and its own run's journal when it ran.

    `outcome`: recovered, failed, skipped (one it waited for did not recover), not-run (held, or another run
    was rolling it back), recovered-earlier (by an earlier attempt of the incident, in `run`).
    """

    key: str
    outcome: str
    why: str = ""
    journal: Journal | None = None
    run: str | None = None  # the run that rolled it back, when not this attempt's (a link or an id)

    @property
    def recovered(self) -> bool:
        return self.outcome in ("recovered", "recovered-earlier")


def incident_artifact_key(keys: Sequence[str]) -> str:
    """The incident post-mortem's artifact key, from its services (`incident-api-web-production`)."""
    raw = "incident-" + "-".join(key.replace("/", "-") for key in keys)
    cleaned = "".join(c if c.isalnum() or c == "-" else "-" for c in raw.lower())
    return cleaned[:120].rstrip("-")


def incident_time_to_recovery(record: Journal, rows: Sequence[ServiceRow]) -> float | None:
    """Seconds from the incident's detection to its last service healthy; None unless every service recovered."""
    if not rows or not all(row.recovered for row in rows):
        return None
    healthy = [row.journal.healthy_at for row in rows if row.journal is not None and row.journal.healthy_at]
    if not healthy:
        return None
    return (max(healthy) - record.detected_at).total_seconds()


def incident_table(rows: Sequence[ServiceRow]) -> list[dict[str, str | float | None]]:
    """One row per service (from, to, digest, time to recovery, outcome), for Prefect's table artifact."""
    table: list[dict[str, str | float | None]] = []
    for row in rows:
        journal = row.journal
        ttr = journal.time_to_recovery if journal else None
        table.append(
            {
                "service": row.key,
                "outcome": row.outcome,
                "from": journal.from_sha[:12] if journal and journal.from_sha else None,
                "to": journal.to_sha[:12] if journal and journal.to_sha else None,
                "digest": journal.digest if journal else None,
                "time_to_recovery_s": round(ttr, 2) if ttr is not None else None,
                "why": row.why or None,
                "run": row.run or (journal.run_url if journal else None),
            }
        )
    return table


def render_incident(record: Journal, rows: Sequence[ServiceRow]) -> str:
    """An incident's post-mortem: a row per service, the overall time to recovery, the timelines merged."""
    ttr = incident_time_to_recovery(record, rows)
    failed = [row for row in rows if not row.recovered]
    outcome = "Recovered" if not failed else f"FAILED: {', '.join(row.key for row in failed)} not recovered"
    lines = [
        f"# Incident: {len(rows)} services: {outcome}",
        "",
        "## Summary",
        f"- **Outcome:** {outcome}",
        f"- **Time to recovery:** {f'{ttr:.1f} s (the last service healthy)' if ttr is not None else 'not recovered'}",
        f"- **Trigger:** {record.trigger}",
        f"- **Reason given:** {record.reason or '-'}",
        f"- **Incident:** {record.incident or '-'}",
    ]
    if record.attempt > 1:
        lines.append(
            f"- **Attempt:** {record.attempt} (services recovered by an earlier attempt were left as they are)"
        )
    lines += _alert(record)
    lines += ["", "## Services", "| service | outcome | from | to | digest | time to recovery | detail |"]
    lines.append("|---|---|---|---|---|---|---|")
    for item in incident_table(rows):
        ttr_cell = f"{item['time_to_recovery_s']} s" if item["time_to_recovery_s"] is not None else "-"
        cells = [f"`{item['service']}`", str(item["outcome"]), _sha(_text(item["from"])), _sha(_text(item["to"]))]
        cells += [_sha(_text(item["digest"])), ttr_cell, _link_cell(item)]
        lines.append("| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |")
    lines += ["", "## Timeline (every service)", *_bullets(f"{_ts(at)} {event}" for at, event in _merged(record, rows))]
    lines += _warnings(record) + _links(record) + _checklist(record)
    return "\n".join(lines) + "\n"


def _text(value: object) -> str | None:
    return str(value) if value is not None else None


def _link_cell(item: Mapping[str, object]) -> str:
    why = str(item["why"] or "")
    run = item["run"]
    return f"{why} ({run})" if run and why else str(run or why or "-")


def _merged(record: Journal, rows: Sequence[ServiceRow]) -> list[tuple[datetime, str]]:
    """The incident's own events and each service's, named, in time order (stable for the same instant)."""
    events = [(record.detected_at, "incident detected"), (record.started_at, "incident run started"), *record.timeline]
    for row in rows:
        journal = row.journal
        if journal is None:
            continue
        events += [(at, f"`{row.key}` {event}") for at, event in journal.timeline]
        if journal.healthy_at:
            events.append((journal.healthy_at, f"**`{row.key}` healthy again**"))
    if record.ended_at:
        events.append((record.ended_at, "incident run ended"))
    return sorted(events, key=lambda item: item[0])


# The lines `postmortem_facts` reads back, as `_summary` and `_versions` write them (tests/test_pure.py: both ways).
_TTR = re.compile(r"^- \*\*Time to recovery:\*\* ([0-9.]+) s$", re.M)
_TRIGGER = re.compile(r"^- \*\*Trigger:\*\* (.+)$", re.M)
_FAILURE = re.compile(r"^- \*\*Reason of failure:\*\* (.+)$", re.M)
_FROM = re.compile(r"^\| from \(running before\) \| `([0-9a-f]{7,40})`", re.M)
_TO = re.compile(r"^\| to \(rolled back to\) \| `([0-9a-f]{7,40})` \|(.*)$", re.M)
_DIGEST = re.compile(r"`(sha256:[0-9a-f]{64})`")


def postmortem_facts(markdown: str) -> dict[str, str]:
    """What the post-mortem says that nothing structured holds: trigger, from/to SHA, digest, time to recovery,
    the reason of failure. Absent lines are absent keys (a run that never wrote its post-mortem has none)."""
    facts: dict[str, str] = {}
    for name, pattern in (("ttr", _TTR), ("trigger", _TRIGGER), ("failure", _FAILURE), ("from_sha", _FROM)):
        if match := pattern.search(markdown):
            facts[name] = match.group(1).strip()
    if match := _TO.search(markdown):
        facts["to_sha"] = match.group(1)
        if digest := _DIGEST.search(match.group(2)):
            facts["digest"] = digest.group(1)
    return facts
