"""Fixtures for the task tests: the sandbox world (real registry, GitHub and Slack stand-ins, the app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runbook.config import RunbookConfig, load_config
from runbook.sandbox.world import Sandbox


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    with Sandbox(tmp_path, run_step_seconds=0.05) as world:
        yield world


@pytest.fixture
def config(sandbox: Sandbox) -> RunbookConfig:
    return load_config(sandbox.config_path)
