"""The approval form a person fills in the Prefect UI before a rollback deploys (`require_approval`)."""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


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
