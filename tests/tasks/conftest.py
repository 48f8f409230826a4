"""Fixtures for the task tests: the configuration of the sandbox (the `sandbox` fixture is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from runbook.config import RunbookConfig, load_config
from sandbox.world import Sandbox


@pytest.fixture
def config(sandbox: Sandbox) -> RunbookConfig:
    return load_config(sandbox.config_path)
