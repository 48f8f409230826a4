"""The approval form a person fills in the Prefect UI before a rollback deploys (`require_approval`)."""

from __future__ import annotations

from prefect import get_run_logger, pause_flow_run
from prefect.exceptions import FlowPauseTimeout
from prefect.input import RunInput
from pydantic import Field

from runbook.errors import ApprovalError
from runbook.journal import Journal


class Approval(RunInput):
    """Approve or reject the rollback shown above."""

    approve: bool = Field(default=False, description="Tick to deploy this version; leave unticked to reject")
    approver: str = Field(default="", description="Your name, for the post-mortem")
    comment: str = Field(default="", description="Why (kept in the post-mortem)")


def approval_description(
    service: str,
    environment: str,
    running: str | None,
    sha: str,
    title: str,
    image: str,
    digest: str,
    compare_url: str | None,
) -> str:
    """What the person approving sees above the form (Markdown)."""
    lines = [
        f"## Approve the rollback of `{service}` in `{environment}`?",
        "",
        f"- **Running now:** `{running or 'unknown'}`",
        f"- **Roll back to:** `{sha}` ({title})",
        f"- **Image:** `{image}`",
        f"- **Digest:** `{digest}`",
    ]
    if compare_url:
        lines.append(f"- **Changes undone:** {compare_url}")
    lines += ["", "Tick *approve* and submit to deploy; submit unticked to reject (nothing is deployed)."]
    return "\n".join(lines)


def wait_for_approval(record: Journal, title: str, compare_url: str | None, timeout: int) -> Approval:
    """Pause the run until a person approves or rejects it in the Prefect UI (ApprovalError unless approved)."""
    description = approval_description(
        record.service,
        record.environment,
        record.from_sha,
        record.to_sha or "",
        title,
        record.image or "",
        record.digest or "",
        compare_url,
    )
    get_run_logger().info("waiting up to %d s for a person to approve the rollback (Resume in the UI)", timeout)
    try:
        approval = pause_flow_run(
            wait_for_input=Approval.with_initial_data(description=description), timeout=timeout, poll_interval=1
        )
    except FlowPauseTimeout:
        raise ApprovalError(
            f"nobody approved the rollback within {timeout} s: nothing was deployed",
            hint="run it again, or without require_approval",
        ) from None
    if not approval.approve:
        who = approval.approver or "someone"
        comment = f" ({approval.comment})" if approval.comment else ""
        raise ApprovalError(
            f"{who} rejected the rollback{comment}: nothing was deployed", hint="choose another SHA or fix forward"
        )
    return approval
