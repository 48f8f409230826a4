"""Deploy targets: one module each, with its settings beside it (`<name>_settings.py`), all behind `DeployTarget`.

`build_target` builds the configured one through the type -> factory mapping in runbook.targets.factory.
Importing this package stays light: runbook.config imports the settings modules from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runbook.targets.base import DeployRequest, DeployResult, DeployTarget

if TYPE_CHECKING:
    from runbook.config import RunbookConfig

__all__ = ["DeployRequest", "DeployResult", "DeployTarget", "build_target"]


def build_target(config: RunbookConfig, service_name: str, environment: str) -> DeployTarget:
    """The deploy target configured for one environment of a service (see runbook.targets.factory)."""
    # Imported when called: the targets import runbook.config, which imports this package for their settings.
    from runbook.targets.factory import build_target as build

    return build(config, service_name, environment)
