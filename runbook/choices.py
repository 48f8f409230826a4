"""The services and environments of the configuration, as choices for the Prefect UI's run form.

Prefect builds a deployment's form from the flow's type hints. When `$RUNBOOK_CONFIG` (or
./runbook.yaml) is readable at import, the `service` and `environment` parameters become enums of the
configured names; otherwise plain strings (validated at run time anyway). Import never fails on a bad file.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, cast

from pydantic import Field

from runbook.config import CONFIG_ENV_VAR, DEFAULT_CONFIG_PATH
from runbook.errors import RunbookError


def configured_names() -> tuple[list[str], list[str]]:
    """(service names, environment names) of the configuration file, or empty lists."""
    path = os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH
    if not os.path.exists(path):
        return [], []
    from runbook.config import load_config

    try:
        config = load_config(path)
    except RunbookError:
        return [], []
    services = sorted(config.services)
    environments = sorted({env for s in config.services.values() for env in s.environments})
    return services, environments


def choice(names: list[str]) -> Any:
    """`str` whose JSON schema lists the names as an enum (a drop-down in the UI), or plain `str` when none.

    Not `Literal`: pydantic renders a one-name Literal as `const`, which the form shows as a fixed value.
    """
    return Annotated[str, Field(json_schema_extra={"enum": cast(Any, names)})] if names else str
