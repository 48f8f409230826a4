"""Step 6: the post-mortem artifacts, written whatever the outcome, shown in the Prefect UI."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from runbook.journal import Journal
from runbook.postmortem import artifact_key, render_markdown, timings_table
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
