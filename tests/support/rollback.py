"""Running the rollback flow against a sandbox, as the flow tests do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.rollback import rollback
from runbook.sandbox.world import ENVIRONMENT, SERVICE, Sandbox


def run_rollback(sandbox: Sandbox, config: Path | None = None, **parameters: Any) -> Any:
    """The rollback of the sandbox's service, in process; returns the final state."""
    return rollback(
        service=SERVICE,
        environment=ENVIRONMENT,
        config_path=str(config or sandbox.config_path),
        return_state=True,
        **parameters,
    )
