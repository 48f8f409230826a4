"""Deploy targets: one module each, with its settings beside it (`<name>_settings.py`), all behind `DeployTarget`.

runbook.targets.factory builds the configured one (`build_target`) through its type -> factory mapping.
Importing this package stays light: runbook.config imports the settings modules from it.
"""

from __future__ import annotations

from runbook.targets.base import DeployRequest, DeployResult, DeployTarget

__all__ = ["DeployRequest", "DeployResult", "DeployTarget"]
