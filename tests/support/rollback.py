"""Running the rollback flow against a sandbox, as the flow tests do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
