"""Step 6: the post-mortem artifacts, written whatever the outcome, shown in the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from runbook.journal import Journal
from runbook.postmortem import (
    ServiceRow,
    artifact_key,
    incident_artifact_key,
    incident_table,
    render_incident,
    render_markdown,
    timings_table,
)
from tasks.policy import NO_CACHE


@task(name="write-postmortem", cache_policy=NO_CACHE)
def write_postmortem(record: Journal) -> str:
    """Publish the post-mortem (Markdown) and the step timings (table) as Prefect artifacts."""
    key = artifact_key(record.service, record.environment)
    markdown = render_markdown(record)
    create_markdown_artifact(markdown=markdown, key=key, description=f"Post-mortem: {record.outcome}")
    create_table_artifact(table=timings_table(record), key=f"{key}-timings", description="Step timings")
    get_run_logger().info("post-mortem written: artifacts %s and %s-timings", key, key)
    return markdown


@task(name="write-incident-postmortem", cache_policy=NO_CACHE)
def write_incident_postmortem(record: Journal, rows: list[ServiceRow]) -> str:
    """Publish an incident's post-mortem (Markdown) and its services (table, a row each) as Prefect artifacts."""
    key = incident_artifact_key([row.key for row in rows])
    markdown = render_incident(record, rows)
    create_markdown_artifact(markdown=markdown, key=key, description=f"Incident post-mortem: {record.outcome}")
    create_table_artifact(table=incident_table(rows), key=f"{key}-services", description="Services of the incident")
    get_run_logger().info("incident post-mortem written: artifacts %s and %s-services", key, key)
    return markdown
