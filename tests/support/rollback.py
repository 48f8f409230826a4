"""Running the rollback flow against a sandbox, as the flow tests do, and reading what the run wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.rollback import rollback
from runbook.config import using_config
from sandbox.world import ENVIRONMENT, SERVICE, Sandbox


def run_rollback(sandbox: Sandbox, config: Path | None = None, **parameters: Any) -> Any:
    """The rollback of the sandbox's service, in process; returns the final state.

    `config` (default the sandbox's) is $RUNBOOK_CONFIG for the duration: the flow takes no configuration
    parameter, it reads its process's, as under `runbook serve`.
    """
    with using_config(config or sandbox.config_path):
        return rollback(service=SERVICE, environment=ENVIRONMENT, return_state=True, **parameters)


def artifacts(flow_run_id: UUID) -> dict[str | None, Any]:
    """The artifacts of a flow run, by key (None for those without one), each key's newest version."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    # Oldest first: a key written again (by a Retry) maps to its newest version.
    return {a.key: a for a in sorted(found, key=lambda a: a.created or 0)}


def postmortem_of(state: Any) -> str:
    """The post-mortem (markdown) the rollback run of `state` wrote; its timings artifact must be there too."""
    found = artifacts(state.state_details.flow_run_id)
    assert "rollback-shop-production-timings" in found
    return str(found["rollback-shop-production"].data)
